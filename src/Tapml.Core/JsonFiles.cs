using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Unicode;

namespace Tapml.Core;

/// <summary>Reads the JSON files of a model folder (config.json, tokenizer.json, a shard index) the one careful way:
/// a regular file (never a pipe or device), at most <c>maxBytes</c> long, valid UTF-8, no key twice in an object,
/// nesting at most 64 deep. Every failure is one <see cref="TapmlException"/> line naming the file.</summary>
public static class JsonFiles
{
    /// <summary>Parser options: duplicate keys are an error (a later value silently replacing an earlier one hides
    /// a hostile edit), and the default depth limit stands.</summary>
    public static readonly JsonDocumentOptions Strict = new() { AllowDuplicateProperties = false, MaxDepth = 64 };

    /// <summary>The bytes of <paramref name="path"/>, checked to be a regular file of at most
    /// <paramref name="maxBytes"/> bytes holding valid UTF-8.</summary>
    public static byte[] ReadBytes(string path, long maxBytes)
    {
        SafePaths.RegularFile(path, path);
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1);
        if (fs.Length > maxBytes) throw new TapmlException($"{path}: {fs.Length} bytes is over the {maxBytes}-byte limit for this file");
        var bytes = new byte[fs.Length];
        fs.ReadExactly(bytes);
        if (!Utf8.IsValid(bytes)) throw new TapmlException($"{path}: not valid UTF-8 text");
        return bytes;
    }

    // NOTE: the parser quotes the offending text, which a hostile file can make megabytes long.
    static string Shorten(string s) => s.Length <= 300 ? s : s[..300] + "…";

    /// <summary>The parsed document of <paramref name="path"/> (see <see cref="ReadBytes"/>).</summary>
    public static JsonDocument Document(string path, long maxBytes)
    {
        var bytes = ReadBytes(path, maxBytes);
        try { return JsonDocument.Parse(bytes, Strict); }
        catch (JsonException e) { throw new TapmlException($"{path}: not valid JSON ({Shorten(e.Message)})", e); }
    }

    /// <summary>The parsed tree of <paramref name="path"/> (see <see cref="ReadBytes"/>).</summary>
    public static JsonNode? Node(string path, long maxBytes)
    {
        var bytes = ReadBytes(path, maxBytes);
        try { return JsonNode.Parse(bytes, null, Strict); }
        catch (JsonException e) { throw new TapmlException($"{path}: not valid JSON ({Shorten(e.Message)})", e); }
    }
}
