using Tapml.Ir;

namespace Tapml.Models;

/// <summary><c>GemmaForCausalLM</c>: the Llama decoder with embeddings scaled by sqrt(hidden_size), RMSNorm as
/// <c>x̂ · (1 + weight)</c>, a GeGLU MLP (<c>hidden_activation</c>, else <c>hidden_act</c>; gelu_pytorch_tanh in
/// practice), head_dim from the config and lm_head tied to the embeddings unless the config says otherwise.</summary>
public static class Gemma
{
    public static DecoderOptions Options(HfConfig c)
    {
        bool bias = c.Bool("attention_bias") ?? false;
        return new DecoderOptions
        {
            Family = "gemma",
            QkvBias = bias,
            OutBias = bias,
            Activation = c.Str("hidden_activation") ?? c.HiddenAct,
            NormAddsOne = true,
            ScaleEmbeddings = true,
        };
    }

    public static Model Load(string dir) => Llama.Load(dir, Options);

    public static Model Build(HfConfig c, IReadOnlyDictionary<string, Core.Tensor> weights) => Llama.Build(c, weights, Options(c));
}
