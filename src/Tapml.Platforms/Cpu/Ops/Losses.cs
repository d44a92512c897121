using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss: input [N, C, d1..dk], target [N, d1..dk],
/// optional per-class weight [C], reduction none/sum/mean, ignore_index. Computed in f64, rounded once to the
/// input's type.</summary>
public sealed class Losses : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("NegativeLogLikelihoodLoss", Nll, sinceOpset: 12);
        r.Add("SoftmaxCrossEntropyLoss", Sce, sinceOpset: 12);
    }

    static Value?[] Nll(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var target = inputs.T(1, ctx);
        var w = inputs.OptT(2);
        var (n, c, d) = LossHelpers.Dims(ctx, x, target, w);
        double[] logp = x.ToDoubleArray();
        return ctx.Outputs(LossHelpers.Reduce(ctx, logp, target, w, n, c, d, x.DType));
    }

    // loss = NLL(log_softmax(scores, axis=1), labels); the optional second output is log_softmax(scores).
    static Value?[] Sce(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var target = inputs.T(1, ctx);
        var w = inputs.OptT(2);
        var (n, c, d) = LossHelpers.Dims(ctx, x, target, w);
        double[] s = x.ToDoubleArray();
        var logp = new double[s.Length];
        for (long i = 0; i < n; i++)
            for (long j = 0; j < d; j++)
            {
                long b = i * c * d + j;
                double max = double.NegativeInfinity;
                for (long k = 0; k < c; k++) max = Math.Max(max, s[b + k * d]);
                double sum = 0;
                for (long k = 0; k < c; k++) sum += Math.Exp(s[b + k * d] - max);
                double lse = max + Math.Log(sum);
                for (long k = 0; k < c; k++) logp[b + k * d] = s[b + k * d] - lse;
            }
        var loss = LossHelpers.Reduce(ctx, logp, target, w, n, c, d, x.DType);
        var lp = Tensor.Zeros(x.DType, x.Shape);
        for (long i = 0; i < logp.Length; i++) lp.SetDouble(i, logp[i]);
        return ctx.Outputs(loss, lp);
    }
}

internal static class LossHelpers
{
    public static (long N, long C, long D) Dims(NodeContext ctx, Tensor x, Tensor target, Tensor? w)
    {
        if (!DTypes.IsFloat(x.DType)) throw ctx.Error($"input must be a float tensor, got {x.Describe()}");
        if (x.Rank < 2) throw ctx.Error($"input must have shape [N, C, ...], got {x.Describe()}");
        if (target.DType is not (DType.Int32 or DType.Int64)) throw ctx.Error($"target must be int32 or int64, got {target.Describe()}");
        if (target.Rank != x.Rank - 1 || target.Shape[0] != x.Shape[0] || !ShapeUtil.SameShape(target.Shape.AsSpan(1), x.Shape.AsSpan(2)))
            throw ctx.Error($"target {target.Describe()} does not match input {x.Describe()} (expected [N, d1..dk])");
        long c = x.Shape[1];
        if (w is not null && (w.Rank != 1 || w.Shape[0] != c)) throw ctx.Error($"weight {w.Describe()} must be [{c}]");
        return (x.Shape[0], c, ShapeUtil.Size(x.Shape.AsSpan(2)));
    }

    /// <summary>loss[n, j] = -logp[n, t, j] · w[t] with t = target[n, j] (0 with weight 0 where t == ignore_index),
    /// then reduced: none keeps [N, d1..dk], sum adds, mean divides the sum by the sum of applied weights.</summary>
    public static Tensor Reduce(NodeContext ctx, double[] logp, Tensor target, Tensor? w, long n, long c, long d, DType dtype)
    {
        string reduction = ctx.String("reduction", "mean");
        if (reduction is not ("none" or "sum" or "mean")) throw ctx.Error($"reduction '{reduction}' must be none, sum or mean");
        bool hasIgnore = ctx.Has("ignore_index");
        long ignore = ctx.Int("ignore_index", 0);
        double[]? wd = w?.ToDoubleArray();
        var loss = new double[n * d];
        double wsum = 0;
        for (long i = 0; i < n; i++)
            for (long j = 0; j < d; j++)
            {
                long t = target.GetInt64(i * d + j);
                if (hasIgnore && t == ignore) continue;
                if (t < 0 || t >= c) throw ctx.Error($"target value {t} is outside [0, {c})");
                double wt = wd is null ? 1 : wd[t];
                loss[i * d + j] = -logp[(i * c + t) * d + j] * wt;
                wsum += wt;
            }
        if (reduction == "none")
        {
            var r = Tensor.Zeros(dtype, target.Shape);
            for (long i = 0; i < loss.Length; i++) r.SetDouble(i, loss[i]);
            return r;
        }
        double sum = 0;
        foreach (double v in loss) sum += v;
        var s = Tensor.Zeros(dtype);
        s.SetDouble(0, reduction == "sum" ? sum : sum / wsum);
        return s;
    }
}
