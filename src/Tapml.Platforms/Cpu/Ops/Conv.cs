using System.Numerics;
using Tapml.Core;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Spatial geometry of a conv-like or pooling window op: input dims, kernel, strides, dilations, pads
/// and output dims (all spatial, rank R). For Col2Im / ConvTranspose "In" is the image and "Out" the grid of
/// window positions.</summary>
internal sealed class ConvGeom
{
    public int R;
    public int[] In = [], K = [], Out = [], S = [], D = [], PadB = [], PadE = [];
    /// <summary>Row-major strides of the In dims.</summary>
    public int[] InStr = [];
    public int InSize, OutSize, KSize;

    public void Finish()
    {
        InStr = new int[R];
        long acc = 1;
        for (int i = R - 1; i >= 0; i--) { InStr[i] = (int)acc; acc *= In[i]; }
        InSize = checked((int)acc);
        long o = 1, k = 1;
        for (int i = 0; i < R; i++) { o *= Out[i]; k *= K[i]; }
        OutSize = checked((int)o);
        KSize = checked((int)k);
    }

    /// <summary>Whether the window is a single point read 1:1 (kernel 1, stride 1, no pads): im2col is the identity.</summary>
    public bool IsPointwise
    {
        get
        {
            if (KSize != 1) return false;
            for (int i = 0; i < R; i++) if (S[i] != 1 || PadB[i] != 0 || PadE[i] != 0 || In[i] != Out[i]) return false;
            return true;
        }
    }
}

/// <summary>Attribute handling and the im2col/col2im transforms shared by Conv, ConvTranspose, Col2Im and pooling.</summary>
internal static class ConvHelpers
{
    static int[] IntsOr(NodeContext ctx, string name, int r, int dflt, int min)
    {
        var a = ctx.Ints(name);
        if (a is null || a.Length == 0) { var d = new int[r]; Array.Fill(d, dflt); return d; }
        if (a.Length != r) throw ctx.Error($"attribute {name} has {a.Length} values, the input has {r} spatial dims");
        var res = new int[r];
        for (int i = 0; i < r; i++)
        {
            if (a[i] < min) throw ctx.Error($"attribute {name} value {a[i]} must be at least {min}");
            res[i] = checked((int)a[i]);
        }
        return res;
    }

