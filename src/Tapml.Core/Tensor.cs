using System.Runtime.InteropServices;
using System.Text;

namespace Tapml.Core;

/// <summary>A value flowing through a graph: a <see cref="Tensor"/>, a <see cref="SequenceValue"/> or an
/// <see cref="OptionalValue"/> (ONNX's three value kinds that tapml runs).</summary>
public abstract class Value
{
    /// <summary>Short description for messages, e.g. <c>f32[1,3,224,224]</c>.</summary>
    public abstract string Describe();
    public override string ToString() => Describe();
}

/// <summary>A dense tensor in contiguous row-major host memory. <see cref="Data"/> is a typed CLR array whose
/// element type matches <see cref="DType"/> (float[], Half[], BFloat16[], long[], bool[], string[], …);
/// f16 and bf16 are kept bit-exact.</summary>
public sealed class Tensor : Value
{
    readonly Array? _data;
    readonly long _length;
    WeakReference<Array>? _converted;
    int _materializations;

    public DType DType { get; }
    public long[] Shape { get; }

    /// <summary>The elements. For a tensor over <see cref="External"/> memory this is a converted copy, made on first
    /// read and held only while a reader holds it (so a weight is never held twice for long); kernels that can read
    /// <see cref="External"/> directly never ask for it.</summary>
    public Array Data => _data ?? Converted();

    /// <summary>Memory the elements are read from in place (a weight in a memory-mapped checkpoint), or null for a
    /// tensor that owns its array.</summary>
    public ExternalData? External { get; }

    /// <summary>How many times <see cref="Data"/> of an external tensor was converted into an array (0: only read in place).</summary>
    public int Materializations => _materializations;

    public Tensor(DType dtype, long[] shape, Array data)
    {
        long n = ShapeUtil.Size(shape);
        if (data.GetType().GetElementType() != DTypes.ClrType(dtype))
            throw new ArgumentException($"data is {data.GetType().Name}, dtype is {DTypes.Name(dtype)}");
        if (data.LongLength != n)
            throw new ArgumentException($"data has {data.LongLength} elements, shape {ShapeUtil.Format(shape)} needs {n}");
        DType = dtype;
        Shape = shape;
        _data = data;
        _length = n;
    }

    /// <summary>A tensor of logical <paramref name="dtype"/> and <paramref name="shape"/> read from <paramref name="external"/>
    /// (same element count; dtype f32, or the stored type).</summary>
    public Tensor(DType dtype, long[] shape, ExternalData external)
    {
        long n = ShapeUtil.Size(shape);
        if (n != external.Length) throw new ArgumentException($"{external.Origin} has {external.Length} elements, shape {ShapeUtil.Format(shape)} needs {n}");
        if (dtype != DType.Float32 && dtype != external.Stored)
            throw new ArgumentException($"{external.Origin} is {DTypes.Name(external.Stored)}; it can be read as f32 or as stored");
        DType = dtype;
        Shape = shape;
        External = external;
        _length = n;
    }

    Array Converted()
    {
        if (_converted is not null && _converted.TryGetTarget(out var a)) return a;
        CheckLimits(DType, Shape, _length);
        a = External!.Materialize(DType);
        Interlocked.Increment(ref _materializations);
        if (_converted is null) _converted = new WeakReference<Array>(a);
        else _converted.SetTarget(a);
        return a;
    }

    /// <summary>Largest single host tensor in bytes: half the memory this process may use, or
    /// TAPML_MAX_TENSOR_MB. Checked before allocating so a bad shape is an error, not an out-of-memory crash.</summary>
    public static long MaxBytes { get; set; } = DefaultMaxBytes();

    static long DefaultMaxBytes()
    {
        if (long.TryParse(Environment.GetEnvironmentVariable("TAPML_MAX_TENSOR_MB"), out long mb) && mb > 0) return mb << 20;
        long avail = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        return avail > 0 ? avail / 2 : 4L << 30;
    }

