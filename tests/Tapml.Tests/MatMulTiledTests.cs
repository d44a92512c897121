using System.Diagnostics;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Tapml.Platforms.WebGpu.Kernels;
using Xunit;

namespace Tapml.Tests;

/// <summary>The register-tiled matmul (<see cref="MatMulTiled"/>) against cpu: each tile forced on products whose M, N and
/// K are not multiples of it (edge tiles, a K tail, load rounds with fewer units than threads), weights in f32 and packed
/// f16, broadcast batches of two activations (B read N-fastest), and Gemm with transposes, alpha, beta and a C bias; on
/// every kernel platform of the registry (<see cref="TestPlatforms"/>) runs the core rows; webgpu runs the others too.</summary>
public class MatMulTiledTests
{
    static WebGpuPlatform Gpu(string platform, string tile)
    {
        var p = TestPlatforms.CreateOrSkip(platform);
        if (p is not WebGpuPlatform g)
        {
            p.Dispose();
            Assert.Skip($"{platform} does not run the webgpu kernels: the tile option and dispatch counts are theirs");
            throw new UnreachableException();
        }
        g.Skinny = g.Skinny with { MaxRows = 0 };                     // short products would take the skinny kernel (MatMulSkinnyTests)
        if (tile != "rule") g.MatMulTile = MatMulTiled.Tile.Parse(tile) ?? throw new ArgumentException(tile);
        return g;
    }

    static float[] Random(Random rng, long n) => Enumerable.Range(0, (int)n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();

    static void AssertClose(Model model, Dictionary<string, Value> feeds, WebGpuPlatform gpu, long k, double tol)
    {
        var want = (Tensor)new Executor(PlatformRegistry.Create("cpu")).Run(model, feeds)["y"];
        Tensor got;
        using (gpu) got = (Tensor)new Executor(gpu).Run(model, feeds)["y"];
        Assert.Equal(want.Shape, got.Shape);
        var a = want.Data.Cast<object>().Select(v => v is Half h ? (double)h : Convert.ToDouble(v)).ToArray();
        var b = got.Data.Cast<object>().Select(v => v is Half h ? (double)h : Convert.ToDouble(v)).ToArray();
        double t = tol * Math.Sqrt(k);
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= t * (1 + Math.Abs(a[i])), $"y[{i}]: cpu {a[i]}, {gpu.Name} {b[i]}");
    }

    public static IEnumerable<object[]> CoreWeightRows() => TestPlatforms.Cross(
    [
        [130, 67, 129, DType.Float32, "128x128x8/8x8"],
        [9, 33, 70, DType.Float16, "64x64x8/4x4"],
    ]);

    /// <summary>x [1, M, K] · W [K, N] (an initializer: read as its transpose [N, K], K fastest).</summary>
    [Theory]
    [MemberData(nameof(CoreWeightRows))]
    [InlineData("webgpu", 5, 17, 9, DType.Float32, "32x64x8/4x4")]
    [InlineData("webgpu", 37, 64, 80, DType.Float32, "rule")]
    [InlineData("webgpu", 600, 40, 33, DType.Float32, "64x128x8/4x8")]
    [InlineData("webgpu", 70, 45, 70, DType.Float32, "64x64x16/4x4")]
    [InlineData("webgpu", 65, 130, 67, DType.Float16, "128x128x8/8x8")]
    [InlineData("webgpu", 37, 64, 80, DType.Float32, "legacy")]
    public void Matmul_against_a_weight_matches_cpu(string platform, int m, int k, int n, DType wtype, string tile)
    {
        var gpu = Gpu(platform, tile);
        var (model, feeds) = WeightProduct(m, k, n, wtype);
        AssertClose(model, feeds, gpu, k, wtype == DType.Float16 ? 4e-3 : 1e-5);
    }

    /// <summary>Few rows and columns against a long K: the default splits K over workgroups (two dispatches: partial
    /// products, their sum); a forced tile does not (one).</summary>
    public static IEnumerable<object[]> CoreSplitRows() => TestPlatforms.Cross([[5, 1100, 40, DType.Float32, "rule", 2]]);

    [Theory]
    [MemberData(nameof(CoreSplitRows))]
    [InlineData("webgpu", 9, 1030, 20, DType.Float16, "rule", 2)]
    [InlineData("webgpu", 5, 1100, 40, DType.Float32, "16x64x16/4x4", 1)]
    public void A_small_grid_splits_k_and_matches_cpu(string platform, int m, int k, int n, DType wtype, string tile, int dispatches)
    {
        var gpu = Gpu(platform, tile);
        var (model, feeds) = WeightProduct(m, k, n, wtype);
        var exec = new Executor(gpu);
        exec.Run(model, feeds);                                        // uploads the weight
        long d0 = gpu.Device.Dispatches;
        exec.Run(model, feeds);
        Assert.Equal(dispatches, gpu.Device.Dispatches - d0);
        AssertClose(model, feeds, gpu, k, wtype == DType.Float16 ? 4e-3 : 1e-5);
    }

