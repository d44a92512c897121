using System.Buffers;
using System.Numerics;
using Tapml.Core;
using static Tapml.Platforms.Cpu.Ops.LinalgHelpers;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>ReduceSum/Mean/Max/Min/Prod/L1/L2/LogSum/LogSumExp/SumSquare, ArgMax, ArgMin.</summary>
public sealed class ReductionOps : ICpuOpFamily
{
    enum Kind { Sum, Mean, Max, Min, Prod, L1, L2, LogSum, LogSumExp, SumSquare }

    public void Register(CpuOpRegistry r)
    {
        // The axes attribute became an input at opset 13 for ReduceSum and at opset 18 for the others.
        r.Add("ReduceSum", (c, x) => Reduce(c, x, Kind.Sum, 13));
        r.Add("ReduceMean", (c, x) => Reduce(c, x, Kind.Mean, 18));
        r.Add("ReduceMax", (c, x) => Reduce(c, x, Kind.Max, 18));
        r.Add("ReduceMin", (c, x) => Reduce(c, x, Kind.Min, 18));
        r.Add("ReduceProd", (c, x) => Reduce(c, x, Kind.Prod, 18));
        r.Add("ReduceL1", (c, x) => Reduce(c, x, Kind.L1, 18));
        r.Add("ReduceL2", (c, x) => Reduce(c, x, Kind.L2, 18));
        r.Add("ReduceLogSum", (c, x) => Reduce(c, x, Kind.LogSum, 18));
        r.Add("ReduceLogSumExp", (c, x) => Reduce(c, x, Kind.LogSumExp, 18));
        r.Add("ReduceSumSquare", (c, x) => Reduce(c, x, Kind.SumSquare, 18));
        r.Add("ArgMax", (c, x) => Arg(c, x, true));
        r.Add("ArgMin", (c, x) => Arg(c, x, false));
    }

    static Value?[] Reduce(NodeContext ctx, Value?[] x, Kind kind, int axesInputFrom)
    {
        var t = x.T(0, ctx);
        long[]? axes = ctx.Opset >= axesInputFrom ? x.OptT(1)?.ToInt64Array() : ctx.Ints("axes");
        bool keep = ctx.Int("keepdims", 1) != 0;
        // noop_with_empty_axes: empty axes reduce over the empty set (each output is its one input element, still
        // passed through the op's non-reduction steps: ReduceSumSquare squares, ReduceLogSum takes the log).
        bool noop = ctx.Opset >= axesInputFrom && ctx.Int("noop_with_empty_axes", 0) != 0;
        int rank = t.Rank;
        var red = new bool[rank];
        if (axes is null || axes.Length == 0) { if (!noop) Array.Fill(red, true); }
        else
            foreach (long a in axes)
            {
                if (a < -rank || a >= rank) throw ctx.Error($"axis {a} is out of range for rank {rank}");
                red[a < 0 ? a + rank : a] = true;
            }
        var outShape = new List<long>();
        var perm = new List<int>();
        long R = 1;
        for (int i = 0; i < rank; i++)
        {
            if (red[i]) { R *= t.Shape[i]; if (keep) outShape.Add(1); }
            else { outShape.Add(t.Shape[i]); perm.Add(i); }
        }
        for (int i = 0; i < rank; i++) if (red[i]) perm.Add(i);
        var plan = new RPlan(outShape.ToArray(), perm.ToArray(), R, kind);
        DType dt = t.DType;
        if (IsHalfLike(dt)) return [TensorConvert.To(Run(ctx, TensorConvert.ToF32(t), plan), dt)];
        return [Run(ctx, t, plan)];
    }

    sealed record RPlan(long[] OutShape, int[] Perm, long R, Kind Kind);

    static Tensor Run(NodeContext ctx, Tensor t, RPlan p)
    {
        switch (t.DType)
        {
            case DType.Float32: return Tensor.FromArray(Floats(t.As<float>(), t.Shape, p), p.OutShape);
            case DType.Float64: return Tensor.FromArray(Floats(t.As<double>(), t.Shape, p), p.OutShape);
            case DType.Int32: return Tensor.FromArray(Ints(t.As<int>(), t.Shape, p), p.OutShape);
            case DType.Int64: return Tensor.FromArray(Ints(t.As<long>(), t.Shape, p), p.OutShape);
            case DType.UInt32: return Tensor.FromArray(Ints(t.As<uint>(), t.Shape, p), p.OutShape);
            case DType.UInt64: return Tensor.FromArray(Ints(t.As<ulong>(), t.Shape, p), p.OutShape);
            case DType.Int8: return Tensor.FromArray(Ints(t.As<sbyte>(), t.Shape, p), p.OutShape);
            case DType.UInt8: return Tensor.FromArray(Ints(t.As<byte>(), t.Shape, p), p.OutShape);
            case DType.Int16: return Tensor.FromArray(Ints(t.As<short>(), t.Shape, p), p.OutShape);
            case DType.UInt16: return Tensor.FromArray(Ints(t.As<ushort>(), t.Shape, p), p.OutShape);
            case DType.Bool when p.Kind is Kind.Max or Kind.Min:
            {
                // bool max is any, min is all.
                var b = t.As<bool>();
                var u = new byte[b.Length];
                for (long i = 0; i < u.Length; i++) u[i] = b[i] ? (byte)1 : (byte)0;
                var r = Ints(u, t.Shape, p);
                var o = new bool[r.Length];
                for (long i = 0; i < o.Length; i++) o[i] = r[i] != 0;
                return Tensor.FromArray(o, p.OutShape);
            }
            default: throw ctx.Unsupported($"Reduce{p.Kind} on {DTypes.Name(t.DType)} is not supported");
        }
    }

