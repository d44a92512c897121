using System.Numerics;
using Tapml.Core;
using static Tapml.Platforms.Cpu.Ops.LinalgHelpers;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>MatMul, Gemm, MatMulInteger, QLinearMatMul, Det.</summary>
public sealed class MatMulOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("MatMul", MatMul);
        r.Add("Gemm", Gemm);
        r.Add("MatMulInteger", MatMulInteger, sinceOpset: 10);
        r.Add("QLinearMatMul", QLinearMatMul, sinceOpset: 10);
        r.Add("Det", Det, sinceOpset: 11);
    }

    /// <summary>numpy.matmul shape rules: 1-D A gets a leading 1 (removed after), 1-D B a trailing 1 (removed
    /// after), batch dims broadcast.</summary>
    internal sealed class Plan
    {
        public int M, N, K;
        public long Batch;
        public long[] OutShape = [];
        public long[] OffA = [], OffB = [];
        public bool BUnbatched; // B has a single batch and A's batches are contiguous: one [Batch·M, K] product

        public static Plan Make(NodeContext ctx, long[] a, long[] b)
        {
            if (a.Length == 0 || b.Length == 0) throw ctx.Error("MatMul inputs must have rank >= 1");
            long[] sa = a.Length == 1 ? [1, a[0]] : a;
            long[] sb = b.Length == 1 ? [b[0], 1] : b;
            long M = sa[^2], K = sa[^1], K2 = sb[^2], N = sb[^1];
            if (K != K2) throw ctx.Error($"inner dimensions differ: {ShapeUtil.Format(a)} x {ShapeUtil.Format(b)}");
            long[] ba = sa[..^2], bb = sb[..^2];
            long[] batch;
            try { batch = ShapeUtil.Broadcast(ba, bb); }
            catch (TapmlException) { throw ctx.Error($"batch dims of {ShapeUtil.Format(a)} and {ShapeUtil.Format(b)} cannot broadcast"); }
            var p = new Plan { M = checked((int)M), N = checked((int)N), K = checked((int)K) };
            p.Batch = ShapeUtil.Size(batch);
            var outShape = new List<long>(batch);
            if (a.Length > 1) outShape.Add(M);
            if (b.Length > 1) outShape.Add(N);
            p.OutShape = outShape.ToArray();
            long sizeBa = ShapeUtil.Size(ba), sizeBb = ShapeUtil.Size(bb);
            p.BUnbatched = sizeBb == 1 && sizeBa == p.Batch;
            p.OffA = new long[p.Batch];
            p.OffB = new long[p.Batch];
            if (p.Batch > 0)
            {
                var ma = BroadcastMap(ctx, ba, batch);
                var mb = BroadcastMap(ctx, bb, batch);
                for (long i = 0; i < p.Batch; i++) { p.OffA[i] = ma[i] * M * K; p.OffB[i] = mb[i] * K * N; }
            }
            return p;
        }
    }

    static Value?[] MatMul(NodeContext ctx, Value?[] x)
    {
        var a = x.T(0, ctx);
        var b = x.T(1, ctx);
        if (a.DType != b.DType) throw ctx.Error($"A is {DTypes.Name(a.DType)}, B is {DTypes.Name(b.DType)}");
        var p = Plan.Make(ctx, a.Shape, b.Shape);
        if (InPlaceWeights.Handles(a, b) && p.BUnbatched)
        {
            // A weight read in place from the checkpoint (stored dtype and layout): no widened or transposed copy.
            var y = Tensor.Zeros(DType.Float32, p.OutShape);
            InPlaceWeights.MatMul(a.As<float>(), b, y.As<float>(), checked((int)(p.Batch * p.M)));
            return [y];
        }
        return [Compute(ctx, a, b, p)];
    }

    internal static Tensor Compute(NodeContext ctx, Tensor a, Tensor b, Plan p)
    {
        DType dt = a.DType;
        if (IsHalfLike(dt))
            return TensorConvert.To(Compute(ctx, TensorConvert.ToF32(a), TensorConvert.ToF32(b), p), dt);
        var y = Tensor.Zeros(dt, p.OutShape);
        if (y.Length == 0) return y;
        switch (dt)
        {
            case DType.Float32: MatMulF32(a.As<float>(), b.As<float>(), y.As<float>(), p); break;
            case DType.Float64: Generic(a.As<double>(), b.As<double>(), y.As<double>(), p); break;
            case DType.Int32: Generic(a.As<int>(), b.As<int>(), y.As<int>(), p); break;
            case DType.Int64: Generic(a.As<long>(), b.As<long>(), y.As<long>(), p); break;
            case DType.UInt32: Generic(a.As<uint>(), b.As<uint>(), y.As<uint>(), p); break;
            case DType.UInt64: Generic(a.As<ulong>(), b.As<ulong>(), y.As<ulong>(), p); break;
            case DType.Int8: Generic(a.As<sbyte>(), b.As<sbyte>(), y.As<sbyte>(), p); break;
            case DType.UInt8: Generic(a.As<byte>(), b.As<byte>(), y.As<byte>(), p); break;
            case DType.Int16: Generic(a.As<short>(), b.As<short>(), y.As<short>(), p); break;
            case DType.UInt16: Generic(a.As<ushort>(), b.As<ushort>(), y.As<ushort>(), p); break;
            default: throw ctx.Unsupported($"MatMul on {DTypes.Name(dt)} is not supported");
        }
        return y;
    }

    static void MatMulF32(float[] a, float[] b, float[] y, Plan p)
    {
        int M = p.M, N = p.N, K = p.K;
        if (p.BUnbatched)
        {
            // B is shared by every batch and A's batches are contiguous: one tall product.
            Blas.Sgemm(false, false, checked((int)(p.Batch * M)), N, K, 1f, a, K, b, N, 0f, y, N);
            return;
        }
        long per = (long)M * N * K;
        For(p.Batch, per, bi =>
            Blas.Sgemm(false, false, M, N, K, 1f, a.AsSpan((int)p.OffA[bi]), K, b.AsSpan((int)p.OffB[bi]), N, 0f,
                y.AsSpan((int)((long)bi * M * N), M * N), N));
    }

    static void Generic<T>(T[] a, T[] b, T[] y, Plan p) where T : struct, INumber<T>
    {
        for (long bi = 0; bi < p.Batch; bi++)
            MatMulRows(a, p.OffA[bi], b, p.OffB[bi], y, bi * p.M * p.N, p.M, p.N, p.K);
    }

    // ------------------------------------------------------------------ Gemm

    static Value?[] Gemm(NodeContext ctx, Value?[] x)
    {
        var a = x.T(0, ctx);
        var b = x.T(1, ctx);
        var c = x.OptT(2);
        if (a.Rank != 2 || b.Rank != 2) throw ctx.Error($"A and B must be 2-D, got {a.Describe()} and {b.Describe()}");
        if (a.DType != b.DType || c is not null && c.DType != a.DType) throw ctx.Error("A, B and C must have one element type");
        bool ta = ctx.Int("transA", 0) != 0, tb = ctx.Int("transB", 0) != 0;
        float alpha = ctx.Float("alpha", 1f), beta = ctx.Float("beta", 1f);
        int M = (int)(ta ? a.Shape[1] : a.Shape[0]), K = (int)(ta ? a.Shape[0] : a.Shape[1]);
        int K2 = (int)(tb ? b.Shape[1] : b.Shape[0]), N = (int)(tb ? b.Shape[0] : b.Shape[1]);
        if (K != K2) throw ctx.Error($"inner dimensions differ: A' is [{M},{K}], B' is [{K2},{N}]");
        // Opset < 7 had a 'broadcast' attribute; with broadcast=0 C must already be [M,N].
        if (c is not null && ctx.Opset < 7 && ctx.Int("broadcast", 0) == 0 && !ShapeUtil.SameShape(c.Shape, [M, N]))
            throw ctx.Error($"C is {ShapeUtil.Format(c.Shape)} and broadcast=0, but the product is [{M},{N}]");
        long[] cmap = c is null ? [] : BroadcastMap(ctx, c.Shape, [M, N]);
        DType dt = a.DType;
        if (dt == DType.Float32 || IsHalfLike(dt))
        {
            var af = TensorConvert.ToF32(a).As<float>();
            var bf = TensorConvert.ToF32(b).As<float>();
            var y = new float[(long)M * N];
            float be = 0f;
            if (c is not null && beta != 0)
            {
                var cf = TensorConvert.ToF32(c).As<float>();
                for (long i = 0; i < y.Length; i++) y[i] = cf[cmap[i]];
                be = beta;
            }
            Blas.Sgemm(ta, tb, M, N, K, alpha, af, ta ? M : K, bf, tb ? K : N, be, y, N);
            return [TensorConvert.To(Tensor.FromArray(y, M, N), dt)];
        }
        // Other types: A'·B' exactly in the element type, then alpha·AB + beta·C (in double for integers, truncated back).
        var at = Transposed(a, ta);
        var bt = Transposed(b, tb);
        var ab = Compute(ctx, at, bt, Plan.Make(ctx, at.Shape, bt.Shape));
        var r = Tensor.Zeros(dt, M, N);
        bool plain = alpha == 1f && (c is null || beta == 1f || beta == 0f);
        for (long i = 0; i < r.Length; i++)
        {
            if (dt == DType.Float64 || !plain)
            {
                double v = ab.GetDouble(i) * alpha;
                if (c is not null && beta != 0) v += c.GetDouble(cmap[i]) * (double)beta;
                SetNumber(r, i, v);
            }
            else
            {
                long v = ab.GetInt64(i);
                if (c is not null && beta != 0) v += c.GetInt64(cmap[i]);
                r.SetInt64(i, v);
            }
        }
        return [r];
    }

    static Tensor Transposed(Tensor t, bool trans)
    {
        if (!trans) return t;
        long[] shape = [t.Shape[1], t.Shape[0]];
        Array data = t.DType switch
        {
            DType.Float64 => Permute(t.As<double>(), t.Shape, [1, 0]),
            DType.Int32 => Permute(t.As<int>(), t.Shape, [1, 0]),
            DType.Int64 => Permute(t.As<long>(), t.Shape, [1, 0]),
            DType.UInt32 => Permute(t.As<uint>(), t.Shape, [1, 0]),
            DType.UInt64 => Permute(t.As<ulong>(), t.Shape, [1, 0]),
            DType.Int8 => Permute(t.As<sbyte>(), t.Shape, [1, 0]),
            DType.UInt8 => Permute(t.As<byte>(), t.Shape, [1, 0]),
            DType.Int16 => Permute(t.As<short>(), t.Shape, [1, 0]),
            DType.UInt16 => Permute(t.As<ushort>(), t.Shape, [1, 0]),
            DType.Float32 => Permute(t.As<float>(), t.Shape, [1, 0]),
            _ => throw new TapmlException($"Gemm on {DTypes.Name(t.DType)} is not supported"),
        };
        return new Tensor(t.DType, shape, data);
    }

    static void SetNumber(Tensor t, long i, double v)
    {
        if (DTypes.IsFloat(t.DType)) { t.SetDouble(i, v); return; }
        // numpy astype from float: truncation toward zero (then wrap into the type).
        t.SetInt64(i, double.IsNaN(v) ? 0 : (long)Math.Clamp(Math.Truncate(v), long.MinValue, long.MaxValue));
    }

    // ------------------------------------------------------------------ integer products

    /// <summary>x minus its zero point as int32. <paramref name="perRow"/>: a 1-D zero point of length M for an
    /// [..., M, K] input means one value per row (the spec's per-row quantization of A).</summary>
    static int[] Centered(NodeContext ctx, Tensor x, Tensor? zp, bool perRow)
    {
        var r = new int[x.Length];
        if (x.DType is not (DType.UInt8 or DType.Int8))
            throw ctx.Error($"quantized inputs must be u8 or i8, got {DTypes.Name(x.DType)}");
        for (long i = 0; i < r.Length; i++) r[i] = (int)x.GetInt64(i);
        if (zp is null || zp.Length == 0) return r;
        if (zp.DType != x.DType) throw ctx.Error($"zero point is {DTypes.Name(zp.DType)}, input is {DTypes.Name(x.DType)}");
        if (zp.Length == 1) { int z = (int)zp.GetInt64(0); for (long i = 0; i < r.Length; i++) r[i] -= z; return r; }
        long[] zs = zp.Shape;
        if (perRow && zp.Rank == 1 && x.Rank >= 2) zs = [zp.Shape[0], 1];
        var map = BroadcastMap(ctx, zs, x.Shape);
        for (long i = 0; i < r.Length; i++) r[i] -= (int)zp.GetInt64(map[i]);
        return r;
    }

    static Value?[] MatMulInteger(NodeContext ctx, Value?[] x)
    {
        var a = x.T(0, ctx);
        var b = x.T(1, ctx);
        var p = Plan.Make(ctx, a.Shape, b.Shape);
        var ai = Tensor.FromArray(Centered(ctx, a, x.OptT(2), true), a.Shape);
        var bi = Tensor.FromArray(Centered(ctx, b, x.OptT(3), false), b.Shape);
        return [Compute(ctx, ai, bi, p)];
    }

    static Value?[] QLinearMatMul(NodeContext ctx, Value?[] x)
    {
        var a = x.T(0, ctx);
        var aScale = x.T(1, ctx);
        var b = x.T(3, ctx);
        var bScale = x.T(4, ctx);
        var yScale = x.T(6, ctx);
        var yZp = x.OptT(7);
        var p = Plan.Make(ctx, a.Shape, b.Shape);
        var ai = Tensor.FromArray(Centered(ctx, a, x.OptT(2), true), a.Shape);
        var bi = Tensor.FromArray(Centered(ctx, b, x.OptT(5), false), b.Shape);
        var acc = Compute(ctx, ai, bi, p).As<int>();
        DType outT = yZp?.DType ?? a.DType;
        if (outT is not (DType.UInt8 or DType.Int8)) throw ctx.Error($"output type must be u8 or i8, got {DTypes.Name(outT)}");
        if (yScale.Length != 1) throw ctx.Error("y_scale must be a scalar");
        if (yZp is not null && yZp.Length != 1) throw ctx.Error("y_zero_point must be a scalar");
        // Per-tensor, per-row (a: [M]) or per-column (b: [N]) scales. The multiplier a_scale·b_scale/y_scale is formed
        // in the scales' type, then applied to the int32 product in double (as the ONNX reference does).
        int M = p.M, N = p.N;
        float ys = (float)yScale.GetDouble(0);
        DType st = aScale.DType;
        long zp = yZp is null ? 0 : yZp.GetInt64(0);
        long lo = outT == DType.UInt8 ? 0 : -128, hi = outT == DType.UInt8 ? 255 : 127;
        var y = Tensor.Zeros(outT, p.OutShape);
        for (long e = 0; e < acc.Length; e++)
        {
            long row = a.Rank == 1 ? 0 : e / (b.Rank == 1 ? 1 : N) % M;
            long col = b.Rank == 1 ? 0 : e % N;
            float asv = (float)aScale.GetDouble(aScale.Length == 1 ? 0 : row);
            float bsv = (float)bScale.GetDouble(bScale.Length == 1 ? 0 : col);
            float mult = RoundTo(st, RoundTo(st, asv * bsv) / ys);
            double d = acc[e] * (double)mult + zp;
            y.SetInt64(e, (long)Math.Clamp(Math.Round(d, MidpointRounding.ToEven), lo, hi));
        }
        return [y];
    }

    static float RoundTo(DType t, float v) => t switch
    {
        DType.Float16 => (float)(Half)v,
        DType.BFloat16 => (float)(BFloat16)v,
        _ => v,
    };

    // ------------------------------------------------------------------ Det

    static Value?[] Det(NodeContext ctx, Value?[] x)
    {
        var t = x.T(0, ctx);
        if (!DTypes.IsFloat(t.DType)) throw ctx.Error($"Det needs a float tensor, got {DTypes.Name(t.DType)}");
        if (t.Rank < 2 || t.Shape[^1] != t.Shape[^2]) throw ctx.Error($"Det needs [*, M, M], got {ShapeUtil.Format(t.Shape)}");
        int n = (int)t.Shape[^1];
        long batch = ShapeUtil.Size(t.Shape.AsSpan(0, t.Rank - 2));
        var y = Tensor.Zeros(t.DType, t.Shape[..^2]);
        var m = new double[n * n];
        for (long bi = 0; bi < batch; bi++)
        {
            for (int i = 0; i < n * n; i++) m[i] = t.GetDouble(bi * n * n + i);
            y.SetDouble(bi, Determinant(m, n));
        }
        return [y];
    }

    /// <summary>LU decomposition with partial pivoting, in double.</summary>
    static double Determinant(double[] a, int n)
    {
        double det = 1;
        for (int c = 0; c < n; c++)
        {
            int piv = c;
            for (int r = c + 1; r < n; r++) if (Math.Abs(a[r * n + c]) > Math.Abs(a[piv * n + c])) piv = r;
            if (a[piv * n + c] == 0) return 0;
            if (piv != c)
            {
                for (int j = 0; j < n; j++) (a[c * n + j], a[piv * n + j]) = (a[piv * n + j], a[c * n + j]);
                det = -det;
            }
            double d = a[c * n + c];
            det *= d;
            for (int r = c + 1; r < n; r++)
            {
                double f = a[r * n + c] / d;
                if (f == 0) continue;
                for (int j = c + 1; j < n; j++) a[r * n + j] -= f * a[c * n + j];
            }
        }
        return det;
    }
}
