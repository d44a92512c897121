using System.Diagnostics;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.WebGpu;
using Tapml.Platforms.WebGpu.Kernels;
using Tapml.Platforms.Cpu.Ops;

namespace Tapml.Cli;

/// <summary><c>bench q4-sweep</c>: the decode matrix-vector kernels for 4-bit (MatMulNBits, blocks of 32, an f32 scale of
/// f16 precision and a packed zero point per block: <c>--quantize q4</c>'s format, the scales kept as f16 on the GPU
/// unless a variant says <c>q4-scales=f32</c>) and packed f16 weights, over their
/// <see cref="MatVecTuning"/> variants, next to the f32 MatMul kernel on the same shapes in the same process: Llama-3-8B's
/// decode products 4096×4096 (q, o), 4096×14336 (gate, up), 14336×4096 (down) and 4096×128256 (lm_head), K×N. GPU time
/// from timestamp queries (wall time where the adapter has none), 50 dispatches a measurement, best of runs; every
/// variant's output checked at sampled columns against sums computed here from the same host data. A q4 cell is the
/// bytes the kernel reads (nibbles, scales, zero points) per second and its speed-up over f32 (f32 time ÷ q4 time); an
/// f16 cell its bytes per second and their share of f32's. <c>q4-sweep-tiny</c> runs a few variants on small shapes
/// (a smoke test for software adapters).</summary>
static class BenchMatVecVariants
{
    sealed record Variant(string Name, MatVecTuning Tuning);

    public static int Run(bool tiny, int runs, string gpu)
    {
        using var g = BenchWorkflows.GpuPlatform(gpu);
        Console.WriteLine($"device: {g.Description}");
        (int K, int N)[] shapes = tiny ? [(256, 256), (1000, 96), (256, 1000)] : [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 128256)];
        var q4 = Q4Variants(tiny);
        // The rule widens nibbles as f16 subnormals where the device does so exactly (its probe kernel); the magic-number
        // nibbles beside it there.
        if (!tiny && g.WidensHalfSubnormals) q4.Insert(1, new("panels rule magic nibbles", new MatVecTuning { Q4Nibbles = "magic" }));
        var f16 = F16Variants(tiny);
        int calls = tiny ? 4 : 50;
        var f32Ms = new double[shapes.Length];
        var q4Ms = new double[q4.Count, shapes.Length];
        var f16Ms = new double[f16.Count, shapes.Length];
        var wrong = new List<string>();
        var rng = new Random(7);
        var mm = GpuOps.Find("", "MatMul")!;
        var nbits = GpuOps.Find(ContribOps.Ms, "MatMulNBits")!;
        for (int si = 0; si < shapes.Length; si++)
        {
            var (k, n) = shapes[si];
            string shapeName = $"{k}×{n}";
            var xs = RandomFloats(k, 1, -1, 1);
            var x = g.Upload(new Tensor(DType.Float32, [1, 1, k], xs));
            int[] sample = Enumerable.Range(0, 24).Select(i => (int)((long)i * (n - 1) / 23)).ToArray();
            var mmCtx = new NodeContext(new Node { Name = $"f32_{k}x{n}", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["y"] }, 17);
            {
                var wf = RandomFloats((long)k * n, 2, -1, 1);
                var w = new Tensor(DType.Float32, [k, n], wf);
                f32Ms[si] = Time(g, () => mm.Run(g, mmCtx, [x, g.Upload(w)])[0]!, calls, runs, out var y);
                Check(y, sample, j => Dot(xs, kk => wf[(long)kk * n + j]), "f32", shapeName, wrong);
                var wh = Array.ConvertAll(wf, v => (Half)v);
                wf = null;
                w = new Tensor(DType.Float16, [k, n], wh);
                var wg = g.Upload(w);
                for (int v = 0; v < f16.Count; v++)
                {
                    g.MatVec = f16[v].Tuning;
                    f16Ms[v, si] = Time(g, () => mm.Run(g, mmCtx, [x, wg])[0]!, calls, runs, out y);
                    Check(y, sample, j => Dot(xs, kk => (float)wh[(long)kk * n + j]), $"f16 {f16[v].Name}", shapeName, wrong);
                }
                Console.Error.WriteLine($"bench q4-sweep: {shapeName}: f32 {Rate((long)k * n * 4, f32Ms[si])}, f16 best {Rate((long)k * n * 2, Enumerable.Range(0, f16.Count).Min(v => f16Ms[v, si]))}");
            }
            GC.Collect();
            {
                const int block = 32;
                int kb = (k + block - 1) / block, zrow = (kb + 1) / 2;
                var bytes = new byte[(long)n * kb * (block / 2)];
                FillBytes(bytes, 3);
                var scales = Array.ConvertAll(RandomFloats((long)n * kb, 4, 0.01f, 0.1f), s => (float)(Half)s);
                var zeros = new byte[(long)n * zrow];
                FillBytes(zeros, 5);
                var node = new Node
                {
                    Name = $"q4_{k}x{n}", OpType = "MatMulNBits", Domain = ContribOps.Ms, Inputs = ["x", "B", "scales", "zero_points"], Outputs = ["y"],
                    Attributes = new() { ["K"] = Attr.Of((long)k), ["N"] = Attr.Of((long)n), ["bits"] = Attr.Of(4L), ["block_size"] = Attr.Of((long)block) },
                };
                var ctx = new NodeContext(node, 1);
                var ins = new GpuTensor?[] { x, g.Upload(new Tensor(DType.UInt8, [n, kb, block / 2], bytes)), g.Upload(new Tensor(DType.Float32, [n, kb], scales)),
                    g.Upload(new Tensor(DType.UInt8, [n, zrow], zeros)) };
                float Ref(int j) => Dot(xs, kk =>
                {
                    long at = ((long)j * kb + kk / block) * (block / 2) + kk % block / 2;
                    int q = (bytes[at] >> (kk % 2 * 4)) & 15;
                    int blk = kk / block;
                    int z = (zeros[(long)j * zrow + blk / 2] >> (blk % 2 * 4)) & 15;
                    return (q - z) * scales[(long)j * kb + blk];
                });
                for (int v = 0; v < q4.Count; v++)
                {
                    g.MatVec = q4[v].Tuning;
                    q4Ms[v, si] = Time(g, () => nbits.Run(g, ctx, ins)[0]!, calls, runs, out var y);
                    Check(y, sample, Ref, $"q4 {q4[v].Name}", shapeName, wrong);
                }
                Console.Error.WriteLine($"bench q4-sweep: {shapeName}: q4 best {Enumerable.Range(0, q4.Count).Max(v => f32Ms[si] / q4Ms[v, si]):F2}× f32");
            }
            g.MatVec = MatVecTuning.Rule;
            GC.Collect();
        }

