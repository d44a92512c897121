using System.Diagnostics;
using Tapml.Core;
using Tapml.Platforms;
using Tapml.Platforms.WebGpu;
using Tapml.Platforms.WebGpu.Kernels;

namespace Tapml.Cli;

/// <summary><c>bench skinny-sweep</c>: products of a few rows (M = 1, 4, 16, 32, 64) against the Llama-3-8B shape's
/// weights (4096×4096, 4096×14336, 14336×4096, the 4096×128256 lm_head, f32, and 4096×14336 packed f16), per kernel:
/// the platform's default, the tiled kernel (<c>skinny-m=0</c>) and layouts of the skinny kernel
/// (<see cref="SkinnyTuning"/>); each cell the weight's bytes read per second (GB/s: K·N·bytes ÷ GPU time, best of runs)
/// and TFLOP/s (2·M·K·N ÷ time). Products are checked against the default's. <c>skinny-sweep-tiny</c>: small, odd
/// shapes for software adapters (wall time where the adapter has no timestamp queries).</summary>
static class BenchSkinny
{
    public static IReadOnlyList<string> Names => ["skinny-sweep", "skinny-sweep-tiny", "skinny-rotate", "skinny-rotate-tiny"];

    /// <summary>Skinny layouts measured besides the rule: (threads per weight row, weight rows a thread, workgroup, x shared).</summary>
    static readonly (int T, int R, int Wg, bool Xs)[] Layouts =
        [(32, 1, 128, false), (32, 2, 128, false), (64, 1, 128, false), (64, 2, 128, false), (64, 4, 128, false), (32, 4, 128, false), (128, 2, 128, false), (64, 4, 256, false), (64, 2, 128, true),
         (16, 2, 128, false), (16, 4, 256, true), (32, 2, 256, true), (32, 4, 256, true), (64, 1, 512, true), (64, 2, 512, true), (64, 1, 1024, true)];

