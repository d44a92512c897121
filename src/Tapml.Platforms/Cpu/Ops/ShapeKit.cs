using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>Type-agnostic data movement shared by the shape, movement, gather/scatter and sequence families.
/// Fixed-width elements move as raw 1/2/4/8-byte words (bit-exact for every dtype, f16/bf16 included);
/// strings move as references.</summary>
internal static class ShapeKit
{
    const long ParallelMin = 1 << 16;

    /// <summary>Element width class: 0 = string, else bytes per element.</summary>
    static int Width(DType t) => t == DType.String ? 0 : DTypes.Size(t);

    /// <summary>The array's elements viewed as same-width words T (string arrays as themselves).</summary>
    static Span<T> Raw<T>(Array a)
    {
        if (typeof(T) == typeof(string)) return ((T[])(object)a).AsSpan();
        return MemoryMarshal.CreateSpan(ref Unsafe.As<byte, T>(ref MemoryMarshal.GetArrayDataReference(a)), a.Length);
    }

    public static long[] ContiguousStrides(long[] shape) => ShapeUtil.Strides(shape);

    // ---------------------------------------------------------------- strided copy

    /// <summary>dst[dstOff + Σ i_k·dstSt_k] = src[srcOff + Σ i_k·srcSt_k] for every index i of <paramref name="shape"/>.
    /// Source strides may be 0 (broadcast) or negative (reversed).</summary>
    public static void CopyStrided(Tensor src, long srcOff, long[] srcSt, Tensor dst, long dstOff, long[] dstSt, long[] shape)
    {
        if (src.DType != dst.DType) throw new TapmlException($"copy between {DTypes.Name(src.DType)} and {DTypes.Name(dst.DType)}");
        switch (Width(src.DType))
        {
            case 0: CopyStridedT<string>(src.Data, srcOff, srcSt, dst.Data, dstOff, dstSt, shape); break;
            case 1: CopyStridedT<byte>(src.Data, srcOff, srcSt, dst.Data, dstOff, dstSt, shape); break;
            case 2: CopyStridedT<ushort>(src.Data, srcOff, srcSt, dst.Data, dstOff, dstSt, shape); break;
            case 4: CopyStridedT<uint>(src.Data, srcOff, srcSt, dst.Data, dstOff, dstSt, shape); break;
            case 8: CopyStridedT<ulong>(src.Data, srcOff, srcSt, dst.Data, dstOff, dstSt, shape); break;
            default: throw new TapmlException($"cannot move {DTypes.Name(src.DType)} elements");
        }
    }

    /// <summary>Drops size-1 dimensions and merges dimensions that are contiguous in both source and destination.</summary>
    static (long[] shape, long[] ss, long[] ds) Simplify(long[] shape, long[] ss, long[] ds)
    {
        var sh = new List<long>(); var s1 = new List<long>(); var d1 = new List<long>();
        for (int k = 0; k < shape.Length; k++)
        {
            if (shape[k] == 1) continue;
            int last = sh.Count - 1;
            if (last >= 0 && s1[last] == ss[k] * shape[k] && d1[last] == ds[k] * shape[k])
            {
                sh[last] *= shape[k]; s1[last] = ss[k]; d1[last] = ds[k];
                continue;
            }
            sh.Add(shape[k]); s1.Add(ss[k]); d1.Add(ds[k]);
        }
        return (sh.ToArray(), s1.ToArray(), d1.ToArray());
    }

