using System.Text.Json;
using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Platforms.Execution;
using Tapml.Testing.Reports;

namespace Tapml.Testing.Migration;

/// <summary><c>DIR/migration.jsonl</c>: what a migration has established so far, a line per whole mixed run (bisect
/// steps, by-kind stages: diverged or not) and per clean lockstep phase (its node records), appended and flushed as
/// each ends, so a migration cut off (a remote server died, Ctrl-C) resumes with <c>--resume</c> instead of starting
/// over. The first line names the migration (model, input, source, target description, strategy, tolerances); a
/// journal of another migration is an error, never mixed in; a torn last line is dropped.</summary>
public sealed class MigrationJournal : IDisposable
{
    public const string FileName = "migration.jsonl";
    readonly StreamWriter _w;
    readonly Dictionary<string, string?> _runs = new();
    readonly Dictionary<string, (List<NodeRecord> Records, List<FallbackRecord> Fallbacks)> _phases = new();

    /// <summary>Runs and phases taken from the journal instead of being run again.</summary>
    public int Reused { get; private set; }
    /// <summary>Entries the journal held when it was opened.</summary>
    public int Held => _runs.Count + _phases.Count;

    MigrationJournal(StreamWriter w) => _w = w;

    /// <summary>Opens <c>DIR/migration.jsonl</c>: a fresh one unless <paramref name="resume"/>, then with what it holds.</summary>
    public static MigrationJournal Open(string dir, JsonObject header, bool resume)
    {
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, FileName);
        bool exists = File.Exists(path);
        var lines = resume && exists ? File.ReadAllLines(path) : [];
        var kept = new List<string>();
        var entries = new List<(int Line, JsonObject O)>();
        for (int i = 0; i < lines.Length; i++)
        {
            JsonObject? o;
            try { o = JsonNode.Parse(lines[i]) as JsonObject; }
            catch (JsonException) when (i == lines.Length - 1) { break; }
            catch (JsonException e) { throw new TapmlException($"{path}:{i + 1} is not a journal line ({e.Message}); remove the file to start over"); }
            if (o is null) continue;
            if (i == 0 && !JsonNode.DeepEquals(o, header))
                throw new TapmlException($"{path} is the journal of another migration ({o.ToJsonString()}), not of this one ({header.ToJsonString()}); use another --out or drop --resume");
            if (i > 0) entries.Add((i + 1, o));
            kept.Add(lines[i]);
        }
        if (kept.Count > 0)
        {
            // NOTE: a torn last line is cut off so the next append starts on a line of its own.
            File.WriteAllLines(path + ".tmp", kept);
            File.Move(path + ".tmp", path, overwrite: true);
        }
        var w = new StreamWriter(new FileStream(path, kept.Count > 0 ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.Read));
        if (kept.Count == 0) { w.WriteLine(header.ToJsonString()); w.Flush(); }
        var j = new MigrationJournal(w);
        foreach (var (line, o) in entries)
        {
            try
            {
                if (o["run"] is JsonValue run) j._runs[(string)run!] = (string?)o["diverged"];
                else if (o["phase"] is JsonValue phase)
                    j._phases[(string)phase!] = (((JsonArray)o["records"]!).Select(r => ReadRecord((JsonObject)r!)).ToList(),
                        ((JsonArray)o["fallbacks"]!).Select(f => ReadFallback((JsonObject)f!)).ToList());
                else throw new FormatException("neither a run nor a phase");
            }
            catch (Exception e) when (e is InvalidCastException or InvalidOperationException or NullReferenceException or FormatException or ArgumentException)
            {
                j.Dispose();
                throw new TapmlException($"{path}:{line} is not a journal entry ({e.Message}); remove the file to start over");
            }
        }
        return j;
    }

    /// <summary>The outcome of the whole run <paramref name="key"/> names, when the journal holds it.</summary>
    public bool TryRun(string key, out string? diverged)
    {
        if (!_runs.TryGetValue(key, out diverged)) return false;
        Reused++;
        return true;
    }

    public void Run(string key, string? diverged)
    {
        _runs[key] = diverged;
        Write(new JsonObject { ["run"] = key, ["diverged"] = diverged });
    }

    /// <summary>The records of a lockstep phase that ran clean, when the journal holds it.</summary>
    public bool TryPhase(string key, out List<NodeRecord> records, out List<FallbackRecord> fallbacks)
    {
        if (!_phases.TryGetValue(key, out var p)) { records = []; fallbacks = []; return false; }
        (records, fallbacks) = p;
        Reused++;
        return true;
    }

    public void Phase(string key, List<NodeRecord> records, List<FallbackRecord> fallbacks)
    {
        _phases[key] = (records, fallbacks);
        Write(new JsonObject
        {
            ["phase"] = key,
            ["records"] = new JsonArray(records.Select(r => (JsonNode)WriteRecord(r)).ToArray()),
            ["fallbacks"] = new JsonArray(fallbacks.Select(f => (JsonNode)new JsonObject
            {
                ["index"] = f.Index, ["depth"] = f.Depth, ["node"] = f.Node, ["op_type"] = f.OpType, ["platform"] = f.Platform, ["reason"] = f.Reason,
            }).ToArray()),
        });
    }

    void Write(JsonObject o)
    {
        _w.WriteLine(o.ToJsonString());
        _w.Flush();
    }

    static JsonObject WriteRecord(NodeRecord r) => new()
    {
        ["index"] = r.Index, ["node"] = r.Node, ["op_type"] = r.OpType, ["phase"] = r.Phase, ["platform"] = r.Platform,
        ["isolated"] = r.Isolated.ToJson(), ["accumulated"] = r.Accumulated.ToJson(),
    };

    static NodeRecord ReadRecord(JsonObject o) => new((int)o["index"]!, (string)o["node"]!, (string)o["op_type"]!, (string)o["phase"]!, (string)o["platform"]!,
        ReadError((JsonObject)o["isolated"]!), ReadError((JsonObject)o["accumulated"]!));

    static NodeError ReadError(JsonObject o) => new(JsonReport.ReadMetrics(o), (bool)o["passed"]!, (string?)o["failure"]);

    static FallbackRecord ReadFallback(JsonObject o) =>
        new((int)o["index"]!, (int)o["depth"]!, (string)o["node"]!, (string)o["op_type"]!, (string)o["platform"]!, (string)o["reason"]!);

    public void Dispose() => _w.Dispose();
}