    public int Rank => Shape.Length;
    public long Length => _length;
    /// <summary>Bytes of element storage (strings count their UTF-8 length).</summary>
    public long ByteSize => DType == DType.String
        ? ((string[])Data).Sum(s => (long)Encoding.UTF8.GetByteCount(s ?? ""))
        : Length * DTypes.Size(DType);

    public static Tensor Zeros(DType dtype, params long[] shape)
    {
        long n = ShapeUtil.Size(shape);
        CheckLimits(dtype, shape, n);
        // NOTE: typed allocation for the common types; Array.CreateInstance goes through reflection (it showed in
        // a webgpu decode step's host profile, which downloads its logits every step).
        Array data = dtype switch
        {
            DType.Float32 => new float[n],
            DType.Int64 => new long[n],
            DType.Int32 => new int[n],
            DType.Bool => new bool[n],
            _ => Array.CreateInstance(DTypes.ClrType(dtype), n),
        };
        if (dtype == DType.String) Array.Fill((string[])data, "");
        return new Tensor(dtype, shape, data);
    }

    /// <summary>A tensor whose contents are not cleared (for outputs a kernel writes completely); same limits as
    /// <see cref="Zeros"/>.</summary>
    public static Tensor Uninitialized(DType dtype, params long[] shape)
    {
        if (dtype is DType.String or DType.Bool) return Zeros(dtype, shape);
        long n = ShapeUtil.Size(shape);
        if (n * DTypes.Size(dtype) < 2048) return Zeros(dtype, shape);   // the GC clears arrays this small anyway
        CheckLimits(dtype, shape, n);
        Array? data = dtype switch
        {
            DType.Float32 => (Array)GC.AllocateUninitializedArray<float>((int)n),
            DType.Float64 => GC.AllocateUninitializedArray<double>((int)n),
            DType.Float16 => GC.AllocateUninitializedArray<Half>((int)n),
            DType.BFloat16 => GC.AllocateUninitializedArray<BFloat16>((int)n),
            DType.Int8 => GC.AllocateUninitializedArray<sbyte>((int)n),
            DType.UInt8 => GC.AllocateUninitializedArray<byte>((int)n),
            DType.Int16 => GC.AllocateUninitializedArray<short>((int)n),
            DType.UInt16 => GC.AllocateUninitializedArray<ushort>((int)n),
            DType.Int32 => GC.AllocateUninitializedArray<int>((int)n),
            DType.UInt32 => GC.AllocateUninitializedArray<uint>((int)n),
            DType.Int64 => GC.AllocateUninitializedArray<long>((int)n),
            DType.UInt64 => GC.AllocateUninitializedArray<ulong>((int)n),
            _ => null,
        } ?? Zeros(dtype, shape).Data;                        // other types (complex …): cleared storage
        return new Tensor(dtype, shape, data);
    }

    /// <summary>Checks that a host tensor of <paramref name="dtype"/> <paramref name="shape"/> (<paramref name="n"/>
    /// elements) fits one buffer, the per-tensor limit and the run's <see cref="ResourceBudget"/>, before it is allocated.</summary>
    public static void CheckLimits(DType dtype, long[] shape, long n)
    {
        int size = Math.Max(DTypes.Size(dtype), 1);
        long bytes = n > long.MaxValue / size ? long.MaxValue : n * size;
        string what = $"tensor {DTypes.Name(dtype)}{ShapeUtil.Format(shape)}";
        ResourceBudget.Reserve(bytes, what);
        if (n > Array.MaxLength)
            throw new ResourceLimitException($"{what} has {n} elements, over the {Array.MaxLength} one host buffer can hold");
        if (bytes > MaxBytes)
            throw new ResourceLimitException($"{what} needs {bytes / (1 << 20)} MiB, over the host limit of {MaxBytes / (1 << 20)} MiB for one tensor (set TAPML_MAX_TENSOR_MB to change it)");
    }

    public static Tensor FromArray<T>(T[] data, params long[] shape) => new(DTypes.FromClr(typeof(T)), shape, data);
    public static Tensor Scalar<T>(T v) => new(DTypes.FromClr(typeof(T)), [], new[] { v });

