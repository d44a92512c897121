using System.Numerics;
using System.Runtime.CompilerServices;
using Tapml.Core;
using static Tapml.Platforms.Cpu.Ops.LinalgHelpers;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Einsum: explicit and implicit outputs, ellipsis (broadcast batch dims), repeated labels (diagonals),
/// sums. Evaluated as: per operand take diagonals and sum labels no one else needs, then contract operands left to
/// right as batched matrix products, then permute to the output order.</summary>
public sealed class EinsumOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r) => r.Add("Einsum", Einsum, sinceOpset: 12);

    sealed class Operand<T>
    {
        public required T[] Data;
        public required List<int> Labels;
        public required long[] Shape;
    }

    static Value?[] Einsum(NodeContext ctx, Value?[] x)
    {
        string eq = ctx.String("equation", "").Replace(" ", "");
        var ins = new List<Tensor>();
        for (int i = 0; i < x.Length; i++) ins.Add(x.T(i, ctx));
        if (ins.Count == 0) throw ctx.Error("Einsum needs at least one input");
        DType dt = ins[0].DType;
        foreach (var t in ins) if (t.DType != dt) throw ctx.Error("all inputs must have one element type");
        var e = EinsumEquation.Parse(ctx, eq, ins.Select(t => t.Rank).ToList());
        if (IsHalfLike(dt))
        {
            var f = ins.Select(TensorConvert.ToF32).ToList();
            return [TensorConvert.To(Run<float>(ctx, f, e), dt)];
        }
        return dt switch
        {
            DType.Float32 => [Run<float>(ctx, ins, e)],
            DType.Float64 => [Run<double>(ctx, ins, e)],
            DType.Int32 => [Run<int>(ctx, ins, e)],
            DType.Int64 => [Run<long>(ctx, ins, e)],
            DType.UInt32 => [Run<uint>(ctx, ins, e)],
            DType.UInt64 => [Run<ulong>(ctx, ins, e)],
            DType.Int8 => [Run<sbyte>(ctx, ins, e)],
            DType.UInt8 => [Run<byte>(ctx, ins, e)],
            DType.Int16 => [Run<short>(ctx, ins, e)],
            DType.UInt16 => [Run<ushort>(ctx, ins, e)],
            _ => throw ctx.Unsupported($"Einsum on {DTypes.Name(dt)} is not supported"),
        };
    }

    static Tensor Run<T>(NodeContext ctx, List<Tensor> ins, EinsumEquation e) where T : struct, INumber<T>
    {
        var (labels, output) = (e.Inputs, e.Output);
        var size = e.Sizes(ctx, ins.Select(t => t.Shape).ToList());

        var ops = new List<Operand<T>>();
        for (int i = 0; i < ins.Count; i++)
            ops.Add(new Operand<T> { Data = ins[i].As<T>(), Labels = new List<int>(labels[i]), Shape = (long[])ins[i].Shape.Clone() });

        // Per operand: diagonals of repeated labels, then sum labels needed neither by the output nor by other operands.
        for (int i = 0; i < ops.Count; i++)
        {
            ops[i] = Diagonal(ops[i]);
            var others = new HashSet<int>(output);
            for (int j = 0; j < ops.Count; j++) if (j != i) others.UnionWith(ops[j].Labels);
            ops[i] = SumOut(ops[i], ops[i].Labels.Where(l => !others.Contains(l)).ToHashSet());
        }
        // Contract left to right.
        var acc = ops[0];
        for (int i = 1; i < ops.Count; i++)
        {
            var keep = new HashSet<int>(output);
            for (int j = i + 1; j < ops.Count; j++) keep.UnionWith(ops[j].Labels);
            acc = Contract(acc, ops[i], keep, size);
        }
        acc = SumOut(acc, acc.Labels.Where(l => !output.Contains(l)).ToHashSet());
        // Output order; labels still of size 1 where the output wants more are broadcast.
        var outShape = output.Select(l => size[l]).ToArray();
        var st = ShapeUtil.Strides(acc.Shape);
        var strides = new long[output.Count];
        for (int d = 0; d < output.Count; d++)
        {
            int at = acc.Labels.IndexOf(output[d]);
            strides[d] = at < 0 || acc.Shape[at] == 1 ? 0 : st[at];
        }
        return Tensor.FromArray(Strided(acc.Data, outShape, strides, 0), outShape);
    }

    static string Name(int lab) => EinsumEquation.Name(lab);

    /// <summary>Copies a strided view of src (origin off) into a new row-major array of <paramref name="shape"/>.</summary>
    static T[] Strided<T>(T[] src, long[] shape, long[] strides, long off)
    {
        var dst = new T[ShapeUtil.Size(shape)];
        if (dst.Length == 0) return dst;
        int r = shape.Length;
        if (r == 0) { dst[0] = src[off]; return dst; }
        long inner = shape[r - 1], ist = strides[r - 1];
        long outer = dst.LongLength / inner;
        var idx = new long[r - 1];
        long cur = off, o = 0;
        for (long q = 0; q < outer; q++)
        {
            long s = cur;
            for (long j = 0; j < inner; j++, s += ist) dst[o++] = src[s];
            for (int d = r - 2; d >= 0; d--)
            {
                if (++idx[d] < shape[d]) { cur += strides[d]; break; }
                cur -= strides[d] * (shape[d] - 1);
                idx[d] = 0;
            }
        }
        return dst;
    }

    static Operand<T> Diagonal<T>(Operand<T> op)
    {
        if (op.Labels.Distinct().Count() == op.Labels.Count) return op;
        var st = ShapeUtil.Strides(op.Shape);
        var labs = new List<int>();
        var shape = new List<long>();
        var strides = new List<long>();
        for (int d = 0; d < op.Labels.Count; d++)
        {
            int at = labs.IndexOf(op.Labels[d]);
            if (at < 0) { labs.Add(op.Labels[d]); shape.Add(op.Shape[d]); strides.Add(st[d]); continue; }
            if (shape[at] != op.Shape[d]) throw new TapmlException($"Einsum: repeated label {Name(op.Labels[d])} has sizes {shape[at]} and {op.Shape[d]}");
            strides[at] += st[d];
        }
        var s = shape.ToArray();
        return new Operand<T> { Data = Strided(op.Data, s, strides.ToArray(), 0), Labels = labs, Shape = s };
    }

    static Operand<T> SumOut<T>(Operand<T> op, HashSet<int> sum) where T : struct, INumber<T>
    {
        if (sum.Count == 0) return op;
        var keepDims = Enumerable.Range(0, op.Labels.Count).Where(d => !sum.Contains(op.Labels[d])).ToList();
        var sumDims = Enumerable.Range(0, op.Labels.Count).Where(d => sum.Contains(op.Labels[d])).ToList();
        var perm = keepDims.Concat(sumDims).ToArray();
        var data = Permute(op.Data, op.Shape, perm);
        long R = 1;
        foreach (int d in sumDims) R *= op.Shape[d];
        var shape = keepDims.Select(d => op.Shape[d]).ToArray();
        var y = new T[ShapeUtil.Size(shape)];
        For(y.LongLength, R, o =>
        {
            var row = new ReadOnlySpan<T>(data, (int)(o * R), (int)R);
            y[o] = TP.Sum(row);
        });
        return new Operand<T> { Data = y, Labels = keepDims.Select(d => op.Labels[d]).ToList(), Shape = shape };
    }

    /// <summary>A·B over shared labels: [batch, m, k] × [batch, k, n] → [batch, m, n] (labels in that order).</summary>
    static Operand<T> Contract<T>(Operand<T> a, Operand<T> b, HashSet<int> keep, Dictionary<int, long> size) where T : struct, INumber<T>
    {
        var batch = a.Labels.Where(l => b.Labels.Contains(l) && keep.Contains(l)).ToList();
        var kl = a.Labels.Where(l => b.Labels.Contains(l) && !keep.Contains(l)).ToList();
        var ml = a.Labels.Where(l => !b.Labels.Contains(l)).ToList();
        var nl = b.Labels.Where(l => !a.Labels.Contains(l)).ToList();
        long Size(List<int> ls) { long s = 1; foreach (int l in ls) s *= size[l]; return s; }
        long Bt = Size(batch), M = Size(ml), K = Size(kl), N = Size(nl);
        var av = View(a, batch.Concat(ml).Concat(kl).ToList(), size);
        var bv = View(b, batch.Concat(kl).Concat(nl).ToList(), size);
        var c = new T[Bt * M * N];
        if (c.Length > 0) BatchedMatMul(av, bv, c, Bt, (int)M, (int)N, (int)K);
        var labels = batch.Concat(ml).Concat(nl).ToList();
        return new Operand<T> { Data = c, Labels = labels, Shape = labels.Select(l => size[l]).ToArray() };
    }

    /// <summary>op's data laid out in <paramref name="order"/> at full label sizes (size-1 dims broadcast).</summary>
    static T[] View<T>(Operand<T> op, List<int> order, Dictionary<int, long> size)
    {
        var st = ShapeUtil.Strides(op.Shape);
        var shape = order.Select(l => size[l]).ToArray();
        var strides = new long[order.Count];
        for (int d = 0; d < order.Count; d++)
        {
            int at = op.Labels.IndexOf(order[d]);
            strides[d] = op.Shape[at] == 1 ? 0 : st[at];
        }
        bool contiguous = op.Labels.SequenceEqual(order) && op.Shape.SequenceEqual(shape);
        return contiguous ? op.Data : Strided(op.Data, shape, strides, 0);
    }

    static void BatchedMatMul<T>(T[] a, T[] b, T[] c, long batch, int m, int n, int k) where T : struct, INumber<T>
    {
        if (typeof(T) == typeof(float))
        {
            var af = Unsafe.As<float[]>(a); var bf = Unsafe.As<float[]>(b); var cf = Unsafe.As<float[]>(c);
            For(batch, (long)m * n * k, bi =>
                Blas.Sgemm(false, false, m, n, k, 1f, af.AsSpan((int)((long)bi * m * k)), k, bf.AsSpan((int)((long)bi * k * n)), n, 0f,
                    cf.AsSpan((int)((long)bi * m * n), m * n), n));
            return;
        }
        for (long bi = 0; bi < batch; bi++) MatMulRows(a, bi * m * k, b, bi * k * n, c, bi * m * n, m, n, k);
    }
}
