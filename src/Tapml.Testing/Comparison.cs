using Tapml.Core;

namespace Tapml.Testing;

/// <summary>Error statistics of one output (expected vs actual). Relative error divides by |expected|
/// (elements where expected is 0 are left out of max_rel).</summary>
public sealed record Metrics
{
    public double MaxAbs { get; init; }
    public double MaxRel { get; init; }
    public double MeanAbs { get; init; }
    /// <summary>Cosine similarity of the two vectors (1 when both are all zeros).</summary>
    public double Cosine { get; init; } = 1;
    /// <summary>Σ(a−e)² / Σe² (0 when both are zero).</summary>
    public double Nmse { get; init; }
    /// <summary>Elements where exactly one side is NaN, or an infinity differs.</summary>
    public long NanInfMismatches { get; init; }
    /// <summary>For integer/token outputs: fraction of equal elements.</summary>
    public double? Agreement { get; init; }
    public long Elements { get; init; }
    /// <summary>The rule that decided the verdict: exact (integers, bool, strings), elementwise, accumulation, nmse.</summary>
    public string? Rule { get; init; }
    /// <summary>How close the output came to failing under <see cref="Rule"/>: the worst |a−e| ÷ allowed error
    /// (nmse: NMSE ÷ its threshold); above 1 fails.</summary>
    public double? BoundRatio { get; init; }
}

/// <summary>How a float output is judged (docs/verdicts.md).</summary>
public enum ToleranceRule
{
    /// <summary>|a−e| ≤ atol + rtol·|e| at every element.</summary>
    Elementwise,
    /// <summary>|a−e| ≤ atol + rtol·|e| + <see cref="Tolerance.MagnitudeScale"/>·m at every element, m the magnitude
    /// of the terms summed there (Σ|a·b| of a product, Σ|x| of a sum).</summary>
    Accumulation,
    /// <summary>NMSE ≤ <see cref="Tolerance.MaxNmse"/> (or max_abs ≤ atol).</summary>
    Nmse,
}

/// <summary>Tolerance of a float output: by default element-wise, |a−e| ≤ atol + rtol·|e|; integer and bool outputs
/// compare exactly. <see cref="Tolerances"/> chooses the rule per op family.</summary>
public readonly record struct Tolerance(double Rtol, double Atol)
{
    /// <summary>ONNX backend-test default.</summary>
    public static readonly Tolerance OnnxDefault = new(1e-3, 1e-7);
    public ToleranceRule Rule { get; init; }
    /// <summary>Accumulation rule: eps·(K+2), the factor on the magnitude of the terms.</summary>
    public double MagnitudeScale { get; init; }
    /// <summary>Terms summed per output element (K), for reports.</summary>
    public long Terms { get; init; }
    /// <summary>NMSE rule: the largest NMSE that passes.</summary>
    public double MaxNmse { get; init; }

    public override string ToString() => Rule switch
    {
        ToleranceRule.Accumulation => $"accumulation bound eps·(K+2)·Σ|terms|, K {Terms}",
        ToleranceRule.Nmse => $"NMSE ≤ {MaxNmse:G3}",
        _ => $"rtol {Rtol:G3}, atol {Atol:G3}",
    };

    /// <summary>The rule's name in reports: elementwise, accumulation, nmse.</summary>
    public string RuleName => Rule switch { ToleranceRule.Accumulation => "accumulation", ToleranceRule.Nmse => "nmse", _ => "elementwise" };
}

/// <summary>Verdict for one output.</summary>
public sealed record OutputComparison(string Name, bool Passed, Metrics Metrics, string? Failure,
    long WorstIndex = -1, string? WorstExpected = null, string? WorstActual = null);

/// <summary>The one comparator every driver uses (conformance, replay, migration).</summary>
public static class Comparison
{
    /// <param name="magnitude">Accumulation rule: gives the magnitude of the terms summed at each element of this
    /// output (same shape), asked for only when the bound with m = |expected| (a lower bound of it) fails.</param>
    public static OutputComparison Compare(string name, Value expected, Value? actual, Tolerance tol, Func<Tensor?>? magnitude = null)
    {
        if (actual is null) return Fail(name, "output was not produced");
        switch (expected, actual)
        {
            case (Tensor e, Tensor a): return CompareTensors(name, e, a, tol, magnitude);
            case (SequenceValue e, SequenceValue a):
            {
                if (e.Items.Count != a.Items.Count) return Fail(name, $"sequence has {a.Items.Count} items, expected {e.Items.Count}");
                OutputComparison? worst = null;
                for (int i = 0; i < e.Items.Count; i++)
                {
                    var c = CompareTensors($"{name}[{i}]", e.Items[i], a.Items[i], tol, null);
                    if (!c.Passed) return c with { Name = name, Failure = $"item {i}: {c.Failure}" };
                    if (worst is null || c.Metrics.MaxAbs > worst.Metrics.MaxAbs) worst = c;
                }
                return new OutputComparison(name, true, worst?.Metrics ?? new Metrics(), null);
            }
            case (OptionalValue e, OptionalValue a):
                if (e.Item is null && a.Item is null) return new OutputComparison(name, true, new Metrics(), null);
                if (e.Item is null || a.Item is null) return Fail(name, $"optional is {(a.Item is null ? "empty" : "set")}, expected {(e.Item is null ? "empty" : "set")}");
                return Compare(name, e.Item, a.Item, tol);
            case (OptionalValue { Item: { } inner }, _): return Compare(name, inner, actual, tol, magnitude);
            case (_, OptionalValue { Item: { } inner }): return Compare(name, expected, inner, tol, magnitude);
            default: return Fail(name, $"got {actual.Describe()}, expected {expected.Describe()}");
        }
    }

