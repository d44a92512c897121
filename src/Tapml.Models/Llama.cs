using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Safetensors;

namespace Tapml.Models;

/// <summary><c>LlamaForCausalLM</c> as one ONNX graph (opset 17, standard ops only, float32), computing what
/// transformers' eager implementation computes.
/// <para>Inputs: <c>input_ids</c> i64 [batch, seq], <c>position_ids</c> i64 [batch, seq],
/// <c>past_key_values.{i}.key|value</c> f32 [batch, kv_heads, past_seq, head_dim] (past_seq may be 0).
/// Outputs: <c>logits</c> f32 [batch, seq, vocab], <c>present.{i}.key|value</c> f32
/// [batch, kv_heads, past_seq + seq, head_dim] (RoPE already applied to keys). Prefill and decode are two runs
/// of this one graph: feed the presents back as the next pasts.</para></summary>
public static class Llama
{
    /// <summary>Opset the graph is built for.</summary>
    public const int Opset = 17;

    /// <summary>Llama's switches: biases from <c>attention_bias</c>/<c>mlp_bias</c>, SiLU only, no tensor-parallel slicing.</summary>
    public static DecoderOptions Options(HfConfig c)
    {
        if (c.HiddenAct != "silu") throw c.Error("hidden_act", $"is '{c.HiddenAct}'; Llama supports silu");
        if ((c.Int("pretraining_tp") ?? 1) != 1) throw c.Error("pretraining_tp", "must be 1 (tensor-parallel slicing of the MLP is not supported)");
        bool attnBias = c.Bool("attention_bias") ?? false;
        return new DecoderOptions { Family = "llama", QkvBias = attnBias, OutBias = attnBias, MlpBias = c.Bool("mlp_bias") ?? false };
    }

    /// <summary>Config and checkpoint of a Hugging Face folder → model. Errors name the folder.</summary>
    public static Model Load(string dir) => Load(dir, Options);

    /// <summary>Builds the graph from a config and float32 weights keyed by Hugging Face name (see
    /// <see cref="LlamaWeights.Specs(HfConfig)"/>); names and shapes are checked first.</summary>
    public static Model Build(HfConfig config, IReadOnlyDictionary<string, Tensor> weights) => Build(config, weights, Options(config));

    /// <summary>A Llama-family folder → model, with the architecture's switches from <paramref name="options"/>.</summary>
    public static Model Load(string dir, Func<HfConfig, DecoderOptions> options)
    {
        var config = HfConfig.Load(dir);
        var o = options(config);
        using var checkpoint = new SafetensorsCheckpoint(dir);
        return Build(config, LlamaWeights.Load(config, checkpoint, o), o, checkpoint);
    }

    /// <summary>The Llama decoder with an architecture's switches; <paramref name="weights"/> are keyed by the
    /// checkpoint's own names (fused tensors are split here, so the graph is always the Llama graph).</summary>
    public static Model Build(HfConfig config, IReadOnlyDictionary<string, Tensor> weights, DecoderOptions options) => Build(config, weights, options, null);

    /// <summary>As the public Build; with the <paramref name="checkpoint"/> the weights came from, the model names
    /// the file of every initializer that is a checkpoint tensor as stored or transposed.</summary>
    static Model Build(HfConfig config, IReadOnlyDictionary<string, Tensor> weights, DecoderOptions options, SafetensorsCheckpoint? checkpoint)
    {
        if (options.Activation is not ("silu" or "gelu_pytorch_tanh" or "gelu_new" or "gelu" or "relu" or "relu2"))
            throw config.Error("hidden_act", $"is '{options.Activation}'; supported: silu, gelu_pytorch_tanh, gelu_new, gelu, relu, relu2");
        if (config.Rope.PartialRotaryFactor != 1 && !options.PartialRotary)
            throw config.Error("partial_rotary_factor", $"is {config.Rope.PartialRotaryFactor}; only full rotary embeddings are supported for {config.ModelType}");
        int rotaryDim = (int)(config.HeadDim * config.Rope.PartialRotaryFactor);
        if (rotaryDim < 2 || rotaryDim % 2 != 0)
            throw config.Error("head_dim", $"{config.HeadDim} × partial_rotary_factor {config.Rope.PartialRotaryFactor} gives {rotaryDim} rotary channels; RoPE rotates pairs, so it must be even and at least 2");
        var available = weights.ToDictionary(w => w.Key, w => w.Value.Shape);
        string origin = Path.GetDirectoryName(config.Path) ?? config.Path;
        LlamaWeights.CheckSizes(config, available, origin, options);
        var specs = LlamaWeights.Specs(config, options);
        LlamaWeights.Check(config, specs, available, origin);
        var g = new LlamaGraph(config, LlamaWeights.Unfuse(config, weights, options), options);
        var model = new Model { Graph = g.Build(), Opsets = new() { [""] = Opset }, ProducerName = "tapml" };
        var rename = options.Rename ?? (n => n);
        if (checkpoint is not null) g.Weights.Describe(model, w => checkpoint.FileOf(rename(w)) is { } f ? (f, rename(w)) : null);
        return model;
    }
}

