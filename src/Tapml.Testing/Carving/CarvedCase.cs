using System.Text.Json.Nodes;
using Google.Protobuf;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Ir.Onnx.Proto;

namespace Tapml.Testing.Carving;

/// <summary>A tensor of a carved case: its name in the case's one-node graph, dtype, shape and the blob (sha256
/// of the blob file) holding its data; <see cref="Blob"/> is null for an omitted optional input.</summary>
public sealed record TensorRef(string Name, DType DType, long[] Shape, string? Blob);

/// <summary>Where a case came from: the node of the source model, the phase (<c>run</c> for plain models,
/// <c>prefill</c> or <c>decode:k</c> for LLMs) and how many calls shared its signature.</summary>
public sealed record Provenance(string Node, string Phase, long Count);

/// <summary>One carved operator call: op type, attributes, inputs and the source platform's outputs.
/// <see cref="Id"/> and <see cref="Name"/> start with the op type (<c>Softmax-3f9a…</c>).</summary>
public sealed record CarvedCase
{
    public required string Id { get; init; }
    public required string OpType { get; init; }
    public string Domain { get; init; } = "";
    public required int Opset { get; init; }
    /// <summary>Attributes as JSON: <c>{"axis": {"type": "INT", "value": 1}}</c>; tensor, graph and type
    /// attributes carry the ONNX AttributeProto bytes in base64 under <c>"onnx"</c>.</summary>
    public JsonObject Attributes { get; init; } = new();
    /// <summary><see cref="Attributes"/> as JSON text when the creator has it already (the recorder renders a
    /// node's attributes once for all its calls); null: rendered when written.</summary>
    public string? AttributesText { get; init; }
    public required IReadOnlyList<TensorRef> Inputs { get; init; }
    public required IReadOnlyList<TensorRef> Outputs { get; init; }
    public required Provenance Provenance { get; init; }
    /// <summary>Signature that decides deduplication: op type, domain, opset, attributes, input dtypes and shapes.</summary>
    public required string Signature { get; init; }

    public string Name => Id;

    public IEnumerable<string> Blobs => Inputs.Concat(Outputs).Select(t => t.Blob).OfType<string>();

    // --- attributes ---------------------------------------------------------------------------------------------

    static readonly AttrType[] Simple = [AttrType.Float, AttrType.Int, AttrType.String, AttrType.Floats, AttrType.Ints, AttrType.Strings];

    /// <summary>The JSON form of a node's attributes (see <see cref="Attributes"/>).</summary>
    public static JsonObject AttributesJson(Node node)
    {
        var o = new JsonObject();
        foreach (var (name, a) in node.Attributes.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var e = new JsonObject { ["type"] = a.Type.ToString().ToUpperInvariant() };
            switch (a.Type)
            {
                case AttrType.Float: e["value"] = JsonValue.Create(a.F); break;
                case AttrType.Int: e["value"] = a.I; break;
                case AttrType.String: e["value"] = a.Str; break;
                case AttrType.Floats: e["value"] = new JsonArray(a.Floats.Select(f => (JsonNode)JsonValue.Create(f)).ToArray()); break;
                case AttrType.Ints: e["value"] = new JsonArray(a.Ints.Select(i => (JsonNode)JsonValue.Create(i)).ToArray()); break;
                case AttrType.Strings: e["value"] = new JsonArray(a.Strings.Select(s => (JsonNode)JsonValue.Create(System.Text.Encoding.UTF8.GetString(s))).ToArray()); break;
                default: e["onnx"] = Convert.ToBase64String(OnnxExporter.ToProto(name, a).ToByteArray()); break;
            }
            o[name] = e;
        }
        return o;
    }

