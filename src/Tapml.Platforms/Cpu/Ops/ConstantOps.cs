using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Identity, Constant.</summary>
public sealed class ConstantOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Identity", (ctx, x) => [x.Length > 0 ? x[0] : throw ctx.Error("required input 0 is missing")]);
        r.Add("Constant", Constant);
    }

    // Constant: exactly one of value, value_float(s), value_int(s), value_string(s), sparse_value.
    static Value?[] Constant(NodeContext ctx, Value?[] _)
    {
        var a = ctx.Node.Attributes;
        if (a.TryGetValue("value", out var v)) return [v.T];
        if (a.TryGetValue("sparse_value", out v)) return [v.T];
        if (a.TryGetValue("value_float", out v)) return [Tensor.Scalar(v.F)];
        if (a.TryGetValue("value_floats", out v)) return [Tensor.FromArray(v.Floats, v.Floats.Length)];
        if (a.TryGetValue("value_int", out v)) return [Tensor.Scalar(v.I)];
        if (a.TryGetValue("value_ints", out v)) return [Tensor.FromArray(v.Ints, v.Ints.Length)];
        if (a.TryGetValue("value_string", out v)) return [Tensor.Scalar(v.Str)];
        if (a.TryGetValue("value_strings", out v)) { var s = ctx.Strings("value_strings")!; return [Tensor.FromArray(s, s.Length)]; }
        throw ctx.Error("Constant has no value attribute");
    }
}
