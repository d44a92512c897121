using System.IO.MemoryMappedFiles;
using System.Text;
using System.Text.Json;
using Tapml.Core;

namespace Tapml.Ir.Safetensors;

/// <summary>One tensor's entry in a safetensors header: element type, shape and byte range in the data section.</summary>
public sealed record SafetensorsEntry(string Name, DType DType, long[] Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
}

/// <summary>Reads a .safetensors file (8-byte little-endian header length, JSON header, data section). The
/// header is validated fully on open (size limit, JSON shape, known dtypes, offsets inside the data section,
/// byte length = elements × dtype size, no overlaps); tensors are read lazily through a memory map.</summary>
public sealed class SafetensorsFile : IDisposable
{
    /// <summary>Largest header accepted (the reference implementation's limit is 100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    readonly MemoryMappedFile? _map;
    readonly MemoryMappedViewAccessor? _view;
    readonly long _dataStart;

    public string Path { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }

    SafetensorsFile(string path, Dictionary<string, SafetensorsEntry> entries, Dictionary<string, string> metadata, long dataStart, long fileLength)
    {
        Path = path;
        Entries = entries;
        Metadata = metadata;
        _dataStart = dataStart;
        if (fileLength > dataStart)
        {
            _map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            _view = _map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        }
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new TapmlException($"safetensors file '{path}' not found");
        SafePaths.RegularFile(path, path);
        byte[] header;
        long fileLength;
        using (var fs = File.OpenRead(path))
        {
            fileLength = fs.Length;
            if (fileLength < 8) throw new TapmlException($"{path}: {fileLength} bytes is too short for a safetensors file (the 8-byte header length is missing)");
            Span<byte> len = stackalloc byte[8];
            fs.ReadExactly(len);
            ulong n = BitConverter.ToUInt64(len);
            if (n > MaxHeaderBytes) throw new TapmlException($"{path}: header length {n} bytes is over the {MaxHeaderBytes}-byte limit (corrupt file?)");
            if ((long)n > fileLength - 8) throw new TapmlException($"{path}: header length {n} bytes runs past the end of the {fileLength}-byte file (truncated?)");
            header = new byte[n];
            fs.ReadExactly(header);
        }
        long dataStart = 8 + header.Length;
        var (entries, metadata) = ParseHeader(path, header, fileLength - dataStart);
        return new SafetensorsFile(path, entries, metadata, dataStart, fileLength);
    }

    /// <summary>Reads tensor <paramref name="name"/> from a whole safetensors file held in memory (a carved blob),
    /// with the header checks of <see cref="Open"/>; <paramref name="origin"/> names it in errors.</summary>
    public static Tensor ReadFromBytes(ReadOnlySpan<byte> file, string name, string origin)
    {
        if (file.Length < 8) throw new TapmlException($"{origin}: {file.Length} bytes is too short for a safetensors file");
        ulong n = BitConverter.ToUInt64(file[..8]);
        if (n > MaxHeaderBytes || (long)n > file.Length - 8) throw new TapmlException($"{origin}: header length {n} bytes runs past the end of the {file.Length}-byte file");
        var (entries, _) = ParseHeader(origin, file.Slice(8, (int)n).ToArray(), file.Length - 8 - (long)n);
        if (!entries.TryGetValue(name, out var e)) throw new TapmlException($"{origin}: no tensor named '{name}'");
        return Tensor.FromBytes(e.DType, e.Shape, file.Slice(8 + (int)n + (int)e.Begin, (int)e.ByteLength));
    }

