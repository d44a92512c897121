using System.Numerics;
using TP = System.Numerics.Tensors.TensorPrimitives;
using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>A vectorized span kernel (x and y have equal length; y may be x).</summary>
internal delegate void UnarySpanFn<T>(ReadOnlySpan<T> x, Span<T> y);

/// <summary>An element-wise op computed in double (f32, f16 and bf16 inputs are widened exactly, the result
/// is rounded once to the element type).</summary>
internal interface IUnaryDoubleOp
{
    double Apply(double x);
}

/// <summary>An element-wise op over any numeric CLR type (integers wrap as in C / numpy).</summary>
internal interface IUnaryNumOp
{
    T Apply<T>(T x) where T : INumber<T>;
}

/// <summary>Mapping machinery shared by the unary and activation families.</summary>
internal static class UnaryHelpers
{
    // 2 / (2n + 3): the series' term ratios without a division per term (|x| < 3 needs under 50).
    static readonly double[] SeriesFactors = Enumerable.Range(0, 80).Select(n => 2.0 / (2 * n + 3)).ToArray();
    // (declared before GCoef, whose initializer uses it)

    /// <summary>Tensors with at least this many elements run in parallel.</summary>
    public const int ParallelMin = 1 << 16;
    /// <summary>Fixed chunk size: chunk boundaries never depend on the thread count.</summary>
    public const int Chunk = 1 << 15;

    /// <summary>Runs body(start, length) over [0, n) in fixed-size chunks, in parallel for large n.</summary>
    public static void ForChunks(int n, Action<int, int> body)
    {
        if (n < ParallelMin) { if (n > 0) body(0, n); return; }
        int chunks = (n + Chunk - 1) / Chunk;
        Parallel.For(0, chunks, CpuThreads.Options, c =>
        {
            int s = c * Chunk;
            body(s, Math.Min(Chunk, n - s));
        });
    }

    public static long[] Shape(Tensor x) => (long[])x.Shape.Clone();

    public static Exception BadType(NodeContext ctx, Tensor x, string allowed) =>
        ctx.Error($"input of element type {DTypes.Name(x.DType)} is not allowed ({allowed})");

    static T[] MapSpan<T>(T[] a, UnarySpanFn<T> f)
    {
        // NOTE: every element is written by f, so the runtime's zeroing of a fresh (large-object-heap) array is waste.
        var r = GC.AllocateUninitializedArray<T>(a.Length);
        ForChunks(a.Length, (s, l) => f(a.AsSpan(s, l), r.AsSpan(s, l)));
        return r;
    }

    /// <summary>Float-only op through vectorized span kernels: f32 and f64 directly, f16/bf16 through f32.</summary>
    public static Tensor MapFloat(NodeContext ctx, Tensor x, UnarySpanFn<float> f32, UnarySpanFn<double> f64)
    {
        switch (x.DType)
        {
            case DType.Float32: return Tensor.FromArray(MapSpan(x.As<float>(), f32), Shape(x));
            case DType.Float64: return Tensor.FromArray(MapSpan(x.As<double>(), f64), Shape(x));
            case DType.Float16:
            case DType.BFloat16:
            {
                var t = TensorConvert.ToF32(x);
                var a = t.As<float>();
                ForChunks(a.Length, (s, l) => f32(a.AsSpan(s, l), a.AsSpan(s, l)));
                return TensorConvert.To(t, x.DType);
            }
            default: throw BadType(ctx, x, "float types only");
        }
    }

