using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms.Cpu.Ops;
using Cell = Tapml.Platforms.Cpu.Ops.RnnHelpers.Cell;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>RNN, GRU, LSTM (one layer; forward, reverse, bidirectional; layout 0/1; activation lists with alpha/beta;
/// clip; sequence_lens; initial states; peepholes; input_forget; linear_before_reset). One dispatch projects the whole
/// sequence (X·Wᵀ + biases, every direction); then one dispatch per time step (two for GRU without
/// linear_before_reset, whose h gate needs r ⊙ Hₜ₋₁ of every unit) computes the recurrent products and gates of both
/// directions, reading the states from one buffer and writing the next to another. States stay on the GPU in f32.</summary>
public static class Recurrent
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "RNN", 1, (g, ctx, ins) => Run(g, ctx, ins, Cell.Rnn), FloatX));
        add(new GpuOp("", "GRU", 1, (g, ctx, ins) => Run(g, ctx, ins, Cell.Gru), FloatX));
        add(new GpuOp("", "LSTM", 1, (g, ctx, ins) => Run(g, ctx, ins, Cell.Lstm), FloatX));
    }

    static string? FloatX(NodeContext ctx, IReadOnlyList<TypeRef?> types)
    {
        foreach (int i in new[] { 0, 1, 2, 3, 5, 6, 7 })
            if (i < types.Count && types[i] is { Kind: TypeKind.Tensor } t && Wgsl.StorageOf(t.ElemType) != GpuStorage.F32)
                return $"{ctx.Node.OpType} input {i} of {DTypes.Name(t.ElemType)}: only float tensors are computed";
        return null;
    }

    // Meta words of a step: the fixed ones, the activations (kind, alpha, beta; 3 per direction and slot) and the
    // sequence lengths (one per batch entry).
    const int ActsAt = 12, MaxActs = 3 * 2, LensAt = ActsAt + 3 * MaxActs;

    static Value?[] Run(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins, Cell cell)
    {
        GpuTensor? Opt(int i) => i < ins.Length ? ins[i] : null;
        var x = GpuOps.In(ins, 0, ctx);
        var w = GpuOps.In(ins, 1, ctx);
        var r = GpuOps.In(ins, 2, ctx);
        GpuTensor? bT = Opt(3), lenT = Opt(4), h0 = Opt(5);
        GpuTensor? c0 = cell == Cell.Lstm ? Opt(6) : null, pT = cell == Cell.Lstm ? Opt(7) : null;

        string direction = ctx.String("direction", "forward");
        int D = direction switch
        {
            "forward" or "reverse" => 1,
            "bidirectional" => 2,
            _ => throw ctx.Error($"direction '{direction}' must be forward, reverse or bidirectional"),
        };
        int layout = (int)ctx.Int("layout", 0);
        if (layout is not (0 or 1)) throw ctx.Error($"layout {layout} must be 0 or 1");
        if (x.Rank != 3 || w.Rank != 3 || r.Rank != 3) throw ctx.Error($"X, W, R must be rank 3, got {x.Describe()}, {w.Describe()}, {r.Describe()}");
        int G = RnnHelpers.Gates(cell), AC = RnnHelpers.ActCount(cell);
        long S = layout == 0 ? x.Shape[0] : x.Shape[1];
        long B = layout == 0 ? x.Shape[1] : x.Shape[0];
        long I = x.Shape[2];
        long H = ctx.Int("hidden_size", r.Shape[2]);
        long GH = G * H;
        if (w.Shape[0] != D || w.Shape[1] != GH || w.Shape[2] != I) throw ctx.Error($"W {w.Describe()} must be [{D},{GH},{I}]");
        if (r.Shape[0] != D || r.Shape[1] != GH || r.Shape[2] != H) throw ctx.Error($"R {r.Describe()} must be [{D},{GH},{H}]");
        if (bT is not null && (bT.Rank != 2 || bT.Shape[0] != D || bT.Shape[1] != 2 * GH)) throw ctx.Error($"B {bT.Describe()} must be [{D},{2 * GH}]");
        if (pT is not null && (pT.Rank != 2 || pT.Shape[0] != D || pT.Shape[1] != 3 * H)) throw ctx.Error($"P {pT.Describe()} must be [{D},{3 * H}]");
        long[] stateShape = layout == 0 ? [D, B, H] : [B, D, H];
        if (h0 is not null && !ShapeUtil.SameShape(h0.Shape, stateShape)) throw ctx.Error($"initial_h {h0.Describe()} must be {ShapeUtil.Format(stateShape)}");
        if (c0 is not null && !ShapeUtil.SameShape(c0.Shape, stateShape)) throw ctx.Error($"initial_c {c0.Describe()} must be {ShapeUtil.Format(stateShape)}");
        var lens = new long[B];
        Array.Fill(lens, S);
        if (lenT is not null)
        {
            var l = g.Ints(lenT);
            if (l.Length != B) throw ctx.Error($"sequence_lens has {l.Length} entries, batch size is {B}");
            for (int b = 0; b < B; b++)
            {
                if (l[b] < 0 || l[b] > S) throw ctx.Error($"sequence_lens[{b}] = {l[b]} is outside [0, {S}]");
                lens[b] = l[b];
            }
        }
        var acts = RnnHelpers.ParseActs(ctx, cell, D);
        bool hasClip = ctx.Has("clip");
        float clip = ctx.Float("clip", 0);
        bool inputForget = cell == Cell.Lstm && ctx.Int("input_forget", 0) != 0;
        bool lbr = cell == Cell.Gru && ctx.Int("linear_before_reset", 0) != 0;

        var made = new List<GpuTensor>();
        GpuTensor Temp(DType t, long[] shape) { var v = g.Empty(t, shape); made.Add(v); return v; }
        try
        {
            // 1. XW[d, t, b, :] = X[t, b]·W[d]ᵀ + Wb[d] + Rb[d] (GRU under linear_before_reset: Rbh is added inside r ⊙ (…)).
            var xw = Temp(DType.Float32, [D, S, B, GH]);
            Project(g, x, w, bT, xw, layout, D, S, B, I, H, GH, cell == Cell.Gru && lbr);

            // 2. States [planes, D, B, H] (h, and c for LSTM), ping-ponged between two buffers.
            int planes = cell == Cell.Lstm ? 2 : 1;
            long dbh = D * B * H;
            long[] planeShape = [planes, D, B, H];
            GpuTensor cur;
            if (h0 is null || (planes == 2 && c0 is null)) { cur = ShapeOps.Fill(g, DType.Float32, planeShape, 0); made.Add(cur); }
            else cur = Temp(DType.Float32, planeShape);
            // Layout 1 keeps states as [B, D, H]: read them as [D, B, H] through strides.
            long[] stateStrides = layout == 0 ? [B * H, H, 1] : [H, D * H, 1];
            long[] dbhStrides = [B * H, H, 1];
            if (h0 is not null) DataMovement.Copy(g, h0, cur, [D, B, H], stateStrides, 0, dbhStrides, 0, "RnnState");
            if (c0 is not null) DataMovement.Copy(g, c0, cur, [D, B, H], stateStrides, 0, dbhStrides, dbh, "RnnState");
            var next = Temp(DType.Float32, planeShape);
            long[] yShape = layout == 0 ? [S, D, B, H] : [B, S, D, H];
            var y = g.Empty(x.DType, yShape);
            var outs = new List<Value?> { y };
            made.Add(y);
            var scratch = cell == Cell.Gru && !lbr ? Temp(DType.Float32, [2, D, B, H]) : null;

            long yT = layout == 0 ? D * B * H : D * H, yD = layout == 0 ? B * H : H, yB = layout == 0 ? H : S * D * H;
            uint reverse = direction == "reverse" ? 1u : D == 2 ? 2u : 0u;
            for (long s = 0; s < S; s++)
            {
                var meta = new Meta();
                meta.Add(dbh); meta.Add(H); meta.Add(B); meta.Add(S); meta.Add(s); meta.Add(reverse);
                meta.Add(hasClip ? 1 : 0); meta.AddFloat(clip); meta.Add(yT); meta.Add(yD); meta.Add(yB); meta.Add(dbh);
                for (int a = 0; a < MaxActs; a++)
                {
                    var act = a < acts.Length ? acts[a] : default;
                    meta.Add((int)act.Kind); meta.AddFloat(act.Alpha); meta.AddFloat(act.Beta);
                }
                foreach (var l in lens) meta.Add(l);
                Step(g, cell, lbr, inputForget, xw, r, cell == Cell.Lstm ? pT : lbr ? bT : null, cur, next, scratch, y, meta, AC, dbh);
                (cur, next) = (next, cur);
            }

            // 3. Y_h (and Y_c) in the node's layout and element type.
            long[] outStrides = layout == 0 ? [B * H, H, 1] : [H, B * H, 1];   // source strides of the output's axes
            for (int p = 0; p < planes; p++)
            {
                var o = g.Empty(x.DType, stateShape);
                made.Add(o);
                DataMovement.Copy(g, cur, o, stateShape, outStrides, p * dbh, ShapeUtil.Strides(stateShape), 0, "RnnState");
                outs.Add(o);
            }
            var result = new Value?[ctx.Node.Outputs.Length];
            for (int i = 0; i < outs.Count; i++)
                if (i < result.Length && ctx.Node.Outputs[i].Length > 0) { result[i] = outs[i]; made.Remove((GpuTensor)outs[i]!); }
            return result;
        }
        finally { foreach (var t in made) g.Free(t); }
    }

    static void Project(WebGpuPlatform g, GpuTensor x, GpuTensor w, GpuTensor? bias, GpuTensor xw, int layout, long D, long S, long B, long I, long H, long GH, bool lbrGru)
    {
        if (xw.Length == 0) return;
        var meta = new Meta();
        meta.Add(xw.Length); meta.Add(GH); meta.Add(B); meta.Add(S); meta.Add(I);
        meta.Add(layout == 0 ? B * I : I); meta.Add(layout == 0 ? I : S * I); meta.Add(H);
        string variant = $"{(int)x.Storage}{(int)w.Storage}{(bias is null ? "-" : ((int)bias.Storage).ToString())}{(lbrGru ? "l" : "")}";
        GpuTensor[] bindings = bias is null ? [x, w, xw] : [x, w, bias, xw];
        g.Launch(new WebGpuPlatform.KernelKey("rnn-proj", variant), () =>
        {
            var k = new Wgsl(g.Workgroup).In("x", x).In("w", w);
            if (bias is not null) k.In("bias", bias);
            k.Out("xw", DType.Float32);
            string addBias = bias is null ? "" : lbrGru
                ? "  let bo = d * 2u * GH;\n  if (q < 2u * md[7]) { acc = acc + (bias(bo + q) + bias(bo + GH + q)); } else { acc = acc + bias(bo + q); }\n"
                : "  let bo = d * 2u * GH;\n  acc = acc + (bias(bo + q) + bias(bo + GH + q));\n";
            return k.Build($$"""
  let GH = md[1];
  let q = i % GH; let r1 = i / GH;
  let b = r1 % md[2]; let r2 = r1 / md[2];
  let t = r2 % md[3]; let d = r2 / md[3];
  let I = md[4];
  let xo = t * md[5] + b * md[6];
  let wo = (d * GH + q) * I;
  var acc: f32 = 0.0;
  for (var k = 0u; k < I; k++) { acc = acc + x(xo + k) * w(wo + k); }
{{addBias}}  xw_st(i, acc);
""");
        }, "RnnProject", bindings, meta, xw.Length);
    }

    /// <summary>ONNX's activation functions by kind (RnnHelpers.ActKind order), alpha and beta from meta word a on.</summary>
    const string Act = """
fn act(a: u32, x: f32) -> f32 {
  let k = md[a]; let al = bits_(md[a + 1u]); let be = bits_(md[a + 2u]);
  if (k == 0u) { return max(x, 0.0); }
  if (k == 1u) { return tanh(clamp(x, -20.0, 20.0)); }
  if (k == 2u) { return 1.0 / (1.0 + exp(-x)); }
  if (k == 3u) { return al * x + be; }
  if (k == 4u) { return select(x, al * x, x < 0.0); }
  if (k == 5u) { return select(0.0, x, x > al); }
  if (k == 6u) { return al * tanh(clamp(be * x, -20.0, 20.0)); }
  if (k == 7u) { return min(max(al * x + be, 0.0), 1.0); }
  if (k == 8u) { return select(x, al * (exp(x) - 1.0), x < 0.0); }
  if (k == 9u) { return x / (1.0 + abs(x)); }
  return max(x, 0.0) + log(1.0 + exp(-abs(x)));
}
fn clip_(x: f32) -> f32 {
  if (md[6] == 0u) { return x; }
  let c = bits_(md[7]);
  return clamp(x, -c, c);
}
""";

    // Shared head of a step thread (d, b, j): coordinates, the batch entry's length, the time index t it computes, and
    // for a finished entry (s ≥ len) the states carried over and Y's row s zeroed (Y is zero past the length).
    static string Head(int G, int AC, bool carry, bool writeY) => $$"""
  let H = md[1]; let B = md[2]; let S = md[3]; let s = md[4];
  let j = i % H; let r1 = i / H; let b = r1 % B; let d = r1 / B;
  let len = md[{{LensAt}}u + b];
  let si = (d * B + b) * H + j;
  let hb = (d * B + b) * H;
  if (s >= len) {
{{(carry ? "    for (var pl = 0u; pl < " + (G == 4 ? 2 : 1) + "u; pl++) { hout_st(pl * md[11] + si, hin(pl * md[11] + si)); }\n" : "")}}{{(writeY ? "    y_st(s * md[8] + d * md[9] + b * md[10] + j, 0.0);\n" : "")}}    return;
  }
  let t = select(s, len - 1u - s, ((md[5] >> d) & 1u) == 1u);
  let xo = ((d * S + t) * B + b) * {{G}}u * H;
  let ro = d * {{G}}u * H * H;
  let a0 = {{ActsAt}}u + (d * {{AC}}u) * 3u;
  let yi = t * md[8] + d * md[9] + b * md[10] + j;

""";

    static void Step(WebGpuPlatform g, Cell cell, bool lbr, bool inputForget, GpuTensor xw, GpuTensor r, GpuTensor? extra, GpuTensor cur, GpuTensor next,
        GpuTensor? scratch, GpuTensor y, Meta meta, int AC, long threads)
    {
        if (threads == 0) return;
        int G = RnnHelpers.Gates(cell);
        string rs = ((int)r.Storage).ToString(), es = extra is null ? "-" : ((int)extra.Storage).ToString();
        if (cell == Cell.Gru && !lbr)
        {
            // Pass A: z, r and r ⊙ Hₜ₋₁ of every unit; pass B: the h gate's product with r ⊙ Hₜ₋₁, and the new state.
            g.Launch(new WebGpuPlatform.KernelKey("gru-a", rs), () => new Wgsl(g.Workgroup).In("xw", xw).In("r", r).In("hin", cur).Out("zr", DType.Float32).Decl(Act)
                .Build(Head(G, AC, carry: false, writeY: false) + """
  var gz = xw(xo + j); var gr = xw(xo + H + j);
  for (var k = 0u; k < H; k++) {
    let hk = hin(hb + k);
    gz = gz + r(ro + j * H + k) * hk;
    gr = gr + r(ro + (H + j) * H + k) * hk;
  }
  let z = act(a0, clip_(gz)); let rr = act(a0, clip_(gr));
  zr_st(si, z);
  zr_st(md[11] + si, rr * hin(si));
"""), "GruGates", [xw, r, cur, scratch!], meta, threads);
            g.Launch(new WebGpuPlatform.KernelKey("gru-b", $"{rs}|{(int)y.DType}"), () => new Wgsl(g.Workgroup).In("xw", xw).In("r", r).In("hin", cur).In("zr", scratch!)
                .Out("hout", DType.Float32).Out("y", y.DType).Decl(Act).Build(Head(G, AC, carry: true, writeY: true) + """
  var gh = xw(xo + 2u * H + j);
  for (var k = 0u; k < H; k++) { gh = gh + r(ro + (2u * H + j) * H + k) * zr(md[11] + hb + k); }
  let hg = act(a0 + 3u, clip_(gh));
  let z = zr(si);
  let h = (1.0 - z) * hg + z * hin(si);
  hout_st(si, h);
  y_st(yi, h);
"""), "GruStep", [xw, r, cur, scratch!, next, y], meta, threads);
            return;
        }
        string body = cell switch
        {
            Cell.Rnn => """
  var gi = xw(xo + j);
  for (var k = 0u; k < H; k++) { gi = gi + r(ro + j * H + k) * hin(hb + k); }
  let h = act(a0, clip_(gi));
  hout_st(si, h);
""",
            // NOTE: gates in ONNX order i, o, f, c; peepholes P = [Pi, Po, Pf].
            Cell.Lstm => $$"""
  var gi = xw(xo + j); var go = xw(xo + H + j); var gf = xw(xo + 2u * H + j); var gc = xw(xo + 3u * H + j);
  for (var k = 0u; k < H; k++) {
    let hk = hin(hb + k);
    gi = gi + r(ro + j * H + k) * hk;
    go = go + r(ro + (H + j) * H + k) * hk;
    gf = gf + r(ro + (2u * H + j) * H + k) * hk;
    gc = gc + r(ro + (3u * H + j) * H + k) * hk;
  }
  let cp = hin(md[11] + si);
{{(extra is null ? "" : "  gi = gi + p(d * 3u * H + j) * cp;\n  gf = gf + p(d * 3u * H + 2u * H + j) * cp;\n")}}  let ai = act(a0, clip_(gi));
  let af = {{(inputForget ? "1.0 - ai" : "act(a0, clip_(gf))")}};
  let c = af * cp + ai * act(a0 + 3u, clip_(gc));
{{(extra is null ? "" : "  go = go + p(d * 3u * H + H + j) * c;\n")}}  let h = act(a0, clip_(go)) * act(a0 + 6u, c);
  hout_st(si, h);
  hout_st(md[11] + si, c);
""",
            // linear_before_reset: ht = g(Xt·Whᵀ + Wbh + rt ⊙ (Ht₋₁·Rhᵀ + Rbh)).
            _ => $$"""
  var gz = xw(xo + j); var gr = xw(xo + H + j); var rh: f32 = 0.0;
  for (var k = 0u; k < H; k++) {
    let hk = hin(hb + k);
    gz = gz + r(ro + j * H + k) * hk;
    gr = gr + r(ro + (H + j) * H + k) * hk;
    rh = rh + r(ro + (2u * H + j) * H + k) * hk;
  }
  let z = act(a0, clip_(gz)); let rr = act(a0, clip_(gr));
{{(extra is null ? "" : "  rh = rh + rb(d * 6u * H + 5u * H + j);\n")}}  let hg = act(a0 + 3u, clip_(xw(xo + 2u * H + j) + rr * rh));
  let h = (1.0 - z) * hg + z * hin(si);
  hout_st(si, h);
""",
        };
        string extraName = cell == Cell.Lstm ? "p" : "rb";
        GpuTensor[] bindings = extra is null ? [xw, r, cur, next, y] : [xw, r, extra, cur, next, y];
        g.Launch(new WebGpuPlatform.KernelKey("rnn-step", $"{(int)cell}|{rs}|{es}|{(inputForget ? 1 : 0)}|{(int)y.DType}"), () =>
        {
            var k = new Wgsl(g.Workgroup).In("xw", xw).In("r", r);
            if (extra is not null) k.In(extraName, extra);
            return k.In("hin", cur).Out("hout", DType.Float32).Out("y", y.DType).Decl(Act)
                .Build(Head(G, AC, carry: true, writeY: true) + body + "  y_st(yi, h);\n");
        }, cell == Cell.Lstm ? "LstmStep" : cell == Cell.Rnn ? "RnnStep" : "GruStep", bindings, meta, threads);
    }
}
