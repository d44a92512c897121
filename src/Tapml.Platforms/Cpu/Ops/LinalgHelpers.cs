using System.Numerics;
using Tapml.Core;
using TP = System.Numerics.Tensors.TensorPrimitives;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Small helpers shared by the linalg family (MatMul, reductions, softmax, TopK, CumSum, Einsum,
/// quantization).</summary>
internal static class LinalgHelpers
{
    public const long ParallelElems = 1 << 15;

    public static bool IsHalfLike(DType t) => t is DType.Float16 or DType.BFloat16;

    /// <summary>For each element of <paramref name="dst"/> (row-major), the index of the element of
    /// <paramref name="src"/> that broadcasts onto it.</summary>
    public static long[] BroadcastMap(NodeContext ctx, long[] src, long[] dst)
    {
        if (src.Length > dst.Length) throw ctx.Error($"shape {ShapeUtil.Format(src)} cannot broadcast to {ShapeUtil.Format(dst)}");
        int off = dst.Length - src.Length;
        for (int i = 0; i < src.Length; i++)
            if (src[i] != 1 && src[i] != dst[off + i])
                throw ctx.Error($"shape {ShapeUtil.Format(src)} cannot broadcast to {ShapeUtil.Format(dst)}");
        var st = ShapeUtil.BroadcastStrides(src, dst);
        long n = ShapeUtil.Size(dst);
        var map = new long[n];
        int r = dst.Length;
        var idx = new long[r];
        long cur = 0;
        for (long e = 0; e < n; e++)
        {
            map[e] = cur;
            for (int d = r - 1; d >= 0; d--)
            {
                if (++idx[d] < dst[d]) { cur += st[d]; break; }
                cur -= st[d] * (dst[d] - 1);
                idx[d] = 0;
            }
        }
        return map;
    }

    /// <summary>Transposes row-major <paramref name="src"/> of <paramref name="shape"/> so that output dim i is input
    /// dim perm[i].</summary>
    public static T[] Permute<T>(T[] src, long[] shape, int[] perm)
    {
        int r = shape.Length;
        bool identity = true;
        for (int i = 0; i < r; i++) if (perm[i] != i) identity = false;
        if (identity) return src;
        var st = ShapeUtil.Strides(shape);
        var oshape = new long[r];
        var ost = new long[r];
        for (int i = 0; i < r; i++) { oshape[i] = shape[perm[i]]; ost[i] = st[perm[i]]; }
        var dst = new T[src.LongLength];
        if (dst.Length == 0) return dst;
        // Innermost output dim copies with a stride; outer dims walk an odometer.
        long inner = r == 0 ? 1 : oshape[r - 1], istride = r == 0 ? 0 : ost[r - 1];
        long outer = dst.LongLength / Math.Max(inner, 1);
        var idx = new long[Math.Max(r - 1, 0)];
        long cur = 0, o = 0;
        for (long q = 0; q < outer; q++)
        {
            long s = cur;
            for (long j = 0; j < inner; j++, s += istride) dst[o++] = src[s];
            for (int d = r - 2; d >= 0; d--)
            {
                if (++idx[d] < oshape[d]) { cur += ost[d]; break; }
                cur -= ost[d] * (oshape[d] - 1);
                idx[d] = 0;
            }
        }
        return dst;
    }

    /// <summary>Runs body(i) for i in [0,n), in parallel when the work (n·perItem) is large. Each i is independent,
    /// so results never depend on the thread count.</summary>
    public static void For(long n, long perItem, Action<int> body)
    {
        if (n <= 1 || n * Math.Max(perItem, 1) < ParallelElems || CpuThreads.Max == 1)
            for (int i = 0; i < n; i++) body(i);
        else Parallel.For(0, (int)n, CpuThreads.Options, body);
    }

    /// <summary>Row-major C[m,n] = A[m,k]·B[k,n] for any numeric type (integers wrap like the ONNX reference's
    /// fixed-width numpy arithmetic).</summary>
    public static void MatMulRows<T>(T[] a, long aOff, T[] b, long bOff, T[] c, long cOff, int m, int n, int k)
        where T : struct, INumber<T>
    {
        For(m, (long)n * k, i =>
        {
            var crow = c.AsSpan((int)(cOff + (long)i * n), n);
            crow.Clear();
            for (int p = 0; p < k; p++)
            {
                T av = a[aOff + (long)i * k + p];
                TP.MultiplyAdd(new ReadOnlySpan<T>(b, (int)(bOff + (long)p * n), n), av, crow, crow);
            }
        });
    }

    /// <summary>(outer, len, inner) of a tensor around one axis.</summary>
    public static (long outer, long len, long inner) Split(long[] shape, int axis)
    {
        long outer = 1, inner = 1;
        for (int i = 0; i < axis; i++) outer *= shape[i];
        for (int i = axis + 1; i < shape.Length; i++) inner *= shape[i];
        return (outer, shape.Length == 0 ? 1 : shape[axis], inner);
    }

    public static string DTypeList(params DType[] ts) => string.Join(", ", ts.Select(DTypes.Name));
}
