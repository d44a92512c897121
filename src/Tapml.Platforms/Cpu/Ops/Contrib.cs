using Tapml.Core;
using Tapml.Ir;
using static Tapml.Platforms.Cpu.Ops.NewOpsUtil;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Microsoft contrib ops (domain "com.microsoft") that ONNX Runtime's transformer optimizer and HF Optimum
/// write into published models: Gelu, FastGelu, BiasGelu, QuickGelu, BiasAdd, SkipLayerNormalization,
/// SimplifiedLayerNormalization (also ONNX-domain opset 1, as ONNX Runtime registers it),
/// SkipSimplifiedLayerNormalization, FusedMatMul, RotaryEmbedding. Semantics follow ONNX Runtime's contrib
/// operator schemas (docs/ContribOperators.md). Element-wise math runs in f64 and rounds once to the output type.</summary>
public sealed class ContribOps : ICpuOpFamily
{
    public const string Ms = "com.microsoft";

    public void Register(CpuOpRegistry r)
    {
        r.Add("Gelu", Gelu, domain: Ms);
        r.Add("BiasGelu", BiasGelu, domain: Ms);
        r.Add("FastGelu", FastGelu, domain: Ms);
        r.Add("QuickGelu", QuickGelu, domain: Ms);
        r.Add("BiasAdd", BiasAdd, domain: Ms);
        r.Add("SkipLayerNormalization", SkipLayerNormalization, domain: Ms);
        r.Add("SkipSimplifiedLayerNormalization", SkipSimplifiedLayerNormalization, domain: Ms);
        r.Add("SimplifiedLayerNormalization", SimplifiedLayerNormalization, domain: Ms);
        // ONNX Runtime registers SimplifiedLayerNormalization in the ONNX domain (opset 1); ONNX has no op of that name.
        r.Add("SimplifiedLayerNormalization", SimplifiedLayerNormalization);
        r.Add("FusedMatMul", FusedMatMul, domain: Ms);
        r.Add("RotaryEmbedding", MsRotaryEmbedding, domain: Ms);
    }

    // ------------------------------------------------------------------ Gelu family

    static double GeluErf(double x) => 0.5 * x * UnaryHelpers.Erfc(-x * 0.70710678118654752);
    static double GeluTanh(double x) => 0.5 * x * (1.0 + Math.Tanh(0.79788456080286536 * (x + 0.044715 * x * x * x)));

    /// <summary>y[i] = f(x[i] + bias[i mod bias.Length]) (bias optional, a 1-D tensor over the last dim).</summary>
    static Tensor BiasMap(NodeContext ctx, Tensor x, Tensor? bias, Func<double, double> f)
    {
        CheckFloat(ctx, x);
        var xd = SpecialHelpers.ToDoubles(x);
        double[]? bd = null;
        if (bias is not null)
        {
            if (bias.DType != x.DType) throw ctx.Error($"bias is {DTypes.Name(bias.DType)}, input is {DTypes.Name(x.DType)}");
            long c = x.Rank == 0 ? 1 : x.Shape[^1];
            if (bias.Length != c) throw ctx.Error($"bias {bias.Describe()} must have {c} elements (the input's last dimension)");
            bd = SpecialHelpers.ToDoubles(bias);
        }
        var y = new double[xd.Length];
        int n = bd?.Length ?? 1;
        LinalgHelpers.For((xd.Length + 4095) / 4096, 4096 * 16, blk =>
        {
            int s = blk * 4096, e = Math.Min(xd.Length, s + 4096);
            for (int i = s; i < e; i++) y[i] = f(bd is null ? xd[i] : xd[i] + bd[i % n]);
        });
        return SpecialHelpers.FromDoubles(y, x.DType, x.Shape);
    }

    // Gelu (com.microsoft): 0.5 x (1 + erf(x / sqrt 2)).
    static Value?[] Gelu(NodeContext ctx, Value?[] inputs) => [BiasMap(ctx, inputs.T(0, ctx), null, GeluErf)];

    // BiasGelu: Gelu(A + B), B a 1-D bias over A's last dim.
    static Value?[] BiasGelu(NodeContext ctx, Value?[] inputs) => [BiasMap(ctx, inputs.T(0, ctx), inputs.T(1, ctx), GeluErf)];

