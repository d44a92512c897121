using System.Diagnostics;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Execution;

/// <summary>What an observer sees for one node run: the node, where it ran, its host-side inputs and
/// outputs (downloaded only when an observer asks for them), and how long it took.</summary>
public sealed class NodeEvent
{
    public required Node Node { get; init; }
    /// <summary>Position in the top-level graph's topological order (subgraph nodes: their own graph's order).</summary>
    public required int Index { get; init; }
    /// <summary>0 for the main graph, 1+ inside If/Loop/Scan bodies.</summary>
    public required int Depth { get; init; }
    public required IPlatform Platform { get; init; }
    public required NodeContext Context { get; init; }
    public required Value?[] Inputs { get; init; }
    public required Value?[] Outputs { get; init; }
    public TimeSpan Elapsed { get; init; }

    /// <summary>Input i on the host (downloads from the platform when needed).</summary>
    public Value? HostInput(int i) => Inputs[i] is { } v ? Platform.Download(v) : null;
    public Value? HostOutput(int i) => Outputs[i] is { } v ? Platform.Download(v) : null;
}

/// <summary>Hook for carving, migration and progress: called after each node ran.</summary>
public interface IExecutionObserver
{
    void OnNodeRun(NodeEvent e);

    /// <summary>Called before the nodes of a top-level run; <paramref name="run"/> counts this executor's runs
    /// from 0 (generation: run 0 is the prefill, run k the k-th decode step).</summary>
    void OnRunStart(Model model, long run) { }
}

/// <summary>Counters of one or more runs: nodes, transfers between platforms, peak live bytes.</summary>
public sealed class ExecutionStats
{
    /// <summary>Top-level runs started (graph runs handed whole to a platform included).</summary>
    public long Runs;
    public long NodesRun;
    public long Transfers;
    public long BytesMoved;
    public long LiveBytes;
    public long PeakLiveBytes;
}

/// <summary>Runs a graph in topological order, each node on the platform its placement names, moving values
/// across platforms when needed, freeing every intermediate right after its last consumer ran. One executor
/// serves conformance, replay, migration and generation.</summary>
public sealed class Executor
{
    readonly Func<Node, IPlatform> _placement;
    readonly IPlatform? _single;
    readonly Dictionary<(Node, IPlatform, string), IKernel> _kernels = new(); // NOTE: key includes input signature
    readonly Dictionary<Graph, Plan> _plans = new(ReferenceEqualityComparer.Instance);
    readonly Dictionary<Node, LastKernel> _lastKernel = new(ReferenceEqualityComparer.Instance);

    /// <summary>The kernel a node ran with last, and its inputs' element types and shapes then.</summary>
    sealed class LastKernel
    {
        readonly IPlatform _platform;
        readonly DType[] _dtypes;
        readonly long[]?[] _shapes;
        public IKernel Kernel { get; }

        public LastKernel(IPlatform platform, Value?[] inputs, IKernel kernel)
        {
            _platform = platform;
            Kernel = kernel;
            _dtypes = new DType[inputs.Length];
            _shapes = new long[]?[inputs.Length];
            for (int i = 0; i < inputs.Length; i++)
                if (Describe(inputs[i]) is var (d, s)) { _dtypes[i] = d; _shapes[i] = (long[])s.Clone(); }
        }

        static (DType, long[])? Describe(Value? v) => v switch
        {
            Tensor t => (t.DType, t.Shape),
            IDeviceValue d => (d.DType, d.Shape),
            _ => null,
        };

        /// <summary>Same platform and every input a tensor of the same type and shape (other values: no fast path);
        /// of the same type and rank only where the platform's kernels serve any shape.</summary>
        public bool Matches(IPlatform platform, Value?[] inputs)
        {
            if (!ReferenceEquals(platform, _platform) || inputs.Length != _dtypes.Length) return false;
            bool anyShape = platform.KernelsServeAnyShape;
            for (int i = 0; i < inputs.Length; i++)
            {
                var v = inputs[i];
                if (v is null) { if (_shapes[i] is not null || _dtypes[i] != default) return false; continue; }
                if (Describe(v) is not var (d, s) || _shapes[i] is not { } want || d != _dtypes[i]) return false;
                if (anyShape ? s.Length != want.Length : !s.AsSpan().SequenceEqual(want)) return false;
            }
            return true;
        }
    }

