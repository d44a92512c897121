using System.Runtime.CompilerServices;
using System.Text;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>The <c>projections</c> region (<see cref="Fusion"/>) as one matrix-vector dispatch for decode-shaped x
/// (at most <see cref="MatMul.MatVecMaxRows"/> rows): the products' weights stacked into one transposed buffer, one
/// output column per thread group; the RMSNorm folded in (Σ w·x·γ over the row, scaled by 1/rms from Σ x² that the
/// same loop accumulates, so x is read once) and the element-wise epilogue (SwiGLU's silu(gate)·up, a bias) applied to
/// the finished dot products. Every output must use as many products as the others (QKV: one each; gate·up: two);
/// otherwise, and for prefill-shaped x, the body runs node by node.</summary>
static class Projections
{
    /// <summary>An output: its products (indices into <see cref="Plan.Products"/>), column count, and the WGSL
    /// statements computing <c>v</c> from <c>m0…</c> (the products' dot values) and column <c>j</c>.</summary>
    internal sealed record Output(int[] Products, long N, string Code);

    /// <summary>What a node's body means for the kernel, worked out once per node.</summary>
    internal sealed class Plan
    {
        /// <summary>The products are MatMulNBits (<see cref="ProjectionsNBits"/> runs the region).</summary>
        public bool NBits;
        /// <summary>Per product, its body node (body order).</summary>
        public Node[] Products = [];
        public bool Norm;
        public int[] Weights = [];             // node input indices of the distinct weights, stacking order
        public int[] ProductWeight = [];       // product → index into Weights
        public int[] Vectors = [];             // node input indices of per-column constants, stacking order
        public Output[] Outputs = [];
        public int P;                          // products per output
        public string? Unsupported;
    }

    static readonly ConditionalWeakTable<Node, Plan> Plans = new();

    internal static string Literal(float v) => $"bits_(0x{BitConverter.SingleToUInt32Bits(v):x}u)";

