using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms.Execution;

namespace Tapml.Testing.Carving;

/// <summary>Options of a carve.</summary>
/// <param name="PerSignature">Cases kept per signature: the first ones, and the last slot taken again by the
/// 2nd, 4th, 8th… call (a later call: decode steps with the same shapes). At least 1.</param>
/// <param name="MaxBytes">Blob bytes at most; once reached, new cases are not added (the store notes it). 0: no cap.</param>
/// <param name="EmbedWeights">Copy model weights into the store (self-contained, for shipping to a device) instead
/// of naming them by reference (model file + tensor name + SHA-256).</param>
public sealed record CarveOptions(int PerSignature = 2, long MaxBytes = 0, bool EmbedWeights = false);

/// <summary>Executor observer that carves every operator call of a source run into a
/// <see cref="CarvedStore"/>, deduplicated by signature (op type, domain, opset, attributes, input dtypes and shapes).
/// Nodes inside If/Loop/Scan bodies are carved too (outer-scope values as inputs); parents with subgraph attributes, and calls with
/// sequence, optional or string values, are counted as not carved (with the reason) instead. Inputs that are model
/// weights read from a file (<see cref="Model.InitializerSources"/>) are stored by reference unless
/// <see cref="CarveOptions.EmbedWeights"/>.</summary>
public sealed class Recorder : IExecutionObserver, IDisposable
{
    readonly CarvedStore _store;
    readonly CarveOptions _options;
    readonly Dictionary<string, SignatureState> _signatures = new();
    readonly ConditionalWeakTable<Tensor, string> _hashes = new(); // NOTE: weights are the same Tensor objects every run
    readonly Dictionary<string, long> _notCarved = new();
    readonly Dictionary<Node, NodeState> _nodes = new(ReferenceEqualityComparer.Instance);
    readonly Stopwatch _sinceSave = Stopwatch.StartNew();
    // NOTE: _runPhase/_runModel belong to the run's thread; _phase/_model/_depth to the carving thread (the call's).
    string _runPhase = "run", _phase = "run";
    Model? _runModel, _model;
    int _depth;
    HashSet<string> _graphInputs = new();

    sealed class SignatureState
    {
        public long Count;
        public string? Hash;
        /// <summary>Indexes of this signature's cases in the store's case list.</summary>
        public readonly List<int> Slots = new();
    }

    /// <summary>What a node's calls share: its attributes (JSON and text), whether it can be carved at all, and the
    /// signature of its last call with the input dtypes and shapes that gave it (decode steps repeat them).</summary>
    sealed class NodeState
    {
        public required System.Text.Json.Nodes.JsonObject Attrs;
        public required string AttrText;
        public required bool HasSubgraphs;
        public DType[] Types = [];
        public long[]?[] Shapes = [];
        public string? Signature;
        public SignatureState? State;
    }

    /// <summary>Phase label for a run of the executor (0-based): <c>run</c> by default; LLM carving sets
    /// <c>prefill</c> for run 0 and <c>decode:k</c> for run k.</summary>
    public Func<long, string> PhaseOf { get; init; } = _ => "run";

    public long Calls { get; private set; }
    public long BytesWritten { get; private set; }
    /// <summary>Bytes of every tensor of every kept case, as if each were stored on its own (before dedup).</summary>
    public long BytesBeforeDedup { get; private set; }
    public bool Capped { get; private set; }
    public IReadOnlyDictionary<string, long> NotCarved => _notCarved;

    public Recorder(CarvedStore store, CarveOptions options)
    {
        if (options.PerSignature < 1) throw new TapmlException($"--per-signature must be at least 1 (got {options.PerSignature})");
        if (options.MaxBytes < 0) throw new TapmlException($"--max-bytes must not be negative (got {options.MaxBytes})");
        _store = store;
        _options = options;
    }

    public void OnRunStart(Model model, long run)
    {
        _runPhase = PhaseOf(run);
        _runModel = model;
    }

    /// <summary>One observed call, handed from the run's thread to the carving thread.</summary>
    sealed record Call(Node Node, NodeState State, int Opset, int Depth, string Phase, Model? Model, Tensor?[]? Inputs, Tensor?[]? Outputs, string? Skip, ManualResetEventSlim? Flushed = null)
    {
        /// <summary>Bytes of the outputs the queue holds alive (counted once, by the run's thread and the carving thread alike).</summary>
        public long OutputBytes { get; } = Bytes(Outputs);

        static long Bytes(Tensor?[]? ts)
        {
            long n = 0;
            if (ts is not null) foreach (var t in ts) n += t?.ByteSize ?? 0;
            return n;
        }
    }

