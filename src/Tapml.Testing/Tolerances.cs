using System.Globalization;
using Tapml.Core;

namespace Tapml.Testing;

/// <summary>Tolerances of carved-case replay: defaults per dtype, widened for op families that reduce (the
/// absolute tolerance grows with √K for a reduction of length K: float reassociation error grows so), overridden
/// by <c>--rtol/--atol</c> for every op and by <c>--tol OP=RTOL,ATOL</c> per op type (the most specific wins).</summary>
public sealed class Tolerances
{
    /// <summary>Tolerance for every op (from --rtol/--atol), or null for the defaults.</summary>
    public double? Rtol { get; init; }
    public double? Atol { get; init; }
    public Dictionary<string, Tolerance> PerOp { get; } = new(StringComparer.Ordinal);

    static readonly HashSet<string> LastAxisFamilies =
    [
        "Softmax", "LogSoftmax", "Hardmax", "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization",
        "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "LpNormalization", "Attention", "MultiHeadAttention",
        "GroupQueryAttention", "InstanceNormalization", "GroupNormalization", "MeanVarianceNormalization",
    ];

    /// <summary>Default (rtol, atol) of a dtype before widening for reductions.</summary>
    public static Tolerance ForDType(DType t) => t switch
    {
        DType.Float64 => new(1e-10, 1e-12),
        DType.Float16 => new(1e-2, 1e-3),
        DType.BFloat16 => new(2e-2, 1e-2),
        _ => new(1e-4, 1e-5),
    };

    /// <summary>Length of the reduction one output element of <paramref name="opType"/> sums over (1 for
    /// element-wise ops), from the input shapes.</summary>
    public static long ReducedLength(string opType, IReadOnlyList<long[]?> inputs, IReadOnlyList<long[]> outputs, IReadOnlyDictionary<string, long> intAttrs)
    {
        long[]? a = inputs.Count > 0 ? inputs[0] : null, b = inputs.Count > 1 ? inputs[1] : null;
        static long Size(long[] s) => s.Aggregate(1L, (x, y) => x * Math.Max(y, 1));
        switch (opType)
        {
            case "MatMul" or "MatMulInteger" or "FusedMatMul" or "QLinearMatMul" or "MatMulNBits":
                return a is { Length: > 0 } ? a[^1] : 1;
            case "Gemm":
                return a is { Length: 2 } ? (intAttrs.GetValueOrDefault("transA") != 0 ? a[0] : a[1]) : 1;
            case "Conv" or "ConvTranspose" or "ConvInteger" or "QLinearConv" or "DeformConv":
                return b is { Length: > 1 } ? Size(b) / Math.Max(b[0], 1) : 1;
            case "Einsum":
                return a is null || outputs.Count == 0 ? 1 : Math.Max(1, inputs.OfType<long[]>().Aggregate(1L, (x, s) => x * Size(s)) / Math.Max(Size(outputs[0]), 1));
        }
        if (opType.StartsWith("Reduce", StringComparison.Ordinal) || opType is "ArgMax" or "ArgMin" or "GlobalAveragePool" or "GlobalMaxPool" or "GlobalLpPool")
            return a is null || outputs.Count == 0 ? 1 : Math.Max(1, Size(a) / Math.Max(Size(outputs[0]), 1));
        if (LastAxisFamilies.Contains(opType)) return a is { Length: > 0 } ? a[^1] : 1;
        return 1;
    }

    /// <summary>The tolerance a case of <paramref name="opType"/> is judged with.</summary>
    public Tolerance For(string opType, DType outputType, long reducedLength)
    {
        if (PerOp.TryGetValue(opType, out var t)) return t;
        var d = ForDType(outputType);
        var widened = new Tolerance(d.Rtol, d.Atol * Math.Sqrt(Math.Max(reducedLength, 1)));
        return new Tolerance(Rtol ?? widened.Rtol, Atol ?? widened.Atol);
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
