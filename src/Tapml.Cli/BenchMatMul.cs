using System.Diagnostics;
using Tapml.Core;
using Tapml.Platforms;
using Tapml.Platforms.WebGpu;
using Tapml.Platforms.WebGpu.Kernels;

namespace Tapml.Cli;

/// <summary><c>bench matmul-sweep</c>: the tiled matmul's TFLOP/s (2·M·K·N ÷ GPU time from timestamp queries, best of runs)
/// for each tile of <see cref="Tiles"/> and the 64×64 legacy kernel, on prefill-shaped products of the 125M Llama
/// (768/2048/3072) and the Llama-3-8B shape (4096/14336) at M = 16, 64, 512 and 2048 rows (bench llm-large's
/// and llm's prompts are 16 and 64), weights f32 (and packed f16 for one 8B shape); the column "rule" is the default (the tile <see cref="MatMulTiled.Choose"/> picks, K split where its grid is small). Each tile's product is checked against
/// the legacy kernel's. <c>bench matmul-sweep-tiny</c>: small shapes, for software adapters (wall time where the adapter
/// has no timestamp queries).</summary>
static class BenchMatMul
{
    public static IReadOnlyList<string> Names => ["matmul-sweep", "matmul-sweep-tiny"];

    /// <summary>Tiles measured besides the ladders' (<see cref="MatMulTiled.TileLadder"/>).</summary>
    static readonly string[] Extra = ["128x128x16/8x8", "128x64x8/8x4", "64x64x16/4x4", "64x64x8/8x8", "128x256x8/8x16", "256x128x8/16x8", "128x128x32/8x8", "32x128x8/4x8", "32x64x16/4x4"];

    static IEnumerable<MatMulTiled.Tile> Tiles() =>
        new[] { MatMulTiled.Tile.Legacy }.Concat(MatMulTiled.TileLadder.V2.Tiles).Concat(MatMulTiled.TileLadder.V1.Tiles).Concat(Extra.Select(s => MatMulTiled.Tile.Parse(s)!.Value)).Distinct();