    // FastGelu: tanh approximation 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) of X (+ optional bias).
    static Value?[] FastGelu(NodeContext ctx, Value?[] inputs) => [BiasMap(ctx, inputs.T(0, ctx), inputs.OptT(1), GeluTanh)];

    // QuickGelu: x * sigmoid(alpha x), alpha default 1.702.
    static Value?[] QuickGelu(NodeContext ctx, Value?[] inputs)
    {
        double alpha = ctx.Float("alpha", 1.702f);
        return [BiasMap(ctx, inputs.T(0, ctx), null, x => x / (1.0 + Math.Exp(-alpha * x)))];
    }

    // BiasAdd: Y = X + bias + skip; X and skip (N, S, C), bias (C).
    static Value?[] BiasAdd(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var bias = inputs.T(1, ctx);
        var skip = inputs.T(2, ctx);
        CheckFloat(ctx, x);
        if (x.Rank != 3) throw ctx.Error($"X must be 3-D (N, S, C), got {x.Describe()}");
        if (!ShapeUtil.SameShape(x.Shape, skip.Shape)) throw ctx.Error($"skip {skip.Describe()} must have X's shape {x.Describe()}");
        if (bias.Length != x.Shape[2]) throw ctx.Error($"bias {bias.Describe()} must have {x.Shape[2]} elements");
        var xd = SpecialHelpers.ToDoubles(x);
        var sd = SpecialHelpers.ToDoubles(skip);
        var bd = SpecialHelpers.ToDoubles(bias);
        var y = new double[xd.Length];
        for (int i = 0; i < y.Length; i++) y[i] = xd[i] + bd[i % bd.Length] + sd[i];
        return [SpecialHelpers.FromDoubles(y, x.DType, x.Shape)];
    }

    // ------------------------------------------------------------------ layer norms

    /// <summary>Rows of length h: sum = input + skip (+ bias), then LayerNorm (simplified: RMS norm) over each row.
    /// Returns output, mean, inv_std_var, sum as doubles.</summary>
    static (double[] y, double[] mean, double[] inv, double[] sum) SkipNorm(NodeContext ctx, Tensor input, Tensor? skip,
        Tensor gamma, Tensor? beta, Tensor? bias, double eps, bool simplified)
    {
        CheckFloat(ctx, input);
        if (input.Rank < 1) throw ctx.Error("input must have rank >= 1");
        long h = input.Shape[^1];
        var x = SpecialHelpers.ToDoubles(input);
        int rows = h == 0 ? 0 : checked((int)(x.Length / h));
        int hh = (int)h;
        if (gamma.Length != h) throw ctx.Error($"gamma {gamma.Describe()} must have {h} elements");
        if (beta is not null && beta.Length != h) throw ctx.Error($"beta {beta.Describe()} must have {h} elements");
        if (bias is not null && bias.Length != h) throw ctx.Error($"bias {bias.Describe()} must have {h} elements");
        double[]? s = null;
        if (skip is not null)
        {
            // skip is input-shaped, or broadcasts over the leading dims ((1, S, H) or (S, H) against (B, S, H)).
            if (skip.Rank < 1 || skip.Shape[^1] != h || skip.Length == 0 || x.Length % skip.Length != 0
                || skip.Rank > input.Rank || !input.Shape.AsSpan(input.Rank - skip.Rank + 1).SequenceEqual(skip.Shape.AsSpan(1)) && skip.Rank > 1)
                throw ctx.Error($"skip {skip.Describe()} does not fit input {input.Describe()}");
            s = SpecialHelpers.ToDoubles(skip);
        }
        var g = SpecialHelpers.ToDoubles(gamma);
        var b = beta is null ? null : SpecialHelpers.ToDoubles(beta);
        var bi = bias is null ? null : SpecialHelpers.ToDoubles(bias);
        var sum = new double[x.Length];
        var y = new double[x.Length];
        var mean = new double[rows];
        var inv = new double[rows];
        LinalgHelpers.For(rows, h * 8, r =>
        {
            int o = r * hh;
            var row = sum.AsSpan(o, hh);
            for (int j = 0; j < hh; j++)
            {
                double v = x[o + j];
                if (s is not null) v += s[(o + j) % s.Length];
                if (bi is not null) v += bi[j];
                row[j] = v;
            }
            double m = 0;
            if (!simplified) { m = TP.Sum<double>(row) / hh; }
            double var = 0;
            for (int j = 0; j < hh; j++) { double d = row[j] - m; var += d * d; }
            var /= hh;
            double iv = 1.0 / Math.Sqrt(var + eps);
            mean[r] = m;
            inv[r] = iv;
            for (int j = 0; j < hh; j++) y[o + j] = (row[j] - m) * iv * g[j] + (b is null ? 0 : b[j]);
        });
        return (y, mean, inv, sum);
    }