    public T[] As<T>() => Data as T[] ?? throw new TapmlException($"tensor is {DTypes.Name(DType)}, read as {typeof(T).Name}");
    public Span<T> Span<T>() => As<T>().AsSpan();

    /// <summary>Element bytes (not for strings).</summary>
    public Span<byte> Bytes() => DType switch
    {
        DType.Float32 => MemoryMarshal.AsBytes(Span<float>()),
        DType.Float64 => MemoryMarshal.AsBytes(Span<double>()),
        DType.Float16 => MemoryMarshal.AsBytes(Span<Half>()),
        DType.BFloat16 => MemoryMarshal.AsBytes(Span<BFloat16>()),
        DType.Int8 => MemoryMarshal.AsBytes(Span<sbyte>()),
        DType.UInt8 => Span<byte>(),
        DType.Int16 => MemoryMarshal.AsBytes(Span<short>()),
        DType.UInt16 => MemoryMarshal.AsBytes(Span<ushort>()),
        DType.Int32 => MemoryMarshal.AsBytes(Span<int>()),
        DType.UInt32 => MemoryMarshal.AsBytes(Span<uint>()),
        DType.Int64 => MemoryMarshal.AsBytes(Span<long>()),
        DType.UInt64 => MemoryMarshal.AsBytes(Span<ulong>()),
        DType.Bool => MemoryMarshal.AsBytes(Span<bool>()),
        _ => throw new TapmlException($"{DTypes.Name(DType)} tensors have no fixed-width bytes"),
    };

    /// <summary>Builds a tensor from little-endian element bytes (bools: one byte each, non-zero = true).</summary>
    public static Tensor FromBytes(DType dtype, long[] shape, ReadOnlySpan<byte> bytes)
    {
        var t = Zeros(dtype, shape);
        Span<byte> dst = t.Bytes();
        if (bytes.Length != dst.Length)
            throw new TapmlException($"{DTypes.Name(dtype)}{ShapeUtil.Format(shape)} needs {dst.Length} bytes, got {bytes.Length}");
        bytes.CopyTo(dst);
        if (dtype == DType.Bool)
            for (int i = 0; i < dst.Length; i++) if (dst[i] > 1) dst[i] = 1;
        return t;
    }

    /// <summary>Same data, new shape (no copy).</summary>
    public Tensor Reshape(params long[] shape) =>
        External is { Transposed: false } e && ShapeUtil.Size(shape) == _length ? new(DType, shape, e) : new(DType, shape, Data);

    public Tensor Clone() => new(DType, (long[])Shape.Clone(), (Array)Data.Clone());

    /// <summary>Element i as double (any numeric or bool type). For i64 beyond 2^53 use <see cref="GetInt64"/>.</summary>
    public double GetDouble(long i) => DType switch
    {
        DType.Float32 => ((float[])Data)[i],
        DType.Float64 => ((double[])Data)[i],
        DType.Float16 => (double)((Half[])Data)[i],
        DType.BFloat16 => (float)((BFloat16[])Data)[i],
        DType.Int8 => ((sbyte[])Data)[i],
        DType.UInt8 => ((byte[])Data)[i],
        DType.Int16 => ((short[])Data)[i],
        DType.UInt16 => ((ushort[])Data)[i],
        DType.Int32 => ((int[])Data)[i],
        DType.UInt32 => ((uint[])Data)[i],
        DType.Int64 => ((long[])Data)[i],
        DType.UInt64 => ((ulong[])Data)[i],
        DType.Bool => ((bool[])Data)[i] ? 1 : 0,
        _ => throw new TapmlException($"{DTypes.Name(DType)} element read as number"),
    };

    /// <summary>Element i as a 64-bit integer (floats truncate toward zero).</summary>
    public long GetInt64(long i) => DType switch
    {
        DType.Int64 => ((long[])Data)[i],
        DType.Int32 => ((int[])Data)[i],
        DType.UInt64 => (long)((ulong[])Data)[i],
        _ => (long)GetDouble(i),
    };

