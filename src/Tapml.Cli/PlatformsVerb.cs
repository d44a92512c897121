using System.CommandLine;
using System.Text.Json.Nodes;
using Spectre.Console;
using Tapml.Platforms;

namespace Tapml.Cli;

/// <summary><c>tapml platforms [--json]</c>: platforms, availability, adapter, limits.</summary>
static class PlatformsVerb
{
    public static Command Create()
    {
        var json = new Option<bool>("--json") { Description = "print JSON instead of a table" };
        var remote = new Option<string?>("--remote") { Description = "show what the `tapml serve` at this URL serves (http://HOST:PORT)" };
        var cmd = new Command("platforms", "list platforms, whether they are available here, their adapter and limits") { json, remote };
        cmd.Action(pr =>
        {
            var rows = new JsonArray();
            var entries = PlatformRegistry.Entries;
            if (pr.GetValue(remote) is { } url)
            {
                string spec = url.StartsWith("remote:", StringComparison.Ordinal) ? url : "remote:" + url;
                // NOTE: asked about one server, an unreachable one is an error (exit 2), not a row saying "no".
                PlatformRegistry.Create(spec).Dispose();
                entries = [new PlatformRegistry.Entry(spec, $"served by {url}", PlatformRegistry.Create)];
            }
            foreach (var e in entries)
            {
                var o = new JsonObject { ["name"] = e.Name, ["summary"] = e.Summary };
                if (e.Example is not null) o["example"] = e.Example;
                try
                {
                    using var p = PlatformRegistry.Create(e.Example ?? e.Name);
                    o["available"] = true;
                    o["description"] = p.Description;
                    if (p is IPlatformDetails pd && pd.Details().ToList() is { Count: > 0 } lines) o["details"] = new JsonArray(lines.Select(d => (JsonNode)d).ToArray());
                    o["limits"] = new JsonObject
                    {
                        ["max_buffer_bytes"] = p.Limits.MaxBufferBytes,
                        ["max_binding_bytes"] = p.Limits.MaxBindingBytes,
                        ["max_workgroup_size"] = p.Limits.MaxWorkgroupSize,
                        ["memory_bytes"] = p.Limits.MemoryBytes,
                    };
                }
                catch (Exception ex)
                {
                    o["available"] = false;
                    o["reason"] = ex.Message;
                }
                rows.Add(o);
            }
            if (pr.GetValue(json)) { Console.WriteLine(new JsonObject { ["platforms"] = rows }.ToJsonString(new() { WriteIndented = true })); return 0; }
            var table = new Table().AddColumns("platform", "available", "adapter / library", "max buffer");
            foreach (var r in rows)
                table.AddRow(Markup.Escape((string)r!["name"]!), (bool)r["available"]! ? "[green]yes[/]" : "[red]no[/]",
                    Markup.Escape((string?)r["description"] ?? (string?)r["reason"] ?? ""),
                    r["limits"] is JsonObject l ? Format.Bytes((long)l["max_buffer_bytes"]!) : "");
            AnsiConsole.Write(table);
            foreach (var r in rows)
                if (r!["details"] is JsonArray d)
                    foreach (var line in d) Console.WriteLine($"{r["name"]}: {line}");
            return 0;
        });
        return cmd;
    }
}
