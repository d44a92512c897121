using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;

namespace Tapml.Testing;

/// <summary>The magnitude of the terms each output element of a summing op adds up — Σ|a·b| of a product, Σ|x| of a
/// sum — which the accumulation bound of <see cref="Tolerances"/> scales with. For the ops of
/// <see cref="Tolerances.AccumulationFamilies"/> (sums of products, each factor from one input) it is the op itself run
/// on the reference cpu with every float input replaced by its absolute value and every scaling attribute (Gemm's
/// alpha and beta, FusedMatMul's alpha) by its absolute value, in f64 where the cpu kernel takes f64.</summary>
public static class Magnitudes
{
    static readonly string[] ScalingAttributes = ["alpha", "beta"];

    /// <summary>One magnitude tensor per output of <paramref name="node"/> (null where none is known: other ops,
    /// outputs that are not floats, or a cpu that cannot run the node).</summary>
    public static Tensor?[] Of(Node node, int opset, IReadOnlyList<Value?> inputs)
    {
        var none = new Tensor?[node.Outputs.Length];
        if (!Tolerances.AccumulationFamilies.Contains(node.OpType) || node.Domain is not ("" or "ai.onnx" or "com.microsoft")) return none;
        var attrs = new Dictionary<string, Attr>(node.Attributes);
        foreach (var name in ScalingAttributes)
            if (attrs.TryGetValue(name, out var a) && a.Type == AttrType.Float) attrs[name] = Attr.Of(Math.Abs(a.F));
        var abs = new Node { Name = node.Name, OpType = node.OpType, Domain = node.Domain, Inputs = node.Inputs, Outputs = node.Outputs, Attributes = attrs };
        foreach (bool wide in new[] { true, false })
        {
            var x = inputs.Select(v => v is Tensor t && DTypes.IsFloat(t.DType) ? Abs(t, wide) : v).ToArray();
            try
            {
                using var cpu = new CpuPlatform();
                var ctx = new NodeContext(abs, opset);
                var kernel = cpu.Prepare(abs, ctx, x.Select(v => v is null ? null : Executor.TypeOf(v)).ToArray());
                return cpu.Run(kernel, ctx, x).Select(v => v as Tensor).ToArray();
            }
            catch (TapmlException) when (wide) { }
            catch (TapmlException) { return none; }
        }
        return none;
    }

    /// <summary>|t| element by element, as f64 when <paramref name="wide"/>.</summary>
    static Tensor Abs(Tensor t, bool wide)
    {
        var r = Tensor.Uninitialized(wide ? DType.Float64 : t.DType, t.Shape);
        for (long i = 0; i < t.Length; i++) r.SetDouble(i, Math.Abs(t.GetDouble(i)));
        return r;
    }
}
