using System.Runtime.InteropServices;
using System.Text;
using Google.Protobuf;
using Tapml.Core;
using Tapml.Ir.Onnx.Proto;

namespace Tapml.Ir.Onnx;

/// <summary>Converts between ONNX <c>TensorProto</c>/<c>SequenceProto</c>/<c>OptionalProto</c> and tapml values.</summary>
public static class TensorProtos
{
    /// <summary>Reads a tensor. <paramref name="baseDir"/> resolves external data; <paramref name="origin"/>
    /// (a file name) goes into error messages.</summary>
    public static Tensor ToTensor(TensorProto p, string? baseDir, string origin)
    {
        string what = $"tensor '{p.Name}' in {origin}";
        var dtype = (DType)p.DataType;
        if (!DTypes.IsSupported(dtype))
            throw new UnsupportedException($"{what} has element type {DTypes.Name(dtype)}, which tapml does not support");
        if (p.Segment != null) throw new UnsupportedException($"{what} is stored in segments, which tapml does not support");
        long[] shape = p.Dims.ToArray();
        long n;
        try { n = ShapeUtil.Size(shape); }
        catch (Exception e) when (e is TapmlException or OverflowException) { throw new TapmlException($"{what} has invalid dims {ShapeUtil.Format(shape)}"); }
        if (n > Array.MaxLength) throw new TapmlException($"{what} has {n} elements, more than one buffer can hold");

        if (p.DataLocation == TensorProto.Types.DataLocation.External || p.ExternalData.Count > 0)
            return ReadExternal(p, dtype, shape, n, baseDir, what);
        if (dtype == DType.String)
        {
            if (p.StringData.Count != n) throw new TapmlException($"{what} holds {p.StringData.Count} strings, dims {ShapeUtil.Format(shape)} need {n}");
            return new Tensor(dtype, shape, p.StringData.Select(b => b.ToStringUtf8()).ToArray());
        }
        if (!p.RawData.IsEmpty || n == 0)
        {
            long need = n * DTypes.Size(dtype);
            if (p.RawData.Length != need) throw new TapmlException($"{what}: raw_data has {p.RawData.Length} bytes, {DTypes.Name(dtype)}{ShapeUtil.Format(shape)} needs {need}");
            return Tensor.FromBytes(dtype, shape, p.RawData.Span);
        }
        int count = dtype switch
        {
            DType.Float32 => p.FloatData.Count,
            DType.Float64 => p.DoubleData.Count,
            DType.Int64 => p.Int64Data.Count,
            DType.UInt32 or DType.UInt64 => p.Uint64Data.Count,
            _ => p.Int32Data.Count,
        };
        if (count != n) throw new TapmlException($"{what} holds {count} values, dims {ShapeUtil.Format(shape)} need {n}");
        var t = Tensor.Zeros(dtype, shape);
        switch (dtype)
        {
            case DType.Float32: p.FloatData.CopyTo(t.As<float>(), 0); break;
            case DType.Float64: p.DoubleData.CopyTo(t.As<double>(), 0); break;
            case DType.Int64: p.Int64Data.CopyTo(t.As<long>(), 0); break;
            case DType.UInt64: { var d = t.As<ulong>(); for (int i = 0; i < n; i++) d[i] = p.Uint64Data[i]; break; }
            case DType.UInt32: { var d = t.As<uint>(); for (int i = 0; i < n; i++) d[i] = (uint)p.Uint64Data[i]; break; }
            case DType.Float16: { var d = t.As<Half>(); for (int i = 0; i < n; i++) d[i] = BitConverter.UInt16BitsToHalf((ushort)p.Int32Data[i]); break; }
            case DType.BFloat16: { var d = t.As<BFloat16>(); for (int i = 0; i < n; i++) d[i] = new BFloat16((ushort)p.Int32Data[i]); break; }
            default: for (int i = 0; i < n; i++) t.SetDouble(i, p.Int32Data[i]); break;
        }
        return t;
    }

    static Tensor ReadExternal(TensorProto p, DType dtype, long[] shape, long n, string? baseDir, string what)
    {
        string? location = null; long offset = 0; long length = -1;
        foreach (var kv in p.ExternalData)
        {
            switch (kv.Key)
            {
                case "location": location = kv.Value; break;
                case "offset": if (!long.TryParse(kv.Value, out offset) || offset < 0) throw new TapmlException($"{what}: external data offset '{kv.Value}' is not a valid byte offset"); break;
                case "length": if (!long.TryParse(kv.Value, out length) || length < 0) throw new TapmlException($"{what}: external data length '{kv.Value}' is not a valid byte count"); break;
            }
        }
        if (string.IsNullOrEmpty(location)) throw new TapmlException($"{what} is marked external but names no location");
        if (dtype == DType.String) throw new TapmlException($"{what}: string tensors cannot be stored externally");
        // NOTE: checked before anything is opened: relative, inside the model's folder once links are resolved, a regular file.
        string path = SafePaths.Contained(Path.GetFullPath(baseDir ?? "."), location, $"{what}: external data location");
        long need = n * DTypes.Size(dtype);
        if (length >= 0 && length != need) throw new TapmlException($"{what}: external data length {length} bytes, {DTypes.Name(dtype)}{ShapeUtil.Format(shape)} needs {need}");
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        if (offset + need > fs.Length) throw new TapmlException($"{what}: external data file '{path}' has {fs.Length} bytes, tensor needs bytes {offset}..{offset + need}");
        var t = Tensor.Zeros(dtype, shape);
        fs.Position = offset;
        fs.ReadExactly(t.Bytes());
        if (dtype == DType.Bool) { var b = t.Bytes(); for (int i = 0; i < b.Length; i++) if (b[i] > 1) b[i] = 1; }
        return t;
    }