    static long[] StatShape(long[] shape, int axis)
    {
        var r = (long[])shape.Clone();
        for (int i = axis; i < r.Length; i++) r[i] = 1;
        return r;
    }

    // SkipLayerNormalization: sum = input + skip + bias; output = LayerNorm(sum) * gamma + beta over the last dim.
    // Outputs: output, mean, inv_std_var (shape input.shape[:-1] + [1]), input_skip_bias_sum.
    static Value?[] SkipLayerNormalization(NodeContext ctx, Value?[] inputs)
    {
        var input = inputs.T(0, ctx);
        double eps = ctx.Float("epsilon", 1e-12f);
        var (y, mean, inv, sum) = SkipNorm(ctx, input, inputs.T(1, ctx), inputs.T(2, ctx), inputs.OptT(3), inputs.OptT(4), eps, false);
        var st = StatShape(input.Shape, input.Rank - 1);
        // The saved statistics are f32 for f16 inputs in ONNX Runtime's schema (U); keep the input type otherwise.
        var statType = input.DType == DType.Float64 ? DType.Float64 : DType.Float32;
        return ctx.Outputs(SpecialHelpers.FromDoubles(y, input.DType, input.Shape),
            SpecialHelpers.FromDoubles(mean, statType, st), SpecialHelpers.FromDoubles(inv, statType, st),
            SpecialHelpers.FromDoubles(sum, input.DType, input.Shape));
    }

    // SkipSimplifiedLayerNormalization: sum = input + skip + bias; output = sum / sqrt(mean(sum^2) + eps) * gamma.
    static Value?[] SkipSimplifiedLayerNormalization(NodeContext ctx, Value?[] inputs)
    {
        var input = inputs.T(0, ctx);
        if (ctx.Node.Outputs.Length > 1 && ctx.Node.Outputs[1].Length > 0)
            throw ctx.Unsupported("the mean output of SkipSimplifiedLayerNormalization (RMS norm has no mean)");
        double eps = ctx.Float("epsilon", 1e-12f);
        var (y, _, inv, sum) = SkipNorm(ctx, input, inputs.T(1, ctx), inputs.T(2, ctx), null, inputs.OptT(3), eps, true);
        var st = StatShape(input.Shape, input.Rank - 1);
        var statType = input.DType == DType.Float64 ? DType.Float64 : DType.Float32;
        return ctx.Outputs(SpecialHelpers.FromDoubles(y, input.DType, input.Shape), null,
            SpecialHelpers.FromDoubles(inv, statType, st), SpecialHelpers.FromDoubles(sum, input.DType, input.Shape));
    }

    // SimplifiedLayerNormalization (RMS norm): Y = X / sqrt(mean(X^2 over [axis, rank)) + epsilon) * scale;
    // optional output inv_std_var has shape X.shape[:axis] + [1]*(rank-axis).
    static Value?[] SimplifiedLayerNormalization(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var scale = inputs.T(1, ctx);
        CheckFloat(ctx, x);
        int axis = ShapeUtil.Axis(ctx.Int("axis", -1), x.Rank);
        double eps = ctx.Float("epsilon", 1e-5f);
        long n = ShapeUtil.Size(x.Shape.AsSpan(axis));
        var (y, inv) = RmsNorm(ctx, x, scale, axis, eps);
        var statType = ctx.Int("stash_type", 1) == 11 || x.DType == DType.Float64 ? DType.Float64 : DType.Float32;
        return ctx.Outputs(SpecialHelpers.FromDoubles(y, x.DType, x.Shape), SpecialHelpers.FromDoubles(inv, statType, StatShape(x.Shape, axis)));
    }

