using System.Numerics;
using Tapml.Core;
using TP = System.Numerics.Tensors.TensorPrimitives;
using static Tapml.Platforms.Cpu.Ops.BinaryBroadcast;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Variadic elementwise ops with multidirectional broadcasting (Max, Min, Sum, Mean) and Clip.</summary>
public sealed class VariadicOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Max", (ctx, x) => [Fold<MaxOp>(ctx, x, mean: false)]);
        r.Add("Min", (ctx, x) => [Fold<MinOp>(ctx, x, mean: false)]);
        r.Add("Sum", (ctx, x) => [Fold<BinaryOps.AddOp>(ctx, x, mean: false)]);
        r.Add("Mean", (ctx, x) => [Fold<BinaryOps.AddOp>(ctx, x, mean: true)]);
        r.Add("Clip", Clip);
    }

    /// <summary>Max: NaN propagates (numpy.maximum; Math.Max and TensorPrimitives.Max do the same).</summary>
    internal readonly struct MaxOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => T.Max(x, y);
        public static bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Max(x, y, d); return true; }
        public static bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Max(x, y, d); return true; }
        public static bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Max(y, x, d); return true; }
    }

    /// <summary>Min: NaN propagates (numpy.minimum).</summary>
    internal readonly struct MinOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => T.Min(x, y);
        public static bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Min(x, y, d); return true; }
        public static bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Min(x, y, d); return true; }
        public static bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Min(y, x, d); return true; }
    }

    // Max/Min/Sum/Mean-8+: 1..N inputs, multidirectional broadcasting; the result is the left fold of the binary op
    // (as the ONNX reference computes it). Before opset 8 the inputs had to share one shape, which broadcasting
    // covers. f16/bf16 inputs are widened to f32 once, folded, and rounded once. Mean = Sum / N.
    static Tensor Fold<TOp>(NodeContext ctx, Value?[] x, bool mean) where TOp : IBinaryArith
    {
        var ts = new List<Tensor>();
        for (int i = 0; i < x.Length; i++) if (x[i] is not null) ts.Add(x.T(i, ctx));
        if (ts.Count == 0) throw ctx.Error("needs at least one input");
        DType dt = ts[0].DType;
        foreach (var t in ts)
            if (t.DType != dt) throw ctx.Error($"inputs have different element types ({DTypes.Name(dt)} and {DTypes.Name(t.DType)})");
        if (mean && !DTypes.IsFloat(dt)) throw ctx.Error($"Mean needs float inputs, got {DTypes.Name(dt)}");
        bool half = IsHalfLike(dt);
        if (half) for (int i = 0; i < ts.Count; i++) ts[i] = TensorConvert.ToF32(ts[i]);
        Tensor acc = ts[0];
        for (int i = 1; i < ts.Count; i++) acc = Arith<TOp>(ctx, acc, ts[i]);
        if (mean && ts.Count > 1)
        {
            // acc is a fresh tensor here (never an input), so it is divided in place.
            float n = ts.Count;
            if (acc.DType == DType.Float32) { var s = acc.Span<float>(); TP.Divide(s, n, s); }
            else { var s = acc.Span<double>(); TP.Divide(s, (double)ts.Count, s); }
        }
        return half ? TensorConvert.To(acc, dt) : acc;
    }

    readonly struct ClipVisitor(Tensor t, Tensor? lo, Tensor? hi) : IBinaryNumericVisitor<Tensor>
    {
        public Tensor Visit<T>() where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T>
        {
            T[] src = t.As<T>(), dst = Uninitialized<T>(src.LongLength);
            var r = new Tensor(t.DType, t.Shape, dst);
            bool hasLo = lo is not null, hasHi = hi is not null;
            T l = hasLo ? lo!.As<T>()[0] : T.Zero, h = hasHi ? hi!.As<T>()[0] : T.Zero;
            Chunks(src.LongLength, (s, n) =>
            {
                ReadOnlySpan<T> xs = src.AsSpan(s, n);
                Span<T> ds = dst.AsSpan(s, n);
                // y = min(max(x, min), max), numpy.clip's order: when min > max every element becomes max.
                if (hasLo) TP.Max(xs, l, ds); else xs.CopyTo(ds);
                if (hasHi) TP.Min(ds, h, ds);
            });
            return r;
        }
    }

    // Clip-1/6: min/max attributes (defaults: the float range); Clip-11+: optional scalar inputs min and max
    // (absent = no bound); Clip-12+ also integer types.
    static Value?[] Clip(NodeContext ctx, Value?[] x)
    {
        Tensor t = x.T(0, ctx);
        if (!DTypes.IsNumeric(t.DType)) throw ctx.Error($"Clip needs a numeric input, got {DTypes.Name(t.DType)}");
        Tensor? lo, hi;
        if (ctx.Opset < 11)
        {
            lo = Scalar(t.DType, ctx.Float("min", float.MinValue));
            hi = Scalar(t.DType, ctx.Float("max", float.MaxValue));
        }
        else
        {
            lo = Bound(ctx, t, x.OptT(1), "min");
            hi = Bound(ctx, t, x.OptT(2), "max");
        }
        if (IsHalfLike(t.DType))
        {
            // Exact: the result is always one of the (exactly widened) inputs.
            var r = new ClipVisitor(TensorConvert.ToF32(t), lo is null ? null : TensorConvert.ToF32(lo), hi is null ? null : TensorConvert.ToF32(hi)).Visit<float>();
            return [TensorConvert.To(r, t.DType)];
        }
        return [Guard(ctx, () => Numeric<Tensor, ClipVisitor>(t.DType, new ClipVisitor(t, lo, hi), ctx))];
    }

    static Tensor Scalar(DType dt, double v)
    {
        var s = Tensor.Zeros(dt);
        s.SetDouble(0, v);
        return s;
    }

    static Tensor? Bound(NodeContext ctx, Tensor t, Tensor? b, string name)
    {
        if (b is null) return null;
        if (b.Length != 1) throw ctx.Error($"{name} must be a scalar, got {b.Describe()}");
        if (b.DType != t.DType) throw ctx.Error($"{name} is {DTypes.Name(b.DType)}, input is {DTypes.Name(t.DType)}");
        return b;
    }
}
