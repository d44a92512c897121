using System.Text;
using System.Text.Json;
using Tapml.Core;

namespace Tapml.Ir.Safetensors;

/// <summary>Writes .safetensors files the way the reference implementation does: tensors sorted by name, data
/// contiguous in that order, the JSON header padded with spaces to a multiple of 8 bytes. Written to a temp
/// file and renamed, so a killed writer never leaves a half file under the final name.</summary>
public static class SafetensorsWriter
{
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.OrderBy(t => t.Key, StringComparer.Ordinal).ToList();
        byte[] header = Header(list, metadata);
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            fs.Write(header);
            foreach (var (_, t) in list) fs.Write(t.Bytes());
        }
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>The bytes before the tensor data: the 8-byte little-endian header length and the padded JSON header
    /// for <paramref name="sorted"/> (tensors sorted by name, data in that order).</summary>
    public static byte[] Header(IReadOnlyList<KeyValuePair<string, Tensor>> sorted, IReadOnlyDictionary<string, string>? metadata = null) =>
        HeaderOf(sorted.Select(t => (t.Key, t.Value.DType, t.Value.Shape)).ToList(), metadata);

    /// <summary>Writes a file whose tensors are made one at a time: the header from <paramref name="sorted"/> (name,
    /// dtype, shape; sorted by name, data in that order), then <paramref name="write"/> called for each entry in order
    /// to write exactly its bytes. For checkpoints too large to hold in memory.</summary>
    public static void WriteStreaming(string path, IReadOnlyList<(string Name, DType DType, long[] Shape)> sorted, Action<int, Stream> write, IReadOnlyDictionary<string, string>? metadata = null)
    {
        string tmp = path + ".tmp";
        using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            fs.Write(HeaderOf(sorted, metadata));
            for (int i = 0; i < sorted.Count; i++)
            {
                long start = fs.Position, bytes = ShapeUtil.Size(sorted[i].Shape) * DTypes.Size(sorted[i].DType);
                write(i, fs);
                if (fs.Position - start != bytes) throw new TapmlException($"{path}: tensor '{sorted[i].Name}' wrote {fs.Position - start} bytes, its header says {bytes}");
            }
        }
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>The header bytes for tensors given as (name, dtype, shape), sorted by name.</summary>
    public static byte[] HeaderOf(IReadOnlyList<(string Name, DType DType, long[] Shape)> sorted, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = sorted;
        var header = new MemoryStream();
        using (var w = new Utf8JsonWriter(header))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata) w.WriteString(k, v);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, dtype, shape) in list)
            {
                long n = ShapeUtil.Size(shape) * DTypes.Size(dtype);
                w.WriteStartObject(name);
                w.WriteString("dtype", SafetensorsFile.DTypeName(dtype));
                w.WriteStartArray("shape");
                foreach (var d in shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + n);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += n;
            }
            w.WriteEndObject();
        }
        int pad = (int)((8 - header.Length % 8) % 8);
        for (int i = 0; i < pad; i++) header.WriteByte((byte)' ');
        var r = new byte[8 + header.Length];
        BitConverter.GetBytes((ulong)header.Length).CopyTo(r, 0);
        header.ToArray().CopyTo(r, 8);
        return r;
    }
}
