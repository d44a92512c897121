using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>SequenceMap (opset 17): applies the body to each position of the input sequence(s).</summary>
public sealed class SequenceMapOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r) => r.Add("SequenceMap", SequenceMap, sinceOpset: 17);

    static Value?[] SequenceMap(NodeContext ctx, Value?[] inputs)
    {
        var body = ctx.Graph("body");
        if (inputs.Length == 0 || inputs[0] is not SequenceValue first) throw ctx.Error("input 0 must be a sequence");
        int n = first.Items.Count;
        // Spec: additional sequence inputs must have the same length as the first; tensors are passed whole.
        for (int i = 1; i < inputs.Length; i++)
            if (inputs[i] is SequenceValue s && s.Items.Count != n)
                throw ctx.Error($"input {i} has {s.Items.Count} items, input 0 has {n}");
        var outs = new List<Tensor>[ctx.Node.Outputs.Length];
        for (int o = 0; o < outs.Length; o++) outs[o] = new List<Tensor>();
        for (int k = 0; k < n; k++)
        {
            var args = new Value?[inputs.Length];
            for (int i = 0; i < inputs.Length; i++)
                args[i] = inputs[i] is SequenceValue s ? s.Items[k] : inputs[i];
            var res = ctx.Subgraph(body, args);
            for (int o = 0; o < outs.Length; o++)
                outs[o].Add(res[o] as Tensor ?? throw ctx.Error($"body output {o} must be a tensor"));
        }
        var result = new Value?[outs.Length];
        for (int o = 0; o < outs.Length; o++)
        {
            var et = body.Outputs[o].Type?.ElemType is { } t and not DType.Undefined ? t : outs[o].Count > 0 ? outs[o][0].DType : DType.Float32;
            result[o] = new SequenceValue(et, outs[o]);
        }
        return result;
    }
}
