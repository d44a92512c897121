using System.Text.RegularExpressions;
using Tapml.Core;
using Tapml.Platforms.Cpu;
using Tapml.Ir.Safetensors;

namespace Tapml.Models;

/// <summary>The explicit Hugging Face weight-name map of <c>GPT2LMHeadModel</c> and the checked loading of it
/// (same rules as <see cref="LlamaWeights"/>: every tensor the config implies must be present with exactly that
/// shape, every tensor in the checkpoint must be used; both lists in one error). GPT-2 linears are
/// <c>Conv1D</c>: weights are stored [in, out] and compute <c>x @ W + b</c>.</summary>
public static partial class Gpt2Weights
{
    const string Prefix = "transformer.";

    /// <summary>Non-persistent buffers older exports saved: the causal mask <c>attn.bias</c> [1, 1, n, n] and
    /// <c>attn.masked_bias</c> (a scalar). Nothing reads them; the graph builds its own mask.</summary>
    [GeneratedRegex(@"^transformer\.h\.\d+\.attn\.(bias|masked_bias)$")]
    private static partial Regex BufferName();

    static bool IsBuffer(string name) => BufferName().IsMatch(name);

    /// <summary>Every tensor the config implies, in model order.</summary>
    public static IReadOnlyList<WeightSpec> Specs(HfConfig c)
    {
        long h = c.HiddenSize, inner = c.IntermediateSize;
        var specs = new List<WeightSpec>
        {
            new(Prefix + "wte.weight", [c.VocabSize, h]),
            new(Prefix + "wpe.weight", [c.MaxPositions, h]),
        };
        for (int i = 0; i < c.NumLayers; i++)
        {
            string p = $"{Prefix}h.{i}.";
            specs.Add(new(p + "ln_1.weight", [h]));
            specs.Add(new(p + "ln_1.bias", [h]));
            specs.Add(new(p + "attn.c_attn.weight", [h, 3 * h]));
            specs.Add(new(p + "attn.c_attn.bias", [3 * h]));
            specs.Add(new(p + "attn.c_proj.weight", [h, h]));
            specs.Add(new(p + "attn.c_proj.bias", [h]));
            specs.Add(new(p + "ln_2.weight", [h]));
            specs.Add(new(p + "ln_2.bias", [h]));
            specs.Add(new(p + "mlp.c_fc.weight", [h, inner]));
            specs.Add(new(p + "mlp.c_fc.bias", [inner]));
            specs.Add(new(p + "mlp.c_proj.weight", [inner, h]));
            specs.Add(new(p + "mlp.c_proj.bias", [h]));
        }
        specs.Add(new(Prefix + "ln_f.weight", [h]));
        specs.Add(new(Prefix + "ln_f.bias", [h]));
        if (!c.TieWordEmbeddings) specs.Add(new("lm_head.weight", [c.VocabSize, h]));
        return specs;
    }

    /// <summary>Checkpoint name → the name of <see cref="Specs"/>. Checkpoints saved from the bare
    /// <c>GPT2Model</c> (as the original openai-community/gpt2 files) lack the <c>transformer.</c> prefix that
    /// transformers adds when loading them into <c>GPT2LMHeadModel</c>; they get it here.</summary>
    internal static Func<string, string> Canonical(IEnumerable<string> names)
    {
        var list = names.ToList();
        bool bare = !list.Any(n => n.StartsWith(Prefix, StringComparison.Ordinal)) && list.Contains("wte.weight");
        return bare ? n => n == "lm_head.weight" ? n : Prefix + n : n => n;
    }

    /// <summary>Every tensor of <see cref="Specs"/> from <paramref name="checkpoint"/> as float32 (matrices as views of
    /// the mapped file, see <see cref="WeightMap.Read"/>), checking names and shapes first (nothing is read when
    /// something is missing or extra).</summary>
    public static Dictionary<string, Tensor> Load(HfConfig c, SafetensorsCheckpoint checkpoint)
    {
        var canonical = Canonical(checkpoint.Entries.Keys);
        var fileName = new Dictionary<string, string>();
        foreach (var name in checkpoint.Entries.Keys)
            if (!fileName.TryAdd(canonical(name), name)) throw new TapmlException($"checkpoint {checkpoint.Dir}: tensors '{Tokenizer.Shorten(fileName[canonical(name)])}' and '{Tokenizer.Shorten(name)}' are the same GPT-2 weight");
        var available = checkpoint.Entries.ToDictionary(e => canonical(e.Key), e => e.Value.Shape);
        CheckSizes(c, available, checkpoint.Dir);
        var specs = Specs(c);
        Check(c, specs, available, checkpoint.Dir);
        var weights = new Dictionary<string, Tensor>();
        foreach (var s in specs) weights[s.Name] = WeightMap.Read(checkpoint, fileName[s.Name]);
        return weights;
    }

    /// <summary>The config's layer count, vocabulary and hidden size against the checkpoint (see <see cref="WeightMap.CheckSizes"/>).</summary>
    public static void CheckSizes(HfConfig c, IReadOnlyDictionary<string, long[]> available, string origin) =>
        WeightMap.CheckSizes(c, available, origin, Prefix + "h.", Prefix + "wte.weight");

    /// <summary>Checks a checkpoint's tensors against the config's map (see <see cref="WeightMap.Check"/>).</summary>
    public static void Check(HfConfig c, IReadOnlyList<WeightSpec> specs, IReadOnlyDictionary<string, long[]> available, string origin) =>
        WeightMap.Check(c, specs, available, origin, IsBuffer);
}