        string RuleShape(Func<MatVecTuning, long, long, MatVecShape> pick, int unitValues) =>
            string.Join(", ", shapes.Select(s => $"{pick(MatVecTuning.Rule, s.N, (s.K + unitValues - 1) / unitValues)}").Distinct());
        // NOTE: a plain fixed-width table: this bench's output is read from logs of the GPU machine (no terminal width there).
        var lines = new List<string[]> { new[] { "variant" }.Concat(shapes.Select(s => $"{s.K}×{s.N}")).Append("geomean").ToArray() };
        lines.Add(["f32 MatMul kernel", .. shapes.Select((s, i) => Rate((long)s.K * s.N * 4, f32Ms[i])), ""]);
        double Q4Bytes(int k, int n, MatVecTuning t)
        {
            int kb = (k + 31) / 32;
            // q4-params=packed: a u32 a block for scale and zero point (where it applies: panels, f16 scales, no zero sums).
            if (t.Q4PackedParams && (t.Q4Layout ?? MatVecTuning.Q4LayoutRule) == "panels" && !t.Q4F32Scales && !t.Q4ZeroSum) return (double)n * kb * 20;
            return (double)n * kb * (16 + (t.Q4F32Scales ? 4 : 2)) + (n * kb + 3) / 4 * 4;
        }
        var q4Score = new double[q4.Count];
        for (int v = 0; v < q4.Count; v++)
        {
            q4Score[v] = Math.Exp(Enumerable.Range(0, shapes.Length).Average(i => Math.Log(f32Ms[i] / q4Ms[v, i])));
            lines.Add([$"q4 {q4[v].Name}", .. shapes.Select((s, i) => $"{Rate(Q4Bytes(s.K, s.N, q4[v].Tuning), q4Ms[v, i])} {f32Ms[i] / q4Ms[v, i],5:F2}×"), $"{q4Score[v]:F2}× f32"]);
        }
        var f16Score = new double[f16.Count];
        for (int v = 0; v < f16.Count; v++)
        {
            // f16's bytes/s ÷ f32's = (f32 time ÷ f16 time) ÷ 2: it reads half the bytes.
            f16Score[v] = Math.Exp(Enumerable.Range(0, shapes.Length).Average(i => Math.Log(f32Ms[i] / f16Ms[v, i] / 2)));
            lines.Add([$"f16 {f16[v].Name}", .. shapes.Select((s, i) => $"{Rate((long)s.K * s.N * 2, f16Ms[v, i])} {100 * f32Ms[i] / f16Ms[v, i] / 2,4:F0}%"), $"{100 * f16Score[v]:F0}% of f32"]);
        }
        var widths = Enumerable.Range(0, lines[0].Length).Select(c => lines.Max(l => l[c].Length)).ToArray();
        foreach (var l in lines) Console.WriteLine(string.Join("  ", l.Select((c, i) => i == 0 ? c.PadRight(widths[i]) : c.PadLeft(widths[i]))));
        Console.WriteLine($"{g.Name}: GB/s of weight bytes read (q4: nibbles + scales, f16 or as the variant says + zero-point bytes); q4 × = f32 time ÷ q4 time; f16 % = its bytes/s ÷ f32's; " +
                          $"{calls} dispatches a measurement, best of {Math.Max(3, runs)}");
        int bq = Array.IndexOf(q4Score, q4Score.Max()), bf = Array.IndexOf(f16Score, f16Score.Max());
        Console.WriteLine($"q4: best {q4[bq].Name} ({q4Score[bq]:F2}× f32, geomean over the shapes) → webgpu?{Spec(q4[bq].Tuning)}; rule {q4Score[0]:F2}× ({RuleShape((t, n, u) => t.Q4(n, u, g.Device.Limits.MaxInvocationsPerWorkgroup, 0, (t.Q4Layout ?? MatVecTuning.Q4LayoutRule) != "rows", oneRow: true), 32)})");
        Console.WriteLine($"f16: best {f16[bf].Name} ({100 * f16Score[bf]:F0}% of f32 bytes/s) → webgpu?{Spec(f16[bf].Tuning)}; rule {100 * f16Score[0]:F0}% ({RuleShape((t, n, u) => t.F16(n, u, g.Device.Limits.MaxInvocationsPerWorkgroup), 8)})");
        foreach (var w in wrong) Console.WriteLine($"WRONG: {w}");
        return wrong.Count == 0 ? 0 : 1;
    }

    static List<Variant> Q4Variants(bool tiny)
    {
        var v = new List<Variant> { new("rule", MatVecTuning.Rule) };
        void Add(int t, int r, int wg, bool xs = false, int unroll = 1) =>
            v.Add(new($"t{t} r{r} wg{wg}{(xs ? " xs" : "")}{(unroll > 1 ? $" u{unroll}" : "")}",
                new MatVecTuning { Q4Threads = t, Q4Rows = r, Q4Workgroup = wg, Q4SharedX = xs, Q4Unroll = unroll }));
        if (tiny) { Add(8, 1, 128); Add(32, 4, 128, unroll: 2); Add(4, 8, 32, unroll: 3); Add(16, 2, 128, xs: true); return v; }
        void Rows(string name, int words, int t = 0, int r = 0, int wg = 0, int unroll = 0) =>
            v.Add(new($"rows {name} unit{words}", new MatVecTuning { Q4Layout = "rows", Q4Words = words, Q4Threads = t, Q4Rows = r, Q4Workgroup = wg, Q4Unroll = unroll }));
        void Panels(string name, int t = 0, int r = 0, int wg = 0, int unroll = 0, int split = 0, string layout = "panels", bool zeroSum = false) =>
            v.Add(new($"{layout} {name}{(zeroSum ? " zsum" : "")}", new MatVecTuning { Q4Layout = layout, Q4ZeroSum = zeroSum, Q4Threads = t, Q4Rows = r, Q4Workgroup = wg, Q4Unroll = unroll, Q4Split = split }));
        v.Add(new("panels rule f32 scales", new MatVecTuning { Q4F32Scales = true }));
        v.Add(new("panels rule packed params", new MatVecTuning { Q4PackedParams = true }));
        Rows("rule", 0);
        Rows("rule", 2);
        Rows("t128 r8", 2, t: 128, r: 8, wg: 128);
        Panels("rule", layout: "halves");
        Panels("rule", layout: "halves", zeroSum: true);
        Panels("rule", zeroSum: true);
        Panels("t64 r8", t: 64, r: 8, wg: 128, layout: "halves", zeroSum: true);
        Panels("t64 r2", t: 64, r: 2, wg: 128, layout: "halves");
        Panels("t64 r8", t: 64, r: 8, wg: 128, layout: "halves");
        Panels("t128 r4", t: 128, r: 4, wg: 128, layout: "halves");
        Panels("t32 r4", t: 32, r: 4, wg: 128, layout: "halves");
        Panels("t128 r4 k2", t: 128, r: 4, wg: 128, split: 2, layout: "halves");
        Panels("u2", unroll: 2);
        Panels("t32 r4", t: 32, r: 4, wg: 128);
        Panels("t32 r8", t: 32, r: 8, wg: 128);
        Panels("t64 r2", t: 64, r: 2, wg: 128);
        Panels("t64 r4", t: 64, r: 4, wg: 128);
        Panels("t64 r8", t: 64, r: 8, wg: 128);
        Panels("t128 r4", t: 128, r: 4, wg: 128);
        Panels("t128 r8", t: 128, r: 8, wg: 128);
        Panels("t256 r4", t: 256, r: 4, wg: 256);
        Panels("t64 r4 wg256", t: 64, r: 4, wg: 256);
        Panels("t64 r4 k2", t: 64, r: 4, wg: 128, split: 2);
        Panels("t64 r4 k4", t: 64, r: 4, wg: 128, split: 4);
        Panels("t64 r2 k2", t: 64, r: 2, wg: 128, split: 2);
        Panels("t64 r2 k4", t: 64, r: 2, wg: 128, split: 4);
        Panels("t64 r8 k4", t: 64, r: 8, wg: 128, split: 4);
        Panels("t32 r4 k4", t: 32, r: 4, wg: 128, split: 4);
        Panels("t128 r4 k2", t: 128, r: 4, wg: 128, split: 2);
        return v;
    }

    static List<Variant> F16Variants(bool tiny)
    {
        var v = new List<Variant> { new("rule", MatVecTuning.Rule) };
        void Add(int t, int r, int wg, bool native, bool xs = false, int unroll = 1) =>
            v.Add(new($"t{t} r{r} wg{wg}{(native ? "" : " bits")}{(xs ? " xs" : "")}{(unroll > 1 ? $" u{unroll}" : "")}",
                new MatVecTuning { F16Threads = t, F16Rows = r, F16Workgroup = wg, F16SharedX = xs, F16Native = native, F16Unroll = unroll }));
        if (tiny) { Add(8, 1, 256, true); Add(32, 4, 256, false, unroll: 2); Add(4, 8, 32, false); Add(32, 2, 256, true, xs: true); return v; }
        foreach (var (t, r, wg) in new[] { (32, 2, 256), (64, 1, 256), (64, 2, 256), (128, 2, 256), (64, 2, 128), (64, 1, 64), (64, 2, 512) })
            foreach (int u in new[] { 1, 2, 4 })
                Add(t, r, wg, true, unroll: u);
        Add(64, 2, 256, false);
        return v;
    }

    static string Spec(MatVecTuning t)
    {
        var o = new List<string>();
        void Int(string key, int v) { if (v > 0) o.Add($"{key}={v}"); }
        if (t.Q4Layout is { } pl) o.Add($"q4-layout={pl}");
        Int("q4-threads", t.Q4Threads); Int("q4-rows", t.Q4Rows); Int("q4-wg", t.Q4Workgroup); Int("q4-unroll", t.Q4Unroll); Int("q4-unit", t.Q4Words); Int("q4-split", t.Q4Split); Int("q4-target", t.Q4TargetThreads); Int("q4-decode-target", t.Q4DecodeTargetThreads);
        if (t.Q4SharedX is { } qx) o.Add($"q4-xs={(qx ? 1 : 0)}");
        if (t.Q4ZeroSum) o.Add("q4-zero=sum");
        if (t.Q4F32Scales) o.Add("q4-scales=f32");
        if (t.Q4PackedParams) o.Add("q4-params=packed");
        if (t.Q4Nibbles is { } nb) o.Add($"q4-nibbles={nb}");
        Int("f16-threads", t.F16Threads); Int("f16-rows", t.F16Rows); Int("f16-wg", t.F16Workgroup); Int("f16-unroll", t.F16Unroll);
        if (t.F16SharedX is { } fx) o.Add($"f16-xs={(fx ? 1 : 0)}");
        if (t.F16Native is { } nat) o.Add($"f16-unpack={(nat ? "native" : "bits")}");
        return o.Count == 0 ? "(the rule: no options)" : string.Join("&", o);
    }

    static string Rate(double bytes, double ms) { double r = bytes / (ms / 1e3) / 1e9; return r >= 100 ? $"{r:F0} GB/s" : $"{r:F2} GB/s"; }

    /// <summary>Milliseconds per call of <paramref name="run"/> (GPU time, or wall time where the adapter has no
    /// timestamp queries): best of runs of <paramref name="calls"/> calls; the first call's output in <paramref name="first"/>.</summary>
    static double Time(WebGpuPlatform g, Func<Value> run, int calls, int runs, out Tensor first)
    {
        var y = (GpuTensor)run();
        first = g.Download(y);
        g.Free(y);
        double best = double.MaxValue;
        void Batch() { for (int c = 0; c < calls; c++) g.Free(run()); }
        // NOTE: the GPU's clocks drop in the host's pauses between measurements (a variant's kernel compiled, weights laid
        // out): measured at once, a 4096×128256 product read 353–408 GB/s in one place of the list and 1878–2053 in
        // another, the same kernel (H100, docs/benchmarks.md).
        BenchWorkflows.SteadyClocks(g, () => { Batch(); g.Synchronize(); }, 0.4);
        for (int r = 0; r < Math.Max(3, runs); r++)
        {
            if (g.Device.TimeGpu(Batch) is { } ms) best = Math.Min(best, ms / calls);
            else
            {
                var sw = Stopwatch.StartNew();
                Batch();
                g.Synchronize();
                best = Math.Min(best, sw.Elapsed.TotalMilliseconds / calls);
            }
        }
        return best;
    }

    static float Dot(float[] x, Func<int, float> w)
    {
        double s = 0;
        for (int k = 0; k < x.Length; k++) s += (double)x[k] * w(k);
        return (float)s;
    }

    static void Check(Tensor y, int[] cols, Func<int, float> reference, string variant, string shape, List<string> wrong)
    {
        var got = y.As<float>();
        foreach (int j in cols)
        {
            float e = reference(j);
            if (!(Math.Abs(got[j] - e) <= 1e-3f * Math.Max(1f, Math.Abs(e))))
            {
                wrong.Add($"{variant} on {shape}: y[{j}] = {got[j]}, expected {e}");
                return;
            }
        }
    }

    static float[] RandomFloats(long n, int seed, float lo, float hi)
    {
        var v = new float[n];
        const int chunk = 1 << 20;
        Parallel.For(0, (n + chunk - 1) / chunk, c =>
        {
            var r = new Random(seed * 1_000_003 + (int)c);
            long end = Math.Min(n, (c + 1) * chunk);
            for (long i = c * chunk; i < end; i++) v[i] = lo + (float)r.NextDouble() * (hi - lo);
        });
        return v;
    }

    static void FillBytes(byte[] b, int seed)
    {
        const int chunk = 1 << 20;
        Parallel.For(0, (b.LongLength + chunk - 1) / chunk, c =>
        {
            long at = c * chunk;
            new Random(seed * 1_000_003 + (int)c).NextBytes(b.AsSpan((int)at, (int)Math.Min(chunk, b.LongLength - at)));
        });
    }
}
