namespace Tapml.Models;

/// <summary>The decoder switches of the architectures that are the Llama decoder with a twist and need no file of
/// their own (see <see cref="Architectures"/> for which twist each is). Config values the graph does not implement
/// are refused naming the key.</summary>
public static class Decoders
{
    /// <summary>attention_bias on q/k/v/o.</summary>
    static bool AttnBias(HfConfig c) => c.Bool("attention_bias") ?? false;

    /// <summary>Qwen's window: only with use_sliding_window, in the layers layer_types marks sliding_attention
    /// (without layer_types: layers from max_window_layers on).</summary>
    internal static (int? Window, Func<int, bool> IsSliding) QwenWindow(HfConfig c)
    {
        bool sliding = (c.Bool("use_sliding_window") ?? false) && c.SlidingWindow is not null;
        var layerTypes = c.StrList("layer_types");
        int maxWindowLayers = c.Int("max_window_layers") ?? c.NumLayers;
        if (maxWindowLayers < 0) throw c.Error("max_window_layers", $"must not be negative (got {maxWindowLayers})");
        return (sliding ? c.SlidingWindow : null, layerTypes is { } t && t.Count == c.NumLayers ? i => t[i] == "sliding_attention" : i => i >= maxWindowLayers);
    }

    /// <summary>layer_types' sliding_attention layers; when absent, transformers' default for the architecture: every
    /// <paramref name="pattern"/>-th layer is full attention, the others slide (Gemma 2: 2, Gemma 3: sliding_window_pattern,
    /// default 6). The list must have one entry a layer.</summary>
    static Func<int, bool> LayerTypes(HfConfig c, int pattern)
    {
        var t = c.StrList("layer_types");
        if (t is null) return i => (i + 1) % pattern != 0;
        if (t.Count != c.NumLayers) throw c.Error("layer_types", $"has {t.Count} entries for {c.NumLayers} layers");
        foreach (var x in t)
            if (x is not ("sliding_attention" or "full_attention")) throw c.Error("layer_types", $"holds '{x}'; supported: sliding_attention, full_attention");
        return i => t[i] == "sliding_attention";
    }

    /// <summary>Qwen-MoE layer choice: not in mlp_only_layers, and (layer + 1) a multiple of decoder_sparse_step.</summary>
    static Func<int, bool> QwenMoeLayers(HfConfig c)
    {
        int step = c.Positive("decoder_sparse_step") ?? 1;
        var only = new HashSet<int>();
        if (c.Raw["mlp_only_layers"] is System.Text.Json.Nodes.JsonArray a)
            foreach (var n in a) only.Add(n is System.Text.Json.Nodes.JsonValue v && v.TryGetValue(out int i) ? i : throw c.Error("mlp_only_layers", "must be a list of layer indices"));
        return i => !only.Contains(i) && (i + 1) % step == 0;
    }

    static void NoJitter(HfConfig c)
    {
        if ((c.Double("router_jitter_noise") ?? 0) != 0) throw c.Error("router_jitter_noise", "must be 0 (router noise is training-only)");
    }

    public static DecoderOptions Qwen3(HfConfig c)
    {
        var (window, isSliding) = QwenWindow(c);
        return new DecoderOptions
        {
            Family = "qwen3", QkvBias = AttnBias(c), OutBias = AttnBias(c), Activation = c.HiddenAct, QkNorm = "head_rms",
            SlidingWindow = window, IsSliding = isSliding,
        };
    }

    public static DecoderOptions Qwen3Moe(HfConfig c)
    {
        int experts = c.Positive("num_experts", "num_local_experts") ?? throw c.Error("num_experts", "is missing");
        return Qwen3(c) with
        {
            Family = "qwen3_moe",
            Moe = new MoeOptions(experts, TopK(c, experts), c.Positive("moe_intermediate_size") ?? throw c.Error("moe_intermediate_size", "is missing"), c.Bool("norm_topk_prob") ?? false),
            IsMoeLayer = QwenMoeLayers(c),
        };
    }

    static int TopK(HfConfig c, int experts)
    {
        int k = c.Positive("num_experts_per_tok") ?? throw c.Error("num_experts_per_tok", "is missing");
        return k <= experts ? k : throw c.Error("num_experts_per_tok", $"{k} is more than the {experts} experts");
    }

