using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Models;

/// <summary>Hugging Face folders (config.json + safetensors) → models: one line per supported
/// <c>model_type</c>.</summary>
public static class HfModels
{
    static readonly Dictionary<string, Func<string, Model>> Builders = new()
    {
        ["llama"] = Llama.Load,
        ["qwen2"] = Qwen2.Load,
        ["mistral"] = Mistral.Load,
        ["gemma"] = Gemma.Load,
        ["phi3"] = Phi3.Load,
        ["gpt2"] = Gpt2.Load,
    };

    /// <summary>The Llama-decoder options of a Llama-family model type.</summary>
    public static DecoderOptions DecoderOptionsFor(HfConfig c) => c.ModelType switch
    {
        "llama" => Llama.Options(c),
        "qwen2" => Qwen2.Options(c),
        "mistral" => Mistral.Options(c),
        "gemma" => Gemma.Options(c),
        "phi3" => Phi3.Options(c),
        _ => throw c.Error("model_type", $"'{c.ModelType}' is not a Llama-family architecture"),
    };

    /// <summary>Whether <paramref name="dir"/> looks like a Hugging Face model folder (has config.json).</summary>
    public static bool IsHfFolder(string dir) => File.Exists(Path.Combine(dir, "config.json"));

    /// <summary>Builds the graph for the folder's architecture; unsupported model types name the file.</summary>
    public static Model Load(string dir)
    {
        var config = HfConfig.Load(dir);
        return Builders.TryGetValue(config.ModelType, out var build) ? build(dir)
            : throw config.Error("model_type", $"'{config.ModelType}' is not supported yet (supported: {string.Join(", ", Builders.Keys)})");
    }
}