/// <summary>What distinguishes one Llama-family architecture from another; the decoder graph is the same.</summary>
public sealed record DecoderOptions
{
    /// <summary>The architecture, for messages.</summary>
    public string Family { get; init; } = "llama";
    /// <summary>q/k/v projections carry biases (Qwen2; Llama/Gemma with attention_bias).</summary>
    public bool QkvBias { get; init; }
    /// <summary>o_proj carries a bias.</summary>
    public bool OutBias { get; init; }
    /// <summary>gate/up/down carry biases.</summary>
    public bool MlpBias { get; init; }
    /// <summary>MLP activation on the gate: silu, gelu_pytorch_tanh (= gelu_new), gelu (erf).</summary>
    public string Activation { get; init; } = "silu";
    /// <summary>Gemma RMSNorm: <c>x̂ * (1 + weight)</c> instead of <c>x̂ * weight</c>.</summary>
    public bool NormAddsOne { get; init; }
    /// <summary>Gemma: embeddings multiplied by sqrt(hidden_size) (as a float32 scalar).</summary>
    public bool ScaleEmbeddings { get; init; }
    /// <summary>Keys more than this many positions back are hidden (query i sees key j when i - j &lt; window),
    /// in the layers <see cref="IsSliding"/> selects; null: full causal attention everywhere.</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>Which layers use the sliding window (all when null).</summary>
    public Func<int, bool>? IsSliding { get; init; }
    /// <summary>Phi-3: one <c>qkv_proj</c> tensor (rows q, k, v) instead of three.</summary>
    public bool FusedQkv { get; init; }
    /// <summary>Phi-3: one <c>gate_up_proj</c> tensor (rows gate, up) instead of two.</summary>
    public bool FusedGateUp { get; init; }
    /// <summary>partial_rotary_factor &lt; 1 allowed (the first head_dim·factor channels rotate, the rest pass).</summary>
    public bool PartialRotary { get; init; }
    /// <summary>The block norms: rms (RMSNorm), layer (LayerNorm with bias), layer_nobias, layer_noparams (OLMo:
    /// no weights, eps 1e-5), layer_1p (Nemotron: LayerNorm with weight + 1 and a bias).</summary>
    public string Norm { get; init; } = "rms";
    /// <summary>Normalization of q and k: none; head_rms (per head, weight [head_dim]: Qwen3, Gemma 3);
    /// full_rms (over the whole projection, weight [heads·head_dim]: OLMo 2); head_layer (LayerNorm over head_dim,
    /// weight and bias [head_dim] shared by the heads: Phi); heads_layer (LayerNorm without bias, one weight a
    /// head, [heads, head_dim]: Cohere); head_modules (one bias-free LayerNorm module a head,
    /// <c>q_norm.norms.{h}.weight</c>: StableLM).</summary>
    public string QkNorm { get; init; } = "none";
    /// <summary>MLP: gated (<c>down(act(gate(x)) · up(x))</c>) or plain (<c>down(act(up(x)))</c>; the names are the
    /// canonical up_proj/down_proj, renamed to the checkpoint's by <see cref="Rename"/>).</summary>
    public string Mlp { get; init; } = "gated";
    /// <summary>Block layout: pre (x + attn(norm(x)), then x + mlp(norm(x))); postln (OPT-350m: norm(x + attn(x)),
    /// then norm(x + mlp(x)), with input_layernorm and post_attention_layernorm); sandwich (Gemma 2/3: also a norm on
    /// each sub-block's output, post_attention_layernorm / pre_feedforward_layernorm / post_feedforward_layernorm);
    /// post (OLMo 2: only the output norms, post_attention_layernorm / post_feedforward_layernorm).</summary>
    public string Block { get; init; } = "pre";
    /// <summary>Attention score scale instead of 1/√head_dim (Gemma 2: query_pre_attn_scalar^-½; Granite: attention_multiplier).</summary>
    public double? AttentionScale { get; init; }
    /// <summary>Scores become <c>cap · tanh(scores / cap)</c> before the mask (Gemma 2).</summary>
    public double? AttentionSoftcap { get; init; }
    /// <summary>Logits become <c>cap · tanh(logits / cap)</c> (Gemma 2).</summary>
    public double? FinalSoftcap { get; init; }
    /// <summary>Granite: embeddings × this.</summary>
    public double EmbeddingMultiplier { get; init; } = 1;
    /// <summary>Granite: each sub-block's output × this before it is added to the residual.</summary>
    public double ResidualMultiplier { get; init; } = 1;
    /// <summary>Granite: logits ÷ this.</summary>
    public double LogitsDivisor { get; init; } = 1;
    /// <summary>OLMo: q, k and v clamped to ±this after their projections.</summary>
    public double? ClipQkv { get; init; }
    /// <summary>Mixture of experts in the layers <see cref="IsMoeLayer"/> selects (null: dense MLP everywhere).</summary>
    public MoeOptions? Moe { get; init; }
    /// <summary>Which layers have the mixture of experts (all when null).</summary>
    public Func<int, bool>? IsMoeLayer { get; init; }
    /// <summary>Parallel block: none; shared (<c>x + attn(n(x)) + mlp(n(x))</c> with input_layernorm: Cohere, Phi,
    /// StableLM, GPT-J); separate (<c>x + attn(n1(x)) + mlp(n2(x))</c>, n2 = post_attention_layernorm: GPT-NeoX).</summary>
    public string Parallel { get; init; } = "none";
    /// <summary>RoPE on interleaved pairs (x0, x1), (x2, x3)… (Cohere, GPT-J) instead of the two halves.</summary>
    public bool RopeInterleaved { get; init; }
    /// <summary>Cohere: logits × this.</summary>
    public double LogitScale { get; init; } = 1;
    /// <summary>lm_head carries a bias (Phi, GPT-J).</summary>
    public bool LmHeadBias { get; init; }
    /// <summary>Gemma 3: sliding layers use <see cref="HfConfig.LocalRope"/>.</summary>
    public bool LocalRope { get; init; }
    /// <summary>How a fused <c>qkv_proj</c>'s rows are laid out: concat, per_head or grouped (see LlamaWeights.QkvBlocks).</summary>
    public string FusedQkvLayout { get; init; } = "concat";
    /// <summary>Learned absolute position embeddings (<c>model.embed_positions.weight</c>, [max_positions + offset,
    /// hidden]) added to the token embeddings at <c>position_ids + PositionOffset</c> (GPT-BigCode; OPT: offset 2).</summary>
    public bool LearnedPositions { get; init; }
    public int PositionOffset { get; init; }
    /// <summary>No rotary embedding (learned positions or ALiBi instead).</summary>
    public bool NoRope { get; init; }
    /// <summary>ALiBi (BLOOM): scores + slope_h · key position, slopes as transformers' build_alibi_tensor.</summary>
    public bool Alibi { get; init; }
    /// <summary>BLOOM: a norm (<c>model.embed_norm</c>) right after the embedding.</summary>
    public bool EmbeddingNorm { get; init; }
    /// <summary>BLOOM's apply_residual_connection_post_layernorm: the residual is the normed input, not the input.</summary>
    public bool ResidualFromNorm { get; init; }
    /// <summary>A final norm (<c>model.norm</c>) before lm_head (OPT post-LN has none).</summary>
    public bool FinalNorm { get; init; } = true;
    /// <summary>OPT: embeddings (and the tied lm_head) are this wide, with <c>model.project_in</c> /
    /// <c>model.project_out</c> ([hidden, dim] / [dim, hidden], no bias) around the decoder.</summary>
    public int? EmbedProjDim { get; init; }
    /// <summary>Multi-head latent attention (DeepSeek-V3) instead of q/k/v projections.</summary>
    public MlaOptions? Mla { get; init; }
    /// <summary>Canonical (Llama) weight name → the checkpoint's name (identity when null).</summary>
    public Func<string, string>? Rename { get; init; }