    static Plan Build(NodeContext ctx, Graph body, int opset, GpuTensor?[] ins)
    {
        var node = ctx.Node;
        var plan = new Plan { Norm = ctx.String("norm", "none") == "rms" };
        int Idx(string s) => Array.IndexOf(node.Inputs, s);
        bool nbits = body.Nodes.Any(n => n.OpType == "MatMulNBits");
        bool IsProduct(Node n) => n.OpType == (nbits ? "MatMulNBits" : "MatMul");
        var products = body.Nodes.Where(IsProduct).ToList();
        var productOf = new Dictionary<string, int>();
        for (int p = 0; p < products.Count; p++) productOf[products[p].Outputs[0]] = p;
        var epilogue = new Dictionary<string, Node>();
        foreach (var n in body.Nodes)
            if (!IsProduct(n) && n.Inputs.Any(s => productOf.ContainsKey(s) || epilogue.ContainsKey(s))) epilogue[n.Outputs[0]] = n;
        var weights = new List<int>();
        var productWeight = new int[products.Count];
        for (int p = 0; p < products.Count; p++)
        {
            int wi = Idx(products[p].Inputs[1]);
            // A half weight (--weights f16) reaches its product through a Cast in the body: the kernel reads the half input.
            if (wi < 0 && body.Nodes.FirstOrDefault(n => n.OpType == "Cast" && n.Outputs[0] == products[p].Inputs[1]) is { } cast) wi = Idx(cast.Inputs[0]);
            if (wi < 0 || ins[wi] is not { Source: { } ws } || ws.Rank != (nbits ? 3 : 2)) return new Plan { Unsupported = "a product's weight is not an uploaded 2-D tensor (3-D packed for MatMulNBits)" };
            if (!weights.Contains(wi)) weights.Add(wi);
            productWeight[p] = weights.IndexOf(wi);
        }
        long NOf(int p) => nbits ? products[p].Attributes.GetValueOrDefault("N")?.I ?? 0 : ins[weights[productWeight[p]]]!.Shape[1];
        var vectors = new List<int>();
        var outputs = new List<Output>();
        foreach (var o in body.Outputs)
        {
            // The products and epilogue nodes this output depends on (body order).
            var used = new SortedSet<int>();
            var nodes = new List<Node>();
            void Walk(string v)
            {
                if (productOf.TryGetValue(v, out int p)) { used.Add(p); return; }
                if (!epilogue.TryGetValue(v, out var n) || nodes.Contains(n)) return;
                foreach (var s in n.Inputs) Walk(s);
                nodes.Add(n);
            }
            Walk(o.Name);
            if (used.Count == 0) return new Plan { Unsupported = $"output '{o.Name}' reads no product" };
            var ps = used.ToArray();
            long n0 = NOf(ps[0]);
            if (ps.Any(p => NOf(p) != n0)) return new Plan { Unsupported = $"output '{o.Name}' combines products of different widths" };
            nodes.Sort((a, b) => body.Nodes.IndexOf(a).CompareTo(body.Nodes.IndexOf(b)));
            var ids = new Dictionary<string, string>();
            for (int q = 0; q < ps.Length; q++) ids[products[ps[q]].Outputs[0]] = $"m{q}";
            var code = new StringBuilder();
            for (int k = 0; k < nodes.Count; k++)
            {
                var n = nodes[k];
                var expr = Elementwise.ExprOf(n.OpType);
                if (expr is null) return new Plan { Unsupported = $"{n.OpType} has no element-wise expression" };
                var args = new string[n.Inputs.Length];
                for (int a = 0; a < args.Length; a++)
                {
                    string s = n.Inputs[a];
                    if (ids.TryGetValue(s, out var id)) { args[a] = id; continue; }
                    int ci = Idx(s);
                    if (ci < 0 || ins[ci]?.Source is not { } c || c.DType is not (DType.Float32 or DType.Float16 or DType.Int64 or DType.Int32 or DType.Float64))
                        return new Plan { Unsupported = $"epilogue input '{s}' is not a numeric constant" };
                    if (c.Length == 1) args[a] = Literal(c.Data.GetValue(0) switch { float f => f, double d => (float)d, long l => l, int i => i, Half h => (float)h, _ => float.NaN });
                    else if (c.Length == n0 && c.DType is DType.Float32 or DType.Float16 or DType.BFloat16)
                    {
                        if (!vectors.Contains(ci)) vectors.Add(ci);
                        args[a] = $"vecs_b[VEC{vectors.IndexOf(ci)}u + j]";
                    }
                    else return new Plan { Unsupported = $"epilogue constant '{s}' has {c.Length} values, not 1 or {n0}" };
                }
                code.Append($"      let e{k} = f32({expr(args, args.Select(_ => GpuStorage.F32).ToArray(), new NodeContext(n, opset))});\n");
                ids[n.Outputs[0]] = $"e{k}";
            }
            code.Append($"      let v = {ids[o.Name]};\n");
            outputs.Add(new Output(ps, n0, code.ToString()));
        }
        plan.P = outputs[0].Products.Length;
        if (outputs.Any(o => o.Products.Length != plan.P)) return new Plan { Unsupported = "outputs use different numbers of products" };
        // Offsets of the stacked per-column constants, baked into the code.
        long at = 0;
        var outs = outputs.ToArray();
        for (int v = 0; v < vectors.Count; v++)
        {
            for (int o = 0; o < outs.Length; o++) outs[o] = outs[o] with { Code = outs[o].Code.Replace($"VEC{v}u", $"{at}u") };
            at += ins[vectors[v]]!.Length;
        }
        plan.NBits = nbits;
        plan.Products = [.. products];
        plan.Weights = [.. weights];
        plan.ProductWeight = productWeight;
        plan.Vectors = [.. vectors];
        plan.Outputs = outs;
        return plan;
    }

    /// <summary>What <paramref name="ctx"/>'s body means for a kernel (made once per node).</summary>
    internal static Plan PlanOf(NodeContext ctx, Graph body, int opset, GpuTensor?[] ins)
    {
        if (!Plans.TryGetValue(ctx.Node, out var plan)) { plan = Build(ctx, body, opset, ins); Plans.AddOrUpdate(ctx.Node, plan); }
        return plan;
    }

    /// <summary>A float value held as f32 words (f16/bf16 activations too: the kernel rounds its outputs to the dtype).</summary>
    static bool IsFloat(GpuTensor? t, DType dtype) => t is { Storage: GpuStorage.F32 } && t.DType == dtype;

    internal static float[] Floats(Tensor t) => t.Data switch
    {
        float[] f => f,
        Half[] h => h.Select(v => (float)v).ToArray(),
        BFloat16[] b => b.Select(v => (float)v).ToArray(),
        _ => throw new UnsupportedException($"projections: a {DTypes.Name(t.DType)} per-column constant"),
    };

