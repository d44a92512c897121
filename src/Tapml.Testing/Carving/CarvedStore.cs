using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Hashing;
using System.Security.Cryptography;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Win32.SafeHandles;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Safetensors;

namespace Tapml.Testing.Carving;

/// <summary>Where a blob's bytes are: a range of a pack file, a file of its own (<c>blobs/&lt;name&gt;.safetensors</c>,
/// every v1 blob), or a model weight read from the model's own file.</summary>
public abstract record BlobLocation;
/// <summary><paramref name="Length"/> bytes at <paramref name="Offset"/> of <c>packs/&lt;Pack&gt;.pack</c>.</summary>
public sealed record PackedBlob(int Pack, long Offset, long Length) : BlobLocation;
/// <summary><c>blobs/&lt;name&gt;.safetensors</c>.</summary>
public sealed record FileBlob : BlobLocation;
/// <summary>A model weight stored by reference: tensor <see cref="InitializerSource.Tensor"/> of
/// <see cref="InitializerSource.File"/> (transformed as it says), which must be <paramref name="DType"/>
/// <paramref name="Shape"/> and whose blob image has the SHA-256 <paramref name="Sha256"/> (v2: the blob's name).</summary>
public sealed record WeightBlob(InitializerSource Source, DType DType, long[] Shape, string Sha256) : BlobLocation;
/// <summary>A uniform ("splat") tensor: every element of <paramref name="DType"/> <paramref name="Shape"/> has the
/// bytes <paramref name="Value"/> (one element, little-endian). Nothing is stored; its blob name is the hash of
/// these fields (<see cref="CarvedStore.SplatName"/>), which is what replay checks.</summary>
public sealed record SplatBlob(DType DType, long[] Shape, byte[] Value) : BlobLocation;

/// <summary>A carved test store (DESIGN.md, docs/carving.md "Store format"): <c>manifest.json</c> and the blobs its
/// cases name, each blob one tensor as a one-tensor safetensors image named by the hash of those bytes, so a
/// tensor used by many cases is stored once. Format v3 (written) appends blobs to <c>packs/0.pack</c>, names them by
/// XXH3-128 and stores model weights by reference with their SHA-256 (unless asked to embed them); v2 (the same
/// layout, every name a SHA-256) and v1 (<c>blobs/&lt;sha256&gt;.safetensors</c>, one file each) are read too. A
/// background writer appends blobs; the manifest, rewritten atomically (temporary file + rename) after the pack's
/// bytes are written, names only blobs whose bytes are written, so a store whose writer was killed still loads,
/// with the cases of its last manifest. Every blob is checked against its name when read.</summary>
public sealed class CarvedStore
{
    public const string FormatName = "tapml-carved-store/3";
    public const string FormatV2 = "tapml-carved-store/2";
    public const string FormatV1 = "tapml-carved-store/1";
    const string BlobTensorName = "tensor";

    readonly Dictionary<string, Tensor> _verified = new();
    readonly HashSet<string> _checked = new();
    readonly ConcurrentDictionary<string, BlobLocation> _index = new();
    readonly Dictionary<int, SafeFileHandle> _packs = new();
    WeightFiles? _weightFiles;

    public string Dir { get; }
    /// <summary>The store's format: <see cref="FormatName"/>, <see cref="FormatV2"/> or <see cref="FormatV1"/>.</summary>
    public string Format { get; private set; } = FormatName;
    public string ManifestPath => Path.Combine(Dir, "manifest.json");
    public string BlobDir => Path.Combine(Dir, "blobs");
    public string PackDir => Path.Combine(Dir, "packs");
    public string ModelName { get; private set; } = "";
    public string ModelSha256 { get; private set; } = "";
    public string Source { get; private set; } = "";
    public List<CarvedCase> Cases { get; } = new();
    /// <summary>Extra manifest fields (carve options, counts of nodes not carved and why).</summary>
    public JsonObject Notes { get; } = new();
    /// <summary>Where each blob is, by name (v1 stores: every blob a case names, as a <see cref="FileBlob"/>).</summary>
    public IReadOnlyDictionary<string, BlobLocation> Blobs => _index;

    CarvedStore(string dir) => Dir = dir;

    public string PackPath(int pack) => Path.Combine(PackDir, $"{pack}.pack");
    public string BlobPath(string name) => Path.Combine(BlobDir, name + ".safetensors");

    /// <summary>v3 names every blob by XXH3-128 (32 hex digits); v1 and v2 by SHA-256 (64).</summary>
    bool Sha256Names => Format != FormatName;

    /// <summary>Starts a new store (format v2) in <paramref name="dir"/> (created; must not hold a store already).
    /// Its folders and empty manifest are written by the background writer, first thing.</summary>
    public static CarvedStore Create(string dir, string modelName, string modelSha256, string source)
    {
        if (File.Exists(Path.Combine(dir, "manifest.json")))
            throw new TapmlException($"{dir} already holds a carved store (manifest.json); choose another --out or remove it");
        if (File.Exists(dir)) throw new TapmlException($"{dir} is a file, not a folder");
        var s = new CarvedStore(dir) { ModelName = modelName, ModelSha256 = modelSha256, Source = source };
        s._writer = new Writer(s);
        s.QueueManifest();
        return s;
    }

