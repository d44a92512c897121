using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Reduce* and Softmax/LogSoftmax: one workgroup per output row reduces a strided run of L elements
/// (tree reduction in workgroup memory, f32 accumulation). Non-adjacent reduced axes are first moved last.</summary>
public static class Reductions
{
    // (init, combine(acc, v), map(v), finish(acc, L))
    static readonly Dictionary<string, (string Init, string Combine, string Map, string Finish)> Ops = new()
    {
        ["ReduceSum"] = ("0.0", "a + b", "v", "acc"),
        ["ReduceMean"] = ("0.0", "a + b", "v", "acc / f32(L)"),
        ["ReduceMax"] = ("bits_(0xff800000u)", "select(max(a, b), a + b, a != a || b != b)", "v", "acc"),
        ["ReduceMin"] = ("bits_(0x7f800000u)", "select(min(a, b), a + b, a != a || b != b)", "v", "acc"),
        ["ReduceProd"] = ("1.0", "a * b", "v", "acc"),
        ["ReduceSumSquare"] = ("0.0", "a + b", "v * v", "acc"),
        ["ReduceL1"] = ("0.0", "a + b", "abs(v)", "acc"),
        ["ReduceL2"] = ("0.0", "a + b", "v * v", "sqrt(acc)"),
        ["ReduceLogSum"] = ("0.0", "a + b", "v", "log(acc)"),
    };

    public static void Register(Action<GpuOp> add)
    {
        foreach (var name in Ops.Keys.Append("ReduceLogSumExp"))
            add(new GpuOp("", name, 1, (g, ctx, ins) => [Reduce(g, ctx, ins, name)], FloatOnly));
        add(new GpuOp("", "ArgMax", 1, (g, ctx, ins) => [Arg(g, ctx, GpuOps.In(ins, 0, ctx), max: true)]));
        add(new GpuOp("", "ArgMin", 1, (g, ctx, ins) => [Arg(g, ctx, GpuOps.In(ins, 0, ctx), max: false)]));
        add(new GpuOp("", "Softmax", 1, (g, ctx, ins) => [Softmax(g, ctx, GpuOps.In(ins, 0, ctx), log: false)], FloatOnly));
        add(new GpuOp("", "LogSoftmax", 1, (g, ctx, ins) => [Softmax(g, ctx, GpuOps.In(ins, 0, ctx), log: true)], FloatOnly));
    }

    internal static string? FloatOnly(Tapml.Platforms.NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t) =>
        t.Count > 0 && t[0] is { } a && a.ElemType is not (DType.Float32 or DType.Float16 or DType.BFloat16)
            ? $"{ctx.Node.OpType} on {DTypes.Name(a.ElemType)} is not implemented on webgpu (floats only)" : null;

    static GpuTensor Reduce(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor?[] ins, string op)
    {
        var x = GpuOps.In(ins, 0, ctx);
        int r = x.Rank;
        bool axesAsInput = op == "ReduceSum" ? ctx.Opset >= 13 : ctx.Opset >= 18;
        long[]? axesRaw = axesAsInput ? (ins.Length > 1 && ins[1] is { } a ? g.Ints(a) : null) : ctx.Ints("axes");
        bool keep = ctx.Int("keepdims", 1) != 0;
        if ((axesRaw is null || axesRaw.Length == 0) && ctx.Int("noop_with_empty_axes", 0) != 0) return g.Alias(x, x.Shape);
        var axes = (axesRaw is null || axesRaw.Length == 0 ? Enumerable.Range(0, r) : axesRaw.Select(v => ShapeUtil.Axis(v, r))).Distinct().Order().ToArray();
        var outShape = keep ? x.Shape.Select((d, i) => axes.Contains(i) ? 1L : d).ToArray() : x.Shape.Where((d, i) => !axes.Contains(i)).ToArray();
        bool contiguous = axes.Length == 0 || axes[^1] - axes[0] + 1 == axes.Length;
        var src = x;
        long outer, len, inner;
        if (contiguous)
        {
            outer = ShapeUtil.Size(x.Shape.AsSpan(0, axes.Length == 0 ? 0 : axes[0]));
            len = axes.Aggregate(1L, (p, d) => p * x.Shape[d]);
            inner = axes.Length == 0 ? 1 : ShapeUtil.Size(x.Shape.AsSpan(axes[^1] + 1));
        }
        else
        {
            // Move the reduced axes last (one strided copy), then reduce contiguous rows.
            var perm = Enumerable.Range(0, r).Where(d => !axes.Contains(d)).Concat(axes).ToArray();
            var st = ShapeUtil.Strides(x.Shape);
            var pshape = perm.Select(p => x.Shape[p]).ToArray();
            src = g.Empty(x.DType, pshape);
            DataMovement.Copy(g, x, src, pshape, perm.Select(p => st[p]).ToArray(), 0, ShapeUtil.Strides(pshape), 0, "ReduceTranspose");
            len = axes.Aggregate(1L, (p, d) => p * x.Shape[d]);
            outer = ShapeUtil.Size(pshape) / Math.Max(1, len);
            inner = 1;
        }
        var y = g.Empty(x.DType, outShape);
        if (y.Length > 0)
        {
            if (op == "ReduceLogSumExp") TwoPass(g, src, y, outer * inner, len, inner, "logsumexp", op);
            else RowReduce(g, src, y, outer * inner, len, inner, Ops[op], op);
        }
        if (!ReferenceEquals(src, x)) g.Free(src);
        return y;
    }