    readonly Dictionary<Node, FallbackRecord> _fallbacks = new(ReferenceEqualityComparer.Instance);

    /// <summary>Where a node runs when its placed platform cannot run it (no kernel, dtype, limit): the node is run
    /// there instead, from then on, and listed in <see cref="Fallbacks"/>. Null: unsupported is an error.</summary>
    public IPlatform? Fallback { get; init; }

    /// <summary>Nodes run on <see cref="Fallback"/> so far, in the order they were first moved, and why.</summary>
    public IReadOnlyCollection<FallbackRecord> Fallbacks => _fallbacks.Values;

    public List<IExecutionObserver> Observers { get; } = new();
    public ExecutionStats Stats { get; } = new();
    public Model? Model { get; private set; }

    /// <summary>Every node on <paramref name="platform"/>.</summary>
    public Executor(IPlatform platform) : this(_ => platform) => _single = platform;

    /// <summary>When every node is on one <see cref="IGraphPlatform"/> and no observer watches nodes, hand the
    /// whole graph to it (ONNX Runtime runs its own graph).</summary>
    public bool PreferWholeGraph { get; init; }

    /// <summary>Whether feeds must match the declared input shapes (ranks, fixed and symbolic dims). The ONNX
    /// backend-test runner does not check them, and some of its cases declare shapes their data do not have.</summary>
    public bool CheckInputShapes { get; init; } = true;

    /// <summary>Mixed placement: <paramref name="placement"/> picks each node's platform.</summary>
    public Executor(Func<Node, IPlatform> placement) => _placement = placement;

    /// <summary>Runs the model's main graph with <paramref name="feeds"/> (host values by graph input name, or
    /// device values an earlier run kept); returns the graph outputs on the host, except those
    /// <paramref name="keepOnDevice"/> names: they stay where they were made (generation keeps the KV cache on the
    /// GPU and feeds it back; the caller frees them with their owner's <see cref="IPlatform.Free"/>).</summary>
    public Dictionary<string, Value> Run(Model model, IReadOnlyDictionary<string, Value> feeds, Func<string, bool>? keepOnDevice = null)
    {
        Model = model;
        var g = model.Graph;
        InputCheck.Validate(model, feeds, CheckInputShapes);
        long run = Stats.Runs++;
        if (_single is IModelWarmup warm) warm.Warm(model);
        // NOTE: a segment platform runs the whole graph as one segment anyway, and keeps keepOnDevice values there.
        if (PreferWholeGraph && _single is IGraphPlatform whole and not ISegmentPlatform && Observers.Count == 0)
            return whole.RunGraph(model, feeds);
        foreach (var o in Observers) o.OnRunStart(model, run);
        // NOTE: initializers are looked up in the graph, not copied into the scope each run (a decode step is a run).
        var scope = new Scope(null, g.Initializers);
        foreach (var (k, v) in feeds) scope.Set(k, v);
        var outs = RunGraph(model, g, scope, 0);
        var result = new Dictionary<string, Value>();
        for (int i = 0; i < g.Outputs.Count; i++)
            result[g.Outputs[i].Name] = outs[i] is { } v ? (keepOnDevice?.Invoke(g.Outputs[i].Name) == true ? v : ToHost(v))
                : throw new TapmlException($"graph output '{g.Outputs[i].Name}' was not produced");
        return result;
    }

    static Value ToHost(Value v) => v is IDeviceValue d ? d.Owner.Download(v) : v;

