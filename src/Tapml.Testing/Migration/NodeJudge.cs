using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Testing.Migration;

/// <summary>Judges one node's outputs against the source's (lockstep, bisect's culprit): the tolerance its op family
/// gets from <see cref="Tolerances"/>, the magnitude of the terms from the source's inputs when the accumulation rule
/// needs it, and the worst output as a <see cref="NodeError"/>.</summary>
static class NodeJudge
{
    /// <summary>Accumulated error (the target fed its own inputs): besides the node's own rounding it carries what its
    /// inputs inherited, which the accumulation bound does not cover; an output within the element-wise tolerance of its
    /// dtype also passes, so drift alone does not list a node as affected.</summary>
    public static NodeError CompareAccumulated(Node node, int opset, Value?[] sourceInputs, Value?[] expected, Value?[] actual, Tolerance tol)
    {
        var strict = Compare(node, opset, sourceInputs, expected, actual, tol);
        if (strict.Passed || tol.Rule != ToleranceRule.Accumulation) return strict;
        var dt = expected.OfType<Tensor>().Select(t => t.DType).FirstOrDefault(DTypes.IsFloat, DType.Float32);
        var loose = Compare(node, opset, sourceInputs, expected, actual, Tolerances.ForDType(dt));
        return loose.Passed ? loose : strict;
    }

    /// <param name="sourceInputs">The inputs <paramref name="expected"/> was computed from (for the magnitude).</param>
    public static NodeError Compare(Node node, int opset, Value?[] sourceInputs, Value?[] expected, Value?[] actual, Tolerance tol)
    {
        Tensor?[]? mags = null;
        OutputComparison? worst = null;
        for (int i = 0; i < expected.Length; i++)
        {
            // NOTE: outputs the graph omits (empty names) are not compared: platforms need not produce them.
            if (expected[i] is not { } e || i >= node.Outputs.Length || node.Outputs[i].Length == 0) continue;
            int o = i;
            var c = Comparison.Compare($"output {i}", e, i < actual.Length ? actual[i] : null, tol,
                tol.Rule == ToleranceRule.Accumulation ? () => (mags ??= Magnitudes.Of(node, opset, sourceInputs))[o] : null);
            if (worst is null || !c.Passed && worst.Passed || c.Passed == worst.Passed && (c.Metrics.BoundRatio ?? c.Metrics.MaxRel) > (worst.Metrics.BoundRatio ?? worst.Metrics.MaxRel)) worst = c;
        }
        return worst is null ? new NodeError(new Metrics(), true, null) : new NodeError(worst.Metrics, worst.Passed, worst.Failure is null ? null : $"{worst.Name}: {worst.Failure}");
    }
}
