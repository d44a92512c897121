using System.Runtime.Intrinsics;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary><c>com.microsoft</c> MatMulNBits (ONNX Runtime's contrib op for block-quantized weights, the format ONNX
/// Runtime GenAI writes int4 LLMs in): Y = A · dequantize(B), B a [K, N] weight stored transposed and block-quantized
/// along K. The reference dequantizes every weight in f32, <c>(q − zero_point) · scale</c>, then runs the same f32
/// product as MatMul, adds the bias and rounds once to A's type. With <c>accuracy_level=4</c> (ONNX Runtime's int8
/// compute type) it computes as ONNX Runtime's CompInt8 kernels do (MLAS <c>QuantizeARow_CompInt8</c>): A is quantized
/// per block of K (the weight's block size) to int8, <c>scale_a = max|a| / 127</c>, <c>code = round_half_even(a ·
/// (127 / max|a|))</c>; each output is <c>Σ_block (scale_a · scale_b) · Σ code · (q − zero_point)</c>, the inner sum
/// in integers (exact), the outer in f32 block after block (see <see cref="NBitsWeight.Int8Compute"/> for when it
/// applies; other nodes keep f32, the licence ONNX Runtime also takes where its platform lacks the kernel). The GPU
/// kernels compute the same integers.</summary>
public sealed class MatMulNBitsOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r) => r.Add("MatMulNBits", Run, domain: ContribOps.Ms);

    sealed record Entry(Tensor Scales, Tensor? Zeros, float[] W);
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Tensor, Entry> Dequantized = new();
    sealed record IntEntry(Tensor? Zeros, sbyte[] W);
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Tensor, IntEntry> Centered = new();

    static Value?[] Run(NodeContext ctx, Value?[] x)
    {
        var a = x.T(0, ctx);
        Tensor b = x.T(1, ctx), scales = x.T(2, ctx);
        var zeros = x.OptT(3);
        var q = NBitsWeight.Of(ctx, a.DType, a.Shape, b, scales, zeros, x.OptT(4) is not null, x.OptT(5));
        int K = q.K, N = q.N;
        int M = checked((int)(a.Length / K));
        long[] shape = [.. a.Shape[..^1], N];
        if (NBitsWeight.Int8Compute(ctx.Node, a.DType, q, zeros))
        {
            if (!Centered.TryGetValue(b, out var c) || !ReferenceEquals(c.Zeros, zeros))
            {
                c = new IntEntry(zeros, q.Centered());
                Centered.AddOrUpdate(b, c);
            }
            var yi = Int8Product(q, c.W, a.As<float>(), M);
            if (q.Bias is { } bi)
                for (long i = 0; i < yi.Length; i++) yi[i] += bi[i % N];
            return [new Tensor(DType.Float32, shape, yi)];
        }
        // NOTE: a weight is dequantized once per (B, scales, zero points) and kept while B lives: decode steps reuse it.
        if (!Dequantized.TryGetValue(b, out var d) || !ReferenceEquals(d.Scales, scales) || !ReferenceEquals(d.Zeros, zeros))
        {
            d = new Entry(scales, zeros, q.Dequantize());
            Dequantized.AddOrUpdate(b, d);
        }
        var w = d.W;
        var af = TensorConvert.ToF32(a).As<float>();
        var y = new float[(long)M * N];
        if (y.Length > 0) Blas.Sgemm(false, false, M, N, K, 1f, af, K, w, N, 0f, y, N);
        if (q.Bias is { } bias)
            for (long i = 0; i < y.Length; i++) y[i] += bias[i % N];
        return [TensorConvert.To(new Tensor(DType.Float32, shape, y), a.DType)];
    }

    /// <summary>A quantized to int8 per block of K as ONNX Runtime's CompInt8 kernels do: codes [M, k_blocks·block] (zero
    /// past K), scales [M, k_blocks].</summary>
    internal static (sbyte[] Codes, float[] Scales) QuantizeA(ReadOnlySpan<float> a, int m, int k, int block)
    {
        int kb = (k + block - 1) / block, kp = kb * block;
        var codes = new sbyte[(long)m * kp];
        var scales = new float[(long)m * kb];
        for (int r = 0; r < m; r++)
            for (int blk = 0; blk < kb; blk++)
            {
                var v = a.Slice(r * k + blk * block, Math.Min(block, k - blk * block));
                float amax = 0;
                foreach (float x in v) amax = Math.Max(amax, Math.Abs(x));
                scales[(long)r * kb + blk] = amax / 127f;
                float inv = amax != 0 ? 127f / amax : 0f;
                for (int i = 0; i < v.Length; i++) codes[(long)r * kp + blk * block + i] = (sbyte)Math.Clamp(MathF.Round(v[i] * inv, MidpointRounding.ToEven), -127f, 127f);
            }
        return (codes, scales);
    }

    /// <summary>The int8-compute product (accuracy_level 4): y[m, n] = Σ_block (scale_a · scale_b) · Σ code·w, w the
    /// centered weight (<see cref="NBitsWeight.Centered"/>).</summary>
    static float[] Int8Product(NBitsWeight q, sbyte[] w, ReadOnlySpan<float> a, int m)
    {
        int n = q.N, bs = q.BlockSize, kb = q.KBlocks, kp = kb * bs;
        var (codes, sa) = QuantizeA(a, m, q.K, bs);
        var y = new float[(long)m * n];
        var sb = q.Scales;
        LinalgHelpers.For(n, (long)kp * m, j =>
        {
            for (int r = 0; r < m; r++)
            {
                float acc = 0;
                for (int blk = 0; blk < kb; blk++)
                {
                    int dot = Dot(codes.AsSpan(r * kp + blk * bs, bs), w.AsSpan(j * kp + blk * bs, bs));
                    acc += sa[(long)r * kb + blk] * sb[(long)j * kb + blk] * dot;
                }
                y[(long)r * n + j] = acc;
            }
        });
        return y;
    }

    /// <summary>Σ a_i·b_i of int8 values, exact (products widened to 16 bits, sums to 32).</summary>
    static int Dot(ReadOnlySpan<sbyte> a, ReadOnlySpan<sbyte> b)
    {
        int i = 0, sum = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var acc = Vector256<int>.Zero;
            for (; i + 32 <= a.Length; i += 32)
            {
                var (a0, a1) = Vector256.Widen(Vector256.Create(a.Slice(i, 32)));
                var (b0, b1) = Vector256.Widen(Vector256.Create(b.Slice(i, 32)));
                var (p0, p1) = Vector256.Widen(a0 * b0);
                var (p2, p3) = Vector256.Widen(a1 * b1);
                acc += p0 + p1 + p2 + p3;
            }
            sum = Vector256.Sum(acc);
        }
        for (; i < a.Length; i++) sum += a[i] * b[i];
        return sum;
    }
}

