using Tapml.Core;

namespace Tapml.Ir;

/// <summary>What <see cref="Fusion.Fuse"/> did: node counts and fused regions by kind.</summary>
public sealed record FusionReport(int NodesBefore, int NodesAfter, IReadOnlyDictionary<string, int> Regions)
{
    public override string ToString() =>
        $"{NodesBefore} → {NodesAfter} nodes ({string.Join(", ", Regions.Select(r => $"{r.Value} {r.Key}"))})";
}

/// <summary>Graph-level fusion for GPU targets: connected pieces of a graph become one <c>tapml.Fused</c> node
/// whose <c>body</c> attribute holds the original nodes, so every platform can run it exactly as before (the
/// cpu reference runs the body node by node) while a GPU runs it as one kernel. Kinds (attribute <c>kind</c>):
/// <list type="bullet">
/// <item><c>rms_norm</c>: Pow(x, 2) → ReduceMean(last axis, keepdims) → Add(eps) → Sqrt → Div(x, ·) (or
/// Reciprocal → Mul(x, ·)) → Mul(·, weight); attribute <c>epsilon</c>.</item>
/// <item><c>rotary</c>: x·cos + Concat(−x[h:2h], x[:h])·sin on the last axis (rotate-half); attribute
/// <c>half</c>.</item>
/// <item><c>matmul_add</c>: Add(MatMul(x, W), r) with W a 2-D initializer (a residual or bias added in the
/// matrix-vector kernel's epilogue), or Add(MatMulNBits(x, B, scales[, zero_points]), r) of initializers (inputs x, B,
/// scales[, zero_points], r).</item>
/// <item><c>projections</c>: products of one value (MatMul by 2-D weights, or all MatMulNBits of initializers as
/// <c>--quantize q4</c> writes) with the RMSNorm making it and their element-wise epilogue.</item>
/// <item><c>attention</c>: Softmax(mask(MatMul(q, Transpose(K′, [0,1,3,2])) · scale)) → MatMul(·, V′) on rank-4
/// [batch, heads, seq, head_dim] values, where the mask is optional Where(cond, ·, fill) or Add(·, m), the scale an
/// optional Mul/Div by a constant, and K′/V′ either K/V or HF's repeat_kv (Unsqueeze(axis 2) → Expand → Reshape) of
/// them; an operand's Transpose from [batch, seq, heads, head_dim] is read through strides instead. Kernel inputs
/// q, K, V, [mask]; attributes <c>scale</c>, <c>mask</c> (none|where|add), <c>fill</c>, <c>q_layout</c>/<c>k_layout</c>/
/// <c>v_layout</c> (bthd when read that way), <c>k_expand</c>/<c>k_reshape</c>/<c>v_expand</c>/<c>v_reshape</c> (the
/// repeat_kv constants; absent without it). The
/// kernel checks at run time that the shapes mean what the pattern assumes, else the body runs.</item>
/// <item><c>elementwise</c>: a tree of float element-wise ops (broadcasting) whose intermediates have no
/// other consumer.</item>
/// <item><c>kv_append</c>, <c>projections_kv</c> and <c>kv_attention</c>: see <see cref="FoldIntoAttention"/>,
/// <see cref="MergeAppendIntoProjections"/> and <see cref="MergeKvIntoAttention"/>.</item>
/// </list>
/// Intermediates of a region are never graph outputs nor used outside it, so the graph's observable values are
/// unchanged. Only the main graph is rewritten. Cuts dispatches (and host work per node) of a Llama decode step
/// by about half.</summary>
public static class Fusion
{
    public const string Domain = "tapml";
    public const string OpType = "Fused";

    /// <summary>Element-wise ops a region may hold (float in, float out, or Where with an outside condition).</summary>
    static readonly HashSet<string> ElementwiseOps = ["Add", "Sub", "Mul", "Div", "Neg", "Sqrt", "Sigmoid", "Tanh", "Exp", "Log", "Relu",
        "Erf", "Reciprocal", "Abs", "Pow", "Where", "Softplus", "Sin", "Cos"];

    public static Model Fuse(Model model, out FusionReport report) => Fuse(model, out report, projections: true);

