using Tapml.Core;
using Tapml.Platforms.Cpu;
using Tapml.Ir.Safetensors;

namespace Tapml.Models;

/// <summary>The explicit Hugging Face weight-name map of <c>LlamaForCausalLM</c> and the checked loading of it:
/// every tensor the config implies must be present with exactly that shape, and every tensor in the checkpoint
/// must be used. Both lists are reported in one error.</summary>
public static class LlamaWeights
{
    /// <summary>Checkpoint tensors that are buffers, not weights; older exports save them and nothing reads them.</summary>
    static bool IsBuffer(string name) => name.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal);

    /// <summary>Every tensor a Llama config implies, in model order.</summary>
    public static IReadOnlyList<WeightSpec> Specs(HfConfig c) => Specs(c, Llama.Options(c));

    /// <summary>Every tensor the config implies for the architecture's <paramref name="o"/>, in model order, under
    /// the checkpoint's names (Phi-3's fused <c>qkv_proj</c>/<c>gate_up_proj</c> as stored; other names through
    /// <see cref="DecoderOptions.Rename"/>).</summary>
    public static IReadOnlyList<WeightSpec> Specs(HfConfig c, DecoderOptions o) =>
        o.Rename is { } r ? GraphSpecs(c, o).Select(s => s with { Name = r(s.Name) }).ToList() : GraphSpecs(c, o);

    /// <summary>As <see cref="Specs(HfConfig, DecoderOptions)"/> under the graph's canonical (Llama) names.</summary>
    static List<WeightSpec> GraphSpecs(HfConfig c, DecoderOptions o)
    {
        long h = c.HiddenSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim, inter = c.IntermediateSize;
        long embed = o.EmbedProjDim ?? h;
        var specs = new List<WeightSpec> { new("model.embed_tokens.weight", [c.VocabSize, embed]) };
        if (o.EmbedProjDim is not null) specs.Add(new("model.project_in.weight", [h, embed]));
        if (o.LearnedPositions) specs.Add(new("model.embed_positions.weight", [c.MaxPositions + o.PositionOffset, h]));
        void Linear(string name, long outDim, long inDim, bool bias)
        {
            specs.Add(new(name + ".weight", [outDim, inDim]));
            if (bias) specs.Add(new(name + ".bias", [outDim]));
        }
        void Norm(string name)
        {
            if (o.NormHasWeight) specs.Add(new(name + ".weight", [h]));
            if (o.NormHasBias) specs.Add(new(name + ".bias", [h]));
        }
        void Gated(string p, long i, bool bias)
        {
            Linear(p + "gate_proj", i, h, bias);
            Linear(p + "up_proj", i, h, bias);
            Linear(p + "down_proj", h, i, bias);
        }
        if (o.EmbeddingNorm) Norm("model.embed_norm");
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            if (o.Block != "post") Norm(p + "input_layernorm");
            if (o.Mla is { } mla)
            {
                long qk = mla.NopeDim + mla.RopeDim;
                if (mla.QLoraRank is int qr)
                {
                    Linear(p + "self_attn.q_a_proj", qr, h, o.QkvBias);
                    specs.Add(new(p + "self_attn.q_a_layernorm.weight", [qr]));
                    Linear(p + "self_attn.q_b_proj", c.NumHeads * qk, qr, false);
                }
                else Linear(p + "self_attn.q_proj", c.NumHeads * qk, h, false);
                Linear(p + "self_attn.kv_a_proj_with_mqa", mla.KvLoraRank + mla.RopeDim, h, o.QkvBias);
                specs.Add(new(p + "self_attn.kv_a_layernorm.weight", [mla.KvLoraRank]));
                Linear(p + "self_attn.kv_b_proj", (long)c.NumHeads * (mla.NopeDim + mla.VDim), mla.KvLoraRank, false);
                q = (long)c.NumHeads * mla.VDim; // o_proj's input
            }
            else if (o.FusedQkv) Linear(p + "self_attn.qkv_proj", q + 2 * kv, h, o.QkvBias);
            else
                foreach (var (name, outDim) in new[] { ("q_proj", q), ("k_proj", kv), ("v_proj", kv) })
                    Linear($"{p}self_attn.{name}", outDim, h, o.QkvBias);
            if (o.QkNorm == "head_rms") { specs.Add(new(p + "self_attn.q_norm.weight", [c.HeadDim])); specs.Add(new(p + "self_attn.k_norm.weight", [c.HeadDim])); }
            if (o.QkNorm == "full_rms") { specs.Add(new(p + "self_attn.q_norm.weight", [q])); specs.Add(new(p + "self_attn.k_norm.weight", [kv])); }
            if (o.QkNorm == "head_layer")
                foreach (var n in new[] { "q_norm", "k_norm" }) { specs.Add(new($"{p}self_attn.{n}.weight", [c.HeadDim])); specs.Add(new($"{p}self_attn.{n}.bias", [c.HeadDim])); }
            if (o.QkNorm == "heads_layer") { specs.Add(new(p + "self_attn.q_norm.weight", [c.NumHeads, c.HeadDim])); specs.Add(new(p + "self_attn.k_norm.weight", [c.NumKvHeads, c.HeadDim])); }
            if (o.QkNorm == "head_modules")
                foreach (var (n, heads) in new[] { ("q_norm", c.NumHeads), ("k_norm", c.NumKvHeads) })
                    for (int hd = 0; hd < heads; hd++) specs.Add(new($"{p}self_attn.{n}.norms.{hd}.weight", [c.HeadDim]));
            Linear(p + "self_attn.o_proj", h, q, o.OutBias);
            if (o.Parallel != "shared") Norm(p + "post_attention_layernorm");
            if (o.Block == "sandwich") Norm(p + "pre_feedforward_layernorm");
            if (o.Block is "sandwich" or "post") Norm(p + "post_feedforward_layernorm");
            if (o.MoeLayer(i))
            {
                var m = o.Moe!;
                specs.Add(new(p + "mlp.gate.weight", [m.Experts, h]));
                if (m.DeepSeekRouter) specs.Add(new(p + "mlp.gate.e_score_correction_bias", [m.Experts]));
                for (int e = 0; e < m.Experts; e++) Gated($"{p}mlp.experts.{e}.", m.Intermediate, false);
                if (m.SharedIntermediate is int si)
                {
                    Gated($"{p}mlp.{m.SharedName}.", si, false);
                    if (m.SharedGated) specs.Add(new(p + "mlp.shared_expert_gate.weight", [1, h]));
                }
            }
            else if (o.FusedGateUp) { Linear(p + "mlp.gate_up_proj", 2 * inter, h, o.MlpBias); Linear(p + "mlp.down_proj", h, inter, o.MlpBias); }
            else if (o.Mlp == "plain") { Linear(p + "mlp.up_proj", inter, h, o.MlpBias); Linear(p + "mlp.down_proj", h, inter, o.MlpBias); }
            else Gated(p + "mlp.", inter, o.MlpBias);
        }
        if (o.FinalNorm) Norm("model.norm");
        if (o.EmbedProjDim is not null) specs.Add(new("model.project_out.weight", [embed, h]));
        if (!c.TieWordEmbeddings) specs.Add(new("lm_head.weight", [c.VocabSize, embed]));
        if (o.LmHeadBias) specs.Add(new("lm_head.bias", [c.VocabSize]));
        return specs;
    }

    /// <summary>Every tensor of <see cref="Specs"/> from <paramref name="checkpoint"/> as float32, checking names and
    /// shapes first (nothing is read when something is missing or extra). Matrices are not read here: they are views
    /// of the memory-mapped file in their stored dtype (see <see cref="WeightMap.Read"/>).</summary>
    public static Dictionary<string, Tensor> Load(HfConfig c, SafetensorsCheckpoint checkpoint) => Load(c, checkpoint, Llama.Options(c));

    /// <summary>As <see cref="Load(HfConfig, SafetensorsCheckpoint)"/> for the architecture's <paramref name="o"/>.</summary>
    public static Dictionary<string, Tensor> Load(HfConfig c, SafetensorsCheckpoint checkpoint, DecoderOptions o)
    {
        var available = checkpoint.Entries.ToDictionary(e => e.Key, e => e.Value.Shape);
        CheckSizes(c, available, checkpoint.Dir, o);
        var specs = Specs(c, o);
        Check(c, specs, available, checkpoint.Dir);
        var weights = new Dictionary<string, Tensor>();
        foreach (var s in specs) weights[s.Name] = WeightMap.Read(checkpoint, s.Name);
        return weights;
    }

    /// <summary>The config's layer count, vocabulary and hidden size against the checkpoint (see <see cref="WeightMap.CheckSizes"/>).</summary>
    public static void CheckSizes(HfConfig c, IReadOnlyDictionary<string, long[]> available, string origin) =>
        CheckSizes(c, available, origin, Llama.Options(c));

    /// <summary>As <see cref="CheckSizes(HfConfig, IReadOnlyDictionary{string, long[]}, string)"/> under the
    /// architecture's names.</summary>
    public static void CheckSizes(HfConfig c, IReadOnlyDictionary<string, long[]> available, string origin, DecoderOptions o)
    {
        var r = o.Rename ?? (n => n);
        // NOTE: with OPT's project_in the embedding is narrower than hidden_size; its shape is checked by the map instead.
        WeightMap.CheckSizes(c, available, origin, r("model.layers."), o.EmbedProjDim is null ? r("model.embed_tokens.weight") : "");
    }

    /// <summary>Checks a checkpoint's tensors against the config's map (see <see cref="WeightMap.Check"/>).</summary>
    public static void Check(HfConfig c, IReadOnlyList<WeightSpec> specs, IReadOnlyDictionary<string, long[]> available, string origin) =>
        WeightMap.Check(c, specs, available, origin, IsBuffer);

    /// <summary>The graph's view of the weights: fused tensors split by rows into the Llama names
    /// (<c>qkv_proj</c> → q, k, v in that order; <c>gate_up_proj</c> → first half gate, second half up).</summary>
    public static IReadOnlyDictionary<string, Tensor> Unfuse(HfConfig c, IReadOnlyDictionary<string, Tensor> w, DecoderOptions o)
    {
        if (o.Rename is { } rename)
        {
            var canonical = new Dictionary<string, Tensor>();
            foreach (var s in GraphSpecs(c, o)) canonical[s.Name] = w[rename(s.Name)];
            w = canonical;
        }
        if (!o.FusedQkv && !o.FusedGateUp) return w;
        var r = new Dictionary<string, Tensor>(w);
        long q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim, inter = c.IntermediateSize;
        void Split(string fused, (string Name, long Rows)[] parts)
        {
            foreach (var suffix in new[] { ".weight", ".bias" })
            {
                if (!r.Remove(fused + suffix, out var t)) continue;
                long cols = t.Shape.Length == 2 ? t.Shape[1] : 1, start = 0;
                if (t.External is { Transposed: false } e && t.Shape.Length == 2)
                {
                    // In place: each part is a row range of the mapped fused tensor.
                    foreach (var (name, rows) in parts)
                    {
                        r[name + suffix] = new Tensor(DType.Float32, [rows, cols], e.RowRange(start, rows, $"{e.Origin} rows [{start}, {start + rows})"));
                        start += rows;
                    }
                    continue;
                }
                var src = t.Span<float>();
                foreach (var (name, rows) in parts)
                {
                    var part = Tensor.Uninitialized(DType.Float32, t.Shape.Length == 2 ? new[] { rows, cols } : new[] { rows });
                    src.Slice((int)(start * cols), (int)(rows * cols)).CopyTo(part.Span<float>());
                    r[name + suffix] = part;
                    start += rows;
                }
            }
        }
        var order = o.FusedQkv ? QkvBlocks(c, o.FusedQkvLayout) : null;
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            if (order is not null && o.FusedQkvLayout != "concat")
                foreach (var suffix in new[] { ".weight", ".bias" })
                    if (r.TryGetValue(p + "self_attn.qkv_proj" + suffix, out var t)) r[p + "self_attn.qkv_proj" + suffix] = Reorder(t, order, c.HeadDim);
            if (o.FusedQkv) Split(p + "self_attn.qkv_proj", [(p + "self_attn.q_proj", q), (p + "self_attn.k_proj", kv), (p + "self_attn.v_proj", kv)]);
            if (o.FusedGateUp) Split(p + "mlp.gate_up_proj", [(p + "mlp.gate_proj", inter), (p + "mlp.up_proj", inter)]);
        }
        return r;
    }

    /// <summary>For each head_dim-row block of [q heads, k heads, v heads], the block of the fused tensor it is:
    /// concat (rows q, k, v: Phi-3, GPT-BigCode multi-query, Falcon multi-query); per_head ([heads, 3, head_dim]:
    /// GPT-NeoX, BLOOM, GPT-BigCode); grouped ([kv_heads, heads/kv_heads + 2, head_dim]: Falcon's new decoder).</summary>
    static int[] QkvBlocks(HfConfig c, string layout)
    {
        int h = c.NumHeads, kv = c.NumKvHeads, rep = h / kv;
        return layout switch
        {
            "concat" => Enumerable.Range(0, h + 2 * kv).ToArray(),
            "per_head" => [.. Enumerable.Range(0, h).Select(j => 3 * j), .. Enumerable.Range(0, kv).Select(j => 3 * j + 1), .. Enumerable.Range(0, kv).Select(j => 3 * j + 2)],
            "grouped" => [.. Enumerable.Range(0, h).Select(j => j / rep * (rep + 2) + j % rep), .. Enumerable.Range(0, kv).Select(g => g * (rep + 2) + rep), .. Enumerable.Range(0, kv).Select(g => g * (rep + 2) + rep + 1)],
            _ => throw new TapmlException($"unknown fused q/k/v layout '{layout}'"),
        };
    }

    static Tensor Reorder(Tensor t, int[] blocks, int headDim)
    {
        long cols = t.Shape.Length == 2 ? t.Shape[1] : 1;
        int block = (int)(headDim * cols);
        var dst = Tensor.Uninitialized(DType.Float32, t.Shape);
        var s = t.Span<float>();
        var d = dst.Span<float>();
        for (int i = 0; i < blocks.Length; i++) s.Slice(blocks[i] * block, block).CopyTo(d.Slice(i * block, block));
        return dst;
    }
}