/// <summary>A MatMulNBits weight, checked against the op's layout (ONNX Runtime docs/ContribOperators.md): B packed
/// uint8 [N, k_blocks, blob_size] with k_blocks = ⌈K / block_size⌉ and blob_size = block_size·bits/8, each block's
/// values bit-packed along K, the first value in the low bits of a byte; scales [N·k_blocks] of A's type; optional
/// zero points either packed uint8 [N, ⌈k_blocks·bits/8⌉] (the same bit packing, per row of N) or unpacked [N·k_blocks]
/// of A's type, default 2^(bits−1); optional bias [N]. Shared by the cpu reference and the GPU kernels' host side.</summary>
internal sealed class NBitsWeight
{
    public int K, N, Bits, BlockSize, KBlocks, BlobSize;
    public byte[] B = [];
    /// <summary>Per block (n·k_blocks + block), in f32.</summary>
    public float[] Scales = [];
    /// <summary>Per block, in f32 (unpacked from nibbles when packed), or null for the default 2^(bits−1).</summary>
    public float[]? Zeros;
    public float[]? Bias;
    public DType ScaleType;

    /// <summary>The zero point of a block when none is given: 2^(bits−1) (8 for 4 bits).</summary>
    public float DefaultZero => 1 << (Bits - 1);

    /// <summary>Checks A (float, last dimension K) against the node's K.</summary>
    public static void CheckA(NodeContext ctx, DType a, long[] shape, long k)
    {
        if (a is not (DType.Float32 or DType.Float16 or DType.BFloat16)) throw ctx.Unsupported($"A of {DTypes.Name(a)} (float, float16, bfloat16 only)");
        if (shape.Length == 0 || shape[^1] != k) throw ctx.Error($"A {DTypes.Name(a)}{ShapeUtil.Format(shape)} must end in K={k}");
    }