    Value?[] RunGraph(Model model, Graph g, Scope scope, int depth)
    {
        var plan = GetPlan(g);
        var remaining = new Dictionary<string, int>(plan.UseCounts);
        for (int idx = 0; idx < g.Nodes.Count; idx++)
        {
            if (depth == 0 && RunSegment(model, g, scope, plan, remaining, idx) is int next) { idx = next - 1; continue; }
            var node = g.Nodes[idx];
            var platform = Fallback is { } f && _fallbacks.ContainsKey(node) ? f : _placement(node);
            var ctx = Context(model, g, node, scope, depth);
            Value?[] inputs, outputs;
            long t0;
            while (true)
            {
                Value?[]? moved = null;
                try
                {
                    moved = MoveInputs(node, scope, platform);
                    t0 = Stopwatch.GetTimestamp();
                    outputs = Execute(node, ctx, platform, moved);
                    inputs = moved;
                    break;
                }
                catch (UnsupportedException e) when (Fallback is { } fb && !ReferenceEquals(platform, fb))
                {
                    // NOTE: a node its platform cannot run (no kernel, dtype, limit) runs on the fallback, counted and
                    // reported; never silently, and never for an error that is not "unsupported".
                    if (moved is not null) FreeMoved(node, scope, moved);
                    _fallbacks[node] = new FallbackRecord(idx, depth, node.Name, node.OpType, platform.Name, e.Message);
                    platform = fb;
                }
            }
            Finish(g, plan, remaining, scope, idx, depth, platform, ctx, inputs, outputs, Stopwatch.GetElapsedTime(t0));
        }
        return g.Outputs.Select(o => scope.Get(o.Name)).ToArray();
    }

    NodeContext Context(Model model, Graph g, Node node, Scope scope, int depth) => new(node, model.Opset(node.Domain))
    {
        Owner = g,
        RunSubgraph = node.Attributes.Count == 0 ? null : (body, inputs) => RunSubgraph(model, body, inputs, scope, depth + 1),
        RunSubgraphResident = node.Attributes.Count == 0 ? null : (body, inputs) => RunSubgraphResident(model, body, inputs, scope, depth + 1),
    };

    /// <summary>After node <paramref name="idx"/> ran: its outputs into the scope (checked against declared types),
    /// counters, observers, and every value whose last consumer it was freed.</summary>
    void Finish(Graph g, Plan plan, Dictionary<string, int> remaining, Scope scope, int idx, int depth, IPlatform platform, NodeContext ctx,
        Value?[] inputs, Value?[] outputs, TimeSpan elapsed)
    {
        var node = g.Nodes[idx];
        Stats.NodesRun++;
        if (outputs.Length < node.Outputs.Length)
            throw new TapmlException($"node '{node.Name}' ({node.OpType}) on {platform.Name} returned {outputs.Length} outputs, expected {node.Outputs.Length}");
        for (int o = 0; o < node.Outputs.Length; o++)
        {
            if (node.Outputs[o].Length == 0 || outputs[o] is null) continue;
            if (plan.Declared.TryGetValue(node.Outputs[o], out var want) && ElemType(outputs[o]!) is { } got && got != want.ElemType)
                throw new TapmlException($"node '{node.Name}' ({node.OpType}) on {platform.Name} produced {DTypes.Name(got)} for '{node.Outputs[o]}', but the graph declares it {want}");
            scope.Set(node.Outputs[o], outputs[o]!);
            Stats.LiveBytes += Bytes(outputs[o]!);
        }
        Stats.PeakLiveBytes = Math.Max(Stats.PeakLiveBytes, Stats.LiveBytes);
        if (Observers.Count > 0)
        {
            var e = new NodeEvent { Node = node, Index = idx, Depth = depth, Platform = platform, Context = ctx, Inputs = inputs, Outputs = outputs, Elapsed = elapsed };
            foreach (var ob in Observers) ob.OnNodeRun(e);
        }
        // Free every value whose last consumer was this node (graph outputs and outer values are kept).
        foreach (var name in plan.Consumed[idx])
        {
            if (--remaining[name] > 0) continue;
            if (scope.Remove(name) is { } dead)
            {
                Stats.LiveBytes -= Bytes(dead);
                if (dead is IDeviceValue d) d.Owner.Free(dead);
            }
        }
        for (int o = 0; o < node.Outputs.Length; o++)
        {
            string name = node.Outputs[o];
            if (name.Length > 0 && !plan.UseCounts.ContainsKey(name) && scope.Remove(name) is { } unused)
            {
                Stats.LiveBytes -= Bytes(unused);
                if (unused is IDeviceValue d) d.Owner.Free(unused);
            }
        }
    }

    // --- segments -----------------------------------------------------------------------------------------------

