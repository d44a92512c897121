using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Testing.Migration;

/// <summary>The source side of a lockstep run: an observer on the run under test that, node by node in the same
/// topological order, runs the node on the source platform with the source's own values, compares the outputs as
/// soon as both exist, and frees each source value after its last consumer. Where the target's inputs differ from
/// the source's, the node's own platform is also fed the source's inputs (isolated error); otherwise isolated and
/// accumulated error are the same call. On a target that takes segments (<see cref="ISegmentPlatform"/>: a remote one)
/// those isolated re-runs are queued and sent as one graph of unconnected nodes per batch, then judged and recorded in
/// node order (<see cref="Flush"/>). A source output equal to the target's bit for bit is not kept twice: the target's
/// host value stands for both.</summary>
/// <param name="isolatedTarget">Makes the target instance isolated re-runs use: a second one, so that state the run
/// under test left in the first (a stale buffer, the previous call's output) cannot make a wrong kernel look right.</param>
sealed class Lockstep(IPlatform source, Tolerances tolerances, MigrationResult result, Executor runUnderTest, Func<IPlatform> isolatedTarget) : IExecutionObserver, IDisposable
{
    IPlatform? _isolated;
    public void Dispose() => _isolated?.Dispose();

    readonly Dictionary<(Node, IPlatform, string), IKernel> _kernels = new();
    Dictionary<string, Value> _values = new();
    Dictionary<string, int> _remaining = new();
    HashSet<string> _graphOutputs = new();
    readonly HashSet<string> _counted = new(); // source values whose bytes are the source's own (not shared, not weights/feeds)
    Model? _model;
    long _ownBytes, _runProduced;

    public string Phase { get; set; } = "run";
    /// <summary>Source inputs and outputs of the culprit, for its reproducer.</summary>
    public (Node Node, int Opset, Tensor?[] Inputs, Tensor?[] Outputs)? CulpritCase { get; private set; }
    /// <summary>Bytes of all node outputs of the largest run so far (what keeping every intermediate costs).</summary>
    public long AllIntermediates { get; private set; }

    public void OnRunStart(Model model, long run)
    {
        _model = model;
        _values = new();
        _ownBytes = 0;
        _counted.Clear();
        _runProduced = 0;
        _graphOutputs = model.Graph.Outputs.Select(o => o.Name).ToHashSet();
        _remaining = new();
        foreach (var n in model.Graph.Nodes)
        {
            foreach (var i in n.Inputs) if (i.Length > 0) _remaining[i] = _remaining.GetValueOrDefault(i) + 1;
            // NOTE: names a subgraph reads from this scope stay alive until the run ends.
            foreach (var g in n.Subgraphs) foreach (var r in g.OuterReferences()) _remaining[r] = int.MaxValue / 2;
        }
    }