    /// <summary>Forward window geometry (Conv, pooling, ConvInteger, QLinearConv): strides, dilations, pads and
    /// auto_pad as in the spec; <paramref name="ceilMode"/> for pooling's ceil_mode.</summary>
    public static ConvGeom Forward(NodeContext ctx, long[] xShape, int[] kernel, bool ceilMode, bool readDilations = true)
    {
        int r = xShape.Length - 2;
        if (r < 1) throw ctx.Error($"input must have rank 3 or more (N, C, spatial...), got {ShapeUtil.Format(xShape)}");
        if (kernel.Length != r) throw ctx.Error($"kernel has {kernel.Length} dims, the input has {r} spatial dims");
        var g = new ConvGeom { R = r, K = kernel };
        g.In = new int[r];
        for (int i = 0; i < r; i++) g.In[i] = checked((int)xShape[i + 2]);
        g.S = IntsOr(ctx, "strides", r, 1, 1);
        g.D = readDilations ? IntsOr(ctx, "dilations", r, 1, 1) : Enumerable.Repeat(1, r).ToArray();
        g.PadB = new int[r]; g.PadE = new int[r]; g.Out = new int[r];
        string autoPad = ctx.String("auto_pad", "NOTSET");
        for (int i = 0; i < r; i++)
            if (kernel[i] < 1) throw ctx.Error($"kernel dim {kernel[i]} must be positive");
        switch (autoPad)
        {
            case "NOTSET" or "VALID" or "":
            {
                if (autoPad == "NOTSET" || autoPad == "")
                {
                    var p = ctx.Ints("pads");
                    if (p is { Length: > 0 })
                    {
                        if (p.Length != 2 * r) throw ctx.Error($"attribute pads has {p.Length} values, expected {2 * r}");
                        for (int i = 0; i < r; i++)
                        {
                            if (p[i] < 0 || p[i + r] < 0) throw ctx.Error("negative pads are not allowed");
                            g.PadB[i] = checked((int)p[i]); g.PadE[i] = checked((int)p[i + r]);
                        }
                    }
                }
                for (int i = 0; i < r; i++)
                {
                    long eff = (long)(kernel[i] - 1) * g.D[i] + 1;
                    long span = (long)g.In[i] + g.PadB[i] + g.PadE[i] - eff;
                    if (span < 0) throw ctx.Error($"kernel extent {eff} is larger than the padded input {g.In[i] + g.PadB[i] + g.PadE[i]} on spatial dim {i}");
                    long o = ceilMode ? (span + g.S[i] - 1) / g.S[i] + 1 : span / g.S[i] + 1;
                    // ceil_mode: the last window must start inside the input or its begin padding.
                    if (ceilMode && (o - 1) * g.S[i] >= (long)g.In[i] + g.PadB[i]) o--;
                    g.Out[i] = checked((int)o);
                }
                break;
            }
            case "SAME_UPPER" or "SAME_LOWER":
                for (int i = 0; i < r; i++)
                {
                    long o = ((long)g.In[i] + g.S[i] - 1) / g.S[i];
                    long eff = (long)(kernel[i] - 1) * g.D[i] + 1;
                    long total = Math.Max(0, (o - 1) * g.S[i] + eff - g.In[i]);
                    // SAME_UPPER puts the extra padding at the end, SAME_LOWER at the beginning.
                    long b = autoPad == "SAME_UPPER" ? total / 2 : total - total / 2;
                    g.PadB[i] = (int)b; g.PadE[i] = (int)(total - b);
                    g.Out[i] = checked((int)o);
                }
                break;
            default:
                throw ctx.Error($"unknown auto_pad '{autoPad}'");
        }
        g.Finish();
        return g;
    }

    /// <summary>kernel_shape attribute (checked against <paramref name="fromW"/> when given) or the weight's spatial dims.</summary>
    public static int[] Kernel(NodeContext ctx, long[] wShape)
    {
        var ks = ctx.Ints("kernel_shape");
        var k = new int[wShape.Length - 2];
        for (int i = 0; i < k.Length; i++) k[i] = checked((int)wShape[i + 2]);
        if (ks is { Length: > 0 })
        {
            if (ks.Length != k.Length) throw ctx.Error($"kernel_shape has {ks.Length} dims, W has {k.Length} spatial dims");
            for (int i = 0; i < k.Length; i++)
                if (ks[i] != k[i]) throw ctx.Error($"kernel_shape {ShapeUtil.Format(ks)} does not match W {ShapeUtil.Format(wShape)}");
        }
        return k;
    }

    public static long[] OutShape(long n, long c, ConvGeom g)
    {
        var s = new long[g.R + 2];
        s[0] = n; s[1] = c;
        for (int i = 0; i < g.R; i++) s[i + 2] = g.Out[i];
        return s;
    }