    /// <summary>A run of consecutive main-graph nodes as a model of their own: its inputs are the values it reads
    /// from outside (feeds, initializers, earlier nodes' outputs), its outputs those read after it (every node output
    /// when observers watch).</summary>
    sealed record Segment(Model Model, string[] Inputs, int End);

    readonly Dictionary<(Graph, int, int, bool), Segment> _segments = new();
    readonly HashSet<(Graph, int)> _noSegment = new();

    /// <summary>Runs nodes <paramref name="idx"/>… as one segment when they are two or more in a row on an
    /// <see cref="ISegmentPlatform"/>; returns the index after the last node it ran, or null (run node by node).</summary>
    int? RunSegment(Model model, Graph g, Scope scope, Plan plan, Dictionary<string, int> remaining, int idx)
    {
        while (true)
        {
            var first = g.Nodes[idx];
            if (_fallbacks.ContainsKey(first) || _placement(first) is not ISegmentPlatform sp || _noSegment.Contains((g, idx))) return null;
            int end = idx + 1;
            while (end < g.Nodes.Count && !_fallbacks.ContainsKey(g.Nodes[end]) && ReferenceEquals(_placement(g.Nodes[end]), sp)) end++;
            if (end - idx < 2) return null;
            bool watch = Observers.Count > 0;
            if (!_segments.TryGetValue((g, idx, end, watch), out var seg)) _segments[(g, idx, end, watch)] = seg = MakeSegment(model, g, plan, idx, end, watch);
            var feeds = new Dictionary<string, Value>();
            SegmentResult result;
            long t0 = Stopwatch.GetTimestamp();
            try
            {
                foreach (var name in seg.Inputs)
                {
                    var v = scope.Get(name) ?? throw new TapmlException($"segment from node '{first.Name}': input '{name}' has no value");
                    feeds[name] = sp.IsResident(v) ? v : ToHost(v);
                    if (!sp.IsResident(v)) { Stats.Transfers++; Stats.BytesMoved += Bytes(v); }
                }
                result = sp.RunSegment(seg.Model, feeds, hostCopies: watch);
            }
            catch (UnsupportedException)
            {
                // NOTE: a value that cannot travel there as a segment's input or output (a sequence, strings): these
                // nodes run one by one, where each gets its own verdict or fallback.
                _noSegment.Add((g, idx));
                return null;
            }
            var elapsed = Stopwatch.GetElapsedTime(t0) / (end - idx);
            if (result.UnsupportedNode >= 0)
            {
                int k = idx + result.UnsupportedNode;
                var bad = g.Nodes[k];
                string why = $"node '{bad.Name}' ({bad.OpType}) on {sp.Name}: {result.Reason}";
                if (Fallback is not { } fb || ReferenceEquals(fb, sp)) throw new UnsupportedException(why);
                // NOTE: the node goes to the fallback from now on; the nodes before it run again as a shorter segment.
                _fallbacks[bad] = new FallbackRecord(k, 0, bad.Name, bad.OpType, sp.Name, why);
                continue;
            }
            for (int i = idx; i < end; i++)
            {
                var node = g.Nodes[i];
                var inputs = node.Inputs.Select(n => n.Length == 0 ? null : feeds.GetValueOrDefault(n) ?? result.Outputs.GetValueOrDefault(n)).ToArray();
                var outputs = node.Outputs.Select(n => n.Length == 0 ? null : result.Outputs.GetValueOrDefault(n)).ToArray();
                Finish(g, plan, remaining, scope, i, 0, sp, Context(model, g, node, scope, 0), inputs, outputs, elapsed);
            }
            return end;
        }
    }