    static AttributeProto AttributeProtoOf(string where, string name, JsonNode? json)
    {
        string at = $"{where}: attribute '{TapmlException.Bounded(name, 100)}'";
        if (json is not JsonObject o) throw ManifestJson.Wrong(at, "attribute", "an object", json);
        string type = ManifestJson.Str(o, "type", at);
        try
        {
            if (ManifestJson.OptStr(o, "onnx", at) is { } b64) return AttributeProto.Parser.ParseFrom(Convert.FromBase64String(b64));
            var p = new AttributeProto { Name = name };
            var v = o["value"] ?? throw new TapmlException($"{at} has no value");
            const System.Text.Json.JsonValueKind Num = System.Text.Json.JsonValueKind.Number, Text = System.Text.Json.JsonValueKind.String;
            switch (type)
            {
                case "FLOAT": p.Type = AttributeProto.Types.AttributeType.Float; p.F = ManifestJson.Scalar<float>(v, "\"value\"", at, Num); break;
                case "INT": p.Type = AttributeProto.Types.AttributeType.Int; p.I = ManifestJson.Scalar<long>(v, "\"value\"", at, Num); break;
                case "STRING": p.Type = AttributeProto.Types.AttributeType.String; p.S = ByteString.CopyFromUtf8(ManifestJson.Scalar<string>(v, "\"value\"", at, Text)); break;
                case "FLOATS": p.Type = AttributeProto.Types.AttributeType.Floats; p.Floats.AddRange(ManifestJson.Array(v, "\"value\"", at, (x, f) => ManifestJson.Scalar<float>(x, f, at, Num))); break;
                case "INTS": p.Type = AttributeProto.Types.AttributeType.Ints; p.Ints.AddRange(ManifestJson.Array(v, "\"value\"", at, (x, f) => ManifestJson.Scalar<long>(x, f, at, Num))); break;
                case "STRINGS": p.Type = AttributeProto.Types.AttributeType.Strings; p.Strings.AddRange(ManifestJson.Array(v, "\"value\"", at, (x, f) => ByteString.CopyFromUtf8(ManifestJson.Scalar<string>(x, f, at, Text)))); break;
                default: throw new TapmlException($"{at} has unknown type '{TapmlException.Bounded(type, 40)}'");
            }
            return p;
        }
        catch (Exception e) when (e is FormatException or InvalidProtocolBufferException)
        {
            throw new TapmlException($"{at} is malformed ({e.Message})", e);
        }
    }

    // --- the case as a one-node ONNX model ----------------------------------------------------------------------

