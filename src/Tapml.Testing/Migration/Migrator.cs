using System.Diagnostics;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Testing.Carving;

namespace Tapml.Testing.Migration;

/// <summary>Inputs of a migration: one run of an ONNX model, or an LLM's prefill and decode steps (the decode
/// steps' feeds come from the source's reference run, so source and target always see the same feeds).</summary>
public sealed record MigrationInput(Dictionary<string, Value>? Feeds = null, long[]? PromptIds = null, int DecodeSteps = 0);

/// <summary>Moves a model from the source platform to the target step by step and finds the first node whose own
/// kernel is wrong (TapML's migration). Three strategies over the one <see cref="Executor"/>:
/// <list type="bullet">
/// <item><c>lockstep</c>: every node on the target; the source shadows each node, compares, frees.</item>
/// <item><c>bisect</c>: the first k nodes on the target, the rest on the source, binary search on k comparing the
/// graph outputs with the source's: ⌈log2 n⌉ + 2 whole runs at most, for a target observed only at its outputs.</item>
/// <item><c>by-kind</c>: op types moved to the target one at a time (in order of first use), outputs compared after
/// each stage; the first stage that diverges is localized in lockstep.</item>
/// </list>
/// The target is created afresh for every whole run (state of one run, such as a stale buffer, must not leak into
/// the next); a platform that makes fresh instances cheaply (<see cref="IFreshInstance"/>: a remote server's new
/// session over the same connection) makes them that way.</summary>
public sealed class Migrator
{
    readonly Model _model;
    readonly string _sourceSpec, _targetSpec;
    readonly MigrationInput _input;
    readonly Tolerances _nodeTolerances;
    readonly Tolerance _outputTolerance;
    readonly List<Node> _nodes;
    /// <summary>Each main-graph node's position.</summary>
    readonly Dictionary<Node, int> _index;
    List<(string Phase, Dictionary<string, Value> Feeds, Dictionary<string, Value> Outputs)>? _reference;
    readonly string _targetDescription;
    IPlatform? _targetRoot;   // an IFreshInstance target that fresh ones are made from, while a strategy runs
    IPlatform? _probe;        // the instance the constructor described the target with, kept as the first strategy's root

    public Action<string>? Progress { get; init; }

    /// <param name="nodeTolerances">Per-node comparisons (lockstep): the replay defaults.</param>
    /// <param name="outputTolerance">Graph outputs of whole mixed runs (bisect, by-kind stages).</param>
    public Migrator(Model model, string sourceSpec, string targetSpec, MigrationInput input, Tolerances nodeTolerances, Tolerance outputTolerance)
    {
        _model = model; _sourceSpec = sourceSpec; _targetSpec = targetSpec; _input = input;
        _nodeTolerances = nodeTolerances; _outputTolerance = outputTolerance;
        _nodes = model.Graph.Nodes.ToList();
        _index = new Dictionary<Node, int>(ReferenceEqualityComparer.Instance);
        for (int i = 0; i < _nodes.Count; i++) _index[_nodes[i]] = i;
        if (input.Feeds is null && input.PromptIds is null) throw new TapmlException("migration needs inputs (feeds) or a prompt");
        var probe = PlatformRegistry.Create(targetSpec); // NOTE: a bad target spec fails before any run
        _targetDescription = probe.Description;
        // NOTE: a remote target's probe is a connection already made and described: the first strategy makes its fresh
        // instances from it instead of connecting again.
        if (probe is IFreshInstance) _probe = probe; else probe.Dispose();
    }

    /// <summary>Where finished runs and clean lockstep phases are written as they end, and read back from on resume.</summary>
    public MigrationJournal? Journal { get; set; }

    /// <summary>What a journal must match to be resumed: model, input, source, target (by description: a restarted
    /// server on another port is the same target), strategy and tolerances.</summary>
    public System.Text.Json.Nodes.JsonObject JournalHeader(string strategy) => new()
    {
        ["format"] = "tapml-migration-journal/1",
        ["model"] = _model.Path ?? _model.Graph.Name,
        ["nodes"] = _nodes.Count,
        ["input"] = InputKey(),
        ["source"] = _sourceSpec,
        ["target"] = _targetDescription,
        ["strategy"] = strategy,
        ["tolerances"] = $"nodes rtol={_nodeTolerances.Rtol?.ToString("R") ?? "default"} atol={_nodeTolerances.Atol?.ToString("R") ?? "default"}; outputs {_outputTolerance}",
    };

