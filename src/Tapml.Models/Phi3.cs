using Tapml.Ir;

namespace Tapml.Models;

/// <summary><c>Phi3ForCausalLM</c>: the Llama decoder over fused checkpoint tensors (<c>qkv_proj</c> rows q, k, v;
/// <c>gate_up_proj</c> rows gate, up), split at load time. RoPE default or longrope/su, partial_rotary_factor
/// honoured, and <c>sliding_window</c> (when set) in every layer as for Mistral.</summary>
public static class Phi3
{
    public static DecoderOptions Options(HfConfig c) => new()
    {
        Family = "phi3",
        Activation = c.HiddenAct,
        FusedQkv = true,
        FusedGateUp = true,
        PartialRotary = true,
        SlidingWindow = c.SlidingWindow,
    };

    public static Model Load(string dir) => Llama.Load(dir, Options);

    public static Model Build(HfConfig c, IReadOnlyDictionary<string, Core.Tensor> weights) => Llama.Build(c, weights, Options(c));
}
