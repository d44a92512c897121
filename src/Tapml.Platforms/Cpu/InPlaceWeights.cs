using System.Buffers;
using Tapml.Core;

namespace Tapml.Platforms.Cpu;

/// <summary>MatMul and Gather against a weight read in place (<see cref="Tensor.External"/>: a memory-mapped checkpoint
/// tensor in its stored dtype and layout), so that a weight is never widened or transposed into a second copy. The
/// product runs over tiles of output columns: each tile's weights are converted to f32 into a small buffer and
/// multiplied with <see cref="Blas.Sgemm"/>, as the f32 product would be. Tile widths depend on the shape only, so
/// results do not depend on the thread count.</summary>
public static class InPlaceWeights
{
    /// <summary>Whether MatMul(<paramref name="a"/>, <paramref name="b"/>) runs here: f32 A, B an f32 matrix read in place.</summary>
    public static bool Handles(Tensor a, Tensor b) =>
        b.External is { } e && b.Rank == 2 && a.DType == DType.Float32 && b.DType == DType.Float32
        && (e.Transposed ? e.Rows : e.Cols) == b.Shape[1];     // stored as [N, K] or [K, N], not reshaped otherwise

    /// <summary>Whether Gather along axis 0 of <paramref name="data"/> runs here: an f32 tensor read in place, untransposed,
    /// whose slices along axis 0 are whole stored rows.</summary>
    public static bool HandlesGather(Tensor data, int axis) =>
        axis == 0 && data.External is { Transposed: false } e && data.DType == DType.Float32 && data.Rank >= 1
        && data.Shape[0] > 0 && data.Length / data.Shape[0] % e.Cols == 0;

    /// <summary>Y[rows, N] = A[rows, K] · B[K, N] for B in place (logical [K, N]: stored [N, K] transposed, or [K, N]).</summary>
    public static void MatMul(ReadOnlySpan<float> a, Tensor b, Span<float> y, int rows)
    {
        var e = b.External!;
        int k = checked((int)b.Shape[0]), n = checked((int)b.Shape[1]);
        if (rows == 0 || n == 0) return;
        if (e.Stored == DType.Float32 && e.Length <= int.MaxValue)
        {
            // f32 as stored: the mapped matrix is B (or B^T) already.
            Blas.Sgemm(false, e.Transposed, rows, n, k, 1f, a, k, e.StoredRows<float>(0, (int)e.Rows), e.Transposed ? k : n, 0f, y, n);
            return;
        }
        // NOTE: decode (a row or few) streams weights: narrow tiles spread over every thread; prefill reuses each tile
        // for many rows, so wider tiles pack A fewer times.
        int width = rows < 4 ? 16 : 128;
        int tiles = (n + width - 1) / width;
        unsafe
        {
            fixed (float* pa = a, py = y)
            {
                nint A = (nint)pa, Y = (nint)py;
                int aLength = a.Length, yLength = y.Length;
                void Tile(int t)
                {
                    int n0 = t * width, w = Math.Min(width, n - n0);
                    var buf = ArrayPool<float>.Shared.Rent(w * k);
                    try
                    {
                        var av = new ReadOnlySpan<float>((float*)A, aLength);
                        var yv = new Span<float>((float*)Y, yLength).Slice(n0);
                        if (e.Transposed)
                        {
                            e.RowsToF32(n0, w, buf.AsSpan(0, w * k));
                            Blas.Sgemm(false, true, rows, w, k, 1f, av, k, buf, k, 0f, yv, n, threads: false);
                        }
                        else
                        {
                            e.ColumnsToF32(n0, w, buf.AsSpan(0, w * k));
                            Blas.Sgemm(false, false, rows, w, k, 1f, av, k, buf, w, 0f, yv, n, threads: false);
                        }
                    }
                    finally { ArrayPool<float>.Shared.Return(buf); }
                }
                if (tiles == 1 || CpuThreads.Max == 1 || (long)rows * n * k < 1 << 16) for (int t = 0; t < tiles; t++) Tile(t);
                else Parallel.For(0, tiles, CpuThreads.Options, Tile);
            }
        }
    }

    /// <summary>Gather along axis 0 of an f32 tensor read in place (not transposed): each index's row block converted
    /// to f32; only the rows asked for are read.</summary>
    public static Tensor Gather(Tensor data, long[] idx, long[] idxShape)
    {
        var e = data.External!;
        long inner = data.Length / Math.Max(1, data.Shape[0]);
        var shape = new List<long>(idxShape);
        shape.AddRange(data.Shape.Skip(1));
        var r = Tensor.Uninitialized(DType.Float32, shape.ToArray());
        var dst = r.Span<float>();
        int storedRows = checked((int)(inner / Math.Max(1, e.Cols)));
        for (int j = 0; j < idx.Length; j++)
            e.RowsToF32(idx[j] * storedRows, storedRows, dst.Slice(checked((int)(j * inner)), (int)inner));
        return r;
    }
}
