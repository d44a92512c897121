using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms.Cpu.Ops;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary><c>com.microsoft</c> MatMulNBits with 4-bit weights. B stays packed on the GPU: its bytes uploaded as
/// u32 words (8 values each, low nibble first, each output column's K contiguous), scales and zero points as f32
/// per block (zero points unpacked from nibbles once on the host; absent: the constant 8). Two kernels:
/// <list type="bullet">
/// <item>decode (at most <see cref="MatMul.MatVecMaxRows"/> rows of A): a matrix-vector kernel, T threads per output
/// column striding its words (16-byte loads of a whole block of 32 — one scale and zero point — where x is f32, K a
/// multiple of 32 and blocks hold at least 32; else one u32 of 8 values), each word dequantized in registers to two
/// vec4s, <c>(q − zero)·scale</c> as the cpu reference computes it, and dotted with x; partial sums tree-reduced in
/// workgroup memory;</item>
/// <item>prefill: a 64×64 tiled product (as MatMul's) whose B tile is dequantized while it is staged in workgroup
/// memory, one packed word (8 values) a thread.</item>
/// </list></summary>
static class MatMulNBits
{
    public static void Register(Action<GpuOp> add) =>
        add(new GpuOp(ContribOps.Ms, "MatMulNBits", 1, Run, Support));

    static string? Support(NodeContext ctx, IReadOnlyList<TypeRef?> t)
    {
        if (t.Count > 0 && t[0] is { } a && a.ElemType is not (DType.Float32 or DType.Float16 or DType.BFloat16))
            return $"MatMulNBits on {DTypes.Name(a.ElemType)} A is not implemented on webgpu (floats only)";
        if (ctx.Int("bits", 4) != 4) return $"MatMulNBits with bits={ctx.Int("bits", 4)} is not implemented on webgpu (4 only)";
        if (t.Count > 4 && t[4] is not null) return "MatMulNBits: the g_idx input (deprecated in ONNX Runtime) is not implemented on webgpu";
        return null;
    }

    /// <summary>A node's weight on the GPU, made once from its host tensors (per platform: debug runs several).</summary>
    sealed class Prepared
    {
        public required WebGpuPlatform Owner;
        public required Tensor?[] Sources;
        public required NBitsWeight W;
        public required GpuTensor Words, Scales;
        public GpuTensor? Zeros, Bias;
    }

    static readonly ConditionalWeakTable<Node, Prepared> Cache = new();

    static Prepared Prepare(WebGpuPlatform g, NodeContext ctx, GpuTensor x, GpuTensor?[] ins)
    {
        var sources = new Tensor?[6];
        for (int i = 1; i < 6; i++)
        {
            if (i >= ins.Length || ins[i] is not { } t) continue;
            sources[i] = t.Source ?? throw new UnsupportedException(
                $"node '{ctx.Node.Name}' (MatMulNBits): webgpu needs B, scales, zero_points and bias as initializers (input {i} is computed)");
        }
        if (Cache.TryGetValue(ctx.Node, out var p) && p.Owner == g && p.Sources.AsSpan().SequenceEqual(sources, ReferenceComparer.Instance)) return p;
        var b = sources[1] ?? throw ctx.Error("input B is missing");
        var s = sources[2] ?? throw ctx.Error("input scales is missing");
        var w = NBitsWeight.Of(ctx, x.DType, x.Shape, b, s, sources[3], sources[4] is not null, sources[5]);
        GpuTensor F32(Tensor src, float[] values) => g.Concatenated([src], () => new Tensor(DType.Float32, [values.Length], values));
        p = new Prepared
        {
            Owner = g, Sources = sources, W = w,
            Words = g.Concatenated([b], () => new Tensor(DType.UInt32, [b.Length / 4], MemoryMarshal.Cast<byte, uint>(b.As<byte>()).ToArray())),
            Scales = F32(s, w.Scales),
            Zeros = w.Zeros is { } z ? F32(sources[3]!, z) : null,
            Bias = w.Bias is { } bias ? F32(sources[5]!, bias) : null,
        };
        Cache.AddOrUpdate(ctx.Node, p);
        return p;
    }

    sealed class ReferenceComparer : IEqualityComparer<Tensor?>
    {
        public static readonly ReferenceComparer Instance = new();
        public bool Equals(Tensor? a, Tensor? b) => ReferenceEquals(a, b);
        public int GetHashCode(Tensor? t) => RuntimeHelpers.GetHashCode(t);
    }