    static Segment MakeSegment(Model model, Graph g, Plan plan, int from, int end, bool all)
    {
        var sg = new Graph { Name = $"{g.Name}[{from}..{end})" };
        var produced = new HashSet<string>();
        var inputs = new List<string>();
        var usesInside = new Dictionary<string, int>();
        for (int i = from; i < end; i++)
        {
            var n = g.Nodes[i];
            var names = new HashSet<string>(n.Inputs.Where(s => s.Length > 0));
            foreach (var sub in n.Subgraphs) names.UnionWith(sub.OuterReferences());
            foreach (var name in names)
            {
                usesInside[name] = usesInside.GetValueOrDefault(name) + 1;
                if (!produced.Contains(name) && !inputs.Contains(name)) inputs.Add(name);
            }
            produced.UnionWith(n.Outputs.Where(s => s.Length > 0));
            sg.Nodes.Add(n);
        }
        foreach (var name in inputs) sg.Inputs.Add(new ValueInfo(name, null));
        foreach (var name in g.Nodes.Skip(from).Take(end - from).SelectMany(n => n.Outputs).Where(s => s.Length > 0).Distinct())
        {
            // NOTE: UseCounts counts consuming nodes (graph outputs count as many): more than inside means read after.
            bool later = plan.UseCounts.TryGetValue(name, out int uses) && uses > usesInside.GetValueOrDefault(name);
            if (later || all) sg.Outputs.Add(new ValueInfo(name, plan.Declared.GetValueOrDefault(name)));
        }
        foreach (var v in g.ValueInfos) if (produced.Contains(v.Name)) sg.ValueInfos.Add(v);
        var m = new Model { Graph = sg, Opsets = model.Opsets, IrVersion = model.IrVersion, ProducerName = "tapml segment", Path = model.Path };
        return new Segment(m, inputs.ToArray(), end);
    }

    /// <summary>The node's inputs from <paramref name="scope"/>, moved to <paramref name="platform"/>. When one cannot go
    /// there (a limit), those already moved are freed before the error leaves.</summary>
    Value?[] MoveInputs(Node node, Scope scope, IPlatform platform)
    {
        var inputs = new Value?[node.Inputs.Length];
        for (int i = 0; i < inputs.Length; i++)
        {
            string name = node.Inputs[i];
            if (name.Length == 0) continue;
            var v = scope.Get(name) ?? throw new TapmlException($"node '{node.Name}' ({node.OpType}): input '{name}' has no value");
            try { inputs[i] = Move(v, platform); }
            catch (TapmlException e) when (e is not PlatformLostException)
            {
                FreeMoved(node, scope, inputs);
                if (e.Message.Contains($"'{node.Name}'")) throw;
                // NOTE: uploads check the target's limits; say which node and input needed the value.
                throw e is UnsupportedException ? new UnsupportedException($"node '{node.Name}' ({node.OpType}) input '{name}' on {platform.Name}: {e.Message}")
                    : new TapmlException($"node '{node.Name}' ({node.OpType}) input '{name}' on {platform.Name}: {e.Message}", e);
            }
        }
        return inputs;
    }

    /// <summary>Frees the copies <see cref="MoveInputs"/> made (values not in the scope as they are).</summary>
    static void FreeMoved(Node node, Scope scope, Value?[] inputs)
    {
        for (int i = 0; i < inputs.Length; i++)
            if (inputs[i] is IDeviceValue d && !ReferenceEquals(inputs[i], scope.Get(node.Inputs[i]))) d.Owner.Free(inputs[i]!);
    }

    /// <summary>Prepares (cached by input signature) and runs one node on <paramref name="platform"/>; errors name the node.</summary>
    Value?[] Execute(Node node, NodeContext ctx, IPlatform platform, Value?[] inputs)
    {
        try
        {
            // NOTE: a decode step reruns every node with the inputs' types of the last step; compare those first
            // instead of formatting a signature string per node (host time per node is what a GPU decode pays).
            if (!_lastKernel.TryGetValue(node, out var last) || !last.Matches(platform, inputs))
            {
                var types = inputs.Select(v => v is null ? null : TypeOf(v)).ToArray();
                string sig = string.Join(";", types.Select(t => t?.ToString() ?? "-"));
                if (!_kernels.TryGetValue((node, platform, sig), out var prepared))
                    _kernels[(node, platform, sig)] = prepared = platform.Prepare(node, ctx, types);
                _lastKernel[node] = last = new LastKernel(platform, inputs, prepared);
            }
            return platform.Run(last.Kernel, ctx, inputs);
        }
        catch (UnsupportedException e)
        {
            throw new UnsupportedException(e.Message.Contains($"'{node.Name}'") ? e.Message : $"node '{node.Name}' ({node.OpType}) on {platform.Name}: {e.Message}");
        }
        catch (TapmlException e) when (e is not PlatformLostException && !e.Message.Contains($"'{node.Name}'"))
        {
            throw new TapmlException($"node '{node.Name}' ({node.OpType}) on {platform.Name}: {e.Message}", e);
        }
        catch (OverflowException e)
        {
            // NOTE: kernels convert sizes and attribute values with checked casts on purpose: an overflow is a value
            // out of the range they handle (a huge pad, kernel or dimension), i.e. a verdict on the input.
            throw new TapmlException($"node '{node.Name}' ({node.OpType}) on {platform.Name}: a size or attribute value is out of the range this kernel handles (inputs {string.Join(", ", inputs.Select(v => v?.Describe() ?? "-"))})", e);
        }
        catch (OutOfMemoryException e)
        {
            throw new TapmlException($"node '{node.Name}' ({node.OpType}) on {platform.Name} ran out of host memory (inputs {string.Join(", ", inputs.Select(v => v?.Describe() ?? "-"))})", e);
        }
        catch (Exception e) when (e is not TapmlException and not OperationCanceledException)
        {
            throw new InternalErrorException($"node '{node.Name}' ({node.OpType}) on {platform.Name} failed with an internal error: {e.GetType().Name}: {e.Message}", e);
        }
    }

