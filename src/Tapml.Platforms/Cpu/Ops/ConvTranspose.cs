using System.Numerics;
using Tapml.Core;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>ConvTranspose, Col2Im.</summary>
public sealed class ConvTransposeOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("ConvTranspose", ConvTranspose);
        r.Add("Col2Im", Col2Im, sinceOpset: 18);
    }

    static int[] Ints(NodeContext ctx, string name, int r, int dflt)
    {
        var a = ctx.Ints(name);
        var res = new int[r];
        if (a is null || a.Length == 0) { Array.Fill(res, dflt); return res; }
        if (a.Length != r) throw ctx.Error($"attribute {name} has {a.Length} values, expected {r}");
        for (int i = 0; i < r; i++) res[i] = checked((int)a[i]);
        return res;
    }

    static Value?[] ConvTranspose(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var w = inputs.T(1, ctx);
        var b = inputs.OptT(2);
        if (!DTypes.IsFloat(x.DType)) throw ctx.Unsupported($"ConvTranspose on {DTypes.Name(x.DType)} (float types only)");
        if (w.DType != x.DType || b is not null && b.DType != x.DType) throw ctx.Error("X, W and B must have one element type");
        if (x.Rank < 3) throw ctx.Error($"X must have rank 3 or more, got {x.Describe()}");
        if (w.Rank != x.Rank) throw ctx.Error($"W {w.Describe()} must have the rank of X {x.Describe()}");
        int r = x.Rank - 2;
        int group = checked((int)ctx.Int("group", 1));
        int n = checked((int)x.Shape[0]), c = checked((int)x.Shape[1]);
        if (group < 1 || c % group != 0) throw ctx.Error($"input channels {c} are not divisible by group {group}");
        if (w.Shape[0] != c) throw ctx.Error($"W {w.Describe()} must have C = {c} rows (X {x.Describe()})");
        int mg = checked((int)w.Shape[1]), m = mg * group, cg = c / group;
        if (b is not null && b.Length != m) throw ctx.Error($"B {b.Describe()} must have M = {m} elements");
        var g = Geometry(ctx, x.Shape, w.Shape);
        var outDims = g.In;
        var outShape = new long[r + 2];
        outShape[0] = n; outShape[1] = m;
        for (int i = 0; i < r; i++) outShape[i + 2] = outDims[i];
        if (x.DType == DType.Float64)
            return [new Tensor(DType.Float64, outShape, Core(x.As<double>(), w.As<double>(), b?.As<double>(), n, cg, mg, group, g))];
        var y = new Tensor(DType.Float32, outShape, Core(TensorConvert.ToF32(x).As<float>(), TensorConvert.ToF32(w).As<float>(),
            b is null ? null : TensorConvert.ToF32(b).As<float>(), n, cg, mg, group, g));
        return [TensorConvert.To(y, x.DType)];
    }

    /// <summary>ConvTranspose's geometry in col2im terms ("In" is the output image, "Out" the input grid): output
    /// size from output_shape, auto_pad or pads + output_padding (shared with the webgpu kernel).</summary>
    internal static ConvGeom Geometry(NodeContext ctx, long[] xShape, long[] wShape)
    {
        int r = xShape.Length - 2;
        var kernel = ConvHelpers.Kernel(ctx, wShape);
        var s = Ints(ctx, "strides", r, 1);
        var d = Ints(ctx, "dilations", r, 1);
        var outPad = Ints(ctx, "output_padding", r, 0);
        var inDims = new int[r];
        for (int i = 0; i < r; i++) inDims[i] = checked((int)xShape[i + 2]);
        var padB = new int[r];
        var padE = new int[r];
        var outDims = new int[r];
        string autoPad = ctx.String("auto_pad", "NOTSET");
        var outShapeAttr = ctx.Ints("output_shape");
        if (outShapeAttr is { Length: > 0 })
        {
            // output_shape given: pads are generated from it (output_shape may also list N and C).
            if (outShapeAttr.Length == r + 2) outShapeAttr = outShapeAttr[2..];
            if (outShapeAttr.Length != r) throw ctx.Error($"output_shape has {outShapeAttr.Length} values, expected {r}");
            for (int i = 0; i < r; i++) outDims[i] = checked((int)outShapeAttr[i]);
            SplitPads(autoPad == "SAME_UPPER");
        }
        else if (autoPad is "SAME_UPPER" or "SAME_LOWER")
        {
            for (int i = 0; i < r; i++) outDims[i] = checked(inDims[i] * s[i]);
            SplitPads(autoPad == "SAME_UPPER");
        }
        else if (autoPad is "NOTSET" or "VALID" or "")
        {
            var p = autoPad == "VALID" ? null : ctx.Ints("pads");
            if (p is { Length: > 0 })
            {
                if (p.Length != 2 * r) throw ctx.Error($"attribute pads has {p.Length} values, expected {2 * r}");
                for (int i = 0; i < r; i++) { padB[i] = checked((int)p[i]); padE[i] = checked((int)p[i + r]); }
            }
            for (int i = 0; i < r; i++)
            {
                long o = (long)s[i] * (inDims[i] - 1) + outPad[i] + (long)(kernel[i] - 1) * d[i] + 1 - padB[i] - padE[i];
                if (o < 0) throw ctx.Error($"output dim {i} would be negative ({o})");
                outDims[i] = checked((int)o);
            }
        }
        else throw ctx.Error($"unknown auto_pad '{autoPad}'");

        void SplitPads(bool upper)
        {
            for (int i = 0; i < r; i++)
            {
                long total = (long)s[i] * (inDims[i] - 1) + outPad[i] + (long)(kernel[i] - 1) * d[i] + 1 - outDims[i];
                // total_padding = s·(in-1) + output_padding + ((k-1)·d+1) - output_shape; SAME_UPPER puts
                // the smaller half first, every other case the larger half.
                long half = (long)Math.Floor(total / 2.0); // floor division, also for negative totals
                long first = upper ? half : total - half;
                padB[i] = checked((int)first); padE[i] = checked((int)(total - first));
            }
        }

        // col2im geometry: "In" is the output image, "Out" the input grid (window positions).
        var g = new ConvGeom { R = r, In = outDims, K = kernel, Out = inDims, S = s, D = d, PadB = padB, PadE = padE };
        g.Finish();
        return g;
    }

    /// <summary>Per (image, group): col[Mg·K, XSize] = W_gᵀ · X_g, then col2im into Y, then bias.</summary>
    static T[] Core<T>(T[] x, T[] w, T[]? bias, int n, int cg, int mg, int group, ConvGeom g) where T : INumber<T>
    {
        int c = cg * group, m = mg * group;
        int xSize = g.OutSize, ySize = g.InSize;
        long rowsL = (long)mg * g.KSize;
        long colLen = rowsL * xSize;
        if (colLen > Array.MaxLength || (long)n * m * ySize > Array.MaxLength)
            throw new UnsupportedException("ConvTranspose: the col buffer would exceed one host array");
        int rows = (int)rowsL;
        var y = new T[(long)n * m * ySize];
        int items = n * group;
        bool direct = g.KSize == 1 && xSize == ySize && g.IsPointwiseTranspose();
        void Item(int it, T[] col)
        {
            int ni = it / group, gi = it % group;
            int xOff = (ni * c + gi * cg) * xSize;
            int yOff = (ni * m + gi * mg) * ySize;
            int wOff = gi * cg * rows;
            if (direct) GemmTA(rows, xSize, cg, w, wOff, x, xOff, y, yOff);
            else
            {
                GemmTA(rows, xSize, cg, w, wOff, x, xOff, col, 0);
                ConvHelpers.Col2Im(col, 0, y, yOff, mg, g, parallel: items == 1);
            }
            if (bias is not null)
                for (int mi = 0; mi < mg; mi++)
                {
                    var ys = y.AsSpan(yOff + mi * ySize, ySize);
                    T bv = bias[gi * mg + mi];
                    if (typeof(T) == typeof(float)) TP.Add(((float[])(object)y).AsSpan(yOff + mi * ySize, ySize), (float)(object)bv, ((float[])(object)y).AsSpan(yOff + mi * ySize, ySize));
                    else for (int i = 0; i < ys.Length; i++) ys[i] += bv;
                }
        }
        if (items == 1) Item(0, direct ? [] : new T[colLen]);
        else if (items > 1)
            Parallel.For(0, items, CpuThreads.Options, () => direct ? [] : new T[colLen], (it, _, col) => { Item(it, col); return col; }, _ => { });
        return y;
    }

    /// <summary>C[m,n] = Aᵀ·B with A stored [k, m] (the group's W block) and B [k, n].</summary>
    static void GemmTA<T>(int m, int n, int k, T[] a, int aOff, T[] b, int bOff, T[] c, int cOff) where T : INumber<T>
    {
        if (typeof(T) == typeof(float))
        {
            Blas.Sgemm(true, false, m, n, k, 1f, ((float[])(object)a).AsSpan(aOff, k * m), m,
                ((float[])(object)b).AsSpan(bOff, k * n), n, 0f, ((float[])(object)c).AsSpan(cOff, m * n), n);
            return;
        }
        var cs = c.AsSpan(cOff, m * n);
        cs.Clear();
        for (int i = 0; i < m; i++)
        {
            var crow = cs.Slice(i * n, n);
            for (int p = 0; p < k; p++)
            {
                T av = a[aOff + p * m + i];
                var brow = b.AsSpan(bOff + p * n, n);
                for (int j = 0; j < n; j++) crow[j] += av * brow[j];
            }
        }
    }

    // Col2Im (opset 18): input [N, C·prod(block_shape), L] -> [N, C, image_shape...], overlapping blocks add up.
    static Value?[] Col2Im(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var image = inputs.T(1, ctx).ToInt64Array();
        var block = inputs.T(2, ctx).ToInt64Array();
        int r = image.Length;
        if (block.Length != r) throw ctx.Error($"image_shape has {r} dims, block_shape {block.Length}");
        if (x.Rank != 3) throw ctx.Error($"input must have rank 3 [N, C·prod(block), L], got {x.Describe()}");
        var g = new ConvGeom { R = r, In = new int[r], K = new int[r], Out = new int[r] };
        for (int i = 0; i < r; i++) { g.In[i] = checked((int)image[i]); g.K[i] = checked((int)block[i]); }
        g.S = Ints(ctx, "strides", r, 1);
        g.D = Ints(ctx, "dilations", r, 1);
        g.PadB = new int[r]; g.PadE = new int[r];
        var p = ctx.Ints("pads");
        if (p is { Length: > 0 })
        {
            if (p.Length != 2 * r) throw ctx.Error($"attribute pads has {p.Length} values, expected {2 * r}");
            for (int i = 0; i < r; i++) { g.PadB[i] = checked((int)p[i]); g.PadE[i] = checked((int)p[i + r]); }
        }
        for (int i = 0; i < r; i++)
        {
            long span = (long)g.In[i] + g.PadB[i] + g.PadE[i] - ((long)(g.K[i] - 1) * g.D[i] + 1);
            if (span < 0 || g.K[i] < 1) throw ctx.Error($"block dim {i} does not fit the padded image");
            g.Out[i] = checked((int)(span / g.S[i] + 1));
        }
        g.Finish();
        long n = x.Shape[0];
        if (x.Shape[1] % g.KSize != 0) throw ctx.Error($"input dim 1 ({x.Shape[1]}) is not a multiple of prod(block_shape) = {g.KSize}");
        int c = checked((int)(x.Shape[1] / g.KSize));
        if (x.Shape[2] != g.OutSize) throw ctx.Error($"input has L = {x.Shape[2]} blocks, image and block shapes give {g.OutSize}");
        var outShape = new long[r + 2];
        outShape[0] = n; outShape[1] = c;
        for (int i = 0; i < r; i++) outShape[i + 2] = g.In[i];
        var y = Tensor.Zeros(x.DType, outShape);
        int colStride = c * g.KSize * g.OutSize, yStride = c * g.InSize;
        switch (x.DType)
        {
            case DType.Float32: Run(x.As<float>(), y.As<float>()); return [y];
            case DType.Float64: Run(x.As<double>(), y.As<double>()); return [y];
            case DType.Int32: Run(x.As<int>(), y.As<int>()); return [y];
            case DType.Int64: Run(x.As<long>(), y.As<long>()); return [y];
        }
        if (x.DType is DType.Float16 or DType.BFloat16)
        {
            var yf = Tensor.Zeros(DType.Float32, outShape);
            Run(TensorConvert.ToF32(x).As<float>(), yf.As<float>());
            return [TensorConvert.To(yf, x.DType)];
        }
        if (DTypes.IsInteger(x.DType))
        {
            var xl = TensorConvert.To(x, DType.Int64);
            var yl = Tensor.Zeros(DType.Int64, outShape);
            Run(xl.As<long>(), yl.As<long>());
            return [TensorConvert.To(yl, x.DType)];
        }
        throw ctx.Unsupported($"Col2Im on {DTypes.Name(x.DType)}");

        void Run<T>(T[] src, T[] dst) where T : INumber<T>
        {
            for (long ni = 0; ni < n; ni++)
                ConvHelpers.Col2Im(src, checked((int)(ni * colStride)), dst, checked((int)(ni * yStride)), c, g, parallel: true);
        }
    }
}

internal static class ConvGeomExtensions
{
    /// <summary>For transposed geometry: kernel 1, stride 1, no pads, same extent: col2im is the identity.</summary>
    public static bool IsPointwiseTranspose(this ConvGeom g)
    {
        for (int i = 0; i < g.R; i++) if (g.S[i] != 1 || g.PadB[i] != 0 || g.PadE[i] != 0 || g.In[i] != g.Out[i]) return false;
        return true;
    }
}
