using Google.Protobuf;
using Tapml.Core;
using Tapml.Ir.Onnx.Proto;

namespace Tapml.Ir.Onnx;

/// <summary>Reads .onnx files into <see cref="Model"/>: initializers (typed fields, raw_data, external data),
/// opset imports, subgraphs, model-local functions (inlined). Every problem becomes a
/// <see cref="TapmlException"/> naming the file and the node or tensor.</summary>
public static class OnnxImporter
{
    public static Model Load(string path)
    {
        if (!File.Exists(path)) throw new TapmlException($"model file '{path}' not found");
        SafePaths.RegularFile(path, "model file");
        var info = new FileInfo(path);
        if (info.Length == 0) throw new TapmlException($"{path} is empty, not an ONNX model");
        if (info.Length > int.MaxValue) throw new TapmlException($"{path} is {info.Length} bytes; protobuf files are limited to 2 GiB (store weights as external data)");
        ModelProto proto;
        try
        {
            using var fs = File.OpenRead(path);
            var cis = new CodedInputStream(fs);
            proto = ModelProto.Parser.ParseFrom(cis);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new TapmlException($"{path} is not a valid ONNX model (protobuf: {e.Message})");
        }
        return FromProto(proto, path);
    }

    public static Model FromProto(ModelProto proto, string? path)
    {
        string origin = path ?? "model";
        if (proto.Graph is null || proto.Graph.Node.Count == 0 && proto.Graph.Output.Count == 0)
            throw new TapmlException($"{origin} is not a valid ONNX model: it has no graph");
        var opsets = new Dictionary<string, int>();
        foreach (var o in proto.OpsetImport)
        {
            string d = o.Domain == "ai.onnx" ? "" : o.Domain;
            if (o.Version < 1 || o.Version > 1000) throw new TapmlException($"{origin}: opset import '{o.Domain}' has invalid version {o.Version}");
            opsets[d] = (int)o.Version;
        }
        if (!opsets.ContainsKey("")) opsets[""] = proto.IrVersion >= 3 || proto.OpsetImport.Count > 0 ? 1 : 1;
        var ctx = new Ctx(origin, path is null ? null : Path.GetDirectoryName(Path.GetFullPath(path)), proto.Functions.ToList());
        ctx.ReserveExpansion(proto.Graph);
        var g = ctx.ReadGraph(proto.Graph, new HashSet<string>());
        var model = new Model { Graph = g, Opsets = opsets, IrVersion = proto.IrVersion, ProducerName = proto.ProducerName, Path = path };
        if (path is not null)
        {
            string full = Path.GetFullPath(path);
            foreach (var t in proto.Graph.Initializer) model.InitializerSources[t.Name] = new InitializerSource(full, t.Name);
        }
        try { GraphValidator.Validate(model); }
        catch (Exception e) when (e is not TapmlException and not OutOfMemoryException)
        {
            throw new TapmlException($"{origin}: the graph is malformed ({e.GetType().Name}: {e.Message})", e);
        }
        return model;
    }

    /// <summary>How deep model-local function calls and subgraphs may nest.</summary>
    const int MaxNesting = 64;
    /// <summary>Bytes one imported node is counted for against the <see cref="ResourceBudget"/> (a node, its names,
    /// its attribute dictionary; a generous estimate).</summary>
    const long NodeBytes = 1024;

    sealed class Ctx(string origin, string? baseDir, List<FunctionProto> functions)
    {
        readonly Dictionary<(string, string), FunctionProto> _functions = functions
            .GroupBy(f => (f.Domain, f.Name)).ToDictionary(g => g.Key, g => g.Last());
        int _inlineCounter;
        readonly Dictionary<FunctionProto, long> _expansion = new(ReferenceEqualityComparer.Instance);
        readonly HashSet<FunctionProto> _expanding = new(ReferenceEqualityComparer.Instance);
        const long Saturated = long.MaxValue / 4;

