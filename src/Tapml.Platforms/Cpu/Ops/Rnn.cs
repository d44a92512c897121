using System.Numerics;
using System.Runtime.CompilerServices;
using TP = System.Numerics.Tensors.TensorPrimitives;
using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>RNN, GRU, LSTM: one layer, forward/reverse/bidirectional, layout 0/1, activation lists with
/// alpha/beta, clip, sequence_lens, initial states, peepholes (LSTM), linear_before_reset (GRU).
/// f32 and f64 compute in their own type; f16/bf16 compute through f32 and round once.</summary>
public sealed class Rnn : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("RNN", (ctx, x) => RnnHelpers.Run(ctx, x, RnnHelpers.Cell.Rnn));
        r.Add("GRU", (ctx, x) => RnnHelpers.Run(ctx, x, RnnHelpers.Cell.Gru));
        r.Add("LSTM", (ctx, x) => RnnHelpers.Run(ctx, x, RnnHelpers.Cell.Lstm));
    }
}

internal static class RnnHelpers
{
    public enum Cell { Rnn, Gru, Lstm }

    internal enum ActKind { Relu, Tanh, Sigmoid, Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign, Softplus }

    internal readonly record struct Act(ActKind Kind, float Alpha, float Beta);

    internal static int Gates(Cell c) => c switch { Cell.Rnn => 1, Cell.Gru => 3, _ => 4 };
    internal static int ActCount(Cell c) => c switch { Cell.Rnn => 1, Cell.Gru => 2, _ => 3 };

    static string[] DefaultActs(Cell c) => c switch
    {
        Cell.Rnn => ["Tanh"],
        Cell.Gru => ["Sigmoid", "Tanh"],
        _ => ["Sigmoid", "Tanh", "Tanh"],
    };

    /// <summary>Activation list for all directions: alphas/betas are consumed in list order by the functions that
    /// take them (defaults of the matching ONNX operators otherwise).</summary>
    internal static Act[] ParseActs(NodeContext ctx, Cell cell, int numDir)
    {
        int per = ActCount(cell);
        string[] names = ctx.Strings("activations") ?? [];
        if (names.Length == 0)
        {
            var d = DefaultActs(cell);
            names = numDir == 2 ? [.. d, .. d] : d;
        }
        else if (names.Length == per && numDir == 2) names = [.. names, .. names];
        if (names.Length != per * numDir)
            throw ctx.Error($"activations has {names.Length} entries, expected {per * numDir}");
        float[] alphas = ctx.Floats("activation_alpha") ?? [];
        float[] betas = ctx.Floats("activation_beta") ?? [];
        int ai = 0, bi = 0;
        var acts = new Act[names.Length];
        for (int i = 0; i < names.Length; i++)
        {
            ActKind k = names[i].ToLowerInvariant() switch
            {
                "relu" => ActKind.Relu, "tanh" => ActKind.Tanh, "sigmoid" => ActKind.Sigmoid, "affine" => ActKind.Affine,
                "leakyrelu" => ActKind.LeakyRelu, "thresholdedrelu" => ActKind.ThresholdedRelu, "scaledtanh" => ActKind.ScaledTanh,
                "hardsigmoid" => ActKind.HardSigmoid, "elu" => ActKind.Elu, "softsign" => ActKind.Softsign, "softplus" => ActKind.Softplus,
                _ => throw ctx.Unsupported($"activation function '{names[i]}' is not supported"),
            };
            (bool hasA, float da, bool hasB, float db) = k switch
            {
                ActKind.Affine => (true, 1f, true, 0f),
                ActKind.LeakyRelu => (true, 0.01f, false, 0f),
                ActKind.ThresholdedRelu => (true, 1f, false, 0f),
                ActKind.ScaledTanh => (true, 1f, true, 1f),
                ActKind.HardSigmoid => (true, 0.2f, true, 0.5f),
                ActKind.Elu => (true, 1f, false, 0f),
                _ => (false, 0f, false, 0f),
            };
            float a = hasA ? (ai < alphas.Length ? alphas[ai++] : da) : 0;
            float b = hasB ? (bi < betas.Length ? betas[bi++] : db) : 0;
            acts[i] = new Act(k, a, b);
        }
        return acts;
    }