    static void CopyStridedT<T>(Array src, long srcOff, long[] srcSt, Array dst, long dstOff, long[] dstSt, long[] shape0)
    {
        long total = ShapeUtil.Size(shape0);
        if (total == 0) return;
        var (shape, ss, ds) = Simplify(shape0, srcSt, dstSt);
        int r = shape.Length;
        if (r == 0) { Raw<T>(dst)[(int)dstOff] = Raw<T>(src)[(int)srcOff]; return; }

        // Transpose-like: the destination's innermost dimension is contiguous and the source is contiguous along
        // another dimension p: copy 2-D tiles over (p, last) so both sides stay in cache.
        int pc = -1;
        for (int k = 0; k < r - 1; k++) if (ss[k] == 1) pc = k;
        if (pc >= 0 && ds[r - 1] == 1 && ss[r - 1] != 1 && shape[r - 1] >= 8 && shape[pc] >= 8)
        {
            long rowsA = shape[pc], colsB = shape[r - 1];
            long planes = total / (rowsA * colsB);
            const int TB = 32;
            long tilesA = (rowsA + TB - 1) / TB;
            void Tile(long job)
            {
                long plane = job / tilesA, ta = job % tilesA;
                long so = srcOff, dof = dstOff, rem = plane;
                for (int k = r - 2; k >= 0; k--)
                {
                    if (k == pc) continue;
                    long i = rem % shape[k]; rem /= shape[k]; so += i * ss[k]; dof += i * ds[k];
                }
                var s = Raw<T>(src); var d = Raw<T>(dst);
                long a0 = ta * TB, a1 = Math.Min(rowsA, a0 + TB), dA = ds[pc], sB = ss[r - 1];
                for (long b0 = 0; b0 < colsB; b0 += TB)
                {
                    long b1 = Math.Min(colsB, b0 + TB);
                    for (long a = a0; a < a1; a++)
                    {
                        long sBase = so + a, dBase = dof + a * dA;
                        for (long b = b0; b < b1; b++) d[(int)(dBase + b)] = s[(int)(sBase + b * sB)];
                    }
                }
            }
            long jobs = planes * tilesA;
            if (total >= ParallelMin && jobs > 1) Parallel.For(0L, jobs, CpuThreads.Options, Tile);
            else for (long j = 0; j < jobs; j++) Tile(j);
            return;
        }

        // Rows over the outer dimensions, a 2-D kernel over the last two.
        long inner = shape[r - 1], sIn = ss[r - 1], dIn = ds[r - 1];
        long mid = r >= 2 ? shape[r - 2] : 1, sMid = r >= 2 ? ss[r - 2] : 0, dMid = r >= 2 ? ds[r - 2] : 0;
        long rows = total / (inner * mid);
        void Rows(long r0, long r1)
        {
            var s = Raw<T>(src); var d = Raw<T>(dst);
            for (long row = r0; row < r1; row++)
            {
                long so0 = srcOff, do0 = dstOff, rem = row;
                for (int k = r - 3; k >= 0; k--) { long i = rem % shape[k]; rem /= shape[k]; so0 += i * ss[k]; do0 += i * ds[k]; }
                for (long m = 0; m < mid; m++)
                {
                    long so = so0 + m * sMid, dof = do0 + m * dMid;
                    if (sIn == 1 && dIn == 1) s.Slice((int)so, (int)inner).CopyTo(d.Slice((int)dof, (int)inner));
                    else if (sIn == 0 && dIn == 1) d.Slice((int)dof, (int)inner).Fill(s[(int)so]);
                    else for (long i = 0; i < inner; i++) d[(int)(dof + i * dIn)] = s[(int)(so + i * sIn)];
                }
            }
        }
        if (total >= ParallelMin && rows > 1)
        {
            int chunks = (int)Math.Min(rows, CpuThreads.Max * 4L);
            Parallel.For(0, chunks, CpuThreads.Options, c => Rows(rows * c / chunks, rows * (c + 1) / chunks));
        }
        else if (total >= ParallelMin && mid > 1)
        {
            // One row: split the middle dimension instead.
            int chunks = (int)Math.Min(mid, CpuThreads.Max * 4L);
            Parallel.For(0, chunks, CpuThreads.Options, c =>
            {
                long m0 = mid * c / chunks, m1 = mid * (c + 1) / chunks;
                var s = Raw<T>(src); var d = Raw<T>(dst);
                for (long m = m0; m < m1; m++)
                {
                    long so = srcOff + m * sMid, dof = dstOff + m * dMid;
                    if (sIn == 1 && dIn == 1) s.Slice((int)so, (int)inner).CopyTo(d.Slice((int)dof, (int)inner));
                    else if (sIn == 0 && dIn == 1) d.Slice((int)dof, (int)inner).Fill(s[(int)so]);
                    else for (long i = 0; i < inner; i++) d[(int)(dof + i * dIn)] = s[(int)(so + i * sIn)];
                }
            });
        }
        else Rows(0, rows);
    }

    /// <summary>A new contiguous tensor holding the view (offset, strides, shape) of <paramref name="src"/>.</summary>
    public static Tensor Materialize(Tensor src, long offset, long[] strides, long[] shape)
    {
        var r = Tensor.Zeros(src.DType, shape);
        CopyStrided(src, offset, strides, r, 0, ShapeUtil.Strides(shape), shape);
        return r;
    }

    /// <summary>Transposes <paramref name="x"/> viewed with <paramref name="viewShape"/> (same element count):
    /// output dim i is view dim perm[i].</summary>
    public static Tensor Permute(Tensor x, long[] viewShape, int[] perm)
    {
        var st = ShapeUtil.Strides(viewShape);
        var shape = new long[perm.Length]; var ss = new long[perm.Length];
        for (int i = 0; i < perm.Length; i++) { shape[i] = viewShape[perm[i]]; ss[i] = st[perm[i]]; }
        return Materialize(x, 0, ss, shape);
    }

    // ---------------------------------------------------------------- block gather / scatter