    /// <summary>The case as a one-node ONNX model (inputs and outputs typed with the carved shapes); the same
    /// model <c>replay</c> runs and <c>--export-onnx</c> writes.</summary>
    public ModelProto ToModelProto()
    {
        var node = new NodeProto { Name = Provenance.Node, OpType = OpType, Domain = Domain };
        node.Input.AddRange(Inputs.Select(t => t.Blob is null ? "" : t.Name));
        node.Output.AddRange(Outputs.Select(t => t.Name));
        foreach (var (name, json) in Attributes) node.Attribute.Add(AttributeProtoOf($"case {Id}", name, json));
        var g = new GraphProto { Name = Id };
        g.Node.Add(node);
        foreach (var t in Inputs.Where(t => t.Blob is not null)) g.Input.Add(OnnxExporter.ToProto(new ValueInfo(t.Name, TypeRef.TensorOf(t.DType, t.Shape))));
        foreach (var t in Outputs) g.Output.Add(OnnxExporter.ToProto(new ValueInfo(t.Name, TypeRef.TensorOf(t.DType, t.Shape))));
        var m = new ModelProto { IrVersion = 8, ProducerName = "tapml carve", Graph = g };
        m.OpsetImport.Add(new OperatorSetIdProto { Domain = Domain, Version = Opset });
        // NOTE: contrib ops still need the default domain imported (their bodies and type rules refer to it).
        if (Domain != "") m.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 17 });
        return m;
    }

    public Model ToModel() => OnnxImporter.FromProto(ToModelProto(), null);

    // --- manifest JSON ------------------------------------------------------------------------------------------

    public JsonObject ToJson() => new()
    {
        ["id"] = Id,
        ["name"] = Name,
        ["op_type"] = OpType,
        ["domain"] = Domain,
        ["opset"] = Opset,
        ["attributes"] = Attributes.DeepClone(),
        ["inputs"] = new JsonArray(Inputs.Select(TensorJson).ToArray()),
        ["outputs"] = new JsonArray(Outputs.Select(TensorJson).ToArray()),
        ["provenance"] = new JsonObject { ["node"] = Provenance.Node, ["phase"] = Provenance.Phase, ["count"] = Provenance.Count },
        ["signature"] = Signature,
    };

    /// <summary>Writes the manifest form (<see cref="ToJson"/>) straight to <paramref name="w"/>.</summary>
    public void WriteJson(System.Text.Json.Utf8JsonWriter w)
    {
        WriteJsonHead(w);
        w.WriteNumberValue(Provenance.Count);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>The manifest form up to the value of <c>provenance.count</c> (the one field a carve still changes once
    /// the case exists): <see cref="WriteJson"/> is this, the count and two closing braces.</summary>
    public void WriteJsonHead(System.Text.Json.Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString(K.Id, Id);
        w.WriteString(K.Name, Name);
        w.WriteString(K.OpType, OpType);
        w.WriteString(K.Domain, Domain);
        w.WriteNumber(K.Opset, Opset);
        w.WritePropertyName(K.Attributes);
        if (AttributesText is { } text) w.WriteRawValue(text, skipInputValidation: true);
        else Attributes.WriteTo(w);
        WriteTensors(w, K.Inputs, Inputs);
        WriteTensors(w, K.Outputs, Outputs);
        w.WriteString(K.Signature, Signature);
        w.WriteStartObject(K.Provenance);
        w.WriteString(K.Node, Provenance.Node);
        w.WriteString(K.Phase, Provenance.Phase);
        w.WritePropertyName(K.Count);
    }

    /// <summary>The manifest's keys, encoded once (a carve's final manifest is on its critical path).</summary>
    static class K
    {
        public static readonly System.Text.Json.JsonEncodedText Id = E("id"), Name = E("name"), OpType = E("op_type"), Domain = E("domain"),
            Opset = E("opset"), Attributes = E("attributes"), Inputs = E("inputs"), Outputs = E("outputs"), Signature = E("signature"),
            Provenance = E("provenance"), Node = E("node"), Phase = E("phase"), Count = E("count"), DType = E("dtype"), Shape = E("shape"),
            Blob = E("blob");
        static System.Text.Json.JsonEncodedText E(string s) => System.Text.Json.JsonEncodedText.Encode(s);
        public static readonly Dictionary<DType, System.Text.Json.JsonEncodedText> DTypeNames =
            Enum.GetValues<DType>().Where(DTypes.IsSupported).ToDictionary(d => d, d => E(DTypes.Name(d)));
    }

    static void WriteTensors(System.Text.Json.Utf8JsonWriter w, System.Text.Json.JsonEncodedText key, IReadOnlyList<TensorRef> tensors)
    {
        w.WriteStartArray(key);
        foreach (var t in tensors)
        {
            w.WriteStartObject();
            w.WriteString(K.Name, t.Name);
            if (K.DTypeNames.TryGetValue(t.DType, out var dt)) w.WriteString(K.DType, dt);
            else w.WriteString(K.DType, DTypes.Name(t.DType));
            w.WriteStartArray(K.Shape);
            foreach (var d in t.Shape) w.WriteNumberValue(d);
            w.WriteEndArray();
            if (t.Blob is null) w.WriteNull(K.Blob);
            else w.WriteString(K.Blob, t.Blob);
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    static JsonNode TensorJson(TensorRef t) => new JsonObject
    {
        ["name"] = t.Name,
        ["dtype"] = DTypes.Name(t.DType),
        ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)JsonValue.Create(d)).ToArray()),
        ["blob"] = t.Blob,
    };

    public static CarvedCase FromJson(JsonNode? node, string origin)
    {
        if (node is not JsonObject o) throw new TapmlException($"{origin}: a case is not a JSON object");
        string id = ManifestJson.Str(o, "id", $"{origin}: a case");
        string where = $"{origin}: case {TapmlException.Bounded(id, 100)}";
        if (o["provenance"] is not JsonObject p) throw ManifestJson.Wrong(where, "provenance", "an object", o["provenance"]);
        if (o["attributes"] is not (null or JsonObject)) throw ManifestJson.Wrong(where, "attributes", "an object", o["attributes"]);
        var attributes = (o["attributes"] as JsonObject)?.DeepClone().AsObject() ?? new JsonObject();
        foreach (var (name, json) in attributes) AttributeProtoOf(where, name, json);   // checked here: one line per bad manifest
        return new CarvedCase
        {
            Id = id,
            OpType = ManifestJson.Str(o, "op_type", where),
            Domain = ManifestJson.OptStr(o, "domain", where) ?? "",
            Opset = (int)ManifestJson.Long(o, "opset", where, 1, 1000),
            Attributes = attributes,
            Inputs = Tensors(o, "inputs", where),
            Outputs = Tensors(o, "outputs", where, blobRequired: true),
            Provenance = new Provenance(ManifestJson.Str(p, "node", where), ManifestJson.OptStr(p, "phase", where) ?? "run",
                                        ManifestJson.Long(p, "count", where, 0, long.MaxValue, 1)),
            Signature = ManifestJson.OptStr(o, "signature", where) ?? "",
        };
    }

    static List<TensorRef> Tensors(JsonObject o, string key, string where, bool blobRequired = false) => ManifestJson.Array(o[key], $"\"{key}\"", where, (x, field) =>
    {
        if (x is not JsonObject t) throw ManifestJson.Wrong(where, field, "an object", x);
        string at = $"{where}: {field}";
        string dt = ManifestJson.Str(t, "dtype", at);
        DType dtype;
        try { dtype = DTypes.Parse(dt); } catch (TapmlException) { throw new TapmlException($"{at}: unknown dtype '{TapmlException.Bounded(dt, 40)}'"); }
        string? blob = blobRequired ? ManifestJson.Str(t, "blob", at) : ManifestJson.OptStr(t, "blob", at);
        return new TensorRef(ManifestJson.Str(t, "name", at), dtype, ManifestJson.Shape(t, "shape", at), blob);
    });
}
