using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Win32.SafeHandles;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Safetensors;

namespace Tapml.Testing.Carving;

/// <summary>Where a blob's bytes are: a range of a pack file, a file of its own (<c>blobs/&lt;sha256&gt;.safetensors</c>,
/// every v1 blob), or a model weight read from the model's own file.</summary>
public abstract record BlobLocation;
/// <summary><paramref name="Length"/> bytes at <paramref name="Offset"/> of <c>packs/&lt;Pack&gt;.pack</c>.</summary>
public sealed record PackedBlob(int Pack, long Offset, long Length) : BlobLocation;
/// <summary><c>blobs/&lt;sha256&gt;.safetensors</c>.</summary>
public sealed record FileBlob : BlobLocation;
/// <summary>A model weight stored by reference: tensor <see cref="InitializerSource.Tensor"/> of
/// <see cref="InitializerSource.File"/> (transformed as it says), which must be <paramref name="DType"/>
/// <paramref name="Shape"/> and hash to the blob's name.</summary>
public sealed record WeightBlob(InitializerSource Source, DType DType, long[] Shape) : BlobLocation;
/// <summary>A uniform ("splat") tensor: every element of <paramref name="DType"/> <paramref name="Shape"/> has the
/// bytes <paramref name="Value"/> (one element, little-endian). Nothing is stored; its blob name is
/// <see cref="CarvedStore.SplatSha"/> of these fields, which is what replay checks.</summary>
public sealed record SplatBlob(DType DType, long[] Shape, byte[] Value) : BlobLocation;

/// <summary>A carved test store (DESIGN.md, docs/carving.md "Store format"): <c>manifest.json</c> and the blobs its
/// cases name, each blob one tensor as a one-tensor safetensors image named by the SHA-256 of those bytes, so a
/// tensor used by many cases is stored once. Format v2 (written) appends blobs to <c>packs/0.pack</c> and stores
/// model weights by reference (unless asked to embed them); v1 (<c>blobs/&lt;sha256&gt;.safetensors</c>, one file
/// each) is read too. A background writer appends blobs; the manifest, rewritten atomically (temporary file +
/// rename) after the pack is flushed, names only blobs whose bytes are written, so a store whose writer was killed
/// still loads, with the cases of its last manifest. Every blob is checked against its SHA-256 when read.</summary>
public sealed class CarvedStore
{
    public const string FormatName = "tapml-carved-store/2";
    public const string FormatV1 = "tapml-carved-store/1";
    const string BlobTensorName = "tensor";

    readonly Dictionary<string, Tensor> _verified = new();
    readonly HashSet<string> _checked = new();
    readonly ConcurrentDictionary<string, BlobLocation> _index = new();
    readonly Dictionary<int, SafeFileHandle> _packs = new();
    WeightFiles? _weightFiles;

    public string Dir { get; }
    /// <summary>The store's format: <see cref="FormatName"/> or <see cref="FormatV1"/>.</summary>
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
    /// <summary>Where each blob is, by SHA-256 (v1 stores: every blob a case names, as a <see cref="FileBlob"/>).</summary>
    public IReadOnlyDictionary<string, BlobLocation> Blobs => _index;

    CarvedStore(string dir) => Dir = dir;

