using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Ops that rearrange or sample image-like tensors: Pad (constant, reflect, edge, wrap; axes; negative pads),
/// Tile, DepthToSpace and SpaceToDepth (strided copies), GridSample (2-D: nearest, linear, cubic; zeros, border,
/// reflection padding), RoiAlign (sample points from the host: one readback of the ROIs), and PRelu's slope of one
/// channel axis.</summary>
public static class Spatial
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "Pad", 1, (g, ctx, ins) => [Pad(g, ctx, ins)]));
        add(new GpuOp("", "Tile", 6, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            var reps = g.Ints(GpuOps.In(ins, 1, ctx));
            int r = x.Rank;
            if (reps.Length != r) throw ctx.Error($"repeats {ShapeUtil.Format(reps)} must have {r} values");
            // Viewed as [r0, d0, r1, d1, …] with stride 0 on the repeats.
            var st = ShapeUtil.Strides(x.Shape);
            var vShape = new long[2 * r]; var vSt = new long[2 * r]; var outShape = new long[r];
            for (int i = 0; i < r; i++)
            {
                if (reps[i] < 0) throw ctx.Error($"negative repeat in {ShapeUtil.Format(reps)}");
                vShape[2 * i] = reps[i]; vShape[2 * i + 1] = x.Shape[i]; vSt[2 * i + 1] = st[i];
                outShape[i] = reps[i] * x.Shape[i];
            }
            var y = g.Empty(x.DType, outShape);
            DataMovement.Copy(g, x, y, vShape, vSt, 0, ShapeUtil.Strides(vShape), 0, "Tile");
            return [y];
        }));
        add(new GpuOp("", "DepthToSpace", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            if (x.Rank != 4) throw ctx.Error($"input must be 4-D, got {x.Describe()}");
            long b = ctx.Int("blocksize");
            string mode = ctx.Opset >= 11 ? ctx.String("mode", "DCR") : "DCR";
            long n = x.Shape[0], c = x.Shape[1], h = x.Shape[2], w = x.Shape[3];
            if (b <= 0 || c % (b * b) != 0) throw ctx.Error($"channels {c} are not divisible by blocksize² ({b}²)");
            long c2 = c / (b * b);
            // DCR: [N, b, b, C/b², H, W] transposed [0, 3, 4, 1, 5, 2]; CRD: [N, C/b², b, b, H, W] transposed [0, 1, 4, 2, 5, 3].
            var (view, perm) = mode switch
            {
                "DCR" => (new[] { n, b, b, c2, h, w }, new[] { 0, 3, 4, 1, 5, 2 }),
                "CRD" => (new[] { n, c2, b, b, h, w }, new[] { 0, 1, 4, 2, 5, 3 }),
                _ => throw ctx.Error($"unknown mode '{mode}'"),
            };
            return [Permuted(g, x, view, perm, [n, c2, h * b, w * b])];
        }));
        add(new GpuOp("", "SpaceToDepth", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            if (x.Rank != 4) throw ctx.Error($"input must be 4-D, got {x.Describe()}");
            long b = ctx.Int("blocksize");
            long n = x.Shape[0], c = x.Shape[1], h = x.Shape[2], w = x.Shape[3];
            if (b <= 0 || h % b != 0 || w % b != 0) throw ctx.Error($"spatial size {h}x{w} is not divisible by blocksize {b}");
            return [Permuted(g, x, [n, c, h / b, b, w / b, b], [0, 3, 5, 1, 2, 4], [n, c * b * b, h / b, w / b])];
        }));
        add(new GpuOp("", "RoiAlign", 10, (g, ctx, ins) => [RoiAlign(g, ctx, ins)], Reductions.FloatOnly));
        add(new GpuOp("", "GridSample", 16, (g, ctx, ins) => [GridSample(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx))], (ctx, t) =>
        {
            if (Reductions.FloatOnly(ctx, t) is { } why) return why;
            if (t.Count > 0 && t[0] is { Shape: { } s } && s.Length != 4)
                return $"GridSample with {s.Length - 2} spatial dimensions is not implemented on webgpu (2 are)";
            return null;
        }));
    }

    /// <summary>x viewed as <paramref name="view"/>, transposed by <paramref name="perm"/>, laid out as <paramref name="shape"/>.</summary>
    static GpuTensor Permuted(WebGpuPlatform g, GpuTensor x, long[] view, int[] perm, long[] shape)
    {
        var vst = ShapeUtil.Strides(view);
        var pShape = perm.Select(p => view[p]).ToArray();
        var y = g.Empty(x.DType, shape);
        DataMovement.Copy(g, x, y, pShape, perm.Select(p => vst[p]).ToArray(), 0, ShapeUtil.Strides(pShape), 0, "Permute");
        return y;
    }

    /// <summary>PRelu's slope as it broadcasts to X: unidirectionally, or (as ONNX's reference and older models) a
    /// 1-D slope along the one axis of X of its length.</summary>
    public static GpuTensor PReluSlope(WebGpuPlatform g, NodeContext ctx, GpuTensor x, GpuTensor slope)
    {
        var xs = x.Shape; var ss = slope.Shape;
        bool uni = ss.Length <= xs.Length;
        for (int i = 0; uni && i < ss.Length; i++)
        {
            long s = ss[^(i + 1)], d = xs[^(i + 1)];
            if (s != d && s != 1) uni = false;
        }
        if (uni || ss.Length != 1) return slope;
        int found = -1, count = 0;
        for (int i = 0; i < xs.Length; i++) if (xs[i] == ss[0]) { found = i; count++; }
        if (count != 1) throw ctx.Error($"slope shape {ShapeUtil.Format(ss)} does not broadcast to X shape {ShapeUtil.Format(xs)}");
        var shape = Enumerable.Repeat(1L, xs.Length - found).ToArray();
        shape[0] = ss[0];
        return g.Alias(slope, shape);
    }

    static GpuTensor Pad(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        int r = x.Rank;
        string mode = ctx.String("mode", "constant");
        if (mode is not ("constant" or "reflect" or "edge" or "wrap") || mode == "wrap" && ctx.Opset < 19)
            throw new UnsupportedException($"Pad mode '{mode}' at opset {ctx.Opset} is not implemented on webgpu");
        long[] raw;
        double value = 0;
        long[]? axes = null;
        if (ctx.Opset < 11)
        {
            raw = ctx.Ints(ctx.Opset < 2 ? "paddings" : "pads") ?? throw ctx.Error("needs the pads attribute");
            value = ctx.Float("value", 0f);
        }
        else
        {
            raw = g.Ints(GpuOps.In(ins, 1, ctx));
            if (ins.Length > 2 && ins[2] is { Length: > 0 } cv)
            {
                if (cv.DType != x.DType) throw ctx.Error($"constant_value is {DTypes.Name(cv.DType)}, data is {DTypes.Name(x.DType)}");
                var h = g.HostOrDownload(cv);
                value = h.Data.GetValue(0) switch { Half v => (double)v, BFloat16 v => (float)v, bool v => v ? 1 : 0, var v => Convert.ToDouble(v) };
            }
            if (ctx.Opset >= 18 && ins.Length > 3 && ins[3] is { } at) axes = g.Ints(at);
        }
        // Negative pads crop first: the crop is an offset and a smaller extent of x.
        var (begin, _, crop, cropOff, outShape) = PadGeometry.Of(ctx, raw, axes, x.Shape, x.Describe());
        var st = ShapeUtil.Strides(x.Shape);
        var y = g.Empty(x.DType, outShape);
        if (y.Length == 0) return y;
        if (ShapeUtil.Size(crop) == 0 && mode != "constant") throw ctx.Error($"mode '{mode}' cannot pad an empty tensor");
        if (ShapeUtil.Size(crop) == 0) return ShapeOps.Fill(g, x.DType, outShape, value);
        var storage = Wgsl.StorageOf(x.DType)!.Value;
        var meta = new Meta();
        meta.Add(y.Length);
        int shapeAt = meta.AddAll(outShape);
        int beginAt = meta.AddAll(begin);
        int cropAt = meta.AddAll(crop);
        int strideAt = meta.AddAll(st);
        int offAt = meta.Add(cropOff);
        int valueAt = storage == GpuStorage.F32 ? meta.AddFloat((float)value) : storage == GpuStorage.I32 ? meta.AddSigned((long)value) : meta.Add((long)value);
        string s = Wgsl.Scalar(storage);
        g.Launch(new WebGpuPlatform.KernelKey("pad", $"{mode}|{r}|{(int)x.Storage}|{(int)x.DType}"), () =>
        {
            var b = new StringBuilder($"  var rem = i;\n  var off = i32(md[{offAt}]);\n  var outside = false;\n");
            for (int d = r - 1; d >= 0; d--)
            {
                b.Append($"  {{\n    let c = i32(rem % md[{shapeAt + d}]); rem = rem / md[{shapeAt + d}];\n    let n = i32(md[{cropAt + d}]);\n    var s = c - i32(md[{beginAt + d}]);\n");
                b.Append(mode switch
                {
                    "constant" => "    if (s < 0 || s >= n) { outside = true; }\n",
                    "edge" => "    s = clamp(s, 0, n - 1);\n",
                    "wrap" => "    s = ((s % n) + n) % n;\n",
                    // numpy 'reflect': mirror about the edges without repeating them (period 2(n-1)).
                    _ => "    if (n == 1) { s = 0; } else { let p = 2 * (n - 1); var m = ((s % p) + p) % p; if (m >= n) { m = p - m; } s = m; }\n",
                });
                b.Append($"    off += s * i32(md[{strideAt + d}]);\n  }}\n");
            }
            b.Append($"  if (outside) {{ y_st(i, {(s == "u32" ? $"md[{valueAt}]" : $"bitcast<{s}>(md[{valueAt}])")}); return; }}\n  y_st(i, {s}(x(u32(off))));");
            return new Wgsl(g.Workgroup).In("x", x).Out("y", x.DType).Build(b.ToString());
        }, $"Pad_{mode}", [x, y], meta, y.Length);
        return y;
    }

    /// <summary>RoiAlign: the ROIs and batch indices are read on the host (one readback when a kernel made them) and
    /// turned into the cpu reference's sample points; one thread per output element sums (or maxes) its bin's samples.</summary>
    static GpuTensor RoiAlign(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var rois = g.HostOrDownload(GpuOps.In(ins, 1, ctx)).ToDoubleArray();
        var bi = g.Ints(GpuOps.In(ins, 2, ctx));
        if (x.Rank != 4) throw ctx.Error($"X must be [N, C, H, W], got {x.Describe()}");
        if (rois.Length != bi.Length * 4) throw ctx.Error($"rois ({rois.Length} values) and batch_indices [{bi.Length}] do not match");
        string mode = ctx.String("mode", "avg");
        if (mode is not ("avg" or "max")) throw new UnsupportedException($"RoiAlign mode '{mode}' is not implemented on webgpu");
        string ctm = ctx.Opset >= 16 ? ctx.String("coordinate_transformation_mode", "half_pixel") : "output_half_pixel";
        if (ctm is not ("half_pixel" or "output_half_pixel")) throw new UnsupportedException($"RoiAlign coordinate_transformation_mode '{ctm}' is not implemented on webgpu");
        long n = x.Shape[0], c = x.Shape[1], h = x.Shape[2], w = x.Shape[3], oh = ctx.Int("output_height", 1), ow = ctx.Int("output_width", 1);
        var spec = new Tapml.Platforms.Cpu.Ops.Detection.RoiSpec(h, w, oh, ow, ctx.Int("sampling_ratio", 0), ctx.Float("spatial_scale", 1f), ctm == "half_pixel", false);
        var y = g.Empty(x.DType, [bi.Length, c, oh, ow]);
        if (y.Length == 0) return y;
        // info per ROI: first sample, samples per bin, divisor, batch index.
        var info = new int[bi.Length * 4];
        var pos = new List<int>(); var wt = new List<float>();
        for (int r = 0; r < bi.Length; r++)
        {
            if (bi[r] < 0 || bi[r] >= n) throw ctx.Error($"batch index {bi[r]} out of range [0, {n})");
            var smp = Tapml.Platforms.Cpu.Ops.Detection.Samples(spec, rois.AsSpan(r * 4, 4));
            info[r * 4] = pos.Count / 4; info[r * 4 + 1] = checked((int)(smp.Gh * smp.Gw)); info[r * 4 + 2] = checked((int)smp.Count); info[r * 4 + 3] = (int)bi[r];
            foreach (var p in smp.Pos) pos.Add(checked((int)p));
            foreach (var v in smp.Wt) wt.Add((float)v);
        }
        if (pos.Count == 0) { pos.AddRange([0, 0, 0, 0]); wt.AddRange([0f, 0f, 0f, 0f]); }
        var tInfo = g.UploadTemporary(Tensor.FromArray(info, [info.Length]));
        var tPos = g.UploadTemporary(Tensor.FromArray(pos.ToArray(), [pos.Count]));
        var tWt = g.UploadTemporary(Tensor.FromArray(wt.ToArray(), [wt.Count]));
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(c); meta.Add(oh * ow); meta.Add(h * w);
        bool max = mode == "max";
        g.Launch(new WebGpuPlatform.KernelKey("roialign", $"{mode}|{(int)x.Storage}|{(int)x.DType}"), () =>
            new Wgsl(g.Workgroup).In("x", x).In("info", GpuStorage.I32).In("pos", GpuStorage.I32).In("wt", GpuStorage.F32).Out("y", x.DType).Build($$"""
  let C = md[1]; let B = md[2]; let HW = md[3];
  let bin = i % B; let rc = i / B; let ch = rc % C; let r = rc / C;
  let S = u32(info(r * 4u + 1u));
  let p0 = u32(info(r * 4u)) + bin * S;
  let bd = (u32(info(r * 4u + 3u)) * C + ch) * HW;
  var acc = 0.0;
  for (var s = 0u; s < S; s++) {
    let q = (p0 + s) * 4u;
    let v0 = wt(q) * f32(x(bd + u32(pos(q)))); let v1 = wt(q + 1u) * f32(x(bd + u32(pos(q + 1u))));
    let v2 = wt(q + 2u) * f32(x(bd + u32(pos(q + 2u)))); let v3 = wt(q + 3u) * f32(x(bd + u32(pos(q + 3u))));
{{(max ? "    let v = max(max(v0, v1), max(v2, v3));\n    acc = select(max(acc, v), v, s == 0u);" : "    acc += v0 + v1 + v2 + v3;")}}
  }
  y_st(i, {{(max ? "acc" : "acc / f32(info(r * 4u + 2u))")}});
"""), $"RoiAlign_{mode}", [x, tInfo, tPos, tWt, y], meta, y.Length);
        g.Free(tInfo); g.Free(tPos); g.Free(tWt);
        return y;
    }

    /// <summary>GridSample on [N, C, H, W] with grid [N, Ho, Wo, 2] (x, y): the cpu reference's denormalization,
    /// rounding, border handling and cubic coefficients (A = −0.75), one thread per output element.</summary>
    static GpuTensor GridSample(WebGpuPlatform g, NodeContext ctx, GpuTensor x, GpuTensor grid)
    {
        string mode = ctx.String("mode", ctx.Opset >= 20 ? "linear" : "bilinear");
        mode = mode switch { "bilinear" => "linear", "bicubic" => "cubic", _ => mode };
        if (mode is not ("linear" or "nearest" or "cubic")) throw new UnsupportedException($"GridSample mode '{mode}' is not implemented on webgpu");
        string pad = ctx.String("padding_mode", "zeros");
        if (pad is not ("zeros" or "border" or "reflection")) throw new UnsupportedException($"GridSample padding_mode '{pad}' is not implemented on webgpu");
        bool align = ctx.Int("align_corners", 0) != 0;
        if (grid.Rank != 4 || grid.Shape[^1] != 2 || grid.Shape[0] != x.Shape[0])
            throw ctx.Error($"grid {grid.Describe()} does not match X {x.Describe()}");
        long n = x.Shape[0], c = x.Shape[1], h = x.Shape[2], w = x.Shape[3], ho = grid.Shape[1], wo = grid.Shape[2];
        var y = g.Empty(x.DType, [n, c, ho, wo]);
        if (y.Length == 0) return y;
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(c); meta.Add(h); meta.Add(w); meta.Add(ho * wo); meta.Add(align ? 1 : 0);
        int k = mode == "nearest" ? 1 : mode == "linear" ? 2 : 4;
        string pix = pad switch
        {
            "zeros" => "select(-1, i, i >= 0 && i < d)",
            "border" => "clamp(i, 0, d - 1)",
            _ => "clamp(i32(reflect_(f32(i), lo, hi)), 0, d - 1)",
        };
        g.Launch(new WebGpuPlatform.KernelKey("gridsample", $"{mode}|{pad}|{(int)x.Storage}|{(int)grid.Storage}|{(int)x.DType}"), () =>
        {
            var wg = new Wgsl(g.Workgroup).In("x", x).In("grid", grid).Out("y", x.DType);
            wg.Decl("""
fn reflect_(v: f32, lo: f32, hi: f32) -> f32 {
  let rng = hi - lo;
  if (rng <= 0.0) { return lo; }
  if (v < lo) { let dv = lo - v; let k = floor(dv / rng); let r = dv - k * rng; if (i32(k) % 2 == 0) { return lo + r; } return hi - r; }
  if (v > hi) { let dv = v - hi; let k = floor(dv / rng); let r = dv - k * rng; if (i32(k) % 2 == 0) { return hi - r; } return lo + r; }
  return v;
}
""");
            wg.Decl($"fn pix_(i: i32, d: i32, lo: f32, hi: f32) -> i32 {{ return {pix}; }}");
            // Coordinate of one axis: denormalized (align_corners), rounded for nearest, then border-handled.
            wg.Decl($$"""
fn coord_(gv: f32, len: u32, align: bool) -> f32 {
  let L = f32(len);
  var v = select(((gv + 1.0) * L - 1.0) / 2.0, (gv + 1.0) / 2.0 * (L - 1.0), align);
{{(mode == "nearest" ? "  v = round(v);\n" : "")}}  let lo = select(-0.5, 0.0, align); let hi = select(L - 0.5, L - 1.0, align);
  if (v < lo || v > hi) {
{{(pad == "border" ? "    v = clamp(v, 0.0, L - 1.0);\n" : pad == "reflection" ? "    v = reflect_(v, lo, hi);\n" : "")}}  }
  return v;
}
""");
            wg.Decl(mode switch
            {
                "nearest" => "fn tw_(t: f32, q: u32) -> f32 { return 1.0; }",
                "linear" => "fn tw_(t: f32, q: u32) -> f32 { return select(t, 1.0 - t, q == 0u); }",
                _ => """
fn tw_(t: f32, q: u32) -> f32 {
  let a = -0.75;
  if (q == 0u) { return ((a * (t + 1.0) - 5.0 * a) * (t + 1.0) + 8.0 * a) * (t + 1.0) - 4.0 * a; }
  if (q == 1u) { return ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0; }
  if (q == 2u) { return ((a + 2.0) * (1.0 - t) - (a + 3.0)) * (1.0 - t) * (1.0 - t) + 1.0; }
  return ((a * (2.0 - t) - 5.0 * a) * (2.0 - t) + 8.0 * a) * (2.0 - t) - 4.0 * a;
}
""",
            });
            string first = mode == "cubic" ? " - 1" : "";
            return wg.Build($$"""
  let C = md[1]; let H = md[2]; let W = md[3]; let HWo = md[4]; let align = md[5] != 0u;
  let o = i % HWo; let nc = i / HWo; let n = nc / C;
  let vx = coord_(f32(grid((n * HWo + o) * 2u)), W, align);
  let vy = coord_(f32(grid((n * HWo + o) * 2u + 1u)), H, align);
  let loX = select(-0.5, 0.0, align); let hiX = select(f32(W) - 0.5, f32(W) - 1.0, align);
  let loY = select(-0.5, 0.0, align); let hiY = select(f32(H) - 0.5, f32(H) - 1.0, align);
  let x0 = {{(mode == "nearest" ? "i32(vx)" : "i32(floor(vx))")}}; let y0 = {{(mode == "nearest" ? "i32(vy)" : "i32(floor(vy))")}};
  let tx = vx - f32(x0); let ty = vy - f32(y0);
  let base = nc * H * W;
  var acc = 0.0;
  for (var qy = 0u; qy < {{k}}u; qy++) {
    let iy = pix_(y0{{first}} + i32(qy), i32(H), loY, hiY);
    if (iy < 0) { continue; }
    let wy = tw_(ty, qy);
    for (var qx = 0u; qx < {{k}}u; qx++) {
      let ix = pix_(x0{{first}} + i32(qx), i32(W), loX, hiX);
      if (ix < 0) { continue; }
      acc += wy * tw_(tx, qx) * f32(x(base + u32(iy) * W + u32(ix)));
    }
  }
  y_st(i, acc);
""");
        }, $"GridSample_{mode}", [x, grid, y], meta, y.Length);
        return y;
    }
}