        /// <summary>Counts the nodes <paramref name="main"/> becomes once every model-local function call is inlined
        /// (a few KB of nested functions that each call the next twice become billions) and checks them against the
        /// budget before anything is expanded, naming the function that expands most.</summary>
        public void ReserveExpansion(GraphProto main)
        {
            if (_functions.Count == 0) return;
            long total = Expanded(main.Node, 0);
            if (_expansion.Count == 0) return;
            var (fn, n) = _expansion.MaxBy(kv => kv.Value);
            ResourceBudget.Reserve(total >= Saturated / NodeBytes ? Saturated : total * NodeBytes,
                $"{origin}: model-local function '{TapmlException.Bounded(fn.Name, 100)}' expands to {Count(n)} nodes ({Count(total)} in the model), which");
        }

        static string Count(long n) => n >= Saturated ? "more than 10^18" : n.ToString();

        long Expanded(IEnumerable<NodeProto> nodes, int depth)
        {
            if (depth > MaxNesting) throw new TapmlException($"{origin}: model-local functions and subgraphs nest deeper than {MaxNesting}");
            long n = 0;
            foreach (var np in nodes)
            {
                long k = _functions.TryGetValue((np.Domain, np.OpType), out var fn) ? Expanded(fn, depth + 1) : 1;
                foreach (var a in np.Attribute)
                {
                    if (a.G is { } g) k = Math.Min(k + Expanded(g.Node, depth + 1), Saturated);
                    foreach (var sub in a.Graphs) k = Math.Min(k + Expanded(sub.Node, depth + 1), Saturated);
                }
                n = Math.Min(n + k, Saturated);
            }
            return n;
        }

        long Expanded(FunctionProto fn, int depth)
        {
            if (_expansion.TryGetValue(fn, out long n)) return n;
            if (!_expanding.Add(fn)) throw new TapmlException($"{origin}: function '{TapmlException.Bounded(fn.Name, 100)}' expands recursively (it calls itself, directly or through others)");
            n = Expanded(fn.Node, depth);
            _expanding.Remove(fn);
            return _expansion[fn] = n;
        }

        public Graph ReadGraph(GraphProto gp, HashSet<string> usedNodeNames)
        {
            var g = new Graph { Name = gp.Name };
            foreach (var t in gp.Initializer)
            {
                if (string.IsNullOrEmpty(t.Name)) throw new TapmlException($"{origin}: graph '{gp.Name}' has an initializer with no name");
                g.Initializers[t.Name] = TensorProtos.ToTensor(t, baseDir, origin);
            }
            foreach (var s in gp.SparseInitializer)
                g.Initializers[s.Values?.Name ?? ""] = Densify(s);
            g.Inputs.AddRange(gp.Input.Select(ReadValueInfo));
            g.Outputs.AddRange(gp.Output.Select(ReadValueInfo));
            g.ValueInfos.AddRange(gp.ValueInfo.Select(ReadValueInfo));
            foreach (var np in gp.Node) AddNode(g, np, usedNodeNames, null, 0);
            return g;
        }

        void AddNode(Graph g, NodeProto np, HashSet<string> used, Func<string, string>? rename, int depth)
        {
            if (_functions.TryGetValue((np.Domain, np.OpType), out var fn))
            {
                if (depth > 32) throw new TapmlException($"{origin}: function '{np.OpType}' expands recursively");
                Inline(g, np, fn, used, rename, depth);
                return;
            }
            Node node;
            try { node = ReadNode(np, used, rename); }
            catch (Exception e) when (e is not TapmlException and not OutOfMemoryException)
            {
                throw new TapmlException($"{origin}: node '{TapmlException.Bounded(np.Name, 100)}' ({TapmlException.Bounded(np.OpType, 60)}) is malformed ({e.GetType().Name}: {e.Message})", e);
            }
            g.Nodes.Add(node);
        }

        Node ReadNode(NodeProto np, HashSet<string> used, Func<string, string>? rename)
        {
            string name = np.Name;
            if (string.IsNullOrEmpty(name) || used.Contains(name))
            {
                string stem = string.IsNullOrEmpty(name) ? np.OpType : name;
                int k = used.Count;
                do name = $"{stem}_{k++}"; while (used.Contains(name));
            }
            used.Add(name);
            if (string.IsNullOrEmpty(np.OpType)) throw new TapmlException($"{origin}: node '{name}' has no op_type");
            var attrs = new Dictionary<string, Attr>();
            foreach (var a in np.Attribute)
            {
                if (!string.IsNullOrEmpty(a.RefAttrName)) throw new TapmlException($"{origin}: node '{name}' attribute '{a.Name}' refers to a function attribute outside a function");
                attrs[a.Name] = ReadAttr(a, name, used);
            }
            Func<string, string> rn = rename ?? (s => s);
            return new Node
            {
                Name = name,
                OpType = np.OpType,
                Domain = np.Domain == "ai.onnx" ? "" : np.Domain,
                Inputs = np.Input.Select(i => i.Length == 0 ? "" : rn(i)).ToArray(),
                Outputs = np.Output.Select(o => o.Length == 0 ? "" : rn(o)).ToArray(),
                Attributes = attrs,
            };
        }