    static T[] Floats<T>(T[] src, long[] shape, RPlan p) where T : struct, IFloatingPointIeee754<T>
    {
        var data = Permute(src, shape, p.Perm);
        long R = p.R;
        var y = new T[ShapeUtil.Size(p.OutShape)];
        For(y.LongLength, R, o =>
        {
            var row = new ReadOnlySpan<T>(data, (int)(o * R), (int)R);
            y[o] = RowF(row, p.Kind);
        });
        return y;
    }

    static T RowF<T>(ReadOnlySpan<T> row, Kind kind) where T : struct, IFloatingPointIeee754<T>
    {
        int n = row.Length;
        switch (kind)
        {
            case Kind.Sum: return TP.Sum(row);
            case Kind.Mean: return TP.Sum(row) / T.CreateChecked(n);
            case Kind.Max: return n == 0 ? T.NegativeInfinity : TP.Max(row);
            case Kind.Min: return n == 0 ? T.PositiveInfinity : TP.Min(row);
            case Kind.Prod: return n == 0 ? T.One : TP.Product(row);
            case Kind.L1: return TP.SumOfMagnitudes(row);
            case Kind.L2: return T.Sqrt(TP.SumOfSquares(row));
            case Kind.SumSquare: return TP.SumOfSquares(row);
            case Kind.LogSum: return T.Log(TP.Sum(row));
            case Kind.LogSumExp:
            {
                if (n == 0) return T.NegativeInfinity;
                T mx = TP.Max(row);
                if (T.IsInfinity(mx))
                {
                    // The shift ignores infinities (as the ONNX reference does); with no finite value it is 0.
                    mx = T.NegativeInfinity;
                    foreach (var v in row) if (T.IsFinite(v) && v > mx) mx = v;
                    if (T.IsInfinity(mx)) mx = T.Zero;
                }
                var buf = ArrayPool<T>.Shared.Rent(n);
                var tmp = buf.AsSpan(0, n);
                TP.Subtract(row, mx, tmp);
                TP.Exp(tmp, tmp);
                T s = TP.Sum((ReadOnlySpan<T>)tmp);
                ArrayPool<T>.Shared.Return(buf);
                return T.Log(s) + mx;
            }
        }
        throw new InvalidOperationException();
    }

    static T[] Ints<T>(T[] src, long[] shape, RPlan p) where T : struct, IBinaryInteger<T>, IMinMaxValue<T>
    {
        var data = Permute(src, shape, p.Perm);
        long R = p.R;
        var y = new T[ShapeUtil.Size(p.OutShape)];
        For(y.LongLength, R, o =>
        {
            var row = new ReadOnlySpan<T>(data, (int)(o * R), (int)R);
            y[o] = RowI(row, p.Kind);
        });
        return y;
    }

    // Integer reductions wrap in the element type (fixed-width arithmetic); Mean truncates toward zero, L2/LogSum/
    // LogSumExp are computed in double and truncated back (numpy's astype).
    static T RowI<T>(ReadOnlySpan<T> row, Kind kind) where T : struct, IBinaryInteger<T>, IMinMaxValue<T>
    {
        int n = row.Length;
        T acc;
        switch (kind)
        {
            case Kind.Sum: acc = T.Zero; foreach (var v in row) acc += v; return acc;
            case Kind.Mean: if (n == 0) return T.Zero; acc = T.Zero; foreach (var v in row) acc += v; return acc / T.CreateTruncating(n);
            case Kind.Max: if (n == 0) return T.MinValue; acc = row[0]; foreach (var v in row) if (v > acc) acc = v; return acc;
            case Kind.Min: if (n == 0) return T.MaxValue; acc = row[0]; foreach (var v in row) if (v < acc) acc = v; return acc;
            case Kind.Prod: acc = T.One; foreach (var v in row) acc *= v; return acc;
            case Kind.L1: acc = T.Zero; foreach (var v in row) acc += T.IsNegative(v) ? -v : v; return acc;
            case Kind.SumSquare: acc = T.Zero; foreach (var v in row) acc += v * v; return acc;
            case Kind.L2: acc = T.Zero; foreach (var v in row) acc += v * v; return T.CreateSaturating(Math.Truncate(Math.Sqrt(double.CreateTruncating(acc))));
            case Kind.LogSum: acc = T.Zero; foreach (var v in row) acc += v; return T.CreateSaturating(Math.Truncate(Math.Log(double.CreateTruncating(acc))));
            case Kind.LogSumExp:
            {
                if (n == 0) return T.MinValue;
                double mx = double.NegativeInfinity;
                foreach (var v in row) mx = Math.Max(mx, double.CreateTruncating(v));
                double s = 0;
                foreach (var v in row) s += Math.Exp(double.CreateTruncating(v) - mx);
                return T.CreateSaturating(Math.Truncate(Math.Log(s) + mx));
            }
        }
        throw new InvalidOperationException();
    }