    string InputKey()
    {
        if (_input.PromptIds is { } ids) return $"ids {string.Join(",", ids)}, {_input.DecodeSteps} decode steps";
        var h = new System.IO.Hashing.XxHash128();
        foreach (var (name, v) in _input.Feeds!.OrderBy(f => f.Key, StringComparer.Ordinal))
        {
            h.Append(System.Text.Encoding.UTF8.GetBytes(name + "=" + v.Describe() + ";"));
            if (v is Tensor t && t.DType != DType.String) h.Append(t.Bytes());
            else if (v is Tensor st) foreach (var x in st.As<string>()) h.Append(System.Text.Encoding.UTF8.GetBytes(x + "\0"));
        }
        return "feeds xxh3-128 " + Convert.ToHexStringLower(h.GetCurrentHash());
    }

    /// <summary>A fresh target instance (disposed by the caller).</summary>
    IPlatform NewTarget()
    {
        if (_targetRoot is null && _probe is not null) { _targetRoot = _probe; _probe = null; }
        if (_targetRoot is IFreshInstance root) return root.NewInstance();
        var p = PlatformRegistry.Create(_targetSpec);
        if (_targetRoot is not null || p is not IFreshInstance f) return p;
        _targetRoot = p;
        return f.NewInstance();
    }

    /// <summary>Runs one strategy; the instance fresh targets are made from lives as long as it.</summary>
    MigrationResult Strategy(Func<MigrationResult> run)
    {
        try { return run(); }
        finally { _batchTarget?.Dispose(); _batchTarget = null; _targetRoot?.Dispose(); _targetRoot = null; }
    }

    /// <summary>The target instance bisect's batched prefix runs share (<see cref="BatchedPrefixRun"/>).</summary>
    IPlatform? _batchTarget;

    MigrationResult NewResult(string strategy) => new() { Strategy = strategy, Source = _sourceSpec, Target = _targetSpec, Nodes = _nodes.Count };

    public MigrationResult Run(string strategy) => strategy switch
    {
        "lockstep" => Lockstep(),
        "bisect" => Bisect(),
        "by-kind" => ByKind(),
        _ => throw new TapmlException($"--strategy {strategy} is not one of lockstep, bisect, by-kind"),
    };

    // --- reference run ------------------------------------------------------------------------------------------

    /// <summary>The source's run over every phase: feeds and graph outputs (one whole run).</summary>
    List<(string Phase, Dictionary<string, Value> Feeds, Dictionary<string, Value> Outputs)> Reference(MigrationResult r)
    {
        if (_reference is not null) return _reference;
        using var source = PlatformRegistry.Create(_sourceSpec);
        var exec = new Executor(source) { PreferWholeGraph = true };
        var list = new List<(string, Dictionary<string, Value>, Dictionary<string, Value>)>();
        if (_input.PromptIds is { } ids)
        {
            var feeds = Models.Generation.PrefillFeeds(_model, ids);
            long position = ids.Length;
            for (int step = 0; step <= _input.DecodeSteps; step++)
            {
                var outs = exec.Run(_model, feeds);
                list.Add((step == 0 ? "prefill" : $"decode:{step}", feeds, outs));
                if (step < _input.DecodeSteps)
                    feeds = Models.Generation.NextFeeds(_model, outs, Models.Generation.ArgmaxLast((Tensor)outs["logits"]), position++);
            }
        }
        else list.Add(("run", _input.Feeds!, exec.Run(_model, _input.Feeds!)));
        r.Runs++;
        return _reference = list;
    }

    /// <summary>One whole run with <paramref name="placement"/> over every phase; the first phase whose graph outputs
    /// differ from the reference, with the worst output, or null.</summary>
    string? MixedRun(MigrationResult r, Func<Node, bool> onTarget, string key)
    {
        var reference = Reference(r);
        if (Journal?.TryRun(key, out var known) == true) { r.Resumed++; return known; }
        var d = MixedRun(r, onTarget, reference);
        Journal?.Run(key, d);
        return d;
    }

