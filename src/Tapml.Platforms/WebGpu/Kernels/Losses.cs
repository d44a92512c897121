using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss: input [N, C, d1..dk], target [N, d1..dk], optional
/// per-class weight [C]. One thread per (n, d) picks −logp[n, target, d]·w[target] (0 with weight 0 at ignore_index);
/// sum/mean reductions add those (and the applied weights) in one workgroup, in f32.</summary>
public static class Losses
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "NegativeLogLikelihoodLoss", 12, (g, ctx, ins) => Run(g, ctx, ins, softmax: false), Support));
        add(new GpuOp("", "SoftmaxCrossEntropyLoss", 12, (g, ctx, ins) => Run(g, ctx, ins, softmax: true), Support));
    }

    static string? Support(Tapml.Platforms.NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t) =>
        Reductions.FloatOnly(ctx, t) ?? (ctx.String("reduction", "mean") is "none" or "sum" or "mean" ? null : $"{ctx.Node.OpType} reduction '{ctx.String("reduction", "mean")}' must be none, sum or mean");

    static Value?[] Run(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins, bool softmax)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var target = GpuOps.In(ins, 1, ctx);
        var w = ins.Length > 2 ? ins[2] : null;
        if (x.Rank < 2) throw ctx.Error($"input must have shape [N, C, ...], got {x.Describe()}");
        if (target.Rank != x.Rank - 1 || target.Shape[0] != x.Shape[0] || !ShapeUtil.SameShape(target.Shape.AsSpan(1), x.Shape.AsSpan(2)))
            throw ctx.Error($"target {target.Describe()} does not match input {x.Describe()} (expected [N, d1..dk])");
        long n = x.Shape[0], c = x.Shape[1], d = ShapeUtil.Size(x.Shape.AsSpan(2));
        if (w is not null && (w.Rank != 1 || w.Shape[0] != c)) throw ctx.Error($"weight {w.Describe()} must be [{c}]");
        GpuOps.CheckNotSaturated(target, ctx);
        string reduction = ctx.String("reduction", "mean");
        bool hasIgnore = ctx.Has("ignore_index");
        long ignore = Math.Clamp(ctx.Int("ignore_index", 0), int.MinValue, int.MaxValue);

        var lp = softmax ? LogSoftmaxAxis1(g, x, n, c, d) : x;
        var per = g.Empty(reduction == "none" ? x.DType : DType.Float32, target.Shape);
        var wt = reduction == "mean" ? g.Empty(DType.Float32, target.Shape) : null;
        if (per.Length > 0)
        {
            var meta = new Meta();
            meta.Add(per.Length); meta.Add(d); meta.Add(c); meta.AddSigned(ignore);
            string body = $$"""
  let j = i % md[1]; let nn = i / md[1];
  let t = i32(tgt(i));
  if ({{(hasIgnore ? "t == bitcast<i32>(md[3])" : "false")}}) { per_st(i, 0.0); {{(wt is null ? "" : "wt_st(i, 0.0);")}} return; }
  // NOTE: a target outside [0, C) is an error in ONNX; clamped here so it never reads outside the buffer.
  let tt = u32(clamp(t, 0, i32(md[2]) - 1));
  let wv = {{(w is null ? "1.0" : "f32(w(tt))")}};
  per_st(i, -f32(lp((nn * md[2] + tt) * md[1] + j)) * wv);
  {{(wt is null ? "" : "wt_st(i, wv);")}}
""";
            var binds = new List<GpuTensor> { lp, target };
            if (w is not null) binds.Add(w);
            binds.Add(per);
            if (wt is not null) binds.Add(wt);
            g.Launch(new WebGpuPlatform.KernelKey("nll", $"{hasIgnore}|{w is null}|{wt is null}|{(int)lp.Storage}|{(int)target.Storage}|{(int)(w?.Storage ?? 0)}|{(int)per.DType}"), () =>
            {
                var k = new Wgsl(g.Workgroup).In("lp", lp).In("tgt", target);
                if (w is not null) k.In("w", w);
                k.Out("per", per.DType);
                if (wt is not null) k.Out("wt", DType.Float32);
                return k.Build(body);
            }, ctx.Node.OpType, binds.ToArray(), meta, per.Length);
        }
        GpuTensor loss = per;
        if (reduction != "none")
        {
            loss = g.Empty(x.DType, []);
            SumAll(g, per, wt, loss);
            g.Free(per);
            if (wt is not null) g.Free(wt);
        }
        var outs = new Value?[ctx.Node.Outputs.Length];
        outs[0] = loss;
        if (softmax && outs.Length > 1 && ctx.Node.Outputs[1].Length > 0) outs[1] = lp;
        else if (softmax) g.Free(lp);
        return outs;
    }

    /// <summary>log_softmax over axis 1 of [N, C, D]: one thread per (n, d) row of C.</summary>
    static GpuTensor LogSoftmaxAxis1(WebGpuPlatform g, GpuTensor x, long n, long c, long d)
    {
        var y = g.Empty(x.DType, x.Shape);
        if (y.Length == 0) return y;
        var meta = new Meta();
        meta.Add(n * d); meta.Add(d); meta.Add(c);
        string body = """
  let j = i % md[1]; let b = (i / md[1]) * md[2] * md[1] + j;
  var m = bits_(0xff800000u);
  for (var k = 0u; k < md[2]; k++) { m = max(m, f32(x(b + k * md[1]))); }
  var s = 0.0;
  for (var k = 0u; k < md[2]; k++) { s += exp(f32(x(b + k * md[1])) - m); }
  let lse = m + log(s);
  for (var k = 0u; k < md[2]; k++) { let e = b + k * md[1]; y_st(e, f32(x(e)) - lse); }
""";
        g.Launch(new WebGpuPlatform.KernelKey("logsoftmax1", $"{(int)x.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("x", x).Out("y", x.DType).Build(body), "LogSoftmaxAxis1", [x, y], meta, n * d);
        return y;
    }

    /// <summary>y[0] = Σa, or Σa / Σb when <paramref name="b"/> is given: one workgroup, f32 tree reduction.</summary>
    static void SumAll(WebGpuPlatform g, GpuTensor a, GpuTensor? b, GpuTensor y)
    {
        var meta = new Meta();
        meta.Add(a.Length);
        bool div = b is not null;
        string body = $$"""
  var sa = 0.0; var sb = 0.0;
  for (var j = lid.x; j < md[0]; j += 256u) { sa += f32(a(j)); {{(div ? "sb += f32(b(j));" : "")}} }
  ra[lid.x] = sa; rb[lid.x] = sb;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) { ra[lid.x] += ra[lid.x + s]; rb[lid.x] += rb[lid.x + s]; }
    workgroupBarrier();
  }
  if (lid.x == 0u) { y_st(0u, {{(div ? "ra[0] / rb[0]" : "ra[0]")}}); }
""";
        g.LaunchGroups(new WebGpuPlatform.KernelKey("sumall", $"{div}|{(int)a.Storage}|{(int)y.DType}"), () =>
        {
            var k = new Wgsl(256).In("a", a);
            if (b is not null) k.In("b", b);
            return k.Out("y", y.DType).Decl("var<workgroup> ra: array<f32, 256>;\nvar<workgroup> rb: array<f32, 256>;").Build(body, elementwise: false);
        }, "LossSum", b is null ? [a, y] : [a, b, y], meta, 1);
    }
}
