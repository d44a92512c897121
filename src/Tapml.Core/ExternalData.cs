using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Tapml.Core;

/// <summary>The elements of a tensor read in place from memory the tensor does not own: a weight in a memory-mapped
/// checkpoint, kept in its stored element type (f32, f16 or bf16) and layout. The tensor it backs has a logical
/// dtype and shape of its own (a bf16 [out, in] Linear weight seen as the f32 [in, out] matrix the graph multiplies
/// by); kernels that know this form read the stored bytes directly, converting a tile at a time, and every other
/// reader gets a converted copy (<see cref="Tensor.Data"/>). Several tensors may share one region (a tied lm_head
/// and the embedding it transposes): the bytes are held once, by the mapping.</summary>
public sealed unsafe class ExternalData
{
    readonly byte* _p;
    // NOTE: keeps the mapping (a SafetensorsFile) reachable while any tensor reads it; its handle's finalizer unmaps.
    readonly object _owner;

    /// <summary>Element type as stored: f32, f16 or bf16.</summary>
    public DType Stored { get; }
    /// <summary>Stored rows (the product of all dimensions but the last) and columns (the last dimension).</summary>
    public long Rows { get; }
    public long Cols { get; }
    /// <summary>The logical tensor is the stored [Rows, Cols] matrix transposed ([Cols, Rows]).</summary>
    public bool Transposed { get; }
    /// <summary>Name of the origin for messages (file and tensor).</summary>
    public string Origin { get; }

    public ExternalData(object owner, byte* pointer, DType stored, long rows, long cols, bool transposed, string origin)
    {
        if (stored is not (DType.Float32 or DType.Float16 or DType.BFloat16))
            throw new ArgumentException($"external data is f32, f16 or bf16, not {DTypes.Name(stored)}");
        _owner = owner;
        _p = pointer;
        Stored = stored;
        Rows = rows;
        Cols = cols;
        Transposed = transposed;
        Origin = origin;
    }

    public long Length => Rows * Cols;
    public long ByteLength => Length * DTypes.Size(Stored);
    /// <summary>Address of the first stored byte: two views with the same address and dtype share their bytes.</summary>
    public nint Address => (nint)_p;

    /// <summary>The same bytes seen transposed (a Linear weight [out, in] as the [in, out] matrix <c>x @ W^T</c> needs).</summary>
    public ExternalData Transpose() => new(_owner, _p, Stored, Rows, Cols, !Transposed, Origin);

    /// <summary>Stored rows [start, start + count) (a part of a fused weight split by rows); not for transposed views.</summary>
    public ExternalData RowRange(long start, long count, string origin)
    {
        if (Transposed || start < 0 || count < 0 || start + count > Rows) throw new ArgumentOutOfRangeException(nameof(start), $"rows [{start}, {start + count}) of {Origin}");
        return new(_owner, _p + start * Cols * DTypes.Size(Stored), Stored, count, Cols, false, origin);
    }

    /// <summary>Stored rows [row, row + count) as elements of the stored type <typeparamref name="T"/> (float, Half, BFloat16).</summary>
    public ReadOnlySpan<T> StoredRows<T>(long row, int count) where T : unmanaged
    {
        if (sizeof(T) != DTypes.Size(Stored)) throw new InvalidOperationException($"{Origin} is {DTypes.Name(Stored)}, read as {typeof(T).Name}");
        if (row < 0 || count < 0 || row + count > Rows) throw new ArgumentOutOfRangeException(nameof(row));
        return new ReadOnlySpan<T>(_p + row * Cols * sizeof(T), checked((int)(count * Cols)));
    }

    /// <summary>Converts stored rows [row, row + count) to f32 into <paramref name="dst"/> (row-major, Cols a row).</summary>
    public void RowsToF32(long row, int count, Span<float> dst)
    {
        switch (Stored)
        {
            case DType.Float32: StoredRows<float>(row, count).CopyTo(dst); break;
            case DType.Float16: HalfToF32(StoredRows<Half>(row, count), dst); break;
            default: Bf16ToF32(MemoryMarshal.Cast<BFloat16, ushort>(StoredRows<BFloat16>(row, count)), dst); break;
        }
    }