    static OutputComparison Fail(string name, string why) => new(name, false, new Metrics(), why);

    public static OutputComparison CompareTensors(string name, Tensor e, Tensor a, Tolerance tol, Func<Tensor?>? magnitude = null)
    {
        if (e.DType != a.DType) return Fail(name, $"dtype {DTypes.Name(a.DType)}, expected {DTypes.Name(e.DType)}");
        if (!e.Shape.AsSpan().SequenceEqual(a.Shape)) return Fail(name, $"shape {ShapeUtil.Format(a.Shape)}, expected {ShapeUtil.Format(e.Shape)}");
        long n = e.Length;
        if (e.DType == DType.String)
        {
            var es = e.As<string>(); var @as = a.As<string>();
            for (long i = 0; i < n; i++)
                if (es[i] != @as[i]) return new OutputComparison(name, false, new Metrics { Elements = n, Rule = "exact" }, $"string at {Index(e.Shape, i)} differs", i, Quote(es[i]), Quote(@as[i]));
            return new OutputComparison(name, true, new Metrics { Elements = n, Agreement = 1, Rule = "exact" }, null);
        }
        bool exact = !DTypes.IsFloat(e.DType);
        var rule = exact ? (ToleranceRule?)null : tol.Rule;
        // NOTE: the accumulation bound's first pass takes m = |e|, a lower bound of Σ|terms|: what passes it passes.
        double scale = rule == ToleranceRule.Accumulation ? tol.MagnitudeScale : 0;
        double maxAbs = 0, maxRel = 0, sumAbs = 0, dot = 0, ee = 0, aa = 0, sqErr = 0;
        long nanInf = 0, equal = 0, worst = -1, firstBad = -1;
        double worstRatio = 0;
        for (long i = 0; i < n; i++)
        {
            double x = e.GetDouble(i), y = a.GetDouble(i);
            // NOTE: 64-bit integers compare exactly; beyond 2^53 their double images may coincide.
            bool same = exact && e.DType is DType.Int64 or DType.UInt64 ? e.GetInt64(i) == a.GetInt64(i) : x == y;
            if (same || double.IsNaN(x) && double.IsNaN(y)) { equal++; dot += Finite(x) * Finite(y); ee += Finite(x) * Finite(x); aa += Finite(y) * Finite(y); continue; }
            if (double.IsNaN(x) || double.IsNaN(y) || double.IsInfinity(x) || double.IsInfinity(y))
            {
                nanInf++;
                if (firstBad < 0) firstBad = i;
                continue;
            }
            double d = Math.Max(Math.Abs(x - y), exact ? 1 : 0);
            maxAbs = Math.Max(maxAbs, d);
            if (x != 0) maxRel = Math.Max(maxRel, d / Math.Abs(x));
            sumAbs += d; dot += x * y; ee += x * x; aa += y * y; sqErr += d * d;
            // NOTE: integer and bool outputs (indices, token ids, masks) must match exactly; tolerances are for floats.
            double ratio = exact ? double.PositiveInfinity : d / Allowed(tol, scale, x, Math.Abs(x));
            if (ratio > worstRatio || worst < 0) { worstRatio = ratio; worst = i; }
        }
        double nmse = ee == 0 ? (sqErr == 0 ? 0 : double.PositiveInfinity) : sqErr / ee;
        var m = new Metrics
        {
            MaxAbs = maxAbs,
            MaxRel = maxRel,
            MeanAbs = n == 0 ? 0 : sumAbs / n,
            Cosine = ee == 0 && aa == 0 ? 1 : ee == 0 || aa == 0 ? 0 : dot / Math.Sqrt(ee * aa),
            Nmse = nmse,
            NanInfMismatches = nanInf,
            Agreement = exact && n > 0 ? (double)equal / n : null,
            Elements = n,
            Rule = exact ? "exact" : tol.RuleName,
        };
        if (nanInf > 0)
            return new OutputComparison(name, false, m, $"{nanInf} NaN/Inf mismatches (first at {Index(e.Shape, firstBad)})", firstBad, Fmt(e, firstBad), Fmt(a, firstBad));
        if (exact)
            return worst < 0 ? new OutputComparison(name, true, m, null) : Bad(name, e, a, m, worst, $"{n - equal} of {n} elements differ");
        switch (rule)
        {
            case ToleranceRule.Nmse:
            {
                // NOTE: an output that is all (near) zero has no energy to normalize by; atol judges it.
                bool pass = nmse <= tol.MaxNmse || maxAbs <= tol.Atol;
                double r = maxAbs <= tol.Atol ? 0 : tol.MaxNmse > 0 ? nmse / tol.MaxNmse : double.PositiveInfinity;
                m = m with { BoundRatio = r };
                return pass ? new OutputComparison(name, true, m, null)
                    : new OutputComparison(name, false, m, $"NMSE {nmse:G3} > {tol.MaxNmse:G3} (cosine {m.Cosine:F6}); worst at {Index(e.Shape, worst)}: expected {Fmt(e, worst)}, got {Fmt(a, worst)}", worst, Fmt(e, worst), Fmt(a, worst));
            }
            case ToleranceRule.Accumulation when worstRatio > 1:
            {
                var mag = magnitude?.Invoke();
                if (mag is null || mag.Length != n)
                    return Bad(name, e, a, m with { BoundRatio = worstRatio }, worst,
                        $"error {worstRatio:G3}× the accumulation bound with Σ|terms| taken as |expected| (the magnitude of the terms is not known here)");
                worstRatio = 0; worst = -1;
                for (long i = 0; i < n; i++)
                {
                    double x = e.GetDouble(i), y = a.GetDouble(i);
                    if (x == y) continue;
                    double ratio = Math.Abs(x - y) / Allowed(tol, scale, x, Math.Abs(mag.GetDouble(i)));
                    if (ratio > worstRatio) { worstRatio = ratio; worst = i; }
                }
                m = m with { BoundRatio = worstRatio };
                if (worstRatio <= 1) return new OutputComparison(name, true, m, null);
                double mw = Math.Abs(mag.GetDouble(worst)), xw = e.GetDouble(worst);
                return Bad(name, e, a, m, worst,
                    $"error {worstRatio:G3}× the accumulation bound: |a−e| {Math.Abs(xw - a.GetDouble(worst)):G3} > {Allowed(tol, scale, xw, mw):G3} = eps·|e| + eps·(K+2)·Σ|terms| (K {tol.Terms}, Σ|terms| {mw:G4})");
            }
            default:
                m = m with { BoundRatio = worstRatio };
                return worstRatio <= 1 ? new OutputComparison(name, true, m, null)
                    : Bad(name, e, a, m, worst, $"max_abs {maxAbs:G4} > atol {tol.Atol:G3} + rtol {tol.Rtol:G3}·|expected|");
        }
    }

