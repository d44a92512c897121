using Tapml.Core;
using static Tapml.Platforms.Cpu.Ops.NewOpsUtil;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Scaled dot-product attention: ONNX Attention (opset 23+: 3-D/4-D inputs, GQA/MQA, is_causal with
/// bottom-right offset, bool/float attn_mask, softcap, past/present key/value, nonpad_kv_seqlen, sliding window,
/// qk_matmul_output modes) and the com.microsoft contrib MultiHeadAttention and Attention (packed QKV weights).
/// All math runs in f64; outputs round once to the query's type.</summary>
public sealed class AttentionOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Attention", OnnxAttention, sinceOpset: 23);
        r.Add("MultiHeadAttention", MultiHeadAttention, domain: ContribOps.Ms);
        r.Add("Attention", MsAttention, domain: ContribOps.Ms);
    }

    // ------------------------------------------------------------------ core

    /// <summary>One attention problem in (batch, heads, seq, head) layout. Bias is additive, shape
    /// (BiasB, BiasH, Sq, Skv) with BiasB in {1, B} and BiasH in {1, Hq}.</summary>
    sealed class Problem
    {
        public int B, Hq, Hkv, Sq, Skv, D, Dv;
        public double[] Q = [], K = [], V = [];
        /// <summary>ONNX scales Q and K by sqrt(scale) each before the product; contrib ops scale the product.</summary>
        public double Scale;
        public bool SplitScale;
        public double Softcap;
        public double[]? Bias;
        public int BiasB = 1, BiasH = 1;
        /// <summary>ONNX: a row whose bias is all -inf (no attendable key) gives zeros, not NaN.</summary>
        public bool GuardMaskedRows;
        /// <summary>-1: no qk output; else the ONNX qk_matmul_output_mode.</summary>
        public int QkMode = -1;
    }

    static (double[] y, double[]? qk) Attend(Problem p)
    {
        int reps = p.Hq / p.Hkv;
        var y = new double[(long)p.B * p.Hq * p.Sq * p.Dv];
        var qk = p.QkMode >= 0 ? new double[(long)p.B * p.Hq * p.Sq * p.Skv] : null;
        double qs = p.SplitScale ? Math.Sqrt(p.Scale) : 1, post = p.SplitScale ? 1 : p.Scale;
        LinalgHelpers.For(p.B * p.Hq, (long)p.Sq * p.Skv * (p.D + p.Dv), bh =>
        {
            int b = bh / p.Hq, h = bh % p.Hq, kh = h / reps;
            var ks = p.K.AsSpan((int)(((long)b * p.Hkv + kh) * p.Skv * p.D), p.Skv * p.D);
            var vs = p.V.AsSpan((int)(((long)b * p.Hkv + kh) * p.Skv * p.Dv), p.Skv * p.Dv);
            var kScaled = new double[ks.Length];
            TP.Multiply(ks, qs, kScaled);
            var qrow = new double[p.D];
            var s = new double[p.Skv];
            for (int i = 0; i < p.Sq; i++)
            {
                TP.Multiply(p.Q.AsSpan((int)((((long)b * p.Hq + h) * p.Sq + i) * p.D), p.D), qs, qrow);
                for (int j = 0; j < p.Skv; j++) s[j] = TP.Dot(qrow, kScaled.AsSpan(j * p.D, p.D)) * post;
                var qko = qk is null ? Span<double>.Empty : qk.AsSpan((int)((((long)b * p.Hq + h) * p.Sq + i) * p.Skv), p.Skv);
                if (p.QkMode == 0) s.CopyTo(qko);
                if (p.Softcap > 0) for (int j = 0; j < p.Skv; j++) s[j] = p.Softcap * Math.Tanh(s[j] / p.Softcap);
                if (p.QkMode == 1) s.CopyTo(qko);
                bool allMasked = false;
                if (p.Bias is { } bias)
                {
                    long bo = (((long)(p.BiasB == 1 ? 0 : b) * p.BiasH + (p.BiasH == 1 ? 0 : h)) * p.Sq + i) * p.Skv;
                    allMasked = p.Skv > 0;
                    for (int j = 0; j < p.Skv; j++)
                    {
                        double bv = bias[bo + j];
                        if (!double.IsNegativeInfinity(bv)) allMasked = false;
                        s[j] += bv;
                    }
                }
                if (p.QkMode == 2) s.CopyTo(qko);
                var yrow = y.AsSpan((int)((((long)b * p.Hq + h) * p.Sq + i) * p.Dv), p.Dv);
                if (p.Skv == 0 || allMasked && p.GuardMaskedRows)
                {
                    // No attendable key: zero probabilities and a zero output row.
                    if (p.QkMode == 3) qko.Clear();
                    continue;
                }
                double max = double.NegativeInfinity;
                for (int j = 0; j < p.Skv; j++) if (s[j] > max) max = s[j];
                if (double.IsNegativeInfinity(max)) max = 0;
                double sum = 0;
                for (int j = 0; j < p.Skv; j++) { s[j] = Math.Exp(s[j] - max); sum += s[j]; }
                for (int j = 0; j < p.Skv; j++) s[j] /= sum;
                if (p.QkMode == 3) s.CopyTo(qko);
                for (int j = 0; j < p.Skv; j++)
                    if (s[j] != 0) TP.MultiplyAdd(vs.Slice(j * p.Dv, p.Dv), s[j], yrow, yrow);
            }
        });
        return (y, qk);
    }

    /// <summary>(B, S, N*h) as doubles → (B, N, S, h).</summary>
    static double[] SplitHeads(double[] x, int b, int s, int n, int h)
    {
        if (n == 1 || s == 1) return x; // same memory order
        return LinalgHelpers.Permute(x, [b, s, n, h], [0, 2, 1, 3]);
    }

    /// <summary>(B, N, S, h) → (B, S, N*h).</summary>
    static double[] MergeHeads(double[] y, int b, int n, int s, int h)
    {
        if (n == 1 || s == 1) return y;
        return LinalgHelpers.Permute(y, [b, n, s, h], [0, 2, 1, 3]);
    }

    static double[] ConcatSeq(double[] past, double[] cur, int b, int n, int p, int s, int h)
    {
        var r = new double[(long)b * n * (p + s) * h];
        for (long bn = 0; bn < (long)b * n; bn++)
        {
            Array.Copy(past, bn * p * h, r, bn * (p + s) * h, (long)p * h);
            Array.Copy(cur, bn * s * h, r, bn * (p + s) * h + (long)p * h, (long)s * h);
        }
        return r;
    }

    static DType ComputeOut(NodeContext ctx, Tensor q) { CheckFloat(ctx, q); return q.DType; }

    // ------------------------------------------------------------------ ONNX Attention (23, 24, 25)

    static Value?[] OnnxAttention(NodeContext ctx, Value?[] inputs)
    {
        var q = inputs.T(0, ctx);
        var k = inputs.T(1, ctx);
        var v = inputs.T(2, ctx);
        var mask = inputs.OptT(3);
        var pastK = inputs.OptT(4);
        var pastV = inputs.OptT(5);
        var nonpad = ctx.Opset >= 24 ? inputs.OptT(6) : null;
        var dt = ComputeOut(ctx, q);
        if (k.DType != dt) throw ctx.Error($"K is {DTypes.Name(k.DType)}, Q is {DTypes.Name(dt)}");
        if (q.Rank != k.Rank || q.Rank != v.Rank || q.Rank is not (3 or 4)) throw ctx.Error($"Q {q.Describe()}, K {k.Describe()}, V {v.Describe()} must all be 3-D or all 4-D");
        if ((pastK is null) != (pastV is null)) throw ctx.Error("past_key and past_value must be given together");
        if (nonpad is not null && pastK is not null) throw ctx.Error("nonpad_kv_seqlen cannot be combined with past_key/past_value");
        long sp = ctx.Int("softmax_precision", 0);
        if (ctx.Has("softmax_precision"))
        {
            int rank(long t) => t switch { 10 or 16 => 1, 1 => 2, 11 => 3, _ => throw ctx.Error($"softmax_precision {t} is not a float type") };
            int have = dt switch { DType.Float16 or DType.BFloat16 => 1, DType.Float32 => 2, _ => 3 };
            if (rank(sp) < have) throw ctx.Unsupported($"softmax_precision {sp} below the input precision {DTypes.Name(dt)}");
        }
        int mode = (int)ctx.Int("qk_matmul_output_mode", 0);
        if (mode is < 0 or > 3) throw ctx.Error($"qk_matmul_output_mode must be 0..3, got {mode}");
        long left = ctx.Int("left_window_size", -1), right = ctx.Int("right_window_size", -1);
        if (left < -1 || right < -1) throw ctx.Error("window sizes must be -1 or nonnegative");

        int B = (int)q.Shape[0];
        int Hq, Hkv, Sq, Skv, D, Dv;
        double[] qd = SpecialHelpers.ToDoubles(q), kd = SpecialHelpers.ToDoubles(TensorConvert.To(k, dt)), vd = SpecialHelpers.ToDoubles(v);
        bool threeD = q.Rank == 3;
        if (threeD)
        {
            if (!ctx.Has("q_num_heads") || !ctx.Has("kv_num_heads")) throw ctx.Error("3-D inputs need q_num_heads and kv_num_heads");
            Hq = (int)ctx.Int("q_num_heads"); Hkv = (int)ctx.Int("kv_num_heads");
            if (Hq <= 0 || Hkv <= 0 || q.Shape[2] % Hq != 0 || k.Shape[2] % Hkv != 0 || v.Shape[2] % Hkv != 0)
                throw ctx.Error($"hidden sizes of Q {q.Describe()}, K {k.Describe()}, V {v.Describe()} do not divide by the head counts {Hq}/{Hkv}");
            Sq = (int)q.Shape[1]; Skv = (int)k.Shape[1];
            D = (int)(q.Shape[2] / Hq); Dv = (int)(v.Shape[2] / Hkv);
            if (k.Shape[2] / Hkv != D) throw ctx.Error($"K head size {k.Shape[2] / Hkv} differs from Q head size {D}");
            qd = SplitHeads(qd, B, Sq, Hq, D);
            kd = SplitHeads(kd, B, Skv, Hkv, D);
            vd = SplitHeads(vd, B, Skv, Hkv, Dv);
        }
        else
        {
            if (ctx.Opset >= 25 && (ctx.Has("q_num_heads") || ctx.Has("kv_num_heads"))) throw ctx.Error("q_num_heads and kv_num_heads must not be given with 4-D inputs");
            Hq = (int)q.Shape[1]; Hkv = (int)k.Shape[1]; Sq = (int)q.Shape[2]; Skv = (int)k.Shape[2]; D = (int)q.Shape[3]; Dv = (int)v.Shape[3];
            if (k.Shape[3] != D) throw ctx.Error($"K head size {k.Shape[3]} differs from Q head size {D}");
            if (v.Shape[1] != Hkv || v.Shape[2] != Skv) throw ctx.Error($"V {v.Describe()} does not match K {k.Describe()}");
        }
        if (k.Shape[0] != B || v.Shape[0] != B) throw ctx.Error("Q, K and V batch sizes differ");
        if (Hq % Hkv != 0) throw ctx.Error($"q_num_heads {Hq} is not a multiple of kv_num_heads {Hkv}");

        // KV cache inside the op: present = concat(past, new) along the sequence axis.
        int P = 0;
        if (pastK is not null)
        {
            if (pastK.Rank != 4 || pastK.Shape[0] != B || pastK.Shape[1] != Hkv || pastK.Shape[3] != D)
                throw ctx.Error($"past_key {pastK.Describe()} must be ({B}, {Hkv}, past, {D})");
            if (pastV!.Rank != 4 || pastV.Shape[0] != B || pastV.Shape[1] != Hkv || pastV.Shape[2] != pastK.Shape[2] || pastV.Shape[3] != Dv)
                throw ctx.Error($"past_value {pastV.Describe()} must be ({B}, {Hkv}, {pastK.Shape[2]}, {Dv})");
            P = (int)pastK.Shape[2];
            kd = ConcatSeq(SpecialHelpers.ToDoubles(pastK), kd, B, Hkv, P, Skv, D);
            vd = ConcatSeq(SpecialHelpers.ToDoubles(pastV), vd, B, Hkv, P, Skv, Dv);
        }
        int T = P + Skv;

        long[]? np = null;
        if (nonpad is not null)
        {
            np = nonpad.ToInt64Array();
            if (np.Length != B) throw ctx.Error($"nonpad_kv_seqlen {nonpad.Describe()} must have {B} elements");
        }
        bool causal = ctx.Int("is_causal", 0) != 0;
        bool window = left >= 0 || right >= 0;
        // Offset of the query block: keys before it (past length, or nonpad - Sq per batch).
        long Offset(int b) => np is not null ? np[b] - Sq : P;

        var pr = new Problem
        {
            B = B, Hq = Hq, Hkv = Hkv, Sq = Sq, Skv = T, D = D, Dv = Dv, Q = qd, K = kd, V = vd,
            Scale = ctx.Has("scale") ? ctx.Float("scale", 0f) : 1.0 / Math.Sqrt(D), SplitScale = true,
            Softcap = ctx.Float("softcap", 0f), GuardMaskedRows = true,
            QkMode = ctx.Node.Outputs.Length > 3 && ctx.Node.Outputs[3].Length > 0 ? mode : -1,
        };
        if (mask is not null || causal || window || np is not null)
        {
            double[]? md = null;
            bool boolMask = false;
            int mr = 0;
            long[] ms = [];
            long[] mst = [];
            if (mask is not null)
            {
                if (mask.DType == DType.Bool) boolMask = true;
                else if (!DTypes.IsFloat(mask.DType)) throw ctx.Unsupported($"attn_mask of type {DTypes.Name(mask.DType)} (bool or float masks only)");
                mr = mask.Rank;
                if (mr is < 1 or > 4) throw ctx.Error($"attn_mask must have rank 1..4, got {mask.Describe()}");
                ms = mask.Shape;
                long[] full = [B, Hq, Sq, T];
                for (int i = 1; i <= mr; i++)
                {
                    long have = ms[^i], want = full[^i];
                    if (i == 1 ? have > T : have != 1 && have != want) throw ctx.Error($"attn_mask {mask.Describe()} does not broadcast to ({B}, {Hq}, {Sq}, {T})");
                }
                md = boolMask ? mask.As<bool>().Select(x => x ? 0.0 : double.NegativeInfinity).ToArray() : SpecialHelpers.ToDoubles(mask);
                mst = ShapeUtil.Strides(ms);
            }
            int bB = np is not null || mr == 4 && ms[0] != 1 ? B : 1;
            int bH = mr >= 3 && ms[mr - 3] != 1 ? Hq : 1;
            var bias = new double[(long)bB * bH * Sq * T];
            for (int b = 0; b < bB; b++)
            for (int h = 0; h < bH; h++)
            for (int i = 0; i < Sq; i++)
            {
                long o = (((long)b * bH + h) * Sq + i) * T;
                long off = bB == 1 ? P : Offset(b);
                for (int j = 0; j < T; j++)
                {
                    double bv = 0;
                    if (md is not null)
                    {
                        long mlast = ms[^1];
                        if (j >= mlast) bv = double.NegativeInfinity; // a short mask pads with -inf / False
                        else
                        {
                            long mi = j * mst[^1];
                            if (mr >= 2 && ms[^2] != 1) mi += i * mst[^2];
                            if (mr >= 3 && ms[^3] != 1) mi += h * mst[^3];
                            if (mr >= 4 && ms[0] != 1) mi += b * mst[0];
                            bv = md[mi];
                        }
                    }
                    if (causal && j > i + off) bv = double.NegativeInfinity;
                    if (window)
                    {
                        long diff = i + off - j;
                        if (left >= 0 && diff > left || right >= 0 && -diff > right) bv = double.NegativeInfinity;
                    }
                    if (np is not null && j >= np[b]) bv = double.NegativeInfinity;
                    bias[o + j] += bv;
                }
            }
            pr.Bias = bias; pr.BiasB = bB; pr.BiasH = bH;
        }
        var (y, qk) = Attend(pr);
        var yt = threeD
            ? SpecialHelpers.FromDoubles(MergeHeads(y, B, Hq, Sq, Dv), dt, [B, Sq, (long)Hq * Dv])
            : SpecialHelpers.FromDoubles(y, dt, [B, Hq, Sq, Dv]);
        Tensor? pk = null, pv = null;
        if (ctx.Node.Outputs.Length > 1 && ctx.Node.Outputs[1].Length > 0) pk = SpecialHelpers.FromDoubles(kd, k.DType, [B, Hkv, T, D]);
        if (ctx.Node.Outputs.Length > 2 && ctx.Node.Outputs[2].Length > 0) pv = SpecialHelpers.FromDoubles(vd, v.DType, [B, Hkv, T, Dv]);
        var qkt = qk is null ? null : SpecialHelpers.FromDoubles(qk, dt, [B, Hq, Sq, T]);
        return ctx.Outputs(yt, pk, pv, qkt);
    }

    // ------------------------------------------------------------------ contrib masks

    /// <summary>Contrib-op additive mask of shape (B, 1, S, T): mask_filter_value where the raw mask is 0 (2-D (B, T)
    /// or 3-D (B, S, T)), where the key is at or beyond the length (1-D (B)), or (unidirectional) beyond the
    /// query's position; plus attention_bias (B or 1, N or 1, S, T).</summary>
    static (double[]? bias, int bB, int bH) ContribBias(NodeContext ctx, Tensor? mask, Tensor? attnBias, bool causal,
        double filter, int B, int N, int S, int P, int T)
    {
        if (mask is null && attnBias is null && !causal) return (null, 1, 1);
        long[]? mi = null;
        if (mask is not null)
        {
            if (!DTypes.IsInteger(mask.DType) && mask.DType != DType.Bool) throw ctx.Unsupported($"mask of type {DTypes.Name(mask.DType)}");
            bool ok = mask.Rank == 1 && mask.Shape[0] == B || mask.Rank == 2 && mask.Shape[0] == B && mask.Shape[1] == T
                      || mask.Rank == 3 && mask.Shape[0] == B && mask.Shape[1] == S && mask.Shape[2] == T;
            if (!ok) throw ctx.Unsupported($"mask {mask.Describe()} (supported: (B), (B, total), (B, S, total) with B={B}, S={S}, total={T})");
            mi = mask.DType == DType.Bool ? mask.As<bool>().Select(x => x ? 1L : 0L).ToArray() : mask.ToInt64Array();
        }
        int bH = 1, bB = mask is not null ? B : 1;
        double[]? ab = null;
        if (attnBias is not null)
        {
            if (attnBias.Rank != 4 || attnBias.Shape[0] != 1 && attnBias.Shape[0] != B || attnBias.Shape[1] != 1 && attnBias.Shape[1] != N
                || attnBias.Shape[2] != S || attnBias.Shape[3] != T)
                throw ctx.Error($"attention_bias {attnBias.Describe()} must be (B or 1, N or 1, {S}, {T})");
            ab = SpecialHelpers.ToDoubles(attnBias);
            if (attnBias.Shape[0] != 1) bB = B;
            if (attnBias.Shape[1] != 1) bH = N;
        }
        var r = new double[(long)bB * bH * S * T];
        for (int b = 0; b < bB; b++)
        for (int h = 0; h < bH; h++)
        for (int i = 0; i < S; i++)
        for (int j = 0; j < T; j++)
        {
            bool masked = causal && j > i + P;
            if (mi is not null)
                masked |= mask!.Rank switch
                {
                    1 => j >= mi[b],
                    2 => mi[(long)b * T + j] == 0,
                    _ => mi[((long)b * S + i) * T + j] == 0,
                };
            double v = masked ? filter : 0;
            if (ab is not null) v += ab[((((long)(attnBias!.Shape[0] == 1 ? 0 : b) * attnBias.Shape[1] + (attnBias.Shape[1] == 1 ? 0 : h)) * S + i) * T) + j];
            r[(((long)b * bH + h) * S + i) * T + j] = v;
        }
        return (r, bB, bH);
    }

    // ------------------------------------------------------------------ com.microsoft MultiHeadAttention

    // query (B, S, D); key (B, L, D) / value (B, L, Dv), or key/value already split (B, N, L, h); optional bias
    // (D + D + Dv) added to the projections; key_padding_mask; attention_bias; past_key/past_value (B, N, P, h).
    static Value?[] MultiHeadAttention(NodeContext ctx, Value?[] inputs)
    {
        var q = inputs.T(0, ctx);
        var k = inputs.OptT(1);
        var v = inputs.OptT(2);
        var bias = inputs.OptT(3);
        var mask = inputs.OptT(4);
        var ab = inputs.OptT(5);
        var pk = inputs.OptT(6);
        var pvv = inputs.OptT(7);
        var dt = ComputeOut(ctx, q);
        if (inputs.OptT(8) is not null || inputs.OptT(9) is not null) throw ctx.Unsupported("past_sequence_length / cache_indirection (shared-buffer decoding)");
        if (q.Rank != 3) throw ctx.Unsupported($"query {q.Describe()} (packed QKV layouts are not supported; query must be (B, S, D))");
        if (k is null || v is null) throw ctx.Unsupported("packed QKV/KV input (key and value must be given)");
        if ((pk is null) != (pvv is null)) throw ctx.Error("past_key and past_value must be given together");
        int N = (int)ctx.Int("num_heads");
        int B = (int)q.Shape[0], S = (int)q.Shape[1], Dq = (int)q.Shape[2];
        if (N <= 0 || Dq % N != 0) throw ctx.Error($"query hidden size {Dq} is not a multiple of num_heads {N}");
        int h = Dq / N;
        var qd = SpecialHelpers.ToDoubles(q);
        double[]? bd = bias is null ? null : SpecialHelpers.ToDoubles(bias);
        int L, hv;
        double[] kd, vd;
        if (k.Rank == 3 && v.Rank == 3)
        {
            if (k.Shape[0] != B || v.Shape[0] != B || k.Shape[2] != Dq || v.Shape[1] != k.Shape[1] || v.Shape[2] % N != 0)
                throw ctx.Error($"key {k.Describe()} / value {v.Describe()} do not match query {q.Describe()}");
            L = (int)k.Shape[1];
            int Dv = (int)v.Shape[2];
            hv = Dv / N;
            kd = SpecialHelpers.ToDoubles(k);
            vd = SpecialHelpers.ToDoubles(v);
            if (bd is not null)
            {
                if (bd.Length != 2 * Dq + Dv) throw ctx.Error($"bias {bias!.Describe()} must have {2 * Dq + Dv} elements");
                for (int i = 0; i < qd.Length; i++) qd[i] += bd[i % Dq];
                for (int i = 0; i < kd.Length; i++) kd[i] += bd[Dq + i % Dq];
                for (int i = 0; i < vd.Length; i++) vd[i] += bd[2 * Dq + i % Dv];
            }
            kd = SplitHeads(kd, B, L, N, h);
            vd = SplitHeads(vd, B, L, N, hv);
        }
        else if (k.Rank == 4 && v.Rank == 4)
        {
            if (pk is not null) throw ctx.Unsupported("past_key with 4-D (already split) key/value");
            if (k.Shape[0] != B || k.Shape[1] != N || k.Shape[3] != h || v.Shape[0] != B || v.Shape[1] != N || v.Shape[2] != k.Shape[2])
                throw ctx.Error($"key {k.Describe()} / value {v.Describe()} must be (B, N, L, head) matching query {q.Describe()}");
            L = (int)k.Shape[2]; hv = (int)v.Shape[3];
            kd = SpecialHelpers.ToDoubles(k);
            vd = SpecialHelpers.ToDoubles(v);
            if (bd is not null)
            {
                if (bd.Length < Dq) throw ctx.Error($"bias {bias!.Describe()} is too short");
                for (int i = 0; i < qd.Length; i++) qd[i] += bd[i % Dq];
                if (bd.Length > Dq) throw ctx.Unsupported("bias for already-split (4-D) key/value");
            }
        }
        else throw ctx.Unsupported($"key {k.Describe()} / value {v.Describe()} layout (3-D or 4-D pairs only)");
        qd = SplitHeads(qd, B, S, N, h);
        int P = 0;
        if (pk is not null)
        {
            if (pk.Rank != 4 || pk.Shape[0] != B || pk.Shape[1] != N || pk.Shape[3] != h || pvv!.Rank != 4 || pvv.Shape[2] != pk.Shape[2] || pvv.Shape[3] != hv)
                throw ctx.Error($"past_key {pk.Describe()} / past_value {pvv!.Describe()} must be (B, N, past, head)");
            P = (int)pk.Shape[2];
            kd = ConcatSeq(SpecialHelpers.ToDoubles(pk), kd, B, N, P, L, h);
            vd = ConcatSeq(SpecialHelpers.ToDoubles(pvv), vd, B, N, P, L, hv);
        }
        int T = P + L;
        var (mb, bB, bH) = ContribBias(ctx, mask, ab, ctx.Int("unidirectional", 0) != 0, ctx.Float("mask_filter_value", -10000f), B, N, S, P, T);
        var pr = new Problem
        {
            B = B, Hq = N, Hkv = N, Sq = S, Skv = T, D = h, Dv = hv, Q = qd, K = kd, V = vd,
            Scale = ctx.Has("scale") && ctx.Float("scale", 0f) != 0 ? ctx.Float("scale", 0f) : 1.0 / Math.Sqrt(h),
            Bias = mb, BiasB = bB, BiasH = bH,
        };
        var (y, _) = Attend(pr);
        var yt = SpecialHelpers.FromDoubles(MergeHeads(y, B, N, S, hv), dt, [B, S, (long)N * hv]);
        Tensor? ptk = null, ptv = null;
        if (ctx.Node.Outputs.Length > 1 && ctx.Node.Outputs[1].Length > 0) ptk = SpecialHelpers.FromDoubles(kd, dt, [B, N, T, h]);
        if (ctx.Node.Outputs.Length > 2 && ctx.Node.Outputs[2].Length > 0) ptv = SpecialHelpers.FromDoubles(vd, dt, [B, N, T, hv]);
        if (ctx.Node.Outputs.Length > 3 && ctx.Node.Outputs[3].Length > 0) throw ctx.Unsupported("the qk output of MultiHeadAttention");
        return ctx.Outputs(yt, ptk, ptv);
    }

    // ------------------------------------------------------------------ com.microsoft Attention

    // input (B, S, Din) @ weights (Din, D + D + Dv) + bias → Q, K, V; mask_index; past (2, B, N, P, h);
    // attention_bias; unidirectional. Outputs output (B, S, Dv) and present (2, B, N, P + S, h).
    static Value?[] MsAttention(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var w = inputs.T(1, ctx);
        var bias = inputs.OptT(2);
        var mask = inputs.OptT(3);
        var past = inputs.OptT(4);
        var ab = inputs.OptT(5);
        var dt = ComputeOut(ctx, x);
        if (inputs.OptT(6) is not null || ctx.Int("past_present_share_buffer", 0) != 0) throw ctx.Unsupported("past_present_share_buffer (shared-buffer decoding)");
        if (ctx.Int("do_rotary", 0) != 0) throw ctx.Unsupported("do_rotary=1");
        if (x.Rank != 3 || w.Rank != 2 || w.Shape[0] != x.Shape[2]) throw ctx.Error($"input {x.Describe()} and weights {w.Describe()} must be (B, S, Din) and (Din, hidden)");
        int N = (int)ctx.Int("num_heads");
        var hs = ctx.Ints("qkv_hidden_sizes");
        long Dq, Dk, Dv;
        if (hs is not null)
        {
            if (hs.Length != 3) throw ctx.Error("qkv_hidden_sizes must have 3 values");
            (Dq, Dk, Dv) = (hs[0], hs[1], hs[2]);
        }
        else
        {
            if (w.Shape[1] % 3 != 0) throw ctx.Error($"weights {w.Describe()} do not split into 3 equal parts");
            Dq = Dk = Dv = w.Shape[1] / 3;
        }
        if (Dq != Dk || Dq + Dk + Dv != w.Shape[1] || N <= 0 || Dq % N != 0 || Dv % N != 0) throw ctx.Error($"hidden sizes {Dq}/{Dk}/{Dv} do not fit weights {w.Describe()} and num_heads {N}");
        int B = (int)x.Shape[0], S = (int)x.Shape[1], h = (int)(Dq / N), hv = (int)(Dv / N), W3 = (int)w.Shape[1];
        var proj = SpecialHelpers.ToDoubles(MatMulOps.Compute(ctx, x, TensorConvert.To(w, x.DType), MatMulOps.Plan.Make(ctx, x.Shape, w.Shape)));
        if (bias is not null)
        {
            if (bias.Length != W3) throw ctx.Error($"bias {bias.Describe()} must have {W3} elements");
            var bd = SpecialHelpers.ToDoubles(bias);
            for (int i = 0; i < proj.Length; i++) proj[i] += bd[i % W3];
        }
        var qd = new double[(long)B * S * Dq];
        var kd = new double[(long)B * S * Dk];
        var vd = new double[(long)B * S * Dv];
        for (long r = 0; r < (long)B * S; r++)
        {
            Array.Copy(proj, r * W3, qd, r * Dq, Dq);
            Array.Copy(proj, r * W3 + Dq, kd, r * Dk, Dk);
            Array.Copy(proj, r * W3 + Dq + Dk, vd, r * Dv, Dv);
        }
        qd = SplitHeads(qd, B, S, N, h);
        kd = SplitHeads(kd, B, S, N, h);
        vd = SplitHeads(vd, B, S, N, hv);
        int P = 0;
        if (past is not null)
        {
            if (h != hv) throw ctx.Error("past needs equal Q/K/V head sizes");
            if (past.Rank != 5 || past.Shape[0] != 2 || past.Shape[1] != B || past.Shape[2] != N || past.Shape[4] != h)
                throw ctx.Error($"past {past.Describe()} must be (2, {B}, {N}, past, {h})");
            P = (int)past.Shape[3];
            var pd = SpecialHelpers.ToDoubles(past);
            long half = (long)B * N * P * h;
            kd = ConcatSeq(pd[..(int)half], kd, B, N, P, S, h);
            vd = ConcatSeq(pd[(int)half..], vd, B, N, P, S, h);
        }
        int T = P + S;
        var (mb, bB, bH) = ContribBias(ctx, mask, ab, ctx.Int("unidirectional", 0) != 0, ctx.Float("mask_filter_value", -10000f), B, N, S, P, T);
        var pr = new Problem
        {
            B = B, Hq = N, Hkv = N, Sq = S, Skv = T, D = h, Dv = hv, Q = qd, K = kd, V = vd,
            Scale = ctx.Has("scale") && ctx.Float("scale", 0f) != 0 ? ctx.Float("scale", 0f) : 1.0 / Math.Sqrt(h),
            Bias = mb, BiasB = bB, BiasH = bH,
        };
        var (y, _) = Attend(pr);
        var yt = SpecialHelpers.FromDoubles(MergeHeads(y, B, N, S, hv), dt, [B, S, (long)N * hv]);
        Tensor? present = null;
        if (ctx.Node.Outputs.Length > 1 && ctx.Node.Outputs[1].Length > 0)
        {
            var pd = new double[kd.Length + vd.Length];
            kd.CopyTo(pd, 0);
            vd.CopyTo(pd, kd.Length);
            present = SpecialHelpers.FromDoubles(pd, dt, [2, B, N, T, h]);
        }
        return ctx.Outputs(yt, present);
    }
}