    /// <summary><see cref="Fuse(Model, out FusionReport)"/>, optionally without <c>projections</c> regions (what a GPU
    /// runs of a projections region it cannot take as one kernel: its norm and epilogue still fused).</summary>
    /// <param name="foldAttention">Run the second pass (<see cref="FoldIntoAttention"/>).</param>
    /// <param name="nbits">Take MatMulNBits products into projections and matmul_add regions (false: they stay nodes of
    /// their own, as before 4-bit fusion; <c>bench llm-q4</c>'s baseline).</param>
    /// <param name="kvInProjections">Run the fourth pass (<see cref="MergeAppendIntoProjections"/>; false: each layer's KV
    /// append joins its attention instead, <see cref="MergeKvIntoAttention"/>).</param>
    public static Model Fuse(Model model, out FusionReport report, bool projections, bool foldAttention = true, bool nbits = true, bool kvInProjections = true)
    {
        var g = model.Graph;
        var ctx = new Matcher(g, model.Opset("")) { NBits = nbits };
        var regions = new List<(string Kind, List<int> Nodes, List<string> Inputs, Dictionary<string, Attr> Attrs, List<string>? Outputs, bool AtLast)>();
        var taken = new bool[g.Nodes.Count];
        // An RMSNorm whose output feeds only matrix products against weights: norm, products and their element-wise
        // epilogue become one region (then the plain RMSNorm pass takes the rest).
        for (int i = 0; i < g.Nodes.Count && projections; i++)
            if (!taken[i] && ctx.RmsNorm(i) is { } n && ctx.Projections(g.Nodes[i].Outputs[0], n.Nodes, taken) is { } p)
                Take(p.Nodes, p.Inputs, "projections", new() { ["norm"] = Attr.Of("rms"), ["epsilon"] = Attr.Of(n.Eps) }, p.Outputs);
        for (int i = 0; i < g.Nodes.Count; i++)
            if (!taken[i] && ctx.RmsNorm(i) is { } r) Take(r.Nodes, r.Inputs, "rms_norm", new() { ["epsilon"] = Attr.Of(r.Eps) });
        for (int i = 0; i < g.Nodes.Count; i++)
            if (!taken[i] && ctx.Rotary(i, taken) is { } r) Take(r.Nodes, r.Inputs, "rotary", new() { ["half"] = Attr.Of(r.Half), ["rank4"] = Attr.Of(r.Rank4 ? 1L : 0L) });
        for (int i = 0; i < g.Nodes.Count; i++)
            if (!taken[i] && ctx.Attention(i, taken) is { } r) Take(r.Nodes, r.Inputs, "attention", r.Attrs);
        // Several products of one (un-normalized) value against weights.
        foreach (var h in projections ? ctx.SharedProductInputs(taken) : [])
            if (ctx.Projections(h, null, taken) is { } p) Take(p.Nodes, p.Inputs, "projections", new() { ["norm"] = Attr.Of("none") }, p.Outputs);
        for (int i = 0; i < g.Nodes.Count; i++)
            if (!taken[i] && ctx.MatMulAdd(i, taken) is { } r) Take(r.Nodes, r.Inputs, "matmul_add", new());
        // Element-wise trees, grown backwards from each sink (last node first, so a sink takes its whole tree). A value
        // that element-wise readers alone share is left to the fan-out pass below, which takes it with its readers.
        for (int i = g.Nodes.Count - 1; i >= 0; i--)
        {
            if (taken[i] || !ctx.IsElementwise(i) || ctx.FanOut(i, taken) is not null) continue;
            var nodes = new List<int>();
            ctx.Grow(i, nodes, taken);
            if (nodes.Count < 2) continue;
            nodes.Sort();
            Take(nodes, ctx.OutsideInputs(nodes), "elementwise", new());
        }
        // Element-wise fan-outs: a value only element-wise nodes read, two to four of them (the rotary tables' Cos and Sin
        // of one angle), with its own element-wise tree: one region with an output a reader, standing where its last
        // node stood (every consumer of an output comes after it).
        for (int i = 0; i < g.Nodes.Count; i++)
        {
            if (taken[i] || !ctx.IsElementwise(i) || ctx.FanOut(i, taken) is not { } readers) continue;
            var nodes = new List<int>();
            ctx.Grow(i, nodes, taken);
            nodes.AddRange(readers);
            nodes.Sort();
            Take(nodes, ctx.OutsideInputs(nodes), "elementwise", new(), readers.Select(r => g.Nodes[r].Outputs[0]).ToList(), atLast: true);
        }

        // A region with several outputs (projections) stands where its first node stood: its inputs come before
        // that (the shared input and constants), and outputs made early inside it may be used before its last node.
        void Take(List<int> nodes, List<string> inputs, string kind, Dictionary<string, Attr> attrs, List<string>? outputs = null, bool atLast = false)
        {
            foreach (var n in nodes) taken[n] = true;
            regions.Add((kind, nodes, inputs, attrs, outputs, atLast));
        }

        var result = new Graph { Name = g.Name };
        result.Inputs.AddRange(g.Inputs);
        result.Outputs.AddRange(g.Outputs);
        result.ValueInfos.AddRange(g.ValueInfos);
        foreach (var (k, t) in g.Initializers) result.Initializers[k] = t;
        var sinkOf = new Dictionary<int, int>();
        for (int r = 0; r < regions.Count; r++) sinkOf[regions[r].Outputs is null || regions[r].AtLast ? regions[r].Nodes[^1] : regions[r].Nodes[0]] = r;
        var counts = new Dictionary<string, int>();
        for (int i = 0; i < g.Nodes.Count; i++)
        {
            if (!taken[i]) { result.Nodes.Add(g.Nodes[i]); continue; }
            if (!sinkOf.TryGetValue(i, out int r)) continue;
            var (kind, nodes, inputs, attrs, outputs, _) = regions[r];
            var sink = g.Nodes[nodes[^1]];
            outputs ??= [sink.Outputs[0]];
            // Constant inputs (initializers) stay inputs of the fused node: the GPU uploads them once like any weight.
            var body = new Graph { Name = $"{kind}_{sink.Name}" };
            foreach (var s in inputs) body.Inputs.Add(new ValueInfo(s, null));
            foreach (var n in nodes) body.Nodes.Add(g.Nodes[n]);
            foreach (var o in outputs) body.Outputs.Add(new ValueInfo(o, null));
            attrs["kind"] = Attr.Of(kind);
            attrs["opset"] = Attr.Of((long)model.Opset(""));
            attrs["body"] = Attr.Of(body);
            result.Nodes.Add(new Node { Name = $"fused_{kind}_{sink.Name}", OpType = OpType, Domain = Domain, Inputs = inputs.ToArray(), Outputs = outputs.ToArray(), Attributes = attrs });
            counts[kind] = counts.GetValueOrDefault(kind) + 1;
        }
        if (foldAttention) FoldIntoAttention(result, new Matcher(result, model.Opset("")), counts, model.Opset(""), kvInProjections);
        var opsets = new Dictionary<string, int>(model.Opsets) { [Domain] = 1 };
        report = new FusionReport(g.Nodes.Count, result.Nodes.Count, counts);
        return new Model { Graph = result, Opsets = opsets, IrVersion = model.IrVersion, ProducerName = model.ProducerName, Path = model.Path };
    }

    static string? Kind(Node n) => n.Domain == Domain && n.OpType == OpType && n.Attributes.TryGetValue("kind", out var k) ? k.Str : null;

