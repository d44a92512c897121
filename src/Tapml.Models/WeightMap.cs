using System.Globalization;
using Tapml.Core;
using Tapml.Ir.Safetensors;
using Tapml.Platforms.Cpu;

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
        if (missing.Count > 0) parts.Add($"missing {missing.Count} weight(s): {Few(missing, ", ")}");
        if (unused.Count > 0) parts.Add($"{unused.Count} unused weight(s): {Few(unused, ", ")}");
        if (wrongShape.Count > 0) parts.Add($"wrong shape: {Few(wrongShape, "; ")}");
        throw new TapmlException($"checkpoint {origin} does not match a {c.ModelType} model: {string.Join("; ", parts)}");
    }

    /// <summary>Matrices of fewer elements are read into memory at load; larger ones stay in the mapped file. (Counted in
    /// elements, not bytes, so that one weight takes the same path, and gives the same bits, whatever its dtype.)</summary>
    public const long InPlaceFromElements = 1024;

    /// <summary>Checkpoint tensor <paramref name="name"/> as an f32 weight. A matrix (rank ≥ 2) of at least
    /// <see cref="InPlaceFromElements"/> elements stored as f32, f16 or bf16 is not read: the tensor is a view of the memory-mapped
    /// file in its stored dtype (<see cref="ExternalData"/>), so loading reads nothing, the weight is held once (by the
    /// page cache, shared with every view of it), and cpu's MatMul and Gather read it in place, converting a tile at a
    /// time. Vectors and small matrices are read and widened to f32 here. Other dtypes are an error naming the tensor.</summary>
    public static Tensor Read(SafetensorsCheckpoint checkpoint, string name)
    {
        var e = checkpoint.Entries[name];
        if (e.DType is not (DType.Float32 or DType.Float16 or DType.BFloat16 or DType.Float64))
            throw new TapmlException($"{checkpoint.Dir}: tensor '{name}' is {DTypes.Name(e.DType)}; expected a floating-point weight");
        if (e.Shape.Length >= 2 && ShapeUtil.Size(e.Shape) >= InPlaceFromElements && checkpoint.View(name) is { } view)
            return new Tensor(DType.Float32, e.Shape, view);
        return TensorConvert.To(checkpoint.Read(name), DType.Float32);
    }

    // NOTE: a hostile checkpoint can hold a million names; the line lists the first few (each shortened) and counts the rest.
    static string Few(List<string> items, string separator) =>
        string.Join(separator, items.Take(8).Select(s => s.Length <= 200 ? s : s[..200] + "…")) + (items.Count > 8 ? $"{separator}… {items.Count - 8} more" : "");

    /// <summary>Checks the config sizes that decide how much is built against the checkpoint before anything is: the
    /// layer count against the layers the weights have (names <c>{layerPrefix}{i}.…</c>), vocab_size and hidden_size
    /// against the embedding <paramref name="embedding"/> [vocab, hidden]. A config claiming a million layers over a
    /// two-layer checkpoint fails here, naming the field, instead of allocating a million layers' worth of graph.</summary>
    public static void CheckSizes(HfConfig c, IReadOnlyDictionary<string, long[]> available, string origin, string layerPrefix, string embedding)
    {
        var layers = new HashSet<long>();
        foreach (var name in available.Keys)
        {
            if (!name.StartsWith(layerPrefix, StringComparison.Ordinal)) continue;
            int dot = name.IndexOf('.', layerPrefix.Length);
            if (dot > layerPrefix.Length && long.TryParse(name.AsSpan(layerPrefix.Length, dot - layerPrefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out long i))
                layers.Add(i);
        }
        if (layers.Count != c.NumLayers)
            throw c.Error(c.KeyOf(HfConfig.LayerKeys), $"is {c.NumLayers}, but checkpoint {origin} has weights for {layers.Count} layer(s)");
        if (!available.TryGetValue(embedding, out var e) || e.Length != 2) return;
        if (e[0] != c.VocabSize) throw c.Error("vocab_size", $"is {c.VocabSize}, but '{embedding}' in checkpoint {origin} has {e[0]} rows");
        if (e[1] != c.HiddenSize) throw c.Error(c.KeyOf(HfConfig.HiddenKeys), $"is {c.HiddenSize}, but '{embedding}' in checkpoint {origin} is {e[1]} wide");
    }
}
