using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Testing.Migration;

/// <summary>Judges one node's outputs against the source's (lockstep, bisect's culprit) with the tolerance its op family
/// gets from <see cref="Tolerances"/>. The magnitude of the terms, which the accumulation rule needs, depends only on
/// the source's inputs: it is computed once per node call, and only when a comparison needs it.</summary>
/// <param name="sourceInputs">The inputs the expected outputs were computed from.</param>
sealed class NodeJudge(Node node, int opset, Value?[] sourceInputs, Tolerance tol)
{
    Tensor?[]? _magnitudes;

    /// <summary>Isolated error: the outputs against <paramref name="expected"/> by the node's rule.</summary>
    public NodeError Compare(Value?[] expected, Value?[] actual) => Compare(expected, actual, tol);

    /// <summary>Accumulated error (the target fed its own inputs): besides the node's own rounding it carries what its
    /// inputs inherited, which the accumulation bound does not cover; an output within the element-wise tolerance of its
    /// dtype also passes, so drift alone does not list a node as affected.</summary>
    public NodeError CompareAccumulated(Value?[] expected, Value?[] actual)
    {
        var strict = Compare(expected, actual, tol);
        if (strict.Passed || tol.Rule != ToleranceRule.Accumulation) return strict;
        var dt = expected.OfType<Tensor>().Select(t => t.DType).FirstOrDefault(DTypes.IsFloat, DType.Float32);
        var loose = Compare(expected, actual, Tolerances.ForDType(dt));
        return loose.Passed ? loose : strict;
    }

    NodeError Compare(Value?[] expected, Value?[] actual, Tolerance t)
    {
        OutputComparison? worst = null;
        for (int i = 0; i < expected.Length; i++)
        {
            // NOTE: outputs the graph omits (empty names) are not compared: platforms need not produce them.
            if (expected[i] is not { } e || i >= node.Outputs.Length || node.Outputs[i].Length == 0) continue;
            int o = i;
            var c = Comparison.Compare($"output {i}", e, i < actual.Length ? actual[i] : null, t,
                t.Rule == ToleranceRule.Accumulation ? () => (_magnitudes ??= Magnitudes.Of(node, opset, sourceInputs))[o] : null);
            if (worst is null || !c.Passed && worst.Passed || c.Passed == worst.Passed && (c.Metrics.BoundRatio ?? c.Metrics.MaxRel) > (worst.Metrics.BoundRatio ?? worst.Metrics.MaxRel)) worst = c;
        }
        return worst is null ? new NodeError(new Metrics(), true, null) : new NodeError(worst.Metrics, worst.Passed, worst.Failure is null ? null : $"{worst.Name}: {worst.Failure}");
    }
}
