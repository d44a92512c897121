using System.Text.Json;
using System.Text.Json.Nodes;
using Tapml.Core;

namespace Tapml.Models;

/// <summary>RoPE parameters, from either the top-level <c>rope_theta</c>/<c>rope_scaling</c> keys that published
/// checkpoints use or the <c>rope_parameters</c> block that transformers ≥ 5 writes.</summary>
public sealed record RopeConfig
{
    /// <summary>default, linear, dynamic, llama3, longrope (su), yarn.</summary>
    public string Type { get; init; } = "default";
    public double Theta { get; init; } = 10000;
    public double Factor { get; init; } = 1;
    public double LowFreqFactor { get; init; } = 1;
    public double HighFreqFactor { get; init; } = 4;
    public long? OriginalMaxPositions { get; init; }
    public double PartialRotaryFactor { get; init; } = 1;
    public double[]? ShortFactor { get; init; }
    public double[]? LongFactor { get; init; }
    public double? AttentionFactor { get; init; }
}

/// <summary>A Hugging Face <c>config.json</c>: the common fields typed (with the GPT-2 style aliases), the rest
/// readable by key. Every error names the file and the key.</summary>
public sealed class HfConfig
{
    public string Path { get; }
    public JsonObject Raw { get; }

    public string ModelType { get; }
    public IReadOnlyList<string> Architectures { get; }
    public int VocabSize { get; }
    public int HiddenSize { get; }
    public int IntermediateSize { get; }
    public int NumLayers { get; }
    public int NumHeads { get; }
    public int NumKvHeads { get; }
    public int HeadDim { get; }
    public int MaxPositions { get; }
    public double NormEps { get; }
    public string HiddenAct { get; }
    public bool TieWordEmbeddings { get; }
    public int? SlidingWindow { get; }
    public RopeConfig Rope { get; }
    /// <summary>Gemma 3: the RoPE of the sliding-window layers (rope_parameters.sliding_attention, or the older
    /// rope_local_base_freq); null when the config has no per-layer-type RoPE.</summary>
    public RopeConfig? LocalRope { get; }
    public int? BosTokenId { get; }
    public IReadOnlyList<int> EosTokenIds { get; }

    /// <summary>The keys (first is the name used in messages) each aliased size is read from.</summary>
    public static readonly string[] HiddenKeys = ["hidden_size", "n_embd", "d_model"];
    public static readonly string[] LayerKeys = ["num_hidden_layers", "n_layer", "num_layers"];
    public static readonly string[] HeadKeys = ["num_attention_heads", "n_head"];

    /// <summary>Largest config.json read (published ones are a few kilobytes).</summary>
    public const long MaxBytes = 4 << 20;

    const int MaxName = 256;

    HfConfig(string path, JsonObject raw)
    {
        Path = path;
        Raw = raw;
        ModelType = Str("model_type") ?? throw Error("model_type", "is missing");
        Architectures = StrList("architectures") ?? [];
        VocabSize = Positive("vocab_size") ?? throw Error("vocab_size", "is missing");
        HiddenSize = Positive(HiddenKeys) ?? throw Error("hidden_size", "is missing");
        NumLayers = Positive(LayerKeys) ?? throw Error("num_hidden_layers", "is missing");
        NumHeads = Positive(HeadKeys) ?? throw Error("num_attention_heads", "is missing");
        // NOTE: Falcon and GPT-BigCode say kv heads through multi_query / new_decoder_architecture + num_kv_heads.
        // GPT-NeoX, GPT-J, BLOOM and OPT are multi-head only (transformers ignores a num_key_value_heads there).
        NumKvHeads = ModelType switch
        {
            "falcon" => (Bool("new_decoder_architecture") ?? false) || !(Bool("multi_query") ?? true) ? Positive("num_kv_heads") ?? NumHeads : 1,
            "gpt_bigcode" => (Bool("multi_query") ?? true) ? 1 : NumHeads,
            "gpt_neox" or "gptj" or "bloom" or "opt" => NumHeads,
            _ => Positive("num_key_value_heads") ?? NumHeads,
        };
        IntermediateSize = Positive("intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim")
            ?? (HiddenSize <= int.MaxValue / 4 ? 4 * HiddenSize : throw Error(KeyOf(HiddenKeys), $"{HiddenSize} is too large (4 × it, the default intermediate_size, overflows)"));
        HeadDim = Positive("head_dim") ?? (HiddenSize % NumHeads == 0 ? HiddenSize / NumHeads : throw Error(KeyOf(HiddenKeys), $"{HiddenSize} is not divisible by {NumHeads} heads and head_dim is not given"));
        MaxPositions = Positive("max_position_embeddings", "n_positions", "n_ctx") ?? 2048;
        NormEps = PositiveReal("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps", "norm_epsilon", "norm_eps") ?? 1e-5;
        HiddenAct = Str("hidden_act") ?? Str("hidden_activation") ?? Str("activation_function") ?? "silu";
        TieWordEmbeddings = Bool("tie_word_embeddings") ?? Models.Architectures.Find(ModelType)?.TiedByDefault ?? false;
        // NOTE: transformers writes sliding_window 0 for "no window" in some configs (Qwen2-MoE).
        SlidingWindow = Int("sliding_window") is int sw && sw != 0 ? (sw > 0 ? sw : throw Error("sliding_window", $"must be a positive integer (got {sw})")) : null;
        BosTokenId = TokenId("bos_token_id", Raw["bos_token_id"]);
        EosTokenIds = Raw["eos_token_id"] switch
        {
            null => [],
            JsonArray arr => arr.Select(x => TokenId("eos_token_id", x) ?? throw Error("eos_token_id", "holds null; every entry must be a token id")).ToList(),
            var v => [TokenId("eos_token_id", v)!.Value],
        };
        if (NumHeads % NumKvHeads != 0) throw Error("num_key_value_heads", $"{NumKvHeads} does not divide {NumHeads} attention heads");
        Rope = ReadRope();
        if (Raw["rope_parameters"] is JsonObject rp && rp["full_attention"] is JsonObject)
            LocalRope = ReadRope(rp["sliding_attention"] as JsonObject, "rope_parameters.sliding_attention");
        else if (PositiveReal("rope_local_base_freq") is double local)
            LocalRope = new RopeConfig { Theta = local };
        else if (ModelType == "gemma3_text")
            LocalRope = new RopeConfig { Theta = 10000 }; // transformers' default rope_local_base_freq
    }

