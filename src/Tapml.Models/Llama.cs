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

    /// <summary>Config and checkpoint of a Hugging Face folder → model. Errors name the folder.</summary>
    public static Model Load(string dir)
    {
        var config = HfConfig.Load(dir);
        using var checkpoint = new SafetensorsCheckpoint(dir);
        var model = Build(config, LlamaWeights.Load(config, checkpoint));
        return model;
    }

    /// <summary>Builds the graph from a config and float32 weights keyed by Hugging Face name (see
    /// <see cref="LlamaWeights.Specs"/>); names and shapes are checked first.</summary>
    public static Model Build(HfConfig config, IReadOnlyDictionary<string, Tensor> weights)
    {
        if (config.HiddenAct != "silu") throw config.Error("hidden_act", $"is '{config.HiddenAct}'; Llama supports silu");
        if ((config.Int("pretraining_tp") ?? 1) != 1) throw config.Error("pretraining_tp", "must be 1 (tensor-parallel slicing of the MLP is not supported)");
        var specs = LlamaWeights.Specs(config);
        LlamaWeights.Check(config, specs, weights.ToDictionary(w => w.Key, w => w.Value.Shape), Path.GetDirectoryName(config.Path) ?? config.Path);
        var g = new LlamaGraph(config, weights);
        return new Model { Graph = g.Build(), Opsets = new() { [""] = Opset }, ProducerName = "tapml" };
    }
}

/// <summary>The node-by-node construction of <see cref="Llama"/>; one method per block of the HF module tree.</summary>
sealed class LlamaGraph(HfConfig c, IReadOnlyDictionary<string, Tensor> w)
{
    readonly GraphBuilder b = new(c.Architectures.FirstOrDefault() ?? "llama");
    readonly bool attnBias = c.Bool("attention_bias") ?? false;
    readonly bool mlpBias = c.Bool("mlp_bias") ?? false;
    string cos = "", sin = "", mask = "";

    static Dim Sym(string name) => new(null, name);