    // NOTE: the run's thread only collects each call's host tensors (immutable values the executor hands over) and
    // queues them; signatures, dedup, hashing and staging run on the carving thread, so they overlap the run
    // (docs/benchmarks.md "Carving off the run's thread"). Calls are processed in order, so a carve is deterministic.
    readonly System.Collections.Concurrent.ConcurrentQueue<Call> _queue = new();
    readonly ManualResetEventSlim _wake = new(false), _roomy = new(true);
    Thread? _carver;
    volatile bool _done;
    int _sleeping;
    long _queuedBytes, _queuedCalls;
    Exception? _error;
    /// <summary>Bytes of queued calls' outputs (the values the run would otherwise free) at most before the run waits.</summary>
    const long QueueBytes = 256L << 20;
    const long QueueCalls = 1 << 14;

    public void OnNodeRun(NodeEvent e)
    {
        if (_error is { } err) Rethrow(err);
        Calls++;
        var node = e.Node;
        if (!_nodes.TryGetValue(node, out var ns))
        {
            // NOTE: a node with a body is never carved, so its attributes (a fused region's fill may be -inf, which JSON
            // cannot hold) are not written.
            bool bodies = node.Subgraphs.Any();
            var json = bodies ? new System.Text.Json.Nodes.JsonObject() : CarvedCase.AttributesJson(node);
            _nodes[node] = ns = new NodeState { Attrs = json, AttrText = bodies ? "" : json.ToJsonString(), HasSubgraphs = bodies };
        }
        Call call;
        if (ns.HasSubgraphs) call = new Call(node, ns, 0, 0, _runPhase, null, null, null, "has subgraph attributes (If/Loop/Scan): its body's nodes are carved one by one instead");
        else
        {
            var inputs = HostTensors(node.Inputs.Length, e.HostInput);
            var outputs = inputs is null ? null : HostTensors(node.Outputs.Length, e.HostOutput);
            string? skip = inputs is null || outputs is null ? "sequence or optional values (safetensors blobs hold tensors only)"
                : HasString(inputs) || HasString(outputs) ? "string tensors (safetensors has no string dtype)" : null;
            call = new Call(node, ns, e.Context.Opset, e.Depth, _runPhase, _runModel, inputs, outputs, skip);
        }
        Enqueue(call);
    }

    void Enqueue(Call call)
    {
        if (Interlocked.Add(ref _queuedBytes, call.OutputBytes) > QueueBytes | Interlocked.Increment(ref _queuedCalls) > QueueCalls) _roomy.Reset();
        _queue.Enqueue(call);
        _carver ??= StartCarver();
        if (Volatile.Read(ref _sleeping) == 1) _wake.Set();
        // NOTE: back-pressure: a run far ahead of the carving thread waits instead of holding every activation alive.
        while (!_roomy.IsSet && (Volatile.Read(ref _queuedBytes) > QueueBytes || Volatile.Read(ref _queuedCalls) > QueueCalls) && _error is null && _carver.IsAlive)
            _roomy.Wait(50);
    }

    Thread StartCarver()
    {
        var t = new Thread(CarveLoop) { IsBackground = true, Name = "tapml carve" };
        t.Start();
        return t;
    }

    void CarveLoop()
    {
        try
        {
            while (true)
            {
                while (_queue.TryDequeue(out var call))
                {
                    Process(call);
                    long leftBytes = Interlocked.Add(ref _queuedBytes, -call.OutputBytes), leftCalls = Interlocked.Decrement(ref _queuedCalls);
                    if (leftBytes <= QueueBytes / 2 && leftCalls <= QueueCalls / 2) _roomy.Set();
                }
                if (_done && _queue.IsEmpty) return;
                Interlocked.Exchange(ref _sleeping, 1);
                if (_queue.IsEmpty && !_done) _wake.Wait();
                _wake.Reset();
                Interlocked.Exchange(ref _sleeping, 0);
            }
        }
        catch (Exception ex)
        {
            _error = ex;
            _roomy.Set();
        }
    }

