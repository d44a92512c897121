using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Conv (direct, one thread per output element; groups, strides, dilations, pads, auto_pad), MaxPool,
/// AveragePool and the global pools, for 1-D and 2-D spatial inputs (1-D runs as H = 1).</summary>
public static class ConvPool
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "Conv", 1, (g, ctx, ins) => [Conv(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx), ins.Length > 2 ? ins[2] : null)], Spatial));
        add(new GpuOp("", "MaxPool", 1, (g, ctx, ins) => Pool(g, ctx, GpuOps.In(ins, 0, ctx), max: true), Spatial));
        add(new GpuOp("", "AveragePool", 1, (g, ctx, ins) => Pool(g, ctx, GpuOps.In(ins, 0, ctx), max: false), Spatial));
        add(new GpuOp("", "GlobalAveragePool", 1, (g, ctx, ins) => [Global(g, ctx, GpuOps.In(ins, 0, ctx), "ReduceMean")], Reductions.FloatOnly));
        add(new GpuOp("", "GlobalMaxPool", 1, (g, ctx, ins) => [Global(g, ctx, GpuOps.In(ins, 0, ctx), "ReduceMax")], Reductions.FloatOnly));
    }

    static string? Spatial(Tapml.Platforms.NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t)
    {
        if (Reductions.FloatOnly(ctx, t) is { } why) return why;
        if (t.Count > 0 && t[0] is { Shape: { } s } && s.Length is not (3 or 4))
            return $"{ctx.Node.OpType} with {s.Length - 2} spatial dimensions is not implemented on webgpu (1-D and 2-D are)";
        if (ctx.Node.OpType == "MaxPool" && ctx.Node.Outputs.Length > 1 && ctx.Node.Outputs[1].Length > 0)
            return "MaxPool's Indices output is not implemented on webgpu";
        return null;
    }

    /// <summary>Output size and leading pad of one spatial dimension (ONNX auto_pad / pads / ceil_mode).</summary>
    static (long Out, long PadBegin) Dim(Tapml.Platforms.NodeContext ctx, long size, long k, long stride, long dil, long padB, long padE, bool ceil)
    {
        long eff = (k - 1) * dil + 1;
        string auto = ctx.String("auto_pad", "NOTSET");
        switch (auto)
        {
            case "SAME_UPPER" or "SAME_LOWER":
                {
                    long o = (size + stride - 1) / stride;
                    long total = Math.Max(0, (o - 1) * stride + eff - size);
                    return (o, auto == "SAME_UPPER" ? total / 2 : total - total / 2);
                }
            case "VALID": return ((size - eff) / stride + 1, 0);
            default:
                {
                    long span = size + padB + padE - eff;
                    long o = ceil ? (span + stride - 1) / stride + 1 : span / stride + 1;
                    // ceil_mode: the last window must start inside the input or the leading pad.
                    if (ceil && (o - 1) * stride >= size + padB) o--;
                    return (o, padB);
                }
        }
    }

    record Geometry(long N, long C, long H, long W, long KH, long KW, long OH, long OW, long SH, long SW, long DH, long DW, long PH, long PW);

    static Geometry Geo(Tapml.Platforms.NodeContext ctx, long[] x, long kh, long kw, long c)
    {
        bool oneD = x.Length == 3;
        long h = oneD ? 1 : x[2], w = x[^1];
        var strides = ctx.Ints("strides") ?? (oneD ? [1] : [1, 1]);
        var dil = ctx.Ints("dilations") ?? (oneD ? [1] : [1, 1]);
        var pads = ctx.Ints("pads") ?? new long[oneD ? 2 : 4];
        bool ceil = ctx.Int("ceil_mode", 0) != 0;
        if (oneD)
        {
            var (ow, pw) = Dim(ctx, w, kw, strides[0], dil[0], pads[0], pads[1], ceil);
            return new Geometry(x[0], c, 1, w, 1, kw, 1, ow, 1, strides[0], 1, dil[0], 0, pw);
        }
        var (oh, ph) = Dim(ctx, h, kh, strides[0], dil[0], pads[0], pads[2], ceil);
        var (ow2, pw2) = Dim(ctx, w, kw, strides[1], dil[1], pads[1], pads[3], ceil);
        return new Geometry(x[0], c, h, w, kh, kw, oh, ow2, strides[0], strides[1], dil[0], dil[1], ph, pw2);
    }

    static void AddGeo(Meta m, Geometry q)
    {
        m.Add(q.C); m.Add(q.H); m.Add(q.W); m.Add(q.KH); m.Add(q.KW); m.Add(q.OH); m.Add(q.OW);
        m.Add(q.SH); m.Add(q.SW); m.Add(q.DH); m.Add(q.DW); m.AddSigned(q.PH); m.AddSigned(q.PW);
    }

    // meta: 0 n, 1 C, 2 H, 3 W, 4 KH, 5 KW, 6 OH, 7 OW, 8 SH, 9 SW, 10 DH, 11 DW, 12 PH, 13 PW, then op-specific.
    const string Coords = """
  let C = md[1]; let H = i32(md[2]); let W = i32(md[3]); let KH = md[4]; let KW = md[5];
  let OH = md[6]; let OW = md[7];
  let ox = i % OW; let oy = (i / OW) % OH;
""";

    static GpuTensor Conv(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, GpuTensor wt, GpuTensor? bias)
    {
        if (x.Rank != wt.Rank) throw ctx.Error($"input {ShapeUtil.Format(x.Shape)} and weight {ShapeUtil.Format(wt.Shape)} ranks differ");
        long group = ctx.Int("group", 1);
        long m = wt.Shape[0], cg = wt.Shape[1];
        if (x.Shape[1] != cg * group || m % group != 0) throw ctx.Error($"channels: input {x.Shape[1]}, weight {ShapeUtil.Format(wt.Shape)}, group {group}");
        bool oneD = x.Rank == 3;
        var q = Geo(ctx, x.Shape, oneD ? 1 : wt.Shape[2], wt.Shape[^1], x.Shape[1]);
        var outShape = oneD ? new[] { q.N, m, q.OW } : new[] { q.N, m, q.OH, q.OW };
        var y = g.Empty(x.DType, outShape);
        if (y.Length == 0) return y;
        var meta = new Meta();
        meta.Add(y.Length);
        AddGeo(meta, q);
        meta.Add(m); meta.Add(cg); meta.Add(m / group);
        var w = new Wgsl(g.Workgroup).In("x", x).In("w", wt);
        if (bias is not null) w.In("b", bias);
        w.Out("y", x.DType);
        string code = w.Build(Coords + $$"""
  let M = md[14]; let CG = md[15]; let MG = md[16];
  let oc = (i / (OW * OH)) % M; let n = i / (OW * OH * M);
  let c0 = (oc / MG) * CG;
  var acc = {{(bias is null ? "0.0" : "f32(b(oc))")}};
  for (var c = 0u; c < CG; c++) {
    let xb = (n * C + c0 + c) * u32(H) * u32(W);
    let wb = (oc * CG + c) * KH * KW;
    for (var ky = 0u; ky < KH; ky++) {
      let iy = i32(oy * md[8] + ky * md[10]) - bitcast<i32>(md[12]);
      if (iy < 0 || iy >= H) { continue; }
      for (var kx = 0u; kx < KW; kx++) {
        let ix = i32(ox * md[9] + kx * md[11]) - bitcast<i32>(md[13]);
        if (ix < 0 || ix >= W) { continue; }
        acc += f32(x(xb + u32(iy) * u32(W) + u32(ix))) * f32(w(wb + ky * KW + kx));
      }
    }
  }
  y_st(i, acc);
""");
        g.Launch(code, $"Conv{(bias is null ? "" : "_bias")}", bias is null ? [x, wt, y] : [x, wt, bias, y], meta, y.Length);
        return y;
    }

    static Value?[] Pool(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, bool max)
    {
        var ks = ctx.Ints("kernel_shape") ?? throw ctx.Error("kernel_shape is missing");
        bool oneD = x.Rank == 3;
        var q = Geo(ctx, x.Shape, oneD ? 1 : ks[0], ks[^1], x.Shape[1]);
        var outShape = oneD ? new[] { q.N, q.C, q.OW } : new[] { q.N, q.C, q.OH, q.OW };
        var y = g.Empty(x.DType, outShape);
        if (y.Length == 0) return [y];
        var meta = new Meta();
        meta.Add(y.Length);
        AddGeo(meta, q);
        meta.Add(ctx.Int("count_include_pad", 0));
        // count_include_pad counts the explicit pads (not the ceil_mode overhang): the padded extent bounds the window.
        var pads = ctx.Ints("pads") ?? new long[oneD ? 2 : 4];
        meta.Add(oneD ? q.H : q.H + pads[0] + pads[2]); meta.Add(q.W + (oneD ? pads[0] + pads[1] : pads[1] + pads[3]));
        var w = new Wgsl(g.Workgroup).In("x", x).Out("y", x.DType);
        string code = w.Build(Coords + $$"""
  let nc = i / (OW * OH);
  let xb = nc * u32(H) * u32(W);
  var acc = {{(max ? "bits_(0xff800000u)" : "0.0")}};
  var cnt = 0u;
  var padded = 0u;
  for (var ky = 0u; ky < KH; ky++) {
    let py = i32(oy * md[8] + ky * md[10]);
    let iy = py - bitcast<i32>(md[12]);
    for (var kx = 0u; kx < KW; kx++) {
      let px = i32(ox * md[9] + kx * md[11]);
      let ix = px - bitcast<i32>(md[13]);
      if (py < i32(md[15]) && px < i32(md[16])) { padded++; }
      if (iy < 0 || iy >= H || ix < 0 || ix >= W) { continue; }
      let v = f32(x(xb + u32(iy) * u32(W) + u32(ix)));
      {{(max ? "acc = select(max(acc, v), v, v != v);" : "acc += v;")}}
      cnt++;
    }
  }
  {{(max ? "y_st(i, acc);" : "y_st(i, acc / f32(select(cnt, padded, md[14] != 0u)));")}}
""");
        g.Launch(code, max ? "MaxPool" : "AveragePool", [x, y], meta, y.Length);
        return [y];
    }

    static GpuTensor Global(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, string reduce)
    {
        if (x.Rank < 3) throw ctx.Error($"needs [N,C,…], got {ShapeUtil.Format(x.Shape)}");
        var axes = Enumerable.Range(2, x.Rank - 2).Select(a => (long)a).ToArray();
        var node = new Tapml.Ir.Node { Name = ctx.Node.Name, OpType = reduce, Inputs = ["x"], Outputs = ["y"], Attributes = new() { ["axes"] = Tapml.Ir.Attr.Of(axes), ["keepdims"] = Tapml.Ir.Attr.Of(1L) } };
        var rctx = new Tapml.Platforms.NodeContext(node, 13);
        return (GpuTensor)GpuOps.Find("", reduce)!.Run(g, rctx, [x])[0]!;
    }
}
