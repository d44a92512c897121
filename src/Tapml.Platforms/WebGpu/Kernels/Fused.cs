using System.Text;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary><c>tapml.Fused</c> regions (<see cref="Fusion"/>) as one kernel each: <c>elementwise</c> composes the
/// body's expressions into one broadcast kernel, <c>rms_norm</c> reduces and scales a row in one workgroup,
/// <c>rotary</c> rotates halves of the last axis, <c>matmul_add</c> adds in the matrix-vector epilogue,
/// <c>attention</c> runs q·kᵀ, mask, softmax and ·V for one query row per workgroup (online softmax over key chunks), or
/// for prompts per tile of query rows, <c>kv_append</c> writes the new rows of a KV cache kept with room to grow,
/// <c>projections_kv</c> writes them from the q/k/v projection kernel (decode steps). A region outside what a kernel handles (other dtypes, a shape the
/// pattern did not promise, too many bindings) runs its body node by node on the GPU: same result, more dispatches.</summary>
public static class Fused
{
    public static void Register(Action<GpuOp> add) =>
        add(new GpuOp(Fusion.Domain, Fusion.OpType, 1, Run, (ctx, t) =>
            ctx.Graph("body").Nodes.FirstOrDefault(n => GpuOps.Find(n.Domain, n.OpType) is null) is { } missing
                ? $"fused region holds {missing.OpType}, which has no WGSL kernel" : null, AnyInputType: true,
            TakesStrided: ctx => ctx.String("kind", "") is "attention" or "kv_append" or "kv_attention" or "projections_kv"));

    static Value?[] Run(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var body = ctx.Graph("body");
        int opset = (int)ctx.Int("opset", 17);
        if (ctx.String("kind", "") == "projections")
            return Projections.Run(g, ctx, body, opset, ins) ?? NodeByNode(g, ctx, Unprojected.GetValue(ctx.Node, _ => Unproject(body, opset, ins)), opset, ins);
        if (ctx.String("kind", "") == "kv_append")
            return KvAppend(g, ctx, ins) ?? NodeByNode(g, ctx, body, opset, ins);
        if (ctx.String("kind", "") == "projections_kv")
            return ProjectionsKv(g, body, opset, ins) ?? NodeByNode(g, ctx, body, opset, ins);
        if (ctx.String("kind", "") == "kv_attention")
            return KvAttention(g, body, opset, ins) ?? NodeByNode(g, ctx, body, opset, ins);
        if (ctx.String("kind", "") == "elementwise")
            return Elementwise(g, ctx, body, opset, ins) ?? NodeByNode(g, ctx, body, opset, ins);
        GpuTensor? y = ctx.String("kind", "") switch
        {
            "rms_norm" => RmsNorm(g, ctx, body, ins),
            "rotary" => Rotary(g, ctx, ins),
            "attention" => Attention(g, ctx, ins),
            "matmul_add" when body.Nodes[0].OpType == "MatMulNBits" => MatMulNBits.FusedAdd(g, ctx, body, opset, ins),
            "matmul_add" => ins.Length == 3 && ins[0] is { } a && ins[1] is { } b && ins[2] is { } r ? MatMul.MatVecAdd(g, a, b, r) : null,
            _ => null,
        };
        return y is not null ? [y] : NodeByNode(g, ctx, body, opset, ins);
    }

    /// <summary>A projections body refused without that kind (its norm and epilogue as their own regions), per node:
    /// prefill-shaped x runs the tiled products between one norm and one epilogue dispatch.</summary>
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Node, Graph> Unprojected = new();

    static Graph Unproject(Graph body, int opset, GpuTensor?[] ins)
    {
        // The patterns look for constants among initializers: uploaded inputs (weights, eps) are given as such.
        var g = new Graph { Name = body.Name };
        g.Inputs.AddRange(body.Inputs);
        g.Outputs.AddRange(body.Outputs);
        g.Nodes.AddRange(body.Nodes);
        for (int i = 0; i < body.Inputs.Count && i < ins.Length; i++)
            if (ins[i]?.Source is { } src) g.Initializers[body.Inputs[i].Name] = src;
        return Fusion.Fuse(new Model { Graph = g, Opsets = new() { [""] = opset } }, out _, projections: false).Graph;
    }

    static bool IsF32(GpuTensor? t) => t is { DType: DType.Float32, Storage: GpuStorage.F32 };

    /// <summary>The body's nodes one after another with the ordinary kernels (values stay on the GPU); the body's
    /// outputs.</summary>
    static GpuTensor[] NodeByNode(WebGpuPlatform g, NodeContext ctx, Graph body, int opset, GpuTensor?[] ins)
    {
        var made = new List<GpuTensor>();
        var results = EachNode(ctx, body, opset, ins, (n, nctx, args) =>
        {
            var op = GpuOps.Find(nctx.Node.Domain, nctx.Node.OpType) ?? throw new UnsupportedException($"fused region '{ctx.Node.Name}': {nctx.Node.OpType} has no WGSL kernel");
            var outs = g.RunOp(op, nctx, args).Select(v => v as GpuTensor).ToArray();
            made.AddRange(outs.OfType<GpuTensor>());
            return outs;
        });
        foreach (var t in made) if (!results.Any(r => ReferenceEquals(t, r) || ReferenceEquals(t.Buffer, r.Buffer))) g.Free(t);
        return results;
    }

    /// <summary>A region's body node by node, wherever its values live: each node's arguments from the values made so far
    /// (the body's inputs first, an absent one null), <paramref name="run"/> (given the node's index in the body) for its
    /// outputs; the body's outputs, each one a node made (else an error naming it).</summary>
    internal static T[] EachNode<T>(NodeContext ctx, Graph body, int opset, T?[] ins, Func<int, NodeContext, T?[], T?[]> run) where T : class
    {
        var values = new Dictionary<string, T?>();
        for (int i = 0; i < body.Inputs.Count && i < ins.Length; i++) values[body.Inputs[i].Name] = ins[i];
        for (int n = 0; n < body.Nodes.Count; n++)
        {
            var node = body.Nodes[n];
            var args = node.Inputs.Select(s => s.Length == 0 ? null : values.TryGetValue(s, out var v) ? v : throw ctx.Error($"body input '{s}' has no value")).ToArray();
            var outs = run(n, new NodeContext(node, opset), args);
            for (int o = 0; o < node.Outputs.Length && o < outs.Length; o++) if (node.Outputs[o].Length > 0 && outs[o] is not null) values[node.Outputs[o]] = outs[o];
        }
        return body.Outputs.Select(o => values.GetValueOrDefault(o.Name) ?? throw ctx.Error($"body output '{o.Name}' was not produced")).ToArray();
    }

