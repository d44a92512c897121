using System.Numerics;
using TP = System.Numerics.Tensors.TensorPrimitives;
using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Element-wise activations: Relu, LeakyRelu, PRelu, Elu, Selu, Celu, Sigmoid, HardSigmoid, HardSwish,
/// Softplus, Softsign, Tanh, Gelu, Mish, ThresholdedRelu, Shrink.</summary>
public sealed class Activations : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Relu", Relu);
        r.Add("LeakyRelu", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx), new LeakyReluOp(ctx.Float("alpha", 0.01f)))]);
        r.Add("PRelu", PRelu);
        r.Add("Elu", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx), new EluOp(ctx.Float("alpha", 1f)))]);
        r.Add("Selu", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx),
            new SeluOp(ctx.Float("alpha", 1.67326319217681884765625f), ctx.Float("gamma", 1.05070102214813232421875f)))]);
        r.Add("Celu", Celu);
        r.Add("Sigmoid", (ctx, x) => [UnaryHelpers.MapFloat(ctx, x.T(0, ctx), (a, y) => TP.Sigmoid(a, y), (a, y) => TP.Sigmoid(a, y))]);
        r.Add("Tanh", (ctx, x) => [UnaryHelpers.MapFloat(ctx, x.T(0, ctx), (a, y) => TP.Tanh(a, y), (a, y) => TP.Tanh(a, y))]);
        r.Add("HardSigmoid", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx), new HardSigmoidOp(ctx.Float("alpha", 0.2f), ctx.Float("beta", 0.5f)))]);
        // HardSwish: x * HardSigmoid<alpha = 1/6, beta = 0.5>(x).
        r.Add("HardSwish", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx), new HardSwishOp())]);
        r.Add("Softplus", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx), new SoftplusOp())]);
        r.Add("Softsign", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx), new SoftsignOp())]);
        r.Add("Gelu", Gelu);
        r.Add("Mish", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx), new MishOp())]);
        r.Add("ThresholdedRelu", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx), new ThresholdedReluOp(ctx.Float("alpha", 1f)))]);
        // Shrink: every numeric type (integers computed in double, truncated back as numpy's astype does).
        r.Add("Shrink", (ctx, x) => [UnaryHelpers.MapDouble(ctx, x.T(0, ctx),
            new ShrinkOp(ctx.Float("bias", 0f), ctx.Float("lambd", 0.5f)), allowInts: true)]);
    }

    // Relu: max(0, x); float types and (opset 14) signed integers. NaN stays NaN.
    static Value?[] Relu(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (DTypes.IsFloat(x.DType)) return [UnaryHelpers.MapFloat(ctx, x, (a, y) => TP.Max(a, 0f, y), (a, y) => TP.Max(a, 0.0, y))];
        return [UnaryHelpers.MapNum(ctx, x, new ReluOp())];
    }

    // Celu: max(0, x) + min(0, alpha * (exp(x / alpha) - 1)).
    static Value?[] Celu(NodeContext ctx, Value?[] inputs)
    {
        float alpha = ctx.Float("alpha", 1f);
        if (alpha == 0) throw ctx.Error("alpha must not be 0");
        return [UnaryHelpers.MapDouble(ctx, inputs.T(0, ctx), new CeluOp(alpha))];
    }

    // Gelu (opset 20): approximate = "none": 0.5 x (1 + erf(x / sqrt 2));
    // "tanh": 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
    static Value?[] Gelu(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        return ctx.String("approximate", "none") switch
        {
            "none" => [x.DType == DType.Float64 ? UnaryHelpers.MapDouble(ctx, x, new GeluErfOp()) : UnaryHelpers.MapDouble(ctx, x, new GeluErfFastOp())],
            "tanh" => [UnaryHelpers.MapDouble(ctx, x, new GeluTanhOp())],
            var a => throw ctx.Error($"approximate must be \"none\" or \"tanh\", got \"{a}\""),
        };
    }

    // PRelu: y = x for x >= 0, slope * x otherwise; slope broadcasts unidirectionally to X. Like ONNX's reference,
    // a 1-D slope that does not broadcast applies along the one axis of X of its length (older models' channels).
    static Value?[] PRelu(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var slope = inputs.T(1, ctx);
        if (slope.DType != x.DType) throw ctx.Error($"slope is {DTypes.Name(slope.DType)}, X is {DTypes.Name(x.DType)}");
        long[] sshape = PReluSlopeShape(ctx, x.Shape, slope.Shape);
        switch (x.DType)
        {
            case DType.Float32: return [PReluT<float>(x, slope, sshape)];
            case DType.Float64: return [PReluT<double>(x, slope, sshape)];
            case DType.Float16:
            case DType.BFloat16:
                return [TensorConvert.To(PReluT<float>(TensorConvert.ToF32(x), TensorConvert.ToF32(slope), sshape), x.DType)];
            case DType.Int8: return [PReluT<sbyte>(x, slope, sshape)];
            case DType.UInt8: return [PReluT<byte>(x, slope, sshape)];
            case DType.Int16: return [PReluT<short>(x, slope, sshape)];
            case DType.UInt16: return [PReluT<ushort>(x, slope, sshape)];
            case DType.Int32: return [PReluT<int>(x, slope, sshape)];
            case DType.UInt32: return [PReluT<uint>(x, slope, sshape)];
            case DType.Int64: return [PReluT<long>(x, slope, sshape)];
            case DType.UInt64: return [PReluT<ulong>(x, slope, sshape)];
            default: throw UnaryHelpers.BadType(ctx, x, "numeric types only");
        }
    }

    /// <summary>The slope's shape as it broadcasts to X (same element count as the slope).</summary>
    static long[] PReluSlopeShape(NodeContext ctx, long[] xs, long[] ss)
    {
        if (Unidirectional(xs, ss)) return ss;
        if (ss.Length == 1)
        {
            int found = -1, count = 0;
            for (int i = 0; i < xs.Length; i++) if (xs[i] == ss[0]) { found = i; count++; }
            if (count == 1)
            {
                var r = new long[xs.Length - found];
                Array.Fill(r, 1L);
                r[0] = ss[0];
                return r;
            }
        }
        throw ctx.Error($"slope shape {ShapeUtil.Format(ss)} does not broadcast to X shape {ShapeUtil.Format(xs)}");
    }

    static bool Unidirectional(long[] xs, long[] ss)
    {
        if (ss.Length > xs.Length) return false; // the result would outrank X
        for (int i = 0; i < ss.Length; i++)
        {
            long s = ss[ss.Length - 1 - i], d = xs[xs.Length - 1 - i];
            if (s != d && s != 1) return false;
        }
        return true;
    }

    static Tensor PReluT<T>(Tensor x, Tensor slope, long[] sshape) where T : INumber<T>
    {
        var a = x.As<T>(); var sl = slope.As<T>(); var r = new T[a.Length];
        int rank = x.Rank;
        long[] xs = x.Shape;
        if (sl.Length == 1)
        {
            T s = sl[0];
            UnaryHelpers.ForChunks(a.Length, (st, l) => { for (int i = st; i < st + l; i++) r[i] = a[i] < T.Zero ? a[i] * s : a[i]; });
            return Tensor.FromArray(r, UnaryHelpers.Shape(x));
        }
        if (a.Length == 0) return Tensor.FromArray(r, UnaryHelpers.Shape(x));
        long[] bst = ShapeUtil.BroadcastStrides(sshape, xs);
        int L = (int)xs[rank - 1];
        long sL = bst[rank - 1];
        int rows = a.Length / L;
        // Rows of the last axis; each row's slope offset comes from its outer index.
        Action<int, int> body = (r0, nr) =>
        {
            for (int row = r0; row < r0 + nr; row++)
            {
                long rem = row, sbase = 0;
                for (int d = rank - 2; d >= 0; d--)
                {
                    long idx = rem % xs[d];
                    rem /= xs[d];
                    sbase += idx * bst[d];
                }
                int xo = row * L;
                for (int j = 0; j < L; j++)
                {
                    T v = a[xo + j];
                    r[xo + j] = v < T.Zero ? v * sl[sbase + j * sL] : v;
                }
            }
        };
        if ((long)a.Length < UnaryHelpers.ParallelMin) body(0, rows);
        else
        {
            int rowsPer = Math.Max(1, UnaryHelpers.Chunk / L);
            int chunks = (rows + rowsPer - 1) / rowsPer;
            Parallel.For(0, chunks, CpuThreads.Options, c => body(c * rowsPer, Math.Min(rowsPer, rows - c * rowsPer)));
        }
        return Tensor.FromArray(r, UnaryHelpers.Shape(x));
    }

    struct ReluOp : IUnaryNumOp
    {
        public T Apply<T>(T x) where T : INumber<T> => x < T.Zero ? T.Zero : x;
    }

    readonly struct LeakyReluOp(double alpha) : IUnaryDoubleOp
    {
        // y = alpha * x for x < 0, x otherwise (f32 product exact in double, rounded once).
        public double Apply(double x) => x < 0 ? alpha * x : x;
    }

    readonly struct EluOp(double alpha) : IUnaryDoubleOp
    {
        public double Apply(double x) => x < 0 ? alpha * (Math.Exp(x) - 1.0) : x;
    }

    readonly struct SeluOp(double alpha, double gamma) : IUnaryDoubleOp
    {
        // y = gamma * (alpha * e^x - alpha) for x <= 0, gamma * x for x > 0.
        public double Apply(double x) => x > 0 ? gamma * x : gamma * (alpha * Math.Exp(x) - alpha);
    }

    readonly struct CeluOp(double alpha) : IUnaryDoubleOp
    {
        public double Apply(double x) =>
            double.IsNaN(x) ? x : Math.Max(0.0, x) + Math.Min(0.0, alpha * (Math.Exp(x / alpha) - 1.0));
    }

    readonly struct HardSigmoidOp(double alpha, double beta) : IUnaryDoubleOp
    {
        public double Apply(double x) => Math.Max(0.0, Math.Min(1.0, alpha * x + beta));
    }

    struct HardSwishOp : IUnaryDoubleOp
    {
        public double Apply(double x) => x * Math.Max(0.0, Math.Min(1.0, x / 6.0 + 0.5));
    }

    struct SoftplusOp : IUnaryDoubleOp
    {
        // ln(e^x + 1), computed without overflow for large x.
        public double Apply(double x) => UnaryHelpers.Softplus(x);
    }

    struct SoftsignOp : IUnaryDoubleOp
    {
        public double Apply(double x) => x / (1.0 + Math.Abs(x));
    }

    struct MishOp : IUnaryDoubleOp
    {
        // x * tanh(softplus(x)).
        public double Apply(double x) => x * Math.Tanh(UnaryHelpers.Softplus(x));
    }

    struct GeluErfOp : IUnaryDoubleOp
    {
        // 1 + erf(x / sqrt 2) = erfc(-x / sqrt 2), accurate for large negative x too.
        public double Apply(double x) => 0.5 * x * UnaryHelpers.Erfc(-x * 0.70710678118654752);
    }

    struct GeluErfFastOp : IUnaryDoubleOp
    {
        // Float-precision results: the tabulated erfc.
        public double Apply(double x) => 0.5 * x * UnaryHelpers.ErfcFast(-x * 0.70710678118654752);
    }

    struct GeluTanhOp : IUnaryDoubleOp
    {
        public double Apply(double x) => 0.5 * x * (1.0 + Math.Tanh(0.79788456080286536 * (x + 0.044715 * x * x * x)));
    }

    readonly struct ThresholdedReluOp(double alpha) : IUnaryDoubleOp
    {
        // y = x for x > alpha, 0 otherwise (NaN gives 0, as in ONNX's reference).
        public double Apply(double x) => x > alpha ? x : 0.0;
    }

    readonly struct ShrinkOp(double bias, double lambd) : IUnaryDoubleOp
    {
        // x + bias for x < -lambd, x - bias for x > lambd, 0 otherwise (NaN gives 0, as in ONNX's reference).
        public double Apply(double x) => x < -lambd ? x + bias : x > lambd ? x - bias : 0.0;
    }
}
