using Tapml.Core;
using static Tapml.Platforms.Cpu.Ops.LinalgHelpers;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear (integer quantized types; float8/int4 types
/// cannot be held by tapml tensors).</summary>
public sealed class QuantizationOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("QuantizeLinear", QuantizeLinear, sinceOpset: 10);
        r.Add("DequantizeLinear", DequantizeLinear, sinceOpset: 10);
        r.Add("DynamicQuantizeLinear", DynamicQuantizeLinear, sinceOpset: 11);
    }

    static (long lo, long hi)? Range(DType t) => t switch
    {
        DType.UInt8 => (0, 255),
        DType.Int8 => (-128, 127),
        DType.UInt16 => (0, 65535),
        DType.Int16 => (-32768, 32767),
        _ => null,
    };

    /// <summary>Maps element e of x to the index of its scale/zero point: per tensor (one value), per axis (1-D along
    /// axis) or blocked (same rank as x, the axis dim being ceil(len/block_size)).</summary>
    sealed class ParamMap
    {
        readonly int _mode; // 0 tensor, 1 axis, 2 blocked
        readonly long _len, _inner, _nb, _bs;

        public ParamMap(NodeContext ctx, Tensor x, Tensor scale, string what)
        {
            long bs = ctx.Opset >= 21 ? ctx.Int("block_size", 0) : 0;
            if (bs < 0) throw ctx.Error("block_size must be >= 0");
            if (bs == 0 && scale.Length == 1 && scale.Rank <= 1) { _mode = 0; return; }
            if (ctx.Opset < 13) throw ctx.Error($"{what} must be a scalar before opset 13");
            int axis;
            try { axis = ShapeUtil.Axis(ctx.Int("axis", 1), x.Rank); }
            catch (TapmlException e) { throw ctx.Error(e.Message); }
            var (_, len, inner) = Split(x.Shape, axis);
            _len = len; _inner = inner;
            if (bs == 0)
            {
                if (scale.Rank != 1 || scale.Shape[0] != len)
                    throw ctx.Error($"{what} {ShapeUtil.Format(scale.Shape)} must be a scalar or a 1-D tensor of {len} (axis {axis} of {ShapeUtil.Format(x.Shape)})");
                _mode = 1;
                return;
            }
            _mode = 2; _bs = bs; _nb = (len + bs - 1) / bs;
            bool ok = scale.Rank == x.Rank;
            for (int d = 0; ok && d < x.Rank; d++) ok = scale.Shape[d] == (d == axis ? _nb : x.Shape[d]);
            if (!ok) throw ctx.Error($"{what} {ShapeUtil.Format(scale.Shape)} does not fit blocks of {bs} along axis {axis} of {ShapeUtil.Format(x.Shape)}");
        }

        public long this[long e] => _mode switch
        {
            0 => 0,
            1 => e / _inner % _len,
            _ => (e / (_len * _inner) * _nb + e / _inner % _len / _bs) * _inner + e % _inner,
        };
    }

    static void CheckZp(NodeContext ctx, Tensor scale, Tensor? zp)
    {
        if (zp is not null && !ShapeUtil.SameShape(zp.Shape, scale.Shape) && !(zp.Length == 1 && scale.Length == 1))
            throw ctx.Error($"zero point {ShapeUtil.Format(zp.Shape)} and scale {ShapeUtil.Format(scale.Shape)} differ in shape");
    }

    static float RoundTo(DType t, double v) => t switch
    {
        DType.Float16 => (float)(Half)(float)v,
        DType.BFloat16 => (float)(BFloat16)(float)v,
        _ => (float)v,
    };

    static Value?[] QuantizeLinear(NodeContext ctx, Value?[] x)
    {
        var t = x.T(0, ctx);
        var scale = x.T(1, ctx);
        var zp = x.OptT(2);
        DType outT = zp?.DType ?? DType.UInt8;
        if (ctx.Opset >= 21 && ctx.Int("output_dtype", 0) is var od and not 0)
        {
            if (zp is not null && (long)zp.DType != od) throw ctx.Error($"output_dtype {od} differs from the zero point's type {DTypes.Name(zp.DType)}");
            outT = (DType)od;
        }
        if (Range(outT) is not var (lo, hi)) throw ctx.Unsupported($"quantizing to {DTypes.Name(outT)} is not supported (u8, i8, u16, i16 are)");
        if (!DTypes.IsFloat(scale.DType)) throw ctx.Error($"y_scale must be a float tensor, got {DTypes.Name(scale.DType)}");
        if (t.DType != DType.Int32 && !DTypes.IsFloat(t.DType)) throw ctx.Error($"x must be float or int32, got {DTypes.Name(t.DType)}");
        var map = new ParamMap(ctx, t, scale, "y_scale");
        CheckZp(ctx, scale, zp);
        // Division precision: the 'precision' attribute (opset 23) when given, else the scale's type (x·1/scale in
        // numpy: f32/f32 in f32, f16/f16 rounded to f16, int32/f32 in f64).
        long prec = ctx.Opset >= 23 ? ctx.Int("precision", 0) : 0;
        DType divT = prec != 0 ? (DType)prec : t.DType == DType.Int32 ? DType.Float64 : scale.DType;
        if (!DTypes.IsFloat(divT)) throw ctx.Unsupported($"precision {DTypes.Name(divT)} is not supported");
        var xs = t.DType == DType.Int32 ? null : TensorConvert.ToF32(t).As<float>();
        var ss = TensorConvert.ToF32(scale).As<float>();
        var y = Tensor.Zeros(outT, t.Shape);
        For(t.Length, 8, e =>
        {
            long pi = map[e];
            double q;
            if (divT == DType.Float64) q = (xs is null ? t.GetDouble(e) : xs[e]) / (double)ss[pi];
            else q = RoundTo(divT, RoundTo(divT, xs is null ? t.GetDouble(e) : xs[e]) / RoundTo(divT, ss[pi]));
            long z = zp is null ? 0 : zp.GetInt64(pi);
            // Round half to even, add the zero point, saturate (NaN saturates low, as numpy's int cast then clip does).
            double r = double.IsNaN(q) ? lo : Math.Clamp(Math.Round(q, MidpointRounding.ToEven) + z, lo, hi);
            y.SetInt64(e, (long)r);
        });
        return [y];
    }

    static Value?[] DequantizeLinear(NodeContext ctx, Value?[] x)
    {
        var t = x.T(0, ctx);
        var scale = x.T(1, ctx);
        var zp = x.OptT(2);
        if (Range(t.DType) is null && t.DType != DType.Int32) throw ctx.Unsupported($"dequantizing {DTypes.Name(t.DType)} is not supported");
        if (!DTypes.IsFloat(scale.DType)) throw ctx.Error($"x_scale must be a float tensor, got {DTypes.Name(scale.DType)}");
        if (zp is not null && zp.DType != t.DType) throw ctx.Error($"zero point is {DTypes.Name(zp.DType)}, x is {DTypes.Name(t.DType)}");
        DType outT = scale.DType;
        if (ctx.Opset >= 23 && ctx.Int("output_dtype", 0) is var od and not 0) outT = (DType)od;
        if (!DTypes.IsFloat(outT)) throw ctx.Error($"output_dtype must be a float type, got {DTypes.Name(outT)}");
        var map = new ParamMap(ctx, t, scale, "x_scale");
        CheckZp(ctx, scale, zp);
        var ss = TensorConvert.ToF32(scale).As<float>();
        var y = Tensor.Zeros(outT, t.Shape);
        bool wide = t.DType == DType.Int32 && zp is not null;
        For(t.Length, 8, e =>
        {
            long pi = map[e];
            // y = (x - x_zero_point) · x_scale, in f32 (f64 for int32 with a zero point, as numpy promotes it).
            double v = wide
                ? ((double)(float)t.GetInt64(e) - zp!.GetInt64(pi)) * ss[pi]
                : ((float)t.GetInt64(e) - (float)(zp is null ? 0 : zp.GetInt64(pi))) * ss[pi];
            y.SetDouble(e, outT == DType.Float64 ? v : (float)v);
        });
        return [y];
    }

    static Value?[] DynamicQuantizeLinear(NodeContext ctx, Value?[] x)
    {
        var t = x.T(0, ctx);
        if (!DTypes.IsFloat(t.DType)) throw ctx.Error($"x must be a float tensor, got {DTypes.Name(t.DType)}");
        var xs = TensorConvert.ToF32(t).As<float>();
        // scale = (max(0, max x) - min(0, min x)) / 255 (1/255 when equal); zp = rint(clamp(0 - min/scale, 0, 255)).
        float mx = 0, mn = 0;
        if (xs.Length > 0)
        {
            mx = MathF.Max(0, System.Numerics.Tensors.TensorPrimitives.Max(xs));
            mn = MathF.Min(0, System.Numerics.Tensors.TensorPrimitives.Min(xs));
        }
        float scale = (mx == mn ? 1f : mx - mn) / 255f;
        float zp0 = 0f - mn / scale;
        float zpf = MathF.Round(MathF.Max(0, MathF.Min(255, zp0)), MidpointRounding.ToEven);
        var y = new byte[xs.Length];
        For(xs.Length, 8, e =>
        {
            float q = MathF.Round(xs[e] / scale, MidpointRounding.ToEven) + zpf;
            y[e] = float.IsNaN(q) ? (byte)0 : (byte)Math.Clamp(q, 0, 255);
        });
        return ctx.Outputs(Tensor.FromArray(y, (long[])t.Shape.Clone()), TensorConvert.To(Tensor.Scalar(scale), t.DType), Tensor.Scalar((byte)zpf));
    }
}