    /// <summary>Second pass over the fused graph, around each attention region: the rotary region making its q (used only
    /// there) is folded into it (attribute <c>rotary_q</c>: the kernel rotates q as it loads it; the rotary's x, cos, sin
    /// and constants are appended to its inputs, cos at index <c>rotary_at</c>), and the two Concats along the sequence
    /// axis that append this step's K and V to the cache (with the rotary region making the new K, used only there)
    /// become one <c>kv_append</c> region: inputs past K, new K, past V, new V [, cos, sin, rotary constants], outputs the
    /// two presents, attributes <c>axis</c> and, with a rotary, <c>half</c>. A decode step saves three dispatches a layer.</summary>
    static void FoldIntoAttention(Graph g, Matcher m, Dictionary<string, int> counts, int opset, bool kvInProjections)
    {
        Node? OnlyRotary(string value) => m.Producer(value) is { } p && Kind(p) == "rotary" && m.Uses(value) == 1 ? p : null;
        long? SeqConcat(Node n) => n.OpType == "Concat" && n.Domain is "" or "ai.onnx" && n.Inputs.Length == 2 && n.Outputs.Length == 1
            && n.Attributes.GetValueOrDefault("axis")?.I is long a && a is 2 or -2 ? a : null;
        var remove = new HashSet<Node>();
        var replace = new Dictionary<Node, Node>();
        IEnumerable<Node> Between(Node a, Node b)
        {
            int i = g.Nodes.IndexOf(a), j = g.Nodes.IndexOf(b);
            return g.Nodes.Skip(Math.Min(i, j) + 1).Take(Math.Abs(i - j) - 1);
        }
        foreach (var att in g.Nodes.Where(n => Kind(n) == "attention").ToList())
        {
            if (att.Inputs.Length < 3) continue;
            var attrs = new Dictionary<string, Attr>(att.Attributes);
            var inputs = att.Inputs.ToList();
            var bodyNodes = new List<Node>();
            // NOTE: a fused node's inputs are its body's inputs, position for position: a fold that would repeat a value is skipped.
            if (!attrs.ContainsKey("q_layout") && OnlyRotary(inputs[0]) is { } rq && !inputs.Skip(1).Concat(rq.Inputs).GroupBy(v => v).Any(v => v.Count() > 1))
            {
                var rb = rq.Attributes["body"].G!;
                inputs[0] = rq.Inputs[0];
                attrs["rotary_q"] = Attr.Of(rq.Attributes["half"].I);
                attrs["rotary_at"] = Attr.Of((long)inputs.Count);
                inputs.AddRange(rq.Inputs.Skip(1));
                bodyNodes.AddRange(rb.Nodes);
                remove.Add(rq);
                counts["rotary"]--;
            }
            // The K and V inputs: each a Concat(past, new) along the sequence axis made for this attention only (and the
            // graph's present outputs), the pair next to each other in the graph.
            if (m.Producer(att.Inputs[1]) is { } ck && m.Producer(att.Inputs[2]) is { } cv && ck != cv
                && SeqConcat(ck) is long axis && SeqConcat(cv) == axis && !remove.Contains(ck) && !remove.Contains(cv) && !replace.ContainsKey(ck) && !replace.ContainsKey(cv)
                && new[] { ck.Inputs[0], ck.Inputs[1], cv.Inputs[0], cv.Inputs[1] }.Distinct().Count() == 4
                && !Between(ck, cv).Any(n => n.Inputs.Contains(ck.Outputs[0]) || n.Inputs.Contains(cv.Outputs[0])))
            {
                var ka = new Dictionary<string, Attr> { ["axis"] = Attr.Of(axis), ["kind"] = Attr.Of("kv_append"), ["opset"] = Attr.Of((long)opset) };
                var kIns = new List<string> { ck.Inputs[0], ck.Inputs[1], cv.Inputs[0], cv.Inputs[1] };
                var kBody = new Graph { Name = $"kv_append_{ck.Name}" };
                var rk = OnlyRotary(ck.Inputs[1]);
                if (rk is not null && !kIns.Where((_, i) => i != 1).Concat(rk.Inputs).GroupBy(v => v).Any(v => v.Count() > 1))
                {
                    kIns[1] = rk.Inputs[0];
                    ka["half"] = Attr.Of(rk.Attributes["half"].I);
                    kIns.AddRange(rk.Inputs.Skip(1));
                    kBody.Nodes.AddRange(rk.Attributes["body"].G!.Nodes);
                    remove.Add(rk);
                    counts["rotary"]--;
                }
                kBody.Nodes.Add(ck);
                kBody.Nodes.Add(cv);
                foreach (var i in kIns) kBody.Inputs.Add(new ValueInfo(i, null));
                kBody.Outputs.Add(new ValueInfo(ck.Outputs[0], null));
                kBody.Outputs.Add(new ValueInfo(cv.Outputs[0], null));
                ka["body"] = Attr.Of(kBody);
                // The new node stands where the later Concat stood: everything it reads is made before that.
                var later = g.Nodes.IndexOf(ck) > g.Nodes.IndexOf(cv) ? ck : cv;
                replace[later] = new Node { Name = $"fused_kv_append_{ck.Name}", OpType = OpType, Domain = Domain, Inputs = kIns.ToArray(), Outputs = [ck.Outputs[0], cv.Outputs[0]], Attributes = ka };
                remove.Add(later == ck ? cv : ck);
                counts["kv_append"] = counts.GetValueOrDefault("kv_append") + 1;
            }
            if (bodyNodes.Count == 0) continue;
            var ab = att.Attributes["body"].G!;
            var body = new Graph { Name = ab.Name };
            foreach (var i in inputs) body.Inputs.Add(new ValueInfo(i, null));
            body.Nodes.AddRange(bodyNodes);
            body.Nodes.AddRange(ab.Nodes);
            body.Outputs.AddRange(ab.Outputs);
            attrs["body"] = Attr.Of(body);
            replace[att] = new Node { Name = att.Name, OpType = OpType, Domain = Domain, Inputs = inputs.ToArray(), Outputs = att.Outputs, Attributes = attrs };
        }
        for (int i = g.Nodes.Count - 1; i >= 0; i--)
        {
            if (remove.Contains(g.Nodes[i])) g.Nodes.RemoveAt(i);
            else if (replace.TryGetValue(g.Nodes[i], out var r)) g.Nodes[i] = r;
        }
        if (counts.GetValueOrDefault("rotary") == 0) counts.Remove("rotary");
        if (kvInProjections) MergeAppendIntoProjections(g, counts, opset);
        MergeKvIntoAttention(g, counts, opset);
    }

