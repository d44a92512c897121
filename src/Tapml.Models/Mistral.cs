using Tapml.Ir;

namespace Tapml.Models;

/// <summary><c>MistralForCausalLM</c>: the Llama decoder without biases, with <c>sliding_window</c> (when set)
/// in every layer: query i sees key j when <c>0 ≤ i - j &lt; sliding_window</c>, in prefill and through the cache
/// (the cache keeps every key; the mask does the windowing).</summary>
public static class Mistral
{
    public static DecoderOptions Options(HfConfig c) => new()
    {
        Family = "mistral",
        Activation = c.HiddenAct,
        SlidingWindow = c.SlidingWindow,
    };

    public static Model Load(string dir) => Llama.Load(dir, Options);

    public static Model Build(HfConfig c, IReadOnlyDictionary<string, Core.Tensor> weights) => Llama.Build(c, weights, Options(c));
}
