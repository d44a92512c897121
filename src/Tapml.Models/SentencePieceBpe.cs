using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Tapml.Core;

namespace Tapml.Models;

/// <summary>SentencePiece-style BPE as Hugging Face tokenizer.json writes it for Llama 2, Mistral and Gemma: spaces
/// become '▁' (a Replace/Prepend normalizer or a Metaspace pre-tokenizer), BPE merges by rank over the characters of
/// each piece, characters outside the vocabulary fall back to their UTF-8 bytes as &lt;0xXX&gt; tokens
/// (byte_fallback), and decoding reverses it (▁ → space, byte tokens fused back into UTF-8, the prepended space
/// stripped). Microsoft.ML.Tokenizers reads SentencePiece only from .model protobuf files, which these checkpoints
/// do not ship, so this small class does it from tokenizer.json.</summary>
sealed class SentencePieceBpe
{
    const char Meta = '\u2581';
    readonly Dictionary<string, int> _vocab;
    readonly string[] _tokens;
    readonly Dictionary<(string, string), int> _ranks;
    readonly bool _byteFallback, _fuseUnk;
    readonly int? _unk;
    string _prepend = "";          // normalizer Prepend content
    bool _replaceSpace;            // normalizer Replace ' ' → '▁'
    readonly bool _metaspace, _metaspaceSplit;
    readonly string _prependScheme = "never";
    bool _stripLeadingSpace;       // decoder Strip(start 1) or Metaspace decoding with a prepend scheme
    readonly Dictionary<string, int> _added;
    readonly Regex? _addedSplit;