    public void OnNodeRun(NodeEvent e)
    {
        if (e.Depth > 0 || _model is null) return;
        var node = e.Node;
        var srcIn = new Value?[node.Inputs.Length];
        var tgtIn = new Value?[node.Inputs.Length];
        bool inputsEqual = true;
        for (int i = 0; i < srcIn.Length; i++)
        {
            string name = node.Inputs[i];
            if (name.Length == 0) continue;
            tgtIn[i] = e.HostInput(i);
            if (!_values.TryGetValue(name, out var v))
                v = _model.Graph.Initializers.TryGetValue(name, out var w) ? w : tgtIn[i]; // graph inputs: the same feeds
            _values[name] = v!;
            srcIn[i] = v;
            inputsEqual &= Same(v, tgtIn[i]);
        }
        // NOTE: a body reads values of the enclosing graph that are not the node's inputs: the target's may have
        // drifted, so equal inputs do not make the run under test an isolated one.
        if (node.Subgraphs.Any(b => b.OuterReferences().Any())) inputsEqual = false;
        var tgtOut = Enumerable.Range(0, node.Outputs.Length).Select(e.HostOutput).ToArray();
        Value?[] srcOut;
        try { srcOut = RunOn(source, node, ShadowContext(e, source), srcIn); }
        catch (TapmlException ex) when (ex is not PlatformLostException) { throw new TapmlException($"the source platform {source.Name} failed on node '{node.Name}' ({node.OpType}): {ex.Message}", ex); }
        long transient = srcOut.Sum(Bytes);
        _runProduced += tgtOut.Sum(Bytes);
        AllIntermediates = Math.Max(AllIntermediates, _runProduced);

        var tol = tolerances.For(node, srcIn, srcOut);
        var judge = new NodeJudge(node, e.Context.Opset, srcIn, tol);
        var acc = judge.CompareAccumulated(srcOut, tgtOut);
        var entry = new Pending(e.Index, node, e.Context, Phase, e.Platform.Name, srcIn, srcOut, judge, acc);
        if (inputsEqual) entry.Iso = judge.Compare(srcOut, tgtOut);
        else
        {
            var p = ReferenceEquals(e.Platform, source) ? source : _isolated ??= isolatedTarget();
            entry.Target = p;
            if (p is ISegmentPlatform && !ReferenceEquals(p, source) && !node.Subgraphs.Any())
            {
                // NOTE: the isolated re-run is queued: the queue's nodes go to the target as one batch (one call over a
                // remote link instead of one per node), judged in order when it comes back.
                _pendingBytes += srcIn.Sum(Bytes) + srcOut.Sum(Bytes);
            }
            else
            {
                Flush();
                // NOTE: a body ran on the target even when its If/Loop/Scan was kept on the source: re-run it there too.
                var bodyOn = node.Subgraphs.Any() ? _isolated ??= isolatedTarget() : p;
                Value?[]? isoOut = null;
                NodeError iso;
                try { iso = judge.Compare(srcOut, isoOut = RunOn(p, node, ShadowContext(e, bodyOn), srcIn)); }
                catch (TapmlException ex) when (ex is not PlatformLostException) { iso = new NodeError(new Metrics(), false, $"{e.Platform.Name} fed the source's inputs failed: {ex.Message}"); }
                if (!iso.Passed && isoOut is not null && node.Subgraphs.Any()) iso = InBody(e, srcIn, iso, isoOut, judge);
                entry.Iso = iso;
            }
        }
        _pending.Add(entry);

        // keep the source outputs (the target's when identical), free what this node consumed last
        for (int o = 0; o < node.Outputs.Length; o++)
        {
            if (node.Outputs[o].Length == 0 || srcOut[o] is not { } v) continue;
            bool shared = tgtOut[o] is Tensor t && ReferenceEquals(t, e.Outputs[o]) && Same(v, t);
            _values[node.Outputs[o]] = shared ? tgtOut[o]! : v;
            if (!shared && _counted.Add(node.Outputs[o])) _ownBytes += Bytes(v);
        }
        result.PeakMemoryBytes = Math.Max(result.PeakMemoryBytes, runUnderTest.Stats.LiveBytes + _ownBytes + transient + _pendingBytes);
        foreach (var name in node.Inputs)
        {
            if (name.Length == 0 || !_remaining.ContainsKey(name) || --_remaining[name] > 0 || _graphOutputs.Contains(name)) continue;
            Drop(name);
        }
        foreach (var name in node.Outputs)
            if (name.Length > 0 && !_remaining.ContainsKey(name) && !_graphOutputs.Contains(name)) Drop(name);
        if (_pending.Count >= MaxBatchNodes || _pendingBytes >= MaxBatchBytes || e.Index == _model.Graph.Nodes.Count - 1 || _pending.All(x => x.Iso is not null)) Flush();
    }