    public static DecoderOptions Qwen2Moe(HfConfig c)
    {
        var (window, isSliding) = QwenWindow(c);
        int experts = c.Positive("num_experts") ?? throw c.Error("num_experts", "is missing");
        bool qkv = c.Bool("qkv_bias") ?? true;
        return new DecoderOptions
        {
            Family = "qwen2_moe", QkvBias = qkv, Activation = c.HiddenAct, SlidingWindow = window, IsSliding = isSliding,
            Moe = new MoeOptions(experts, TopK(c, experts), c.Positive("moe_intermediate_size") ?? throw c.Error("moe_intermediate_size", "is missing"),
                c.Bool("norm_topk_prob") ?? false, c.Positive("shared_expert_intermediate_size") ?? throw c.Error("shared_expert_intermediate_size", "is missing")),
            IsMoeLayer = QwenMoeLayers(c),
        };
    }

    public static DecoderOptions Mixtral(HfConfig c)
    {
        NoJitter(c);
        int experts = c.Positive("num_local_experts") ?? throw c.Error("num_local_experts", "is missing");
        return new DecoderOptions
        {
            Family = "mixtral", Activation = c.HiddenAct, SlidingWindow = c.SlidingWindow,
            Moe = new MoeOptions(experts, TopK(c, experts), c.IntermediateSize, NormTopK: true),
            Rename = n => n.Replace(".mlp.gate.", ".block_sparse_moe.gate.").Replace(".mlp.experts.", ".block_sparse_moe.experts.")
                .Replace(".gate_proj.", ".w1.").Replace(".up_proj.", ".w3.").Replace(".down_proj.", ".w2."),
        };
    }

    public static DecoderOptions Granite(HfConfig c) => new()
    {
        Family = "granite", QkvBias = AttnBias(c), OutBias = AttnBias(c), MlpBias = c.Bool("mlp_bias") ?? false, Activation = c.HiddenAct,
        EmbeddingMultiplier = c.Double("embedding_multiplier") ?? 1, ResidualMultiplier = c.Double("residual_multiplier") ?? 1,
        AttentionScale = c.Double("attention_multiplier") ?? 1, LogitsDivisor = c.PositiveReal("logits_scaling") ?? 1,
    };

    public static DecoderOptions Olmo(HfConfig c) => new()
    {
        Family = "olmo", QkvBias = AttnBias(c), OutBias = AttnBias(c), Activation = c.HiddenAct, Norm = "layer_noparams",
        ClipQkv = c.PositiveReal("clip_qkv"),
    };

    public static DecoderOptions Olmo2(HfConfig c) => new()
    {
        Family = "olmo2", QkvBias = AttnBias(c), OutBias = AttnBias(c), Activation = c.HiddenAct, Block = "post", QkNorm = "full_rms",
    };

    public static DecoderOptions Starcoder2(HfConfig c)
    {
        bool bias = c.Bool("use_bias") ?? true;
        return new DecoderOptions
        {
            Family = "starcoder2", QkvBias = bias, OutBias = bias, MlpBias = bias, Activation = c.HiddenAct, Norm = "layer", Mlp = "plain",
            SlidingWindow = c.SlidingWindow, Rename = n => n.Replace(".mlp.up_proj.", ".mlp.c_fc.").Replace(".mlp.down_proj.", ".mlp.c_proj."),
        };
    }

    public static DecoderOptions Nemotron(HfConfig c) => new()
    {
        Family = "nemotron", QkvBias = AttnBias(c), OutBias = AttnBias(c), MlpBias = c.Bool("mlp_bias") ?? false, Activation = c.HiddenAct,
        Norm = "layer_1p", Mlp = "plain", PartialRotary = true,
    };

    public static DecoderOptions Gemma2(HfConfig c)
    {
        double scalar = c.PositiveReal("query_pre_attn_scalar") ?? c.HeadDim;
        return Gemma.Options(c) with
        {
            Family = "gemma2", Activation = c.Str("hidden_activation") ?? c.Str("hidden_act") ?? "gelu_pytorch_tanh", Block = "sandwich",
            AttentionScale = 1 / Math.Sqrt(scalar), AttentionSoftcap = c.PositiveReal("attn_logit_softcapping"), FinalSoftcap = c.PositiveReal("final_logit_softcapping"),
            SlidingWindow = c.SlidingWindow, IsSliding = LayerTypes(c, 2),
        };
    }