    /// <summary>Allowed |a−e| at an element with expected value <paramref name="x"/> and magnitude of terms
    /// <paramref name="m"/> (scale 0: the element-wise rule).</summary>
    static double Allowed(Tolerance tol, double scale, double x, double m) => tol.Atol + tol.Rtol * Math.Abs(x) + scale * m;

    static OutputComparison Bad(string name, Tensor e, Tensor a, Metrics m, long worst, string what) =>
        new(name, false, m, $"{what}; worst at {Index(e.Shape, worst)}: expected {Fmt(e, worst)}, got {Fmt(a, worst)}", worst, Fmt(e, worst), Fmt(a, worst));

    static double Finite(double v) => double.IsFinite(v) ? v : 0;
    static string Quote(string s) => "\"" + s + "\"";

    static string Fmt(Tensor t, long i) => t.DType switch
    {
        DType.Int64 => t.GetInt64(i).ToString(),
        DType.UInt64 => t.As<ulong>()[i].ToString(),
        DType.Bool => t.As<bool>()[i] ? "true" : "false",
        _ => t.GetDouble(i).ToString("G7", System.Globalization.CultureInfo.InvariantCulture),
    };

    /// <summary>Multi-index of flat element i, e.g. [0,3,17].</summary>
    public static string Index(long[] shape, long i)
    {
        if (shape.Length == 0) return "[]";
        var idx = new long[shape.Length];
        for (int d = shape.Length - 1; d >= 0; d--) { long s = Math.Max(shape[d], 1); idx[d] = i % s; i /= s; }
        return "[" + string.Join(",", idx) + "]";
    }
}