    /// <summary>Runs an If/Loop/Scan body on this executor's placement with names from the enclosing graph resolved by
    /// <paramref name="outer"/> (a shadow run gives its own values: lockstep runs a node with a body on the source
    /// with the source's values, never through the run under test).</summary>
    public Value?[] RunBody(Model model, Graph body, IReadOnlyList<Value?> inputs, Func<string, Value?> outer)
    {
        Model = model;
        return RunSubgraph(model, body, inputs, new Scope(null, EmptyInitializers, outer), 1);
    }

    static readonly IReadOnlyDictionary<string, Tensor> EmptyInitializers = new Dictionary<string, Tensor>();

    Value?[] RunSubgraph(Model model, Graph body, IReadOnlyList<Value?> inputs, Scope outer, int depth)
    {
        var (outs, owned) = RunSubgraphResident(model, body, inputs, outer, depth);
        var host = new Value?[outs.Length];
        for (int i = 0; i < outs.Length; i++)
        {
            if (outs[i] is not { } v) continue;
            host[i] = ToHost(v);
            // NOTE: a device value the body made is downloaded for the caller and given back here (once, however
            // many outputs name it; never one of the body's inputs that a kernel returned as it was).
            if (owned[i] && v is IDeviceValue d && Array.IndexOf(outs, v) == i && !inputs.Any(x => ReferenceEquals(x, v))) d.Owner.Free(v);
        }
        return host;
    }

    SubgraphOutputs RunSubgraphResident(Model model, Graph body, IReadOnlyList<Value?> inputs, Scope outer, int depth)
    {
        var scope = new Scope(outer, body.Initializers);
        for (int i = 0; i < body.Inputs.Count; i++)
            if (i < inputs.Count && inputs[i] is { } v) scope.Set(body.Inputs[i].Name, v);
        var outs = RunGraph(model, body, scope, depth);
        // Body outputs produced by body nodes were counted as live when set; they leave with this scope (the
        // calling node's outputs are counted again by its own graph), so a Loop/Scan does not grow LiveBytes
        // by its body outputs on every iteration.
        var produced = GetPlan(body).Produced;
        var owned = new bool[outs.Length];
        for (int i = 0; i < body.Outputs.Count && i < outs.Length; i++)
        {
            string name = body.Outputs[i].Name;
            if (!produced.Contains(name)) continue;
            owned[i] = true;
            if (scope.Remove(name) is { } v) Stats.LiveBytes -= Bytes(v);
        }
        return new SubgraphOutputs(outs, owned);
    }

    Value Move(Value v, IPlatform to)
    {
        if (to.IsResident(v)) return v;
        var host = v is IDeviceValue d ? d.Owner.Download(v) : v;
        Stats.Transfers++;
        Stats.BytesMoved += Bytes(host);
        return to.IsResident(host) ? host : to.Upload(host);
    }

    static long Bytes(Value v) => v switch
    {
        Tensor t => t.DType == DType.String ? t.Length * 8 : t.Length * DTypes.Size(t.DType),
        SequenceValue s => s.Items.Sum(Bytes),
        OptionalValue o => o.Item is null ? 0 : Bytes(o.Item),
        IDeviceValue d => d.ByteSize,
        _ => 0,
    };

