using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Dropout (inference, or training with ratio 0) and Bernoulli (random: refused).</summary>
public sealed class DropoutOps : ICpuOpFamily
{
    const string RandomReason = "random: the op draws random numbers, which the reference platform does not reproduce";

    public void Register(CpuOpRegistry r)
    {
        r.Add("Dropout", Dropout);
        r.Add("Bernoulli", (ctx, _) => throw ctx.Unsupported(RandomReason), (_, _) => RandomReason);
    }

    static Value?[] Dropout(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (!DTypes.IsFloat(x.DType)) throw UnaryHelpers.BadType(ctx, x, "float types only");
        bool training;
        double ratio;
        if (ctx.Opset < 7)
        {
            // Dropout-1/6: is_test (default 0) selects test mode, where Y = X.
            training = ctx.Int("is_test", 0) == 0;
            ratio = ctx.Float("ratio", 0.5f);
        }
        else if (ctx.Opset < 12)
        {
            // Dropout-7/10: always inference (Y = X); ratio is only for training.
            training = false;
            ratio = ctx.Float("ratio", 0.5f);
        }
        else
        {
            // Dropout-12+: optional inputs ratio (default 0.5) and training_mode (default false).
            var rt = inputs.OptT(1);
            var tm = inputs.OptT(2);
            if (rt is not null && rt.Length != 1) throw ctx.Error($"ratio must be a scalar, got {rt.Describe()}");
            if (tm is not null && tm.Length != 1) throw ctx.Error($"training_mode must be a scalar, got {tm.Describe()}");
            ratio = rt is null ? 0.5 : rt.GetDouble(0);
            training = tm is not null && tm.GetDouble(0) != 0;
        }
        // Training with ratio 0 drops nothing: Y = X and the mask is all true, as in inference.
        if (training && ratio != 0) throw ctx.Unsupported(RandomReason + " (training-mode Dropout with ratio > 0)");
        bool wantMask = ctx.Node.Outputs.Length > 1 && ctx.Node.Outputs[1] != "";
        if (!wantMask) return ctx.Outputs(x);
        Tensor mask;
        if (ctx.Opset < 10)
        {
            // Dropout-1..7: the mask has X's type T; nothing is dropped, so it is all ones.
            mask = Tensor.Zeros(x.DType, UnaryHelpers.Shape(x));
            for (long i = 0; i < mask.Length; i++) mask.SetDouble(i, 1.0);
        }
        else
        {
            var m = new bool[x.Length];
            Array.Fill(m, true);
            mask = Tensor.FromArray(m, UnaryHelpers.Shape(x));
        }
        return ctx.Outputs(x, mask);
    }
}
