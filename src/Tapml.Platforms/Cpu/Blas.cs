using System.Buffers;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Tapml.Platforms.Cpu;

/// <summary>Dense f32/f64 matrix multiply shared by MatMul, Gemm, Conv (im2col) and friends.
/// C[m,n] = alpha·Σk A[m,k]·B[k,n] + beta·C[m,n], row-major with leading dimensions.
/// Determinism: every element of C is accumulated as acc = C; for p = 0..k-1 (in k-blocks of fixed size, in order):
/// acc = fma(alpha·A[i,p], B[p,j], acc). The blocking depends only on (m, n, k), never on the thread count, so
/// results do not depend on how many threads run.</summary>
public static class Blas
{
    // Micro-tile MR×NR (6 rows × two 8-float vectors), k-block KC, column block NC (a multiple of NR).
    const int MR = 6, NR = 16, KC = 256, NC = 256;
    // Below this many rows the packed path costs more than it saves: rows are streamed against B directly.
    const int SmallM = 4;
    const long ParallelWork = 1 << 16;

    /// <summary>Row-major SGEMM. <paramref name="transA"/>/<paramref name="transB"/> read A as [k,m] / B as [n,k].
    /// <paramref name="threads"/> false keeps the call on the calling thread (a caller that parallelizes over tiles).</summary>
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc, bool threads = true)
    {
        if (m == 0 || n == 0) return;
        if (beta == 0) for (int i = 0; i < m; i++) c.Slice(i * ldc, n).Clear();
        else if (beta != 1) for (int i = 0; i < m; i++) TensorPrimitives.Multiply(c.Slice(i * ldc, n), beta, c.Slice(i * ldc, n));
        if (k == 0 || alpha == 0) return;
        if (transA ? a.Length < (long)(k - 1) * lda + m : a.Length < (long)(m - 1) * lda + k)
            throw new ArgumentException("Sgemm: A is too small");
        if (transB ? b.Length < (long)(n - 1) * ldb + k : b.Length < (long)(k - 1) * ldb + n)
            throw new ArgumentException("Sgemm: B is too small");
        if (c.Length < (long)(m - 1) * ldc + n) throw new ArgumentException("Sgemm: C is too small");
        unsafe
        {
            fixed (float* pa = a, pb = b, pc = c)
            {
                var g = new GemmArgs { A = pa, B = pb, C = pc, Lda = lda, Ldb = ldb, Ldc = ldc, M = m, N = n, K = k, Alpha = alpha, TransA = transA, TransB = transB };
                bool parallel = threads && (long)m * n * k >= ParallelWork && CpuThreads.Max > 1;
                if (m < SmallM) SmallRows(g, parallel);
                else Packed(g, parallel);
            }
        }
    }

    /// <summary>Writes B[p0..p0+kc, j0..j0+w) in packed layout: NR-column panels of kc rows of NR floats, zero
    /// beyond w (the layout <see cref="PackB"/> produces).</summary>
    internal unsafe delegate void PanelPacker(float* dst, int p0, int kc, int j0, int w);

    /// <summary>C[m,n] += A[m,k]·B[k,n] with B never materialized: <paramref name="packB"/> writes its packed panels
    /// (conv: im2col straight into the panel layout). Same arithmetic as <see cref="Sgemm"/> with alpha = beta = 1.
    /// Needs FMA (<see cref="CanPackB"/>).</summary>
    internal static unsafe void SgemmPackedB(int m, int n, int k, float* a, int lda, PanelPacker packB, float* c, int ldc)
    {
        if (m == 0 || n == 0 || k == 0) return;
        var g = new GemmArgs { A = a, C = c, Lda = lda, Ldc = ldc, M = m, N = n, K = k, Alpha = 1f, Packer = packB };
        Packed(g, (long)m * n * k >= ParallelWork && CpuThreads.Max > 1);
    }

    internal static bool CanPackB => Fma.IsSupported;

    /// <summary>Column width of a packed B panel.</summary>
    internal const int PanelWidth = NR;

    unsafe struct GemmArgs
    {
        public PanelPacker? Packer;
        public float* A, B, C;
        public int Lda, Ldb, Ldc, M, N, K;
        public float Alpha;
        public bool TransA, TransB;
        public float GetA(int i, int p) => TransA ? A[(long)p * Lda + i] : A[(long)i * Lda + p];
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static float Fmaf(float x, float y, float acc) => Fma.IsSupported ? MathF.FusedMultiplyAdd(x, y, acc) : x * y + acc;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static Vector256<float> Fmav(Vector256<float> x, Vector256<float> y, Vector256<float> acc) =>
        Fma.IsSupported ? Fma.MultiplyAdd(x, y, acc) : x * y + acc;

    // ---------------------------------------------------------------- few rows (matrix-vector and friends)

    /// <summary>m &lt; SmallM: each row of A is scaled by alpha into a contiguous buffer; the work is split over C's
    /// columns (and k-blocks), so a matrix-vector product parallelizes over n.</summary>
    static unsafe void SmallRows(GemmArgs g, bool parallel)
    {
        int m = g.M, n = g.N, k = g.K;
        var rows = new float[(long)m * k];
        for (int i = 0; i < m; i++)
            for (int p = 0; p < k; p++) rows[(long)i * k + p] = g.Alpha * g.GetA(i, p);
        fixed (float* pr = rows)
        {
            nint R = (nint)pr;
            if (g.TransB)
            {
                // C[i,j] += dot(alpha·A[i,:], B[j,:]): contiguous dot products over fixed column chunks.
                const int chunk = 16;
                int chunks = (n + chunk - 1) / chunk;
                if (!parallel) for (int t = 0; t < chunks; t++) DotChunk(g, (float*)R, t * chunk, Math.Min(n, t * chunk + chunk));
                else Parallel.For(0, chunks, CpuThreads.Options, t => DotChunk(g, (float*)R, t * chunk, Math.Min(n, t * chunk + chunk)));
                return;
            }
            // B streamed by rows: tasks are (row of A, column chunk, k-block), each writing its own partial sums; the
            // partials are then added to C in k-block order. Chunk and block sizes are fixed, never thread-derived.
            int nChunks = (n + SmallW - 1) / SmallW, kBlocks = (k + SmallKB - 1) / SmallKB;
            var part = ArrayPool<float>.Shared.Rent(checked(m * kBlocks * n));
            try
            {
            fixed (float* pp = part)
            {
                nint P = (nint)pp;
                int tasks = m * nChunks * kBlocks;
                if (!parallel) for (int t = 0; t < tasks; t++) AxpyBlock(g, (float*)R, (float*)P, t, nChunks, kBlocks);
                else Parallel.For(0, tasks, CpuThreads.Options, t => AxpyBlock(g, (float*)R, (float*)P, t, nChunks, kBlocks));
                for (int i = 0; i < m; i++)
                {
                    var crow = new Span<float>(g.C + (long)i * g.Ldc, n);
                    for (int kb = 0; kb < kBlocks; kb++)
                        TensorPrimitives.Add(crow, new ReadOnlySpan<float>((float*)P + ((long)i * kBlocks + kb) * n, n), crow);
                }
            }
            }
            finally { ArrayPool<float>.Shared.Return(part); }
        }
    }

    // Wide column chunks and short k-blocks: each task streams a contiguous stretch of B (rows are read whole).
    const int SmallW = 4096, SmallKB = 64;

    /// <summary>part[i, kb, j0..j1] = Σ over p in k-block kb of alpha·A[i,p]·B[p,j] (in p order).</summary>
    static unsafe void AxpyBlock(GemmArgs g, float* rows, float* part, int t, int nChunks, int kBlocks)
    {
        int jc = t % nChunks, rest = t / nChunks, kb = rest % kBlocks, i = rest / kBlocks;
        int n = g.N, j0 = jc * SmallW, w = Math.Min(SmallW, n - j0);
        int p0 = kb * SmallKB, p1 = Math.Min(g.K, p0 + SmallKB);
        float* dst = part + ((long)i * kBlocks + kb) * n + j0;
        float* ar = rows + (long)i * g.K;
        new Span<float>(dst, w).Clear();
        // NOTE: four rows of B per sweep over the partial row (d = fma chain of 4), so d is loaded and stored a
        // quarter as often; each element's order is p ascending, fixed by the shape.
        long ldb = g.Ldb;
        int p = p0;
        for (; p + 4 <= p1; p += 4)
        {
            float* b0 = g.B + p * ldb + j0, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb;
            float s0 = ar[p], s1 = ar[p + 1], s2 = ar[p + 2], s3 = ar[p + 3];
            var v0 = Vector256.Create(s0); var v1 = Vector256.Create(s1); var v2 = Vector256.Create(s2); var v3 = Vector256.Create(s3);
            int j = 0;
            for (; j + 8 <= w; j += 8)
            {
                var acc = Vector256.Load(dst + j);
                acc = Fmav(v0, Vector256.Load(b0 + j), acc);
                acc = Fmav(v1, Vector256.Load(b1 + j), acc);
                acc = Fmav(v2, Vector256.Load(b2 + j), acc);
                acc = Fmav(v3, Vector256.Load(b3 + j), acc);
                acc.Store(dst + j);
            }
            for (; j < w; j++) dst[j] = Fmaf(s3, b3[j], Fmaf(s2, b2[j], Fmaf(s1, b1[j], Fmaf(s0, b0[j], dst[j]))));
        }
        for (; p < p1; p++)
        {
            float* b0 = g.B + p * ldb + j0;
            float s0 = ar[p];
            var v0 = Vector256.Create(s0);
            int j = 0;
            for (; j + 8 <= w; j += 8) Fmav(v0, Vector256.Load(b0 + j), Vector256.Load(dst + j)).Store(dst + j);
            for (; j < w; j++) dst[j] = Fmaf(s0, b0[j], dst[j]);
        }
    }

    static unsafe void DotChunk(GemmArgs g, float* rows, int j0, int j1)
    {
        for (int i = 0; i < g.M; i++)
        {
            float* ar = rows + (long)i * g.K;
            float* cr = g.C + (long)i * g.Ldc;
            for (int j = j0; j < j1; j++) cr[j] += Dot(ar, g.B + (long)j * g.Ldb, g.K);
        }
    }

    static unsafe float Dot(float* x, float* y, int k)
    {
        int p = 0;
        float s = 0;
        if (Vector256.IsHardwareAccelerated && k >= 32)
        {
            var s0 = Vector256<float>.Zero; var s1 = s0; var s2 = s0; var s3 = s0;
            for (; p + 32 <= k; p += 32)
            {
                s0 = Fmav(Vector256.Load(x + p), Vector256.Load(y + p), s0);
                s1 = Fmav(Vector256.Load(x + p + 8), Vector256.Load(y + p + 8), s1);
                s2 = Fmav(Vector256.Load(x + p + 16), Vector256.Load(y + p + 16), s2);
                s3 = Fmav(Vector256.Load(x + p + 24), Vector256.Load(y + p + 24), s3);
            }
            s = Vector256.Sum((s0 + s1) + (s2 + s3));
        }
        for (; p < k; p++) s = Fmaf(x[p], y[p], s);
        return s;
    }

    // ---------------------------------------------------------------- packed, cache-blocked path

    [ThreadStatic] static float[]? _bpack;

    /// <summary>Packed path (GotoBLAS order). alpha·A is packed once per call into MR-row panels per k-block; C is cut
    /// into tasks of (row range, column block); each task packs its kc×nc slice of B per k-block into a thread-local
    /// buffer (L2) and runs the micro-kernel over NR-column panels (B micro-panel in L1) × MR-row panels (A from L2).
    /// The task split may depend on the thread count: every element of C still sees the same k-blocks in order.</summary>
    static unsafe void Packed(GemmArgs g, bool parallel)
    {
        int m = g.M, n = g.N, k = g.K;
        int rowPanels = (m + MR - 1) / MR;
        int threads = parallel ? CpuThreads.Max : 1;
        // NOTE: column blocks shrink (to 64) and then row ranges split until there are ~2 tasks per thread.
        int ncb = NC;
        while (ncb > 64 && (n + ncb - 1) / ncb < 2 * threads) ncb /= 2;
        int nBlocks = (n + ncb - 1) / ncb;
        int mBlocks = 1;
        if (nBlocks < 2 * threads) mBlocks = Math.Min(rowPanels, (2 * threads + nBlocks - 1) / nBlocks);
        int panelsPerM = (rowPanels + mBlocks - 1) / mBlocks;
        mBlocks = (rowPanels + panelsPerM - 1) / panelsPerM;
        // NOTE: with alpha = 1 and A not transposed the kernel reads A's rows in place (alpha·A = A exactly, so the
        // arithmetic is the same); packing a large A (conv weights) would cost a full extra pass over it.
        bool direct = !g.TransA && g.Alpha == 1f && Fma.IsSupported;
        float[] apack = ArrayPool<float>.Shared.Rent(direct ? 1 : checked(rowPanels * MR * k));
        try
        {
            fixed (float* pap = apack)
            {
                nint AP = direct ? 0 : (nint)pap;
                if (direct) { }
                else if (parallel && rowPanels > 1 && (long)m * k >= 1 << 15)
                    Parallel.For(0, rowPanels, CpuThreads.Options, r => PackA(g, (float*)AP, r));
                else for (int r = 0; r < rowPanels; r++) PackA(g, (float*)AP, r);
                int tasks = mBlocks * nBlocks;
                if (parallel && tasks > 1)
                    Parallel.For(0, tasks, CpuThreads.Options, t => Task(g, (float*)AP, t % mBlocks * panelsPerM, panelsPerM, t / mBlocks * ncb, ncb));
                else for (int t = 0; t < tasks; t++) Task(g, (float*)AP, t % mBlocks * panelsPerM, panelsPerM, t / mBlocks * ncb, ncb);
            }
        }
        finally { ArrayPool<float>.Shared.Return(apack); }
    }

    /// <summary>Packs alpha·A's row panel r (rows r·MR..+MR, zero beyond m) for every k-block: block p0 starts at
    /// rowPanels·MR·p0, the panel at r·kc·MR within it, kc rows of MR floats.</summary>
    static unsafe void PackA(GemmArgs g, float* apack, int r)
    {
        int rowPanels = (g.M + MR - 1) / MR;
        int kb = KBlock(g.K);
        for (int p0 = 0; p0 < g.K; p0 += kb)
        {
            int kc = Math.Min(kb, g.K - p0);
            float* dst = apack + (long)rowPanels * MR * p0 + (long)r * kc * MR;
            for (int ii = 0; ii < MR; ii++)
            {
                int i = r * MR + ii;
                if (i >= g.M) { for (int p = 0; p < kc; p++) dst[p * MR + ii] = 0; continue; }
                if (g.TransA) { float* src = g.A + (long)p0 * g.Lda + i; for (int p = 0; p < kc; p++) dst[p * MR + ii] = g.Alpha * src[(long)p * g.Lda]; }
                else { float* src = g.A + (long)i * g.Lda + p0; for (int p = 0; p < kc; p++) dst[p * MR + ii] = g.Alpha * src[p]; }
            }
        }
    }

    /// <summary>Packs B[p0..p0+kc, j0..j0+w) as NR-column panels of kc rows of NR floats (zero beyond w).</summary>
    static unsafe void PackB(GemmArgs g, float* dst, int p0, int kc, int j0, int w)
    {
        for (int jp = 0; jp < w; jp += NR, dst += (long)kc * NR)
        {
            int pw = Math.Min(NR, w - jp);
            if (!g.TransB)
            {
                float* src = g.B + (long)p0 * g.Ldb + j0 + jp;
                if (pw == NR)
                    for (int p = 0; p < kc; p++, src += g.Ldb)
                    { Vector256.Store(Vector256.Load(src), dst + p * NR); Vector256.Store(Vector256.Load(src + 8), dst + p * NR + 8); }
                else
                    for (int p = 0; p < kc; p++, src += g.Ldb)
                    { float* d = dst + p * NR; int jj = 0; for (; jj < pw; jj++) d[jj] = src[jj]; for (; jj < NR; jj++) d[jj] = 0; }
            }
            else
            {
                for (int jj = 0; jj < NR; jj++)
                {
                    if (jj >= pw) { for (int p = 0; p < kc; p++) dst[p * NR + jj] = 0; continue; }
                    float* src = g.B + (long)(j0 + jp + jj) * g.Ldb + p0;
                    for (int p = 0; p < kc; p++) dst[p * NR + jj] = src[p];
                }
            }
        }
    }

    /// <summary>k-block size: k cut into equal blocks of at most KC (576 → 3 × 192, not 256 + 256 + 64), so no
    /// block is so short that loading and storing the C tile dominates. The arithmetic does not depend on it (C
    /// holds the exact f32 accumulator between blocks).</summary>
    static int KBlock(int k) { int blocks = (k + KC - 1) / KC; return (k + blocks - 1) / blocks; }

    // Rows of A per L2 sweep inside a task (A block MCI×KC plus the B block KC×NC fit the 512 KiB L2).
    const int MCI = 120;

    /// <summary>C[rows of panels r0..r0+rn, columns j0..j0+ncb) over all k-blocks in order.</summary>
    static unsafe void Task(GemmArgs g, float* apack, int r0, int rn, int j0, int ncb)
    {
        int rowPanels = (g.M + MR - 1) / MR;
        int r1 = Math.Min(rowPanels, r0 + rn);
        int j1 = Math.Min(g.N, j0 + ncb), w = j1 - j0;
        if (r1 <= r0 || w <= 0) return;
        int wPanels = (w + NR - 1) / NR;
        var bp = _bpack;
        if (bp is null || bp.Length < KC * NC) _bpack = bp = new float[KC * NC];
        float* tile = stackalloc float[MR * NR];
        float* zeros = stackalloc float[KC];
        new Span<float>(zeros, KC).Clear();
        bool direct = apack == null;
        float** rows = stackalloc float*[MR];
        fixed (float* bpack = bp)
        {
            int kb = KBlock(g.K);
            for (int p0 = 0; p0 < g.K; p0 += kb)
            {
                int kc = Math.Min(kb, g.K - p0);
                if (g.Packer != null) g.Packer(bpack, p0, kc, j0, w); else PackB(g, bpack, p0, kc, j0, w);
                float* ablock = apack + (long)rowPanels * MR * p0;
                for (int rc = r0; rc < r1; rc += MCI / MR)
                {
                    int rcEnd = Math.Min(r1, rc + MCI / MR);
                    for (int jp = 0; jp < wPanels; jp++)
                    {
                        float* b = bpack + (long)jp * kc * NR;
                        int j = j0 + jp * NR, cw = Math.Min(NR, j1 - j);
                        for (int r = rc; r < rcEnd; r++)
                        {
                            float* a = ablock + (long)r * kc * MR;
                            int i = r * MR, h = Math.Min(MR, g.M - i);
                            float* c = g.C + (long)i * g.Ldc + j;
                            if (direct)
                                for (int y = 0; y < MR; y++) rows[y] = y < h ? g.A + (long)(i + y) * g.Lda + p0 : zeros;
                            if (r + 1 < rcEnd && Sse.IsSupported)
                            {
                                // NOTE: C tiles come from memory (C is far larger than the caches): the next tile's
                                // rows are prefetched while this kernel runs, so its loads do not stall.
                                float* cn = c + (long)MR * g.Ldc;
                                for (int y = 0; y < MR; y++) { Sse.Prefetch0(cn + (long)y * g.Ldc); Sse.Prefetch0(cn + (long)y * g.Ldc + NR - 1); }
                            }
                            if (h == MR && cw == NR)
                            {
                                if (direct) KernelDirect(kc, rows, b, c, g.Ldc); else Kernel(kc, a, b, c, g.Ldc);
                                continue;
                            }
                            // Edge tile: same kernel on a zero-padded copy, so edge elements get the same arithmetic.
                            for (int x = 0; x < MR * NR; x++) tile[x] = 0;
                            for (int y = 0; y < h; y++) for (int x = 0; x < cw; x++) tile[y * NR + x] = c[(long)y * g.Ldc + x];
                            if (direct) KernelDirect(kc, rows, b, tile, NR); else Kernel(kc, a, b, tile, NR);
                            for (int y = 0; y < h; y++) for (int x = 0; x < cw; x++) c[(long)y * g.Ldc + x] = tile[y * NR + x];
                        }
                    }
                }
            }
        }
    }

    /// <summary>C[6×16] = fma over p of A panel (kc×6) and B panel (kc×16), accumulators start at C.</summary>
    static unsafe void Kernel(int kc, float* a, float* b, float* c, int ldc)
    {
        if (!Vector256.IsHardwareAccelerated)
        {
            for (int p = 0; p < kc; p++, a += MR, b += NR)
                for (int r = 0; r < MR; r++)
                    for (int x = 0; x < NR; x++) c[(long)r * ldc + x] = Fmaf(a[r], b[x], c[(long)r * ldc + x]);
            return;
        }
        float* c1p = c + ldc, c2p = c1p + ldc, c3p = c2p + ldc, c4p = c3p + ldc, c5p = c4p + ldc;
        var c00 = Vector256.Load(c); var c01 = Vector256.Load(c + 8);
        var c10 = Vector256.Load(c1p); var c11 = Vector256.Load(c1p + 8);
        var c20 = Vector256.Load(c2p); var c21 = Vector256.Load(c2p + 8);
        var c30 = Vector256.Load(c3p); var c31 = Vector256.Load(c3p + 8);
        var c40 = Vector256.Load(c4p); var c41 = Vector256.Load(c4p + 8);
        var c50 = Vector256.Load(c5p); var c51 = Vector256.Load(c5p + 8);
        if (Fma.IsSupported)
        {
            // NOTE: explicit vbroadcastss from memory + vfmadd: 12 accumulators, 2 B vectors, 1 broadcast = 15 ymm.
            for (int p = 0; p < kc; p++, a += MR, b += NR)
            {
                var b0 = Avx.LoadVector256(b); var b1 = Avx.LoadVector256(b + 8);
                var av = Avx.BroadcastScalarToVector256(a); c00 = Fma.MultiplyAdd(av, b0, c00); c01 = Fma.MultiplyAdd(av, b1, c01);
                av = Avx.BroadcastScalarToVector256(a + 1); c10 = Fma.MultiplyAdd(av, b0, c10); c11 = Fma.MultiplyAdd(av, b1, c11);
                av = Avx.BroadcastScalarToVector256(a + 2); c20 = Fma.MultiplyAdd(av, b0, c20); c21 = Fma.MultiplyAdd(av, b1, c21);
                av = Avx.BroadcastScalarToVector256(a + 3); c30 = Fma.MultiplyAdd(av, b0, c30); c31 = Fma.MultiplyAdd(av, b1, c31);
                av = Avx.BroadcastScalarToVector256(a + 4); c40 = Fma.MultiplyAdd(av, b0, c40); c41 = Fma.MultiplyAdd(av, b1, c41);
                av = Avx.BroadcastScalarToVector256(a + 5); c50 = Fma.MultiplyAdd(av, b0, c50); c51 = Fma.MultiplyAdd(av, b1, c51);
            }
        }
        else
        {
            for (int p = 0; p < kc; p++, a += MR, b += NR)
            {
                var b0 = Vector256.Load(b); var b1 = Vector256.Load(b + 8);
                var av = Vector256.Create(a[0]); c00 = Fmav(av, b0, c00); c01 = Fmav(av, b1, c01);
                av = Vector256.Create(a[1]); c10 = Fmav(av, b0, c10); c11 = Fmav(av, b1, c11);
                av = Vector256.Create(a[2]); c20 = Fmav(av, b0, c20); c21 = Fmav(av, b1, c21);
                av = Vector256.Create(a[3]); c30 = Fmav(av, b0, c30); c31 = Fmav(av, b1, c31);
                av = Vector256.Create(a[4]); c40 = Fmav(av, b0, c40); c41 = Fmav(av, b1, c41);
                av = Vector256.Create(a[5]); c50 = Fmav(av, b0, c50); c51 = Fmav(av, b1, c51);
            }
        }
        c00.Store(c); c01.Store(c + 8); c10.Store(c1p); c11.Store(c1p + 8); c20.Store(c2p); c21.Store(c2p + 8);
        c30.Store(c3p); c31.Store(c3p + 8); c40.Store(c4p); c41.Store(c4p + 8); c50.Store(c5p); c51.Store(c5p + 8);
    }

    /// <summary><see cref="Kernel"/> with A read in place: row r of the 6×kc A block at rows[r][0..kc) (FMA only).</summary>
    static unsafe void KernelDirect(int kc, float** rows, float* b, float* c, int ldc)
    {
        float* a0 = rows[0], a1 = rows[1], a2 = rows[2], a3 = rows[3], a4 = rows[4], a5 = rows[5];
        float* c1p = c + ldc, c2p = c1p + ldc, c3p = c2p + ldc, c4p = c3p + ldc, c5p = c4p + ldc;
        var c00 = Vector256.Load(c); var c01 = Vector256.Load(c + 8);
        var c10 = Vector256.Load(c1p); var c11 = Vector256.Load(c1p + 8);
        var c20 = Vector256.Load(c2p); var c21 = Vector256.Load(c2p + 8);
        var c30 = Vector256.Load(c3p); var c31 = Vector256.Load(c3p + 8);
        var c40 = Vector256.Load(c4p); var c41 = Vector256.Load(c4p + 8);
        var c50 = Vector256.Load(c5p); var c51 = Vector256.Load(c5p + 8);
        for (int p = 0; p < kc; p++, b += NR)
        {
            var b0 = Avx.LoadVector256(b); var b1 = Avx.LoadVector256(b + 8);
            var av = Avx.BroadcastScalarToVector256(a0 + p); c00 = Fma.MultiplyAdd(av, b0, c00); c01 = Fma.MultiplyAdd(av, b1, c01);
            av = Avx.BroadcastScalarToVector256(a1 + p); c10 = Fma.MultiplyAdd(av, b0, c10); c11 = Fma.MultiplyAdd(av, b1, c11);
            av = Avx.BroadcastScalarToVector256(a2 + p); c20 = Fma.MultiplyAdd(av, b0, c20); c21 = Fma.MultiplyAdd(av, b1, c21);
            av = Avx.BroadcastScalarToVector256(a3 + p); c30 = Fma.MultiplyAdd(av, b0, c30); c31 = Fma.MultiplyAdd(av, b1, c31);
            av = Avx.BroadcastScalarToVector256(a4 + p); c40 = Fma.MultiplyAdd(av, b0, c40); c41 = Fma.MultiplyAdd(av, b1, c41);
            av = Avx.BroadcastScalarToVector256(a5 + p); c50 = Fma.MultiplyAdd(av, b0, c50); c51 = Fma.MultiplyAdd(av, b1, c51);
        }
        c00.Store(c); c01.Store(c + 8); c10.Store(c1p); c11.Store(c1p + 8); c20.Store(c2p); c21.Store(c2p + 8);
        c30.Store(c3p); c31.Store(c3p + 8); c40.Store(c4p); c41.Store(c4p + 8); c50.Store(c5p); c51.Store(c5p + 8);
    }

    /// <summary>Row-major DGEMM (no transposes; f64 models are rare, clarity over speed).</summary>
    public static void Dgemm(int m, int n, int k, ReadOnlySpan<double> a, ReadOnlySpan<double> b, Span<double> c)
    {
        for (int i = 0; i < m; i++)
        {
            var crow = c.Slice(i * n, n);
            crow.Clear();
            for (int p = 0; p < k; p++)
            {
                double av = a[i * k + p];
                TensorPrimitives.MultiplyAdd(b.Slice(p * n, n), av, crow, crow);
            }
        }
    }
}
