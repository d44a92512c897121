using System.Buffers;
using System.Numerics;
using Tapml.Core;
using static Tapml.Platforms.Cpu.Ops.LinalgHelpers;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Softmax, LogSoftmax, Hardmax.</summary>
public sealed class SoftmaxOps : ICpuOpFamily
{
    enum Kind { Softmax, LogSoftmax, Hardmax }

    public void Register(CpuOpRegistry r)
    {
        r.Add("Softmax", (c, x) => Run(c, x, Kind.Softmax));
        r.Add("LogSoftmax", (c, x) => Run(c, x, Kind.LogSoftmax));
        r.Add("Hardmax", (c, x) => Run(c, x, Kind.Hardmax));
    }

    static Value?[] Run(NodeContext ctx, Value?[] x, Kind kind)
    {
        var t = x.T(0, ctx);
        DType dt = t.DType;
        if (!DTypes.IsFloat(dt)) throw ctx.Error($"{ctx.Node.OpType} needs a float tensor, got {DTypes.Name(dt)}");
        if (IsHalfLike(dt)) t = TensorConvert.ToF32(t);
        int rank = t.Rank;
        Tensor y;
        if (ctx.Opset < 13)
        {
            // Opset < 13: the input is coerced to 2-D [prod(d0..d(axis-1)), prod(d(axis)..)], rows normalized.
            long axis = ctx.Int("axis", 1);
            if (axis < -rank || axis > rank) throw ctx.Error($"axis {axis} is out of range for rank {rank}");
            if (axis < 0) axis += rank;
            long cols = 1;
            for (long i = axis; i < rank; i++) cols *= t.Shape[i];
            y = Rows(t, cols, kind);
        }
        else
        {
            // Opset >= 13: along one axis (default -1); other axes are moved out of the way.
            int axis;
            try { axis = ShapeUtil.Axis(ctx.Int("axis", -1), rank); }
            catch (TapmlException e) { throw ctx.Error(e.Message); }
            if (rank == 0) y = Rows(t, 1, kind);
            else if (axis == rank - 1) y = Rows(t, t.Shape[axis], kind);
            else
            {
                var perm = new int[rank];
                var inv = new int[rank];
                for (int i = 0, j = 0; i < rank; i++) if (i != axis) perm[j++] = i;
                perm[rank - 1] = axis;
                for (int i = 0; i < rank; i++) inv[perm[i]] = i;
                var pshape = new long[rank];
                for (int i = 0; i < rank; i++) pshape[i] = t.Shape[perm[i]];
                var moved = Permuted(t, perm, pshape);
                var ym = Rows(moved, t.Shape[axis], kind);
                y = Permuted(ym, inv, t.Shape);
            }
        }
        return [IsHalfLike(dt) ? TensorConvert.To(y, dt) : y];
    }

    static Tensor Permuted(Tensor t, int[] perm, long[] newShape) => t.DType == DType.Float64
        ? Tensor.FromArray(Permute(t.As<double>(), t.Shape, perm), newShape)
        : Tensor.FromArray(Permute(t.As<float>(), t.Shape, perm), newShape);

    static Tensor Rows(Tensor t, long cols, Kind kind) => t.DType == DType.Float64
        ? Tensor.FromArray(Rows(t.As<double>(), cols, kind), t.Shape)
        : Tensor.FromArray(Rows(t.As<float>(), cols, kind), t.Shape);

    static T[] Rows<T>(T[] x, long cols, Kind kind) where T : struct, IFloatingPointIeee754<T>
    {
        var y = new T[x.LongLength];
        if (cols == 0 || x.Length == 0) return y;
        long rows = x.LongLength / cols;
        For(rows, cols, r =>
        {
            var src = new ReadOnlySpan<T>(x, (int)(r * cols), (int)cols);
            var dst = new Span<T>(y, (int)(r * cols), (int)cols);
            Row(src, dst, kind);
        });
        return y;
    }

    static void Row<T>(ReadOnlySpan<T> x, Span<T> y, Kind kind) where T : struct, IFloatingPointIeee754<T>
    {
        if (kind == Kind.Hardmax)
        {
            // One-hot of the first maximum (numpy argmax: a NaN counts as the maximum).
            int best = 0;
            for (int i = 1; i < x.Length && !T.IsNaN(x[best]); i++)
                if (T.IsNaN(x[i]) || x[i] > x[best]) best = i;
            y.Clear();
            y[best] = T.One;
            return;
        }
        T mx = TP.Max(x);
        TP.Subtract(x, mx, y);
        if (kind == Kind.Softmax)
        {
            TP.Exp(y, y);
            T s = TP.Sum((ReadOnlySpan<T>)y);
            TP.Divide(y, s, y);
            return;
        }
        // LogSoftmax: (x - max) - log(sum(exp(x - max))).
        var buf = ArrayPool<T>.Shared.Rent(x.Length);
        var tmp = buf.AsSpan(0, x.Length);
        TP.Exp((ReadOnlySpan<T>)y, tmp);
        T ls = T.Log(TP.Sum((ReadOnlySpan<T>)tmp));
        ArrayPool<T>.Shared.Return(buf);
        TP.Subtract(y, ls, y);
    }
}