    string? MixedRun(MigrationResult r, Func<Node, bool> onTarget, List<(string Phase, Dictionary<string, Value> Feeds, Dictionary<string, Value> Outputs)> reference)
    {
        using var source = PlatformRegistry.Create(_sourceSpec);
        using var target = NewTarget();
        var exec = new Executor(n => onTarget(n) ? target : source) { Fallback = source };
        r.Runs++;
        try
        {
            foreach (var (phase, feeds, expected) in reference)
            {
                var actual = exec.Run(_model, feeds);
                foreach (var (name, value) in expected)
                {
                    var c = Comparison.Compare(name, value, actual.GetValueOrDefault(name), _outputTolerance);
                    if (!c.Passed) return $"{phase}: output '{name}': {c.Failure}";
                }
            }
            return null;
        }
        catch (TapmlException e) when (e is not PlatformLostException) { return $"the run failed: {e.Message}"; }
        finally
        {
            r.BytesMoved += exec.Stats.BytesMoved; r.Transfers += exec.Stats.Transfers; r.PeakMemoryBytes = Math.Max(r.PeakMemoryBytes, exec.Stats.PeakLiveBytes);
            r.Keep(exec.Fallbacks);
        }
    }

    // --- lockstep -----------------------------------------------------------------------------------------------

    public MigrationResult Lockstep() => Strategy(() => Lockstep(NewResult("lockstep"), _ => true, "lockstep"));

    MigrationResult Lockstep(MigrationResult r, Func<Node, bool> onTarget, string scope)
    {
        var sw = Stopwatch.StartNew();
        var reference = Reference(r);
        using var source = PlatformRegistry.Create(_sourceSpec);
        using var target = NewTarget();
        var exec = new Executor(n => onTarget(n) ? target : source) { Fallback = source };
        using var shadow = new Lockstep(source, _nodeTolerances, r, exec, NewTarget);
        exec.Observers.Add(shadow);
        r.Runs++;
        bool unsupported = false;
        foreach (var (phase, feeds, _) in reference)
        {
            string key = $"{scope}:{phase}";
            if (Journal?.TryPhase(key, out var done, out var kept) == true)
            {
                r.Resumed++;
                r.Records.AddRange(done);
                r.Affected.AddRange(done.Where(x => x.Isolated.Passed && !x.Accumulated.Passed));
                r.Keep(kept);
                continue;
            }
            Progress?.Invoke($"lockstep {phase}");
            shadow.Phase = phase;
            shadow.Feeds = feeds;
            int before = r.Records.Count;
            try { exec.Run(_model, feeds); }
            catch (UnsupportedException e) { r.TargetError = $"{phase}: {e.Message}"; unsupported = true; }
            catch (TapmlException e) when (e is not PlatformLostException) { r.TargetError = $"{phase}: {e.Message}"; }
            shadow.Flush();   // NOTE: the isolated re-runs still queued are judged before the phase's verdict is read
            if (r.FirstDivergent is not null || r.TargetError is not null) break;   // NOTE: later phases only inherit the error
            Journal?.Phase(key, r.Records.Skip(before).ToList(), exec.Fallbacks.ToList());
        }
        r.BytesMoved += exec.Stats.BytesMoved;
        r.Transfers += exec.Stats.Transfers;
        r.Keep(exec.Fallbacks);
        r.AllIntermediatesBytes = Math.Max(r.AllIntermediatesBytes, shadow.AllIntermediates);
        // NOTE: unsupported on the source too (the fallback) is no target failure: it is reported, never blamed.
        if (r.FirstDivergent is null && r.TargetError is not null && !unsupported)
        {
            // The target threw before any output differed: the node it threw in is the culprit.
            var failing = _nodes.Select((n, i) => (n, i)).FirstOrDefault(x => r.TargetError.Contains($"'{x.n.Name}'"));
            if (failing.n is not null)
                r.FirstDivergent = new NodeRecord(failing.i, failing.n.Name, failing.n.OpType, r.TargetError.Split(':')[0], _targetSpec,
                    new NodeError(new Metrics(), false, r.TargetError), new NodeError(new Metrics(), false, r.TargetError));
        }
        if (shadow.CulpritCase is { } c) WriteRepro(r, c.Node, c.Opset, c.Inputs, c.Outputs);
        r.Seconds += sw.Elapsed.TotalSeconds;
        return r;
    }

