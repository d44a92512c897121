using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Reshape, Flatten, Squeeze, Unsqueeze, Expand, Shape, Size, ConstantOfShape, Range, EyeLike.</summary>
public sealed class ShapeOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Reshape", Reshape);
        r.Add("Flatten", Flatten);
        r.Add("Squeeze", Squeeze);
        r.Add("Unsqueeze", Unsqueeze);
        r.Add("Expand", Expand);
        r.Add("Shape", Shape);
        r.Add("Size", (ctx, x) => [Tensor.Scalar(x.T(0, ctx).Length)]);
        r.Add("ConstantOfShape", ConstantOfShape);
        r.Add("Range", Range);
        r.Add("EyeLike", EyeLike);
    }

    // Reshape: shape attribute (opset < 5) or input. 0 copies the input dimension (unless allowzero=1, opset 14),
    // at most one -1 is inferred from the remaining elements.
    static Value?[] Reshape(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        long[] shape = ctx.Opset < 5 ? ctx.Ints("shape") ?? throw ctx.Error("needs the 'shape' attribute")
            : ShapeKit.Ints(inputs.T(1, ctx));
        bool allowZero = ctx.Int("allowzero", 0) != 0;
        var outShape = new long[shape.Length];
        int infer = -1;
        long known = 1;
        for (int i = 0; i < shape.Length; i++)
        {
            long d = shape[i];
            if (d == 0 && !allowZero)
            {
                if (i >= x.Rank) throw ctx.Error($"shape {ShapeUtil.Format(shape)} copies dimension {i} of a rank {x.Rank} input");
                d = x.Shape[i];
            }
            else if (d == -1)
            {
                if (infer >= 0) throw ctx.Error($"shape {ShapeUtil.Format(shape)} has more than one -1");
                infer = i; outShape[i] = -1; continue;
            }
            else if (d < 0) throw ctx.Error($"shape {ShapeUtil.Format(shape)} has a negative dimension");
            outShape[i] = d; known *= d;
        }
        if (infer >= 0)
        {
            if (known == 0 || x.Length % known != 0)
                throw ctx.Error($"cannot infer -1 in shape {ShapeUtil.Format(shape)} for input {x.Describe()}");
            outShape[infer] = x.Length / known;
        }
        if (ShapeUtil.Size(outShape) != x.Length) throw ctx.Error($"cannot reshape {x.Describe()} to {ShapeUtil.Format(shape)}");
        return [x.Reshape(outShape)];
    }

    // Flatten: 2-D output (d0·…·d(axis-1), d(axis)·…·dn); axis in [-r, r].
    static Value?[] Flatten(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        long axis = ctx.Int("axis", 1);
        if (axis < 0) axis += x.Rank;
        if (axis < 0 || axis > x.Rank) throw ctx.Error($"axis {ctx.Int("axis", 1)} is out of range for rank {x.Rank}");
        long a = 1;
        for (int i = 0; i < axis; i++) a *= x.Shape[i];
        long b = 1;
        for (int i = (int)axis; i < x.Rank; i++) b *= x.Shape[i];
        return [x.Reshape(a, b)];
    }

    static long[]? AxesArg(NodeContext ctx, Value?[] inputs, int fromOpset)
    {
        if (ctx.Opset < fromOpset) return ctx.Ints("axes");
        var t = inputs.OptT(1);
        return t is null ? null : ShapeKit.Ints(t);
    }

    // Squeeze: axes attribute before opset 13, input from 13; without axes every size-1 dimension goes.
    static Value?[] Squeeze(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var axes = AxesArg(ctx, inputs, 13);
        var drop = new bool[x.Rank];
        if (axes is null) { for (int i = 0; i < x.Rank; i++) drop[i] = x.Shape[i] == 1; }
        else
            foreach (long a in axes)
            {
                int k = NormAxis(ctx, a, x.Rank);
                if (x.Shape[k] != 1) throw ctx.Error($"cannot squeeze axis {a} of size {x.Shape[k]} in {x.Describe()}");
                drop[k] = true;
            }
        var shape = new List<long>();
        for (int i = 0; i < x.Rank; i++) if (!drop[i]) shape.Add(x.Shape[i]);
        return [x.Reshape(shape.ToArray())];
    }

    // Unsqueeze: axes (attribute before opset 13, input from 13) index the output, rank r + len(axes).
    static Value?[] Unsqueeze(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var axes = AxesArg(ctx, inputs, 13) ?? throw ctx.Error("needs axes");
        int rank = x.Rank + axes.Length;
        var ins = new bool[rank];
        foreach (long a in axes)
        {
            int k = NormAxis(ctx, a, rank);
            if (ins[k]) throw ctx.Error($"axes {ShapeUtil.Format(axes)} repeat an axis");
            ins[k] = true;
        }
        var shape = new long[rank];
        for (int i = 0, j = 0; i < rank; i++) shape[i] = ins[i] ? 1 : x.Shape[j++];
        return [x.Reshape(shape)];
    }

    internal static int NormAxis(NodeContext ctx, long a, int rank)
    {
        long k = a < 0 ? a + rank : a;
        if (k < 0 || k >= rank) throw ctx.Error($"axis {a} is out of range for rank {rank}");
        return (int)k;
    }

    // Expand: bidirectional broadcast of the input with the requested shape.
    static Value?[] Expand(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var shape = ShapeKit.Ints(inputs.T(1, ctx));
        long[] outShape;
        try { outShape = ShapeUtil.Broadcast(x.Shape, shape); }
        catch (TapmlException e) { throw ctx.Error(e.Message); }
        return [ShapeKit.Materialize(x, 0, ShapeUtil.BroadcastStrides(x.Shape, outShape), outShape)];
    }

    // Shape: start/end (opset 15) select a clamped slice of the shape.
    static Value?[] Shape(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        int r = x.Rank;
        long s = ctx.Int("start", 0), e = ctx.Int("end", r);
        if (s < 0) s += r;
        if (e < 0) e += r;
        s = Math.Clamp(s, 0, r); e = Math.Clamp(e, 0, r);
        var v = e > s ? x.Shape[(int)s..(int)e] : [];
        return [Tensor.FromArray((long[])v.Clone(), v.Length)];
    }

    // ConstantOfShape: value attribute (one element, default f32 0) repeated over the shape input.
    static Value?[] ConstantOfShape(NodeContext ctx, Value?[] inputs)
    {
        var shape = ShapeKit.Ints(inputs.T(0, ctx));
        var v = ctx.Tensor("value") ?? Tensor.Scalar(0f);
        if (v.Length != 1) throw ctx.Error($"value must hold one element, got {v.Describe()}");
        foreach (long d in shape) if (d < 0) throw ctx.Error($"negative dimension in shape {ShapeUtil.Format(shape)}");
        if (v.DType == DType.Float32)
        {
            Tensor.CheckLimits(DType.Float32, shape, ShapeUtil.Size(shape));
            // NOTE: f32 fills (CNN weights in the light models) skip the zeroing of a fresh array: Fill writes it all.
            var data = GC.AllocateUninitializedArray<float>(checked((int)ShapeUtil.Size(shape)));
            float fill = v.As<float>()[0];
            // NOTE: large fills (weights: mostly first touches of fresh pages) are split over the threads.
            const int chunk = 1 << 18;
            if (data.Length >= 2 * chunk && CpuThreads.Max > 1)
                Parallel.For(0, (data.Length + chunk - 1) / chunk, CpuThreads.Options,
                    t => data.AsSpan(t * chunk, Math.Min(chunk, data.Length - t * chunk)).Fill(fill));
            else data.AsSpan().Fill(fill);
            return [new Tensor(DType.Float32, shape, data)];
        }
        var r = Tensor.Zeros(v.DType, shape);
        ShapeKit.Fill(r, v);
        return [r];
    }

    // Range: n = max(ceil((limit - start) / delta), 0); out[i] = start + i·delta (as numpy.arange does it).
    static Value?[] Range(NodeContext ctx, Value?[] inputs)
    {
        Tensor s = inputs.T(0, ctx), l = inputs.T(1, ctx), d = inputs.T(2, ctx);
        if (s.Length != 1 || l.Length != 1 || d.Length != 1) throw ctx.Error("start, limit and delta must be scalars");
        if (s.DType != l.DType || s.DType != d.DType) throw ctx.Error("start, limit and delta must share one element type");
        switch (s.DType)
        {
            case DType.Float32:
            {
                float a = s.As<float>()[0], lim = l.As<float>()[0], del = d.As<float>()[0];
                if (del == 0) throw ctx.Error("delta is 0");
                long n = Math.Max((long)Math.Ceiling(((double)lim - a) / del), 0);
                Tensor.CheckLimits(DType.Float32, [n], n);
                var o = new float[n];
                // numpy fills with start + i·(buffer[1] − start), in the element type.
                float step = (a + del) - a;
                for (long i = 0; i < n; i++) o[i] = i == 0 ? a : i == 1 ? a + del : a + i * step;
                return [Tensor.FromArray(o, n)];
            }
            case DType.Float64:
            {
                double a = s.As<double>()[0], lim = l.As<double>()[0], del = d.As<double>()[0];
                if (del == 0) throw ctx.Error("delta is 0");
                long n = Math.Max((long)Math.Ceiling((lim - a) / del), 0);
                Tensor.CheckLimits(DType.Float64, [n], n);
                var o = new double[n];
                double step = (a + del) - a;
                for (long i = 0; i < n; i++) o[i] = i == 0 ? a : i == 1 ? a + del : a + i * step;
                return [Tensor.FromArray(o, n)];
            }
            case DType.Int16 or DType.Int32 or DType.Int64:
            {
                long a = s.GetInt64(0), lim = l.GetInt64(0), del = d.GetInt64(0);
                if (del == 0) throw ctx.Error("delta is 0");
                long span = lim - a;
                long n = del > 0 ? (span > 0 ? (span + del - 1) / del : 0) : (span < 0 ? (-span + -del - 1) / -del : 0);
                var o = Tensor.Zeros(s.DType, n);
                for (long i = 0; i < n; i++)
                {
                    long v = a + i * del;
                    switch (s.DType)
                    {
                        case DType.Int16: o.As<short>()[i] = (short)v; break;
                        case DType.Int32: o.As<int>()[i] = (int)v; break;
                        default: o.As<long>()[i] = v; break;
                    }
                }
                return [o];
            }
            default: throw ctx.Unsupported($"element type {DTypes.Name(s.DType)} (Range takes f32, f64, i16, i32, i64)");
        }
    }

    // EyeLike: 2-D, ones on diagonal k, dtype attribute (default: the input's).
    static Value?[] EyeLike(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (x.Rank != 2) throw ctx.Error($"input must be 2-D, got {x.Describe()}");
        DType dt = ctx.Has("dtype") ? (DType)ctx.Int("dtype") : x.DType;
        if (!DTypes.IsSupported(dt) || dt == DType.String) throw ctx.Unsupported($"dtype {DTypes.Name(dt)}");
        long k = ctx.Int("k", 0);
        long rows = x.Shape[0], cols = x.Shape[1];
        var r = Tensor.Zeros(dt, rows, cols);
        for (long i = 0; i < rows; i++)
        {
            long j = i + k;
            if (j >= 0 && j < cols) r.SetDouble(i * cols + j, 1);
        }
        return [r];
    }
}
