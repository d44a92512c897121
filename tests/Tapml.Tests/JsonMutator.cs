using System.Text.Json.Nodes;

namespace Tapml.Tests;

/// <summary>Seeded, JSON-aware mutations of a document, as a hostile or broken exporter would write them: a value
/// swapped for another type, null, a huge/negative/fractional/overflowing number, an empty or null-holding list,
/// a deleted or duplicated key, deep nesting, a long string, a non-JSON literal (NaN, Infinity).</summary>
public static class JsonMutator
{
    static readonly string[] Odd =
    [
        "null", "0", "-1", "1", "2", "0.5", "-0.0", "1e6", "1000000", "2147483647", "2147483648", "-2147483649",
        "9223372036854775807", "1e308", "-1e308", "1e400", "1e-320", "\"\"", "\"64\"", "\"x\"", "true", "false",
        "[]", "[null]", "[1, null]", "{}", "{\"a\": null}", "NaN", "Infinity", "-Infinity",
    ];

    /// <summary>The text of <paramref name="doc"/> with 1–3 mutations; <paramref name="shallow"/> picks structural
    /// nodes (depth ≤ 3) half the time, so big vocabularies do not swallow every mutation.</summary>
    public static string Mutate(JsonNode doc, Random rng, bool shallow = true)
    {
        var root = doc.DeepClone();
        int edits = 1 + rng.Next(3);
        for (int e = 0; e < edits; e++)
        {
            var nodes = new List<(JsonNode? Parent, string? Key, int Index, int Depth)>();
            Walk(root, null, null, -1, 0, nodes, rng);
            var pick = shallow && rng.Next(2) == 0 && nodes.Any(n => n.Depth <= 3 && n.Parent is not null)
                ? nodes.Where(n => n.Depth <= 3 && n.Parent is not null).ElementAt(rng.Next(nodes.Count(n => n.Depth <= 3 && n.Parent is not null)))
                : nodes[rng.Next(nodes.Count)];
            if (pick.Parent is null) continue;
            int op = rng.Next(10);
            string marker = $"\"@@MUT{e}@@\"";
            string replacement = op switch
            {
                < 5 => Odd[rng.Next(Odd.Length)],
                5 => string.Concat(Enumerable.Repeat("[", 200)) + "1" + string.Concat(Enumerable.Repeat("]", 200)),
                6 => "\"" + new string('a', 5000) + "\"",
                _ => "",
            };
            if (op == 7 && pick.Parent is JsonObject o && pick.Key is not null) { o.Remove(pick.Key); continue; }
            if (op == 7 && pick.Parent is JsonArray a0) { a0.RemoveAt(pick.Index); continue; }
            if (op >= 8 && pick.Parent is JsonObject dup && pick.Key is not null)
            {
                // A duplicated key cannot live in a JsonObject: written into the text beside the original.
                string value = dup[pick.Key]?.ToJsonString() ?? "null";
                dup[pick.Key] = JsonValue.Create($"@@MUT{e}@@");
                string second = rng.Next(2) == 0 ? value : Odd[rng.Next(Odd.Length)];
                return root.ToJsonString().Replace(marker, $"{value},{System.Text.Json.JsonSerializer.Serialize(pick.Key)}:{second}");
            }
            if (op >= 8 && pick.Parent is JsonArray arr) { arr.Insert(pick.Index, arr[pick.Index]?.DeepClone()); continue; }
            Set(pick, JsonValue.Create($"@@MUT{e}@@"));
            string text = root.ToJsonString().Replace(marker, replacement.Length == 0 ? "null" : replacement);
            // Literals like NaN are not JSON: the mutation ends here with the text as written.
            if (!TryParse(text, out var next)) return text;
            root = next!;
        }
        return root.ToJsonString();
    }

    static bool TryParse(string text, out JsonNode? node)
    {
        try { node = JsonNode.Parse(text); return node is not null; }
        catch (System.Text.Json.JsonException) { node = null; return false; }
    }

    static void Set((JsonNode? Parent, string? Key, int Index, int Depth) at, JsonNode? value)
    {
        if (at.Parent is JsonObject o) o[at.Key!] = value;
        else if (at.Parent is JsonArray a) a[at.Index] = value;
    }

    // Collects (parent, key/index, depth) of nodes; big containers are sampled (every node of a 100k vocabulary is not needed).
    static void Walk(JsonNode? node, JsonNode? parent, string? key, int index, int depth, List<(JsonNode?, string?, int, int)> into, Random rng)
    {
        into.Add((parent, key, index, depth));
        switch (node)
        {
            case JsonObject o:
                var props = o.ToList();
                for (int i = 0; i < props.Count; i++)
                    if (props.Count < 64 || rng.Next(props.Count / 32) == 0) Walk(props[i].Value, o, props[i].Key, -1, depth + 1, into, rng);
                break;
            case JsonArray a:
                for (int i = 0; i < a.Count; i++)
                    if (a.Count < 64 || rng.Next(a.Count / 32) == 0) Walk(a[i], a, null, i, depth + 1, into, rng);
                break;
        }
    }
}
