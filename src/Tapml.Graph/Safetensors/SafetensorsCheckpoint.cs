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

    public SafetensorsCheckpoint(string dir)
    {
        Dir = dir;
        if (!Directory.Exists(dir)) throw new TapmlException($"checkpoint folder '{dir}' not found");
        var entries = new Dictionary<string, SafetensorsEntry>();
        string index = Path.Combine(dir, "model.safetensors.index.json");
        try
        {
            if (File.Exists(index))
            {
                var map = ReadIndex(index);
                foreach (var file in map.Values.Distinct())
                {
                    string p = Path.Combine(dir, file);
                    if (!File.Exists(p)) throw new TapmlException($"{index} names shard '{file}', which is not in {dir}");
                    _files.Add(SafetensorsFile.Open(p));
                }
                var byName = _files.ToDictionary(f => Path.GetFileName(f.Path));
                foreach (var (tensor, file) in map)
                {
                    var f = byName[file];
                    if (!f.Entries.TryGetValue(tensor, out var e)) throw new TapmlException($"{index} says '{tensor}' is in {file}, but that file has no such tensor");
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
                    var f = SafetensorsFile.Open(p);
                    _files.Add(f);
                    foreach (var (name, e) in f.Entries)
                    {
                        if (!_byTensor.TryAdd(name, f)) throw new TapmlException($"tensor '{name}' is in both {Path.GetFileName(_byTensor[name].Path)} and {Path.GetFileName(p)}");
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

    static Dictionary<string, string> ReadIndex(string path)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            if (!doc.RootElement.TryGetProperty("weight_map", out var wm) || wm.ValueKind != JsonValueKind.Object)
                throw new TapmlException($"{path} has no weight_map object");
            var map = new Dictionary<string, string>();
            foreach (var p in wm.EnumerateObject())
                map[p.Name] = p.Value.ValueKind == JsonValueKind.String ? p.Value.GetString()! : throw new TapmlException($"{path}: weight_map['{p.Name}'] is not a file name");
            return map;
        }
        catch (JsonException e) { throw new TapmlException($"{path} is not valid JSON ({e.Message})"); }
    }

    public bool Contains(string name) => _byTensor.ContainsKey(name);

    /// <summary>The full path of the file holding tensor <paramref name="name"/>, or null when there is none.</summary>
    public string? FileOf(string name) => _byTensor.TryGetValue(name, out var f) ? Path.GetFullPath(f.Path) : null;

    public Tensor Read(string name) =>
        _byTensor.TryGetValue(name, out var f) ? f.Read(name) : throw new TapmlException($"checkpoint {Dir} has no tensor '{name}'");

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
    }
}
