using Tapml.Core;
using Tapml.Ir.Builders;

namespace Tapml.Models;

/// <summary>Initializers of an architecture's graph, made from checkpoint weights (keyed by Hugging Face name)
/// and created once each, however many nodes read them.</summary>
sealed class GraphWeights(GraphBuilder b, IReadOnlyDictionary<string, Tensor> w)
{
    readonly Dictionary<string, string> _names = new();

    /// <summary>Initializers that are a checkpoint weight as stored or transposed: initializer name → (weight
    /// name, transform), what a carve stores by reference instead of copying.</summary>
    public Dictionary<string, (string Weight, string Transform)> Sources { get; } = new();

    /// <summary>The weight as stored.</summary>
    public string Weight(string name)
    {
        if (!_names.TryGetValue(name, out var v))
        {
            _names[name] = v = b.Initializer(name, w[name]);
            Sources[v] = (name, "");
        }
        return v;
    }

    /// <summary>An [out, in] matrix (a Linear weight, or the embedding for a tied lm_head) as the [in, out] initializer
    /// the graph multiplies by (<c>x @ W^T</c>, one MatMul). A weight read in place is not copied: the initializer is a
    /// transposed view of the same mapped bytes (a tied lm_head and the embedding share them).</summary>
    public string Transposed(string name)
    {
        string key = name + ".T";
        if (_names.TryGetValue(key, out var v)) return v;
        var t = w[name];
        if (t.External is { Transposed: false } e && t.Rank == 2)
        {
            v = _names[key] = b.Initializer(key, new Tensor(DType.Float32, [t.Shape[1], t.Shape[0]], e.Transpose()));
            Sources[v] = (name, "transpose");
            return v;
        }
        int rows = (int)t.Shape[0], cols = (int)t.Shape[1];
        var src = t.Span<float>();
        var dst = Tensor.Uninitialized(DType.Float32, cols, rows);
        var d = dst.Span<float>();
        for (int r = 0; r < rows; r++)
            for (int k = 0; k < cols; k++) d[k * rows + r] = src[r * cols + k];
        v = _names[key] = b.Initializer(key, dst);
        Sources[v] = (name, "transpose");
        return v;
    }

    /// <summary>Fills <paramref name="m"/>'s <see cref="Ir.Model.InitializerSources"/> from <see cref="Sources"/>:
    /// <paramref name="fileOf"/> gives a weight's file and name in it (null: not read from a file as is, e.g. split
    /// from a fused tensor).</summary>
    public void Describe(Ir.Model m, Func<string, (string File, string Tensor)?> fileOf)
    {
        foreach (var (init, (weight, transform)) in Sources)
            if (fileOf(weight) is { } f) m.InitializerSources[init] = new Ir.InitializerSource(f.File, f.Tensor, transform);
    }

    /// <summary>A tensor computed once from the weights (e.g. Gemma's 1 + w), stored under <paramref name="key"/>.</summary>
    public string Derived(string key, Func<Tensor> make)
    {
        if (!_names.TryGetValue(key, out var v)) _names[key] = v = b.Initializer(key, make());
        return v;
    }

    /// <summary>A named f32 scalar constant.</summary>
    public string Float(string name, float v)
    {
        if (!_names.TryGetValue(name, out var n)) _names[name] = n = b.Initializer(name, Tensor.Scalar(v));
        return n;
    }
}
