using System.Text;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms;

/// <summary>Runs a subgraph (If branch, Loop/Scan body) with positional inputs; outer-scope names resolve
/// through the enclosing run.</summary>
public delegate Value?[] SubgraphRunner(Graph body, IReadOnlyList<Value?> inputs);

/// <summary>Runs a subgraph and leaves its outputs where the body made them (device values stay on their device).</summary>
public delegate SubgraphOutputs ResidentSubgraphRunner(Graph body, IReadOnlyList<Value?> inputs);

/// <summary>A body's outputs as it left them. <paramref name="Owned"/>[i]: output i was made by the body's nodes and now
/// belongs to the caller (it frees it); otherwise it is a value the body passed through (one of its inputs, an outer
/// value, an initializer), owned elsewhere.</summary>
public readonly record struct SubgraphOutputs(Value?[] Values, bool[] Owned);

/// <summary>What a kernel knows about the node it runs: attributes (typed, with defaults), the opset version
/// of its domain, and a way to run subgraphs.</summary>
public sealed class NodeContext
{
    public Node Node { get; }
    /// <summary>Opset version in effect for the node's domain.</summary>
    public int Opset { get; }
    public SubgraphRunner? RunSubgraph { get; init; }
    /// <summary>Where the caller can take a body's outputs as they are (a GPU's control flow keeps loop-carried tensors
    /// on the device); null where only <see cref="RunSubgraph"/> is offered.</summary>
    public ResidentSubgraphRunner? RunSubgraphResident { get; init; }
    /// <summary>The graph this node belongs to (ops such as Gradient read the nodes around them).</summary>
    public Graph? Owner { get; init; }

    public NodeContext(Node node, int opset) { Node = node; Opset = opset; }

    public bool Has(string name) => Node.Attributes.ContainsKey(name);

    public long Int(string name, long dflt) => Node.Attributes.TryGetValue(name, out var a) ? a.I : dflt;
    public long Int(string name) => Get(name).I;
    public float Float(string name, float dflt) => Node.Attributes.TryGetValue(name, out var a) ? a.F : dflt;
    public string String(string name, string dflt) => Node.Attributes.TryGetValue(name, out var a) ? a.Str : dflt;
    public long[]? Ints(string name) => Node.Attributes.TryGetValue(name, out var a) ? a.Ints : null;
    public float[]? Floats(string name) => Node.Attributes.TryGetValue(name, out var a) ? a.Floats : null;
    public string[]? Strings(string name) => Node.Attributes.TryGetValue(name, out var a) ? a.Strings.Select(s => Encoding.UTF8.GetString(s)).ToArray() : null;
    public Tensor? Tensor(string name) => Node.Attributes.TryGetValue(name, out var a) ? a.T : null;
    public Graph Graph(string name) => Get(name).G ?? throw new TapmlException($"node '{Node.Name}' ({Node.OpType}): attribute '{name}' is not a graph");

    public Attr Get(string name) => Node.Attributes.TryGetValue(name, out var a) ? a
        : throw new TapmlException($"node '{Node.Name}' ({Node.OpType}) needs attribute '{name}'");

    /// <summary>An error about this node, for the user.</summary>
    public TapmlException Error(string message) => new($"node '{Node.Name}' ({Node.OpType}): {message}");
    public UnsupportedException Unsupported(string reason) => new($"{Node.OpType}: {reason}");

    public Value?[] Subgraph(Graph body, IReadOnlyList<Value?> inputs) =>
        (RunSubgraph ?? throw Error("subgraphs cannot run here"))(body, inputs);
}
