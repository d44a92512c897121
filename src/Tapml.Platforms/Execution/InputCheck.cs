using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Execution;

/// <summary>Checks feeds against the graph's declared inputs before anything runs: every required input
/// given, no unknown names, element types equal, ranks and fixed dimensions equal (symbolic dimensions
/// must agree wherever the same name appears).</summary>
public static class InputCheck
{
    public static void Validate(Model model, IReadOnlyDictionary<string, Value> feeds, bool checkShapes = true)
    {
        string origin = model.Path is null ? "model" : Path.GetFileName(model.Path);
        var g = model.Graph;
        var declared = g.Inputs.ToDictionary(i => i.Name);
        foreach (var name in feeds.Keys)
            if (!declared.ContainsKey(name))
                throw new TapmlException($"{origin} has no input named '{name}' (inputs: {string.Join(", ", g.RequiredInputs.Select(i => i.Name))})");
        var symbols = new Dictionary<string, long>();
        foreach (var input in g.Inputs)
        {
            if (!feeds.TryGetValue(input.Name, out var v))
            {
                if (g.Initializers.ContainsKey(input.Name)) continue;
                if (input.Type?.Kind == TypeKind.Optional) continue;
                throw new TapmlException($"{origin}: input '{input.Name}' ({input.Type}) was not given");
            }
            if (input.Type is null || input.Type.Kind != TypeKind.Tensor) continue;
            // Device values (a KV cache kept on the GPU between generation steps) are checked like host tensors.
            var (dtype, shape, what) = v switch
            {
                Tensor ht => (ht.DType, ht.Shape, ht.Describe()),
                IDeviceValue d => (d.DType, d.Shape, v.Describe()),
                _ => (DType.Undefined, null!, ""),
            };
            if (shape is null) continue;
            var t = (DType: dtype, Shape: shape, Rank: shape.Length);
            var want = input.Type;
            if (want.ElemType != DType.Undefined && want.ElemType != t.DType)
                throw new TapmlException($"{origin}: input '{input.Name}' must be {want}, got {what}");
            if (want.Shape is null || !checkShapes) continue;
            if (want.Shape.Length != t.Rank)
                throw new TapmlException($"{origin}: input '{input.Name}' must be {want}, got {what} (rank {t.Rank}, expected {want.Shape.Length})");
            for (int d = 0; d < t.Rank; d++)
            {
                var dim = want.Shape[d];
                if (dim.Value is long fixedDim && fixedDim >= 0 && fixedDim != t.Shape[d])
                    throw new TapmlException($"{origin}: input '{input.Name}' must be {want}, got {what} (dimension {d} is {t.Shape[d]}, expected {fixedDim})");
                if (dim.Param is { Length: > 0 } p)
                {
                    if (symbols.TryGetValue(p, out long seen) && seen != t.Shape[d])
                        throw new TapmlException($"{origin}: input '{input.Name}' dimension {d} ('{p}') is {t.Shape[d]}, but '{p}' is {seen} in another input");
                    symbols[p] = t.Shape[d];
                }
            }
        }
    }
}