    /// <summary>Op computed in double for float inputs; integer inputs (when allowed) are computed in double and
    /// converted back truncating toward zero, saturating (numpy's astype for in-range values).</summary>
    public static Tensor MapDouble<TOp>(NodeContext ctx, Tensor x, TOp op, bool allowInts = false)
        where TOp : struct, IUnaryDoubleOp
    {
        switch (x.DType)
        {
            case DType.Float32:
            {
                var a = x.As<float>(); var r = new float[a.Length];
                ForChunks(a.Length, (s, l) => { for (int i = s; i < s + l; i++) r[i] = (float)op.Apply(a[i]); });
                return Tensor.FromArray(r, Shape(x));
            }
            case DType.Float64:
            {
                var a = x.As<double>(); var r = new double[a.Length];
                ForChunks(a.Length, (s, l) => { for (int i = s; i < s + l; i++) r[i] = op.Apply(a[i]); });
                return Tensor.FromArray(r, Shape(x));
            }
            case DType.Float16:
            {
                var a = x.As<Half>(); var r = new Half[a.Length];
                ForChunks(a.Length, (s, l) => { for (int i = s; i < s + l; i++) r[i] = (Half)(float)op.Apply((double)a[i]); });
                return Tensor.FromArray(r, Shape(x));
            }
            case DType.BFloat16:
            {
                var a = x.As<BFloat16>(); var r = new BFloat16[a.Length];
                ForChunks(a.Length, (s, l) => { for (int i = s; i < s + l; i++) r[i] = (BFloat16)(float)op.Apply((float)a[i]); });
                return Tensor.FromArray(r, Shape(x));
            }
        }
        if (!allowInts || !DTypes.IsInteger(x.DType)) throw BadType(ctx, x, allowInts ? "numeric types only" : "float types only");
        return x.DType switch
        {
            DType.Int8 => IntViaDouble<sbyte, TOp>(x, op),
            DType.UInt8 => IntViaDouble<byte, TOp>(x, op),
            DType.Int16 => IntViaDouble<short, TOp>(x, op),
            DType.UInt16 => IntViaDouble<ushort, TOp>(x, op),
            DType.Int32 => IntViaDouble<int, TOp>(x, op),
            DType.UInt32 => IntViaDouble<uint, TOp>(x, op),
            DType.Int64 => IntViaDouble<long, TOp>(x, op),
            _ => IntViaDouble<ulong, TOp>(x, op),
        };
    }

    static Tensor IntViaDouble<T, TOp>(Tensor x, TOp op) where T : INumber<T> where TOp : struct, IUnaryDoubleOp
    {
        var a = x.As<T>(); var r = new T[a.Length];
        ForChunks(a.Length, (s, l) =>
        {
            for (int i = s; i < s + l; i++)
            {
                double v = op.Apply(double.CreateTruncating(a[i]));
                r[i] = double.IsNaN(v) ? T.Zero : T.CreateSaturating(v);
            }
        });
        return Tensor.FromArray(r, Shape(x));
    }

    /// <summary>Generic numeric op over the element type itself (f16/bf16 through f32).</summary>
    public static Tensor MapNum<TOp>(NodeContext ctx, Tensor x, TOp op, bool allowUnsigned = true, bool allowSigned = true)
        where TOp : struct, IUnaryNumOp
    {
        if (DTypes.IsUnsignedInt(x.DType) && !allowUnsigned || DTypes.IsSignedInt(x.DType) && !allowSigned)
            throw BadType(ctx, x, allowSigned ? "float and signed integer types only" : "float and unsigned integer types only");
        switch (x.DType)
        {
            case DType.Float32: return Num<float, TOp>(x, op);
            case DType.Float64: return Num<double, TOp>(x, op);
            case DType.Float16:
            case DType.BFloat16: return TensorConvert.To(Num<float, TOp>(TensorConvert.ToF32(x), op), x.DType);
            case DType.Int8: return Num<sbyte, TOp>(x, op);
            case DType.UInt8: return Num<byte, TOp>(x, op);
            case DType.Int16: return Num<short, TOp>(x, op);
            case DType.UInt16: return Num<ushort, TOp>(x, op);
            case DType.Int32: return Num<int, TOp>(x, op);
            case DType.UInt32: return Num<uint, TOp>(x, op);
            case DType.Int64: return Num<long, TOp>(x, op);
            case DType.UInt64: return Num<ulong, TOp>(x, op);
            default: throw BadType(ctx, x, "numeric types only");
        }
    }

    static Tensor Num<T, TOp>(Tensor x, TOp op) where T : INumber<T> where TOp : struct, IUnaryNumOp
    {
        var a = x.As<T>(); var r = new T[a.Length];
        ForChunks(a.Length, (s, l) => { for (int i = s; i < s + l; i++) r[i] = op.Apply(a[i]); });
        return Tensor.FromArray(r, Shape(x));
    }

    /// <summary>Float predicate to a bool tensor (f16/bf16 widened exactly to f32).</summary>
    public static Tensor Predicate(NodeContext ctx, Tensor x, Func<double, bool> f)
    {
        if (!DTypes.IsFloat(x.DType)) throw BadType(ctx, x, "float types only");
        var r = new bool[x.Length];
        switch (x.DType)
        {
            case DType.Float32: { var a = x.As<float>(); ForChunks(a.Length, (s, l) => { for (int i = s; i < s + l; i++) r[i] = f(a[i]); }); break; }
            case DType.Float64: { var a = x.As<double>(); ForChunks(a.Length, (s, l) => { for (int i = s; i < s + l; i++) r[i] = f(a[i]); }); break; }
            default: { var a = TensorConvert.ToF32(x).As<float>(); ForChunks(a.Length, (s, l) => { for (int i = s; i < s + l; i++) r[i] = f(a[i]); }); break; }
        }
        return Tensor.FromArray(r, Shape(x));
    }

