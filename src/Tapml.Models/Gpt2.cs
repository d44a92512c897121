using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Safetensors;

namespace Tapml.Models;

/// <summary><c>GPT2LMHeadModel</c> as one ONNX graph (opset 17, standard ops only, float32), computing what
/// transformers' eager implementation computes: learned absolute position embeddings (wpe, indexed by
/// position_ids), pre-LayerNorm blocks, fused q/k/v projection (Conv1D, [in, out] weights), scaled causal
/// attention, MLP c_fc → activation (gelu_new by default) → c_proj, final ln_f, lm_head tied to wte.
/// <para>Same interface as <see cref="Llama"/>: inputs <c>input_ids</c> i64 [batch, seq], <c>position_ids</c>
/// i64 [batch, seq], <c>past_key_values.{i}.key|value</c> f32 [batch, heads, past_seq, head_dim]; outputs
/// <c>logits</c> f32 [batch, seq, vocab] and <c>present.{i}.key|value</c> f32 [batch, heads, past_seq + seq,
/// head_dim].</para></summary>
public static class Gpt2
{
    /// <summary>Opset the graph is built for.</summary>
    public const int Opset = 17;

    /// <summary>Values of <c>activation_function</c> the graph implements.</summary>
    public static readonly IReadOnlyList<string> Activations = ["gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu", "relu", "silu", "swish"];

    /// <summary>Config and checkpoint of a Hugging Face folder → model. Errors name the folder.</summary>
    public static Model Load(string dir)
    {
        var config = HfConfig.Load(dir);
        using var checkpoint = new SafetensorsCheckpoint(dir);
        var model = Build(config, Gpt2Weights.Load(config, checkpoint), out var g);
        var fileName = checkpoint.Entries.Keys.ToDictionary(Gpt2Weights.Canonical(checkpoint.Entries.Keys));
        g.Weights.Describe(model, w => fileName.TryGetValue(w, out var n) && checkpoint.FileOf(n) is { } f ? (f, n) : null);
        return model;
    }

    /// <summary>Builds the graph from a config and float32 weights keyed by Hugging Face name (see
    /// <see cref="Gpt2Weights.Specs"/>); names and shapes are checked first.</summary>
    public static Model Build(HfConfig config, IReadOnlyDictionary<string, Tensor> weights) => Build(config, weights, out _);

    static Model Build(HfConfig config, IReadOnlyDictionary<string, Tensor> weights, out Gpt2Graph graph)
    {
        if (!Activations.Contains(config.HiddenAct))
            throw config.Error("activation_function", $"is '{config.HiddenAct}'; GPT-2 supports {string.Join(", ", Activations)}");
        if (config.Bool("add_cross_attention") ?? false)
            throw config.Error("add_cross_attention", "is true; cross-attention (encoder-decoder use) is not supported");
        if (config.NumKvHeads != config.NumHeads || (long)config.NumHeads * config.HeadDim != config.HiddenSize)
            throw config.Error("n_head", $"{config.NumHeads} heads must split n_embd {config.HiddenSize} evenly (GPT-2 has no separate head_dim or kv heads)");
        var available = weights.ToDictionary(w => w.Key, w => w.Value.Shape);
        string origin = Path.GetDirectoryName(config.Path) ?? config.Path;
        Gpt2Weights.CheckSizes(config, available, origin);
        var specs = Gpt2Weights.Specs(config);
        Gpt2Weights.Check(config, specs, available, origin);
        var g = graph = new Gpt2Graph(config, weights);
        return new Model { Graph = g.Build(), Opsets = new() { [""] = Opset }, ProducerName = "tapml" };
    }
}

/// <summary>The node-by-node construction of <see cref="Gpt2"/>; one method per block of the HF module tree.</summary>
sealed class Gpt2Graph(HfConfig c, IReadOnlyDictionary<string, Tensor> w)
{
    readonly GraphBuilder b = new(c.Architectures.FirstOrDefault() ?? "gpt2");
    // transformers' defaults: scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False. reorder_and_upcast_attn
    // only changes where the scale is applied and the dtype of the scores, which are float32 here anyway.
    readonly bool scaleAttn = c.Bool("scale_attn_weights") ?? true;
    readonly bool scaleByLayer = c.Bool("scale_attn_by_inverse_layer_idx") ?? false;
    string mask = "";

