using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>NonMaxSuppression, RoiAlign.</summary>
public sealed class Detection : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("NonMaxSuppression", Nms, sinceOpset: 10);
        r.Add("RoiAlign", RoiAlign, sinceOpset: 10);
    }

    // ---------------------------------------------------------------- NonMaxSuppression

    static Value?[] Nms(NodeContext ctx, Value?[] inputs)
    {
        var boxesT = inputs.T(0, ctx);
        var scoresT = inputs.T(1, ctx);
        if (boxesT.Rank != 3 || boxesT.Shape[2] != 4) throw ctx.Error($"boxes must be [batches, boxes, 4], got {boxesT.Describe()}");
        if (scoresT.Rank != 3 || scoresT.Shape[0] != boxesT.Shape[0] || scoresT.Shape[2] != boxesT.Shape[1])
            throw ctx.Error($"scores {scoresT.Describe()} does not match boxes {boxesT.Describe()}");
        var maxT = inputs.OptT(2); var iouT = inputs.OptT(3); var scoreT = inputs.OptT(4);
        // max_output_boxes_per_class defaults to 0 (no output).
        long maxOut = maxT is null || maxT.Length == 0 ? 0 : Math.Max(maxT.GetInt64(0), 0);
        float iouTh = iouT is null || iouT.Length == 0 ? 0f : (float)iouT.GetDouble(0);
        bool hasScoreTh = scoreT is not null && scoreT.Length > 0;
        float scoreTh = hasScoreTh ? (float)scoreT!.GetDouble(0) : 0f;
        long cpb = ctx.Int("center_point_box", 0);
        if (cpb is not (0 or 1)) throw ctx.Error($"center_point_box must be 0 or 1, got {cpb}");
        // IoU in f32, as the reference computes on float32 data.
        var boxes = TensorConvert.ToF32(boxesT).As<float>();
        var scores = TensorConvert.ToF32(scoresT).As<float>();
        long B = boxesT.Shape[0], N = boxesT.Shape[1], C = scoresT.Shape[1];
        var result = new List<long>();
        var selected = new List<int>();
        for (long b = 0; b < B; b++)
            for (long c = 0; c < C; c++)
            {
                long sOff = (b * C + c) * N;
                var cand = new List<int>();
                for (int i = 0; i < N; i++)
                    if (!hasScoreTh || scores[sOff + i] > scoreTh) cand.Add(i);
                // highest score first; equal scores: lower box index first
                cand.Sort((p, q) =>
                {
                    float sp = scores[sOff + p], sq = scores[sOff + q];
                    return sp > sq ? -1 : sp < sq ? 1 : p.CompareTo(q);
                });
                selected.Clear();
                foreach (int i in cand)
                {
                    if (selected.Count >= maxOut) break;
                    bool keep = true;
                    foreach (int s in selected)
                        if (Suppress(boxes, (b * N + i) * 4, (b * N + s) * 4, cpb, iouTh)) { keep = false; break; }
                    if (!keep) continue;
                    selected.Add(i);
                    result.Add(b); result.Add(c); result.Add(i);
                }
            }
        return [Tensor.FromArray(result.ToArray(), result.Count / 3, 3)];
    }

    static bool Suppress(float[] bx, long p, long q, long cpb, float th)
    {
        float x1min, x1max, x2min, x2max, y1min, y1max, y2min, y2max;
        if (cpb == 0)
        {
            // [y1, x1, y2, x2], corners in either order
            (x1min, x1max) = MinMax(bx[p + 1], bx[p + 3]);
            (x2min, x2max) = MinMax(bx[q + 1], bx[q + 3]);
            (y1min, y1max) = MinMax(bx[p + 0], bx[p + 2]);
            (y2min, y2max) = MinMax(bx[q + 0], bx[q + 2]);
        }
        else
        {
            // [x_center, y_center, width, height]
            float w1 = bx[p + 2] / 2, h1 = bx[p + 3] / 2, w2 = bx[q + 2] / 2, h2 = bx[q + 3] / 2;
            x1min = bx[p] - w1; x1max = bx[p] + w1; x2min = bx[q] - w2; x2max = bx[q] + w2;
            y1min = bx[p + 1] - h1; y1max = bx[p + 1] + h1; y2min = bx[q + 1] - h2; y2max = bx[q + 1] + h2;
        }
        float ixmin = Math.Max(x1min, x2min), ixmax = Math.Min(x1max, x2max);
        if (ixmax <= ixmin) return false;
        float iymin = Math.Max(y1min, y2min), iymax = Math.Min(y1max, y2max);
        if (iymax <= iymin) return false;
        float inter = (ixmax - ixmin) * (iymax - iymin);
        if (inter <= 0) return false;
        float a1 = (x1max - x1min) * (y1max - y1min), a2 = (x2max - x2min) * (y2max - y2min);
        float uni = a1 + a2 - inter;
        if (a1 <= 0 || a2 <= 0 || uni <= 0) return false;
        return inter / uni > th;
    }

    static (float, float) MinMax(float a, float b) => a >= b ? (b, a) : (a, b);

    // ---------------------------------------------------------------- RoiAlign

    static Value?[] RoiAlign(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var roisT = inputs.T(1, ctx);
        var bi = inputs.T(2, ctx).ToInt64Array();
        if (!DTypes.IsFloat(x.DType)) throw ctx.Unsupported($"{DTypes.Name(x.DType)} input");
        if (x.Rank != 4) throw ctx.Error($"X must be [N, C, H, W], got {x.Describe()}");
        if (roisT.Rank != 2 || roisT.Shape[1] != 4 || roisT.Shape[0] != bi.Length)
            throw ctx.Error($"rois {roisT.Describe()} and batch_indices [{bi.Length}] do not match");
        string mode = ctx.String("mode", "avg");
        if (mode is not ("avg" or "max")) throw ctx.Unsupported($"mode '{mode}'");
        long oh = ctx.Int("output_height", 1), ow = ctx.Int("output_width", 1);
        long sr = ctx.Int("sampling_ratio", 0);
        double scale = ctx.Float("spatial_scale", 1f);
        string ctm = ctx.Opset >= 16 ? ctx.String("coordinate_transformation_mode", "half_pixel") : "output_half_pixel";
        if (ctm is not ("half_pixel" or "output_half_pixel")) throw ctx.Unsupported($"coordinate_transformation_mode '{ctm}'");
        bool halfPixel = ctm == "half_pixel";
        long N = x.Shape[0], C = x.Shape[1], H = x.Shape[2], W = x.Shape[3];
        long nR = bi.Length;
        var xd = SpecialHelpers.ToDoubles(x);
        var rois = SpecialHelpers.ToDoubles(roisT);
        var y = new double[nR * C * oh * ow];
        var spec = new RoiSpec(H, W, oh, ow, sr, scale, halfPixel, x.DType == DType.Float64);
        Parallel.For(0, nR, CpuThreads.Options, n =>
        {
            long b = bi[n];
            if (b < 0 || b >= N) throw ctx.Error($"batch index {b} out of range [0, {N})");
            var (pos, wt, gh, gw, count) = Samples(spec, rois.AsSpan((int)n * 4, 4));
            for (long c = 0; c < C; c++)
            {
                long bd = (b * C + c) * H * W;
                int p = 0;
                for (long ph = 0; ph < oh; ph++)
                    for (long pw = 0; pw < ow; pw++)
                    {
                        double acc = 0; bool first = true;
                        for (long s = 0; s < gh * gw; s++, p++)
                        {
                            if (mode == "avg")
                                acc += wt[p * 4] * xd[bd + pos[p * 4]] + wt[p * 4 + 1] * xd[bd + pos[p * 4 + 1]]
                                     + wt[p * 4 + 2] * xd[bd + pos[p * 4 + 2]] + wt[p * 4 + 3] * xd[bd + pos[p * 4 + 3]];
                            else
                            {
                                // max mode takes the largest weighted corner (as the reference and ORT do)
                                double v = Math.Max(Math.Max(wt[p * 4] * xd[bd + pos[p * 4]], wt[p * 4 + 1] * xd[bd + pos[p * 4 + 1]]),
                                    Math.Max(wt[p * 4 + 2] * xd[bd + pos[p * 4 + 2]], wt[p * 4 + 3] * xd[bd + pos[p * 4 + 3]]));
                                acc = first ? v : Math.Max(acc, v); first = false;
                            }
                        }
                        if (mode == "avg") acc /= count;
                        y[((n * C + c) * oh + ph) * ow + pw] = acc;
                    }
            }
        });
        return [SpecialHelpers.FromDoubles(y, x.DType, [nR, C, oh, ow])];
    }

    /// <summary>RoiAlign's sampling geometry (shared with the webgpu kernel).</summary>
    internal sealed record RoiSpec(long H, long W, long OH, long OW, long SamplingRatio, double Scale, bool HalfPixel, bool F64);

    /// <summary>One ROI's bilinear sample points: for each of OH·OW bins gh·gw samples, 4 input positions (within a
    /// [H, W] plane) and weights each; samples outside the input keep weight 0. Averages divide by count.</summary>
    internal static (long[] Pos, double[] Wt, long Gh, long Gw, long Count) Samples(RoiSpec q, ReadOnlySpan<double> roi)
    {
        long H = q.H, W = q.W, oh = q.OH, ow = q.OW, sr = q.SamplingRatio;
        double scale = q.Scale;
        bool halfPixel = q.HalfPixel, f64 = q.F64;
        double R(double v) => f64 ? v : (float)v;
        // ROI geometry and bilinear weights in the input's precision (f32 for f32 data), as the reference
        // and ORT compute them: the sample-grid size ceil(roi / bins) is sensitive to that rounding.
        double off = halfPixel ? 0.5 : 0.0;
        double sw = R(R(roi[0] * scale) - off), sh = R(R(roi[1] * scale) - off);
        double ew = R(R(roi[2] * scale) - off), eh = R(R(roi[3] * scale) - off);
        double rw = R(ew - sw), rh = R(eh - sh);
        if (!halfPixel) { rw = Math.Max(rw, 1.0); rh = Math.Max(rh, 1.0); } // malformed ROIs become 1x1
        double bh = R(rh / oh), bw = R(rw / ow);
        long gh = sr > 0 ? sr : (long)Math.Ceiling(R(rh / oh));
        long gw = sr > 0 ? sr : (long)Math.Ceiling(R(rw / ow));
        long count = Math.Max(gh * gw, 1);
        int np = (int)(oh * ow * gh * gw);
        var pos = new long[np * 4]; var wt = new double[np * 4];
        int pi = 0;
        for (long ph = 0; ph < oh; ph++)
            for (long pw = 0; pw < ow; pw++)
                for (long iy = 0; iy < gh; iy++)
                {
                    double yy = R(R(sh + R(ph * bh)) + R(R((iy + 0.5) * bh) / gh));
                    for (long ix = 0; ix < gw; ix++, pi++)
                    {
                        double xx = R(R(sw + R(pw * bw)) + R(R((ix + 0.5) * bw) / gw));
                        double yv = yy, xv = xx;
                        if (yv < -1.0 || yv > H || xv < -1.0 || xv > W) continue; // outside: weights stay 0
                        yv = Math.Max(yv, 0); xv = Math.Max(xv, 0);
                        long yl = (long)yv, xl = (long)xv, yhi, xhi;
                        if (yl >= H - 1) { yhi = yl = H - 1; yv = yl; } else yhi = yl + 1;
                        if (xl >= W - 1) { xhi = xl = W - 1; xv = xl; } else xhi = xl + 1;
                        double ly = R(yv - yl), lx = R(xv - xl), hy = R(1 - ly), hx = R(1 - lx);
                        pos[pi * 4 + 0] = yl * W + xl; pos[pi * 4 + 1] = yl * W + xhi;
                        pos[pi * 4 + 2] = yhi * W + xl; pos[pi * 4 + 3] = yhi * W + xhi;
                        wt[pi * 4 + 0] = R(hy * hx); wt[pi * 4 + 1] = R(hy * lx); wt[pi * 4 + 2] = R(ly * hx); wt[pi * 4 + 3] = R(ly * lx);
                    }
                }
        return (pos, wt, gh, gw, count);
    }
}
