using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Einsum (the equation read by the shared <see cref="EinsumEquation"/>). A two-operand float equation that is a
/// (batched) matrix product — one row label, one column label and one summed label, the output ordered batch…, row,
/// column, batch labels broadcast — runs on the tiled MatMul kernel with the operands' strides (so
/// transposed operands are free). Everything else: one thread per output element loops over the summed labels' index
/// space, each operand addressed through per-label strides (a repeated label's strides add up: a diagonal; a size-1
/// dim broadcast has stride 0), accumulating in f32 (floats) or 32-bit integers, as webgpu computes integers.</summary>
public static class Einsum
{
    public static void Register(Action<GpuOp> add) => add(new GpuOp("", "Einsum", 12, (g, ctx, ins) => [Run(g, ctx, ins)], Support));

    static string? Support(NodeContext ctx, IReadOnlyList<Ir.TypeRef?> t) =>
        t.Count > 0 && t[0] is { } a && a.ElemType is DType.Bool ? $"Einsum on {DTypes.Name(a.ElemType)} is not supported" : null;

    static GpuTensor Run(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] inputs)
    {
        if (inputs.Length == 0) throw ctx.Error("Einsum needs at least one input");
        var ins = new GpuTensor[inputs.Length];
        for (int i = 0; i < ins.Length; i++)
        {
            ins[i] = GpuOps.In(inputs, i, ctx);
            if (ins[i].DType != ins[0].DType) throw ctx.Error("all inputs must have one element type");
            if (ins[i].Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(ins[i], ctx);
        }
        var e = EinsumEquation.Parse(ctx, ctx.String("equation", ""), ins.Select(t => t.Rank).ToList());
        var size = e.Sizes(ctx, ins.Select(t => t.Shape).ToList());
        var outShape = e.Output.Select(l => size[l]).ToArray();
        var y = g.Empty(ins[0].DType, outShape);
        if (y.Length == 0) return y;
        // Per operand and label: the element stride (repeated labels add up; broadcast size-1 dims and absent labels: 0).
        var strides = new Dictionary<int, long>[ins.Length];
        for (int j = 0; j < ins.Length; j++)
        {
            strides[j] = new Dictionary<int, long>();
            var st = ShapeUtil.Strides(ins[j].Shape);
            for (int d = 0; d < ins[j].Rank; d++)
            {
                int lab = e.Inputs[j][d];
                strides[j][lab] = strides[j].GetValueOrDefault(lab) + (ins[j].Shape[d] == 1 ? 0 : st[d]);
            }
        }
        long Stride(int j, int lab) => strides[j].GetValueOrDefault(lab);
        var summed = size.Keys.Where(l => !e.Output.Contains(l)).Order().ToList();
        if (AsMatMul(g, ctx, e, ins, y, size, summed, Stride)) return y;

        var meta = new Meta();
        meta.Add(y.Length);
        meta.Add(summed.Aggregate(1L, (p, l) => p * size[l]));
        int outAt = meta.AddAll(outShape);
        var outStrideAt = Enumerable.Range(0, ins.Length).Select(j => meta.AddAll(e.Output.Select(l => Stride(j, l)))).ToArray();
        int sumAt = meta.AddAll(summed.Select(l => size[l]));
        var sumStrideAt = Enumerable.Range(0, ins.Length).Select(j => meta.AddAll(summed.Select(l => Stride(j, l)))).ToArray();
        string s = Wgsl.Scalar(y.DType is DType.Float32 or DType.Float16 or DType.BFloat16 ? GpuStorage.F32 : ins[0].Storage);
        string body = Body(ins.Length, outShape.Length, outAt, outStrideAt, summed.Count, sumAt, sumStrideAt, s);
        string letters = Wgsl.Letters(ins.Select(t => t.Storage).ToList());
        g.Launch(new WebGpuPlatform.KernelKey("einsum", $"{letters}|{outShape.Length}|{summed.Count}|{(int)y.DType}"), () =>
        {
            var w = new Wgsl(g.Workgroup);
            for (int j = 0; j < ins.Length; j++) w.In($"x{j}", ins[j]);
            return w.Out("y", y.DType).Build(body);
        }, $"Einsum_r{outShape.Length}_s{summed.Count}", [.. ins, y], meta, y.Length);
        return y;
    }

    /// <summary>The generic kernel: output coordinates give each operand's base offset, then the summed labels' index
    /// space is walked in row-major order.</summary>
    static string Body(int n, int outRank, int outAt, int[] outStrideAt, int sumRank, int sumAt, int[] sumStrideAt, string scalar)
    {
        var sb = new StringBuilder();
        for (int j = 0; j < n; j++) sb.Append($"  var b{j} = 0u;\n");
        sb.Append("  var rem = i;\n");
        for (int d = outRank - 1; d >= 0; d--)
        {
            sb.Append($"  {{ let c = rem % md[{outAt + d}]; rem = rem / md[{outAt + d}];");
            for (int j = 0; j < n; j++) sb.Append($" b{j} += c * md[{outStrideAt[j] + d}];");
            sb.Append(" }\n");
        }
        sb.Append($"  var acc = {scalar}(0);\n  for (var s = 0u; s < md[1]; s++) {{\n    var r = s;\n");
        for (int j = 0; j < n; j++) sb.Append($"    var o{j} = b{j};\n");
        for (int d = sumRank - 1; d >= 0; d--)
        {
            sb.Append($"    {{ let c = r % md[{sumAt + d}]; r = r / md[{sumAt + d}];");
            for (int j = 0; j < n; j++) sb.Append($" o{j} += c * md[{sumStrideAt[j] + d}];");
            sb.Append(" }\n");
        }
        sb.Append("    acc += ").Append(string.Join(" * ", Enumerable.Range(0, n).Select(j => $"{scalar}(x{j}(o{j}))"))).Append(";\n  }\n");
        sb.Append("  y_st(i, acc);");
        return sb.ToString();
    }

    /// <summary>Runs a float (batched) matrix-product equation on the tiled MatMul kernel; false when the equation is
    /// not one (then nothing was recorded).</summary>
    static bool AsMatMul(WebGpuPlatform g, NodeContext ctx, EinsumEquation e, GpuTensor[] ins, GpuTensor y, Dictionary<int, long> size,
        List<int> summed, Func<int, int, long> stride)
    {
        if (ins.Length != 2 || y.DType is not (DType.Float32 or DType.Float16 or DType.BFloat16)) return false;
        var (a, b) = (e.Inputs[0], e.Inputs[1]);
        if (a.Distinct().Count() != a.Count || b.Distinct().Count() != b.Count || summed.Count != 1) return false;
        var o = e.Output;
        if (o.Count < 2) return false;
        int m = o[^2], n = o[^1], k = summed[0];
        var batch = o.Take(o.Count - 2).ToList();
        // Row label only in A, column label only in B, the summed label in both; every other label is a batch label of
        // the output (one an operand lacks or has as a size-1 dim broadcasts: stride 0).
        if (!a.Contains(m) || b.Contains(m) || !b.Contains(n) || a.Contains(n) || !a.Contains(k) || !b.Contains(k)) return false;
        var bshape = batch.Select(l => size[l]).ToArray();
        if (ShapeUtil.Size(bshape) > g.Device.Limits.MaxWorkgroupsPerDimension) return false;
        MatMul.Tiled(g, ins[0], ins[1], null, y, size[m], size[n], size[k], bshape,
            batch.Select(l => stride(0, l)).ToArray(), batch.Select(l => stride(1, l)).ToArray(),
            (stride(0, m), stride(0, k)), (stride(1, k), stride(1, n)), (0, 0), 1f, 0f, "Einsum");
        return true;
    }
}
