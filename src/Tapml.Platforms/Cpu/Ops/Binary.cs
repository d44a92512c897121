using System.Numerics;
using System.Runtime.CompilerServices;
using Tapml.Core;
using TP = System.Numerics.Tensors.TensorPrimitives;
using static Tapml.Platforms.Cpu.Ops.BinaryBroadcast;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Broadcasting arithmetic: Add, Sub, Mul, Div, Pow, Mod, BitShift.</summary>
public sealed class BinaryOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("Add", (ctx, x) => [Arith<AddOp>(ctx, x.T(0, ctx), LegacyAlign(ctx, x.T(0, ctx), x.T(1, ctx)))]);
        r.Add("Sub", (ctx, x) => [Arith<SubOp>(ctx, x.T(0, ctx), LegacyAlign(ctx, x.T(0, ctx), x.T(1, ctx)))]);
        r.Add("Mul", (ctx, x) => [Arith<MulOp>(ctx, x.T(0, ctx), LegacyAlign(ctx, x.T(0, ctx), x.T(1, ctx)))]);
        r.Add("Div", (ctx, x) => [Arith<DivOp>(ctx, x.T(0, ctx), LegacyAlign(ctx, x.T(0, ctx), x.T(1, ctx)))]);
        r.Add("Pow", Pow);
        r.Add("Mod", Mod, sinceOpset: 10);
        r.Add("BitShift", BitShift, sinceOpset: 11);
    }

    internal static bool IsFloat<T>() => typeof(T) == typeof(float) || typeof(T) == typeof(double);

    /// <summary>x == -1 for a signed integer type (where x / -1 and x % -1 overflow in the CLR for MinValue).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static bool IsMinusOne<T>(T x) where T : IBinaryNumber<T> => T.IsNegative(x) && x == T.Zero - T.One;

    internal readonly struct AddOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x + y;
        public static bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Add(x, y, d); return true; }
        public static bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Add(x, y, d); return true; }
        public static bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Add(y, x, d); return true; }
    }

    internal readonly struct SubOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x - y;
        public static bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Subtract(x, y, d); return true; }
        public static bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Subtract(x, y, d); return true; }
        public static bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Subtract(x, y, d); return true; }
    }

    internal readonly struct MulOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => x * y;
        public static bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Multiply(x, y, d); return true; }
        public static bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Multiply(x, y, d); return true; }
        public static bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { TP.Multiply(y, x, d); return true; }
    }

    /// <summary>Div: IEEE division for floats; integers truncate toward zero (C semantics, as ONNX runtimes do).
    /// Integer division by zero is undefined and reported as an error; MinValue / -1 wraps.</summary>
    internal readonly struct DivOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T>
        {
            if (IsFloat<T>()) return x / y;
            if (y == T.Zero) throw new DivideByZeroException("integer division by zero");
            return IsMinusOne(y) ? T.Zero - x : x / y;
        }
        public static bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { if (!IsFloat<T>()) return false; TP.Divide(x, y, d); return true; }
        public static bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { if (!IsFloat<T>()) return false; TP.Divide(x, y, d); return true; }
        public static bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> { if (!IsFloat<T>()) return false; TP.Divide(x, y, d); return true; }
    }

    /// <summary>Mod with fmod=1: C fmod, the result has the sign of the dividend (integers: C's %).</summary>
    internal readonly struct FModOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T>
        {
            if (IsFloat<T>()) return x % y; // CLR float % is C fmod
            if (y == T.Zero) throw new DivideByZeroException("integer modulo by zero");
            return IsMinusOne(y) ? T.Zero : x % y;
        }
    }

    /// <summary>Mod with fmod=0: Python/numpy mod, the result has the sign of the divisor (a zero result takes the
    /// divisor's sign for floats, as numpy.mod does).</summary>
    internal readonly struct PyModOp : IBinaryArith
    {
        public static T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T>
        {
            T r = FModOp.Op(x, y);
            if (r != T.Zero) return T.IsNegative(r) != T.IsNegative(y) ? r + y : r;
            return IsFloat<T>() ? T.CopySign(T.Zero, y) : r;
        }
    }

    // Mod-10/13: "If the input type is floating point, then fmod attribute must be set to 1"; the ONNX reference
    // nevertheless computes numpy.mod for fmod=0 on floats, which is what is done here.
    static Value?[] Mod(NodeContext ctx, Value?[] x)
    {
        Tensor a = x.T(0, ctx), b = x.T(1, ctx);
        long fmod = ctx.Int("fmod", 0);
        if (fmod is not (0 or 1)) throw ctx.Error($"fmod must be 0 or 1, got {fmod}");
        return [fmod == 1 ? Arith<FModOp>(ctx, a, b) : Arith<PyModOp>(ctx, a, b)];
    }

    // ---- Pow ---------------------------------------------------------------------------------------------------

    readonly struct PowF32 : IBinaryKernel<float, float>
    {
        public static float Op(float x, float y) => MathF.Pow(x, y);
        public static bool VecXS(ReadOnlySpan<float> x, float y, Span<float> d)
        {
            if (y == 2) { TP.Multiply(x, x, d); return true; }  // x·x is exactly rounded, as pow(x, 2) is
            if (y == 1) { x.CopyTo(d); return true; }
            return false;
        }
    }

    readonly struct PowF64 : IBinaryKernel<double, double>
    {
        public static double Op(double x, double y) => Math.Pow(x, y);
    }

    /// <summary>Integer power by squaring with wrap-around (numpy/C integer arithmetic). Negative exponents give
    /// the truncated value of the real power (C's (int)pow(b, e)): ±1 for |b| = 1, 0 otherwise; 0 to a negative
    /// power has no value and is an error.</summary>
    readonly struct PowI64 : IBinaryKernel<long, long>
    {
        public static long Op(long b, long e)
        {
            if (e < 0)
            {
                if (b == 0) throw new DivideByZeroException("integer 0 raised to a negative power");
                return b == 1 ? 1 : b == -1 ? ((e & 1) == 0 ? 1 : -1) : 0;
            }
            long r = 1;
            unchecked
            {
                while (e != 0)
                {
                    if ((e & 1) != 0) r *= b;
                    b *= b;
                    e >>= 1;
                }
            }
            return r;
        }
    }

    // Pow-1..7 (float types), Pow-12 (T: f16/f32/f64/i32/i64, exponent T1 any numeric), Pow-13/15 (+bf16).
    // The output has the base's type. Float results: float32 bases with float32/f16/bf16 exponents use powf;
    // every other mixed combination computes in double and rounds once to the base type (numpy's promotion of
    // e.g. float32 ** int32 also computes in double). Integer ** integer is exact integer arithmetic;
    // integer ** float truncates the double result toward zero (C cast).
    static Value?[] Pow(NodeContext ctx, Value?[] x)
    {
        Tensor a = x.T(0, ctx), b = LegacyAlign(ctx, x.T(0, ctx), x.T(1, ctx));
        if (!DTypes.IsNumeric(a.DType) || !DTypes.IsNumeric(b.DType))
            throw ctx.Error($"Pow needs numeric inputs, got {DTypes.Name(a.DType)} and {DTypes.Name(b.DType)}");
        bool smallB = b.DType is DType.Float32 or DType.Float16 or DType.BFloat16;
        if (a.DType == DType.Float32 && smallB)
            return [Guard(ctx, () => Map<float, float, PowF32>(a, TensorConvert.ToF32(b), DType.Float32))];
        if (IsHalfLike(a.DType) && smallB)
            return [TensorConvert.To(Guard(ctx, () => Map<float, float, PowF32>(TensorConvert.ToF32(a), TensorConvert.ToF32(b), DType.Float32)), a.DType)];
        if (DTypes.IsFloat(a.DType) || DTypes.IsFloat(b.DType))
        {
            var r = Guard(ctx, () => Map<double, double, PowF64>(TensorConvert.To(a, DType.Float64), TensorConvert.To(b, DType.Float64), DType.Float64));
            return [TensorConvert.To(r, a.DType)];
        }
        var ri = Guard(ctx, () => Map<long, long, PowI64>(TensorConvert.To(a, DType.Int64), TensorConvert.To(b, DType.Int64), DType.Int64));
        return [TensorConvert.To(ri, a.DType)];
    }

    // ---- BitShift ----------------------------------------------------------------------------------------------

    /// <summary>Shift of an unsigned integer; shifting by the bit width or more gives 0 (numpy's definition; in C
    /// it is undefined, and the CLR would mask the count).</summary>
    readonly struct ShiftK<T, TDir> : IBinaryKernel<T, T> where T : IBinaryInteger<T>, IUnsignedNumber<T> where TDir : struct
    {
        static readonly int Bits = Unsafe.SizeOf<T>() * 8;
        public static T Op(T x, T y)
        {
            if (y >= T.CreateTruncating(Bits)) return T.Zero;
            int s = int.CreateTruncating(y);
            return typeof(TDir) == typeof(Left) ? x << s : x >> s;
        }
    }
    readonly struct Left;
    readonly struct Right;

    static Value?[] BitShift(NodeContext ctx, Value?[] x)
    {
        Tensor a = x.T(0, ctx), b = x.T(1, ctx);
        SameType(ctx, a, b);
        string dir = ctx.String("direction", "");
        bool left = dir switch
        {
            "LEFT" => true,
            "RIGHT" => false,
            _ => throw ctx.Error($"direction must be \"LEFT\" or \"RIGHT\", got \"{dir}\""),
        };
        return [Guard(ctx, () => (a.DType, left) switch
        {
            (DType.UInt8, true) => Map<byte, byte, ShiftK<byte, Left>>(a, b, a.DType),
            (DType.UInt8, false) => Map<byte, byte, ShiftK<byte, Right>>(a, b, a.DType),
            (DType.UInt16, true) => Map<ushort, ushort, ShiftK<ushort, Left>>(a, b, a.DType),
            (DType.UInt16, false) => Map<ushort, ushort, ShiftK<ushort, Right>>(a, b, a.DType),
            (DType.UInt32, true) => Map<uint, uint, ShiftK<uint, Left>>(a, b, a.DType),
            (DType.UInt32, false) => Map<uint, uint, ShiftK<uint, Right>>(a, b, a.DType),
            (DType.UInt64, true) => Map<ulong, ulong, ShiftK<ulong, Left>>(a, b, a.DType),
            (DType.UInt64, false) => Map<ulong, ulong, ShiftK<ulong, Right>>(a, b, a.DType),
            _ => throw ctx.Error($"BitShift needs unsigned integer inputs, got {DTypes.Name(a.DType)}"),
        })];
    }
}
