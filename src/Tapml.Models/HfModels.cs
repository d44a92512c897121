using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Models;

/// <summary>Hugging Face folders (config.json + safetensors) → models: one <see cref="Architecture"/> per supported
/// <c>model_type</c> (<see cref="Architectures"/>).</summary>
public static class HfModels
{
    /// <summary>The Llama-decoder options of a decoder-family model type.</summary>
    public static DecoderOptions DecoderOptionsFor(HfConfig c) => Architectures.For(c).Options?.Invoke(c)
        ?? throw c.Error("model_type", $"'{c.ModelType}' is not a Llama-family architecture");

    /// <summary>Whether <paramref name="dir"/> looks like a Hugging Face model folder (has config.json).</summary>
    public static bool IsHfFolder(string dir) => File.Exists(Path.Combine(dir, "config.json"));

    /// <summary>Builds the graph for the folder's architecture; unsupported model types name the file.</summary>
    public static Model Load(string dir)
    {
        var config = HfConfig.Load(dir);
        return Architectures.For(config).Load(dir);
    }
}
