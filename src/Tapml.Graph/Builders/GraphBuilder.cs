using Tapml.Core;

namespace Tapml.Ir.Builders;

/// <summary>Builds graphs in code (built-in models, LLM architectures, one-node test models) with unique
/// value and node names.</summary>
public sealed class GraphBuilder
{
    readonly Graph _g;
    readonly Dictionary<string, int> _counters = new();

    public GraphBuilder(string name) => _g = new Graph { Name = name };

    public Graph Graph => _g;

    public string Input(string name, DType dtype, params Dim[] shape)
    {
        _g.Inputs.Add(new ValueInfo(name, TypeRef.TensorOf(dtype, shape)));
        return name;
    }

    public string Input(string name, DType dtype, params long[] shape) => Input(name, dtype, shape.Select(d => new Dim(d, null)).ToArray());

    public void Output(string value, string? name = null, TypeRef? type = null)
    {
        if (name != null && name != value) value = Node("Identity", [value], name: name, outputName: name);
        _g.Outputs.Add(new ValueInfo(value, type));
    }

    public string Initializer(string name, Tensor t)
    {
        if (_g.Initializers.ContainsKey(name)) throw new ArgumentException($"initializer '{name}' exists");
        _g.Initializers[name] = t;
        return name;
    }

    /// <summary>Adds a node with one output; returns the output name.</summary>
    public string Node(string opType, string[] inputs, Dictionary<string, Attr>? attrs = null, string? name = null, string? outputName = null, string domain = "")
        => NodeMulti(opType, inputs, 1, attrs, name, outputName is null ? null : [outputName], domain)[0];

    /// <summary>Adds a node with <paramref name="outputs"/> outputs.</summary>
    public string[] NodeMulti(string opType, string[] inputs, int outputs, Dictionary<string, Attr>? attrs = null, string? name = null, string[]? outputNames = null, string domain = "")
    {
        string nodeName = name ?? Unique(opType);
        var outs = outputNames ?? Enumerable.Range(0, outputs).Select(i => outputs == 1 ? nodeName + "_out" : $"{nodeName}_out{i}").ToArray();
        _g.Nodes.Add(new Node { Name = nodeName, OpType = opType, Domain = domain, Inputs = inputs, Outputs = outs, Attributes = attrs ?? new() });
        return outs;
    }

    /// <summary>An i64 constant initializer (shapes, axes).</summary>
    public string Ints(string name, params long[] values) => Initializer(Unique(name), Tensor.FromArray(values, values.Length));

    string Unique(string stem)
    {
        int k = _counters.GetValueOrDefault(stem);
        _counters[stem] = k + 1;
        return k == 0 ? stem : $"{stem}_{k}";
    }
}
