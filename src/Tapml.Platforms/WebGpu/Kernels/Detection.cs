using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>NonMaxSuppression: one thread per (batch, class) walks its boxes by score (highest first, lower index on
/// ties) and keeps each whose IoU with every kept box is at most the threshold. The number of kept boxes sizes the
/// output, so the per-class counts are read back once; a second dispatch writes the [b, c, box] rows.</summary>
public static class Detection
{
    public static void Register(Action<GpuOp> add) =>
        add(new GpuOp("", "NonMaxSuppression", 10, (g, ctx, ins) => [Nms(g, ctx, ins)], Reductions.FloatOnly));

    static double Scalar(WebGpuPlatform g, GpuTensor? t, double fallback)
    {
        if (t is null || t.Length == 0) return fallback;
        return g.HostOrDownload(t).GetDouble(0);
    }

    static GpuTensor Nms(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins)
    {
        var boxes = GpuOps.In(ins, 0, ctx);
        var scores = GpuOps.In(ins, 1, ctx);
        if (boxes.Rank != 3 || boxes.Shape[2] != 4) throw ctx.Error($"boxes must be [batches, boxes, 4], got {boxes.Describe()}");
        if (scores.Rank != 3 || scores.Shape[0] != boxes.Shape[0] || scores.Shape[2] != boxes.Shape[1])
            throw ctx.Error($"scores {scores.Describe()} does not match boxes {boxes.Describe()}");
        GpuTensor? Opt(int i) => ins.Length > i ? ins[i] : null;
        // max_output_boxes_per_class defaults to 0 (no output).
        long maxOut = Math.Max(0, (long)Scalar(g, Opt(2), 0));
        float iou = (float)Scalar(g, Opt(3), 0);
        bool hasScore = Opt(4) is { Length: > 0 };
        float scoreTh = (float)Scalar(g, Opt(4), 0);
        long cpb = ctx.Int("center_point_box", 0);
        if (cpb is not (0 or 1)) throw ctx.Error($"center_point_box must be 0 or 1, got {cpb}");
        long B = boxes.Shape[0], N = boxes.Shape[1], C = scores.Shape[1];
        long keep = Math.Min(maxOut, N);
        if (B * C == 0 || keep == 0) return g.Empty(DType.Int64, [0, 3]);
        var sel = g.Empty(DType.UInt32, [B * C * keep]);
        var cnt = g.Empty(DType.UInt32, [B * C]);
        var meta = new Meta();
        meta.Add(B * C); meta.Add(N); meta.Add(C); meta.Add(keep); meta.AddFloat(iou); meta.AddFloat(scoreTh);
        string corners = cpb == 0
            // [y1, x1, y2, x2], corners in either order
            ? "  let ay0 = min(boxes(p), boxes(p + 2u)); let ay1 = max(boxes(p), boxes(p + 2u)); let ax0 = min(boxes(p + 1u), boxes(p + 3u)); let ax1 = max(boxes(p + 1u), boxes(p + 3u));\n" +
              "  let by0 = min(boxes(q), boxes(q + 2u)); let by1 = max(boxes(q), boxes(q + 2u)); let bx0 = min(boxes(q + 1u), boxes(q + 3u)); let bx1 = max(boxes(q + 1u), boxes(q + 3u));\n"
            // [x_center, y_center, width, height]
            : "  let ax0 = boxes(p) - boxes(p + 2u) / 2.0; let ax1 = boxes(p) + boxes(p + 2u) / 2.0; let ay0 = boxes(p + 1u) - boxes(p + 3u) / 2.0; let ay1 = boxes(p + 1u) + boxes(p + 3u) / 2.0;\n" +
              "  let bx0 = boxes(q) - boxes(q + 2u) / 2.0; let bx1 = boxes(q) + boxes(q + 2u) / 2.0; let by0 = boxes(q + 1u) - boxes(q + 3u) / 2.0; let by1 = boxes(q + 1u) + boxes(q + 3u) / 2.0;\n";
        string decl = $$"""
fn suppress(p: u32, q: u32) -> bool {
{{corners}}
  let ix0 = max(ax0, bx0); let ix1 = min(ax1, bx1);
  if (ix1 <= ix0) { return false; }
  let iy0 = max(ay0, by0); let iy1 = min(ay1, by1);
  if (iy1 <= iy0) { return false; }
  let inter = (ix1 - ix0) * (iy1 - iy0);
  let a1 = (ax1 - ax0) * (ay1 - ay0); let a2 = (bx1 - bx0) * (by1 - by0);
  let uni = a1 + a2 - inter;
  if (inter <= 0.0 || a1 <= 0.0 || a2 <= 0.0 || uni <= 0.0) { return false; }
  return inter / uni > bitcast<f32>(md[4]);
}
""";
        string body = $$"""
  let N = md[1]; let b = i / md[2]; let K = md[3];
  let so = i * N; let bo = b * N * 4u; let ob = i * K;
  var n = 0u;
  var ps = 0.0; var pi = 0u;
  for (var st = 0u; st < N && n < K; st++) {
    // The next candidate in (score desc, index asc) order after the previous one.
    var bs = 0.0; var bi = 0xffffffffu;
    for (var a = 0u; a < N; a++) {
      let s = scores(so + a);
      {{(hasScore ? "if (!(s > bitcast<f32>(md[5]))) { continue; }" : "")}}
      let after = st == 0u || s < ps || (s == ps && a > pi);
      if (after && (bi == 0xffffffffu || s > bs || (s == bs && a < bi))) { bs = s; bi = a; }
    }
    if (bi == 0xffffffffu) { break; }
    ps = bs; pi = bi;
    var keep = true;
    for (var j = 0u; j < n; j++) { if (suppress(bo + bi * 4u, bo + sel_b[ob + j] * 4u)) { keep = false; break; } }
    if (keep) { sel_st(ob + n, bi); n += 1u; }
  }
  cnt_st(i, n);
""";
        g.Launch(new WebGpuPlatform.KernelKey("nms", $"{cpb}|{hasScore}|{(int)boxes.Storage}|{(int)scores.Storage}"),
            () => new Wgsl(g.Workgroup).In("boxes", boxes).In("scores", scores).Out("sel", DType.UInt32).Out("cnt", DType.UInt32).Decl(decl).Build(body),
            "NonMaxSuppression", [boxes, scores, sel, cnt], meta, B * C);
        // NOTE: one readback: the number of selected boxes is the output's shape.
        long total = ((uint[])g.Download(cnt).Data).Sum(v => (long)v);
        var y = g.Empty(DType.Int64, [total, 3]);
        if (total > 0)
        {
            var m2 = new Meta();
            m2.Add(B * C); m2.Add(C); m2.Add(keep);
            g.Launch(new WebGpuPlatform.KernelKey("nms_rows", ""), () => new Wgsl(g.Workgroup).In("sel", GpuStorage.U32).In("cnt", GpuStorage.U32).Out("y", DType.Int64).Build("""
  var at = 0u;
  for (var j = 0u; j < i; j++) { at += cnt(j); }
  for (var j = 0u; j < cnt(i); j++) {
    let r = (at + j) * 3u;
    y_st(r, i32(i / md[1])); y_st(r + 1u, i32(i % md[1])); y_st(r + 2u, i32(sel(i * md[2] + j)));
  }
"""), "NonMaxSuppressionRows", [sel, cnt, y], m2, B * C);
        }
        g.Free(sel);
        g.Free(cnt);
        return y;
    }
}
