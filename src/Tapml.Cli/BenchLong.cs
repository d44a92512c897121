using Spectre.Console;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Cli;

/// <summary><c>bench llm-long</c>: decode tokens/s of a short generation (32 decode steps) and a long one (2,000 decode
/// steps, averaged over the whole generation) on the GPU platform, on the 125M Llama shape <c>bench llm</c> writes, and
/// their ratio (the issue's target: ≥ 0.8). Variants of the platform spec run in the same process: the KV cache
/// appended in place (default), copied whole every step (<c>kv=copy</c>, as before), and decode attention split over
/// more workgroups (<c>attn-groups=N</c>), prompt attention by tiles in the first layout (<c>attn-tile=v1</c>; the
/// default is v2) and one workgroup per query row (<c>attn-tiled=0</c>); each
/// also prefills a 1,024-token prompt (tokens/s: the tiled prompt attention against the row kernel). The long run's greedy tokens are checked equal across variants. <c>bench
/// llm-long-tiny</c> runs the same on a tiny checkpoint, 100 decode steps (a smoke test for software adapters).</summary>
static class BenchLong
{
    public static IReadOnlyList<string> Names => ["llm-long", "llm-long-tiny"];

    public static int Run(string scenario, int runs, string gpu)
    {
        if (gpu.StartsWith("webgpu", StringComparison.Ordinal) && Tapml.Platforms.WebGpu.WebGpuPlatform.Unavailable() is { } why) { Console.Error.WriteLine($"bench {scenario}: {why}"); return 2; }
        bool tiny = scenario == "llm-long-tiny";
        var (plain, parameters, _) = tiny
            ? BenchWorkflows.BenchLlama("tapml-bench-llama-tiny", new TinyCheckpoint.Sizes(Layers: 2, Hidden: 256, Heads: 4, KvHeads: 2, Intermediate: 512, Vocab: 1024))
            : BenchWorkflows.BenchLlama("tapml-bench-llama-125m", new TinyCheckpoint.Sizes(Layers: 12, Hidden: 768, Heads: 12, KvHeads: 4, Intermediate: 2048, Vocab: 32000));
        int shortSteps = 32, longSteps = tiny ? 100 : 2000;
        var rng = new Random(3);
        long[] prompt = Enumerable.Range(0, 16).Select(_ => (long)rng.Next(tiny ? 1024 : 32000)).ToArray();
        long[] longPrompt = Enumerable.Range(0, tiny ? 256 : 1024).Select(_ => (long)rng.Next(tiny ? 1024 : 32000)).ToArray();
        // Only webgpu's own spec takes these options (vulkan, opencl and browser run the defaults).
        var variants = new List<(string Spec, string What)> { (gpu, gpu.StartsWith("webgpu", StringComparison.Ordinal) ? "defaults: KV cache appended in place" : "defaults") };
        if (gpu.StartsWith("webgpu", StringComparison.Ordinal))
        {
            string With(string option) => gpu + (gpu.Contains('?') ? "&" : "?") + option;
            variants.Add((With("kv=copy"), "KV cache copied whole every step (before)"));
            variants.Add((With("attn-groups=1024"), "in place; decode attention aims at 1024 workgroups"));
            variants.Add((With("attn-groups=4096"), "in place; decode attention aims at 4096 workgroups"));
            variants.Add((With("attn-tile=v1"), "prompt attention tiled, first layout (16 keys a tile)"));
            variants.Add((With("attn-tiled=0"), "prompt attention one workgroup per query row"));
        }
        var table = new Table().AddColumns("platform", "variant", $"decode tokens/s, {shortSteps} steps", $"decode tokens/s, {longSteps} steps", "ratio (target ≥ 0.8)", $"prefill tokens/s, {longPrompt.Length}-token prompt");
        long[]? reference = null;
        bool same = true;
        foreach (var (spec, what) in variants)
        {
            using var p = PlatformRegistry.Create(spec);
            var exec = new Executor(p) { PreferWholeGraph = true };
            var model = GenerateVerb.FusesByDefault(p) ? GenerateVerb.Fuse(plain, p, out _) : plain;
            Generation.Greedy(exec, model, prompt.AsSpan(0, 4), 2);            // warm-up: pipelines, uploads
            BenchWorkflows.SteadyClocks(p, () => Generation.Greedy(exec, model, prompt, shortSteps + 1, keepPromptLogits: false));
            GenerationResult? bestShort = null, bestLong = null;
            double prefill = 0;
            for (int i = 0; i < runs; i++)
            {
                prefill = Math.Max(prefill, Generation.Greedy(exec, model, longPrompt, 1, keepPromptLogits: false).PrefillTokensPerSecond);
                var s = Generation.Greedy(exec, model, prompt, shortSteps + 1, keepPromptLogits: false);
                var l = Generation.Greedy(exec, model, prompt, longSteps + 1, keepPromptLogits: false);
                if (bestShort is null || s.DecodeTokensPerSecond > bestShort.DecodeTokensPerSecond) bestShort = s;
                if (bestLong is null || l.DecodeTokensPerSecond > bestLong.DecodeTokensPerSecond) bestLong = l;
            }
            reference ??= bestLong!.Tokens;
            same &= reference.SequenceEqual(bestLong!.Tokens);
            double ratio = bestLong.DecodeTokensPerSecond / bestShort!.DecodeTokensPerSecond;
            table.AddRow(spec, what, $"{bestShort.DecodeTokensPerSecond:F1}", $"{bestLong.DecodeTokensPerSecond:F1}", $"{ratio:F2}", $"{prefill:F1}");
            Console.WriteLine($"{spec}: decode {bestShort.DecodeTokensPerSecond:F1} tokens/s over {shortSteps} steps, {bestLong.DecodeTokensPerSecond:F1} tokens/s over {longSteps} steps: ratio {ratio:F2}; prefill of {longPrompt.Length} tokens {prefill:F1} tokens/s ({what})");
        }
        table.Caption($"llama {parameters / 1e6:F0}M parameters (f32), prompt {prompt.Length}, best of {runs}; decode tokens/s averaged over the whole generation; " +
                      $"long-run greedy tokens {(same ? "identical across variants" : "DIFFER between variants")}");
        AnsiConsole.Write(table);
        return same ? 0 : 1;
    }
}
