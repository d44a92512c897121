using Tapml.Core;

namespace Tapml.Ir;

/// <summary>A weight-quantization scheme for <see cref="WeightQuantizer"/>: <c>q4</c> (4 bits, blocks of 32 along K,
/// asymmetric: a scale and a zero point per block) or <c>q4sym</c> (4 bits, blocks of 32, symmetric: a scale per
/// block, the default zero point 8), each with <c>-a8</c> (<c>q4-a8</c>, <c>q4sym-a8</c>): the same weights with
/// <c>accuracy_level=4</c>, ONNX Runtime's int8 compute type (A quantized to int8 per block, integer dot products; what
/// ONNX Runtime GenAI's model builder writes for its cpu and webgpu targets). Scales take the weight's float type (ONNX
/// Runtime requires A's type, which a MatMul shares with its weight): f32 checkpoints get f32 scales (of f16 precision where
/// a normal f16 holds them: llama.cpp's and MLC's 4-bit formats keep f16 scales), f16 ones f16.</summary>
public sealed record QuantizeScheme(string Name, int Bits, int BlockSize, bool Symmetric, long AccuracyLevel = 0)
{
    public static readonly string[] Names = ["q4", "q4sym", "q4-a8", "q4sym-a8"];

    /// <summary>The scheme named <paramref name="name"/>, or a clear error listing the names.</summary>
    public static QuantizeScheme Parse(string name) => name switch
    {
        "q4" => new("q4", 4, 32, false),
        "q4sym" => new("q4sym", 4, 32, true),
        "q4-a8" => new("q4-a8", 4, 32, false, 4),
        "q4sym-a8" => new("q4sym-a8", 4, 32, true, 4),
        _ => throw new TapmlException($"--quantize '{name}' is not a known scheme (known: {string.Join(", ", Names)})"),
    };
}

/// <summary>What <see cref="WeightQuantizer.Apply"/> did: products rewritten and weight bytes before and after.</summary>
public sealed record QuantizeReport(int Products, long BytesBefore, long BytesAfter)
{
    public override string ToString() => $"{Products} MatMul weights → MatMulNBits ({BytesBefore >> 10} KiB → {BytesAfter >> 10} KiB)";
}

/// <summary>Quantizes a model's weights at load, as a graph pass: every main-graph MatMul whose B is a 2-D float
/// initializer [K, N] becomes a <c>com.microsoft</c> MatMulNBits node (ONNX Runtime's int4 weight format; see
/// docs/ContribOperators.md there) with B packed [N, ⌈K/block⌉, block·bits/8], scales [N, ⌈K/block⌉] and, for
/// asymmetric schemes, packed zero points [N, ⌈⌈K/block⌉·bits/8⌉]. Values are packed along K, the first of a pair in
/// the low nibble; K is padded to whole blocks with zeros.
/// <para>Rounding (round-to-nearest, ties to even, per block of K for each output column n):</para>
/// <list type="bullet">
/// <item>asymmetric (q4): lo = min(0, min w), hi = max(0, max w), scale = (hi − lo)/15, zero = clamp(round(−lo/scale),
/// 0, 15), q = clamp(round(w/scale) + zero, 0, 15) — the range always holds 0, so 0 is exact (as ONNX Runtime's
/// MLAS blockwise quantizer does);</item>
/// <item>symmetric (q4sym): m = the block's value of largest magnitude, scale = m / −8, q = clamp(round(w/scale) + 8,
/// 0, 15) — m maps to −8 exactly and the other end reaches 7;</item>
/// </list>
/// the scale is rounded to its stored type first (f32 scales to f16 precision where a normal f16 holds them) and q
/// computed with the stored scale. A block that is all zeros gets scale 1. Weights used by nodes other than the
/// rewritten MatMuls stay as they are (a tied embedding keeps its Gather); weights no longer used are dropped.</summary>
public static class WeightQuantizer
{
    public const string MsDomain = "com.microsoft";

    public static QuantizeReport Apply(Model model, QuantizeScheme scheme)
    {
        var g = model.Graph;
        var uses = g.CountUses();
        var done = new Dictionary<string, (string B, string Scales, string? Zeros)>();
        int products = 0;
        long before = 0, after = 0;
        for (int i = 0; i < g.Nodes.Count; i++)
        {
            var node = g.Nodes[i];
            if (node.OpType != "MatMul" || node.Domain is not ("" or "ai.onnx") || node.Inputs.Length != 2) continue;
            string wName = node.Inputs[1];
            if (!g.Initializers.TryGetValue(wName, out var w) || w.Rank != 2 || w.DType is not (DType.Float32 or DType.Float16 or DType.BFloat16)) continue;
            long K = w.Shape[0], N = w.Shape[1];
            if (K == 0 || N == 0 || N > int.MaxValue) continue;
            if (!done.TryGetValue(wName, out var q))
            {
                var (b, scales, zeros) = Quantize(w, scheme);
                q = (g.FreshName(wName + "_Q4"), g.FreshName(wName + "_scales"), zeros is null ? null : g.FreshName(wName + "_zero_points"));
                g.Initializers[q.B] = b;
                g.Initializers[q.Scales] = scales;
                if (q.Zeros is not null) g.Initializers[q.Zeros] = zeros!;
                done[wName] = q;
                before += w.ByteSize;
                after += b.ByteSize + scales.ByteSize + (zeros?.ByteSize ?? 0);
            }
            g.Nodes[i] = new Node
            {
                Name = node.Name, OpType = "MatMulNBits", Domain = MsDomain,
                Inputs = q.Zeros is null ? [node.Inputs[0], q.B, q.Scales] : [node.Inputs[0], q.B, q.Scales, q.Zeros],
                Outputs = node.Outputs,
                Attributes = new()
                {
                    ["K"] = Attr.Of(K), ["N"] = Attr.Of(N), ["bits"] = Attr.Of((long)scheme.Bits),
                    ["block_size"] = Attr.Of((long)scheme.BlockSize), ["accuracy_level"] = Attr.Of(scheme.AccuracyLevel),
                },
            };
            uses[wName]--;
            products++;
        }
        foreach (var wName in done.Keys)
            if (uses.GetValueOrDefault(wName) <= 0 && !g.Inputs.Any(v => v.Name == wName))
            {
                g.Initializers.Remove(wName);
                model.InitializerSources.Remove(wName);
            }
        if (products > 0 && !model.Opsets.ContainsKey(MsDomain)) model.Opsets[MsDomain] = 1;
        return new QuantizeReport(products, before, after);
    }

