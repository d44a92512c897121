using System.Numerics;
using System.Runtime.InteropServices;
using Tapml.Core;
using TP = System.Numerics.Tensors.TensorPrimitives;
using static Tapml.Platforms.Cpu.Ops.BinaryBroadcast;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Broadcasting logic: And, Or, Xor, Equal, Greater, Less, GreaterOrEqual, LessOrEqual, BitwiseAnd,
/// BitwiseOr, BitwiseXor, Where.</summary>
public sealed class LogicalOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("And", (ctx, x) => [Bool<AndK>(ctx, x)]);
        r.Add("Or", (ctx, x) => [Bool<OrK>(ctx, x)]);
        r.Add("Xor", (ctx, x) => [Bool<XorK>(ctx, x)]);
        r.Add("Equal", Equal);
        r.Add("Greater", (ctx, x) => [Compare<GtOp>(ctx, x.T(0, ctx), LegacyAlign(ctx, x.T(0, ctx), x.T(1, ctx)))]);
        r.Add("Less", (ctx, x) => [Compare<LtOp>(ctx, x.T(0, ctx), LegacyAlign(ctx, x.T(0, ctx), x.T(1, ctx)))]);
        r.Add("GreaterOrEqual", (ctx, x) => [Compare<GeOp>(ctx, x.T(0, ctx), x.T(1, ctx))], sinceOpset: 12);
        r.Add("LessOrEqual", (ctx, x) => [Compare<LeOp>(ctx, x.T(0, ctx), x.T(1, ctx))], sinceOpset: 12);
        r.Add("BitwiseAnd", (ctx, x) => [Bitwise<BitAndOp>(ctx, x)], sinceOpset: 18);
        r.Add("BitwiseOr", (ctx, x) => [Bitwise<BitOrOp>(ctx, x)], sinceOpset: 18);
        r.Add("BitwiseXor", (ctx, x) => [Bitwise<BitXorOp>(ctx, x)], sinceOpset: 18);
        r.Add("Where", Where, sinceOpset: 9);
    }

    // ---- And / Or / Xor (bool only) ----------------------------------------------------------------------------
    // bool tensors hold canonical 0/1 bytes (Tensor.FromBytes normalizes), so byte-wise bit operations are exact.

    static ReadOnlySpan<byte> B(ReadOnlySpan<bool> s) => MemoryMarshal.Cast<bool, byte>(s);
    static Span<byte> B(Span<bool> s) => MemoryMarshal.Cast<bool, byte>(s);

    readonly struct AndK : IBinaryKernel<bool, bool>
    {
        public static bool Op(bool x, bool y) => x & y;
        public static bool Vec(ReadOnlySpan<bool> x, ReadOnlySpan<bool> y, Span<bool> d) { TP.BitwiseAnd(B(x), B(y), B(d)); return true; }
        public static bool VecXS(ReadOnlySpan<bool> x, bool y, Span<bool> d) { if (y) x.CopyTo(d); else d.Clear(); return true; }
        public static bool VecSX(bool x, ReadOnlySpan<bool> y, Span<bool> d) => VecXS(y, x, d);
    }

    readonly struct OrK : IBinaryKernel<bool, bool>
    {
        public static bool Op(bool x, bool y) => x | y;
        public static bool Vec(ReadOnlySpan<bool> x, ReadOnlySpan<bool> y, Span<bool> d) { TP.BitwiseOr(B(x), B(y), B(d)); return true; }
        public static bool VecXS(ReadOnlySpan<bool> x, bool y, Span<bool> d) { if (y) d.Fill(true); else x.CopyTo(d); return true; }
        public static bool VecSX(bool x, ReadOnlySpan<bool> y, Span<bool> d) => VecXS(y, x, d);
    }

    readonly struct XorK : IBinaryKernel<bool, bool>
    {
        public static bool Op(bool x, bool y) => x ^ y;
        public static bool Vec(ReadOnlySpan<bool> x, ReadOnlySpan<bool> y, Span<bool> d) { TP.Xor(B(x), B(y), B(d)); return true; }
        public static bool VecXS(ReadOnlySpan<bool> x, bool y, Span<bool> d) { TP.Xor(B(x), (byte)(y ? 1 : 0), B(d)); return true; }
        public static bool VecSX(bool x, ReadOnlySpan<bool> y, Span<bool> d) => VecXS(y, x, d);
    }

    static Tensor Bool<K>(NodeContext ctx, Value?[] x) where K : IBinaryKernel<bool, bool>
    {
        Tensor a = x.T(0, ctx), b = LegacyAlign(ctx, x.T(0, ctx), x.T(1, ctx));
        if (a.DType != DType.Bool || b.DType != DType.Bool)
            throw ctx.Error($"needs bool inputs, got {DTypes.Name(a.DType)} and {DTypes.Name(b.DType)}");
        return Guard(ctx, () => Map<bool, bool, K>(a, b, DType.Bool));
    }

    // ---- comparisons (bool output; NaN compares false, Equal(NaN, NaN) is false) --------------------------------

    readonly struct EqOp : IBinaryCompare { public static bool Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x == y; }
    readonly struct GtOp : IBinaryCompare { public static bool Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x > y; }
    readonly struct LtOp : IBinaryCompare { public static bool Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x < y; }
    readonly struct GeOp : IBinaryCompare { public static bool Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x >= y; }
    readonly struct LeOp : IBinaryCompare { public static bool Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x <= y; }

    readonly struct EqBoolK : IBinaryKernel<bool, bool> { public static bool Op(bool x, bool y) => x == y; }
    readonly struct EqStringK : IBinaryKernel<string, bool> { public static bool Op(string x, string y) => string.Equals(x, y, StringComparison.Ordinal); }

    // Equal-1/7: bool and integer types; Equal-11: + floats; Equal-19: + string.
    static Value?[] Equal(NodeContext ctx, Value?[] x)
    {
        Tensor a = x.T(0, ctx), b = LegacyAlign(ctx, x.T(0, ctx), x.T(1, ctx));
        SameType(ctx, a, b);
        return a.DType switch
        {
            DType.Bool => [Guard(ctx, () => Map<bool, bool, EqBoolK>(a, b, DType.Bool))],
            DType.String => [Guard(ctx, () => Map<string, bool, EqStringK>(a, b, DType.Bool))],
            _ => [Compare<EqOp>(ctx, a, b)],
        };
    }

    // ---- BitwiseAnd / BitwiseOr / BitwiseXor (opset 18, integer types) ------------------------------------------

    readonly struct BitAndOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x & y;
        public static bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.BitwiseAnd(x, y, d); return true; }
        public static bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.BitwiseAnd(x, y, d); return true; }
        public static bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.BitwiseAnd(y, x, d); return true; }
    }

    readonly struct BitOrOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x | y;
        public static bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.BitwiseOr(x, y, d); return true; }
        public static bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.BitwiseOr(x, y, d); return true; }
        public static bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.BitwiseOr(y, x, d); return true; }
    }

    readonly struct BitXorOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x ^ y;
        public static bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Xor(x, y, d); return true; }
        public static bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Xor(x, y, d); return true; }
        public static bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Xor(y, x, d); return true; }
    }

    static Tensor Bitwise<TOp>(NodeContext ctx, Value?[] x) where TOp : IBinaryArith
    {
        Tensor a = x.T(0, ctx), b = x.T(1, ctx);
        if (!DTypes.IsInteger(a.DType)) throw ctx.Error($"needs integer inputs, got {DTypes.Name(a.DType)}");
        return Arith<TOp>(ctx, a, b);
    }

    // ---- Where -------------------------------------------------------------------------------------------------

    readonly struct WhereVisitor(Tensor c, Tensor a, Tensor b) : IBinaryAnyVisitor<Tensor>
    {
        public Tensor Visit<T>()
        {
            var plan = new BinaryBroadcastPlan(c.Shape, a.Shape, b.Shape);
            T[] d = Uninitialized<T>(plan.Length);
            var r = new Tensor(a.DType, plan.OutShape, d);
            bool[] cs = c.As<bool>();
            T[] xs = a.As<T>(), ys = b.As<T>();
            int sc = plan.InnerStride[0], sx = plan.InnerStride[1], sy = plan.InnerStride[2];
            plan.Run((o, n, offs) =>
            {
                long oc = offs[0], ox = offs[1], oy = offs[2];
                var ds = d.AsSpan((int)o, n);
                if (sc == 1 && sx == 1 && sy == 1)
                {
                    ReadOnlySpan<bool> cc = cs.AsSpan((int)oc, n);
                    ReadOnlySpan<T> xx = xs.AsSpan((int)ox, n), yy = ys.AsSpan((int)oy, n);
                    for (int i = 0; i < n; i++) ds[i] = cc[i] ? xx[i] : yy[i];
                }
                else
                    for (int i = 0; i < n; i++) ds[i] = cs[oc + i * sc] ? xs[ox + i * sx] : ys[oy + i * sy];
            });
            return r;
        }
    }

    // Where-9/16: output[i] = condition[i] ? X[i] : Y[i] with three-way numpy broadcasting; X and Y share any type.
    static Value?[] Where(NodeContext ctx, Value?[] x)
    {
        Tensor c = x.T(0, ctx), a = x.T(1, ctx), b = x.T(2, ctx);
        if (c.DType != DType.Bool) throw ctx.Error($"condition must be bool, got {DTypes.Name(c.DType)}");
        SameType(ctx, a, b);
        return [Guard(ctx, () => Any<Tensor, WhereVisitor>(a.DType, new WhereVisitor(c, a, b), ctx))];
    }
}