    static void Apply<T>(Act act, Span<T> x) where T : unmanaged, IFloatingPointIeee754<T>
    {
        T alpha = T.CreateChecked(act.Alpha), beta = T.CreateChecked(act.Beta);
        switch (act.Kind)
        {
            case ActKind.Tanh: TP.Tanh<T>(x, x); return;
            case ActKind.Sigmoid: TP.Sigmoid<T>(x, x); return;
            case ActKind.Relu: for (int i = 0; i < x.Length; i++) x[i] = T.Max(x[i], T.Zero); return;
            case ActKind.Affine: for (int i = 0; i < x.Length; i++) x[i] = alpha * x[i] + beta; return;
            case ActKind.LeakyRelu: for (int i = 0; i < x.Length; i++) if (x[i] < T.Zero) x[i] = alpha * x[i]; return;
            case ActKind.ThresholdedRelu: for (int i = 0; i < x.Length; i++) if (!(x[i] > alpha)) x[i] = T.Zero; return;
            case ActKind.ScaledTanh: for (int i = 0; i < x.Length; i++) x[i] = alpha * T.Tanh(beta * x[i]); return;
            case ActKind.HardSigmoid: for (int i = 0; i < x.Length; i++) x[i] = T.Min(T.Max(alpha * x[i] + beta, T.Zero), T.One); return;
            case ActKind.Elu: for (int i = 0; i < x.Length; i++) if (x[i] < T.Zero) x[i] = alpha * (T.Exp(x[i]) - T.One); return;
            case ActKind.Softsign: for (int i = 0; i < x.Length; i++) x[i] = x[i] / (T.One + T.Abs(x[i])); return;
            case ActKind.Softplus:
                // log(1 + e^x), written to stay finite for large x.
                for (int i = 0; i < x.Length; i++) { T v = x[i]; x[i] = T.Max(v, T.Zero) + T.Log(T.One + T.Exp(-T.Abs(v))); }
                return;
        }
    }

