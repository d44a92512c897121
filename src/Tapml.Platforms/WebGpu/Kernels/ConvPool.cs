using System.Text;
using Tapml.Core;
using Tapml.Platforms.Cpu.Ops;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Conv and ConvTranspose (direct, one thread per output element; groups, strides, dilations, pads,
/// auto_pad, output_padding/output_shape), MaxPool (with Indices), AveragePool, LpPool, the global pools and
/// MaxUnpool, for 1 to 3 spatial dimensions. Geometry (output sizes, pads) is the cpu reference's; the kernels loop
/// only over the spatial dimensions the input has.</summary>
public static class ConvPool
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "Conv", 1, (g, ctx, ins) => [Conv(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx), ins.Length > 2 ? ins[2] : null)], Spatial));
        add(new GpuOp("", "ConvInteger", 10, (g, ctx, ins) => [ConvInteger(g, ctx, ins)], IntegerSpatial));
        add(new GpuOp("", "QLinearConv", 10, (g, ctx, ins) => [QLinearConv(g, ctx, ins)], IntegerSpatial));
        add(new GpuOp("", "ConvTranspose", 1, (g, ctx, ins) => [ConvTranspose(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx), ins.Length > 2 ? ins[2] : null)], Spatial));
        add(new GpuOp("", "MaxPool", 1, (g, ctx, ins) => Pool(g, ctx, GpuOps.In(ins, 0, ctx), PoolKind.Max), Spatial));
        add(new GpuOp("", "AveragePool", 1, (g, ctx, ins) => Pool(g, ctx, GpuOps.In(ins, 0, ctx), PoolKind.Avg), Spatial));
        add(new GpuOp("", "LpPool", 1, (g, ctx, ins) => Pool(g, ctx, GpuOps.In(ins, 0, ctx), PoolKind.Lp), Spatial));
        add(new GpuOp("", "GlobalAveragePool", 1, (g, ctx, ins) => [Global(g, ctx, GpuOps.In(ins, 0, ctx), "ReduceMean")], Reductions.FloatOnly));
        add(new GpuOp("", "GlobalMaxPool", 1, (g, ctx, ins) => [Global(g, ctx, GpuOps.In(ins, 0, ctx), "ReduceMax")], Reductions.FloatOnly));
        add(new GpuOp("", "GlobalLpPool", 2, (g, ctx, ins) => Pool(g, ctx, GpuOps.In(ins, 0, ctx), PoolKind.Lp, global: true), Spatial));
        add(new GpuOp("", "MaxUnpool", 9, (g, ctx, ins) => [MaxUnpool(g, ctx, ins)], Spatial));
    }

    static string? Spatial(NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t)
    {
        if (Reductions.FloatOnly(ctx, t) is { } why) return why;
        if (t.Count > 0 && t[0] is { Shape: { } s } && s.Length is not (3 or 4 or 5))
            return $"{ctx.Node.OpType} with {s.Length - 2} spatial dimensions is not implemented on webgpu (1 to 3 are)";
        return null;
    }

    enum PoolKind { Max, Avg, Lp }

    // meta words: 0 n, 1 C, 2..4 In, 5..7 K, 8..10 Out, 11..13 S, 14..16 Dil, 17..19 PadB (signed), 20.. op-specific.
    // Spatial dimensions are right-aligned in the three slots (a 2-D input has In = [1, H, W]).
    const int MIn = 2, MK = 5, MOut = 8, MS = 11, MDil = 14, MPad = 17, MOp = 20;

    /// <summary>Adds the geometry words: <paramref name="inDims"/>/<paramref name="outDims"/> are the spatial sizes
    /// of the kernel's input and output, padded to 3 with leading 1s.</summary>
    static void AddGeo(Meta m, long c, int r, int[] inDims, int[] k, int[] outDims, int[] s, int[] d, int[] padB)
    {
        m.Add(c);
        void Three(int[] v, int dflt, bool signed)
        {
            for (int a = 0; a < 3; a++)
            {
                long x = a < 3 - r ? dflt : v[a - (3 - r)];
                if (signed) m.AddSigned(x); else m.Add(x);
            }
        }
        Three(inDims, 1, false); Three(k, 1, false); Three(outDims, 1, false); Three(s, 1, false); Three(d, 1, false); Three(padB, 0, true);
    }

    /// <summary>The loop slots of <paramref name="r"/> spatial dimensions.</summary>
    static int[] Dims(int r) => r switch { 1 => [2], 2 => [1, 2], _ => [0, 1, 2] };

    /// <summary>Output coordinates o0..o2 of element <c>i</c> and the sizes isz (input plane), osz (output plane), ksz.</summary>
    const string Coords = """
  let C = md[1];
  let o2 = i % md[10]; let o1 = (i / md[10]) % md[9]; let o0 = (i / (md[10] * md[9])) % md[8];
  let isz = md[2] * md[3] * md[4]; let osz = md[8] * md[9] * md[10]; let ksz = md[5] * md[6] * md[7];

""";

    /// <summary>Row-major flat index of coordinates <c>{p}0..{p}2</c> over the slots in use (sizes at meta <paramref name="sizeAt"/>).</summary>
    static string Flat(int[] dims, string p, int sizeAt)
    {
        string acc = $"u32({p}{dims[0]})";
        for (int q = 1; q < dims.Length; q++) acc = $"({acc}) * md[{sizeAt + dims[q]}] + u32({p}{dims[q]})";
        return acc;
    }

    /// <summary>Nested kernel-window loops over the slots in use; <paramref name="head"/> writes each loop's first lines.</summary>
    static string Loops(int[] dims, Func<int, string> head, string inner)
    {
        var sb = new StringBuilder();
        foreach (int a in dims)
            sb.Append($"  for (var k{a} = 0u; k{a} < md[{MK + a}]; k{a}++) {{\n").Append(head(a));
        sb.Append(inner);
        foreach (int _ in dims) sb.Append("  }\n");
        return sb.ToString();
    }

    static GpuTensor Conv(WebGpuPlatform g, NodeContext ctx, GpuTensor x, GpuTensor wt, GpuTensor? bias) => Conv(g, ctx, x, wt, bias, null);

    /// <summary>Integer zero points of ConvInteger: x's (a scalar) and w's (a scalar or one per output channel), either absent.
    /// QLinearConv adds the requantization: per output channel x_scale·w_scale/y_scale (f32, as the cpu reference rounds
    /// it), y's zero point and type.</summary>
    sealed record IntegerConv(GpuTensor? XZero, GpuTensor? WZero, GpuTensor? Scales = null, GpuTensor? YZero = null, DType Out = DType.Int32);

    /// <summary>ConvInteger: y (int32) = conv(x − x_zero_point, w − w_zero_point), exact in 32-bit integers; padding
    /// adds nothing (it is zero after the shift).</summary>
    static GpuTensor ConvInteger(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var w = GpuOps.In(ins, 1, ctx);
        GpuTensor? Zero(int i, GpuTensor of, long perChannel, string what)
        {
            if (ins.Length <= i || ins[i] is not { } z || z.Length == 0) return null;
            if (z.DType != of.DType) throw ctx.Error($"{what} zero point {z.Describe()} must have the type of {what} ({DTypes.Name(of.DType)})");
            if (z.Length != 1 && !(perChannel > 0 && z.Rank == 1 && z.Length == perChannel))
                throw ctx.Error($"{what} zero point {z.Describe()} must be a scalar{(perChannel > 0 ? $" or have {perChannel} elements" : "")}");
            return z;
        }
        return Conv(g, ctx, x, w, null, new IntegerConv(Zero(2, x, 0, "x"), Zero(3, w, w.Shape[0], "w")));
    }

    /// <summary>QLinearConv: y = saturate(round_half_even((conv(x − x_zp, w − w_zp) + B) · x_scale·w_scale/y_scale) + y_zp).
    /// The integer part is ConvInteger's; the scale multiply and rounding run in f32 (the cpu reference in double).</summary>
    static GpuTensor QLinearConv(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var w = GpuOps.In(ins, 3, ctx);
        long m = w.Shape[0];
        GpuTensor? Opt(int i) => ins.Length > i && ins[i] is { Length: > 0 } t ? t : null;
        GpuTensor? Zero(int i, DType of, long perChannel, string what)
        {
            if (Opt(i) is not { } z) return null;
            if (z.DType != of) throw ctx.Error($"{what} zero point {z.Describe()} must have the type of {what} ({DTypes.Name(of)})");
            if (z.Length != 1 && !(perChannel > 0 && z.Rank == 1 && z.Length == perChannel))
                throw ctx.Error($"{what} zero point {z.Describe()} must be a scalar{(perChannel > 0 ? $" or have {perChannel} elements" : "")}");
            return z;
        }
        var xScale = g.HostOrDownload(GpuOps.In(ins, 1, ctx));
        var wScale = g.HostOrDownload(GpuOps.In(ins, 4, ctx));
        var yScale = g.HostOrDownload(GpuOps.In(ins, 6, ctx));
        if (xScale.Length != 1 || yScale.Length != 1) throw ctx.Error("x_scale and y_scale must be scalars");
        if (wScale.Length != 1 && wScale.Length != m) throw ctx.Error($"w_scale must be a scalar or have M = {m} elements");
        var yz = Opt(7);
        if (yz is not null && yz.Length != 1) throw ctx.Error($"y zero point {yz.Describe()} must be a scalar");
        var bias = Opt(8);
        if (bias is not null && (bias.Length != m || bias.Storage != GpuStorage.I32)) throw ctx.Error($"B {bias.Describe()} must be int32 with M = {m} elements");
        float xs = (float)xScale.GetDouble(0), ys = (float)yScale.GetDouble(0);
        var scales = new float[m];
        for (int i = 0; i < m; i++) scales[i] = xs * (float)wScale.GetDouble(wScale.Length == 1 ? 0 : i) / ys;
        var sc = g.UploadTemporary(Tensor.FromArray(scales, m));
        var y = Conv(g, ctx, x, w, bias, new IntegerConv(Zero(2, x.DType, 0, "x"), Zero(5, w.DType, m, "w"), sc, yz, yz?.DType ?? x.DType));
        g.Free(sc);
        return y;
    }

    static string? IntegerSpatial(NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t)
    {
        foreach (int i in ctx.Node.OpType == "QLinearConv" ? [0, 3] : new[] { 0, 1 })
            if (i < t.Count && t[i] is { } a && a.ElemType is not (DType.UInt8 or DType.Int8))
                return $"{ctx.Node.OpType} takes 8-bit integers, got {DTypes.Name(a.ElemType)}";
        if (t.Count > 0 && t[0] is { Shape: { } s } && s.Length is not (3 or 4 or 5))
            return $"{ctx.Node.OpType} with {s.Length - 2} spatial dimensions is not implemented on webgpu (1 to 3 are)";
        return null;
    }

    static GpuTensor Conv(WebGpuPlatform g, NodeContext ctx, GpuTensor x, GpuTensor wt, GpuTensor? bias, IntegerConv? integer)
    {
        if (x.Rank != wt.Rank) throw ctx.Error($"input {ShapeUtil.Format(x.Shape)} and weight {ShapeUtil.Format(wt.Shape)} ranks differ");
        long group = ctx.Int("group", 1);
        long m = wt.Shape[0], cg = wt.Shape[1];
        if (x.Shape[1] != cg * group || m % group != 0) throw ctx.Error($"channels: input {x.Shape[1]}, weight {ShapeUtil.Format(wt.Shape)}, group {group}");
        var geo = ConvHelpers.Forward(ctx, x.Shape, ConvHelpers.Kernel(ctx, wt.Shape), false);
        int r = geo.R;
        var y = g.Empty(integer?.Out ?? x.DType, ConvHelpers.OutShape(x.Shape[0], m, geo));
        if (y.Length == 0) return y;
        var meta = new Meta();
        meta.Add(y.Length);
        AddGeo(meta, x.Shape[1], r, geo.In, geo.K, geo.Out, geo.S, geo.D, geo.PadB);
        meta.Add(m); meta.Add(cg); meta.Add(m / group);
        var dims = Dims(r);
        var (xz, wz) = (integer?.XZero, integer?.WZero);
        bool wzPer = wz is { Length: > 1 };
        // Integer: exact i32 sums of shifted 8-bit values; float: f32 sums.
        string acc0 = integer is not null ? bias is null ? "0" : "i32(b(oc))" : bias is null ? "0.0" : "f32(b(oc))";
        var (sc, yz) = (integer?.Scales, integer?.YZero);
        // QLinearConv: scale, add y's zero point, saturate, round half to even (WGSL's round).
        var (lo, hi) = y.DType == DType.Int8 ? (-128, 127) : (0, 255);
        string store = sc is null ? "y_st(i, acc);" :
            $"y_st(i, {Wgsl.Scalar(y.Storage)}(round(clamp(f32(acc) * sc(oc) + {(yz is null ? "0.0" : "f32(yz(0u))")}, {lo}.0, {hi}.0))));";
        string term(string xv, string wv) => integer is null ? $"f32({xv}) * f32({wv})" : $"(i32({xv}) - xzv) * (i32({wv}) - wzv)";
        string zeros = integer is null ? "" :
            $"  let xzv = {(xz is null ? "0" : "i32(xz(0u))")}; let wzv = {(wz is null ? "0" : wzPer ? "i32(wz(oc))" : "i32(wz(0u))")};\n";
        var bound = new List<GpuTensor> { x, wt };
        if (bias is not null) bound.Add(bias);
        if (xz is not null) bound.Add(xz);
        if (wz is not null) bound.Add(wz);
        if (sc is not null) bound.Add(sc);
        if (yz is not null) bound.Add(yz);
        bound.Add(y);
        string variant = $"{r}|{bias is not null}|{Wgsl.Letters(bound.Select(t => t.Storage).ToList())}|{(int)y.DType}|" +
                         (integer is null ? "f" : $"i{xz is not null}{wz is not null}{wzPer}{sc is not null}{yz is not null}");
        g.Launch(new WebGpuPlatform.KernelKey("conv", variant), () =>
        {
            var w = new Wgsl(g.Workgroup).In("x", x).In("w", wt);
            if (bias is not null) w.In("b", bias);
            if (xz is not null) w.In("xz", xz);
            if (wz is not null) w.In("wz", wz);
            if (sc is not null) w.In("sc", sc);
            if (yz is not null) w.In("yz", yz);
            w.Out("y", y.DType);
            return w.Build(Coords + $$"""
  let M = md[{{MOp}}]; let CG = md[{{MOp + 1}}]; let MG = md[{{MOp + 2}}];
  let oc = (i / osz) % M; let n = i / (osz * M);
  let c0 = (oc / MG) * CG;
{{zeros}}  var acc = {{acc0}};
  for (var c = 0u; c < CG; c++) {
    let xb = (n * C + c0 + c) * isz;
    let wb = (oc * CG + c) * ksz;
{{Loops(dims, a => $"    let i{a} = i32(o{a} * md[{MS + a}] + k{a} * md[{MDil + a}]) - bitcast<i32>(md[{MPad + a}]);\n    if (i{a} < 0 || i{a} >= i32(md[{MIn + a}])) {{ continue; }}\n",
    $"    acc += {term($"x(xb + {Flat(dims, "i", MIn)})", $"w(wb + {Flat(dims, "k", MK)})")};\n")}}
  }
  {{store}}
""");
        }, sc is not null ? $"QLinearConv{r}d" : integer is not null ? $"ConvInteger{r}d" : $"Conv{r}d{(bias is null ? "" : "_bias")}", bound.ToArray(), meta, y.Length);
        return y;
    }

    /// <summary>ConvTranspose as a gather: each output element sums the input positions whose window covers it
    /// (o + pad − k·dilation divisible by the stride); W is [C, M/group, k…].</summary>
    static GpuTensor ConvTranspose(WebGpuPlatform g, NodeContext ctx, GpuTensor x, GpuTensor wt, GpuTensor? bias)
    {
        if (x.Rank != wt.Rank) throw ctx.Error($"input {ShapeUtil.Format(x.Shape)} and weight {ShapeUtil.Format(wt.Shape)} ranks differ");
        long group = ctx.Int("group", 1);
        long c = x.Shape[1], mg = wt.Shape[1], m = mg * group;
        if (group < 1 || c % group != 0 || wt.Shape[0] != c) throw ctx.Error($"channels: input {c}, weight {ShapeUtil.Format(wt.Shape)}, group {group}");
        if (bias is not null && bias.Length != m) throw ctx.Error($"B {bias.Describe()} must have M = {m} elements");
        // col2im terms: geo.In is the output image, geo.Out the input grid.
        var geo = ConvTransposeOps.Geometry(ctx, x.Shape, wt.Shape);
        int r = geo.R;
        var outShape = new long[r + 2];
        outShape[0] = x.Shape[0]; outShape[1] = m;
        for (int i = 0; i < r; i++) outShape[i + 2] = geo.In[i];
        var y = g.Empty(x.DType, outShape);
        if (y.Length == 0) return y;
        var meta = new Meta();
        meta.Add(y.Length);
        AddGeo(meta, c, r, geo.Out, geo.K, geo.In, geo.S, geo.D, geo.PadB);
        meta.Add(m); meta.Add(c / group); meta.Add(mg);
        var dims = Dims(r);
        g.Launch(new WebGpuPlatform.KernelKey("convtranspose", $"{r}|{bias is not null}|{Wgsl.Letters([x.Storage, wt.Storage, bias?.Storage ?? GpuStorage.F32])}|{(int)x.DType}"), () =>
        {
            var w = new Wgsl(g.Workgroup).In("x", x).In("w", wt);
            if (bias is not null) w.In("b", bias);
            w.Out("y", x.DType);
            return w.Build(Coords + $$"""
  let M = md[{{MOp}}]; let CG = md[{{MOp + 1}}]; let MG = md[{{MOp + 2}}];
  let oc = (i / osz) % M; let n = i / (osz * M);
  let gi = oc / MG; let mm = oc % MG;
  var acc = {{(bias is null ? "0.0" : "f32(b(oc))")}};
  for (var c = 0u; c < CG; c++) {
    let xc = gi * CG + c;
    let xb = (n * C + xc) * isz;
    let wb = (xc * MG + mm) * ksz;
{{Loops(dims, a => $"    let t{a} = i32(o{a}) + bitcast<i32>(md[{MPad + a}]) - i32(k{a} * md[{MDil + a}]);\n" +
                   $"    if (t{a} < 0 || t{a} % i32(md[{MS + a}]) != 0) {{ continue; }}\n" +
                   $"    let i{a} = t{a} / i32(md[{MS + a}]);\n    if (i{a} >= i32(md[{MIn + a}])) {{ continue; }}\n",
    $"    acc += f32(x(xb + {Flat(dims, "i", MIn)})) * f32(w(wb + {Flat(dims, "k", MK)}));\n")}}
  }
  y_st(i, acc);
""");
        }, $"ConvTranspose{r}d{(bias is null ? "" : "_bias")}", bias is null ? [x, wt, y] : [x, wt, bias, y], meta, y.Length);
        return y;
    }

    /// <summary>LpPool's p: a float attribute at opset 1, an int later; 2 by default.</summary>
    static double LpP(NodeContext ctx)
    {
        if (!ctx.Has("p")) return 2;
        var a = ctx.Get("p");
        return a.Type == Tapml.Ir.AttrType.Float ? a.F : a.I;
    }

    /// <summary>Window pools. A window reads positions start + k·dilation: inside the input they count as data, in
    /// [-pad_begin, in + pad_end) as padding (count_include_pad), beyond (the ceil_mode overhang) they are ignored.</summary>
    static Value?[] Pool(WebGpuPlatform g, NodeContext ctx, GpuTensor x, PoolKind kind, bool global = false)
    {
        if (x.Rank < 3) throw ctx.Error($"X must have rank 3 or more (N, C, spatial...), got {x.Describe()}");
        ConvGeom geo;
        if (global)
        {
            int gr = x.Rank - 2;
            var sp = x.Shape[2..].Select(v => checked((int)v)).ToArray();
            geo = new ConvGeom { R = gr, In = sp, K = sp, Out = Enumerable.Repeat(1, gr).ToArray(), S = Enumerable.Repeat(1, gr).ToArray(), D = Enumerable.Repeat(1, gr).ToArray(), PadB = new int[gr], PadE = new int[gr] };
            geo.Finish();
        }
        else
        {
            var ks = ctx.Ints("kernel_shape") ?? throw ctx.Error("kernel_shape is missing");
            if (ks.Length != x.Rank - 2) throw ctx.Error($"kernel_shape has {ks.Length} dims, X {x.Describe()} has {x.Rank - 2} spatial dims");
            geo = ConvHelpers.Forward(ctx, x.Shape, ks.Select(k => checked((int)k)).ToArray(), ctx.Int("ceil_mode", 0) != 0);
        }
        int r = geo.R;
        var outShape = ConvHelpers.OutShape(x.Shape[0], x.Shape[1], geo);
        var y = g.Empty(x.DType, outShape);
        bool wantIdx = kind == PoolKind.Max && ctx.Node.Outputs.Length > 1 && ctx.Node.Outputs[1].Length > 0;
        var ind = wantIdx ? g.Empty(DType.Int64, outShape) : null;
        var result = wantIdx ? new Value?[] { y, ind } : [y];
        if (y.Length == 0) return result;
        double p = kind == PoolKind.Lp ? LpP(ctx) : 0;
        var meta = new Meta();
        meta.Add(y.Length);
        AddGeo(meta, x.Shape[1], r, geo.In, geo.K, geo.Out, geo.S, geo.D, geo.PadB);
        for (int a = 0; a < 3; a++) meta.Add(a < 3 - r ? 1 : geo.In[a - (3 - r)] + geo.PadB[a - (3 - r)] + geo.PadE[a - (3 - r)]);   // 20..22 padded extent
        meta.Add(ctx.Int("count_include_pad", 0));   // 23
        meta.AddFloat((float)p);                     // 24
        meta.Add(ctx.Int("storage_order", 0));       // 25
        var dims = Dims(r);
        string pk = p == 1 ? "1" : p == 2 ? "2" : "n";
        string step = kind switch
        {
            PoolKind.Max => "    if (v > acc || cnt == 0u) { acc = v; best = li; }\n",
            PoolKind.Avg => "    acc += v;\n",
            _ => p == 1 ? "    acc += abs(v);\n" : p == 2 ? "    acc += v * v;\n" : $"    acc += pow(abs(v), bitcast<f32>(md[{MOp + 4}]));\n",
        };
        string inside = string.Join(" || ", dims.Select(a => $"i{a} < 0 || i{a} >= i32(md[{MIn + a}])"));
        string finish = kind switch
        {
            PoolKind.Max => "  y_st(i, acc);\n" + (wantIdx ? $$"""
  let b2 = best % md[4]; let b1 = (best / md[4]) % md[3]; let b0 = best / (md[4] * md[3]);
  let inPlane = select(best, (b2 * md[3] + b1) * md[2] + b0, md[{{MOp + 5}}] != 0u);
  ind_st(i, select(-1, i32(nc * isz + inPlane), cnt > 0u));

""" : ""),
            PoolKind.Avg => $"  let div = select(cnt, padded, md[{MOp + 3}] != 0u);\n  y_st(i, select(acc / f32(div), bits_(0x7fc00000u), div == 0u));\n",
            _ => p == 1 ? "  y_st(i, acc);\n" : p == 2 ? "  y_st(i, sqrt(acc));\n" : $"  y_st(i, pow(acc, 1.0 / bitcast<f32>(md[{MOp + 4}])));\n",
        };
        g.Launch(new WebGpuPlatform.KernelKey("pool", $"{kind}|{pk}|{r}|{wantIdx}|{(int)x.Storage}|{(int)x.DType}"), () =>
        {
            var w = new Wgsl(g.Workgroup).In("x", x).Out("y", x.DType);
            if (wantIdx) w.Out("ind", DType.Int64);
            return w.Build(Coords + $$"""
  let nc = i / osz;
  let xb = nc * isz;
  var acc = {{(kind == PoolKind.Max ? "bits_(0xff800000u)" : "0.0")}};
  var best = 0u;
  var cnt = 0u;
  var padded = 0u;
{{Loops(dims, a => $"    let p{a} = o{a} * md[{MS + a}] + k{a} * md[{MDil + a}];\n    if (p{a} >= md[{MOp + a}]) {{ continue; }}\n" +
                   $"    let i{a} = i32(p{a}) - bitcast<i32>(md[{MPad + a}]);\n",
    $"    padded++;\n    if ({inside}) {{ continue; }}\n    let li = {Flat(dims, "i", MIn)};\n    let v = f32(x(xb + li));\n{step}    cnt++;\n")}}
{{finish}}
""");
        }, $"{ctx.Node.OpType}{r}d", wantIdx ? [x, y, ind!] : [x, y], meta, y.Length);
        return result;
    }

    static GpuTensor Global(WebGpuPlatform g, NodeContext ctx, GpuTensor x, string reduce)
    {
        if (x.Rank < 3) throw ctx.Error($"needs [N,C,…], got {ShapeUtil.Format(x.Shape)}");
        var axes = Enumerable.Range(2, x.Rank - 2).Select(a => (long)a).ToArray();
        var node = new Tapml.Ir.Node { Name = ctx.Node.Name, OpType = reduce, Inputs = ["x"], Outputs = ["y"], Attributes = new() { ["axes"] = Tapml.Ir.Attr.Of(axes), ["keepdims"] = Tapml.Ir.Attr.Of(1L) } };
        var rctx = new NodeContext(node, 13);
        return (GpuTensor)GpuOps.Find("", reduce)!.Run(g, rctx, [x])[0]!;
    }

    /// <summary>MaxUnpool: zeros, then y.flat[I[k]] = X[k] with I indexing the unpooled shape ((in−1)·stride + kernel
    /// − pads); a larger output_shape holds that shape at its origin.</summary>
    static GpuTensor MaxUnpool(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var ind = GpuOps.In(ins, 1, ctx);
        GpuOps.CheckNotSaturated(ind, ctx);
        if (!ShapeUtil.SameShape(x.Shape, ind.Shape)) throw ctx.Error($"I {ind.Describe()} must have the shape of X {x.Describe()}");
        int r = x.Rank - 2;
        var k = ctx.Ints("kernel_shape") ?? throw ctx.Error("kernel_shape is missing");
        var s = ctx.Ints("strides") is { Length: > 0 } sa ? sa : Enumerable.Repeat(1L, r).ToArray();
        var pads = ctx.Ints("pads") is { Length: > 0 } pa ? pa : new long[2 * r];
        if (k.Length != r || s.Length != r || pads.Length != 2 * r) throw ctx.Error("kernel_shape/strides/pads do not match the spatial rank");
        var inferred = new long[x.Rank];
        inferred[0] = x.Shape[0]; inferred[1] = x.Shape[1];
        for (int i = 0; i < r; i++) inferred[i + 2] = (x.Shape[i + 2] - 1) * s[i] + k[i] - pads[i] - pads[i + r];
        var outShape = inferred;
        if (ins.Length > 2 && ins[2] is { } os)
        {
            outShape = g.Ints(os);
            if (outShape.Length != x.Rank) throw ctx.Error($"output_shape {ShapeUtil.Format(outShape)} must have rank {x.Rank}");
            for (int i = 0; i < x.Rank; i++)
                if (outShape[i] < inferred[i]) throw ctx.Error($"output_shape {ShapeUtil.Format(outShape)} is smaller than the unpooled shape {ShapeUtil.Format(inferred)}");
        }
        var y = ShapeOps.Fill(g, x.DType, outShape, 0);
        if (x.Length == 0) return y;
        var meta = new Meta();
        meta.Add(x.Length);
        meta.Add(ShapeUtil.Size(inferred));
        int shapeAt = meta.AddAll(inferred);
        int strideAt = meta.AddAllSigned(ShapeUtil.Strides(outShape));
        int rank = x.Rank;
        g.Launch(new WebGpuPlatform.KernelKey("maxunpool", $"{rank}|{(int)x.Storage}|{(int)ind.Storage}|{(int)x.DType}"), () =>
            new Wgsl(g.Workgroup).In("x", x).In("ind", ind).Out("y", x.DType).Build(
                "  let j = ind(i);\n  if (j < 0 || u32(j) >= md[1]) { return; }\n" + Wgsl.Offsets("u32(j)", rank, shapeAt, ("d", strideAt, -1)) + "  y_st(u32(o_d), x(i));"),
            "MaxUnpool", [x, ind, y], meta, x.Length);
        return y;
    }
}
