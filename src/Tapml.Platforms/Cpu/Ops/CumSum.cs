using System.Numerics;
using Tapml.Core;
using static Tapml.Platforms.Cpu.Ops.LinalgHelpers;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>CumSum.</summary>
public sealed class CumSumOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r) => r.Add("CumSum", CumSum, sinceOpset: 11);

    static Value?[] CumSum(NodeContext ctx, Value?[] x)
    {
        var t = x.T(0, ctx);
        var at = x.T(1, ctx);
        if (at.Length != 1 || at.Rank > 1) throw ctx.Error($"axis must be a scalar, got {at.Describe()}");
        if (t.Rank == 0) throw ctx.Error("input must have rank >= 1");
        int axis;
        try { axis = ShapeUtil.Axis(at.GetInt64(0), t.Rank); }
        catch (TapmlException e) { throw ctx.Error(e.Message); }
        bool exclusive = ctx.Int("exclusive", 0) != 0, reverse = ctx.Int("reverse", 0) != 0;
        var (outer, len, inner) = Split(t.Shape, axis);
        DType dt = t.DType;
        var src = IsHalfLike(dt) ? TensorConvert.ToF32(t) : t;
        Array y = src.DType switch
        {
            DType.Float32 => Scan(src.As<float>(), outer, len, inner, exclusive, reverse),
            DType.Float64 => Scan(src.As<double>(), outer, len, inner, exclusive, reverse),
            DType.Int32 => Scan(src.As<int>(), outer, len, inner, exclusive, reverse),
            DType.Int64 => Scan(src.As<long>(), outer, len, inner, exclusive, reverse),
            DType.UInt32 => Scan(src.As<uint>(), outer, len, inner, exclusive, reverse),
            DType.UInt64 => Scan(src.As<ulong>(), outer, len, inner, exclusive, reverse),
            DType.Int8 => Scan(src.As<sbyte>(), outer, len, inner, exclusive, reverse),
            DType.UInt8 => Scan(src.As<byte>(), outer, len, inner, exclusive, reverse),
            DType.Int16 => Scan(src.As<short>(), outer, len, inner, exclusive, reverse),
            DType.UInt16 => Scan(src.As<ushort>(), outer, len, inner, exclusive, reverse),
            _ => throw ctx.Unsupported($"CumSum on {DTypes.Name(dt)} is not supported"),
        };
        var r = new Tensor(src.DType, (long[])t.Shape.Clone(), y);
        return [IsHalfLike(dt) ? TensorConvert.To(r, dt) : r];
    }

    /// <summary>Running sums along the axis, one (inner-wide, vectorized) row at a time; each outer block is
    /// independent.</summary>
    static T[] Scan<T>(T[] d, long outer, long len, long inner, bool exclusive, bool reverse) where T : struct, INumber<T>
    {
        var y = new T[d.LongLength];
        if (y.Length == 0) return y;
        For(outer, len * inner, o =>
        {
            var acc = new T[inner];
            for (long s = 0; s < len; s++)
            {
                long a = reverse ? len - 1 - s : s;
                long off = (o * len + a) * inner;
                var row = new ReadOnlySpan<T>(d, (int)off, (int)inner);
                var dst = new Span<T>(y, (int)off, (int)inner);
                if (exclusive) { acc.CopyTo(dst); TP.Add(acc, row, acc); }
                else { TP.Add(acc, row, acc); acc.CopyTo(dst); }
            }
        });
        return y;
    }
}
