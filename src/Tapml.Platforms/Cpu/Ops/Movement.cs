using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Transpose, Concat, Split, Slice, Pad, Tile, DepthToSpace, SpaceToDepth, Trilu, ReverseSequence.</summary>
public sealed class MovementOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Transpose", Transpose);
        r.Add("Concat", Concat);
        r.Add("Split", Split);
        r.Add("Slice", Slice);
        r.Add("Pad", Pad);
        r.Add("Tile", Tile);
        r.Add("DepthToSpace", DepthToSpace);
        r.Add("SpaceToDepth", SpaceToDepth);
        r.Add("Trilu", Trilu);
        r.Add("ReverseSequence", ReverseSequence);
    }

    // Transpose: perm defaults to reversing the dimensions.
    static Value?[] Transpose(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        int r = x.Rank;
        var p = ctx.Ints("perm");
        var perm = new int[r];
        if (p is null) for (int i = 0; i < r; i++) perm[i] = r - 1 - i;
        else
        {
            if (p.Length != r) throw ctx.Error($"perm {ShapeUtil.Format(p)} does not match rank {r}");
            var seen = new bool[r];
            for (int i = 0; i < r; i++)
            {
                long a = p[i];
                if (a < 0 || a >= r || seen[a]) throw ctx.Error($"perm {ShapeUtil.Format(p)} is not a permutation of 0..{r - 1}");
                seen[a] = true; perm[i] = (int)a;
            }
        }
        bool identity = true;
        for (int i = 0; i < r; i++) identity &= perm[i] == i;
        if (identity) return [x];
        return [ShapeKit.Permute(x, x.Shape, perm)];
    }

    // Concat: axis (required from opset 4; opset 1 defaults to 1), negative from opset 11.
    static Value?[] Concat(NodeContext ctx, Value?[] inputs)
    {
        var parts = new List<Tensor>();
        for (int i = 0; i < inputs.Length; i++) parts.Add(inputs.T(i, ctx));
        if (parts.Count == 0) throw ctx.Error("needs at least one input");
        long axis = ctx.Opset < 4 ? ctx.Int("axis", 1) : ctx.Int("axis");
        int a = ShapeOps.NormAxis(ctx, axis, parts[0].Rank);
        return [ShapeKit.ConcatAxis(parts, a, m => ctx.Error(m))];
    }

    // Split: sizes from the 'split' attribute (opset < 13; opset 1 also as input 1) or input (opset >= 13);
    // otherwise equal parts for the outputs (or num_outputs, opset 18), the last chunk smaller when uneven.
    static Value?[] Split(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        int axis = ShapeOps.NormAxis(ctx, ctx.Int("axis", 0), x.Rank);
        long dim = x.Shape[axis];
        long[]? split = ctx.Opset >= 13 || ctx.Opset == 1 && inputs.OptT(1) is not null
            ? (inputs.OptT(1) is { } st ? ShapeKit.Ints(st) : null)
            : ctx.Ints("split");
        if (split is { Length: 0 }) split = null;
        int n = ctx.Node.Outputs.Length;
        if (split is null)
        {
            if (ctx.Opset >= 18 && ctx.Has("num_outputs"))
            {
                long no = ctx.Int("num_outputs");
                if (no != n) throw ctx.Error($"num_outputs {no} but the node has {n} outputs");
            }
            long chunk = n == 0 ? 0 : (dim + n - 1) / n;
            if (ctx.Opset < 18 && dim % n != 0) throw ctx.Error($"axis {axis} of size {dim} does not split evenly into {n} outputs");
            split = new long[n];
            long left = dim;
            for (int i = 0; i < n; i++)
            {
                split[i] = i == n - 1 ? left : Math.Min(chunk, left);
                left -= split[i];
            }
        }
        else
        {
            if (split.Length != n) throw ctx.Error($"split {ShapeUtil.Format(split)} has {split.Length} parts for {n} outputs");
            long sum = 0;
            foreach (long s in split) { if (s < 0) throw ctx.Error($"negative split size in {ShapeUtil.Format(split)}"); sum += s; }
            if (sum != dim) throw ctx.Error($"split {ShapeUtil.Format(split)} sums to {sum}, axis {axis} has {dim}");
        }
        var outs = new Value?[n];
        long at = 0;
        for (int i = 0; i < n; i++) { outs[i] = ShapeKit.SliceAxis(x, axis, at, split[i]); at += split[i]; }
        return outs;
    }

    // Slice: attributes starts/ends/axes (opset < 10) or inputs starts, ends, axes?, steps? (opset >= 10).
    // Per the spec text: starts clamp to [0, dim] (positive steps) or [0, dim-1] (negative steps), ends to [0, dim]
    // or [-1, dim-1]. No special meaning for INT64_MAX ends with negative steps (ONNX Runtime reads one).
    static Value?[] Slice(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        long[] starts, ends;
        long[]? axes, steps = null;
        if (ctx.Opset < 10)
        {
            starts = ctx.Ints("starts") ?? throw ctx.Error("needs 'starts'");
            ends = ctx.Ints("ends") ?? throw ctx.Error("needs 'ends'");
            axes = ctx.Ints("axes");
        }
        else
        {
            starts = ShapeKit.Ints(inputs.T(1, ctx));
            ends = ShapeKit.Ints(inputs.T(2, ctx));
            axes = inputs.OptT(3) is { } a ? ShapeKit.Ints(a) : null;
            steps = inputs.OptT(4) is { } s ? ShapeKit.Ints(s) : null;
        }
        int r = x.Rank;
        if (axes is { Length: 0 } && starts.Length > 0) axes = null;
        if (starts.Length != ends.Length || axes is not null && axes.Length != starts.Length || steps is not null && steps.Length != starts.Length)
            throw ctx.Error("starts, ends, axes and steps must have the same length");
        var start = new long[r]; var step = new long[r]; var len = (long[])x.Shape.Clone();
        for (int i = 0; i < r; i++) step[i] = 1;
        var seen = new bool[r];
        for (int i = 0; i < starts.Length; i++)
        {
            int ax = axes is null ? i : ShapeOps.NormAxis(ctx, axes[i], r);
            if (ax >= r) throw ctx.Error($"{starts.Length} starts for rank {r}");
            if (seen[ax]) throw ctx.Error($"axes {ShapeUtil.Format(axes!)} repeat an axis");
            seen[ax] = true;
            long d = x.Shape[ax], st = steps?[i] ?? 1;
            if (st == 0) throw ctx.Error("steps must not be 0");
            long b = starts[i], e = ends[i];
            if (b < 0) b += d;
            if (e < 0) e += d;
            if (st > 0) { b = Math.Clamp(b, 0, d); e = Math.Clamp(e, 0, d); len[ax] = e > b ? (e - b + st - 1) / st : 0; }
            else if (d == 0) { b = 0; len[ax] = 0; }
            else { b = Math.Clamp(b, 0, d - 1); e = Math.Clamp(e, -1, d - 1); len[ax] = b > e ? (b - e + (-st) - 1) / -st : 0; }
            start[ax] = b; step[ax] = st;
        }
        var strides = ShapeUtil.Strides(x.Shape);
        long off = 0;
        var ss = new long[r];
        bool any0 = false;
        for (int i = 0; i < r; i++) { ss[i] = strides[i] * step[i]; if (len[i] == 0) any0 = true; }
        if (!any0) for (int i = 0; i < r; i++) off += start[i] * strides[i];
        return [ShapeKit.Materialize(x, off, ss, len)];
    }

    // Pad: pads [x1_begin, x2_begin, …, x1_end, x2_end] ('paddings' at opset 1, 'pads' attribute to opset 10,
    // input from 11, for the listed axes from 18). Negative pads remove elements. Modes constant, reflect, edge,
    // wrap (opset 19).
    static Value?[] Pad(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        int r = x.Rank;
        string mode = ctx.String("mode", "constant");
        long[] raw;
        Tensor? value;
        long[]? axes = null;
        if (ctx.Opset < 11)
        {
            raw = ctx.Ints(ctx.Opset < 2 ? "paddings" : "pads") ?? throw ctx.Error("needs the pads attribute");
            float v = ctx.Float("value", 0f);
            value = Tensor.Zeros(x.DType, 1);
            if (x.DType == DType.String) { if (v != 0) throw ctx.Unsupported("numeric pad value for strings"); }
            else value.SetDouble(0, v);
        }
        else
        {
            raw = ShapeKit.Ints(inputs.T(1, ctx));
            value = inputs.OptT(2);
            if (value is not null && value.Length == 0) value = null;
            if (value is not null && value.DType != x.DType) throw ctx.Error($"constant_value is {DTypes.Name(value.DType)}, data is {DTypes.Name(x.DType)}");
            if (ctx.Opset >= 18 && inputs.OptT(3) is { } at) axes = ShapeKit.Ints(at);
        }
        value ??= Tensor.Zeros(x.DType, 1);
        if (mode is not ("constant" or "reflect" or "edge" or "wrap") || mode == "wrap" && ctx.Opset < 19)
            throw ctx.Unsupported($"mode '{mode}' at opset {ctx.Opset}");

        // Negative pads crop first; the crop is a view of x.
        var (begin, _, cropShape, cropOff, outShape) = PadGeometry.Of(ctx, raw, axes, x.Shape, x.Describe());
        var st = ShapeUtil.Strides(x.Shape);
        if (ShapeUtil.Size(outShape) == 0) return [Tensor.Zeros(x.DType, outShape)];
        if (ShapeUtil.Size(cropShape) == 0 && mode != "constant")
            throw ctx.Error($"mode '{mode}' cannot pad an empty tensor");

        if (mode == "constant")
        {
            var o = Tensor.Zeros(x.DType, outShape);
            ShapeKit.Fill(o, value);
            var ost = ShapeUtil.Strides(outShape);
            long doff = 0;
            for (int i = 0; i < r; i++) doff += begin[i] * ost[i];
            ShapeKit.CopyStrided(x, cropOff, st, o, doff, ost, cropShape);
            return [o];
        }
        // reflect / edge / wrap: every output coordinate maps to one coordinate of the cropped input, per axis.
        var maps = new long[r][];
        for (int ax = 0; ax < r; ax++)
        {
            long n = cropShape[ax];
            var map = maps[ax] = new long[outShape[ax]];
            for (long j = 0; j < map.Length; j++)
            {
                long s = j - begin[ax];
                map[j] = mode switch
                {
                    "edge" => Math.Clamp(s, 0, n - 1),
                    "wrap" => ((s % n) + n) % n,
                    _ => Reflect(s, n),
                };
            }
        }
        if (r == 0) return [x];
        var res = Tensor.Zeros(x.DType, outShape);
        long rowsN = ShapeUtil.Size(outShape.AsSpan(0, r - 1));
        var rowOffs = new long[rowsN];
        var coord = new long[r - 1];
        for (long i = 0; i < rowsN; i++)
        {
            long off = cropOff;
            for (int k = 0; k < r - 1; k++) off += maps[k][coord[k]] * st[k];
            rowOffs[i] = off;
            for (int k = r - 2; k >= 0; k--) { if (++coord[k] < outShape[k]) break; coord[k] = 0; }
        }
        ShapeKit.GatherRows(x, rowOffs, maps[r - 1], res);
        return [res];
    }

    /// <summary>numpy 'reflect': mirror about the edges without repeating them (period 2(n-1)).</summary>
    static long Reflect(long s, long n)
    {
        if (n == 1) return 0;
        long p = 2 * (n - 1);
        long m = ((s % p) + p) % p;
        return m >= n ? p - m : m;
    }

    // Tile: out dim i = dim i · repeats[i]; viewed as [r0, d0, r1, d1, …] with stride 0 on the repeats.
    // Opset 1 took (input, tiles, axis) scalars instead of repeats.
    static Value?[] Tile(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        int r = x.Rank;
        long[] reps;
        if (ctx.Opset < 6)
        {
            long tiles = inputs.T(1, ctx).GetInt64(0);
            int ax = ShapeOps.NormAxis(ctx, inputs.T(2, ctx).GetInt64(0), r);
            reps = new long[r];
            Array.Fill(reps, 1L);
            reps[ax] = tiles;
        }
        else reps = ShapeKit.Ints(inputs.T(1, ctx));
        if (reps.Length != r) throw ctx.Error($"repeats {ShapeUtil.Format(reps)} must have {r} values");
        var st = ShapeUtil.Strides(x.Shape);
        var vShape = new long[2 * r]; var vSt = new long[2 * r]; var outShape = new long[r];
        for (int i = 0; i < r; i++)
        {
            if (reps[i] < 0) throw ctx.Error($"negative repeat in {ShapeUtil.Format(reps)}");
            vShape[2 * i] = reps[i]; vSt[2 * i] = 0;
            vShape[2 * i + 1] = x.Shape[i]; vSt[2 * i + 1] = st[i];
            outShape[i] = reps[i] * x.Shape[i];
        }
        var o = ShapeKit.Materialize(x, 0, vSt, vShape);
        return [o.Reshape(outShape)];
    }

    // DepthToSpace: DCR (default) reshapes [N, b, b, C/b², H, W] and transposes [0, 3, 4, 1, 5, 2];
    // CRD (opset 11) reshapes [N, C/b², b, b, H, W] and transposes [0, 1, 4, 2, 5, 3].
    static Value?[] DepthToSpace(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (x.Rank != 4) throw ctx.Error($"input must be 4-D, got {x.Describe()}");
        long b = ctx.Int("blocksize");
        string mode = ctx.Opset >= 11 ? ctx.String("mode", "DCR") : "DCR";
        long n = x.Shape[0], c = x.Shape[1], h = x.Shape[2], w = x.Shape[3];
        if (b <= 0 || c % (b * b) != 0) throw ctx.Error($"channels {c} are not divisible by blocksize² ({b}²)");
        long c2 = c / (b * b);
        Tensor t = mode switch
        {
            "DCR" => ShapeKit.Permute(x, [n, b, b, c2, h, w], [0, 3, 4, 1, 5, 2]),
            "CRD" => ShapeKit.Permute(x, [n, c2, b, b, h, w], [0, 1, 4, 2, 5, 3]),
            _ => throw ctx.Error($"unknown mode '{mode}'"),
        };
        return [t.Reshape(n, c2, h * b, w * b)];
    }

    // SpaceToDepth: reshape [N, C, H/b, b, W/b, b], transpose [0, 3, 5, 1, 2, 4].
    static Value?[] SpaceToDepth(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (x.Rank != 4) throw ctx.Error($"input must be 4-D, got {x.Describe()}");
        long b = ctx.Int("blocksize");
        long n = x.Shape[0], c = x.Shape[1], h = x.Shape[2], w = x.Shape[3];
        if (b <= 0 || h % b != 0 || w % b != 0) throw ctx.Error($"spatial size {h}x{w} is not divisible by blocksize {b}");
        var t = ShapeKit.Permute(x, [n, c, h / b, b, w / b, b], [0, 3, 5, 1, 2, 4]);
        return [t.Reshape(n, c * b * b, h / b, w / b)];
    }

    // Trilu: keeps the upper (j - i >= k) or lower (j - i <= k) triangle of the last two dimensions.
    static Value?[] Trilu(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (x.Rank < 2) throw ctx.Error($"input must have rank >= 2, got {x.Describe()}");
        long k = inputs.OptT(1) is { } kt ? (kt.Length == 1 ? kt.GetInt64(0) : throw ctx.Error("k must be a scalar")) : 0;
        bool upper = ctx.Int("upper", 1) != 0;
        long rows = x.Shape[^2], cols = x.Shape[^1];
        long mats = rows * cols == 0 ? 0 : x.Length / (rows * cols);
        var o = Tensor.Zeros(x.DType, x.Shape);
        for (long m = 0; m < mats; m++)
            for (long i = 0; i < rows; i++)
            {
                long j0 = upper ? Math.Clamp(i + k, 0, cols) : 0;
                long j1 = upper ? cols : Math.Clamp(i + k + 1, 0, cols);
                if (j1 > j0) Array.Copy(x.Data, (m * rows + i) * cols + j0, o.Data, (m * rows + i) * cols + j0, j1 - j0);
            }
        return [o];
    }

    // ReverseSequence: for batch b, the first sequence_lens[b] steps along time_axis are reversed.
    static Value?[] ReverseSequence(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var lens = ShapeKit.Ints(inputs.T(1, ctx));
        if (x.Rank < 2) throw ctx.Error($"input must have rank >= 2, got {x.Describe()}");
        int ta = ShapeOps.NormAxis(ctx, ctx.Int("time_axis", 0), x.Rank), ba = ShapeOps.NormAxis(ctx, ctx.Int("batch_axis", 1), x.Rank);
        if (ta + ba != 1) throw ctx.Error("time_axis and batch_axis must be 0 and 1");
        long d0 = x.Shape[0], d1 = x.Shape[1], block = x.Length == 0 ? 0 : x.Length / (d0 * d1);
        long batch = x.Shape[ba], time = x.Shape[ta];
        if (lens.Length != batch) throw ctx.Error($"sequence_lens has {lens.Length} values for batch {batch}");
        var offs = new long[d0 * d1];
        for (long i = 0; i < d0; i++)
            for (long j = 0; j < d1; j++)
            {
                long t = ta == 0 ? i : j, b = ta == 0 ? j : i;
                long len = lens[b];
                if (len < 0 || len > time) throw ctx.Error($"sequence length {len} is out of range [0, {time}]");
                long src = t < len ? len - 1 - t : t;
                long si = ta == 0 ? src : i, sj = ta == 0 ? j : src;
                offs[i * d1 + j] = (si * d1 + sj) * block;
            }
        var o = Tensor.Zeros(x.DType, x.Shape);
        ShapeKit.GatherBlocks(x, offs, block, o);
        return [o];
    }
}
