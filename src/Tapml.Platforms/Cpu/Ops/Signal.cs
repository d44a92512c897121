using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>DFT, STFT, HannWindow, HammingWindow, BlackmanWindow, MelWeightMatrix. Transforms compute in double
/// (as the ONNX reference's float64 FFT does) and round once.</summary>
public sealed class Signal : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("DFT", DftOp, sinceOpset: 17);
        r.Add("STFT", StftOp, sinceOpset: 17);
        r.Add("HannWindow", (c, i) => Window(c, i, 0), sinceOpset: 17);
        r.Add("HammingWindow", (c, i) => Window(c, i, 1), sinceOpset: 17);
        r.Add("BlackmanWindow", (c, i) => Window(c, i, 2), sinceOpset: 17);
        r.Add("MelWeightMatrix", MelOp, sinceOpset: 17);
    }

    // ---------------------------------------------------------------- transform core

    /// <summary>Plan for DFTs of one length: radix-2 FFT for powers of two, direct sum otherwise.</summary>
    sealed class DftPlan
    {
        public readonly int L;
        readonly double[] _cos, _sin; // exp(-2πi k/L) = cos - i sin
        readonly bool _pow2;

        public DftPlan(int l)
        {
            L = l;
            _cos = new double[l]; _sin = new double[l];
            for (int k = 0; k < l; k++)
            {
                double a = 2 * Math.PI * k / l;
                _cos[k] = Math.Cos(a); _sin[k] = Math.Sin(a);
            }
            _pow2 = l > 0 && (l & (l - 1)) == 0;
        }

        /// <summary>In place: (re, im) ← DFT (sign -1) or unnormalized inverse (sign +1).</summary>
        public void Run(double[] re, double[] im, bool inverse, double[] tre, double[] tim)
        {
            int l = L;
            double sg = inverse ? 1 : -1;
            if (!_pow2)
            {
                for (int k = 0; k < l; k++)
                {
                    double sr = 0, si = 0;
                    long kn = 0;
                    for (int n = 0; n < l; n++)
                    {
                        int t = (int)kn;
                        double c = _cos[t], s = sg * _sin[t];
                        sr += re[n] * c - im[n] * s;
                        si += re[n] * s + im[n] * c;
                        kn += k; if (kn >= l) kn -= l;
                    }
                    tre[k] = sr; tim[k] = si;
                }
                Array.Copy(tre, re, l); Array.Copy(tim, im, l);
                return;
            }
            // bit reversal
            for (int i = 1, j = 0; i < l; i++)
            {
                int bit = l >> 1;
                for (; (j & bit) != 0; bit >>= 1) j ^= bit;
                j ^= bit;
                if (i < j) { (re[i], re[j]) = (re[j], re[i]); (im[i], im[j]) = (im[j], im[i]); }
            }
            for (int len = 2; len <= l; len <<= 1)
            {
                int half = len >> 1, step = l / len;
                for (int i = 0; i < l; i += len)
                    for (int k = 0; k < half; k++)
                    {
                        double c = _cos[k * step], s = sg * _sin[k * step];
                        int a = i + k, b = a + half;
                        double xr = re[b] * c - im[b] * s, xi = re[b] * s + im[b] * c;
                        re[b] = re[a] - xr; im[b] = im[a] - xi;
                        re[a] += xr; im[a] += xi;
                    }
            }
        }
    }

    /// <summary>DFT over axis of x viewed as [outer, n, inner, c] (c = 1 real or 2 complex). Output
    /// [outer, outLen, inner, 2] in double.</summary>
    static double[] Transform(double[] x, long outer, long n, long inner, int c, int dftLen, bool inverse, bool onesided, out int outLen)
    {
        outLen = onesided ? dftLen / 2 + 1 : dftLen;
        var y = new double[outer * outLen * inner * 2];
        var plan = new DftPlan(dftLen);
        int ol = outLen;
        Parallel.For(0, outer * inner, CpuThreads.Options, () => (new double[dftLen], new double[dftLen], new double[dftLen], new double[dftLen]),
            (line, _, buf) =>
            {
                var (re, im, tre, tim) = buf;
                long o = line / inner, i = line % inner;
                Array.Clear(re); Array.Clear(im);
                long m = Math.Min(n, dftLen); // zero-padded or truncated to dft_length
                for (long k = 0; k < m; k++)
                {
                    long src = ((o * n + k) * inner + i) * c;
                    re[k] = x[src];
                    if (c == 2) im[k] = x[src + 1];
                }
                plan.Run(re, im, inverse, tre, tim);
                double norm = inverse ? 1.0 / dftLen : 1.0;
                for (int k = 0; k < ol; k++)
                {
                    long dst = ((o * ol + k) * inner + i) * 2;
                    y[dst] = re[k] * norm; y[dst + 1] = im[k] * norm;
                }
                return buf;
            }, _ => { });
        return y;
    }

    // ---------------------------------------------------------------- DFT

    static Value?[] DftOp(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (!DTypes.IsFloat(x.DType)) throw ctx.Unsupported($"{DTypes.Name(x.DType)} input");
        int r = x.Rank;
        if (r < 2) throw ctx.Error("input must have rank >= 2 (last dimension is 1 or 2)");
        int c = (int)x.Shape[^1];
        if (c is not (1 or 2)) throw ctx.Error($"last dimension must be 1 (real) or 2 (complex), got {c}");
        bool inverse = ctx.Int("inverse", 0) != 0;
        bool onesided = ctx.Int("onesided", 0) != 0;
        long axisV;
        if (ctx.Opset >= 20)
        {
            var at = inputs.OptT(2);
            axisV = at is null || at.Length == 0 ? -2 : SpecialHelpers.ScalarInt(at, ctx, "axis");
        }
        else axisV = ctx.Int("axis", 1);
        // The axis counts the input's dimensions, the trailing complex dimension included; it may not be that one.
        int axis = (int)(axisV < 0 ? axisV + r : axisV);
        if (axis < 0 || axis >= r - 1) throw ctx.Error($"axis {axisV} is out of range for rank {r}");
        var lenT = inputs.OptT(1);
        long dftLen = lenT is null || lenT.Length == 0 ? x.Shape[axis] : SpecialHelpers.ScalarInt(lenT, ctx, "dft_length");
        if (dftLen < 1) throw ctx.Error($"dft_length must be positive, got {dftLen}");
        if (inverse && onesided) throw ctx.Unsupported("inverse with onesided=1 (the spec's one-sided inverse is not settled across versions)");
        long outer = 1, inner = 1;
        for (int d = 0; d < axis; d++) outer *= x.Shape[d];
        for (int d = axis + 1; d < r - 1; d++) inner *= x.Shape[d];
        var y = Transform(SpecialHelpers.ToDoubles(x), outer, x.Shape[axis], inner, c, (int)dftLen, inverse, onesided, out int outLen);
        var shape = (long[])x.Shape.Clone();
        shape[axis] = outLen; shape[^1] = 2;
        return [SpecialHelpers.FromDoubles(y, x.DType, shape)];
    }

    // ---------------------------------------------------------------- STFT

    static Value?[] StftOp(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (!DTypes.IsFloat(x.DType)) throw ctx.Unsupported($"{DTypes.Name(x.DType)} input");
        if (x.Rank != 3 || x.Shape[2] is not (1 or 2)) throw ctx.Error($"signal must be [batch, length, 1|2], got {x.Describe()}");
        long step = SpecialHelpers.ScalarInt(inputs.T(1, ctx), ctx, "frame_step");
        var window = inputs.OptT(2);
        var flT = inputs.OptT(3);
        bool onesided = ctx.Int("onesided", 1) != 0;
        long B = x.Shape[0], len = x.Shape[1]; int c = (int)x.Shape[2];
        long fl;
        if (flT is not null && flT.Length > 0) fl = SpecialHelpers.ScalarInt(flT, ctx, "frame_length");
        else if (window is not null) fl = window.Length;
        else throw ctx.Error("either window or frame_length must be given");
        if (window is not null && window.Length != fl) throw ctx.Error($"window length {window.Length} != frame_length {fl}");
        if (step < 1) throw ctx.Error("frame_step must be positive");
        if (fl < 1 || fl > len) throw ctx.Error($"frame_length {fl} does not fit the signal length {len}");
        long frames = 1 + (len - fl) / step;
        var xd = SpecialHelpers.ToDoubles(x);
        double[]? w = window is null ? null : SpecialHelpers.ToDoubles(window);
        // frames[b, f, k, c] = signal[b, f*step + k, c] * window[k] (the product rounds to the signal's type)
        var fr = new double[B * frames * fl * c];
        for (long b = 0; b < B; b++)
            for (long f = 0; f < frames; f++)
                for (long k = 0; k < fl; k++)
                    for (int q = 0; q < c; q++)
                    {
                        double v = xd[(b * len + f * step + k) * c + q];
                        if (w is not null) v = RoundTo(v * w[k], x.DType);
                        fr[((b * frames + f) * fl + k) * c + q] = v;
                    }
        var y = Transform(fr, B * frames, fl, 1, c, (int)fl, false, onesided, out int bins);
        return [SpecialHelpers.FromDoubles(y, x.DType, [B, frames, bins, 2])];
    }

    static double RoundTo(double v, DType t) => t switch
    {
        DType.Float32 => (float)v,
        DType.Float16 => (double)(Half)v,
        DType.BFloat16 => (float)(BFloat16)(float)v,
        _ => v,
    };

    // ---------------------------------------------------------------- windows

    static Value?[] Window(NodeContext ctx, Value?[] inputs, int kind)
    {
        long size = SpecialHelpers.ScalarInt(inputs.T(0, ctx), ctx, "size");
        if (size < 0) throw ctx.Error("size must be non-negative");
        bool periodic = ctx.Int("periodic", 1) != 0;
        var dt = SpecialHelpers.OutputDType(ctx, ctx.Int("output_datatype", 1));
        double n1 = periodic ? size : size - 1;
        var y = new double[size];
        for (long i = 0; i < size; i++)
        {
            double a = i * (Math.PI * 2) / n1;
            y[i] = kind switch
            {
                0 => Math.Cos(a) * -0.5 + 0.5,                                    // Hann
                1 => Math.Cos(a) * -(1 - 25.0 / 46) + 25.0 / 46,                  // Hamming, alpha = 25/46
                _ => Math.Cos(a) * -0.5 + Math.Cos(i * (Math.PI * 4) / n1) * 0.08 + 0.42, // Blackman
            };
        }
        return [SpecialHelpers.FromDoubles(y, dt, [size])];
    }

    // ---------------------------------------------------------------- MelWeightMatrix

    static Value?[] MelOp(NodeContext ctx, Value?[] inputs)
    {
        long bins = SpecialHelpers.ScalarInt(inputs.T(0, ctx), ctx, "num_mel_bins");
        long dftLen = SpecialHelpers.ScalarInt(inputs.T(1, ctx), ctx, "dft_length");
        long rate = SpecialHelpers.ScalarInt(inputs.T(2, ctx), ctx, "sample_rate");
        var loT = inputs.T(3, ctx); var hiT = inputs.T(4, ctx);
        double lo = SpecialHelpers.ScalarDouble(loT, ctx, "lower_edge_hertz");
        double hi = SpecialHelpers.ScalarDouble(hiT, ctx, "upper_edge_hertz");
        var dt = SpecialHelpers.OutputDType(ctx, ctx.Int("output_datatype", 1));
        if (bins < 1 || dftLen < 1 || rate < 1) throw ctx.Error("num_mel_bins, dft_length and sample_rate must be positive");
        long nSpec = dftLen / 2 + 1;
        // mel(f) = 2595 log10(1 + f/700); (num_mel_bins + 2) points evenly spaced in mel between the edges.
        double loMel = MelOf(lo, loT.DType), hiMel = MelOf(hi, hiT.DType);
        long npts = bins + 2;
        double melStep = (hiMel - loMel) / npts;
        var pts = new long[npts];
        for (long i = 0; i < npts; i++)
        {
            double m = i * melStep + loMel;
            double hz = 700 * (Math.Pow(10, m / 2595) - 1);
            pts[i] = (long)Math.Floor((dftLen + 1) * hz / rate);
        }
        var y = new double[nSpec * bins];
        void Set(long j, long i, double v)
        {
            if (j < 0 || j >= nSpec) throw ctx.Error($"mel bin edge {j} is outside the {nSpec} spectrogram bins");
            y[j * bins + i] = v;
        }
        for (long i = 0; i < bins; i++)
        {
            long l = pts[i], ce = pts[i + 1], h = pts[i + 2];
            long lc = ce - l;
            if (lc == 0) Set(ce, i, 1);
            else for (long j = l; j <= ce; j++) Set(j, i, (double)(j - l) / lc);
            long ch = h - ce;
            if (ch > 0) for (long j = ce; j < h; j++) Set(j, i, (double)(h - j) / ch);
        }
        return [SpecialHelpers.FromDoubles(y, dt, [nSpec, bins])];
    }

    /// <summary>2595·log10(1 + f/700), computed in the edge's own precision as the reference does.</summary>
    static double MelOf(double f, DType t)
    {
        if (t == DType.Float64) return 2595 * Math.Log10(1 + f / 700);
        float ff = (float)f;
        return 2595f * MathF.Log10(1f + ff / 700f);
    }
}
