using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Small helpers shared by the resampling / signal / detection / text families.</summary>
internal static class SpecialHelpers
{
    /// <summary>All elements as double (fast paths for the float types).</summary>
    public static double[] ToDoubles(Tensor t)
    {
        var r = new double[t.Length];
        switch (t.Data)
        {
            case float[] f: for (int i = 0; i < f.Length; i++) r[i] = f[i]; break;
            case double[] d: Array.Copy(d, r, d.Length); break;
            case Half[] h: for (int i = 0; i < h.Length; i++) r[i] = (double)h[i]; break;
            default: for (long i = 0; i < r.Length; i++) r[i] = t.GetDouble(i); break;
        }
        return r;
    }

    /// <summary>A tensor of <paramref name="dtype"/> from doubles, rounding once (integers: C cast, truncation).</summary>
    public static Tensor FromDoubles(double[] v, DType dtype, long[] shape)
    {
        var t = Tensor.Zeros(dtype, shape);
        switch (t.Data)
        {
            case float[] f: for (int i = 0; i < f.Length; i++) f[i] = (float)v[i]; break;
            case double[] d: Array.Copy(v, d, v.Length); break;
            case Half[] h: for (int i = 0; i < h.Length; i++) h[i] = (Half)v[i]; break;
            case BFloat16[] b: for (int i = 0; i < b.Length; i++) b[i] = (BFloat16)(float)v[i]; break;
            default:
                if (DTypes.IsInteger(dtype))
                {
                    var tmp = Tensor.FromArray(v, shape);
                    return TensorConvert.To(tmp, dtype);
                }
                for (long i = 0; i < v.LongLength; i++) t.SetDouble(i, v[i]);
                break;
        }
        return t;
    }

    /// <summary>dst[i] = src[map[i]] for map[i] &gt;= 0 (else left as is), any element type.</summary>
    public static void Take(Array src, Array dst, int[] map)
    {
        switch (src)
        {
            case float[] a: TakeT(a, (float[])dst, map); break;
            case double[] a: TakeT(a, (double[])dst, map); break;
            case Half[] a: TakeT(a, (Half[])dst, map); break;
            case BFloat16[] a: TakeT(a, (BFloat16[])dst, map); break;
            case sbyte[] a: TakeT(a, (sbyte[])dst, map); break;
            case byte[] a: TakeT(a, (byte[])dst, map); break;
            case short[] a: TakeT(a, (short[])dst, map); break;
            case ushort[] a: TakeT(a, (ushort[])dst, map); break;
            case int[] a: TakeT(a, (int[])dst, map); break;
            case uint[] a: TakeT(a, (uint[])dst, map); break;
            case long[] a: TakeT(a, (long[])dst, map); break;
            case ulong[] a: TakeT(a, (ulong[])dst, map); break;
            case bool[] a: TakeT(a, (bool[])dst, map); break;
            case string[] a: TakeT(a, (string[])dst, map); break;
            default: throw new TapmlException($"unsupported element array {src.GetType().Name}");
        }
    }

    static void TakeT<T>(T[] src, T[] dst, int[] map)
    {
        for (int i = 0; i < map.Length; i++)
        {
            int m = map[i];
            if (m >= 0) dst[i] = src[m];
        }
    }

    /// <summary>Scalar integer from a tensor that must hold exactly one element.</summary>
    public static long ScalarInt(Tensor t, NodeContext ctx, string what)
    {
        if (t.Length != 1) throw ctx.Error($"{what} must hold one element, got {t.Describe()}");
        return t.GetInt64(0);
    }

    public static double ScalarDouble(Tensor t, NodeContext ctx, string what)
    {
        if (t.Length != 1) throw ctx.Error($"{what} must hold one element, got {t.Describe()}");
        return t.GetDouble(0);
    }

    /// <summary>Output dtype from an ONNX output_datatype attribute value.</summary>
    public static DType OutputDType(NodeContext ctx, long code)
    {
        var d = (DType)(int)code;
        if (!DTypes.IsSupported(d) || !DTypes.IsNumeric(d)) throw ctx.Unsupported($"output_datatype {code} ({DTypes.Name(d)})");
        return d;
    }
}