    public static DecoderOptions Gemma3(HfConfig c) => Gemma2(c) with
    {
        // NOTE: transformers' Gemma 3 attention does not apply attn_logit_softcapping (only the final one); neither do we.
        Family = "gemma3_text", AttentionSoftcap = null, QkNorm = "head_rms", LocalRope = true,
        IsSliding = LayerTypes(c, c.Positive("sliding_window_pattern", "_sliding_window_pattern") ?? 6),
    };

    public static DecoderOptions Cohere(HfConfig c) => new()
    {
        Family = "cohere", QkvBias = AttnBias(c), OutBias = AttnBias(c), Activation = c.HiddenAct, Norm = "layer_nobias", Parallel = "shared",
        RopeInterleaved = true, LogitScale = c.Double("logit_scale") ?? 0.0625, QkNorm = (c.Bool("use_qk_norm") ?? false) ? "heads_layer" : "none",
    };

    public static DecoderOptions StableLm(HfConfig c) => new()
    {
        Family = "stablelm", QkvBias = c.Bool("use_qkv_bias") ?? false, Activation = c.HiddenAct, Norm = "layer", PartialRotary = true,
        QkNorm = (c.Bool("qk_layernorm") ?? false) ? "head_modules" : "none", Parallel = (c.Bool("use_parallel_residual") ?? false) ? "shared" : "none",
        Rename = n => n.Replace(".q_norm.", ".q_layernorm.").Replace(".k_norm.", ".k_layernorm."),
    };

    public static DecoderOptions Phi(HfConfig c) => new()
    {
        Family = "phi", QkvBias = true, OutBias = true, MlpBias = true, Activation = c.HiddenAct, Norm = "layer", Mlp = "plain", Parallel = "shared",
        PartialRotary = true, LmHeadBias = true, QkNorm = (c.Bool("qk_layernorm") ?? false) ? "head_layer" : "none",
        Rename = n => n.Replace(".o_proj.", ".dense.").Replace(".mlp.up_proj.", ".mlp.fc1.").Replace(".mlp.down_proj.", ".mlp.fc2.")
            .Replace("model.norm.", "model.final_layernorm.").Replace(".q_norm.", ".q_layernorm.").Replace(".k_norm.", ".k_layernorm."),
    };

    /// <summary>Ordered substring replacements, canonical → checkpoint name.</summary>
    static Func<string, string> Names(params (string From, string To)[] map) => n =>
    {
        foreach (var (from, to) in map) n = n.Replace(from, to);
        return n;
    };

    public static DecoderOptions GptNeox(HfConfig c)
    {
        bool bias = c.Bool("attention_bias") ?? true;
        return new DecoderOptions
        {
            Family = "gpt_neox", QkvBias = bias, OutBias = bias, MlpBias = true, Activation = c.HiddenAct, Norm = "layer", Mlp = "plain",
            FusedQkv = true, FusedQkvLayout = "per_head", PartialRotary = true, Parallel = (c.Bool("use_parallel_residual") ?? true) ? "separate" : "none",
            Rename = Names(("model.embed_tokens.", "gpt_neox.embed_in."), ("model.layers.", "gpt_neox.layers."), (".self_attn.qkv_proj.", ".attention.query_key_value."),
                (".self_attn.o_proj.", ".attention.dense."), (".mlp.up_proj.", ".mlp.dense_h_to_4h."), (".mlp.down_proj.", ".mlp.dense_4h_to_h."),
                ("model.norm.", "gpt_neox.final_layer_norm."), ("lm_head.", "embed_out.")),
        };
    }

