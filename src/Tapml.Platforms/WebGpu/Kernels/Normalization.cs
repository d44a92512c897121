using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>LayerNormalization, InstanceNormalization, GroupNormalization and MeanVarianceNormalization (a workgroup
/// per row: mean, then variance of the centred values, then the write), BatchNormalization (inference) and LRN
/// (element kernels).</summary>
public static class Normalization
{
    public static void Register(Action<GpuOp> add)
    {
        RegisterRowNorms(add);
        add(new GpuOp("", "LayerNormalization", 17, (g, ctx, ins) => LayerNorm(g, ctx, ins), Reductions.FloatOnly));
        add(new GpuOp("", "BatchNormalization", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            if (ctx.Int("training_mode", 0) != 0) throw new UnsupportedException("BatchNormalization in training mode is not implemented on webgpu");
            if (ctx.Opset < 7 && ctx.Int("spatial", 1) == 0) throw new UnsupportedException("BatchNormalization with spatial=0 is not implemented on webgpu");
            var p = Enumerable.Range(1, 4).Select(i => GpuOps.In(ins, i, ctx)).ToArray();
            long c = x.Rank > 1 ? x.Shape[1] : 1, inner = x.Rank > 2 ? ShapeUtil.Size(x.Shape.AsSpan(2)) : 1;
            foreach (var t in p) if (t.Length != c) throw ctx.Error($"parameter {t.Describe()} does not have {c} channels");
            var y = g.Empty(x.DType, x.Shape);
            if (y.Length == 0) return [y];
            var meta = new Meta();
            meta.Add(y.Length); meta.Add(inner); meta.Add(c); meta.AddFloat(ctx.Float("epsilon", 1e-5f));
            var w = new Wgsl(g.Workgroup).In("x", x).In("sc", p[0]).In("bi", p[1]).In("mu", p[2]).In("va", p[3]).Out("y", x.DType);
            string code = w.Build("  let ch = (i / md[1]) % md[2];\n  y_st(i, (f32(x(i)) - f32(mu(ch))) / sqrt(f32(va(ch)) + bitcast<f32>(md[3])) * f32(sc(ch)) + f32(bi(ch)));");
            g.Launch(code, "BatchNormalization", [x, p[0], p[1], p[2], p[3], y], meta, y.Length);
            return [y];
        }, Reductions.FloatOnly));
        add(new GpuOp("", "LRN", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            if (x.Rank < 3) throw ctx.Error($"LRN needs [N,C,…], got {ShapeUtil.Format(x.Shape)}");
            long size = ctx.Int("size");
            long c = x.Shape[1], inner = ShapeUtil.Size(x.Shape.AsSpan(2));
            var y = g.Empty(x.DType, x.Shape);
            if (y.Length == 0) return [y];
            var meta = new Meta();
            meta.Add(y.Length); meta.Add(inner); meta.Add(c);
            meta.Add((size - 1) / 2); meta.Add((size - 1 + 1) / 2);
            meta.AddFloat(ctx.Float("alpha", 1e-4f) / size); meta.AddFloat(ctx.Float("beta", 0.75f)); meta.AddFloat(ctx.Float("bias", 1f));
            var w = new Wgsl(g.Workgroup).In("x", x).Out("y", x.DType);
            // ONNX LRN: square_sum over channels [c - floor((size-1)/2), c + ceil((size-1)/2)].
            string code = w.Build("""
  let inner = md[1]; let C = i32(md[2]);
  let ch = i32((i / inner) % md[2]);
  let base = i - u32(ch) * inner;
  var s = 0.0;
  for (var k = max(0, ch - i32(md[3])); k <= min(C - 1, ch + i32(md[4])); k++) { let v = f32(x(base + u32(k) * inner)); s += v * v; }
  y_st(i, f32(x(i)) / pow(bitcast<f32>(md[7]) + bitcast<f32>(md[5]) * s, bitcast<f32>(md[6])));
""");
            g.Launch(code, "LRN", [x, y], meta, y.Length);
            return [y];
        }, Reductions.FloatOnly));
    }

    static void RegisterRowNorms(Action<GpuOp> add)
    {
        add(new GpuOp("", "InstanceNormalization", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            if (x.Rank < 3) throw ctx.Error($"input must have rank 3 or more, got {x.Describe()}");
            long c = x.Shape[1], hw = ShapeUtil.Size(x.Shape.AsSpan(2));
            var (sc, bi) = (GpuOps.In(ins, 1, ctx), GpuOps.In(ins, 2, ctx));
            if (sc.Length != c || bi.Length != c) throw ctx.Error($"scale {sc.Describe()} and B {bi.Describe()} must have {c} elements");
            return [RowNorm(g, x, x.Shape[0] * c, c, hw, hw, sc, bi, ctx.Float("epsilon", 1e-5f), mvn: false, "InstanceNormalization")];
        }, Reductions.FloatOnly));
        add(new GpuOp("", "GroupNormalization", 18, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            if (x.Rank < 2) throw ctx.Error($"X must have rank 2 or more, got {x.Describe()}");
            long groups = ctx.Int("num_groups"), c = x.Shape[1], hw = ShapeUtil.Size(x.Shape.AsSpan(2));
            if (groups < 1 || c % groups != 0) throw ctx.Error($"num_groups {groups} must divide the {c} channels");
            // Opset 21 scales per channel, opset 18 per group.
            bool perChannel = ctx.Opset >= 21;
            var (sc, bi) = (GpuOps.In(ins, 1, ctx), GpuOps.In(ins, 2, ctx));
            long want = perChannel ? c : groups;
            if (sc.Length != want || bi.Length != want) throw ctx.Error($"scale {sc.Describe()} and bias {bi.Describe()} must have {want} elements");
            long len = c / groups * hw;
            return [RowNorm(g, x, x.Shape[0] * groups, groups, len, perChannel ? hw : len, sc, bi, ctx.Float("epsilon", 1e-5f), mvn: false, "GroupNormalization")];
        }, (ctx, t) => Reductions.FloatOnly(ctx, t) ?? (ctx.Opset >= 21 && ctx.Int("stash_type", 1) != 1 ? "GroupNormalization with a stash_type other than float is not implemented on webgpu" : null)));
        add(new GpuOp("", "MeanVarianceNormalization", 9, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            int r = x.Rank;
            var red = new bool[r];
            foreach (var a in ctx.Ints("axes") ?? [0, 2, 3]) red[ShapeUtil.Axis(a, r, "axes")] = true;
            // Kept axes first, reduced axes last: each kept coordinate is one contiguous row.
            var perm = Enumerable.Range(0, r).Where(d => !red[d]).Concat(Enumerable.Range(0, r).Where(d => red[d])).ToArray();
            var pShape = perm.Select(d => x.Shape[d]).ToArray();
            long len = ShapeUtil.Size(perm.Where(d => red[d]).Select(d => x.Shape[d]).ToArray()), rows = x.Length / Math.Max(1, len);
            if (x.Length == 0) return [g.Empty(x.DType, x.Shape)];
            var xst = ShapeUtil.Strides(x.Shape);
            var permSt = perm.Select(d => xst[d]).ToArray();
            bool identity = perm.Select((d, k) => d == k).All(b => b);
            var t = x;
            if (!identity)
            {
                t = g.Empty(x.DType, pShape);
                DataMovement.Copy(g, x, t, pShape, permSt, 0, ShapeUtil.Strides(pShape), 0, "MVN_permute");
            }
            var u = RowNorm(g, t, rows, 1, len, len, null, null, 0, mvn: true, "MeanVarianceNormalization");
            if (identity) return [g.Alias(u, x.Shape)];
            g.Free(t);
            var y = g.Empty(x.DType, x.Shape);
            DataMovement.Copy(g, u, y, pShape, ShapeUtil.Strides(pShape), 0, permSt, 0, "MVN_permute");
            g.Free(u);
            return [y];
        }, Reductions.FloatOnly));
    }

    /// <summary>The shared head of the row-normalization kernels: one workgroup a row (md[0] rows of md[1]), two
    /// workgroup reductions give the row's mean <c>mu</c>, variance <c>var_</c> and <c>rstd</c> (epsilon in md[4]).</summary>
    const string RowMoments = """
  let row = wid.x + wid.y * nwg.x;
  if (row >= md[0]) { return; }
  let L = md[1];
  let base = row * L;
  var acc = 0.0;
  for (var j = lid.x; j < L; j += 256u) { acc += f32(x(base + j)); }
  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) { if (lid.x < s) { red[lid.x] += red[lid.x + s]; } workgroupBarrier(); }
  let mu = red[0] / f32(L);
  workgroupBarrier();
  acc = 0.0;
  for (var j = lid.x; j < L; j += 256u) { let d = f32(x(base + j)) - mu; acc += d * d; }
  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) { if (lid.x < s) { red[lid.x] += red[lid.x + s]; } workgroupBarrier(); }
  let var_ = red[0] / f32(L);
  let rstd = 1.0 / sqrt(var_ + bitcast<f32>(md[4]));
""";

    /// <summary>Normalizes <paramref name="rows"/> contiguous rows of <paramref name="len"/> elements (a workgroup
    /// per row): y = (x − mean)·rsqrt(var + eps)·sc[ch] + bi[ch] with ch = ((row mod R)·len + j) / per, or for
    /// MeanVarianceNormalization (x − mean) / (std + 1e-9).</summary>
    static GpuTensor RowNorm(WebGpuPlatform g, GpuTensor x, long rows, long rowsPerImage, long len, long per, GpuTensor? sc, GpuTensor? bi, float eps, bool mvn, string label)
    {
        var y = g.Empty(x.DType, x.Shape);
        if (y.Length == 0) return y;
        var meta = new Meta();
        meta.Add(rows); meta.Add(len); meta.Add(rowsPerImage); meta.Add(Math.Max(1, per)); meta.AddFloat(eps);
        bool affine = sc is not null && bi is not null;
        string write = mvn ? "(f32(x(base + j)) - mu) / (sqrt(var_) + 1e-9)"
            : "(f32(x(base + j)) - mu) * rstd * f32(sc(ch)) + f32(bi(ch))";
        var bindings = affine ? new[] { x, sc!, bi!, y } : [x, y];
        var (gx, gy) = Wgsl.Grid(rows, 1, g.Device.Limits.MaxWorkgroupsPerDimension);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("rownorm", $"{mvn}|{Wgsl.Letters(bindings[..^1].Select(b => b.Storage).ToArray())}|{(int)x.DType}"), () =>
        {
            var w = new Wgsl(256).In("x", x);
            if (affine) w.In("sc", sc!).In("bi", bi!);
            w.Out("y", x.DType);
            w.Decl("var<workgroup> red: array<f32, 256>;");
            return w.Build($$"""
{{RowMoments}}
  let r0 = (row % md[2]) * L;
  for (var j = lid.x; j < L; j += 256u) {
    let ch = (r0 + j) / md[3];
    y_st(base + j, {{write}});
  }
""", elementwise: false);
        }, label, bindings, meta, gx, gy);
        return y;
    }

    static Value?[] LayerNorm(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var scale = GpuOps.In(ins, 1, ctx);
        var bias = ins.Length > 2 ? ins[2] : null;
        int r = x.Rank;
        int axis = ShapeUtil.Axis(ctx.Int("axis", -1), r);
        long rows = ShapeUtil.Size(x.Shape.AsSpan(0, axis)), len = ShapeUtil.Size(x.Shape.AsSpan(axis));
        foreach (var p in new[] { scale, bias })
            if (p is not null && !TrailingOf(p.Shape, x.Shape[axis..]))
                throw new UnsupportedException($"LayerNormalization with {p.Describe()} broadcast other than over leading dimensions is not implemented on webgpu");
        var y = g.Empty(x.DType, x.Shape);
        var statShape = x.Shape.Select((d, i) => i < axis ? d : 1L).ToArray();
        var stashType = (DType)ctx.Int("stash_type", (long)DType.Float32);
        int outs = ctx.Node.Outputs.Length;
        var mean = outs > 1 && ctx.Node.Outputs[1].Length > 0 ? g.Empty(stashType, statShape) : null;
        var inv = outs > 2 && ctx.Node.Outputs[2].Length > 0 ? g.Empty(stashType, statShape) : null;
        if (y.Length > 0)
        {
            var meta = new Meta();
            meta.Add(rows); meta.Add(len); meta.Add(scale.Length); meta.Add(bias?.Length ?? 1); meta.AddFloat(ctx.Float("epsilon", 1e-5f));
            var w = new Wgsl(256).In("x", x).In("sc", scale);
            if (bias is not null) w.In("bi", bias);
            w.Out("y", x.DType);
            if (mean is not null) w.Out("mean", mean.DType);
            if (inv is not null) w.Out("inv", inv.DType);
            w.Decl("var<workgroup> red: array<f32, 256>;");
            string body = $$"""
{{RowMoments}}
  for (var j = lid.x; j < L; j += 256u) {
    y_st(base + j, (f32(x(base + j)) - mu) * rstd * f32(sc(j % md[2])){{(bias is null ? "" : " + f32(bi(j % md[3]))")}});
  }
{{(mean is null ? "" : "  if (lid.x == 0u) { mean_st(row, mu); }")}}
{{(inv is null ? "" : "  if (lid.x == 0u) { inv_st(row, rstd); }")}}
""";
            var (gx, gy) = Wgsl.Grid(rows, 1, g.Device.Limits.MaxWorkgroupsPerDimension);
            var bindings = new List<GpuTensor> { x, scale };
            if (bias is not null) bindings.Add(bias);
            bindings.Add(y);
            if (mean is not null) bindings.Add(mean);
            if (inv is not null) bindings.Add(inv);
            g.LaunchGroups(w.Build(body, elementwise: false), "LayerNormalization", bindings.ToArray(), meta, gx, gy);
        }
        var result = new Value?[outs];
        result[0] = y;
        if (outs > 1) result[1] = mean;
        if (outs > 2) result[2] = inv;
        return result;
    }

    /// <summary>Whether <paramref name="p"/> broadcasts to <paramref name="norm"/> by leading ones only (its
    /// elements repeat with period p.Length along the flattened normalized dimensions).</summary>
    static bool TrailingOf(long[] p, long[] norm)
    {
        var core = p.SkipWhile(d => d == 1).ToArray();
        if (core.Length > norm.Length) return false;
        return core.SequenceEqual(norm[(norm.Length - core.Length)..]);
    }
}