    /// <summary>dst[i·block .. (i+1)·block) = src[offsets[i] .. offsets[i]+block) for every i.</summary>
    public static void GatherBlocks(Tensor src, long[] offsets, long block, Tensor dst)
    {
        switch (Width(src.DType))
        {
            case 0: GatherBlocksT<string>(src.Data, offsets, block, dst.Data); break;
            case 1: GatherBlocksT<byte>(src.Data, offsets, block, dst.Data); break;
            case 2: GatherBlocksT<ushort>(src.Data, offsets, block, dst.Data); break;
            case 4: GatherBlocksT<uint>(src.Data, offsets, block, dst.Data); break;
            case 8: GatherBlocksT<ulong>(src.Data, offsets, block, dst.Data); break;
            default: throw new TapmlException($"cannot move {DTypes.Name(src.DType)} elements");
        }
    }

    static void GatherBlocksT<T>(Array src, long[] offsets, long block, Array dst)
    {
        long n = offsets.Length;
        if (n == 0 || block == 0) return;
        void Range(long i0, long i1)
        {
            var s = Raw<T>(src); var d = Raw<T>(dst);
            if (block == 1) for (long i = i0; i < i1; i++) d[(int)i] = s[(int)offsets[i]];
            else for (long i = i0; i < i1; i++) s.Slice((int)offsets[i], (int)block).CopyTo(d.Slice((int)(i * block), (int)block));
        }
        if (n * block >= ParallelMin && n > 1)
        {
            int chunks = (int)Math.Min(n, CpuThreads.Max * 4L);
            Parallel.For(0, chunks, CpuThreads.Options, c => Range(n * c / chunks, n * (c + 1) / chunks));
        }
        else Range(0, n);
    }

    /// <summary>dst[i·W + j] = src[rowOffsets[i] + colMap[j]] with W = colMap.Length (contiguous maps copy spans).</summary>
    public static void GatherRows(Tensor src, long[] rowOffsets, long[] colMap, Tensor dst)
    {
        switch (Width(src.DType))
        {
            case 0: GatherRowsT<string>(src.Data, rowOffsets, colMap, dst.Data); break;
            case 1: GatherRowsT<byte>(src.Data, rowOffsets, colMap, dst.Data); break;
            case 2: GatherRowsT<ushort>(src.Data, rowOffsets, colMap, dst.Data); break;
            case 4: GatherRowsT<uint>(src.Data, rowOffsets, colMap, dst.Data); break;
            case 8: GatherRowsT<ulong>(src.Data, rowOffsets, colMap, dst.Data); break;
            default: throw new TapmlException($"cannot move {DTypes.Name(src.DType)} elements");
        }
    }

    static void GatherRowsT<T>(Array src, long[] rowOffsets, long[] colMap, Array dst)
    {
        long n = rowOffsets.Length, w = colMap.Length;
        if (n == 0 || w == 0) return;
        bool contiguous = true;
        for (long j = 1; j < w; j++) contiguous &= colMap[j] == colMap[0] + j;
        void Range(long i0, long i1)
        {
            var s = Raw<T>(src); var d = Raw<T>(dst);
            for (long i = i0; i < i1; i++)
            {
                long so = rowOffsets[i], dof = i * w;
                if (contiguous) s.Slice((int)(so + colMap[0]), (int)w).CopyTo(d.Slice((int)dof, (int)w));
                else for (long j = 0; j < w; j++) d[(int)(dof + j)] = s[(int)(so + colMap[j])];
            }
        }
        if (n * w >= ParallelMin && n > 1)
        {
            int chunks = (int)Math.Min(n, CpuThreads.Max * 4L);
            Parallel.For(0, chunks, CpuThreads.Options, c => Range(n * c / chunks, n * (c + 1) / chunks));
        }
        else Range(0, n);
    }

    /// <summary>dst[offsets[i] .. +block) = src[i·block .. (i+1)·block), in order of i (later writes win).</summary>
    public static void ScatterBlocks(Tensor src, long[] offsets, long block, Tensor dst)
    {
        switch (Width(src.DType))
        {
            case 0: ScatterBlocksT<string>(src.Data, offsets, block, dst.Data); break;
            case 1: ScatterBlocksT<byte>(src.Data, offsets, block, dst.Data); break;
            case 2: ScatterBlocksT<ushort>(src.Data, offsets, block, dst.Data); break;
            case 4: ScatterBlocksT<uint>(src.Data, offsets, block, dst.Data); break;
            case 8: ScatterBlocksT<ulong>(src.Data, offsets, block, dst.Data); break;
            default: throw new TapmlException($"cannot move {DTypes.Name(src.DType)} elements");
        }
    }

    static void ScatterBlocksT<T>(Array src, long[] offsets, long block, Array dst)
    {
        var s = Raw<T>(src); var d = Raw<T>(dst);
        for (long i = 0; i < offsets.Length; i++)
            s.Slice((int)(i * block), (int)block).CopyTo(d.Slice((int)offsets[i], (int)block));
    }

