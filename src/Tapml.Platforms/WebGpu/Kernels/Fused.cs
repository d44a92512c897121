using System.Text;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary><c>tapml.Fused</c> regions (<see cref="Fusion"/>) as one kernel each: <c>elementwise</c> composes the
/// body's expressions into one broadcast kernel, <c>rms_norm</c> reduces and scales a row in one workgroup,
/// <c>rotary</c> rotates halves of the last axis, <c>matmul_add</c> adds in the matrix-vector epilogue. A region outside what a kernel handles (other dtypes, a shape the
/// pattern did not promise, too many bindings) runs its body node by node on the GPU: same result, more dispatches.</summary>
public static class Fused
{
    public static void Register(Action<GpuOp> add) =>
        add(new GpuOp(Fusion.Domain, Fusion.OpType, 1, Run, (ctx, t) =>
            ctx.Graph("body").Nodes.FirstOrDefault(n => GpuOps.Find(n.Domain, n.OpType) is null) is { } missing
                ? $"fused region holds {missing.OpType}, which has no WGSL kernel" : null, AnyInputType: true));

    static Value?[] Run(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var body = ctx.Graph("body");
        int opset = (int)ctx.Int("opset", 17);
        GpuTensor? y = ctx.String("kind", "") switch
        {
            "elementwise" => Elementwise(g, ctx, body, opset, ins),
            "rms_norm" => RmsNorm(g, ctx, body, ins),
            "rotary" => Rotary(g, ctx, ins),
            "matmul_add" => ins.Length == 3 && ins[0] is { } a && ins[1] is { } b && ins[2] is { } r ? MatMul.MatVecAdd(g, a, b, r) : null,
            _ => null,
        };
        return [y ?? NodeByNode(g, ctx, body, opset, ins)];
    }

    static bool IsF32(GpuTensor? t) => t is { DType: DType.Float32, Storage: GpuStorage.F32 };

    /// <summary>The body's nodes one after another with the ordinary kernels (values stay on the GPU).</summary>
    static GpuTensor NodeByNode(WebGpuPlatform g, NodeContext ctx, Graph body, int opset, GpuTensor?[] ins)
    {
        var values = new Dictionary<string, GpuTensor>();
        for (int i = 0; i < body.Inputs.Count && i < ins.Length; i++) if (ins[i] is { } t) values[body.Inputs[i].Name] = t;
        var made = new List<GpuTensor>();
        foreach (var n in body.Nodes)
        {
            var op = GpuOps.Find(n.Domain, n.OpType) ?? throw new UnsupportedException($"fused region '{ctx.Node.Name}': {n.OpType} has no WGSL kernel");
            var args = n.Inputs.Select(s => s.Length == 0 ? null : values.TryGetValue(s, out var v) ? v
                : throw ctx.Error($"body input '{s}' has no value")).ToArray();
            var outs = op.Run(g, new NodeContext(n, opset), args);
            for (int o = 0; o < n.Outputs.Length && o < outs.Length; o++)
                if (outs[o] is GpuTensor t && n.Outputs[o].Length > 0) { values[n.Outputs[o]] = t; made.Add(t); }
        }
        var result = values[body.Outputs[0].Name];
        foreach (var t in made) if (!ReferenceEquals(t, result) && !ReferenceEquals(t.Buffer, result.Buffer)) g.Free(t);
        return result;
    }

    static GpuTensor? Elementwise(WebGpuPlatform g, NodeContext ctx, Graph body, int opset, GpuTensor?[] ins)
    {
        if (ins.Length + 2 > g.Device.Limits.MaxStorageBuffersPerStage || ins.Any(t => t is null)) return null;
        var inputs = ins!.Select(t => t!).ToArray();
        // Where's condition (bool) is the only non-f32 input allowed; every body op needs a composable expression.
        var conds = new HashSet<string>(body.Nodes.Where(n => n.OpType == "Where").Select(n => n.Inputs[0]));
        for (int k = 0; k < inputs.Length; k++)
            if (!IsF32(inputs[k]) && !(conds.Contains(body.Inputs[k].Name) && inputs[k].DType == DType.Bool)) return null;
        if (body.Nodes.Any(n => Kernels.Elementwise.ExprOf(n.OpType) is null)) return null;
        var outShape = ShapeUtil.Broadcast(inputs.Select(t => t.Shape).ToArray());
        var y = g.Empty(DType.Float32, outShape);
        if (y.Length == 0) return y;
        var (meta, shapeAt, targets, flat, rank) = Kernels.Elementwise.Layout(inputs, outShape, y.Length);
        var storages = inputs.Select(t => t.Storage).ToArray();
        var key = new WebGpuPlatform.KernelKey("fused", $"{string.Join(",", storages)}|{rank}|{flat}", ctx.Node);
        g.Launch(key, () =>
        {
            var w = new Wgsl(g.Workgroup);
            for (int k = 0; k < inputs.Length; k++) w.In($"in{k}", storages[k]);
            w.Out("y", DType.Float32);
            var names = new Dictionary<string, (string Id, GpuStorage S)>();
            var sb = new StringBuilder(flat ? "" : Wgsl.Offsets("i", rank, shapeAt, targets));
            for (int k = 0; k < inputs.Length; k++)
            {
                sb.Append($"  let x{k} = in{k}({(flat ? "i" : $"u32(o_x{k})")});\n");
                names[body.Inputs[k].Name] = ($"x{k}", storages[k] == GpuStorage.U32 ? GpuStorage.U32 : GpuStorage.F32);
            }
            for (int j = 0; j < body.Nodes.Count; j++)
            {
                var n = body.Nodes[j];
                var args = n.Inputs.Select(s => names[s]).ToArray();
                string e = Kernels.Elementwise.ExprOf(n.OpType)!(args.Select(a => a.Id).ToArray(), args.Select(a => a.S).ToArray(), new NodeContext(n, opset));
                sb.Append($"  let v{j} = f32({e});\n");
                names[n.Outputs[0]] = ($"v{j}", GpuStorage.F32);
            }
            sb.Append($"  y_st(i, v{body.Nodes.Count - 1});");
            w.Decl(Kernels.Elementwise.HelperFunctions);
            return w.Build(sb.ToString());
        }, $"Fused_{body.Nodes.Count}_r{rank}", [.. inputs, y], meta, y.Length);
        return y;
    }