    static GpuTensor[]? Elementwise(WebGpuPlatform g, NodeContext ctx, Graph body, int opset, GpuTensor?[] ins)
    {
        int outs = body.Outputs.Count;
        if (ins.Length + 1 + outs > g.Device.Limits.MaxStorageBuffersPerStage || ins.Any(t => t is null)) return null;
        var inputs = ins!.Select(t => t!).ToArray();
        // Other than f32 inputs: Where's condition (bool), and what only Casts read (converted as they load; int64 within
        // 32 bits); every body op needs a composable expression.
        var conds = new HashSet<string>(body.Nodes.Where(n => n.OpType == "Where").Select(n => n.Inputs[0]));
        bool CastOnly(string v) => body.Nodes.All(n => !n.Inputs.Contains(v) || n.OpType == "Cast");
        for (int k = 0; k < inputs.Length; k++)
        {
            if (IsF32(inputs[k]) || conds.Contains(body.Inputs[k].Name) && inputs[k].DType == DType.Bool) continue;
            if (!CastOnly(body.Inputs[k].Name)) return null;
            if (inputs[k].Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(inputs[k], ctx);
        }
        if (body.Nodes.Any(n => Kernels.Elementwise.ExprOf(n.OpType) is null)) return null;
        var outShape = ShapeUtil.Broadcast(inputs.Select(t => t.Shape).ToArray());
        // Several outputs (a fan-out region): each must have the region's whole shape (each thread writes its element of each).
        if (outs > 1)
        {
            var shapes = new Dictionary<string, long[]>();
            for (int k = 0; k < inputs.Length; k++) shapes[body.Inputs[k].Name] = inputs[k].Shape;
            foreach (var n in body.Nodes) shapes[n.Outputs[0]] = ShapeUtil.Broadcast(n.Inputs.Select(v => shapes[v]).ToArray());
            if (body.Outputs.Any(o => !ShapeUtil.SameShape(shapes[o.Name], outShape))) return null;
        }
        var ys = Enumerable.Range(0, outs).Select(_ => g.Empty(DType.Float32, outShape)).ToArray();
        if (ys[0].Length == 0) return ys;
        var (meta, shapeAt, targets, flat, rank) = Kernels.Elementwise.Layout(inputs, outShape, ys[0].Length);
        var storages = inputs.Select(t => t.Storage).ToArray();
        var key = new WebGpuPlatform.KernelKey("fused", $"{Wgsl.Letters(storages)}|{rank}|{flat}", ctx.Node);
        string Y(int o) => outs == 1 ? "y" : $"y{o}";
        g.Launch(key, () =>
        {
            var w = new Wgsl(g.Workgroup);
            for (int k = 0; k < inputs.Length; k++) w.In($"in{k}", storages[k]);
            for (int o = 0; o < outs; o++) w.Out(Y(o), DType.Float32);
            var names = new Dictionary<string, (string Id, GpuStorage S)>();
            var sb = new StringBuilder(flat ? "" : Wgsl.Offsets("i", rank, shapeAt, targets));
            for (int k = 0; k < inputs.Length; k++)
            {
                sb.Append($"  let x{k} = in{k}({(flat ? "i" : $"u32(o_x{k})")});\n");
                names[body.Inputs[k].Name] = ($"x{k}", storages[k] is GpuStorage.U32 or GpuStorage.I32 ? storages[k] : GpuStorage.F32);
            }
            for (int j = 0; j < body.Nodes.Count; j++)
            {
                var n = body.Nodes[j];
                var args = n.Inputs.Select(s => names[s]).ToArray();
                string e = Kernels.Elementwise.ExprOf(n.OpType)!(args.Select(a => a.Id).ToArray(), args.Select(a => a.S).ToArray(), new NodeContext(n, opset));
                sb.Append($"  let v{j} = f32({e});\n");
                names[n.Outputs[0]] = ($"v{j}", GpuStorage.F32);
            }
            for (int o = 0; o < outs; o++) sb.Append($"  {Y(o)}_st(i, {names[body.Outputs[o].Name].Id});\n");
            w.Decl(Kernels.Elementwise.HelperFunctions);
            return w.Build(sb.ToString());
        }, outs == 1 ? $"Fused_{body.Nodes.Count}_r{rank}" : $"Fused_{body.Nodes.Count}x{outs}_r{rank}", [.. inputs, .. ys], meta, ys[0].Length);
        return ys;
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
        g.LaunchGroups(new WebGpuPlatform.KernelKey("rmsnorm", $"{(int)w.Storage}|{wg}"), () => new Wgsl(wg).In("x", x).In("sc", w).Out("y", DType.Float32)
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
        if (!BroadcastsTo(cos, x.Shape) || !BroadcastsTo(sin, x.Shape)) return null;
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
            .Build(Wgsl.Offsets("i", rank, shapeAt, ("c", cAt, -1), ("s", sAt, -1)) + $"""
  let h = md[1];
  let d = i % (2u * h);
  y_st(i, {RotatedValue("x", "i", "d", "h", "cs(u32(o_c))", "sn(u32(o_s))")});
"""), "Rotary", [x, cos, sin, y], meta, y.Length);
        return y;
    }

    /// <summary>WGSL for one element of the rotary embedding: x·cos + rotate_half(x)·sin, where the element is
    /// <paramref name="x"/>(<paramref name="at"/>) at coordinate <paramref name="e"/> of a contiguous last axis 2·half long
    /// and rotate_half(x)[e] is −x[e + half] below half, x[e − half] from half on.</summary>
    internal static string RotatedValue(string x, string at, string e, string half, string cos, string sin) =>
        $"{x}({at}) * {cos} + select({x}({at} - {half}), -{x}({at} + {half}), {e} < {half}) * {sin}";

    /// <summary>Query heads served by each kv head after repeat_kv (<c>X_expand</c>/<c>X_reshape</c> attributes), or null
    /// when those constants do not mean "repeat each of the <paramref name="kv"/>'s heads rep times" for its shape.</summary>
    static long? Repeat(NodeContext ctx, string which, long[] kv)
    {
        if (ctx.Ints(which + "_expand") is not { } ex || ctx.Ints(which + "_reshape") is not { } rs) return 1;
        // Expand of [b, hk, 1, t, d] (numpy broadcast, both ranks 5).
        long[] unsq = [kv[0], kv[1], 1, kv[2], kv[3]];
        if (ex.Length != 5) return null;
        var expanded = new long[5];
        for (int i = 0; i < 5; i++)
        {
            if (unsq[i] != ex[i] && unsq[i] != 1 && ex[i] != 1) return null;
            expanded[i] = unsq[i] == 1 ? ex[i] : unsq[i];
        }
        long rep = expanded[2];
        if (!ShapeUtil.SameShape(expanded, [kv[0], kv[1], rep, kv[2], kv[3]])) return null;
        // Reshape (allowzero 0): 0 copies the input dim, one -1 takes the rest.
        var target = new long[4];
        int infer = -1;
        for (int d = 0; d < 4; d++)
        {
            if (rs[d] == 0) target[d] = expanded[d];
            else if (rs[d] == -1) { if (infer >= 0) return null; infer = d; }
            else if (rs[d] < 0) return null;
            else target[d] = rs[d];
        }
        long total = ShapeUtil.Size(expanded);
        if (infer >= 0)
        {
            long known = 1;
            for (int d = 0; d < 4; d++) if (d != infer) known *= target[d];
            if (known == 0 || total % known != 0) return null;
            target[infer] = total / known;
        }
        return ShapeUtil.SameShape(target, [kv[0], kv[1] * rep, kv[2], kv[3]]) ? rep : null;
    }

    /// <summary>An operand as [batch, heads, seq, head_dim] with its (batch, head, seq) strides: as stored, or read
    /// from [batch, seq, heads, head_dim] (<c>X_layout</c> = bthd).</summary>
    static (long[] Shape, long[] Strides) Heads(NodeContext ctx, string which, GpuTensor x)
    {
        var st = x.Strides;
        return ctx.String(which + "_layout", "bhtd") == "bthd"
            ? ([x.Shape[0], x.Shape[2], x.Shape[1], x.Shape[3]], [st[0], st[2], st[1]])
            : (x.Shape, [st[0], st[1], st[2]]);
    }

    const int AttnThreads = 64, AttnMaxHeadDim = 256;

    /// <summary>softmax(mask(q·kᵀ·scale))·v for q [B,H,S,D], K [B,Hk,T,D], V [B,Hk,T,Dv] (head h reads kv head h / rep):
    /// a workgroup per query row (per chunk of its keys when split): a key's dims across subgroup lanes where the device
    /// has subgroups (<see cref="LaneRows"/>), else a thread a key (<see cref="ThreadRows"/>); prompt-shaped rows by
    /// tiles of query rows.</summary>
    static GpuTensor? Attention(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins, NewRows? app = null)
    {
        string maskKind = ctx.String("mask", "none");
        int nIn = maskKind == "none" ? 3 : 4;
        if (ins.Length < nIn || ins.Take(nIn).Any(t => t is null)) return null;
        var (q, k, v) = (ins[0]!, ins[1]!, ins[2]!);
        var mask = nIn == 4 ? ins[3] : null;
        if (!IsF32(q) || !IsF32(k) || !IsF32(v) || q.Rank != 4 || k.Rank != 4 || v.Rank != 4) return null;
        // Only K and V (a KV cache) are read through their strides.
        if (ins.Where((t, i) => i is not (1 or 2) && t is { IsStrided: true }).Any()) return null;
        // With rotary_q, input 0 is q before its rotary embedding; cos and sin stand at rotary_at (see Fusion).
        long rotHalf = ctx.Int("rotary_q", 0);
        GpuTensor? rcos = null, rsin = null;
        if (rotHalf > 0)
        {
            int at = (int)ctx.Int("rotary_at", -1);
            if (at < nIn || at + 1 >= ins.Length || ins[at] is not { } c || ins[at + 1] is not { } sn || !IsF32(c) || !IsF32(sn)) return null;
            if (q.Shape[3] != 2 * rotHalf || !BroadcastsTo(c, q.Shape) || !BroadcastsTo(sn, q.Shape)) return null;
            (rcos, rsin) = (c, sn);
        }
        // Constants of the body (scale, fill, repeat_kv shapes) must not raise the rank of what they touch.
        for (int i = nIn; i < ins.Length; i++) if (ins[i] is { Rank: > 4 }) return null;
        int newRowBindings = app is null ? 0 : app.Cos is null || app.SharesTables(rcos, rsin) ? 2 : 4;
        if (nIn + (rcos is null ? 0 : 2) + newRowBindings + 2 > g.Device.Limits.MaxStorageBuffersPerStage) return null;   // + output, metadata
        // Logical [batch, heads, seq, head_dim] shapes and element strides of (batch, head, seq) per operand.
        var (qs, qStr) = Heads(ctx, "q", q);
        var (ks, kStr) = Heads(ctx, "k", k);
        var (vs, vStr) = Heads(ctx, "v", v);
        long b = qs[0], h = qs[1], s = qs[2], d = qs[3];
        long hk = ks[1], t = ks[2], dv = vs[3];
        if (Repeat(ctx, "k", ks) is not long repK || Repeat(ctx, "v", vs) is not long repV || repK != repV) return null;
        if (ks[0] != b || vs[0] != b || ks[3] != d || vs[1] != hk || vs[2] != t || hk * repK != h) return null;
        if (d > AttnMaxHeadDim || dv > AttnMaxHeadDim || t == 0 || d == 0) return null;
        // The joint append: one query row against the past and the new key, keys in one pass (no chunks, no tiles), K and
        // V read as [batch, kv heads, seq, dim].
        if (app is not null && (s != 1 || t != app.Past + 1 || t >= AttnSplitFrom || g.AttentionTiledFrom is > 0 and <= 1
            || ctx.String("k_layout", "bhtd") != "bhtd" || ctx.String("v_layout", "bhtd") != "bhtd")) return null;
        long[] scores = [b, h, s, t];
        long[] maskStrides = [0, 0, 0, 0];
        if (mask is not null)
        {
            bool ok = maskKind == "where" ? mask.DType == DType.Bool : IsF32(mask);
            if (!ok || !BroadcastsTo(mask, scores)) return null;
            maskStrides = ShapeUtil.BroadcastStrides(mask.Shape, scores);
        }
        var y = g.Empty(DType.Float32, [b, h, s, dv]);
        long rows = b * h * s;
        if (rows == 0 || dv == 0) return y;
        var meta = new Meta();
        meta.Add(rows); meta.Add(h); meta.Add(s); meta.Add(t); meta.Add(d); meta.Add(dv); meta.Add(repK); meta.Add(hk);
        meta.AddFloat(ctx.Float("scale", 1f)); meta.AddFloat(ctx.Float("fill", 0f));
        meta.AddAll(maskStrides);
        meta.AddAll(qStr); meta.AddAll(kStr); meta.AddAll(vStr);
        // Long key ranges with few query rows (decode late in a long generation) are split over several workgroups
        // per row (flash-decoding): each reduces a chunk of keys to its max, sum and unnormalized output, and a second
        // dispatch combines the chunks. Short ones stay one pass: a dispatch costs the host more than they take.
        long chunks = 1, chunk = t;
        if (t >= AttnSplitFrom)
        {
            chunks = Math.Clamp((g.AttentionTargetGroups + rows - 1) / rows, 1, (t + AttnThreads - 1) / AttnThreads);
            chunk = ((t + chunks - 1) / chunks + AttnThreads - 1) / AttnThreads * AttnThreads;
            chunks = (t + chunk - 1) / chunk;
        }
        meta.Add(chunk); meta.Add(chunks);
        // Key groups of 64 threads a workgroup, each on its own 64-key chunks of the range, merged at the end: a decode
        // row's keys run in parallel without a second dispatch (decode has one workgroup per head).
        int groups = Math.Min(MaxAttentionGroups, chunk <= AttnThreads ? 1 : chunk <= 2 * AttnThreads ? 2 : 4);
        if (rcos is not null)
        {
            meta.Add(rotHalf);                                                   // md[25]
            meta.AddAll(ShapeUtil.BroadcastStrides(rcos.Shape, q.Shape));        // md[26..29]
            meta.AddAll(ShapeUtil.BroadcastStrides(rsin!.Shape, q.Shape));       // md[30..33]
        }
        // The new row's words (RowOperands.Stage): past rows, the key's rotary half and its tables' strides over [B, Hk, 1, D].
        int appAt = -1;
        if (app is not null)
        {
            appAt = meta.Add(app.Past);
            meta.Add(app.Half);
            if (app.Cos is not null)
            {
                meta.AddAll(ShapeUtil.BroadcastStrides(app.Cos.Shape, app.Xk.Shape));
                meta.AddAll(ShapeUtil.BroadcastStrides(app.Sin!.Shape, app.Xk.Shape));
            }
        }
        // Prompt-shaped attention (many query rows) by tiles of query rows sharing each tile of keys.
        if (chunks == 1 && g.AttentionTiledFrom > 0 && s >= g.AttentionTiledFrom &&
            (g.AttentionTileLayout == 2 && AttentionTiles.Run(g, q, k, v, mask, rcos, rsin, meta, b * h, s, d, dv, maskKind, y) || Tiled(g, q, k, v, mask, rcos, rsin, meta, b * h, s, d, dv, maskKind, y))) return y;
        bool split = chunks > 1;
        var parts = split ? g.Empty(DType.Float32, [rows * chunks * (dv + 2)]) : null;
        // A decode row's few workgroups leave the GPU idle: with prefetch=on more workgroups read the next product's
        // weights into the cache meanwhile (two more bindings: the weights and the sink their loads are folded into).
        var prefetch = split ? null : Prefetch.For(g, ctx.Node, meta, nIn + (rcos is null ? 0 : 2) + newRowBindings + 2);
        var operands = new RowOperands(q, k, v, mask, rcos, rsin, app, appAt) { Prefetch = prefetch };
        if (g.AttentionLanes is int lanes and > 0)
            LaneRows(g, operands, meta, maskKind, split ? parts! : y, split, lanes, (int)Math.Max(d, dv), rows * chunks);
        else
            ThreadRows(g, operands, meta, maskKind, split ? parts! : y, split, groups, rows * chunks);
        if (!split) return y;
        // Combine: per row, weights exp(max_c − M) (1 while every score is -inf, as the one-pass kernel: 0/0 = NaN).
        var cm = new Meta();
        cm.Add(rows); cm.Add(chunks); cm.Add(dv);
        var (cx, cy) = Wgsl.Grid(rows, 1, g.Device.Limits.MaxWorkgroupsPerDimension);
        const int W = AttnThreads;
        g.LaunchGroups(new WebGpuPlatform.KernelKey("attention_combine", ""), () => new Wgsl(W).In("pt", parts!).Out("y", DType.Float32).Build($$"""
  let row = wid.x + wid.y * nwg.x;
  if (row >= md[0]) { return; }
  let C = md[1]; let Dv = md[2]; let pb = row * C * (Dv + 2u);
  let ninf = bits_(0xff800000u);
  var mx = ninf;
  for (var c = 0u; c < C; c++) { mx = max(mx, pt(pb + c * (Dv + 2u))); }
  var total = 0.0;
  for (var c = 0u; c < C; c++) { let o = pb + c * (Dv + 2u); total += pt(o + 1u) * select(exp(pt(o) - mx), 1.0, mx == ninf); }
  for (var e = lid.x; e < Dv; e += {{W}}u) {
    var acc = 0.0;
    for (var c = 0u; c < C; c++) { let o = pb + c * (Dv + 2u); acc += pt(o + 2u + e) * select(exp(pt(o) - mx), 1.0, mx == ninf); }
    y_st(row * Dv + e, acc / total);
  }
""", elementwise: false), "AttentionCombine", [parts!, y], cm, cx, cy);
        g.Free(parts!);
        return y;
    }

    /// <summary>The start of a decode-row attention kernel: the workgroup's (row, chunk of keys jb..je), the row's
    /// shape and scale from the metadata, its operands' offsets (q, K, V, mask) and <c>ninf</c>.</summary>
    const string RowHead = """
  let wi = wid.x + wid.y * nwg.x;
  if (wi >= md[0] * md[24]) { return; }
  let row = wi / md[24]; let jb = (wi % md[24]) * md[23]; let je = min(md[3], jb + md[23]);
  let H = md[1]; let S = md[2]; let D = md[4]; let Dv = md[5];
  let scale = bitcast<f32>(md[8]); let fill = bitcast<f32>(md[9]);
  let i = row % S; let hh = (row / S) % H; let bb = row / (S * H);
  let kvh = hh / md[6];
  let qb = bb * md[14] + hh * md[15] + i * md[16];
  let kb = bb * md[17] + kvh * md[18]; let ks = md[19];
  let vb = bb * md[20] + kvh * md[21]; let vs = md[22];
  let mo = bb * md[10] + hh * md[11] + i * md[12];
  let ninf = bits_(0xff800000u);

""";

    /// <summary>q's row into workgroup memory <c>qs</c> by <paramref name="threads"/> threads: rotated as it is read
    /// (x·cos + rotate_half(x)·sin, q's last axis contiguous) with rotary_q.</summary>
    static string LoadQuery(bool rot, int threads) => rot
        ? $$"""
  for (var e = lid.x; e < D; e += {{threads}}u) {
    let hf = md[25];
    let co = bb * md[26] + hh * md[27] + i * md[28] + e * md[29];
    let so = bb * md[30] + hh * md[31] + i * md[32] + e * md[33];
    qs[e] = {{RotatedValue("q", "qb + e", "e", "hf", "rc(co)", "rs(so)")}};
  }
"""
        : $"  for (var e = lid.x; e < D; e += {threads}u) {{ qs[e] = q(qb + e); }}\n";

    /// <summary>Keys a lane group takes at once in <see cref="LaneRows"/> (their loads in flight together).</summary>
    const int LaneKeys = 4;

    /// <summary>Decode-row attention with a key's dims across <paramref name="lanes"/> subgroup lanes (a power of two, at
    /// most the device's smallest subgroup): lane e holds dims e, e + lanes, … of q, of its output and of each key and
    /// value it reads (so a key's reads are contiguous across lanes); a workgroup of G lane groups, each taking
    /// <see cref="LaneKeys"/> keys at a time (group gi's keys gi·4…, then every G·4-th), their scores added across the
    /// lanes with <c>subgroupShuffleXor</c>, and keeping its own running max, sum and output (online softmax) with no
    /// barrier in the key loop; the groups merge in workgroup memory at the end, as <see cref="ThreadRows"/>' do.</summary>
    static void LaneRows(WebGpuPlatform g, RowOperands r, Meta meta, string maskKind, GpuTensor output, bool split, int lanes, int dims, long rowGroups)
    {
        int P = lanes, G = Math.Max(1, Math.Min(8, 256 / P)), WG = P * G, C = (dims + P - 1) / P, U = LaneKeys;
        bool rot = r.Rcos is not null;
        var (gx, gy) = r.Grid(g, rowGroups, WG);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("attention_lanes", $"{maskKind}|{split}|{rot}|{P}|{C}|{r.NewKey}{r.PrefetchKey}"), () =>
        {
            var w = r.Bindings(WG);
            w.Decl($"var<workgroup> qs: array<f32, {C * P}>;\nvar<workgroup> gm: array<f32, {G}>;\nvar<workgroup> gt: array<f32, {G}>;\nvar<workgroup> ga: array<f32, {G * C * P}>;");
            // One round of the key loop: U keys a lane group (key u's index jAt(u), live where ok(u)), their scores
            // across the lanes, the running max, sum and output updated (online softmax).
            void Round(System.Text.StringBuilder b, int U, Func<int, string> jAt, Func<int, string> ok, Func<int, string, string> key, Func<int, string, string> value)
            {
                List<string> Keys(string name) => Enumerable.Range(0, U).Select(u => $"{name}{u}").ToList();
                for (int u = 0; u < U; u++) b.Append($"    let j{u} = {jAt(u)};\n    let ok{u} = {ok(u)};\n    let jv{u} = select(jb, j{u}, ok{u});\n");
                // The values' loads go out with the keys' (they do not wait for the scores): one memory round trip a round.
                for (int u = 0; u < U; u++)
                    for (int c = 0; c < C; c++) b.Append($"    let w{u}_{c} = {value(u, $"min(e + {c * P}u, Dv - 1u)")};\n");
                for (int u = 0; u < U; u++)
                {
                    b.Append($"    var d{u} = 0.0;\n");
                    b.Append($"    if (ok{u}) {{\n");
                    for (int c = 0; c < C; c++) b.Append($"      if (e + {c * P}u < D) {{ d{u} += q{c} * {key(u, $"e + {c * P}u")}; }}\n");
                    b.Append("    }\n");
                }
                // NOTE: the shuffles stand outside the key's branch (uniform control flow); a key past je adds zeros.
                b.Append(BlockedMatVec.ShuffleSums(P, Keys("d"), "    "));
                for (int u = 0; u < U; u++)
                    b.Append($"    var s{u} = ninf;\n    if (ok{u}) {{\n      let j = j{u};\n      var sc = d{u} * scale;\n      {MaskApply(maskKind)}\n      s{u} = sc;\n    }}\n");
                b.Append($"    let mnew = max(m, {MatMulNBits.Tree(Keys("s"), (x, y) => $"max({x}, {y})")});\n");
                // Nothing is accumulated while every score so far is -inf; a -inf score weighs 0.
                b.Append("    if (mnew != ninf) {\n      let corr = select(exp(m - mnew), 0.0, m == ninf);\n");
                for (int u = 0; u < U; u++) b.Append($"      let p{u} = select(exp(s{u} - mnew), 0.0, s{u} == ninf);\n");
                b.Append($"      l = l * corr + {MatMulNBits.Tree(Keys("p"))};\n");
                for (int c = 0; c < C; c++)
                {
                    b.Append($"      if (e + {c * P}u < Dv) {{\n        var o = a{c} * corr;\n");
                    for (int u = 0; u < U; u++) b.Append($"        if (ok{u}) {{ o += p{u} * w{u}_{c}; }}\n");
                    b.Append($"        a{c} = o;\n      }}\n");
                }
                b.Append("      m = mnew;\n    }\n");
            }
            var b = new System.Text.StringBuilder(r.PrefetchHead(WG)).Append(RowHead);
            b.Append(LoadQuery(rot, WG)).Append(r.Stage(WG));
            b.Append($"  let e = lid.x % {P}u; let grp = lid.x / {P}u;\n  workgroupBarrier();\n").Append(r.Write(WG));
            for (int c = 0; c < C; c++) b.Append($"  let q{c} = select(0.0, qs[e + {c * P}u], e + {c * P}u < D);\n");
            for (int c = 0; c < C; c++) b.Append($"  var a{c} = 0.0;\n");
            // With a new row (kv_attention): the loop reads past keys straight from the caches (keys below the new row's
            // index), and the new key and value take one more round after it from workgroup memory, group 0's.
            b.Append($"  var m = ninf;\n  var l = 0.0;\n  let jk = {r.PastEnd("je")};\n  let rounds = (jk - jb + {G * U - 1}u) / {G * U}u;\n  for (var it = 0u; it < rounds; it++) {{\n");
            Round(b, U, u => $"jb + (it * {G}u + grp) * {U}u + {u}u", u => $"j{u} < jk", (u, e) => r.PastKey($"kb + j{u} * ks + {e}"), (u, e) => r.PastValue($"vb + jv{u} * vs + {e}"));
            b.Append("  }\n");
            if (r.New is not null)
            {
                b.Append("  {\n");
                Round(b, 1, _ => $"md[{r.NewAt}]", _ => $"grp == 0u && j0 >= jb && j0 < je", (_, e) => $"kn_w[{e}]", (_, e) => $"vn_w[{e}]");
                b.Append("  }\n");
            }

            // The groups' (max, sum, output) merged to the workgroup's max M: weights exp(m_g − M) (1 while every score
            // is -inf: 0/0 = NaN, as the cpu reference). Split: y holds, per (row, chunk), [max, total, output 0..Dv-1].
            b.Append("  if (e == 0u) { gm[grp] = m; gt[grp] = l; }\n");
            for (int c = 0; c < C; c++) b.Append($"  ga[grp * {C * P}u + e + {c * P}u] = a{c};\n");
            b.Append($$"""
  workgroupBarrier();
  var mx = gm[0];
  for (var g2 = 1u; g2 < {{G}}u; g2++) { mx = max(mx, gm[g2]); }
  var total = 0.0;
  for (var g2 = 0u; g2 < {{G}}u; g2++) { total += gt[g2] * select(exp(gm[g2] - mx), 1.0, mx == ninf); }
  for (var o = lid.x; o < Dv; o += {{WG}}u) {
    var acc = 0.0;
    for (var g2 = 0u; g2 < {{G}}u; g2++) { acc += ga[g2 * {{C * P}}u + o] * select(exp(gm[g2] - mx), 1.0, mx == ninf); }

""");
            b.Append(split ? "    let pb = wi * (Dv + 2u);\n    if (o == 0u) { y_st(pb, mx); y_st(pb + 1u, total); }\n    y_st(pb + 2u + o, acc);\n  }\n"
                           : "    y_st(row * Dv + o, acc / total);\n  }\n");
            return w.Build(b.ToString(), elementwise: false);
        }, split ? "AttentionChunks" : "Attention", r.Tensors(output), meta, gx, gy);
    }