    /// <summary>Fills the whole of <paramref name="dst"/> with element <paramref name="index"/> of <paramref name="value"/>.</summary>
    public static void Fill(Tensor dst, Tensor value, long index = 0)
    {
        if (value.DType != dst.DType) throw new TapmlException($"fill of {DTypes.Name(dst.DType)} with {DTypes.Name(value.DType)}");
        switch (Width(dst.DType))
        {
            case 0: Raw<string>(dst.Data).Fill(Raw<string>(value.Data)[(int)index]); break;
            case 1: Raw<byte>(dst.Data).Fill(Raw<byte>(value.Data)[(int)index]); break;
            case 2: Raw<ushort>(dst.Data).Fill(Raw<ushort>(value.Data)[(int)index]); break;
            case 4: Raw<uint>(dst.Data).Fill(Raw<uint>(value.Data)[(int)index]); break;
            case 8: Raw<ulong>(dst.Data).Fill(Raw<ulong>(value.Data)[(int)index]); break;
        }
    }


    // ---------------------------------------------------------------- gathers along an axis

    /// <summary>out = x gathered along <paramref name="axis"/> at the (non-negative, in-range) positions
    /// <paramref name="idx"/>; the axis is replaced by <paramref name="idxShape"/>.</summary>
    public static Tensor GatherAxis(Tensor x, int axis, long[] idx, long[] idxShape)
    {
        long outer = 1, inner = 1, dim = x.Shape[axis];
        for (int i = 0; i < axis; i++) outer *= x.Shape[i];
        for (int i = axis + 1; i < x.Rank; i++) inner *= x.Shape[i];
        var shape = new List<long>();
        shape.AddRange(x.Shape.Take(axis)); shape.AddRange(idxShape); shape.AddRange(x.Shape.Skip(axis + 1));
        var r = Tensor.Zeros(x.DType, shape.ToArray());
        long n = idx.Length;
        var offs = new long[outer * n];
        for (long o = 0; o < outer; o++)
            for (long j = 0; j < n; j++) offs[o * n + j] = (o * dim + idx[j]) * inner;
        GatherBlocks(x, offs, inner, r);
        return r;
    }

    /// <summary>Sub-tensor x[..., start:start+len, ...] along <paramref name="axis"/>.</summary>
    public static Tensor SliceAxis(Tensor x, int axis, long start, long len)
    {
        var shape = (long[])x.Shape.Clone(); shape[axis] = len;
        var st = ShapeUtil.Strides(x.Shape);
        return Materialize(x, start * st[axis], st, shape);
    }

    /// <summary>Concatenation along <paramref name="axis"/> (all parts share dtype and the other dimensions).</summary>
    public static Tensor ConcatAxis(IReadOnlyList<Tensor> parts, int axis, Func<string, Exception> error)
    {
        var first = parts[0];
        var shape = (long[])first.Shape.Clone();
        long total = 0;
        foreach (var p in parts)
        {
            if (p.DType != first.DType) throw error($"inputs have different element types ({DTypes.Name(first.DType)} and {DTypes.Name(p.DType)})");
            if (p.Rank != first.Rank) throw error($"inputs have different ranks ({first.Describe()} and {p.Describe()})");
            for (int i = 0; i < p.Rank; i++)
                if (i != axis && p.Shape[i] != first.Shape[i]) throw error($"inputs {first.Describe()} and {p.Describe()} differ outside axis {axis}");
            total += p.Shape[axis];
        }
        shape[axis] = total;
        if (first.DType != DType.String)
        {
            // NOTE: every part is one contiguous run per outer index: block copies into an uninitialized output
            // (written completely) instead of a strided walk into a zeroed one.
            long outer = 1, inner = 1;
            for (int i = 0; i < axis; i++) outer *= shape[i];
            for (int i = axis + 1; i < shape.Length; i++) inner *= shape[i];
            var y = Tensor.Uninitialized(first.DType, shape);
            long rowOut = total * inner, at0 = 0;
            foreach (var p in parts)
            {
                long run = p.Shape[axis] * inner;
                for (long o = 0; o < outer; o++) Array.Copy(p.Data, o * run, y.Data, o * rowOut + at0, run);
                at0 += run;
            }
            return y;
        }
        var r = Tensor.Zeros(first.DType, shape);
        var dst = ShapeUtil.Strides(shape);
        long at = 0;
        foreach (var p in parts)
        {
            CopyStrided(p, 0, ShapeUtil.Strides(p.Shape), r, at * dst[axis], dst, p.Shape);
            at += p.Shape[axis];
        }
        return r;
    }

    /// <summary>Index tensor values as i64 (int32 or int64 inputs).</summary>
    public static long[] Ints(Tensor t) => t.ToInt64Array();
}
