using Tapml.Core;
using static Tapml.Platforms.Cpu.Ops.NewOpsUtil;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Standard ops that ONNX 1.12's node cases do not cover: LpNormalization, MaxRoiPool, DeformConv (2-D),
/// RMSNormalization (23), RotaryEmbedding (23), Swish (24), TensorScatter (24), ImageDecoder (refused).
/// Float math runs in f64 and rounds once to the output type.</summary>
public sealed class NewerOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("LpNormalization", LpNormalization);
        r.Add("MaxRoiPool", MaxRoiPool);
        r.Add("DeformConv", DeformConv, sinceOpset: 19);
        r.Add("RMSNormalization", RMSNormalization, sinceOpset: 23);
        r.Add("RotaryEmbedding", RotaryEmbedding, sinceOpset: 23);
        r.Add("Swish", Swish, sinceOpset: 24);
        r.Add("TensorScatter", TensorScatter, sinceOpset: 24);
        r.Add("ImageDecoder", (ctx, _) => throw ctx.Unsupported("image decoding is not implemented"), sinceOpset: 20);
    }

    // ------------------------------------------------------------------ LpNormalization

    // output = input / Lp_norm(input, axis), p in {1, 2}; a zero norm gives a zero output.
    static Value?[] LpNormalization(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        CheckFloat(ctx, x);
        int axis = ShapeUtil.Axis(ctx.Int("axis", -1), x.Rank);
        long p = ctx.Int("p", 2);
        if (p != 1 && p != 2) throw ctx.Error($"p must be 1 or 2, got {p}");
        var xd = SpecialHelpers.ToDoubles(x);
        var (outer, len, inner) = LinalgHelpers.Split(x.Shape, axis);
        var y = new double[xd.Length];
        LinalgHelpers.For(outer, len * inner, o =>
        {
            for (long i = 0; i < inner; i++)
            {
                long b = o * len * inner + i;
                double norm = 0;
                for (long k = 0; k < len; k++) { double v = xd[b + k * inner]; norm += p == 1 ? Math.Abs(v) : v * v; }
                if (p == 2) norm = Math.Sqrt(norm);
                for (long k = 0; k < len; k++) y[b + k * inner] = norm == 0 ? 0 : xd[b + k * inner] / norm;
            }
        });
        return [SpecialHelpers.FromDoubles(y, x.DType, x.Shape)];
    }

    // ------------------------------------------------------------------ MaxRoiPool

    // Caffe-style ROI max pooling: ROI corners round(coord * spatial_scale) (half away from zero), ROI size
    // max(end - start + 1, 1); bin (ph, pw) spans [floor(ph * bin_h), ceil((ph + 1) * bin_h)) offset by the ROI start
    // and clipped to the image; an empty bin gives 0.
    static Value?[] MaxRoiPool(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var rois = inputs.T(1, ctx);
        CheckFloat(ctx, x);
        if (x.Rank != 4) throw ctx.Error($"X must be 4-D (N, C, H, W), got {x.Describe()}");
        if (rois.Rank != 2 || rois.Shape[1] != 5) throw ctx.Error($"rois must be (num_rois, 5), got {rois.Describe()}");
        var ps = ctx.Ints("pooled_shape") ?? throw ctx.Error("attribute pooled_shape is required");
        if (ps.Length != 2 || ps[0] <= 0 || ps[1] <= 0) throw ctx.Error($"pooled_shape must be two positive ints, got [{string.Join(",", ps)}]");
        double scale = ctx.Float("spatial_scale", 1f);
        int N = (int)x.Shape[0], C = (int)x.Shape[1], H = (int)x.Shape[2], W = (int)x.Shape[3];
        int PH = (int)ps[0], PW = (int)ps[1], R = (int)rois.Shape[0];
        var xd = SpecialHelpers.ToDoubles(x);
        var rd = SpecialHelpers.ToDoubles(rois);
        var y = new double[(long)R * C * PH * PW];
        for (int n = 0; n < R; n++)
        {
            int bi = (int)rd[n * 5];
            if (bi < 0 || bi >= N) throw ctx.Error($"roi {n} has batch index {rd[n * 5]} outside [0, {N})");
            // roundf of a float product, as the reference kernels compute it.
            int Rnd(double v) => (int)MathF.Round((float)v * (float)scale, MidpointRounding.AwayFromZero);
            int x1 = Rnd(rd[n * 5 + 1]), y1 = Rnd(rd[n * 5 + 2]), x2 = Rnd(rd[n * 5 + 3]), y2 = Rnd(rd[n * 5 + 4]);
            int rh = Math.Max(y2 - y1 + 1, 1), rw = Math.Max(x2 - x1 + 1, 1);
            float bh = (float)rh / PH, bw = (float)rw / PW;
            for (int c = 0; c < C; c++)
            {
                long plane = ((long)bi * C + c) * H * W;
                for (int ph = 0; ph < PH; ph++)
                for (int pw = 0; pw < PW; pw++)
                {
                    int hs = Math.Clamp((int)MathF.Floor(ph * bh) + y1, 0, H), he = Math.Clamp((int)MathF.Ceiling((ph + 1) * bh) + y1, 0, H);
                    int ws = Math.Clamp((int)MathF.Floor(pw * bw) + x1, 0, W), we = Math.Clamp((int)MathF.Ceiling((pw + 1) * bw) + x1, 0, W);
                    double m = 0;
                    if (he > hs && we > ws)
                    {
                        m = double.NegativeInfinity;
                        for (int h = hs; h < he; h++)
                            for (int w = ws; w < we; w++) m = Math.Max(m, xd[plane + (long)h * W + w]);
                    }
                    y[(((long)n * C + c) * PH + ph) * PW + pw] = m;
                }
            }
        }
        return [SpecialHelpers.FromDoubles(y, x.DType, [R, C, PH, PW])];
    }

    // ------------------------------------------------------------------ DeformConv

    // 2-D deformable convolution: each kernel tap (i, j) at output (oh, ow) samples X bilinearly at
    // (oh*sh - pad_h + i*dh + offset_h, ow*sw - pad_w + j*dw + offset_w) (zero outside the image), scaled by the
    // mask; the samples of a group are contracted with W like a grouped convolution, plus B.
    static Value?[] DeformConv(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var w = inputs.T(1, ctx);
        var off = inputs.T(2, ctx);
        var bias = inputs.OptT(3);
        var mask = inputs.OptT(4);
        CheckFloat(ctx, x);
        if (x.Rank != 4) throw ctx.Unsupported($"DeformConv on {x.Rank - 2}-D data (2-D only)");
        if (w.Rank != 4) throw ctx.Error($"W must be 4-D, got {w.Describe()}");
        int N = (int)x.Shape[0], C = (int)x.Shape[1], H = (int)x.Shape[2], Wd = (int)x.Shape[3];
        int OC = (int)w.Shape[0];
        long group = ctx.Int("group", 1), og = ctx.Int("offset_group", 1);
        var ks = ctx.Ints("kernel_shape") ?? [w.Shape[2], w.Shape[3]];
        var dil = ctx.Ints("dilations") ?? [1, 1];
        var str = ctx.Ints("strides") ?? [1, 1];
        var pads = ctx.Ints("pads") ?? [0, 0, 0, 0];
        if (ks.Length != 2 || dil.Length != 2 || str.Length != 2 || pads.Length != 4) throw ctx.Error("kernel_shape, dilations, strides need 2 values, pads 4");
        if (ks[0] != w.Shape[2] || ks[1] != w.Shape[3]) throw ctx.Error($"kernel_shape [{ks[0]},{ks[1]}] differs from W {w.Describe()}");
        if (group <= 0 || C != w.Shape[1] * group || OC % group != 0) throw ctx.Error($"X {x.Describe()}, W {w.Describe()} and group {group} are inconsistent");
        if (og <= 0 || C % og != 0) throw ctx.Error($"C={C} is not divisible by offset_group {og}");
        int KH = (int)ks[0], KW = (int)ks[1], K = KH * KW;
        int OH = (int)((H + pads[0] + pads[2] - ((KH - 1) * dil[0] + 1)) / str[0] + 1);
        int OW = (int)((Wd + pads[1] + pads[3] - ((KW - 1) * dil[1] + 1)) / str[1] + 1);
        if (off.Rank != 4 || off.Shape[0] != N || off.Shape[1] != og * K * 2 || off.Shape[2] != OH || off.Shape[3] != OW)
            throw ctx.Error($"offset {off.Describe()} must be ({N}, {og * K * 2}, {OH}, {OW})");
        if (mask is not null && (mask.Rank != 4 || mask.Shape[0] != N || mask.Shape[1] != og * K || mask.Shape[2] != OH || mask.Shape[3] != OW))
            throw ctx.Error($"mask {mask.Describe()} must be ({N}, {og * K}, {OH}, {OW})");
        if (bias is not null && bias.Length != OC) throw ctx.Error($"B {bias.Describe()} must have {OC} elements");
        var xd = SpecialHelpers.ToDoubles(x);
        var wd = SpecialHelpers.ToDoubles(w);
        var od = SpecialHelpers.ToDoubles(off);
        var md = mask is null ? null : SpecialHelpers.ToDoubles(mask);
        var bd = bias is null ? null : SpecialHelpers.ToDoubles(bias);
        int cpg = C / (int)group, ocpg = OC / (int)group, cpog = C / (int)og, P = OH * OW;
        var y = new double[(long)N * OC * P];
        for (int n = 0; n < N; n++)
        {
            // cols[c, k, p]: the masked bilinear sample of channel c for tap k at output position p.
            var cols = new double[(long)C * K * P];
            LinalgHelpers.For(C, (long)K * P * 8, c =>
            {
                int g = c / cpog;
                long plane = ((long)n * C + c) * H * Wd;
                for (int k = 0; k < K; k++)
                {
                    int i = k / KW, j = k % KW;
                    for (int p = 0; p < P; p++)
                    {
                        int oh = p / OW, ow = p % OW;
                        long ob = (((long)n * og + g) * K + k) * 2;
                        double dy = od[(ob * OH + oh) * OW + ow], dx = od[((ob + 1) * OH + oh) * OW + ow];
                        double hy = oh * str[0] - pads[0] + i * dil[0] + dy;
                        double wx = ow * str[1] - pads[1] + j * dil[1] + dx;
                        double v = Bilinear(xd, plane, H, Wd, hy, wx);
                        if (md is not null) v *= md[((((long)n * og + g) * K + k) * OH + oh) * OW + ow];
                        cols[((long)c * K + k) * P + p] = v;
                    }
                }
            });
            LinalgHelpers.For(OC, (long)cpg * K * P, oc =>
            {
                int g = oc / ocpg;
                var yrow = y.AsSpan((int)(((long)n * OC + oc) * P), P);
                yrow.Fill(bd?[oc] ?? 0);
                for (int ci = 0; ci < cpg; ci++)
                for (int k = 0; k < K; k++)
                {
                    double wv = wd[((long)oc * cpg + ci) * K + k];
                    var col = cols.AsSpan((int)(((long)(g * cpg + ci) * K + k) * P), P);
                    for (int p = 0; p < P; p++) yrow[p] += wv * col[p];
                }
            });
        }
        return [SpecialHelpers.FromDoubles(y, x.DType, [N, OC, OH, OW])];
    }

    /// <summary>Bilinear sample at (h, w) of one plane; corners outside the image count as zero.</summary>
    static double Bilinear(double[] x, long plane, int H, int W, double h, double w)
    {
        if (!(h > -1 && h < H && w > -1 && w < W)) return 0;
        int h0 = (int)Math.Floor(h), w0 = (int)Math.Floor(w);
        double lh = h - h0, lw = w - w0, hh = 1 - lh, hw = 1 - lw;
        double V(int r, int c) => r >= 0 && r < H && c >= 0 && c < W ? x[plane + (long)r * W + c] : 0;
        return hh * hw * V(h0, w0) + hh * lw * V(h0, w0 + 1) + lh * hw * V(h0 + 1, w0) + lh * lw * V(h0 + 1, w0 + 1);
    }

    // ------------------------------------------------------------------ RMSNormalization (23)

    // Y = X / sqrt(mean(X^2 over [axis, rank)) + epsilon) * scale; Y has scale's type.
    static Value?[] RMSNormalization(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var scale = inputs.T(1, ctx);
        CheckFloat(ctx, x);
        CheckFloat(ctx, scale);
        long stash = ctx.Int("stash_type", 1);
        if (stash is not (1 or 11 or 10 or 16)) throw ctx.Error($"stash_type {stash} is not a float type");
        int axis = ShapeUtil.Axis(ctx.Int("axis", -1), x.Rank);
        var (y, _) = RmsNorm(ctx, x, scale, axis, ctx.Float("epsilon", 1e-5f));
        return [SpecialHelpers.FromDoubles(y, scale.DType, x.Shape)];
    }

    // ------------------------------------------------------------------ RotaryEmbedding (23)

    // X (B, N, S, H) or (B, S, hidden) with num_heads; cos/sin (max_pos, rot/2) with position_ids (B, S), or
    // (B, S, rot/2) without; interleaved pairs or halves; rotary_embedding_dim 0 = the whole head.
    static Value?[] RotaryEmbedding(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var cos = inputs.T(1, ctx);
        var sin = inputs.T(2, ctx);
        var pos = inputs.OptT(3);
        CheckFloat(ctx, x);
        RopeLayout lay;
        if (x.Rank == 4)
        {
            int n = (int)x.Shape[1], s = (int)x.Shape[2], hs = (int)x.Shape[3];
            lay = new RopeLayout((int)x.Shape[0], s, n, hs, (long)n * s * hs, hs, (long)s * hs);
        }
        else if (x.Rank == 3)
        {
            long nh = ctx.Int("num_heads", 0);
            if (nh <= 0) throw ctx.Error("num_heads is required for a 3-D input");
            int hidden = (int)x.Shape[2];
            if (hidden % nh != 0) throw ctx.Error($"hidden size {hidden} is not a multiple of num_heads {nh}");
            int hs = hidden / (int)nh;
            lay = new RopeLayout((int)x.Shape[0], (int)x.Shape[1], (int)nh, hs, (long)x.Shape[1] * hidden, hidden, hs);
        }
        else throw ctx.Error($"X must be 3-D or 4-D, got {x.Describe()}");
        int rot = (int)ctx.Int("rotary_embedding_dim", 0);
        if (rot == 0) rot = lay.HeadSize;
        if (rot > lay.HeadSize || rot % 2 != 0) throw ctx.Error($"rotary_embedding_dim {rot} must be even and at most the head size {lay.HeadSize}");
        int half = rot / 2;
        if (!ShapeUtil.SameShape(cos.Shape, sin.Shape) || cos.Rank == 0 || cos.Shape[^1] != half)
            throw ctx.Error($"cos_cache {cos.Describe()} / sin_cache {sin.Describe()} must end in rotary_embedding_dim/2 = {half}");
        Func<int, int, long> rowOf;
        if (pos is not null)
        {
            if (cos.Rank != 2) throw ctx.Error($"with position_ids, cos_cache must be 2-D, got {cos.Describe()}");
            if (pos.Rank != 2 || pos.Shape[0] != lay.Batch || pos.Shape[1] != lay.Seq) throw ctx.Error($"position_ids {pos.Describe()} must be ({lay.Batch}, {lay.Seq})");
            var pids = pos.ToInt64Array();
            long max = cos.Shape[0];
            rowOf = (b, s) =>
            {
                long p = pids[b * lay.Seq + s];
                if (p < 0 || p >= max) throw ctx.Error($"position id {p} is outside the cos/sin cache of {max} rows");
                return p * half;
            };
        }
        else
        {
            if (cos.Rank != 3 || cos.Shape[0] != lay.Batch || cos.Shape[1] != lay.Seq) throw ctx.Error($"without position_ids, cos_cache must be ({lay.Batch}, {lay.Seq}, {half}), got {cos.Describe()}");
            rowOf = (b, s) => ((long)b * lay.Seq + s) * half;
        }
        return [Rope(ctx, x, cos, sin, lay, rot, ctx.Int("interleaved", 0) != 0, rowOf)];
    }

    // ------------------------------------------------------------------ Swish (24)

    // Swish(x) = x * sigmoid(alpha * x).
    static Value?[] Swish(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        CheckFloat(ctx, x);
        double alpha = ctx.Float("alpha", 1f);
        var xd = SpecialHelpers.ToDoubles(x);
        for (int i = 0; i < xd.Length; i++) xd[i] = xd[i] / (1.0 + Math.Exp(-alpha * xd[i]));
        return [SpecialHelpers.FromDoubles(xd, x.DType, x.Shape)];
    }

    // ------------------------------------------------------------------ TensorScatter (24)

    // present = past; for each prefix (dims before axis, the first is the batch) and sequence index s:
    // present[prefix, write_indices[batch] + s (mod max_seq when mode = circular)] = update[prefix, s].
    static Value?[] TensorScatter(NodeContext ctx, Value?[] inputs)
    {
        var past = inputs.T(0, ctx);
        var upd = inputs.T(1, ctx);
        var wi = inputs.OptT(2);
        if (upd.DType != past.DType) throw ctx.Error($"update is {DTypes.Name(upd.DType)}, past_cache is {DTypes.Name(past.DType)}");
        int r = past.Rank;
        if (r < 2 || upd.Rank != r) throw ctx.Error($"past_cache {past.Describe()} and update {upd.Describe()} must have the same rank >= 2");
        int axis = ShapeUtil.Axis(ctx.Int("axis", -2), r);
        if (axis == 0) throw ctx.Error("axis cannot be 0 (the batch dimension)");
        for (int d = 0; d < r; d++)
            if (d != axis && past.Shape[d] != upd.Shape[d]) throw ctx.Error($"update {upd.Describe()} differs from past_cache {past.Describe()} outside axis {axis}");
        string mode = ctx.String("mode", "linear");
        if (mode is not ("linear" or "circular")) throw ctx.Error($"mode must be linear or circular, got '{mode}'");
        long maxSeq = past.Shape[axis], seq = upd.Shape[axis];
        if (seq > maxSeq) throw ctx.Error($"update sequence length {seq} exceeds max_sequence_length {maxSeq}");
        long batch = past.Shape[0];
        long[] idx = wi is null ? new long[batch] : wi.ToInt64Array();
        if (idx.Length != batch) throw ctx.Error($"write_indices {wi!.Describe()} must have {batch} elements");
        var y = past.Clone();
        long inner = ShapeUtil.Size(past.Shape.AsSpan(axis + 1));
        long prefixes = ShapeUtil.Size(past.Shape.AsSpan(0, axis));
        long perBatch = prefixes / Math.Max(batch, 1);
        for (long pf = 0; pf < prefixes; pf++)
        {
            long b = pf / Math.Max(perBatch, 1);
            long w0 = idx[b];
            for (long s = 0; s < seq; s++)
            {
                long ci = w0 + s;
                if (mode == "circular") ci = ((ci % maxSeq) + maxSeq) % maxSeq;
                else if (w0 < 0 || ci >= maxSeq) throw ctx.Error($"write index {w0} + update length {seq} exceeds max_sequence_length {maxSeq} (linear mode)");
                Array.Copy(upd.Data, (pf * seq + s) * inner, y.Data, (pf * maxSeq + ci) * inner, inner);
            }
        }
        return [y];
    }
}