    public static int Run(string scenario, int runs, string gpu)
    {
        if (scenario.StartsWith("skinny-rotate", StringComparison.Ordinal)) return Rotate(scenario.EndsWith("-tiny", StringComparison.Ordinal), runs, gpu);
        using var g = BenchWorkflows.GpuPlatform(gpu);
        Console.WriteLine($"device: {g.Description}");
        bool tiny = scenario == "skinny-sweep-tiny";
        int[] ms = tiny ? [1, 5, 16, 33] : [1, 4, 16, 32, 64];
        var shapes = tiny
            ? new[] { (96, 80, false), (130, 67, false), (64, 96, true) }
            : [(4096, 4096, false), (4096, 14336, false), (14336, 4096, false), (4096, 128256, false), (4096, 14336, true)];
        bool timestamps = g.Info.TimestampQuery;
        var start = g.Skinny;
        var variants = new List<(string Name, SkinnyTuning Tuning)> { ("default", start), ("tiled", start with { MaxRows = 0 }), ("skinny rule", SkinnyTuning.Rule with { MaxRows = 64 }) };
        foreach (var (t, r, wg, xs) in Layouts)
            variants.Add(($"t{t} r{r} wg{wg}{(xs ? " xs" : "")}", new SkinnyTuning { MaxRows = 64, Threads = t, Rows = r, Workgroup = wg, SharedX = xs }));
        List<string[]> rows = [["M×K·K×N", .. variants.Select(v => v.Name), "best"]];
        var mm = GpuOps.Find("", "MatMul")!;
        var ctx = new NodeContext(new Tapml.Ir.Node { Name = "skinny", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["y"] }, 17);
        var rng = new Random(1);
        bool allSame = true;
        try
        {
            foreach (var (k, n, half) in shapes)
            {
                var wd = new float[(long)k * n];
                for (long i = 0; i < wd.LongLength; i++) wd[i] = (float)(rng.NextDouble() - 0.5);
                var w = g.Upload(half ? new Tensor(DType.Float16, [k, n], Array.ConvertAll(wd, v => (Half)v)) : new Tensor(DType.Float32, [k, n], wd));
                wd = null;
                long weightBytes = (long)k * n * (half ? 2 : 4);
                foreach (int m in ms)
                {
                    var xd = new float[(long)m * k];
                    for (long i = 0; i < xd.LongLength; i++) xd[i] = (float)(rng.NextDouble() - 0.5);
                    var x = g.Upload(new Tensor(DType.Float32, [1, m, k], xd));
                    // NOTE: about 2 GB of weight reads a measurement (a ms or so on a large GPU), at least one call.
                    int calls = tiny ? 3 : (int)Math.Clamp(2e9 / weightBytes, 1, 50);
                    string label = $"{m}×{k}·{k}×{n}{(half ? " f16" : "")}";
                    var cells = new List<string> { label };
                    float[]? reference = null;
                    double bestMs = double.MaxValue; string bestName = "";
                    foreach (var (name, tuning) in variants)
                    {
                        // Rows the matrix-vector kernel takes run it whatever the skinny layout: only the default is measured there.
                        if (m <= MatMul.MatVecMaxRows && name != "default") { cells.Add("–"); continue; }
                        g.Skinny = tuning;
                        GpuTensor Once() => (GpuTensor)mm.Run(g, ctx, [x, w])[0]!;
                        var y = Once();
                        var got = g.Download(y).Span<float>().ToArray();
                        g.Free(y);
                        double err = 0;
                        if (reference is null) reference = got;
                        else for (int i = 0; i < got.Length; i++) err = Math.Max(err, Math.Abs(got[i] - reference[i]) / (1 + Math.Abs(reference[i])));
                        double best = BestPerCall(g, runs, calls, _ => g.Free(Once()));
                        if (best < bestMs) { bestMs = best; bestName = name; }
                        bool same = err <= 1e-4 * Math.Sqrt(k);
                        allSame &= same;
                        cells.Add($"{Gbs(weightBytes, best)} GB/s {Tflops(2.0 * m * k * n, best)}{(same ? "" : $" DIFF {err:E1}")}");
                    }
                    g.Free(x);
                    cells.Add($"{bestName} {Gbs(weightBytes, bestMs)} GB/s");
                    rows.Add(cells.ToArray());
                    Console.Error.WriteLine($"bench {scenario}: {label}: {string.Join("; ", variants.Select((v, i) => $"{v.Name} {cells[i + 1]}"))}");
                }
                g.Free(w);
            }
        }
        finally { g.Skinny = start; }
        var widths = Enumerable.Range(0, rows[0].Length).Select(c => rows.Max(r => r[c].Length)).ToArray();
        foreach (var r in rows) Console.WriteLine(string.Join("  ", r.Select((v, c) => c == 0 ? v.PadRight(widths[c]) : v.PadLeft(widths[c]))));
        Console.WriteLine($"each cell: weight GB/s (K·N·bytes ÷ {(timestamps ? "GPU time, timestamp queries" : "wall time")}) and TFLOP/s (2·M·K·N ÷ time), best of {Math.Max(3, runs)}; " +
                          $"default = this platform's settings (skinny-m={start.MaxRows}; M ≤ {MatMul.MatVecMaxRows}: the matrix-vector kernel), tiled = skinny-m=0 (the tiled kernel's ladder), " +
                          $"skinny rule / tN rN wgN = skinny-m=64 with that layout (skinny-threads, skinny-rows, skinny-wg, xs: skinny-xs=1); " +
                          $"products {(allSame ? "equal the default's within 1e-4·√K" : "DIFFER (DIFF cells) from the default's")}");
        return allSame ? 0 : 1;
    }

