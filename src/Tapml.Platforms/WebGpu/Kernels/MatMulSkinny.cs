using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>The layout of products of a few rows of x against a weight (a short prompt's projections and lm_head), as
/// webgpu platform-spec options: <c>skinny-m=ROWS</c> (products of more than <see cref="MatMul.MatVecMaxRows"/> and at most
/// this many rows read each weight element once for all rows; 0: the tiled kernel, as before), <c>skinny-threads</c>
/// (threads per weight row), <c>skinny-rows</c> (weight rows per thread), <c>skinny-wg</c> (threads per workgroup),
/// <c>skinny-xs=0|1</c> (x through workgroup memory). An absent knob takes <see cref="Shape"/>'s rule.</summary>
public sealed record SkinnyTuning
{
    /// <summary>Most rows of x the kernel takes (<c>skinny-m</c>; 0: off).</summary>
    public int MaxRows { get; init; } = 32;
    public int Threads { get; init; }
    public int Rows { get; init; }
    public int Workgroup { get; init; }
    public bool? SharedX { get; init; }

    public static readonly SkinnyTuning Rule = new();

    public const string Help = "skinny-m=ROWS (0: off), skinny-threads=N, skinny-rows=N, skinny-wg=N, skinny-xs=0|1";

    /// <summary>This tuning with one spec option applied, or null when <paramref name="key"/> is not a skinny-product knob.</summary>
    public SkinnyTuning? With(string spec, string key, string value)
    {
        int Count(int min, int max)
        {
            if (!int.TryParse(value, out int v) || v < min || v > max) throw new TapmlException($"platform '{spec}': {key}={value} must be an integer from {min} to {max}");
            return v;
        }
        var t = key switch
        {
            "skinny-m" => this with { MaxRows = Count(0, 64) },
            "skinny-threads" => this with { Threads = Count(1, 256) },
            "skinny-rows" => this with { Rows = Count(1, 8) },
            "skinny-wg" => this with { Workgroup = Count(1, 1024) },
            "skinny-xs" => this with { SharedX = value switch { "1" or "true" or "" => true, "0" or "false" => false, _ => throw new TapmlException($"platform '{spec}': {key}={value} must be 0 or 1") } },
            _ => null,
        };
        if (t is { Workgroup: > 0, Threads: > 0 } && t.Workgroup % t.Threads != 0)
            throw new TapmlException($"platform '{spec}': skinny-wg must be a multiple of skinny-threads");
        return t;
    }

    /// <summary>Whether a product of <paramref name="rows"/> rows of x against a weight of <paramref name="storage"/> with
    /// K = <paramref name="k"/> runs here (packed f16 weights need K a multiple of 8).</summary>
    public bool Takes(long rows, GpuStorage storage, long k) =>
        rows > MatMul.MatVecMaxRows && rows <= MaxRows && (storage == GpuStorage.F32 || storage == GpuStorage.F16x2 && k % 8 == 0);

    /// <summary>The layout for N weight rows of <paramref name="units"/> loads, <paramref name="m"/> rows of x. Rule: 32
    /// threads a weight row for f32 weights, 64 for packed f16 (<paramref name="packed"/>; never more than a row has
    /// units); weight rows a thread so that a thread holds about 64 sums (4 for M ≤ 16, 2 for M ≤ 32), fewer where N·64
    /// is under 65536 (k/v); 128 threads a workgroup; x read from the storage buffer. Each x load then serves R
    /// weight rows and each weight load M rows of x. (<c>bench skinny-sweep</c>, two H100 calls, docs/benchmarks.md: for
    /// f32 at M = 16 and 32, 32 threads read every Llama-3-8B product faster than 64; for packed f16, 64.)</summary>
    public MatVecShape Shape(long n, long units, int m, int maxWorkgroup, bool packed = false)
    {
        int t = Threads > 0 ? Threads : Math.Min(packed ? 64 : 32, Math.Max(4, Wgsl.FloorPow2(units)));
        int r = Rows > 0 ? Rows : Math.Clamp(Math.Min(Wgsl.FloorPow2(64 / Math.Max(1, m)), Wgsl.FloorPow2(n * 64 / 65536)), 1, 4);
        t = Math.Min(t, maxWorkgroup);
        int wg = Workgroup > 0 ? Workgroup : 128;
        wg = Math.Max(t, Math.Min(wg, maxWorkgroup) / t * t);
        return new MatVecShape(t, r, wg, SharedX ?? false);
    }

}

/// <summary>y[m, j] = Σ_k x[m, k]·W[j, k] (+ r) for a few rows of x (more than <see cref="MatMul.MatVecMaxRows"/>, at
/// most <see cref="SkinnyTuning.MaxRows"/>) against an f32 weight transposed to [N, K]: <see cref="BlockedMatVec"/>'s
/// layout, so every weight element is read once for all M rows (a 16-row product costs about one weight read, where
/// the tiled kernel's 64–128-row tiles leave most rows idle), each x load serving the thread's R weight rows. Packed
/// f16 weights take <see cref="MatMul"/>'s f16 matrix-vector kernel with this layout.</summary>
static class MatMulSkinny
{
    /// <summary>Runs the product; <paramref name="res"/> (a residual of y's shape, or a bias of N when
    /// <paramref name="bias"/>) added in the epilogue.</summary>
    public static void Run(WebGpuPlatform g, GpuTensor x, GpuTensor wt, GpuTensor y, long rows, long n, long k, GpuTensor? res, bool bias)
    {
        bool vec = k % 4 == 0;
        bool xvec = vec && x.Storage == GpuStorage.F32;
        long units = (k + 3) / 4;
        var shape = g.Skinny.Shape(n, units, (int)rows, g.Device.Limits.MaxInvocationsPerWorkgroup);
        var meta = new Meta();
        meta.Add(n); meta.Add(k); meta.Add(units);
        var (gx, gy) = BlockedMatVec.Grid(g, n, shape);
        string variant = $"{shape}|{vec}|{xvec}|{rows}|{(int)x.Storage}|{(int)y.DType}|{res is not null}|{bias}|{(int)(res?.Storage ?? GpuStorage.F32)}";
        g.LaunchGroups(new WebGpuPlatform.KernelKey("matmul_skinny", variant), () =>
        {
            var w = new Wgsl(shape.Workgroup);
            BlockedMatVec.DeclareX(w, x, xvec);
            w.Out("y", y.DType);
            // NOTE: bindings x=0, y=1, wt=2 (declared by hand: vec4 loads), res=3; the weight helper takes K as a parameter
            // as BlockedMatVec's x helper does.
            w.Reserve().Decl($"@group(0) @binding(2) var<storage, read> wt_b: array<{(vec ? "vec4<f32>" : "f32")}>;");
            if (res is not null) w.In("res", res);
            if (!vec) w.Decl("fn wg_(r: u32, k: u32, K: u32) -> f32 { if (k < K) { return wt_b[r * K + k]; } return 0.0; }");
            var ms = Enumerable.Range(0, (int)rows);
            string Row(int r) =>
                (vec ? $"    {{\n      let wv = wt_b[row{r} * U + u];\n"
                     : $"    {{\n      let wv = vec4<f32>(wg_(row{r}, u * 4u, K), wg_(row{r}, u * 4u + 1u, K), wg_(row{r}, u * 4u + 2u, K), wg_(row{r}, u * 4u + 3u, K));\n") +
                string.Concat(ms.Select(m => $"      a{r}_{m} += dot(wv, xq{m}_0);\n")) + "    }\n";
            var f = new BlockedMatVec.Format
            {
                UnitValues = 4,
                Row = Row,
                Store = (m, row, sum) => $"y_st({m}u * N + {row}, {sum}{(res is null ? "" : bias ? $" + f32(res({row}))" : $" + f32(res({m}u * N + {row}))")});",
            };
            return w.Build(BlockedMatVec.Body(w, f, shape, (int)rows, xvec, g.Device.Limits.MaxWorkgroupStorageBytes), elementwise: false);
        }, $"MatMul_skinny_t{shape.Threads}r{shape.Rows}_m{rows}{(res is null ? "" : "_add")}", res is null ? [x, y, wt] : [x, y, wt, res], meta, gx, gy);
    }
}