    /// <summary>Fourth pass: a <c>kv_append</c> region whose new K and new V are each Transpose([0, 2, 1, 3]) of a rank-4
    /// Reshape of an output of one <c>projections</c> region (those values used there only) becomes one
    /// <c>projections_kv</c> region with that projections region, standing where the projections stood (every other input
    /// of the append is made before it). Its body holds the projections region, the two Reshape–Transpose pairs and the
    /// append as they were (a platform without the joint kernel runs them one after the other); its inputs are theirs,
    /// each once; its outputs the projections' other outputs (q), then present K and present V. A GPU writes a decode
    /// step's new key (rotated) and value rows into the caches from the projection kernel's epilogue: one dispatch a
    /// layer fewer, and the attention kernel reads the caches read-only.</summary>
    static void MergeAppendIntoProjections(Graph g, Dictionary<string, int> counts, int opset)
    {
        var producer = new Dictionary<string, int>();
        var uses = new Dictionary<string, int>();
        for (int i = 0; i < g.Nodes.Count; i++)
        {
            foreach (var o in g.Nodes[i].Outputs) if (o.Length > 0) producer[o] = i;
            foreach (var s in g.Nodes[i].Inputs) if (s.Length > 0) uses[s] = uses.GetValueOrDefault(s) + 1;
            foreach (var sub in g.Nodes[i].Subgraphs)
                foreach (var s in sub.OuterReferences()) uses[s] = uses.GetValueOrDefault(s) + 1;
        }
        foreach (var o in g.Outputs) uses[o.Name] = uses.GetValueOrDefault(o.Name) + 1000;
        Node? Only(string value, string op) => producer.TryGetValue(value, out int i) && g.Nodes[i].OpType == op && g.Nodes[i].Domain is "" or "ai.onnx"
            && uses.GetValueOrDefault(value) == 1 ? g.Nodes[i] : null;
        // new K (or V) ← Transpose [0, 2, 1, 3] ← Reshape to a constant rank-4 shape ← a projections output used there only.
        (Node Transpose, Node Reshape, string Output)? HeadsOf(string value)
        {
            if (Only(value, "Transpose") is not { } t || t.Attributes.GetValueOrDefault("perm")?.Ints is not [0, 2, 1, 3]) return null;
            if (Only(t.Inputs[0], "Reshape") is not { Inputs.Length: 2 } r || !g.Initializers.TryGetValue(r.Inputs[1], out var shape) || shape.Length != 4) return null;
            return uses.GetValueOrDefault(r.Inputs[0]) == 1 ? (t, r, r.Inputs[0]) : null;
        }
        var remove = new HashSet<Node>();
        var replace = new Dictionary<Node, Node>();
        foreach (var kv in g.Nodes.Where(n => Kind(n) == "kv_append" && n.Inputs.Length >= 4 && n.Outputs.Length == 2).ToList())
        {
            if (HeadsOf(kv.Inputs[1]) is not var (tk, rk, ko) || HeadsOf(kv.Inputs[3]) is not var (tv, rv, vo) || ko == vo) continue;
            if (!producer.TryGetValue(ko, out int pi) || !producer.TryGetValue(vo, out int pv) || pi != pv) continue;
            var proj = g.Nodes[pi];
            if (Kind(proj) != "projections" || remove.Contains(proj) || replace.ContainsKey(proj)) continue;
            var inputs = proj.Inputs.Concat([rk.Inputs[1], rv.Inputs[1]]).Concat(kv.Inputs.Where((_, i) => i is not (1 or 3))).Distinct().ToList();
            if (inputs.Any(v => v.Length == 0 || producer.TryGetValue(v, out int at) && at >= pi)) continue;
            var body = new Graph { Name = $"projections_kv_{proj.Name}" };
            foreach (var i in inputs) body.Inputs.Add(new ValueInfo(i, null));
            body.Nodes.AddRange([proj, rk, tk, rv, tv, kv]);
            string[] outputs = [.. proj.Outputs.Where(o => o != ko && o != vo), kv.Outputs[0], kv.Outputs[1]];
            foreach (var o in outputs) body.Outputs.Add(new ValueInfo(o, null));
            var attrs = new Dictionary<string, Attr> { ["kind"] = Attr.Of("projections_kv"), ["opset"] = Attr.Of((long)opset), ["body"] = Attr.Of(body) };
            replace[proj] = new Node { Name = $"fused_projections_kv_{proj.Name}", OpType = OpType, Domain = Domain, Inputs = inputs.ToArray(), Outputs = outputs, Attributes = attrs };
            remove.UnionWith([rk, tk, rv, tv, kv]);
            counts["projections_kv"] = counts.GetValueOrDefault("projections_kv") + 1;
        }
        for (int i = g.Nodes.Count - 1; i >= 0; i--)
        {
            if (remove.Contains(g.Nodes[i])) g.Nodes.RemoveAt(i);
            else if (replace.TryGetValue(g.Nodes[i], out var r)) g.Nodes[i] = r;
        }
    }

    /// <summary>Third pass: a <c>kv_append</c> region whose two presents only its attention region reads (and the graph
    /// returns) becomes one <c>kv_attention</c> region with that attention, standing where the attention stood. Its
    /// body holds the two regions as they were (a platform without the joint kernel runs them one after the other);
    /// its inputs are theirs, each once, less the presents; its outputs the attention's output, present K, present V.
    /// A GPU runs a decode step's append inside the attention kernel: one dispatch a layer fewer.</summary>
    static void MergeKvIntoAttention(Graph g, Dictionary<string, int> counts, int opset)
    {
        var producer = new Dictionary<string, Node>();
        var uses = new Dictionary<string, int>();
        foreach (var n in g.Nodes)
        {
            foreach (var o in n.Outputs) if (o.Length > 0) producer[o] = n;
            foreach (var i in n.Inputs) if (i.Length > 0) uses[i] = uses.GetValueOrDefault(i) + 1;
        }
        var remove = new HashSet<Node>();
        for (int ai = 0; ai < g.Nodes.Count; ai++)
        {
            var att = g.Nodes[ai];
            if (Kind(att) != "attention" || att.Inputs.Length < 3 || att.Outputs.Length != 1 || att.Inputs.Any(i => i.Length == 0)) continue;
            if (!producer.TryGetValue(att.Inputs[1], out var kv) || Kind(kv) != "kv_append" || kv.Outputs.Length != 2 || remove.Contains(kv)) continue;
            if (kv.Outputs[0] != att.Inputs[1] || kv.Outputs[1] != att.Inputs[2] || kv.Inputs.Any(i => i.Length == 0)) continue;
            if (uses.GetValueOrDefault(kv.Outputs[0]) != 1 || uses.GetValueOrDefault(kv.Outputs[1]) != 1) continue;
            var inputs = kv.Inputs.Concat(att.Inputs.Where(i => i != kv.Outputs[0] && i != kv.Outputs[1])).Distinct().ToList();
            var body = new Graph { Name = $"kv_attention_{att.Name}" };
            foreach (var i in inputs) body.Inputs.Add(new ValueInfo(i, null));
            body.Nodes.Add(kv);
            body.Nodes.Add(att);
            string[] outputs = [att.Outputs[0], kv.Outputs[0], kv.Outputs[1]];
            foreach (var o in outputs) body.Outputs.Add(new ValueInfo(o, null));
            var attrs = new Dictionary<string, Attr> { ["kind"] = Attr.Of("kv_attention"), ["opset"] = Attr.Of((long)opset), ["body"] = Attr.Of(body) };
            g.Nodes[ai] = new Node { Name = $"fused_kv_attention_{att.Name}", OpType = OpType, Domain = Domain, Inputs = inputs.ToArray(), Outputs = outputs, Attributes = attrs };
            remove.Add(kv);
            counts["kv_attention"] = counts.GetValueOrDefault("kv_attention") + 1;
        }
        g.Nodes.RemoveAll(remove.Contains);
    }

    /// <summary>Pattern queries over one graph: producers, consumer counts, constant values.</summary>
    sealed class Matcher
    {
        readonly Graph _g;
        readonly int _opset;
        readonly Dictionary<string, int> _producer = new();
        readonly Dictionary<string, int> _uses = new();
        readonly Dictionary<string, List<int>> _consumers = new();

