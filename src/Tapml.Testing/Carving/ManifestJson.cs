using System.Text.Json;
using System.Text.Json.Nodes;
using Tapml.Core;

namespace Tapml.Testing.Carving;

/// <summary>Typed reads of a carved store's manifest: a field of the wrong JSON type (a number as a string, a null in
/// a list, an object for an array, a number out of range) is a <see cref="TapmlException"/> naming the place
/// (<c>where</c>: manifest and case or blob) and the field, never a <c>System.Text.Json</c> exception.</summary>
static class ManifestJson
{
    /// <summary>The largest dimension a carved shape may have (2^40: more than any host buffer, so still an error
    /// later, but small enough that products of a few of them do not overflow unnoticed).</summary>
    const long MaxDim = 1L << 40;

    /// <summary>Parses manifest bytes; duplicate keys and nesting deeper than 64 are errors.</summary>
    public static JsonNode? Parse(byte[] bytes, string path)
    {
        try
        {
            return JsonNode.Parse(bytes, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false, MaxDepth = 64 });
        }
        catch (JsonException e) { throw new TapmlException($"{path}: not valid JSON ({e.Message})", e); }
    }

    public static string Str(JsonObject o, string key, string where) =>
        OptStr(o, key, where) ?? throw new TapmlException($"{where}: missing \"{key}\"");

    public static string? OptStr(JsonObject o, string key, string where) => o[key] switch
    {
        null => null,
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        var x => throw Wrong(where, key, "a string", x),
    };

    public static long Long(JsonObject o, string key, string where, long min, long max, long? dflt = null)
    {
        var x = o[key];
        if (x is null) return dflt ?? throw new TapmlException($"{where}: missing \"{key}\"");
        return Number(x, $"\"{key}\"", where, min, max);
    }

    static long Number(JsonNode x, string field, string where, long min, long max)
    {
        if (x is not JsonValue v || v.GetValueKind() != JsonValueKind.Number) throw Wrong(where, field, "an integer", x);
        if (!v.TryGetValue(out long n) || n < min || n > max)
            throw new TapmlException($"{where}: {field} is {Shown(x)}, not an integer in [{min}, {max}]");
        return n;
    }

    /// <summary>A shape: an array of integer dimensions in [0, 2^40], whose element count fits 64 bits.</summary>
    public static long[] Shape(JsonObject o, string key, string where)
    {
        if (o[key] is not JsonArray a) throw Wrong(where, key, "an array of dimensions", o[key]);
        if (a.Count > 64) throw new TapmlException($"{where}: \"{key}\" has {a.Count} dimensions (at most 64)");
        var shape = new long[a.Count];
        for (int i = 0; i < shape.Length; i++)
            shape[i] = Number(a[i] ?? throw new TapmlException($"{where}: \"{key}\"[{i}] is null"), $"\"{key}\"[{i}]", where, 0, MaxDim);
        try { ShapeUtil.Size(shape); }
        catch (TapmlException e) { throw new TapmlException($"{where}: \"{key}\": {e.Message}"); }
        return shape;
    }

    /// <summary>The elements of an array field, each converted by <paramref name="read"/>; nulls are errors.</summary>
    public static List<T> Array<T>(JsonNode? node, string field, string where, Func<JsonNode, string, T> read)
    {
        if (node is not JsonArray a) throw Wrong(where, field, "an array", node);
        var r = new List<T>(a.Count);
        for (int i = 0; i < a.Count; i++)
            r.Add(read(a[i] ?? throw new TapmlException($"{where}: {field}[{i}] is null"), $"{field}[{i}]"));
        return r;
    }

    /// <summary>A scalar of an attribute's value converted by <paramref name="get"/> (a JSON number or string as the
    /// attribute's type needs).</summary>
    public static T Scalar<T>(JsonNode x, string field, string where, JsonValueKind kind)
    {
        if (x is not JsonValue v || v.GetValueKind() != kind) throw Wrong(where, field, kind == JsonValueKind.String ? "a string" : "a number", x);
        if (!v.TryGetValue(out T? value) || value is null) throw new TapmlException($"{where}: {field} is {Shown(x)}, out of range for {typeof(T).Name}");
        return value;
    }

    public static TapmlException Wrong(string where, string field, string expected, JsonNode? x) =>
        new($"{where}: {(field.StartsWith('"') || field.Contains('[') ? field : $"\"{field}\"")} must be {expected}, not {Shown(x)}");

    /// <summary>A JSON value for a message: its kind and at most 40 characters of it.</summary>
    static string Shown(JsonNode? x) => x switch
    {
        null => "null",
        JsonObject => "an object",
        JsonArray => "an array",
        _ => TapmlException.Bounded(x.ToJsonString(), 40),
    };
}