    // ------------------------------------------------------------------ FusedMatMul

    // Y = alpha * op(A) @ op(B). transBatchA/B move the leading (batch) dim of a rank-r operand to position r-2
    // (perm [1, ..., r-2, 0, r-1]); transA/transB then swap the last two dims. Rank-1 operands ignore transA/B.
    static Value?[] FusedMatMul(NodeContext ctx, Value?[] inputs)
    {
        var a = inputs.T(0, ctx);
        var b = inputs.T(1, ctx);
        CheckFloat(ctx, a);
        if (a.DType != b.DType) throw ctx.Error($"A is {DTypes.Name(a.DType)}, B is {DTypes.Name(b.DType)}");
        double alpha = ctx.Float("alpha", 1f);
        a = Arrange(ctx, a, ctx.Int("transA", 0) != 0, ctx.Int("transBatchA", 0) != 0, "A");
        b = Arrange(ctx, b, ctx.Int("transB", 0) != 0, ctx.Int("transBatchB", 0) != 0, "B");
        var p = MatMulOps.Plan.Make(ctx, a.Shape, b.Shape);
        var y = MatMulOps.Compute(ctx, a, b, p);
        if (alpha == 1) return [y];
        var yd = SpecialHelpers.ToDoubles(y);
        for (int i = 0; i < yd.Length; i++) yd[i] *= alpha;
        return [SpecialHelpers.FromDoubles(yd, y.DType, y.Shape)];
    }

    static Tensor Arrange(NodeContext ctx, Tensor t, bool trans, bool transBatch, string name)
    {
        int r = t.Rank;
        if (r == 0) throw ctx.Error($"{name} must have rank >= 1");
        var perm = Enumerable.Range(0, r).ToArray();
        if (transBatch)
        {
            if (r < 3) throw ctx.Error($"transBatch{name} needs rank >= 3, {name} is {t.Describe()}");
            perm = [.. Enumerable.Range(1, r - 2), 0, r - 1];
        }
        if (trans && r >= 2) (perm[r - 2], perm[r - 1]) = (perm[r - 1], perm[r - 2]);
        return PermuteTensor(t, perm);
    }

    // ------------------------------------------------------------------ RotaryEmbedding (com.microsoft)