    public static DecoderOptions GptJ(HfConfig c) => new()
    {
        Family = "gptj", MlpBias = true, Activation = c.HiddenAct, Norm = "layer", Mlp = "plain", Parallel = "shared", PartialRotary = true,
        RopeInterleaved = true, LmHeadBias = true,
        Rename = Names(("model.embed_tokens.", "transformer.wte."), ("model.layers.", "transformer.h."), (".input_layernorm.", ".ln_1."),
            (".self_attn.o_proj.", ".attn.out_proj."), (".self_attn.", ".attn."), (".mlp.up_proj.", ".mlp.fc_in."), (".mlp.down_proj.", ".mlp.fc_out."),
            ("model.norm.", "transformer.ln_f.")),
    };

    public static DecoderOptions GptBigCode(HfConfig c)
    {
        if (!(c.Bool("scale_attn_weights") ?? true)) throw c.Error("scale_attn_weights", "must be true (unscaled attention is not supported)");
        if (c.Bool("add_cross_attention") ?? false) throw c.Error("add_cross_attention", "is true; cross-attention is not supported");
        return new DecoderOptions
        {
            Family = "gpt_bigcode", QkvBias = true, OutBias = true, MlpBias = true, Activation = c.HiddenAct, Norm = "layer", Mlp = "plain",
            FusedQkv = true, FusedQkvLayout = c.NumKvHeads == 1 && c.NumHeads > 1 ? "concat" : "per_head", NoRope = true, LearnedPositions = true,
            Rename = Names(("model.embed_tokens.", "transformer.wte."), ("model.embed_positions.", "transformer.wpe."), ("model.layers.", "transformer.h."),
                (".input_layernorm.", ".ln_1."), (".post_attention_layernorm.", ".ln_2."), (".self_attn.qkv_proj.", ".attn.c_attn."), (".self_attn.o_proj.", ".attn.c_proj."),
                (".mlp.up_proj.", ".mlp.c_fc."), (".mlp.down_proj.", ".mlp.c_proj."), ("model.norm.", "transformer.ln_f.")),
        };
    }

    public static DecoderOptions Falcon(HfConfig c)
    {
        if (c.Bool("alibi") ?? false) throw c.Error("alibi", "is true; Falcon's ALiBi (bf16-rounded slopes added to the mask) is not supported");
        bool newArch = c.Bool("new_decoder_architecture") ?? false, parallel = c.Bool("parallel_attn") ?? true, bias = c.Bool("bias") ?? false;
        int lns = c.Int("num_ln_in_parallel_attn") ?? (newArch ? 2 : 1);
        string layout = newArch ? "grouped" : c.NumKvHeads == 1 && c.NumHeads > 1 ? "concat" : "per_head";
        var names = new List<(string, string)> { ("model.embed_tokens.", "transformer.word_embeddings."), ("model.layers.", "transformer.h.") };
        if (newArch && lns == 2) names.AddRange([(".input_layernorm.", ".ln_attn."), (".post_attention_layernorm.", ".ln_mlp.")]);
        names.AddRange([(".self_attn.qkv_proj.", ".self_attention.query_key_value."), (".self_attn.o_proj.", ".self_attention.dense."),
            (".mlp.up_proj.", ".mlp.dense_h_to_4h."), (".mlp.down_proj.", ".mlp.dense_4h_to_h."), ("model.norm.", "transformer.ln_f.")]);
        return new DecoderOptions
        {
            Family = "falcon", QkvBias = bias, OutBias = bias, MlpBias = bias, Activation = c.Str("activation") ?? "gelu", Norm = "layer", Mlp = "plain",
            FusedQkv = true, FusedQkvLayout = layout,
            Parallel = newArch ? (lns == 2 ? "separate" : "shared") : parallel ? "shared" : "none",
            Rename = Names([.. names]),
        };
    }

    public static DecoderOptions Bloom(HfConfig c) => new()
    {
        Family = "bloom", QkvBias = true, OutBias = true, MlpBias = true, Activation = "gelu_new", Norm = "layer", Mlp = "plain",
        FusedQkv = true, FusedQkvLayout = "per_head", NoRope = true, Alibi = true, EmbeddingNorm = true,
        ResidualFromNorm = c.Bool("apply_residual_connection_post_layernorm") ?? false,
        Rename = Names(("model.embed_tokens.", "transformer.word_embeddings."), ("model.embed_norm.", "transformer.word_embeddings_layernorm."),
            ("model.layers.", "transformer.h."), (".self_attn.qkv_proj.", ".self_attention.query_key_value."), (".self_attn.o_proj.", ".self_attention.dense."),
            (".mlp.up_proj.", ".mlp.dense_h_to_4h."), (".mlp.down_proj.", ".mlp.dense_4h_to_h."), ("model.norm.", "transformer.ln_f.")),
    };

