using System.Globalization;
using Tapml.Core;
using Tapml.Ir;
using static Tapml.Platforms.Cpu.Ops.BinaryBroadcast;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Cast and CastLike: every numeric type, bool, f16, bf16, and strings both ways.</summary>
public sealed class CastOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Cast", (ctx, x) => [CastTo(ctx, x.T(0, ctx), (DType)ctx.Int("to"))], CastSupport);
        r.Add("CastLike", (ctx, x) => [CastTo(ctx, x.T(0, ctx), x.T(1, ctx).DType)], sinceOpset: 15);
    }

    static string? CastSupport(NodeContext ctx, IReadOnlyList<TypeRef?> types)
    {
        if (!ctx.Has("to")) return null; // reported as an error when run
        var to = (DType)ctx.Int("to");
        return DTypes.IsSupported(to) ? null : $"Cast to {DTypes.Name(to)}: tapml cannot hold tensors of this type";
    }

    static readonly CultureInfo Inv = CultureInfo.InvariantCulture;

    /// <summary>Cast semantics (Cast-13/19 spec): floats to integers truncate toward zero (out of range is
    /// undefined; saturated here), integers to narrower integers wrap, non-zero to bool is true, bool to numbers is
    /// 0/1, float to float rounds to nearest even except float → bfloat16 before opset 19 (see <see cref="ToBf16"/>).</summary>
    internal static Tensor CastTo(NodeContext ctx, Tensor x, DType to)
    {
        if (!DTypes.IsSupported(to)) throw ctx.Unsupported($"Cast to {DTypes.Name(to)}: tapml cannot hold tensors of this type");
        if (x.DType == to) return x;
        // A half weight read in place (--weights f16) widens exactly: the f32 view of the same mapped bytes, which
        // MatMul and Gather read in place as they read an f32 weight over a half checkpoint.
        if (to == DType.Float32 && x.External is { } e && e.Stored == x.DType && x.DType is DType.Float16 or DType.BFloat16)
            return new Tensor(DType.Float32, x.Shape, e);
        if (to == DType.String) return ToStrings(x);
        if (x.DType == DType.String) return FromStrings(ctx, x, to);
        if (to == DType.BFloat16) return ToBf16(ctx, x.DType == DType.BFloat16 ? x : ctx.Opset >= 19 && x.DType == DType.Float64 ? RoundToOddF32(x) : TensorConvert.ToF32(x));
        if (to == DType.Float32 && x.DType is DType.Int64 or DType.UInt64)
        {
            // Direct 64-bit integer → float32 rounding (a detour through double could round twice).
            var r = Tensor.Zeros(to, x.Shape);
            var d = r.Span<float>();
            if (x.DType == DType.Int64) { var s = x.Span<long>(); for (int i = 0; i < s.Length; i++) d[i] = s[i]; }
            else { var s = x.Span<ulong>(); for (int i = 0; i < s.Length; i++) d[i] = s[i]; }
            return r;
        }
        return TensorConvert.To(x, to);
    }

    /// <summary>float32 (or bf16) → bfloat16. No version of the Cast spec says how this conversion rounds.
    /// Before opset 19 tapml truncates (keeps the upper 16 bits of the float32), as the ONNX test data of those
    /// opsets does (onnx ≤ 1.13's cast test generator takes <c>np_uint16_view[1::2]</c>; the node test
    /// test_cast_FLOAT_to_BFLOAT16 expects truncated values) and as the ONNX reference implementation of that era
    /// did (<c>float32_to_bfloat16(x, truncate=True)</c>). From opset 19, where Cast was rewritten with explicit
    /// rounding of floats to narrower float formats ("[x] means the value rounded to the target mantissa
    /// width"), tapml rounds to nearest even, which is what today's ONNX reference (ml_dtypes), ONNX Runtime and
    /// PyTorch do. NaN stays NaN (quiet) either way.</summary>
    static Tensor ToBf16(NodeContext ctx, Tensor f32)
    {
        if (f32.DType == DType.BFloat16) return f32;
        var r = Tensor.Zeros(DType.BFloat16, f32.Shape);
        var s = f32.Span<float>();
        var d = r.Span<BFloat16>();
        if (ctx.Opset >= 19)
            for (int i = 0; i < s.Length; i++) d[i] = (BFloat16)s[i];
        else
            for (int i = 0; i < s.Length; i++)
            {
                uint u = BitConverter.SingleToUInt32Bits(s[i]);
                d[i] = BFloat16.FromBits((ushort)(float.IsNaN(s[i]) ? (u >> 16) | 0x0040 : u >> 16));
            }
        return r;
    }

    /// <summary>float64 → float32 rounding to odd (truncate, then set the last bit when inexact), so that the later
    /// round-to-nearest-even to bfloat16 equals a direct float64 → bfloat16 rounding (no double rounding).</summary>
    static Tensor RoundToOddF32(Tensor f64)
    {
        var s = f64.Span<double>();
        var r = Tensor.Zeros(DType.Float32, f64.Shape);
        var d = r.Span<float>();
        for (int i = 0; i < s.Length; i++)
        {
            double v = s[i];
            float f = (float)v;
            if (float.IsFinite(f) && f != v)
            {
                if (Math.Abs((double)f) > Math.Abs(v)) f = v > 0 ? MathF.BitDecrement(f) : MathF.BitIncrement(f);
                f = BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits(f) | 1);
            }
            d[i] = f;
        }
        return r;
    }

    // ---- numbers → strings ---------------------------------------------------------------------------------------
    // The spec asks for "plain floating-point representation (such as "314.15926")"; the ONNX reference and its test
    // data use numpy's str(): the shortest digits that round-trip in the value's own type, positional when
    // 1e-4 <= |x| < 1e16 (at least one fractional digit: "1.0") and scientific otherwise ("1e-05", "1.5e+16"),
    // "nan", "inf", "-inf"; integers in decimal; bools "True"/"False".

    static Tensor ToStrings(Tensor x)
    {
        var r = Tensor.Zeros(DType.String, x.Shape);
        var d = r.As<string>();
        switch (x.DType)
        {
            case DType.Float32: { var s = x.As<float>(); for (int i = 0; i < s.Length; i++) d[i] = NumpyFloat(s[i], Math.Abs(s[i]).ToString("R", Inv)); break; }
            case DType.Float64: { var s = x.As<double>(); for (int i = 0; i < s.Length; i++) d[i] = NumpyFloat(s[i], Math.Abs(s[i]).ToString("R", Inv)); break; }
            case DType.Float16: { var s = x.As<Half>(); for (int i = 0; i < s.Length; i++) d[i] = NumpyFloat((double)s[i], Half.Abs(s[i]).ToString(Inv)); break; }
            case DType.BFloat16: { var s = x.As<BFloat16>(); for (int i = 0; i < s.Length; i++) d[i] = NumpyFloat((float)s[i], ShortestBf16(s[i])); break; }
            case DType.Bool: { var s = x.As<bool>(); for (int i = 0; i < s.Length; i++) d[i] = s[i] ? "True" : "False"; break; }
            case DType.UInt64: { var s = x.As<ulong>(); for (int i = 0; i < s.Length; i++) d[i] = s[i].ToString(Inv); break; }
            default: for (long i = 0; i < x.Length; i++) d[i] = x.GetInt64(i).ToString(Inv); break;
        }
        return r;
    }

    /// <summary>Shortest decimal that rounds back (to nearest even) to the same bfloat16.</summary>
    static string ShortestBf16(BFloat16 v)
    {
        float f = Math.Abs((float)v);
        for (int p = 0; p < 9; p++)
        {
            string s = f.ToString("E" + p, Inv);
            if (((BFloat16)float.Parse(s, Inv)).Bits == ((BFloat16)f).Bits) return s;
        }
        return f.ToString("R", Inv);
    }

    /// <summary>numpy str() of a float whose magnitude prints (shortest round-trip, any .NET layout) as
    /// <paramref name="absText"/>.</summary>
    internal static string NumpyFloat(double v, string absText)
    {
        if (double.IsNaN(v)) return "nan";
        if (double.IsInfinity(v)) return v > 0 ? "inf" : "-inf";
        string sign = double.IsNegative(v) ? "-" : "";
        if (v == 0) return sign + "0.0";
        var (digits, e) = Digits(absText);
        double abs = Math.Abs(v);
        if (abs >= 1e-4 && abs < 1e16)
        {
            if (e < 0) return sign + "0." + new string('0', -e - 1) + digits;
            string ip = digits.Length > e + 1 ? digits[..(e + 1)] : digits.PadRight(e + 1, '0');
            string fp = digits.Length > e + 1 ? digits[(e + 1)..] : "0";
            return sign + ip + "." + fp;
        }
        string m = digits.Length > 1 ? digits[0] + "." + digits[1..] : digits;
        return sign + m + "e" + (e < 0 ? "-" : "+") + Math.Abs(e).ToString("00", Inv);
    }

    /// <summary>Significant digits and decimal exponent (value = d.ddd × 10^e) of a non-negative number's text.</summary>
    static (string Digits, int Exp) Digits(string s)
    {
        int exp = 0, ePos = s.IndexOfAny(['E', 'e']);
        string m = s;
        if (ePos >= 0) { exp = int.Parse(s[(ePos + 1)..], NumberStyles.AllowLeadingSign, Inv); m = s[..ePos]; }
        int dot = m.IndexOf('.');
        string ip = dot < 0 ? m : m[..dot], fp = dot < 0 ? "" : m[(dot + 1)..];
        string all = ip + fp;
        int first = 0;
        while (first < all.Length - 1 && all[first] == '0') first++;
        string digits = all[first..].TrimEnd('0');
        return (digits.Length == 0 ? "0" : digits, ip.Length - 1 - first + exp);
    }

    // ---- strings → numbers ---------------------------------------------------------------------------------------
    // Plain ("3.14", "1000") and scientific ("1e-5", "1E8") forms; "+INF"/"INF", "-INF" and "NaN" matched
    // case-insensitively. Strings that are not numbers are undefined behavior in the spec: an error here.
    // "100.5" to an integer "may yield 100": integers parse as numbers and truncate toward zero.

    static Tensor FromStrings(NodeContext ctx, Tensor x, DType to)
    {
        var s = x.As<string>();
        var r = Tensor.Zeros(to, x.Shape);
        switch (to)
        {
            case DType.Float32: { var d = r.As<float>(); for (int i = 0; i < s.Length; i++) d[i] = ParseFloat(ctx, s[i]); break; }
            case DType.Float64: { var d = r.As<double>(); for (int i = 0; i < s.Length; i++) d[i] = ParseDouble(ctx, s[i]); break; }
            case DType.Float16: { var d = r.As<Half>(); for (int i = 0; i < s.Length; i++) d[i] = Special(s[i]) is { } v ? (Half)v : Half.Parse(Check(ctx, s[i]), NumberStyles.Float, Inv); break; }
            case DType.BFloat16:
            {
                var f = Tensor.Zeros(DType.Float32, x.Shape);
                var d = f.As<float>();
                for (int i = 0; i < s.Length; i++) d[i] = ParseFloat(ctx, s[i]);
                return ToBf16(ctx, f);
            }
            case DType.Bool: throw ctx.Unsupported("Cast from string to bool is not defined by the spec");
            case DType.UInt64:
            {
                var d = r.As<ulong>();
                for (int i = 0; i < s.Length; i++)
                    d[i] = ulong.TryParse(s[i].Trim(), NumberStyles.Integer, Inv, out var u) ? u : unchecked((ulong)(long)Math.Truncate(ParseDouble(ctx, s[i])));
                break;
            }
            default:
            {
                var l = Tensor.Zeros(DType.Int64, x.Shape);
                var d = l.As<long>();
                for (int i = 0; i < s.Length; i++)
                    d[i] = long.TryParse(s[i].Trim(), NumberStyles.Integer, Inv, out var v) ? v : (long)Math.Truncate(ParseDouble(ctx, s[i]));
                return TensorConvert.To(l, to);
            }
        }
        return r;
    }

    static double? Special(string s) => s.Trim().ToUpperInvariant() switch
    {
        "INF" or "+INF" or "INFINITY" or "+INFINITY" => double.PositiveInfinity,
        "-INF" or "-INFINITY" => double.NegativeInfinity,
        "NAN" or "+NAN" or "-NAN" => double.NaN,
        _ => null,
    };

    static string Check(NodeContext ctx, string s) =>
        double.TryParse(s, NumberStyles.Float, Inv, out _) ? s.Trim() : throw ctx.Error($"cannot cast string \"{s}\" to a number");

    static double ParseDouble(NodeContext ctx, string s) =>
        Special(s) ?? double.Parse(Check(ctx, s), NumberStyles.Float, Inv);

    static float ParseFloat(NodeContext ctx, string s) =>
        Special(s) is { } v ? (float)v : float.Parse(Check(ctx, s), NumberStyles.Float, Inv);
}
