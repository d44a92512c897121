using System.Numerics;
using Tapml.Core;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
/// MeanVarianceNormalization, LRN. f32 and f64 compute natively, f16/bf16 through f32 (rounded once).
/// Work is parallel over independent rows (planes, groups, normalized slices).</summary>
public sealed class NormalizationOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("BatchNormalization", BatchNormalization);
        r.Add("InstanceNormalization", InstanceNormalization);
        r.Add("LayerNormalization", LayerNormalization, sinceOpset: 17);
        r.Add("GroupNormalization", GroupNormalization, sinceOpset: 18);
        r.Add("MeanVarianceNormalization", MeanVarianceNormalization, sinceOpset: 9);
        r.Add("LRN", Lrn);
    }

    // ------------------------------------------------------------------ helpers

    /// <summary>Compute type for a float input: f64 stays f64, the rest compute in f32.</summary>
    static DType Compute(NodeContext ctx, Tensor x)
    {
        if (!DTypes.IsFloat(x.DType)) throw ctx.Unsupported($"{ctx.Node.OpType} on {DTypes.Name(x.DType)} (float types only)");
        return x.DType == DType.Float64 ? DType.Float64 : DType.Float32;
    }

    static T[] Arr<T>(Tensor t) => TensorConvert.To(t, DTypes.FromClr(typeof(T))).As<T>();

    static void ParallelRows(int rows, long rowWork, Action<int> body)
    {
        if (rows > 1 && rows * rowWork >= 1 << 15) Parallel.For(0, rows, CpuThreads.Options, body);
        else for (int i = 0; i < rows; i++) body(i);
    }

    /// <summary>Population mean and variance of <paramref name="s"/> (two passes; <paramref name="tmp"/> is scratch).</summary>
    static (T mean, T var) MeanVar<T>(ReadOnlySpan<T> s, Span<T> tmp) where T : IFloatingPointIeee754<T>
    {
        T n = T.CreateChecked(s.Length);
        T mean = TP.Sum(s) / n;
        TP.Subtract(s, mean, tmp);
        T var = TP.SumOfSquares<T>(tmp) / n;
        return (mean, var);
    }

    /// <summary>dst = src · a + b.</summary>
    static void Affine<T>(ReadOnlySpan<T> src, T a, T b, Span<T> dst) where T : IFloatingPointIeee754<T>
    {
        TP.Multiply(src, a, dst);
        TP.Add<T>(dst, b, dst);
    }

    static int Spatial(Tensor x) => x.Rank <= 2 ? 1 : checked((int)(ShapeUtil.Size(x.Shape.AsSpan(2))));

    static void CheckVec(NodeContext ctx, Tensor? t, long n, string name)
    {
        if (t is null) throw ctx.Error($"input {name} is missing");
        if (t.Length != n) throw ctx.Error($"{name} {t.Describe()} must have {n} elements");
    }

    // ------------------------------------------------------------------ BatchNormalization

    static Value?[] BatchNormalization(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var scale = inputs.T(1, ctx);
        var bias = inputs.T(2, ctx);
        var mean = inputs.T(3, ctx);
        var var = inputs.T(4, ctx);
        if (x.Rank < 2) throw ctx.Error($"X must have rank 2 or more, got {x.Describe()}");
        if (ctx.Opset < 9 && ctx.Int("spatial", 1) == 0) throw ctx.Unsupported("BatchNormalization with spatial=0");
        long c = x.Shape[1];
        foreach (var (t, nm) in new[] { (scale, "scale"), (bias, "B"), (mean, "input_mean"), (var, "input_var") }) CheckVec(ctx, t, c, nm);
        float eps = ctx.Float("epsilon", 1e-5f);
        bool extraOutputs = ctx.Node.Outputs.Skip(1).Any(o => o.Length > 0);
        bool training;
        if (ctx.Opset >= 14) training = ctx.Int("training_mode", 0) != 0;
        else
        {
            // Before opset 14 the extra outputs (training statistics) are not implemented; is_test=0 (opset < 7) neither.
            if (extraOutputs) throw ctx.Unsupported($"BatchNormalization-{ctx.Opset} training outputs (mean, var, saved_mean, saved_var)");
            if (ctx.Opset < 7 && ctx.Int("is_test", 0) == 0) throw ctx.Unsupported("BatchNormalization with is_test=0 (training)");
            training = false;
        }
        if (Compute(ctx, x) == DType.Float64)
            return BatchNorm<double>(ctx, x, scale, bias, mean, var, eps, training);
        return BatchNorm<float>(ctx, x, scale, bias, mean, var, eps, training);
    }

    static Value?[] BatchNorm<T>(NodeContext ctx, Tensor x, Tensor scale, Tensor bias, Tensor mean, Tensor var, float epsF, bool training)
        where T : IFloatingPointIeee754<T>
    {
        int n = checked((int)x.Shape[0]), c = checked((int)x.Shape[1]), hw = Spatial(x);
        var xs = Arr<T>(x);
        var sc = Arr<double>(scale);
        var bs = Arr<double>(bias);
        var mu = Arr<double>(mean);
        var vr = Arr<double>(var);
        double eps = epsF;
        double[] useMean = mu, useVar = vr;
        double[]? runMean = null, runVar = null;
        if (training)
        {
            // training_mode=1: batch statistics over N and the spatial dims (population variance); running
            // statistics = input · momentum + batch · (1 - momentum).
            double momentum = ctx.Float("momentum", 0.9f);
            useMean = new double[c]; useVar = new double[c];
            ParallelRows(c, (long)n * hw, ch =>
            {
                double s = 0;
                for (int ni = 0; ni < n; ni++)
                    s += double.CreateChecked(TP.Sum<T>(xs.AsSpan((ni * c + ch) * hw, hw)));
                double m = n * hw == 0 ? 0 : s / ((double)n * hw);
                double q = 0;
                for (int ni = 0; ni < n; ni++)
                {
                    var pl = xs.AsSpan((ni * c + ch) * hw, hw);
                    for (int i = 0; i < pl.Length; i++) { double d = double.CreateChecked(pl[i]) - m; q += d * d; }
                }
                useMean[ch] = m;
                useVar[ch] = n * hw == 0 ? 0 : q / ((double)n * hw);
            });
            runMean = new double[c]; runVar = new double[c];
            for (int ch = 0; ch < c; ch++)
            {
                runMean[ch] = mu[ch] * momentum + useMean[ch] * (1 - momentum);
                runVar[ch] = vr[ch] * momentum + useVar[ch] * (1 - momentum);
            }
        }
        // y = scale · (x - mean) / sqrt(var + eps) + B  =  x · a + b per channel.
        var a = new T[c];
        var b = new T[c];
        for (int ch = 0; ch < c; ch++)
        {
            double k = sc[ch] / Math.Sqrt(useVar[ch] + eps);
            a[ch] = T.CreateChecked(k);
            b[ch] = T.CreateChecked(bs[ch] - useMean[ch] * k);
        }
        var y = GC.AllocateUninitializedArray<T>(xs.Length); // every element is written below
        ParallelRows(n * c, hw, p =>
        {
            int ch = p % c;
            Affine<T>(xs.AsSpan(p * hw, hw), a[ch], b[ch], y.AsSpan(p * hw, hw));
        });
        var yt = TensorConvert.To(Tensor.FromArray(y, x.Shape), x.DType);
        if (!training) return ctx.Outputs(yt);
        var rm = TensorConvert.To(Tensor.FromArray(runMean!, mean.Shape), mean.DType);
        var rv = TensorConvert.To(Tensor.FromArray(runVar!, var.Shape), var.DType);
        return ctx.Outputs(yt, rm, rv);
    }

    // ------------------------------------------------------------------ InstanceNormalization

    static Value?[] InstanceNormalization(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var scale = inputs.T(1, ctx);
        var bias = inputs.T(2, ctx);
        if (x.Rank < 3) throw ctx.Error($"input must have rank 3 or more, got {x.Describe()}");
        CheckVec(ctx, scale, x.Shape[1], "scale");
        CheckVec(ctx, bias, x.Shape[1], "B");
        float eps = ctx.Float("epsilon", 1e-5f);
        return Compute(ctx, x) == DType.Float64 ? [Instance<double>(x, scale, bias, eps)] : [Instance<float>(x, scale, bias, eps)];
    }

    static Tensor Instance<T>(Tensor x, Tensor scale, Tensor bias, float eps) where T : IFloatingPointIeee754<T>
    {
        int n = checked((int)x.Shape[0]), c = checked((int)x.Shape[1]), hw = Spatial(x);
        var xs = Arr<T>(x);
        var sc = Arr<T>(scale);
        var bs = Arr<T>(bias);
        var y = new T[xs.Length];
        T e = T.CreateChecked(eps);
        ParallelRows(n * c, hw, p =>
        {
            int ch = p % c;
            var src = xs.AsSpan(p * hw, hw);
            var dst = y.AsSpan(p * hw, hw);
            var (m, v) = MeanVar<T>(src, dst);
            // y = scale · (x - mean) / sqrt(var + eps) + B; dst already holds x - mean.
            T k = sc[ch] / T.Sqrt(v + e);
            Affine<T>(dst, k, bs[ch], dst);
        });
        return TensorConvert.To(Tensor.FromArray(y, x.Shape), x.DType);
    }

    // ------------------------------------------------------------------ LayerNormalization

    static DType StashType(NodeContext ctx, long st) => st switch
    {
        1 => DType.Float32,
        11 => DType.Float64,
        10 => DType.Float16,
        16 => DType.BFloat16,
        _ => throw ctx.Error($"stash_type {st} is not a float type"),
    };

    // LayerNormalization-17: normalize over dims [axis, rank); the statistics are computed in stash_type
    // precision; Mean and InvStdDev have shape X.shape[:axis] + [1]*(rank-axis).
    static Value?[] LayerNormalization(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var scale = inputs.T(1, ctx);
        var bias = inputs.OptT(2);
        Compute(ctx, x);
        if (x.Rank < 1) throw ctx.Error("X must have rank 1 or more");
        int axis = ShapeUtil.Axis(ctx.Int("axis", -1), x.Rank);
        float eps = ctx.Float("epsilon", 1e-5f);
        DType stash = StashType(ctx, ctx.Int("stash_type", 1));
        long outer = ShapeUtil.Size(x.Shape.AsSpan(0, axis));
        long inner = ShapeUtil.Size(x.Shape.AsSpan(axis));
        var normShape = x.Shape[axis..];
        var statShape = new long[x.Rank];
        for (int i = 0; i < x.Rank; i++) statShape[i] = i < axis ? x.Shape[i] : 1;
        // Compute in f64 when X or the stash type is f64, else in f32 (f16/bf16 stash: f32 then rounded).
        bool wide = x.DType == DType.Float64 || stash == DType.Float64;
        var res = wide
            ? LayerNorm<double>(ctx, x, scale, bias, normShape, (int)outer, checked((int)inner), eps)
            : LayerNorm<float>(ctx, x, scale, bias, normShape, (int)outer, checked((int)inner), eps);
        var y = TensorConvert.To(res.y, x.DType);
        var mean = TensorConvert.To(res.mean.Reshape(statShape), stash);
        var inv = TensorConvert.To(res.inv.Reshape(statShape), stash);
        return ctx.Outputs(y, mean, inv);
    }

    /// <summary>A scale/bias tensor broadcast (unidirectionally) to the normalized shape, flattened.</summary>
    static T[] Expand<T>(NodeContext ctx, Tensor t, long[] shape, string name)
    {
        var src = Arr<T>(t);
        long n = ShapeUtil.Size(shape);
        if (t.Length == n && (t.Rank == shape.Length && ShapeUtil.SameShape(t.Shape, shape) || t.Rank <= 1 && shape.Length <= 1)) return src;
        long[] bshape;
        try { bshape = ShapeUtil.Broadcast(shape, t.Shape); }
        catch (TapmlException) { throw ctx.Error($"{name} {t.Describe()} does not broadcast to the normalized shape {ShapeUtil.Format(shape)}"); }
        if (!ShapeUtil.SameShape(bshape, shape)) throw ctx.Error($"{name} {t.Describe()} does not broadcast to the normalized shape {ShapeUtil.Format(shape)}");
        var st = ShapeUtil.BroadcastStrides(t.Shape, shape);
        var r = new T[n];
        var idx = new long[shape.Length];
        for (long i = 0; i < n; i++)
        {
            long off = 0;
            for (int d = 0; d < shape.Length; d++) off += idx[d] * st[d];
            r[i] = src[off];
            for (int d = shape.Length - 1; d >= 0; d--) { if (++idx[d] < shape[d]) break; idx[d] = 0; }
        }
        return r;
    }

    static (Tensor y, Tensor mean, Tensor inv) LayerNorm<T>(NodeContext ctx, Tensor x, Tensor scale, Tensor? bias, long[] normShape,
        int outer, int inner, float epsF) where T : IFloatingPointIeee754<T>
    {
        var xs = Arr<T>(x);
        var sc = Expand<T>(ctx, scale, normShape, "Scale");
        var bs = bias is null ? null : Expand<T>(ctx, bias, normShape, "B");
        var y = new T[xs.Length];
        var means = new T[outer];
        var invs = new T[outer];
        T eps = T.CreateChecked(epsF);
        ParallelRows(outer, inner, row =>
        {
            var src = xs.AsSpan(row * inner, inner);
            var dst = y.AsSpan(row * inner, inner);
            var (m, v) = MeanVar<T>(src, dst);
            T inv = T.One / T.Sqrt(v + eps);
            means[row] = m; invs[row] = inv;
            // Y = (X - Mean) · InvStdDev · Scale + B
            TP.Multiply(dst, inv, dst);
            TP.Multiply(dst, sc, dst);
            if (bs is not null) TP.Add(dst, bs, dst);
        });
        return (Tensor.FromArray(y, x.Shape), Tensor.FromArray(means, outer), Tensor.FromArray(invs, outer));
    }

    // ------------------------------------------------------------------ GroupNormalization

    // GroupNormalization: statistics per (instance, group of C/num_groups channels). Opset 18: scale and bias have
    // num_groups elements (one per group); opset 21: C elements (one per channel) and stash_type.
    static Value?[] GroupNormalization(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var scale = inputs.T(1, ctx);
        var bias = inputs.T(2, ctx);
        Compute(ctx, x);
        if (x.Rank < 2) throw ctx.Error($"X must have rank 2 or more, got {x.Describe()}");
        int groups = checked((int)ctx.Int("num_groups"));
        int c = checked((int)x.Shape[1]);
        if (groups < 1 || c % groups != 0) throw ctx.Error($"num_groups {groups} must divide the {c} channels");
        bool perChannel = ctx.Opset >= 21;
        long want = perChannel ? c : groups;
        CheckVec(ctx, scale, want, "scale");
        CheckVec(ctx, bias, want, "bias");
        float eps = ctx.Float("epsilon", 1e-5f);
        DType stash = ctx.Opset >= 21 ? StashType(ctx, ctx.Int("stash_type", 1)) : DType.Float32;
        bool wide = x.DType == DType.Float64 || stash == DType.Float64;
        var y = wide ? GroupNorm<double>(x, scale, bias, groups, perChannel, eps) : GroupNorm<float>(x, scale, bias, groups, perChannel, eps);
        return [TensorConvert.To(y, x.DType)];
    }

    static Tensor GroupNorm<T>(Tensor x, Tensor scale, Tensor bias, int groups, bool perChannel, float epsF) where T : IFloatingPointIeee754<T>
    {
        int n = checked((int)x.Shape[0]), c = checked((int)x.Shape[1]), hw = Spatial(x);
        int cg = c / groups, len = cg * hw;
        var xs = Arr<T>(x);
        var sc = Arr<T>(scale);
        var bs = Arr<T>(bias);
        var y = new T[xs.Length];
        T eps = T.CreateChecked(epsF);
        ParallelRows(n * groups, len, row =>
        {
            int gi = row % groups;
            var src = xs.AsSpan(row * len, len);
            var dst = y.AsSpan(row * len, len);
            var (m, v) = MeanVar<T>(src, dst);
            T inv = T.One / T.Sqrt(v + eps);
            for (int k = 0; k < cg; k++)
            {
                int ch = gi * cg + k;
                T s = perChannel ? sc[ch] : sc[gi], b = perChannel ? bs[ch] : bs[gi];
                var seg = dst.Slice(k * hw, hw);
                Affine<T>(seg, inv * s, b, seg);
            }
        });
        return Tensor.FromArray(y, x.Shape);
    }

    // ------------------------------------------------------------------ MeanVarianceNormalization

    // MVN (function body): Y = (X - E[X]) / (sqrt(E[X²] - E[X]²) + 1e-9), statistics over `axes` (default [0, 2, 3]).
    static Value?[] MeanVarianceNormalization(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        Compute(ctx, x);
        var axesAttr = ctx.Ints("axes") ?? [0, 2, 3];
        var red = new bool[x.Rank];
        foreach (var a in axesAttr) red[ShapeUtil.Axis(a, x.Rank, "axes")] = true;
        // Group elements by their kept-axes coordinates.
        var keptShape = new List<long>();
        for (int i = 0; i < x.Rank; i++) if (!red[i]) keptShape.Add(x.Shape[i]);
        long groups = ShapeUtil.Size(keptShape.ToArray());
        var gid = new long[x.Length];
        var strides = ShapeUtil.Strides(x.Shape);
        var keptStr = ShapeUtil.Strides(keptShape.ToArray());
        for (long i = 0; i < x.Length; i++)
        {
            long rem = i, g = 0;
            for (int d = 0, k = 0; d < x.Rank; d++)
            {
                long coord = rem / strides[d];
                rem %= strides[d];
                if (!red[d]) g += coord * keptStr[k++];
            }
            gid[i] = g;
        }
        var xd = x.ToDoubleArray();
        var sum = new double[groups];
        var cnt = new long[groups];
        for (long i = 0; i < xd.Length; i++) { sum[gid[i]] += xd[i]; cnt[gid[i]]++; }
        var mean = new double[groups];
        for (long g = 0; g < groups; g++) mean[g] = cnt[g] == 0 ? 0 : sum[g] / cnt[g];
        var sq = new double[groups];
        for (long i = 0; i < xd.Length; i++) { double d = xd[i] - mean[gid[i]]; sq[gid[i]] += d * d; }
        var y = Tensor.Zeros(x.DType, x.Shape);
        for (long i = 0; i < xd.Length; i++)
        {
            long g = gid[i];
            double std = Math.Sqrt(sq[g] / cnt[g]);
            y.SetDouble(i, (xd[i] - mean[g]) / (std + 1e-9));
        }
        return [y];
    }

    // ------------------------------------------------------------------ LRN

    // LRN: square_sum[n,c,...] = Σ x[n,i,...]² for i in [c - floor((size-1)/2), c + ceil((size-1)/2)] ∩ [0, C);
    // y = x / (bias + alpha / size · square_sum)^beta.
    static Value?[] Lrn(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (x.Rank < 2) throw ctx.Error($"X must have rank 2 or more, got {x.Describe()}");
        int size = checked((int)ctx.Int("size"));
        if (size < 1) throw ctx.Error($"size {size} must be positive");
        double alpha = ctx.Float("alpha", 1e-4f), beta = ctx.Float("beta", 0.75f), bias = ctx.Float("bias", 1f);
        var y = Compute(ctx, x) == DType.Float64 ? LrnCore<double>(x, size, alpha, beta, bias) : LrnCore<float>(x, size, alpha, beta, bias);
        return [TensorConvert.To(y, x.DType)];
    }

    static Tensor LrnCore<T>(Tensor x, int size, double alpha, double beta, double bias) where T : IFloatingPointIeee754<T>
    {
        int n = checked((int)x.Shape[0]), c = checked((int)x.Shape[1]), hw = Spatial(x);
        var xs = Arr<T>(x);
        var y = new T[xs.Length];
        int lo = (size - 1) / 2, hi = size - 1 - lo;
        T a = T.CreateChecked(alpha / size), b = T.CreateChecked(bias), negBeta = T.CreateChecked(-beta);
        ParallelRows(n * c, (long)hw * size, p =>
        {
            int ni = p / c, ch = p % c;
            var acc = new T[hw];
            for (int i = Math.Max(0, ch - lo); i <= Math.Min(c - 1, ch + hi); i++)
            {
                var s = xs.AsSpan((ni * c + i) * hw, hw);
                TP.MultiplyAdd<T>(s, s, acc, acc);
            }
            // acc = bias + alpha/size · square_sum; y = x · acc^(-beta)
            Affine<T>(acc, a, b, acc);
            var src = xs.AsSpan(p * hw, hw);
            var dst = y.AsSpan(p * hw, hw);
            for (int i = 0; i < hw; i++)
            {
                dst[i] = src[i] * T.Pow(acc[i], negBeta);
            }
        });
        return Tensor.FromArray(y, x.Shape);
    }
}