    static void Clip<T>(Span<T> x, T clip) where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (int i = 0; i < x.Length; i++) x[i] = T.Clamp(x[i], -clip, clip);
    }

    /// <summary>C[m,n] = beta·C + A[m,k]·B[k,n], row-major, A and B contiguous.</summary>
    static void Gemm<T>(int m, int n, int k, ReadOnlySpan<T> a, ReadOnlySpan<T> b, Span<T> c, bool accumulate) where T : unmanaged, IFloatingPointIeee754<T>
    {
        if (typeof(T) == typeof(float))
        {
            var af = System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(a);
            var bf = System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(b);
            var cf = System.Runtime.InteropServices.MemoryMarshal.Cast<T, float>(c);
            Blas.Sgemm(false, false, m, n, k, 1f, af, k, bf, n, accumulate ? 1f : 0f, cf, n);
            return;
        }
        for (int i = 0; i < m; i++)
        {
            var row = c.Slice(i * n, n);
            if (!accumulate) row.Clear();
            for (int p = 0; p < k; p++) TP.MultiplyAdd<T>(b.Slice(p * n, n), a[i * k + p], row, row);
        }
    }

    /// <summary>[rows, cols] -> [cols, rows].</summary>
    static T[] Transpose<T>(ReadOnlySpan<T> src, int rows, int cols)
    {
        var r = new T[rows * cols];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) r[j * rows + i] = src[i * cols + j];
        return r;
    }

    public static Value?[] Run(NodeContext ctx, Value?[] inputs, Cell cell)
    {
        var x = inputs.T(0, ctx);
        if (!DTypes.IsFloat(x.DType)) throw ctx.Error($"X must be a float tensor, got {x.Describe()}");
        return x.DType == DType.Float64 ? Run<double>(ctx, inputs, cell, DType.Float64) : Run<float>(ctx, inputs, cell, DType.Float32);
    }

    static T[] Data<T>(Tensor t, DType compute) => TensorConvert.To(t, compute).As<T>();

    static Value?[] Run<T>(NodeContext ctx, Value?[] inputs, Cell cell, DType compute) where T : unmanaged, IFloatingPointIeee754<T>
    {
        var xT = inputs.T(0, ctx);
        var wT = inputs.T(1, ctx);
        var rT = inputs.T(2, ctx);
        Tensor? bT = inputs.OptT(3), lenT = inputs.OptT(4), h0T = inputs.OptT(5);
        Tensor? c0T = cell == Cell.Lstm ? inputs.OptT(6) : null, pT = cell == Cell.Lstm ? inputs.OptT(7) : null;
        DType outType = xT.DType;

        string direction = ctx.String("direction", "forward");
        int numDir = direction switch
        {
            "forward" or "reverse" => 1,
            "bidirectional" => 2,
            _ => throw ctx.Error($"direction '{direction}' must be forward, reverse or bidirectional"),
        };
        int layout = (int)ctx.Int("layout", 0);
        if (layout is not (0 or 1)) throw ctx.Error($"layout {layout} must be 0 or 1");
        if (xT.Rank != 3 || wT.Rank != 3 || rT.Rank != 3) throw ctx.Error($"X, W, R must be rank 3, got {xT.Describe()}, {wT.Describe()}, {rT.Describe()}");
        int G = Gates(cell);
        int seq = (int)(layout == 0 ? xT.Shape[0] : xT.Shape[1]);
        int batch = (int)(layout == 0 ? xT.Shape[1] : xT.Shape[0]);
        int inSize = (int)xT.Shape[2];
        int H = (int)ctx.Int("hidden_size", rT.Shape[2]);
        if (wT.Shape[0] != numDir || wT.Shape[1] != G * H || wT.Shape[2] != inSize)
            throw ctx.Error($"W {wT.Describe()} must be [{numDir},{G * H},{inSize}]");
        if (rT.Shape[0] != numDir || rT.Shape[1] != G * H || rT.Shape[2] != H)
            throw ctx.Error($"R {rT.Describe()} must be [{numDir},{G * H},{H}]");
        if (bT is not null && (bT.Rank != 2 || bT.Shape[0] != numDir || bT.Shape[1] != 2 * G * H))
            throw ctx.Error($"B {bT.Describe()} must be [{numDir},{2 * G * H}]");
        if (pT is not null && (pT.Rank != 2 || pT.Shape[0] != numDir || pT.Shape[1] != 3 * H))
            throw ctx.Error($"P {pT.Describe()} must be [{numDir},{3 * H}]");
        long[] stateShape = layout == 0 ? [numDir, batch, H] : [batch, numDir, H];
        if (h0T is not null && !ShapeUtil.SameShape(h0T.Shape, stateShape))
            throw ctx.Error($"initial_h {h0T.Describe()} must be {ShapeUtil.Format(stateShape)}");
        if (c0T is not null && !ShapeUtil.SameShape(c0T.Shape, stateShape))
            throw ctx.Error($"initial_c {c0T.Describe()} must be {ShapeUtil.Format(stateShape)}");

        var lens = new int[batch];
        Array.Fill(lens, seq);
        if (lenT is not null)
        {
            if (lenT.Length != batch) throw ctx.Error($"sequence_lens has {lenT.Length} entries, batch size is {batch}");
            for (int b = 0; b < batch; b++)
            {
                long l = lenT.GetInt64(b);
                if (l < 0 || l > seq) throw ctx.Error($"sequence_lens[{b}] = {l} is outside [0, {seq}]");
                lens[b] = (int)l;
            }
        }
        var acts = ParseActs(ctx, cell, numDir);
        bool hasClip = ctx.Has("clip");
        T clip = T.CreateChecked(ctx.Float("clip", 0));
        bool inputForget = cell == Cell.Lstm && ctx.Int("input_forget", 0) != 0;
        bool lbr = cell == Cell.Gru && ctx.Int("linear_before_reset", 0) != 0;

        // Everything below works in layout 0: X [seq, batch, in], states [dir, batch, H], Y [seq, dir, batch, H].
        T[] X = Data<T>(xT, compute);
        if (layout == 1) X = Permute021(X, batch, seq, inSize);
        T[] W = Data<T>(wT, compute), R = Data<T>(rT, compute);
        T[]? Bv = bT is null ? null : Data<T>(bT, compute);
        T[]? Pv = pT is null ? null : Data<T>(pT, compute);
        T[]? H0 = h0T is null ? null : Data<T>(h0T, compute);
        T[]? C0 = c0T is null ? null : Data<T>(c0T, compute);
        if (layout == 1 && H0 is not null) H0 = Permute021(H0, batch, numDir, H);
        if (layout == 1 && C0 is not null) C0 = Permute021(C0, batch, numDir, H);

        int GH = G * H;
        var Y = new T[(long)seq * numDir * batch * H];
        var Yh = new T[numDir * batch * H];
        var Yc = new T[numDir * batch * H];
        for (int d = 0; d < numDir; d++)
        {
            bool reverse = direction == "reverse" || d == 1;
            var wt = Transpose<T>(W.AsSpan(d * GH * inSize, GH * inSize), GH, inSize); // [in, GH]
            var rt = Transpose<T>(R.AsSpan(d * GH * H, GH * H), GH, H);                // [H, GH]
            // XW = X·W^T + Wb (+ Rb, except GRU's h gate under linear_before_reset, where Rbh sits inside r ⊙ (...)).
            var xw = new T[(long)seq * batch * GH];
            Gemm<T>(seq * batch, GH, inSize, X, wt, xw, false);
            var rbH = new T[H]; // Rbh for GRU (added outside or inside the reset product)
            if (Bv is not null)
            {
                var wb = Bv.AsSpan(d * 2 * GH, GH);
                var rb = Bv.AsSpan(d * 2 * GH + GH, GH);
                var bias = new T[GH];
                TP.Add<T>(wb, rb, bias);
                if (cell == Cell.Gru)
                {
                    rb.Slice(2 * H, H).CopyTo(rbH);
                    wb.Slice(2 * H, H).CopyTo(bias.AsSpan(2 * H, H)); // h gate: Wbh only here, Rbh added below
                }
                for (long row = 0; row < (long)seq * batch; row++) TP.Add<T>(xw.AsSpan((int)(row * GH), GH), bias, xw.AsSpan((int)(row * GH), GH));
            }
            T[]? pi = null, po = null, pf = null;
            if (Pv is not null)
            {
                pi = Pv.AsSpan(d * 3 * H, H).ToArray();
                po = Pv.AsSpan(d * 3 * H + H, H).ToArray();
                pf = Pv.AsSpan(d * 3 * H + 2 * H, H).ToArray();
            }
            Act f = acts[d * ActCount(cell)];
            Act g = ActCount(cell) > 1 ? acts[d * ActCount(cell) + 1] : default;
            Act h = ActCount(cell) > 2 ? acts[d * ActCount(cell) + 2] : default;

            var hs = new T[batch * H];
            var cs = new T[batch * H];
            if (H0 is not null) H0.AsSpan(d * batch * H, batch * H).CopyTo(hs);
            if (C0 is not null) C0.AsSpan(d * batch * H, batch * H).CopyTo(cs);
            var hr = new T[batch * GH];
            var gates = new T[GH];
            var rh = new T[batch * H];   // GRU: r ⊙ H(t-1)
            var rhR = new T[batch * H];  // GRU: (r ⊙ H(t-1))·Rh^T
            var rtZR = cell == Cell.Gru && !lbr ? SliceCols<T>(rt, H, GH, 0, 2 * H) : null;
            var rtH = cell == Cell.Gru && !lbr ? SliceCols<T>(rt, H, GH, 2 * H, H) : null;
            var zs = new T[batch * H];
            var tmp = new T[H];

            for (int s = 0; s < seq; s++)
            {
                if (cell == Cell.Gru && !lbr)
                {
                    // z and r gates use the recurrence on H(t-1); the h gate uses it on r ⊙ H(t-1).
                    Gemm<T>(batch, 2 * H, H, hs, rtZR!, hr.AsSpan(0, batch * 2 * H), false);
                }
                else Gemm<T>(batch, GH, H, hs, rt, hr, false);
                for (int b = 0; b < batch; b++)
                {
                    if (s >= lens[b]) continue;
                    int t = reverse ? lens[b] - 1 - s : s;
                    var gt = gates.AsSpan();
                    xw.AsSpan((t * batch + b) * GH, GH).CopyTo(gt);
                    var hPrev = hs.AsSpan(b * H, H);
                    switch (cell)
                    {
                        case Cell.Rnn:
                        {
                            TP.Add<T>(gt, hr.AsSpan(b * GH, GH), gt);
                            if (hasClip) Clip(gt, clip);
                            Apply(f, gt);
                            gt.CopyTo(hPrev);
                            break;
                        }
                        case Cell.Lstm:
                        {
                            TP.Add<T>(gt, hr.AsSpan(b * GH, GH), gt);
                            var cPrev = cs.AsSpan(b * H, H);
                            Span<T> gi = gt.Slice(0, H), go = gt.Slice(H, H), gf = gt.Slice(2 * H, H), gc = gt.Slice(3 * H, H);
                            if (pi is not null) { TP.MultiplyAdd<T>(pi, cPrev, gi, gi); TP.MultiplyAdd<T>(pf!, cPrev, gf, gf); }
                            if (hasClip) { Clip(gi, clip); Clip(gf, clip); Clip(gc, clip); }
                            Apply(f, gi);
                            if (inputForget) TP.Subtract<T>(T.One, gi, gf); // coupled gates: f = 1 - i
                            else Apply(f, gf);
                            Apply(g, gc);
                            // Ct = ft ⊙ Ct-1 + it ⊙ ct
                            TP.Multiply<T>(gf, cPrev, cPrev);
                            TP.MultiplyAdd<T>(gi, gc, cPrev, cPrev);
                            if (po is not null) TP.MultiplyAdd<T>(po, cPrev, go, go);
                            if (hasClip) Clip(go, clip);
                            Apply(f, go);
                            cPrev.CopyTo(tmp);
                            Apply(h, tmp.AsSpan());
                            TP.Multiply<T>(go, tmp, hPrev);
                            break;
                        }
                        case Cell.Gru:
                        {
                            Span<T> gz = gt.Slice(0, H), gr = gt.Slice(H, H), gh = gt.Slice(2 * H, H);
                            TP.Add<T>(gz, hr.AsSpan(b * (lbr ? GH : 2 * H), H), gz);
                            TP.Add<T>(gr, hr.AsSpan(b * (lbr ? GH : 2 * H) + H, H), gr);
                            if (hasClip) { Clip(gz, clip); Clip(gr, clip); }
                            Apply(f, gz);
                            Apply(f, gr);
                            if (lbr)
                            {
                                // ht = g(Xt·Wh^T + rt ⊙ (Ht-1·Rh^T + Rbh) + Wbh)
                                TP.Add<T>(hr.AsSpan(b * GH + 2 * H, H), rbH, tmp);
                                TP.MultiplyAdd<T>(gr, tmp, gh, gh);
                                if (hasClip) Clip(gh, clip);
                                Apply(g, gh);
                                Finish(gz, gh, hPrev);
                            }
                            else
                            {
                                // h gate needs (r ⊙ Ht-1)·Rh^T: keep z, r, partial h for the batched product below.
                                TP.Multiply<T>(gr, hPrev, rh.AsSpan(b * H, H));
                                gz.CopyTo(zs.AsSpan(b * H, H));
                                gh.CopyTo(hr.AsSpan(b * 2 * H, H)); // reuse: hr rows are no longer needed for b
                            }
                            break;
                        }
                    }
                }
                if (cell == Cell.Gru && !lbr)
                {
                    // ht = g(Xt·Wh^T + (rt ⊙ Ht-1)·Rh^T + Rbh + Wbh); Ht = (1 - zt) ⊙ ht + zt ⊙ Ht-1
                    Gemm<T>(batch, H, H, rh, rtH!, rhR, false);
                    for (int b = 0; b < batch; b++)
                    {
                        if (s >= lens[b]) continue;
                        var gh = hr.AsSpan(b * 2 * H, H);
                        TP.Add<T>(gh, rhR.AsSpan(b * H, H), gh);
                        TP.Add<T>(gh, rbH, gh);
                        if (hasClip) Clip(gh, clip);
                        Apply(g, gh);
                        Finish(zs.AsSpan(b * H, H), gh, hs.AsSpan(b * H, H));
                    }
                }
                for (int b = 0; b < batch; b++)
                {
                    if (s >= lens[b]) continue;
                    int t = reverse ? lens[b] - 1 - s : s;
                    hs.AsSpan(b * H, H).CopyTo(Y.AsSpan((int)((((long)t * numDir + d) * batch + b) * H), H));
                }
            }
            hs.CopyTo(Yh.AsSpan(d * batch * H));
            cs.CopyTo(Yc.AsSpan(d * batch * H));
        }

        Tensor yOut, yhOut, ycOut;
        if (layout == 0)
        {
            yOut = Tensor.FromArray(Y, seq, numDir, batch, H);
            yhOut = Tensor.FromArray(Yh, numDir, batch, H);
            ycOut = Tensor.FromArray(Yc, numDir, batch, H);
        }
        else
        {
            // [seq, dir, batch, H] -> [batch, seq, dir, H]
            var y1 = new T[Y.Length];
            for (int t = 0; t < seq; t++)
                for (int d = 0; d < numDir; d++)
                    for (int b = 0; b < batch; b++)
                        Y.AsSpan((int)((((long)t * numDir + d) * batch + b) * H), H).CopyTo(y1.AsSpan((int)((((long)b * seq + t) * numDir + d) * H), H));
            yOut = Tensor.FromArray(y1, batch, seq, numDir, H);
            yhOut = Tensor.FromArray(Permute021(Yh, numDir, batch, H), batch, numDir, H);
            ycOut = Tensor.FromArray(Permute021(Yc, numDir, batch, H), batch, numDir, H);
        }
        Value?[] outs = cell == Cell.Lstm ? [yOut, yhOut, ycOut] : [yOut, yhOut];
        for (int i = 0; i < outs.Length; i++) outs[i] = TensorConvert.To((Tensor)outs[i]!, outType);
        return ctx.Outputs(outs);
    }

    // Ht = (1 - zt) ⊙ ht + zt ⊙ Ht-1 = ht + zt ⊙ (Ht-1 - ht)
    static void Finish<T>(ReadOnlySpan<T> z, ReadOnlySpan<T> hNew, Span<T> hPrev) where T : unmanaged, IFloatingPointIeee754<T>
    {
        for (int i = 0; i < hPrev.Length; i++) hPrev[i] = (T.One - z[i]) * hNew[i] + z[i] * hPrev[i];
    }

    /// <summary>[a, b, c] -> [b, a, c].</summary>
    static T[] Permute021<T>(T[] src, int a, int b, int c)
    {
        var r = new T[src.Length];
        for (int i = 0; i < a; i++)
            for (int j = 0; j < b; j++)
                Array.Copy(src, ((long)i * b + j) * c, r, ((long)j * a + i) * c, c);
        return r;
    }

    /// <summary>Columns [start, start+count) of a [rows, cols] matrix.</summary>
    static T[] SliceCols<T>(T[] m, int rows, int cols, int start, int count)
    {
        var r = new T[rows * count];
        for (int i = 0; i < rows; i++) Array.Copy(m, (long)i * cols + start, r, (long)i * count, count);
        return r;
    }
}
