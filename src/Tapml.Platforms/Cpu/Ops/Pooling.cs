using System.Numerics;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Tapml.Core;
using Tapml.Ir;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>MaxPool, AveragePool, LpPool, GlobalAveragePool, GlobalMaxPool, GlobalLpPool, MaxUnpool.
/// Window pools run per (N, C) plane in parallel; spatial ranks 1-3 are normalized to 3-D.</summary>
public sealed class PoolingOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("MaxPool", MaxPool);
        r.Add("AveragePool", AveragePool);
        r.Add("LpPool", LpPool);
        r.Add("GlobalAveragePool", GlobalAveragePool);
        r.Add("GlobalMaxPool", GlobalMaxPool);
        r.Add("GlobalLpPool", GlobalLpPool, sinceOpset: 2);
        r.Add("MaxUnpool", MaxUnpool, sinceOpset: 9);
    }

    enum Kind { Max, Avg, Lp }

    /// <summary>Geometry padded to 3 spatial dims (leading dims of size 1).</summary>
    sealed class G3
    {
        public int[] In = new int[3], K = new int[3], Out = new int[3], S = new int[3], D = new int[3], PB = new int[3], PE = new int[3];
        public int InSize, OutSize, R;
    }

    static G3 To3(NodeContext ctx, ConvGeom g)
    {
        if (g.R > 3) throw ctx.Unsupported($"pooling over {g.R} spatial dims (1 to 3 are implemented)");
        var r = new G3 { R = g.R };
        int off = 3 - g.R;
        for (int i = 0; i < 3; i++)
        {
            bool real = i >= off;
            int j = i - off;
            r.In[i] = real ? g.In[j] : 1; r.K[i] = real ? g.K[j] : 1; r.Out[i] = real ? g.Out[j] : 1;
            r.S[i] = real ? g.S[j] : 1; r.D[i] = real ? g.D[j] : 1;
            r.PB[i] = real ? g.PadB[j] : 0; r.PE[i] = real ? g.PadE[j] : 0;
        }
        r.InSize = g.InSize; r.OutSize = g.OutSize;
        return r;
    }

    static int[] KernelShape(NodeContext ctx, Tensor x)
    {
        var ks = ctx.Ints("kernel_shape") ?? throw ctx.Error("attribute kernel_shape is required");
        if (ks.Length != x.Rank - 2) throw ctx.Error($"kernel_shape has {ks.Length} dims, X {x.Describe()} has {x.Rank - 2} spatial dims");
        return ks.Select(k => checked((int)k)).ToArray();
    }

    static void CheckX(NodeContext ctx, Tensor x)
    {
        if (x.Rank < 3) throw ctx.Error($"X must have rank 3 or more (N, C, spatial...), got {x.Describe()}");
    }

    // ---------------------------------------------------------------- window pools

    static Value?[] MaxPool(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        CheckX(ctx, x);
        var g = ConvHelpers.Forward(ctx, x.Shape, KernelShape(ctx, x), ctx.Int("ceil_mode", 0) != 0);
        var g3 = To3(ctx, g);
        bool wantIdx = ctx.Node.Outputs.Length > 1 && ctx.Node.Outputs[1].Length > 0;
        int storageOrder = (int)ctx.Int("storage_order", 0);
        var outShape = ConvHelpers.OutShape(x.Shape[0], x.Shape[1], g);
        int planes = checked((int)(x.Shape[0] * x.Shape[1]));
        long[]? idx = wantIdx ? new long[(long)planes * g.OutSize] : null;
        Tensor y;
        switch (x.DType)
        {
            case DType.Float32:
            {
                var yd = new float[(long)planes * g.OutSize];
                Run(x.As<float>(), yd, planes, g3, Kind.Max, false, 0, idx, storageOrder);
                y = Tensor.FromArray(yd, outShape);
                break;
            }
            case DType.Float64:
            {
                var yd = new double[(long)planes * g.OutSize];
                Run(x.As<double>(), yd, planes, g3, Kind.Max, false, 0, idx, storageOrder);
                y = Tensor.FromArray(yd, outShape);
                break;
            }
            case DType.Float16 or DType.BFloat16 or DType.Int8 or DType.UInt8:
            {
                // Max of values exactly representable in f32 is exact: compute there, convert back.
                var xf = TensorConvert.ToF32(x).As<float>();
                var yd = new float[(long)planes * g.OutSize];
                Run(xf, yd, planes, g3, Kind.Max, false, 0, idx, storageOrder);
                y = TensorConvert.To(Tensor.FromArray(yd, outShape), x.DType);
                break;
            }
            default: throw ctx.Unsupported($"MaxPool on {DTypes.Name(x.DType)}");
        }
        return ctx.Outputs(y, idx is null ? null : Tensor.FromArray(idx, outShape));
    }

    static Value?[] AveragePool(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        CheckX(ctx, x);
        var g = ConvHelpers.Forward(ctx, x.Shape, KernelShape(ctx, x), ctx.Int("ceil_mode", 0) != 0);
        bool includePad = ctx.Int("count_include_pad", 0) != 0;
        return [WindowPool(ctx, x, g, Kind.Avg, includePad, 0)];
    }

    static double LpP(NodeContext ctx)
    {
        if (!ctx.Has("p")) return 2;
        var a = ctx.Get("p");
        // LpPool-1 / GlobalLpPool-1 declared p as a float; later opsets as an int.
        return a.Type == AttrType.Float ? a.F : a.I;
    }

    static Value?[] LpPool(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        CheckX(ctx, x);
        var g = ConvHelpers.Forward(ctx, x.Shape, KernelShape(ctx, x), ctx.Int("ceil_mode", 0) != 0);
        return [WindowPool(ctx, x, g, Kind.Lp, false, LpP(ctx))];
    }

    static Tensor WindowPool(NodeContext ctx, Tensor x, ConvGeom g, Kind kind, bool includePad, double p)
    {
        var g3 = To3(ctx, g);
        var outShape = ConvHelpers.OutShape(x.Shape[0], x.Shape[1], g);
        int planes = checked((int)(x.Shape[0] * x.Shape[1]));
        if (x.DType == DType.Float64)
        {
            var yd = new double[(long)planes * g.OutSize];
            Run(x.As<double>(), yd, planes, g3, kind, includePad, p, null, 0);
            return Tensor.FromArray(yd, outShape);
        }
        if (!DTypes.IsFloat(x.DType)) throw ctx.Unsupported($"{ctx.Node.OpType} on {DTypes.Name(x.DType)} (float types only)");
        var yf = new float[(long)planes * g.OutSize];
        Run(TensorConvert.ToF32(x).As<float>(), yf, planes, g3, kind, includePad, p, null, 0);
        return TensorConvert.To(Tensor.FromArray(yf, outShape), x.DType);
    }

    static void Run<T>(T[] x, T[] y, int planes, G3 g, Kind kind, bool includePad, double p, long[]? idx, int storageOrder)
        where T : IFloatingPointIeee754<T>
    {
        long work = (long)planes * g.OutSize * g.K[0] * g.K[1] * g.K[2];
        Action<int> plane = x is float[] xf && y is float[] yf && idx is null && kind != Kind.Lp
            && g.In[0] == 1 && g.K[0] == 1 && g.D[1] == 1 && g.D[2] == 1
            ? pl => Plane2D(xf, yf, pl, g, kind, includePad)
            : pl => Plane(x, y, pl, g, kind, includePad, p, idx, storageOrder);
        if (planes > 1 && work >= 1 << 14) Parallel.For(0, planes, CpuThreads.Options, plane);
        else for (int pl = 0; pl < planes; pl++) plane(pl);
    }

    /// <summary>The common case of <see cref="Plane{T}"/> (f32, 2-D, no dilation, no indices) with the window
    /// clipped once per output position instead of tested per element. Same visiting order, same results.</summary>
    static void Plane2D(float[] x, float[] y, int pl, G3 g, Kind kind, bool includePad)
    {
        int inH = g.In[1], inW = g.In[2], outH = g.Out[1], outW = g.Out[2], kh = g.K[1], kw = g.K[2];
        int xOff = pl * g.InSize, yOff = pl * g.OutSize;
        for (int oh = 0; oh < outH; oh++)
        {
            int h0 = oh * g.S[1] - g.PB[1];
            int hs = Math.Max(h0, 0), he = Math.Min(h0 + kh, inH);
            int ph = Math.Max(0, Math.Min(h0 + kh, inH + g.PE[1]) - Math.Max(h0, -g.PB[1]));
            int ow = 0;
            if (kind == Kind.Max && Avx2.IsSupported && hs < he) ow = MaxRow8(x, y, xOff + hs * inW, he - hs, yOff + oh * outW, g);
            for (; ow < outW; ow++)
            {
                int w0 = ow * g.S[2] - g.PB[2];
                int ws = Math.Max(w0, 0), we = Math.Min(w0 + kw, inW);
                int pw = Math.Max(0, Math.Min(w0 + kw, inW + g.PE[2]) - Math.Max(w0, -g.PB[2]));
                float acc;
                if (kind == Kind.Max && Sse.IsSupported && hs < he && ws < we)
                {
                    // NOTE: branch-free: maxss(v, acc) is exactly `v > acc ? v : acc` (NaN and ±0 as the scalar
                    // loop below), without the data-dependent branch that mispredicts on activations.
                    var m = Vector128.CreateScalarUnsafe(x[xOff + hs * inW + ws]);
                    for (int ih = hs; ih < he; ih++)
                    {
                        int row = xOff + ih * inW;
                        for (int iw = ih == hs ? ws + 1 : ws; iw < we; iw++)
                            m = Sse.MaxScalar(Vector128.CreateScalarUnsafe(x[row + iw]), m);
                    }
                    acc = m.ToScalar();
                }
                else if (kind == Kind.Max)
                {
                    acc = float.NegativeInfinity;
                    bool any = false;
                    for (int ih = hs; ih < he; ih++)
                    {
                        int row = xOff + ih * inW;
                        for (int iw = ws; iw < we; iw++)
                        {
                            float v = x[row + iw];
                            if (v > acc || !any) { acc = v; any = true; }
                        }
                    }
                }
                else
                {
                    acc = 0;
                    for (int ih = hs; ih < he; ih++)
                    {
                        int row = xOff + ih * inW;
                        for (int iw = ws; iw < we; iw++) acc += x[row + iw];
                    }
                    int count = Math.Max(0, he - hs) * Math.Max(0, we - ws);
                    int div = includePad ? ph * pw : count;
                    acc = div == 0 ? float.NaN : acc / div;
                }
                y[yOff + oh * outW + ow] = acc;
            }
        }
    }

    /// <summary>Max over full-width windows of one output row, 8 outputs at a time (lanes = consecutive outputs,
    /// read with a strided gather); each lane visits its window in the scalar order with maxps(v, acc), which is
    /// `v > acc ? v : acc` per lane, so results match <see cref="Plane2D"/>'s scalar path exactly. Runs only when
    /// the row's first window is not clipped on the left; returns the output where the scalar loop goes on.</summary>
    static unsafe int MaxRow8(float[] x, float[] y, int rowOff, int rows, int yRow, G3 g)
    {
        int inW = g.In[2], outW = g.Out[2], kw = g.K[2], s = g.S[2], pb = g.PB[2];
        // Outputs [lo, hi) have windows inside [0, inW): o·s - pb >= 0 and o·s - pb + kw <= inW.
        int lo = (pb + s - 1) / s, hi = Math.Min(outW, (inW - kw + pb) / s + 1);
        if (hi - lo < 8 || lo > 0) return 0;
        var idx = Vector256.Create(0, 1, 2, 3, 4, 5, 6, 7) * s;
        int ow = lo;
        fixed (float* px = x, py = y)
        {
            for (; ow + 8 <= hi; ow += 8)
            {
                float* b = px + rowOff + ow * s - pb;
                var m = Avx2.GatherVector256(b, idx, 4);
                for (int r = 0; r < rows; r++)
                    for (int k = r == 0 ? 1 : 0; k < kw; k++)
                        m = Avx.Max(Avx2.GatherVector256(b + r * inW + k, idx, 4), m);
                m.Store(py + yRow + ow);
            }
        }
        return ow;
    }

    /// <summary>One (n, c) plane. A window reads input positions start + k·dilation; positions inside the input
    /// count as data, positions in [-pad_begin, in + pad_end) as padding (counted by count_include_pad), and
    /// positions beyond that (the ceil_mode overhang) are ignored.</summary>
    static void Plane<T>(T[] x, T[] y, int pl, G3 g, Kind kind, bool includePad, double p, long[]? idx, int storageOrder)
        where T : IFloatingPointIeee754<T>
    {
        int xOff = pl * g.InSize, yOff = pl * g.OutSize;
        int inD = g.In[0], inH = g.In[1], inW = g.In[2];
        T pT = T.CreateChecked(p), invP = T.One / pT;
        bool p1 = p == 1, p2 = p == 2;
        int o = 0;
        for (int od = 0; od < g.Out[0]; od++)
        {
            int d0 = od * g.S[0] - g.PB[0];
            for (int oh = 0; oh < g.Out[1]; oh++)
            {
                int h0 = oh * g.S[1] - g.PB[1];
                for (int ow = 0; ow < g.Out[2]; ow++, o++)
                {
                    int w0 = ow * g.S[2] - g.PB[2];
                    T acc = kind == Kind.Max ? T.NegativeInfinity : T.Zero;
                    long best = -1;
                    int count = 0, padded = 0;
                    for (int kd = 0; kd < g.K[0]; kd++)
                    {
                        int id = d0 + kd * g.D[0];
                        if (id < -g.PB[0] || id >= inD + g.PE[0]) continue;
                        bool dIn = (uint)id < (uint)inD;
                        for (int kh = 0; kh < g.K[1]; kh++)
                        {
                            int ih = h0 + kh * g.D[1];
                            if (ih < -g.PB[1] || ih >= inH + g.PE[1]) continue;
                            bool hIn = dIn && (uint)ih < (uint)inH;
                            for (int kw = 0; kw < g.K[2]; kw++)
                            {
                                int iw = w0 + kw * g.D[2];
                                if (iw < -g.PB[2] || iw >= inW + g.PE[2]) continue;
                                padded++;
                                if (!hIn || (uint)iw >= (uint)inW) continue;
                                int li = (id * inH + ih) * inW + iw;
                                T v = x[xOff + li];
                                count++;
                                switch (kind)
                                {
                                    case Kind.Max:
                                        if (v > acc || best < 0) { acc = v; best = li; }
                                        break;
                                    case Kind.Avg: acc += v; break;
                                    default:
                                        T av = T.Abs(v);
                                        acc += p1 ? av : p2 ? av * av : T.Pow(av, pT);
                                        break;
                                }
                            }
                        }
                    }
                    switch (kind)
                    {
                        case Kind.Max:
                            y[yOff + o] = acc;
                            if (idx is not null)
                            {
                                long flat = -1;
                                if (best >= 0)
                                {
                                    int bw = (int)(best % inW), bh = (int)(best / inW % inH), bd = (int)(best / inW / inH);
                                    // storage_order 1: column-major index within the plane.
                                    long inPlane = storageOrder == 0 ? best : (long)bw * inH * inD + (long)bh * inD + bd;
                                    flat = (long)pl * g.InSize + inPlane;
                                }
                                idx[yOff + o] = flat;
                            }
                            break;
                        case Kind.Avg:
                        {
                            int div = includePad ? padded : count;
                            y[yOff + o] = div == 0 ? T.NaN : acc / T.CreateChecked(div);
                            break;
                        }
                        default:
                            y[yOff + o] = p1 ? acc : p2 ? T.Sqrt(acc) : T.Pow(acc, invP);
                            break;
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- global pools

    static long[] GlobalShape(Tensor x)
    {
        var s = new long[x.Rank];
        s[0] = x.Shape[0]; s[1] = x.Shape[1];
        for (int i = 2; i < s.Length; i++) s[i] = 1;
        return s;
    }

    static Value?[] GlobalAveragePool(NodeContext ctx, Value?[] inputs) => [Global(ctx, inputs.T(0, ctx), Kind.Avg, 0)];
    static Value?[] GlobalMaxPool(NodeContext ctx, Value?[] inputs) => [Global(ctx, inputs.T(0, ctx), Kind.Max, 0)];
    static Value?[] GlobalLpPool(NodeContext ctx, Value?[] inputs) => [Global(ctx, inputs.T(0, ctx), Kind.Lp, LpP(ctx))];

    static Tensor Global(NodeContext ctx, Tensor x, Kind kind, double p)
    {
        if (x.Rank < 2) throw ctx.Error($"X must have rank 2 or more, got {x.Describe()}");
        if (!DTypes.IsFloat(x.DType)) throw ctx.Unsupported($"{ctx.Node.OpType} on {DTypes.Name(x.DType)} (float types only)");
        int planes = checked((int)(x.Shape[0] * x.Shape[1]));
        long sizeL = planes == 0 ? 0 : x.Length / planes;
        int size = checked((int)sizeL);
        var shape = GlobalShape(x);
        if (x.DType == DType.Float64)
        {
            var xd = x.As<double>();
            var yd = new double[planes];
            for (int pl = 0; pl < planes; pl++) yd[pl] = GlobalPlaneD(xd.AsSpan(pl * size, size), kind, p);
            return Tensor.FromArray(yd, shape);
        }
        var xf = TensorConvert.ToF32(x).As<float>();
        var yf = new float[planes];
        if (planes > 1 && (long)planes * size >= 1 << 16)
            Parallel.For(0, planes, CpuThreads.Options, pl => yf[pl] = GlobalPlaneF(xf, pl * size, size, kind, p));
        else
            for (int pl = 0; pl < planes; pl++) yf[pl] = GlobalPlaneF(xf, pl * size, size, kind, p);
        return TensorConvert.To(Tensor.FromArray(yf, shape), x.DType);
    }

    static float GlobalPlaneF(float[] x, int off, int size, Kind kind, double p)
    {
        var s = x.AsSpan(off, size);
        if (size == 0) return kind == Kind.Max ? float.NegativeInfinity : kind == Kind.Avg ? float.NaN : 0f;
        switch (kind)
        {
            case Kind.Max: return TP.Max(s);
            case Kind.Avg: return TP.Sum(s) / size;
            default:
                if (p == 2) return MathF.Sqrt(TP.SumOfSquares(s));
                if (p == 1) return TP.SumOfMagnitudes(s);
                double acc = 0;
                foreach (float v in s) acc += Math.Pow(Math.Abs(v), p);
                return (float)Math.Pow(acc, 1 / p);
        }
    }

    static double GlobalPlaneD(ReadOnlySpan<double> s, Kind kind, double p)
    {
        if (s.Length == 0) return kind == Kind.Max ? double.NegativeInfinity : kind == Kind.Avg ? double.NaN : 0;
        switch (kind)
        {
            case Kind.Max: return TP.Max(s);
            case Kind.Avg: return TP.Sum(s) / s.Length;
            default:
                double acc = 0;
                foreach (double v in s) acc += Math.Pow(Math.Abs(v), p);
                return Math.Pow(acc, 1 / p);
        }
    }

    // ---------------------------------------------------------------- MaxUnpool

    // MaxUnpool: Y = zeros(output shape); Y.flat[I[i]] = X[i] (indices as MaxPool's Indices output: flat over
    // the whole tensor). Output shape: the output_shape input, else (in-1)·stride + kernel - pads per dim.
    static Value?[] MaxUnpool(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var ind = inputs.T(1, ctx);
        var outShapeT = inputs.OptT(2);
        CheckX(ctx, x);
        if (!ShapeUtil.SameShape(x.Shape, ind.Shape)) throw ctx.Error($"I {ind.Describe()} must have the shape of X {x.Describe()}");
        if (x.DType == DType.String || x.DType == DType.Bool) throw ctx.Unsupported($"MaxUnpool on {DTypes.Name(x.DType)}");
        int r = x.Rank - 2;
        var k = KernelShape(ctx, x);
        var s = ctx.Ints("strides") is { Length: > 0 } sa ? sa : Enumerable.Repeat(1L, r).ToArray();
        var pads = ctx.Ints("pads") is { Length: > 0 } pa ? pa : new long[2 * r];
        if (s.Length != r || pads.Length != 2 * r) throw ctx.Error("strides/pads do not match the spatial rank");
        long[] inferred = new long[x.Rank];
        inferred[0] = x.Shape[0]; inferred[1] = x.Shape[1];
        for (int i = 0; i < r; i++) inferred[i + 2] = (x.Shape[i + 2] - 1) * s[i] + k[i] - pads[i] - pads[i + r];
        long[] outShape = inferred;
        if (outShapeT is not null)
        {
            outShape = outShapeT.ToInt64Array();
            if (outShape.Length != x.Rank) throw ctx.Error($"output_shape {ShapeUtil.Format(outShape)} must have rank {x.Rank}");
            for (int i = 0; i < x.Rank; i++)
                if (outShape[i] < inferred[i]) throw ctx.Error($"output_shape {ShapeUtil.Format(outShape)} is smaller than the unpooled shape {ShapeUtil.Format(inferred)}");
        }
        // Indices address the unpooled (inferred) shape; a larger output_shape holds it at its origin.
        var y = Tensor.Zeros(x.DType, inferred);
        int es = DTypes.Size(x.DType);
        var src = x.Bytes();
        var dst = y.Bytes();
        var iv = ind.ToInt64Array();
        long total = y.Length;
        for (long i = 0; i < iv.Length; i++)
        {
            long j = iv[i];
            if (j < 0 || j >= total) throw ctx.Error($"index {j} is out of range for the unpooled shape {ShapeUtil.Format(inferred)}");
            src.Slice((int)(i * es), es).CopyTo(dst.Slice((int)(j * es), es));
        }
        if (ShapeUtil.SameShape(outShape, inferred)) return [y];
        var res = Tensor.Zeros(x.DType, outShape);
        var rb = res.Bytes();
        var inStr = ShapeUtil.Strides(inferred);
        var outStr = ShapeUtil.Strides(outShape);
        long rows = y.Length / Math.Max(inferred[^1], 1);
        int rowBytes = (int)(inferred[^1] * es);
        for (long q = 0; q < rows && rowBytes > 0; q++)
        {
            long rem = q * inferred[^1], o = 0;
            for (int d = 0; d < x.Rank; d++) { o += rem / inStr[d] * outStr[d]; rem %= inStr[d]; }
            dst.Slice((int)(q * rowBytes), rowBytes).CopyTo(rb.Slice((int)(o * es), rowBytes));
        }
        return [res];
    }
}
