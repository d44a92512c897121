using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tapml.Testing.Reports;

/// <summary><c>DIR/results.jsonl</c>: one line per finished case, appended and flushed as each case ends, so a run that
/// was cut off (a remote server died, Ctrl-C) can resume with what it already has. The first line names the platform
/// (spec and description) and store; a resumed run must target the same store and a platform of the same description
/// (a restarted server on another port is the same target); a torn last line (killed mid-write) is dropped on reading.</summary>
public sealed class ResultLog : IDisposable
{
    public const string FileName = "results.jsonl";
    readonly StreamWriter _w;

    ResultLog(StreamWriter w) => _w = w;

    /// <summary>Opens the log for appending: a fresh one unless <paramref name="resume"/>, then returns the cases it holds.
    /// A log of another platform or store is an error, never mixed in.</summary>
    public static ResultLog Open(string dir, string platform, string description, string store, bool resume, out List<CaseResult> done)
    {
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, FileName);
        done = [];
        bool exists = File.Exists(path);
        if (resume && exists)
        {
            var lines = File.ReadAllLines(path);
            for (int i = 0; i < lines.Length; i++)
            {
                JsonObject? o;
                try { o = JsonNode.Parse(lines[i]) as JsonObject; }
                catch (JsonException) when (i == lines.Length - 1) { break; }
                catch (JsonException e) { throw new Core.TapmlException($"{path}:{i + 1} is not a result line ({e.Message}); remove the file to start over"); }
                if (o is null) continue;
                if (i == 0)
                {
                    if ((string?)o["description"] != description || (string?)o["store"] != store)
                        throw new Core.TapmlException($"{path} holds results of {o["store"]} on {o["platform"]} ({o["description"]}), not {store} on {platform} ({description}); use another --out or remove it");
                    continue;
                }
                done.Add(JsonReport.ReadCase(o));
            }
            // NOTE: a torn last line is cut off so the next append starts on a line of its own.
            File.WriteAllLines(path + ".tmp", lines.Take(done.Count + 1));
            File.Move(path + ".tmp", path, overwrite: true);
        }
        var w = new StreamWriter(new FileStream(path, resume && exists ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.Read));
        if (!(resume && exists)) { w.WriteLine(new JsonObject { ["platform"] = platform, ["description"] = description, ["store"] = store }.ToJsonString()); w.Flush(); }
        return new ResultLog(w);
    }

    public void Add(CaseResult r)
    {
        _w.WriteLine(JsonReport.Case(r).ToJsonString());
        _w.Flush();
    }

    public void Dispose() => _w.Dispose();
}