        /// <summary>Expands a call to a model-local function: body nodes get prefixed names, formal inputs
        /// and outputs map to the call's actual names, attribute references take the call's values.</summary>
        void Inline(Graph g, NodeProto call, FunctionProto fn, HashSet<string> used, Func<string, string>? outer, int depth)
        {
            string prefix = $"{(string.IsNullOrEmpty(call.Name) ? fn.Name : call.Name)}/{_inlineCounter++}/";
            var map = new Dictionary<string, string>();
            Func<string, string> ro = outer ?? (s => s);
            for (int i = 0; i < fn.Input.Count; i++) map[fn.Input[i]] = i < call.Input.Count && call.Input[i].Length > 0 ? ro(call.Input[i]) : "";
            for (int i = 0; i < fn.Output.Count; i++) map[fn.Output[i]] = i < call.Output.Count ? ro(call.Output[i]) : prefix + fn.Output[i];
            string Rename(string s) => map.TryGetValue(s, out var m) ? m : prefix + s;
            var callAttrs = call.Attribute.ToDictionary(a => a.Name);
            foreach (var d in fn.AttributeProto) callAttrs.TryAdd(d.Name, d);
            foreach (var np in fn.Node)
            {
                var copy = np.Clone();
                copy.Name = prefix + np.Name;
                copy.Attribute.Clear();
                foreach (var a in np.Attribute)
                {
                    if (string.IsNullOrEmpty(a.RefAttrName)) { copy.Attribute.Add(a); continue; }
                    if (callAttrs.TryGetValue(a.RefAttrName, out var actual))
                    {
                        var b = actual.Clone();
                        b.Name = a.Name;
                        copy.Attribute.Add(b);
                    }
                }
                AddNode(g, copy, used, Rename, depth + 1);
            }
        }

        Attr ReadAttr(AttributeProto a, string nodeName, HashSet<string> used)
        {
            var type = a.Type;
            if (type == AttributeProto.Types.AttributeType.Undefined) type = GuessType(a);
            try
            {
                return type switch
                {
                    AttributeProto.Types.AttributeType.Float => Attr.Of(a.F),
                    AttributeProto.Types.AttributeType.Int => Attr.Of(a.I),
                    AttributeProto.Types.AttributeType.String => new Attr { Type = AttrType.String, S = a.S.ToByteArray() },
                    AttributeProto.Types.AttributeType.Tensor => Attr.Of(TensorProtos.ToTensor(a.T ?? new TensorProto(), baseDir, origin)),
                    AttributeProto.Types.AttributeType.SparseTensor => Attr.Of(Densify(a.SparseTensor)),
                    AttributeProto.Types.AttributeType.Graph => Attr.Of(ReadGraph(a.G ?? throw new TapmlException("graph attribute is empty"), used)),
                    AttributeProto.Types.AttributeType.Floats => Attr.Of(a.Floats.ToArray()),
                    AttributeProto.Types.AttributeType.Ints => Attr.Of(a.Ints.ToArray()),
                    AttributeProto.Types.AttributeType.Strings => new Attr { Type = AttrType.Strings, Strings = a.Strings.Select(s => s.ToByteArray()).ToArray() },
                    AttributeProto.Types.AttributeType.Tensors => new Attr { Type = AttrType.Tensors, Tensors = a.Tensors.Select(t => TensorProtos.ToTensor(t, baseDir, origin)).ToArray() },
                    AttributeProto.Types.AttributeType.Graphs => new Attr { Type = AttrType.Graphs, Graphs = a.Graphs.Select(x => ReadGraph(x, used)).ToArray() },
                    AttributeProto.Types.AttributeType.TypeProto => new Attr { Type = AttrType.TypeProto, Tp = ReadType(a.Tp) },
                    AttributeProto.Types.AttributeType.TypeProtos => new Attr { Type = AttrType.TypeProtos, Tps = a.TypeProtos.Select(t => ReadType(t)!).ToArray() },
                    _ => throw new TapmlException($"attribute type {a.Type} is not supported"),
                };
            }
            catch (TapmlException e) when (e is not UnsupportedException)
            {
                throw new TapmlException($"{origin}: node '{nodeName}' attribute '{a.Name}': {e.Message}");
            }
        }