    public string PackPath(int pack) => Path.Combine(PackDir, $"{pack}.pack");
    public string BlobPath(string sha) => Path.Combine(BlobDir, sha + ".safetensors");

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
        if (!File.Exists(s.ManifestPath)) throw new TapmlException($"{dir} is not a carved store (no manifest.json)");
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllBytes(s.ManifestPath)); }
        catch (JsonException e) { throw new TapmlException($"{s.ManifestPath}: not valid JSON ({e.Message})", e); }
        if (root is not JsonObject o) throw new TapmlException($"{s.ManifestPath}: not a JSON object");
        string? format = o["format"] is JsonValue fv && fv.TryGetValue(out string? f) ? f : null;
        if (format is not (FormatName or FormatV1)) throw new TapmlException($"{s.ManifestPath}: format '{format}' is not {FormatName} (or {FormatV1})");
        s.Format = format;
        s.ModelName = o["model"]?["name"]?.GetValue<string>() ?? "";
        s.ModelSha256 = o["model"]?["sha256"]?.GetValue<string>() ?? "";
        s.Source = o["source"]?.GetValue<string>() ?? "";
        if (o["notes"] is JsonObject notes) foreach (var (k, v) in notes) s.Notes[k] = v?.DeepClone();
        if (o["cases"] is not JsonArray cases) throw new TapmlException($"{s.ManifestPath}: no \"cases\" array");
        var ids = new HashSet<string>();
        foreach (var c in cases)
        {
            var cc = CarvedCase.FromJson(c, s.ManifestPath);
            if (!ids.Add(cc.Id)) throw new TapmlException($"{s.ManifestPath}: case id {cc.Id} appears twice");
            s.Cases.Add(cc);
        }
        if (format == FormatV1)
        {
            foreach (var c in s.Cases)
                foreach (var b in c.Blobs) s._index[b] = new FileBlob();
            return s;
        }
        if (o["blobs"] is not JsonObject blobs) throw new TapmlException($"{s.ManifestPath}: no \"blobs\" object");
        foreach (var (sha, entry) in blobs) s._index[sha] = ParseLocation(sha, entry, s.ManifestPath);
        foreach (var c in s.Cases)
            foreach (var b in c.Blobs)
                if (!s._index.ContainsKey(b)) throw new TapmlException($"{s.ManifestPath}: case {c.Id} names blob {b}, which \"blobs\" does not list");
        return s;
    }

    static BlobLocation ParseLocation(string sha, JsonNode? entry, string origin)
    {
        string where = $"{origin}: blob {sha}";
        if (sha.Length != 64 || !sha.All(char.IsAsciiHexDigitLower)) throw new TapmlException($"{where}: not a SHA-256 in lower-case hex");
        if (entry is not JsonObject e) throw new TapmlException($"{where}: not a JSON object");
        try
        {
            if (e["pack"] is { } pack)
            {
                long offset = e["offset"]?.GetValue<long>() ?? -1, length = e["length"]?.GetValue<long>() ?? -1;
                if (offset < 0 || length < 8) throw new TapmlException($"{where}: \"offset\" and \"length\" must be byte counts");
                return new PackedBlob(pack.GetValue<int>(), offset, length);
            }
            if (e["file"] is not null) return new FileBlob();
            if (e["splat"] is { } splat)
            {
                var dtype = DTypes.Parse(e["dtype"]?.GetValue<string>() ?? throw new TapmlException($"{where}: no \"dtype\""));
                var shape = (e["shape"] as JsonArray ?? throw new TapmlException($"{where}: no \"shape\"")).Select(d => d!.GetValue<long>()).ToArray();
                string hex = splat.GetValue<string>();
                int size = dtype == DType.String ? 0 : DTypes.Size(dtype);
                if (size is not (1 or 2 or 4 or 8) || !DTypes.IsSupported(dtype)) throw new TapmlException($"{where}: a splat cannot be {DTypes.Name(dtype)}");
                if (hex.Length != 2 * size || !hex.All(char.IsAsciiHexDigitLower)) throw new TapmlException($"{where}: \"splat\" must be {size} bytes in lower-case hex");
                if (shape.Any(d => d < 0) || ShapeUtil.Size(shape) < 1) throw new TapmlException($"{where}: a splat needs a shape with at least one element");
                return new SplatBlob(dtype, shape, Convert.FromHexString(hex));
            }
            if (e["model_file"] is { } file)
            {
                var dtype = DTypes.Parse(e["dtype"]?.GetValue<string>() ?? throw new TapmlException($"{where}: no \"dtype\""));
                var shape = (e["shape"] as JsonArray ?? throw new TapmlException($"{where}: no \"shape\"")).Select(d => d!.GetValue<long>()).ToArray();
                var src = new InitializerSource(file.GetValue<string>(), e["tensor"]?.GetValue<string>() ?? throw new TapmlException($"{where}: no \"tensor\""),
                                                e["transform"]?.GetValue<string>() ?? "");
                if (src.Transform is not ("" or "transpose")) throw new TapmlException($"{where}: unknown transform '{src.Transform}'");
                return new WeightBlob(src, dtype, shape);
            }
        }
        catch (Exception x) when (x is FormatException or InvalidOperationException)
        {
            throw new TapmlException($"{where}: malformed entry ({x.Message})", x);
        }
        throw new TapmlException($"{where}: neither \"pack\", \"file\", \"model_file\" nor \"splat\"");
    }

    // --- writing --------------------------------------------------------------------------------------------------

    Writer? _writer;
    long _packEnd;

    /// <summary>Stores <paramref name="t"/> as a blob (unless an identical one exists) and returns its hash, the
    /// SHA-256 of the blob's bytes (computed here). The bytes are appended to the pack by the background writer; a
    /// manifest written later names them only after they are written. Returns the bytes queued in
    /// <paramref name="written"/> (0 when deduplicated). The tensor must not change afterwards (executor values
    /// never do).</summary>
    public string Put(Tensor t, out long written)
    {
        var w = _writer ?? throw new TapmlException($"{Dir}: the store was opened for reading; carve into a new store");
        written = 0;
        if (UniformValue(t) is { } value)
        {
            // NOTE: constant fills (ConstantOfShape weights, zero caches, masks) are named by their fields, not hashed.
            string id = SplatSha(t.DType, t.Shape, value);
            _index.TryAdd(id, new SplatBlob(t.DType, (long[])t.Shape.Clone(), value));
            return id;
        }
        byte[] header = BlobHeader(t);
        long length = header.Length + t.ByteSize;
        string sha;
        if (length <= SmallBlobBytes)
        {
            // NOTE: small blobs are copied into a batch the writer appends whole (one hand-over per ~1 MiB, not per blob).
            var image = _batch.AsSpan(_batchLength, (int)length);
            header.CopyTo(image);
            t.Bytes().CopyTo(image[header.Length..]);
            sha = Convert.ToHexStringLower(SHA256.HashData(image));
            if (_index.TryGetValue(sha, out var existing) && existing is not WeightBlob) return sha;
            _batchLength += (int)length;
        }
        else
        {
            sha = Sha(header, t);
            if (_index.TryGetValue(sha, out var existing) && existing is not WeightBlob) return sha;
            HandOverBatch();
            w.Append(header, t);
        }
        _index[sha] = new PackedBlob(0, _packEnd, length);
        _packEnd += length;
        written = length;
        if (_batchLength >= BatchBytes) HandOverBatch();
        return sha;
    }

    const int SmallBlobBytes = 64 << 10, BatchBytes = 1 << 20;
    // NOTE: batch buffers go round between the carve and the writer (fresh 1 MiB arrays would be large-object
    // allocations, and those bring full garbage collections over the model's weights).
    readonly ConcurrentBag<byte[]> _freeBatches = new();
    byte[] _batch = new byte[BatchBytes + SmallBlobBytes];
    int _batchLength;

    void HandOverBatch()
    {
        if (_batchLength == 0) return;
        _writer!.AppendBytes(_batch, _batchLength);
        _batch = _freeBatches.TryTake(out var b) ? b : new byte[BatchBytes + SmallBlobBytes];
        _batchLength = 0;
    }

    /// <summary>Records <paramref name="t"/>, a model weight whose bytes <paramref name="source"/> gives back, by
    /// reference (nothing is written); returns its blob hash (the same as <see cref="Put"/> would give).</summary>
    public string PutWeight(Tensor t, InitializerSource source)
    {
        string sha = BlobSha(t);
        _index.TryAdd(sha, new WeightBlob(source, t.DType, (long[])t.Shape.Clone()));
        return sha;
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

    /// <summary>The blob name of a splat: SHA-256 of <c>tapml-splat|DTYPE|D0,D1,…|VALUEHEX</c> (UTF-8).</summary>
    public static string SplatSha(DType dtype, long[] shape, ReadOnlySpan<byte> value) =>
        Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(
            $"tapml-splat|{DTypes.Name(dtype)}|{string.Join(",", shape)}|{Convert.ToHexStringLower(value)}")));

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

    /// <summary>The blob hash of <paramref name="t"/>: the SHA-256 of its one-tensor safetensors image.</summary>
    public static string BlobSha(Tensor t) => Sha(BlobHeader(t), t);

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
        HandOverBatch();
        w.Manifest(Cases.ToArray(), (JsonObject)Notes.DeepClone());
    }

    /// <summary>Waits until everything queued is written (blobs and manifests).</summary>
    public void Drain()
    {
        if (_writer is not { } w) return;
        w.Wait();
        if (w.Error is { } e) throw new TapmlException($"{Dir}: cannot write the store ({e.Message})", e);
    }

    byte[] ManifestBytes(CarvedCase[] cases, JsonObject notes)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(1 << 16);
        // NOTE: compact and with relaxed escaping: signatures hold JSON text, and the final manifest is on the carve's critical path.
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
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
            var seen = new HashSet<string>();
            foreach (var c in cases)
                foreach (var sha in c.Blobs)
                {
                    if (!seen.Add(sha)) continue;
                    w.WriteStartObject(sha);
                    switch (_index[sha])
                    {
                        case PackedBlob p:
                            w.WriteNumber("pack", p.Pack);
                            w.WriteNumber("offset", p.Offset);
                            w.WriteNumber("length", p.Length);
                            break;
                        case FileBlob:
                            w.WriteString("file", Path.GetRelativePath(Dir, BlobPath(sha)));
                            break;
                        case WeightBlob r:
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
            w.WriteEndObject();
            w.WriteStartArray("cases");
            foreach (var c in cases) c.WriteJson(w);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>The background writer: one thread that creates the folders, appends blobs to the pack and writes
    /// manifests, in the order they were queued (so a manifest follows the blobs it names).</summary>
    sealed class Writer
    {
        // NOTE: queued tensors stay alive until written; past this many bytes the carve waits for the disk.
        const long MaxQueuedBytes = 256L << 20;
        readonly CarvedStore _s;
        // NOTE: an item is a blob (Header + Tensor), a batch of blob images (Header = the buffer, Length bytes of it) or a manifest.
        readonly Queue<(byte[]? Header, Tensor? Tensor, CarvedCase[]? Cases, JsonObject? Notes, int Length)> _queue = new();
        readonly object _lock = new();
        long _queuedBytes, _queued, _done;
        bool _idle;
        Thread? _thread;
        FileStream? _pack;
        bool _opened;
        public Exception? Error;

        public Writer(CarvedStore s) => _s = s;

        public void Append(byte[] header, Tensor t) => Enqueue((header, t, null, null, 0), header.Length + t.ByteSize);
        public void AppendBytes(byte[] batch, int length) => Enqueue((batch, null, null, null, length), length);
        public void Manifest(CarvedCase[] cases, JsonObject notes) => Enqueue((null, null, cases, notes, 0), 0);

        void Enqueue((byte[]?, Tensor?, CarvedCase[]?, JsonObject?, int) item, long bytes)
        {
            lock (_lock)
            {
                while (_queuedBytes > MaxQueuedBytes && Error is null) Monitor.Wait(_lock);
                _queue.Enqueue(item);
                _queuedBytes += bytes;
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
                (byte[]? Header, Tensor? Tensor, CarvedCase[]? Cases, JsonObject? Notes, int Length) item;
                lock (_lock)
                {
                    while (_queue.Count == 0) { _idle = true; Monitor.Wait(_lock); }
                    _idle = false;
                    item = _queue.Dequeue();
                }
                long bytes = 0;
                if (Error is null)
                {
                    try
                    {
                        if (item.Tensor is { } t)
                        {
                            bytes = item.Header!.Length + t.ByteSize;
                            Pack().Write(item.Header);
                            Pack().Write(t.Bytes());
                        }
                        else if (item.Header is { } batch)
                        {
                            bytes = item.Length;
                            Pack().Write(batch, 0, item.Length);
                            _s._freeBatches.Add(batch);
                        }
                        else WriteManifest(item.Cases!, item.Notes!);
                    }
                    catch (Exception e) when (e is not OutOfMemoryException) { Error = e; }   // NOTE: rethrown by Drain
                }
                else bytes = item.Tensor is { } t2 ? item.Header!.Length + t2.ByteSize : item.Length;
                lock (_lock)
                {
                    _queuedBytes -= bytes;
                    _done++;
                    Monitor.PulseAll(_lock);
                }
            }
        }

        FileStream Pack()
        {
            if (_pack is not null) return _pack;
            Directory.CreateDirectory(_s.PackDir);
            // NOTE: the pack is only ever appended to; a killed writer leaves bytes past the last manifest's, never read.
            _pack = new FileStream(_s.PackPath(0), _opened ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.Read, 1 << 20);
            _opened = true;
            return _pack;
        }

        void WriteManifest(CarvedCase[] cases, JsonObject notes)
        {
            Directory.CreateDirectory(_s.Dir);
            _pack?.Flush();
            string tmp = _s.ManifestPath + ".tmp";
            File.WriteAllBytes(tmp, _s.ManifestBytes(cases, notes));
            File.Move(tmp, _s.ManifestPath, overwrite: true);
        }

        public void Close()
        {
            Wait();
            _pack?.Dispose();
            _pack = null;
        }
    }

    /// <summary>Writes the final manifest and closes the pack; the store can still be read.</summary>
    public void Close()
    {
        if (_writer is not { } w) return;
        SaveManifest();
        w.Close();
    }

    // --- reading --------------------------------------------------------------------------------------------------

    /// <summary>Reads a blob after checking its hash; a missing or corrupt blob (or a by-reference weight whose
    /// model file moved or changed) is an error naming the store, the case and the file.</summary>
    public Tensor Read(string sha, string caseId)
    {
        if (_verified.TryGetValue(sha, out var cached)) return cached;
        if (!_index.TryGetValue(sha, out var loc))
            throw new TapmlException($"{Dir}: case {caseId} needs blob {sha}, which the manifest does not list");
        Tensor t;
        if (loc is WeightBlob r) t = ReadWeight(sha, r, caseId);
        else if (loc is SplatBlob z)
        {
            string actual = SplatSha(z.DType, z.Shape, z.Value);
            if (actual != sha)
                throw new TapmlException($"{ManifestPath}: splat blob {sha[..16]}… of case {caseId} is corrupt (its dtype, shape and value hash to {actual[..16]}…)");
            _checked.Add(sha);
            t = Materialize(z);
        }
        else
        {
            _writer?.Wait();
            var (bytes, path) = ReadBlobBytes(sha, loc, caseId);
            if (!_checked.Contains(sha))
            {
                string actual = Convert.ToHexStringLower(SHA256.HashData(bytes));
                if (actual != sha)
                    throw new TapmlException($"{path}: blob of case {caseId} is corrupt (its SHA-256 is {actual[..16]}…, the store names it {sha})");
                _checked.Add(sha);
            }
            t = SafetensorsFile.ReadFromBytes(bytes, BlobTensorName, $"{path}: blob {sha} of case {caseId}");
        }
        // NOTE: a small cache: weights recur in many cases and are hashed once per replay.
        if (_verified.Count > 256) _verified.Clear();
        _verified[sha] = t;
        return t;
    }

    /// <summary>Checks every blob <paramref name="cases"/> name (hashes, weight files) before a replay, so a damaged
    /// or moved store is one error up front instead of one per case.</summary>
    public void Verify(IEnumerable<CarvedCase> cases)
    {
        foreach (var c in cases)
            foreach (var sha in c.Blobs)
                if (!_checked.Contains(sha) && !_verified.ContainsKey(sha)) Read(sha, c.Id);
    }

    (byte[] Bytes, string Path) ReadBlobBytes(string sha, BlobLocation loc, string caseId)
    {
        if (loc is FileBlob)
        {
            string path = BlobPath(sha);
            if (!File.Exists(path)) throw new TapmlException($"{Dir}: case {caseId} needs blob {sha}, which is missing ({path})");
            return (File.ReadAllBytes(path), path);
        }
        var p = (PackedBlob)loc;
        string pack = PackPath(p.Pack);
        if (!_packs.TryGetValue(p.Pack, out var handle))
        {
            if (!File.Exists(pack)) throw new TapmlException($"{Dir}: case {caseId} needs blob {sha} from {pack}, which is missing");
            _packs[p.Pack] = handle = File.OpenHandle(pack, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        }
        if (p.Length > Array.MaxLength || p.Offset + p.Length > RandomAccess.GetLength(handle))
            throw new TapmlException($"{pack}: blob of case {caseId} is corrupt (bytes [{p.Offset}, {p.Offset + p.Length}) of {sha} run past the pack's end)");
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
        if (actual != sha)
            throw new TapmlException($"{what}: its bytes changed since the carve (SHA-256 {actual[..16]}…, the store says {sha[..16]}…); carve again, or carve with --embed-weights");
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
        var keep = Cases.SelectMany(c => c.Blobs).ToHashSet();
        int removed = 0;
        if (Directory.Exists(BlobDir))
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