    public static NBitsWeight Of(NodeContext ctx, DType aType, long[] aShape, Tensor b, Tensor scales, Tensor? zeros, bool gIdx, Tensor? bias)
    {
        long K = ctx.Int("K", 0), N = ctx.Int("N", 0), bits = ctx.Int("bits", 4), bs = ctx.Int("block_size", 0);
        if (K <= 0 || N <= 0) throw ctx.Error($"attributes K={K} and N={N} must be positive");
        if (bits is not (2 or 4 or 8)) throw ctx.Unsupported($"bits={bits} (the 2, 4 and 8-bit layouts are implemented)");
        if (bs < 16 || (bs & (bs - 1)) != 0) throw ctx.Error($"block_size={bs} must be a power of 2 and at least 16");
        CheckA(ctx, aType, aShape, K);
        long kb = (K + bs - 1) / bs, blob = bs * bits / 8;
        if (b.DType != DType.UInt8 || b.Length != N * kb * blob || b.Rank == 0 || b.Shape[0] != N)
            throw ctx.Error($"B {b.Describe()} must be uint8 [N, k_blocks, blob_size] = [{N},{kb},{blob}] for K={K}, N={N}, bits={bits}, block_size={bs}");
        if (scales.DType != aType || scales.Length != N * kb)
            throw ctx.Error($"scales {scales.Describe()} must be {DTypes.Name(aType)} (A's type) with N·k_blocks = {N * kb} elements");
        if (gIdx) throw ctx.Unsupported("the g_idx input (deprecated in ONNX Runtime)");
        var w = new NBitsWeight
        {
            K = (int)K, N = checked((int)N), Bits = (int)bits, BlockSize = (int)bs, KBlocks = (int)kb, BlobSize = (int)blob,
            B = b.As<byte>(), Scales = TensorConvert.ToF32(scales).As<float>(), ScaleType = scales.DType,
        };
        if (zeros is not null)
        {
            if (zeros.DType == DType.UInt8)
            {
                long row = (kb * bits + 7) / 8;
                if (zeros.Length != N * row)
                    throw ctx.Error($"zero_points {zeros.Describe()} must be uint8 [N, ⌈k_blocks·bits/8⌉] = [{N},{row}] (packed) or {DTypes.Name(aType)} [{N},{kb}]");
                var zb = zeros.As<byte>();
                var z = new float[N * kb];
                int mask = (1 << (int)bits) - 1;
                for (long n = 0; n < N; n++)
                    for (long k = 0; k < kb; k++)
                    {
                        long bit = k * bits;
                        z[n * kb + k] = (zb[n * row + bit / 8] >> (int)(bit % 8)) & mask;
                    }
                w.Zeros = z;
            }
            else if (zeros.DType == aType && zeros.Length == N * kb) w.Zeros = TensorConvert.ToF32(zeros).As<float>();
            else throw ctx.Error($"zero_points {zeros.Describe()} must be uint8 [{N},{(kb * bits + 7) / 8}] (packed) or {DTypes.Name(aType)} [{N},{kb}]");
        }
        if (bias is not null)
        {
            if (bias.DType != aType || bias.Length != N) throw ctx.Error($"bias {bias.Describe()} must be {DTypes.Name(aType)} [{N}]");
            w.Bias = TensorConvert.ToF32(bias).As<float>();
        }
        return w;
    }

    /// <summary>A MatMulNBits node's <c>accuracy_level</c> (0 when absent).</summary>
    public static long AccuracyLevel(Node node) => node.Attributes.TryGetValue("accuracy_level", out var a) ? a.I : 0;

    /// <summary>Whether a node computes with int8 A (<see cref="MatMulNBitsOps"/>): <c>accuracy_level=4</c>, f32 A,
    /// 4-bit weights and zero points absent or packed uint8 (whole numbers), as ONNX Runtime's CompInt8 kernels take.</summary>
    public static bool Int8Compute(Node node, DType a, NBitsWeight w, Tensor? zeros) =>
        AccuracyLevel(node) == 4 && a == DType.Float32 && w.Bits == 4 && (zeros is null || zeros.DType == DType.UInt8);

    /// <summary>The weight as int8 [N, k_blocks·block] (row n's K contiguous): q − zero point (−15…15), zero past K.</summary>
    public sbyte[] Centered()
    {
        int kp = KBlocks * BlockSize;
        var w = new sbyte[(long)N * kp];
        LinalgHelpers.For(N, kp, n =>
        {
            for (int blk = 0; blk < KBlocks; blk++)
            {
                int z = (int)(Zeros?[(long)n * KBlocks + blk] ?? DefaultZero);
                long at = ((long)n * KBlocks + blk) * BlobSize;
                int end = Math.Min(BlockSize, K - blk * BlockSize);
                for (int i = 0; i < end; i++)
                    w[(long)n * kp + blk * BlockSize + i] = (sbyte)(((B[at + i / 2] >> (i % 2 * 4)) & 15) - z);
            }
        });
        return w;
    }

    /// <summary>The weight as f32 [K, N] (row-major, as MatMul's B): w[k, n] = (q − zero) · scale of k's block.</summary>
    public float[] Dequantize()
    {
        var w = new float[(long)K * N];
        int mask = (1 << Bits) - 1;
        LinalgHelpers.For(N, (long)K * 4, n =>
        {
            long col = (long)n * KBlocks * BlobSize;
            for (int blk = 0; blk < KBlocks; blk++)
            {
                float s = Scales[(long)n * KBlocks + blk];
                float z = Zeros?[(long)n * KBlocks + blk] ?? DefaultZero;
                long at = col + (long)blk * BlobSize;
                int end = Math.Min(BlockSize, K - blk * BlockSize);
                for (int i = 0; i < end; i++)
                {
                    int bit = i * Bits;
                    int q = (B[at + bit / 8] >> (bit % 8)) & mask;
                    w[(long)(blk * BlockSize + i) * N + n] = (q - z) * s;
                }
            }
        });
        return w;
    }
}