    // ------------------------------------------------------------------ ArgMax / ArgMin

    static Value?[] Arg(NodeContext ctx, Value?[] x, bool max)
    {
        var t = x.T(0, ctx);
        int axis;
        try { axis = ShapeUtil.Axis(ctx.Int("axis", 0), t.Rank); }
        catch (TapmlException e) { throw ctx.Error(e.Message); }
        bool keep = ctx.Int("keepdims", 1) != 0;
        bool last = ctx.Opset >= 12 && ctx.Int("select_last_index", 0) != 0;
        if (t.Rank == 0) throw ctx.Error("input must have rank >= 1");
        var (outer, len, inner) = Split(t.Shape, axis);
        if (len == 0) throw ctx.Error("cannot take the arg of an empty axis");
        var outShape = new List<long>();
        for (int i = 0; i < t.Rank; i++) if (i != axis) outShape.Add(t.Shape[i]); else if (keep) outShape.Add(1);
        var y = new long[outer * inner];
        if (IsHalfLike(t.DType)) t = TensorConvert.ToF32(t);
        switch (t.DType)
        {
            case DType.Float32: ArgF(t.As<float>(), y, outer, len, inner, max, last); break;
            case DType.Float64: ArgF(t.As<double>(), y, outer, len, inner, max, last); break;
            case DType.Int32: ArgI(t.As<int>(), y, outer, len, inner, max, last); break;
            case DType.Int64: ArgI(t.As<long>(), y, outer, len, inner, max, last); break;
            case DType.UInt32: ArgI(t.As<uint>(), y, outer, len, inner, max, last); break;
            case DType.UInt64: ArgI(t.As<ulong>(), y, outer, len, inner, max, last); break;
            case DType.Int8: ArgI(t.As<sbyte>(), y, outer, len, inner, max, last); break;
            case DType.UInt8: ArgI(t.As<byte>(), y, outer, len, inner, max, last); break;
            case DType.Int16: ArgI(t.As<short>(), y, outer, len, inner, max, last); break;
            case DType.UInt16: ArgI(t.As<ushort>(), y, outer, len, inner, max, last); break;
            default: throw ctx.Unsupported($"{ctx.Node.OpType} on {DTypes.Name(t.DType)} is not supported");
        }
        return [Tensor.FromArray(y, outShape.ToArray())];
    }

    // numpy semantics: the first NaN wins (the last one with select_last_index), otherwise the first (last) extreme.
    static void ArgF<T>(T[] d, long[] y, long outer, long len, long inner, bool max, bool last) where T : struct, IFloatingPointIeee754<T>
    {
        For(outer * inner, len, q =>
        {
            long o = q / inner, i = q % inner;
            long baseIdx = o * len * inner + i;
            T best = d[baseIdx];
            long bi = 0;
            for (long a = 1; a < len; a++)
            {
                T v = d[baseIdx + a * inner];
                bool take;
                if (T.IsNaN(best)) take = last && T.IsNaN(v);
                else if (T.IsNaN(v)) take = true;
                else take = max ? (last ? v >= best : v > best) : (last ? v <= best : v < best);
                if (take) { best = v; bi = a; }
            }
            y[q] = bi;
        });
    }

    static void ArgI<T>(T[] d, long[] y, long outer, long len, long inner, bool max, bool last) where T : struct, INumber<T>
    {
        For(outer * inner, len, q =>
        {
            long o = q / inner, i = q % inner;
            long baseIdx = o * len * inner + i;
            T best = d[baseIdx];
            long bi = 0;
            for (long a = 1; a < len; a++)
            {
                T v = d[baseIdx + a * inner];
                if (max ? (last ? v >= best : v > best) : (last ? v <= best : v < best)) { best = v; bi = a; }
            }
            y[q] = bi;
        });
    }
}