    /// <summary><c>bench skinny-rotate</c>: the same products (M = 1 and 16 rows against 4096×14336 f32) timed two ways: a
    /// call repeated on one weight (as <c>skinny-sweep</c> measures) and calls that go round 8 distinct weights of that
    /// shape (as a model reads each weight once a step), per skinny layout; GB/s of weight read.</summary>
    static int Rotate(bool tiny, int runs, string gpu)
    {
        using var g = BenchWorkflows.GpuPlatform(gpu);
        Console.WriteLine($"device: {g.Description}");
        var (k, n, count) = tiny ? (256, 512, 3) : (4096, 14336, 8);
        var rng = new Random(1);
        var wd = new float[(long)k * n];
        for (long i = 0; i < wd.LongLength; i++) wd[i] = (float)(rng.NextDouble() - 0.5);
        var ws = Enumerable.Range(0, count).Select(_ => g.Upload(new Tensor(DType.Float32, [k, n], wd))).ToArray();
        long weightBytes = (long)k * n * 4;
        var mm = GpuOps.Find("", "MatMul")!;
        var ctx = new NodeContext(new Tapml.Ir.Node { Name = "skinny", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["y"] }, 17);
        var start = g.Skinny;
        var layouts = new (string Name, SkinnyTuning Tuning)[]
        {
            ("rule", start), ("t16 r2 wg128", start with { Threads = 16, Rows = 2, Workgroup = 128 }), ("t32 r4 wg128", start with { Threads = 32, Rows = 4, Workgroup = 128 }),
            ("t64 r1 wg128", start with { Threads = 64, Rows = 1, Workgroup = 128 }),
        };
        try
        {
            foreach (int m in new[] { 1, 16 })
            {
                var xd = new float[(long)m * k];
                for (long i = 0; i < xd.LongLength; i++) xd[i] = (float)(rng.NextDouble() - 0.5);
                var x = g.Upload(new Tensor(DType.Float32, [1, m, k], xd));
                foreach (var (name, tuning) in m <= MatMul.MatVecMaxRows ? layouts[..1] : layouts)
                {
                    g.Skinny = tuning;
                    foreach (var w in ws) g.Free(mm.Run(g, ctx, [x, w])[0]!);     // transposed weights, kernels
                    double one = BestPerCall(g, runs, count, _ => g.Free(mm.Run(g, ctx, [x, ws[0]])[0]!));
                    double round = BestPerCall(g, runs, count, c => g.Free(mm.Run(g, ctx, [x, ws[c]])[0]!));
                    Console.WriteLine($"bench skinny-rotate: {m}×{k}·{k}×{n} {(m <= MatMul.MatVecMaxRows ? "matrix-vector" : name)}: one weight {Gbs(weightBytes, one)} GB/s, {count} weights in turn {Gbs(weightBytes, round)} GB/s ({one / round:F2}× the one-weight speed)");
                }
                g.Free(x);
            }
        }
        finally { g.Skinny = start; foreach (var w in ws) g.Free(w); }
        return 0;
    }

    /// <summary>Milliseconds a call of <paramref name="call"/> (given its index), the best of max(3, runs) batches of
    /// <paramref name="calls"/>: GPU time from timestamp queries, wall time to a synchronize where the adapter has none.</summary>
    static double BestPerCall(WebGpuPlatform g, int runs, int calls, Action<int> call)
    {
        double best = double.MaxValue;
        for (int r = 0; r < Math.Max(3, runs); r++)
        {
            double? ms = null;
            if (g.Info.TimestampQuery) ms = g.Device.TimeGpu(() => { for (int c = 0; c < calls; c++) call(c); });
            else { var sw = Stopwatch.StartNew(); for (int c = 0; c < calls; c++) call(c); g.Synchronize(); ms = sw.Elapsed.TotalMilliseconds; }
            if (ms is { } v) best = Math.Min(best, v / calls);
        }
        return best;
    }

    static string Tflops(double flop, double ms) => flop / (ms / 1e3) / 1e12 is var v && v >= 0.1 ? $"{v:F2}" : $"{v:E1}";

    static string Gbs(long bytes, double ms) => bytes / (ms / 1e3) / 1e9 is var v && v >= 10 ? $"{v:F0}" : $"{v:F3}";
}
