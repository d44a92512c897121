using Tapml.Core;
using Tapml.Ir.Safetensors;

namespace Tapml.Models;

/// <summary>One checkpoint tensor a model needs: its Hugging Face name and the shape the config implies
/// (elements per dimension, PyTorch layout: a Linear weight is [out, in]).</summary>
public sealed record WeightSpec(string Name, long[] Shape)
{
    public override string ToString() => $"{Name} {ShapeUtil.Format(Shape)}";
}

/// <summary>The explicit Hugging Face weight-name map of <c>LlamaForCausalLM</c> and the checked loading of it:
/// every tensor the config implies must be present with exactly that shape, and every tensor in the checkpoint
/// must be used. Both lists are reported in one error.</summary>
public static class LlamaWeights
{
    /// <summary>Checkpoint tensors that are buffers, not weights; older exports save them and nothing reads them.</summary>
    static bool IsBuffer(string name) => name.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal);

    /// <summary>Every tensor the config implies, in model order.</summary>
    public static IReadOnlyList<WeightSpec> Specs(HfConfig c)
    {
        long h = c.HiddenSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim, inter = c.IntermediateSize;
        bool attnBias = c.Bool("attention_bias") ?? false, mlpBias = c.Bool("mlp_bias") ?? false;
        var specs = new List<WeightSpec> { new("model.embed_tokens.weight", [c.VocabSize, h]) };
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"model.layers.{i}.";
            specs.Add(new(p + "input_layernorm.weight", [h]));
            foreach (var (name, outDim, inDim) in new[] { ("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q) })
            {
                specs.Add(new($"{p}self_attn.{name}.weight", [outDim, inDim]));
                if (attnBias) specs.Add(new($"{p}self_attn.{name}.bias", [outDim]));
            }
            specs.Add(new(p + "post_attention_layernorm.weight", [h]));
            foreach (var (name, outDim, inDim) in new[] { ("gate_proj", inter, h), ("up_proj", inter, h), ("down_proj", h, inter) })
            {
                specs.Add(new($"{p}mlp.{name}.weight", [outDim, inDim]));
                if (mlpBias) specs.Add(new($"{p}mlp.{name}.bias", [outDim]));
            }
        }
        specs.Add(new("model.norm.weight", [h]));
        if (!c.TieWordEmbeddings) specs.Add(new("lm_head.weight", [c.VocabSize, h]));
        return specs;
    }

    /// <summary>Reads every tensor of <see cref="Specs"/> from <paramref name="checkpoint"/> as float32, checking
    /// names and shapes first (nothing is read when something is missing or extra).</summary>
    public static Dictionary<string, Tensor> Load(HfConfig c, SafetensorsCheckpoint checkpoint)
    {
        var specs = Specs(c);
        Check(c, specs, checkpoint.Entries.ToDictionary(e => e.Key, e => e.Value.Shape), checkpoint.Dir);
        var weights = new Dictionary<string, Tensor>();
        foreach (var s in specs)
        {
            var t = checkpoint.Read(s.Name);
            weights[s.Name] = t.DType switch
            {
                DType.Float32 => t,
                DType.Float16 or DType.BFloat16 or DType.Float64 => ToFloat32(t),
                _ => throw new TapmlException($"{checkpoint.Dir}: tensor '{s.Name}' is {DTypes.Name(t.DType)}; expected a floating-point weight"),
            };
        }
        return weights;
    }

    /// <summary>Checks <paramref name="available"/> (tensor name → shape) against the config's map: missing
    /// tensors, unused tensors and shape mismatches are all listed in one <see cref="TapmlException"/> naming
    /// <paramref name="origin"/> (the checkpoint folder).</summary>
    public static void Check(HfConfig c, IReadOnlyList<WeightSpec> specs, IReadOnlyDictionary<string, long[]> available, string origin)
    {
        var expected = specs.ToDictionary(s => s.Name);
        var missing = specs.Where(s => !available.ContainsKey(s.Name)).Select(s => s.ToString()).ToList();
        // NOTE: with tied embeddings some exports still save lm_head.weight (a copy of the embedding); HF ignores it.
        var unused = available.Keys.Where(n => !expected.ContainsKey(n) && !IsBuffer(n) && !(c.TieWordEmbeddings && n == "lm_head.weight")).Order().ToList();
        var wrongShape = specs.Where(s => available.TryGetValue(s.Name, out var shape) && !shape.AsSpan().SequenceEqual(s.Shape))
            .Select(s => $"'{s.Name}' is {ShapeUtil.Format(available[s.Name])}, config {c.Path} implies {ShapeUtil.Format(s.Shape)}").ToList();
        if (missing.Count == 0 && unused.Count == 0 && wrongShape.Count == 0) return;
        var parts = new List<string>();
        if (missing.Count > 0) parts.Add($"missing {missing.Count} weight(s): {string.Join(", ", missing)}");
        if (unused.Count > 0) parts.Add($"{unused.Count} unused weight(s): {string.Join(", ", unused)}");
        if (wrongShape.Count > 0) parts.Add($"wrong shape: {string.Join("; ", wrongShape)}");
        throw new TapmlException($"checkpoint {origin} does not match a {c.ModelType} model: {string.Join("; ", parts)}");
    }

    static Tensor ToFloat32(Tensor t)
    {
        var r = Tensor.Uninitialized(DType.Float32, t.Shape);
        var d = r.Span<float>();
        for (long i = 0; i < t.Length; i++) d[(int)i] = (float)t.GetDouble(i);
        return r;
    }
}
