using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Tile (each output coordinate reads its input coordinate modulo the input shape), and DepthToSpace /
/// SpaceToDepth (the spec's reshape–transpose–reshape as one strided copy).</summary>
public static class Rearrange
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "Tile", 6, (g, ctx, ins) => [Tile(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx))]));
        add(new GpuOp("", "DepthToSpace", 1, (g, ctx, ins) => [DepthToSpace(g, ctx, GpuOps.In(ins, 0, ctx))]));
        add(new GpuOp("", "SpaceToDepth", 1, (g, ctx, ins) => [SpaceToDepth(g, ctx, GpuOps.In(ins, 0, ctx))]));
    }

    static GpuTensor Tile(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x, GpuTensor repeats)
    {
        var reps = g.Ints(repeats);
        int r = x.Rank;
        if (reps.Length != r) throw ctx.Error($"repeats has {reps.Length} entries for a rank-{r} input");
        if (reps.Any(v => v < 0)) throw ctx.Error($"repeats [{string.Join(",", reps)}] has a negative entry");
        var shape = x.Shape.Select((d, i) => d * reps[i]).ToArray();
        var y = g.Empty(x.DType, shape);
        if (y.Length == 0) return y;
        if (r == 0) { DataMovement.Copy(g, x, y, [], [], 0, [], 0, "Tile"); return y; }
        var meta = new Meta();
        meta.Add(y.Length);
        int shapeAt = meta.AddAll(shape);
        int xAt = meta.AddAll(x.Shape);
        int stAt = meta.AddAll(ShapeUtil.Strides(x.Shape));
        var sb = new StringBuilder(Indexing.Coords("i", r, shapeAt)).Append("  let o = ");
        sb.Append(string.Join(" + ", Enumerable.Range(0, r).Select(d => $"(c{d} % md[{xAt + d}]) * md[{stAt + d}]"))).Append(";\n");
        sb.Append($"  y_st(i, {Indexing.S(x.DType)}(x(o)));");
        g.Launch(new WebGpuPlatform.KernelKey("tile", $"{r}|{(int)x.Storage}|{(int)x.DType}"), () => new Wgsl(g.Workgroup).In("x", x).Out("y", x.DType).Build(sb.ToString()),
            "Tile", [x, y], meta, y.Length);
        return y;
    }

    /// <summary>y = reshape(transpose(reshape(x, view), perm), outShape) as one strided copy.</summary>
    static GpuTensor Permuted(WebGpuPlatform g, GpuTensor x, long[] view, int[] perm, long[] outShape, string label)
    {
        var vst = ShapeUtil.Strides(view);
        var pshape = perm.Select(p => view[p]).ToArray();
        var y = g.Empty(x.DType, outShape);
        DataMovement.Copy(g, x, y, pshape, perm.Select(p => vst[p]).ToArray(), 0, ShapeUtil.Strides(pshape), 0, label);
        return y;
    }

    static GpuTensor DepthToSpace(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x)
    {
        long b = ctx.Int("blocksize", 0);
        if (x.Rank != 4 || b < 1 || x.Shape[1] % (b * b) != 0) throw ctx.Error($"input {ShapeUtil.Format(x.Shape)} must be [N, C, H, W] with C divisible by blocksize² ({b}²)");
        long n = x.Shape[0], c = x.Shape[1] / (b * b), h = x.Shape[2], w = x.Shape[3];
        // DCR (default): [N, b, b, C/b², H, W] transposed [0, 3, 4, 1, 5, 2]; CRD: [N, C/b², b, b, H, W] transposed [0, 1, 4, 2, 5, 3].
        bool crd = ctx.String("mode", "DCR") == "CRD";
        return crd
            ? Permuted(g, x, [n, c, b, b, h, w], [0, 1, 4, 2, 5, 3], [n, c, h * b, w * b], "DepthToSpace")
            : Permuted(g, x, [n, b, b, c, h, w], [0, 3, 4, 1, 5, 2], [n, c, h * b, w * b], "DepthToSpace");
    }

    static GpuTensor SpaceToDepth(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor x)
    {
        long b = ctx.Int("blocksize", 0);
        if (x.Rank != 4 || b < 1 || x.Shape[2] % b != 0 || x.Shape[3] % b != 0) throw ctx.Error($"input {ShapeUtil.Format(x.Shape)} must be [N, C, H, W] with H and W divisible by blocksize {b}");
        long n = x.Shape[0], c = x.Shape[1], h = x.Shape[2] / b, w = x.Shape[3] / b;
        // [N, C, H/b, b, W/b, b] transposed [0, 3, 5, 1, 2, 4].
        return Permuted(g, x, [n, c, h, b, w, b], [0, 3, 5, 1, 2, 4], [n, c * b * b, h, w], "SpaceToDepth");
    }
}
