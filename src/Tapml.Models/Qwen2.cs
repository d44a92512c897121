using Tapml.Ir;

namespace Tapml.Models;

/// <summary><c>Qwen2ForCausalLM</c>: the Llama decoder with biases on q/k/v (none on o_proj or the MLP). A sliding
/// window applies only with <c>use_sliding_window</c>, in the layers <c>layer_types</c> marks
/// <c>sliding_attention</c> (without layer_types: layers from <c>max_window_layers</c> on).</summary>
public static class Qwen2
{
    public static DecoderOptions Options(HfConfig c)
    {
        bool sliding = (c.Bool("use_sliding_window") ?? false) && c.SlidingWindow is not null;
        var layerTypes = c.StrList("layer_types");
        int maxWindowLayers = c.Int("max_window_layers") ?? c.NumLayers;
        if (maxWindowLayers < 0) throw c.Error("max_window_layers", $"must not be negative (got {maxWindowLayers})");
        return new DecoderOptions
        {
            Family = "qwen2",
            QkvBias = true,
            Activation = c.HiddenAct,
            SlidingWindow = sliding ? c.SlidingWindow : null,
            IsSliding = layerTypes is { } t && t.Count == c.NumLayers ? i => t[i] == "sliding_attention" : i => i >= maxWindowLayers,
        };
    }

    public static Model Load(string dir) => Llama.Load(dir, Options);

    public static Model Build(HfConfig c, IReadOnlyDictionary<string, Core.Tensor> weights) => Llama.Build(c, weights, Options(c));
}
