using Tapml.Core;
using CpuResize = Tapml.Platforms.Cpu.Ops.Resize;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Resize (every mode, coordinate transformation, nearest rounding, cubic coefficient, exclude_outside,
/// antialias, axes, keep_aspect_ratio_policy) and Upsample. The taps of each output index along each axis come from
/// the cpu reference's own mapping (computed on the host, uploaded once per geometry); the GPU applies them one axis
/// at a time, skipping axes that keep their size and positions.</summary>
public static class Resize
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "Resize", 10, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            Tensor? Host(int i) => i < ins.Length && ins[i] is { Length: > 0 } t ? g.HostOrDownload(t) : null;
            var plan = ctx.Opset < 11 ? CpuResize.Plan(ctx, x.Shape, null, Host(1), null) : CpuResize.Plan(ctx, x.Shape, Host(1), Host(2), Host(3));
            return [Run(g, ctx, x, plan.Spec, plan.Scales, plan.OutShape, plan.RoiS, plan.RoiE)];
        }, Support));
        add(new GpuOp("", "Upsample", 7, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            var plan = CpuResize.UpsamplePlan(ctx, x.Shape, ctx.Opset < 9 ? null : g.HostOrDownload(GpuOps.In(ins, 1, ctx)));
            return [Run(g, ctx, x, plan.Spec, plan.Scales, plan.OutShape, plan.RoiS, plan.RoiE)];
        }, Support));
    }

    static string? Support(NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t)
    {
        string mode = ctx.String("mode", "nearest");
        if (mode != "nearest" && t.Count > 0 && t[0] is { } x && Wgsl.StorageOf(x.ElemType) != GpuStorage.F32)
            return $"{ctx.Node.OpType} mode '{mode}' on {DTypes.Name(x.ElemType)} is not implemented on webgpu (float types only; nearest takes any)";
        return null;
    }

    /// <summary>Per-axis tap tables: for output index j, K input indices (i32, -1 first = extrapolate) and K weights.</summary>
    sealed record Table(Tensor Idx, Tensor W, int K, bool Identity);

    static readonly Dictionary<string, Table> _tables = new();

    static Table Taps(NodeContext ctx, CpuResize.ResizeSpec s, long inLen, double scale, long outLen, double roiS, double roiE)
    {
        string key = $"{s.Mode}|{s.Ctm}|{s.NearestMode}|{s.CubicA}|{s.ExcludeOutside}|{s.Antialias}|{inLen}|{BitConverter.DoubleToInt64Bits(scale)}|{outLen}|{roiS}|{roiE}";
        lock (_tables)
            if (_tables.TryGetValue(key, out var cached)) return cached;
        var taps = new CpuResize.Taps[outLen];
        int k = 1;
        bool identity = outLen == inLen;
        for (long j = 0; j < outLen; j++)
        {
            var t = taps[j] = CpuResize.AxisTaps(ctx, s, j, inLen, scale, outLen, roiS, roiE);
            k = Math.Max(k, t.Idx.Length);
            if (t.Extrapolate || t.Idx.Length != 1 || t.Idx[0] != j || t.W[0] != 1.0) identity = false;
        }
        var idx = new int[outLen * k];
        var w = new float[outLen * k];
        for (long j = 0; j < outLen; j++)
        {
            var t = taps[j];
            if (t.Extrapolate) { idx[j * k] = -1; continue; }
            for (int q = 0; q < t.Idx.Length; q++) { idx[j * k + q] = t.Idx[q]; w[j * k + q] = (float)t.W[q]; }
        }
        var table = new Table(Tensor.FromArray(idx, [outLen * k]), Tensor.FromArray(w, [outLen * k]), k, identity);
        lock (_tables)
        {
            // NOTE: a bounded cache: a model resizes to a handful of geometries; shapes that change every run start over.
            if (_tables.Count >= 512) _tables.Clear();
            _tables[key] = table;
        }
        return table;
    }

    static GpuTensor Run(WebGpuPlatform g, NodeContext ctx, GpuTensor x, CpuResize.ResizeSpec spec, double[] scales, long[] outShape, double[] roiS, double[] roiE)
    {
        int r = x.Rank;
        bool nearest = spec.Mode == "nearest";
        if (!nearest && x.Storage is not (GpuStorage.F32 or GpuStorage.F16x2))
            throw new UnsupportedException($"{ctx.Node.OpType} mode '{spec.Mode}' on {DTypes.Name(x.DType)} is not implemented on webgpu (float types only)");
        if (ShapeUtil.Size(outShape) == 0 || x.Length == 0)
        {
            if (ShapeUtil.Size(outShape) != 0) throw ctx.Error($"cannot resize the empty {x.Describe()} to {ShapeUtil.Format(outShape)}");
            return g.Empty(x.DType, outShape);
        }
        var cur = x;
        var shape = (long[])x.Shape.Clone();
        for (int d = 0; d < r; d++)
        {
            var t = Taps(ctx, spec, x.Shape[d], scales[d], outShape[d], roiS[d], roiE[d]);
            if (t.Identity) continue;
            shape[d] = outShape[d];
            var y = g.Empty(x.DType, (long[])shape.Clone());
            Axis(g, cur, y, d, x.Shape[d], t, nearest, spec.Extrapolation);
            if (!ReferenceEquals(cur, x)) g.Free(cur);
            cur = y;
        }
        // Every axis kept its positions: the output is the input.
        return ReferenceEquals(cur, x) ? g.Alias(x, x.Shape) : cur;
    }

    /// <summary>One axis: y[o, j, i] = Σ_k w[j,k] · x[o, idx[j,k], i] (nearest: the one tap, in the input's own type).</summary>
    static void Axis(WebGpuPlatform g, GpuTensor x, GpuTensor y, int d, long inLen, Table t, bool nearest, double extrapolation)
    {
        long inner = ShapeUtil.Size(y.Shape.AsSpan(d + 1));
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(Math.Max(1, inner)); meta.Add(y.Shape[d]); meta.Add(inLen); meta.Add(t.K);
        var storage = Wgsl.StorageOf(y.DType)!.Value;
        if (storage == GpuStorage.F32) meta.AddFloat((float)extrapolation);
        else if (storage == GpuStorage.I32) meta.AddSigned((long)extrapolation);
        else meta.Add((long)Math.Max(0, extrapolation));
        string s = Wgsl.Scalar(storage);
        var idx = g.Upload(t.Idx);
        var bindings = nearest ? new[] { x, idx, y } : [x, idx, g.Upload(t.W), y];
        g.Launch(new WebGpuPlatform.KernelKey("resize", $"{(nearest ? "n" : "w")}|{(int)x.Storage}|{(int)y.DType}"), () =>
        {
            var w = new Wgsl(g.Workgroup).In("x", x).In("ti", GpuStorage.I32);
            if (!nearest) w.In("tw", GpuStorage.F32);
            w.Out("y", y.DType);
            return w.Build($$"""
  let inner = md[1]; let OL = md[2]; let IL = md[3]; let K = md[4];
  let ii = i % inner; let t = i / inner;
  let j = t % OL; let o = t / OL;
  let base = o * IL * inner + ii;
  let first = ti(j * K);
  if (first < 0) { y_st(i, {{(s == "u32" ? "md[5]" : $"bitcast<{s}>(md[5])")}}); return; }
{{(nearest ? "  y_st(i, x(base + u32(first) * inner));" : """
  var acc = 0.0;
  for (var k = 0u; k < K; k++) {
    let wk = tw(j * K + k);
    if (wk != 0.0) { acc += wk * f32(x(base + u32(ti(j * K + k)) * inner)); }
  }
  y_st(i, acc);
""")}}
""");
        }, nearest ? "ResizeNearest" : "ResizeLinear", bindings, meta, y.Length);
    }
}