    /// <summary>Fills row <paramref name="row"/> = (channel, kernel offset) of an im2col tile: the output positions
    /// whose outer index (all spatial dims but the last) is in [q0, q0 + qn), i.e. columns
    /// [q0·OutLast, (q0 + qn)·OutLast) of the full matrix [C·KSize, OutSize], stored with row stride qn·OutLast.
    /// Reads the image block x[xOff .. xOff + C·InSize); zeros where the window reads padding.</summary>
    public static void Im2ColRow<T>(T[] x, int xOff, T[] col, int row, ConvGeom g, int q0, int qn)
    {
        int r = g.R, last = r - 1;
        int c = row / g.KSize, kidx = row % g.KSize;
        Span<int> k = stackalloc int[r];
        for (int i = r - 1; i >= 0; i--) { k[i] = kidx % g.K[i]; kidx /= g.K[i]; }
        int outLast = g.Out[last], inLast = g.In[last], sL = g.S[last];
        int kOff = k[last] * g.D[last] - g.PadB[last]; // input index = ow * sL + kOff
        int owLo = kOff >= 0 ? 0 : Math.Min(outLast, (-kOff + sL - 1) / sL);
        int owHi = inLast - kOff <= 0 ? 0 : Math.Min(outLast, (inLast - kOff - 1) / sL + 1);
        if (owHi < owLo) owHi = owLo;
        Span<int> o = stackalloc int[r];
        for (int j = last - 1, rem = q0; j >= 0; j--) { o[j] = rem % g.Out[j]; rem /= g.Out[j]; }
        int cols = qn * outLast;
        var dst = col.AsSpan(row * cols, cols);
        int cBase = xOff + c * g.InSize;
        for (int q = 0; q < qn; q++)
        {
            int off = cBase;
            bool valid = true;
            for (int j = 0; j < last; j++)
            {
                int ij = o[j] * g.S[j] + k[j] * g.D[j] - g.PadB[j];
                if ((uint)ij >= (uint)g.In[j]) { valid = false; break; }
                off += ij * g.InStr[j];
            }
            var seg = dst.Slice(q * outLast, outLast);
            if (!valid) seg.Clear();
            else
            {
                seg[..owLo].Clear();
                seg[owHi..].Clear();
                if (owHi == owLo) { }
                else if (sL == 1) x.AsSpan(off + owLo + kOff, owHi - owLo).CopyTo(seg[owLo..owHi]);
                else for (int ow = owLo; ow < owHi; ow++) seg[ow] = x[off + ow * sL + kOff];
            }
            for (int j = last - 1; j >= 0; j--) { if (++o[j] < g.Out[j]) break; o[j] = 0; }
        }
    }

    /// <summary>Adds row <paramref name="row"/> of a col matrix [C·KSize, OutSize] into the image block at yOff
    /// (the adjoint of <see cref="Im2ColRow{T}"/>; entries that fall in padding are dropped).</summary>
    public static void Col2ImRow<T>(T[] col, int colOff, T[] y, int yOff, int row, ConvGeom g) where T : INumber<T>
    {
        int r = g.R, last = r - 1;
        int c = row / g.KSize, kidx = row % g.KSize;
        Span<int> k = stackalloc int[r];
        for (int i = r - 1; i >= 0; i--) { k[i] = kidx % g.K[i]; kidx /= g.K[i]; }
        int outLast = g.Out[last], inLast = g.In[last], sL = g.S[last];
        int kOff = k[last] * g.D[last] - g.PadB[last];
        int owLo = kOff >= 0 ? 0 : Math.Min(outLast, (-kOff + sL - 1) / sL);
        int owHi = inLast - kOff <= 0 ? 0 : Math.Min(outLast, (inLast - kOff - 1) / sL + 1);
        if (owHi <= owLo) return;
        int outer = g.OutSize / Math.Max(outLast, 1);
        Span<int> o = stackalloc int[r];
        int src0 = colOff + row * g.OutSize;
        int cBase = yOff + c * g.InSize;
        for (int q = 0; q < outer; q++)
        {
            int off = cBase;
            bool valid = true;
            for (int j = 0; j < last; j++)
            {
                int ij = o[j] * g.S[j] + k[j] * g.D[j] - g.PadB[j];
                if ((uint)ij >= (uint)g.In[j]) { valid = false; break; }
                off += ij * g.InStr[j];
            }
            if (valid)
            {
                int s = src0 + q * outLast;
                if (sL == 1 && typeof(T) == typeof(float))
                {
                    var d = ((float[])(object)y).AsSpan(off + owLo + kOff, owHi - owLo);
                    TP.Add(d, ((float[])(object)col).AsSpan(s + owLo, owHi - owLo), d);
                }
                else
                    for (int ow = owLo; ow < owHi; ow++) y[off + ow * sL + kOff] += col[s + ow];
            }
            for (int j = last - 1; j >= 0; j--) { if (++o[j] < g.Out[j]) break; o[j] = 0; }
        }
    }

