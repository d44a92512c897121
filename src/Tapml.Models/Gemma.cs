using Tapml.Ir;

namespace Tapml.Models;

/// <summary><c>GemmaForCausalLM</c>: the Llama decoder with embeddings scaled by sqrt(hidden_size), RMSNorm as
/// <c>x̂ · (1 + weight)</c>, a GeGLU MLP with <c>hidden_act</c> (default gelu_pytorch_tanh; current transformers
/// reads only hidden_act, so the older <c>hidden_activation</c> key is ignored and gemma-2b's "gelu" means the erf
/// GELU), head_dim from the config and lm_head tied to the embeddings unless the config says otherwise.</summary>
public static class Gemma
{
    public static DecoderOptions Options(HfConfig c)
    {
        bool bias = c.Bool("attention_bias") ?? false;
        if (c.Bool("use_bidirectional_attention") == true) throw c.Error("use_bidirectional_attention", "is true; only causal attention is supported");
        return new DecoderOptions
        {
            Family = "gemma",
            QkvBias = bias,
            OutBias = bias,
            Activation = c.Str("hidden_act") ?? "gelu_pytorch_tanh",
            NormAddsOne = true,
            ScaleEmbeddings = true,
        };
    }

    public static Model Load(string dir) => Llama.Load(dir, Options);

    public static Model Build(HfConfig c, IReadOnlyDictionary<string, Core.Tensor> weights) => Llama.Build(c, weights, Options(c));
}