    /// <summary>Sets element i from a double, converting as a C cast would (saturation not applied).</summary>
    public void SetDouble(long i, double v)
    {
        switch (DType)
        {
            case DType.Float32: ((float[])Data)[i] = (float)v; break;
            case DType.Float64: ((double[])Data)[i] = v; break;
            case DType.Float16: ((Half[])Data)[i] = (Half)v; break;
            case DType.BFloat16: ((BFloat16[])Data)[i] = (BFloat16)v; break;
            case DType.Int8: ((sbyte[])Data)[i] = (sbyte)v; break;
            case DType.UInt8: ((byte[])Data)[i] = (byte)v; break;
            case DType.Int16: ((short[])Data)[i] = (short)v; break;
            case DType.UInt16: ((ushort[])Data)[i] = (ushort)v; break;
            case DType.Int32: ((int[])Data)[i] = (int)v; break;
            case DType.UInt32: ((uint[])Data)[i] = (uint)v; break;
            case DType.Int64: ((long[])Data)[i] = (long)v; break;
            case DType.UInt64: ((ulong[])Data)[i] = (ulong)v; break;
            case DType.Bool: ((bool[])Data)[i] = v != 0; break;
            default: throw new TapmlException($"{DTypes.Name(DType)} element written as number");
        }
    }

    /// <summary>Sets element i from a 64-bit integer, wrapping into narrower integer types as a C cast does
    /// (bool: non-zero is true; float types: converted).</summary>
    public void SetInt64(long i, long v)
    {
        switch (DType)
        {
            case DType.Int8: ((sbyte[])Data)[i] = unchecked((sbyte)v); break;
            case DType.UInt8: ((byte[])Data)[i] = unchecked((byte)v); break;
            case DType.Int16: ((short[])Data)[i] = unchecked((short)v); break;
            case DType.UInt16: ((ushort[])Data)[i] = unchecked((ushort)v); break;
            case DType.Int32: ((int[])Data)[i] = unchecked((int)v); break;
            case DType.UInt32: ((uint[])Data)[i] = unchecked((uint)v); break;
            case DType.Int64: ((long[])Data)[i] = v; break;
            case DType.UInt64: ((ulong[])Data)[i] = unchecked((ulong)v); break;
            case DType.Bool: ((bool[])Data)[i] = v != 0; break;
            default: SetDouble(i, v); break;
        }
    }

    /// <summary>All elements as i64 (for shape/axes/index tensors).</summary>
    public long[] ToInt64Array()
    {
        var r = new long[Length];
        for (long i = 0; i < r.Length; i++) r[i] = GetInt64(i);
        return r;
    }

    /// <summary>All elements as double (numeric tensors).</summary>
    public double[] ToDoubleArray()
    {
        var r = new double[Length];
        for (long i = 0; i < r.Length; i++) r[i] = GetDouble(i);
        return r;
    }

    public override string Describe() => $"{DTypes.Name(DType)}{ShapeUtil.Format(Shape)}";
}

/// <summary>An ONNX sequence value: an ordered list of tensors of one element type.</summary>
public sealed class SequenceValue : Value
{
    public DType ElementType { get; }
    public List<Tensor> Items { get; }
    public SequenceValue(DType elementType, IEnumerable<Tensor>? items = null)
    {
        ElementType = elementType;
        Items = items?.ToList() ?? new List<Tensor>();
    }
    public override string Describe() => $"seq<{DTypes.Name(ElementType)}>({Items.Count})";
}

/// <summary>An ONNX optional value: holds one value or none.</summary>
public sealed class OptionalValue : Value
{
    public Value? Item { get; }
    /// <summary>Element type of the optional when it holds a tensor or a sequence of tensors.</summary>
    public DType ElementType { get; }
    public bool IsSequence { get; }
    public OptionalValue(Value? item, DType elementType = DType.Undefined, bool isSequence = false)
    {
        Item = item;
        ElementType = item is Tensor t ? t.DType : item is SequenceValue s ? s.ElementType : elementType;
        IsSequence = item is SequenceValue || isSequence;
    }
    public override string Describe() => Item is null ? "optional(none)" : $"optional({Item.Describe()})";
}