    /// <summary>Opens a store (v1 or v2); the manifest is checked (format, fields), blobs are checked when read.</summary>
    public static CarvedStore Open(string dir)
    {
        var s = new CarvedStore(dir);
        if (!Directory.Exists(dir)) throw new TapmlException($"carved store '{dir}' not found");
        if (!File.Exists(s.ManifestPath) && !Directory.Exists(s.ManifestPath)) throw new TapmlException($"{dir} is not a carved store (no manifest.json)");
        string manifest = SafePaths.Contained(dir, "manifest.json", s.ManifestPath);
        long size = new FileInfo(manifest).Length;
        // NOTE: a parsed JSON tree takes several times the text's bytes.
        ResourceBudget.Reserve(ManifestParseFactor * size, $"{s.ManifestPath} ({ResourceBudget.Format(size)}) parsed");
        var root = ManifestJson.Parse(File.ReadAllBytes(manifest), s.ManifestPath);
        if (root is not JsonObject o) throw new TapmlException($"{s.ManifestPath}: not a JSON object");
        string? format = o["format"] is JsonValue fv && fv.TryGetValue(out string? f) ? f : null;
        if (format is not (FormatName or FormatV2 or FormatV1)) throw new TapmlException($"{s.ManifestPath}: format '{TapmlException.Bounded(format, 60)}' is not {FormatName} (or {FormatV2}, {FormatV1})");
        s.Format = format;
        if (o["model"] is not (null or JsonObject)) throw ManifestJson.Wrong(s.ManifestPath, "model", "an object", o["model"]);
        var model = o["model"] as JsonObject ?? new JsonObject();
        s.ModelName = ManifestJson.OptStr(model, "name", $"{s.ManifestPath}: model") ?? "";
        s.ModelSha256 = ManifestJson.OptStr(model, "sha256", $"{s.ManifestPath}: model") ?? "";
        s.Source = ManifestJson.OptStr(o, "source", s.ManifestPath) ?? "";
        if (o["notes"] is JsonObject notes) foreach (var (k, v) in notes) s.Notes[k] = v?.DeepClone();
        if (o["cases"] is not JsonArray cases) throw ManifestJson.Wrong(s.ManifestPath, "cases", "an array", o["cases"]);
        var ids = new HashSet<string>();
        foreach (var c in cases)
        {
            var cc = CarvedCase.FromJson(c, s.ManifestPath);
            if (!ids.Add(cc.Id)) throw new TapmlException($"{s.ManifestPath}: case id {TapmlException.Bounded(cc.Id, 100)} appears twice");
            s.Cases.Add(cc);
        }
        if (format == FormatV1)
        {
            foreach (var c in s.Cases)
                foreach (var b in c.Blobs)
                    s._index[b] = IsHex(b, 64) ? new FileBlob() : throw new TapmlException($"{s.ManifestPath}: case {c.Id}: blob '{TapmlException.Bounded(b, 80)}' is not a SHA-256 in lower-case hex");
            return s;
        }
        if (o["blobs"] is not JsonObject blobs) throw ManifestJson.Wrong(s.ManifestPath, "blobs", "an object", o["blobs"]);
        foreach (var (name, entry) in blobs) s._index[name] = ParseLocation(name, entry, s.ManifestPath, s.Sha256Names);
        foreach (var c in s.Cases)
            foreach (var b in c.Blobs)
                if (!s._index.ContainsKey(b)) throw new TapmlException($"{s.ManifestPath}: case {c.Id} names blob {TapmlException.Bounded(b, 80)}, which \"blobs\" does not list");
        return s;
    }

    static bool IsHex(string? s, int length) => s is not null && s.Length == length && s.All(char.IsAsciiHexDigitLower);

    const int ManifestParseFactor = 8;

    static BlobLocation ParseLocation(string name, JsonNode? entry, string origin, bool sha256Names)
    {
        string where = $"{origin}: blob {TapmlException.Bounded(name, 80)}";
        if (!IsHex(name, sha256Names ? 64 : 32)) throw new TapmlException($"{where}: not {(sha256Names ? "a SHA-256" : "an XXH3-128")} in lower-case hex");
        if (entry is not JsonObject e) throw ManifestJson.Wrong(where, "entry", "a JSON object", entry);
        if (e["pack"] is not null)
        {
            long offset = ManifestJson.Long(e, "offset", where, 0, long.MaxValue), length = ManifestJson.Long(e, "length", where, 8, Array.MaxLength);
            return new PackedBlob((int)ManifestJson.Long(e, "pack", where, 0, 1 << 20), offset, length);
        }
        if (e["file"] is not null) { ManifestJson.Str(e, "file", where); return new FileBlob(); }
        if (e["splat"] is not null)
        {
            var dtype = ParseDType(e, where);
            var shape = ManifestJson.Shape(e, "shape", where);
            string hex = ManifestJson.Str(e, "splat", where);
            int size = dtype == DType.String ? 0 : DTypes.Size(dtype);
            if (size is not (1 or 2 or 4 or 8) || !DTypes.IsSupported(dtype)) throw new TapmlException($"{where}: a splat cannot be {DTypes.Name(dtype)}");
            if (hex.Length != 2 * size || !hex.All(char.IsAsciiHexDigitLower)) throw new TapmlException($"{where}: \"splat\" must be {size} bytes in lower-case hex");
            if (ShapeUtil.Size(shape) < 1) throw new TapmlException($"{where}: a splat needs a shape with at least one element");
            return new SplatBlob(dtype, shape, Convert.FromHexString(hex));
        }
        if (e["model_file"] is not null)
        {
            var dtype = ParseDType(e, where);
            var shape = ManifestJson.Shape(e, "shape", where);
            var src = new InitializerSource(ManifestJson.Str(e, "model_file", where), ManifestJson.Str(e, "tensor", where), ManifestJson.OptStr(e, "transform", where) ?? "");
            if (src.Transform is not ("" or "transpose")) throw new TapmlException($"{where}: unknown transform '{TapmlException.Bounded(src.Transform, 40)}'");
            string? sha = sha256Names ? name : ManifestJson.OptStr(e, "sha256", where);
            if (!IsHex(sha, 64)) throw new TapmlException($"{where}: \"sha256\" must be a SHA-256 in lower-case hex");
            return new WeightBlob(src, dtype, shape, sha!);
        }
        throw new TapmlException($"{where}: neither \"pack\", \"file\", \"model_file\" nor \"splat\"");
    }