    public static DecoderOptions Opt(HfConfig c)
    {
        if (!(c.Bool("layer_norm_elementwise_affine") ?? true)) throw c.Error("layer_norm_elementwise_affine", "must be true (LayerNorms without weights are not supported for OPT)");
        bool pre = c.Bool("do_layer_norm_before") ?? true, bias = c.Bool("enable_bias") ?? true;
        int proj = c.Positive("word_embed_proj_dim") ?? c.HiddenSize;
        return new DecoderOptions
        {
            Family = "opt", QkvBias = bias, OutBias = bias, MlpBias = bias, Activation = c.HiddenAct, Norm = "layer", Mlp = "plain",
            NoRope = true, LearnedPositions = true, PositionOffset = 2, Block = pre ? "pre" : "postln",
            FinalNorm = pre && !(c.Bool("_remove_final_layer_norm") ?? false), EmbedProjDim = proj != c.HiddenSize ? proj : null,
            Rename = Names(("model.embed_tokens.", "model.decoder.embed_tokens."), ("model.embed_positions.", "model.decoder.embed_positions."),
                ("model.project_in.", "model.decoder.project_in."), ("model.project_out.", "model.decoder.project_out."), ("model.layers.", "model.decoder.layers."),
                (".input_layernorm.", ".self_attn_layer_norm."), (".post_attention_layernorm.", ".final_layer_norm."), (".self_attn.o_proj.", ".self_attn.out_proj."),
                (".mlp.up_proj.", ".fc1."), (".mlp.down_proj.", ".fc2."), ("model.norm.", "model.decoder.final_layer_norm.")),
        };
    }

    public static DecoderOptions DeepSeekV3(HfConfig c)
    {
        if (c.Rope.Type != "default") throw c.Error("rope_type", $"is '{c.Rope.Type}'; DeepSeek-V3 is supported with default RoPE only (yarn and its mscale are not implemented)");
        int Need(string key) => c.Positive(key) ?? throw c.Error(key, "is missing");
        int experts = c.Positive("n_routed_experts", "num_local_experts") ?? throw c.Error("n_routed_experts", "is missing");
        int groups = c.Positive("n_group") ?? 1, topkGroup = c.Positive("topk_group") ?? 1;
        if (experts % groups != 0 || experts / groups < 2) throw c.Error("n_group", $"{groups} groups must split {experts} experts into groups of at least 2");
        if (topkGroup > groups) throw c.Error("topk_group", $"{topkGroup} is more than n_group {groups}");
        int k = TopK(c, experts);
        if (k > topkGroup * (experts / groups)) throw c.Error("num_experts_per_tok", $"{k} is more than the experts of {topkGroup} group(s)");
        int rope = Need("qk_rope_head_dim");
        if (rope % 2 != 0) throw c.Error("qk_rope_head_dim", $"{rope} must be even");
        int shared = c.Int("n_shared_experts") ?? 0, first = c.Int("first_k_dense_replace") ?? 0;
        return new DecoderOptions
        {
            Family = "deepseek_v3", QkvBias = AttnBias(c), OutBias = AttnBias(c), Activation = c.HiddenAct, RopeInterleaved = c.Bool("rope_interleave") ?? true,
            Mla = new MlaOptions(c.Positive("q_lora_rank"), Need("kv_lora_rank"), rope, Need("qk_nope_head_dim"), Need("v_head_dim")),
            Moe = new MoeOptions(experts, k, Need("moe_intermediate_size"), c.Bool("norm_topk_prob") ?? true, shared > 0 ? shared * Need("moe_intermediate_size") : null)
            {
                DeepSeekRouter = true, Groups = groups, TopKGroups = topkGroup, ScalingFactor = c.Double("routed_scaling_factor") ?? 1,
                SharedName = "shared_experts", SharedGated = false,
            },
            IsMoeLayer = i => i >= first,
        };
    }
}