    static Value?[] Run(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var p = Prepare(g, ctx, x, ins);
        var w = p.W;
        NBitsWeight.CheckA(ctx, x.DType, x.Shape, w.K);
        long rows = x.Length / w.K;
        var y = g.Empty(x.DType, [.. x.Shape[..^1], w.N]);
        if (y.Length == 0) return [y];
        var bindings = new List<GpuTensor> { x, y, p.Words, p.Scales };
        if (p.Zeros is not null) bindings.Add(p.Zeros);
        if (p.Bias is not null) bindings.Add(p.Bias);
        var meta = new Meta();
        meta.Add(w.N); meta.Add(w.K); meta.Add((long)w.KBlocks * w.BlobSize / 4); meta.Add(w.KBlocks); meta.Add(rows);
        string variant = $"{w.BlockSize}|{p.Zeros is not null}|{p.Bias is not null}|{Wgsl.Letters([x.Storage])}|{(int)y.DType}";
        if (rows <= MatMul.MatVecMaxRows)
        {
            bool fast = x.Storage == GpuStorage.F32 && w.K % 8 == 0;
            // Whole blocks of 32 in one 16-byte load (one scale and zero point each) where K and the blocks allow it.
            bool wide = fast && w.K % 32 == 0 && w.BlockSize >= 32;
            int t = MatMul.MatVecThreads(wide ? w.K / 32 : (w.K + 7) / 8);
            int wg = Math.Min(256, g.Device.Limits.MaxInvocationsPerWorkgroup);
            t = Math.Min(t, wg);
            var (gx, gy) = Wgsl.Grid(w.N, wg / t, g.Device.Limits.MaxWorkgroupsPerDimension);
            g.LaunchGroups(new WebGpuPlatform.KernelKey("nbits_matvec", $"{variant}|{fast}|{wide}|{t}|{wg}|{rows}"),
                () => MatVecCode(x, y.DType, w.BlockSize, p.Zeros is not null, p.Bias is not null, fast, wide, t, wg, (int)rows),
                $"MatMulNBits_matvec_t{t}{(wide ? "_w" : fast ? "_v" : "")}_r{rows}", [.. bindings], meta, gx, gy);
        }
        else
        {
            if ((rows + 63) / 64 > g.Device.Limits.MaxWorkgroupsPerDimension)
                throw new UnsupportedException($"node '{ctx.Node.Name}' (MatMulNBits): {rows} rows need more than maxComputeWorkgroupsPerDimension tiles");
            g.LaunchGroups(new WebGpuPlatform.KernelKey("nbits_tiled", variant),
                () => TiledCode(x, y.DType, w.BlockSize, p.Zeros is not null, p.Bias is not null),
                "MatMulNBits_tiled", [.. bindings], meta, (uint)((w.N + 63) / 64), (uint)((rows + 63) / 64));
        }
        return [y];
    }

    /// <summary>Declares x, y, the weight words (u32, or vec4 for wide loads), scales, zero points and bias, in the
    /// bindings' order, and <c>zero_(block)</c>.</summary>
    static Wgsl Declare(GpuTensor x, DType y, bool zeros, bool bias, bool xvec, int wg, bool wide = false)
    {
        var w = new Wgsl(wg);
        if (xvec) w.Reserve().Decl("@group(0) @binding(0) var<storage, read> xv_b: array<vec4<f32>>;");
        else w.In("x", x);
        w.Out("y", y);
        if (wide) w.Reserve().Decl("@group(0) @binding(2) var<storage, read> bv_b: array<vec4<u32>>;");
        else w.In("bw", GpuStorage.U32);
        w.In("sc", GpuStorage.F32);
        if (zeros) w.In("zp", GpuStorage.F32);
        if (bias) w.In("bias", GpuStorage.F32);
        w.Decl($"fn zero_(b: u32) -> f32 {{ {(zeros ? "return zp(b);" : "return 8.0;")} }}");
        return w;
    }