        public Matcher(Graph g, int opset)
        {
            _g = g;
            _opset = opset;
            for (int i = 0; i < g.Nodes.Count; i++)
            {
                foreach (var o in g.Nodes[i].Outputs) if (o.Length > 0) _producer[o] = i;
                foreach (var s in g.Nodes[i].Inputs)
                {
                    if (s.Length == 0) continue;
                    _uses[s] = _uses.GetValueOrDefault(s) + 1;
                    if (!_consumers.TryGetValue(s, out var list)) _consumers[s] = list = new();
                    list.Add(i);
                }
                foreach (var sub in g.Nodes[i].Subgraphs)
                    foreach (var s in sub.OuterReferences()) _uses[s] = _uses.GetValueOrDefault(s) + 1;
            }
            foreach (var o in g.Outputs) _uses[o.Name] = _uses.GetValueOrDefault(o.Name) + 1000;
        }

        Node N(int i) => _g.Nodes[i];

        /// <summary>Whether MatMulNBits products may join regions.</summary>
        public bool NBits { get; init; } = true;

        /// <summary>The node making <paramref name="value"/>, or null for a graph input, an initializer or a missing name.</summary>
        public Node? Producer(string value) => _producer.TryGetValue(value, out int p) ? N(p) : null;

        /// <summary>How many node inputs (and subgraph references) read <paramref name="value"/>; 1000 more for a graph output.</summary>
        public int Uses(string value) => _uses.GetValueOrDefault(value);

        /// <summary>The node producing <paramref name="value"/> if it is <paramref name="op"/> (default domain) and
        /// its output has exactly one consumer.</summary>
        int? Only(string value, string op)
        {
            if (!_producer.TryGetValue(value, out int p)) return null;
            var n = N(p);
            if (n.OpType != op || n.Domain is not ("" or "ai.onnx") || n.Outputs.Length != 1 || _uses.GetValueOrDefault(value) != 1) return null;
            return p;
        }

        /// <summary>The weight a product's B reads: a 2-D initializer, or a half one widened by a Cast(to = float) that only
        /// this product reads (<c>--weights f16</c>; the Cast joins the region and the half initializer is its input).
        /// Null for anything else.</summary>
        (string Name, Tensor Tensor, int? Cast)? Weight(string b)
        {
            if (_g.Initializers.TryGetValue(b, out var w)) return w.Rank == 2 ? (b, w, null) : null;
            if (Only(b, "Cast") is not int c || N(c).Inputs.Length != 1 || N(c).Attributes.GetValueOrDefault("to")?.I != (long)DType.Float32) return null;
            string h = N(c).Inputs[0];
            return _g.Initializers.TryGetValue(h, out var hw) && hw.Rank == 2 && hw.DType is DType.Float16 or DType.BFloat16 ? (h, hw, c) : null;
        }

        /// <summary>A scalar (or one-element) float or int initializer's value.</summary>
        double? Const(string value)
        {
            if (!_g.Initializers.TryGetValue(value, out var t) || t.Length != 1) return null;
            return t.Data.GetValue(0) switch { float f => f, double d => d, long l => l, int i => i, Half h => (double)h, _ => null };
        }

        long[]? Ints(string value) => _g.Initializers.TryGetValue(value, out var t) && t.Data is long[] a ? a : null;

        public (List<int> Nodes, List<string> Inputs, float Eps)? RmsNorm(int mul)
        {
            var m = N(mul);
            if (m.OpType != "Mul" || m.Domain is not ("" or "ai.onnx") || m.Inputs.Length != 2) return null;
            for (int side = 0; side < 2; side++)
            {
                string normed = m.Inputs[side], weight = m.Inputs[1 - side];
                if (!_g.Initializers.ContainsKey(weight)) continue;
                // x / sqrt(...) or x * reciprocal(sqrt(...))
                string? x = null, sqrtOut = null;
                var nodes = new List<int>();
                if (Only(normed, "Div") is int div) { x = N(div).Inputs[0]; sqrtOut = N(div).Inputs[1]; nodes.Add(div); }
                else if (Only(normed, "Mul") is int mr)
                {
                    for (int s = 0; s < 2 && x is null; s++)
                        if (Only(N(mr).Inputs[s], "Reciprocal") is int rc) { x = N(mr).Inputs[1 - s]; sqrtOut = N(rc).Inputs[0]; nodes.Add(rc); nodes.Add(mr); }
                }
                if (x is null || sqrtOut is null || Only(sqrtOut, "Sqrt") is not int sq) continue;
                if (Only(N(sq).Inputs[0], "Add") is not int add) continue;
                var a = N(add);
                int meanSide = Const(a.Inputs[1]) is not null ? 0 : Const(a.Inputs[0]) is not null ? 1 : -1;
                if (meanSide < 0 || Only(a.Inputs[meanSide], "ReduceMean") is not int rm) continue;
                double eps = Const(a.Inputs[1 - meanSide])!.Value;
                var r = N(rm);
                long[]? axes = _opset >= 18 ? (r.Inputs.Length > 1 ? Ints(r.Inputs[1]) : null) : r.Attributes.GetValueOrDefault("axes")?.Ints;
                if (axes is not [-1] || (r.Attributes.GetValueOrDefault("keepdims")?.I ?? 1) != 1) continue;
                if (Only(r.Inputs[0], "Pow") is not int pw || N(pw).Inputs[0] != x || Const(N(pw).Inputs[1]) != 2) continue;
                nodes.AddRange([pw, rm, add, sq, mul]);
                nodes.Sort();
                // The kernel takes x and the weight; eps and the exponent are body constants (inputs of the fused node too).
                return (nodes, OutsideInputs(nodes), (float)eps);
            }
            return null;
        }

