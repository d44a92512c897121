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