    /// <summary>log(1 + x), accurate for small x (Goldberg's correction of the rounded 1 + x).</summary>
    public static double Log1p(double x)
    {
        double u = 1.0 + x;
        if (u == 1.0) return x;
        if (double.IsInfinity(u)) return Math.Log(u);
        return Math.Log(u) * x / (u - 1.0);
    }

    /// <summary>ln(1 + e^x) without overflow: x + log1p(e^-x) for x &gt; 0.</summary>
    public static double Softplus(double x) =>
        double.IsNaN(x) ? x : x > 0 ? x + Log1p(Math.Exp(-x)) : Log1p(Math.Exp(x));

    /// <summary>erf(x) to about double precision: a positive series (no cancellation) for |x| &lt; 3, 1 − erfc
    /// from its continued fraction beyond.</summary>
    public static double Erf(double x)
    {
        if (double.IsNaN(x)) return x;
        double ax = Math.Abs(x);
        if (ax < 3.0) return ErfSeries(x);
        if (ax >= 6.0) return Math.Sign(x);
        double r = 1.0 - ErfcCf(ax, 60);
        return x < 0 ? -r : r;
    }

    /// <summary>erfc(x) = 1 − erf(x), accurate in both tails.</summary>
    public static double Erfc(double x)
    {
        if (double.IsNaN(x)) return x;
        // 1 - erf(x) would lose the tail's relative precision; the continued fraction converges from 1.5 on.
        if (x >= 1.5) return x >= 27.0 ? 0.0 : ErfcCf(x, x < 2.0 ? 120 : 60);
        if (x <= -1.5) return x <= -6.0 ? 2.0 : 2.0 - ErfcCf(-x, x > -2.0 ? 120 : 60);
        return 1.0 - ErfSeries(x);
    }

    // Fast erf/erfc for float outputs (f32/f16/bf16): erfc(x) = g(x) * exp(-x^2) with g(x) = erfc(x) * exp(x^2), a smooth
    // function tabulated as degree-16 Chebyshev series on pieces of width 0.5 over [0, 10), generated at startup
    // from the accurate functions above (relative error about 1e-14, far below float precision).
    const int GPieces = 20, GDegree = 16;
    const double GWidth = 0.5;
    static readonly double[] GCoef = BuildG();

    static double GExact(double x) =>
        x >= 1.5 ? OneOverSqrtPi / ErfcCfDenominator(x, x < 2.0 ? 120 : 60) : (1.0 - ErfSeries(x)) * Math.Exp(x * x);

    static double[] BuildG()
    {
        var c = new double[GPieces * GDegree];
        var f = new double[GDegree];
        for (int p = 0; p < GPieces; p++)
        {
            double a = p * GWidth;
            for (int k = 0; k < GDegree; k++) f[k] = GExact(a + GWidth * 0.5 * (1 + Math.Cos(Math.PI * (k + 0.5) / GDegree)));
            for (int j = 0; j < GDegree; j++)
            {
                double sum = 0;
                for (int k = 0; k < GDegree; k++) sum += f[k] * Math.Cos(Math.PI * j * (k + 0.5) / GDegree);
                c[p * GDegree + j] = 2.0 / GDegree * sum;
            }
        }
        return c;
    }

    /// <summary>g(x) = erfc(x) exp(x^2) for 0 &lt;= x &lt; 10 (Clenshaw over the piece's Chebyshev series).</summary>
    static double G(double x)
    {
        int p = (int)(x * (1 / GWidth));
        double t = (x - p * GWidth) * (2 / GWidth) - 1;
        var c = GCoef.AsSpan(p * GDegree, GDegree);
        double b1 = 0, b2 = 0;
        for (int j = GDegree - 1; j >= 1; j--) { double b0 = 2 * t * b1 - b2 + c[j]; b2 = b1; b1 = b0; }
        return t * b1 - b2 + 0.5 * c[0];
    }

    /// <summary>erfc for float-precision results (relative error about 1e-14).</summary>
    public static double ErfcFast(double x)
    {
        double ax = Math.Abs(x);
        if (!(ax < GPieces * GWidth)) return Erfc(x); // NaN, infinities and the far tails
        if (ax < 0.5) return 1.0 - ErfSeries(x);
        double e = G(ax) * Math.Exp(-x * x);
        return x > 0 ? e : 2.0 - e;
    }

