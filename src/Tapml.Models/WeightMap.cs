using Tapml.Core;

namespace Tapml.Models;

/// <summary>One checkpoint tensor a model needs: its Hugging Face name and the shape the config implies
/// (elements per dimension, PyTorch layout: a Linear weight is [out, in]).</summary>
public sealed record WeightSpec(string Name, long[] Shape)
{
    public override string ToString() => $"{Name} {ShapeUtil.Format(Shape)}";
}

/// <summary>The check every architecture's explicit weight-name map goes through.</summary>
public static class WeightMap
{
    /// <summary>Checks <paramref name="available"/> (tensor name → shape) against <paramref name="specs"/>: missing
    /// tensors, unused tensors and shape mismatches are all listed in one <see cref="TapmlException"/> naming
    /// <paramref name="origin"/> (the checkpoint folder). <paramref name="isBuffer"/> names non-weight tensors old
    /// exports save; with tied embeddings a saved <c>lm_head.weight</c> (a copy transformers ignores) is accepted.</summary>
    public static void Check(HfConfig c, IReadOnlyList<WeightSpec> specs, IReadOnlyDictionary<string, long[]> available, string origin, Func<string, bool> isBuffer)
    {
        var expected = specs.ToDictionary(s => s.Name);
        var missing = specs.Where(s => !available.ContainsKey(s.Name)).Select(s => s.ToString()).ToList();
        var unused = available.Keys.Where(n => !expected.ContainsKey(n) && !isBuffer(n) && !(c.TieWordEmbeddings && n == "lm_head.weight")).Order().ToList();
        var wrongShape = specs.Where(s => available.TryGetValue(s.Name, out var shape) && !shape.AsSpan().SequenceEqual(s.Shape))
            .Select(s => $"'{s.Name}' is {ShapeUtil.Format(available[s.Name])}, config {c.Path} implies {ShapeUtil.Format(s.Shape)}").ToList();
        if (missing.Count == 0 && unused.Count == 0 && wrongShape.Count == 0) return;
        var parts = new List<string>();
        if (missing.Count > 0) parts.Add($"missing {missing.Count} weight(s): {string.Join(", ", missing)}");
        if (unused.Count > 0) parts.Add($"{unused.Count} unused weight(s): {string.Join(", ", unused)}");
        if (wrongShape.Count > 0) parts.Add($"wrong shape: {string.Join("; ", wrongShape)}");
        throw new TapmlException($"checkpoint {origin} does not match a {c.ModelType} model: {string.Join("; ", parts)}");
    }
}
