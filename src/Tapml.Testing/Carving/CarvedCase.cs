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

    static AttributeProto AttributeProtoOf(string caseId, string name, JsonNode? json)
    {
        if (json is not JsonObject o || o["type"]?.GetValue<string>() is not { } type)
            throw new TapmlException($"case {caseId}: attribute '{name}' has no type");
        try
        {
            if (o["onnx"] is { } b64) return AttributeProto.Parser.ParseFrom(Convert.FromBase64String(b64.GetValue<string>()));
            var p = new AttributeProto { Name = name };
            var v = o["value"] ?? throw new TapmlException($"case {caseId}: attribute '{name}' has no value");
            switch (type)
            {
                case "FLOAT": p.Type = AttributeProto.Types.AttributeType.Float; p.F = v.GetValue<float>(); break;
                case "INT": p.Type = AttributeProto.Types.AttributeType.Int; p.I = v.GetValue<long>(); break;
                case "STRING": p.Type = AttributeProto.Types.AttributeType.String; p.S = ByteString.CopyFromUtf8(v.GetValue<string>()); break;
                case "FLOATS": p.Type = AttributeProto.Types.AttributeType.Floats; p.Floats.AddRange(v.AsArray().Select(x => x!.GetValue<float>())); break;
                case "INTS": p.Type = AttributeProto.Types.AttributeType.Ints; p.Ints.AddRange(v.AsArray().Select(x => x!.GetValue<long>())); break;
                case "STRINGS": p.Type = AttributeProto.Types.AttributeType.Strings; p.Strings.AddRange(v.AsArray().Select(x => ByteString.CopyFromUtf8(x!.GetValue<string>()))); break;
                default: throw new TapmlException($"case {caseId}: attribute '{name}' has unknown type {type}");
            }
            return p;
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException or InvalidProtocolBufferException)
        {
            throw new TapmlException($"case {caseId}: attribute '{name}' is malformed ({e.Message})", e);
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
        foreach (var (name, json) in Attributes) node.Attribute.Add(AttributeProtoOf(Id, name, json));
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
        w.WriteStartObject("provenance");
        w.WriteString("node", Provenance.Node);
        w.WriteString("phase", Provenance.Phase);
        w.WriteNumber("count", Provenance.Count);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    /// <summary>Opens the case's object and writes every field but the provenance (whose count grows while a carve
    /// runs; the store's writer renders the rest ahead of the manifest).</summary>
    public void WriteJsonHead(System.Text.Json.Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("id", Id);
        w.WriteString("name", Name);
        w.WriteString("op_type", OpType);
        w.WriteString("domain", Domain);
        w.WriteNumber("opset", Opset);
        w.WritePropertyName("attributes");
        if (AttributesText is { } text) w.WriteRawValue(text, skipInputValidation: true);
        else Attributes.WriteTo(w);
        WriteTensors(w, "inputs", Inputs);
        WriteTensors(w, "outputs", Outputs);
        w.WriteString("signature", Signature);
    }

    static void WriteTensors(System.Text.Json.Utf8JsonWriter w, string key, IReadOnlyList<TensorRef> tensors)
    {
        w.WriteStartArray(key);
        foreach (var t in tensors)
        {
            w.WriteStartObject();
            w.WriteString("name", t.Name);
            w.WriteString("dtype", DTypes.Name(t.DType));
            w.WriteStartArray("shape");
            foreach (var d in t.Shape) w.WriteNumberValue(d);
            w.WriteEndArray();
            if (t.Blob is null) w.WriteNull("blob");
            else w.WriteString("blob", t.Blob);
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
        string id = Str(o, "id", origin);
        string where = $"{origin}: case {id}";
        var p = o["provenance"] as JsonObject ?? throw new TapmlException($"{where}: no provenance");
        return new CarvedCase
        {
            Id = id,
            OpType = Str(o, "op_type", where),
            Domain = o["domain"]?.GetValue<string>() ?? "",
            Opset = o["opset"]?.GetValue<int>() ?? throw new TapmlException($"{where}: no opset"),
            Attributes = (o["attributes"] as JsonObject)?.DeepClone().AsObject() ?? new JsonObject(),
            Inputs = Tensors(o, "inputs", where),
            Outputs = Tensors(o, "outputs", where),
            Provenance = new Provenance(Str(p, "node", where), p["phase"]?.GetValue<string>() ?? "run", p["count"]?.GetValue<long>() ?? 1),
            Signature = o["signature"]?.GetValue<string>() ?? "",
        };
    }

    static string Str(JsonObject o, string key, string where) =>
        o[key] is JsonValue v && v.TryGetValue(out string? s) ? s : throw new TapmlException($"{where}: missing \"{key}\"");

    static List<TensorRef> Tensors(JsonObject o, string key, string where)
    {
        if (o[key] is not JsonArray a) throw new TapmlException($"{where}: missing \"{key}\"");
        var r = new List<TensorRef>();
        foreach (var x in a)
        {
            if (x is not JsonObject t) throw new TapmlException($"{where}: {key} entry is not an object");
            string dt = Str(t, "dtype", where);
            DType dtype;
            try { dtype = DTypes.Parse(dt); } catch (TapmlException) { throw new TapmlException($"{where}: unknown dtype '{dt}'"); }
            var shape = (t["shape"] as JsonArray ?? throw new TapmlException($"{where}: {key} entry has no shape")).Select(d => d!.GetValue<long>()).ToArray();
            r.Add(new TensorRef(Str(t, "name", where), dtype, shape, t["blob"]?.GetValue<string>()));
        }
        return r;
    }
}
