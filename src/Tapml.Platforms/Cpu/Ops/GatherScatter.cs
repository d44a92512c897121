using System.Numerics;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Gather, GatherElements, GatherND, ScatterElements, Scatter, ScatterND, OneHot, NonZero, Compress, Unique.</summary>
public sealed class GatherScatterOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Gather", Gather);
        r.Add("GatherElements", GatherElements);
        r.Add("GatherND", GatherND);
        r.Add("ScatterElements", ScatterElements);
        r.Add("Scatter", ScatterElements);
        r.Add("ScatterND", ScatterND);
        r.Add("OneHot", OneHot);
        r.Add("NonZero", NonZero);
        r.Add("Compress", Compress);
        r.Add("Unique", Unique);
    }

    static long Index(NodeContext ctx, long v, long dim)
    {
        long i = v < 0 ? v + dim : v;
        if (i < 0 || i >= dim) throw ctx.Error($"index {v} is out of range for a dimension of size {dim}");
        return i;
    }

    // Gather: out = data[:axis] + indices.shape + data[axis+1:]; negative indices count from the end.
    static Value?[] Gather(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var it = inputs.T(1, ctx);
        int axis = ShapeOps.NormAxis(ctx, ctx.Int("axis", 0), x.Rank);
        var idx = ShapeKit.Ints(it);
        long dim = x.Shape[axis];
        for (int i = 0; i < idx.Length; i++) idx[i] = Index(ctx, idx[i], dim);
        // An embedding read in place: only the rows asked for are read (and converted from the stored dtype).
        if (InPlaceWeights.HandlesGather(x, axis)) return [InPlaceWeights.Gather(x, idx, it.Shape)];
        return [ShapeKit.GatherAxis(x, axis, idx, it.Shape)];
    }

    /// <summary>Element offsets into data (shape <paramref name="dataShape"/>) for every element of an index
    /// tensor of the same rank whose values replace the coordinate on <paramref name="axis"/>.</summary>
    static long[] ElementOffsets(NodeContext ctx, long[] dataShape, Tensor indices, int axis)
    {
        int r = dataShape.Length;
        if (indices.Rank != r) throw ctx.Error($"indices {indices.Describe()} must have the data's rank {r}");
        for (int k = 0; k < r; k++)
            if (k != axis && indices.Shape[k] > dataShape[k])
                throw ctx.Error($"indices {indices.Describe()} exceed the data shape {ShapeUtil.Format(dataShape)} on axis {k}");
        var ds = ShapeUtil.Strides(dataShape);
        var idx = ShapeKit.Ints(indices);
        long n = idx.Length;
        var offs = new long[n];
        if (n == 0) return offs;
        long dim = dataShape[axis], inner = indices.Shape[r - 1], rows = n / inner;
        long bad = 0; bool anyBad = false;
        void Rows(long r0, long r1)
        {
            for (long row = r0; row < r1; row++)
            {
                long b = 0, rem = row;
                for (int k = r - 2; k >= 0; k--) { long c = rem % indices.Shape[k]; rem /= indices.Shape[k]; if (k != axis) b += c * ds[k]; }
                for (long j = 0; j < inner; j++)
                {
                    long e = row * inner + j, v = idx[e], i = v < 0 ? v + dim : v;
                    if (i < 0 || i >= dim) { bad = v; anyBad = true; continue; }
                    offs[e] = b + i * ds[axis] + (axis == r - 1 ? 0 : j * ds[r - 1]);
                }
            }
        }
        if (n >= 1 << 16 && rows > 1)
        {
            int chunks = (int)Math.Min(rows, CpuThreads.Max * 4L);
            Parallel.For(0, chunks, CpuThreads.Options, c => Rows(rows * c / chunks, rows * (c + 1) / chunks));
        }
        else Rows(0, rows);
        if (anyBad)
        {
            // Name the first bad index (the one the parallel pass saw depends on scheduling).
            foreach (long v in idx) if (v < -dim || v >= dim) { bad = v; break; }
            throw ctx.Error($"index {bad} is out of range for a dimension of size {dim}");
        }
        return offs;
    }

    // GatherElements: out[i][j][k] = data[indices[i][j][k]][j][k] (axis 0), shape of indices.
    static Value?[] GatherElements(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var it = inputs.T(1, ctx);
        int axis = ShapeOps.NormAxis(ctx, ctx.Int("axis", 0), x.Rank);
        var offs = ElementOffsets(ctx, x.Shape, it, axis);
        var o = Tensor.Zeros(x.DType, it.Shape);
        ShapeKit.GatherBlocks(x, offs, 1, o);
        return [o];
    }

    // ScatterElements (and the deprecated Scatter): a copy of data with data[…indices[i]…] = updates[i]
    // (or combined by reduction add/mul (opset 16), max/min (opset 18)); updates apply in index order.
    static Value?[] ScatterElements(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var it = inputs.T(1, ctx);
        var u = inputs.T(2, ctx);
        int axis = ShapeOps.NormAxis(ctx, ctx.Int("axis", 0), x.Rank);
        if (!ShapeUtil.SameShape(it.Shape, u.Shape)) throw ctx.Error($"updates {u.Describe()} must have the shape of indices {it.Describe()}");
        if (u.DType != x.DType) throw ctx.Error($"updates are {DTypes.Name(u.DType)}, data is {DTypes.Name(x.DType)}");
        var offs = ElementOffsets(ctx, x.Shape, it, axis);
        var o = x.Clone();
        ApplyScatter(ctx, o, offs, 1, u, ctx.String("reduction", "none"));
        return [o];
    }

    static void ApplyScatter(NodeContext ctx, Tensor o, long[] offs, long block, Tensor u, string reduction)
    {
        if (reduction == "none") { ShapeKit.ScatterBlocks(u, offs, block, o); return; }
        if (reduction is not ("add" or "mul" or "max" or "min")) throw ctx.Unsupported($"reduction '{reduction}'");
        switch (o.DType)
        {
            case DType.Float32: Reduce(o.As<float>(), offs, block, u.As<float>(), reduction); break;
            case DType.Float64: Reduce(o.As<double>(), offs, block, u.As<double>(), reduction); break;
            case DType.Float16: Reduce(o.As<Half>(), offs, block, u.As<Half>(), reduction); break;
            case DType.Int8: Reduce(o.As<sbyte>(), offs, block, u.As<sbyte>(), reduction); break;
            case DType.UInt8: Reduce(o.As<byte>(), offs, block, u.As<byte>(), reduction); break;
            case DType.Int16: Reduce(o.As<short>(), offs, block, u.As<short>(), reduction); break;
            case DType.UInt16: Reduce(o.As<ushort>(), offs, block, u.As<ushort>(), reduction); break;
            case DType.Int32: Reduce(o.As<int>(), offs, block, u.As<int>(), reduction); break;
            case DType.UInt32: Reduce(o.As<uint>(), offs, block, u.As<uint>(), reduction); break;
            case DType.Int64: Reduce(o.As<long>(), offs, block, u.As<long>(), reduction); break;
            case DType.UInt64: Reduce(o.As<ulong>(), offs, block, u.As<ulong>(), reduction); break;
            case DType.BFloat16:
            {
                // bf16 computes through f32 and rounds once at the end.
                var of = TensorConvert.ToF32(o);
                Reduce(of.As<float>(), offs, block, TensorConvert.ToF32(u).As<float>(), reduction);
                TensorConvert.To(of, DType.BFloat16).Data.CopyTo(o.Data, 0);
                break;
            }
            default: throw ctx.Unsupported($"reduction '{reduction}' on {DTypes.Name(o.DType)}");
        }
    }

    static void Reduce<T>(T[] d, long[] offs, long block, T[] u, string reduction) where T : INumber<T>
    {
        for (long i = 0; i < offs.Length; i++)
        {
            long o = offs[i], s = i * block;
            for (long k = 0; k < block; k++)
            {
                T a = d[o + k], b = u[s + k];
                d[o + k] = reduction switch
                {
                    "add" => a + b,
                    "mul" => a * b,
                    "max" => T.IsNaN(a) || T.IsNaN(b) ? (T.IsNaN(a) ? a : b) : a >= b ? a : b,
                    _ => T.IsNaN(a) || T.IsNaN(b) ? (T.IsNaN(a) ? a : b) : a <= b ? a : b,
                };
            }
        }
    }

    /// <summary>Offsets of the slices data[i_0, …, i_{k-1}] (after <paramref name="batch"/> leading batch
    /// dimensions) for every index tuple in <paramref name="indices"/> (last dimension k).</summary>
    static (long[] offs, long block) TupleOffsets(NodeContext ctx, long[] dataShape, Tensor indices, int batch)
    {
        int r = dataShape.Length, q = indices.Rank;
        if (q < 1) throw ctx.Error("indices must have rank >= 1");
        long k = indices.Shape[^1];
        if (batch < 0 || batch >= Math.Min(r, q)) throw ctx.Error($"batch_dims {batch} must be below the ranks of data and indices");
        if (k < 1 || k > r - batch) throw ctx.Error($"index tuples of length {k} do not fit data rank {r} with batch_dims {batch}");
        for (int i = 0; i < batch; i++)
            if (indices.Shape[i] != dataShape[i]) throw ctx.Error($"batch dimension {i} differs between data {ShapeUtil.Format(dataShape)} and indices {indices.Describe()}");
        var ds = ShapeUtil.Strides(dataShape);
        long block = 1;
        for (int i = batch + (int)k; i < r; i++) block *= dataShape[i];
        long batchSize = 1;
        for (int i = batch; i < r; i++) batchSize *= dataShape[i];
        long batches = 1;
        for (int i = 0; i < batch; i++) batches *= dataShape[i];
        var idx = ShapeKit.Ints(indices);
        long tuples = k == 0 ? 0 : idx.Length / k;
        long perBatch = batches == 0 ? 0 : tuples / batches;
        var offs = new long[tuples];
        for (long t = 0; t < tuples; t++)
        {
            long off = perBatch == 0 ? 0 : t / perBatch * batchSize;
            for (int j = 0; j < k; j++)
            {
                int ax = batch + j;
                off += Index(ctx, idx[t * k + j], dataShape[ax]) * ds[ax];
            }
            offs[t] = off;
        }
        return (offs, block);
    }

    // GatherND: out shape = indices.shape[:-1] + data.shape[batch_dims + k:].
    static Value?[] GatherND(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var it = inputs.T(1, ctx);
        int batch = (int)ctx.Int("batch_dims", 0);
        var (offs, block) = TupleOffsets(ctx, x.Shape, it, batch);
        long k = it.Shape[^1];
        var shape = it.Shape[..^1].Concat(x.Shape[(batch + (int)k)..]).ToArray();
        var o = Tensor.Zeros(x.DType, shape);
        ShapeKit.GatherBlocks(x, offs, block, o);
        return [o];
    }

    // ScatterND: updates shape = indices.shape[:-1] + data.shape[k:]; reduction as ScatterElements.
    static Value?[] ScatterND(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var it = inputs.T(1, ctx);
        var u = inputs.T(2, ctx);
        if (u.DType != x.DType) throw ctx.Error($"updates are {DTypes.Name(u.DType)}, data is {DTypes.Name(x.DType)}");
        var (offs, block) = TupleOffsets(ctx, x.Shape, it, 0);
        long k = it.Shape[^1];
        var want = it.Shape[..^1].Concat(x.Shape[(int)k..]).ToArray();
        if (!ShapeUtil.SameShape(want, u.Shape)) throw ctx.Error($"updates {u.Describe()} must have shape {ShapeUtil.Format(want)}");
        var o = x.Clone();
        ApplyScatter(ctx, o, offs, block, u, ctx.String("reduction", "none"));
        return [o];
    }

    // OneHot: depth inserted at axis; on_value where index (+ depth when negative, opset 11) == position,
    // off_value elsewhere; indices outside [-depth, depth-1] ([0, depth-1] at opset 9) give all off_value.
    static Value?[] OneHot(NodeContext ctx, Value?[] inputs)
    {
        var it = inputs.T(0, ctx);
        var dt = inputs.T(1, ctx);
        var vals = inputs.T(2, ctx);
        if (dt.Length != 1) throw ctx.Error("depth must hold one value");
        if (vals.Length != 2) throw ctx.Error("values must be [off_value, on_value]");
        long depth = DTypes.IsFloat(dt.DType) ? (long)dt.GetDouble(0) : dt.GetInt64(0);
        if (depth < 1) throw ctx.Error($"depth {depth} must be positive");
        int r = it.Rank;
        long axis = ctx.Int("axis", -1);
        if (axis < 0) axis += r + 1;
        if (axis < 0 || axis > r) throw ctx.Error($"axis {ctx.Int("axis", -1)} is out of range for output rank {r + 1}");
        var shape = new List<long>(it.Shape);
        shape.Insert((int)axis, depth);
        long outer = 1, inner = 1;
        for (int i = 0; i < axis; i++) outer *= it.Shape[i];
        for (int i = (int)axis; i < r; i++) inner *= it.Shape[i];
        var o = Tensor.Zeros(vals.DType, shape.ToArray());
        ShapeKit.Fill(o, vals, 0);
        for (long a = 0; a < outer; a++)
            for (long b = 0; b < inner; b++)
            {
                long e = a * inner + b;
                long v = DTypes.IsFloat(it.DType) ? (long)it.GetDouble(e) : it.GetInt64(e);
                if (v < 0 && ctx.Opset >= 11) v += depth;   // negative indices count from the end since opset 11
                if (v < 0 || v >= depth) continue;
                Array.Copy(vals.Data, 1, o.Data, (a * depth + v) * inner + b, 1);
            }
        return [o];
    }

    static bool[] NonZeroMask(Tensor t)
    {
        var m = new bool[t.Length];
        switch (t.DType)
        {
            case DType.Bool: Array.Copy(t.Data, m, m.Length); break;
            case DType.String: { var s = t.As<string>(); for (int i = 0; i < m.Length; i++) m[i] = !string.IsNullOrEmpty(s[i]); break; }
            case DType.Float32: { var s = t.As<float>(); for (int i = 0; i < m.Length; i++) m[i] = s[i] != 0; break; }
            case DType.Int64: { var s = t.As<long>(); for (int i = 0; i < m.Length; i++) m[i] = s[i] != 0; break; }
            case DType.Int32: { var s = t.As<int>(); for (int i = 0; i < m.Length; i++) m[i] = s[i] != 0; break; }
            case DType.UInt64: { var s = t.As<ulong>(); for (int i = 0; i < m.Length; i++) m[i] = s[i] != 0; break; }
            default: for (int i = 0; i < m.Length; i++) m[i] = t.GetDouble(i) != 0; break;
        }
        return m;
    }

    // NonZero: [rank, count] int64 coordinates of the non-zero elements in row-major order.
    static Value?[] NonZero(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var m = NonZeroMask(x);
        var shape = x.Rank == 0 ? new long[] { 1 } : x.Shape;   // a scalar counts as 1-D (numpy)
        int r = shape.Length;
        long cnt = 0;
        foreach (bool b in m) if (b) cnt++;
        var o = new long[r * cnt];
        var st = ShapeUtil.Strides(shape);
        long c = 0;
        for (long i = 0; i < m.Length; i++)
        {
            if (!m[i]) continue;
            long rem = i;
            for (int k = 0; k < r; k++) { o[k * cnt + c] = rem / st[k]; rem %= st[k]; }
            c++;
        }
        return [Tensor.FromArray(o, r, cnt)];
    }

    // Compress: the slices along axis (the flattened input without axis) where condition is true.
    static Value?[] Compress(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var cond = NonZeroMask(inputs.T(1, ctx));
        int axis;
        if (ctx.Has("axis")) axis = ShapeOps.NormAxis(ctx, ctx.Int("axis"), x.Rank);
        else { x = x.Reshape(x.Length); axis = 0; }
        long dim = x.Shape[axis];
        var sel = new List<long>();
        for (long i = 0; i < cond.Length; i++)
            if (cond[i])
            {
                if (i >= dim) throw ctx.Error($"condition selects index {i} beyond axis size {dim}");
                sel.Add(i);
            }
        return [ShapeKit.GatherAxis(x, axis, sel.ToArray(), [sel.Count])];
    }

    // Unique: unique elements (or slices along axis), sorted ascending or in order of first occurrence,
    // with first-occurrence indices, inverse indices and counts.
    static Value?[] Unique(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        bool sorted = ctx.Int("sorted", 1) != 0;
        int axis;
        if (ctx.Has("axis")) axis = ShapeOps.NormAxis(ctx, ctx.Int("axis"), x.Rank);
        else { x = x.Reshape(x.Length); axis = 0; }
        long dim = x.Shape[axis], outer = 1, inner = 1;
        for (int i = 0; i < axis; i++) outer *= x.Shape[i];
        for (int i = axis + 1; i < x.Rank; i++) inner *= x.Shape[i];
        var cmpElem = ElementComparer(ctx, x);
        // Slice i holds elements (o, i, n) in order o-major, then n.
        int CompareSlices(long a, long b)
        {
            for (long o = 0; o < outer; o++)
                for (long n = 0; n < inner; n++)
                {
                    long baseO = o * dim * inner + n;
                    int c = cmpElem(baseO + a * inner, baseO + b * inner);
                    if (c != 0) return c;
                }
            return 0;
        }
        var order = new long[dim];
        for (long i = 0; i < dim; i++) order[i] = i;
        // Stable: ties keep index order so the first of a group is the first occurrence.
        Array.Sort(order, (a, b) => { int c = CompareSlices(a, b); return c != 0 ? c : a.CompareTo(b); });
        var groupOf = new long[dim];
        var firsts = new List<long>(); var counts = new List<long>();
        for (long p = 0; p < dim; p++)
        {
            if (p == 0 || CompareSlices(order[p - 1], order[p]) != 0) { firsts.Add(order[p]); counts.Add(0); }
            groupOf[order[p]] = firsts.Count - 1;
            counts[^1]++;
        }
        int g = firsts.Count;
        // Output rank of each group: sorted order, or order of first occurrence.
        var rank = new long[g];
        var outOrder = new int[g];
        for (int i = 0; i < g; i++) outOrder[i] = i;
        if (!sorted) Array.Sort(outOrder, (a, b) => firsts[a].CompareTo(firsts[b]));
        for (int i = 0; i < g; i++) rank[outOrder[i]] = i;
        var idxOut = new long[g]; var cntOut = new long[g];
        for (int i = 0; i < g; i++) { idxOut[i] = firsts[outOrder[i]]; cntOut[i] = counts[outOrder[i]]; }
        var inv = new long[dim];
        for (long i = 0; i < dim; i++) inv[i] = rank[groupOf[i]];
        var y = ShapeKit.GatherAxis(x, axis, idxOut, [g]);
        return ctx.Outputs(y, Tensor.FromArray(idxOut, g), Tensor.FromArray(inv, dim), Tensor.FromArray(cntOut, g));
    }

    /// <summary>Total order on elements by flat index: numeric order, NaN last (and equal to NaN), strings ordinal.</summary>
    static Func<long, long, int> ElementComparer(NodeContext ctx, Tensor x)
    {
        switch (x.DType)
        {
            case DType.String: { var s = x.As<string>(); return (a, b) => string.CompareOrdinal(s[a], s[b]); }
            case DType.Int64: { var s = x.As<long>(); return (a, b) => s[a].CompareTo(s[b]); }
            case DType.UInt64: { var s = x.As<ulong>(); return (a, b) => s[a].CompareTo(s[b]); }
            case DType.Bool: { var s = x.As<bool>(); return (a, b) => s[a].CompareTo(s[b]); }
            default:
                if (!DTypes.IsNumeric(x.DType)) throw ctx.Unsupported($"element type {DTypes.Name(x.DType)}");
                var v = x.ToDoubleArray();
                return (a, b) =>
                {
                    double p = v[a], q = v[b];
                    bool pn = double.IsNaN(p), qn = double.IsNaN(q);
                    if (pn || qn) return pn && qn ? 0 : pn ? 1 : -1;
                    return p.CompareTo(q);
                };
        }
    }
}