    SentencePieceBpe(string path, JsonElement root, JsonElement model, Dictionary<string, int> vocab, List<(string, string)> merges, Dictionary<string, int> added)
    {
        _vocab = vocab;
        _added = added;
        int size = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Values.Max() + 1);
        _tokens = new string[size];
        foreach (var (t, id) in vocab) _tokens[id] = t;
        foreach (var (t, id) in added) _tokens[id] = t;
        _ranks = new Dictionary<(string, string), int>(merges.Count);
        for (int i = 0; i < merges.Count; i++) _ranks.TryAdd(merges[i], i);
        _byteFallback = model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
        _fuseUnk = model.TryGetProperty("fuse_unk", out var fu) && fu.ValueKind == JsonValueKind.True;
        if (model.TryGetProperty("unk_token", out var unk) && unk.ValueKind == JsonValueKind.String && vocab.TryGetValue(unk.GetString()!, out int u)) _unk = u;
        if (root.TryGetProperty("normalizer", out var norm) && norm.ValueKind == JsonValueKind.Object) ReadNormalizer(path, norm);
        if (root.TryGetProperty("pre_tokenizer", out var pre) && pre.ValueKind == JsonValueKind.Object)
        {
            string type = pre.GetProperty("type").GetString() ?? "";
            if (type != "Metaspace") throw new UnsupportedException($"{path}: pre-tokenizer '{Tokenizer.Shorten(type)}' with a SentencePiece-style BPE is not supported (only Metaspace or none)");
            _metaspace = true;
            _metaspaceSplit = !pre.TryGetProperty("split", out var sp) || sp.ValueKind == JsonValueKind.True;
            _prependScheme = pre.TryGetProperty("prepend_scheme", out var ps) ? ps.GetString() ?? "always"
                : pre.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.False ? "never" : "always";
        }
        if (root.TryGetProperty("decoder", out var dec) && dec.ValueKind == JsonValueKind.Object) ReadDecoder(dec);
        if (added.Count > 0)
            _addedSplit = new Regex(string.Join("|", added.Keys.OrderByDescending(k => k.Length).Select(Regex.Escape)), RegexOptions.CultureInvariant, Tokenizer.RegexTimeout);
        void ReadNormalizer(string p, JsonElement n)
        {
            string type = n.GetProperty("type").GetString() ?? "";
            switch (type)
            {
                case "Sequence": foreach (var x in n.GetProperty("normalizers").EnumerateArray()) ReadNormalizer(p, x); break;
                case "Prepend": _prepend = n.GetProperty("prepend").GetString() ?? ""; break;
                case "Replace":
                    if (n.GetProperty("pattern").TryGetProperty("String", out var s) && s.GetString() == " " && n.GetProperty("content").GetString() == Meta.ToString()) _replaceSpace = true;
                    else throw new UnsupportedException($"{p}: Replace normalizer other than ' ' → '▁' is not supported");
                    break;
                default: throw new UnsupportedException($"{p}: normalizer '{Tokenizer.Shorten(type)}' with a SentencePiece-style BPE is not supported");
            }
        }
        void ReadDecoder(JsonElement d)
        {
            string type = d.GetProperty("type").GetString() ?? "";
            if (type == "Sequence") foreach (var x in d.GetProperty("decoders").EnumerateArray()) ReadDecoder(x);
            else if (type == "Strip" && d.TryGetProperty("start", out var st) && st.GetInt32() > 0) _stripLeadingSpace = true;
            else if (type == "Metaspace")
            {
                string scheme = d.TryGetProperty("prepend_scheme", out var ps) ? ps.GetString() ?? "always" : "always";
                if (scheme != "never") _stripLeadingSpace = true;
            }
        }
    }

    /// <summary>Whether a tokenizer.json describes a SentencePiece-style BPE (byte fallback, '▁' for spaces).</summary>
    public static bool Detect(JsonElement root, JsonElement model)
    {
        if (model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True) return true;
        if (root.TryGetProperty("pre_tokenizer", out var pre) && pre.ValueKind == JsonValueKind.Object && pre.GetProperty("type").GetString() == "Metaspace") return true;
        return root.TryGetProperty("normalizer", out var n) && n.ValueKind == JsonValueKind.Object && n.GetRawText().Contains("\\u2581");
    }

    public static SentencePieceBpe Create(string path, JsonElement root, JsonElement model, Dictionary<string, int> vocab, List<string> merges, Dictionary<string, int> added) =>
        new(path, root, model, vocab, merges.Select(m => { int sp = m.IndexOf(' '); return (m[..sp], m[(sp + 1)..]); }).ToList(), added);

    public int[] Encode(string text)
    {
        var ids = new List<int>();
        int pos = 0, segment = 0;
        foreach (Match m in _addedSplit?.Matches(text) ?? (IEnumerable<Match>)[])
        {
            if (m.Index > pos) EncodeSegment(text[pos..m.Index], segment++, ids);
            ids.Add(_added[m.Value]);
            pos = m.Index + m.Length;
        }
        if (pos < text.Length) EncodeSegment(text[pos..], segment, ids);
        return [.. ids];
    }

    void EncodeSegment(string s, int segment, List<int> ids)
    {
        if (_prepend.Length > 0) s = _prepend + s;
        if (_replaceSpace || _metaspace) s = s.Replace(' ', Meta);
        if (_metaspace && (_prependScheme == "always" || _prependScheme == "first" && segment == 0) && !s.StartsWith(Meta)) s = Meta + s;
        if (!_metaspace || !_metaspaceSplit) { Bpe(s, ids); return; }
        // NOTE: Metaspace split: each word keeps the '▁' that starts it.
        int start = 0;
        for (int i = 1; i <= s.Length; i++)
            if (i == s.Length || s[i] == Meta) { Bpe(s[start..i], ids); start = i; }
    }

    void Bpe(string word, List<int> ids)
    {
        if (word.Length == 0) return;
        if (_vocab.TryGetValue(word, out int whole) && _ranks.Count == 0) { ids.Add(whole); return; }
        var symbols = new List<string>();
        foreach (var rune in word.EnumerateRunes()) symbols.Add(rune.ToString());
        while (symbols.Count > 1)
        {
            int best = -1, bestRank = int.MaxValue;
            for (int i = 0; i + 1 < symbols.Count; i++)
                if (_ranks.TryGetValue((symbols[i], symbols[i + 1]), out int r) && r < bestRank) { bestRank = r; best = i; }
            if (best < 0) break;
            symbols[best] += symbols[best + 1];
            symbols.RemoveAt(best + 1);
        }
        bool lastUnk = false;
        foreach (var sym in symbols)
        {
            if (_vocab.TryGetValue(sym, out int id)) { ids.Add(id); lastUnk = false; continue; }
            if (_byteFallback)
            {
                foreach (byte b in Encoding.UTF8.GetBytes(sym))
                    ids.Add(_vocab.TryGetValue($"<0x{b:X2}>", out int bid) ? bid : _unk ?? throw new TapmlException($"byte token <0x{b:X2}> is missing from the vocabulary"));
                lastUnk = false;
                continue;
            }
            if (_unk is not int unkId) throw new TapmlException($"'{Tokenizer.Shorten(sym)}' is not in the vocabulary and the tokenizer has no unk token");
            if (!(_fuseUnk && lastUnk)) ids.Add(unkId);
            lastUnk = true;
        }
    }

    public string Decode(IEnumerable<int> ids)
    {
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            string tok = _tokens[id] ?? "";
            if (_byteFallback && tok.Length == 6 && tok.StartsWith("<0x", StringComparison.Ordinal) && tok[5] == '>'
                && byte.TryParse(tok.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out byte b))
                bytes.Add(b);
            else bytes.AddRange(Encoding.UTF8.GetBytes(_added.ContainsKey(tok) ? tok : tok.Replace(Meta, ' ')));
        }
        string text = Encoding.UTF8.GetString(bytes.ToArray());
        return _stripLeadingSpace && text.StartsWith(' ') ? text[1..] : text;
    }
}