    /// <summary>erf for float-precision results (relative error about 1e-14).</summary>
    public static double ErfFast(double x)
    {
        double ax = Math.Abs(x);
        if (ax < 0.5) return ErfSeries(x);
        if (!(ax < 6.0)) return Erf(x);
        double r = 1.0 - G(ax) * Math.Exp(-x * x);
        return x < 0 ? -r : r;
    }

    const double TwoOverSqrtPi = 1.1283791670955126;
    const double OneOverSqrtPi = 0.56418958354775628;

    // erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_{n>=0} 2^n x^(2n+1) / (1*3*...*(2n+1))  (A&S 7.1.6): all terms positive.
    static double ErfSeries(double x)
    {
        double x2 = x * x, term = x, sum = x;
        var c = SeriesFactors;
        for (int n = 0; n < c.Length; n++)
        {
            term *= x2 * c[n];
            sum += term;
            if (Math.Abs(term) <= 1e-17 * Math.Abs(sum)) break;
        }
        return TwoOverSqrtPi * Math.Exp(-x2) * sum;
    }

    // erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + ...)))))  (A&S 7.1.14), evaluated
    // backwards from a fixed depth: 60 terms reach double precision for x >= 2, 120 for x >= 1.5.
    static double ErfcCf(double x, int depth) => Math.Exp(-x * x) * OneOverSqrtPi / ErfcCfDenominator(x, depth);

    static double ErfcCfDenominator(double x, int depth)
    {
        double f = x;
        for (int k = depth; k >= 1; k--) f = x + k * 0.5 / f;
        return f;
    }
}

