namespace Tapml.Core;

/// <summary>Element types. Numbering follows ONNX <c>TensorProto.DataType</c>, so a value converts both ways by cast.</summary>
public enum DType
{
    Undefined = 0,
    Float32 = 1,
    UInt8 = 2,
    Int8 = 3,
    UInt16 = 4,
    Int16 = 5,
    Int32 = 6,
    Int64 = 7,
    String = 8,
    Bool = 9,
    Float16 = 10,
    Float64 = 11,
    UInt32 = 12,
    UInt64 = 13,
    Complex64 = 14,
    Complex128 = 15,
    BFloat16 = 16,
}

/// <summary>Facts about a <see cref="DType"/>: size in bytes, CLR element type, short name.</summary>
public static class DTypes
{
    /// <summary>Whether tapml can hold tensors of this type (complex and 8/4-bit float types cannot).</summary>
    public static bool IsSupported(DType t) => t switch
    {
        DType.Float32 or DType.UInt8 or DType.Int8 or DType.UInt16 or DType.Int16 or DType.Int32 or DType.Int64
            or DType.String or DType.Bool or DType.Float16 or DType.Float64 or DType.UInt32 or DType.UInt64
            or DType.BFloat16 => true,
        _ => false,
    };

    /// <summary>Bytes per element (strings: 0, they have no fixed width).</summary>
    public static int Size(DType t) => t switch
    {
        DType.Float32 or DType.Int32 or DType.UInt32 => 4,
        DType.Float64 or DType.Int64 or DType.UInt64 or DType.Complex64 => 8,
        DType.Float16 or DType.BFloat16 or DType.Int16 or DType.UInt16 => 2,
        DType.Int8 or DType.UInt8 or DType.Bool => 1,
        DType.Complex128 => 16,
        _ => 0,
    };

    public static Type ClrType(DType t) => t switch
    {
        DType.Float32 => typeof(float),
        DType.Float64 => typeof(double),
        DType.Float16 => typeof(Half),
        DType.BFloat16 => typeof(BFloat16),
        DType.Int8 => typeof(sbyte),
        DType.UInt8 => typeof(byte),
        DType.Int16 => typeof(short),
        DType.UInt16 => typeof(ushort),
        DType.Int32 => typeof(int),
        DType.UInt32 => typeof(uint),
        DType.Int64 => typeof(long),
        DType.UInt64 => typeof(ulong),
        DType.Bool => typeof(bool),
        DType.String => typeof(string),
        _ => throw new TapmlException($"element type {Name(t)} is not supported by tapml"),
    };

    public static DType FromClr(Type t) =>
        t == typeof(float) ? DType.Float32 :
        t == typeof(double) ? DType.Float64 :
        t == typeof(Half) ? DType.Float16 :
        t == typeof(BFloat16) ? DType.BFloat16 :
        t == typeof(sbyte) ? DType.Int8 :
        t == typeof(byte) ? DType.UInt8 :
        t == typeof(short) ? DType.Int16 :
        t == typeof(ushort) ? DType.UInt16 :
        t == typeof(int) ? DType.Int32 :
        t == typeof(uint) ? DType.UInt32 :
        t == typeof(long) ? DType.Int64 :
        t == typeof(ulong) ? DType.UInt64 :
        t == typeof(bool) ? DType.Bool :
        t == typeof(string) ? DType.String :
        throw new ArgumentException($"no tapml dtype for {t}");

    public static bool IsFloat(DType t) => t is DType.Float32 or DType.Float64 or DType.Float16 or DType.BFloat16;
    public static bool IsSignedInt(DType t) => t is DType.Int8 or DType.Int16 or DType.Int32 or DType.Int64;
    public static bool IsUnsignedInt(DType t) => t is DType.UInt8 or DType.UInt16 or DType.UInt32 or DType.UInt64;
    public static bool IsInteger(DType t) => IsSignedInt(t) || IsUnsignedInt(t);
    public static bool IsNumeric(DType t) => IsFloat(t) || IsInteger(t);

    /// <summary>Short name used in reports and case ids: f32, f16, bf16, i64, bool, …</summary>
    public static string Name(DType t) => t switch
    {
        DType.Float32 => "f32",
        DType.Float64 => "f64",
        DType.Float16 => "f16",
        DType.BFloat16 => "bf16",
        DType.Int8 => "i8",
        DType.UInt8 => "u8",
        DType.Int16 => "i16",
        DType.UInt16 => "u16",
        DType.Int32 => "i32",
        DType.UInt32 => "u32",
        DType.Int64 => "i64",
        DType.UInt64 => "u64",
        DType.Bool => "bool",
        DType.String => "string",
        DType.Complex64 => "complex64",
        DType.Complex128 => "complex128",
        DType.Undefined => "undefined",
        _ => $"onnx-type-{(int)t}",
    };

    /// <summary>Parses a short name (f32) or an ONNX name (float, FLOAT16, int64).</summary>
    public static DType Parse(string s) => s.ToLowerInvariant() switch
    {
        "f32" or "float" or "float32" => DType.Float32,
        "f64" or "double" or "float64" => DType.Float64,
        "f16" or "float16" or "half" => DType.Float16,
        "bf16" or "bfloat16" => DType.BFloat16,
        "i8" or "int8" => DType.Int8,
        "u8" or "uint8" => DType.UInt8,
        "i16" or "int16" => DType.Int16,
        "u16" or "uint16" => DType.UInt16,
        "i32" or "int32" => DType.Int32,
        "u32" or "uint32" => DType.UInt32,
        "i64" or "int64" => DType.Int64,
        "u64" or "uint64" => DType.UInt64,
        "bool" => DType.Bool,
        "string" => DType.String,
        _ => throw new TapmlException($"unknown element type '{s}'"),
    };
}