    /// <summary>Reads and checks <c>config.json</c>: a folder's (which must be a regular file inside it, not a link
    /// out of it) or the file named. Every field the builders use is range-checked with the field named.</summary>
    public static HfConfig Load(string pathOrDir)
    {
        if (pathOrDir.Contains('\0')) throw new TapmlException("the config path contains a NUL character");
        string path = Directory.Exists(pathOrDir) ? System.IO.Path.Combine(pathOrDir, "config.json") : pathOrDir;
        if (!File.Exists(path)) throw new TapmlException($"config file '{path}' not found");
        string real = Directory.Exists(pathOrDir) ? SafePaths.Contained(pathOrDir, "config.json", path) : path;
        if (JsonFiles.Node(real, MaxBytes) is not JsonObject obj) throw new TapmlException($"{path} must hold a JSON object");
        return new HfConfig(path, obj);
    }

    RopeConfig ReadRope()
    {
        // transformers ≥ 5: everything in rope_parameters (Gemma 3: one block per layer type); older files:
        // rope_theta + rope_scaling (may be null).
        string blockKey = Raw["rope_parameters"] is not null ? "rope_parameters" : "rope_scaling";
        var p = Raw[blockKey] switch
        {
            null => null,
            JsonObject o => o,
            var other => throw Error(blockKey, $"must be an object or null, got {Shorten(other.ToJsonString())}"),
        };
        if (p?["full_attention"] is JsonObject full) { p = full; blockKey += ".full_attention"; }
        return ReadRope(p, blockKey);
    }

    RopeConfig ReadRope(JsonObject? p, string blockKey)
    {
        double theta = (p is null ? null : Num(p, blockKey, "rope_theta")) ?? PositiveReal("rope_theta", "rotary_emb_base") ?? 10000;
        // NOTE: GPT-J gives the rotary channels as a count (rotary_dim), not a factor.
        double partial = (p is null ? null : Num(p, blockKey, "partial_rotary_factor")) ?? PositiveReal("partial_rotary_factor", "rotary_pct")
            ?? (Positive("rotary_dim") is int rd ? (rd <= HeadDim ? (double)rd / HeadDim : throw Error("rotary_dim", $"{rd} is more than head_dim {HeadDim}")) : 1);
        if (!(partial > 0 && partial <= 1)) throw Error("partial_rotary_factor", $"must be in (0, 1] (got {partial})");
        if (p is null) return new RopeConfig { Theta = theta, PartialRotaryFactor = partial };
        string type = Str(p, blockKey, "rope_type") ?? Str(p, blockKey, "type") ?? "default";
        if (type == "su") type = "longrope";
        double? original = Num(p, blockKey, "original_max_position_embeddings") ?? PositiveReal("original_max_position_embeddings");
        if (original is double om && (om != Math.Floor(om) || om > int.MaxValue))
            throw Error("original_max_position_embeddings", $"must be a positive integer (got {om})");
        return new RopeConfig
        {
            Type = type,
            Theta = theta,
            Factor = Num(p, blockKey, "factor") ?? 1,
            LowFreqFactor = Num(p, blockKey, "low_freq_factor") ?? 1,
            HighFreqFactor = Num(p, blockKey, "high_freq_factor") ?? 4,
            OriginalMaxPositions = (long?)original,
            PartialRotaryFactor = partial,
            ShortFactor = Factors(p, blockKey, "short_factor"),
            LongFactor = Factors(p, blockKey, "long_factor"),
            AttentionFactor = Num(p, blockKey, "attention_factor"),
        };
    }