    /// <summary>col2im of a col matrix [C·KSize, OutSize] into a C-channel image block (adds into y); parallel over channels.</summary>
    public static void Col2Im<T>(T[] col, int colOff, T[] y, int yOff, int channels, ConvGeom g, bool parallel) where T : INumber<T>
    {
        void Channel(int c)
        {
            for (int kk = 0; kk < g.KSize; kk++) Col2ImRow(col, colOff, y, yOff, c * g.KSize + kk, g);
        }
        if (parallel && channels > 1 && (long)channels * g.KSize * g.OutSize >= 1 << 15) Parallel.For(0, channels, CpuThreads.Options, Channel);
        else for (int c = 0; c < channels; c++) Channel(c);
    }

    /// <summary>C[m,n] = A[m,k]·B[k,n] (+ C when <paramref name="accumulate"/>), row-major with leading dimensions.</summary>
    public delegate void Gemm<T>(int m, int n, int k, T[] a, int aOff, int lda, T[] b, int bOff, int ldb, T[] c, int cOff, int ldc, bool accumulate);

    static int Extent(int rows, int cols, int ld) => rows == 0 ? 0 : (rows - 1) * ld + cols;

    public static readonly Gemm<float> GemmF32 = (m, n, k, a, aOff, lda, b, bOff, ldb, c, cOff, ldc, acc) =>
        Blas.Sgemm(false, false, m, n, k, 1f, a.AsSpan(aOff, Extent(m, k, lda)), lda, b.AsSpan(bOff, Extent(k, n, ldb)), ldb,
            acc ? 1f : 0f, c.AsSpan(cOff, Extent(m, n, ldc)), ldc);

    /// <summary>f64 GEMM (f64 convolutions and the exact integer arithmetic of ConvInteger/QLinearConv).</summary>
    public static readonly Gemm<double> GemmF64 = (m, n, k, a, aOff, lda, b, bOff, ldb, c, cOff, ldc, acc) =>
    {
        for (int i = 0; i < m; i++)
        {
            var crow = c.AsSpan(cOff + i * ldc, n);
            if (!acc) crow.Clear();
            for (int p = 0; p < k; p++)
            {
                double av = a[aOff + i * lda + p];
                if (av != 0) TP.MultiplyAdd(b.AsSpan(bOff + p * ldb, n), av, crow, crow);
            }
        }
    };

