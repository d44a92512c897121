using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Ops that move elements without arithmetic: Transpose, Slice, Expand, Concat, Split, Gather — all
/// but Gather through one strided-copy kernel — and the zero-copy views Reshape, Flatten, Squeeze, Unsqueeze,
/// Identity, Dropout (inference).</summary>
public static class DataMovement
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "Transpose", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            int r = x.Rank;
            var perm = ctx.Ints("perm") ?? Enumerable.Range(0, r).Reverse().Select(i => (long)i).ToArray();
            if (perm.Length != r) throw ctx.Error($"perm has {perm.Length} entries for a rank-{r} input");
            var st = ShapeUtil.Strides(x.Shape);
            var shape = perm.Select(p => x.Shape[ShapeUtil.Axis(p, r, "perm")]).ToArray();
            // A permutation that moves only size-1 dimensions keeps the element order (decode's [1,1,h,d] → [1,h,1,d]
            // head split): a view, no copy.
            if (KeepsOrder(x.Shape, perm)) return [g.Alias(x, shape)];
            var y = g.Empty(x.DType, shape);
            Copy(g, x, y, shape, perm.Select(p => st[p]).ToArray(), 0, ShapeUtil.Strides(shape), 0, "Transpose");
            return [y];
        }));
        add(new GpuOp("", "Expand", 8, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            var want = g.Ints(GpuOps.In(ins, 1, ctx));
            var shape = ShapeUtil.Broadcast(x.Shape, want);
            var y = g.Empty(x.DType, shape);
            Copy(g, x, y, shape, ShapeUtil.BroadcastStrides(x.Shape, shape), 0, ShapeUtil.Strides(shape), 0, "Expand");
            return [y];
        }));
        add(new GpuOp("", "Slice", 1, (g, ctx, ins) => [Slice(g, ctx, ins)]));
        add(new GpuOp("", "Concat", 1, (g, ctx, ins) =>
        {
            var xs = ins.Where(t => t is not null).Select(t => t!).ToArray();
            if (xs.Length == 0) throw ctx.Error("needs at least one input");
            int r = xs[0].Rank;
            int axis = ShapeUtil.Axis(ctx.Int("axis"), r);
            var shape = (long[])xs[0].Shape.Clone();
            shape[axis] = xs.Sum(t => t.Shape[axis]);
            foreach (var t in xs)
                for (int d = 0; d < r; d++)
                    if (d != axis && t.Shape[d] != shape[d]) throw ctx.Error($"input shapes {string.Join(" and ", xs.Select(v => ShapeUtil.Format(v.Shape)))} differ outside axis {axis}");
            var y = g.Empty(xs[0].DType, shape);
            if (xs.Length > 1 && xs.Length + 2 <= g.Device.Limits.MaxStorageBuffersPerStage) { ConcatOnce(g, xs, y, axis); return [y]; }
            var yst = ShapeUtil.Strides(shape);
            long at = 0;
            foreach (var t in xs)
            {
                Copy(g, t, y, t.Shape, ShapeUtil.Strides(t.Shape), 0, yst, at * yst[axis], "Concat");
                at += t.Shape[axis];
            }
            return [y];
        }));
        add(new GpuOp("", "Split", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            int axis = ShapeUtil.Axis(ctx.Int("axis", 0), x.Rank);
            int n = ctx.Node.Outputs.Length;
            long[] sizes = ins.Length > 1 && ins[1] is { } s ? g.Ints(s) : ctx.Ints("split") ?? [];
            if (sizes.Length == 0)
            {
                long dim = x.Shape[axis];
                long chunk = (dim + n - 1) / n;
                sizes = Enumerable.Range(0, n).Select(k => Math.Max(0, Math.Min(chunk, dim - k * chunk))).ToArray();
            }
            if (sizes.Length != n || sizes.Sum() != x.Shape[axis]) throw ctx.Error($"split sizes [{string.Join(",", sizes)}] do not cover axis {axis} of {ShapeUtil.Format(x.Shape)} in {n} outputs");
            var xst = ShapeUtil.Strides(x.Shape);
            var outs = new Value?[n];
            long at = 0;
            for (int k = 0; k < n; k++)
            {
                var shape = (long[])x.Shape.Clone();
                shape[axis] = sizes[k];
                var y = g.Empty(x.DType, shape);
                Copy(g, x, y, shape, xst, at * xst[axis], ShapeUtil.Strides(shape), 0, "Split");
                outs[k] = y;
                at += sizes[k];
            }
            return outs;
        }));
        add(new GpuOp("", "Gather", 1, (g, ctx, ins) => [Gather(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx))]));

        add(new GpuOp("", "Reshape", 5, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            var want = g.Ints(GpuOps.In(ins, 1, ctx));
            return [g.Alias(x, ReshapeShape(ctx, x.Shape, want, ctx.Int("allowzero", 0) != 0))];
        }));
        add(new GpuOp("", "Flatten", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            int axis = (int)ctx.Int("axis", 1);
            if (axis < 0) axis += x.Rank;
            if (axis < 0 || axis > x.Rank) throw ctx.Error($"axis {ctx.Int("axis", 1)} is out of range for rank {x.Rank}");
            long outer = ShapeUtil.Size(x.Shape.AsSpan(0, axis));
            return [g.Alias(x, [outer, ShapeUtil.Size(x.Shape.AsSpan(axis))])];
        }));
        add(new GpuOp("", "Squeeze", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            long[]? axes = ins.Length > 1 && ins[1] is { } a ? g.Ints(a) : ctx.Ints("axes");
            var drop = axes is null ? Enumerable.Range(0, x.Rank).Where(d => x.Shape[d] == 1).ToHashSet() : axes.Select(v => ShapeUtil.Axis(v, x.Rank)).ToHashSet();
            foreach (var d in drop) if (x.Shape[d] != 1) throw ctx.Error($"cannot squeeze axis {d} of size {x.Shape[d]}");
            return [g.Alias(x, Enumerable.Range(0, x.Rank).Where(d => !drop.Contains(d)).Select(d => x.Shape[d]).ToArray())];
        }));
        add(new GpuOp("", "Unsqueeze", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            long[] axes = ins.Length > 1 && ins[1] is { } a ? g.Ints(a) : ctx.Ints("axes") ?? throw ctx.Error("axes are missing");
            int r = x.Rank + axes.Length;
            var at = axes.Select(v => ShapeUtil.Axis(v, r)).ToHashSet();
            if (at.Count != axes.Length) throw ctx.Error("axes repeat");
            var shape = new long[r];
            int k = 0;
            for (int d = 0; d < r; d++) shape[d] = at.Contains(d) ? 1 : x.Shape[k++];
            return [g.Alias(x, shape)];
        }));
        add(new GpuOp("", "Identity", 1, (g, ctx, ins) => [g.Alias(GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 0, ctx).Shape)]));
        add(new GpuOp("", "Dropout", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            if (ins.Length > 2 && ins[2] is { } training && g.Download(training).Data is bool[] { Length: > 0 } mode && mode[0])
                throw new UnsupportedException("Dropout in training mode (random masks) is not implemented on webgpu");
            var outs = new Value?[ctx.Node.Outputs.Length];
            outs[0] = g.Alias(x, x.Shape);
            if (outs.Length > 1 && ctx.Node.Outputs[1].Length > 0) outs[1] = ShapeOps.Fill(g, DType.Bool, x.Shape, 1);
            return outs;
        }));
    }

    /// <summary>ONNX Reshape's target shape: 0 copies the input dimension (unless allowzero), one -1 is inferred.</summary>
    public static long[] ReshapeShape(Tapml.Platforms.NodeContext ctx, long[] inShape, long[] want, bool allowZero)
    {
        var shape = (long[])want.Clone();
        int infer = -1;
        long known = 1;
        for (int d = 0; d < shape.Length; d++)
        {
            if (shape[d] == 0 && !allowZero)
            {
                if (d >= inShape.Length) throw ctx.Error($"shape [{string.Join(",", want)}] copies dimension {d} that {ShapeUtil.Format(inShape)} does not have");
                shape[d] = inShape[d];
            }
            if (shape[d] == -1)
            {
                if (infer >= 0) throw ctx.Error($"shape [{string.Join(",", want)}] has more than one -1");
                infer = d;
                continue;
            }
            if (shape[d] < 0) throw ctx.Error($"shape [{string.Join(",", want)}] has a negative dimension");
            known *= shape[d];
        }
        long n = ShapeUtil.Size(inShape);
        if (infer >= 0)
        {
            if (known == 0 || n % known != 0) throw ctx.Error($"cannot reshape {ShapeUtil.Format(inShape)} to [{string.Join(",", want)}]");
            shape[infer] = n / known;
        }
        else if (known != n) throw ctx.Error($"cannot reshape {ShapeUtil.Format(inShape)} ({n} elements) to [{string.Join(",", want)}] ({known} elements)");
        return shape;
    }

    static GpuTensor Slice(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        int r = x.Rank;
        long[] starts, ends, axes, steps;
        if (ctx.Opset < 10)
        {
            starts = ctx.Ints("starts") ?? throw ctx.Error("starts is missing");
            ends = ctx.Ints("ends") ?? throw ctx.Error("ends is missing");
            axes = ctx.Ints("axes") ?? Enumerable.Range(0, starts.Length).Select(i => (long)i).ToArray();
            steps = Enumerable.Repeat(1L, starts.Length).ToArray();
        }
        else
        {
            starts = g.Ints(GpuOps.In(ins, 1, ctx));
            ends = g.Ints(GpuOps.In(ins, 2, ctx));
            axes = ins.Length > 3 && ins[3] is { } a ? g.Ints(a) : Enumerable.Range(0, starts.Length).Select(i => (long)i).ToArray();
            steps = ins.Length > 4 && ins[4] is { } s ? g.Ints(s) : Enumerable.Repeat(1L, starts.Length).ToArray();
        }
        if (ends.Length != starts.Length || axes.Length != starts.Length || steps.Length != starts.Length)
            throw ctx.Error("starts, ends, axes and steps differ in length");
        var xst = ShapeUtil.Strides(x.Shape);
        var shape = (long[])x.Shape.Clone();
        var srcStrides = (long[])xst.Clone();
        long offset = 0;
        for (int k = 0; k < starts.Length; k++)
        {
            int d = ShapeUtil.Axis(axes[k], r);
            long dim = x.Shape[d], step = steps[k];
            if (step == 0) throw ctx.Error("a step is 0");
            // ONNX Slice: negative starts/ends count from the end, then clamp ([0, dim] for positive steps, [-1, dim-1] for negative).
            long st = starts[k] < 0 ? starts[k] + dim : starts[k];
            long en = ends[k] < 0 ? ends[k] + dim : ends[k];
            if (step > 0) { st = Math.Clamp(st, 0, dim); en = Math.Clamp(en, 0, dim); }
            else { st = Math.Clamp(st, 0, dim - 1); en = Math.Clamp(en, -1, dim - 1); }
            long count = step > 0 ? Math.Max(0, (en - st + step - 1) / step) : Math.Max(0, (st - en + (-step) - 1) / (-step));
            shape[d] = count;
            srcStrides[d] = xst[d] * step;
            if (count > 0) offset += st * xst[d];
        }
        var y = g.Empty(x.DType, shape);
        Copy(g, x, y, shape, srcStrides, offset, ShapeUtil.Strides(shape), 0, "Slice");
        return y;
    }

    static GpuTensor Gather(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, GpuTensor idx)
    {
        int axis = ShapeUtil.Axis(ctx.Int("axis", 0), x.Rank);
        GpuOps.CheckNotSaturated(idx, ctx);
        var shape = x.Shape[..axis].Concat(idx.Shape).Concat(x.Shape[(axis + 1)..]).ToArray();
        var y = g.Empty(x.DType, shape);
        if (y.Length == 0) return y;
        long inner = ShapeUtil.Size(x.Shape.AsSpan(axis + 1));
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(Math.Max(1, inner)); meta.Add(Math.Max(1, idx.Length)); meta.Add(x.Shape[axis]);
        string s = Wgsl.Scalar(Wgsl.StorageOf(x.DType)!.Value);
        g.Launch(new WebGpuPlatform.KernelKey("gather", $"{(int)x.Storage}|{(int)idx.Storage}|{(int)x.DType}"), () => new Wgsl(g.Workgroup).In("x", x).In("idx", idx).Out("y", x.DType).Build($$"""
  let inner = i % md[1];
  let t = i / md[1];
  let j = t % md[2];
  let outer = t / md[2];
  var k = i32(idx(j));
  if (k < 0) { k += i32(md[3]); }
  k = clamp(k, 0, i32(md[3]) - 1);
  y_st(i, {{s}}(x((outer * md[3] + u32(k)) * md[1] + inner)));
"""), "Gather", [x, idx, y], meta, y.Length);
        return y;
    }

    /// <summary>Concat in one dispatch: each output element finds its input by its coordinate along the axis
    /// (the KV cache's Concat(past, new) is two copies otherwise).</summary>
    static void ConcatOnce(WebGpuPlatform g, GpuTensor[] xs, GpuTensor y, int axis)
    {
        if (y.Length == 0) return;
        long inner = Math.Max(1, ShapeUtil.Size(y.Shape.AsSpan(axis + 1)));
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(inner); meta.Add(y.Shape[axis]);
        int startAt = meta.Add(0);
        long at = 0;
        foreach (var t in xs) { at += t.Shape[axis]; meta.Add(at); }   // md[3 + k] = start of input k, md[3 + n] = total
        string s = Wgsl.Scalar(Wgsl.StorageOf(y.DType)!.Value);
        int n = xs.Length;
        g.Launch(new WebGpuPlatform.KernelKey("concat", $"{n}|{Wgsl.Letters(Array.ConvertAll(xs, t => t.Storage))}|{(int)y.DType}"), () =>
        {
            var w = new Wgsl(g.Workgroup);
            for (int k = 0; k < n; k++) w.In($"x{k}", xs[k]);
            w.Out("y", y.DType);
            var b = new System.Text.StringBuilder("""
  let inner = md[1]; let A = md[2];
  let ii = i % inner; let t = i / inner;
  let a = t % A; let o = t / A;

""");
            for (int k = 0; k < n; k++)
            {
                string cond = k == n - 1 ? "" : $"if (a < md[{startAt + k + 1}]) ";
                b.Append($"  {(k == 0 ? "" : "else ")}{cond}{{ let len = md[{startAt + k + 1}] - md[{startAt + k}]; " +
                         $"y_st(i, {s}(x{k}((o * len + a - md[{startAt + k}]) * inner + ii))); }}\n");
            }
            return w.Build(b.ToString());
        }, $"Concat{n}", [.. xs, y], meta, y.Length);
    }

    static bool KeepsOrder(long[] shape, long[] perm)
    {
        int last = -1;
        foreach (var p in perm)
        {
            int d = (int)(p < 0 ? p + shape.Length : p);
            if (shape[d] == 1) continue;
            if (d < last) return false;
            last = d;
        }
        return true;
    }

    /// <summary>y[dst + Σ c·dstStrides] = x[src + Σ c·srcStrides] for every coordinate c of <paramref name="shape"/>.</summary>
    public static void Copy(WebGpuPlatform g, GpuTensor x, GpuTensor y, long[] shape, long[] srcStrides, long srcOffset, long[] dstStrides, long dstOffset, string label)
    {
        long n = ShapeUtil.Size(shape);
        if (n == 0) return;
        int r = shape.Length;
        var meta = new Meta();
        meta.Add(n);
        int shapeAt = meta.AddAll(shape);
        int sAt = meta.AddAllSigned(srcStrides);
        int sOff = meta.AddSigned(srcOffset);
        int dAt = meta.AddAllSigned(dstStrides);
        int dOff = meta.AddSigned(dstOffset);
        string s = Wgsl.Scalar(Wgsl.StorageOf(y.DType)!.Value);
        g.Launch(new WebGpuPlatform.KernelKey("copy", $"{r}|{(int)x.Storage}|{(int)y.DType}"), () => new Wgsl(g.Workgroup).In("x", x).Out("y", y.DType)
            .Build(Wgsl.Offsets("i", r, shapeAt, ("s", sAt, sOff), ("d", dAt, dOff)) + $"  y_st(u32(o_d), {s}(x(u32(o_s))));"), $"Copy_r{r}", [x, y], meta, n);
    }
}
