using Spectre.Console;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;

namespace Tapml.Cli;

/// <summary><c>tapml bench browser</c>: WebGPU in headless Chromium against native Dawn on the same machine, in one
/// run: a submit's round trip (a small dispatch and its readback) and tiny-llama's decode tokens/s.</summary>
static class BenchBrowser
{
    public static int Run(int runs)
    {
        using var native = (WebGpuPlatform)PlatformRegistry.Create("webgpu");
        using var browser = (WebGpuPlatform)PlatformRegistry.Create("browser");
        var table = new Table().AddColumns("measure", "webgpu (Dawn)", "browser (Chromium)", "browser ÷ native (target ≥ 0.7×)");
        void Row(params string[] cells) => table.AddRow(cells.Select(Markup.Escape).ToArray());

        // A submit's round trip: Add of two f32[16] (inputs uploaded once), its dispatch submitted and read back.
        double rn = RoundTrip.Median(native, 20, 100, runs), rb = RoundTrip.Median(browser, 20, 100, runs);
        double Sync(WebGpuPlatform p)
        {
            for (int i = 0; i < 20; i++) p.Synchronize();
            var t = new List<double>();
            for (int r = 0; r < Math.Max(3, runs); r++)
            {
                var sw = System.Diagnostics.Stopwatch.StartNew();
                for (int i = 0; i < 100; i++) p.Synchronize();
                t.Add(sw.Elapsed.TotalMilliseconds / 100);
            }
            t.Sort();
            return t[t.Count / 2];
        }
        double sn = Sync(native), sb = Sync(browser);
        Row("synchronize (no work: native reads 4 bytes back, the page waits for its queue), ms", $"{sn:F3}", $"{sb:F3}", $"{sn / sb:F2}× speed");
        Row("submit round trip (Add f32[16] + readback), ms", $"{rn:F3}", $"{rb:F3}", $"{rn / rb:F2}× speed");

        // Decode: tiny-llama, fused as generate fuses for webgpu, greedy, 32 new tokens after an 8-token prompt.
        var m = Fusion.Fuse(HfModels.Load(TinyCheckpoint.Materialize("llama")), out _);
        long[] prompt = [1, 17, 305, 42, 7, 99, 100, 3];
        (double Tps, long[] Tokens) Decode(IPlatform p)
        {
            var e = new Executor(p) { PreferWholeGraph = true };
            Generation.Greedy(e, m, prompt, 4);
            var t = new List<(double, long[])>();
            for (int r = 0; r < Math.Max(1, Math.Min(runs, 5)); r++)
            {
                var g = Generation.Greedy(e, m, prompt, 32);
                t.Add((g.DecodeTokensPerSecond, g.Tokens));
            }
            t.Sort((a, b) => a.Item1.CompareTo(b.Item1));
            return t[t.Count / 2];
        }
        var (dn, tn) = Decode(native);
        var (db, tb) = Decode(browser);
        if (!tn.SequenceEqual(tb)) throw new TapmlException($"bench browser: the browser's greedy tokens {string.Join(",", tb)} differ from native webgpu's {string.Join(",", tn)}");
        Row("tiny-llama decode, tokens/s (32 tokens, same tokens)", $"{dn:F1}", $"{db:F1}", $"{db / dn:F2}×");
        table.Caption(Markup.Escape($"same machine and adapter family: Dawn in-process vs {browser.Description}; medians; {Environment.ProcessorCount} cores"));
        AnsiConsole.Write(table);
        return 0;
    }
}