    /// <summary>Forward convolution: x [N, C, In...], w [M, C/group, K...], optional bias [M]; y [N, M, Out...].
    /// The output positions of each (image, group) are cut into column tiles (whole rows of the last spatial dim)
    /// whose im2col block fits in cache; each tile is im2col'd into a thread-local buffer and multiplied by the
    /// group's weights straight into its columns of y. Tiles of all (image, group) pairs run in parallel; every
    /// output element is still one dot product over the same k order, so results do not depend on threads.</summary>
    public static T[] ConvCore<T>(T[] x, T[] w, T[]? bias, int n, int c, int m, int group, ConvGeom g, Gemm<T> gemm)
        where T : INumber<T>
    {
        int cg = c / group, mg = m / group;
        long kdimL = (long)cg * g.KSize;
        int outSize = g.OutSize, inSize = g.InSize;
        if ((long)n * m * outSize > Array.MaxLength)
            throw new UnsupportedException("Conv: the output would exceed one host array");
        var y = new T[(long)n * m * outSize];
        if (outSize == 0 || n == 0 || mg == 0) return y;
        if (kdimL == 0)
        {
            if (bias is not null)
                for (int ni = 0; ni < n; ni++)
                    for (int mi = 0; mi < m; mi++) y.AsSpan((ni * m + mi) * outSize, outSize).Fill(bias[mi]);
            return y;
        }
        int kdim = checked((int)kdimL);
        int outLast = g.Out[g.R - 1], outer = outSize / outLast;
        // Tile: with at least as many (image, group) items as threads, ~512 KiB of im2col per tile (at least 256
        // columns) and items run in parallel; with fewer items (one image, one group: the usual CNN layer) one big
        // tile of up to 8M elements, so a single Sgemm call with its own packing and parallelism does the work
        // (many small calls would re-pack the weights each time).
        bool fewItems = (long)n * group < CpuThreads.Max;
        int targetCols = fewItems ? (int)Math.Max(256, (8L << 20) / kdim) : Math.Max(256, (128 * 1024) / kdim);
        int qPerTile = Math.Clamp(targetCols / outLast, 1, outer);
        int tiles = (outer + qPerTile - 1) / qPerTile;
        long colLen = kdimL * qPerTile * outLast;
        if (colLen > Array.MaxLength) throw new UnsupportedException("Conv: the im2col buffer would exceed one host array");
        bool pointwise = g.IsPointwise;
        int items = n * group;
        int units = items * tiles;
        void Unit(int u, T[]? col)
        {
            int it = u / tiles, t = u % tiles;
            int ni = it / group, gi = it % group;
            int q0 = t * qPerTile, qn = Math.Min(qPerTile, outer - q0);
            int cols = qn * outLast, j0 = q0 * outLast;
            int xOff = (ni * c + gi * cg) * inSize;
            int yOff = (ni * m + gi * mg) * outSize + j0;
            T[] bm; int bOff, ldb;
            if (pointwise) { bm = x; bOff = xOff + j0; ldb = inSize; }
            else
            {
                if (units == 1 && (long)kdim * cols >= 1 << 15)
                    Parallel.For(0, kdim, CpuThreads.Options, row => Im2ColRow(x, xOff, col!, row, g, q0, qn));
                else
                    for (int row = 0; row < kdim; row++) Im2ColRow(x, xOff, col!, row, g, q0, qn);
                bm = col!; bOff = 0; ldb = cols;
            }
            bool acc = false;
            if (bias is not null)
            {
                // Bias first, then the product accumulates onto it.
                for (int mi = 0; mi < mg; mi++) y.AsSpan(yOff + mi * outSize, cols).Fill(bias[gi * mg + mi]);
                acc = true;
            }
            gemm(mg, cols, kdim, w, gi * mg * kdim, kdim, bm, bOff, ldb, y, yOff, outSize, acc);
        }
        // NOTE: im2col buffers come from the shared pool: a fresh multi-MiB array per call lands on the large
        // object heap and costs a gen-2 collection every few layers.
        T[]? Rent() => pointwise ? null : System.Buffers.ArrayPool<T>.Shared.Rent(checked((int)colLen));
        void Return(T[]? col) { if (col != null) System.Buffers.ArrayPool<T>.Shared.Return(col); }
        if (units == 1) { var col = Rent(); try { Unit(0, col); } finally { Return(col); } }
        else
            Parallel.For(0, units, CpuThreads.Options, Rent, (u, _, col) => { Unit(u, col); return col; }, Return);
        return y;
    }

    /// <summary>Saturating round-half-to-even cast of an integer-valued double into <paramref name="dt"/>.</summary>
    public static double Clip(double v, DType dt) => dt switch
    {
        DType.Int8 => Math.Clamp(v, -128, 127),
        DType.UInt8 => Math.Clamp(v, 0, 255),
        DType.Int16 => Math.Clamp(v, short.MinValue, short.MaxValue),
        DType.UInt16 => Math.Clamp(v, 0, ushort.MaxValue),
        DType.Int32 => Math.Clamp(v, int.MinValue, int.MaxValue),
        _ => v,
    };
}