    /// <summary>The outputs, or null when the kernel does not apply (the caller runs the body).</summary>
    /// <param name="kv">A decode step's KV append in the epilogue (<c>projections_kv</c>, <see cref="ProjectionsNBits.KvRows"/>).</param>
    public static GpuTensor[]? Run(WebGpuPlatform g, NodeContext ctx, Graph body, int opset, GpuTensor?[] ins, ProjectionsNBits.KvRows? kv = null)
    {
        if (ins.Length == 0 || ins[0] is not { } x || x.DType is not (DType.Float32 or DType.Float16 or DType.BFloat16) || !IsFloat(x, x.DType) || x.Rank == 0) return null;
        long k = x.Shape[^1];
        if (k == 0 || x.Length == 0) return null;
        long rowCount = x.Length / k;
        var plan = PlanOf(ctx, body, opset, ins);
        if (plan.Unsupported is not null) return null;
        if (plan.NBits) return ProjectionsNBits.Run(g, ctx, plan, opset, x, ins, kv);
        GpuTensor? gamma = null;
        if (plan.Norm)
        {
            if (ins.Length < 2 || ins[1] is not { } gm || gm.DType != x.DType || gm.Length != k || gm.Rank > x.Rank) return null;
            // An f16 weight is stored packed: the kernel reads the norm weight as f32 words (converted once).
            if (gm.Storage == GpuStorage.F32) gamma = gm;
            else if (gm.Source is { } src) gamma = g.Concatenated([src], () => new Tensor(DType.Float32, [k], Floats(src)));
            else return null;
        }
        var ws = new Tensor[plan.Weights.Length];
        for (int i = 0; i < ws.Length; i++)
        {
            if (ins[plan.Weights[i]] is not { Source: { } src } w || w.Rank != 2 || w.Shape[0] != k || w.Storage is not (GpuStorage.F32 or GpuStorage.F16x2)) return null;
            if (i > 0 && (src.DType != ws[0].DType || w.Storage != ins[plan.Weights[0]]!.Storage)) return null;
            ws[i] = src;
        }
        if (rowCount > MatMul.MatVecMaxRows)
        {
            // Prefill runs the body node by node; its products read their weights as views of the stacked buffer the
            // decode kernel reads (made here when it fits one binding), so the weights are not on the GPU twice.
            long stackedBytes = ws.Sum(w => w.Length) * (ins[plan.Weights[0]]!.Storage == GpuStorage.F16x2 ? 2 : 4);
            if (stackedBytes <= g.Device.Limits.MaxStorageBindingBytes && stackedBytes <= g.Device.Limits.MaxBufferBytes) g.TransposedWeights(ws);
            return null;
        }
        int rows = (int)rowCount;
        foreach (var v in plan.Vectors) if (ins[v] is not { Source: not null } t || t.DType != x.DType || t.Rank > x.Rank) return null;
        bool packed = ins[plan.Weights[0]]!.Storage == GpuStorage.F16x2;
        if (packed && !g.HalfProjectionsFused) return null;
        int per = packed ? 8 : 4;
        if (k % per != 0) return null;
        int outs = plan.Outputs.Length, accs = rows * (plan.P + (plan.Norm ? 1 : 0));
        var lim = g.Device.Limits;
        int wg = Math.Min(256, lim.MaxInvocationsPerWorkgroup);
        if (kv is not null && !kv.Fits(plan, rows, x.DType)) return null;
        int bindings = 1 + (plan.Norm ? 1 : 0) + 1 + (plan.Vectors.Length > 0 ? 1 : 0) + outs + 1;
        if (bindings > lim.MaxStorageBuffersPerStage || (long)wg * accs * 4 > lim.MaxWorkgroupStorageBytes) return null;
        int threads = MatMul.MatVecThreads(k / per, packed);
        threads = Math.Min(threads, wg);
        // A rotated key pair's two columns are neighbouring thread groups of one workgroup.
        if (kv is not null && !kv.PairsFit(plan, wg / threads)) return null;

        var wt = g.TransposedWeights(ws);
        var list = new List<GpuTensor>(bindings) { x };
        if (gamma is not null) list.Add(gamma);
        list.Add(wt);
        if (plan.Vectors.Length > 0)
        {
            var vs = plan.Vectors.Select(i => ins[i]!.Source!).ToArray();
            list.Add(g.Concatenated(vs, () => new Tensor(DType.Float32, [vs.Sum(s => s.Length)], vs.SelectMany(Floats).ToArray())));
        }
        var ys = Outputs(g, plan, x, kv, list);
        var meta = new Meta();
        meta.Add(k);
        kv?.Bind(list, meta);                                                 // md[1..]
        long columns = plan.Outputs.Sum(o => o.N);
        var (gx, gy) = Wgsl.Grid(columns, wg / threads, lim.MaxWorkgroupsPerDimension);
        float eps = ctx.Float("epsilon", 1e-6f);
        var pipeline = g.Kernel(new WebGpuPlatform.KernelKey("projections", $"{rows}|{packed}|{threads}|{wg}|{(int)x.DType}|{kv?.Key}", ctx.Node),
            () => Code(plan, ws, rows, packed, threads, wg, eps, x.DType, kv),
            $"Projections_{outs}x{plan.P}{(plan.Norm ? "_rms" : "")}{(packed ? "_f16" : "")}{(kv is null ? "" : "_kv")}_r{rows}");
        g.NoteWeights(wt);
        g.LaunchGroups(pipeline, [.. list], meta, gx, gy);
        return ys;
    }