    public bool MoeLayer(int layer) => Moe is not null && (IsMoeLayer?.Invoke(layer) ?? true);
    public bool NormHasBias => Norm is "layer" or "layer_1p";
    public bool NormHasWeight => Norm != "layer_noparams";

    public bool Sliding(int layer) => SlidingWindow is not null && (IsSliding?.Invoke(layer) ?? true);
}

/// <summary>A mixture-of-experts MLP: softmax over <c>gate</c>'s router logits, the top <see cref="TopK"/> experts
/// (renormalized to sum 1 when <see cref="NormTopK"/>), their gated MLPs weighted and summed; plus, when
/// <see cref="SharedIntermediate"/> is set, a shared expert scaled by <c>sigmoid(shared_expert_gate(x))</c>
/// (Qwen2-MoE). Names (canonical, Qwen-MoE's): <c>mlp.gate</c>, <c>mlp.experts.{e}.gate_proj|up_proj|down_proj</c>,
/// <c>mlp.shared_expert.*</c>, <c>mlp.shared_expert_gate</c>.</summary>
public sealed record MoeOptions(int Experts, int TopK, int Intermediate, bool NormTopK, int? SharedIntermediate = null)
{
    /// <summary>DeepSeek-V3's router instead of softmax: sigmoid scores; choice by scores + <c>gate.e_score_correction_bias</c>
    /// within the <see cref="TopKGroups"/> best of <see cref="Groups"/> groups (a group's score: its two best);
    /// weights are the chosen sigmoid scores (renormalized when <see cref="MoeOptions.NormTopK"/>) × <see cref="ScalingFactor"/>.</summary>
    public bool DeepSeekRouter { get; init; }
    public int Groups { get; init; } = 1;
    public int TopKGroups { get; init; } = 1;
    public double ScalingFactor { get; init; } = 1;
    /// <summary>The shared expert's name under mlp. and whether sigmoid(shared_expert_gate(x)) scales it (Qwen2-MoE).</summary>
    public string SharedName { get; init; } = "shared_expert";
    public bool SharedGated { get; init; } = true;
}

/// <summary>DeepSeek's multi-head latent attention: q through an optional low-rank (q_a_proj, q_a_layernorm, q_b_proj)
/// or q_proj; keys and values from a compressed latent (kv_a_proj_with_mqa → kv_a_layernorm, kv_b_proj) plus one
/// shared rotary key. The KV cache holds the normed latent (key, [batch, 1, seq, kv_lora_rank]) and the rotated
/// shared key (value, [batch, 1, seq, qk_rope_head_dim]), as transformers' cache does.</summary>
public sealed record MlaOptions(int? QLoraRank, int KvLoraRank, int RopeDim, int NopeDim, int VDim);

/// <summary>The node-by-node construction of <see cref="Llama"/>; one method per block of the HF module tree.</summary>
sealed class LlamaGraph(HfConfig c, IReadOnlyDictionary<string, Tensor> w, DecoderOptions o)
{
    readonly GraphBuilder b = new(c.Architectures.FirstOrDefault() ?? o.Family);
    readonly int rotaryDim = o.Mla?.RopeDim ?? (int)(c.HeadDim * c.Rope.PartialRotaryFactor);
    string cos = "", sin = "", localCos = "", localSin = "", mask = "", slidingMask = "", keyPositions = "", alibi = "";

    static Dim Sym(string name) => new(null, name);