    static (Model, Dictionary<string, Value>) WeightProduct(int m, int k, int n, DType wtype)
    {
        var rng = new Random(m * 1000 + k * 10 + n);
        var w = Random(rng, k * n);
        var g = new Graph { Name = "mm" };
        g.Inputs.Add(new ValueInfo("x", TypeRef.TensorOf(wtype, 1L, m, k)));
        g.Outputs.Add(new ValueInfo("y", TypeRef.TensorOf(wtype, 1L, m, n)));
        g.Initializers["w"] = wtype == DType.Float16 ? new Tensor(DType.Float16, [k, n], w.Select(v => (Half)v).ToArray()) : new Tensor(DType.Float32, [k, n], w);
        g.Nodes.Add(new Node { Name = "mm", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["y"] });
        var xs = Random(rng, m * k);
        var x = wtype == DType.Float16 ? new Tensor(DType.Float16, [1, m, k], xs.Select(v => (Half)v).ToArray()) : new Tensor(DType.Float32, [1, m, k], xs);
        return (new Model { Graph = g, Opsets = { [""] = 17 } }, new() { ["x"] = x });
    }

    /// <summary>A [2, 3, M, K] · B [3, K, N], both graph inputs: B broadcast over the first batch axis, read N fastest.</summary>
    public static IEnumerable<object[]> CoreBatchedRows() => TestPlatforms.Cross([[19, 21, 23, "64x128x8/4x8"]]);

    [Theory]
    [MemberData(nameof(CoreBatchedRows))]
    [InlineData("webgpu", 19, 21, 23, "32x64x8/4x4")]
    [InlineData("webgpu", 70, 9, 66, "64x64x8/8x8")]
    public void Batched_activation_matmul_matches_cpu(string platform, int m, int k, int n, string tile)
    {
        var gpu = Gpu(platform, tile);
        var rng = new Random(m + k + n);
        var g = new Graph { Name = "bmm" };
        g.Inputs.Add(new ValueInfo("a", TypeRef.TensorOf(DType.Float32, 2L, 3L, m, k)));
        g.Inputs.Add(new ValueInfo("b", TypeRef.TensorOf(DType.Float32, 3L, k, n)));
        g.Outputs.Add(new ValueInfo("y", TypeRef.TensorOf(DType.Float32, 2L, 3L, m, n)));
        g.Nodes.Add(new Node { Name = "mm", OpType = "MatMul", Inputs = ["a", "b"], Outputs = ["y"] });
        var feeds = new Dictionary<string, Value>
        {
            ["a"] = new Tensor(DType.Float32, [2, 3, m, k], Random(rng, 6L * m * k)),
            ["b"] = new Tensor(DType.Float32, [3, k, n], Random(rng, 3L * k * n)),
        };
        AssertClose(new Model { Graph = g, Opsets = { [""] = 17 } }, feeds, gpu, k, 1e-5);
    }

    /// <summary>Gemm: y = alpha·A'·B' + beta·C with A and B transposed (A read M fastest) and C a bias row.</summary>
    [Theory]
    [InlineData("webgpu", 70, 45, 33, 1, 1, "64x64x8/4x4")]
    [InlineData("webgpu", 131, 20, 130, 0, 1, "64x128x8/4x8")]
    [InlineData("webgpu", 12, 13, 14, 1, 0, "32x64x8/4x4")]
    public void Gemm_with_transposes_and_bias_matches_cpu(string platform, int m, int k, int n, int transA, int transB, string tile)
    {
        var gpu = Gpu(platform, tile);
        var rng = new Random(m * 7 + k);
        long[] ash = transA == 1 ? [k, m] : [m, k], bsh = transB == 1 ? [n, k] : [k, n];
        var g = new Graph { Name = "gemm" };
        g.Inputs.Add(new ValueInfo("a", TypeRef.TensorOf(DType.Float32, ash)));
        g.Outputs.Add(new ValueInfo("y", TypeRef.TensorOf(DType.Float32, m, n)));
        g.Initializers["b"] = new Tensor(DType.Float32, bsh, Random(rng, (long)k * n));
        g.Initializers["c"] = new Tensor(DType.Float32, [n], Random(rng, n));
        g.Nodes.Add(new Node
        {
            Name = "gemm", OpType = "Gemm", Inputs = ["a", "b", "c"], Outputs = ["y"],
            Attributes = { ["transA"] = Attr.Of((long)transA), ["transB"] = Attr.Of((long)transB), ["alpha"] = Attr.Of(0.5f), ["beta"] = Attr.Of(2f) },
        });
        AssertClose(new Model { Graph = g, Opsets = { [""] = 13 } }, new() { ["a"] = new Tensor(DType.Float32, ash, Random(rng, (long)m * k)) }, gpu, k, 1e-5);
    }

    [Theory]
    [InlineData("128x128x8/8x8", true)]
    [InlineData("legacy", true)]
    [InlineData("64x64x8/3x4", false)]
    [InlineData("64x64x8", false)]
    [InlineData("60x64x8/8x4", false)]
    public void Tile_strings_parse_only_when_well_formed(string text, bool ok) =>
        Assert.Equal(ok, MatMulTiled.Tile.Parse(text) is { } t && t.ToString() == text);

    /// <summary>A malformed tile option is one clear error naming the option; a tile over the adapter's limits is unsupported
    /// with the limit it exceeds.</summary>
    [Fact]
    public void Bad_and_oversized_tiles_are_clear_errors()
    {
        var e = Assert.Throws<TapmlException>(() => new WebGpuPlatform("webgpu?matmul-tile=64x64"));
        Assert.Contains("matmul-tile=64x64", e.Message);
        var tile = MatMulTiled.Tile.Parse("256x256x64/16x16")!.Value;
        var limits = new GpuLimits(1 << 30, 1 << 30, 256, 256, 32768, 65535, 8, 256);
        Assert.Contains("workgroup memory", tile.Unfit(limits));
        Assert.Null(MatMulTiled.Tile.Parse("128x128x8/8x8")!.Value.Unfit(limits));
    }
}