    static DType ParseDType(JsonObject e, string where)
    {
        string dt = ManifestJson.Str(e, "dtype", where);
        try { return DTypes.Parse(dt); }
        catch (TapmlException) { throw new TapmlException($"{where}: unknown dtype '{TapmlException.Bounded(dt, 40)}'"); }
    }

    // --- writing --------------------------------------------------------------------------------------------------

    Writer? _writer;

    /// <summary>Stores <paramref name="t"/> as a blob (unless an identical one exists) and returns its name, the
    /// XXH3-128 of the blob's bytes (computed here). The bytes are copied into the pack's staging chunks, which the
    /// background writer appends; a manifest written later names them only after they are written. Returns the bytes
    /// staged in <paramref name="written"/> (0 when deduplicated).</summary>
    public string Put(Tensor t, out long written)
    {
        _ = _writer ?? throw new TapmlException($"{Dir}: the store was opened for reading; carve into a new store");
        written = 0;
        if (UniformValue(t) is { } value)
        {
            // NOTE: constant fills (ConstantOfShape weights, zero caches, masks) are named by their fields, not hashed.
            string id = SplatName(t.DType, t.Shape, value);
            _index.TryAdd(id, new SplatBlob(t.DType, (long[])t.Shape.Clone(), value));
            return id;
        }
        byte[] header = BlobHeader(t);
        _hasher.Append(header);
        _hasher.Append(t.Bytes());
        string name = Hex(_hasher);
        if (_index.TryGetValue(name, out var existing) && existing is not WeightBlob) return name;
        long length = header.Length + t.ByteSize;
        _index[name] = new PackedBlob(0, _packEnd, length);
        Stage(header);
        Stage(t.Bytes());
        written = length;
        return name;
    }

    // NOTE: XXH3-128, not SHA-256: hashing the distinct activations was most of a carve's cost (docs/benchmarks.md).
    readonly XxHash128 _hasher = new();

    static string Hex(XxHash128 h)
    {
        Span<byte> b = stackalloc byte[16];
        h.GetHashAndReset(b);
        return Convert.ToHexStringLower(b);
    }
    // NOTE: the carve copies blobs into staging chunks (so the run's tensors are not kept alive for the disk); the pack
    // ends at _chunkOffset + _chunkLength, and _chunkOffset is always a multiple of DirectFile.Align.
    PackChunk? _chunk;
    long _chunkOffset;
    int _chunkLength;
    bool _staged;

    long _packEnd => _chunkOffset + _chunkLength;

    void Stage(ReadOnlySpan<byte> bytes)
    {
        while (bytes.Length > 0)
        {
            var chunk = _chunk ??= _writer!.TakeChunk();
            int n = Math.Min(bytes.Length, DirectFile.ChunkBytes - _chunkLength);
            bytes[..n].CopyTo(chunk.Span[_chunkLength..]);
            _chunkLength += n;
            _staged = true;
            bytes = bytes[n..];
            if (_chunkLength < DirectFile.ChunkBytes) continue;
            _writer!.Append(chunk, _chunkOffset, _chunkLength);
            (_chunk, _chunkOffset, _chunkLength, _staged) = (null, _chunkOffset + _chunkLength, 0, false);
        }
    }

    /// <summary>Hands the staged bytes to the writer (before a manifest names them); the last partial block stays
    /// staged, at the start of a fresh chunk, since the next write covers it again.</summary>
    void HandOverStaged()
    {
        if (!_staged || _chunk is not { } chunk) return;
        int aligned = _chunkLength / DirectFile.Align * DirectFile.Align, tail = _chunkLength - aligned;
        var next = _writer!.TakeChunk();
        chunk.Span.Slice(aligned, tail).CopyTo(next.Span);
        _writer.Append(chunk, _chunkOffset, _chunkLength);
        (_chunk, _chunkOffset, _chunkLength, _staged) = (next, _chunkOffset + aligned, tail, false);
    }

    /// <summary>Records <paramref name="t"/>, a model weight whose bytes <paramref name="source"/> gives back, by
    /// reference with its SHA-256 (nothing is written); returns its blob name (the same as <see cref="Put"/> would give).</summary>
    public string PutWeight(Tensor t, InitializerSource source)
    {
        string name = BlobName(t);
        if (_index.ContainsKey(name)) return name;
        // NOTE: the SHA-256 is computed by the writer thread when it renders the entry (a model's weights are hundreds of MB).
        lock (_pendingWeights) _pendingWeights[name] = t;
        _index.TryAdd(name, new WeightBlob(source, t.DType, (long[])t.Shape.Clone(), ""));
        return name;
    }

    readonly Dictionary<string, Tensor> _pendingWeights = new();