        public (List<int> Nodes, List<string> Inputs, long Half, bool Rank4)? Rotary(int addIdx, bool[] taken)
        {
            var add = N(addIdx);
            if (add.OpType != "Add" || add.Domain is not ("" or "ai.onnx")) return null;
            for (int side = 0; side < 2; side++)
            {
                if (Only(add.Inputs[side], "Mul") is not int m1 || Only(add.Inputs[1 - side], "Mul") is not int m2) continue;
                // m2 = rotate_half(x) * sin, m1 = x * cos
                for (int s2 = 0; s2 < 2; s2++)
                {
                    if (Only(N(m2).Inputs[s2], "Concat") is not int cat) continue;
                    var c = N(cat);
                    if (c.Inputs.Length != 2 || (c.Attributes.GetValueOrDefault("axis")?.I ?? 0) is not (-1 or 3)) continue;
                    if (Only(c.Inputs[0], "Neg") is not int neg || Only(N(neg).Inputs[0], "Slice") is not int hi || Only(c.Inputs[1], "Slice") is not int lo) continue;
                    var (h, l) = (N(hi), N(lo));
                    if (h.Inputs[0] != l.Inputs[0] || h.Inputs.Length < 4 || l.Inputs.Length < 4 || _opset < 10) continue;
                    string x = h.Inputs[0];
                    long[]? hs = Ints(h.Inputs[1]), he = Ints(h.Inputs[2]), ha = Ints(h.Inputs[3]), ls = Ints(l.Inputs[1]), le = Ints(l.Inputs[2]), la = Ints(l.Inputs[3]);
                    if (hs is not [var half] || ls is not [0] || le is not [var half2] || half != half2 || half <= 0 || he is not [var end] || end < 2 * half) continue;
                    // An end past 2·half (PyTorch writes INT64_MAX) clamps to it: the kernel checks the last dim is 2·half.
                    // Every axis names the last one: -1, or 3 (then the kernel checks that x has rank 4).
                    if (ha is not ([-1] or [3]) || la is not ([-1] or [3])) continue;
                    bool rank4 = ha[0] == 3 || la[0] == 3 || c.Attributes.GetValueOrDefault("axis")?.I == 3;
                    if (h.Inputs.Length > 4 && Ints(h.Inputs[4]) is not [1] || l.Inputs.Length > 4 && Ints(l.Inputs[4]) is not [1]) continue;
                    string sin = N(m2).Inputs[1 - s2];
                    int xSide = N(m1).Inputs[0] == x ? 0 : N(m1).Inputs[1] == x ? 1 : -1;
                    if (xSide < 0) continue;
                    string cos = N(m1).Inputs[1 - xSide];
                    var nodes = new List<int> { hi, lo, neg, cat, m1, m2, addIdx };
                    if (nodes.Any(n => taken[n])) continue;
                    nodes.Sort();
                    // Inputs in kernel order: x, cos, sin, then the slice constants (for the body).
                    var inputs = new List<string> { x, cos, sin };
                    foreach (var n in new[] { h, l }) foreach (var s in n.Inputs.Skip(1)) if (!inputs.Contains(s)) inputs.Add(s);
                    return (nodes, inputs, half, rank4);
                }
            }
            return null;
        }

        public (List<int> Nodes, List<string> Inputs)? MatMulAdd(int addIdx, bool[] taken)
        {
            var add = N(addIdx);
            if (add.OpType != "Add" || add.Domain is not ("" or "ai.onnx") || add.Inputs.Length != 2) return null;
            for (int side = 0; side < 2; side++)
            {
                string r = add.Inputs[1 - side];
                // A 4-bit product (MatMulNBits of initializers): inputs x, B, scales [, zero_points], r.
                if (_producer.TryGetValue(add.Inputs[side], out int nb) && !taken[nb] && _uses.GetValueOrDefault(add.Inputs[side]) == 1
                    && IsNBitsProduct(N(nb)) && !N(nb).Inputs.Contains(r))
                    return ([.. new[] { nb, addIdx }.Order()], [.. N(nb).Inputs, r]);
                if (Only(add.Inputs[side], "MatMul") is not int mm || taken[mm]) continue;
                var m = N(mm);
                if (m.Inputs.Length != 2 || Weight(m.Inputs[1]) is not { } w || w.Cast is int c0 && taken[c0]) continue;
                return ([.. (w.Cast is int c ? new[] { c, mm, addIdx } : [mm, addIdx]).Order()], [m.Inputs[0], w.Name, r]);
            }
            return null;
        }

        static bool Default(Node n) => n.Domain is "" or "ai.onnx";

        /// <summary>A com.microsoft MatMulNBits (4 bits, as <c>--quantize q4</c> writes) whose B, scales and zero points are
        /// initializers, without bias or g_idx: a product against a constant weight like MatMul's.</summary>
        bool IsNBitsProduct(Node m) =>
            NBits && m is { OpType: "MatMulNBits", Domain: "com.microsoft" } && m.Inputs.Length is 3 or 4 && m.Outputs.Length == 1
            && (m.Attributes.GetValueOrDefault("bits")?.I ?? 4) == 4 && m.Attributes.GetValueOrDefault("K")?.I is > 0
            && m.Inputs.Skip(1).All(s => _g.Initializers.ContainsKey(s));

        /// <summary>A MatMul of <paramref name="h"/> by a 2-D weight initializer, or a MatMulNBits of it
        /// (<see cref="IsNBitsProduct"/>), not yet in a region.</summary>
        bool IsProduct(int i, string h, bool[] taken) =>
            !taken[i] && N(i) is var m && m.Inputs.Length > 0 && m.Inputs[0] == h && m.Outputs.Length == 1
            && (m.OpType == "MatMul" && Default(m) && m.Inputs.Length == 2 && Weight(m.Inputs[1]) is { } w && (w.Cast is not int c || !taken[c])
                || IsNBitsProduct(m));

        /// <summary>K of a product (<see cref="IsProduct"/>): the weight's rows, or MatMulNBits' K.</summary>
        long ProductK(int i) => N(i).OpType == "MatMulNBits" ? N(i).Attributes["K"].I : Weight(N(i).Inputs[1])!.Value.Tensor.Shape[0];

        /// <summary>Values (not initializers) that at least two <see cref="IsProduct"/> MatMuls read.</summary>
        public List<string> SharedProductInputs(bool[] taken) =>
            [.. _consumers.Where(c => !_g.Initializers.ContainsKey(c.Key) && c.Value.Count(i => IsProduct(i, c.Key, taken)) >= 2).Select(c => c.Key)];

