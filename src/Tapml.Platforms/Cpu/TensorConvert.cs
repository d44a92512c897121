using TP = System.Numerics.Tensors.TensorPrimitives;
using Tapml.Core;

namespace Tapml.Platforms.Cpu;

/// <summary>Element-type conversion with C-cast semantics (ONNX Cast): floats to integers truncate toward
/// zero, to f16/bf16 round to nearest even, non-zero to bool is true. Shared by every kernel that computes
/// f16/bf16 through f32.</summary>
public static class TensorConvert
{
    public static Tensor To(Tensor src, DType dst)
    {
        if (src.DType == dst) return src;
        if (src.DType == DType.String || dst == DType.String)
            throw new TapmlException($"cannot convert {DTypes.Name(src.DType)} to {DTypes.Name(dst)} here (string casts are the Cast op's)");
        var r = Tensor.Zeros(dst, src.Shape);
        switch (src.DType, dst)
        {
            case (DType.Float32, DType.Float16): TP.ConvertToHalf(src.Span<float>(), r.Span<Half>()); return r;
            case (DType.Float16, DType.Float32): TP.ConvertToSingle(src.Span<Half>(), r.Span<float>()); return r;
            case (DType.Float32, DType.BFloat16): { var s = src.Span<float>(); var d = r.Span<BFloat16>(); for (int i = 0; i < s.Length; i++) d[i] = (BFloat16)s[i]; return r; }
            case (DType.BFloat16, DType.Float32): { var s = src.Span<BFloat16>(); var d = r.Span<float>(); for (int i = 0; i < s.Length; i++) d[i] = (float)s[i]; return r; }
            case (DType.Float32, DType.Float64): { var s = src.Span<float>(); var d = r.Span<double>(); for (int i = 0; i < s.Length; i++) d[i] = s[i]; return r; }
            case (DType.Float64, DType.Float32): { var s = src.Span<double>(); var d = r.Span<float>(); for (int i = 0; i < s.Length; i++) d[i] = (float)s[i]; return r; }
            case (DType.Int64, DType.Int32): { var s = src.Span<long>(); var d = r.Span<int>(); for (int i = 0; i < s.Length; i++) d[i] = (int)s[i]; return r; }
            case (DType.Int32, DType.Int64): { var s = src.Span<int>(); var d = r.Span<long>(); for (int i = 0; i < s.Length; i++) d[i] = s[i]; return r; }
            // NOTE: 64-bit integers convert to f32 directly: through double they could round twice.
            case (DType.Int64, DType.Float32): { var s = src.Span<long>(); var d = r.Span<float>(); for (int i = 0; i < s.Length; i++) d[i] = s[i]; return r; }
            case (DType.UInt64, DType.Float32): { var s = src.Span<ulong>(); var d = r.Span<float>(); for (int i = 0; i < s.Length; i++) d[i] = s[i]; return r; }
            case (DType.Float64, DType.BFloat16): { var s = src.Span<double>(); var d = r.Span<BFloat16>(); for (int i = 0; i < s.Length; i++) d[i] = (BFloat16)s[i]; return r; }
        }
        long n = src.Length;
        if (DTypes.IsInteger(src.DType) && DTypes.IsInteger(dst) || src.DType == DType.Bool && DTypes.IsInteger(dst))
        {
            // NOTE: integer to integer goes through 64-bit integers so i64/u64 values beyond 2^53 stay exact.
            if (src.DType == DType.UInt64) { var s = src.Span<ulong>(); for (long i = 0; i < n; i++) r.SetInt64(i, unchecked((long)s[(int)i])); }
            else for (long i = 0; i < n; i++) r.SetInt64(i, src.GetInt64(i));
            return r;
        }
        if (DTypes.IsInteger(dst) && DTypes.IsFloat(src.DType))
        {
            for (long i = 0; i < n; i++) r.SetInt64(i, FloatToInt(src.GetDouble(i), dst));
            return r;
        }
        if (src.DType == DType.UInt64) { var s = src.Span<ulong>(); for (long i = 0; i < n; i++) r.SetDouble(i, s[(int)i]); return r; }
        for (long i = 0; i < n; i++) r.SetDouble(i, src.GetDouble(i));
        return r;
    }

    /// <summary>f32 copy of a float tensor (no copy when already f32).</summary>
    public static Tensor ToF32(Tensor t) => To(t, DType.Float32);

    static long FloatToInt(double v, DType dst)
    {
        if (double.IsNaN(v)) return 0;
        double tr = Math.Truncate(v);
        return dst == DType.UInt64 ? unchecked((long)(ulong)Math.Clamp(tr, 0, 18446744073709551615.0))
            : (long)Math.Clamp(tr, long.MinValue, long.MaxValue);
    }
}
