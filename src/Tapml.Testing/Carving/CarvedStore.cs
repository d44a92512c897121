using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir.Safetensors;

namespace Tapml.Testing.Carving;

/// <summary>A carved test store (format v1, DESIGN.md): <c>manifest.json</c> + <c>blobs/&lt;sha256&gt;.safetensors</c>,
/// one tensor per blob, named by the SHA-256 of the blob file, so a tensor used by many cases (a weight seen in
/// every decode step) is stored once. Every write is atomic (temporary file + rename): a store whose writer was
/// killed still loads, with the cases of its last manifest.</summary>
public sealed class CarvedStore
{
    public const string FormatName = "tapml-carved-store/1";
    const string BlobTensorName = "tensor";

    readonly Dictionary<string, Tensor> _verified = new();

    public string Dir { get; }
    public string ManifestPath => Path.Combine(Dir, "manifest.json");
    public string BlobDir => Path.Combine(Dir, "blobs");
    public string ModelName { get; private set; } = "";
    public string ModelSha256 { get; private set; } = "";
    public string Source { get; private set; } = "";
    public List<CarvedCase> Cases { get; } = new();
    /// <summary>Extra manifest fields (carve options, counts of nodes not carved and why).</summary>
    public JsonObject Notes { get; } = new();

    CarvedStore(string dir) => Dir = dir;

    /// <summary>Starts a new store in <paramref name="dir"/> (created; must not hold a store already) and writes its
    /// empty manifest at once, so the folder is a valid store from the start.</summary>
    public static CarvedStore Create(string dir, string modelName, string modelSha256, string source)
    {
        if (File.Exists(Path.Combine(dir, "manifest.json")))
            throw new TapmlException($"{dir} already holds a carved store (manifest.json); choose another --out or remove it");
        if (File.Exists(dir)) throw new TapmlException($"{dir} is a file, not a folder");
        Directory.CreateDirectory(Path.Combine(dir, "blobs"));
        var s = new CarvedStore(dir) { ModelName = modelName, ModelSha256 = modelSha256, Source = source };
        s.SaveManifest();
        return s;
    }

