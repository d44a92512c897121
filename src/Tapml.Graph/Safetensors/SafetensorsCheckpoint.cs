using System.Text.Json;
using Tapml.Core;

namespace Tapml.Ir.Safetensors;

/// <summary>The weights of a Hugging Face style folder: one <c>model.safetensors</c>, or shards listed by
/// <c>model.safetensors.index.json</c> (its weight_map names the file of every tensor). Files are opened once,
/// tensors read lazily.</summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    readonly Dictionary<string, SafetensorsFile> _byTensor = new();
    readonly List<SafetensorsFile> _files = new();

    public string Dir { get; }

    /// <summary>Every tensor's entry (name, dtype, shape) across shards.</summary>
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }

    /// <summary>Largest shard index read (real ones are well under a megabyte).</summary>
    public const long MaxIndexBytes = 64 << 20;

    public SafetensorsCheckpoint(string dir)
    {
        Dir = dir;
        if (dir.Contains('\0')) throw new TapmlException("the checkpoint folder's path contains a NUL character");
        if (!Directory.Exists(dir)) throw new TapmlException($"checkpoint folder '{dir}' not found");
        var entries = new Dictionary<string, SafetensorsEntry>();
        string index = Path.Combine(dir, "model.safetensors.index.json");
        try
        {
            if (File.Exists(index) || Directory.Exists(index))
            {
                var map = ReadIndex(SafePaths.Contained(dir, "model.safetensors.index.json", index), index);
                // Shards by the name the index gives them; every name is checked to stay inside the folder before it is opened.
                var byName = new Dictionary<string, SafetensorsFile>();
                foreach (var (tensor, file) in map)
                {
                    if (!byName.TryGetValue(file, out var f))
                    {
                        f = byName[file] = SafetensorsFile.Open(SafePaths.Contained(dir, file, $"{index}: weight_map['{Shorten(tensor)}']"));
                        _files.Add(f);
                    }
                    if (!f.Entries.TryGetValue(tensor, out var e)) throw new TapmlException($"{index}: weight_map says '{Shorten(tensor)}' is in {Shorten(file)}, but that file has no such tensor");
                    _byTensor[tensor] = f;
                    entries[tensor] = e;
                }
            }
            else
            {
                var files = Directory.GetFiles(dir, "*.safetensors").Where(f => !Path.GetFileName(f).StartsWith("reference")).Order().ToList();
                if (files.Count == 0) throw new TapmlException($"{dir} has no model.safetensors (and no model.safetensors.index.json)");
                foreach (var p in files)
                {
                    var f = SafetensorsFile.Open(SafePaths.Contained(dir, Path.GetFileName(p), p));
                    _files.Add(f);
                    foreach (var (name, e) in f.Entries)
                    {
                        if (!_byTensor.TryAdd(name, f)) throw new TapmlException($"tensor '{Shorten(name)}' is in both {Path.GetFileName(_byTensor[name].Path)} and {Path.GetFileName(p)}");
                        entries[name] = e;
                    }
                }
            }
        }
        catch
        {
            Dispose();
            throw;
        }
        Entries = entries;
    }

    static Dictionary<string, string> ReadIndex(string path, string shownAs)
    {
        using var doc = JsonFiles.Document(path, MaxIndexBytes);
        if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
            throw new TapmlException($"{shownAs}: no weight_map object");
        var map = new Dictionary<string, string>();
        foreach (var p in wm.EnumerateObject())
            map[p.Name] = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : throw new TapmlException($"{shownAs}: weight_map['{Shorten(p.Name)}'] is not a file name (got {p.Value.ValueKind})");
        return map;
    }

    static string Shorten(string s) => s.Length <= 200 ? s : s[..200] + "…";

    public bool Contains(string name) => _byTensor.ContainsKey(name);

    /// <summary>The full path of the file holding tensor <paramref name="name"/>, or null when there is none.</summary>
    public string? FileOf(string name) => _byTensor.TryGetValue(name, out var f) ? Path.GetFullPath(f.Path) : null;

    public Tensor Read(string name) =>
        _byTensor.TryGetValue(name, out var f) ? f.Read(name) : throw new TapmlException($"checkpoint {Dir} has no tensor '{name}'");

    /// <summary>Tensor <paramref name="name"/> read in place (see <see cref="SafetensorsFile.View"/>); null when it
    /// cannot be (empty, or a dtype other than f32/f16/bf16): <see cref="Read"/> it instead.</summary>
    public ExternalData? View(string name) =>
        _byTensor.TryGetValue(name, out var f) ? f.View(name) : throw new TapmlException($"checkpoint {Dir} has no tensor '{name}'");

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