    /// <summary>The weight entry <paramref name="r"/> of blob <paramref name="name"/> with its SHA-256 (computed now if
    /// the carve left it to the writer).</summary>
    WeightBlob WithSha(string name, WeightBlob r)
    {
        if (r.Sha256 != "") return r;
        lock (_pendingWeights)
        {
            if (_index.TryGetValue(name, out var now) && now is WeightBlob { Sha256: not "" } done) return done;
            var t = _pendingWeights[name];
            var hashed = r with { Sha256 = BlobSha(t) };
            _index[name] = hashed;
            _pendingWeights.Remove(name);
            return hashed;
        }
    }

    /// <summary>The bytes of the one element <paramref name="t"/> repeats when all its elements have the same bit
    /// pattern (and it has at least one), else null. Vectorized; stops at the first element that differs.</summary>
    public static byte[]? UniformValue(Tensor t)
    {
        if (t.DType == DType.String || t.Length == 0) return null;
        ReadOnlySpan<byte> b = t.Bytes();
        int size = DTypes.Size(t.DType);
        bool uniform = size switch
        {
            1 => b.IndexOfAnyExcept(b[0]) < 0,
            2 => Except(MemoryMarshal.Cast<byte, ushort>(b)),
            4 => Except(MemoryMarshal.Cast<byte, uint>(b)),
            8 => Except(MemoryMarshal.Cast<byte, ulong>(b)),
            _ => false,
        };
        return uniform ? b[..size].ToArray() : null;

        static bool Except<T>(ReadOnlySpan<T> s) where T : unmanaged, IEquatable<T> => s.IndexOfAnyExcept(s[0]) < 0;
    }

    /// <summary>The blob name of a splat: the XXH3-128 (v2: SHA-256) of <c>tapml-splat|DTYPE|D0,D1,…|VALUEHEX</c> (UTF-8).</summary>
    public static string SplatName(DType dtype, long[] shape, ReadOnlySpan<byte> value, bool sha256 = false)
    {
        var text = System.Text.Encoding.UTF8.GetBytes($"tapml-splat|{DTypes.Name(dtype)}|{string.Join(",", shape)}|{Convert.ToHexStringLower(value)}");
        return Convert.ToHexStringLower(sha256 ? SHA256.HashData(text) : XxHash128.Hash(text));
    }

    static Tensor Materialize(SplatBlob s)
    {
        var t = Tensor.Uninitialized(s.DType, (long[])s.Shape.Clone());
        Span<byte> b = t.Bytes();
        switch (s.Value.Length)
        {
            case 1: b.Fill(s.DType == DType.Bool && s.Value[0] > 1 ? (byte)1 : s.Value[0]); break;
            case 2: MemoryMarshal.Cast<byte, ushort>(b).Fill(BitConverter.ToUInt16(s.Value)); break;
            case 4: MemoryMarshal.Cast<byte, uint>(b).Fill(BitConverter.ToUInt32(s.Value)); break;
            default: MemoryMarshal.Cast<byte, ulong>(b).Fill(BitConverter.ToUInt64(s.Value)); break;
        }
        return t;
    }

    /// <summary>The SHA-256 of <paramref name="t"/>'s one-tensor safetensors image (a v2 blob name; a v3 weight's check).</summary>
    public static string BlobSha(Tensor t) => Sha(BlobHeader(t), t);

    /// <summary>The v3 blob name of <paramref name="t"/>: the XXH3-128 of its one-tensor safetensors image, as the 16
    /// bytes of its canonical (big-endian) form in lower-case hex.</summary>
    public static string BlobName(Tensor t)
    {
        var h = new XxHash128();
        h.Append(BlobHeader(t));
        h.Append(t.Bytes());
        return Hex(h);
    }

    /// <summary>The name this store's format gives to the blob image <paramref name="image"/>.</summary>
    string NameOf(ReadOnlySpan<byte> image) => Convert.ToHexStringLower(Sha256Names ? SHA256.HashData(image) : XxHash128.Hash(image));

    /// <summary>The header of <paramref name="t"/>'s blob image, the same bytes as
    /// <c>SafetensorsWriter.Header([new("tensor", t)])</c> (length, JSON, spaces to a multiple of 8), written by hand:
    /// it is built for every blob a carve stores, and the JSON writer's setup cost more than hashing a small blob.</summary>
    public static byte[] BlobHeader(Tensor t)
    {
        if (t.Rank > 32) return SafetensorsWriter.Header([new(BlobTensorName, t)]);
        Span<byte> json = stackalloc byte[128 + 21 * 34];
        int n = 0;
        void Put(ReadOnlySpan<byte> b, Span<byte> dst) { b.CopyTo(dst[n..]); n += b.Length; }
        void Num(long v, Span<byte> dst) { v.TryFormat(dst[n..], out int w, default, System.Globalization.CultureInfo.InvariantCulture); n += w; }
        Put("{\"tensor\":{\"dtype\":\""u8, json);
        n += System.Text.Encoding.ASCII.GetBytes(SafetensorsFile.DTypeName(t.DType), json[n..]);
        Put("\",\"shape\":["u8, json);
        for (int i = 0; i < t.Shape.Length; i++) { if (i > 0) Put(","u8, json); Num(t.Shape[i], json); }
        Put("],\"data_offsets\":[0,"u8, json);
        Num(t.Length * DTypes.Size(t.DType), json);
        Put("]}}"u8, json);
        int pad = (8 - n % 8) % 8;
        var r = new byte[8 + n + pad];
        BitConverter.TryWriteBytes(r, (ulong)(n + pad));
        json[..n].CopyTo(r.AsSpan(8));
        r.AsSpan(8 + n).Fill((byte)' ');
        return r;
    }

