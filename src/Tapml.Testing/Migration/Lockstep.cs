using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Testing.Migration;

/// <summary>The source side of a lockstep run: an observer on the run under test that, node by node in the same
/// topological order, runs the node on the source platform with the source's own values, compares the outputs as
/// soon as both exist, and frees each source value after its last consumer. Where the target's inputs differ from
/// the source's, the node's own platform is also fed the source's inputs (isolated error); otherwise isolated and
/// accumulated error are the same call. A source output equal to the target's bit for bit is not kept twice: the
/// target's host value stands for both.</summary>
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
        NodeError iso;
        Value?[]? isoOut = null;
        if (inputsEqual) iso = judge.Compare(srcOut, isoOut = tgtOut);
        else
        {
            var p = ReferenceEquals(e.Platform, source) ? source : _isolated ??= isolatedTarget();
            // NOTE: a body ran on the target even when its If/Loop/Scan was kept on the source: re-run it there too.
            var bodyOn = node.Subgraphs.Any() ? _isolated ??= isolatedTarget() : p;
            try { iso = judge.Compare(srcOut, isoOut = RunOn(p, node, ShadowContext(e, bodyOn), srcIn)); }
            catch (TapmlException ex) when (ex is not PlatformLostException) { iso = new NodeError(new Metrics(), false, $"{e.Platform.Name} fed the source's inputs failed: {ex.Message}"); }
        }
        if (!iso.Passed && isoOut is not null && node.Subgraphs.Any()) iso = InBody(e, srcIn, iso, isoOut, judge);
        var rec = new NodeRecord(e.Index, node.Name, node.OpType, Phase, e.Platform.Name, iso, acc);
        result.Records.Add(rec);
        if (!iso.Passed && result.FirstDivergent is null)
        {
            result.FirstDivergent = rec;
            CulpritCase = (node, e.Context.Opset, srcIn.Select(v => v as Tensor).ToArray(), srcOut.Select(v => v as Tensor).ToArray());
        }
        else if (iso.Passed && !acc.Passed) result.Affected.Add(rec);

        // keep the source outputs (the target's when identical), free what this node consumed last
        for (int o = 0; o < node.Outputs.Length; o++)
        {
            if (node.Outputs[o].Length == 0 || srcOut[o] is not { } v) continue;
            bool shared = tgtOut[o] is Tensor t && ReferenceEquals(t, e.Outputs[o]) && Same(v, t);
            _values[node.Outputs[o]] = shared ? tgtOut[o]! : v;
            if (!shared && _counted.Add(node.Outputs[o])) _ownBytes += Bytes(v);
        }
        result.PeakMemoryBytes = Math.Max(result.PeakMemoryBytes, runUnderTest.Stats.LiveBytes + _ownBytes + transient);
        foreach (var name in node.Inputs)
        {
            if (name.Length == 0 || !_remaining.ContainsKey(name) || --_remaining[name] > 0 || _graphOutputs.Contains(name)) continue;
            Drop(name);
        }
        foreach (var name in node.Outputs)
            if (name.Length > 0 && !_remaining.ContainsKey(name) && !_graphOutputs.Contains(name)) Drop(name);
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