    public Graph Build()
    {
        var batch = Sym("batch"); var seq = Sym("seq"); var past = Sym("past_seq"); var total = Sym("total_seq");
        string ids = b.Input("input_ids", DType.Int64, batch, seq);
        string pos = b.Input("position_ids", DType.Int64, batch, seq);
        Dim[] Kv(long heads, long dim, Dim len) => [batch, new Dim(heads, null), len, new Dim(dim, null)];
        var (keyShape, valueShape) = o.Mla is { } mla ? (Kv(1, mla.KvLoraRank, past), Kv(1, mla.RopeDim, past)) : (Kv(c.NumKvHeads, c.HeadDim, past), Kv(c.NumKvHeads, c.HeadDim, past));
        var pasts = new (string Key, string Value)[c.NumLayers];
        for (int i = 0; i < c.NumLayers; i++)
            pasts[i] = (b.Input($"past_key_values.{i}.key", DType.Float32, keyShape), b.Input($"past_key_values.{i}.value", DType.Float32, valueShape));

        if (!o.NoRope) RotaryTables(pos);
        CausalMask(ids, pasts[0].Key);
        string x = b.Node("Gather", [Weight("model.embed_tokens.weight"), ids], new() { ["axis"] = Attr.Of(0L) });
        if (o.ScaleEmbeddings) x = b.Node("Mul", [x, Float("embed_scale", (float)Math.Sqrt(c.HiddenSize))]);
        if (o.EmbeddingMultiplier != 1) x = b.Node("Mul", [x, Float("embedding_multiplier", (float)o.EmbeddingMultiplier)]);
        if (o.EmbedProjDim is not null) x = b.Node("MatMul", [x, TransposedWeight("model.project_in.weight")]);
        if (o.LearnedPositions)
        {
            string at = o.PositionOffset == 0 ? pos : b.Node("Add", [pos, b.Initializer("position_offset", Tensor.Scalar((long)o.PositionOffset))]);
            x = b.Node("Add", [x, b.Node("Gather", [Weight("model.embed_positions.weight"), at], new() { ["axis"] = Attr.Of(0L) })]);
        }
        if (o.EmbeddingNorm) x = Norm(x, "model.embed_norm");
        var presents = new List<string>();
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            if (o.Block == "postln")
            {
                var (a, k, v) = Attention(x, p + "self_attn.", pasts[i], i);
                presents.Add(k); presents.Add(v);
                x = Norm(b.Node("Add", [x, a]), p + "input_layernorm");
                x = Norm(b.Node("Add", [x, Mlp(x, p + "mlp.")]), p + "post_attention_layernorm");
                continue;
            }
            string h = o.Block == "post" ? x : Norm(x, p + "input_layernorm");
            if (o.ResidualFromNorm) x = h;
            var (attn, key, value) = Attention(h, p + "self_attn.", pasts[i], i);
            presents.Add(key); presents.Add(value);
            if (o.Parallel != "none")
            {
                string mlpIn = o.Parallel == "shared" ? h : Norm(x, p + "post_attention_layernorm");
                x = b.Node("Add", [b.Node("Add", [x, attn]), o.MoeLayer(i) ? Moe(mlpIn, p + "mlp.") : Mlp(mlpIn, p + "mlp.")]);
                continue;
            }
            if (o.Block != "pre") attn = Norm(attn, p + "post_attention_layernorm");
            x = Residual(x, attn);
            h = o.Block switch { "pre" => Norm(x, p + "post_attention_layernorm"), "sandwich" => Norm(x, p + "pre_feedforward_layernorm"), _ => x };
            if (o.ResidualFromNorm) x = h;
            string ff = o.MoeLayer(i) ? Moe(h, p + "mlp.") : Mlp(h, p + "mlp.");
            if (o.Block != "pre") ff = Norm(ff, p + "post_feedforward_layernorm");
            x = Residual(x, ff);
        }
        if (o.FinalNorm) x = Norm(x, "model.norm");
        if (o.EmbedProjDim is not null) x = b.Node("MatMul", [x, TransposedWeight("model.project_out.weight")]);
        bool divide = o.LogitsDivisor != 1, cap = o.FinalSoftcap is not null, scale = o.LogitScale != 1;
        string logits = b.Node("MatMul", [x, TransposedWeight(c.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight")], outputName: divide || cap || scale || o.LmHeadBias ? null : "logits");
        if (o.LmHeadBias) logits = b.Node("Add", [logits, Weight("lm_head.bias")], outputName: divide || cap || scale ? null : "logits");
        if (scale) logits = b.Node("Mul", [logits, Float("logit_scale", (float)o.LogitScale)], outputName: divide || cap ? null : "logits");
        if (divide) logits = b.Node("Div", [logits, Float("logits_scaling", (float)o.LogitsDivisor)], outputName: cap ? null : "logits");
        if (cap) logits = Softcap(logits, "final_softcap", o.FinalSoftcap!.Value, "logits");
        b.Output(logits, type: TypeRef.TensorOf(DType.Float32, [batch, seq, new Dim(c.VocabSize, null)]));
        var (presentKey, presentValue) = o.Mla is { } ml ? (Kv(1, ml.KvLoraRank, total), Kv(1, ml.RopeDim, total)) : (Kv(c.NumKvHeads, c.HeadDim, total), Kv(c.NumKvHeads, c.HeadDim, total));
        for (int i = 0; i < presents.Count; i++) b.Output(presents[i], type: TypeRef.TensorOf(DType.Float32, i % 2 == 0 ? presentKey : presentValue));
        return b.Graph;
    }

    /// <summary>x + y, with Granite's residual_multiplier on y.</summary>
    string Residual(string x, string y) =>
        b.Node("Add", [x, o.ResidualMultiplier == 1 ? y : b.Node("Mul", [y, Float("residual_multiplier", (float)o.ResidualMultiplier)])]);

    /// <summary>cap · tanh(x / cap), divided and multiplied as HF does.</summary>
    string Softcap(string x, string name, double cap, string? outputName = null)
    {
        string k = Float(name, (float)cap);
        return b.Node("Mul", [b.Node("Tanh", [b.Node("Div", [x, k])]), k], outputName: outputName);
    }

    // ---- weights and constants -------------------------------------------------------------------------

    GraphWeights? _weights;
    public GraphWeights Weights => _weights ??= new(b, w);
    string Weight(string name) => Weights.Weight(name);
    string TransposedWeight(string name) => Weights.Transposed(name);
    string Float(string name, float v) => Weights.Float(name, v);


    string Linear(string x, string prefix, bool bias)
    {
        string y = b.Node("MatMul", [x, TransposedWeight(prefix + ".weight")]);
        return bias ? b.Node("Add", [y, Weight(prefix + ".bias")]) : y;
    }

    // ---- blocks ----------------------------------------------------------------------------------------

    /// <summary>The architecture's norm of <paramref name="prefix"/> (<c>.weight</c>, <c>.bias</c>) over the last axis.</summary>
    string Norm(string x, string prefix) => o.Norm switch
    {
        "rms" => RmsNorm(x, prefix + ".weight"),
        "layer" => LayerNorm(x, Weight(prefix + ".weight"), Weight(prefix + ".bias")),
        "layer_1p" => LayerNorm(x, Weights.Derived(prefix + ".weight.plus1", () => PlusOneTensor(prefix + ".weight")), Weight(prefix + ".bias")),
        "layer_nobias" => LayerNorm(x, Weight(prefix + ".weight"), null),
        _ => LayerNorm(x, Weights.Derived("ones_hidden", () => Ones(c.HiddenSize)), null, 1e-5),
    };

    /// <summary>nn.LayerNorm over the last axis (ONNX LayerNormalization).</summary>
    string LayerNorm(string x, string scale, string? bias, double? eps = null) =>
        b.Node("LayerNormalization", bias is null ? [x, scale] : [x, scale, bias],
            new() { ["axis"] = Attr.Of(-1L), ["epsilon"] = Attr.Of((float)(eps ?? c.NormEps)) });

    static Tensor Ones(long n)
    {
        var t = Tensor.Uninitialized(DType.Float32, n);
        t.Span<float>().Fill(1f);
        return t;
    }

    /// <summary>HF LlamaRMSNorm: <c>weight * (x * rsqrt(mean(x²) + eps))</c>, with rsqrt as 1/sqrt via Div.</summary>
    string RmsNorm(string x, string weight)
    {
        string scale = o.NormAddsOne ? PlusOne(weight) : Weight(weight);
        string sq = b.Node("Pow", [x, Float("two", 2f)]);
        string mean = b.Node("ReduceMean", [sq], new() { ["axes"] = Attr.Of(new long[] { -1 }), ["keepdims"] = Attr.Of(1L) });
        string rms = b.Node("Sqrt", [b.Node("Add", [mean, Float("rms_eps", (float)c.NormEps)])]);
        return b.Node("Mul", [b.Node("Div", [x, rms]), scale]);
    }

    /// <summary>Gemma's <c>1 + weight</c>, computed once in float32 as HF does.</summary>
    string PlusOne(string name) => Weights.Derived(name + ".plus1", () => PlusOneTensor(name));

    Tensor PlusOneTensor(string name)
    {
        var src = w[name].Span<float>();
        var dst = Tensor.Uninitialized(DType.Float32, w[name].Shape);
        var d = dst.Span<float>();
        for (int i = 0; i < src.Length; i++) d[i] = 1f + src[i];
        return dst;
    }

    /// <summary>cos/sin tables [batch, 1, seq, rotary_dim] from position_ids: <c>freqs = pos * inv_freq</c>,
    /// <c>emb = cat(freqs, freqs)</c>, times the attention factor (1 except longrope). longrope switches to the
    /// long factors when <c>max(position_ids) + 1 &gt; original_max_position_embeddings</c> (HF's dynamic update).</summary>
    void RotaryTables(string positionIds)
    {
        (cos, sin) = RotaryTables(positionIds, Rope.Tables(c, rotaryDim), "rope");
        if (o.LocalRope && c.LocalRope is { } local) (localCos, localSin) = RotaryTables(positionIds, Rope.Tables(c, rotaryDim, local), "rope_local");
    }

    (string Cos, string Sin) RotaryTables(string positionIds, Rope.RotaryTables t, string name)
    {
        // NOTE: HF's emb = cat(freqs, freqs) is built as pos · cat(inv_freq, inv_freq), the same products with the
        // concatenation folded into the constant: one node (a GPU dispatch a step) less. Interleaved RoPE keeps one
        // angle per pair ([batch, 1, seq, rotary_dim/2]); ApplyRope works on pairs.
        float[] Angles(float[] inv) => o.RopeInterleaved ? inv : [.. inv, .. inv];
        int width = o.RopeInterleaved ? rotaryDim / 2 : rotaryDim;
        string inv = b.Initializer(name + ".inv_freq", Tensor.FromArray(Angles(t.Short), width));
        // NOTE: the positions take their last axis before the Cast, so the Cast reads only into the angle's Mul and an
        // element-wise region (a GPU kernel) takes it with the Mul, Cos and Sin.
        string posF = b.Node("Cast", [b.Node("Unsqueeze", [positionIds, b.Ints("axis_last", -1)])], new() { ["to"] = Attr.Of((long)DType.Float32) });
        if (t.Long is not null)
        {
            string invLong = b.Initializer("rope.inv_freq_long", Tensor.FromArray(Angles(t.Long), width));
            string maxPos = b.Node("ReduceMax", [posF], new() { ["keepdims"] = Attr.Of(0L) });
            string isLong = b.Node("Greater", [maxPos, Float("rope_long_threshold", (float)(t.Original - 1))]);
            inv = b.Node("Where", [isLong, invLong, inv]);
        }
        string emb = b.Node("Mul", [posF, inv]);
        string heads = b.Ints("axis_heads", 1);
        string cosT = b.Node("Cos", [emb]), sinT = b.Node("Sin", [emb]);
        if (t.AttentionFactor != 1f)
        {
            cosT = b.Node("Mul", [cosT, Float("rope_attention_factor", t.AttentionFactor)]);
            sinT = b.Node("Mul", [sinT, Float("rope_attention_factor", t.AttentionFactor)]);
        }
        return (b.Node("Unsqueeze", [cosT, heads]), b.Node("Unsqueeze", [sinT, heads]));
    }

    /// <summary>Boolean [seq, past_seq + seq]: query i (absolute position past + i) may attend key j when j ≤ past + i.</summary>
    void CausalMask(string inputIds, string pastKey)
    {
        string past = b.Node("Gather", [b.Node("Shape", [pastKey]), b.Initializer("dim2", Tensor.Scalar(2L))]);
        string seq = b.Node("Gather", [b.Node("Shape", [inputIds]), b.Initializer("dim1", Tensor.Scalar(1L))]);
        string total = b.Node("Add", [past, seq]);
        string zero = b.Initializer("zero", Tensor.Scalar(0L)), one = b.Initializer("one", Tensor.Scalar(1L));
        string keys = b.Node("Range", [zero, total, one]);
        string queries = b.Node("Unsqueeze", [b.Node("Range", [past, total, one]), b.Ints("axis_col", 1)]);
        mask = b.Node("LessOrEqual", [keys, queries]);
        keyPositions = keys;
        if (o.SlidingWindow is int window && Enumerable.Range(0, c.NumLayers).Any(o.Sliding))
        {
            // transformers' sliding_window_overlay: kv_idx > q_idx - sliding_window, on top of the causal mask.
            string lowest = b.Node("Sub", [queries, b.Initializer("sliding_window", Tensor.Scalar((long)window))]);
            slidingMask = b.Node("And", [mask, b.Node("Greater", [keys, lowest])]);
        }
    }

    /// <summary>HF rotate_half: <c>cat(-x[..., d/2:], x[..., :d/2])</c>; then <c>x*cos + rotate_half(x)*sin</c>.
    /// With partial rotary (Phi-3) only the first rotary_dim channels rotate; the rest pass through.</summary>
    string ApplyRope(string x, bool local = false)
    {
        long half = rotaryDim / 2;
        string cos = local ? localCos : this.cos, sin = local ? localSin : this.sin;
        string axis = b.Ints("axis3", 3);
        bool whole = rotaryDim == c.HeadDim || o.Mla is not null;
        string xr = whole ? x : b.Node("Slice", [x, b.Ints("s0", 0), b.Ints("s_rot", rotaryDim), axis]);
        string y;
        if (o.RopeInterleaved)
        {
            // Pairs (x[2i], x[2i+1]) rotate by angle i: (e·cos − o·sin, o·cos + e·sin), as HF's rotate_every_two.
            string pairs = b.Node("Reshape", [xr, b.Ints("pairs_shape", 0, 0, 0, half, 2)]);
            string axis4 = b.Ints("axis4", 4);
            string e = b.Node("Slice", [pairs, b.Ints("s0", 0), b.Ints("s1", 1), axis4]), od = b.Node("Slice", [pairs, b.Ints("s1", 1), b.Ints("s2", 2), axis4]);
            string c5 = b.Node("Unsqueeze", [cos, b.Ints("axis_last", -1)]), s5 = b.Node("Unsqueeze", [sin, b.Ints("axis_last", -1)]);
            string ye = b.Node("Add", [b.Node("Mul", [e, c5]), b.Node("Mul", [b.Node("Neg", [od]), s5])]);
            string yo = b.Node("Add", [b.Node("Mul", [od, c5]), b.Node("Mul", [e, s5])]);
            y = b.Node("Reshape", [b.Node("Concat", [ye, yo], new() { ["axis"] = Attr.Of(-1L) }), b.Ints("unpairs_shape", 0, 0, 0, rotaryDim)]);
        }
        else
        {
            string x1 = b.Node("Slice", [xr, b.Ints("s0", 0), b.Ints("s_half", half), axis]);
            string x2 = b.Node("Slice", [xr, b.Ints("s_half", half), b.Ints("s_rot", rotaryDim), axis]);
            string rotated = b.Node("Concat", [b.Node("Neg", [x2]), x1], new() { ["axis"] = Attr.Of(-1L) });
            y = b.Node("Add", [b.Node("Mul", [xr, cos]), b.Node("Mul", [rotated, sin])]);
        }
        if (whole) return y;
        string pass = b.Node("Slice", [x, b.Ints("s_rot", rotaryDim), b.Ints("s_end", c.HeadDim), axis]);
        return b.Node("Concat", [y, pass], new() { ["axis"] = Attr.Of(-1L) });
    }

    /// <summary>[batch, seq, heads*head_dim] → [batch, heads, seq, head_dim].</summary>
    string SplitHeads(string x, int heads)
        => b.Node("Transpose", [b.Node("Reshape", [x, b.Ints("heads_shape", 0, 0, heads, c.HeadDim)])], new() { ["perm"] = Attr.Of(new long[] { 0, 2, 1, 3 }) });

    /// <summary>GQA: each of the kv heads serves NumHeads/NumKvHeads query heads (HF repeat_kv: head h uses kv h / rep).</summary>
    string RepeatKv(string x)
    {
        int rep = c.NumHeads / c.NumKvHeads;
        if (rep == 1) return x;
        string expanded = b.Node("Expand", [b.Node("Unsqueeze", [x, b.Ints("axis_rep", 2)]), b.Ints("rep_shape", 1, 1, rep, 1, 1)]);
        return b.Node("Reshape", [expanded, b.Ints("merged_heads", 0, c.NumHeads, -1, c.HeadDim)]);
    }

    (string Out, string Key, string Value) Attention(string h, string p, (string Key, string Value) past, int layer)
    {
        if (o.Mla is not null) return LatentAttention(h, p, past, layer);
        string q = Linear(h, p + "q_proj", o.QkvBias), k = Linear(h, p + "k_proj", o.QkvBias), v = Linear(h, p + "v_proj", o.QkvBias);
        if (o.ClipQkv is double clip)
        {
            string lo = Float("clip_qkv_min", (float)-clip), hi = Float("clip_qkv_max", (float)clip);
            q = b.Node("Clip", [q, lo, hi]); k = b.Node("Clip", [k, lo, hi]); v = b.Node("Clip", [v, lo, hi]);
        }
        if (o.QkNorm == "full_rms") { q = RmsNorm(q, p + "q_norm.weight"); k = RmsNorm(k, p + "k_norm.weight"); }
        q = SplitHeads(q, c.NumHeads); k = SplitHeads(k, c.NumKvHeads); v = SplitHeads(v, c.NumKvHeads);
        if (o.QkNorm != "none" && o.QkNorm != "full_rms") { q = HeadNorm(q, p + "q_norm", c.NumHeads); k = HeadNorm(k, p + "k_norm", c.NumKvHeads); }
        bool local = o.LocalRope && o.Sliding(layer) && c.LocalRope is not null;
        if (!o.NoRope) { q = ApplyRope(q, local); k = ApplyRope(k, local); }
        string key = b.Node("Concat", [past.Key, k], new() { ["axis"] = Attr.Of(2L) }, outputName: $"present.{layer}.key");
        string value = b.Node("Concat", [past.Value, v], new() { ["axis"] = Attr.Of(2L) }, outputName: $"present.{layer}.value");
        string kT = b.Node("Transpose", [RepeatKv(key)], new() { ["perm"] = Attr.Of(new long[] { 0, 1, 3, 2 }) });
        string scores = b.Node("Mul", [b.Node("MatMul", [q, kT]), Float("attn_scale", (float)(o.AttentionScale ?? 1.0 / Math.Sqrt(c.HeadDim)))]);
        if (o.AttentionSoftcap is double cap) scores = Softcap(scores, "attn_softcap", cap);
        if (o.Alibi) scores = b.Node("Add", [scores, AlibiBias()]);
        scores = b.Node("Where", [o.Sliding(layer) ? slidingMask : mask, scores, Float("neg_inf", float.NegativeInfinity)]);
        string probs = b.Node("Softmax", [scores], new() { ["axis"] = Attr.Of(-1L) });
        string ctx = b.Node("Transpose", [b.Node("MatMul", [probs, RepeatKv(value)])], new() { ["perm"] = Attr.Of(new long[] { 0, 2, 1, 3 }) });
        ctx = b.Node("Reshape", [ctx, b.Ints("merge_shape", 0, 0, (long)c.NumHeads * c.HeadDim)]);
        return (Linear(ctx, p + "o_proj", o.OutBias), key, value);
    }

    /// <summary>DeepSeek's multi-head latent attention (see <see cref="MlaOptions"/>).</summary>
    (string Out, string Key, string Value) LatentAttention(string h, string p, (string Key, string Value) past, int layer)
    {
        var m = o.Mla!;
        int qk = m.NopeDim + m.RopeDim;
        string axis3 = b.Ints("axis3", 3);
        string q = m.QLoraRank is null ? Linear(h, p + "q_proj", false)
            : Linear(RmsNorm(Linear(h, p + "q_a_proj", o.QkvBias), p + "q_a_layernorm.weight"), p + "q_b_proj", false);
        q = b.Node("Transpose", [b.Node("Reshape", [q, b.Ints("mla_q_shape", 0, 0, c.NumHeads, qk)])], new() { ["perm"] = Attr.Of(new long[] { 0, 2, 1, 3 }) });
        string qPass = b.Node("Slice", [q, b.Ints("s0", 0), b.Ints("mla_nope", m.NopeDim), axis3]);
        string qRot = ApplyRope(b.Node("Slice", [q, b.Ints("mla_nope", m.NopeDim), b.Ints("mla_qk", qk), axis3]));
        string ckv = Linear(h, p + "kv_a_proj_with_mqa", o.QkvBias);
        string axis2 = b.Ints("axis_last", -1), one = b.Ints("axis1", 1);
        string latent = RmsNorm(b.Node("Slice", [ckv, b.Ints("s0", 0), b.Ints("mla_rank", m.KvLoraRank), axis2]), p + "kv_a_layernorm.weight");
        string kRot = ApplyRope(b.Node("Unsqueeze", [b.Node("Slice", [ckv, b.Ints("mla_rank", m.KvLoraRank), b.Ints("mla_rank_rope", m.KvLoraRank + m.RopeDim), axis2]), one]));
        string key = b.Node("Concat", [past.Key, b.Node("Unsqueeze", [latent, one])], new() { ["axis"] = Attr.Of(2L) }, outputName: $"present.{layer}.key");
        string value = b.Node("Concat", [past.Value, kRot], new() { ["axis"] = Attr.Of(2L) }, outputName: $"present.{layer}.value");
        // Expand the cached latents: kv_b_proj → per head [nope | v]; the shared rotary key joins every head.
        string kv = b.Node("MatMul", [b.Node("Squeeze", [key, one]), TransposedWeight(p + "kv_b_proj.weight")]);
        kv = b.Node("Transpose", [b.Node("Reshape", [kv, b.Ints("mla_kv_shape", 0, 0, c.NumHeads, m.NopeDim + m.VDim)])], new() { ["perm"] = Attr.Of(new long[] { 0, 2, 1, 3 }) });
        string kNope = b.Node("Slice", [kv, b.Ints("s0", 0), b.Ints("mla_nope", m.NopeDim), axis3]);
        string v = b.Node("Slice", [kv, b.Ints("mla_nope", m.NopeDim), b.Ints("mla_nope_v", m.NopeDim + m.VDim), axis3]);
        string kRotAll = b.Node("Mul", [value, Weights.Derived("ones_heads", () => { var t = Ones(c.NumHeads); return t.Reshape(1, c.NumHeads, 1, 1); })]);
        string k = b.Node("Concat", [kNope, kRotAll], new() { ["axis"] = Attr.Of(-1L) });
        q = b.Node("Concat", [qPass, qRot], new() { ["axis"] = Attr.Of(-1L) });
        string kT = b.Node("Transpose", [k], new() { ["perm"] = Attr.Of(new long[] { 0, 1, 3, 2 }) });
        string scores = b.Node("Mul", [b.Node("MatMul", [q, kT]), Float("attn_scale", (float)(o.AttentionScale ?? 1.0 / Math.Sqrt(qk)))]);
        scores = b.Node("Where", [o.Sliding(layer) ? slidingMask : mask, scores, Float("neg_inf", float.NegativeInfinity)]);
        string probs = b.Node("Softmax", [scores], new() { ["axis"] = Attr.Of(-1L) });
        string ctx = b.Node("Transpose", [b.Node("MatMul", [probs, v])], new() { ["perm"] = Attr.Of(new long[] { 0, 2, 1, 3 }) });
        ctx = b.Node("Reshape", [ctx, b.Ints("mla_merge", 0, 0, (long)c.NumHeads * m.VDim)]);
        return (Linear(ctx, p + "o_proj", o.OutBias), key, value);
    }

    /// <summary>[heads, 1, total_seq]: slope_h · j for key position j (transformers' build_alibi_tensor: slopes
    /// 2^(-8/n)^k over the closest power of two n, then the odd powers of 2^(-4/n) for the remaining heads).</summary>
    string AlibiBias()
    {
        if (alibi != "") return alibi;
        int heads = c.NumHeads, n = 1 << (int)Math.Floor(Math.Log2(heads));
        var slopes = new float[heads];
        float baseF = (float)Math.Pow(2, -Math.Pow(2, -(Math.Log2(n) - 3)));
        for (int k = 0; k < n && k < heads; k++) slopes[k] = MathF.Pow(baseF, k + 1);
        if (n != heads)
        {
            float extra = (float)Math.Pow(2, -Math.Pow(2, -(Math.Log2(2 * n) - 3)));
            for (int k = 0; k < Math.Min(n, heads - n); k++) slopes[n + k] = MathF.Pow(extra, 2 * k + 1);
        }
        string s = b.Initializer("alibi_slopes", Tensor.FromArray(slopes, heads, 1, 1));
        string pos = b.Node("Cast", [keyPositions], new() { ["to"] = Attr.Of((long)DType.Float32) });
        return alibi = b.Node("Mul", [s, pos]);
    }

    /// <summary>The per-head norm of q or k ([batch, heads, seq, head_dim]; see <see cref="DecoderOptions.QkNorm"/>).</summary>
    string HeadNorm(string x, string prefix, int heads)
    {
        switch (o.QkNorm)
        {
            case "head_rms":
                return RmsNorm(x, prefix + ".weight");
            case "head_layer":
                return LayerNorm(x, Weight(prefix + ".weight"), Weight(prefix + ".bias"));
            default:
            {
                // One weight a head: normalize without affine, then × weight viewed as [heads, 1, head_dim].
                string n = LayerNorm(x, Weights.Derived("ones_head", () => Ones(c.HeadDim)), null);
                string wt = o.QkNorm == "heads_layer"
                    ? Weight(prefix + ".weight")
                    : b.Node("Concat", Enumerable.Range(0, heads).Select(h => b.Node("Unsqueeze", [Weight($"{prefix}.norms.{h}.weight"), b.Ints("axis0", 0)])).ToArray(), new() { ["axis"] = Attr.Of(0L) });
                return b.Node("Mul", [n, b.Node("Unsqueeze", [wt, b.Ints("axis1", 1)])]);
            }
        }
    }

    /// <summary>Mixture of experts (see <see cref="MoeOptions"/>), computed densely: every expert runs on every token
    /// and the routing weights (zero outside the top k) select; the sum is HF's up to float addition order.</summary>
    string Moe(string h, string p)
    {
        var m = o.Moe!;
        string logits = b.Node("MatMul", [h, TransposedWeight(p + "gate.weight")]);
        string dense;
        if (!m.DeepSeekRouter)
        {
            string probs = b.Node("Softmax", [logits], new() { ["axis"] = Attr.Of(-1L) });
            dense = b.Node("Where", [TopK(probs, m.TopK, "moe"), probs, Float("zero_f", 0f)]);
            if (m.NormTopK) dense = b.Node("Div", [dense, b.Node("ReduceSum", [dense, b.Ints("axis_last", -1)], new() { ["keepdims"] = Attr.Of(1L) })]);
        }
        else
        {
            string scores = b.Node("Sigmoid", [logits]);
            string choice = b.Node("Add", [scores, Weight(p + "gate.e_score_correction_bias")]);
            int per = m.Experts / m.Groups;
            string grouped = b.Node("Reshape", [choice, b.Ints("moe_groups_shape", 0, 0, m.Groups, per)]);
            string groupScores = b.Node("ReduceSum", [b.Node("Where", [TopK(grouped, 2, "moe_pair"), grouped, Float("zero_f", 0f)]), b.Ints("axis_last", -1)], new() { ["keepdims"] = Attr.Of(1L) });
            string groupChosen = b.Node("Transpose", [TopK(b.Node("Transpose", [groupScores], new() { ["perm"] = Attr.Of(new long[] { 0, 1, 3, 2 }) }), m.TopKGroups, "moe_group")], new() { ["perm"] = Attr.Of(new long[] { 0, 1, 3, 2 }) });
            string masked = b.Node("Reshape", [b.Node("Where", [groupChosen, grouped, Float("neg_inf", float.NegativeInfinity)]), b.Ints("moe_flat_shape", 0, 0, m.Experts)]);
            dense = b.Node("Where", [TopK(masked, m.TopK, "moe"), scores, Float("zero_f", 0f)]);
            if (m.NormTopK) dense = b.Node("Div", [dense, b.Node("Add", [b.Node("ReduceSum", [dense, b.Ints("axis_last", -1)], new() { ["keepdims"] = Attr.Of(1L) }), Float("moe_eps", 1e-20f)])]);
            if (m.ScalingFactor != 1) dense = b.Node("Mul", [dense, Float("routed_scaling_factor", (float)m.ScalingFactor)]);
        }
        string? sum = null;
        for (int e = 0; e < m.Experts; e++)
        {
            string y = GatedMlp(h, $"{p}experts.{e}.", false);
            string we = b.Node("Slice", [dense, b.Ints($"moe_e{e}", e), b.Ints($"moe_e{e + 1}", e + 1), b.Ints("axis_last", -1)]);
            y = b.Node("Mul", [y, we]);
            sum = sum is null ? y : b.Node("Add", [sum, y]);
        }
        if (m.SharedIntermediate is not null)
        {
            string shared = GatedMlp(h, $"{p}{m.SharedName}.", false);
            if (m.SharedGated) shared = b.Node("Mul", [b.Node("Sigmoid", [b.Node("MatMul", [h, TransposedWeight(p + "shared_expert_gate.weight")])]), shared]);
            sum = b.Node("Add", [sum!, shared]);
        }
        return sum!;
    }

    /// <summary>Bool mask of the <paramref name="k"/> largest along the last axis, as a rank test: an entry is chosen when
    /// fewer than k entries are larger (standard ops every platform has; ties, of measure zero, would choose more).</summary>
    string TopK(string x, int k, string name)
    {
        string pe = b.Node("Unsqueeze", [x, b.Ints("axis_last", -1)]), pj = b.Node("Unsqueeze", [x, b.Ints("axis_m2", -2)]);
        string larger = b.Node("ReduceSum", [b.Node("Cast", [b.Node("Greater", [pj, pe])], new() { ["to"] = Attr.Of((long)DType.Float32) }), b.Ints("axis_last", -1)], new() { ["keepdims"] = Attr.Of(0L) });
        return b.Node("Less", [larger, Float(name + "_k", k)]);
    }

    /// <summary>The dense MLP: gated <c>down(act(gate(x)) * up(x))</c> or plain <c>down(act(up(x)))</c>.</summary>
    string Mlp(string h, string p) => o.Mlp == "plain"
        ? Linear(Activation(Linear(h, p + "up_proj", o.MlpBias)), p + "down_proj", o.MlpBias)
        : GatedMlp(h, p, o.MlpBias);

    string GatedMlp(string h, string p, bool bias)
    {
        string gate = Linear(h, p + "gate_proj", bias);
        return Linear(b.Node("Mul", [Activation(gate), Linear(h, p + "up_proj", bias)]), p + "down_proj", bias);
    }

    /// <summary>silu(z) = z·sigmoid(z); gelu_pytorch_tanh/gelu_new: 0.5·z·(1 + tanh(√(2/π)·(z + 0.044715·z³)));
    /// gelu: 0.5·z·(1 + erf(z/√2)).</summary>
    string Activation(string z)
    {
        switch (o.Activation)
        {
            case "silu":
                return b.Node("Mul", [z, b.Node("Sigmoid", [z])]);
            case "relu":
                return b.Node("Relu", [z]);
            case "relu2":
            {
                string r = b.Node("Relu", [z]);
                return b.Node("Mul", [r, r]);
            }
            case "gelu":
            {
                string erf = b.Node("Erf", [b.Node("Mul", [z, Float("inv_sqrt2", (float)(1 / Math.Sqrt(2)))])]);
                return b.Node("Mul", [b.Node("Mul", [z, Float("half", 0.5f)]), b.Node("Add", [erf, Float("one_f", 1f)])]);
            }
            default:
            {
                string cube = b.Node("Mul", [b.Node("Mul", [z, z]), z]);
                string inner = b.Node("Add", [z, b.Node("Mul", [cube, Float("gelu_c", 0.044715f)])]);
                string th = b.Node("Tanh", [b.Node("Mul", [inner, Float("sqrt_2_over_pi", (float)Math.Sqrt(2 / Math.PI))])]);
                return b.Node("Mul", [b.Node("Mul", [z, Float("half", 0.5f)]), b.Node("Add", [th, Float("one_f", 1f)])]);
            }
        }
    }
}
