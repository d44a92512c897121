using Tapml.Core;
using Tapml.Models;

namespace Tapml.Tests;

/// <summary>Random f32 weights for a decoder's weight specs: norm scales near 1, matrices small and centred.</summary>
public static class TestWeights
{
    public static Dictionary<string, Tensor> Random(IEnumerable<WeightSpec> specs, int seed = 5)
    {
        var rng = new Random(seed);
        return specs.ToDictionary(s => s.Name, s =>
        {
            var t = Tensor.Zeros(DType.Float32, s.Shape);
            var v = t.Span<float>();
            for (int i = 0; i < v.Length; i++) v[i] = s.Shape.Length == 1 ? 1 + 0.1f * (float)(rng.NextDouble() - 0.5) : 0.2f * (float)(rng.NextDouble() - 0.5);
            return t;
        });
    }
}