    /// <summary>A node's verdicts waiting for its isolated re-run (<see cref="Iso"/> null) or for one queued before it.</summary>
    sealed class Pending(int index, Node node, NodeContext ctx, string phase, string platform, Value?[] srcIn, Value?[] srcOut, NodeJudge judge, NodeError acc)
    {
        public readonly int Index = index;
        public readonly Node Node = node;
        public readonly NodeContext Context = ctx;
        public readonly string Phase = phase, Platform = platform;
        public readonly Value?[] SourceInputs = srcIn, SourceOutputs = srcOut;
        public readonly NodeJudge Judge = judge;
        public readonly NodeError Accumulated = acc;
        public NodeError? Iso;
        public IPlatform? Target;
    }

    // NOTE: bounds of a batch: its inputs travel with one call (the remote client splits what passes half the server's
    // message limit) and its small outputs come back in one reply.
    const int MaxBatchNodes = 64;
    const long MaxBatchBytes = 4 << 20;
    List<Pending> _pending = new();
    long _pendingBytes;

    /// <summary>Runs the queued isolated re-runs (as one batch where the target takes segments) and records every
    /// queued node in order. The run's driver calls it after a run; the last node of a run calls it too.</summary>
    public void Flush()
    {
        if (_pending.Count == 0) return;
        var batch = _pending;
        _pending = new();
        _pendingBytes = 0;
        var waiting = batch.Where(x => x.Iso is null).ToList();
        var outs = waiting.Count > 0 && waiting[0].Target is ISegmentPlatform sp ? RunBatch(sp, waiting) : null;
        for (int i = 0; i < waiting.Count; i++)
        {
            var x = waiting[i];
            if (outs is not null) { x.Iso = x.Judge.Compare(x.SourceOutputs, outs[i]); continue; }
            // NOTE: a batch the target refused (a node it cannot run, a value that cannot travel) runs node by node, so
            // each node gets its own verdict and error.
            try { x.Iso = x.Judge.Compare(x.SourceOutputs, RunOn(x.Target!, x.Node, x.Context, x.SourceInputs)); }
            catch (TapmlException ex) when (ex is not PlatformLostException) { x.Iso = new NodeError(new Metrics(), false, $"{x.Platform} fed the source's inputs failed: {ex.Message}"); }
        }
        foreach (var x in batch) Record(x, x.Iso!);
    }

    void Record(Pending x, NodeError iso)
    {
        var rec = new NodeRecord(x.Index, x.Node.Name, x.Node.OpType, x.Phase, x.Platform, iso, x.Accumulated);
        result.Records.Add(rec);
        if (!iso.Passed && result.FirstDivergent is null)
        {
            result.FirstDivergent = rec;
            CulpritCase = (x.Node, x.Context.Opset, x.SourceInputs.Select(v => v as Tensor).ToArray(), x.SourceOutputs.Select(v => v as Tensor).ToArray());
        }
        else if (iso.Passed && !x.Accumulated.Passed) result.Affected.Add(rec);
    }

    /// <summary>The queued nodes as one graph of unconnected nodes (each fed the source's inputs: one graph input per
    /// distinct value), run on <paramref name="p"/> in their order; each node's outputs on the host, or null when the
    /// target refused the batch.</summary>
    Value?[][]? RunBatch(ISegmentPlatform p, List<Pending> nodes)
    {
        var g = new Graph { Name = "lockstep_isolated" };
        var names = new Dictionary<Value, string>(ReferenceEqualityComparer.Instance);
        var feeds = new Dictionary<string, Value>();
        for (int k = 0; k < nodes.Count; k++)
        {
            var x = nodes[k];
            var ins = new string[x.Node.Inputs.Length];
            for (int i = 0; i < ins.Length; i++)
            {
                if (x.SourceInputs[i] is not { } v) { ins[i] = ""; continue; }
                if (!names.TryGetValue(v, out var name))
                {
                    names[v] = name = $"in{names.Count}";
                    feeds[name] = v;
                    g.Inputs.Add(new ValueInfo(name, Executor.TypeOf(v)));
                }
                ins[i] = name;
            }
            var outNames = x.Node.Outputs.Select((o, j) => o.Length == 0 ? "" : $"out{k}_{j}").ToArray();
            foreach (var o in outNames) if (o.Length > 0) g.Outputs.Add(new ValueInfo(o, null));
            g.Nodes.Add(new Node { Name = x.Node.Name, OpType = x.Node.OpType, Domain = x.Node.Domain, Inputs = ins, Outputs = outNames, Attributes = x.Node.Attributes });
        }
        var model = new Model { Graph = g, Opsets = _model!.Opsets, IrVersion = _model.IrVersion, ProducerName = "tapml lockstep" };
        SegmentResult r;
        try { r = p.RunSegment(model, feeds, hostCopies: true); }
        catch (TapmlException ex) when (ex is not PlatformLostException) { return null; }
        try
        {
            if (r.UnsupportedNode >= 0) return null;
            var result = new Value?[nodes.Count][];
            for (int k = 0; k < nodes.Count; k++)
            {
                var outputs = nodes[k].Node.Outputs;
                result[k] = new Value?[outputs.Length];
                for (int j = 0; j < outputs.Length; j++)
                    if (outputs[j].Length > 0 && r.Outputs.GetValueOrDefault($"out{k}_{j}") is { } v) result[k][j] = p.Download(v);
            }
            return result;
        }
        finally { foreach (var v in r.Outputs.Values) p.Free(v); }
    }