        /// <summary>Products of <paramref name="h"/> by weights (with the RMSNorm <paramref name="norm"/> that makes
        /// h, whose output then feeds nothing else) and their element-wise epilogue: later float element-wise nodes
        /// whose inputs are products, epilogue values or constants (scalars or one value per column). Outputs: every
        /// value of the region read outside it. Inputs in kernel order: the norm's x and weight (with a norm), the
        /// product weights, then the other constants.</summary>
        public (List<int> Nodes, List<string> Inputs, List<string> Outputs)? Projections(string h, List<int>? norm, bool[] taken)
        {
            if (!_consumers.TryGetValue(h, out var cons)) return null;
            var products = cons.Where(i => IsProduct(i, h, taken)).Distinct().Order().ToList();
            if (norm is null ? products.Count < 2 : products.Count != cons.Count || products.Count == 0 || _uses.GetValueOrDefault(h) != cons.Count) return null;
            if (norm is not null && norm.Any(n => taken[n])) return null;
            if (products.Select(ProductK).Distinct().Count() != 1 || products.Select(i => N(i).OpType).Distinct().Count() != 1) return null;
            var inside = new HashSet<string>(products.Select(i => N(i).Outputs[0]));
            var nodes = new List<int>(products);
            bool Small(string s) => _g.Initializers.TryGetValue(s, out var t) && t.Rank <= 4 && t.Shape.SkipLast(1).All(d => d == 1);
            for (int j = products[0] + 1; j < _g.Nodes.Count; j++)
            {
                var n = N(j);
                if (taken[j] || nodes.Contains(j) || !Default(n) || n.OpType == "Where" || !ElementwiseOps.Contains(n.OpType)) continue;
                if (n.Outputs.Length != 1 || n.Outputs[0].Length == 0 || n.Inputs.Length is 0 or > 2) continue;
                if (!n.Inputs.Any(inside.Contains) || !n.Inputs.All(s => inside.Contains(s) || Small(s))) continue;
                nodes.Add(j);
                inside.Add(n.Outputs[0]);
            }
            // Outputs: values of the region read by a node outside it (or a subgraph, or the graph's outputs).
            var set = new HashSet<int>(nodes);
            var outputs = nodes.Select(i => N(i).Outputs[0]).Where(v =>
                _uses.GetValueOrDefault(v) > _consumers.GetValueOrDefault(v, []).Count(c => set.Contains(c))).ToList();
            // Epilogue nodes nothing outside needs are dropped again (a trailing node's value only the region reads).
            if (outputs.Count == 0) return null;
            string? x = null, gamma = null;
            if (norm is not null)
            {
                x = norm.Select(N).First(n => n.OpType == "Pow").Inputs[0];
                var normInside = new HashSet<string>(norm.Select(i => N(i).Outputs[0]));
                gamma = N(norm.Max()).Inputs.First(s => !normInside.Contains(s));
                nodes.AddRange(norm);
            }
            foreach (var i in products) if (N(i).OpType == "MatMul" && Weight(N(i).Inputs[1]) is { Cast: int c }) nodes.Add(c);
            nodes.Sort();
            var inputs = new List<string>();
            if (norm is not null) { inputs.Add(x!); inputs.Add(gamma!); } else inputs.Add(h);
            foreach (var i in products)
                if ((N(i).OpType == "MatMul" ? Weight(N(i).Inputs[1])!.Value.Name : N(i).Inputs[1]) is var wn && !inputs.Contains(wn)) inputs.Add(wn);
            var made = new HashSet<string>(nodes.Select(i => N(i).Outputs[0]));
            foreach (var s in nodes.SelectMany(i => N(i).Inputs))
                if (s.Length > 0 && !made.Contains(s) && !inputs.Contains(s)) inputs.Add(s);
            return (nodes, inputs, outputs);
        }

        /// <summary>Scaled-dot-product attention ending in <paramref name="smIdx"/>'s Softmax (see the class summary).</summary>
        public (List<int> Nodes, List<string> Inputs, Dictionary<string, Attr> Attrs)? Attention(int smIdx, bool[] taken)
        {
            var sm = N(smIdx);
            if (sm.OpType != "Softmax" || !Default(sm) || sm.Inputs.Length != 1) return null;
            long axis = sm.Attributes.GetValueOrDefault("axis")?.I ?? (_opset >= 13 ? -1 : 1);
            if (axis is not (-1 or 3)) return null;
            if (_uses.GetValueOrDefault(sm.Outputs[0]) != 1 || _consumers[sm.Outputs[0]] is not [int pvIdx]) return null;
            var pv = N(pvIdx);
            if (pv.OpType != "MatMul" || !Default(pv) || pv.Inputs[0] != sm.Outputs[0]) return null;
            var nodes = new List<int> { smIdx, pvIdx };
            var attrs = new Dictionary<string, Attr>();
            string cur = sm.Inputs[0];
            string? mask = null;
            string maskKind = "none";
            if (Only(cur, "Where") is int wh && Const(N(wh).Inputs[2]) is double fill)
            {
                mask = N(wh).Inputs[0]; cur = N(wh).Inputs[1]; maskKind = "where";
                attrs["fill"] = Attr.Of((float)fill);
                nodes.Add(wh);
            }
            else if (Only(cur, "Add") is int ad)
            {
                // The side that leads to the q·kᵀ product is the scores; the other is an additive mask.
                var a = N(ad);
                int side = LeadsToScores(a.Inputs[0]) ? 0 : LeadsToScores(a.Inputs[1]) ? 1 : -1;
                if (side < 0) return null;
                cur = a.Inputs[side]; mask = a.Inputs[1 - side]; maskKind = "add";
                nodes.Add(ad);
            }
            double scale = 1;
            if (Only(cur, "Mul") is int mu)
            {
                var m = N(mu);
                int cs = Const(m.Inputs[1]) is not null ? 1 : Const(m.Inputs[0]) is not null ? 0 : -1;
                if (cs < 0) return null;
                scale = Const(m.Inputs[cs])!.Value; cur = m.Inputs[1 - cs];
                nodes.Add(mu);
            }
            else if (Only(cur, "Div") is int dv && Const(N(dv).Inputs[1]) is double div)
            {
                scale = 1 / div; cur = N(dv).Inputs[0];
                nodes.Add(dv);
            }
            if (Only(cur, "MatMul") is not int qk) return null;
            if (Only(N(qk).Inputs[1], "Transpose") is not int tr) return null;
            nodes.Add(qk); nodes.Add(tr);
            string q = HeadsFirst(N(qk).Inputs[0], nodes, attrs, "q");
            string? k, v;
            switch (N(tr).Attributes.GetValueOrDefault("perm")?.Ints)
            {
                case [0, 1, 3, 2]:
                    k = RepeatKv(N(tr).Inputs[0], nodes, attrs, "k");
                    if (k == N(tr).Inputs[0]) k = HeadsFirst(k, nodes, attrs, "k");
                    break;
                case [0, 2, 3, 1]:          // kᵀ straight from [batch, seq, heads, head_dim] (GPT-2's export)
                    k = N(tr).Inputs[0];
                    attrs["k_layout"] = Attr.Of("bthd");
                    break;
                default: return null;
            }
            v = RepeatKv(pv.Inputs[1], nodes, attrs, "v");
            if (v == pv.Inputs[1]) v = HeadsFirst(v, nodes, attrs, "v");
            if (k is null || v is null) return null;
            if (nodes.Any(n => taken[n])) return null;
            nodes.Sort();
            attrs["scale"] = Attr.Of((float)scale);
            attrs["mask"] = Attr.Of(maskKind);
            var inputs = new List<string> { q, k, v };
            if (mask is not null) inputs.Add(mask);
            var inside = new HashSet<string>(nodes.Select(n => N(n).Outputs[0]));
            foreach (var s in nodes.SelectMany(n => N(n).Inputs))
                if (s.Length > 0 && !inside.Contains(s) && !inputs.Contains(s)) inputs.Add(s);
            // Kernel order is q, K, V, mask: a value appearing twice (K = V, mask = q …) cannot keep that order.
            if (inputs.Take(mask is null ? 3 : 4).Distinct().Count() != (mask is null ? 3 : 4)) return null;
            return (nodes, inputs, attrs);
        }