    static Dim Sym(string name) => new(null, name);

    public Graph Build()
    {
        var batch = Sym("batch"); var seq = Sym("seq"); var past = Sym("past_seq"); var total = Sym("total_seq");
        string ids = b.Input("input_ids", DType.Int64, batch, seq);
        string pos = b.Input("position_ids", DType.Int64, batch, seq);
        var kvShape = new[] { batch, new Dim(c.NumHeads, null), past, new Dim(c.HeadDim, null) };
        var pasts = new (string Key, string Value)[c.NumLayers];
        for (int i = 0; i < c.NumLayers; i++)
            pasts[i] = (b.Input($"past_key_values.{i}.key", DType.Float32, kvShape), b.Input($"past_key_values.{i}.value", DType.Float32, kvShape));

        CausalMask(ids, pasts[0].Key);
        string x = b.Node("Add", [
            b.Node("Gather", [Weight("transformer.wte.weight"), ids], new() { ["axis"] = Attr.Of(0L) }),
            b.Node("Gather", [Weight("transformer.wpe.weight"), pos], new() { ["axis"] = Attr.Of(0L) })]);
        var presents = new List<string>();
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"transformer.h.{i}.";
            var (attn, key, value) = Attention(LayerNorm(x, p + "ln_1"), p + "attn.", pasts[i], i);
            presents.Add(key); presents.Add(value);
            x = b.Node("Add", [attn, x]);
            x = b.Node("Add", [x, Mlp(LayerNorm(x, p + "ln_2"), p + "mlp.")]);
        }
        x = LayerNorm(x, "transformer.ln_f");
        string logits = b.Node("MatMul", [x, TransposedWeight(c.TieWordEmbeddings ? "transformer.wte.weight" : "lm_head.weight")], outputName: "logits");
        b.Output(logits, type: TypeRef.TensorOf(DType.Float32, [batch, seq, new Dim(c.VocabSize, null)]));
        var presentShape = TypeRef.TensorOf(DType.Float32, [batch, new Dim(c.NumHeads, null), total, new Dim(c.HeadDim, null)]);
        foreach (var name in presents) b.Output(name, type: presentShape);
        return b.Graph;
    }

    // ---- weights and constants -------------------------------------------------------------------------

    GraphWeights? _weights;
    public GraphWeights Weights => _weights ??= new(b, w);
    string Weight(string name) => Weights.Weight(name);
    string TransposedWeight(string name) => Weights.Transposed(name);
    string Float(string name, float v) => Weights.Float(name, v);


    /// <summary>HF Conv1D: weight [in, out] as stored, <c>x @ W + b</c>.</summary>
    string Conv1D(string x, string prefix) => b.Node("Add", [b.Node("MatMul", [x, Weight(prefix + ".weight")]), Weight(prefix + ".bias")]);

    // ---- blocks ----------------------------------------------------------------------------------------

    /// <summary>nn.LayerNorm over the last axis with layer_norm_epsilon.</summary>
    string LayerNorm(string x, string prefix)
        => b.Node("LayerNormalization", [x, Weight(prefix + ".weight"), Weight(prefix + ".bias")],
            new() { ["axis"] = Attr.Of(-1L), ["epsilon"] = Attr.Of((float)c.NormEps) });

    /// <summary>Boolean [seq, past_seq + seq]: query i (absolute position past + i) may attend key j when j ≤ past + i
    /// (HF slices its tril buffer the same way: rows key_len − query_len … key_len).</summary>
    void CausalMask(string inputIds, string pastKey)
    {
        string past = b.Node("Gather", [b.Node("Shape", [pastKey]), b.Initializer("dim2", Tensor.Scalar(2L))]);
        string seq = b.Node("Gather", [b.Node("Shape", [inputIds]), b.Initializer("dim1", Tensor.Scalar(1L))]);
        string total = b.Node("Add", [past, seq]);
        string zero = b.Initializer("zero", Tensor.Scalar(0L)), one = b.Initializer("one", Tensor.Scalar(1L));
        string keys = b.Node("Range", [zero, total, one]);
        string queries = b.Node("Unsqueeze", [b.Node("Range", [past, total, one]), b.Ints("axis_col", 1)]);
        mask = b.Node("LessOrEqual", [keys, queries]);
    }

    /// <summary>[batch, seq, heads*head_dim] → [batch, heads, seq, head_dim].</summary>
    string SplitHeads(string x)
        => b.Node("Transpose", [b.Node("Reshape", [x, b.Ints("heads_shape", 0, 0, c.NumHeads, c.HeadDim)])], new() { ["perm"] = Attr.Of(new long[] { 0, 2, 1, 3 }) });

    (string Out, string Key, string Value) Attention(string h, string p, (string Key, string Value) past, int layer)
    {
        // c_attn(x).split(n_embd, dim=2) → query, key, value in that order.
        long e = c.HiddenSize;
        var qkv = b.NodeMulti("Split", [Conv1D(h, p + "c_attn"), b.Ints("qkv_split", e, e, e)], 3, new() { ["axis"] = Attr.Of(-1L) });
        string q = SplitHeads(qkv[0]), k = SplitHeads(qkv[1]), v = SplitHeads(qkv[2]);
        string key = b.Node("Concat", [past.Key, k], new() { ["axis"] = Attr.Of(2L) }, outputName: $"present.{layer}.key");
        string value = b.Node("Concat", [past.Value, v], new() { ["axis"] = Attr.Of(2L) }, outputName: $"present.{layer}.value");
        string kT = b.Node("Transpose", [key], new() { ["perm"] = Attr.Of(new long[] { 0, 1, 3, 2 }) });
        string scores = b.Node("MatMul", [q, kT]);
        // HF divides: scores / sqrt(head_dim) (a float32 scalar), then / (layer_idx + 1).
        if (scaleAttn) scores = b.Node("Div", [scores, Float("attn_sqrt_head_dim", (float)Math.Sqrt(c.HeadDim))]);
        if (scaleByLayer) scores = b.Node("Div", [scores, Float($"attn_layer_scale_{layer}", layer + 1)]);
        scores = b.Node("Where", [mask, scores, Float("mask_value", float.MinValue)]);
        string probs = b.Node("Softmax", [scores], new() { ["axis"] = Attr.Of(-1L) });
        string ctx = b.Node("Transpose", [b.Node("MatMul", [probs, value])], new() { ["perm"] = Attr.Of(new long[] { 0, 2, 1, 3 }) });
        ctx = b.Node("Reshape", [ctx, b.Ints("merge_shape", 0, 0, e)]);
        return (Conv1D(ctx, p + "c_proj"), key, value);
    }

    /// <summary>c_proj(act(c_fc(x))).</summary>
    string Mlp(string h, string p) => Conv1D(Activation(Conv1D(h, p + "c_fc")), p + "c_proj");

    /// <summary>transformers' ACT2FN entries: gelu_new / gelu_pytorch_tanh / gelu_fast are the tanh approximation
    /// <c>0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))</c>; gelu is exact (erf); relu; silu = x·sigmoid(x).</summary>
    string Activation(string x)
    {
        switch (c.HiddenAct)
        {
            case "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast":
                string cube = b.Node("Pow", [x, Float("three", 3f)]);
                string inner = b.Node("Add", [x, b.Node("Mul", [cube, Float("gelu_c", 0.044715f)])]);
                string t = b.Node("Tanh", [b.Node("Mul", [inner, Float("gelu_sqrt_2_pi", (float)Math.Sqrt(2.0 / Math.PI))])]);
                return b.Node("Mul", [b.Node("Mul", [x, Float("half", 0.5f)]), b.Node("Add", [t, Float("one_f", 1f)])]);
            case "gelu":
                string erf = b.Node("Erf", [b.Node("Div", [x, Float("sqrt2", (float)Math.Sqrt(2.0))])]);
                return b.Node("Mul", [b.Node("Mul", [x, Float("half", 0.5f)]), b.Node("Add", [erf, Float("one_f", 1f)])]);
            case "relu":
                return b.Node("Relu", [x]);
            default: // silu, swish
                return b.Node("Mul", [x, b.Node("Sigmoid", [x])]);
        }
    }
}
