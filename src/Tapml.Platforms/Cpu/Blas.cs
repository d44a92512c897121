using System.Numerics.Tensors;

namespace Tapml.Platforms.Cpu;

/// <summary>Dense f32/f64 matrix multiply shared by MatMul, Gemm, Conv (im2col) and friends.
/// C[m,n] = alpha·Σk A[m,k]·B[k,n] + beta·C[m,n], row-major with leading dimensions. Parallel over rows of C
/// (each row's sum runs over k in order, so results do not depend on the thread count).</summary>
public static class Blas
{
    /// <summary>Row-major SGEMM. <paramref name="transA"/>/<paramref name="transB"/> read A as [k,m] / B as [n,k].</summary>
    public static void Sgemm(bool transA, bool transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, float beta, Span<float> c, int ldc)
    {
        if (m == 0 || n == 0) return;
        if (beta == 0) for (int i = 0; i < m; i++) c.Slice(i * ldc, n).Clear();
        else if (beta != 1) for (int i = 0; i < m; i++) TensorPrimitives.Multiply(c.Slice(i * ldc, n), beta, c.Slice(i * ldc, n));
        if (k == 0 || alpha == 0) return;
        // NOTE: B transposed is packed once to [k,n] so the inner loop always streams contiguous rows of B.
        float[]? packedB = null;
        if (transB)
        {
            packedB = new float[(long)k * n];
            for (int j = 0; j < n; j++)
                for (int p = 0; p < k; p++) packedB[(long)p * n + j] = b[j * ldb + p];
        }
        unsafe
        {
            fixed (float* pa = a, pb0 = b, pc = c, ppk = packedB)
            {
                float* pb = transB ? ppk : pb0;
                int ldbb = transB ? n : ldb;
                nint A = (nint)pa, B = (nint)pb, C = (nint)pc;
                long work = (long)m * n * k;
                int threads = work < 1 << 16 ? 1 : Environment.ProcessorCount;
                if (threads == 1)
                    for (int i = 0; i < m; i++) Row(i, transA, n, k, alpha, (float*)A, lda, (float*)B, ldbb, (float*)C, ldc);
                else
                    Parallel.For(0, m, new ParallelOptions { MaxDegreeOfParallelism = threads },
                        i => Row(i, transA, n, k, alpha, (float*)A, lda, (float*)B, ldbb, (float*)C, ldc));
            }
        }
    }

    static unsafe void Row(int i, bool transA, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float* c, int ldc)
    {
        var crow = new Span<float>(c + (long)i * ldc, n);
        for (int p = 0; p < k; p++)
        {
            float av = transA ? a[(long)p * lda + i] : a[(long)i * lda + p];
            TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(b + (long)p * ldb, n), alpha * av, crow, crow);
        }
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