/// <summary>Element-wise math: Abs, Neg, Sqrt, Exp, Log, trigonometric and hyperbolic functions, Ceil, Floor, Round,
/// Sign, Reciprocal, Erf, IsNaN, IsInf, Not, BitwiseNot.</summary>
public sealed class Unary : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Abs", Abs);
        r.Add("Neg", Neg);
        Float(r, "Sqrt", (x, y) => TP.Sqrt(x, y), (x, y) => TP.Sqrt(x, y));
        Float(r, "Exp", (x, y) => TP.Exp(x, y), (x, y) => TP.Exp(x, y));
        Float(r, "Log", (x, y) => TP.Log(x, y), (x, y) => TP.Log(x, y));
        Float(r, "Sin", (x, y) => TP.Sin(x, y), (x, y) => TP.Sin(x, y));
        Float(r, "Cos", (x, y) => TP.Cos(x, y), (x, y) => TP.Cos(x, y));
        Float(r, "Tan", (x, y) => TP.Tan(x, y), (x, y) => TP.Tan(x, y));
        Float(r, "Asin", (x, y) => TP.Asin(x, y), (x, y) => TP.Asin(x, y));
        Float(r, "Acos", (x, y) => TP.Acos(x, y), (x, y) => TP.Acos(x, y));
        Float(r, "Atan", (x, y) => TP.Atan(x, y), (x, y) => TP.Atan(x, y));
        Float(r, "Sinh", (x, y) => TP.Sinh(x, y), (x, y) => TP.Sinh(x, y));
        Float(r, "Cosh", (x, y) => TP.Cosh(x, y), (x, y) => TP.Cosh(x, y));
        Float(r, "Asinh", (x, y) => TP.Asinh(x, y), (x, y) => TP.Asinh(x, y));
        Float(r, "Acosh", (x, y) => TP.Acosh(x, y), (x, y) => TP.Acosh(x, y));
        Float(r, "Atanh", (x, y) => TP.Atanh(x, y), (x, y) => TP.Atanh(x, y));
        Float(r, "Ceil", (x, y) => TP.Ceiling(x, y), (x, y) => TP.Ceiling(x, y));
        Float(r, "Floor", (x, y) => TP.Floor(x, y), (x, y) => TP.Floor(x, y));
        // Round: halves round to the nearest even integer (TP.Round's default, MidpointRounding.ToEven).
        Float(r, "Round", (x, y) => TP.Round(x, y), (x, y) => TP.Round(x, y));
        Float(r, "Reciprocal", (x, y) => TP.Reciprocal(x, y), (x, y) => TP.Reciprocal(x, y));
        r.Add("Sign", Sign);
        // Erf: T is every numeric type; integers get erf of the value truncated back (always 0 for finite ints).
        r.Add("Erf", (ctx, x) =>
        {
            var t = x.T(0, ctx);
            return [t.DType == DType.Float64
                ? UnaryHelpers.MapDouble(ctx, t, new ErfOp(), allowInts: true)
                : UnaryHelpers.MapDouble(ctx, t, new ErfFastOp(), allowInts: true)];
        });
        r.Add("IsNaN", (ctx, x) => [UnaryHelpers.Predicate(ctx, x.T(0, ctx), double.IsNaN)]);
        r.Add("IsInf", IsInf);
        r.Add("Not", Not);
        r.Add("BitwiseNot", BitwiseNot);
    }

    static void Float(CpuOpRegistry r, string op, UnarySpanFn<float> f32, UnarySpanFn<double> f64) =>
        r.Add(op, (ctx, x) => [UnaryHelpers.MapFloat(ctx, x.T(0, ctx), f32, f64)]);

    // Abs: every numeric type; integer minimum values wrap (|-128| is -128 in int8), unsigned values are unchanged.
    static Value?[] Abs(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (DTypes.IsFloat(x.DType)) return [UnaryHelpers.MapFloat(ctx, x, (a, y) => TP.Abs(a, y), (a, y) => TP.Abs(a, y))];
        return [UnaryHelpers.MapNum(ctx, x, new AbsOp())];
    }

    // Neg: float and signed integer types; integer minimum values wrap.
    static Value?[] Neg(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (DTypes.IsFloat(x.DType)) return [UnaryHelpers.MapFloat(ctx, x, (a, y) => TP.Negate(a, y), (a, y) => TP.Negate(a, y))];
        return [UnaryHelpers.MapNum(ctx, x, new NegOp(), allowUnsigned: false)];
    }

    // Sign: -1, 0 or 1 (numpy.sign: NaN stays NaN, ±0 gives 0); every numeric type.
    static Value?[] Sign(NodeContext ctx, Value?[] inputs) => [UnaryHelpers.MapNum(ctx, inputs.T(0, ctx), new SignOp())];

    // IsInf: detect_negative / detect_positive (default 1) choose which infinities map to true.
    static Value?[] IsInf(NodeContext ctx, Value?[] inputs)
    {
        bool neg = ctx.Int("detect_negative", 1) != 0, pos = ctx.Int("detect_positive", 1) != 0;
        return [UnaryHelpers.Predicate(ctx, inputs.T(0, ctx), v => neg && double.IsNegativeInfinity(v) || pos && double.IsPositiveInfinity(v))];
    }

    static Value?[] Not(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (x.DType != DType.Bool) throw UnaryHelpers.BadType(ctx, x, "bool only");
        var a = x.As<bool>(); var r = new bool[a.Length];
        for (int i = 0; i < a.Length; i++) r[i] = !a[i];
        return [Tensor.FromArray(r, UnaryHelpers.Shape(x))];
    }

    // BitwiseNot: integer types, every bit flipped.
    static Value?[] BitwiseNot(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        return x.DType switch
        {
            DType.Int8 => [OnesComplement<sbyte>(x)],
            DType.UInt8 => [OnesComplement<byte>(x)],
            DType.Int16 => [OnesComplement<short>(x)],
            DType.UInt16 => [OnesComplement<ushort>(x)],
            DType.Int32 => [OnesComplement<int>(x)],
            DType.UInt32 => [OnesComplement<uint>(x)],
            DType.Int64 => [OnesComplement<long>(x)],
            DType.UInt64 => [OnesComplement<ulong>(x)],
            _ => throw UnaryHelpers.BadType(ctx, x, "integer types only"),
        };
    }

    static Tensor OnesComplement<T>(Tensor x) where T : IBinaryInteger<T>
    {
        var a = x.As<T>(); var r = new T[a.Length];
        UnaryHelpers.ForChunks(a.Length, (s, l) => TP.OnesComplement<T>(a.AsSpan(s, l), r.AsSpan(s, l)));
        return Tensor.FromArray(r, UnaryHelpers.Shape(x));
    }

    struct ErfOp : IUnaryDoubleOp { public double Apply(double x) => UnaryHelpers.Erf(x); }
    // Float-precision results (f32, f16, bf16, integers): the tabulated erf.
    struct ErfFastOp : IUnaryDoubleOp { public double Apply(double x) => UnaryHelpers.ErfFast(x); }

    struct AbsOp : IUnaryNumOp
    {
        public T Apply<T>(T x) where T : INumber<T> => x < T.Zero ? -x : x;
    }

    struct NegOp : IUnaryNumOp
    {
        public T Apply<T>(T x) where T : INumber<T> => -x;
    }

    struct SignOp : IUnaryNumOp
    {
        public T Apply<T>(T x) where T : INumber<T> =>
            x > T.Zero ? T.One : x < T.Zero ? T.Zero - T.One : x == T.Zero ? T.Zero : x; // last case: NaN
    }
}
