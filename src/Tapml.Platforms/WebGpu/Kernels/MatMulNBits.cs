using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms.Cpu.Ops;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary><c>com.microsoft</c> MatMulNBits with 4-bit weights. B stays packed on the GPU: its bytes uploaded as
/// u32 words (8 values each, low nibble first, each output column's K contiguous); scales as f32, or packed two per u32
/// where they are f16 (exact either way); zero points as bytes packed four per u32 where they are whole numbers (packed
/// nibbles always are), else f32 (absent: the constant 8); where a row is whole panels of 1024 values, words, scales
/// and zero points are stored in <see cref="Q4Panels"/>' order (<c>q4-layout</c>), which every kernel below reads. Two kernels:
/// <list type="bullet">
/// <item>decode (at most <see cref="MatMul.MatVecMaxRows"/> rows of A): <see cref="BlockedMatVec"/>'s layout (threads per
/// row, rows per thread, workgroup size and x in workgroup memory from <see cref="MatVecTuning"/>), one load of 2 or 4
/// words (16 or 32 values, <see cref="MatVecTuning.Q4UnitWords"/>) a unit where each row's words are aligned to it, else
/// one u32 of 8. A nibble is made a float without a
/// conversion instruction: the nibble at bit 4i of a half-word, or-ed into the mantissa of 2^23, is 2^23 + q·16^i
/// exactly, and subtracting 2^23 + zero·16^i gives (q − zero)·16^i exactly; x was scaled by 16^−i (a power of two,
/// exact) as it was loaded, so each product is (q − zero)·x as the cpu reference computes it, and the block's sum is
/// multiplied by its scale once;</item>
/// <item>prefill: a 64×64 tiled product (as MatMul's) whose B tile is dequantized while it is staged in workgroup
/// memory, one packed word (8 values) a thread.</item>
/// </list>
/// With <c>accuracy_level=4</c> and f32 A (<see cref="NBitsWeight.Int8Compute"/>) A is first quantized to int8
/// (<see cref="QuantizeA"/>, as the cpu reference does) and the decode kernel takes a block a unit with
/// <c>dot4I8Packed</c> (<see cref="UnitCodeA8"/>); the tiled kernel reads A as code·scale.
/// The decode kernel also serves the <c>matmul_add</c> region (<see cref="FusedAdd"/>: a residual added in its store); its
/// unit code serves <see cref="ProjectionsNBits"/>.</summary>
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
        /// <summary>Zero points are whole numbers stored as bytes (else f32, or none).</summary>
        public bool ByteZeros;
        /// <summary>The node computes with int8 A where A is f32 (<see cref="NBitsWeight.Int8Compute"/>).</summary>
        public bool Int8;
        /// <summary>Words, scales and zero points are in this panel layout (null: ONNX's row order).</summary>
        public Q4Panels? Panels;
        /// <summary>The tuning's <see cref="MatVecTuning.WeightLayout"/> when this was made (<c>bench q4-sweep</c> changes it
        /// between runs).</summary>
        public Q4WeightLayout LayoutAsked;
        /// <summary>For views of a region's stacked buffers: the cache keys that keep those buffers alive.</summary>
        public object? Keep;
        /// <summary>Decode launches made (<see cref="MatVec"/>): a step's launch skips its layout, kernel key and label.</summary>
        public readonly TunedLaunches<(long Rows, GpuStorage X, DType Y, bool A8, bool Residual), VecLaunch> Launches = new();
    }

    /// <summary>A decode kernel's key, label, layout and grid for one row count.</summary>
    sealed record VecLaunch(WebGpuPlatform.KernelKey Key, string Label, MatVecShape Shape, int Words, long Units, bool Vec, uint Gx, uint Gy);

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
        if (Cache.TryGetValue(ctx.Node, out var p) && p.Owner == g && p.LayoutAsked == g.MatVec.WeightLayout && p.Sources.AsSpan().SequenceEqual(sources, ReferenceComparer.Instance)) return p;
        var b = sources[1] ?? throw ctx.Error("input B is missing");
        var s = sources[2] ?? throw ctx.Error("input scales is missing");
        var w = NBitsWeight.Of(ctx, x.DType, x.Shape, b, s, sources[3], sources[4] is not null, sources[5]);
        GpuTensor F32(Tensor src, float[] values) => g.Concatenated([src], () => new Tensor(DType.Float32, [values.Length], values));
        bool byteZeros = w.Zeros is { } zs && Array.TrueForAll(zs, v => v >= 0 && v <= 255 && v == MathF.Floor(v));
        bool int8 = NBitsWeight.Int8Compute(ctx.Node, DType.Float32, w, sources[3]);
        var zeroKind = w.Zeros is null ? ZeroKind.None : byteZeros ? ZeroKind.Bytes : ZeroKind.Floats;
        var panels = g.MatVec.Panels is { } pl && Q4Panels.Fits((long)w.KBlocks * w.BlobSize / 4, w.BlockSize, zeroKind, int8) ? pl : null;
        // NOTE: panel uploads are their own cache entries (the layout's Mark): the same B in row order is another buffer.
        Tensor[] Key(Tensor t) => panels is null ? [t] : [t, panels.Mark];
        float[] Blocks(float[] v) => panels?.PermuteBlocks<float>(v, w.BlockSize / 8) ?? v;
        bool half = HalfScales(g, s, w.Scales), packed = Packs(g, panels, zeroKind, half);
        p = new Prepared
        {
            Owner = g, Sources = sources, W = w, ByteZeros = byteZeros, Int8 = int8, Panels = panels, LayoutAsked = g.MatVec.WeightLayout,
            Words = g.Concatenated(Key(b), () =>
            {
                var words = MemoryMarshal.Cast<byte, uint>(b.As<byte>());
                return new Tensor(DType.UInt32, [b.Length / 4], panels?.PermuteWords(words) ?? words.ToArray());
            }),
            // NOTE: f16 scales, and f32 ones that are all f16 values, are kept as f16 (packed two per u32, widened exactly
            // in the kernel): fewer bytes a decode step reads.
            Scales = packed ? g.Concatenated([s, sources[3]!, Q4Panels.PackedMark], () => PackParams(Blocks(w.Scales), Blocks(w.Zeros!)))
                : half ? g.Concatenated(Key(s), () => new Tensor(DType.Float16, [w.Scales.Length], Array.ConvertAll(Blocks(w.Scales), v => (Half)v)))
                : g.Concatenated(Key(s), () => new Tensor(DType.Float32, [w.Scales.Length], Blocks(w.Scales))),
            Zeros = w.Zeros is not { } z || packed ? null : byteZeros ? g.Concatenated(Key(sources[3]!), () => PackBytes(Blocks(z))) : F32(sources[3]!, z),
            Bias = w.Bias is { } bias ? F32(sources[5]!, bias) : null,
        };
        Cache.AddOrUpdate(ctx.Node, p);
        return p;
    }

    /// <summary>Makes <paramref name="product"/>'s weight on the GPU views of a stacked region's buffers (its rows from
    /// <paramref name="firstRow"/> on), so the node run alone (prefill) reads the buffers the fused decode kernel reads
    /// and the weight is on the GPU once; nothing is done where a view's offset misses the binding alignment or the node
    /// already has its weight.</summary>
    /// <param name="keep">What keeps the stacked buffers alive (their upload cache keys): the views hold it.</param>
    internal static void Share(WebGpuPlatform g, Node product, Tensor b, Tensor s, Tensor? z, NBitsWeight w, long firstRow,
        GpuTensor words, GpuTensor scales, GpuTensor? zeros, bool byteZeros, Q4Panels? panels, object keep)
    {
        if (Cache.TryGetValue(product, out var old) && old.Owner == g && old.LayoutAsked == g.MatVec.WeightLayout) return;
        ulong align = (ulong)Math.Max(4, g.Device.Limits.MinStorageOffsetAlignment);
        long blocks = firstRow * w.KBlocks;
        ulong wordsAt = (ulong)(firstRow * w.KBlocks * w.BlobSize), scalesAt = (ulong)(blocks * (scales.Storage == GpuStorage.F16x2 ? 2 : 4));
        ulong zerosAt = zeros is null ? 0 : (ulong)(blocks * (byteZeros ? 1 : 4));
        if (wordsAt % align != 0 || scalesAt % align != 0 || zerosAt % align != 0) return;
        GpuTensor View(GpuTensor t, long length, ulong at) => new(g, t.DType, [length], t.Buffer, t.Storage) { ByteOffset = at, Pinned = true };
        long n = w.N;
        Cache.AddOrUpdate(product, new Prepared
        {
            Owner = g, Sources = [null, b, s, z, null, null], W = w, ByteZeros = byteZeros, Keep = keep, Panels = panels, LayoutAsked = g.MatVec.WeightLayout,
            Int8 = NBitsWeight.Int8Compute(product, DType.Float32, w, z),
            Words = View(words, n * w.KBlocks * w.BlobSize / 4, wordsAt),
            Scales = View(scales, n * w.KBlocks, scalesAt),
            Zeros = zeros is null ? null : View(zeros, byteZeros ? (n * w.KBlocks + 3) / 4 : n * w.KBlocks, zerosAt),
        });
    }

    /// <summary>Whether a panel kernel's nibbles are f16 subnormals (<see cref="WebGpuPlatform.Q4HalfNibbles"/>): panels, float x.</summary>
    internal static bool HalfNibbled(WebGpuPlatform g, Q4Panels? panels, bool a8) => panels is not null && !a8 && g.Q4HalfNibbles;

    /// <summary>Whether a weight's blocks keep scale and zero point in one u32 (<see cref="ZeroKind.Packed"/>): panels of
    /// whole words (<see cref="Q4Panels.Words"/>), byte zero points, f16 scales, no zero sums, <c>q4-params=packed</c>.</summary>
    internal static bool Packs(WebGpuPlatform g, Q4Panels? panels, ZeroKind zeros, bool halfScales) =>
        panels == Q4Panels.Words && zeros == ZeroKind.Bytes && halfScales && !g.MatVec.Q4ZeroSum && g.MatVec.Q4PackedParams;

    /// <summary>Each block's scale (as f16, exact: <see cref="HalfScales"/>) in the low half of a u32 and its zero-point
    /// byte above it (<see cref="ZeroKind.Packed"/>).</summary>
    internal static Tensor PackParams(float[] scales, float[] zeros)
    {
        var words = new uint[scales.Length];
        for (int i = 0; i < words.Length; i++) words[i] = BitConverter.HalfToUInt16Bits((Half)scales[i]) | (uint)zeros[i] << 16;
        return new Tensor(DType.UInt32, [words.Length], words);
    }

    /// <summary>Whole-number zero points as bytes, four per u32 (block b in byte b % 4 of word b / 4).</summary>
    internal static Tensor PackBytes(float[] z)
    {
        var words = new uint[(z.Length + 3) / 4];
        for (int i = 0; i < z.Length; i++) words[i / 4] |= (uint)z[i] << (i % 4 * 8);
        return new Tensor(DType.UInt32, [words.Length], words);
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
        var qa = QuantizeIfInt8(g, p, x, rows);
        if (rows <= MatMul.MatVecMaxRows) MatVec(g, x, y, p, rows, null, 0, qa);
        else if (rows <= SkinnyMaxRows)
            for (long m0 = 0; m0 < rows; m0 += MatMul.MatVecMaxRows) MatVec(g, x, y, p, Math.Min(MatMul.MatVecMaxRows, rows - m0), null, m0, qa);
        else
        {
            var bindings = qa is null ? new List<GpuTensor> { x, y, p.Words, p.Scales } : [qa.Data, y, p.Words, p.Scales];
            if (p.Zeros is not null) bindings.Add(p.Zeros);
            if (p.Bias is not null) bindings.Add(p.Bias);
            var meta = new Meta();
            meta.Add(w.N); meta.Add(w.K); meta.Add((long)w.KBlocks * w.BlobSize / 4); meta.Add(w.KBlocks); meta.Add(rows);
            if (qa is not null) meta.Add(qa.PairsAt);
            string variant = $"{w.BlockSize}|{Zero(p)}|{p.Bias is not null}|{Wgsl.Letters([x.Storage, p.Scales.Storage])}|{(int)y.DType}|{qa is not null}|{p.Panels}";
            if ((rows + 63) / 64 > g.Device.Limits.MaxWorkgroupsPerDimension)
                throw new UnsupportedException($"node '{ctx.Node.Name}' (MatMulNBits): {rows} rows need more than maxComputeWorkgroupsPerDimension tiles");
            g.LaunchGroups(new WebGpuPlatform.KernelKey("nbits_tiled", variant),
                () => TiledCode(x, y.DType, w.BlockSize, Zero(p), p.Bias is not null, p.Scales, qa is not null, p.Panels),
                qa is null ? "MatMulNBits_tiled" : "MatMulNBits_tiled_a8", [.. bindings], meta, (uint)((w.N + 63) / 64), (uint)((rows + 63) / 64));
        }
        if (qa is not null) Free(g, qa);
        return [y];
    }

    /// <summary>x's rows quantized to int8 where the node computes with int8 A and x is f32 (the caller frees them), else null.</summary>
    static QuantizedA? QuantizeIfInt8(WebGpuPlatform g, Prepared p, GpuTensor x, long rows) =>
        p.Int8 && x.DType == DType.Float32 && x.Storage == GpuStorage.F32 ? QuantizeA(g, x, rows, p.W.K, p.W.BlockSize) : null;

    /// <summary>A quantized to int8 for <c>accuracy_level=4</c>, as the cpu reference quantizes it
    /// (<see cref="MatMulNBitsOps.QuantizeA"/>), in one u32 buffer (one binding): per row and block of K the codes
    /// (four a word; each 8 values of K as two words, the even-indexed values then the odd, so a packed weight word's
    /// low and high nibbles each meet theirs in one <c>dot4I8Packed</c>; zero past K), then from word
    /// <see cref="PairsAt"/> (a multiple of 4) a pair per block: its scale (max|a| / 127, f32 bits) and Σ codes (i32
    /// bits: a zero point's term).</summary>
    internal sealed record QuantizedA(GpuTensor Data, long PairsAt);

    internal static void Free(WebGpuPlatform g, QuantizedA q) => g.Free(q.Data);

    /// <summary>Quantizes <paramref name="rows"/> rows of x (K long) per block of <paramref name="block"/>; with
    /// <paramref name="gamma"/>, x's RMSNorm first (γ·(x·(1/√(mean x² + ε))), as HF's LlamaRMSNorm; the quantization
    /// takes the normalized values). A workgroup takes 8 values of K a thread (the two code words they make) of one row
    /// (with the norm, each adds the whole row's Σ x² first), the block's threads sharing their largest magnitude and
    /// code sums through workgroup memory; a row's slices run in workgroups of their own, across the GPU.</summary>
    internal static QuantizedA QuantizeA(WebGpuPlatform g, GpuTensor x, long rows, int k, int block, GpuTensor? gamma = null, float eps = 0)
    {
        long kb = (k + block - 1) / block;
        long pairsAt = rows * kb * block / 4;
        var q = new QuantizedA(g.Empty(DType.UInt32, [pairsAt + 2 * rows * kb]), pairsAt);
        var meta = new Meta();
        int wg = Math.Max(block / 8, Math.Min(256, g.Device.Limits.MaxInvocationsPerWorkgroup));
        long slices = (kb * block + wg * 8 - 1) / (wg * 8);
        meta.Add(k); meta.Add(kb); meta.Add(rows); meta.AddFloat(eps); meta.Add(pairsAt); meta.Add(slices);
        var (gx, gy) = Wgsl.Grid(rows * slices * wg, wg, g.Device.Limits.MaxWorkgroupsPerDimension);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("nbits_quantize_a", $"{block}|{gamma is not null}|{(int)x.Storage}|{(int)(gamma?.Storage ?? 0)}|{wg}"),
            () => QuantizeCode(x, gamma, block, wg), gamma is null ? "MatMulNBits_quantize_a" : "MatMulNBits_rmsnorm_quantize_a",
            gamma is null ? [x, q.Data] : [x, gamma, q.Data], meta, gx, gy);
        return q;
    }

    static string QuantizeCode(GpuTensor x, GpuTensor? gamma, int block, int wg)
    {
        var w = new Wgsl(wg).In("x", x);
        if (gamma is not null) w.In("gm", gamma);
        w.Out("qa", DType.UInt32);
        w.Decl($"var<workgroup> red: array<f32, {wg}>;\nvar<workgroup> ired: array<i32, {wg}>;");
        int tpb = block / 8;
        string norm = gamma is null ? "" : $$"""
  var ss = 0.0;
  for (var k = lid.x; k < K; k += {{wg}}u) { let v = x(m * K + k); ss += v * v; }
  red[lid.x] = ss;
  workgroupBarrier();
  for (var st = {{wg / 2}}u; st > 0u; st >>= 1u) {
    if (lid.x < st) { red[lid.x] += red[lid.x + st]; }
    workgroupBarrier();
  }
  let rinv = 1.0 / sqrt(red[0] / f32(K) + bitcast<f32>(md[3]));
  workgroupBarrier();

""";
        string value = gamma is null ? "x(m * K + k)" : "gm(k) * (x(m * K + k) * rinv)";
        return w.Build($$"""
  let K = md[0]; let KB = md[1];
  let wgi = wid.x + wid.y * nwg.x;
  let m = wgi / md[5];
  if (m >= md[2]) { return; }
{{norm}}  let KP = KB * {{block}}u;
  {
    let base = (wgi % md[5]) * {{wg * 8}}u;
    let k0 = base + lid.x * 8u;
    var v: array<f32, 8>;
    var amax = 0.0;
    for (var i = 0u; i < 8u; i++) {
      let k = k0 + i;
      var a = 0.0;
      if (k < K) { a = {{value}}; }
      v[i] = a;
      amax = max(amax, abs(a));
    }
    red[lid.x] = amax;
    workgroupBarrier();
    let first = lid.x - lid.x % {{tpb}}u;
    var bmax = 0.0;
    for (var t = 0u; t < {{tpb}}u; t++) { bmax = max(bmax, red[first + t]); }
    let inv = select(0.0, 127.0 / bmax, bmax != 0.0);
    var pe = 0u; var po = 0u; var sum = 0i;
    for (var i = 0u; i < 4u; i++) {
      let ce = i32(clamp(round(v[2u * i] * inv), -127.0, 127.0));
      let co = i32(clamp(round(v[2u * i + 1u] * inv), -127.0, 127.0));
      sum += ce + co;
      pe |= (bitcast<u32>(ce) & 255u) << (8u * i);
      po |= (bitcast<u32>(co) & 255u) << (8u * i);
    }
    ired[lid.x] = sum;
    workgroupBarrier();
    if (k0 < KP) {
      let at = m * (KP / 4u) + k0 / 4u;
      qa_st(at, pe);
      qa_st(at + 1u, po);
      if (lid.x == first) {
        var bs = 0i;
        for (var t = 0u; t < {{tpb}}u; t++) { bs += ired[first + t]; }
        let blk = m * KB + k0 / {{block}}u;
        qa_st(md[4] + 2u * blk, bitcast<u32>(bmax / 127.0));
        qa_st(md[4] + 2u * blk + 1u, bitcast<u32>(bs));
      }
    }
    workgroupBarrier();
  }
""", elementwise: false);
    }

    /// <summary>Rows of A up to which a product runs as decode kernels over <see cref="MatMul.MatVecMaxRows"/> rows at a
    /// time (each reads the packed weight once) rather than the tiled kernel (short prompts; <c>bench llm-large
    /// --quantize q4</c>: the tiled kernel took 0.73 ms a 4096×14336 product of 16 rows on an H100, a decode kernel 0.04).</summary>
    internal const long SkinnyMaxRows = 32;

    /// <summary>The decode kernel for <paramref name="rows"/> rows of x (from row <paramref name="m0"/>) into the same
    /// rows of y, plus <paramref name="residual"/> (y's shape, f32 words) in the store when given (the
    /// <c>matmul_add</c> region).</summary>
    static void MatVec(WebGpuPlatform g, GpuTensor x, GpuTensor y, Prepared p, long rows, GpuTensor? residual, long m0 = 0, QuantizedA? qa = null)
    {
        var w = p.W;
        long rowWords = (long)w.KBlocks * w.BlobSize / 4;
        var lk = (rows, x.Storage, y.DType, qa is not null, residual is not null);
        if (!p.Launches.TryGet(g.MatVec, lk, out var launch)) launch = p.Launches.Add(lk, MakeVecLaunch(g, x, y, p, rows, residual is not null, qa is not null));
        var (shape, words, units) = (launch.Shape, launch.Words, launch.Units);
        // Split rows: the kernel writes each range's partial sums [split, rows, N]; their sum adds bias and residual.
        int split = shape.Split;
        var part = split > 1 ? g.Empty(DType.Float32, [split * rows * w.N]) : null;
        var bias = split > 1 ? null : p.Bias;
        var rs = split > 1 ? null : residual;
        var bindings = qa is null ? new List<GpuTensor> { x, part ?? y, p.Words, p.Scales } : [qa.Data, part ?? y, p.Words, p.Scales];
        if (p.Zeros is not null) bindings.Add(p.Zeros);
        if (bias is not null) bindings.Add(bias);
        if (rs is not null) bindings.Add(rs);
        var meta = new Meta();
        meta.Add(w.N); meta.Add(w.K); meta.Add(rowWords); meta.Add(w.KBlocks); meta.Add(rows); meta.Add(units); meta.Add(m0);
        if (qa is not null) meta.Add(qa.PairsAt);
        var yType = part?.DType ?? y.DType;
        g.NoteWeights(p.Words);
        g.LaunchGroups(launch.Key, () => MatVecCode(g, x, yType, w.BlockSize, Zero(p), bias is not null, rs is not null, p.Scales, words, launch.Vec, shape, (int)rows, qa is not null, p.Panels),
            launch.Label, [.. bindings], meta, launch.Gx, launch.Gy, (uint)split);
        if (part is null) return;
        MatMul.SumParts(g, part, split, rows * w.N, w.N, y, m0 * w.N, p.Bias, residual);
        g.Free(part);
    }

    static VecLaunch MakeVecLaunch(WebGpuPlatform g, GpuTensor x, GpuTensor y, Prepared p, long rows, bool residual, bool a8)
    {
        var w = p.W;
        // A unit is 2 or 4 words (MatVecTuning.Q4UnitWords) where every row's words start aligned to it, else one u32 (8 values).
        long rowWords = (long)w.KBlocks * w.BlobSize / 4;
        // int8 A: a unit is one block (its codes, scale and sum go together). Panels: a unit is 16 bytes of a panel.
        int words = a8 ? w.BlockSize / 8 : p.Panels is not null ? 4 : g.MatVec.Q4UnitWords(rowWords, w.N);
        long units = rowWords / words;
        bool vec = x.Storage == GpuStorage.F32 && units * words * 8 == w.K;
        var shape = g.MatVec.Q4(w.N, units, g.Device.Limits.MaxInvocationsPerWorkgroup, g.SubgroupLanes, p.Panels is not null, oneRow: rows == 1 && !a8);
        if (a8 || p.Panels is not null) shape = shape with { SharedX = false };
        int split = shape.Split;
        bool bias = split == 1 && p.Bias is not null, rs = split == 1 && residual;
        var yType = split > 1 ? DType.Float32 : y.DType;
        string variant = $"{w.BlockSize}|{Zero(p)}|{bias}|{rs}|{Wgsl.Letters([x.Storage, p.Scales.Storage])}|{(int)yType}|{a8}|{p.Panels}";
        var (gx, gy) = BlockedMatVec.Grid(g, w.N, shape);
        string unit = a8 ? "_a8" : p.Panels is { } pl ? pl.Suffix : words == 4 ? "_w" : words == 2 ? "_w2" : "";
        return new VecLaunch(new WebGpuPlatform.KernelKey("nbits_matvec", $"{variant}|{words}|{vec}|{shape}|{rows}|{g.MatVec.Q4Hoist}|{g.MatVec.Q4ZeroSum}|{HalfNibbled(g, p.Panels, a8)}"),
            $"MatMulNBits_matvec_t{shape.Threads}r{shape.Rows}{unit}{(split > 1 ? $"_k{split}" : residual ? "_add" : "")}_r{rows}", shape, words, units, vec, gx, gy);
    }

    /// <summary>The <c>matmul_add</c> region over a MatMulNBits product (inputs x, B, scales [, zero_points], r): y =
    /// MatMulNBits(x) + r with r added in the decode kernel's store; null (the body runs) for prefill-shaped x, an r not
    /// of y's shape, or a non-f32 x.</summary>
    public static GpuTensor? FusedAdd(WebGpuPlatform g, NodeContext ctx, Graph body, int opset, GpuTensor?[] ins)
    {
        if (body.Nodes is not [{ OpType: "MatMulNBits" } product, { OpType: "Add" } add] || ins.Length != ctx.Node.Inputs.Length) return null;
        GpuTensor? In(string s) => s.Length == 0 ? null : Array.IndexOf(ctx.Node.Inputs, s) is int i and >= 0 ? ins[i] : null;
        var productIns = product.Inputs.Select(In).ToArray();
        string rName = add.Inputs[0] == product.Outputs[0] ? add.Inputs[1] : add.Inputs[0];
        if (productIns.Length < 3 || productIns[0] is not { } x || In(rName) is not { } r) return null;
        // NOTE: f32 only (as MatMul's matmul_add): an f16 graph rounds the product before the Add, the store rounds once.
        if (x.DType != DType.Float32 || x.Storage != GpuStorage.F32 || x.Rank == 0) return null;
        if (productIns.Skip(1).Any(t => t is { Source: null })) return null;
        if (r.DType != x.DType || r.Storage != GpuStorage.F32 || r.IsStrided) return null;
        var pctx = new NodeContext(product, opset);
        var p = Prepare(g, pctx, x, productIns);
        var w = p.W;
        NBitsWeight.CheckA(pctx, x.DType, x.Shape, w.K);
        long rows = x.Length / w.K;
        long[] shape = [.. x.Shape[..^1], w.N];
        if (rows == 0 || rows > MatMul.MatVecMaxRows || !ShapeUtil.SameShape(r.Shape, shape)) return null;
        if (6 + (p.Zeros is null ? 0 : 1) + (p.Bias is null ? 0 : 1) + 1 > g.Device.Limits.MaxStorageBuffersPerStage) return null;
        var y = g.Empty(x.DType, shape);
        var qa = QuantizeIfInt8(g, p, x, rows);
        MatVec(g, x, y, p, rows, r, 0, qa);
        if (qa is not null) Free(g, qa);
        return y;
    }

    /// <summary>How a weight's zero points are stored: none (8), bytes four a u32, f32, or each beside its block's f16 scale
    /// in one u32 of the scales (<see cref="PackParams"/>: the panel kernels load both in one).</summary>
    internal enum ZeroKind { None, Bytes, Floats, Packed }

    /// <summary>A weight's zero-point kind; u32 scales are packed with the zero points (<see cref="PackParams"/>).</summary>
    static ZeroKind Zero(Prepared p) => p.Scales.Storage == GpuStorage.U32 ? ZeroKind.Packed : p.Zeros is null ? ZeroKind.None : p.ByteZeros ? ZeroKind.Bytes : ZeroKind.Floats;

    /// <summary>How a kernel reads int8 A (<see cref="QuantizedA"/>) in place of x: as u32 words or as vec4 loads.</summary>
    enum A8Read { None, Words, Vec4 }

    /// <summary>Declares x (or int8 A), y, the weight words (u32, or vec2/vec4 of u32 for 8/16-byte units), scales, zero
    /// points and bias, in the bindings' order, and <c>zero_(block)</c>.</summary>
    static Wgsl Declare(GpuTensor x, DType y, ZeroKind zeros, bool bias, GpuTensor scales, bool xvec, int wg, int words = 1, bool residual = false, A8Read a8 = A8Read.None, Q4Panels? panels = null)
    {
        var w = new Wgsl(wg);
        if (a8 != A8Read.None) DeclareA8(w, a8 == A8Read.Vec4);
        else BlockedMatVec.DeclareX(w, x, xvec);
        w.Out("y", y);
        DeclareWords(w, 2, words == 1 ? 1 : Math.Min(words, 4));
        DeclareScales(w, scales, panels);
        if (zeros == ZeroKind.Bytes) w.In("zp", GpuStorage.U32);
        if (zeros == ZeroKind.Floats) w.In("zp", GpuStorage.F32);
        if (bias) w.In("bias", GpuStorage.F32);
        if (residual) w.In("rs", GpuStorage.F32);
        w.Decl(ZeroFunction(zeros));
        return w;
    }

    /// <summary>Declares int8 A (<see cref="QuantizedA"/>) at binding 0: as vec4 loads (<c>qa_b</c>) or u32 words
    /// (<c>qa(i)</c>).</summary>
    internal static void DeclareA8(Wgsl w, bool vec4)
    {
        if (vec4) w.Reserve().Decl("@group(0) @binding(0) var<storage, read> qa_b: array<vec4<u32>>;");
        else w.In("qa", GpuStorage.U32);
    }

    /// <summary>Declares the packed weight at <paramref name="binding"/>: <c>bw(i)</c> (u32) for one-word units, else
    /// <c>bq_b</c> (vec2 or vec4 of u32); <see cref="Weights"/> names what the unit code indexes.</summary>
    internal static void DeclareWords(Wgsl w, int binding, int words)
    {
        if (words == 1) w.In("bw", GpuStorage.U32);
        else w.Reserve().Decl($"@group(0) @binding({binding}) var<storage, read> bq_b: array<vec{words}<u32>>;");
    }

    /// <summary>Declares the scales: <c>sc(i)</c>, or in a panel layout <c>scv_b</c>, one load of a unit's scales
    /// (<see cref="Q4Panels.ScaleLoads"/>).</summary>
    internal static void DeclareScales(Wgsl w, GpuTensor scales, Q4Panels? panels)
    {
        if (scales.Storage == GpuStorage.U32)
        {
            // Packed (ZeroKind.Packed): scw(b), block b's u32; sc(b) its scale.
            if (panels is null) w.In("scw", GpuStorage.U32);
            else w.InArray("scv", panels.ScaleElement(scales.Storage)).Decl("fn scw(b: u32) -> u32 { return scv_b[b >> 2u][b & 3u]; }");
            w.Decl("fn sc(b: u32) -> f32 { return unpack2x16float(scw(b)).x; }");
        }
        else if (panels is null) w.In("sc", scales);
        else w.InArray("scv", panels.ScaleElement(scales.Storage));
    }

    /// <summary>Whether a weight's scales are kept as f16 on the GPU: f16 scales, or f32 ones that are all 0 or normal f16
    /// values (<see cref="WeightQuantizer.HalfExact"/>; <c>--quantize q4</c> makes them so, <c>q4-scales=f32</c> keeps them
    /// f32), read back exactly.</summary>
    internal static bool HalfScales(WebGpuPlatform g, Tensor source, float[] values) =>
        source.DType == DType.Float16 || !g.MatVec.Q4F32Scales && Array.TrueForAll(values, WeightQuantizer.HalfExact);

    internal static string Weights(int words) => words == 1 ? "bw_b" : "bq_b";

    /// <summary><c>zero_(block)</c>: a block's zero point from <c>zp</c> (bytes four per u32, or f32), or 8; for bytes also
    /// <c>zmag_(block)</c>, 2^23 + the zero point (<see cref="ZeroMagic"/>).</summary>
    internal static string ZeroFunction(ZeroKind zeros) => $"fn zero_(b: u32) -> f32 {{ {zeros switch
    {
        ZeroKind.Bytes => "return f32((zp(b >> 2u) >> ((b & 3u) * 8u)) & 255u);",
        ZeroKind.Floats => "return zp(b);",
        ZeroKind.Packed => "return f32((scw(b) >> 16u) & 255u);",
        _ => "return 8.0;",
    }} }}" + zeros switch
    {
        ZeroKind.Bytes => $"\nfn zmag_(b: u32) -> f32 {{ return {ZeroMagic("zp(b >> 2u) >> ((b & 3u) * 8u)")}; }}",
        ZeroKind.Packed => $"\nfn zmag_(b: u32) -> f32 {{ return {ZeroMagic("scw(b) >> 16u")}; }}",
        _ => "",
    };

    /// <summary>2^23 + the zero-point byte in the low 8 bits of <paramref name="word"/>, made by setting the exponent bits (an
    /// integer op) rather than an int-to-float conversion (a quarter-rate instruction on NVIDIA GPUs, once a block a row).
    /// <c>vec4(that)·P16 + CK</c> is then the unit code's <c>MAG + z·P16</c> exactly: every product and sum is an integer
    /// below 2^24 times a power of two.</summary>
    internal static string ZeroMagic(string word) => $"bitcast<f32>((({word}) & 255u) | 1258291200u)";

    /// <summary>Constants the unit code reads (<c>let</c>s at the top of main): nibble masks and the 2^23 magic.</summary>
    internal const string UnitPrologue = """
  let NM = vec4<u32>(15u, 240u, 3840u, 61440u);
  let NB = vec4<u32>(1258291200u);
  let MAG = vec4<f32>(8388608.0);
  let P16 = vec4<f32>(1.0, 16.0, 256.0, 4096.0);
  let C8 = MAG + 8.0 * P16;
  let CK = MAG - MAG * P16;

""";

    /// <summary>x's vec4 scale as it is loaded: lane i times 16^−i (exact), matching nibble i's place in a half-word.</summary>
    internal const string XScale = "vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625)";

    /// <summary>The lane of <see cref="XScale"/> that scales x's value at K index <paramref name="k"/>; with
    /// <paramref name="half"/>, of <see cref="XScaleFor"/>'s half-nibble scale.</summary>
    internal static float XScaleOf(long k, bool half = false) => half ? (k & 1) == 0 ? 16777216f : 1048576f : 1f / (1 << (int)(4 * (k & 3)));

    /// <summary>x's vec4 scale as it is loaded: <see cref="XScale"/>, or for nibbles made floats as f16 subnormals
    /// (<see cref="HalfNibbles"/>) 2^24 for lanes 0 and 2 and 2^20 for lanes 1 and 3, which makes each product n·x.
    /// |x| must stay below 2^104.</summary>
    internal static string XScaleFor(bool half) => half ? "vec4<f32>(16777216.0, 1048576.0, 16777216.0, 1048576.0)" : XScale;

    /// <summary>Lets where nibbles are f16 subnormals: the masks of a u32's nibbles 0 and 4 and of 1 and 5 (<c>HM</c>,
    /// <c>HN</c>), <c>PH</c> (a dot of it with scaled x is Σx·2^24: a block sum on the scale of the zero points read as
    /// f16 subnormals, z·2^-24) and <c>Z8H</c>, weights without zero points' 8 on that scale (2^-21, a normal f32).</summary>
    internal const string HalfPrologue = "  let HM = 983055u; let HN = 15728880u;\n  let PH = vec4<f32>(1.0, 16.0, 1.0, 16.0);\n  let Z8H = 0.000000476837158203125;\n";

    /// <summary>WGSL lets <c>qa{i}</c> and <c>qb{i}</c>, the nibbles of <paramref name="word"/>'s low and high half-words
    /// times 2^-24 (lanes 1 and 3 times 16 more): each pair of nibbles 16 bits apart masked in place into the mantissas of
    /// two f16 subnormals that <c>unpack2x16float</c> makes f32 exactly (nibbles 2, 3, 6 and 7 after one shift by 8).
    /// Four masks, one shift and four conversions a word, where <see cref="NibbleFloats"/> takes eight masks, a shift
    /// and eight subtractions. The zero point is then taken out as z·Σx a block.</summary>
    internal static string HalfNibbles(string indent, int i, string word) =>
        $"{indent}let ul{i} = unpack2x16float({word} & HM);\n{indent}let uh{i} = unpack2x16float({word} & HN);\n" +
        $"{indent}let vw{i} = {word} >> 8u;\n{indent}let gl{i} = unpack2x16float(vw{i} & HM);\n{indent}let gh{i} = unpack2x16float(vw{i} & HN);\n" +
        $"{indent}let qa{i} = vec4<f32>(ul{i}.x, uh{i}.x, gl{i}.x, gh{i}.x);\n{indent}let qb{i} = vec4<f32>(ul{i}.y, uh{i}.y, gl{i}.y, gh{i}.y);\n";

    /// <summary>A zero-point byte (the low 8 bits of <paramref name="word"/>) as an f16 subnormal made f32: z·2^-24.</summary>
    internal static string HalfZero(string word) => $"unpack2x16float(({word}) & 255u).x";

    /// <summary>Runs one small kernel with the panel kernels' operations where nibbles are f16 subnormals
    /// (<see cref="HalfNibbles"/>, <see cref="HalfZero"/>, their dots with scaled x) and compares its sums, exact in f32,
    /// with the host's: false where the device flushes f16 subnormals to zero as it widens them (which WGSL allows) or
    /// computes them otherwise.</summary>
    internal static bool ProbeHalfNibbles(WebGpuPlatform g)
    {
        const int n = 64;
        var rng = new Random(7);
        var words = new uint[n];
        var zeros = new uint[n];
        var xs = new float[8 * n];
        var want = new float[n];
        for (int i = 0; i < n; i++)
        {
            words[i] = (uint)rng.NextInt64(0, 1L << 32);
            zeros[i] = (uint)rng.Next(0, 256);
            double sum = 0;
            int e = rng.Next(-30, 31);
            for (int j = 0; j < 8; j++)
            {
                // Small integers times 2^(e..e+3), e from -30 to 30 across threads: every product and sum is exact in f32.
                xs[8 * i + j] = MathF.ScaleB(rng.Next(-8, 9), e + rng.Next(0, 4));
                sum += (double)xs[8 * i + j] * (((words[i] >> (4 * j)) & 15) - (double)zeros[i]);
            }
            want[i] = (float)sum;
        }
        string xsc = XScaleFor(true);
        string body = $$"""
{{HalfPrologue}}  let w = wq(i);
  let xa = vec4<f32>(x(8u * i), x(8u * i + 1u), x(8u * i + 2u), x(8u * i + 3u)) * {{xsc}};
  let xb = vec4<f32>(x(8u * i + 4u), x(8u * i + 5u), x(8u * i + 6u), x(8u * i + 7u)) * {{xsc}};
{{HalfNibbles("  ", 0, "w")}}  let zh = {{HalfZero("zq(i)")}};
  y_st(i, (dot(qa0, xa) + dot(qb0, xb)) - zh * (dot(xa, PH) + dot(xb, PH)));
""";
        var tw = g.UploadTemporary(new Tensor(DType.UInt32, [n], words));
        var tz = g.UploadTemporary(new Tensor(DType.UInt32, [n], zeros));
        var tx = g.UploadTemporary(new Tensor(DType.Float32, [8 * n], xs));
        var y = g.Empty(DType.Float32, [n]);
        try
        {
            var meta = new Meta();
            meta.Add(n);
            g.Launch(new WebGpuPlatform.KernelKey("half_nibble_probe", ""), () => new Wgsl(g.Workgroup).In("wq", tw).In("zq", tz).In("x", tx).Out("y", DType.Float32).Build(body),
                "HalfNibbleProbe", [tw, tz, tx, y], meta, n);
            var got = g.Download(y).As<float>();
            for (int i = 0; i < n; i++) if (BitConverter.SingleToInt32Bits(got[i]) != BitConverter.SingleToInt32Bits(want[i])) return false;
            return true;
        }
        finally
        {
            g.Free(tw); g.Free(tz); g.Free(tx); g.Free(y);
        }
    }

    /// <summary>WGSL adding one unit (<paramref name="words"/> u32 words: 8 values each) of weight row <paramref name="row"/>
    /// (words at <c>row·U + u</c> of <paramref name="weights"/>, blocks at <c>row·KB</c>) times x's unit (<c>xq{m}_{j}</c>,
    /// scaled by <see cref="XScale"/>) into <paramref name="acc"/>(m) for each of <paramref name="rows"/> x rows. With
    /// <paramref name="loaded"/>, the unit's words, scales and zero points were loaded ahead by <see cref="UnitLoads"/>
    /// under that suffix.</summary>
    internal static string UnitCode(string weights, string row, Func<int, string> acc, int block, ZeroKind zeros, int words, int rows, string? loaded = null)
    {
        int S = Math.Min(words, block / 8);                 // words of one block inside a unit
        var sb = new StringBuilder(loaded is null ? $"    {{\n      let wq = {weights}[{row} * U + u];\n" : $"    {{\n      let wq = wq{loaded};\n");
        for (int seg = 0; seg < words / S; seg++)
        {
            if (loaded is null) sb.Append($"      {{\n        let b = {BlockOf(row, block, words, seg)};\n        let s = sc(b);\n");
            else sb.Append($"      {{\n        let s = s{loaded}_{seg};\n");
            string z = loaded is null ? zeros == ZeroKind.Bytes ? "zmag_(b)" : "zero_(b)" : $"z{loaded}_{seg}";
            sb.Append(zeros switch
            {
                ZeroKind.None => "        let c = C8;\n",
                ZeroKind.Bytes => $"        let c = vec4<f32>({z}) * P16 + CK;\n",
                _ => $"        let c = MAG;\n        let zc = {z} * P16;\n",
            });
            string zc = zeros == ZeroKind.Floats ? " - zc" : "";
            var terms = Enumerable.Range(0, rows).Select(_ => new List<string>()).ToArray();
            for (int i = 0; i < S; i++)
            {
                int wi = seg * S + i;
                string word = words == 1 ? "wq" : $"wq.{"xyzw"[wi]}";
                sb.Append(NibbleFloats("        ", i, word, "c", after: zc));
                for (int m = 0; m < rows; m++) { terms[m].Add($"dot(qa{i}, xq{m}_{2 * wi})"); terms[m].Add($"dot(qb{i}, xq{m}_{2 * wi + 1})"); }
            }
            for (int m = 0; m < rows; m++) sb.Append($"        {acc(m)} += s * {Tree(terms[m])};\n");
            sb.Append("      }\n");
        }
        return sb.Append("    }\n").ToString();
    }

    /// <summary>WGSL lets <c>qa{i}</c> and <c>qb{i}</c>: the four nibbles of <paramref name="word"/>'s low and high
    /// half-words made floats (or-ed into the mantissa of 2^23, see the class summary) minus <paramref name="minus"/>
    /// (2^23 plus the zero point's term, exact; the high half's <paramref name="minusHigh"/> where it lies in another block),
    /// then <paramref name="after"/> (a further subtraction, or empty).</summary>
    internal static string NibbleFloats(string indent, int i, string word, string minus, string? minusHigh = null, string after = "") =>
        $"{indent}let qa{i} = (bitcast<vec4<f32>>((vec4<u32>({word}) & NM) | NB) - {minus}){after};\n" +
        $"{indent}let qb{i} = (bitcast<vec4<f32>>((vec4<u32>({word} >> 16u) & NM) | NB) - {minusHigh ?? minus}){after};\n";

    /// <summary>Block index of segment <paramref name="seg"/> of unit u of weight row <paramref name="row"/>.</summary>
    static string BlockOf(string row, int block, int words, int seg) =>
        $"{row} * KB + {(block >= 8 * words ? (block == 8 * words ? "u" : $"u / {block / (8 * words)}u") : $"u * {8 * words / block}u + {seg}u")}";

    /// <summary>Loads one unit of weight row <paramref name="row"/> ahead of its math (<see cref="UnitCode"/> with
    /// <c>loaded</c> = <paramref name="tag"/>): its words <c>wq{tag}</c>, each block segment's scale <c>s{tag}_{seg}</c> and
    /// zero point <c>z{tag}_{seg}</c>.</summary>
    internal static string UnitLoads(string weights, string row, string tag, int block, ZeroKind zeros, int words)
    {
        int S = Math.Min(words, block / 8);
        var sb = new StringBuilder($"    let wq{tag} = {weights}[{row} * U + u];\n");
        for (int seg = 0; seg < words / S; seg++)
        {
            sb.Append($"    let b{tag}_{seg} = {BlockOf(row, block, words, seg)};\n    let s{tag}_{seg} = sc(b{tag}_{seg});\n");
            if (zeros != ZeroKind.None) sb.Append($"    let z{tag}_{seg} = {(zeros == ZeroKind.Bytes ? "zmag_" : "zero_")}(b{tag}_{seg});\n");
        }
        return sb.ToString();
    }

    /// <summary>The unit code of several weight rows (<see cref="UnitCode"/> each); with <paramref name="hoist"/>
    /// (<c>webgpu?q4-loads=first</c>) every row's loads come first, then the rows' math, so a thread has all its loads
    /// of the unit in flight at once whatever the compiler's scheduling.</summary>
    internal static string UnitRows(string weights, IReadOnlyList<(string Row, Func<int, string> Acc)> rs, int block, ZeroKind zeros, int words, int rows, bool hoist)
    {
        if (!hoist) return string.Concat(rs.Select(r => UnitCode(weights, r.Row, r.Acc, block, zeros, words, rows)));
        var sb = new StringBuilder();
        for (int i = 0; i < rs.Count; i++) sb.Append(UnitLoads(weights, rs[i].Row, $"_{i}", block, zeros, words));
        for (int i = 0; i < rs.Count; i++) sb.Append(UnitCode(weights, rs[i].Row, rs[i].Acc, block, zeros, words, rows, $"_{i}"));
        return sb.ToString();
    }

    /// <summary>Loads int8 A's unit (one block) for x row m: its codes <c>xc{m}_{i}</c> (vec4s), scale <c>xs{m}</c>
    /// and code sum <c>xz{m}</c> (the pair at vec4 <c>QP</c> on, a let the caller defines); <paramref name="row"/> is x's
    /// row expression.</summary>
    internal static string LoadA8(int m, string row, int block)
    {
        var sb = new StringBuilder($"    let ab{m} = ({row}) * KB + u;\n    let mp{m} = qa_b[QP + ab{m} / 2u];\n    let od{m} = (ab{m} & 1u) != 0u;\n");
        sb.Append($"    let xs{m} = bitcast<f32>(select(mp{m}.x, mp{m}.z, od{m}));\n    let xz{m} = bitcast<i32>(select(mp{m}.y, mp{m}.w, od{m}));\n");
        for (int i = 0; i < block / 16; i++) sb.Append($"    let xc{m}_{i} = qa_b[ab{m} * {block / 16}u + {i}u];\n");
        return sb.ToString();
    }

    /// <summary>WGSL adding one block of weight row <paramref name="row"/> (unit u = block u; words at
    /// <c>(row·U + u)·V + v</c>, V = block/32 vec4s, or one vec2 for blocks of 16) times int8 A's unit
    /// (<see cref="LoadA8"/>) into <paramref name="acc"/>(m): a word's low nibbles against the even values' codes and
    /// its high nibbles against the odd values' (<c>dot4I8Packed</c>, exact), the zero point through Σ codes, then
    /// <c>(scale_a · scale_b) · Σ code·(q − zero)</c> as the cpu reference adds it.</summary>
    internal static string UnitCodeA8(string weights, string row, Func<int, string> acc, int block, ZeroKind zeros, int rows)
    {
        int W = block / 8, V = Math.Max(1, W / 4);
        var sb = new StringBuilder($"    {{\n      let b = {row} * KB + u;\n      let s = sc(b);\n");
        sb.Append(zeros == ZeroKind.Bytes ? "      let z = i32((zp(b >> 2u) >> ((b & 3u) * 8u)) & 255u);\n" : "      let z = 8i;\n");
        for (int v = 0; v < V; v++) sb.Append($"      let wv{v} = {weights}[{(V == 1 ? $"{row} * U + u" : $"({row} * U + u) * {V}u + {v}u")}];\n");
        for (int j = 0; j < W; j++) sb.Append($"      let wl{j} = wv{j / 4}.{"xyzw"[j % 4]} & 0x0F0F0F0Fu;\n      let wh{j} = (wv{j / 4}.{"xyzw"[j % 4]} >> 4u) & 0x0F0F0F0Fu;\n");
        for (int m = 0; m < rows; m++)
        {
            var terms = new List<string>();
            for (int j = 0; j < W; j++)
            {
                terms.Add($"dot4I8Packed(wl{j}, xc{m}_{2 * j / 4}.{"xyzw"[2 * j % 4]})");
                terms.Add($"dot4I8Packed(wh{j}, xc{m}_{(2 * j + 1) / 4}.{"xyzw"[(2 * j + 1) % 4]})");
            }
            sb.Append($"      {acc(m)} += (s * xs{m}) * f32({Tree(terms)} - z * xz{m});\n");
        }
        return sb.Append("    }\n").ToString();
    }

    /// <summary>A sum as a balanced tree of additions: a short chain of dependent adds (a left-to-right sum of a unit's
    /// eight dot products would chain 32 dependent multiply-adds); with <paramref name="pair"/>, that combination (e.g.
    /// <c>max</c>) in place of the addition.</summary>
    internal static string Tree(IReadOnlyList<string> terms, Func<string, string, string>? pair = null) =>
        terms.Count == 1 ? terms[0] : (pair ?? ((a, b) => $"({a} + {b})"))(Tree(terms.Take(terms.Count / 2).ToList(), pair), Tree(terms.Skip(terms.Count / 2).ToList(), pair));

    static string MatVecCode(WebGpuPlatform g, GpuTensor x, DType y, int block, ZeroKind zeros, bool bias, bool residual, GpuTensor scales, int words, bool vec, MatVecShape shape, int rows, bool a8 = false, Q4Panels? panels = null)
    {
        bool zeroSums = panels is not null && !a8 && zeros == ZeroKind.Bytes && g.MatVec.Q4ZeroSum;
        bool half = HalfNibbled(g, panels, a8);
        var w = Declare(x, y, zeros, bias, scales, vec || a8, shape.Workgroup, words, residual, a8 ? A8Read.Vec4 : A8Read.None, panels);
        string weights = Weights(words);
        string Row(int r) => a8 ? UnitCodeA8(weights, $"row{r}", m => $"a{r}_{m}", block, zeros, rows)
            : panels is not null ? panels.UnitCode(weights, $"row{r}", m => $"a{r}_{m}", block, zeros, rows, scales.Storage, zeroSums, half)
            : UnitCode(weights, $"row{r}", m => $"a{r}_{m}", block, zeros, words, rows);
        bool hoist = !a8 && panels is null && g.MatVec.Q4Hoist;
        var f = new BlockedMatVec.Format
        {
            UnitValues = 8 * words,
            XAt = panels is null ? null : panels.XAt,
            UnitHead = panels?.UnitHead ?? "",
            PerUnit = half ? m => panels!.BlockSums(m, "PH") : zeroSums ? panels!.BlockSums : null,
            XScale = a8 ? null : XScaleFor(half),
            LoadUnit = a8 ? m => LoadA8(m, $"m0 + {m}u", block) : null,
            Prologue = "  let KB = md[3];\n" + (a8 ? "  let QP = md[7] / 4u;\n" : UnitPrologue + (half ? HalfPrologue : "")),
            Row = Row,
            Rows = hoist ? n => UnitRows(weights, Enumerable.Range(0, n).Select(r => ($"row{r}", (Func<int, string>)(m => $"a{r}_{m}"))).ToList(), block, zeros, words, rows, true) : null,
            // NOTE: (sum + bias) + r: the order the cpu reference adds MatMulNBits' bias and then the region's Add. Split:
            // range z's partial sums at [z, m, row] (MatMul.SumParts adds them, then bias and r).
            Store = shape.Split > 1 ? (m, row, sum) => $"y_st((wid.z * {rows}u + {m}u) * N + {row}, {sum});"
                : (m, row, sum) => $"y_st((m0 + {m}u) * N + {row}, {(residual ? "(" : "")}{sum}{(bias ? $" + bias({row})" : "")}{(residual ? $") + rs((m0 + {m}u) * N + {row})" : "")});",
        };
        // NOTE: md here is N, K, words per row (the tiled kernel's), k_blocks, rows, units per row, x's first row: the
        // skeleton reads units from md[2].
        string body = BlockedMatVec.Body(w, f, shape, rows, vec || a8, g.Device.Limits.MaxWorkgroupStorageBytes, "m0").Replace("let U = md[2];", "let U = md[5]; let m0 = md[6];");
        return w.Build(body, elementwise: false);
    }

    static string TiledCode(GpuTensor x, DType y, int block, ZeroKind zeros, bool bias, GpuTensor scales, bool a8 = false, Q4Panels? panels = null)
    {
        var w = Declare(x, y, zeros, bias, scales, false, 256, a8: a8 ? A8Read.Words : A8Read.None);
        // Panels: a word and a block are read at their stored positions.
        if (panels is not null) w.Decl(panels.Functions(block / 8));
        string Word(string i) => panels is null ? $"bw({i})" : $"pword_({i})";
        string Block(string b) => panels is null ? b : $"pb_({b})";
        // int8 A: a = code · scale_a (code k of a row: word (k / 8)·2 + k % 2 of its block's words, byte (k % 8) / 2).
        string aLoad = a8 ? "let cw = qa(gm * md[3] * " + (block / 4) + "u + (gk / 8u) * 2u + (gk & 1u)); av = f32(bitcast<i32>(cw << (24u - 8u * ((gk % 8u) / 2u))) >> 24u) * bitcast<f32>(qa(md[5] + 2u * (gm * md[3] + gk / " + block + "u)));"
            : "av = f32(x(gm * K + gk));";
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
      if (gm < M && gk < K) { {{aLoad}} }
      As[ak * 64u + am] = av;
    }
    // B's tile: 128 threads each read one word (8 values of one column, one block) and dequantize it.
    if (lid.x < 128u) {
      let bn = lid.x / 2u; let kh = (lid.x % 2u) * 8u;
      let gn = col0 + bn; let gk = k0 + kh;
      var word = 0u; var s = 0.0; var z = 0.0;
      if (gn < N && gk < K) {
        word = {{Word("gn * md[2] + gk / 8u")}};
        let b = {{Block($"gn * md[3] + gk / {block}u")}};
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