    void Drop(string name)
    {
        if (_values.Remove(name, out var dead) && _counted.Remove(name)) _ownBytes -= Bytes(dead);
    }

    /// <summary>A node with a body (If/Loop/Scan) whose outputs fail isolated: its body runs again, node by node in a
    /// nested lockstep on the isolated target, each body node judged by its own rule. A body node that fails isolated
    /// makes the parent the culprit (the failure names it); when every body node passes, the parent's difference is
    /// rounding accumulated over the body, not a wrong kernel.</summary>
    NodeError InBody(NodeEvent e, Value?[] srcIn, NodeError iso, Value?[] isoOut, NodeJudge judge)
    {
        NodeRecord? found = null;
        var model = _model!;
        var target = _isolated ??= isolatedTarget();
        var ctx = new NodeContext(e.Node, e.Context.Opset)
        {
            Owner = e.Context.Owner,
            RunSubgraph = (body, inputs) =>
            {
                var g = new Graph { Name = body.Name };
                g.Nodes.AddRange(body.Nodes);
                foreach (var (k, v) in body.Initializers) g.Initializers[k] = v;
                var feeds = new Dictionary<string, Value>();
                for (int i = 0; i < body.Inputs.Count && i < inputs.Count; i++)
                    if (inputs[i] is { } v) { g.Inputs.Add(new ValueInfo(body.Inputs[i].Name, Executor.TypeOf(v))); feeds[body.Inputs[i].Name] = v; }
                foreach (var r in body.OuterReferences())
                    if (!feeds.ContainsKey(r) && !g.Initializers.ContainsKey(r) && Outer(r) is { } v) { g.Inputs.Add(new ValueInfo(r, Executor.TypeOf(v))); feeds[r] = v; }
                g.Outputs.AddRange(body.Outputs);
                var bodyModel = new Model { Graph = g, Opsets = model.Opsets, IrVersion = model.IrVersion };
                var nested = new MigrationResult { Strategy = "lockstep", Source = source.Name, Target = target.Name, Nodes = g.Nodes.Count };
                var exec = new Executor(target) { Fallback = source, CheckInputShapes = false };
                using var shadow = new Lockstep(source, tolerances, nested, exec, isolatedTarget) { Phase = Phase, Feeds = feeds };
                exec.Observers.Add(shadow);
                var outs = exec.Run(bodyModel, feeds);
                shadow.Flush();
                found ??= nested.FirstDivergent;
                return body.Outputs.Select(o => outs.GetValueOrDefault(o.Name)).ToArray();
            },
        };
        // The parent's kernel on the source composing the target's body outputs: what the target's parent should give.
        Value?[] withTargetBody;
        try { withTargetBody = RunOn(source, e.Node, ctx, srcIn); }
        catch (TapmlException ex) when (ex is not PlatformLostException) { return new NodeError(iso.Metrics, false, $"inside its body the target failed: {ex.Message}"); }
        // NOTE: kept on the source, the parent's own kernel is the reference's: only its body can be wrong.
        if (!ReferenceEquals(e.Platform, source))
        {
            var own = judge.Compare(withTargetBody, isoOut);
            if (!own.Passed) return new NodeError(iso.Metrics, false, $"the {e.Node.OpType} itself, not its body: {own.Failure}");
        }
        if (found is { } f)
            return new NodeError(iso.Metrics, false, $"inside its body, node '{f.Node}' ({f.OpType}) fails isolated: {f.Isolated.Failure}; the body's outputs: {iso.Failure}");
        return new NodeError(iso.Metrics, true, null);
    }