    static void Rethrow(Exception e) => System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e).Throw();

    /// <summary>Waits until the carving thread has processed every queued call.</summary>
    void Finish()
    {
        _done = true;
        _wake.Set();
        _carver?.Join();
        _carver = null;
        if (_error is { } e) Rethrow(e);
    }

    Model? _carvingModel;

    void Process(Call call)
    {
        if (call.Flushed is { } flushed) { Save(wait: true); flushed.Set(); return; }
        if (call.Skip is { } why) { Skip(why); return; }
        var (node, ns, inputs, outputs) = (call.Node, call.State, call.Inputs!, call.Outputs!);
        if (!ReferenceEquals(call.Model, _carvingModel))
        {
            _carvingModel = call.Model;
            _graphInputs = call.Model?.Graph.Inputs.Select(i => i.Name).ToHashSet() ?? [];
        }
        _depth = call.Depth;
        _phase = call.Phase;
        _model = call.Model;
        int opset = call.Opset;
        var state = SignatureOf(node, ns, opset, inputs);
        state.Count++;

        int keep = _options.PerSignature;
        bool add = state.Slots.Count < keep && (state.Slots.Count < keep - 1 || IsPowerOfTwo(state.Count));
        bool replaceLater = !add && keep >= 2 && state.Slots.Count == keep && IsPowerOfTwo(state.Count);
        if ((add || replaceLater) && !Capped)
        {
            long bytes = 0, fresh = 0;
            foreach (var t in inputs) Sizes(t, ref bytes, ref fresh);
            foreach (var t in outputs) Sizes(t, ref bytes, ref fresh);
            if (_options.MaxBytes > 0 && BytesWritten + fresh > _options.MaxBytes)
            {
                Capped = true;
                _store.Notes["capped"] = $"--max-bytes {_options.MaxBytes} reached after {_store.Cases.Count} cases; later calls were not carved";
            }
            else
            {
                string signature = ns.Signature!;
                string hash = state.Hash ??= Convert.ToHexStringLower(System.IO.Hashing.XxHash128.Hash(Encoding.UTF8.GetBytes(signature)))[..12];
                int slot = add ? state.Slots.Count : keep - 1;
                string id = slot == 0 ? $"{node.OpType}-{hash}" : $"{node.OpType}-{hash}-{slot + 1}";
                var c = new CarvedCase
                {
                    Id = id,
                    OpType = node.OpType,
                    Domain = node.Domain,
                    Opset = opset,
                    // NOTE: shared by the node's cases; a case's attributes are never changed.
                    Attributes = ns.Attrs,
                    AttributesText = ns.AttrText,
                    Inputs = Refs(node.Inputs, inputs, "input"),
                    Outputs = Refs(node.Outputs, outputs, "output"),
                    Provenance = new Provenance(node.Name, _phase, state.Count),
                    Signature = signature,
                };
                BytesBeforeDedup += bytes;
                if (add) { state.Slots.Add(_store.Cases.Count); _store.Cases.Add(c); _store.PreRender(c); }
                else { _store.PreRender(c, _store.Cases[state.Slots[slot]]); _store.Cases[state.Slots[slot]] = c; }
            }
        }
        if (_sinceSave.ElapsedMilliseconds > 1000) Save(wait: false);
    }

    void Sizes(Tensor? t, ref long bytes, ref long fresh)
    {
        if (t is null) return;
        bytes += t.ByteSize;
        if (!_hashes.TryGetValue(t, out _)) fresh += t.ByteSize;
    }

    static bool HasString(Tensor?[] ts)
    {
        foreach (var t in ts) if (t?.DType == DType.String) return true;
        return false;
    }

    /// <summary>The call's signature state: the node's last one when the input dtypes and shapes are those of its
    /// last call (no text is built), else looked up by the signature text.</summary>
    SignatureState SignatureOf(Node node, NodeState ns, int opset, Tensor?[] inputs)
    {
        if (ns.State is { } last && ns.Types.Length == inputs.Length)
        {
            bool same = true;
            for (int i = 0; i < inputs.Length && same; i++)
            {
                var t = inputs[i];
                same = t is null ? ns.Shapes[i] is null : ns.Shapes[i] is { } s && t.DType == ns.Types[i] && t.Shape.AsSpan().SequenceEqual(s);
            }
            if (same) return last;
        }
        var sig = new StringBuilder().Append(node.Domain).Append("::").Append(node.OpType).Append('|').Append(opset).Append('|')
            .Append(ns.AttrText).Append('|');
        foreach (var t in inputs) sig.Append(t is null ? "-" : t.Describe()).Append(';');
        string signature = sig.ToString();
        if (!_signatures.TryGetValue(signature, out var state)) _signatures[signature] = state = new SignatureState();
        ns.Signature = signature;
        ns.State = state;
        ns.Types = inputs.Select(t => t?.DType ?? default).ToArray();
        ns.Shapes = inputs.Select(t => t is null ? null : (long[])t.Shape.Clone()).ToArray();
        return state;
    }

    /// <summary>Host tensors of a node's inputs or outputs (null entries for omitted ones); null when one is a
    /// sequence or optional value.</summary>
    static Tensor?[]? HostTensors(int count, Func<int, Value?> get)
    {
        var r = new Tensor?[count];
        for (int i = 0; i < count; i++)
        {
            var v = get(i);
            if (v is null) continue;
            if (v is not Tensor t) return null;
            r[i] = t;
        }
        return r;
    }

    static bool IsPowerOfTwo(long n) => n > 0 && (n & (n - 1)) == 0;

    List<TensorRef> Refs(string[] names, Tensor?[] values, string kind)
    {
        var r = new List<TensorRef>(values.Length);
        for (int i = 0; i < values.Length; i++)
        {
            // NOTE: graph value names can be anything; case-local names keep the one-node model valid and readable.
            string name = LocalName(kind, i);
            if (values[i] is not { } t) { if (kind == "input") r.Add(new TensorRef(name, DType.Float32, [], null)); continue; }
            if (!_hashes.TryGetValue(t, out var sha))
            {
                if (kind == "input" && WeightSource(names[i], t) is { } src) sha = _store.PutWeight(t, src);
                else
                {
                    sha = _store.Put(t, out long written);
                    BytesWritten += written;
                }
                _hashes.AddOrUpdate(t, sha);
            }
            r.Add(new TensorRef(name, t.DType, (long[])t.Shape.Clone(), sha));
        }
        // NOTE: trailing omitted optional inputs are dropped, as ONNX allows.
        while (r.Count > 0 && kind == "input" && r[^1].Blob is null) r.RemoveAt(r.Count - 1);
        return r;
    }

    static readonly string[] InputNames = Enumerable.Range(0, 16).Select(i => $"input_{i}").ToArray();
    static readonly string[] OutputNames = Enumerable.Range(0, 16).Select(i => $"output_{i}").ToArray();

    static string LocalName(string kind, int i) =>
        i < 16 ? (kind == "input" ? InputNames : OutputNames)[i] : $"{kind}_{i}";

    /// <summary>Where the weight <paramref name="t"/> (the value of graph name <paramref name="name"/>) can be read
    /// back from, when it is a model initializer read from a file and weights are not embedded.</summary>
    InitializerSource? WeightSource(string name, Tensor t)
    {
        if (_options.EmbedWeights || _model is null || !_model.InitializerSources.TryGetValue(name, out var src)) return null;
        if (!_model.Graph.Initializers.TryGetValue(name, out var init)) return null;
        // NOTE: a graph input may override the initializer of its name; then only the initializer object itself is.
        if ((_graphInputs.Contains(name) || _depth > 0) && !ReferenceEquals(init, t)) return null;   // a body may shadow the name too
        return init.DType == t.DType && init.Shape.AsSpan().SequenceEqual(t.Shape) ? src : null;
    }

    void Skip(string reason) => _notCarved[reason] = _notCarved.GetValueOrDefault(reason) + 1;

    /// <summary>Writes a manifest of the calls so far (one is also queued every second while carving); returns once it
    /// is on disk.</summary>
    public void Flush()
    {
        if (_carver is null) { Save(wait: true); return; }
        using var flushed = new ManualResetEventSlim(false);
        Enqueue(new Call(null!, null!, 0, 0, _runPhase, null, null, null, null, flushed));
        while (!flushed.Wait(50))
            if (_error is { } e) Rethrow(e);
            else if (_carver is not { IsAlive: true }) throw new InvalidOperationException("the carving thread stopped");
    }

    /// <summary>Queues a manifest of the cases so far; with <paramref name="wait"/>, returns once it is on disk.</summary>
    void Save(bool wait)
    {
        UpdateCounts();
        if (wait) _store.SaveManifest();
        else _store.QueueManifest();
        _sinceSave.Restart();
    }

    void UpdateCounts()
    {
        foreach (var st in _signatures.Values)
            foreach (int i in st.Slots)
                if (_store.Cases[i].Provenance.Count != st.Count)
                    _store.Cases[i] = _store.Cases[i] with { Provenance = _store.Cases[i].Provenance with { Count = st.Count } };
        _store.Notes["not_carved"] = new System.Text.Json.Nodes.JsonObject(_notCarved.Select(kv => KeyValuePair.Create(kv.Key, (System.Text.Json.Nodes.JsonNode?)kv.Value)));
    }

    /// <summary>Final manifest; the pack is closed.</summary>
    public void Dispose()
    {
        Exception? failed = null;
        try { Finish(); }
        catch (Exception e) { failed = e; }
        // NOTE: what was carved before a failure is still saved; the failure is the error reported.
        try
        {
            UpdateCounts();
            _store.Close();
            _store.RemoveUnreferencedBlobs();
        }
        catch when (failed is not null) { }
        _wake.Dispose();
        _roomy.Dispose();
        if (failed is not null) Rethrow(failed);
    }
}