    static void RowReduce(WebGpuPlatform g, GpuTensor x, GpuTensor y, long rows, long len, long inner, (string Init, string Combine, string Map, string Finish) f, string label)
    {
        var meta = new Meta();
        meta.Add(rows); meta.Add(len); meta.Add(Math.Max(1, inner));
        string body = $$"""
  let row = wid.x + wid.y * nwg.x;
  if (row >= md[0]) { return; }
  let L = md[1]; let inner = md[2];
  let base = (row / inner) * L * inner + row % inner;
  var acc = {{f.Init}};
  for (var j = lid.x; j < L; j += 256u) { let v = f32(x(base + j * inner)); acc = comb(acc, {{f.Map}}); }
  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) { red[lid.x] = comb(red[lid.x], red[lid.x + s]); }
    workgroupBarrier();
  }
  if (lid.x == 0u) { let acc = red[0]; y_st(row, {{f.Finish}}); }
""";
        var (gx, gy) = Wgsl.Grid(rows, 1, g.Device.Limits.MaxWorkgroupsPerDimension);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("reduce", $"{label}|{(int)x.Storage}|{(int)y.DType}"), () => new Wgsl(256).In("x", x).Out("y", y.DType)
            .Decl($"var<workgroup> red: array<f32, 256>;\nfn comb(a: f32, b: f32) -> f32 {{ return {f.Combine}; }}")
            .Build(body, elementwise: false), label, [x, y], meta, gx, gy);
    }

    /// <summary>ArgMax/ArgMin along one axis, int64 out. Each workgroup reduces up to <see cref="ArgChunk"/> elements of a
    /// row (each thread keeps its best (value, index), then a tree reduction); a longer row (a vocabulary's logits) is
    /// split over several workgroups whose (value, index) pairs a second dispatch reduces, so the row is read by many
    /// SMs at once. numpy's order, as the cpu reference: a NaN beats every number (the first NaN, or the last with
    /// select_last_index), then the extreme value, ties to the first (last) index.</summary>
    static GpuTensor Arg(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, bool max)
    {
        if (x.Rank == 0) throw ctx.Error("input must have rank >= 1");
        if (x.Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(x, ctx);
        int axis;
        try { axis = ShapeUtil.Axis(ctx.Int("axis", 0), x.Rank); }
        catch (TapmlException e) { throw ctx.Error(e.Message); }
        bool keep = ctx.Int("keepdims", 1) != 0;
        bool last = ctx.Opset >= 12 && ctx.Int("select_last_index", 0) != 0;
        long len = x.Shape[axis];
        if (len == 0) throw ctx.Error("cannot take the arg of an empty axis");
        if (len > uint.MaxValue) throw ctx.Error($"axis {axis} has {len} elements, over the 2³² a u32 index holds");
        var outShape = keep ? x.Shape.Select((d, i) => i == axis ? 1L : d).ToArray() : x.Shape.Where((_, i) => i != axis).ToArray();
        var y = g.Empty(DType.Int64, outShape);
        if (y.Length == 0) return y;
        long rows = y.Length, inner = Math.Max(1, ShapeUtil.Size(x.Shape.AsSpan(axis + 1)));
        long parts = (len + ArgChunk - 1) / ArgChunk;
        if (parts == 1) { ArgPass(g, x, null, [y], rows, len, inner, 1, max, last); return y; }
        // A row of up to ArgWidePerThread values a thread of the widest workgroup (a 32K vocabulary's logits at 1024
        // threads): one workgroup takes it whole, one dispatch instead of two.
        int wide = Wgsl.FloorPow2(Math.Min(1024, g.Device.Limits.MaxInvocationsPerWorkgroup));
        if (len <= (long)wide * ArgWidePerThread)
        {
            if (inner == 1 && x.Storage == GpuStorage.F32 && len % 4 == 0 && x.ByteOffset % 16 == 0 && !x.IsStrided) ArgRows4(g, ctx.Node, x, y, rows, len, max, last, wide);
            else ArgPass(g, x, null, [y], rows, len, inner, 1, max, last, wide);
            return y;
        }
        // NOTE: partial values keep x's storage type (f16/bf16 values are exact in it), indices are u32.
        var pv = g.Empty(x.Storage == GpuStorage.F32 || x.Storage == GpuStorage.F16x2 ? DType.Float32 : x.Storage == GpuStorage.I32 ? DType.Int32 : DType.UInt32, [rows * parts]);
        var pi = g.Empty(DType.UInt32, [rows * parts]);
        try
        {
            ArgPass(g, x, null, [pv, pi], rows, len, inner, parts, max, last);
            ArgPass(g, pv, pi, [y], rows, parts, 1, 1, max, last);
        }
        finally { g.Free(pv); g.Free(pi); }
        return y;
    }

    /// <summary>Elements one workgroup of <see cref="Arg"/> reduces.</summary>
    const long ArgChunk = 2048;

    /// <summary>Elements a thread of a one-workgroup row (<see cref="Arg"/>) reads at most.</summary>
    const long ArgWidePerThread = 32;

    /// <summary>WGSL <c>better(a, ia, b, ib)</c>: whether (a, ia) comes before (b, ib) in numpy's arg order over values of
    /// WGSL scalar <paramref name="s"/>: a NaN first (the first, or the last with <paramref name="last"/>), then the
    /// extreme value, ties to the first (last) index.</summary>
    static string Better(string s, bool max, bool last)
    {
        string nan(string v) => s == "f32" ? $"((bitcast<u32>({v}) & 0x7fffffffu) > 0x7f800000u)" : "false";
        return $$"""
fn better(a: {{s}}, ia: u32, b: {{s}}, ib: u32) -> bool {
  let na = {{nan("a")}}; let nb = {{nan("b")}};
  if (na || nb) { return (na && !nb) || (na && nb && ia {{(last ? ">" : "<")}} ib); }
  return a {{(max ? ">" : "<")}} b || (a == b && ia {{(last ? ">" : "<")}} ib);
}
""";
    }

    /// <summary>WGSL merging each thread's best (<c>bv</c>, <c>bi</c>) of <paramref name="threads"/> into <c>rv[0]</c>,
    /// <c>ri[0]</c> by a tree in workgroup memory.</summary>
    static string ArgTree(int threads) => $$"""
  rv[lid.x] = bv; ri[lid.x] = bi;
  workgroupBarrier();
  for (var t = {{threads / 2}}u; t > 0u; t >>= 1u) {
    if (lid.x < t && better(rv[lid.x + t], ri[lid.x + t], rv[lid.x], ri[lid.x])) { rv[lid.x] = rv[lid.x + t]; ri[lid.x] = ri[lid.x + t]; }
    workgroupBarrier();
  }

""";

    /// <summary>One pass of <see cref="Arg"/>: <paramref name="rows"/> × <paramref name="parts"/> workgroups, each over
    /// its chunk of a row of <paramref name="len"/> (stride <paramref name="inner"/>). Values from <paramref name="x"/>,
    /// indices the positions or, with <paramref name="idx"/>, read from it; writes the index (one output) or the pair.</summary>
    static void ArgPass(WebGpuPlatform g, GpuTensor x, GpuTensor? idx, GpuTensor[] outs, long rows, long len, long inner, long parts, bool max, bool last, int threads = 256)
    {
        var meta = new Meta();
        meta.Add(rows * parts); meta.Add(len); meta.Add(inner); meta.Add(parts); meta.Add(parts == 1 ? len : Math.Min(len, ArgChunk));
        string s = Wgsl.Scalar(x.Storage);
        bool pairs = idx is not null, final = outs.Length == 1;
        // NOTE: the WGSL strings are functions: made only when the kernel is compiled, not on every call.
        string at(string j) => pairs ? $"xi(base + {j})" : j;
        string Unrolled()
        {
            var u = new System.Text.StringBuilder();
            for (int k = 0; k < 4; k++) u.Append($"    let ju{k} = j + {k * threads}u; let v{k} = x(base + ju{k} * inner); let i{k} = {at($"ju{k}")};\n");
            for (int k = 0; k < 4; k++) u.Append($"    if (better(v{k}, i{k}, bv, bi)) {{ bv = v{k}; bi = i{k}; }}\n");
            return u.ToString();
        }
        string Body() => $$"""
  let w = wid.x + wid.y * nwg.x;
  if (w >= md[0]) { return; }
  let L = md[1]; let inner = md[2]; let row = w / md[3]; let part = w % md[3];
  let base = (row / inner) * L * inner + row % inner;
  let j0 = part * md[4]; let j1 = min(L, j0 + md[4]);
  var bj = min(j0 + lid.x, j1 - 1u);
  var bv = x(base + bj * inner); var bi = {{at("bj")}};
  // Four loads in flight an iteration (the order of comparisons does not matter: ties go by index).
  var j = j0 + lid.x + {{threads}}u;
  for (; j + {{3 * threads}}u < j1; j += {{4 * threads}}u) {
{{Unrolled()}}  }
  for (; j < j1; j += {{threads}}u) { let v = x(base + j * inner); let vi = {{at("j")}}; if (better(v, vi, bv, bi)) { bv = v; bi = vi; } }
{{ArgTree(threads)}}  if (lid.x == 0u) { {{(final ? "y_st(w, i32(ri[0]));" : "pv_st(w, rv[0]); pi_st(w, ri[0]);")}} }
""";
        var (gx, gy) = Wgsl.Grid(rows * parts, 1, g.Device.Limits.MaxWorkgroupsPerDimension);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("arg", $"{max}|{last}|{pairs}|{final}|{(int)x.Storage}|{threads}"), () =>
        {
            var w = new Wgsl(threads).In("x", x);
            if (pairs) w.In("xi", idx!);
            if (final) w.Out("y", DType.Int64);
            else w.Out("pv", outs[0].DType).Out("pi", DType.UInt32);
            return w.Decl($"var<workgroup> rv: array<{s}, {threads}>;\nvar<workgroup> ri: array<u32, {threads}>;\n{Better(s, max, last)}").Build(Body(), elementwise: false);
        }, max ? "ArgMax" : "ArgMin", [x, .. (pairs ? new[] { idx! } : []), .. outs], meta, gx, gy);
    }

    /// <summary><see cref="Arg"/> of contiguous f32 rows of up to <see cref="ArgWidePerThread"/> values a thread (a decode
    /// step's logits), one workgroup a row. Each value becomes a u32 key ordered as the comparison wants (NaN above all,
    /// −0 as +0, ArgMin's order flipped), so the best (key, index) is the largest key, ties by index: the same total order
    /// as <see cref="ArgPass"/>'s <c>better</c>, with integer compares only. A thread's vec4 loads are all issued before
    /// any compare (<see cref="ArgLoads"/> a loop iteration) and its values merged as a tree (independent compares), then
    /// the threads' bests by subgroup shuffles where the device has them (one barrier, then every subgroup merges the
    /// subgroups' bests by shuffles again) or a tree in workgroup memory.</summary>
    static void ArgRows4(WebGpuPlatform g, Tapml.Ir.Node node, GpuTensor x, GpuTensor y, long rows, long len, bool max, bool last, int threads)
    {
        var meta = new Meta();
        meta.Add(rows); meta.Add(len);
        int lanes = Math.Min(32, g.SubgroupLanes);
        if (lanes < 4) lanes = 0;
        // A decode step's greedy token is one workgroup: with prefetch=on more read the next step's first weights.
        var pf = Prefetch.For(g, node, meta, 3);
        var (gx, gy) = Prefetch.Grid(g, pf, rows, threads);
        int loads = (int)Math.Clamp((len / 4 + threads - 1) / threads, 1, ArgLoads);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("arg_keys4", $"{max}|{last}|{threads}|{lanes}|{loads}{Prefetch.Key(pf)}"), () =>
        {
            var b = new System.Text.StringBuilder();
            for (int k = 0; k < loads; k++)
                b.Append($"    let j{k} = j + {k * threads}u;\n    var v{k} = vec4<u32>(0u);\n    if (j{k} < n4) {{ v{k} = bitcast<vec4<u32>>(xv_b[b4 + j{k}]); }}\n");
            // Each vec4's best of its four, then the vec4s' bests pairwise: every compare at a level is independent.
            var best = new List<(string K, string I)>();
            for (int k = 0; k < loads; k++)
            {
                b.Append($"    let q{k} = keys_(v{k}, j{k} < n4);\n");
                b.Append($"    let a{k} = pick_(q{k}.x, j{k} * 4u, q{k}.y, j{k} * 4u + 1u);\n    let c{k} = pick_(q{k}.z, j{k} * 4u + 2u, q{k}.w, j{k} * 4u + 3u);\n");
                b.Append($"    let p{k}_0 = pick_(a{k}.x, a{k}.y, c{k}.x, c{k}.y);\n");
                best.Add(($"p{k}_0.x", $"p{k}_0.y"));
            }
            int level = 1;
            while (best.Count > 1)
            {
                var next = new List<(string K, string I)>();
                for (int i = 0; i + 1 < best.Count; i += 2)
                {
                    string n = $"m{level}_{i / 2}";
                    b.Append($"    let {n} = pick_({best[i].K}, {best[i].I}, {best[i + 1].K}, {best[i + 1].I});\n");
                    next.Add(($"{n}.x", $"{n}.y"));
                }
                if (best.Count % 2 == 1) next.Add(best[^1]);
                best = next;
                level++;
            }
            b.Append($"    let t_ = pick_(bv, bi, {best[0].K}, {best[0].I});\n    bv = t_.x; bi = t_.y;\n");
            int partials = lanes > 0 ? threads / lanes : threads;
            string merge = lanes > 0 ? $$"""
  for (var m = {{lanes / 2}}u; m >= 1u; m >>= 1u) {
    let t = pick_(bv, bi, subgroupShuffleXor(bv, m), subgroupShuffleXor(bi, m));
    bv = t.x; bi = t.y;
  }
  if (lid.x % {{lanes}}u == 0u) { rv[lid.x / {{lanes}}u] = bv; ri[lid.x / {{lanes}}u] = bi; }
  workgroupBarrier();
  bv = 0u; bi = 0xffffffffu;
  for (var t = lid.x % {{lanes}}u; t < {{partials}}u; t += {{lanes}}u) { let p = pick_(bv, bi, rv[t], ri[t]); bv = p.x; bi = p.y; }
  for (var m = {{lanes / 2}}u; m >= 1u; m >>= 1u) {
    let t = pick_(bv, bi, subgroupShuffleXor(bv, m), subgroupShuffleXor(bi, m));
    bv = t.x; bi = t.y;
  }
  if (lid.x == 0u) { y_st(row, i32(bi)); }
""" : $$"""
{{ArgTree(threads)}}  if (lid.x == 0u) { y_st(row, i32(ri[0])); }
""";
            var w = new Wgsl(threads).InVec4("xv").Out("y", DType.Int64);
            pf?.Declare(w);
            // NOTE: key 0 is below every value's key (−inf's is 0x007fffff for ArgMax, +inf's for ArgMin): a slot past the
            // row's end never wins. Keys compare as ArgMax's (ArgMin's order is in the key), with ArgPass's better and tree.
            w.Decl($$"""
var<workgroup> rv: array<u32, {{partials}}>;
var<workgroup> ri: array<u32, {{partials}}>;
{{Better("u32", true, last)}}
fn key_(v: u32, live: bool) -> u32 {
  let z = select(v, 0u, v == 0x80000000u);
  let o = select(z | 0x80000000u, ~z, (z & 0x80000000u) != 0u);
  let k = select({{(max ? "o" : "~o")}}, 0xffffffffu, (v & 0x7fffffffu) > 0x7f800000u);
  return select(0u, k, live);
}
fn keys_(v: vec4<u32>, live: bool) -> vec4<u32> { return vec4<u32>(key_(v.x, live), key_(v.y, live), key_(v.z, live), key_(v.w, live)); }
fn pick_(ka: u32, ia: u32, kb: u32, ib: u32) -> vec2<u32> { return select(vec2<u32>(ka, ia), vec2<u32>(kb, ib), better(kb, ib, ka, ia)); }
""");
            return w.Build($$"""
{{pf?.Head(threads, "md[0]")}}  let row = wid.x + wid.y * nwg.x;
  if (row >= md[0]) { return; }
  let n4 = md[1] / 4u; let b4 = row * n4;
  var bv = 0u; var bi = 0xffffffffu;
  for (var j = lid.x; j < n4; j += {{loads * threads}}u) {
{{b}}  }
{{merge}}
""", elementwise: false);
        }, max ? "ArgMax" : "ArgMin", [x, y, .. (pf?.Tensors ?? [])], meta, gx, gy);
    }

    /// <summary>vec4 loads a thread of <see cref="ArgRows4"/> issues before its compares (all of a 32K vocabulary's logits
    /// at 1024 threads in one iteration).</summary>
    const int ArgLoads = 8;

    /// <summary>Max, then sum of exp(v − max), per row: writes softmax / log-softmax rows or log-sum-exp values.</summary>
    static void TwoPass(WebGpuPlatform g, GpuTensor x, GpuTensor y, long rows, long len, long inner, string mode, string label)
    {
        var meta = new Meta();
        meta.Add(rows); meta.Add(len); meta.Add(Math.Max(1, inner));
        string write = mode switch
        {
            "softmax" => "  for (var j = lid.x; j < L; j += 256u) { let e = base + j * inner; y_st(e, exp(f32(x(e)) - mx) / sum); }",
            "logsoftmax" => "  for (var j = lid.x; j < L; j += 256u) { let e = base + j * inner; y_st(e, f32(x(e)) - mx - log(sum)); }",
            _ => "  if (lid.x == 0u) { y_st(row, mx + log(sum)); }",
        };
        string body = $$"""
  let row = wid.x + wid.y * nwg.x;
  if (row >= md[0]) { return; }
  let L = md[1]; let inner = md[2];
  let base = (row / inner) * L * inner + row % inner;
  var m = bits_(0xff800000u);
  for (var j = lid.x; j < L; j += 256u) { m = max(m, f32(x(base + j * inner))); }
  red[lid.x] = m;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) { red[lid.x] = max(red[lid.x], red[lid.x + s]); }
    workgroupBarrier();
  }
  var mx = red[0];
  // NOTE: a row of -inf (fully masked) gives NaN like the reference (exp(-inf - -inf)).
  workgroupBarrier();
  var acc = 0.0;
  for (var j = lid.x; j < L; j += 256u) { acc += exp(f32(x(base + j * inner)) - mx); }
  red[lid.x] = acc;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid.x < s) { red[lid.x] += red[lid.x + s]; }
    workgroupBarrier();
  }
  let sum = red[0];
{{write}}
""";
        var (gx, gy) = Wgsl.Grid(rows, 1, g.Device.Limits.MaxWorkgroupsPerDimension);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("twopass", $"{mode}|{(int)x.Storage}|{(int)y.DType}"), () => new Wgsl(256).In("x", x).Out("y", y.DType)
            .Decl("var<workgroup> red: array<f32, 256>;").Build(body, elementwise: false), label, [x, y], meta, gx, gy);
    }

    static GpuTensor Softmax(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, bool log)
    {
        int r = x.Rank;
        var y = g.Empty(x.DType, x.Shape);
        if (y.Length == 0) return y;
        long outer, len, inner;
        if (ctx.Opset < 13)
        {
            // Before opset 13: the input is coerced to 2-D at axis (default 1) and rows are normalized whole.
            int axis = ShapeUtil.Axis(ctx.Int("axis", 1), Math.Max(r, 1));
            outer = ShapeUtil.Size(x.Shape.AsSpan(0, axis));
            len = ShapeUtil.Size(x.Shape.AsSpan(axis));
            inner = 1;
        }
        else
        {
            int axis = ShapeUtil.Axis(ctx.Int("axis", -1), r);
            outer = ShapeUtil.Size(x.Shape.AsSpan(0, axis));
            len = x.Shape[axis];
            inner = ShapeUtil.Size(x.Shape.AsSpan(axis + 1));
        }
        TwoPass(g, x, y, outer * inner, len, inner, log ? "logsoftmax" : "softmax", ctx.Node.OpType);
        return y;
    }
}