    /// <summary>A name a body reads from the enclosing scope, as the source computed it.</summary>
    Value? Outer(string name) => _values.GetValueOrDefault(name) ?? _model!.Graph.Initializers.GetValueOrDefault(name) ?? Feeds.GetValueOrDefault(name);

    /// <summary>Graph inputs of the phase being run (bodies may read them from the enclosing scope).</summary>
    public IReadOnlyDictionary<string, Value> Feeds { get; set; } = new Dictionary<string, Value>();

    readonly Dictionary<IPlatform, Executor> _bodies = new(ReferenceEqualityComparer.Instance);

    /// <summary>The node's context for a shadow run on <paramref name="p"/>: a body (If/Loop/Scan) runs wholly on
    /// <paramref name="p"/> (the source, or the isolated target with the source as fallback) and reads the enclosing
    /// scope's source values — never through the run under test, whose bodies run on the target.</summary>
    NodeContext ShadowContext(NodeEvent e, IPlatform p)
    {
        if (!e.Node.Subgraphs.Any()) return e.Context;
        if (!_bodies.TryGetValue(p, out var exec))
            _bodies[p] = exec = ReferenceEquals(p, source) ? new Executor(source) : new Executor(p) { Fallback = source };
        var model = _model!;
        return new NodeContext(e.Node, e.Context.Opset) { Owner = e.Context.Owner, RunSubgraph = (body, inputs) => exec.RunBody(model, body, inputs, Outer) };
    }

    Value?[] RunOn(IPlatform p, Node node, NodeContext ctx, Value?[] hostInputs)
    {
        var inputs = hostInputs.Select(v => v is null ? null : p.IsResident(v) ? v : p.Upload(v)).ToArray();
        var types = inputs.Select(v => v is null ? null : Executor.TypeOf(v)).ToArray();
        string sig = string.Join(";", types.Select(t => t?.ToString() ?? "-"));
        if (!_kernels.TryGetValue((node, p, sig), out var k)) _kernels[(node, p, sig)] = k = p.Prepare(node, ctx, types);
        var outs = p.Run(k, ctx, inputs);
        var host = outs.Select(v => v is null ? null : p.Download(v)).ToArray();
        for (int i = 0; i < inputs.Length; i++) if (inputs[i] is { } v && !ReferenceEquals(v, hostInputs[i])) p.Free(v);
        for (int i = 0; i < outs.Length; i++) if (outs[i] is { } v && !ReferenceEquals(v, host[i])) p.Free(v);
        return host;
    }

    /// <summary>Bit-for-bit equality of two host values (NaNs with equal bits are equal).</summary>
    public static bool Same(Value? a, Value? b)
    {
        if (ReferenceEquals(a, b)) return true;
        if (a is not Tensor x || b is not Tensor y) return false;
        if (x.DType != y.DType || !x.Shape.AsSpan().SequenceEqual(y.Shape)) return false;
        return x.DType == DType.String ? x.As<string>().SequenceEqual(y.As<string>()) : x.Bytes().SequenceEqual(y.Bytes());
    }

    static long Bytes(Value? v) => v is Tensor t && t.DType != DType.String ? t.Length * DTypes.Size(t.DType) : 0;
}
