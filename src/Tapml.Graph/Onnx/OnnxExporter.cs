using Google.Protobuf;
using Tapml.Core;
using Tapml.Ir.Onnx.Proto;

namespace Tapml.Ir.Onnx;

/// <summary>Writes tapml graphs as ONNX protobuf (whole models, and one-node models for per-node runs).</summary>
public static class OnnxExporter
{
    public static ModelProto ToProto(Model model)
    {
        var p = new ModelProto { IrVersion = Math.Max(model.IrVersion, 8), ProducerName = "tapml", Graph = ToProto(model.Graph) };
        foreach (var (d, v) in model.Opsets) p.OpsetImport.Add(new OperatorSetIdProto { Domain = d, Version = v });
        return p;
    }

    public static void Save(Model model, string path)
    {
        var bytes = ToProto(model).ToByteArray();
        string tmp = path + ".tmp";
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>Writes <paramref name="model"/> with every main-graph initializer of at least
    /// <paramref name="minBytes"/> bytes in one side file (ONNX external data: <c>location</c>, <c>offset</c>,
    /// <c>length</c>; offsets aligned to 64 bytes), named after the .onnx file plus <c>.data</c>, in the same folder.
    /// Needed above protobuf's 2 GiB message limit; readers (tapml, ONNX Runtime, onnx) find the file beside the model.</summary>
    public static void SaveWithExternalData(Model model, string path, long minBytes = 1024)
    {
        string dataName = Path.GetFileName(path) + ".data";
        string dataPath = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, dataName);
        var p = ToProto(new Model { Graph = new Graph { Name = model.Graph.Name }, Opsets = model.Opsets, IrVersion = model.IrVersion });
        var gp = ToProto(model.Graph, withInitializers: false);
        using (var fs = new FileStream(dataPath + ".tmp", FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            foreach (var (name, t) in model.Graph.Initializers)
            {
                if (t.DType == DType.String || t.ByteSize < minBytes) { gp.Initializer.Add(TensorProtos.FromTensor(t, name)); continue; }
                long pad = (64 - fs.Position % 64) % 64;
                for (long i = 0; i < pad; i++) fs.WriteByte(0);
                long offset = fs.Position;
                fs.Write(t.Bytes());
                var tp = new TensorProto { Name = name, DataType = (int)t.DType, DataLocation = TensorProto.Types.DataLocation.External };
                tp.Dims.AddRange(t.Shape);
                tp.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = dataName });
                tp.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString(System.Globalization.CultureInfo.InvariantCulture) });
                tp.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = t.ByteSize.ToString(System.Globalization.CultureInfo.InvariantCulture) });
                gp.Initializer.Add(tp);
            }
        }
        p.Graph = gp;
        var bytes = p.ToByteArray();
        File.Move(dataPath + ".tmp", dataPath, overwrite: true);
        File.WriteAllBytes(path + ".tmp", bytes);
        File.Move(path + ".tmp", path, overwrite: true);
    }

    public static GraphProto ToProto(Graph g) => ToProto(g, withInitializers: true);

    static GraphProto ToProto(Graph g, bool withInitializers)
    {
        var gp = new GraphProto { Name = g.Name };
        if (withInitializers) foreach (var (name, t) in g.Initializers) gp.Initializer.Add(TensorProtos.FromTensor(t, name));
        gp.Input.AddRange(g.Inputs.Select(ToProto));
        gp.Output.AddRange(g.Outputs.Select(ToProto));
        gp.ValueInfo.AddRange(g.ValueInfos.Select(ToProto));
        gp.Node.AddRange(g.Nodes.Select(ToProto));
        return gp;
    }

    public static NodeProto ToProto(Node n)
    {
        var np = new NodeProto { Name = n.Name, OpType = n.OpType, Domain = n.Domain };
        np.Input.AddRange(n.Inputs);
        np.Output.AddRange(n.Outputs);
        foreach (var (name, a) in n.Attributes) np.Attribute.Add(ToProto(name, a));
        return np;
    }

    public static AttributeProto ToProto(string name, Attr a)
    {
        var p = new AttributeProto { Name = name, Type = (AttributeProto.Types.AttributeType)(int)a.Type };
        switch (a.Type)
        {
            case AttrType.Float: p.F = a.F; break;
            case AttrType.Int: p.I = a.I; break;
            case AttrType.String: p.S = ByteString.CopyFrom(a.S); break;
            case AttrType.Tensor: p.T = TensorProtos.FromTensor(a.T!); break;
            case AttrType.Graph: p.G = ToProto(a.G!); break;
            case AttrType.Floats: p.Floats.AddRange(a.Floats); break;
            case AttrType.Ints: p.Ints.AddRange(a.Ints); break;
            case AttrType.Strings: p.Strings.AddRange(a.Strings.Select(ByteString.CopyFrom)); break;
            case AttrType.Tensors: p.Tensors.AddRange(a.Tensors.Select(t => TensorProtos.FromTensor(t))); break;
            case AttrType.Graphs: p.Graphs.AddRange(a.Graphs.Select(ToProto)); break;
            case AttrType.TypeProto: p.Tp = ToProto(a.Tp); break;
            case AttrType.TypeProtos: p.TypeProtos.AddRange(a.Tps.Select(ToProto)); break;
        }
        return p;
    }

    public static ValueInfoProto ToProto(ValueInfo v) => new() { Name = v.Name, Type = ToProto(v.Type) };

    public static TypeProto? ToProto(TypeRef? t)
    {
        if (t is null) return null;
        switch (t.Kind)
        {
            case TypeKind.Tensor:
            {
                var tt = new TypeProto.Types.Tensor { ElemType = (int)t.ElemType };
                if (t.Shape != null)
                {
                    tt.Shape = new TensorShapeProto();
                    foreach (var d in t.Shape)
                    {
                        var dim = new TensorShapeProto.Types.Dimension();
                        if (d.Value is long v) dim.DimValue = v; else if (d.Param != null) dim.DimParam = d.Param;
                        tt.Shape.Dim.Add(dim);
                    }
                }
                return new TypeProto { TensorType = tt };
            }
            case TypeKind.Sequence: return new TypeProto { SequenceType = new TypeProto.Types.Sequence { ElemType = ToProto(t.Elem) } };
            case TypeKind.Optional: return new TypeProto { OptionalType = new TypeProto.Types.Optional { ElemType = ToProto(t.Elem) } };
            default: throw new TapmlException($"cannot export type {t}");
        }
    }

    /// <summary>Type of a runtime value, as ONNX declares it (shape included for tensors).</summary>
    public static TypeRef TypeOf(Value v) => v switch
    {
        Tensor t => TypeRef.TensorOf(t.DType, t.Shape),
        SequenceValue s => new TypeRef { Kind = TypeKind.Sequence, Elem = TypeRef.TensorOf(s.ElementType) },
        OptionalValue o => new TypeRef { Kind = TypeKind.Optional, Elem = o.Item is null ? (o.IsSequence ? new TypeRef { Kind = TypeKind.Sequence, Elem = TypeRef.TensorOf(o.ElementType) } : TypeRef.TensorOf(o.ElementType)) : TypeOf(o.Item) },
        _ => throw new TapmlException($"no ONNX type for {v.Describe()}"),
    };
}