    // Every number inside a RoPE block is a scale, a frequency factor or a length: positive and finite.
    double? Num(JsonObject o, string block, string key) => o[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out double d) && d > 0 && double.IsFinite(d) => d,
        var v => throw Error($"{block}.{key}", $"must be a positive finite number (got {Shorten(v.ToJsonString())})"),
    };

    string? Str(JsonObject o, string block, string key) => o[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out string? s) => s.Length <= MaxName ? s : throw Error($"{block}.{key}", $"is {s.Length} characters long (a name is at most {MaxName})"),
        var v => throw Error($"{block}.{key}", $"must be a string (got {Shorten(v.ToJsonString())})"),
    };

    double[]? Factors(JsonObject o, string block, string key)
    {
        if (o[key] is null) return null;
        if (o[key] is not JsonArray a) throw Error($"{block}.{key}", $"must be a list of numbers (got {Shorten(o[key]!.ToJsonString())})");
        var f = new double[a.Count];
        for (int i = 0; i < f.Length; i++)
            f[i] = a[i] is JsonValue v && v.TryGetValue(out double d) && d > 0 && double.IsFinite(d) ? d
                : throw Error($"{block}.{key}", $"entry {i} must be a positive finite number (got {Shorten(a[i]?.ToJsonString() ?? "null")})");
        return f;
    }

    /// <summary>The first of <paramref name="keys"/> the file has (null counts as absent), else the first key.</summary>
    public string KeyOf(params string[] keys) => keys.FirstOrDefault(k => Raw[k] is not null) ?? keys[0];

    /// <summary>The first present of <paramref name="keys"/> as an integer (a whole number in int range).</summary>
    public int? Int(params string[] keys)
    {
        foreach (var k in keys)
        {
            if (Raw[k] is null) continue;
            if (Raw[k] is JsonValue v)
            {
                if (v.TryGetValue(out int i)) return i;
                if (v.TryGetValue(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue) return (int)d;
            }
            throw Error(k, $"must be an integer, got {Shorten(Raw[k]!.ToJsonString())}");
        }
        return null;
    }

    /// <summary>As <see cref="Int"/>, and it must be positive (a size, a count).</summary>
    public int? Positive(params string[] keys)
    {
        int? v = Int(keys);
        return v is null or > 0 ? v : throw Error(KeyOf(keys), $"must be a positive integer (got {v})");
    }

    /// <summary>The first present of <paramref name="keys"/> as a positive finite number (an epsilon, a theta).</summary>
    public double? PositiveReal(params string[] keys)
    {
        double? v = Double(keys);
        return v is null || v > 0 && double.IsFinite(v.Value) ? v : throw Error(KeyOf(keys), $"must be a positive finite number (got {v})");
    }

    public double? Double(params string[] keys)
    {
        foreach (var k in keys)
            if (Raw[k] is not null)
                return Raw[k] is JsonValue v && v.TryGetValue(out double d) ? d : throw Error(k, $"must be a number, got {Shorten(Raw[k]!.ToJsonString())}");
        return null;
    }

    public bool? Bool(string key) => Raw[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out bool b) => b,
        var v => throw Error(key, $"must be true or false, got {Shorten(v.ToJsonString())}"),
    };

    public string? Str(string key) => Raw[key] switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out string? s) => s.Length <= MaxName ? s : throw Error(key, $"is {s.Length} characters long (a name is at most {MaxName})"),
        var v => throw Error(key, $"must be a string, got {Shorten(v.ToJsonString())}"),
    };

    /// <summary>A list of strings (no nulls), or null when the key is absent.</summary>
    public IReadOnlyList<string>? StrList(string key) => Raw[key] switch
    {
        null => null,
        JsonArray a => a.Select((x, i) => x is JsonValue v && v.TryGetValue(out string? s) && s.Length <= MaxName ? s
            : throw Error(key, $"entry {i} must be a string (got {Shorten(x?.ToJsonString() ?? "null")})")).ToList(),
        var v => throw Error(key, $"must be a list of strings, got {Shorten(v.ToJsonString())}"),
    };

    int? TokenId(string key, JsonNode? n) => n switch
    {
        null => null,
        JsonValue v when v.TryGetValue(out int id) && id >= 0 => id,
        _ => throw Error(key, $"must be a token id (a non-negative integer), got {Shorten(n.ToJsonString())}"),
    };

    static string Shorten(string s) => s.Length <= 80 ? s : s[..80] + "…";

    public TapmlException Error(string key, string what) => new($"{Path}: '{key}' {what}");
}