    public static TensorProto FromTensor(Tensor t, string name = "")
    {
        var p = new TensorProto { Name = name, DataType = (int)t.DType };
        p.Dims.AddRange(t.Shape);
        if (t.DType == DType.String)
            p.StringData.AddRange(t.As<string>().Select(s => ByteString.CopyFromUtf8(s ?? "")));
        else
            p.RawData = ByteString.CopyFrom(t.Bytes());
        return p;
    }

    /// <summary>Reads a backend-test data file as the kind of value <paramref name="type"/> says
    /// (TensorProto, SequenceProto or OptionalProto); tensors when the type is unknown.</summary>
    public static Value ReadValueFile(string path, TypeRef? type)
    {
        byte[] bytes = File.ReadAllBytes(path);
        try
        {
            return (type?.Kind) switch
            {
                TypeKind.Sequence => ToValue(SequenceProto.Parser.ParseFrom(bytes), path),
                TypeKind.Optional => ToValue(OptionalProto.Parser.ParseFrom(bytes), path),
                TypeKind.Map => throw new UnsupportedException($"{path}: map values are not supported"),
                _ => ToTensor(TensorProto.Parser.ParseFrom(bytes), Path.GetDirectoryName(path), path),
            };
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new TapmlException($"{path} is not a valid serialized ONNX value: {e.Message}");
        }
    }

    /// <summary>Name stored in a data file (TensorProto/SequenceProto/OptionalProto all keep it in field 1 or 8).</summary>
    public static string? NameOf(string path, TypeRef? type)
    {
        try
        {
            byte[] bytes = File.ReadAllBytes(path);
            return (type?.Kind) switch
            {
                TypeKind.Sequence => SequenceProto.Parser.ParseFrom(bytes).Name,
                TypeKind.Optional => OptionalProto.Parser.ParseFrom(bytes).Name,
                _ => TensorProto.Parser.ParseFrom(bytes).Name,
            };
        }
        catch (InvalidProtocolBufferException) { return null; }
    }

    public static Value ToValue(SequenceProto s, string origin)
    {
        if (s.ElemType != (int)SequenceProto.Types.DataType.Tensor && s.TensorValues.Count == 0 && s.ElemType != 0)
            throw new UnsupportedException($"{origin}: sequences of non-tensors are not supported");
        var items = s.TensorValues.Select(t => ToTensor(t, null, origin)).ToList();
        var et = items.Count > 0 ? items[0].DType : DType.Float32;
        return new SequenceValue(et, items);
    }

    public static Value ToValue(OptionalProto o, string origin)
    {
        return (OptionalProto.Types.DataType)o.ElemType switch
        {
            OptionalProto.Types.DataType.Tensor => new OptionalValue(o.TensorValue is null ? null : ToTensor(o.TensorValue, null, origin)),
            OptionalProto.Types.DataType.Sequence => new OptionalValue(o.SequenceValue is null ? null : ToValue(o.SequenceValue, origin), isSequence: true),
            OptionalProto.Types.DataType.Undefined => new OptionalValue(null),
            _ => throw new UnsupportedException($"{origin}: optional of element kind {o.ElemType} is not supported"),
        };
    }

    /// <summary>Serializes a value to the bytes of a backend-test data file.</summary>
    public static byte[] Serialize(Value v, string name) => v switch
    {
        Tensor t => FromTensor(t, name).ToByteArray(),
        SequenceValue s => ToSequenceProto(s, name).ToByteArray(),
        OptionalValue o => ToOptionalProto(o, name).ToByteArray(),
        _ => throw new TapmlException($"cannot serialize {v.Describe()}"),
    };

    static SequenceProto ToSequenceProto(SequenceValue s, string name)
    {
        var p = new SequenceProto { Name = name, ElemType = (int)SequenceProto.Types.DataType.Tensor };
        p.TensorValues.AddRange(s.Items.Select(t => FromTensor(t)));
        return p;
    }

    static OptionalProto ToOptionalProto(OptionalValue o, string name)
    {
        var p = new OptionalProto { Name = name };
        switch (o.Item)
        {
            case Tensor t: p.ElemType = (int)OptionalProto.Types.DataType.Tensor; p.TensorValue = FromTensor(t); break;
            case SequenceValue s: p.ElemType = (int)OptionalProto.Types.DataType.Sequence; p.SequenceValue = ToSequenceProto(s, ""); break;
            default: p.ElemType = (int)(o.IsSequence ? OptionalProto.Types.DataType.Sequence : OptionalProto.Types.DataType.Tensor); break;
        }
        return p;
    }
}