    public static TypeRef TypeOf(Value v) => v switch
    {
        Tensor t => TypeRef.TensorOf(t.DType, t.Shape),
        IDeviceValue d => TypeRef.TensorOf(d.DType, d.Shape),
        _ => Tapml.Ir.Onnx.OnnxExporter.TypeOf(v),
    };

    Plan GetPlan(Graph g)
    {
        if (_plans.TryGetValue(g, out var p)) return p;
        var uses = new Dictionary<string, int>();
        var consumed = new List<string>[g.Nodes.Count];
        var keep = new HashSet<string>(g.Outputs.Select(o => o.Name));
        keep.UnionWith(g.Initializers.Keys);
        for (int i = 0; i < g.Nodes.Count; i++)
        {
            var n = g.Nodes[i];
            var names = new HashSet<string>(n.Inputs.Where(s => s.Length > 0));
            foreach (var sub in n.Subgraphs) names.UnionWith(sub.OuterReferences());
            names.ExceptWith(keep);
            consumed[i] = names.ToList();
            foreach (var s in names) uses[s] = uses.GetValueOrDefault(s) + 1;
        }
        // Graph inputs and outer-scope names are never freed here: only values produced in this graph are.
        var produced = new HashSet<string>(g.Nodes.SelectMany(n => n.Outputs));
        for (int i = 0; i < consumed.Length; i++) consumed[i].RemoveAll(s => !produced.Contains(s));
        foreach (var k in uses.Keys.Where(k => !produced.Contains(k)).ToList()) uses.Remove(k);
        foreach (var o in keep) uses[o] = int.MaxValue / 2;
        // Declared element types of values (graph outputs, value_info): a kernel producing another type is a bug
        // or a malformed model, reported where it happens.
        var declared = new Dictionary<string, TypeRef>();
        foreach (var v in g.ValueInfos.Concat(g.Outputs))
            if (v.Type is { Kind: TypeKind.Tensor } t && t.ElemType != DType.Undefined) declared[v.Name] = t;
        p = new Plan(uses, consumed, produced, declared);
        _plans[g] = p;
        return p;
    }

    static DType? ElemType(Value v) => v switch { Tensor t => t.DType, IDeviceValue d => d.DType, _ => null };

    sealed record Plan(Dictionary<string, int> UseCounts, List<string>[] Consumed, HashSet<string> Produced, Dictionary<string, TypeRef> Declared);

    /// <summary>Names to values: those set in this graph's run (feeds and node outputs, which shadow initializers of the
    /// same name), then the graph's initializers, then the enclosing graph's scope (ONNX lexical scoping).</summary>
    sealed class Scope(Scope? parent, IReadOnlyDictionary<string, Tensor> initializers, Func<string, Value?>? outer = null)
    {
        readonly Dictionary<string, Value> _values = new();
        public void Set(string name, Value v) => _values[name] = v;
        public Value? Get(string name) => _values.TryGetValue(name, out var v) ? v : initializers.TryGetValue(name, out var t) ? t : parent is not null ? parent.Get(name) : outer?.Invoke(name);
        public Value? Remove(string name) => _values.Remove(name, out var v) ? v : null;
    }
}

/// <summary>A node that ran on the executor's fallback platform: where it is (index in its graph, depth 0 for the main
/// graph), the platform that could not run it, and that platform's reason.</summary>
public sealed record FallbackRecord(int Index, int Depth, string Node, string OpType, string Platform, string Reason)
{
    /// <summary>The reason without the "node 'N' (Op) on P: " prefix the executor puts on it (to group over nodes).</summary>
    public string ReasonWithoutNode
    {
        get
        {
            string prefix = $"node '{Node}' ({OpType}) on {Platform}: ";
            return Reason.StartsWith(prefix, StringComparison.Ordinal) ? Reason[prefix.Length..] : Reason;
        }
    }
}

/// <summary>A value held by a device platform (GPU buffer, remote handle).</summary>
public interface IDeviceValue
{
    IPlatform Owner { get; }
    DType DType { get; }
    long[] Shape { get; }
    long ByteSize { get; }
}