    // --- bisect -------------------------------------------------------------------------------------------------

    public MigrationResult Bisect() => Strategy(BisectRuns);

    MigrationResult BisectRuns()
    {
        var sw = Stopwatch.StartNew();
        var r = NewResult("bisect");
        Reference(r);
        // Invariant: the first lo nodes on the target do not diverge (lo = 0: the reference itself); hi nodes do.
        int lo = 0, hi = _nodes.Count;
        bool hiTested = false;
        string? hiDetail = null;
        while (hi - lo > 1)
        {
            int mid = lo + (hi - lo) / 2;
            Progress?.Invoke($"bisect: first {mid} of {_nodes.Count} nodes on the target");
            var d = PrefixRun(r, mid, $"bisect:{mid}");
            if (d is null) lo = mid; else { hi = mid; hiTested = true; hiDetail = d; }
        }
        if (!hiTested)
        {
            hiDetail = PrefixRun(r, hi, $"bisect:{hi}");
            if (hiDetail is null) { r.Seconds = sw.Elapsed.TotalSeconds; return r; }   // the whole graph on the target agrees
        }
        int culprit = hi - 1;
        EvaluateCulprit(r, culprit, hiDetail!);
        r.Seconds = sw.Elapsed.TotalSeconds;
        return r;
    }

    /// <summary>The mixed run with the first <paramref name="k"/> nodes on the target (bisect). A target that runs one model
    /// for several feed sets in one call (<see cref="IBatchRunPlatform"/>: remote) gets those k nodes as one model run
    /// for every phase at once — the phases' feeds are the reference's, known in advance — and the source runs the rest
    /// phase by phase from its outputs: one round trip instead of one a phase. Otherwise, or where that call cannot
    /// run them (a node it does not support: the executor's fallback decides), the run is <see cref="MixedRun"/>'s.</summary>
    string? PrefixRun(MigrationResult r, int k, string key)
    {
        var reference = Reference(r);
        if (Journal?.TryRun(key, out var known) == true) { r.Resumed++; return known; }
        var d = BatchedPrefixRun(r, k, reference, out bool ran);
        if (!ran) d = MixedRun(r, n => _index.TryGetValue(n, out int i) && i < k, reference);
        Journal?.Run(key, d);
        return d;
    }

