using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms.Execution;

namespace Tapml.Testing.Carving;

/// <summary>Options of a carve.</summary>
/// <param name="PerSignature">Cases kept per signature: the first ones, and the last slot taken again by the
/// 2nd, 4th, 8th… call (a later call: decode steps with the same shapes). At least 1.</param>
/// <param name="MaxBytes">Blob bytes at most; once reached, new cases are not added (the store notes it). 0: no cap.</param>
public sealed record CarveOptions(int PerSignature = 2, long MaxBytes = 0);

/// <summary>Executor observer that carves every top-level operator call of a source run into a
/// <see cref="CarvedStore"/>, deduplicated by signature (op type, domain, opset, attributes, input dtypes and shapes).
/// Nodes inside If/Loop/Scan bodies run as part of their parent; parents with subgraph attributes, and calls with
/// sequence, optional or string values, are counted as not carved (with the reason) instead.</summary>
public sealed class Recorder : IExecutionObserver, IDisposable
{
    readonly CarvedStore _store;
    readonly CarveOptions _options;
    readonly Dictionary<string, SignatureState> _signatures = new();
    readonly ConditionalWeakTable<Tensor, string> _hashes = new(); // NOTE: weights are the same Tensor objects every run
    readonly Dictionary<string, long> _notCarved = new();
    readonly Dictionary<Node, (System.Text.Json.Nodes.JsonObject Json, string Text)> _attrs = new(ReferenceEqualityComparer.Instance);
    readonly Stopwatch _sinceSave = Stopwatch.StartNew();
    string _phase = "run";

    sealed class SignatureState
    {
        public long Count;
        /// <summary>Indexes of this signature's cases in the store's case list.</summary>
        public readonly List<int> Slots = new();
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

    public void OnRunStart(Model model, long run) => _phase = PhaseOf(run);

    public void OnNodeRun(NodeEvent e)
    {
        if (e.Depth > 0) return;
        Calls++;
        var node = e.Node;
        if (node.Subgraphs.Any()) { Skip("has subgraph attributes (If/Loop/Scan): carved only as part of the whole model"); return; }
        var inputs = HostTensors(node.Inputs.Length, e.HostInput);
        var outputs = inputs is null ? null : HostTensors(node.Outputs.Length, e.HostOutput);
        if (inputs is null || outputs is null) { Skip("sequence or optional values (safetensors blobs hold tensors only)"); return; }
        if (inputs.Concat(outputs).Any(t => t?.DType == DType.String)) { Skip("string tensors (safetensors has no string dtype)"); return; }

        if (!_attrs.TryGetValue(node, out var a)) _attrs[node] = a = (CarvedCase.AttributesJson(node), "");
        if (a.Text.Length == 0) _attrs[node] = a = (a.Json, a.Json.ToJsonString());
        var attrs = a.Json;
        int opset = e.Context.Opset;
        var sig = new StringBuilder().Append(node.Domain).Append("::").Append(node.OpType).Append('|').Append(opset).Append('|')
            .Append(a.Text).Append('|');
        foreach (var t in inputs) sig.Append(t is null ? "-" : t.Describe()).Append(';');
        string signature = sig.ToString();
        if (!_signatures.TryGetValue(signature, out var state)) _signatures[signature] = state = new SignatureState();
        state.Count++;

        int keep = _options.PerSignature;
        bool add = state.Slots.Count < keep && (state.Slots.Count < keep - 1 || IsPowerOfTwo(state.Count));
        bool replaceLater = !add && keep >= 2 && state.Slots.Count == keep && IsPowerOfTwo(state.Count);
        if ((add || replaceLater) && !Capped)
        {
            long bytes = inputs.Concat(outputs).Sum(t => t?.ByteSize ?? 0);
            long fresh = inputs.Concat(outputs).Sum(t => t is null || _hashes.TryGetValue(t, out _) ? 0 : t.ByteSize);
            if (_options.MaxBytes > 0 && BytesWritten + fresh > _options.MaxBytes)
            {
                Capped = true;
                _store.Notes["capped"] = $"--max-bytes {_options.MaxBytes} reached after {_store.Cases.Count} cases; later calls were not carved";
            }
            else
            {
                string hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(signature)))[..12];
                int slot = add ? state.Slots.Count : keep - 1;
                string id = slot == 0 ? $"{node.OpType}-{hash}" : $"{node.OpType}-{hash}-{slot + 1}";
                var c = new CarvedCase
                {
                    Id = id,
                    OpType = node.OpType,
                    Domain = node.Domain,
                    Opset = opset,
                    Attributes = (System.Text.Json.Nodes.JsonObject)attrs.DeepClone(),
                    Inputs = Refs(node.Inputs, inputs, "input"),
                    Outputs = Refs(node.Outputs, outputs, "output"),
                    Provenance = new Provenance(node.Name, _phase, state.Count),
                    Signature = signature,
                };
                BytesBeforeDedup += bytes;
                if (add) { state.Slots.Add(_store.Cases.Count); _store.Cases.Add(c); }
                else _store.Cases[state.Slots[slot]] = c;
            }
        }
        if (_sinceSave.ElapsedMilliseconds > 1000) Flush();
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
        var r = new List<TensorRef>();
        for (int i = 0; i < values.Length; i++)
        {
            // NOTE: graph value names can be anything; case-local names keep the one-node model valid and readable.
            string name = $"{kind}_{i}";
            if (values[i] is not { } t) { if (kind == "input") r.Add(new TensorRef(name, DType.Float32, [], null)); continue; }
            if (!_hashes.TryGetValue(t, out var sha))
            {
                sha = _store.Put(t, out long written);
                BytesWritten += written;
                _hashes.AddOrUpdate(t, sha);
            }
            r.Add(new TensorRef(name, t.DType, (long[])t.Shape.Clone(), sha));
        }
        // NOTE: trailing omitted optional inputs are dropped, as ONNX allows.
        while (r.Count > 0 && kind == "input" && r[^1].Blob is null) r.RemoveAt(r.Count - 1);
        return r;
    }

    void Skip(string reason) => _notCarved[reason] = _notCarved.GetValueOrDefault(reason) + 1;

    /// <summary>Writes the manifest now (it is also written every second while carving, and by <see cref="Dispose"/>).</summary>
    public void Flush()
    {
        foreach (var st in _signatures.Values)
            foreach (int i in st.Slots)
                if (_store.Cases[i].Provenance.Count != st.Count)
                    _store.Cases[i] = _store.Cases[i] with { Provenance = _store.Cases[i].Provenance with { Count = st.Count } };
        _store.Notes["not_carved"] = new System.Text.Json.Nodes.JsonObject(_notCarved.Select(kv => KeyValuePair.Create(kv.Key, (System.Text.Json.Nodes.JsonNode?)kv.Value)));
        _store.SaveManifest();
        _sinceSave.Restart();
    }

    /// <summary>Final manifest, then blobs of replaced cases are deleted.</summary>
    public void Dispose()
    {
        Flush();
        _store.RemoveUnreferencedBlobs();
    }
}