    static float ToF32(Tensor w, long i) => w.Data switch
    {
        float[] f => f[i],
        Half[] h => (float)h[i],
        BFloat16[] b => (float)b[i],
        _ => throw new TapmlException($"quantize: weight of {DTypes.Name(w.DType)}"),
    };

    /// <summary>The stored value of a scale: rounded to the scales' type, and f32 scales to f16 precision where a normal
    /// f16 holds them (as llama.cpp's and MLC's 4-bit formats store their scales), so that a platform may keep them in
    /// half the bytes and read them exactly (<see cref="HalfExact"/>).</summary>
    static float Stored(float s, DType t) => t switch
    {
        DType.Float16 => (float)(Half)s,
        DType.BFloat16 => (float)(BFloat16)s,
        _ => HalfExact((float)(Half)s) ? (float)(Half)s : s,
    };

    /// <summary>Whether <paramref name="v"/> is 0 or a normal f16 value (an f16 subnormal may read as 0 on a GPU).</summary>
    public static bool HalfExact(float v) => v == 0 || float.IsFinite(v) && (float)(Half)v == v && MathF.Abs(v) >= 6.103515625e-05f;

    /// <summary>B packed, scales, and zero points (null for symmetric schemes) of a [K, N] weight.</summary>
    public static (Tensor B, Tensor Scales, Tensor? Zeros) Quantize(Tensor w, QuantizeScheme scheme)
    {
        if (scheme.Bits != 4) throw new UnsupportedException($"quantize: {scheme.Bits}-bit packing (4 only)");
        int K = checked((int)w.Shape[0]), N = checked((int)w.Shape[1]), bs = scheme.BlockSize;
        int kb = (K + bs - 1) / bs, blob = bs / 2, zrow = (kb + 1) / 2;
        var packed = new byte[(long)N * kb * blob];
        var scales = new float[(long)N * kb];
        var zeros = scheme.Symmetric ? null : new byte[(long)N * zrow];
        DType st = w.DType;
        Parallel.For(0, N, n =>
        {
            Span<float> v = stackalloc float[bs];
            for (int blk = 0; blk < kb; blk++)
            {
                int len = Math.Min(bs, K - blk * bs);
                for (int i = 0; i < len; i++) v[i] = ToF32(w, (long)(blk * bs + i) * N + n);
                float scale; int zero;
                if (scheme.Symmetric)
                {
                    float m = 0;
                    for (int i = 0; i < len; i++) if (MathF.Abs(v[i]) > MathF.Abs(m)) m = v[i];
                    scale = Stored(m / -8f, st);
                    zero = 8;
                }
                else
                {
                    float lo = 0, hi = 0;
                    for (int i = 0; i < len; i++) { lo = MathF.Min(lo, v[i]); hi = MathF.Max(hi, v[i]); }
                    scale = Stored((hi - lo) / 15f, st);
                    zero = scale == 0 ? 0 : (int)Math.Clamp(MathF.Round(-lo / scale), 0, 15);
                }
                if (scale == 0 || !float.IsFinite(scale)) scale = 1;
                scales[(long)n * kb + blk] = scale;
                if (zeros is not null) zeros[(long)n * zrow + blk / 2] |= (byte)(zero << (blk % 2 * 4));
                long at = ((long)n * kb + blk) * blob;
                for (int i = 0; i < bs; i++)
                {
                    // Padding past K stores the zero point, which dequantizes to exactly 0.
                    int q = i < len ? (int)Math.Clamp(MathF.Round(v[i] / scale) + zero, 0, 15) : zero;
                    packed[at + i / 2] |= (byte)(q << (i % 2 * 4));
                }
            }
        });
        var scaleT = st switch
        {
            DType.Float16 => new Tensor(st, [N, kb], Array.ConvertAll(scales, s => (Half)s)),
            DType.BFloat16 => new Tensor(st, [N, kb], Array.ConvertAll(scales, s => (BFloat16)s)),
            _ => new Tensor(DType.Float32, [N, kb], scales),
        };
        return (new Tensor(DType.UInt8, [N, kb, blob], packed), scaleT, zeros is null ? null : new Tensor(DType.UInt8, [N, zrow], zeros));
    }
}