    string? BatchedPrefixRun(MigrationResult r, int k, List<(string Phase, Dictionary<string, Value> Feeds, Dictionary<string, Value> Outputs)> reference, out bool ran)
    {
        ran = false;
        // NOTE: a node with a body runs its body where the executor places each of its nodes; one model sent away would not.
        if (k <= 0 || k >= _nodes.Count || _nodes.Take(k).Any(n => n.Subgraphs.Any())) return null;
        // NOTE: one instance for every batched run of the strategy: a RunMany call runs its model afresh from the feeds it
        // is given (nothing of a run stays but the weights it was sent, which the next mixed run then does not resend).
        _batchTarget ??= NewTarget();
        if (_batchTarget is not IBatchRunPlatform batch) return null;
        var g = _model.Graph;
        var prefixNodes = _nodes.Take(k).ToList();
        var produced = prefixNodes.SelectMany(n => n.Outputs).Where(n => n.Length > 0).ToHashSet();
        var suffix = new Graph { Name = g.Name + $"_from{k}" };
        suffix.Nodes.AddRange(_nodes.Skip(k));
        var read = suffix.Nodes.SelectMany(n => n.Inputs.Concat(n.Subgraphs.SelectMany(sg => sg.OuterReferences()))).Where(n => n.Length > 0).ToHashSet();
        var handed = produced.Where(n => read.Contains(n) || g.Outputs.Any(o => o.Name == n)).OrderBy(n => n, StringComparer.Ordinal).ToList();
        if (handed.Count == 0) return null;
        // The prefix: its graph inputs and initializers are its feeds (weights travel once a session, as a segment's).
        var prefix = new Graph { Name = g.Name + $"_first{k}" };
        prefix.Nodes.AddRange(prefixNodes);
        var prefixInputs = prefixNodes.SelectMany(n => n.Inputs).Where(n => n.Length > 0 && !produced.Contains(n)).Distinct().ToList();
        foreach (var name in prefixInputs) prefix.Inputs.Add(new ValueInfo(name, null));
        foreach (var name in handed) prefix.Outputs.Add(new ValueInfo(name, null));
        var prefixModel = new Model { Graph = prefix, Opsets = _model.Opsets, IrVersion = _model.IrVersion, Path = _model.Path };
        var runs = new List<IReadOnlyDictionary<string, Value>>();
        foreach (var (_, feeds, _) in reference)
        {
            var f = new Dictionary<string, Value>();
            foreach (var name in prefixInputs)
                f[name] = feeds.GetValueOrDefault(name) ?? g.Initializers.GetValueOrDefault(name) as Value
                    ?? throw new TapmlException($"bisect: input '{name}' of the first {k} nodes has no value");
            runs.Add(f);
        }
        // The rest on the source, phase by phase, fed the target's values.
        foreach (var name in g.Initializers.Keys.Where(read.Contains)) suffix.Initializers[name] = g.Initializers[name];
        var made = suffix.Nodes.SelectMany(n => n.Outputs).ToHashSet();
        foreach (var name in read.Where(n => !suffix.Initializers.ContainsKey(n) && !made.Contains(n)).OrderBy(n => n, StringComparer.Ordinal))
            suffix.Inputs.Add(new ValueInfo(name, null));
        foreach (var o in g.Outputs.Where(o => !produced.Contains(o.Name))) suffix.Outputs.Add(o);
        var suffixModel = new Model { Graph = suffix, Opsets = _model.Opsets, IrVersion = _model.IrVersion, Path = _model.Path };
        using var source = PlatformRegistry.Create(_sourceSpec);
        var exec = new Executor(source) { CheckInputShapes = false };
        try
        {
            // NOTE: the first phase alone, then the others in one call: a run that diverges at once (the usual bisect
            // step past a fault) costs one phase of target work, one that agrees two round trips.
            foreach (var (from, to) in new[] { (0, 1), (1, reference.Count) })
            {
                if (from >= to) continue;
                var batchRuns = runs.GetRange(from, to - from);
                IReadOnlyList<Dictionary<string, Value>> got;
                // NOTE: a first call the target cannot take (an unsupported node, a limit, a failure) leaves the run to
                // MixedRun, which gives each node its fallback or verdict; later phases too many for one call (a limit)
                // go one call each.
                try { got = batch.RunMany(prefixModel, batchRuns); }
                catch (TapmlException e) when (e is not PlatformLostException && from == 0) { return null; }
                catch (TapmlException e) when (e is not PlatformLostException) { got = batchRuns.Select(x => batch.RunMany(prefixModel, [x])[0]).ToList(); }
                if (from == 0) { ran = true; r.Runs++; }
                for (int p = from; p < to; p++)
                {
                    var (phase, feeds, expected) = reference[p];
                    var first = got[p - from];
                    r.Transfers += runs[p].Count + first.Count;
                    r.BytesMoved += runs[p].Values.Concat(first.Values).Sum(v => v is Tensor t ? t.ByteSize : 0);
                    var f = new Dictionary<string, Value>();
                    foreach (var vi in suffix.Inputs) if ((first.GetValueOrDefault(vi.Name) ?? feeds.GetValueOrDefault(vi.Name)) is { } v) f[vi.Name] = v;
                    var actual = exec.Run(suffixModel, f);
                    foreach (var (name, value) in expected)
                    {
                        var c = Comparison.Compare(name, value, actual.GetValueOrDefault(name) ?? first.GetValueOrDefault(name), _outputTolerance);
                        if (!c.Passed) return $"{phase}: output '{name}': {c.Failure}";
                    }
                }
            }
            return null;
        }
        catch (TapmlException e) when (e is not PlatformLostException) { return $"the run failed: {e.Message}"; }
        finally { r.PeakMemoryBytes = Math.Max(r.PeakMemoryBytes, exec.Stats.PeakLiveBytes); }
    }

