using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Row-wise ops one thread per row computes in order (TopK, CumSum, Hardmax, Det), quantization
/// (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear) and the window generators (Hann, Hamming, Blackman).</summary>
public static class Misc
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "TopK", 1, (g, ctx, ins) => TopK(g, ctx, ins)));
        add(new GpuOp("", "CumSum", 11, (g, ctx, ins) => [CumSum(g, ctx, ins)]));
        add(new GpuOp("", "Hardmax", 1, (g, ctx, ins) => [Hardmax(g, ctx, GpuOps.In(ins, 0, ctx))], Reductions.FloatOnly));
        add(new GpuOp("", "Det", 11, (g, ctx, ins) => [Det(g, ctx, GpuOps.In(ins, 0, ctx))], Reductions.FloatOnly));
        add(new GpuOp("", "QuantizeLinear", 10, (g, ctx, ins) => [Quantize(g, ctx, ins)], QuantizeSupport));
        add(new GpuOp("", "DequantizeLinear", 10, (g, ctx, ins) => [Dequantize(g, ctx, ins)], DequantizeSupport));
        add(new GpuOp("", "DynamicQuantizeLinear", 11, (g, ctx, ins) => DynamicQuantize(g, ctx, GpuOps.In(ins, 0, ctx)), Reductions.FloatOnly));
        add(new GpuOp("", "HannWindow", 17, (g, ctx, ins) => [Window(g, ctx, ins, 0)], WindowSupport));
        add(new GpuOp("", "HammingWindow", 17, (g, ctx, ins) => [Window(g, ctx, ins, 1)], WindowSupport));
        add(new GpuOp("", "BlackmanWindow", 17, (g, ctx, ins) => [Window(g, ctx, ins, 2)], WindowSupport));
    }

    static string S(DType t) => Indexing.S(t);
    static bool IsFloat(GpuStorage s) => s is GpuStorage.F32 or GpuStorage.F16x2;

    /// <summary>(outer, len, inner) of a tensor around one axis.</summary>
    static (long Outer, long Len, long Inner) Split(long[] shape, int axis) =>
        (ShapeUtil.Size(shape.AsSpan(0, axis)), shape[axis], ShapeUtil.Size(shape.AsSpan(axis + 1)));

    static Value?[] TopK(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        long k;
        if (ctx.Opset >= 10)
        {
            var kv = g.Ints(GpuOps.In(ins, 1, ctx));
            if (kv.Length != 1) throw ctx.Error($"K must hold one value, got {kv.Length}");
            k = kv[0];
        }
        else k = ctx.Int("k");
        if (x.Rank == 0) throw ctx.Error("input must have rank >= 1");
        if (x.Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(x, ctx);
        int axis = ShapeUtil.Axis(ctx.Int("axis", -1), x.Rank);
        bool largest = ctx.Opset < 11 || ctx.Int("largest", 1) != 0;
        var (outer, len, inner) = Split(x.Shape, axis);
        if (k < 0 || k > len) throw ctx.Error($"k={k} is out of range for an axis of {len}");
        var shape = (long[])x.Shape.Clone();
        shape[axis] = k;
        var vals = g.Empty(x.DType, shape);
        var idx = g.Empty(DType.Int64, shape);
        if (vals.Length == 0) return [vals, idx];
        var meta = new Meta();
        meta.Add(outer * inner); meta.Add(len); meta.Add(Math.Max(1, inner)); meta.Add(k);
        string s = Wgsl.Scalar(x.Storage);
        string nan(string v) => IsFloat(x.Storage) ? $"((bitcast<u32>({v}) & 0x7fffffffu) > 0x7f800000u)" : "false";
        // The cpu reference's total order: NaN above every number, equal values by lower index first; sorted output
        // (sorted=0 leaves the order free). Each thread selects the k best of its row one after another.
        string decl = $$"""
fn before(a: {{s}}, ia: u32, b: {{s}}, ib: u32) -> bool {
  let na = {{nan("a")}}; let nb = {{nan("b")}};
  var c = 0;
  if (na || nb) { c = select(select(-1, 1, na), 0, na && nb); }
  else { c = select(select(0, -1, a < b), 1, a > b); }
  if (c == 0) { return ia < ib; }
  return {{(largest ? "c > 0" : "c < 0")}};
}
""";
        string body = """
  let L = md[1]; let inner = md[2]; let K = md[3];
  let base = (i / inner) * L * inner + i % inner;
  let ob = (i / inner) * K * inner + i % inner;
  var pv = x(base); var pi = 0u;
  for (var j = 0u; j < K; j++) {
    var bv = pv; var bi = 0xffffffffu;
    for (var a = 0u; a < L; a++) {
      let v = x(base + a * inner);
      if ((j == 0u || before(pv, pi, v, a)) && (bi == 0xffffffffu || before(v, a, bv, bi))) { bv = v; bi = a; }
    }
    vals_st(ob + j * inner, bv); idx_st(ob + j * inner, i32(bi));
    pv = bv; pi = bi;
  }
""";
        g.Launch(new WebGpuPlatform.KernelKey("topk", $"{largest}|{(int)x.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("x", x).Out("vals", x.DType).Out("idx", DType.Int64).Decl(decl).Build(body), "TopK", [x, vals, idx], meta, outer * inner);
        return [vals, idx];
    }

    static GpuTensor CumSum(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var av = g.Ints(GpuOps.In(ins, 1, ctx));
        if (av.Length != 1) throw ctx.Error($"axis must hold one value, got {av.Length}");
        if (x.Rank == 0) throw ctx.Error("input must have rank >= 1");
        if (x.Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(x, ctx);
        int axis = ShapeUtil.Axis(av[0], x.Rank);
        bool exclusive = ctx.Int("exclusive", 0) != 0, reverse = ctx.Int("reverse", 0) != 0;
        var y = g.Empty(x.DType, x.Shape);
        if (y.Length == 0) return y;
        var (outer, len, inner) = Split(x.Shape, axis);
        var meta = new Meta();
        meta.Add(outer * inner); meta.Add(len); meta.Add(Math.Max(1, inner));
        string s = S(x.DType);
        string step = exclusive ? "y_st(e, acc); acc += v;" : "acc += v; y_st(e, acc);";
        string body = $$"""
  let L = md[1]; let inner = md[2];
  let base = (i / inner) * L * inner + i % inner;
  var acc = {{s}}(0);
  for (var q = 0u; q < L; q++) {
    let e = base + ({{(reverse ? "L - 1u - q" : "q")}}) * inner;
    let v = {{s}}(x(e));
    {{step}}
  }
""";
        g.Launch(new WebGpuPlatform.KernelKey("cumsum", $"{exclusive}|{reverse}|{(int)x.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("x", x).Out("y", x.DType).Build(body), "CumSum", [x, y], meta, outer * inner);
        return y;
    }

    static GpuTensor Hardmax(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x)
    {
        int r = x.Rank;
        var y = g.Empty(x.DType, x.Shape);
        if (y.Length == 0) return y;
        long outer, len, inner;
        if (ctx.Opset < 13)
        {
            // Before opset 13: coerced to 2-D at axis (default 1), each row whole.
            int axis = ShapeUtil.Axis(ctx.Int("axis", 1), Math.Max(r, 1));
            outer = ShapeUtil.Size(x.Shape.AsSpan(0, axis)); len = ShapeUtil.Size(x.Shape.AsSpan(axis)); inner = 1;
        }
        else (outer, len, inner) = Split(x.Shape, ShapeUtil.Axis(ctx.Int("axis", -1), r));
        var meta = new Meta();
        meta.Add(outer * inner); meta.Add(len); meta.Add(Math.Max(1, inner));
        // 1 at the first maximum of the row, 0 elsewhere.
        string body = """
  let L = md[1]; let inner = md[2];
  let base = (i / inner) * L * inner + i % inner;
  var bv = f32(x(base)); var bi = 0u;
  for (var a = 1u; a < L; a++) { let v = f32(x(base + a * inner)); if (v > bv) { bv = v; bi = a; } }
  for (var a = 0u; a < L; a++) { y_st(base + a * inner, select(0.0, 1.0, a == bi)); }
""";
        g.Launch(new WebGpuPlatform.KernelKey("hardmax", $"{(int)x.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("x", x).Out("y", x.DType).Build(body), "Hardmax", [x, y], meta, outer * inner);
        return y;
    }

    /// <summary>Determinants of [..., M, M]: one thread per matrix, Gaussian elimination with partial pivoting in a
    /// scratch copy (f32).</summary>
    static GpuTensor Det(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x)
    {
        if (x.Rank < 2 || x.Shape[^1] != x.Shape[^2]) throw ctx.Error($"input must be [..., M, M], got {ShapeUtil.Format(x.Shape)}");
        long m = x.Shape[^1];
        var y = g.Empty(x.DType, x.Shape[..^2]);
        if (y.Length == 0) return y;
        var a = g.Empty(DType.Float32, [Math.Max(1, x.Length)]);
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(m);
        string body = """
  let M = md[1]; let b = i * M * M;
  for (var e = 0u; e < M * M; e++) { a_st(b + e, f32(x(b + e))); }
  var det = 1.0;
  for (var c = 0u; c < M; c++) {
    var p = c; var pv = abs(a_b[b + c * M + c]);
    for (var r = c + 1u; r < M; r++) { let v = abs(a_b[b + r * M + c]); if (v > pv) { pv = v; p = r; } }
    if (pv == 0.0) { det = 0.0; break; }
    if (p != c) {
      for (var k = 0u; k < M; k++) { let t = a_b[b + c * M + k]; a_b[b + c * M + k] = a_b[b + p * M + k]; a_b[b + p * M + k] = t; }
      det = -det;
    }
    let d = a_b[b + c * M + c];
    det *= d;
    for (var r = c + 1u; r < M; r++) {
      let f = a_b[b + r * M + c] / d;
      for (var k = c + 1u; k < M; k++) { a_b[b + r * M + k] -= f * a_b[b + c * M + k]; }
    }
  }
  y_st(i, det);
""";
        g.Launch(new WebGpuPlatform.KernelKey("det", $"{(int)x.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("x", x).Out("a", DType.Float32).Out("y", x.DType).Build(body), "Det", [x, a, y], meta, y.Length);
        g.Free(a);
        return y;
    }

    // ---- quantization -------------------------------------------------------------------------------------

    static (long Lo, long Hi)? Range(DType t) => t switch
    {
        DType.UInt8 => (0, 255),
        DType.Int8 => (-128, 127),
        DType.UInt16 => (0, 65535),
        DType.Int16 => (-32768, 32767),
        _ => null,
    };

    static DType QuantizedType(Tapml.Platforms.NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t)
    {
        if (ctx.Opset >= 21 && ctx.Int("output_dtype", 0) is var od and not 0) return (DType)od;
        return t.Count > 2 && t[2] is { } zp ? zp.ElemType : DType.UInt8;
    }

    static string? QuantizeSupport(Tapml.Platforms.NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t)
    {
        var to = QuantizedType(ctx, t);
        if (Range(to) is null) return $"QuantizeLinear to {DTypes.Name(to)} is not implemented on webgpu (u8, i8, u16, i16 are)";
        if (t.Count > 0 && t[0] is { } x && x.ElemType == DType.Int32) return "QuantizeLinear of int32 input is not implemented on webgpu (divides in f64)";
        if (ctx.Opset >= 23 && ctx.Int("precision", 0) is var p and not 0 && (DType)p != DType.Float32) return $"QuantizeLinear precision {DTypes.Name((DType)p)} is not implemented on webgpu";
        return null;
    }

    static string? DequantizeSupport(Tapml.Platforms.NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t)
    {
        if (t.Count > 0 && t[0] is { } x && Range(x.ElemType) is null && x.ElemType != DType.Int32)
            return $"DequantizeLinear of {DTypes.Name(x.ElemType)} is not implemented on webgpu";
        if (t.Count > 2 && t[2] is not null && t[0]?.ElemType == DType.Int32) return "DequantizeLinear of int32 with a zero point is not implemented on webgpu (subtracts in f64)";
        if (ctx.Opset >= 23 && ctx.Int("output_dtype", 0) is var od and not 0 && Wgsl.StorageOf((DType)od) != GpuStorage.F32)
            return $"DequantizeLinear to {DTypes.Name((DType)od)} is not implemented on webgpu";
        return null;
    }

    /// <summary>Meta words and WGSL mapping element <c>i</c> to the index <c>pi</c> of its scale / zero point: per
    /// tensor, per axis (1-D along axis) or blocked (same rank, the axis dim in blocks of block_size).</summary>
    static (string Code, int Mode) ParamIndex(Tapml.Platforms.NodeContext ctx, GpuTensor x, GpuTensor scale, GpuTensor? zp, Meta meta, string what)
    {
        if (zp is not null && !ShapeUtil.SameShape(zp.Shape, scale.Shape) && !(zp.Length == 1 && scale.Length == 1))
            throw ctx.Error($"zero point {ShapeUtil.Format(zp.Shape)} and scale {ShapeUtil.Format(scale.Shape)} differ in shape");
        long bs = ctx.Opset >= 21 ? ctx.Int("block_size", 0) : 0;
        if (bs < 0) throw ctx.Error("block_size must be >= 0");
        if (bs == 0 && scale.Length == 1 && scale.Rank <= 1) return ("  let pi = 0u;\n", 0);
        if (ctx.Opset < 13) throw ctx.Error($"{what} must be a scalar before opset 13");
        int axis = ShapeUtil.Axis(ctx.Int("axis", 1), x.Rank);
        var (_, len, inner) = Split(x.Shape, axis);
        int at = meta.Add(len);
        meta.Add(Math.Max(1, inner));
        if (bs == 0)
        {
            if (scale.Rank != 1 || scale.Shape[0] != len)
                throw ctx.Error($"{what} {ShapeUtil.Format(scale.Shape)} must be a scalar or a 1-D tensor of {len} (axis {axis} of {ShapeUtil.Format(x.Shape)})");
            return ($"  let pi = i / md[{at + 1}] % md[{at}];\n", 1);
        }
        long nb = (len + bs - 1) / bs;
        bool ok = scale.Rank == x.Rank;
        for (int d = 0; ok && d < x.Rank; d++) ok = scale.Shape[d] == (d == axis ? nb : x.Shape[d]);
        if (!ok) throw ctx.Error($"{what} {ShapeUtil.Format(scale.Shape)} does not fit blocks of {bs} along axis {axis} of {ShapeUtil.Format(x.Shape)}");
        meta.Add(nb); meta.Add(bs);
        return ($"  let L = md[{at}]; let inner = md[{at + 1}];\n  let pi = ((i / (L * inner)) * md[{at + 2}] + (i / inner) % L / md[{at + 3}]) * inner + i % inner;\n", 2);
    }

    static GpuTensor Quantize(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var scale = GpuOps.In(ins, 1, ctx);
        var zp = ins.Length > 2 ? ins[2] : null;
        var to = QuantizedType(ctx, ins.Select(t => t is null ? null : Tapml.Ir.TypeRef.TensorOf(t.DType, t.Shape)).ToArray());
        if (zp is not null && zp.DType != to) throw ctx.Error($"output_dtype {DTypes.Name(to)} differs from the zero point's type {DTypes.Name(zp.DType)}");
        var (lo, hi) = Range(to)!.Value;
        var y = g.Empty(to, x.Shape);
        if (y.Length == 0) return y;
        var meta = new Meta();
        meta.Add(y.Length);
        var (pcode, mode) = ParamIndex(ctx, x, scale, zp, meta, "y_scale");
        // The division rounds to the scale's precision (f16 scales: f16, as numpy's x / scale).
        string r16(string v) => scale.DType == DType.Float16 ? $"unpack2x16float(pack2x16float(vec2<f32>({v}, 0.0))).x" : v;
        string body = pcode + $$"""
  let q = {{r16($"{r16("f32(x(i))")} / {r16("f32(sc(pi))")}")}};
  var r = round(q) + {{(zp is null ? "0.0" : "f32(zp(pi))")}};
  // Round half to even, add the zero point, saturate (NaN saturates low).
  r = select(clamp(r, {{lo}}.0, {{hi}}.0), {{lo}}.0, r != r);
  y_st(i, {{S(to)}}(r));
""";
        g.Launch(new WebGpuPlatform.KernelKey("quantize", $"{mode}|{zp is null}|{(int)x.Storage}|{(int)scale.Storage}|{(int)scale.DType}|{(int)(zp?.Storage ?? 0)}|{(int)to}"), () =>
        {
            var k = new Wgsl(g.Workgroup).In("x", x).In("sc", scale);
            if (zp is not null) k.In("zp", zp);
            return k.Out("y", to).Build(body);
        }, "QuantizeLinear", zp is null ? [x, scale, y] : [x, scale, zp, y], meta, y.Length);
        return y;
    }

    static GpuTensor Dequantize(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var scale = GpuOps.In(ins, 1, ctx);
        var zp = ins.Length > 2 ? ins[2] : null;
        if (zp is not null && zp.DType != x.DType) throw ctx.Error($"zero point is {DTypes.Name(zp.DType)}, x is {DTypes.Name(x.DType)}");
        if (x.Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(x, ctx);
        var to = ctx.Opset >= 23 && ctx.Int("output_dtype", 0) is var od and not 0 ? (DType)od : scale.DType;
        var y = g.Empty(to, x.Shape);
        if (y.Length == 0) return y;
        var meta = new Meta();
        meta.Add(y.Length);
        var (pcode, mode) = ParamIndex(ctx, x, scale, zp, meta, "x_scale");
        // y = (x - x_zero_point) · x_scale, in f32.
        string body = pcode + $"  y_st(i, (f32(x(i)) - {(zp is null ? "0.0" : "f32(zp(pi))")}) * f32(sc(pi)));";
        g.Launch(new WebGpuPlatform.KernelKey("dequantize", $"{mode}|{zp is null}|{(int)x.Storage}|{(int)scale.Storage}|{(int)(zp?.Storage ?? 0)}|{(int)to}"), () =>
        {
            var k = new Wgsl(g.Workgroup).In("x", x).In("sc", scale);
            if (zp is not null) k.In("zp", zp);
            return k.Out("y", to).Build(body);
        }, "DequantizeLinear", zp is null ? [x, scale, y] : [x, scale, zp, y], meta, y.Length);
        return y;
    }

    static Value?[] DynamicQuantize(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x)
    {
        var y = g.Empty(DType.UInt8, x.Shape);
        var scale = g.Empty(x.DType, []);
        var zp = g.Empty(DType.UInt8, []);
        var sc32 = g.Empty(DType.Float32, [2]);
        var meta = new Meta();
        meta.Add(x.Length);
        // scale = (max(0, max x) - min(0, min x)) / 255 (1/255 when equal); zp = round(clamp(0 - min/scale, 0, 255)).
        string stats = """
  var mx = 0.0; var mn = 0.0;
  for (var j = lid.x; j < md[0]; j += 256u) { let v = f32(x(j)); mx = max(mx, v); mn = min(mn, v); }
  rmax[lid.x] = mx; rmin[lid.x] = mn;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) { rmax[lid.x] = max(rmax[lid.x], rmax[lid.x + s]); rmin[lid.x] = min(rmin[lid.x], rmin[lid.x + s]); }
    workgroupBarrier();
  }
  if (lid.x == 0u) {
    let hi = rmax[0]; let lo = rmin[0];
    let scale = select(hi - lo, 1.0, hi == lo) / 255.0;
    let z = round(clamp(0.0 - lo / scale, 0.0, 255.0));
    p_st(0u, scale); p_st(1u, z);
    scale_st(0u, scale); zp_st(0u, u32(z));
  }
""";
        g.LaunchGroups(new WebGpuPlatform.KernelKey("dynq_stats", $"{(int)x.Storage}|{(int)x.DType}"), () => new Wgsl(256).In("x", x).Out("p", DType.Float32).Out("scale", x.DType).Out("zp", DType.UInt8)
            .Decl("var<workgroup> rmax: array<f32, 256>;\nvar<workgroup> rmin: array<f32, 256>;").Build(stats, elementwise: false), "DynamicQuantizeStats", [x, sc32, scale, zp], meta, 1);
        if (y.Length > 0)
            g.Launch(new WebGpuPlatform.KernelKey("dynq", $"{(int)x.Storage}"), () => new Wgsl(g.Workgroup).In("x", x).In("p", GpuStorage.F32).Out("y", DType.UInt8).Build("""
  let r = round(f32(x(i)) / p(0u)) + p(1u);
  y_st(i, u32(select(clamp(r, 0.0, 255.0), 0.0, r != r)));
"""), "DynamicQuantizeLinear", [x, sc32, y], meta, y.Length);
        g.Free(sc32);
        return [y, scale, zp];
    }

    // ---- windows ------------------------------------------------------------------------------------------

    static string? WindowSupport(Tapml.Platforms.NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t) =>
        Wgsl.StorageOf((DType)ctx.Int("output_datatype", 1)) is null ? $"{ctx.Node.OpType} to {DTypes.Name((DType)ctx.Int("output_datatype", 1))}: no WGSL type" : null;

    static GpuTensor Window(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins, int kind)
    {
        var sv = g.Ints(GpuOps.In(ins, 0, ctx));
        if (sv.Length != 1) throw ctx.Error($"size must hold one value, got {sv.Length}");
        long size = sv[0];
        if (size < 0) throw ctx.Error("size must be non-negative");
        bool periodic = ctx.Int("periodic", 1) != 0;
        var dt = (DType)ctx.Int("output_datatype", 1);
        var y = g.Empty(dt, [size]);
        if (size == 0) return y;
        var meta = new Meta();
        meta.Add(size);
        meta.AddFloat((float)(2 * Math.PI / (periodic ? size : size - 1)));
        // NOTE: sincos_ (Elementwise's reduction + polynomials): Vulkan's cos only promises 2^-11 absolute error.
        string w = kind switch
        {
            0 => "0.5 - 0.5 * sincos_(a, 1u)",
            1 => "0.54347826 - 0.45652174 * sincos_(a, 1u)",
            _ => "0.42 - 0.5 * sincos_(a, 1u) + 0.08 * sincos_(2.0 * a, 1u)",
        };
        g.Launch(new WebGpuPlatform.KernelKey("window", $"{kind}|{(int)dt}"), () => new Wgsl(g.Workgroup).Out("y", dt).Decl(Elementwise.HelperFunctions)
            .Build($"  let a = f32(i) * bitcast<f32>(md[1]);\n  y_st(i, {S(dt)}({w}));"), ctx.Node.OpType, [y], meta, size);
        return y;
    }
}
