using Tapml.Core;

namespace Tapml.Ir;

/// <summary>Kinds of ONNX attribute values.</summary>
public enum AttrType { Float = 1, Int = 2, String = 3, Tensor = 4, Graph = 5, Floats = 6, Ints = 7, Strings = 8, Tensors = 9, Graphs = 10, TypeProto = 13, TypeProtos = 14 }

/// <summary>An ONNX attribute value. Exactly the field named by <see cref="Type"/> is set.</summary>
public sealed class Attr
{
    public AttrType Type { get; init; }
    public float F { get; init; }
    public long I { get; init; }
    /// <summary>STRING attributes as raw bytes (ONNX strings are bytes; most are UTF-8 text).</summary>
    public byte[] S { get; init; } = [];
    public Tensor? T { get; init; }
    public Graph? G { get; init; }
    public float[] Floats { get; init; } = [];
    public long[] Ints { get; init; } = [];
    public byte[][] Strings { get; init; } = [];
    public Tensor[] Tensors { get; init; } = [];
    public Graph[] Graphs { get; init; } = [];
    public TypeRef? Tp { get; init; }
    public TypeRef[] Tps { get; init; } = [];

    /// <summary><see cref="S"/> as UTF-8 text, decoded once (kernels read attributes like a fused node's kind per run).</summary>
    public string Str => _str ??= System.Text.Encoding.UTF8.GetString(S);
    string? _str;

    public static Attr Of(float f) => new() { Type = AttrType.Float, F = f };
    public static Attr Of(long i) => new() { Type = AttrType.Int, I = i };
    public static Attr Of(string s) => new() { Type = AttrType.String, S = System.Text.Encoding.UTF8.GetBytes(s) };
    public static Attr Of(Tensor t) => new() { Type = AttrType.Tensor, T = t };
    public static Attr Of(Graph g) => new() { Type = AttrType.Graph, G = g };
    public static Attr Of(float[] f) => new() { Type = AttrType.Floats, Floats = f };
    public static Attr Of(long[] i) => new() { Type = AttrType.Ints, Ints = i };
    public static Attr Of(string[] s) => new() { Type = AttrType.Strings, Strings = s.Select(x => System.Text.Encoding.UTF8.GetBytes(x)).ToArray() };

    /// <summary>Canonical text form used in signatures and reports.</summary>
    public override string ToString() => Type switch
    {
        AttrType.Float => F.ToString("R", System.Globalization.CultureInfo.InvariantCulture),
        AttrType.Int => I.ToString(),
        AttrType.String => Str,
        AttrType.Floats => "[" + string.Join(",", Floats.Select(f => f.ToString("R", System.Globalization.CultureInfo.InvariantCulture))) + "]",
        AttrType.Ints => "[" + string.Join(",", Ints) + "]",
        AttrType.Strings => "[" + string.Join(",", Strings.Select(s => System.Text.Encoding.UTF8.GetString(s))) + "]",
        AttrType.Tensor => "tensor" + T!.Describe(),
        AttrType.Graph => "graph(" + G!.Name + ")",
        AttrType.Tensors => $"tensors({Tensors.Length})",
        AttrType.Graphs => $"graphs({Graphs.Length})",
        _ => Type.ToString(),
    };
}

/// <summary>Kinds of ONNX types.</summary>
public enum TypeKind { Tensor, Sequence, Optional, Map, SparseTensor }

/// <summary>One dimension of a declared shape: a number, a symbolic name, or unknown (both null).</summary>
public readonly record struct Dim(long? Value, string? Param)
{
    public override string ToString() => Value?.ToString() ?? Param ?? "?";
}

/// <summary>An ONNX type: tensor (element type + optional shape), sequence/optional of a type, map.</summary>
public sealed class TypeRef
{
    public TypeKind Kind { get; init; }
    public DType ElemType { get; init; }
    /// <summary>Declared shape for tensors; null when the rank is unknown.</summary>
    public Dim[]? Shape { get; init; }
    public TypeRef? Elem { get; init; }

    public static TypeRef TensorOf(DType t, Dim[]? shape = null) => new() { Kind = TypeKind.Tensor, ElemType = t, Shape = shape };
    public static TypeRef TensorOf(DType t, params long[] shape) => TensorOf(t, shape.Select(d => new Dim(d, null)).ToArray());

    public override string ToString() => Kind switch
    {
        TypeKind.Tensor => DTypes.Name(ElemType) + (Shape is null ? "" : "[" + string.Join(",", Shape) + "]"),
        TypeKind.Sequence => $"seq<{Elem}>",
        TypeKind.Optional => $"optional<{Elem}>",
        TypeKind.Map => $"map<{DTypes.Name(ElemType)},{Elem}>",
        _ => Kind.ToString(),
    };
}

/// <summary>A named, typed graph input/output/intermediate.</summary>
public sealed record ValueInfo(string Name, TypeRef? Type);

