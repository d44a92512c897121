using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Optimizer steps of the ai.onnx.preview.training domain: Adagrad, Momentum (standard and Nesterov),
/// Adam. Inputs (R, T, X_1..X_n, G_1..G_n, state tensors...); each optimized tensor is updated independently.
/// Computed in f64 and rounded once to each tensor's type.</summary>
public sealed class Training : ICpuOpFamily
{
    const string Domain = "ai.onnx.preview.training";

    public void Register(CpuOpRegistry r)
    {
        r.Add("Adagrad", Adagrad, domain: Domain);
        r.Add("Momentum", Momentum, domain: Domain);
        r.Add("Adam", Adam, domain: Domain);
    }

    // r = R / (1 + T·decay_factor); g = norm_coefficient·X + G; H' = H + g²; X' = X - r·g / (sqrt(H') + epsilon)
    static Value?[] Adagrad(NodeContext ctx, Value?[] inputs)
    {
        var (rate, step, n) = TrainingHelpers.Head(ctx, inputs, 3);
        double decay = ctx.Float("decay_factor", 0), eps = ctx.Float("epsilon", 0), norm = ctx.Float("norm_coefficient", 0);
        double r = rate / (1 + step * decay);
        var outs = new Value?[2 * n];
        for (int i = 0; i < n; i++)
        {
            var (x, g, h) = (inputs.T(2 + i, ctx), inputs.T(2 + n + i, ctx), inputs.T(2 + 2 * n + i, ctx));
            TrainingHelpers.Check(ctx, x, g, h);
            var xn = Tensor.Zeros(x.DType, x.Shape);
            var hn = Tensor.Zeros(h.DType, h.Shape);
            for (long k = 0; k < x.Length; k++)
            {
                double gr = norm * x.GetDouble(k) + g.GetDouble(k);
                double hv = h.GetDouble(k) + gr * gr;
                hn.SetDouble(k, hv);
                xn.SetDouble(k, x.GetDouble(k) - r * gr / (Math.Sqrt(hv) + eps));
            }
            outs[i] = xn;
            outs[n + i] = hn;
        }
        return ctx.Outputs(outs);
    }

    // g = norm_coefficient·X + G; beta' = T > 0 ? beta : 1; V' = alpha·V + beta'·g;
    // standard: X' = X - R·V'; nesterov: X' = X - R·(g + alpha·V')
    static Value?[] Momentum(NodeContext ctx, Value?[] inputs)
    {
        var (rate, step, n) = TrainingHelpers.Head(ctx, inputs, 3);
        double alpha = ctx.Get("alpha").F, beta = ctx.Get("beta").F, norm = ctx.Get("norm_coefficient").F;
        string mode = ctx.Get("mode").Str;
        if (mode is not ("standard" or "nesterov")) throw ctx.Error($"mode '{mode}' must be standard or nesterov");
        bool nesterov = mode == "nesterov";
        double betaAdj = step > 0 ? beta : 1;
        var outs = new Value?[2 * n];
        for (int i = 0; i < n; i++)
        {
            var (x, g, v) = (inputs.T(2 + i, ctx), inputs.T(2 + n + i, ctx), inputs.T(2 + 2 * n + i, ctx));
            TrainingHelpers.Check(ctx, x, g, v);
            var xn = Tensor.Zeros(x.DType, x.Shape);
            var vn = Tensor.Zeros(v.DType, v.Shape);
            for (long k = 0; k < x.Length; k++)
            {
                double gr = norm * x.GetDouble(k) + g.GetDouble(k);
                double vv = alpha * v.GetDouble(k) + betaAdj * gr;
                vn.SetDouble(k, vv);
                xn.SetDouble(k, x.GetDouble(k) - rate * (nesterov ? gr + alpha * vv : vv));
            }
            outs[i] = xn;
            outs[n + i] = vn;
        }
        return ctx.Outputs(outs);
    }

    // g = norm_coefficient·X + G; V' = alpha·V + (1-alpha)·g; H' = beta·H + (1-beta)·g²;
    // R' = T > 0 ? R·sqrt(1 - beta^T)/(1 - alpha^T) : R; X' = (1 - norm_coefficient_post)·(X - R'·V'/(sqrt(H') + epsilon))
    static Value?[] Adam(NodeContext ctx, Value?[] inputs)
    {
        var (rate, step, n) = TrainingHelpers.Head(ctx, inputs, 4);
        double alpha = ctx.Float("alpha", 0.9f), beta = ctx.Float("beta", 0.999f), eps = ctx.Float("epsilon", 0);
        double norm = ctx.Float("norm_coefficient", 0), post = ctx.Float("norm_coefficient_post", 0);
        double r = step > 0 ? rate * Math.Sqrt(1 - Math.Pow(beta, step)) / (1 - Math.Pow(alpha, step)) : rate;
        var outs = new Value?[3 * n];
        for (int i = 0; i < n; i++)
        {
            var (x, g) = (inputs.T(2 + i, ctx), inputs.T(2 + n + i, ctx));
            var (v, h) = (inputs.T(2 + 2 * n + i, ctx), inputs.T(2 + 3 * n + i, ctx));
            TrainingHelpers.Check(ctx, x, g, v, h);
            var xn = Tensor.Zeros(x.DType, x.Shape);
            var vn = Tensor.Zeros(v.DType, v.Shape);
            var hn = Tensor.Zeros(h.DType, h.Shape);
            for (long k = 0; k < x.Length; k++)
            {
                double gr = norm * x.GetDouble(k) + g.GetDouble(k);
                double vv = alpha * v.GetDouble(k) + (1 - alpha) * gr;
                double hv = beta * h.GetDouble(k) + (1 - beta) * gr * gr;
                vn.SetDouble(k, vv);
                hn.SetDouble(k, hv);
                double xv = x.GetDouble(k) - r * (vv / (Math.Sqrt(hv) + eps));
                xn.SetDouble(k, (1 - post) * xv);
            }
            outs[i] = xn;
            outs[n + i] = vn;
            outs[2 * n + i] = hn;
        }
        return ctx.Outputs(outs);
    }
}

internal static class TrainingHelpers
{
    /// <summary>Reads R and T and the number n of optimized tensors from (R, T, groups·n tensors).</summary>
    public static (double Rate, long Step, int N) Head(NodeContext ctx, Value?[] inputs, int groups)
    {
        var r = inputs.T(0, ctx);
        var t = inputs.T(1, ctx);
        if (r.Length != 1 || !DTypes.IsFloat(r.DType)) throw ctx.Error($"R must be a float scalar, got {r.Describe()}");
        if (t.Length != 1 || t.DType != DType.Int64) throw ctx.Error($"T must be an int64 scalar, got {t.Describe()}");
        int rest = inputs.Length - 2;
        if (rest <= 0 || rest % groups != 0) throw ctx.Error($"expected R, T and {groups}·n tensors, got {inputs.Length} inputs");
        return (r.GetDouble(0), t.GetInt64(0), rest / groups);
    }

    public static void Check(NodeContext ctx, Tensor x, params Tensor[] others)
    {
        if (!DTypes.IsFloat(x.DType)) throw ctx.Error($"optimized tensors must be float, got {x.Describe()}");
        foreach (var o in others)
            if (!ShapeUtil.SameShape(o.Shape, x.Shape)) throw ctx.Error($"{o.Describe()} does not match the optimized tensor {x.Describe()}");
    }
}