        /// <summary>A [batch, heads, seq, head_dim] operand made by Transpose(x, [0,2,1,3]) of a [batch, seq, heads,
        /// head_dim] x used only here: the kernel reads x with those strides (<c>X_layout</c> = bthd) instead.</summary>
        string HeadsFirst(string value, List<int> nodes, Dictionary<string, Attr> attrs, string which)
        {
            if (Only(value, "Transpose") is not int tr || N(tr).Attributes.GetValueOrDefault("perm")?.Ints is not [0, 2, 1, 3]) return value;
            nodes.Add(tr);
            attrs[which + "_layout"] = Attr.Of("bthd");
            return N(tr).Inputs[0];
        }

        bool LeadsToScores(string value)
        {
            if (Only(value, "Mul") is int mu) value = N(mu).Inputs[Const(N(mu).Inputs[1]) is not null ? 0 : 1];
            else if (Only(value, "Div") is int dv) value = N(dv).Inputs[0];
            return Only(value, "MatMul") is int qk && Only(N(qk).Inputs[1], "Transpose") is not null;
        }

        /// <summary>HF repeat_kv (Unsqueeze axis 2 → Expand to a constant 5-D shape → Reshape to a constant 4-D
        /// shape) of the value it returns, or <paramref name="value"/> itself when it is not one.</summary>
        string? RepeatKv(string value, List<int> nodes, Dictionary<string, Attr> attrs, string which)
        {
            if (Only(value, "Reshape") is not int rs) return value;
            var r = N(rs);
            // allowzero=1 reads a 0 as a zero-sized dim: the same as 0 (copy the input's) only when no entry is 0.
            if (r.Inputs.Length < 2 || Ints(r.Inputs[1]) is not { Length: 4 } shape) return null;
            if ((r.Attributes.GetValueOrDefault("allowzero")?.I ?? 0) != 0 && shape.Contains(0)) return null;
            if (Only(r.Inputs[0], "Expand") is not int ex || Ints(N(ex).Inputs[1]) is not { Length: 5 } expand) return null;
            if (Only(N(ex).Inputs[0], "Unsqueeze") is not int un) return null;
            var u = N(un);
            long[]? axes = _opset >= 13 ? (u.Inputs.Length > 1 ? Ints(u.Inputs[1]) : null) : u.Attributes.GetValueOrDefault("axes")?.Ints;
            if (axes is not [2]) return null;
            nodes.AddRange([rs, ex, un]);
            attrs[which + "_expand"] = Attr.Of(expand);
            attrs[which + "_reshape"] = Attr.Of(shape);
            return u.Inputs[0];
        }

        /// <summary>An element-wise node a region may hold: an op of <see cref="ElementwiseOps"/>, or a Cast to f32 (the
        /// rotary tables' position Cast: its input, of any type, is then a region input the kernel converts as it loads).</summary>
        public bool IsElementwise(int i)
        {
            var n = N(i);
            if (n.Domain is not ("" or "ai.onnx") || n.Outputs.Length != 1 || n.Outputs[0].Length == 0) return false;
            if (n.OpType == "Cast") return n.Inputs.Length == 1 && n.Attributes.GetValueOrDefault("to")?.I == (long)DType.Float32;
            return ElementwiseOps.Contains(n.OpType) && n.Inputs.Length <= 3;
        }

        /// <summary>The values a region of single-output nodes reads from outside it, in first-use order.</summary>
        public List<string> OutsideInputs(List<int> nodes)
        {
            var inside = new HashSet<string>(nodes.Select(n => N(n).Outputs[0]));
            return nodes.SelectMany(n => N(n).Inputs).Where(s => s.Length > 0 && !inside.Contains(s)).Distinct().ToList();
        }

        /// <summary>The readers of element-wise node <paramref name="i"/>'s output where a fan-out region may take them: two
        /// to four, all untaken element-wise nodes, the value read by nothing else (no graph output), each reader's other
        /// inputs made before <paramref name="i"/>, and every consumer of a reader's output after the last reader.</summary>
        public int[]? FanOut(int i, bool[] taken)
        {
            string v = N(i).Outputs[0];
            if (!_consumers.TryGetValue(v, out var readers) || readers.Count is < 2 or > 4 || _uses.GetValueOrDefault(v) != readers.Count) return null;
            var rs = readers.Distinct().ToArray();
            if (rs.Length != readers.Count || rs.Any(r => taken[r] || !IsElementwise(r))) return null;
            foreach (int r in rs)
                foreach (var s in N(r).Inputs)
                    if (s != v && s.Length > 0 && _producer.TryGetValue(s, out int p) && p > i) return null;
            int last = rs.Max();
            foreach (int r in rs)
                if (_consumers.TryGetValue(N(r).Outputs[0], out var cs) && cs.Any(c => c <= last)) return null;
            return rs;
        }

        /// <summary>Adds node <paramref name="i"/> and, recursively, the element-wise producers of its inputs whose
        /// only consumer is the region (at most 8 outside inputs per region: a kernel's binding budget).</summary>
        public void Grow(int i, List<int> nodes, bool[] taken)
        {
            nodes.Add(i);
            taken[i] = true;
            var n = N(i);
            for (int k = 0; k < n.Inputs.Length; k++)
            {
                string s = n.Inputs[k];
                if (n.OpType == "Where" && k == 0) continue;                 // the condition is bool: it stays outside
                if (!_producer.TryGetValue(s, out int p) || taken[p] || !IsElementwise(p) || _uses.GetValueOrDefault(s) != 1) continue;
                if (nodes.Count >= 12) continue;
                Grow(p, nodes, taken);
            }
            if (nodes.Count == 1) taken[i] = false;
        }
    }
}