    // Inputs: input (B, S, hidden) or (B, N, S, head), position_ids ((1): offset, positions offset + s; or (B, S)),
    // cos_cache / sin_cache (max_pos, rot/2). Attributes interleaved, num_heads, rotary_embedding_dim, scale,
    // is_packed_batching.
    static Value?[] MsRotaryEmbedding(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var pos = inputs.T(1, ctx);
        var cos = inputs.T(2, ctx);
        var sin = inputs.T(3, ctx);
        CheckFloat(ctx, x);
        if (ctx.Int("is_packed_batching", 0) != 0) throw ctx.Unsupported("is_packed_batching=1 (ragged batches)");
        if (ctx.Has("scale") && ctx.Float("scale", 1f) != 1f) throw ctx.Unsupported("scale other than 1 (ONNX Runtime's kernels ignore it)");
        if (cos.Rank != 2 || !ShapeUtil.SameShape(cos.Shape, sin.Shape)) throw ctx.Error($"cos_cache {cos.Describe()} and sin_cache {sin.Describe()} must be equal 2-D shapes");
        int half = (int)cos.Shape[1];
        int rot = (int)ctx.Int("rotary_embedding_dim", 0);
        int numHeads = (int)ctx.Int("num_heads", 0);
        RopeLayout lay;
        if (x.Rank == 3)
        {
            int hidden = (int)x.Shape[2];
            int headSize = numHeads > 0 ? hidden / Math.Max(numHeads, 1) : rot > 0 ? throw ctx.Error("rotary_embedding_dim needs num_heads") : 2 * half;
            if (headSize == 0 || hidden % headSize != 0) throw ctx.Error($"hidden size {hidden} is not a multiple of the head size {headSize}");
            int n = hidden / headSize;
            lay = new RopeLayout((int)x.Shape[0], (int)x.Shape[1], n, headSize, (long)x.Shape[1] * hidden, hidden, headSize);
        }
        else if (x.Rank == 4)
        {
            int n = (int)x.Shape[1], s = (int)x.Shape[2], hs = (int)x.Shape[3];
            lay = new RopeLayout((int)x.Shape[0], s, n, hs, (long)n * s * hs, hs, (long)s * hs);
        }
        else throw ctx.Error($"input must be 3-D or 4-D, got {x.Describe()}");
        if (rot == 0) rot = lay.HeadSize;
        if (rot > lay.HeadSize || rot % 2 != 0 || half != rot / 2) throw ctx.Error($"cos_cache {cos.Describe()} does not match rotary_embedding_dim {rot} (head size {lay.HeadSize})");
        var pids = pos.ToInt64Array();
        long maxPos = cos.Shape[0];
        Func<int, int, long> rowOf;
        if (pids.Length == 1 && pos.Rank <= 1) { long p0 = pids[0]; rowOf = (b, s) => p0 + s; }
        else if (pos.Rank == 2 && pos.Shape[0] == lay.Batch && pos.Shape[1] == lay.Seq) rowOf = (b, s) => pids[b * lay.Seq + s];
        else throw ctx.Error($"position_ids {pos.Describe()} must be (1) or (batch, sequence) = ({lay.Batch}, {lay.Seq})");
        return [Rope(ctx, x, cos, sin, lay, rot, ctx.Int("interleaved", 0) != 0, (b, s) =>
        {
            long p = rowOf(b, s);
            if (p < 0 || p >= maxPos) throw ctx.Error($"position id {p} is outside the cos/sin cache of {maxPos} rows");
            return p * half;
        })];
    }
}

/// <summary>Layout of a rotary-embedding input: (batch, seq, heads, head) with element strides of batch, seq, head.</summary>
internal readonly record struct RopeLayout(int Batch, int Seq, int Heads, int HeadSize, long BStride, long SStride, long NStride);

/// <summary>Shared helpers of the newer-ops families (NewerOps, Contrib, Attention).</summary>
internal static class NewOpsUtil
{
    public static void CheckFloat(NodeContext ctx, Tensor x)
    {
        if (!DTypes.IsFloat(x.DType)) throw ctx.Unsupported($"{ctx.Node.OpType} on {DTypes.Name(x.DType)} (float types only)");
    }

    public static Tensor PermuteTensor(Tensor t, int[] perm)
    {
        bool id = true;
        for (int i = 0; i < perm.Length; i++) if (perm[i] != i) id = false;
        if (id) return t;
        var shape = perm.Select(p => t.Shape[p]).ToArray();
        Array data = t.DType switch
        {
            DType.Float32 => LinalgHelpers.Permute(t.As<float>(), t.Shape, perm),
            DType.Float64 => LinalgHelpers.Permute(t.As<double>(), t.Shape, perm),
            DType.Float16 => LinalgHelpers.Permute(t.As<Half>(), t.Shape, perm),
            DType.BFloat16 => LinalgHelpers.Permute(t.As<BFloat16>(), t.Shape, perm),
            _ => throw new TapmlException($"permute of {DTypes.Name(t.DType)} is not supported here"),
        };
        return new Tensor(t.DType, shape, data);
    }

    /// <summary>Expands <paramref name="src"/> (shape <paramref name="srcShape"/>, unidirectionally broadcastable) to
    /// <paramref name="dst"/> shape.</summary>
    public static double[] BroadcastTo(NodeContext ctx, double[] src, long[] srcShape, long[] dst, string what)
    {
        if (srcShape.Length > dst.Length) throw ctx.Error($"{what} {ShapeUtil.Format(srcShape)} does not broadcast to {ShapeUtil.Format(dst)}");
        for (int i = 0; i < srcShape.Length; i++)
        {
            long s = srcShape[^(i + 1)], d = dst[^(i + 1)];
            if (s != d && s != 1) throw ctx.Error($"{what} {ShapeUtil.Format(srcShape)} does not broadcast to {ShapeUtil.Format(dst)}");
        }
        long n = ShapeUtil.Size(dst);
        if (src.LongLength == n) return src;
        var st = ShapeUtil.BroadcastStrides(srcShape, dst);
        var r = new double[n];
        var idx = new long[dst.Length];
        for (long i = 0; i < n; i++)
        {
            long off = 0;
            for (int d = 0; d < dst.Length; d++) off += idx[d] * st[d];
            r[i] = src[off];
            for (int d = dst.Length - 1; d >= 0; d--) { if (++idx[d] < dst[d]) break; idx[d] = 0; }
        }
        return r;
    }

