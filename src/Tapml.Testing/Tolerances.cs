using System.Globalization;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Testing;

/// <summary>Tolerances of carved-case replay and migration (docs/verdicts.md): one rule per op family.
/// <list type="bullet">
/// <item>element-wise ops: <c>|a−e| ≤ atol + rtol·|e|</c> with defaults per dtype;</item>
/// <item>ops that sum products or terms (MatMul, Gemm, Conv, ConvTranspose, Einsum, sum-like reductions, CumSum):
/// the accumulation bound <c>|a−e| ≤ atol + eps·|e| + eps·(K+2)·m</c> at every element, where m is the magnitude of
/// the terms summed there (the op run on the absolute values of its inputs) and K the number of terms — what two
/// correct f32 (f16, bf16) accumulations in any order can differ by;</item>
/// <item>normalizing ops (Softmax, the norms, attention, recurrent cells, log-sums): NMSE ≤ a threshold per dtype,
/// as llama.cpp's test-backend-ops judges every op.</item>
/// </list>
/// <c>--rtol/--atol</c> switch every op to the element-wise rule with those values; <c>--tol OP=RTOL,ATOL</c> does it
/// for one op type (the most specific wins).</summary>
public sealed class Tolerances
{
    /// <summary>Tolerance for every op (from --rtol/--atol), or null for the defaults.</summary>
    public double? Rtol { get; init; }
    public double? Atol { get; init; }
    public Dictionary<string, Tolerance> PerOp { get; } = new(StringComparer.Ordinal);

    /// <summary>Ops whose output elements are sums of products or of terms: judged by the accumulation bound, with the
    /// magnitude of the terms from the op run on |inputs|. Their attributes that scale terms are made non-negative
    /// for that run (see <see cref="Magnitudes"/>).</summary>
    public static readonly IReadOnlySet<string> AccumulationFamilies = new HashSet<string>(StringComparer.Ordinal)
    {
        "MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "FusedMatMul",
        "ReduceSum", "ReduceMean", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceProd",
        "GlobalAveragePool", "CumSum",
    };

    /// <summary>Ops judged by NMSE: nonlinear functions of a whole row or window (their error has no simple per-element
    /// magnitude), attention, recurrent cells, and block-quantized products.</summary>
    public static readonly IReadOnlySet<string> NmseFamilies = new HashSet<string>(StringComparer.Ordinal)
    {
        "Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
        "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "LpNormalization", "Attention", "MultiHeadAttention",
        "GroupQueryAttention", "InstanceNormalization", "GroupNormalization", "MeanVarianceNormalization",
        "BatchNormalization", "ReduceLogSumExp", "ReduceLogSum", "LSTM", "GRU", "RNN", "MatMulNBits", "LpPool", "GlobalLpPool",
    };

    /// <summary>Machine epsilon of a float dtype (2^-23 for f32): the spacing of numbers just above 1.</summary>
    public static double Eps(DType t) => t switch
    {
        DType.Float64 => Math.Pow(2, -52),
        DType.Float16 => Math.Pow(2, -10),
        DType.BFloat16 => Math.Pow(2, -7),
        _ => Math.Pow(2, -23),
    };

    /// <summary>Default (rtol, atol) of the element-wise rule for a dtype.</summary>
    public static Tolerance ForDType(DType t) => t switch
    {
        DType.Float64 => new(1e-10, 1e-12),
        DType.Float16 => new(1e-2, 1e-3),
        DType.BFloat16 => new(2e-2, 1e-2),
        _ => new(1e-4, 1e-5),
    };

    /// <summary>NMSE threshold of the NMSE rule: llama.cpp's 1e-7 for f32, 5e-4 for its half-precision cases.</summary>
    public static double MaxNmse(DType t) => t switch
    {
        DType.Float64 => 1e-20,
        DType.Float16 or DType.BFloat16 => 5e-4,
        _ => 1e-7,
    };

    /// <summary>Absolute floor of the accumulation bound: what flushing subnormal products to zero (GPUs do) can lose
    /// over K terms, and no more.</summary>
    static double AccumulationAtol(DType t, long k) => t switch
    {
        DType.Float64 => 1e-300 * k,
        DType.Float16 => 6.1e-5 * k,
        DType.BFloat16 => 1.2e-38 * k,
        _ => 1.2e-38 * k,
    };

    static long Size(long[] s) { long n = 1; foreach (var d in s) n *= Math.Max(d, 1); return n; }