/// <summary>Conv, ConvInteger, QLinearConv.</summary>
public sealed class ConvOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Conv", Conv);
        r.Add("ConvInteger", ConvInteger, sinceOpset: 10);
        r.Add("QLinearConv", QLinearConv, sinceOpset: 10);
    }

    /// <summary>Checks shapes and returns (N, C, M, group, kernel geometry).</summary>
    static (int n, int c, int m, int group, ConvGeom g) Setup(NodeContext ctx, Tensor x, Tensor w)
    {
        if (x.Rank < 3) throw ctx.Error($"X must have rank 3 or more, got {x.Describe()}");
        if (w.Rank != x.Rank) throw ctx.Error($"W {w.Describe()} must have the rank of X {x.Describe()}");
        int group = checked((int)ctx.Int("group", 1));
        if (group < 1) throw ctx.Error($"group {group} must be positive");
        int n = checked((int)x.Shape[0]), c = checked((int)x.Shape[1]), m = checked((int)w.Shape[0]);
        if (c % group != 0) throw ctx.Error($"input channels {c} are not divisible by group {group}");
        if (m % group != 0) throw ctx.Error($"output channels {m} are not divisible by group {group}");
        if (w.Shape[1] != c / group) throw ctx.Error($"W {w.Describe()} needs C/group = {c / group} input channels (X {x.Describe()}, group {group})");
        var g = ConvHelpers.Forward(ctx, x.Shape, ConvHelpers.Kernel(ctx, w.Shape), ceilMode: false);
        return (n, c, m, group, g);
    }

    static Value?[] Conv(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var w = inputs.T(1, ctx);
        var b = inputs.OptT(2);
        if (!DTypes.IsFloat(x.DType)) throw ctx.Unsupported($"Conv on {DTypes.Name(x.DType)} (the spec allows float types only)");
        if (w.DType != x.DType || b is not null && b.DType != x.DType) throw ctx.Error("X, W and B must have one element type");
        var (n, c, m, group, g) = Setup(ctx, x, w);
        if (b is not null && b.Length != m) throw ctx.Error($"B {b.Describe()} must have M = {m} elements");
        var outShape = ConvHelpers.OutShape(n, m, g);
        if (x.DType == DType.Float64)
            return [new Tensor(DType.Float64, outShape, ConvHelpers.ConvCore(x.As<double>(), w.As<double>(), b?.As<double>(), n, c, m, group, g, ConvHelpers.GemmF64))];
        var xf = TensorConvert.ToF32(x).As<float>();
        var wf = TensorConvert.ToF32(w).As<float>();
        var bf = b is null ? null : TensorConvert.ToF32(b).As<float>();
        if (ConvFused.Applies(n, m, group, g))
            return [TensorConvert.To(new Tensor(DType.Float32, outShape, ConvFused.Run(xf, wf, bf, n, c, m, group, g)), x.DType)];
        var y = new Tensor(DType.Float32, outShape, ConvHelpers.ConvCore(xf, wf, bf, n, c, m, group, g, ConvHelpers.GemmF32));
        return [TensorConvert.To(y, x.DType)];
    }

    /// <summary>x - zero point as doubles (exact for 8-bit data).</summary>
    static double[] Shifted(NodeContext ctx, Tensor x, Tensor? zp, int perAxisLen, long innerSize, string what)
    {
        var r = new double[x.Length];
        for (long i = 0; i < r.Length; i++) r[i] = x.GetDouble(i);
        if (zp is null) return r;
        if (zp.DType != x.DType) throw ctx.Error($"{what} zero point {zp.Describe()} must have the type of {what} ({DTypes.Name(x.DType)})");
        if (zp.Length == 1)
        {
            double z = zp.GetDouble(0);
            if (z != 0) for (long i = 0; i < r.Length; i++) r[i] -= z;
        }
        else if (perAxisLen > 0 && zp.Length == perAxisLen && zp.Rank == 1)
        {
            for (long i = 0; i < r.Length; i++) r[i] -= zp.GetDouble(i / innerSize % perAxisLen);
        }
        else throw ctx.Error($"{what} zero point {zp.Describe()} must be a scalar{(perAxisLen > 0 ? $" or have {perAxisLen} elements" : "")}");
        return r;
    }

    // ConvInteger: y (int32) = conv(x - x_zero_point, w - w_zero_point); padding is zero after the shift.
    static Value?[] ConvInteger(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var w = inputs.T(1, ctx);
        if (x.DType is not (DType.UInt8 or DType.Int8) || w.DType is not (DType.UInt8 or DType.Int8))
            throw ctx.Error($"ConvInteger takes 8-bit integers, got {x.Describe()} and {w.Describe()}");
        var (n, c, m, group, g) = Setup(ctx, x, w);
        var xd = Shifted(ctx, x, inputs.OptT(2), 0, 1, "x");
        long wInner = w.Length / Math.Max(m, 1);
        var wd = Shifted(ctx, w, inputs.OptT(3), m, wInner, "w");
        var yd = ConvHelpers.ConvCore(xd, wd, null, n, c, m, group, g, ConvHelpers.GemmF64);
        var y = new int[yd.Length];
        for (int i = 0; i < y.Length; i++) y[i] = (int)yd[i];
        return [Tensor.FromArray(y, ConvHelpers.OutShape(n, m, g))];
    }

    // QLinearConv: y = saturate(round((conv(x - x_zp, w - w_zp) + B) · x_scale·w_scale / y_scale) + y_zp).
    static Value?[] QLinearConv(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var xScale = inputs.T(1, ctx);
        var xZp = inputs.OptT(2);
        var w = inputs.T(3, ctx);
        var wScale = inputs.T(4, ctx);
        var wZp = inputs.OptT(5);
        var yScale = inputs.T(6, ctx);
        var yZp = inputs.OptT(7);
        var b = inputs.OptT(8);
        if (x.DType is not (DType.UInt8 or DType.Int8) || w.DType is not (DType.UInt8 or DType.Int8))
            throw ctx.Unsupported($"QLinearConv on {x.Describe()} and {w.Describe()} (8-bit integers only)");
        var (n, c, m, group, g) = Setup(ctx, x, w);
        var xd = Shifted(ctx, x, xZp, 0, 1, "x");
        long wInner = w.Length / Math.Max(m, 1);
        var wd = Shifted(ctx, w, wZp, m, wInner, "w");
        double[]? bias = null;
        if (b is not null)
        {
            if (b.Length != m) throw ctx.Error($"B {b.Describe()} must have M = {m} elements");
            bias = b.ToDoubleArray();
        }
        var yd = ConvHelpers.ConvCore(xd, wd, bias, n, c, m, group, g, ConvHelpers.GemmF64);
        if (xScale.Length != 1 || yScale.Length != 1) throw ctx.Error("x_scale and y_scale must be scalars");
        if (wScale.Length != 1 && wScale.Length != m) throw ctx.Error($"w_scale must be a scalar or have M = {m} elements");
        float xs = (float)xScale.GetDouble(0), ys = (float)yScale.GetDouble(0);
        var scales = new float[m];
        for (int mi = 0; mi < m; mi++) scales[mi] = xs * (float)wScale.GetDouble(wScale.Length == 1 ? 0 : mi) / ys;
        DType outType = yZp?.DType ?? x.DType;
        double zp = yZp is null ? 0 : yZp.GetDouble(0);
        var y = Tensor.Zeros(outType, ConvHelpers.OutShape(n, m, g));
        int outSize = g.OutSize;
        for (long i = 0; i < yd.Length; i++)
        {
            int mi = (int)(i / outSize % m);
            double v = yd[i] * scales[mi] + zp;
            y.SetDouble(i, Math.Round(ConvHelpers.Clip(v, outType), MidpointRounding.ToEven));
        }
        return [y];
    }
}
