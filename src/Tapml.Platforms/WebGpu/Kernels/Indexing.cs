using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Index-driven ops: GatherElements, GatherND, ScatterElements/Scatter, ScatterND, OneHot, Trilu, EyeLike,
/// ReverseSequence, and the data-dependent Compress, NonZero and Unique (a GPU scan of the kept positions, then one
/// readback of the count to size the output). Scatters copy the data, then each thread owns the updates that can
/// meet on one output element and applies them in order, so duplicates reduce deterministically without atomics.</summary>
public static class Indexing
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "GatherElements", 11, (g, ctx, ins) => [GatherElements(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx))]));
        add(new GpuOp("", "ScatterElements", 11, (g, ctx, ins) => [ScatterElements(g, ctx, ins, ctx.Opset >= 16 ? ctx.String("reduction", "none") : "none")], ReductionSupport));
        add(new GpuOp("", "Scatter", 9, (g, ctx, ins) => [ScatterElements(g, ctx, ins, "none")]));
        add(new GpuOp("", "GatherND", 11, (g, ctx, ins) => [GatherNd(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx))]));
        add(new GpuOp("", "ScatterND", 11, (g, ctx, ins) => [ScatterNd(g, ctx, ins, ctx.Opset >= 16 ? ctx.String("reduction", "none") : "none")], ReductionSupport));
        add(new GpuOp("", "OneHot", 9, (g, ctx, ins) => [OneHot(g, ctx, ins)]));
        add(new GpuOp("", "Trilu", 14, (g, ctx, ins) => [Trilu(g, ctx, ins)]));
        add(new GpuOp("", "EyeLike", 9, (g, ctx, ins) => [EyeLike(g, ctx, GpuOps.In(ins, 0, ctx))],
            (ctx, t) => ctx.Has("dtype") && Wgsl.StorageOf((DType)ctx.Int("dtype", 1)) is null ? $"EyeLike to {DTypes.Name((DType)ctx.Int("dtype", 1))}: no WGSL type" : null));
        add(new GpuOp("", "ReverseSequence", 10, (g, ctx, ins) => [ReverseSequence(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx))]));
        add(new GpuOp("", "Compress", 9, (g, ctx, ins) => [Compress(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx))]));
        add(new GpuOp("", "NonZero", 9, (g, ctx, ins) => [NonZero(g, ctx, GpuOps.In(ins, 0, ctx))]));
        add(new GpuOp("", "Unique", 11, (g, ctx, ins) => Unique(g, ctx, GpuOps.In(ins, 0, ctx))));
    }

    static string? ReductionSupport(Tapml.Platforms.NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t) =>
        ctx.Opset >= 16 && ctx.String("reduction", "none") is not ("none" or "add" or "mul" or "max" or "min")
            ? $"{ctx.Node.OpType} reduction '{ctx.String("reduction", "none")}' is not one of none/add/mul/max/min" : null;

    /// <summary>The WGSL scalar a logical type computes in.</summary>
    internal static string S(DType t) => Wgsl.Scalar(Wgsl.StorageOf(t)!.Value);

    /// <summary>Splits <paramref name="index"/> into <c>let PREFIXd: u32</c> coordinates of the shape at meta words shapeAt..+rank.</summary>
    internal static string Coords(string index, int rank, int shapeAt, string prefix = "c")
    {
        var sb = new StringBuilder($"  var rem_{prefix}: u32 = {index};\n");
        for (int d = rank - 1; d >= 0; d--)
            sb.Append($"  let {prefix}{d} = rem_{prefix} % md[{shapeAt + d}]; rem_{prefix} = rem_{prefix} / md[{shapeAt + d}];\n");
        return sb.ToString();
    }

    /// <summary>Σ coordinate·stride (strides at meta words strideAt..+rank), with coordinate <paramref name="axis"/>
    /// replaced by <paramref name="axisValue"/> (or dropped when it is null).</summary>
    internal static string Dot(int rank, int strideAt, string prefix = "c", int axis = -1, string? axisValue = null)
    {
        var terms = new List<string>();
        for (int d = 0; d < rank; d++)
        {
            if (d == axis) { if (axisValue is not null) terms.Add($"({axisValue}) * md[{strideAt + d}]"); continue; }
            terms.Add($"{prefix}{d} * md[{strideAt + d}]");
        }
        return terms.Count == 0 ? "0u" : string.Join(" + ", terms);
    }

    /// <summary>WGSL that makes <c>var k: i32</c> a valid index below <c>dim</c> (a u32 expression): negative values count
    /// from the end (ONNX), and out-of-range values are clamped so a bad index never reads outside the buffer.</summary>
    internal static string NormIndex(string value, string dim) =>
        $"  var k = i32({value});\n  if (k < 0) {{ k += i32({dim}); }}\n  k = clamp(k, 0, i32({dim}) - 1);\n";

    static GpuTensor GatherElements(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, GpuTensor idx)
    {
        int r = x.Rank;
        if (r == 0 || idx.Rank != r) throw ctx.Error($"indices {ShapeUtil.Format(idx.Shape)} must have the rank of data {ShapeUtil.Format(x.Shape)} (>= 1)");
        int axis = ShapeUtil.Axis(ctx.Int("axis", 0), r);
        GpuOps.CheckNotSaturated(idx, ctx);
        var y = g.Empty(x.DType, idx.Shape);
        if (y.Length == 0) return y;
        var meta = new Meta();
        meta.Add(y.Length);
        int shapeAt = meta.AddAll(idx.Shape);
        int strideAt = meta.AddAll(ShapeUtil.Strides(x.Shape));
        int dimAt = meta.Add(x.Shape[axis]);
        g.Launch(new WebGpuPlatform.KernelKey("gatherel", $"{r}|{axis}|{(int)x.Storage}|{(int)idx.Storage}|{(int)x.DType}"), () => new Wgsl(g.Workgroup).In("x", x).In("idx", idx).Out("y", x.DType).Build(
            Coords("i", r, shapeAt) + NormIndex("idx(i)", $"md[{dimAt}]") + $"  y_st(i, {S(x.DType)}(x({Dot(r, strideAt, axis: axis, axisValue: "u32(k)")})));"),
            "GatherElements", [x, idx, y], meta, y.Length);
        return y;
    }

    /// <summary>A contiguous copy of <paramref name="x"/> (scatters write into it).</summary>
    static GpuTensor Clone(WebGpuPlatform g, GpuTensor x)
    {
        var y = g.Empty(x.DType, x.Shape);
        var st = ShapeUtil.Strides(x.Shape);
        DataMovement.Copy(g, x, y, x.Shape, st, 0, st, 0, "ScatterCopy");
        return y;
    }

    /// <summary>WGSL storing update <c>v</c> into <c>y</c> at <c>o</c> under an ONNX scatter reduction.</summary>
    static string Combine(string reduction, DType t) => reduction switch
    {
        "add" => "y_st(o, y_b[o] + v);",
        "mul" => "y_st(o, y_b[o] * v);",
        "max" => "y_st(o, max(y_b[o], v));",
        "min" => "y_st(o, min(y_b[o], v));",
        _ => "y_st(o, v);",
    };

    static GpuTensor ScatterElements(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins, string reduction)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var idx = GpuOps.In(ins, 1, ctx);
        var upd = GpuOps.In(ins, 2, ctx);
        int r = x.Rank;
        if (r == 0 || idx.Rank != r || !ShapeUtil.SameShape(idx.Shape, upd.Shape))
            throw ctx.Error($"indices {ShapeUtil.Format(idx.Shape)} and updates {ShapeUtil.Format(upd.Shape)} must have one shape of the rank of data {ShapeUtil.Format(x.Shape)}");
        int axis = ShapeUtil.Axis(ctx.Int("axis", 0), r);
        GpuOps.CheckNotSaturated(idx, ctx);
        var y = Clone(g, x);
        if (upd.Length == 0) return y;
        // One thread per line of updates along the axis: the only updates that can land on one output element.
        var lineShape = (long[])upd.Shape.Clone();
        lineShape[axis] = 1;
        var meta = new Meta();
        meta.Add(ShapeUtil.Size(lineShape));
        int shapeAt = meta.AddAll(lineShape);
        int uAt = meta.AddAll(ShapeUtil.Strides(upd.Shape));
        int yAt = meta.AddAll(ShapeUtil.Strides(x.Shape));
        int lenAt = meta.Add(upd.Shape[axis]);
        int dimAt = meta.Add(x.Shape[axis]);
        string body = Coords("i", r, shapeAt) + $$"""
  let ub = {{Dot(r, uAt, axis: axis)}};
  let yb = {{Dot(r, yAt, axis: axis)}};
  for (var j = 0u; j < md[{{lenAt}}]; j++) {
    let u = ub + j * md[{{uAt + axis}}];
{{NormIndex("idx(u)", $"md[{dimAt}]")}}
    let o = yb + u32(k) * md[{{yAt + axis}}];
    let v = {{S(x.DType)}}(upd(u));
    {{Combine(reduction, x.DType)}}
  }
""";
        g.Launch(new WebGpuPlatform.KernelKey("scatterel", $"{r}|{axis}|{reduction}|{(int)upd.Storage}|{(int)idx.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("upd", upd).In("idx", idx).Out("y", x.DType).Build(body), ctx.Node.OpType, [upd, idx, y], meta, ShapeUtil.Size(lineShape));
        return y;
    }

    static GpuTensor GatherNd(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, GpuTensor idx)
    {
        int b = (int)ctx.Int("batch_dims", 0);
        if (idx.Rank < 1) throw ctx.Error("indices must have rank >= 1");
        int k = (int)idx.Shape[^1];
        if (b < 0 || b + k > x.Rank || b >= idx.Rank) throw ctx.Error($"batch_dims {b} and index length {k} do not fit data {ShapeUtil.Format(x.Shape)} and indices {ShapeUtil.Format(idx.Shape)}");
        for (int d = 0; d < b; d++) if (x.Shape[d] != idx.Shape[d]) throw ctx.Error($"batch dimension {d} differs: data {ShapeUtil.Format(x.Shape)}, indices {ShapeUtil.Format(idx.Shape)}");
        GpuOps.CheckNotSaturated(idx, ctx);
        var shape = idx.Shape[..^1].Concat(x.Shape[(b + k)..]).ToArray();
        var y = g.Empty(x.DType, shape);
        if (y.Length == 0) return y;
        var xst = ShapeUtil.Strides(x.Shape);
        var meta = new Meta();
        meta.Add(y.Length);
        int innerAt = meta.Add(Math.Max(1, ShapeUtil.Size(x.Shape.AsSpan(b + k))));
        int perBatchAt = meta.Add(Math.Max(1, ShapeUtil.Size(idx.Shape.AsSpan(b, idx.Rank - 1 - b))));
        int batchSizeAt = meta.Add(ShapeUtil.Size(x.Shape.AsSpan(b)));
        int kAt = meta.Add(k);
        int dimsAt = meta.AddAll(x.Shape.Skip(b).Take(Math.Max(k, 1)).DefaultIfEmpty(1));
        int stAt = meta.AddAll(xst.Skip(b).Take(Math.Max(k, 1)).DefaultIfEmpty(1));
        string body = $$"""
  let e = i % md[{{innerAt}}];
  let t = i / md[{{innerAt}}];
  var o = (t / md[{{perBatchAt}}]) * md[{{batchSizeAt}}] + e;
  for (var j = 0u; j < md[{{kAt}}]; j++) {
{{NormIndex($"idx(t * md[{kAt}] + j)", $"md[{dimsAt} + j]")}}
    o += u32(k) * md[{{stAt}} + j];
  }
  y_st(i, {{S(x.DType)}}(x(o)));
""";
        g.Launch(new WebGpuPlatform.KernelKey("gathernd", $"{(int)x.Storage}|{(int)idx.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("x", x).In("idx", idx).Out("y", x.DType).Build(body), "GatherND", [x, idx, y], meta, y.Length);
        return y;
    }

    static GpuTensor ScatterNd(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins, string reduction)
    {
        var x = GpuOps.In(ins, 0, ctx);
        var idx = GpuOps.In(ins, 1, ctx);
        var upd = GpuOps.In(ins, 2, ctx);
        if (idx.Rank < 1) throw ctx.Error("indices must have rank >= 1");
        int k = (int)idx.Shape[^1];
        if (k > x.Rank) throw ctx.Error($"index length {k} exceeds the rank of data {ShapeUtil.Format(x.Shape)}");
        var want = idx.Shape[..^1].Concat(x.Shape[k..]).ToArray();
        if (!ShapeUtil.SameShape(want, upd.Shape)) throw ctx.Error($"updates {ShapeUtil.Format(upd.Shape)} must be {ShapeUtil.Format(want)}");
        GpuOps.CheckNotSaturated(idx, ctx);
        var y = Clone(g, x);
        long slice = ShapeUtil.Size(x.Shape.AsSpan(k));
        long slices = ShapeUtil.Size(idx.Shape.AsSpan(0, idx.Rank - 1));
        if (upd.Length == 0 || slice == 0) return y;
        var meta = new Meta();
        meta.Add(slice);
        int slicesAt = meta.Add(slices);
        int kAt = meta.Add(k);
        int dimsAt = meta.AddAll(x.Shape.Take(Math.Max(k, 1)).DefaultIfEmpty(1));
        int stAt = meta.AddAll(ShapeUtil.Strides(x.Shape).Take(Math.Max(k, 1)).DefaultIfEmpty(1));
        // One thread per element of a slice walks every index tuple in order (duplicates reduce in index order).
        string body = $$"""
  for (var t = 0u; t < md[{{slicesAt}}]; t++) {
    var o = i;
    for (var j = 0u; j < md[{{kAt}}]; j++) {
{{NormIndex($"idx(t * md[{kAt}] + j)", $"md[{dimsAt} + j]")}}
      o += u32(k) * md[{{stAt}} + j];
    }
    let v = {{S(x.DType)}}(upd(t * md[0] + i));
    {{Combine(reduction, x.DType)}}
  }
""";
        g.Launch(new WebGpuPlatform.KernelKey("scatternd", $"{reduction}|{(int)upd.Storage}|{(int)idx.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("upd", upd).In("idx", idx).Out("y", x.DType).Build(body), "ScatterND", [upd, idx, y], meta, slice);
        return y;
    }

    static GpuTensor OneHot(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins)
    {
        var idx = GpuOps.In(ins, 0, ctx);
        var depthT = GpuOps.In(ins, 1, ctx);
        var values = GpuOps.In(ins, 2, ctx);
        if (values.Length != 2) throw ctx.Error($"values must hold [off, on], got {values.Describe()}");
        var dh = g.HostOrDownload(depthT);
        if (dh.Length != 1) throw ctx.Error($"depth must hold one value, got {depthT.Describe()}");
        long depth = (long)dh.GetDouble(0);
        if (depth < 1) throw ctx.Error($"depth {depth} must be positive");
        if (idx.Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(idx, ctx);
        int r = idx.Rank + 1;
        int axis = ShapeUtil.Axis(ctx.Int("axis", -1), r);
        var shape = idx.Shape[..axis].Append(depth).Concat(idx.Shape[axis..]).ToArray();
        var y = g.Empty(values.DType, shape);
        if (y.Length == 0) return y;
        long inner = ShapeUtil.Size(idx.Shape.AsSpan(axis));
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(Math.Max(1, inner)); meta.Add(depth);
        string s = S(values.DType);
        // ONNX OneHot: indices in [-depth, depth) select a position (negative ones count from the end); others give all off.
        string body = $$"""
  let inner = md[1]; let depth = i32(md[2]);
  let ii = i % inner; let t = i / inner;
  let d = i32(t % md[2]); let o = t / md[2];
  var k = i32({{(idx.Storage == GpuStorage.F32 ? "trunc(idx(o * inner + ii))" : "idx(o * inner + ii)")}});
  if (k < 0) { k += depth; }
  y_st(i, {{s}}(select(vals(0u), vals(1u), k == d)));
""";
        g.Launch(new WebGpuPlatform.KernelKey("onehot", $"{(int)idx.Storage}|{(int)values.Storage}|{(int)values.DType}"),
            () => new Wgsl(g.Workgroup).In("idx", idx).In("vals", values).Out("y", values.DType).Build(body), "OneHot", [idx, values, y], meta, y.Length);
        return y;
    }

    static GpuTensor Trilu(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins)
    {
        var x = GpuOps.In(ins, 0, ctx);
        if (x.Rank < 2) throw ctx.Error($"input must have rank >= 2, got {ShapeUtil.Format(x.Shape)}");
        long k = 0;
        if (ins.Length > 1 && ins[1] is { } kt)
        {
            var kv = g.Ints(kt);
            if (kv.Length != 1) throw ctx.Error($"k must hold one value, got {kt.Describe()}");
            k = kv[0];
        }
        bool upper = ctx.Int("upper", 1) != 0;
        var y = g.Empty(x.DType, x.Shape);
        if (y.Length == 0) return y;
        long rows = x.Shape[^2], cols = x.Shape[^1];
        // Columns beyond the int range cannot meet the diagonal test differently: clamp k to ±(rows + cols).
        k = Math.Clamp(k, -(rows + cols), rows + cols);
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(cols); meta.Add(rows); meta.AddSigned(k);
        string s = S(x.DType);
        // ONNX Trilu: upper keeps j - i >= k, lower keeps j - i <= k.
        string body = $$"""
  let c = i32(i % md[1]); let r = i32((i / md[1]) % md[2]);
  let keep = (c - r) {{(upper ? ">=" : "<=")}} bitcast<i32>(md[3]);
  y_st(i, select({{s}}(0), {{s}}(x(i)), keep));
""";
        g.Launch(new WebGpuPlatform.KernelKey("trilu", $"{upper}|{(int)x.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("x", x).Out("y", x.DType).Build(body), "Trilu", [x, y], meta, y.Length);
        return y;
    }

    static GpuTensor EyeLike(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x)
    {
        if (x.Rank != 2) throw ctx.Error($"input must be 2-D, got {ShapeUtil.Format(x.Shape)}");
        var dtype = ctx.Has("dtype") ? (DType)ctx.Int("dtype", 1) : x.DType;
        var y = g.Empty(dtype, x.Shape);
        if (y.Length == 0) return y;
        long k = Math.Clamp(ctx.Int("k", 0), -(x.Shape[0] + x.Shape[1]), x.Shape[0] + x.Shape[1]);
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(x.Shape[1]); meta.AddSigned(k);
        string s = S(dtype);
        g.Launch(new WebGpuPlatform.KernelKey("eyelike", $"{(int)dtype}"), () => new Wgsl(g.Workgroup).Out("y", dtype).Build(
            $"  let c = i32(i % md[1]); let r = i32(i / md[1]);\n  y_st(i, select({s}(0), {s}(1), c - r == bitcast<i32>(md[2])));"),
            "EyeLike", [y], meta, y.Length);
        return y;
    }

    static GpuTensor ReverseSequence(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, GpuTensor lens)
    {
        if (x.Rank < 2) throw ctx.Error($"input must have rank >= 2, got {ShapeUtil.Format(x.Shape)}");
        int bAxis = (int)ctx.Int("batch_axis", 1), tAxis = (int)ctx.Int("time_axis", 0);
        if (!((bAxis == 0 && tAxis == 1) || (bAxis == 1 && tAxis == 0))) throw ctx.Error($"batch_axis {bAxis} and time_axis {tAxis} must be 0 and 1");
        if (lens.Length != x.Shape[bAxis]) throw ctx.Error($"sequence_lens {lens.Describe()} must hold one length per batch ({x.Shape[bAxis]})");
        GpuOps.CheckNotSaturated(lens, ctx);
        var y = g.Empty(x.DType, x.Shape);
        if (y.Length == 0) return y;
        var st = ShapeUtil.Strides(x.Shape);
        var meta = new Meta();
        meta.Add(y.Length); meta.Add(st[bAxis]); meta.Add(x.Shape[bAxis]); meta.Add(st[tAxis]); meta.Add(x.Shape[tAxis]);
        // The first lens[b] time steps of batch b are reversed; the rest are copied.
        string body = $$"""
  let b = (i / md[1]) % md[2];
  let t = i32((i / md[3]) % md[4]);
  let n = clamp(i32(lens(b)), 0, i32(md[4]));
  let src = select(t, n - 1 - t, t < n);
  y_st(i, {{S(x.DType)}}(x(u32(i32(i) + (src - t) * i32(md[3])))));
""";
        g.Launch(new WebGpuPlatform.KernelKey("revseq", $"{(int)x.Storage}|{(int)lens.Storage}|{(int)x.DType}"),
            () => new Wgsl(g.Workgroup).In("x", x).In("lens", lens).Out("y", x.DType).Build(body), "ReverseSequence", [x, lens, y], meta, y.Length);
        return y;
    }

    /// <summary>Positions of the elements of <paramref name="flags"/> (first <paramref name="n"/>) for which
    /// <paramref name="pred"/> (WGSL over <c>v</c>) holds: <c>pos[j]</c> = how many kept elements precede j, and the
    /// kept count, read back once (the output size depends on it). One thread scans in order.</summary>
    static (GpuTensor Pos, long Count) Positions(WebGpuPlatform g, GpuTensor flags, long n, string pred, string label)
    {
        var pos = g.Empty(DType.UInt32, [Math.Max(1, n)]);
        var cnt = g.Empty(DType.UInt32, [1]);
        var meta = new Meta();
        meta.Add(n);
        string body = $$"""
  if (gid.x != 0u || gid.y != 0u) { return; }
  var c = 0u;
  for (var j = 0u; j < md[0]; j++) { pos_st(j, c); let v = f(j); if ({{pred}}) { c += 1u; } }
  cnt_st(0u, c);
""";
        g.LaunchGroups(new WebGpuPlatform.KernelKey("positions", $"{pred}|{(int)flags.Storage}"),
            () => new Wgsl(64).In("f", flags).Out("pos", DType.UInt32).Out("cnt", DType.UInt32).Build(body, elementwise: false), label + "Scan", [flags, pos, cnt], meta, 1);
        // NOTE: one readback: the output's shape depends on the data.
        long count = ((uint[])g.Download(cnt).Data)[0];
        g.Free(cnt);
        return (pos, count);
    }

    static GpuTensor Compress(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, GpuTensor cond)
    {
        if (cond.Rank != 1) throw ctx.Error($"condition must be 1-D, got {cond.Describe()}");
        bool flat = !ctx.Has("axis");
        int axis = flat ? 0 : ShapeUtil.Axis(ctx.Int("axis", 0), x.Rank);
        var xs = flat ? [x.Length] : x.Shape;
        long dim = xs[axis];
        long n = Math.Min(dim, cond.Length);
        var (pos, count) = Positions(g, cond, n, "v != 0u", "Compress");
        try
        {
            var shape = (long[])xs.Clone();
            shape[axis] = count;
            var y = g.Empty(x.DType, shape);
            if (y.Length == 0) return y;
            long inner = Math.Max(1, ShapeUtil.Size(xs.AsSpan(axis + 1)));
            long outer = ShapeUtil.Size(xs.AsSpan(0, axis));
            var meta = new Meta();
            meta.Add(outer * n * inner); meta.Add(inner); meta.Add(n); meta.Add(dim); meta.Add(count);
            // One thread per input element on a kept position writes it to its place in y.
            string body = $$"""
  let ii = i % md[1]; let t = i / md[1];
  let a = t % md[2]; let o = t / md[2];
  if (cond(a) == 0u) { return; }
  y_st((o * md[4] + pos(a)) * md[1] + ii, {{S(x.DType)}}(x((o * md[3] + a) * md[1] + ii)));
""";
            g.Launch(new WebGpuPlatform.KernelKey("compress", $"{(int)x.Storage}|{(int)x.DType}"),
                () => new Wgsl(g.Workgroup).In("x", x).In("cond", cond).In("pos", GpuStorage.U32).Out("y", x.DType).Build(body), "Compress", [x, cond, pos, y], meta, outer * n * inner);
            return y;
        }
        finally { g.Free(pos); }
    }

    static GpuTensor NonZero(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x)
    {
        if (x.Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(x, ctx);
        var shape = x.Rank == 0 ? [1L] : x.Shape;
        int r = shape.Length;
        string pred = x.Storage is GpuStorage.F32 or GpuStorage.F16x2 ? "v != 0.0" : x.Storage == GpuStorage.I32 ? "v != 0" : "v != 0u";
        var (pos, count) = Positions(g, x, x.Length, pred, "NonZero");
        try
        {
            var y = g.Empty(DType.Int64, [x.Rank, count]);
            if (y.Length == 0) return y;
            var meta = new Meta();
            meta.Add(x.Length);
            int shapeAt = meta.AddAll(shape);
            int cntAt = meta.Add(count);
            var sb = new StringBuilder($"  let v = x(i);\n  if (!({pred})) {{ return; }}\n  let p = pos(i);\n").Append(Coords("i", r, shapeAt));
            for (int d = 0; d < x.Rank; d++) sb.Append($"  y_st({d}u * md[{cntAt}] + p, i32(c{d}));\n");
            g.Launch(new WebGpuPlatform.KernelKey("nonzero", $"{r}|{(int)x.Storage}"),
                () => new Wgsl(g.Workgroup).In("x", x).In("pos", GpuStorage.U32).Out("y", DType.Int64).Build(sb.ToString()), "NonZero", [x, pos, y], meta, x.Length);
            return y;
        }
        finally { g.Free(pos); }
    }

    /// <summary>Unique over slices along an axis (or elements when there is none): one thread per slice finds its first
    /// equal slice and its count, then its group's rank (sorted: distinct smaller slices; else earlier first
    /// occurrences), then the first of each group writes the outputs. The group count is read back once.</summary>
    static Value?[] Unique(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x)
    {
        if (x.Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(x, ctx);
        bool sorted = ctx.Int("sorted", 1) != 0;
        var xs = ctx.Has("axis") ? x.Shape : [x.Length];
        int axis = ctx.Has("axis") ? ShapeUtil.Axis(ctx.Int("axis", 0), x.Rank) : 0;
        long dim = xs[axis], outer = ShapeUtil.Size(xs.AsSpan(0, axis)), inner = ShapeUtil.Size(xs.AsSpan(axis + 1));
        var first = g.Empty(DType.UInt32, [Math.Max(1, dim)]);
        var cnt = g.Empty(DType.UInt32, [Math.Max(1, dim)]);
        var isFirst = g.Empty(DType.UInt32, [Math.Max(1, dim)]);
        var rank = g.Empty(DType.UInt32, [Math.Max(1, dim)]);
        var meta = new Meta();
        meta.Add(dim); meta.Add(outer); meta.Add(inner);
        string s = Wgsl.Scalar(x.Storage);
        string nan(string v) => x.Storage is GpuStorage.F32 or GpuStorage.F16x2 ? $"((bitcast<u32>({v}) & 0x7fffffffu) > 0x7f800000u)" : "false";
        // Slices compare element by element (o-major, then inner); numbers in numeric order, NaN last and equal to NaN.
        string decl = $$"""
fn cmp(a: u32, b: u32) -> i32 {
  let D = md[0]; let inner = md[2];
  for (var o = 0u; o < md[1]; o++) {
    for (var n = 0u; n < inner; n++) {
      let p = x((o * D + a) * inner + n); let q = x((o * D + b) * inner + n);
      let pn = {{nan("p")}}; let qn = {{nan("q")}};
      if (pn || qn) { if (pn && qn) { continue; } return select(-1, 1, pn); }
      if (p < q) { return -1; }
      if (p > q) { return 1; }
    }
  }
  return 0;
}
""";
        var key = $"{(int)x.Storage}|{(int)x.DType}";
        if (dim > 0)
        {
            g.Launch(new WebGpuPlatform.KernelKey("unique_groups", key), () => new Wgsl(g.Workgroup).In("x", x).Out("first", DType.UInt32).Out("cnt", DType.UInt32).Out("isf", DType.UInt32).Decl(decl).Build("""
  var f = i; var c = 0u;
  for (var j = 0u; j < md[0]; j++) { if (cmp(i, j) == 0) { c += 1u; f = min(f, j); } }
  first_st(i, f); cnt_st(i, c); isf_st(i, select(0u, 1u, f == i));
"""), "UniqueGroups", [x, first, cnt, isFirst], meta, dim);
        }
        var (pos, groups) = Positions(g, isFirst, dim, "v != 0u", "Unique");
        g.Free(pos);
        var yShape = (long[])xs.Clone();
        yShape[axis] = groups;
        if (!ctx.Has("axis")) yShape = [groups];
        var y = g.Empty(x.DType, yShape);
        var idx = g.Empty(DType.Int64, [groups]);
        var inv = g.Empty(DType.Int64, [dim]);
        var counts = g.Empty(DType.Int64, [groups]);
        if (dim > 0)
        {
            string rankBody = sorted
                ? "  var r = 0u;\n  for (var j = 0u; j < md[0]; j++) { if (isf(j) != 0u && cmp(j, i) < 0) { r += 1u; } }\n  rank_st(i, r);"
                : "  var r = 0u;\n  for (var j = 0u; j < first(i); j++) { r += isf(j); }\n  rank_st(i, r);";
            // NOTE: each variant binds only what it reads (Dawn's derived layout leaves unused bindings out).
            if (sorted)
                g.Launch(new WebGpuPlatform.KernelKey("unique_rank", $"{sorted}|{key}"), () => new Wgsl(g.Workgroup).In("x", x).In("isf", GpuStorage.U32)
                    .Out("rank", DType.UInt32).Decl(decl).Build(rankBody), "UniqueRank", [x, isFirst, rank], meta, dim);
            else
                g.Launch(new WebGpuPlatform.KernelKey("unique_rank", $"{sorted}"), () => new Wgsl(g.Workgroup).In("first", GpuStorage.U32).In("isf", GpuStorage.U32)
                    .Out("rank", DType.UInt32).Build(rankBody), "UniqueRank", [first, isFirst, rank], meta, dim);
            var m2 = new Meta();
            m2.Add(dim); m2.Add(outer); m2.Add(inner); m2.Add(groups);
            string sc = S(x.DType);
            g.Launch(new WebGpuPlatform.KernelKey("unique_out", key), () => new Wgsl(g.Workgroup).In("x", x).In("first", GpuStorage.U32).In("cnt", GpuStorage.U32).In("rank", GpuStorage.U32)
                .Out("y", x.DType).Out("idx", DType.Int64).Out("inv", DType.Int64).Out("counts", DType.Int64).Build($$"""
  let r = rank(i);
  inv_st(i, i32(r));
  if (first(i) != i) { return; }
  idx_st(r, i32(i)); counts_st(r, i32(cnt(i)));
  let D = md[0]; let inner = md[2]; let G = md[3];
  for (var o = 0u; o < md[1]; o++) {
    for (var n = 0u; n < inner; n++) { y_st((o * G + r) * inner + n, {{sc}}(x((o * D + i) * inner + n))); }
  }
"""), "Unique", [x, first, cnt, rank, y, idx, inv, counts], m2, dim);
        }
        g.Free(first); g.Free(cnt); g.Free(isFirst); g.Free(rank);
        return [y, idx, inv, counts];
    }
}