    /// <summary>Number of terms one output element of <paramref name="node"/> sums (1 for element-wise ops).</summary>
    public static long ReducedLength(Node node, IReadOnlyList<long[]?> inputs, IReadOnlyList<long[]> outputs)
    {
        long[]? a = inputs.Count > 0 ? inputs[0] : null, b = inputs.Count > 1 ? inputs[1] : null;
        long Attr(string n, long d) => node.Attributes.TryGetValue(n, out var x) && x.Type == AttrType.Int ? x.I : d;
        switch (node.OpType)
        {
            case "MatMul" or "MatMulInteger" or "FusedMatMul" or "QLinearMatMul":
                return a is { Length: > 0 } ? a[^1] : 1;
            case "MatMulNBits":
                return Attr("K", a is { Length: > 0 } ? a[^1] : 1);
            case "Gemm":
                return a is { Length: 2 } ? (Attr("transA", 0) != 0 ? a[0] : a[1]) : 1;
            case "Conv" or "ConvInteger" or "QLinearConv" or "DeformConv":
                return b is { Length: > 1 } ? Size(b) / Math.Max(b[0], 1) : 1;        // C/group · kernel
            case "ConvTranspose":
                return b is { Length: > 1 } ? Math.Max(1, b[0] / Math.Max(Attr("group", 1), 1)) * (Size(b) / Math.Max(b[0] * b[1], 1)) : 1;
            case "Einsum":
                return EinsumLength(node, inputs, outputs);
            case "CumSum":
                return a is { Length: > 0 } ? a.Max() : 1;
        }
        if (node.OpType.StartsWith("Reduce", StringComparison.Ordinal) || node.OpType is "ArgMax" or "ArgMin" or "GlobalAveragePool" or "GlobalMaxPool" or "GlobalLpPool")
            return a is null || outputs.Count == 0 ? 1 : Math.Max(1, Size(a) / Math.Max(Size(outputs[0]), 1));
        if (NmseFamilies.Contains(node.OpType)) return a is { Length: > 0 } ? a[^1] : 1;
        return 1;
    }

    /// <summary>Product of the sizes of the labels an Einsum sums over (those not in its output).</summary>
    static long EinsumLength(Node node, IReadOnlyList<long[]?> inputs, IReadOnlyList<long[]> outputs)
    {
        string eq = node.Attributes.TryGetValue("equation", out var e) ? e.Str.Replace(" ", "") : "";
        var sides = eq.Split("->");
        var terms = sides[0].Split(',');
        var sizes = new Dictionary<char, long>();
        for (int t = 0; t < terms.Length && t < inputs.Count; t++)
        {
            if (inputs[t] is not { } shape) continue;
            string term = terms[t];
            int dots = term.IndexOf("...", StringComparison.Ordinal);
            string head = dots < 0 ? term : term[..dots], tail = dots < 0 ? "" : term[(dots + 3)..];
            for (int i = 0; i < head.Length && i < shape.Length; i++) sizes[head[i]] = Math.Max(sizes.GetValueOrDefault(head[i]), shape[i]);
            for (int i = 0; i < tail.Length && tail.Length <= shape.Length; i++) sizes[tail[i]] = Math.Max(sizes.GetValueOrDefault(tail[i]), shape[shape.Length - tail.Length + i]);
        }
        string output = sides.Length > 1 ? sides[1]
            : new string(sizes.Keys.Where(c => sides[0].Count(x => x == c) == 1).OrderBy(c => c).ToArray());
        long k = 1;
        foreach (var (label, size) in sizes) if (!output.Contains(label)) k *= Math.Max(size, 1);
        return Math.Max(k, 1);
    }

    /// <summary>The tolerance an output of <paramref name="node"/> (with these input and output shapes, float output
    /// type <paramref name="outputType"/>) is judged with.</summary>
    public Tolerance For(Node node, IReadOnlyList<long[]?> inputs, IReadOnlyList<long[]> outputs, DType outputType)
    {
        if (PerOp.TryGetValue(node.OpType, out var t)) return t;
        var d = ForDType(outputType);
        if (Rtol is not null || Atol is not null) return new Tolerance(Rtol ?? d.Rtol, Atol ?? d.Atol);
        long k = ReducedLength(node, inputs, outputs);
        if (AccumulationFamilies.Contains(node.OpType))
        {
            double eps = Eps(outputType);
            return new Tolerance(eps, AccumulationAtol(outputType, k)) { Rule = ToleranceRule.Accumulation, Terms = k, MagnitudeScale = eps * (k + 2) };
        }
        if (NmseFamilies.Contains(node.OpType))
            return d with { Rule = ToleranceRule.Nmse, Terms = k, MaxNmse = MaxNmse(outputType) };
        return d;
    }

    /// <summary>The tolerance of <paramref name="node"/>'s outputs, from its input and output values.</summary>
    public Tolerance For(Node node, IReadOnlyList<Value?> inputs, IReadOnlyList<Value?> outputs)
    {
        var dt = outputs.OfType<Tensor>().Select(t => t.DType).FirstOrDefault(DTypes.IsFloat, DType.Float32);
        return For(node, inputs.Select(v => (v as Tensor)?.Shape).ToList(), outputs.OfType<Tensor>().Select(t => t.Shape).ToList(), dt);
    }

    /// <summary>Parses <c>OP=RTOL,ATOL</c> (e.g. <c>Softmax=1e-3,1e-5</c>) into <see cref="PerOp"/>.</summary>
    public void AddOverride(string spec)
    {
        int eq = spec.IndexOf('=');
        var parts = eq > 0 ? spec[(eq + 1)..].Split(',') : [];
        if (eq <= 0 || parts.Length != 2
            || !double.TryParse(parts[0], NumberStyles.Float, CultureInfo.InvariantCulture, out double r)
            || !double.TryParse(parts[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double a) || !(r >= 0) || !(a >= 0))
            throw new TapmlException($"--tol '{spec}' is not OP=RTOL,ATOL with non-negative numbers (e.g. Softmax=1e-3,1e-5)");
        PerOp[spec[..eq]] = new Tolerance(r, a);
    }
}