    static string MatVecCode(GpuTensor x, DType y, int block, bool zeros, bool bias, bool fast, bool wide, int t, int wg, int rows)
    {
        var w = Declare(x, y, zeros, bias, fast, wg, wide);
        if (!fast) w.Decl("fn xg(i: u32, k: u32, K: u32) -> f32 { if (k < K) { return f32(x(i)); } return 0.0; }");
        w.Decl($"var<workgroup> red: array<f32, {wg * rows}>;");
        var rs = Enumerable.Range(0, rows).ToArray();
        string X(int r, string k) => fast ? $"xv_b[({r}u * K + {k}) / 4u]"
            : $"vec4<f32>(xg({r}u * K + {k}, {k}, K), xg({r}u * K + {k} + 1u, {k} + 1u, K), xg({r}u * K + {k} + 2u, {k} + 2u, K), xg({r}u * K + {k} + 3u, {k} + 3u, K))";
        string Q(int shift, string word = "word") => $"(f32(({word} >> {shift}u) & 15u) - z) * s";
        // The inner loop: one u32 (8 values) a step, or with wide loads one vec4<u32> (a block of 32) a step.
        string loop = !wide ? $$"""
    let KW = (K + 7u) / 8u;
    for (var kw = t; kw < KW; kw += {{t}}u) {
      let word = bw(col * RW + kw);
      let b = col * KB + (kw * 8u) / {{block}}u;
      let s = sc(b);
      let z = zero_(b);
      let k0 = kw * 8u;
      let wa = vec4<f32>({{Q(0)}}, {{Q(4)}}, {{Q(8)}}, {{Q(12)}});
      let wb = vec4<f32>({{Q(16)}}, {{Q(20)}}, {{Q(24)}}, {{Q(28)}});
{{string.Concat(rs.Select(r => $"      p{r} += dot(wa, {X(r, "k0")}) + dot(wb, {X(r, "k0 + 4u")});\n"))}}    }
""" : $$"""
    let KV = K / 32u;
    for (var kv = t; kv < KV; kv += {{t}}u) {
      let wv = bv_b[col * (RW / 4u) + kv];
      let b = col * KB + (kv * 32u) / {{block}}u;
      let s = sc(b);
      let z = zero_(b);
      let k0 = kv * 32u;
{{string.Concat(new[] { "x", "y", "z", "w" }.Select((c, i) =>
    $"      let wa{c} = vec4<f32>({Q(0, "wv." + c)}, {Q(4, "wv." + c)}, {Q(8, "wv." + c)}, {Q(12, "wv." + c)});\n" +
    $"      let wb{c} = vec4<f32>({Q(16, "wv." + c)}, {Q(20, "wv." + c)}, {Q(24, "wv." + c)}, {Q(28, "wv." + c)});\n" +
    string.Concat(rs.Select(r => $"      p{r} += dot(wa{c}, {X(r, $"k0 + {8 * i}u")}) + dot(wb{c}, {X(r, $"k0 + {8 * i + 4}u")});\n"))))}}    }
""";
        string body = $$"""
  let N = md[0]; let K = md[1]; let RW = md[2]; let KB = md[3];
  let t = lid.x % {{t}}u;
  let col = (wid.x + wid.y * nwg.x) * {{wg / t}}u + lid.x / {{t}}u;
{{string.Concat(rs.Select(r => $"  var p{r} = 0.0;\n"))}}
  if (col < N) {
{{loop}}  }
{{string.Concat(rs.Select(r => $"  red[{r * wg}u + lid.x] = p{r};\n"))}}
  workgroupBarrier();
  for (var st = {{t / 2}}u; st > 0u; st >>= 1u) {
    if (t < st) {
{{string.Concat(rs.Select(r => $"      red[{r * wg}u + lid.x] += red[{r * wg}u + lid.x + st];\n"))}}    }
    workgroupBarrier();
  }
  if (t == 0u && col < N) {
{{string.Concat(rs.Select(r => $"    y_st({r}u * N + col, red[{r * wg}u + lid.x]{(bias ? " + bias(col)" : "")});\n"))}}  }
""";
        return w.Build(body, elementwise: false);
    }

    static string TiledCode(GpuTensor x, DType y, int block, bool zeros, bool bias)
    {
        var w = Declare(x, y, zeros, bias, false, 256);
        w.Decl("var<workgroup> As: array<f32, 1024>;\nvar<workgroup> Bs: array<f32, 1024>;");
        string body = $$"""
  let N = md[0]; let K = md[1]; let M = md[4];
  let tx = lid.x % 16u; let ty = lid.x / 16u;
  let row0 = wid.y * 64u; let col0 = wid.x * 64u;
  var acc: array<f32, 16>;
  for (var k0 = 0u; k0 < K; k0 += 16u) {
    for (var l = 0u; l < 4u; l++) {
      let e = lid.x + l * 256u;
      let am = e / 16u; let ak = e % 16u;
      let gm = row0 + am; let gk = k0 + ak;
      var av = 0.0;
      if (gm < M && gk < K) { av = f32(x(gm * K + gk)); }
      As[ak * 64u + am] = av;
    }
    // B's tile: 128 threads each read one word (8 values of one column, one block) and dequantize it.
    if (lid.x < 128u) {
      let bn = lid.x / 2u; let kh = (lid.x % 2u) * 8u;
      let gn = col0 + bn; let gk = k0 + kh;
      var word = 0u; var s = 0.0; var z = 0.0;
      if (gn < N && gk < K) {
        word = bw(gn * md[2] + gk / 8u);
        let b = gn * md[3] + gk / {{block}}u;
        s = sc(b); z = zero_(b);
      }
      for (var j = 0u; j < 8u; j++) {
        var v = 0.0;
        if (gn < N && gk + j < K) { v = (f32((word >> (j * 4u)) & 15u) - z) * s; }
        Bs[(kh + j) * 64u + bn] = v;
      }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      let a0 = As[kk * 64u + ty * 4u]; let a1 = As[kk * 64u + ty * 4u + 1u];
      let a2 = As[kk * 64u + ty * 4u + 2u]; let a3 = As[kk * 64u + ty * 4u + 3u];
      for (var cc = 0u; cc < 4u; cc++) {
        let bv = Bs[kk * 64u + tx * 4u + cc];
        acc[cc] += a0 * bv; acc[4u + cc] += a1 * bv; acc[8u + cc] += a2 * bv; acc[12u + cc] += a3 * bv;
      }
    }
    workgroupBarrier();
  }
  for (var rr = 0u; rr < 4u; rr++) {
    for (var cc = 0u; cc < 4u; cc++) {
      let gm = row0 + ty * 4u + rr; let gn = col0 + tx * 4u + cc;
      if (gm < M && gn < N) { y_st(gm * N + gn, acc[rr * 4u + cc]{{(bias ? " + bias(gn)" : "")}}); }
    }
  }
""";
        return w.Build(body, elementwise: false);
    }
}