    /// <summary>Decode-row attention, a thread a key: one to four (<paramref name="groups"/>) groups of 64 threads by key
    /// count; each group takes every G-th chunk of 64 keys, one score per thread, the chunk's max rescaling the group's
    /// running sums (online softmax), thread t accumulating output dims t, t+64, …; the groups merge in workgroup
    /// memory.</summary>
    static void ThreadRows(WebGpuPlatform g, RowOperands r, Meta meta, string maskKind, GpuTensor output, bool split, int groups, long rowGroups)
    {
        const int W = AttnThreads, Acc = AttnMaxHeadDim / AttnThreads;
        string Apply() => MaskApply(maskKind);
        bool rot = r.Rcos is not null;
        // q's load: rotated as it is read (x·cos + rotate_half(x)·sin, q's last axis contiguous) with rotary_q.
        string LoadQ() => LoadQuery(rot, W * groups) + r.Stage(W * groups);
        var (gx, gy) = r.Grid(g, rowGroups, W * groups);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("attention", $"{maskKind}|{split}|{rot}|{groups}|{r.NewKey}{r.PrefetchKey}"), () =>
        {
            var w = r.Bindings(W * groups);
            w.Decl($"var<workgroup> qs: array<f32, {AttnMaxHeadDim}>;\nvar<workgroup> ps: array<f32, {W * groups}>;\nvar<workgroup> red: array<f32, {W * groups}>;\n" +
                   (groups == 1 ? "" : $"var<workgroup> gm: array<f32, {groups}>;\nvar<workgroup> gt: array<f32, {groups}>;\nvar<workgroup> ga: array<f32, {groups * AttnMaxHeadDim}>;"));
            string accDecl = string.Join(" ", Enumerable.Range(0, Acc).Select(a => $"var a{a} = 0.0;"));
            string rescale = string.Join(" ", Enumerable.Range(0, Acc).Select(a => $"a{a} = a{a} * corr;"));
            string gather = string.Join("\n", Enumerable.Range(0, Acc).Select(a => $"      if (t + {a * W}u < Dv) {{ a{a} += pj * {r.Value("j0 + jj", $"vr + t + {a * W}u", $"t + {a * W}u")}; }}"));
            // Four keys an iteration: their value loads are independent, and each accumulator takes one dependent add.
            string gather4 = "      let pq = vec4<f32>(ps[grp * " + W + "u + jj], ps[grp * " + W + "u + jj + 1u], ps[grp * " + W + "u + jj + 2u], ps[grp * " + W + "u + jj + 3u]);\n" +
                "      let vr = vb + (j0 + jj) * vs;\n" +
                string.Join("\n", Enumerable.Range(0, Acc).Select(a => $"      if (t + {a * W}u < Dv) {{ a{a} += dot(pq, vec4<f32>({string.Join(", ", Enumerable.Range(0, 4).Select(o => r.Value($"j0 + jj + {o}u", $"vr + {o}u * vs + t + {a * W}u", $"t + {a * W}u")))})); }}"));
            // The groups' (max, sum, acc) merged to the workgroup's max M: acc = Σ_g acc_g·exp(m_g − M) (weights 1 while
            // every score is -inf, as one group alone: 0/0 = NaN). One pass: y = acc / total. Split: y holds, per (row,
            // chunk), [max, total, acc 0..Dv-1].
            string park = string.Join("\n", Enumerable.Range(0, Acc).Select(a => $"  if (t + {a * W}u < Dv) {{ ga[grp * {AttnMaxHeadDim}u + t + {a * W}u] = a{a}; }}"));
            string merged = $"ga[e] * select(exp(gm[0] - mx), 1.0, mx == ninf)" + string.Concat(Enumerable.Range(1, groups - 1).Select(g2 =>
                $" + ga[{g2 * AttnMaxHeadDim}u + e] * select(exp(gm[{g2}] - mx), 1.0, mx == ninf)"));
            // One group has nothing to merge: its registers are the result.
            string merge = groups == 1 ? "  let mx = m;\n  let total = red[0];\n" : $$"""
  if (t == 0u) { gm[grp] = m; gt[grp] = red[slot]; }
{{park}}
  workgroupBarrier();
  var mx = gm[0];
  for (var g2 = 1u; g2 < {{groups}}u; g2++) { mx = max(mx, gm[g2]); }
  var total = 0.0;
  for (var g2 = 0u; g2 < {{groups}}u; g2++) { total += gt[g2] * select(exp(gm[g2] - mx), 1.0, mx == ninf); }

""";
            string store = groups == 1
                ? split
                    ? "  let pb = wi * (Dv + 2u);\n  if (t == 0u) { y_st(pb, mx); y_st(pb + 1u, total); }\n" +
                      string.Join("\n", Enumerable.Range(0, Acc).Select(a => $"  if (t + {a * W}u < Dv) {{ y_st(pb + 2u + t + {a * W}u, a{a}); }}"))
                    : string.Join("\n", Enumerable.Range(0, Acc).Select(a => $"  if (t + {a * W}u < Dv) {{ y_st(row * Dv + t + {a * W}u, a{a} / total); }}"))
                : split
                    ? $"  let pb = wi * (Dv + 2u);\n  if (lid.x == 0u) {{ y_st(pb, mx); y_st(pb + 1u, total); }}\n  for (var e = lid.x; e < Dv; e += {W * groups}u) {{ y_st(pb + 2u + e, {merged}); }}"
                    : $"  for (var e = lid.x; e < Dv; e += {W * groups}u) {{ y_st(row * Dv + e, ({merged}) / total); }}";
            return w.Build($$"""
{{r.PrefetchHead(W * groups)}}{{RowHead}}  let t = lid.x % {{W}}u; let grp = lid.x / {{W}}u; let slot = lid.x;
{{LoadQ()}}
  workgroupBarrier();
{{r.Write(W * groups)}}  var m = ninf;
  var lsum = 0.0;
  {{accDecl}}
  let rounds = (je - jb + {{W * groups - 1}}u) / {{W * groups}}u;
  for (var it = 0u; it < rounds; it++) {
    let j0 = jb + (it * {{groups}}u + grp) * {{W}}u;
    let j = j0 + t;
    var sc = ninf;
    if (j < je) {
      let kr = kb + j * ks;
      var d0 = 0.0; var d1 = 0.0; var d2 = 0.0; var d3 = 0.0;
      var e = 0u;
      for (; e + 4u <= D; e += 4u) {
        d0 += qs[e] * {{r.Key("j", "kr + e", "e")}}; d1 += qs[e + 1u] * {{r.Key("j", "kr + e + 1u", "e + 1u")}};
        d2 += qs[e + 2u] * {{r.Key("j", "kr + e + 2u", "e + 2u")}}; d3 += qs[e + 3u] * {{r.Key("j", "kr + e + 3u", "e + 3u")}};
      }
      for (; e < D; e++) { d0 += qs[e] * {{r.Key("j", "kr + e", "e")}}; }
      sc = ((d0 + d1) + (d2 + d3)) * scale;
      {{Apply()}}
    }
    red[slot] = sc;
    workgroupBarrier();
    for (var w = {{W / 2}}u; w > 0u; w >>= 1u) { if (t < w) { red[slot] = max(red[slot], red[slot + w]); } workgroupBarrier(); }
    let mnew = max(m, red[grp * {{W}}u]);
    // Nothing is accumulated while every score so far is -inf; a -inf score weighs 0.
    let corr = select(exp(m - mnew), 1.0, mnew == ninf);
    var p = 0.0;
    if (j < je && sc != ninf) { p = exp(sc - mnew); }
    ps[slot] = p;
    lsum = lsum * corr + p;
    {{rescale}}
    workgroupBarrier();
    let n = select(0u, min({{W}}u, je - j0), j0 < je);
    var jj = 0u;
    for (; jj + 4u <= n; jj += 4u) {
{{gather4}}
    }
    for (; jj < n; jj++) {
      let pj = ps[grp * {{W}}u + jj];
      let vr = vb + (j0 + jj) * vs;
{{gather}}
    }
    m = mnew;
    workgroupBarrier();
  }
  red[slot] = lsum;
  workgroupBarrier();
  for (var w = {{W / 2}}u; w > 0u; w >>= 1u) { if (t < w) { red[slot] += red[slot + w]; } workgroupBarrier(); }
{{merge}}{{store}}
""", elementwise: false);
        }, split ? "AttentionChunks" : "Attention", r.Tensors(output), meta, gx, gy);
    }

    /// <summary>WGSL applying the mask to score <c>sc</c> of key <c>j</c> (mask offset <c>mo</c> of the query row).</summary>
    internal static string MaskApply(string maskKind) => maskKind switch
    {
        "where" => "if (mk(mo + j * md[13]) == 0u) { sc = fill; }",
        "add" => "sc = sc + mk(mo + j * md[13]);",
        _ => "",
    };

    /// <summary>The operands of a decode-row attention kernel (<see cref="LaneRows"/>, <see cref="ThreadRows"/>) and, with
    /// <see cref="New"/>, the new row it appends (its metadata words from <see cref="NewAt"/>): the code that stages and
    /// writes that row and reads keys and values through it.</summary>
    sealed record RowOperands(GpuTensor Q, GpuTensor K, GpuTensor V, GpuTensor? Mask, GpuTensor? Rcos, GpuTensor? Rsin, NewRows? New, int NewAt)
    {
        bool Shared => New is not null && New.SharesTables(Rcos, Rsin);

        /// <summary>Weights read into the cache by workgroups after the rows' (<c>prefetch=on</c>).</summary>
        public Prefetch? Prefetch { get; init; }

        public string PrefetchKey => Kernels.Prefetch.Key(Prefetch);

        /// <summary>The rows' workgroups, then the prefetching ones.</summary>
        public (uint X, uint Y) Grid(WebGpuPlatform g, long rowGroups, int threads) => Kernels.Prefetch.Grid(g, Prefetch, rowGroups, threads);

        /// <summary>The kernel's first lines with <see cref="Prefetch"/> (its workgroups past the rows').</summary>
        public string PrefetchHead(int threads) => Prefetch?.Head(threads, "md[0] * md[24]") ?? "";

        /// <summary>Kernel-key part: no new row, or one with no rotary (0), the query's tables (1) or its own (2).</summary>
        public string NewKey => New is null ? "" : $"n{(New.Cos is null ? 0 : Shared ? 1 : 2)}";

        /// <summary>The bindings: q, K, V (read and written with a new row), the mask, q's rotary tables, the new key and
        /// value rows and their own rotary tables, y.</summary>
        public Wgsl Bindings(int threads)
        {
            var w = new Wgsl(threads).In("q", Q);
            if (New is null) w.In("k", K).In("v", V);
            else
                w.Out("k", DType.Float32).Out("v", DType.Float32).Decl($$"""
var<workgroup> kn_w: array<f32, {{AttnMaxHeadDim}}>;
var<workgroup> vn_w: array<f32, {{AttnMaxHeadDim}}>;
fn kx_(j: u32, at: u32, e: u32) -> f32 { if (j < md[{{NewAt}}]) { return k_b[at]; } return kn_w[e]; }
fn vx_(j: u32, at: u32, e: u32) -> f32 { if (j < md[{{NewAt}}]) { return v_b[at]; } return vn_w[e]; }
""");
            if (Mask is not null) w.In("mk", Mask);
            if (Rcos is not null) w.In("rc", Rcos).In("rs", Rsin!);
            if (New is not null)
            {
                w.In("nk", New.Xk).In("nv", New.Xv);
                if (New.Cos is not null && !Shared) w.In("nc", New.Cos).In("ns", New.Sin!);
            }
            w.Out("y", DType.Float32);
            Prefetch?.Declare(w);
            return w;
        }

        /// <summary>The tensors in <see cref="Bindings"/>' order.</summary>
        public GpuTensor[] Tensors(GpuTensor y) =>
        [
            Q, K, V, .. (Mask is null ? Array.Empty<GpuTensor>() : [Mask]), .. (Rcos is null ? Array.Empty<GpuTensor>() : [Rcos, Rsin!]),
            .. (New is null ? Array.Empty<GpuTensor>() : [New.Xk, New.Xv]), .. (New?.Cos is null || Shared ? Array.Empty<GpuTensor>() : [New.Cos, New.Sin!]), y,
            .. (Prefetch?.Tensors ?? []),
        ];

        /// <summary>The end of the keys a kernel reads from the caches: <paramref name="je"/>, or with a new row its index
        /// if lower (the new row then comes from workgroup memory: <see cref="Stage"/>).</summary>
        public string PastEnd(string je) => New is null ? je : $"min({je}, md[{NewAt}])";

        /// <summary>Element <paramref name="at"/> of K for a key below <see cref="PastEnd"/>.</summary>
        public string PastKey(string at) => New is null ? $"k({at})" : $"k_b[{at}]";

        /// <summary>Element <paramref name="at"/> of V for a key below <see cref="PastEnd"/>.</summary>
        public string PastValue(string at) => New is null ? $"v({at})" : $"v_b[{at}]";

        /// <summary>Key <paramref name="j"/>'s element at <paramref name="at"/> of K (dim <paramref name="e"/>).</summary>
        public string Key(string j, string at, string e) => New is null ? $"k({at})" : $"kx_({j}, {at}, {e})";

        /// <summary>Value <paramref name="j"/>'s element at <paramref name="at"/> of V (dim <paramref name="e"/>).</summary>
        public string Value(string j, string at, string e) => New is null ? $"v({at})" : $"vx_({j}, {at}, {e})";

        /// <summary>Code before the barrier after q's load: the new key (rotated) and value into workgroup memory.</summary>
        public string Stage(int threads)
        {
            if (New is null) return "";
            int a = NewAt;
            string c = Shared ? "rc" : "nc", sn = Shared ? "rs" : "ns";
            string key = New.Cos is null ? "nk(knr_ * D + ei_)"
                : RotatedValue("nk", "knr_ * D + ei_", "ei_", $"md[{a + 1}]", $"{c}(bb * md[{a + 2}] + kvh * md[{a + 3}] + ei_ * md[{a + 5}])", $"{sn}(bb * md[{a + 6}] + kvh * md[{a + 7}] + ei_ * md[{a + 9}])");
            return $$"""
  let knr_ = bb * md[7] + kvh;
  for (var ei_ = lid.x; ei_ < D; ei_ += {{threads}}u) { kn_w[ei_] = {{key}}; }
  for (var ei_ = lid.x; ei_ < Dv; ei_ += {{threads}}u) { vn_w[ei_] = nv(knr_ * Dv + ei_); }

""";
        }

        /// <summary>Code after that barrier: the first query head of each kv head writes the new row to the caches.</summary>
        public string Write(int threads) => New is null ? "" : $$"""
  if (hh % md[6] == 0u) {
    let ktp_ = md[{{NewAt}}];
    for (var ei_ = lid.x; ei_ < D; ei_ += {{threads}}u) { k_st(kb + ktp_ * ks + ei_, kn_w[ei_]); }
    for (var ei_ = lid.x; ei_ < Dv; ei_ += {{threads}}u) { v_st(vb + ktp_ * vs + ei_, vn_w[ei_]); }
  }

""";
    }

    /// <summary>The bindings of every attention kernel (decode rows, both tiled prompt layouts): q, k, v, the mask, the
    /// rotary tables where given, y (<see cref="AttentionTensors"/> in the same order).</summary>
    internal static Wgsl AttentionBindings(int threads, GpuTensor q, GpuTensor k, GpuTensor v, GpuTensor? mask, GpuTensor? rcos, GpuTensor? rsin) =>
        new RowOperands(q, k, v, mask, rcos, rsin, null, -1).Bindings(threads);

    /// <summary>The tensors an attention kernel binds, in <see cref="AttentionBindings"/>' order.</summary>
    internal static GpuTensor[] AttentionTensors(GpuTensor q, GpuTensor k, GpuTensor v, GpuTensor? mask, GpuTensor? rcos, GpuTensor? rsin, GpuTensor y) =>
        new RowOperands(q, k, v, mask, rcos, rsin, null, -1).Tensors(y);

    /// <summary>The start of the tiled prompt-attention kernels' body: the workgroup's (batch·head, tile of
    /// <paramref name="rows"/> query rows) from the row kernel's metadata, and thread (r, c) of <paramref name="perRow"/>
    /// threads a row; a workgroup past the last tile returns.</summary>
    internal static string TiledAttentionHead(int rows, int perRow) => $$"""
  let wi = wid.x + wid.y * nwg.x;
  let H = md[1]; let S = md[2]; let T = md[3]; let D = md[4]; let Dv = md[5];
  let tiles = (S + {{rows - 1}}u) / {{rows}}u;
  if (wi >= md[0] / S * tiles) { return; }
  let bh = wi / tiles; let i0 = (wi % tiles) * {{rows}}u;
  let hh = bh % H; let bb = bh / H; let kvh = hh / md[6];
  let scale = bitcast<f32>(md[8]); let fill = bitcast<f32>(md[9]);
  let r = lid.x / {{perRow}}u; let c = lid.x % {{perRow}}u;
  let i = i0 + r;
  let live = i < S;
  let ninf = bits_(0xff800000u);
""";

    /// <summary>Flash attention for prompt-shaped inputs: a workgroup per (batch·head, tile of BR query rows); each
    /// tile of BC keys is loaded into workgroup memory once for all BR rows, thread (r, c) scores query r against key c,
    /// and each row keeps a running max and sum (online softmax) while thread (r, c) accumulates output dims c, c+BC, ….
    /// The [heads, seq, seq] scores never exist; K and V are read once per BR query rows instead of once per row. Same
    /// metadata as the row kernel (md[0..22], rotary at md[25..33]). False when head dims or workgroup limits do not fit.</summary>
    static bool Tiled(WebGpuPlatform g, GpuTensor q, GpuTensor k, GpuTensor v, GpuTensor? mask, GpuTensor? rcos, GpuTensor? rsin, Meta meta,
        long heads, long s, long d, long dv, string maskKind, GpuTensor y)
    {
        var lim = g.Device.Limits;
        int dmax = Math.Max(d, dv) <= 64 ? 64 : Math.Max(d, dv) <= 128 ? 128 : 0;
        if (dmax == 0) return false;
        int bc = dmax == 64 ? 16 : 8;
        int br = Math.Min(16, lim.MaxInvocationsPerWorkgroup / bc);
        int stride = dmax + 1;                                   // NOTE: padded rows: the threads of a row read distinct banks
        int floats = br * stride + bc * stride + br * bc;
        if (br < 4 || floats * 4 > lim.MaxWorkgroupStorageBytes) return false;
        int nt = br * bc, acc = dmax / bc;
        long tiles = (s + br - 1) / br;
        var (gx, gy) = Wgsl.Grid(heads * tiles, 1, lim.MaxWorkgroupsPerDimension);
        bool rot = rcos is not null;
        string load = rot
            ? $"{RotatedValue("q", "qb + e", "e", "md[25]", "rc(bb * md[26] + hh * md[27] + ii * md[28] + e * md[29])", "rs(bb * md[30] + hh * md[31] + ii * md[32] + e * md[33])")}"
            : "q(qb + e)";
        string accDecl = string.Join(" ", Enumerable.Range(0, acc).Select(a => $"var a{a} = 0.0;"));
        string rescale = string.Join(" ", Enumerable.Range(0, acc).Select(a => $"a{a} = a{a} * corr;"));
        string gather = string.Join("\n", Enumerable.Range(0, acc).Select(a => $"      if (c + {a * bc}u < Dv) {{ a{a} += p * kvs[jj * {stride}u + c + {a * bc}u]; }}"));
        string store = string.Join("\n", Enumerable.Range(0, acc).Select(a => $"    if (c + {a * bc}u < Dv) {{ y_st(ob + c + {a * bc}u, a{a} / l); }}"));
        g.LaunchGroups(new WebGpuPlatform.KernelKey("attention_tiled", $"{maskKind}|{rot}|{dmax}|{br}"), () =>
        {
            var w = AttentionBindings(nt, q, k, v, mask, rcos, rsin);
            w.Decl($"var<workgroup> qs: array<f32, {br * stride}>;\nvar<workgroup> kvs: array<f32, {bc * stride}>;\nvar<workgroup> ss: array<f32, {br * bc}>;");
            return w.Build($$"""
{{TiledAttentionHead(br, bc)}}
  for (var x = lid.x; x < {{br}}u * D; x += {{nt}}u) {
    let rr = x / D; let e = x % D; let ii = i0 + rr;
    var qv = 0.0;
    if (ii < S) { let qb = bb * md[14] + hh * md[15] + ii * md[16]; qv = {{load}}; }
    qs[rr * {{stride}}u + e] = qv;
  }
  let kb = bb * md[17] + kvh * md[18]; let ks = md[19];
  let vb = bb * md[20] + kvh * md[21]; let vs = md[22];
  let mo = bb * md[10] + hh * md[11] + min(i, S - 1u) * md[12];
  var m = ninf;
  var l = 0.0;
  {{accDecl}}
  for (var j0 = 0u; j0 < T; j0 += {{bc}}u) {
    for (var x = lid.x; x < {{bc}}u * D; x += {{nt}}u) {
      let jj = x / D; let e = x % D;
      var kv = 0.0;
      if (j0 + jj < T) { kv = k(kb + (j0 + jj) * ks + e); }
      kvs[jj * {{stride}}u + e] = kv;
    }
    workgroupBarrier();
    let j = j0 + c;
    var sc = ninf;
    if (live && j < T) {
      var dot = 0.0;
      for (var e = 0u; e < D; e++) { dot += qs[r * {{stride}}u + e] * kvs[c * {{stride}}u + e]; }
      sc = dot * scale;
      {{MaskApply(maskKind)}}
    }
    ss[r * {{bc}}u + c] = sc;
    workgroupBarrier();
    for (var x = lid.x; x < {{bc}}u * Dv; x += {{nt}}u) {
      let jj = x / Dv; let e = x % Dv;
      var vv = 0.0;
      if (j0 + jj < T) { vv = v(vb + (j0 + jj) * vs + e); }
      kvs[jj * {{stride}}u + e] = vv;
    }
    var tmax = ninf;
    for (var jj = 0u; jj < {{bc}}u; jj++) { tmax = max(tmax, ss[r * {{bc}}u + jj]); }
    let mnew = max(m, tmax);
    // Nothing is accumulated while every score so far is -inf; a -inf score weighs 0.
    let corr = select(exp(m - mnew), 1.0, mnew == ninf);
    {{rescale}}
    workgroupBarrier();
    var psum = 0.0;
    for (var jj = 0u; jj < {{bc}}u; jj++) {
      let s2 = ss[r * {{bc}}u + jj];
      var p = 0.0;
      if (s2 != ninf) { p = exp(s2 - mnew); }
      psum += p;
{{gather}}
    }
    l = l * corr + psum;
    m = mnew;
    workgroupBarrier();
  }
  if (live) {
    let ob = ((bb * H + hh) * S + i) * Dv;
{{store}}
  }
""", elementwise: false);
        }, "AttentionTiled", AttentionTensors(q, k, v, mask, rcos, rsin, y), meta, gx, gy);
        return true;
    }

    /// <summary>Whether <paramref name="t"/> broadcasts to exactly <paramref name="shape"/>.</summary>
    static bool BroadcastsTo(GpuTensor t, long[] shape)
    {
        try { return ShapeUtil.SameShape(ShapeUtil.Broadcast(t.Shape, shape), shape); }
        catch (TapmlException) { return false; }
    }

    /// <summary>The KV cache append of a layer in one dispatch: present K = Concat(past K, new K) and present V =
    /// Concat(past V, new V) along the sequence axis of [batch, kv_heads, seq, head_dim] values, the new K rotated
    /// (rotary embedding, <c>half</c>) as it is written when the region holds its rotary. Inputs past K, new K, past V,
    /// new V [, cos, sin, …]; null (the body runs) when the shapes are not what the pattern assumes. The presents have a
    /// row capacity (<see cref="WebGpuPlatform.WithCapacity"/>): when both pasts are the longest views of capacity
    /// buffers with room for the new rows, the presents are longer views of the same buffers and only the new rows are
    /// written; otherwise the pasts are copied into new buffers with room to grow.</summary>
    /// <summary>A <c>kv_append</c> region's operands: past K, new K, past V, new V [B, kv heads, seq, dim] (f32, the new
    /// rows contiguous) and, with the rotary (<c>half</c> &gt; 0), its cos and sin tables broadcasting to new K; null when
    /// the inputs are not what the pattern assumes.</summary>
    sealed record KvOperands(GpuTensor Pk, GpuTensor Xk, GpuTensor Pv, GpuTensor Xv, GpuTensor? Cos, GpuTensor? Sin, long Half)
    {
        public static KvOperands? Of(NodeContext ctx, GpuTensor?[] ins)
        {
            if (ins.Length < 4 || ins[0] is not { } pk || ins[1] is not { } xk || ins[2] is not { } pv || ins[3] is not { } xv) return null;
            if (new[] { pk, xk, pv, xv }.Any(t => !IsF32(t) || t.Rank != 4) || xk.IsStrided || xv.IsStrided) return null;
            if (ctx.Int("axis", 2) is not (2 or -2)) return null;
            if (pk.Shape[0] != xk.Shape[0] || pk.Shape[1] != xk.Shape[1] || pk.Shape[3] != xk.Shape[3]) return null;
            if (pv.Shape[0] != xv.Shape[0] || pv.Shape[1] != xv.Shape[1] || pv.Shape[3] != xv.Shape[3]) return null;
            long half = ctx.Int("half", 0);
            if (half <= 0) return new(pk, xk, pv, xv, null, null, 0);
            if (ins.Length < 6 || ins[4] is not { } c || ins[5] is not { } sn || !IsF32(c) || !IsF32(sn)) return null;
            if (xk.Shape[3] != 2 * half || !BroadcastsTo(c, xk.Shape) || !BroadcastsTo(sn, xk.Shape)) return null;
            return new(pk, xk, pv, xv, c, sn, half);
        }
    }

    static Value?[]? KvAppend(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        if (KvOperands.Of(ctx, ins) is not var (pk, xk, pv, xv, cos, sin, half)) return null;
        if ((cos is null ? 4 : 6) + 3 > g.Device.Limits.MaxStorageBuffersPerStage) return null;                 // + 2 outputs, metadata
        long tk = pk.Shape[2] + xk.Shape[2], tv = pv.Shape[2] + xv.Shape[2];
        long[] kShape = [pk.Shape[0], pk.Shape[1], tk, pk.Shape[3]], vShape = [pv.Shape[0], pv.Shape[1], tv, pv.Shape[3]];
        // NOTE: in place never binds the pasts: they share the presents' buffers, which a dispatch may not bind twice
        // when one binding writes.
        bool inPlace = g.KvInPlace && Appendable(pk, tk) && Appendable(pv, tv) && pk.Buffer != pv.Buffer;
        GpuTensor yk, yv;
        if (inPlace) (yk, yv) = (g.Extended(pk, tk), g.Extended(pv, tv));
        else if (g.KvInPlace) (yk, yv) = (g.WithCapacity(kShape), g.WithCapacity(vShape));
        else (yk, yv) = (g.Empty(DType.Float32, kShape), g.Empty(DType.Float32, vShape));
        long k0 = inPlace ? pk.Shape[2] : 0, v0 = inPlace ? pv.Shape[2] : 0;                  // first row written
        long nk = kShape[0] * kShape[1] * kShape[3] * (tk - k0), n = nk + vShape[0] * vShape[1] * vShape[3] * (tv - v0);
        if (n == 0) return [yk, yv];
        var meta = new Meta();
        meta.Add(n); meta.Add(nk);
        // md[2..9]: first row written, T, past rows, new rows, D, heads, present capacity, past capacity (K); md[10..16]: V.
        meta.Add(k0); meta.Add(tk); meta.Add(pk.Shape[2]); meta.Add(xk.Shape[2]); meta.Add(pk.Shape[3]); meta.Add(pk.Shape[1]); meta.Add(Rows(yk)); meta.Add(Rows(pk));
        meta.Add(v0); meta.Add(tv); meta.Add(pv.Shape[2]); meta.Add(xv.Shape[2]); meta.Add(pv.Shape[3]); meta.Add(Rows(yv)); meta.Add(Rows(pv));
        bool rot = cos is not null;
        if (rot)
        {
            meta.Add(half);                                                      // md[17]
            meta.AddAll(ShapeUtil.BroadcastStrides(cos!.Shape, xk.Shape));       // md[18..21]
            meta.AddAll(ShapeUtil.BroadcastStrides(sin!.Shape, xk.Shape));       // md[22..25]
        }
        string NewK() => rot
            ? $"""
      let hf = md[17]; let b = bh / md[7]; let h = bh % md[7];
      let xi = (bh * S + tn) * D;
      let co = b * md[18] + h * md[19] + tn * md[20] + e * md[21];
      let so = b * md[22] + h * md[23] + tn * md[24] + e * md[25];
      yk_st(o, {RotatedValue("xk", "xi + e", "e", "hf", "cs(co)", "sn(so)")});
"""
            : "      yk_st(o, xk((bh * S + tn) * D + e));\n";
        g.Launch(new WebGpuPlatform.KernelKey("kv_append", $"{rot}|{inPlace}"), () =>
        {
            var w = new Wgsl(g.Workgroup);
            if (!inPlace) w.In("pk", pk);
            w.In("xk", xk);
            if (!inPlace) w.In("pv", pv);
            w.In("xv", xv);
            if (rot) w.In("cs", cos!).In("sn", sin!);
            string pastK = inPlace ? "" : "if (tt < Tp) { yk_st(o, pk((bh * P + tt) * D + e)); } else ";
            string pastV = inPlace ? "" : "if (tt < Tp) { yv_st(o, pv((bh * P + tt) * D + e)); } else ";
            return w.Out("yk", DType.Float32).Out("yv", DType.Float32).Build($$"""
  if (i < md[1]) {
    let r0 = md[2]; let T = md[3]; let Tp = md[4]; let S = md[5]; let D = md[6]; let C = md[8]; let P = md[9];
    let e = i % D; let r = i / D; let tt = r0 + r % (T - r0); let bh = r / (T - r0);
    let o = (bh * C + tt) * D + e;
    {{pastK}}{
      let tn = tt - Tp;
{{NewK()}}    }
  } else {
    let j = i - md[1];
    let r0 = md[10]; let T = md[11]; let Tp = md[12]; let S = md[13]; let D = md[14]; let C = md[15]; let P = md[16];
    let e = j % D; let r = j / D; let tt = r0 + r % (T - r0); let bh = r / (T - r0);
    let o = (bh * C + tt) * D + e;
    {{pastV}}{ yv_st(o, xv((bh * S + tt - Tp) * D + e)); }
  }
""");
        }, rot ? "KvAppendRotary" : "KvAppend", [.. (inPlace ? [] : new[] { pk }), xk, .. (inPlace ? [] : new[] { pv }), xv, .. (rot ? new[] { cos!, sin! } : []), yk, yv], meta, n);
        return [yk, yv];
    }

    /// <summary>A decode step's new key and value row (<c>kv_attention</c>), which the attention kernel appends to the
    /// cache itself: each workgroup stages the row (the key rotated with <see cref="Half"/> &gt; 0) in workgroup memory and
    /// reads key <see cref="Past"/> from there, and the first query head of each kv head writes it to the cache.</summary>
    internal sealed record NewRows(GpuTensor Xk, GpuTensor Xv, GpuTensor? Cos, GpuTensor? Sin, long Half, long Past)
    {
        /// <summary>The key's rotary tables are the query's (bound once).</summary>
        public bool SharesTables(GpuTensor? rcos, GpuTensor? rsin) => Cos is not null && ReferenceEquals(Cos, rcos) && ReferenceEquals(Sin, rsin);
    }

    /// <summary>A <c>kv_attention</c> region (<see cref="Fusion"/>) in one dispatch: a decode step (one new row, one query
    /// row) whose pasts grow in place, the attention kernel appending the new row as it reads it (<see cref="NewRows"/>).
    /// Null (the body's two regions run, two dispatches) for anything else.</summary>
    static Value?[]? KvAttention(WebGpuPlatform g, Graph body, int opset, GpuTensor?[] ins)
    {
        if (body.Nodes.Count != 2 || body.Nodes[0].Attributes.GetValueOrDefault("kind")?.Str != "kv_append"
            || body.Nodes[1].Attributes.GetValueOrDefault("kind")?.Str != "attention" || !g.KvInPlace || !g.KvJoint) return null;
        var (kvNode, attNode) = (body.Nodes[0], body.Nodes[1]);
        var byName = BodyInputs(body, ins);
        var kvIns = kvNode.Inputs.Select(n => byName.GetValueOrDefault(n)).ToArray();
        if (KvOperands.Of(new NodeContext(kvNode, opset), kvIns) is not var (pk, xk, pv, xv, cos, sin, half)) return null;
        if (xk.Shape[2] != 1 || xv.Shape[2] != 1 || pk.Shape[2] != pv.Shape[2]) return null;
        long past = pk.Shape[2];
        if (past + 1 >= AttnSplitFrom) return null;
        return WithNewRow(g, pk, pv, past, (yk, yv) =>
        {
            var attIns = attNode.Inputs.Select(n => n == kvNode.Outputs[0] ? yk : n == kvNode.Outputs[1] ? yv : byName.GetValueOrDefault(n)).ToArray();
            return Attention(g, new NodeContext(attNode, opset), attIns, new NewRows(xk, xv, cos, sin, half, past)) is { } y ? [y, yk, yv] : null;
        });
    }

    /// <summary>A fused region's inputs by the names its body gives them.</summary>
    static Dictionary<string, GpuTensor?> BodyInputs(Graph body, GpuTensor?[] ins)
    {
        var byName = new Dictionary<string, GpuTensor?>();
        for (int i = 0; i < body.Inputs.Count && i < ins.Length; i++) byName[body.Inputs[i].Name] = ins[i];
        return byName;
    }

    /// <summary>A kernel that appends a decode step's new row itself, run on views of the caches <paramref name="pk"/>
    /// and <paramref name="pv"/> (<paramref name="past"/> rows) one row longer, in place; null where they cannot grow in
    /// place or the kernel declines (then the views go, the caches keep their lengths, and the body runs).</summary>
    static Value?[]? WithNewRow(WebGpuPlatform g, GpuTensor pk, GpuTensor pv, long past, Func<GpuTensor, GpuTensor, Value?[]?> kernel)
    {
        if (!Appendable(pk, past + 1) || !Appendable(pv, past + 1) || pk.Buffer == pv.Buffer) return null;
        var (yk, yv) = (g.Extended(pk, past + 1), g.Extended(pv, past + 1));
        if (kernel(yk, yv) is { } outs) return outs;
        g.Free(yk);
        g.Free(yv);
        (pk.Buffer.KvRows, pv.Buffer.KvRows) = (past, past);
        return null;
    }

    /// <summary>A <c>projections_kv</c> region (<see cref="Fusion"/>) in one dispatch: a decode step (one row of x) whose
    /// q/k/v projection kernel writes the new key (rotated) and value rows into caches that grow in place
    /// (<see cref="ProjectionsNBits.KvRows"/>; 4-bit, f32 or f16 products; the rotary tables known on the host, as a
    /// decode step's host input makes them). Null (the body's regions run: the projections, then the append) for anything else, or
    /// where <c>kv-append</c> is not <c>projections</c>.</summary>
    static Value?[]? ProjectionsKv(WebGpuPlatform g, Graph body, int opset, GpuTensor?[] ins)
    {
        if (g.Options.KvAppend != "projections" || !g.KvInPlace || body.Nodes.Count != 6 || body.Nodes[5].Attributes.GetValueOrDefault("kind")?.Str != "kv_append") return null;
        var (proj, kvNode) = (body.Nodes[0], body.Nodes[5]);
        var byName = BodyInputs(body, ins);
        var kvCtx = new NodeContext(kvNode, opset);
        if (byName.GetValueOrDefault(kvNode.Inputs[0]) is not { } pk || byName.GetValueOrDefault(kvNode.Inputs[2]) is not { } pv) return null;
        if (!IsF32(pk) || !IsF32(pv) || pk.Rank != 4 || pk.Shape[0] != 1 || !pk.Shape.AsSpan().SequenceEqual(pv.Shape) || kvCtx.Int("axis", 2) is not (2 or -2)) return null;
        long heads = pk.Shape[1], d = pk.Shape[3], past = pk.Shape[2], half = kvCtx.Int("half", 0);
        // The Reshapes make [batch, seq, heads, D] of the projections' k and v (0 and -1 entries aside).
        foreach (var r in new[] { body.Nodes[1], body.Nodes[3] })
            if (byName.GetValueOrDefault(r.Inputs[1])?.Source is not { Length: 4 } shape || shape.As<long>() is var s && (s[2] > 0 && s[2] != heads || s[3] > 0 && s[3] != d)) return null;
        // The rotary tables' D values, the same for every head (a decode step's: one position).
        long[] keyShape = [1, heads, 1, d];
        float[]? Table(int at)
        {
            if (at >= kvNode.Inputs.Length || byName.GetValueOrDefault(kvNode.Inputs[at]) is not { } t || !IsF32(t) || !BroadcastsTo(t, keyShape)) return null;
            var st = ShapeUtil.BroadcastStrides(t.Shape, keyShape);
            if (st[1] != 0 || WebGpuPlatform.HostValue(t) is not { DType: DType.Float32 } h) return null;
            var v = h.Span<float>();
            var table = new float[d];
            for (int i = 0; i < d; i++) table[i] = v[(int)(i * st[3])];
            return table;
        }
        float[]? cos = null, sin = null;
        if (half > 0 && (d != 2 * half || (cos = Table(4)) is null || (sin = Table(5)) is null)) return null;
        int ko = Array.IndexOf(proj.Outputs, body.Nodes[1].Inputs[0]), vo = Array.IndexOf(proj.Outputs, body.Nodes[3].Inputs[0]);
        if (ko < 0 || vo < 0) return null;
        var projIns = proj.Inputs.Select(n => byName.GetValueOrDefault(n)).ToArray();
        return WithNewRow(g, pk, pv, past, (yk, yv) =>
        {
            var kv = new ProjectionsNBits.KvRows(ko, vo, yk, yv, cos, sin, half, heads, d, past);
            return Projections.Run(g, new NodeContext(proj, opset), proj.Attributes["body"].G!, opset, projIns, kv) is { } ys
                ? [.. ys.Where((_, o) => o != ko && o != vo), yk, yv] : null;
        });
    }

    /// <summary>Whether <paramref name="past"/> is the longest view of a capacity buffer with room for
    /// <paramref name="rows"/> rows.</summary>
    static bool Appendable(GpuTensor past, long rows) =>
        past.Capacity >= rows && past.Buffer.KvRows == past.Shape[2] && !past.Freed && past.ByteOffset == 0 && past.Buffer.Handle != 0;

    /// <summary>Rows allocated along axis 2 of a rank-4 tensor.</summary>
    internal static long Rows(GpuTensor t) => t.IsStrided ? t.Capacity : t.Shape[2];

    /// <summary>Most key groups an attention workgroup has (1, 2 or 4); <c>bench llm</c> runs a variant with 1.</summary>
    public static int MaxAttentionGroups { get => _maxAttentionGroups == 0 ? 4 : _maxAttentionGroups; set => _maxAttentionGroups = value; }
    [ThreadStatic] static int _maxAttentionGroups;    // per thread: the benchmark's variant changes its own runs only

    /// <summary>Key count from which decode-shaped attention splits the keys over workgroups (the workgroups it aims at:
    /// <see cref="WebGpuPlatform.AttentionTargetGroups"/>).</summary>
    const long AttnSplitFrom = 256;
}