    /// <summary>Converts stored columns [col, col + width) of every row to f32 into <paramref name="dst"/> ([Rows, width]).</summary>
    public void ColumnsToF32(long col, int width, Span<float> dst)
    {
        for (long r = 0; r < Rows; r++)
        {
            var d = dst.Slice((int)(r * width), width);
            switch (Stored)
            {
                case DType.Float32: new ReadOnlySpan<float>(_p + (r * Cols + col) * 4, width).CopyTo(d); break;
                case DType.Float16: HalfToF32(new ReadOnlySpan<Half>(_p + (r * Cols + col) * 2, width), d); break;
                default: Bf16ToF32(new ReadOnlySpan<ushort>(_p + (r * Cols + col) * 2, width), d); break;
            }
        }
    }

    static void HalfToF32(ReadOnlySpan<Half> src, Span<float> dst)
    {
        for (int i = 0; i < src.Length; i++) dst[i] = (float)src[i];
    }

    /// <summary>bf16 bits to f32: the bits shifted up 16 (exact).</summary>
    public static void Bf16ToF32(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var d = MemoryMarshal.Cast<float, uint>(dst);
            for (; i + 16 <= src.Length; i += 16)
            {
                var v = Vector256.Create(src.Slice(i, 16));
                var (lo, hi) = Vector256.Widen(v);
                Vector256.ShiftLeft(lo, 16).CopyTo(d.Slice(i, 8));
                Vector256.ShiftLeft(hi, 16).CopyTo(d.Slice(i + 8, 8));
            }
        }
        for (; i < src.Length; i++) dst[i] = BitConverter.Int32BitsToSingle(src[i] << 16);
    }

    /// <summary>The logical tensor's elements as a new array of <paramref name="logical"/> (f32, or the stored type).</summary>
    public Array Materialize(DType logical)
    {
        long n = Length;
        if (logical == Stored)
        {
            var copy = Array.CreateInstance(DTypes.ClrType(logical), n);
            var bytes = MemoryMarshal.AsBytes(AsSpanOf(copy));
            if (!Transposed) { new ReadOnlySpan<byte>(_p, checked((int)ByteLength)).CopyTo(bytes); return copy; }
            if (DTypes.Size(Stored) == 2) TransposeInto(new ReadOnlySpan<ushort>(_p, checked((int)n)), MemoryMarshal.Cast<byte, ushort>(bytes));
            else TransposeInto(new ReadOnlySpan<uint>(_p, checked((int)n)), MemoryMarshal.Cast<byte, uint>(bytes));
            return copy;
        }
        if (logical != DType.Float32) throw new TapmlException($"{Origin}: {DTypes.Name(Stored)} weight read as {DTypes.Name(logical)}");
        var f = GC.AllocateUninitializedArray<float>(checked((int)n));
        if (!Transposed) { RowsToF32(0, checked((int)Rows), f); return f; }
        var row = new float[Cols];
        for (long r = 0; r < Rows; r++)
        {
            RowsToF32(r, 1, row);
            for (long c = 0; c < Cols; c++) f[c * Rows + r] = row[c];
        }
        return f;
    }

    /// <summary>The stored [Rows, Cols] elements into <paramref name="dst"/> as [Cols, Rows] (blocked, so both sides stay in cache).</summary>
    void TransposeInto<T>(ReadOnlySpan<T> src, Span<T> dst) where T : unmanaged
    {
        const int B = 64;
        for (long r0 = 0; r0 < Rows; r0 += B)
            for (long c0 = 0; c0 < Cols; c0 += B)
                for (long r = r0; r < Math.Min(Rows, r0 + B); r++)
                    for (long c = c0; c < Math.Min(Cols, c0 + B); c++) dst[(int)(c * Rows + r)] = src[(int)(r * Cols + c)];
    }

    static Span<byte> AsSpanOf(Array a) => a switch
    {
        float[] x => MemoryMarshal.AsBytes(x.AsSpan()),
        Half[] x => MemoryMarshal.AsBytes(x.AsSpan()),
        BFloat16[] x => MemoryMarshal.AsBytes(x.AsSpan()),
        _ => throw new ArgumentException(a.GetType().Name),
    };
}