/// <summary>One operator call. Inputs may be "" for an omitted optional input.</summary>
public sealed class Node
{
    public string Name { get; set; } = "";
    public string OpType { get; init; } = "";
    /// <summary>Operator domain; "" for the default ONNX domain (ai.onnx).</summary>
    public string Domain { get; init; } = "";
    public string[] Inputs { get; init; } = [];
    public string[] Outputs { get; init; } = [];
    public Dictionary<string, Attr> Attributes { get; init; } = new();

    /// <summary>Graphs held by attributes (If branches, Loop/Scan bodies).</summary>
    public IEnumerable<Graph> Subgraphs => Attributes.Values.SelectMany(a =>
        a.Type == AttrType.Graph ? new[] { a.G! } : a.Type == AttrType.Graphs ? a.Graphs : []);

    public override string ToString() => $"{OpType} '{Name}'";
}

/// <summary>An ONNX graph: nodes in topological order, inputs, outputs, initializers. Subgraphs refer to
/// names of enclosing graphs freely (ONNX lexical scoping).</summary>
public sealed class Graph
{
    public string Name { get; set; } = "";
    public List<Node> Nodes { get; } = new();
    public List<ValueInfo> Inputs { get; } = new();
    public List<ValueInfo> Outputs { get; } = new();
    public List<ValueInfo> ValueInfos { get; } = new();
    public Dictionary<string, Tensor> Initializers { get; } = new();

    /// <summary>Inputs the caller must feed: graph inputs that are not initializers.</summary>
    public IEnumerable<ValueInfo> RequiredInputs => Inputs.Where(i => !Initializers.ContainsKey(i.Name));

    /// <summary><paramref name="name"/>, or <c>name_1</c>, <c>name_2</c>… the first that no initializer, input or node output
    /// of this graph uses (for a value a graph rewrite adds).</summary>
    public string FreshName(string name)
    {
        string n = name;
        for (int i = 1; Initializers.ContainsKey(n) || Inputs.Any(v => v.Name == n) || Nodes.Any(x => x.Outputs.Contains(n)); i++) n = $"{name}_{i}";
        return n;
    }

    /// <summary>How many times each name is read: by a node input here or in a nested subgraph, or as a graph output
    /// (weight rewrites use it to leave alone a weight something else also reads).</summary>
    public Dictionary<string, int> CountUses()
    {
        var uses = new Dictionary<string, int>();
        void Count(Graph gr)
        {
            foreach (var n in gr.Nodes)
            {
                foreach (var s in n.Inputs) if (s.Length > 0) uses[s] = uses.GetValueOrDefault(s) + 1;
                foreach (var sub in n.Subgraphs) Count(sub);
            }
            foreach (var o in gr.Outputs) uses[o.Name] = uses.GetValueOrDefault(o.Name) + 1;
        }
        Count(this);
        return uses;
    }

    /// <summary>Names this graph reads from enclosing scopes (used by nodes here or in nested subgraphs
    /// but not produced in this graph).</summary>
    public HashSet<string> OuterReferences()
    {
        var defined = new HashSet<string>(Inputs.Select(i => i.Name));
        defined.UnionWith(Initializers.Keys);
        var outer = new HashSet<string>();
        foreach (var n in Nodes)
        {
            foreach (var i in n.Inputs) if (i.Length > 0 && !defined.Contains(i)) outer.Add(i);
            foreach (var g in n.Subgraphs)
                foreach (var r in g.OuterReferences()) if (!defined.Contains(r)) outer.Add(r);
            foreach (var o in n.Outputs) if (o.Length > 0) defined.Add(o);
        }
        foreach (var o in Outputs) if (!defined.Contains(o.Name)) outer.Add(o.Name);
        return outer;
    }
}

/// <summary>A loaded model: the main graph and its operator-set versions.</summary>
public sealed class Model
{
    public required Graph Graph { get; init; }
    /// <summary>Opset version per domain ("" = ai.onnx).</summary>
    public Dictionary<string, int> Opsets { get; init; } = new();
    public long IrVersion { get; init; } = 8;
    public string ProducerName { get; init; } = "";
    /// <summary>File the model came from, when it came from one (used in error messages).</summary>
    public string? Path { get; init; }
    /// <summary>Where main-graph initializers were read from, by initializer name, for those whose bytes can be
    /// read back from a file (carving stores them by reference); initializers made by the builder (derived,
    /// split or constant tensors) are absent.</summary>
    public Dictionary<string, InitializerSource> InitializerSources { get; init; } = new();

    public int Opset(string domain)
    {
        string d = domain == "ai.onnx" ? "" : domain;
        return Opsets.TryGetValue(d, out int v) ? v : d == "" ? 21 : 1;
    }
}

/// <summary>The file an initializer's bytes come from: <paramref name="File"/> (a .safetensors file or an .onnx
/// model, absolute), the tensor's name in it, and <paramref name="Transform"/>: <c>""</c> (as stored, converted
/// to the initializer's dtype when the file's differs) or <c>"transpose"</c> (a matrix stored [out, in] read as
/// [in, out]).</summary>
public sealed record InitializerSource(string File, string Tensor, string Transform = "");
