using System.Globalization;
using Tapml.Core;
using Tapml.Models;

namespace Tapml.Cli;

/// <summary>The prompt of an LLM verb (<c>generate</c>, <c>carve</c>, <c>migrate</c>): <c>--input-ids 1,17,305</c>
/// as given, or <c>--prompt TEXT</c> encoded with the model's own tokenizer (tokenizer.json in its folder).</summary>
static class PromptArgs
{
    /// <summary>Token ids for <paramref name="modelSpec"/>; the tokenizer is returned when one was loaded (to
    /// decode generated text), else null.</summary>
    public static (long[] Ids, Tokenizer? Tokenizer) Resolve(string modelSpec, string? prompt, string? inputIds)
    {
        if (inputIds is not null) return (ParseIds(inputIds), TryTokenizer(modelSpec));
        if (prompt is null) throw new TapmlException("give the prompt as --prompt TEXT or --input-ids 1,17,305");
        string dir = ModelSpec.Folder(modelSpec)
            ?? throw new TapmlException($"--prompt needs a tokenizer, and '{modelSpec}' is not a model folder; give token ids with --input-ids 1,17,305");
        var tok = Tokenizer.Load(dir);
        var ids = tok.Encode(prompt);
        if (ids.Length == 0) throw new TapmlException($"--prompt '{prompt}' encodes to no tokens");
        return (ids.Select(i => (long)i).ToArray(), tok);
    }

    static Tokenizer? TryTokenizer(string modelSpec)
    {
        string? dir = ModelSpec.Folder(modelSpec);
        if (dir is null) return null;
        try { return Tokenizer.Load(dir); }
        catch (TapmlException) { return null; }
    }

    public static long[] ParseIds(string s)
    {
        var parts = s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new TapmlException("--input-ids is empty; give comma-separated token ids like 1,17,305");
        return parts.Select(x => long.TryParse(x, NumberStyles.Integer, CultureInfo.InvariantCulture, out long v) && v >= 0 ? v
            : throw new TapmlException($"--input-ids: '{x}' is not a token id (a non-negative integer)")).ToArray();
    }
}
