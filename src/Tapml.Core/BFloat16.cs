using System.Runtime.CompilerServices;

namespace Tapml.Core;

/// <summary>bfloat16: the upper 16 bits of an IEEE float32. Stored bit-exact; conversion from float rounds to
/// nearest even (as PyTorch and ONNX do), NaN stays NaN.</summary>
public readonly struct BFloat16 : IEquatable<BFloat16>
{
    public readonly ushort Bits;

    public BFloat16(ushort bits) => Bits = bits;

    public static BFloat16 FromBits(ushort bits) => new(bits);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static explicit operator float(BFloat16 v) => BitConverter.Int32BitsToSingle(v.Bits << 16);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static explicit operator BFloat16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return new BFloat16((ushort)((u >> 16) | 0x0040));
        uint rounding = 0x7FFF + ((u >> 16) & 1);
        return new BFloat16((ushort)((u + rounding) >> 16));
    }

    public static explicit operator double(BFloat16 v) => (float)v;

    /// <summary>Rounds a double to bf16 once (nearest even): the double goes to float with round-to-odd, which
    /// keeps the second rounding exact (no double-rounding error).</summary>
    public static explicit operator BFloat16(double d)
    {
        float f = (float)d;
        if (!float.IsFinite(f) || f == d) return (BFloat16)f;
        uint u = BitConverter.SingleToUInt32Bits(f);
        if (Math.Abs((double)f) > Math.Abs(d)) u--; // truncate toward zero…
        return (BFloat16)BitConverter.UInt32BitsToSingle(u | 1); // …and mark inexact (round to odd)
    }

    public bool Equals(BFloat16 other) => Bits == other.Bits;
    public override bool Equals(object? obj) => obj is BFloat16 b && Equals(b);
    public override int GetHashCode() => Bits;
    public override string ToString() => ((float)this).ToString("R", System.Globalization.CultureInfo.InvariantCulture);
}