    static string Sha(byte[] header, Tensor t)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        h.AppendData(header);
        h.AppendData(t.Bytes());
        return Convert.ToHexStringLower(h.GetHashAndReset());
    }

    /// <summary>Rewrites manifest.json atomically, after every blob put so far is written; returns when it is on disk.</summary>
    public void SaveManifest()
    {
        QueueManifest();
        Drain();
    }

    /// <summary>Queues a manifest of the cases as they are now; the writer writes it after the blobs queued before it.</summary>
    public void QueueManifest()
    {
        var w = _writer ?? throw new TapmlException($"{Dir}: the store was opened for reading; carve into a new store");
        HandOverStaged();
        w.Manifest(Cases.ToArray(), (JsonObject)Notes.DeepClone());
    }

    /// <summary>Waits until everything queued is written (blobs and manifests).</summary>
    public void Drain()
    {
        if (_writer is not { } w) return;
        w.Wait();
        if (w.Error is { } e) throw new TapmlException($"{Dir}: cannot write the store ({e.Message})", e);
    }

    /// <summary>Writes the manifest of <paramref name="cases"/> into <paramref name="buffer"/> (cleared first).</summary>
    void ManifestBytes(CarvedCase[] cases, JsonObject notes, System.Buffers.ArrayBufferWriter<byte> buffer)
    {
        buffer.ResetWrittenCount();
        // NOTE: compact and with relaxed escaping: signatures hold JSON text, and the final manifest is on the carve's critical path.
        using (var w = new Utf8JsonWriter(buffer, ManifestWriting))
        {
            w.WriteStartObject();
            w.WriteString("format", FormatName);
            w.WriteStartObject("model");
            w.WriteString("name", ModelName);
            w.WriteString("sha256", ModelSha256);
            w.WriteEndObject();
            w.WriteString("source", Source);
            w.WritePropertyName("notes");
            notes.WriteTo(w);
            w.WriteStartObject("blobs");
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var c in cases)
            {
                foreach (var t in c.Inputs) Entry(t.Blob);
                foreach (var t in c.Outputs) Entry(t.Blob);
            }
            void Entry(string? name)
            {
                if (name is null || !seen.Add(name)) return;
                w.WritePropertyName(name);
                WriteBlobEntry(w, name);
            }
            w.WriteEndObject();
            w.WriteStartArray("cases");
            w.Flush();
            // NOTE: the cases are the manifest's last member; each is its head rendered while carving (or now) plus its count.
            Span<byte> digits = stackalloc byte[24];
            for (int i = 0; i < cases.Length; i++)
            {
                var c = cases[i];
                if (i > 0) buffer.Write(","u8);
                if (_heads.TryGetValue(c.Inputs, out var h) && SameHead(h.Case, c)) buffer.Write(h.Head);
                else RenderHead(c, buffer);
                System.Buffers.Text.Utf8Formatter.TryFormat(c.Provenance.Count, digits, out int n);
                buffer.Write(digits[..n]);
                buffer.Write("}}"u8);
            }
            buffer.Write("]}"u8);
        }
    }

    /// <summary>Rendered case heads (<see cref="CarvedCase.WriteJsonHead"/>), keyed by the case's input list: a case
    /// whose count changed (<c>with</c>) shares it; a case in a new slot has a new one.</summary>
    readonly ConcurrentDictionary<object, (CarvedCase Case, byte[] Head)> _heads = new(ReferenceEqualityComparer.Instance);

    /// <summary>Renders <paramref name="c"/>'s manifest head now (the carving thread does, off the run), so the
    /// final manifest copies it; <paramref name="replaced"/>'s is dropped.</summary>
    public void PreRender(CarvedCase c, CarvedCase? replaced = null)
    {
        if (replaced is not null) _heads.TryRemove(replaced.Inputs, out _);
        var b = new ArrayBufferWriter<byte>(1024);
        RenderHead(c, b);
        _heads[c.Inputs] = (c, b.WrittenSpan.ToArray());
    }

    static void RenderHead(CarvedCase c, IBufferWriter<byte> buffer)
    {
        using var w = new Utf8JsonWriter(buffer, ManifestWriting);
        c.WriteJsonHead(w);
    }

    /// <summary>Whether <paramref name="b"/> renders to <paramref name="a"/>'s head: the same case but for its count.</summary>
    static bool SameHead(CarvedCase a, CarvedCase b) =>
        ReferenceEquals(a, b) || ReferenceEquals(a.Outputs, b.Outputs) && ReferenceEquals(a.Id, b.Id) && ReferenceEquals(a.Signature, b.Signature)
        && a.Opset == b.Opset && a.Domain == b.Domain && ReferenceEquals(a.AttributesText, b.AttributesText) && ReferenceEquals(a.Attributes, b.Attributes)
        && a.Provenance.Node == b.Provenance.Node && a.Provenance.Phase == b.Provenance.Phase;

    static readonly JsonWriterOptions ManifestWriting = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping, SkipValidation = true };

    void WriteBlobEntry(Utf8JsonWriter w, string name)
    {
        w.WriteStartObject();
        switch (_index[name])
        {
            case PackedBlob p:
                w.WriteNumber("pack", p.Pack);
                w.WriteNumber("offset", p.Offset);
                w.WriteNumber("length", p.Length);
                break;
            case FileBlob:
                w.WriteString("file", Path.GetRelativePath(Dir, BlobPath(name)));
                break;
            case WeightBlob r:
                w.WriteString("sha256", WithSha(name, r).Sha256);
                w.WriteString("model_file", r.Source.File);
                w.WriteString("tensor", r.Source.Tensor);
                if (r.Source.Transform != "") w.WriteString("transform", r.Source.Transform);
                w.WriteString("dtype", DTypes.Name(r.DType));
                w.WriteStartArray("shape");
                foreach (var d in r.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                break;
            case SplatBlob z:
                w.WriteString("splat", Convert.ToHexStringLower(z.Value));
                w.WriteString("dtype", DTypes.Name(z.DType));
                w.WriteStartArray("shape");
                foreach (var d in z.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                break;
        }
        w.WriteEndObject();
    }

    /// <summary>The background writer: one thread that creates the folders, writes the pack's chunks and the
    /// manifests, in the order they were queued (so a manifest follows the blobs it names).</summary>
    sealed class Writer
    {
        // NOTE: at most this many staging chunks exist; when all wait for the disk, the carve waits too.
        const int MaxChunks = 6;
        readonly CarvedStore _s;
        // NOTE: an item is a chunk (Length bytes at file Offset) or a manifest.
        readonly Queue<(PackChunk? Chunk, long Offset, int Length, CarvedCase[]? Cases, JsonObject? Notes, ArrayBufferWriter<byte>? Rendered)> _queue = new();
        readonly Stack<PackChunk> _free = new();
        readonly object _lock = new();
        long _queued, _done;
        int _chunks;
        bool _idle;
        Thread? _thread;
        DirectFile? _pack;
        PackChunk? _scratch;
        System.Buffers.ArrayBufferWriter<byte>? _json;
        bool _opened;
        public Exception? Error;

        public Writer(CarvedStore s) => _s = s;

        public void Append(PackChunk chunk, long offset, int length) => Enqueue((chunk, offset, length, null, null, null));
        public void Manifest(CarvedCase[] cases, JsonObject notes) => Enqueue((null, 0, 0, cases, notes, null));
        /// <summary>A manifest already rendered (the final one, rendered by the carve while this thread writes the pack's tail).</summary>
        public void Manifest(ArrayBufferWriter<byte> rendered) => Enqueue((null, 0, 0, null, null, rendered));

        /// <summary>A free staging chunk; waits for the writer when <see cref="MaxChunks"/> are in use.</summary>
        public PackChunk TakeChunk()
        {
            lock (_lock)
            {
                while (_free.Count == 0 && _chunks >= MaxChunks) Monitor.Wait(_lock);
                if (_free.Count > 0) return _free.Pop();
                _chunks++;
            }
            return Spare.TryTake(out var c) ? c : new PackChunk();
        }

        // NOTE: chunks outlive their store (pinned, already touched): the next carve of the process starts with them.
        static readonly ConcurrentBag<PackChunk> Spare = new();
        // NOTE: manifest buffers outlive their store too (a fresh one grows through large-object arrays, ~1 ms for 300 KB).
        internal static readonly ConcurrentBag<ArrayBufferWriter<byte>> SpareJson = new();

        void ReturnChunks()
        {
            lock (_lock)
            {
                while (_free.Count > 0) { Spare.Add(_free.Pop()); _chunks--; }
            if (_scratch is { } s) Spare.Add(s);
            if (_json is { Capacity: <= DirectFile.ChunkBytes } j) SpareJson.Add(j);
            (_scratch, _json) = (null, null);
            }
        }

        void Enqueue((PackChunk?, long, int, CarvedCase[]?, JsonObject?, ArrayBufferWriter<byte>?) item)
        {
            lock (_lock)
            {
                _queue.Enqueue(item);
                _queued++;
                if (_thread is null)
                {
                    _thread = new Thread(Loop) { IsBackground = true, Name = "carved store writer" };
                    _thread.Start();
                }
                if (_idle) Monitor.PulseAll(_lock);
            }
        }

        public void Wait()
        {
            lock (_lock)
                while (_done < _queued) Monitor.Wait(_lock);
        }

        void Loop()
        {
            while (true)
            {
                (PackChunk? Chunk, long Offset, int Length, CarvedCase[]? Cases, JsonObject? Notes, ArrayBufferWriter<byte>? Rendered) item;
                lock (_lock)
                {
                    while (_queue.Count == 0) { _idle = true; Monitor.Wait(_lock); }
                    _idle = false;
                    item = _queue.Dequeue();
                }
                if (Error is null)
                {
                    try
                    {
                        if (item.Chunk is { } chunk) Pack().Write(chunk, item.Offset, item.Length);
                        else WriteManifest(item.Cases, item.Notes, item.Rendered);
                    }
                    catch (Exception e) when (e is not OutOfMemoryException) { Error = e; }   // NOTE: rethrown by Drain
                }
                lock (_lock)
                {
                    if (item.Chunk is { } chunk) _free.Push(chunk);
                    _done++;
                    Monitor.PulseAll(_lock);
                }
            }
        }

        DirectFile Pack()
        {
            if (_pack is not null) return _pack;
            Directory.CreateDirectory(_s.PackDir);
            // NOTE: a killed writer leaves bytes past the last manifest's, never read.
            _pack = new DirectFile(_s.PackPath(0), create: !_opened);
            _opened = true;
            return _pack;
        }

        void WriteManifest(CarvedCase[]? cases, JsonObject? notes, ArrayBufferWriter<byte>? rendered)
        {
            Directory.CreateDirectory(_s.Dir);
            string tmp = _s.ManifestPath + ".tmp";
            // NOTE: the writer's own chunk: taking one from the carve's could wait for chunks queued behind this manifest.
            _scratch ??= Spare.TryTake(out var c) ? c : new PackChunk();
            // NOTE: one JSON buffer per writer, reused: a fresh one per manifest grows through large-object arrays.
            if (rendered is null)
            {
                _json ??= SpareJson.TryTake(out var b) ? b : new System.Buffers.ArrayBufferWriter<byte>(1 << 16);
                _s.ManifestBytes(cases!, notes!, _json);
                rendered = _json;
            }
            DirectFile.WriteAll(tmp, rendered.WrittenSpan, _scratch);
            File.Move(tmp, _s.ManifestPath, overwrite: true);
        }

        /// <summary>Waits for the queue, then cuts the pack at <paramref name="end"/> and closes it.</summary>
        public void Close(long end)
        {
            Wait();
            _pack?.Close(end);
            _pack = null;
            ReturnChunks();
        }
    }

    /// <summary>Writes the final manifest and closes the pack; the store can still be read.</summary>
    public void Close()
    {
        if (_writer is not { } w) return;
        // NOTE: the last manifest is rendered here while the writer writes the pack's tail, then written after it.
        HandOverStaged();
        var json = Writer.SpareJson.TryTake(out var spare) ? spare : new ArrayBufferWriter<byte>(1 << 16);
        ManifestBytes(Cases.ToArray(), Notes, json);
        w.Manifest(json);
        Drain();
        w.Close(_packEnd);
        if (json.Capacity <= DirectFile.ChunkBytes) Writer.SpareJson.Add(json);
    }

    // --- reading --------------------------------------------------------------------------------------------------

    /// <summary>Reads a blob after checking its hash; a missing or corrupt blob (or a by-reference weight whose
    /// model file moved or changed) is an error naming the store, the case and the file.</summary>
    public Tensor Read(string sha, string caseId)
    {
        // NOTE: one store may serve several replays at once (one per target); its caches and pack handles are shared.
        lock (_verified) return ReadLocked(sha, caseId);
    }

    Tensor ReadLocked(string sha, string caseId)
    {
        if (_verified.TryGetValue(sha, out var cached)) return cached;
        if (!_index.TryGetValue(sha, out var loc))
            throw new TapmlException($"{Dir}: case {caseId} needs blob {sha}, which the manifest does not list");
        Tensor t;
        if (loc is WeightBlob r) t = ReadWeight(sha, WithSha(sha, r), caseId);
        else if (loc is SplatBlob z)
        {
            CheckSplat(sha, z, caseId);
            long bytes = ShapeUtil.Size(z.Shape) * z.Value.Length;
            ResourceBudget.Reserve(bytes, $"{ManifestPath}: splat blob {sha[..16]}… of case {caseId} ({DTypes.Name(z.DType)}{ShapeUtil.Format(z.Shape)})");
            t = Materialize(z);
        }
        else
        {
            if (_writer is { } w) { HandOverStaged(); w.Wait(); }
            var (bytes, path) = ReadBlobBytes(sha, loc, caseId);
            if (!_checked.Contains(sha))
            {
                string actual = NameOf(bytes);
                if (actual != sha)
                    throw new TapmlException($"{path}: blob of case {caseId} is corrupt (its {(Sha256Names ? "SHA-256" : "XXH3-128")} is {actual[..16]}…, the store names it {sha})");
                _checked.Add(sha);
            }
            t = SafetensorsFile.ReadFromBytes(bytes, BlobTensorName, $"{path}: blob {sha} of case {caseId}");
        }
        // NOTE: a small cache: weights recur in many cases and are hashed once per replay.
        if (_verified.Count > 256) _verified.Clear();
        _verified[sha] = t;
        return t;
    }

    void CheckSplat(string sha, SplatBlob z, string caseId)
    {
        if (_checked.Contains(sha)) return;
        string actual = SplatName(z.DType, z.Shape, z.Value, Sha256Names);
        if (actual != sha)
            throw new TapmlException($"{ManifestPath}: splat blob {sha[..16]}… of case {caseId} is corrupt (its dtype, shape and value hash to {actual[..16]}…)");
        _checked.Add(sha);
    }

    /// <summary>Checks every blob <paramref name="cases"/> name (hashes, weight files) before a replay, so a damaged
    /// or moved store is one error up front instead of one per case.</summary>
    public void Verify(IEnumerable<CarvedCase> cases)
    {
        lock (_verified)
            foreach (var c in cases)
                foreach (var sha in c.Blobs)
                    if (_index.GetValueOrDefault(sha) is SplatBlob z) CheckSplat(sha, z, c.Id);   // NOTE: nothing to read: not materialized
                    else if (!_checked.Contains(sha) && !_verified.ContainsKey(sha)) Read(sha, c.Id);
    }

    (byte[] Bytes, string Path) ReadBlobBytes(string sha, BlobLocation loc, string caseId)
    {
        if (loc is FileBlob)
        {
            string path = BlobPath(sha);
            if (!File.Exists(path) && !Directory.Exists(path)) throw new TapmlException($"{Dir}: case {caseId} needs blob {sha}, which is missing ({path})");
            string real = SafePaths.Contained(Dir, Path.GetRelativePath(Dir, path), $"{path} (blob of case {caseId})");
            long length = new FileInfo(real).Length;
            ResourceBudget.Reserve(length, $"{path} (blob of case {caseId})");
            return (File.ReadAllBytes(real), path);
        }
        var p = (PackedBlob)loc;
        string pack = PackPath(p.Pack);
        if (!_packs.TryGetValue(p.Pack, out var handle))
        {
            if (!File.Exists(pack) && !Directory.Exists(pack)) throw new TapmlException($"{Dir}: case {caseId} needs blob {sha} from {pack}, which is missing");
            string real = SafePaths.Contained(Dir, Path.GetRelativePath(Dir, pack), pack);
            _packs[p.Pack] = handle = File.OpenHandle(real, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        }
        if (p.Length > Array.MaxLength || p.Offset > RandomAccess.GetLength(handle) - p.Length)
            throw new TapmlException($"{pack}: blob of case {caseId} is corrupt (bytes [{p.Offset}, {p.Offset}+{p.Length}) of {sha} run past the pack's end)");
        ResourceBudget.Reserve(p.Length, $"{pack}: blob {sha} of case {caseId}");
        var bytes = GC.AllocateUninitializedArray<byte>((int)p.Length);
        int n = RandomAccess.Read(handle, bytes, p.Offset);
        if (n != bytes.Length) throw new TapmlException($"{pack}: short read of blob {sha} of case {caseId}");
        return (bytes, pack);
    }

    Tensor ReadWeight(string sha, WeightBlob r, string caseId)
    {
        var src = r.Source;
        string what = $"{Dir}: case {caseId} reads weight '{src.Tensor}' from {src.File}";
        var t = (_weightFiles ??= new WeightFiles()).Load(src, r.DType, what);
        if (t.DType != r.DType || !t.Shape.AsSpan().SequenceEqual(r.Shape))
            throw new TapmlException($"{what}: it is {t.Describe()} now, the store says {DTypes.Name(r.DType)}{ShapeUtil.Format(r.Shape)} (the model changed since the carve?)");
        string actual = BlobSha(t);
        if (actual != r.Sha256)
            throw new TapmlException($"{what}: its bytes changed since the carve (SHA-256 {actual[..16]}…, the store says {r.Sha256[..16]}…); carve again, or carve with --embed-weights");
        _checked.Add(sha);
        return t;
    }

    // --- maintenance ----------------------------------------------------------------------------------------------

    /// <summary>Bytes of the blobs the manifest's cases name (each once), as stored in the store (weights stored by
    /// reference count 0).</summary>
    public long ReferencedBlobBytes()
    {
        _writer?.Wait();
        long sum = 0;
        foreach (var b in Cases.SelectMany(c => c.Blobs).Distinct())
            sum += _index.GetValueOrDefault(b) switch
            {
                PackedBlob p => p.Length,
                FileBlob => File.Exists(BlobPath(b)) ? new FileInfo(BlobPath(b)).Length : 0,
                _ => 0,
            };
        return sum;
    }

    /// <summary>Bytes of the uniform tensors the cases name as splats (each once; nothing is stored for them).</summary>
    public long ReferencedSplatBytes() => Cases.SelectMany(c => c.Blobs).Distinct()
        .Sum(b => _index.GetValueOrDefault(b) is SplatBlob z ? ShapeUtil.Size(z.Shape) * z.Value.Length : 0);

    /// <summary>Bytes of the model weights the cases read by reference (each once).</summary>
    public long ReferencedWeightBytes() => Cases.SelectMany(c => c.Blobs).Distinct()
        .Sum(b => _index.GetValueOrDefault(b) is WeightBlob w ? ShapeUtil.Size(w.Shape) * DTypes.Size(w.DType) : 0);

    /// <summary>Deletes blob files no case refers to and temporary files left by a killed writer; packed blobs of
    /// replaced cases stay in the pack (nothing names them; see docs/carving.md). Returns the files removed.</summary>
    public int RemoveUnreferencedBlobs()
    {
        _writer?.Wait();
        // NOTE: a v3 carve writes no blob files, and the entries of replaced cases in its index are never written out.
        if (!Directory.Exists(BlobDir)) return 0;
        var keep = Cases.SelectMany(c => c.Blobs).ToHashSet();
        int removed = 0;
        foreach (var f in Directory.EnumerateFiles(BlobDir))
        {
            string name = Path.GetFileName(f);
            if (name.EndsWith(".safetensors", StringComparison.Ordinal) && keep.Contains(name[..^".safetensors".Length])) continue;
            File.Delete(f);
            removed++;
        }
        foreach (var sha in _index.Keys.Where(k => !keep.Contains(k)).ToList()) _index.TryRemove(sha, out _);
        return removed;
    }

    /// <summary>Finds a case by exact id (or a unique prefix of one).</summary>
    public CarvedCase Find(string id)
    {
        var exact = Cases.FirstOrDefault(c => c.Id == id);
        if (exact is not null) return exact;
        var prefix = Cases.Where(c => c.Id.StartsWith(id, StringComparison.Ordinal)).ToList();
        return prefix.Count == 1 ? prefix[0]
            : throw new TapmlException(prefix.Count == 0 ? $"{Dir}: no case '{id}'" : $"{Dir}: '{id}' matches {prefix.Count} cases; give more of the id");
    }
}