        static AttributeProto.Types.AttributeType GuessType(AttributeProto a) =>
            a.Floats.Count > 0 ? AttributeProto.Types.AttributeType.Floats :
            a.Ints.Count > 0 ? AttributeProto.Types.AttributeType.Ints :
            a.Strings.Count > 0 ? AttributeProto.Types.AttributeType.Strings :
            a.T != null ? AttributeProto.Types.AttributeType.Tensor :
            a.G != null ? AttributeProto.Types.AttributeType.Graph :
            !a.S.IsEmpty ? AttributeProto.Types.AttributeType.String :
            a.F != 0 ? AttributeProto.Types.AttributeType.Float : AttributeProto.Types.AttributeType.Int;

        Tensor Densify(SparseTensorProto s)
        {
            if (s.Values is null || s.Indices is null) throw new TapmlException($"{origin}: sparse tensor without values or indices");
            var values = TensorProtos.ToTensor(s.Values, baseDir, origin);
            var idx = TensorProtos.ToTensor(s.Indices, baseDir, origin).ToInt64Array();
            long[] dims = s.Dims.ToArray();
            long n = values.Length;
            if (idx.Length != n && idx.Length != n * dims.Length)
                throw new TapmlException($"{origin}: sparse tensor '{s.Values.Name}' has {idx.Length} indices for {n} values of rank {dims.Length}");
            var t = Tensor.Zeros(values.DType, dims);
            var strides = ShapeUtil.Strides(dims);
            bool linear = idx.Length == n;
            for (long i = 0; i < n; i++)
            {
                long off = 0;
                if (linear) off = idx[i];
                else for (int d = 0; d < dims.Length; d++) off += idx[i * dims.Length + d] * strides[d];
                if (off < 0 || off >= t.Length) throw new TapmlException($"{origin}: sparse tensor '{s.Values.Name}' index out of range");
                Array.Copy(values.Data, i, t.Data, off, 1); // typed copy: exact for i64 and strings too
            }
            return t;
        }

        ValueInfo ReadValueInfo(ValueInfoProto v) => new(v.Name, ReadType(v.Type));

        public static TypeRef? ReadType(TypeProto? t)
        {
            if (t is null) return null;
            switch (t.ValueCase)
            {
                case TypeProto.ValueOneofCase.TensorType:
                    return new TypeRef
                    {
                        Kind = TypeKind.Tensor,
                        ElemType = (DType)t.TensorType.ElemType,
                        Shape = t.TensorType.Shape is null ? null : t.TensorType.Shape.Dim.Select(d =>
                            d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue ? new Dim(d.DimValue, null)
                            : d.ValueCase == TensorShapeProto.Types.Dimension.ValueOneofCase.DimParam ? new Dim(null, d.DimParam) : new Dim(null, null)).ToArray(),
                    };
                case TypeProto.ValueOneofCase.SequenceType:
                    return new TypeRef { Kind = TypeKind.Sequence, Elem = ReadType(t.SequenceType.ElemType) };
                case TypeProto.ValueOneofCase.OptionalType:
                    return new TypeRef { Kind = TypeKind.Optional, Elem = ReadType(t.OptionalType.ElemType) };
                case TypeProto.ValueOneofCase.MapType:
                    return new TypeRef { Kind = TypeKind.Map, ElemType = (DType)t.MapType.KeyType, Elem = ReadType(t.MapType.ValueType) };
                case TypeProto.ValueOneofCase.SparseTensorType:
                    return new TypeRef { Kind = TypeKind.SparseTensor, ElemType = (DType)t.SparseTensorType.ElemType };
                default:
                    return null;
            }
        }
    }
}
