using Tapml.Core;

namespace Tapml.Platforms.Cpu;

/// <summary>Input access for kernels: typed, with messages that name the node.</summary>
public static class KernelArgs
{
    /// <summary>Required tensor input i.</summary>
    public static Tensor T(this Value?[] inputs, int i, NodeContext ctx) =>
        i < inputs.Length && inputs[i] is Tensor t ? t
        : i < inputs.Length && inputs[i] is not null ? throw ctx.Error($"input {i} must be a tensor, got {inputs[i]!.Describe()}")
        : throw ctx.Error($"required input {i} is missing");

    /// <summary>Optional tensor input i (null when omitted or beyond the inputs given).</summary>
    public static Tensor? OptT(this Value?[] inputs, int i) => i < inputs.Length ? inputs[i] as Tensor : null;

    /// <summary>Outputs array with the node's output count.</summary>
    public static Value?[] Outputs(this NodeContext ctx, params Value?[] values)
    {
        if (values.Length >= ctx.Node.Outputs.Length) return values;
        var r = new Value?[ctx.Node.Outputs.Length];
        Array.Copy(values, r, values.Length);
        return r;
    }
}
