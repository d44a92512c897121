using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Ops whose output comes from shapes and attributes: Shape, Size, Constant, ConstantOfShape, Range
/// (filled on the GPU; Shape/Size/Constant are metadata uploaded from the host).</summary>
public static class ShapeOps
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "Shape", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            int r = x.Rank;
            long start = ctx.Int("start", 0), end = ctx.Int("end", r);
            if (start < 0) start += r;
            if (end < 0) end += r;
            start = Math.Clamp(start, 0, r);
            end = Math.Clamp(end, start, r);
            var dims = x.Shape[(int)start..(int)end];
            return [g.ShapeValue(new Tensor(DType.Int64, [dims.Length], dims))];
        }, AnyInputType: true, TakesStrided: _ => true));        // metadata only: a KV cache's shape needs no copy
        add(new GpuOp("", "Size", 1, (g, ctx, ins) => [g.ShapeValue(Tensor.Scalar(GpuOps.In(ins, 0, ctx).Length))], AnyInputType: true, TakesStrided: _ => true));
        add(new GpuOp("", "Constant", 1, (g, ctx, ins) =>
        {
            if (ctx.Tensor("value") is { } t) return [g.Upload(t)];
            if (ctx.Has("value_float")) return [g.UploadTemporary(Tensor.Scalar(ctx.Float("value_float", 0)))];
            if (ctx.Has("value_int")) return [g.UploadTemporary(Tensor.Scalar(ctx.Int("value_int", 0)))];
            if (ctx.Floats("value_floats") is { } fs) return [g.UploadTemporary(new Tensor(DType.Float32, [fs.Length], fs))];
            if (ctx.Ints("value_ints") is { } ls) return [g.UploadTemporary(new Tensor(DType.Int64, [ls.Length], ls))];
            throw new UnsupportedException("Constant without a tensor, float or int value (sparse/string) is not supported on webgpu");
        }));
        add(new GpuOp("", "ConstantOfShape", 9, (g, ctx, ins) =>
        {
            var shape = g.Ints(GpuOps.In(ins, 0, ctx));
            var value = ctx.Tensor("value");
            var dtype = value?.DType ?? DType.Float32;
            if (Wgsl.StorageOf(dtype) is null) throw new UnsupportedException($"ConstantOfShape of {DTypes.Name(dtype)}: no WGSL type");
            double v = value is null ? 0 : System.Convert.ToDouble(value.Data.GetValue(0) is Half h ? (float)h : value.Data.GetValue(0) is BFloat16 b ? (float)b : value.Data.GetValue(0));
            return [Fill(g, dtype, shape, v)];
        }));
        add(new GpuOp("", "Range", 11, (g, ctx, ins) =>
        {
            var a = GpuOps.In(ins, 0, ctx);
            var dtype = a.DType;
            double start = Scalar(g, a), limit = Scalar(g, GpuOps.In(ins, 1, ctx)), delta = Scalar(g, GpuOps.In(ins, 2, ctx));
            if (delta == 0) throw ctx.Error("delta is 0");
            // ONNX Range: number_of_elements = max(ceil((limit - start) / delta), 0).
            long n = Math.Max(0, (long)Math.Ceiling((limit - start) / delta));
            var y = g.Empty(dtype, [n]);
            if (n == 0) return [y];
            var meta = new Meta();
            meta.Add(n);
            bool f = Wgsl.StorageOf(dtype) == GpuStorage.F32;
            if (f) { meta.AddFloat((float)start); meta.AddFloat((float)delta); }
            else { meta.AddSigned((long)start); meta.AddSigned((long)delta); }
            string s = Wgsl.Scalar(Wgsl.StorageOf(dtype)!.Value);
            g.Launch(new WebGpuPlatform.KernelKey("range", $"{(int)dtype}"), () => new Wgsl(g.Workgroup).Out("y", dtype).Build(f
                ? "  y_st(i, bitcast<f32>(md[1]) + f32(i) * bitcast<f32>(md[2]));"
                : $"  y_st(i, {s}(bitcast<i32>(md[1]) + i32(i) * bitcast<i32>(md[2])));"), "Range", [y], meta, n);
            return [y];
        }));
    }

    static double Scalar(WebGpuPlatform g, GpuTensor t)
    {
        var h = g.HostOrDownload(t);
        if (h.Length != 1) throw new TapmlException($"expected a scalar, got {t.Describe()}");
        var v = h.Data.GetValue(0)!;
        return v switch { Half x => (double)x, BFloat16 x => (float)x, _ => System.Convert.ToDouble(v) };
    }

    /// <summary>A tensor of <paramref name="shape"/> filled with <paramref name="value"/> on the GPU.</summary>
    public static GpuTensor Fill(WebGpuPlatform g, DType dtype, long[] shape, double value)
    {
        var y = g.Empty(dtype, shape);
        if (y.Length == 0) return y;
        var storage = Wgsl.StorageOf(dtype)!.Value;
        var meta = new Meta();
        meta.Add(y.Length);
        if (storage == GpuStorage.F32) meta.AddFloat((float)value);
        else if (storage == GpuStorage.I32) meta.AddSigned(checked((long)value));
        else meta.Add(checked((long)value));
        string s = Wgsl.Scalar(storage);
        g.Launch(new WebGpuPlatform.KernelKey("fill", $"{(int)dtype}"), () => new Wgsl(g.Workgroup).Out("y", dtype).Build($"  y_st(i, bitcast<{s}>(md[1]));"),
            "Fill", [y], meta, y.Length);
        return y;
    }
}