    /// <summary>A projection kernel's outputs for x's rows: a new tensor each, appended to <paramref name="bindings"/>,
    /// but the cache views <paramref name="kv"/> writes instead (bound by <see cref="ProjectionsNBits.KvRows.Bind"/>).</summary>
    internal static GpuTensor[] Outputs(WebGpuPlatform g, Plan plan, GpuTensor x, ProjectionsNBits.KvRows? kv, List<GpuTensor> bindings)
    {
        var ys = new GpuTensor[plan.Outputs.Length];
        var lead = x.Shape[..^1];
        for (int o = 0; o < ys.Length; o++)
        {
            if (kv?.Cache(o) is { } cache) { ys[o] = cache; continue; }
            ys[o] = g.Empty(x.DType, [.. lead, plan.Outputs[o].N]);
            bindings.Add(ys[o]);
        }
        return ys;
    }

    static string Code(Plan plan, Tensor[] ws, int rows, bool packed, int t, int wg, float eps, DType dtype, ProjectionsNBits.KvRows? kv)
    {
        long kStart = kv?.KeyStart(plan) ?? 0;
        int per = packed ? 8 : 4, P = plan.P, outs = plan.Outputs.Length;
        var w = new Wgsl(wg);
        var decl = new StringBuilder();
        int b = 0;
        decl.Append($"@group(0) @binding({b++}) var<storage, read> xv_b: array<vec4<f32>>;\n");
        if (plan.Norm) decl.Append($"@group(0) @binding({b++}) var<storage, read> gv_b: array<vec4<f32>>;\n");
        decl.Append($"@group(0) @binding({b++}) var<storage, read> wt_b: array<vec4<{(packed ? "u32" : "f32")}>>;\n");
        if (plan.Vectors.Length > 0) decl.Append($"@group(0) @binding({b++}) var<storage, read> vecs_b: array<f32>;\n");
        for (int i = 0; i < b; i++) w.Reserve();
        for (int o = 0; o < outs; o++) if (kv?.Cache(o) is null) w.Out($"y{o}", dtype);
        kv?.Declare(w, 1, kStart, plan.Outputs[kv.K].N);
        int accs = rows * (P + (plan.Norm ? 1 : 0));
        w.Decl(decl.ToString() + $"var<workgroup> red: array<f32, {wg * accs}>;");
        w.Decl(Elementwise.HelperFunctions);
        // Weight row of product p's column j in the stacked buffer: the widths of the weights stacked before it.
        var rowAt = new long[plan.Weights.Length];
        for (int i = 1; i < rowAt.Length; i++) rowAt[i] = rowAt[i - 1] + ws[i - 1].Shape[1];
        var rs = Enumerable.Range(0, rows).ToArray();
        var qs = Enumerable.Range(0, P).ToArray();
        int Acc(int r, int q) => r * (P + (plan.Norm ? 1 : 0)) + q;     // q == P: Σ x² of row r
        var sb = new StringBuilder();
        sb.Append($"  let K4 = md[0] / {per}u;\n  let t = lid.x % {t}u;\n  let c = (wid.x + wid.y * nwg.x) * {wg / t}u + lid.x / {t}u;\n");
        // With a rotated key the thread groups take its columns in pair order (ProjectionsNBits.KvRows): column cn.
        sb.Append(kv is { Rotated: true } ? "  let cn = kvcol_(c);\n" : "  let cn = c;\n");
        sb.Append($"  var o = {outs}u; var j = 0u;\n");
        foreach (var q in qs) sb.Append($"  var w{q} = 0u;\n");
        long start = 0;
        for (int o = 0; o < outs; o++)
        {
            var op = plan.Outputs[o];
            sb.Append($"  {(o == 0 ? "" : "else ")}if (cn < {start + op.N}u) {{ o = {o}u; j = cn - {start}u;");
            foreach (var q in qs) sb.Append($" w{q} = {rowAt[plan.ProductWeight[op.Products[q]]]}u + j;");
            sb.Append(" }\n");
            start += op.N;
        }
        foreach (var r in rs) { foreach (var q in qs) sb.Append($"  var a{r}_{q} = 0.0;"); if (plan.Norm) sb.Append($" var s{r} = 0.0;"); sb.Append('\n'); }
        sb.Append($"  if (o < {outs}u) {{\n    for (var kk = t; kk < K4; kk += {t}u) {{\n");
        int halves = packed ? 2 : 1;
        for (int hf = 0; hf < halves; hf++)
        {
            string sfx = packed ? (hf == 0 ? "a" : "b") : "";
            string xi(int r) => packed ? $"(({r}u * K4 + kk) * 2u + {hf}u)" : $"({r}u * K4 + kk)";
            if (plan.Norm) sb.Append($"      let g{sfx} = gv_b[{(packed ? $"kk * 2u + {hf}u" : "kk")}];\n");
            foreach (var r in rs)
            {
                sb.Append($"      let x{r}{sfx} = xv_b[{xi(r)}];\n");
                if (plan.Norm) sb.Append($"      s{r} += dot(x{r}{sfx}, x{r}{sfx});\n      let z{r}{sfx} = x{r}{sfx} * g{sfx};\n");
                else sb.Append($"      let z{r}{sfx} = x{r}{sfx};\n");
            }
        }
        foreach (var q in qs)
        {
            sb.Append($"      let wv{q} = wt_b[w{q} * K4 + kk];\n");
            if (packed)
                sb.Append($"      let wa{q} = vec4<f32>(unpack2x16float(wv{q}.x), unpack2x16float(wv{q}.y));\n      let wb{q} = vec4<f32>(unpack2x16float(wv{q}.z), unpack2x16float(wv{q}.w));\n");
            foreach (var r in rs)
                sb.Append(packed ? $"      a{r}_{q} += dot(wa{q}, z{r}a) + dot(wb{q}, z{r}b);\n" : $"      a{r}_{q} += dot(wv{q}, z{r});\n");
        }
        sb.Append("    }\n  }\n");
        foreach (var r in rs)
        {
            foreach (var q in qs) sb.Append($"  red[{Acc(r, q) * wg}u + lid.x] = a{r}_{q};\n");
            if (plan.Norm) sb.Append($"  red[{Acc(r, P) * wg}u + lid.x] = s{r};\n");
        }
        sb.Append($"  workgroupBarrier();\n  for (var s = {t / 2}u; s > 0u; s >>= 1u) {{\n    if (t < s) {{\n");
        sb.Append($"      for (var a = 0u; a < {accs}u; a++) {{ red[a * {wg}u + lid.x] += red[a * {wg}u + lid.x + s]; }}\n");
        sb.Append("    }\n    workgroupBarrier();\n  }\n");
        sb.Append($"  if (t != 0u || o >= {outs}u) {{ return; }}\n");
        for (int o = 0; o < outs; o++)
        {
            var op = plan.Outputs[o];
            sb.Append($"  if (o == {o}u) {{\n");
            foreach (var r in rs)
            {
                sb.Append("    {\n");
                string inv = plan.Norm ? $" / sqrt(red[{Acc(r, P) * wg}u + lid.x] / f32(md[0]) + {Literal(eps)})" : "";
                foreach (var q in qs) sb.Append($"      let m{q} = red[{Acc(r, q) * wg}u + lid.x]{inv};\n");
                // A rotated key's neighbour column: the next thread group's total.
                string neighbour = $"      let m0b = red[{Acc(r, 0) * wg}u + lid.x + {t}u]{inv};\n";
                sb.Append(kv?.Store(o, op.Code, neighbour, kStart, 1) ?? $"{op.Code}      y{o}_st({r}u * {op.N}u + j, v);\n");
                sb.Append("    }\n");
            }
            sb.Append("  }\n");
        }
        return w.Build(sb.ToString(), elementwise: false);
    }
}
