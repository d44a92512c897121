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
    public int? BosTokenId { get; }
    public IReadOnlyList<int> EosTokenIds { get; }

    HfConfig(string path, JsonObject raw)
    {
        Path = path;
        Raw = raw;
        ModelType = Str("model_type") ?? throw Error("model_type", "is missing");
        Architectures = raw["architectures"] is JsonArray a ? a.Select(x => x?.GetValue<string>() ?? "").ToList() : [];
        VocabSize = Int("vocab_size") ?? throw Error("vocab_size", "is missing");
        HiddenSize = Int("hidden_size", "n_embd", "d_model") ?? throw Error("hidden_size", "is missing");
        NumLayers = Int("num_hidden_layers", "n_layer", "num_layers") ?? throw Error("num_hidden_layers", "is missing");
        NumHeads = Int("num_attention_heads", "n_head") ?? throw Error("num_attention_heads", "is missing");
        NumKvHeads = Int("num_key_value_heads") ?? NumHeads;
        IntermediateSize = Int("intermediate_size", "n_inner") ?? 4 * HiddenSize;
        HeadDim = Int("head_dim") ?? (HiddenSize % NumHeads == 0 ? HiddenSize / NumHeads : throw Error("hidden_size", $"{HiddenSize} is not divisible by {NumHeads} heads and head_dim is not given"));
        MaxPositions = Int("max_position_embeddings", "n_positions", "n_ctx") ?? 2048;
        NormEps = Double("rms_norm_eps", "layer_norm_epsilon", "layer_norm_eps") ?? 1e-5;
        HiddenAct = Str("hidden_act") ?? Str("hidden_activation") ?? Str("activation_function") ?? "silu";
        TieWordEmbeddings = Bool("tie_word_embeddings") ?? ModelType is "gpt2" or "gemma" or "gemma2";
        SlidingWindow = Int("sliding_window");
        BosTokenId = Int("bos_token_id");
        EosTokenIds = raw["eos_token_id"] switch
        {
            JsonArray arr => arr.Select(x => x!.GetValue<int>()).ToList(),
            JsonValue v when v.TryGetValue(out int e) => [e],
            _ => [],
        };
        if (NumKvHeads <= 0 || NumHeads % NumKvHeads != 0) throw Error("num_key_value_heads", $"{NumKvHeads} does not divide {NumHeads} attention heads");
        Rope = ReadRope();
    }

    public static HfConfig Load(string pathOrDir)
    {
        string path = Directory.Exists(pathOrDir) ? System.IO.Path.Combine(pathOrDir, "config.json") : pathOrDir;
        if (!File.Exists(path)) throw new TapmlException($"config file '{path}' not found");
        JsonNode? node;
        try { node = JsonNode.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new TapmlException($"{path} is not valid JSON ({e.Message})"); }
        if (node is not JsonObject obj) throw new TapmlException($"{path} must hold a JSON object");
        try { return new HfConfig(path, obj); }
        catch (Exception e) when (e is InvalidOperationException or FormatException)
        {
            throw new TapmlException($"{path}: a value has the wrong type ({e.Message})");
        }
    }

    RopeConfig ReadRope()
    {
        // transformers ≥ 5: everything in rope_parameters; older files: rope_theta + rope_scaling (may be null).
        var p = Raw["rope_parameters"] as JsonObject ?? Raw["rope_scaling"] as JsonObject;
        double theta = (p is null ? null : Num(p, "rope_theta")) ?? Double("rope_theta") ?? 10000;
        double partial = (p is null ? null : Num(p, "partial_rotary_factor")) ?? Double("partial_rotary_factor", "rotary_pct") ?? 1;
        if (p is null) return new RopeConfig { Theta = theta, PartialRotaryFactor = partial };
        string type = (p["rope_type"] ?? p["type"])?.GetValue<string>() ?? "default";
        if (type == "su") type = "longrope";
        return new RopeConfig
        {
            Type = type,
            Theta = theta,
            Factor = Num(p, "factor") ?? 1,
            LowFreqFactor = Num(p, "low_freq_factor") ?? 1,
            HighFreqFactor = Num(p, "high_freq_factor") ?? 4,
            OriginalMaxPositions = (long?)(Num(p, "original_max_position_embeddings") ?? Double("original_max_position_embeddings")),
            PartialRotaryFactor = partial,
            ShortFactor = (p["short_factor"] as JsonArray)?.Select(x => x!.GetValue<double>()).ToArray(),
            LongFactor = (p["long_factor"] as JsonArray)?.Select(x => x!.GetValue<double>()).ToArray(),
            AttentionFactor = Num(p, "attention_factor"),
        };
    }

    static double? Num(JsonObject o, string key) => o[key] is JsonValue v && v.TryGetValue(out double d) ? d : null;

    public int? Int(params string[] keys)
    {
        foreach (var k in keys)
        {
            if (Raw[k] is not JsonValue v) continue;
            if (v.TryGetValue(out int i)) return i;
            if (v.TryGetValue(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue) return (int)d;
            throw Error(k, $"must be an integer, got {v.ToJsonString()}");
        }
        return null;
    }

    public double? Double(params string[] keys)
    {
        foreach (var k in keys)
            if (Raw[k] is JsonValue v)
                return v.TryGetValue(out double d) ? d : throw Error(k, $"must be a number, got {v.ToJsonString()}");
        return null;
    }

    public bool? Bool(string key) => Raw[key] is JsonValue v ? (v.TryGetValue(out bool b) ? b : throw Error(key, $"must be true or false, got {v.ToJsonString()}")) : null;

    public string? Str(string key) => Raw[key] is JsonValue v ? (v.TryGetValue(out string? s) ? s : throw Error(key, $"must be a string, got {v.ToJsonString()}")) : null;

    public TapmlException Error(string key, string what) => new($"{Path}: '{key}' {what}");
}