    public Graph Build()
    {
        var batch = Sym("batch"); var seq = Sym("seq"); var past = Sym("past_seq"); var total = Sym("total_seq");
        string ids = b.Input("input_ids", DType.Int64, batch, seq);
        string pos = b.Input("position_ids", DType.Int64, batch, seq);
        var kvShape = new[] { batch, new Dim(c.NumKvHeads, null), past, new Dim(c.HeadDim, null) };
        var pasts = new (string Key, string Value)[c.NumLayers];
        for (int i = 0; i < c.NumLayers; i++)
            pasts[i] = (b.Input($"past_key_values.{i}.key", DType.Float32, kvShape), b.Input($"past_key_values.{i}.value", DType.Float32, kvShape));

        RotaryTables(pos);
        CausalMask(ids, pasts[0].Key);
        string x = b.Node("Gather", [Weight("model.embed_tokens.weight"), ids], new() { ["axis"] = Attr.Of(0L) });
        var presents = new List<string>();
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            string h = RmsNorm(x, p + "input_layernorm.weight");
            var (attn, key, value) = Attention(h, p + "self_attn.", pasts[i], i);
            presents.Add(key); presents.Add(value);
            x = b.Node("Add", [x, attn]);
            h = RmsNorm(x, p + "post_attention_layernorm.weight");
            x = b.Node("Add", [x, Mlp(h, p + "mlp.")]);
        }
        x = RmsNorm(x, "model.norm.weight");
        string logits = b.Node("MatMul", [x, TransposedWeight(c.TieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight")], outputName: "logits");
        b.Output(logits, type: TypeRef.TensorOf(DType.Float32, [batch, seq, new Dim(c.VocabSize, null)]));
        var presentShape = TypeRef.TensorOf(DType.Float32, [batch, new Dim(c.NumKvHeads, null), total, new Dim(c.HeadDim, null)]);
        foreach (var name in presents) b.Output(name, type: presentShape);
        return b.Graph;
    }

    // ---- weights and constants -------------------------------------------------------------------------

    readonly Dictionary<string, string> _initializers = new();

    string Weight(string name)
    {
        if (!_initializers.TryGetValue(name, out var v)) _initializers[name] = v = b.Initializer(name, w[name]);
        return v;
    }

    /// <summary>A Linear weight [out, in] stored as [in, out] so the graph computes <c>x @ W^T</c> with one MatMul.</summary>
    string TransposedWeight(string name)
    {
        string key = name + ".T";
        if (_initializers.TryGetValue(key, out var v)) return v;
        var t = w[name];
        int rows = (int)t.Shape[0], cols = (int)t.Shape[1];
        var src = t.Span<float>();
        var dst = Tensor.Uninitialized(DType.Float32, cols, rows);
        var d = dst.Span<float>();
        for (int r = 0; r < rows; r++)
            for (int k = 0; k < cols; k++) d[k * rows + r] = src[r * cols + k];
        return _initializers[key] = b.Initializer(key, dst);
    }

    /// <summary>A named f32 scalar constant, created once.</summary>
    string Float(string name, float v)
    {
        if (!_initializers.TryGetValue(name, out var n)) _initializers[name] = n = b.Initializer(name, Tensor.Scalar(v));
        return n;
    }

    string Linear(string x, string prefix, bool bias)
    {
        string y = b.Node("MatMul", [x, TransposedWeight(prefix + ".weight")]);
        return bias ? b.Node("Add", [y, Weight(prefix + ".bias")]) : y;
    }

    // ---- blocks ----------------------------------------------------------------------------------------

    /// <summary>HF LlamaRMSNorm: <c>weight * (x * rsqrt(mean(x²) + eps))</c>, with rsqrt as 1/sqrt via Div.</summary>
    string RmsNorm(string x, string weight)
    {
        string sq = b.Node("Pow", [x, Float("two", 2f)]);
        string mean = b.Node("ReduceMean", [sq], new() { ["axes"] = Attr.Of(new long[] { -1 }), ["keepdims"] = Attr.Of(1L) });
        string rms = b.Node("Sqrt", [b.Node("Add", [mean, Float("rms_eps", (float)c.NormEps)])]);
        return b.Node("Mul", [b.Node("Div", [x, rms]), Weight(weight)]);
    }

    /// <summary>cos/sin tables [batch, 1, seq, head_dim] from position_ids: <c>freqs = pos * inv_freq</c>,
    /// <c>emb = cat(freqs, freqs)</c>. llama3/linear/default scaling all have attention factor 1.</summary>
    void RotaryTables(string positionIds)
    {
        string inv = b.Initializer("rope.inv_freq", Tensor.FromArray(Rope.InverseFrequencies(c, c.HeadDim), c.HeadDim / 2));
        string posF = b.Node("Cast", [positionIds], new() { ["to"] = Attr.Of((long)DType.Float32) });
        string freqs = b.Node("Mul", [b.Node("Unsqueeze", [posF, b.Ints("axis_last", -1)]), inv]);
        string emb = b.Node("Concat", [freqs, freqs], new() { ["axis"] = Attr.Of(-1L) });
        string heads = b.Ints("axis_heads", 1);
        cos = b.Node("Unsqueeze", [b.Node("Cos", [emb]), heads]);
        sin = b.Node("Unsqueeze", [b.Node("Sin", [emb]), heads]);
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
    }

    /// <summary>HF rotate_half: <c>cat(-x[..., d/2:], x[..., :d/2])</c>; then <c>x*cos + rotate_half(x)*sin</c>.</summary>
    string ApplyRope(string x)
    {
        long half = c.HeadDim / 2;
        string axis = b.Ints("axis3", 3);
        string x1 = b.Node("Slice", [x, b.Ints("s0", 0), b.Ints("s_half", half), axis]);
        string x2 = b.Node("Slice", [x, b.Ints("s_half", half), b.Ints("s_end", c.HeadDim), axis]);
        string rotated = b.Node("Concat", [b.Node("Neg", [x2]), x1], new() { ["axis"] = Attr.Of(-1L) });
        return b.Node("Add", [b.Node("Mul", [x, cos]), b.Node("Mul", [rotated, sin])]);
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
        string q = ApplyRope(SplitHeads(Linear(h, p + "q_proj", attnBias), c.NumHeads));
        string k = ApplyRope(SplitHeads(Linear(h, p + "k_proj", attnBias), c.NumKvHeads));
        string v = SplitHeads(Linear(h, p + "v_proj", attnBias), c.NumKvHeads);
        string key = b.Node("Concat", [past.Key, k], new() { ["axis"] = Attr.Of(2L) }, outputName: $"present.{layer}.key");
        string value = b.Node("Concat", [past.Value, v], new() { ["axis"] = Attr.Of(2L) }, outputName: $"present.{layer}.value");
        string kT = b.Node("Transpose", [RepeatKv(key)], new() { ["perm"] = Attr.Of(new long[] { 0, 1, 3, 2 }) });
        string scores = b.Node("Mul", [b.Node("MatMul", [q, kT]), Float("attn_scale", (float)(1.0 / Math.Sqrt(c.HeadDim)))]);
        scores = b.Node("Where", [mask, scores, Float("neg_inf", float.NegativeInfinity)]);
        string probs = b.Node("Softmax", [scores], new() { ["axis"] = Attr.Of(-1L) });
        string ctx = b.Node("Transpose", [b.Node("MatMul", [probs, RepeatKv(value)])], new() { ["perm"] = Attr.Of(new long[] { 0, 2, 1, 3 }) });
        ctx = b.Node("Reshape", [ctx, b.Ints("merge_shape", 0, 0, (long)c.NumHeads * c.HeadDim)]);
        return (Linear(ctx, p + "o_proj", attnBias), key, value);
    }

    /// <summary>down(silu(gate(x)) * up(x)), silu(z) = z * sigmoid(z).</summary>
    string Mlp(string h, string p)
    {
        string gate = Linear(h, p + "gate_proj", mlpBias);
        string silu = b.Node("Mul", [gate, b.Node("Sigmoid", [gate])]);
        return Linear(b.Node("Mul", [silu, Linear(h, p + "up_proj", mlpBias)]), p + "down_proj", mlpBias);
    }
}
