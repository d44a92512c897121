using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Tapml.Testing;
using Xunit;
using static Tapml.Tests.NewOpsHarness;

namespace Tapml.Tests;

/// <summary>The webgpu Einsum (Kernels/Einsum.cs) against the cpu reference: the generic kernel (diagonals, sums,
/// outer products, three operands, ellipsis broadcast, integers) and the equations routed to the tiled MatMul
/// (plain, batched, transposed operands, broadcast batch).</summary>
public class WebGpuEinsumTests
{
    static Case E(string eq, params Tensor[] ins) => new("Einsum", "", 12, ins, new() { ["equation"] = Attr.Of(eq) });

    public static readonly Dictionary<string, Func<Case>> Rows = new()
    {
        ["matmul ij,jk->ik"] = () => E("ij,jk->ik", R(1, 5, 7), R(2, 7, 3)),
        ["batched bij,bjk->bik"] = () => E("bij,bjk->bik", R(3, 2, 70, 33), R(4, 2, 33, 65)),
        ["transposed operands bji,bkj->bik"] = () => E("bji,bkj->bik", R(5, 3, 6, 4), R(6, 3, 5, 6)),
        ["broadcast batch ...ij,...jk->...ik"] = () => E("...ij,...jk->...ik", R(7, 2, 1, 3, 4), R(8, 3, 4, 5)),
        ["attention scores bhqd,bhkd->bhqk"] = () => E("bhqd,bhkd->bhqk", R(9, 1, 2, 5, 8), R(10, 1, 2, 6, 8)),
        ["output batch reordered bij,bjk->ibk (generic)"] = () => E("bij,bjk->ibk", R(11, 2, 3, 4), R(12, 2, 4, 5)),
        ["transpose ij->ji"] = () => E("ij->ji", R(13, 3, 4)),
        ["sum of all ij->"] = () => E("ij->", R(14, 6, 7)),
        ["inner product i,i"] = () => E("i,i", R(15, 9), R(16, 9)),
        ["outer product i,j->ij"] = () => E("i,j->ij", R(17, 4), R(18, 3)),
        ["batch diagonal ...ii->...i"] = () => E("...ii->...i", R(19, 2, 3, 4, 4)),
        ["trace ii"] = () => E("ii", R(20, 5, 5)),
        ["three operands ij,jk,kl->il"] = () => E("ij,jk,kl->il", R(21, 3, 4), R(22, 4, 5), R(23, 5, 2)),
        ["implicit output bn,anm,bm"] = () => E("bn,anm,bm", R(24, 2, 3), R(25, 4, 3, 5), R(26, 2, 5)),
        ["size-1 broadcast ij,kj->ikj"] = () => E("ij,kj->ikj", R(27, 3, 1), R(28, 2, 4)),
        ["i32 matmul ij,jk"] = () => E("ij,jk", I32([1, -2, 3, 4, 5, -6], 2, 3), I32([7, 8, -9, 10, 11, 12], 3, 2)),
        ["i64 row sums ij->i"] = () => E("ij->i", I64([1, 2, 3, -4, 5, 6], 2, 3)),
        ["f16 matmul ij,jk->ik"] = () => E("ij,jk->ik", TensorConvert.To(R(29, 4, 6), DType.Float16), TensorConvert.To(R(30, 6, 3), DType.Float16)),
    };

    public static TheoryData<string> Names() => new(Rows.Keys);

    static readonly Lazy<WebGpuPlatform> Gpu = new(() => new WebGpuPlatform("webgpu"));

    [Theory]
    [MemberData(nameof(Names))]
    public void Webgpu_einsum_matches_cpu(string name)
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var model = Build(Rows[name](), out var feeds);
        // NOTE: f16 outputs are rounded from f32 sums added in another order: one f16 ulp apart at most.
        AssertMatchesCpu(name, model, feeds, Gpu.Value, want => want is Tensor { DType: DType.Float16 } ? new Tolerance(2e-3, 1e-3) : Tol);
    }

    /// <summary>Which kernel ran (the device profile's labels): matrix-product equations the tiled MatMul, others the
    /// generic kernel.</summary>
    [Theory]
    [InlineData("batched bij,bjk->bik", "Einsum_tiled")]
    [InlineData("transposed operands bji,bkj->bik", "Einsum_tiled")]
    [InlineData("broadcast batch ...ij,...jk->...ik", "Einsum_tiled")]
    [InlineData("output batch reordered bij,bjk->ibk (generic)", "Einsum_r3_s1")]
    [InlineData("three operands ij,jk,kl->il", "Einsum_r2_s2")]
    public void Matrix_product_equations_take_the_tiled_kernel(string name, string kernel)
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var model = Build(Rows[name](), out var feeds);
        using var gpu = new WebGpuPlatform("webgpu");
        if (!gpu.StartProfile()) Assert.Skip("this adapter has no timestamp queries");
        new Executor(gpu).Run(model, feeds);
        var labels = gpu.StopProfile().Select(r => r.Kernel).ToList();
        Assert.True(labels.Any(l => l.StartsWith(kernel, StringComparison.Ordinal)), $"{name}: ran {string.Join(", ", labels)}");
        Assert.Equal("Einsum", Assert.Single(gpu.OpTimes).OpType);
    }

    public static IEnumerable<object[]> GpuRows() => TestPlatforms.Cross([["batched bij,bjk->bik"], ["three operands ij,jk,kl->il"]]);

    /// <summary>Every kernel platform of the registry (vulkan and opencl render the same kernels to their dialects):
    /// one equation on each route.</summary>
    [Theory]
    [MemberData(nameof(GpuRows))]
    public void Gpu_platforms_match_cpu(string platform, string name)
    {
        var p = TestPlatforms.CreateOrSkip(platform);
        using (p)
        {
            var model = Build(Rows[name](), out var feeds);
            AssertMatchesCpu($"{platform} {name}", model, feeds, p);
        }
    }
}
