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
        var tgtOut = Enumerable.Range(0, node.Outputs.Length).Select(e.HostOutput).ToArray();
        Value?[] srcOut;
        try { srcOut = RunOn(source, node, e.Context, srcIn); }
        catch (TapmlException ex) { throw new TapmlException($"the source platform {source.Name} failed on node '{node.Name}' ({node.OpType}): {ex.Message}", ex); }
        long transient = srcOut.Sum(Bytes);
        _runProduced += tgtOut.Sum(Bytes);
        AllIntermediates = Math.Max(AllIntermediates, _runProduced);

        var tol = tolerances.For(node, srcIn, srcOut);
        var acc = NodeJudge.CompareAccumulated(node, e.Context.Opset, srcIn, srcOut, tgtOut, tol);
        NodeError iso;
        if (inputsEqual) iso = NodeJudge.Compare(node, e.Context.Opset, srcIn, srcOut, tgtOut, tol);
        else
        {
            var p = ReferenceEquals(e.Platform, source) ? source : _isolated ??= isolatedTarget();
            try { iso = NodeJudge.Compare(node, e.Context.Opset, srcIn, srcOut, RunOn(p, node, e.Context, srcIn), tol); }
            catch (TapmlException ex) { iso = new NodeError(new Metrics(), false, $"{e.Platform.Name} fed the source's inputs failed: {ex.Message}"); }
        }
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