    /// <summary>Isolated and accumulated error of one node: a source run of the graph's prefix up to the node gives
    /// its source inputs (a partial run); the target's run of the same prefix gives its accumulated inputs.</summary>
    void EvaluateCulprit(MigrationResult r, int culprit, string detail)
    {
        var node = _nodes[culprit];
        var prefix = PrefixModel(culprit);
        using var source = PlatformRegistry.Create(_sourceSpec);
        using var target = NewTarget();
        r.PartialRuns += 2;
        foreach (var (phase, feeds, _) in Reference(r))
        {
            var src = new Executor(source).Run(prefix, feeds);
            Dictionary<string, Value> tgt;
            try { tgt = new Executor(target) { Fallback = source }.Run(prefix, feeds); }
            catch (TapmlException e) when (e is not PlatformLostException) { tgt = new(); detail = e.Message; }
            Value?[] Pick(Dictionary<string, Value> d, string[] names) => names.Select(n => n.Length == 0 ? null : d.GetValueOrDefault(n)).ToArray();
            var srcIn = Pick(src, node.Inputs.Select(n => _model.Graph.Initializers.ContainsKey(n) || feeds.ContainsKey(n) ? "" : n).ToArray())
                .Select((v, i) => v ?? (node.Inputs[i].Length == 0 ? null : _model.Graph.Initializers.GetValueOrDefault(node.Inputs[i]) as Value ?? feeds.GetValueOrDefault(node.Inputs[i]))).ToArray();
            var srcOut = Pick(src, node.Outputs);
            var tgtOut = Pick(tgt, node.Outputs);
            // isolated: the target kernel alone, fed the source's inputs (a one-node model: no whole run)
            var oneNode = OneNodeModel(node, srcIn);
            Dictionary<string, Value>? iso = null;
            string? isoError = null;
            // NOTE: a second target instance, so the prefix run's state (a stale buffer) cannot mask the kernel's own error.
            try { using var fresh = NewTarget(); iso = new Executor(fresh) { CheckInputShapes = false, Fallback = source }.Run(oneNode.Model, oneNode.Feeds); }
            catch (TapmlException e) when (e is not PlatformLostException) { isoError = e.Message; }
            var tol = _nodeTolerances.For(node, srcIn, srcOut);
            int opset = _model.Opset(node.Domain);
            var judge = new NodeJudge(node, opset, srcIn, tol);
            var isoErr = isoError is not null ? new NodeError(new Metrics(), false, isoError) : judge.Compare(srcOut, node.Outputs.Select(n => iso!.GetValueOrDefault(n)).ToArray());
            var accErr = judge.CompareAccumulated(srcOut, tgtOut);
            if (isoErr.Passed && accErr.Passed) continue;
            r.FirstDivergent = new NodeRecord(culprit, node.Name, node.OpType, phase, _targetSpec, isoErr, accErr);
            r.Records.Add(r.FirstDivergent);
            WriteRepro(r, node, _model.Opset(node.Domain), srcIn.Select(v => v as Tensor).ToArray(), srcOut.Select(v => v as Tensor).ToArray());
            return;
        }
        // NOTE: the outputs diverged with this node on the target, yet its own outputs match in every phase: the
        // difference is in how values cross platforms, not in a kernel.
        r.FirstDivergent = new NodeRecord(culprit, node.Name, node.OpType, "?", _targetSpec,
            new NodeError(new Metrics(), true, null), new NodeError(new Metrics(), false, detail));
    }

    /// <summary>The graph's first <paramref name="upTo"/> + 1 nodes, with the last node's inputs and outputs as outputs.</summary>
    Model PrefixModel(int upTo)
    {
        var g = new Graph { Name = _model.Graph.Name + $"_prefix{upTo}" };
        g.Nodes.AddRange(_nodes.Take(upTo + 1));
        g.Inputs.AddRange(_model.Graph.Inputs);
        foreach (var (k, v) in _model.Graph.Initializers) g.Initializers[k] = v;
        var produced = g.Nodes.SelectMany(n => n.Outputs).Where(n => n.Length > 0).ToHashSet();
        var node = _nodes[upTo];
        foreach (var name in node.Inputs.Concat(node.Outputs).Where(n => n.Length > 0 && produced.Contains(n)).Distinct())
            g.Outputs.Add(new ValueInfo(name, null));
        return new Model { Graph = g, Opsets = _model.Opsets, IrVersion = _model.IrVersion, Path = _model.Path };
    }

