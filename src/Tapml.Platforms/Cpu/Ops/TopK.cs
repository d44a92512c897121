using System.Numerics;
using Tapml.Core;
using static Tapml.Platforms.Cpu.Ops.LinalgHelpers;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>TopK.</summary>
public sealed class TopKOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r) => r.Add("TopK", TopK);

    static Value?[] TopK(NodeContext ctx, Value?[] x)
    {
        var t = x.T(0, ctx);
        long k;
        if (ctx.Opset >= 10)
        {
            var kt = x.T(1, ctx);
            if (kt.Length != 1) throw ctx.Error($"K must hold one value, got {kt.Describe()}");
            k = kt.GetInt64(0);
        }
        else k = ctx.Int("k");
        if (t.Rank == 0) throw ctx.Error("input must have rank >= 1");
        int axis;
        try { axis = ShapeUtil.Axis(ctx.Int("axis", -1), t.Rank); }
        catch (TapmlException e) { throw ctx.Error(e.Message); }
        bool largest = ctx.Opset < 11 || ctx.Int("largest", 1) != 0;
        // sorted=0 leaves the order unspecified; this kernel always returns the sorted order, which satisfies it.
        var (outer, len, inner) = Split(t.Shape, axis);
        if (k < 0 || k > len) throw ctx.Error($"k={k} is out of range for an axis of {len}");
        var outShape = (long[])t.Shape.Clone();
        outShape[axis] = k;
        var idx = new long[outer * k * inner];
        DType dt = t.DType;
        var src = IsHalfLike(dt) ? TensorConvert.ToF32(t) : t;
        Tensor vals;
        switch (src.DType)
        {
            case DType.Float32: vals = Tensor.FromArray(Select(src.As<float>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            case DType.Float64: vals = Tensor.FromArray(Select(src.As<double>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            case DType.Int32: vals = Tensor.FromArray(Select(src.As<int>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            case DType.Int64: vals = Tensor.FromArray(Select(src.As<long>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            case DType.UInt32: vals = Tensor.FromArray(Select(src.As<uint>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            case DType.UInt64: vals = Tensor.FromArray(Select(src.As<ulong>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            case DType.Int8: vals = Tensor.FromArray(Select(src.As<sbyte>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            case DType.UInt8: vals = Tensor.FromArray(Select(src.As<byte>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            case DType.Int16: vals = Tensor.FromArray(Select(src.As<short>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            case DType.UInt16: vals = Tensor.FromArray(Select(src.As<ushort>(), idx, outer, len, inner, (int)k, largest), outShape); break;
            default: throw ctx.Unsupported($"TopK on {DTypes.Name(dt)} is not supported");
        }
        if (IsHalfLike(dt)) vals = TensorConvert.To(vals, dt); // exact: the values came from dt
        return ctx.Outputs(vals, Tensor.FromArray(idx, outShape));
    }

    /// <summary>Total order used for ranking: NaN above every number (as the ONNX reference's lexsort puts it),
    /// equal values ranked by lower index first.</summary>
    static bool Before<T>(T a, long ia, T b, long ib, bool largest) where T : INumber<T>
    {
        bool an = T.IsNaN(a), bn = T.IsNaN(b);
        int c = an || bn ? (an && bn ? 0 : an ? 1 : -1) : a.CompareTo(b);
        if (c == 0) return ia < ib;
        return largest ? c > 0 : c < 0;
    }

    static T[] Select<T>(T[] d, long[] idx, long outer, long len, long inner, int k, bool largest) where T : struct, INumber<T>
    {
        var vals = new T[outer * k * inner];
        if (k == 0) return vals;
        For(outer * inner, len * 4, q =>
        {
            long o = q / inner, i = q % inner;
            long b = o * len * inner + i;
            long ob = o * k * inner + i;
            if (k > 32)
            {
                // Large k: sort the whole axis by the rank order.
                var all = new long[len];
                for (long a = 0; a < len; a++) all[a] = a;
                Array.Sort(all, (p1, p2) => p1 == p2 ? 0 : Before(d[b + p1 * inner], p1, d[b + p2 * inner], p2, largest) ? -1 : 1);
                for (int j = 0; j < k; j++) { vals[ob + j * inner] = d[b + all[j] * inner]; idx[ob + j * inner] = all[j]; }
                return;
            }
            // Keep the best k seen so far, in rank order (insertion: cheap when k is small next to the axis).
            var topV = new T[k];
            var topI = new long[k];
            int cnt = 0;
            for (long a = 0; a < len; a++)
            {
                T v = d[b + a * inner];
                if (cnt == k && !Before(v, a, topV[k - 1], topI[k - 1], largest)) continue;
                int pos = cnt == k ? k - 1 : cnt++;
                while (pos > 0 && Before(v, a, topV[pos - 1], topI[pos - 1], largest))
                {
                    topV[pos] = topV[pos - 1]; topI[pos] = topI[pos - 1]; pos--;
                }
                topV[pos] = v; topI[pos] = a;
            }
            for (int j = 0; j < k; j++) { vals[ob + j * inner] = topV[j]; idx[ob + j * inner] = topI[j]; }
        });
        return vals;
    }
}