    public static int Run(string scenario, int runs, string gpu)
    {
        using var g = BenchWorkflows.GpuPlatform(gpu);
        Console.WriteLine($"device: {g.Description}");
        bool tiny = scenario == "matmul-sweep-tiny";
        int[] prompts = [16, 64, 512, 2048];
        var shapes = tiny
            ? new[] { (96, 80, false, new[] { 37 }), (64, 130, false, [130]), (128, 96, true, [64]) }
            : [(768, 768, false, prompts), (768, 2048, false, prompts), (2048, 768, false, prompts), (768, 3072, false, prompts), (4096, 4096, false, prompts),
               (4096, 14336, false, prompts), (14336, 4096, false, prompts), (4096, 14336, true, [16, 512])];
        var tiles = Tiles().Where(t => t.Unfit(g.Device.Limits) is null).ToList();
        foreach (var t in Tiles().Where(t => t.Unfit(g.Device.Limits) is { }))
            Console.WriteLine($"tile {t}: skipped, {t.Unfit(g.Device.Limits)}");
        bool timestamps = g.Info.TimestampQuery;
        double scale = tiny ? 1e9 : 1e12;
        string unit = (tiny ? "GFLOP/s" : "TFLOP/s") + (timestamps ? "" : " (wall time)");
        // NOTE: a plain fixed-width table (one column a tile): a Spectre table folds 13 columns into an 80-column log.
        List<string[]> rows = [["M×K·K×N", .. tiles.Select(t => t.ToString()), "rule v1", "rule", "best"]];
        var mm = GpuOps.Find("", "MatMul")!;
        var ctx = new NodeContext(new Tapml.Ir.Node { Name = "sweep", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["y"] }, 17);
        var rng = new Random(1);
        bool allSame = true;
        var forced = g.MatMulTile;
        var ladder = g.MatMulLadder;
        var skinny = g.Skinny;
        // NOTE: tiled kernels only: short products would otherwise take the skinny kernel (bench skinny-sweep measures it).
        g.Skinny = skinny with { MaxRows = 0 };
        try
        {
            foreach (var (k, n, half, rowCounts) in shapes)
            {
                var wd = new float[(long)k * n];
                for (long i = 0; i < wd.LongLength; i++) wd[i] = (float)(rng.NextDouble() - 0.5);
                var w = g.Upload(half ? new Tensor(DType.Float16, [k, n], Array.ConvertAll(wd, v => (Half)v)) : new Tensor(DType.Float32, [k, n], wd));
                wd = null;
                foreach (int m in rowCounts)
                {
                    var xd = new float[(long)m * k];
                    for (long i = 0; i < xd.LongLength; i++) xd[i] = (float)(rng.NextDouble() - 0.5);
                    var x = g.Upload(new Tensor(DType.Float32, [1, m, k], xd));
                    double flop = 2.0 * m * k * n;
                    // NOTE: about 0.1 TFLOP a measurement (a few ms on a large GPU), at least one call.
                    int calls = tiny ? 3 : (int)Math.Clamp(1e11 / flop, 1, 50);
                    string label = $"{m}×{k}·{k}×{n}{(half ? " f16" : "")}";
                    var cells = new List<string> { label };
                    float[]? reference = null;
                    double bestRate = 0; string bestTile = "";
                    var rates = new Dictionary<MatMulTiled.Tile, double>();
                    // One measurement: the product checked against the first (legacy) one, then its best rate.
                    (double Rate, double Err) Measure(MatMulTiled.Tile? tile)
                    {
                        g.MatMulTile = tile;
                        GpuTensor Once() => (GpuTensor)mm.Run(g, ctx, [x, w])[0]!;
                        var y = Once();
                        var got = g.Download(y).Span<float>().ToArray();
                        g.Free(y);
                        double err = 0;
                        if (reference is null) reference = got;
                        else for (int i = 0; i < got.Length; i++) err = Math.Max(err, Math.Abs(got[i] - reference[i]) / (1 + Math.Abs(reference[i])));
                        double best = double.MaxValue;
                        for (int r = 0; r < Math.Max(3, runs); r++)
                        {
                            double? ms;
                            if (timestamps) ms = g.Device.TimeGpu(() => { for (int c = 0; c < calls; c++) g.Free(Once()); });
                            else { var sw = Stopwatch.StartNew(); for (int c = 0; c < calls; c++) g.Free(Once()); g.Synchronize(); ms = sw.Elapsed.TotalMilliseconds; }
                            if (ms is { } v) best = Math.Min(best, v / calls);
                        }
                        return (flop / (best / 1e3) / scale, err);
                    }
                    string Cell((double Rate, double Err) r)
                    {
                        bool same = r.Err <= 1e-4 * Math.Sqrt(k);
                        allSame &= same;
                        return same ? $"{r.Rate:F2}" : $"{r.Rate:F2} DIFF {r.Err:E1}";
                    }
                    foreach (var tile in tiles)
                    {
                        var res = Measure(tile);
                        rates[tile] = res.Rate;
                        if (res.Rate > bestRate) { bestRate = res.Rate; bestTile = tile.ToString(); }
                        cells.Add(Cell(res));
                    }
                    // The default: the ladder's tile, with K split where its grid is small; the first ladder beside it.
                    g.MatMulLadder = MatMulTiled.TileLadder.V1;
                    var v1Rate = Measure(forced);
                    var v1 = MatMulTiled.Choose(g, m, n, 1);
                    g.MatMulLadder = ladder;
                    var ruleRate = Measure(forced);
                    var rule = MatMulTiled.Choose(g, m, n, 1);
                    cells.Add($"{v1} {Cell(v1Rate)}");
                    cells.Add($"{rule} {Cell(ruleRate)}");
                    cells.Add($"{bestTile} {bestRate:F2}");
                    rows.Add(cells.ToArray());
                    Console.Error.WriteLine($"bench {scenario}: {label}: {string.Join("  ", tiles.Select(t => $"{t} {rates[t]:F2}"))}; rule v1 {v1} {v1Rate.Rate:F2}; rule {rule} {ruleRate.Rate:F2}; best {bestTile} {bestRate:F2} {unit}");
                }
            }
        }
        finally { g.MatMulTile = forced; g.MatMulLadder = ladder; g.Skinny = skinny; }
        var widths = Enumerable.Range(0, rows[0].Length).Select(c => rows.Max(r => r[c].Length)).ToArray();
        foreach (var r in rows) Console.WriteLine(string.Join("  ", r.Select((v, c) => c == 0 ? v.PadRight(widths[c]) : v.PadLeft(widths[c]))));
        Console.WriteLine($"{unit} (2·M·K·N ÷ {(timestamps ? "GPU time, timestamp queries" : "wall time")}), best of {Math.Max(3, runs)}; legacy = the 64×64 kernel; " +
                          $"rule = the default: the ladder's pick ({ladder}), K split where that grid has under half the ladder's workgroups " +
                          $"(at least {MatMulTiled.SplitMinK} of K a split); rule v1 = the same with matmul-ladder=v1 ({MatMulTiled.TileLadder.V1}); skinny products off (bench skinny-sweep); " +
                          $"products {(allSame ? "equal the legacy kernel's within 1e-4·√K" : "DIFFER (DIFF cells) from the legacy kernel's")}");
        return allSame ? 0 : 1;
    }
}