    (Model Model, Dictionary<string, Value> Feeds) OneNodeModel(Node node, Value?[] inputs)
    {
        var g = new Graph { Name = node.Name };
        var feeds = new Dictionary<string, Value>();
        var names = new string[node.Inputs.Length];
        for (int i = 0; i < names.Length; i++)
        {
            if (inputs[i] is not { } v) { names[i] = ""; continue; }
            names[i] = $"input_{i}";
            g.Inputs.Add(new ValueInfo(names[i], Executor.TypeOf(v)));
            feeds[names[i]] = v;
        }
        g.Nodes.Add(new Node { Name = node.Name, OpType = node.OpType, Domain = node.Domain, Inputs = names, Outputs = node.Outputs, Attributes = node.Attributes });
        foreach (var o in node.Outputs.Where(o => o.Length > 0)) g.Outputs.Add(new ValueInfo(o, null));
        return (new Model { Graph = g, Opsets = _model.Opsets, IrVersion = _model.IrVersion }, feeds);
    }

    // --- by kind ------------------------------------------------------------------------------------------------

    public MigrationResult ByKind() => Strategy(ByKindRuns);

    MigrationResult ByKindRuns()
    {
        var sw = Stopwatch.StartNew();
        var r = NewResult("by-kind");
        Reference(r);
        var kinds = _nodes.Select(n => n.OpType).Distinct().ToList();
        var moved = new HashSet<string>();
        for (int s = 0; s < kinds.Count; s++)
        {
            moved.Add(kinds[s]);
            var onTarget = new HashSet<string>(moved);
            Progress?.Invoke($"by-kind stage {s + 1}/{kinds.Count}: {kinds[s]} to the target");
            string? d = MixedRun(r, n => onTarget.Contains(n.OpType), $"by-kind:{s + 1}");
            r.Stages.Add(new StageRecord(s + 1, kinds[s], _nodes.Count(n => onTarget.Contains(n.OpType)), d is not null, d));
            if (d is null) continue;
            Lockstep(r, n => onTarget.Contains(n.OpType), $"by-kind:{s + 1}");
            break;
        }
        r.Seconds = sw.Elapsed.TotalSeconds;
        return r;
    }

    // --- reproducer ---------------------------------------------------------------------------------------------

    /// <summary>Where the culprit's carved case is written (null: not written).</summary>
    public string? ReproDir { get; init; }

    void WriteRepro(MigrationResult r, Node node, int opset, Tensor?[] inputs, Tensor?[] outputs)
    {
        if (ReproDir is null || inputs.Any(t => t is { DType: DType.String }) || outputs.Any(t => t is null or { DType: DType.String })) return;
        string dir = Path.Combine(ReproDir, "culprit-store");
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        var store = CarvedStore.Create(dir, _model.Path ?? _model.Graph.Name, "", _sourceSpec);
        string Put(Tensor t) => store.Put(t, out _);
        var ins = inputs.Select((t, i) => new TensorRef($"input_{i}", t?.DType ?? DType.Float32, t?.Shape ?? [], t is null ? null : Put(t))).ToList();
        while (ins.Count > 0 && ins[^1].Blob is null) ins.RemoveAt(ins.Count - 1);
        var c = new CarvedCase
        {
            Id = $"{node.OpType}-{node.Name.Replace('/', '_')}".Replace(' ', '_'),
            OpType = node.OpType,
            Domain = node.Domain,
            Opset = opset,
            Attributes = CarvedCase.AttributesJson(node),
            Inputs = ins,
            Outputs = outputs.Select((t, i) => new TensorRef($"output_{i}", t!.DType, t.Shape, Put(t))).ToList(),
            Provenance = new Provenance(node.Name, r.FirstDivergent?.Phase ?? "run", 1),
            Signature = "",
        };
        store.Cases.Add(c);
        store.Close();
        r.ReproCase = c.Id;
        r.Repro = $"./tapml replay {CaseRunner.Quote(dir)} --case {c.Id} --platform {CaseRunner.Quote(_targetSpec)}";
    }
}
