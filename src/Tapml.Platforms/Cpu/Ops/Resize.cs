using TP = System.Numerics.Tensors.TensorPrimitives;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Resize, Upsample, GridSample, AffineGrid, CenterCropPad.</summary>
public sealed class Resize : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Resize", ResizeOp, sinceOpset: 10);
        r.Add("Upsample", UpsampleOp, sinceOpset: 7);
        r.Add("GridSample", GridSampleOp, sinceOpset: 16);
        r.Add("AffineGrid", AffineGridOp, sinceOpset: 20);
        r.Add("CenterCropPad", CenterCropPadOp, sinceOpset: 18);
    }

    // ---------------------------------------------------------------- Resize / Upsample

    /// <summary>Everything that fixes how one output coordinate maps back to the input.</summary>
    internal sealed class ResizeSpec
    {
        public string Mode = "nearest";
        public string Ctm = "half_pixel";
        public string NearestMode = "round_prefer_floor"; // "legacy" = Upsample / Resize-10
        public double CubicA = -0.75;
        public bool ExcludeOutside;
        public double Extrapolation;
        public bool Antialias;
    }

    static Value?[] UpsampleOp(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var (spec, scales, outShape, roiS, roiE) = UpsamplePlan(ctx, x.Shape, ctx.Opset < 9 ? null : inputs.T(1, ctx));
        return [Run(ctx, x, spec, scales, outShape, roiS, roiE)];
    }

    /// <summary>Upsample (asymmetric, legacy nearest rounding) as a Resize plan.</summary>
    internal static (ResizeSpec Spec, double[] Scales, long[] OutShape, double[] RoiS, double[] RoiE) UpsamplePlan(
        NodeContext ctx, long[] xShape, Tensor? scalesT)
    {
        int r = xShape.Length;
        double[] scales;
        if (scalesT is null)
        {
            var f = ctx.Floats("scales") ?? throw ctx.Error("Upsample-7 needs the scales attribute");
            scales = f.Select(v => (double)v).ToArray();
        }
        else scales = scalesT.ToDoubleArray();
        if (scales.Length != r) throw ctx.Error($"scales has {scales.Length} values, input rank is {r}");
        string mode = ctx.String("mode", "nearest");
        if (mode == "bilinear") mode = "linear";
        var spec = new ResizeSpec { Mode = mode, Ctm = "asymmetric", NearestMode = "legacy" };
        var outShape = new long[r];
        for (int d = 0; d < r; d++)
        {
            if (!(scales[d] > 0)) throw ctx.Error($"scale {scales[d]} must be positive");
            outShape[d] = (long)Math.Floor(scales[d] * xShape[d]);
        }
        var roiS = new double[r]; var roiE = Enumerable.Repeat(1.0, r).ToArray();
        return (spec, scales, outShape, roiS, roiE);
    }

    static Value?[] ResizeOp(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        Tensor? roiT = null, scalesT, sizesT = null;
        if (ctx.Opset < 11) scalesT = inputs.T(1, ctx);
        else { roiT = inputs.OptT(1); scalesT = inputs.OptT(2); sizesT = inputs.OptT(3); }
        var (spec, scales, outShape, roiS, roiE) = Plan(ctx, x.Shape, roiT, scalesT, sizesT);
        return [Run(ctx, x, spec, scales, outShape, roiS, roiE)];
    }

    /// <summary>Resize's attributes and roi/scales/sizes inputs as one mapping per axis (shared with the webgpu
    /// kernel, which computes the same taps on the host).</summary>
    internal static (ResizeSpec Spec, double[] Scales, long[] OutShape, double[] RoiS, double[] RoiE) Plan(
        NodeContext ctx, long[] xShape, Tensor? roiT, Tensor? scalesT, Tensor? sizesT)
    {
        int r = xShape.Length;
        int opset = ctx.Opset;
        if (roiT is { Length: 0 }) roiT = null;
        if (scalesT is { Length: 0 }) scalesT = null;
        if (sizesT is { Length: 0 }) sizesT = null;

        var spec = new ResizeSpec { Mode = ctx.String("mode", "nearest") };
        if (spec.Mode is not ("nearest" or "linear" or "cubic")) throw ctx.Unsupported($"mode '{spec.Mode}'");
        if (opset < 11)
        {
            if (spec.Mode == "cubic") throw ctx.Error("Resize-10 has no cubic mode");
            spec.Ctm = "asymmetric"; spec.NearestMode = "legacy";
        }
        else
        {
            spec.Ctm = ctx.String("coordinate_transformation_mode", "half_pixel");
            spec.NearestMode = ctx.String("nearest_mode", "round_prefer_floor");
            spec.CubicA = ctx.Float("cubic_coeff_a", -0.75f);
            spec.ExcludeOutside = ctx.Int("exclude_outside", 0) != 0;
            spec.Extrapolation = ctx.Float("extrapolation_value", 0f);
            if (spec.Ctm is not ("half_pixel" or "half_pixel_symmetric" or "pytorch_half_pixel" or "align_corners"
                or "asymmetric" or "tf_crop_and_resize" or "tf_half_pixel_for_nn"))
                throw ctx.Unsupported($"coordinate_transformation_mode '{spec.Ctm}'");
            if (spec.NearestMode is not ("round_prefer_floor" or "round_prefer_ceil" or "floor" or "ceil"))
                throw ctx.Unsupported($"nearest_mode '{spec.NearestMode}'");
        }
        string policy = "stretch";
        long[]? axesAttr = null;
        if (opset >= 18)
        {
            spec.Antialias = ctx.Int("antialias", 0) != 0 && spec.Mode != "nearest"; // antialias applies to linear/cubic only
            axesAttr = ctx.Ints("axes");
            policy = ctx.String("keep_aspect_ratio_policy", "stretch");
            if (policy is not ("stretch" or "not_larger" or "not_smaller")) throw ctx.Unsupported($"keep_aspect_ratio_policy '{policy}'");
        }

        int[] axes;
        if (axesAttr is null) axes = Enumerable.Range(0, r).ToArray();
        else
        {
            axes = axesAttr.Select(a => ShapeUtil.Axis(a, r)).ToArray();
            if (axes.Distinct().Count() != axes.Length) throw ctx.Error("axes has duplicates");
        }

        var scales = Enumerable.Repeat(1.0, r).ToArray();
        var outShape = (long[])xShape.Clone();
        if (scalesT is not null && sizesT is not null) throw ctx.Error("only one of scales and sizes may be given");
        if (scalesT is not null)
        {
            var s = scalesT.ToDoubleArray();
            if (s.Length != axes.Length) throw ctx.Error($"scales has {s.Length} values, expected {axes.Length}");
            for (int i = 0; i < axes.Length; i++)
            {
                if (!(s[i] > 0)) throw ctx.Error($"scale {s[i]} must be positive");
                scales[axes[i]] = s[i];
            }
            // output_dimension = floor(input_dimension * scale)
            for (int d = 0; d < r; d++) outShape[d] = (long)Math.Floor(scales[d] * xShape[d]);
        }
        else if (sizesT is not null)
        {
            var sz = sizesT.ToInt64Array();
            if (sz.Length != axes.Length) throw ctx.Error($"sizes has {sz.Length} values, expected {axes.Length}");
            for (int i = 0; i < axes.Length; i++)
            {
                if (sz[i] < 0) throw ctx.Error("sizes must be non-negative");
                outShape[axes[i]] = sz[i];
            }
            for (int d = 0; d < r; d++) scales[d] = xShape[d] == 0 ? 1.0 : (double)outShape[d] / xShape[d];
            if (policy != "stretch")
            {
                double sc = policy == "not_larger" ? double.MaxValue : double.MinValue;
                foreach (int a in axes) sc = policy == "not_larger" ? Math.Min(sc, scales[a]) : Math.Max(sc, scales[a]);
                foreach (int a in axes)
                {
                    scales[a] = sc;
                    outShape[a] = (long)(sc * xShape[a] + 0.5); // round half up
                }
            }
        }
        else throw ctx.Error("one of scales and sizes must be given");

        var roiS = new double[r]; var roiE = Enumerable.Repeat(1.0, r).ToArray();
        if (roiT is not null)
        {
            var roi = roiT.ToDoubleArray();
            if (roi.Length != 2 * axes.Length) throw ctx.Error($"roi has {roi.Length} values, expected {2 * axes.Length}");
            for (int i = 0; i < axes.Length; i++) { roiS[axes[i]] = roi[i]; roiE[axes[i]] = roi[axes.Length + i]; }
        }
        else if (spec.Ctm == "tf_crop_and_resize") throw ctx.Error("tf_crop_and_resize needs the roi input");
        return (spec, scales, outShape, roiS, roiE);
    }

    /// <summary>Taps of one output index along one axis: input indices (already clamped, i.e. edge-padded) and weights;
    /// Extrapolate marks tf_crop_and_resize points outside the input.</summary>
    internal struct Taps { public int[] Idx; public double[] W; public bool Extrapolate; }

    static Tensor Run(NodeContext ctx, Tensor x, ResizeSpec spec, double[] scales, long[] outShape, double[] roiS, double[] roiE)
    {
        int r = x.Rank;
        if (!DTypes.IsNumeric(x.DType)) throw ctx.Unsupported($"{DTypes.Name(x.DType)} input");
        if (spec.Mode is not ("nearest" or "linear" or "cubic")) throw ctx.Unsupported($"mode '{spec.Mode}'");
        var taps = new Taps[r][];
        for (int d = 0; d < r; d++)
        {
            taps[d] = new Taps[outShape[d]];
            for (long j = 0; j < outShape[d]; j++)
                taps[d][j] = AxisTaps(ctx, spec, j, x.Shape[d], scales[d], outShape[d], roiS[d], roiE[d]);
        }
        long total = ShapeUtil.Size(outShape);
        if (spec.Mode == "nearest")
        {
            // Nearest picks input elements: gather on the typed data (exact for every dtype).
            var y = Tensor.Zeros(x.DType, outShape);
            var map = new int[total];
            var inStrides = ShapeUtil.Strides(x.Shape);
            var idx = new long[r];
            for (long o = 0; o < total; o++)
            {
                long off = 0; bool ext = false;
                for (int d = 0; d < r; d++)
                {
                    var t = taps[d][idx[d]];
                    if (t.Extrapolate) { ext = true; break; }
                    off += t.Idx[0] * inStrides[d];
                }
                map[o] = ext ? -1 : (int)off;
                for (int d = r - 1; d >= 0; d--) { if (++idx[d] < outShape[d]) break; idx[d] = 0; }
            }
            SpecialHelpers.Take(x.Data, y.Data, map);
            if (map.Any(m => m < 0)) for (long o = 0; o < total; o++) if (map[o] < 0) y.SetDouble(o, spec.Extrapolation);
            return y;
        }

        // linear / cubic: separable, one axis at a time, in double.
        var cur = SpecialHelpers.ToDoubles(x);
        var curShape = (long[])x.Shape.Clone();
        for (int d = 0; d < r; d++)
        {
            if (IsIdentity(taps[d], curShape[d])) continue;
            cur = ApplyAxis(cur, curShape, d, taps[d]);
            curShape[d] = outShape[d];
        }
        // tf_crop_and_resize: a point outside the input along any axis takes extrapolation_value.
        for (int d = 0; d < r; d++)
        {
            if (!taps[d].Any(t => t.Extrapolate)) continue;
            long outer = 1, inner = 1;
            for (int k = 0; k < d; k++) outer *= outShape[k];
            for (int k = d + 1; k < r; k++) inner *= outShape[k];
            for (long o = 0; o < outer; o++)
                for (long j = 0; j < outShape[d]; j++)
                    if (taps[d][j].Extrapolate)
                        cur.AsSpan((int)((o * outShape[d] + j) * inner), (int)inner).Fill(spec.Extrapolation);
        }
        return SpecialHelpers.FromDoubles(cur, x.DType, outShape);
    }

    static bool IsIdentity(Taps[] taps, long inLen)
    {
        if (taps.Length != inLen) return false;
        for (int j = 0; j < taps.Length; j++)
        {
            var t = taps[j];
            if (t.Extrapolate || t.Idx.Length != 1 || t.Idx[0] != j || t.W[0] != 1.0) return false;
        }
        return true;
    }

    static double[] ApplyAxis(double[] src, long[] shape, int d, Taps[] taps)
    {
        long outer = 1, inner = 1;
        for (int k = 0; k < d; k++) outer *= shape[k];
        for (int k = d + 1; k < shape.Length; k++) inner *= shape[k];
        long inLen = shape[d], outLen = taps.Length;
        var dst = new double[outer * outLen * inner];
        int n = (int)inner;
        Parallel.For(0, outer * outLen, CpuThreads.Options, row =>
        {
            long o = row / outLen, j = row % outLen;
            var t = taps[j];
            var dRow = dst.AsSpan((int)(row * inner), n);
            for (int k = 0; k < t.Idx.Length; k++)
            {
                var sRow = new ReadOnlySpan<double>(src, (int)((o * inLen + t.Idx[k]) * inner), n);
                if (n == 1) dRow[0] += t.W[k] * sRow[0];
                else TP.MultiplyAdd(sRow, t.W[k], dRow, dRow);
            }
        });
        return dst;
    }

    /// <summary>Maps output index j back to the input (ONNX Resize coordinate transformation) and returns its taps.</summary>
    internal static Taps AxisTaps(NodeContext ctx, ResizeSpec s, long j, long inLen, double scale, long outLenInt, double roiS, double roiE)
    {
        double outW = scale * inLen; // length_resized as a real number (the reference uses scale * input length)
        double xo;
        switch (s.Ctm)
        {
            case "align_corners": xo = outW == 1 ? 0 : j * (inLen - 1) / (outW - 1); break;
            case "asymmetric": xo = j / scale; break;
            case "tf_half_pixel_for_nn": xo = (j + 0.5) / scale; break;
            case "tf_crop_and_resize":
                xo = outLenInt <= 1 ? (roiE - roiS) * (inLen - 1) / 2 : j * (roiE - roiS) * (inLen - 1) / (outW - 1);
                xo += roiS * (inLen - 1);
                if (xo < 0 || xo > inLen - 1) return new Taps { Idx = [], W = [], Extrapolate = true };
                break;
            case "pytorch_half_pixel": xo = outLenInt > 1 ? (j + 0.5) / scale - 0.5 : 0; break; // spec: length_resized > 1 ? … : 0
            case "half_pixel": xo = (j + 0.5) / scale - 0.5; break;
            case "half_pixel_symmetric":
            {
                double adjustment = outLenInt / outW;
                double center = inLen / 2.0;
                double offset = center * (1 - adjustment);
                xo = offset + (j + 0.5) / scale - 0.5;
                break;
            }
            default: throw ctx.Unsupported($"coordinate_transformation_mode '{s.Ctm}'");
        }
        // base + ratio = xo with ratio in (0, 1]: the left neighbour is preferred when xo is an integer.
        double fl = Math.Floor(xo);
        long bas; double ratio;
        if (xo == fl) { bas = (long)fl - 1; ratio = 1; }
        else { bas = (long)fl; ratio = xo - fl; }

        if (s.Mode == "nearest")
        {
            long pick;
            if (s.NearestMode == "legacy")
            {
                // Upsample / Resize-10: asymmetric, nearest = floor when upsampling. Downsampling to a non-integer
                // position has no rule in the spec (runtimes differ: ceil vs floor).
                if (ratio == 1) pick = bas + 1;
                else if (scale >= 1) pick = bas;
                else throw ctx.Unsupported("nearest downsampling by a non-integer factor before opset 11 has no defined rounding");
            }
            else if (ratio == 1) pick = bas + 1;
            else
            {
                bool up = s.NearestMode switch
                {
                    "round_prefer_floor" => ratio > 0.5,
                    "round_prefer_ceil" => ratio >= 0.5,
                    "floor" => false,
                    _ => true, // ceil
                };
                pick = up ? bas + 1 : bas;
            }
            return new Taps { Idx = [(int)Math.Clamp(pick, 0, inLen - 1)], W = [1.0] };
        }

        double[] coeffs;
        long start; // index of the first tap relative to base
        if (s.Mode == "linear")
        {
            if (s.Antialias && scale < 1)
            {
                double sc = scale;
                long st = (long)Math.Floor(-1 / sc) + 1;
                long fp = 2 - 2 * st;
                coeffs = new double[fp];
                double sum = 0;
                for (long i = 0; i < fp; i++) { coeffs[i] = Math.Clamp(1 - Math.Abs((st + i - ratio) * sc), 0, 1); sum += coeffs[i]; }
                for (int i = 0; i < fp; i++) coeffs[i] /= sum;
                start = st;
            }
            else { coeffs = [1 - ratio, ratio]; start = 0; }
        }
        else // cubic
        {
            double A = s.CubicA;
            if (s.Antialias && scale < 1)
            {
                double sc = scale;
                long st = (long)Math.Floor(-2 / sc) + 1;
                long end = 2 - st;
                coeffs = new double[end - st];
                double sum = 0;
                for (long i = st; i < end; i++)
                {
                    double v = Math.Abs(sc * (i - ratio));
                    double c = v <= 1 ? (A + 2) * v * v * v - (A + 3) * v * v + 1
                        : v < 2 ? A * v * v * v - 5 * A * v * v + 8 * A * v - 4 * A : 0.0;
                    coeffs[i - st] = c; sum += c;
                }
                for (int i = 0; i < coeffs.Length; i++) coeffs[i] /= sum;
                start = st;
            }
            else
            {
                double t = ratio, u = 1 - ratio;
                coeffs =
                [
                    ((A * (t + 1) - 5 * A) * (t + 1) + 8 * A) * (t + 1) - 4 * A,
                    ((A + 2) * t - (A + 3)) * t * t + 1,
                    ((A + 2) * u - (A + 3)) * u * u + 1,
                    ((A * (u + 1) - 5 * A) * (u + 1) + 8 * A) * (u + 1) - 4 * A,
                ];
                start = -1;
            }
        }
        if (s.ExcludeOutside)
        {
            // exclude_outside: weights of taps outside the input become 0, the rest are renormalized.
            double sum = 0;
            for (int i = 0; i < coeffs.Length; i++)
            {
                long idx = bas + start + i;
                if (idx < 0 || idx >= inLen) coeffs[i] = 0;
                sum += coeffs[i];
            }
            for (int i = 0; i < coeffs.Length; i++) coeffs[i] /= sum;
        }
        // Neighbours come from the edge-padded input: clamp, merge equal indices, drop zero weights.
        var idxs = new List<int>(coeffs.Length); var ws = new List<double>(coeffs.Length);
        for (int i = 0; i < coeffs.Length; i++)
        {
            if (coeffs[i] == 0) continue;
            int idx = (int)Math.Clamp(bas + start + i, 0, inLen - 1);
            int at = idxs.IndexOf(idx);
            if (at >= 0) ws[at] += coeffs[i];
            else { idxs.Add(idx); ws.Add(coeffs[i]); }
        }
        return new Taps { Idx = idxs.ToArray(), W = ws.ToArray() };
    }

    // ---------------------------------------------------------------- GridSample

    static Value?[] GridSampleOp(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var grid = inputs.T(1, ctx);
        string mode = ctx.String("mode", ctx.Opset >= 20 ? "linear" : "bilinear");
        mode = mode switch { "bilinear" => "linear", "bicubic" => "cubic", _ => mode };
        if (mode is not ("linear" or "nearest" or "cubic")) throw ctx.Unsupported($"mode '{mode}'");
        string pad = ctx.String("padding_mode", "zeros");
        if (pad is not ("zeros" or "border" or "reflection")) throw ctx.Unsupported($"padding_mode '{pad}'");
        bool align = ctx.Int("align_corners", 0) != 0;
        int nd = x.Rank - 2;
        if (nd < 1) throw ctx.Error("X must have rank >= 3");
        if (grid.Rank != nd + 2 || grid.Shape[^1] != nd || grid.Shape[0] != x.Shape[0])
            throw ctx.Error($"grid {grid.Describe()} does not match X {x.Describe()}");
        if (!DTypes.IsFloat(x.DType) || !DTypes.IsFloat(grid.DType)) throw ctx.Unsupported("non-float inputs");
        long N = x.Shape[0], C = x.Shape[1];
        var dims = x.Shape[2..];
        var outSp = grid.Shape[1..^1];
        long nOut = ShapeUtil.Size(outSp);
        long inSp = ShapeUtil.Size(dims);
        var yShape = new long[] { N, C }.Concat(outSp).ToArray();
        var xd = SpecialHelpers.ToDoubles(x);
        var gd = SpecialHelpers.ToDoubles(grid);
        bool gridF32 = grid.DType != DType.Float64;
        var y = new double[ShapeUtil.Size(yShape)];
        var strides = ShapeUtil.Strides(dims);
        var bmin = new double[nd]; var bmax = new double[nd];
        for (int i = 0; i < nd; i++) { bmin[i] = align ? 0 : -0.5; bmax[i] = align ? dims[i] - 1 : dims[i] - 0.5; }

        Parallel.For(0, N * nOut, CpuThreads.Options, p =>
        {
            long n = p / nOut, o = p % nOut;
            // grid holds (x, y[, z]): its last entry indexes the first spatial axis.
            var xs = new float[nd];
            for (int i = 0; i < nd; i++)
            {
                double g = gd[(n * nOut + o) * nd + (nd - 1 - i)];
                long len = dims[i];
                // Denormalization in f32 as the reference does.
                if (gridF32)
                {
                    float gf = (float)g;
                    xs[i] = align ? (gf + 1f) / 2f * (len - 1) : ((gf + 1f) * len - 1f) / 2f;
                }
                else xs[i] = (float)(align ? (g + 1) / 2.0 * (len - 1) : ((g + 1) * len - 1) / 2.0);
            }
            if (mode == "nearest")
                for (int i = 0; i < nd; i++)
                    xs[i] = nd == 3 ? MathF.Round(xs[i], MidpointRounding.AwayFromZero) : MathF.Round(xs[i], MidpointRounding.ToEven);
            for (int i = 0; i < nd; i++)
            {
                float v = xs[i];
                if (v < bmin[i] || v > bmax[i])
                {
                    if (pad == "border") xs[i] = Math.Clamp(v, 0, dims[i] - 1);
                    else if (pad == "reflection") xs[i] = (float)Reflect(v, bmin[i], bmax[i]);
                }
            }
            // Taps per axis: index (-1 = zero padding) and weight.
            int k = mode == "nearest" ? 1 : mode == "linear" ? 2 : 4;
            var ti = new long[nd, k]; var tw = new double[nd, k];
            for (int i = 0; i < nd; i++)
            {
                float v = xs[i];
                if (mode == "nearest") { ti[i, 0] = PixelIndex((int)v, dims[i], pad, bmin[i], bmax[i]); tw[i, 0] = 1; continue; }
                long x0 = (long)MathF.Floor(v);
                float t = v - x0;
                if (mode == "linear")
                {
                    tw[i, 0] = 1 - t; tw[i, 1] = t;
                    for (int q = 0; q < 2; q++) ti[i, q] = PixelIndex(x0 + q, dims[i], pad, bmin[i], bmax[i]);
                }
                else
                {
                    const float a = -0.75f;
                    float tt = MathF.Abs(t);
                    tw[i, 0] = ((a * (tt + 1) - 5 * a) * (tt + 1) + 8 * a) * (tt + 1) - 4 * a;
                    tw[i, 1] = ((a + 2) * tt - (a + 3)) * tt * tt + 1;
                    tw[i, 2] = ((a + 2) * (1 - tt) - (a + 3)) * (1 - tt) * (1 - tt) + 1;
                    tw[i, 3] = ((a * (2 - tt) - 5 * a) * (2 - tt) + 8 * a) * (2 - tt) - 4 * a;
                    for (int q = 0; q < 4; q++) ti[i, q] = PixelIndex(x0 - 1 + q, dims[i], pad, bmin[i], bmax[i]);
                }
            }
            // Tensor product of the per-axis taps.
            int combos = 1; for (int i = 0; i < nd; i++) combos *= k;
            var offs = new long[combos]; var ws = new double[combos];
            int m = 0;
            for (int c = 0; c < combos; c++)
            {
                long off = 0; double w = 1; int rem = c; bool zero = false;
                for (int i = nd - 1; i >= 0; i--)
                {
                    int q = rem % k; rem /= k;
                    if (ti[i, q] < 0) { zero = true; break; }
                    off += ti[i, q] * strides[i]; w *= tw[i, q];
                }
                if (zero) continue;
                offs[m] = off; ws[m] = w; m++;
            }
            for (long c = 0; c < C; c++)
            {
                long bas = (n * C + c) * inSp;
                double acc = 0;
                for (int q = 0; q < m; q++) acc += ws[q] * xd[bas + offs[q]];
                y[(n * C + c) * nOut + o] = acc;
            }
        });
        return [SpecialHelpers.FromDoubles(y, x.DType, yShape)];
    }

    /// <summary>Reflects x by the nearer border until it lies within [lo, hi].</summary>
    static double Reflect(double x, double lo, double hi)
    {
        double rng = hi - lo;
        if (rng <= 0) return lo;
        if (x < lo)
        {
            double dx = lo - x; long n = (long)(dx / rng); double r = dx - n * rng;
            return n % 2 == 0 ? lo + r : hi - r;
        }
        if (x > hi)
        {
            double dx = x - hi; long n = (long)(dx / rng); double r = dx - n * rng;
            return n % 2 == 0 ? hi - r : lo + r;
        }
        return x;
    }

    static long PixelIndex(long i, long d, string pad, double bmin, double bmax) => pad switch
    {
        "zeros" => i >= 0 && i < d ? i : -1,
        "border" => Math.Clamp(i, 0, d - 1),
        _ => Math.Clamp((long)Reflect(i, bmin, bmax), 0, d - 1),
    };

    // ---------------------------------------------------------------- AffineGrid

    static Value?[] AffineGridOp(NodeContext ctx, Value?[] inputs)
    {
        var theta = inputs.T(0, ctx);
        var size = inputs.T(1, ctx).ToInt64Array();
        bool align = ctx.Int("align_corners", 0) != 0;
        int nd = size.Length - 2;
        if (nd is not (2 or 3)) throw ctx.Error($"size must have 4 or 5 values, got {size.Length}");
        long N = size[0];
        if (theta.Rank != 3 || theta.Shape[0] != N || theta.Shape[1] != nd || theta.Shape[2] != nd + 1)
            throw ctx.Error($"theta {theta.Describe()} does not match size [{string.Join(",", size)}]");
        var th = SpecialHelpers.ToDoubles(theta);
        var sp = size[2..];
        // Base coordinates per spatial axis, normalized to [-1, 1].
        var bases = new double[nd][];
        for (int i = 0; i < nd; i++)
        {
            long len = sp[i];
            bases[i] = new double[len];
            for (long j = 0; j < len; j++)
                bases[i][j] = align ? (len == 1 ? 0 : -1 + j * (2.0 / (len - 1))) : -1 + 1.0 / len + j * (2.0 / len);
        }
        var outShape = new long[] { N }.Concat(sp).Append(nd).ToArray();
        long nsp = ShapeUtil.Size(sp);
        var y = new double[N * nsp * nd];
        var idx = new long[nd];
        var hom = new double[nd + 1];
        for (long n = 0; n < N; n++)
        {
            Array.Clear(idx);
            for (long p = 0; p < nsp; p++)
            {
                // homogeneous point (x, y[, z], 1): x runs along the last spatial axis
                for (int i = 0; i < nd; i++) hom[i] = bases[nd - 1 - i][idx[nd - 1 - i]];
                hom[nd] = 1;
                for (int rr = 0; rr < nd; rr++)
                {
                    double acc = 0;
                    for (int c = 0; c <= nd; c++) acc += th[(n * nd + rr) * (nd + 1) + c] * hom[c];
                    y[(n * nsp + p) * nd + rr] = acc;
                }
                for (int d = nd - 1; d >= 0; d--) { if (++idx[d] < sp[d]) break; idx[d] = 0; }
            }
        }
        return [SpecialHelpers.FromDoubles(y, theta.DType, outShape)];
    }

    // ---------------------------------------------------------------- CenterCropPad

    static Value?[] CenterCropPadOp(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var shape = inputs.T(1, ctx).ToInt64Array();
        int r = x.Rank;
        var axesA = ctx.Ints("axes");
        int[] axes = axesA is null ? Enumerable.Range(0, r).ToArray() : axesA.Select(a => ShapeUtil.Axis(a, r)).ToArray();
        if (shape.Length != axes.Length) throw ctx.Error($"shape has {shape.Length} values, expected {axes.Length}");
        var outShape = (long[])x.Shape.Clone();
        var shift = new long[r]; // input index = output index + shift
        for (int i = 0; i < axes.Length; i++)
        {
            int a = axes[i];
            if (shape[i] < 0) throw ctx.Error("shape must be non-negative");
            outShape[a] = shape[i];
            long inL = x.Shape[a], outL = shape[i];
            // crop: start at (in - out) / 2; pad: the input starts at (out - in) / 2
            shift[a] = inL >= outL ? (inL - outL) / 2 : -((outL - inL) / 2);
        }
        var y = Tensor.Zeros(x.DType, outShape);
        long total = y.Length;
        var map = new int[total];
        var inStr = ShapeUtil.Strides(x.Shape);
        var idx = new long[r];
        for (long o = 0; o < total; o++)
        {
            long off = 0; bool inside = true;
            for (int d = 0; d < r; d++)
            {
                long s = idx[d] + shift[d];
                if (s < 0 || s >= x.Shape[d]) { inside = false; break; }
                off += s * inStr[d];
            }
            map[o] = inside ? (int)off : -1;
            for (int d = r - 1; d >= 0; d--) { if (++idx[d] < outShape[d]) break; idx[d] = 0; }
        }
        SpecialHelpers.Take(x.Data, y.Data, map);
        return [y];
    }
}