    static (Dictionary<string, SafetensorsEntry>, Dictionary<string, string>) ParseHeader(string path, byte[] header, long dataLength)
    {
        if (!System.Text.Unicode.Utf8.IsValid(header)) throw new TapmlException($"{path}: the header is not valid UTF-8");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header, JsonFiles.Strict); }
        catch (JsonException e) { throw new TapmlException($"{path}: the header is not valid JSON ({Shorten(e.Message)})"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new TapmlException($"{path}: the header must be a JSON object");
            var entries = new Dictionary<string, SafetensorsEntry>();
            var metadata = new Dictionary<string, string>();
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object) throw new TapmlException($"{path}: __metadata__ must be an object of strings");
                    foreach (var m in prop.Value.EnumerateObject())
                        metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : throw new TapmlException($"{path}: __metadata__ value '{Shorten(m.Name)}' is not a string");
                    continue;
                }
                if (entries.ContainsKey(prop.Name)) throw new TapmlException($"{path}: tensor '{Shorten(prop.Name)}' appears twice in the header");
                entries[prop.Name] = ParseEntry(path, prop, dataLength);
            }
            // Byte ranges must not overlap (the format also asks that they cover the data section without holes).
            SafetensorsEntry? prev = null;
            foreach (var e in entries.Values.Where(e => e.ByteLength > 0).OrderBy(e => e.Begin))
            {
                if (prev != null && e.Begin < prev.End)
                    throw new TapmlException($"{path}: tensors '{Shorten(prev.Name)}' [{prev.Begin},{prev.End}) and '{Shorten(e.Name)}' [{e.Begin},{e.End}) overlap");
                prev = e;
            }
            return (entries, metadata);
        }
    }

    static SafetensorsEntry ParseEntry(string path, JsonProperty prop, long dataLength)
    {
        string what = $"{path}: tensor '{Shorten(prop.Name)}'";
        var v = prop.Value;
        if (v.ValueKind != JsonValueKind.Object) throw new TapmlException($"{what}: entry must be an object");
        if (!v.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String) throw new TapmlException($"{what}: missing dtype");
        if (!v.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw new TapmlException($"{what}: missing shape");
        if (!v.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw new TapmlException($"{what}: data_offsets must be [begin, end]");
        var dtype = ParseDType(dt.GetString()!, what);
        var shape = new long[sh.GetArrayLength()];
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long x) || x < 0) throw new TapmlException($"{what}: shape has an invalid dimension {Shorten(d.GetRawText())}");
            shape[i++] = x;
        }
        long begin = Offset(off[0], what), end = Offset(off[1], what);
        if (end < begin) throw new TapmlException($"{what}: data_offsets [{begin},{end}) end before they begin");
        if (end > dataLength) throw new TapmlException($"{what}: data_offsets [{begin},{end}) run past the {dataLength}-byte data section (truncated file?)");
        long elements;
        try { elements = ShapeUtil.Size(shape); } catch (Exception e) when (e is OverflowException or TapmlException) { throw new TapmlException($"{what}: shape {ShapeUtil.Format(shape)} is too large"); }
        if (elements > long.MaxValue / Math.Max(1, DTypes.Size(dtype)) || elements * DTypes.Size(dtype) != end - begin)
            throw new TapmlException($"{what}: {DTypes.Name(dtype)}{ShapeUtil.Format(shape)} needs {elements * DTypes.Size(dtype)} bytes, data_offsets give {end - begin}");
        return new SafetensorsEntry(prop.Name, dtype, shape, begin, end);
    }

    static long Offset(JsonElement e, string what) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out long v) && v >= 0 ? v : throw new TapmlException($"{what}: data offset {Shorten(e.GetRawText())} is not a byte offset");

    static string Shorten(string s) => s.Length <= 200 ? s : s[..200] + "…";

    /// <summary>safetensors dtype names (F32, BF16, …) to tapml types.</summary>
    public static DType ParseDType(string s, string what) => s switch
    {
        "F32" => DType.Float32,
        "F16" => DType.Float16,
        "BF16" => DType.BFloat16,
        "F64" => DType.Float64,
        "I64" => DType.Int64,
        "I32" => DType.Int32,
        "I16" => DType.Int16,
        "I8" => DType.Int8,
        "U8" => DType.UInt8,
        "U16" => DType.UInt16,
        "U32" => DType.UInt32,
        "U64" => DType.UInt64,
        "BOOL" => DType.Bool,
        _ => throw new UnsupportedException($"{what}: dtype {Shorten(s)} is not supported"),
    };

    public static string DTypeName(DType t) => t switch
    {
        DType.Float32 => "F32",
        DType.Float16 => "F16",
        DType.BFloat16 => "BF16",
        DType.Float64 => "F64",
        DType.Int64 => "I64",
        DType.Int32 => "I32",
        DType.Int16 => "I16",
        DType.Int8 => "I8",
        DType.UInt8 => "U8",
        DType.UInt16 => "U16",
        DType.UInt32 => "U32",
        DType.UInt64 => "U64",
        DType.Bool => "BOOL",
        _ => throw new TapmlException($"{DTypes.Name(t)} cannot be stored in safetensors"),
    };

    /// <summary>Reads one tensor (copied out of the memory map).</summary>
    public Tensor Read(string name)
    {
        if (!Entries.TryGetValue(name, out var e)) throw new TapmlException($"{Path}: no tensor named '{name}'");
        var t = Tensor.Zeros(e.DType, e.Shape);
        if (e.ByteLength == 0) return t;
        var dst = t.Bytes();
        long pos = _dataStart + e.Begin;
        // NOTE: the accessor reads at most int.MaxValue bytes per call; big tensors are read in chunks.
        for (long done = 0; done < dst.Length;)
        {
            int chunk = (int)Math.Min(1 << 30, dst.Length - done);
            _view!.SafeMemoryMappedViewHandle.ReadSpan((ulong)(pos + done), dst.Slice((int)done, chunk));
            done += chunk;
        }
        if (e.DType == DType.Bool) for (int i = 0; i < dst.Length; i++) if (dst[i] > 1) dst[i] = 1;
        return t;
    }

    /// <summary>Tensor <paramref name="name"/> read in place from the memory map: no byte is read until a kernel
    /// reads it, and the pages are the file's (the system can drop and re-read them). Null for an empty tensor or a
    /// dtype kept only by copy (anything but f32, f16, bf16). Once a view exists, <see cref="Dispose"/> leaves the map
    /// to the views: it is unmapped when this file and every tensor over it are unreachable.</summary>
    public unsafe ExternalData? View(string name)
    {
        if (!Entries.TryGetValue(name, out var e)) throw new TapmlException($"{Path}: no tensor named '{name}'");
        if (e.ByteLength == 0 || e.DType is not (DType.Float32 or DType.Float16 or DType.BFloat16)) return null;
        byte* p = null;
        var h = _view!.SafeMemoryMappedViewHandle;
        h.AcquirePointer(ref p);
        try { p += _view.PointerOffset + _dataStart + e.Begin; }
        finally { h.ReleasePointer(); }
        _viewed = true;
        long cols = e.Shape.Length == 0 ? 1 : e.Shape[^1];
        return new ExternalData(this, p, e.DType, cols == 0 ? 0 : ShapeUtil.Size(e.Shape) / cols, cols, false, $"{Path}: tensor '{name}'");
    }

    bool _viewed;

    public void Dispose()
    {
        if (_viewed) return;
        _view?.Dispose();
        _map?.Dispose();
    }
}