    /// <summary>Opens a store; the manifest is checked (format, fields), blobs are checked when read.</summary>
    public static CarvedStore Open(string dir)
    {
        var s = new CarvedStore(dir);
        if (!Directory.Exists(dir)) throw new TapmlException($"carved store '{dir}' not found");
        if (!File.Exists(s.ManifestPath)) throw new TapmlException($"{dir} is not a carved store (no manifest.json)");
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(s.ManifestPath)); }
        catch (JsonException e) { throw new TapmlException($"{s.ManifestPath}: not valid JSON ({e.Message})", e); }
        if (root is not JsonObject o) throw new TapmlException($"{s.ManifestPath}: not a JSON object");
        string? format = o["format"] is JsonValue fv && fv.TryGetValue(out string? f) ? f : null;
        if (format != FormatName) throw new TapmlException($"{s.ManifestPath}: format '{format}' is not {FormatName}");
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
        return s;
    }

    /// <summary>Rewrites manifest.json atomically.</summary>
    public void SaveManifest()
    {
        Drain();
        var o = new JsonObject
        {
            ["format"] = FormatName,
            ["model"] = new JsonObject { ["name"] = ModelName, ["sha256"] = ModelSha256 },
            ["source"] = Source,
            ["notes"] = Notes.DeepClone(),
            ["cases"] = new JsonArray(Cases.Select(c => (JsonNode)c.ToJson()).ToArray()),
        };
        string tmp = ManifestPath + ".tmp";
        File.WriteAllText(tmp, o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.Move(tmp, ManifestPath, overwrite: true);
    }

    public string BlobPath(string sha) => Path.Combine(BlobDir, sha + ".safetensors");

    readonly HashSet<string> _pending = new();
    System.Collections.Concurrent.BlockingCollection<(string Sha, byte[] Header, Tensor Tensor)>? _queue;
    Task? _writer;
    Exception? _writeError;

    /// <summary>Stores <paramref name="t"/> as a blob (unless an identical one exists) and returns its hash, the
    /// SHA-256 of the blob file's bytes (computed in memory). The file is written by a background writer; call
    /// <see cref="Drain"/> before a manifest refers to it. Returns the bytes queued in <paramref name="written"/> (0
    /// when deduplicated). The tensor must not change afterwards (executor values never do).</summary>
    public string Put(Tensor t, out long written)
    {
        byte[] header = SafetensorsWriter.Header([new(BlobTensorName, t)]);
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        h.AppendData(header);
        h.AppendData(t.Bytes());
        string sha = Convert.ToHexStringLower(h.GetHashAndReset());
        written = 0;
        if (_pending.Contains(sha) || File.Exists(BlobPath(sha))) return sha;
        _pending.Add(sha);
        written = header.Length + t.ByteSize;
        if (_queue is null)
        {
            _queue = new(boundedCapacity: 64);
            _writer = Task.Factory.StartNew(WriteLoop, TaskCreationOptions.LongRunning);
        }
        _queue.Add((sha, header, t));
        return sha;
    }

    void WriteLoop()
    {
        foreach (var (sha, header, t) in _queue!.GetConsumingEnumerable())
        {
            if (_writeError is not null) continue;
            try
            {
                string tmp = Path.Combine(BlobDir, $".tmp-{Environment.ProcessId}-{sha}");
                using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
                {
                    fs.Write(header);
                    fs.Write(t.Bytes());
                }
                File.Move(tmp, BlobPath(sha), overwrite: true);
            }
            catch (IOException e) { _writeError = e; }
            catch (UnauthorizedAccessException e) { _writeError = e; }
        }
    }

    /// <summary>Waits until every queued blob is on disk (then a manifest may refer to them).</summary>
    public void Drain()
    {
        if (_queue is null) return;
        _queue.CompleteAdding();
        _writer!.Wait();
        _queue = null;
        _pending.Clear();
        if (_writeError is { } e) throw new TapmlException($"{BlobDir}: cannot write a blob ({e.Message})", e);
    }

    /// <summary>Reads a blob after checking its hash; a missing or corrupt blob is an error naming the case.</summary>
    public Tensor Read(string sha, string caseId)
    {
        if (_verified.TryGetValue(sha, out var cached)) return cached;
        string path = BlobPath(sha);
        if (!File.Exists(path)) throw new TapmlException($"{Dir}: case {caseId} needs blob {sha}, which is missing ({path})");
        byte[] bytes = File.ReadAllBytes(path);
        string actual = Convert.ToHexStringLower(SHA256.HashData(bytes));
        if (actual != sha)
            throw new TapmlException($"{path}: blob of case {caseId} is corrupt (its SHA-256 is {actual[..16]}…, its name says {sha[..16]}…)");
        Tensor t;
        using (var st = SafetensorsFile.Open(path))
        {
            if (!st.Entries.ContainsKey(BlobTensorName)) throw new TapmlException($"{path}: blob of case {caseId} has no tensor '{BlobTensorName}'");
            t = st.Read(BlobTensorName);
        }
        // NOTE: a small cache: weights recur in many cases and are hashed once per replay.
        if (_verified.Count > 256) _verified.Clear();
        _verified[sha] = t;
        return t;
    }

    /// <summary>Total bytes of the blob files the manifest's cases refer to (each blob once).</summary>
    public long ReferencedBlobBytes() => Cases.SelectMany(c => c.Blobs).Distinct().Sum(b => File.Exists(BlobPath(b)) ? new FileInfo(BlobPath(b)).Length : 0);

    /// <summary>Deletes blobs no case refers to and temporary files left by a killed writer.</summary>
    public int RemoveUnreferencedBlobs()
    {
        var keep = Cases.SelectMany(c => c.Blobs).ToHashSet();
        int removed = 0;
        foreach (var f in Directory.EnumerateFiles(BlobDir))
        {
            string name = Path.GetFileName(f);
            if (name.EndsWith(".safetensors", StringComparison.Ordinal) && keep.Contains(name[..^".safetensors".Length])) continue;
            File.Delete(f);
            removed++;
        }
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