    /// <summary>RMS normalization over dims [axis, rank): returns Y = X / sqrt(mean(X^2) + eps) * scale (scale
    /// broadcast to the normalized shape or to X's shape) and the per-row 1 / sqrt(mean(X^2) + eps).</summary>
    public static (double[] y, double[] inv) RmsNorm(NodeContext ctx, Tensor x, Tensor scale, int axis, double eps)
    {
        var xd = SpecialHelpers.ToDoubles(x);
        long n = ShapeUtil.Size(x.Shape.AsSpan(axis));
        var normShape = x.Shape[axis..];
        var sd = SpecialHelpers.ToDoubles(scale);
        bool perRow = scale.Rank <= normShape.Length;
        var sc = perRow ? BroadcastTo(ctx, sd, scale.Shape, normShape, "scale") : BroadcastTo(ctx, sd, scale.Shape, x.Shape, "scale");
        int rows = n == 0 ? 0 : checked((int)(xd.Length / n));
        int nn = (int)n;
        var y = new double[xd.Length];
        var inv = new double[rows];
        LinalgHelpers.For(rows, n * 4, r =>
        {
            int o = r * nn;
            double ss = TP.SumOfSquares<double>(xd.AsSpan(o, nn));
            double iv = 1.0 / Math.Sqrt(ss / nn + eps);
            inv[r] = iv;
            for (int j = 0; j < nn; j++) y[o + j] = xd[o + j] * iv * sc[perRow ? j : o + j];
        });
        return (y, inv);
    }

    /// <summary>Rotary embedding on a copy of x: each head's first <paramref name="rot"/> values rotate by the cos/sin
    /// row <paramref name="rowOf"/>(b, s) (an element offset into the caches, rows of rot/2); interleaved pairs
    /// (2i, 2i+1), otherwise halves (i, i + rot/2). The rest of the head is copied.</summary>
    public static Tensor Rope(NodeContext ctx, Tensor x, Tensor cosT, Tensor sinT, RopeLayout l, int rot, bool interleaved, Func<int, int, long> rowOf)
    {
        var xd = SpecialHelpers.ToDoubles(x);
        var cos = SpecialHelpers.ToDoubles(cosT);
        var sin = SpecialHelpers.ToDoubles(sinT);
        var y = (double[])xd.Clone();
        int half = rot / 2;
        var rows = new long[l.Batch * l.Seq];
        for (int b = 0; b < l.Batch; b++) for (int s = 0; s < l.Seq; s++) rows[b * l.Seq + s] = rowOf(b, s);
        LinalgHelpers.For(l.Batch * l.Seq, (long)l.Heads * rot, bs =>
        {
            int b = bs / l.Seq, s = bs % l.Seq;
            long c0 = rows[bs];
            if (c0 < 0 || c0 + half > cos.Length) throw ctx.Error("position outside the cos/sin cache");
            for (int h = 0; h < l.Heads; h++)
            {
                long o = b * l.BStride + s * l.SStride + h * l.NStride;
                for (int i = 0; i < half; i++)
                {
                    long i1 = interleaved ? o + 2 * i : o + i, i2 = interleaved ? o + 2 * i + 1 : o + i + half;
                    double x1 = xd[i1], x2 = xd[i2], c = cos[c0 + i], sn = sin[c0 + i];
                    y[i1] = c * x1 - sn * x2;
                    y[i2] = sn * x1 + c * x2;
                }
            }
        });
        return SpecialHelpers.FromDoubles(y, x.DType, x.Shape);
    }
}
