namespace Tapml.Platforms.Cpu.Ops;

/// <summary>f32 convolution with im2col fused into the GEMM's B packing: each GEMM task writes the im2col values of
/// its k-block × column block straight into the packed panel layout, so the im2col matrix is never materialized
/// (it was written once, read back and packed: three passes over a matrix KSize times the image's size).</summary>
internal static unsafe class ConvFused
{
    /// <summary>Whether the fused path fits: a real window (pointwise convs read x as B already), enough output
    /// channels per group to fill the 6-row micro-kernel, few (image, group) pairs (each runs one parallel GEMM).</summary>
    public static bool Applies(int n, int m, int group, ConvGeom g) =>
        Blas.CanPackB && !g.IsPointwise && m / group >= 16 && (long)n * group <= 64 && g.OutSize > 0 && g.KSize > 0;

    /// <summary>y [N, M, Out...] = conv(x, w) + bias; per (image, group) C[mg, OutSize] += W[mg, cg·KSize]·im2col.</summary>
    public static float[] Run(float[] x, float[] w, float[]? bias, int n, int c, int m, int group, ConvGeom g)
    {
        int cg = c / group, mg = m / group;
        int kdim = checked(cg * g.KSize), outSize = g.OutSize;
        if ((long)n * m * outSize > Array.MaxLength) throw new Tapml.Core.UnsupportedException("Conv: the output would exceed one host array");
        var y = GC.AllocateUninitializedArray<float>(checked(n * m * outSize));
        if (bias is null) y.AsSpan().Clear();
        else
            for (int ni = 0; ni < n; ni++)
                for (int mi = 0; mi < m; mi++) y.AsSpan((ni * m + mi) * outSize, outSize).Fill(bias[mi]);
        fixed (float* px = x, pw = w, py = y)
        {
            for (int ni = 0; ni < n; ni++)
                for (int gi = 0; gi < group; gi++)
                {
                    var packer = new Packer(px + (long)(ni * c + gi * cg) * g.InSize, g);
                    Blas.SgemmPackedB(mg, outSize, kdim, pw + (long)gi * mg * kdim, kdim, packer.Pack,
                        py + (long)(ni * m + gi * mg) * outSize, outSize);
                }
        }
        return y;
    }

    sealed class Packer(float* x, ConvGeom g)
    {
        /// <summary>Rows p0..p0+kc (channel, kernel offset) × columns j0..j0+w (output positions) of the im2col
        /// matrix, written as NR-wide panels of kc rows; zeros where the window reads padding.</summary>
        public void Pack(float* dst, int p0, int kc, int j0, int w)
        {
            const int NR = Blas.PanelWidth;
            int r = g.R, last = r - 1;
            int outLast = g.Out[last], inLast = g.In[last], sL = g.S[last];
            Span<int> k = stackalloc int[r];
            float* row = stackalloc float[w + NR];
            int j1 = j0 + w;
            for (int pp = 0; pp < kc; pp++)
            {
                int prow = p0 + pp;
                int ch = prow / g.KSize, kidx = prow % g.KSize;
                for (int i = last; i >= 0; i--) { k[i] = kidx % g.K[i]; kidx /= g.K[i]; }
                int kOff = k[last] * g.D[last] - g.PadB[last]; // input index = ow·sL + kOff
                int owLo = kOff >= 0 ? 0 : Math.Min(outLast, (-kOff + sL - 1) / sL);
                int owHi = inLast - kOff <= 0 ? 0 : Math.Min(outLast, (inLast - kOff - 1) / sL + 1);
                float* xc = x + (long)ch * g.InSize;
                for (int j = j0; j < j1;)
                {
                    int oq = j / outLast, ow0 = j - oq * outLast, ow1 = Math.Min(outLast, ow0 + (j1 - j));
                    float* d = row + (j - j0) - ow0; // d[ow] for ow in [ow0, ow1)
                    int off = 0;
                    bool valid = true;
                    for (int jd = last - 1, rem = oq; jd >= 0; jd--)
                    {
                        int od = rem % g.Out[jd]; rem /= g.Out[jd];
                        int ij = od * g.S[jd] + k[jd] * g.D[jd] - g.PadB[jd];
                        if ((uint)ij >= (uint)g.In[jd]) { valid = false; break; }
                        off += ij * g.InStr[jd];
                    }
                    int lo = valid ? Math.Clamp(owLo, ow0, ow1) : ow1, hi = valid ? Math.Clamp(owHi, lo, ow1) : ow1;
                    for (int ow = ow0; ow < lo; ow++) d[ow] = 0;
                    float* src = xc + off + kOff;
                    if (sL == 1) Buffer.MemoryCopy(src + lo, d + lo, (hi - lo) * 4L, (hi - lo) * 4L);
                    else for (int ow = lo; ow < hi; ow++) d[ow] = src[ow * sL];
                    for (int ow = hi; ow < ow1; ow++) d[ow] = 0;
                    j += ow1 - ow0;
                }
                // Scatter the row into the panels (row pp of each NR-wide panel).
                for (int jp = 0; jp < w; jp += NR)
                {
                    float* pd = dst + (long)(jp / NR) * kc * NR + pp * NR;
                    int pw = Math.Min(NR, w - jp);
                    if (pw == NR)
                    {
                        System.Runtime.Intrinsics.Vector256.Store(System.Runtime.Intrinsics.Vector256.Load(row + jp), pd);
                        System.Runtime.Intrinsics.Vector256.Store(System.Runtime.Intrinsics.Vector256.Load(row + jp + 8), pd + 8);
                    }
                    else { int q = 0; for (; q < pw; q++) pd[q] = row[jp + q]; for (; q < NR; q++) pd[q] = 0; }
                }
            }
        }
    }
}