    /// <summary>y = x / sqrt(mean(x², last axis) + eps) · weight, one workgroup per row.</summary>
    static GpuTensor? RmsNorm(WebGpuPlatform g, NodeContext ctx, Graph body, GpuTensor?[] ins)
    {
        string xName = body.Nodes.First(n => n.OpType == "Pow").Inputs[0];
        var sink = body.Nodes[^1];
        string wName = sink.Inputs.First(s => body.Nodes.All(n => n.Outputs[0] != s));
        int xi = ctx.Node.Inputs.AsSpan().IndexOf(xName), wi = ctx.Node.Inputs.AsSpan().IndexOf(wName);
        if (xi < 0 || wi < 0 || ins[xi] is not { } x || ins[wi] is not { } w || !IsF32(x) || w.DType != DType.Float32 || x.Rank == 0) return null;
        long len = x.Shape[^1];
        // The weight must broadcast along the last axis only (as the pattern's Mul does for a [hidden] weight).
        if (len == 0 || w.Length != len || w.Shape.Take(w.Rank - 1).Any(d => d != 1) || w.Rank > x.Rank) return null;
        var y = g.Empty(DType.Float32, x.Shape);
        long rows = x.Length / len;
        if (rows == 0) return y;
        var meta = new Meta();
        meta.Add(rows); meta.Add(len); meta.AddFloat(ctx.Float("epsilon", 1e-6f));
        var (gx, gy) = Wgsl.Grid(rows, 1, g.Device.Limits.MaxWorkgroupsPerDimension);
        int wg = Math.Min(256, g.Device.Limits.MaxInvocationsPerWorkgroup);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("rmsnorm", $"{w.Storage}|{wg}"), () => new Wgsl(wg).In("x", x).In("sc", w).Out("y", DType.Float32)
            .Decl($"var<workgroup> red: array<f32, {wg}>;").Build($$"""
  let row = wid.x + wid.y * nwg.x;
  if (row >= md[0]) { return; }
  let L = md[1];
  let base = row * L;
  var acc = 0.0;
  for (var j = lid.x; j < L; j += {{wg}}u) { let v = x(base + j); acc += v * v; }
  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = {{wg / 2}}u; s > 0u; s >>= 1u) { if (lid.x < s) { red[lid.x] += red[lid.x + s]; } workgroupBarrier(); }
  let rms = sqrt(red[0] / f32(L) + bitcast<f32>(md[2]));
  for (var j = lid.x; j < L; j += {{wg}}u) { y_st(base + j, x(base + j) / rms * sc(j)); }
""", elementwise: false), "RmsNorm", [x, w, y], meta, gx, gy);
        return y;
    }

    /// <summary>y = x·cos + rotate_half(x)·sin over the last axis (2·half long); cos/sin broadcast to x.</summary>
    static GpuTensor? Rotary(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        if (ins.Length < 3 || ins[0] is not { } x || ins[1] is not { } cos || ins[2] is not { } sin) return null;
        long half = ctx.Int("half", 0);
        if (!IsF32(x) || !IsF32(cos) || !IsF32(sin) || x.Rank == 0 || x.Shape[^1] != 2 * half || half <= 0) return null;
        if (ctx.Int("rank4", 0) != 0 && x.Rank != 4) return null;        // an axis 3 in the pattern is the last one only then
        long[] outShape;
        try { outShape = ShapeUtil.Broadcast(x.Shape, cos.Shape, sin.Shape); }
        catch (TapmlException) { return null; }
        if (!ShapeUtil.SameShape(outShape, x.Shape)) return null;
        var y = g.Empty(DType.Float32, x.Shape);
        if (y.Length == 0) return y;
        int rank = x.Rank;
        var meta = new Meta();
        meta.Add(y.Length);
        meta.Add(half);
        int shapeAt = meta.AddAll(x.Shape);
        int cAt = meta.AddAll(ShapeUtil.BroadcastStrides(cos.Shape, x.Shape));
        int sAt = meta.AddAll(ShapeUtil.BroadcastStrides(sin.Shape, x.Shape));
        g.Launch(new WebGpuPlatform.KernelKey("rotary", $"{rank}"), () => new Wgsl(g.Workgroup).In("x", x).In("cs", cos).In("sn", sin).Out("y", DType.Float32)
            .Build(Wgsl.Offsets("i", rank, shapeAt, ("c", cAt, -1), ("s", sAt, -1)) + """
  let h = md[1];
  let d = i % (2u * h);
  let pair = select(x(i - h), -x(i + h), d < h);
  y_st(i, x(i) * cs(u32(o_c)) + pair * sn(u32(o_s)));
"""), "Rotary", [x, cos, sin, y], meta, y.Length);
        return y;
    }
}
