using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary><c>com.microsoft</c> MatMulNBits (ONNX Runtime's contrib op for block-quantized weights, the format ONNX
/// Runtime GenAI writes int4 LLMs in): Y = A · dequantize(B), B a [K, N] weight stored transposed and block-quantized
/// along K. The reference dequantizes every weight in f32, <c>(q − zero_point) · scale</c>, then runs the same f32
/// product as MatMul (so A's precision does not change: accuracy_level, ONNX Runtime's licence to compute in f16 or
/// int8, is read and ignored), adds the bias and rounds once to A's type.</summary>
public sealed class MatMulNBitsOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r) => r.Add("MatMulNBits", Run, domain: ContribOps.Ms);

    sealed record Entry(Tensor Scales, Tensor? Zeros, float[] W);
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Tensor, Entry> Dequantized = new();

    static Value?[] Run(NodeContext ctx, Value?[] x)
    {
        var a = x.T(0, ctx);
        Tensor b = x.T(1, ctx), scales = x.T(2, ctx);
        var zeros = x.OptT(3);
        var q = NBitsWeight.Of(ctx, a.DType, a.Shape, b, scales, zeros, x.OptT(4) is not null, x.OptT(5));
        int K = q.K, N = q.N;
        int M = checked((int)(a.Length / K));
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
        long[] shape = [.. a.Shape[..^1], N];
        return [TensorConvert.To(new Tensor(DType.Float32, shape, y), a.DType)];
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
