using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Tapml.Platforms.WebGpu.Kernels;
using Xunit;

namespace Tapml.Tests;

/// <summary>Products of a few rows against a weight (<see cref="MatMulSkinny"/>: short prompts) against cpu: M around the
/// matrix-vector and skinny limits (1, 3, 16, 17, 33), K not a multiple of 4 (scalar weight reads, guarded x) or of the
/// tiles, N odd, f32 and packed f16 weights, layouts from the spec options, and the fused matmul_add residual; on webgpu
/// and on the platforms that render the same WGSL (vulkan: GLSL, opencl: OpenCL C).</summary>
public class MatMulSkinnyTests
{
    static WebGpuPlatform Gpu(string platform, string layout)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        IPlatform p;
        try { p = PlatformRegistry.Create(platform); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); throw; }
        var g = Assert.IsType<WebGpuPlatform>(p);
        // The layout as spec options (vulkan and opencl take no kernel options in their spec: set on the platform).
        foreach (var kv in layout.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = kv.Split('=');
            g.Skinny = g.Skinny.With(platform, parts[0], parts[1]) ?? throw new ArgumentException(kv);
        }
        return g;
    }

    static float[] Random(Random rng, long n) => Enumerable.Range(0, (int)n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();

    static (Model, Dictionary<string, Value>) WeightProduct(int m, int k, int n, DType wtype, bool residual)
    {
        var rng = new Random(m * 1000 + k * 10 + n);
        var w = Random(rng, k * n);
        var g = new Graph { Name = "mm" };
        g.Inputs.Add(new ValueInfo("x", TypeRef.TensorOf(wtype, 1L, m, k)));
        g.Outputs.Add(new ValueInfo("y", TypeRef.TensorOf(wtype, 1L, m, n)));
        g.Initializers["w"] = wtype == DType.Float16 ? new Tensor(DType.Float16, [k, n], w.Select(v => (Half)v).ToArray()) : new Tensor(DType.Float32, [k, n], w);
        var feeds = new Dictionary<string, Value>();
        if (residual)
        {
            g.Inputs.Add(new ValueInfo("r", TypeRef.TensorOf(wtype, 1L, m, n)));
            g.Nodes.Add(new Node { Name = "mm", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["p"] });
            g.Nodes.Add(new Node { Name = "add", OpType = "Add", Inputs = ["p", "r"], Outputs = ["y"] });
            feeds["r"] = new Tensor(DType.Float32, [1, m, n], Random(rng, (long)m * n));
        }
        else g.Nodes.Add(new Node { Name = "mm", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["y"] });
        var xs = Random(rng, (long)m * k);
        feeds["x"] = wtype == DType.Float16 ? new Tensor(DType.Float16, [1, m, k], xs.Select(v => (Half)v).ToArray()) : new Tensor(DType.Float32, [1, m, k], xs);
        return (new Model { Graph = g, Opsets = { [""] = 17 } }, feeds);
    }

    static void AssertClose(Tensor want, Tensor got, string who, long k, double tol)
    {
        Assert.Equal(want.Shape, got.Shape);
        var a = want.Data.Cast<object>().Select(v => v is Half h ? (double)h : Convert.ToDouble(v)).ToArray();
        var b = got.Data.Cast<object>().Select(v => v is Half h ? (double)h : Convert.ToDouble(v)).ToArray();
        double t = tol * Math.Sqrt(k);
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= t * (1 + Math.Abs(a[i])), $"y[{i}]: cpu {a[i]}, {who} {b[i]}");
    }

    /// <summary>x [1, M, K] · W [K, N] (+ r [1, M, N] as a fused matmul_add where <paramref name="residual"/>).</summary>
    [Theory]
    [InlineData("webgpu", 1, 130, 67, DType.Float32, false, "")]                  // the matrix-vector kernel beside it
    [InlineData("webgpu", 3, 64, 33, DType.Float32, false, "")]
    [InlineData("webgpu", 2, 1030, 1027, DType.Float32, false, "")]               // over 2^20 elements: transposed on the host's cores
    [InlineData("webgpu", 1, 8192, 8200, DType.Float32, false, "")]               // 269 MB: written to the GPU in two pieces
    [InlineData("webgpu", 16, 130, 67, DType.Float32, false, "")]                 // K % 4 = 2: scalar weight reads
    [InlineData("webgpu", 17, 1030, 45, DType.Float32, false, "")]
    [InlineData("webgpu", 33, 67, 33, DType.Float32, false, "skinny-m=40")]
    [InlineData("webgpu", 17, 96, 67, DType.Float32, false, "skinny-threads=32&skinny-rows=4&skinny-wg=64")]
    [InlineData("webgpu", 16, 130, 67, DType.Float32, false, "skinny-xs=1&skinny-rows=2")]
    [InlineData("webgpu", 16, 72, 45, DType.Float32, true, "")]                   // residual in the epilogue
    [InlineData("webgpu", 17, 72, 33, DType.Float16, false, "")]                  // packed f16, the f16 kernel with this layout
    [InlineData("webgpu", 16, 70, 33, DType.Float16, false, "")]                  // packed f16, K % 8 ≠ 0: tiled
    [InlineData("vulkan", 17, 130, 67, DType.Float32, false, "")]
    [InlineData("vulkan", 17, 96, 67, DType.Float32, false, "")]
    [InlineData("vulkan", 16, 72, 45, DType.Float32, true, "")]
    [InlineData("opencl", 17, 130, 67, DType.Float32, false, "")]
    [InlineData("opencl", 16, 72, 45, DType.Float32, true, "")]
    [InlineData("opencl", 17, 72, 33, DType.Float16, false, "skinny-xs=1")]
    public void Few_rows_against_a_weight_match_cpu(string platform, int m, int k, int n, DType wtype, bool residual, string layout)
    {
        var gpu = Gpu(platform, layout);
        var (model, feeds) = WeightProduct(m, k, n, wtype, residual);
        var want = (Tensor)new Executor(PlatformRegistry.Create("cpu")).Run(model, feeds)["y"];
        if (residual) model = Fusion.Fuse(model, out _);
        Tensor got;
        using (gpu) got = (Tensor)new Executor(gpu).Run(model, feeds)["y"];
        AssertClose(want, got, gpu.Name, k, wtype == DType.Float16 ? 4e-3 : 1e-5);
    }

    /// <summary>16 rows against a long K and few columns: the skinny kernel is one dispatch, where the tiled kernel (skinny-m=0)
    /// splits K (partial products, their sum: two); both equal cpu.</summary>
    [Theory]
    [InlineData("", 1)]
    [InlineData("skinny-m=0", 2)]
    public void The_skinny_kernel_replaces_the_split_tiled_product(string layout, int dispatches)
    {
        var gpu = Gpu("webgpu", layout);
        var (model, feeds) = WeightProduct(16, 1100, 40, DType.Float32, false);
        var want = (Tensor)new Executor(PlatformRegistry.Create("cpu")).Run(model, feeds)["y"];
        using (gpu)
        {
            var exec = new Executor(gpu);
            exec.Run(model, feeds);                                        // uploads the weight
            long d0 = gpu.Device.Dispatches;
            var got = (Tensor)exec.Run(model, feeds)["y"];
            Assert.Equal(dispatches, gpu.Device.Dispatches - d0);
            AssertClose(want, got, gpu.Name, 1100, 1e-5);
        }
    }

    [Fact]
    public void Bad_skinny_options_are_clear_errors()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var e = Assert.Throws<TapmlException>(() => new WebGpuPlatform("webgpu?skinny-m=500"));
        Assert.Contains("skinny-m=500", e.Message);
        e = Assert.Throws<TapmlException>(() => new WebGpuPlatform("webgpu?skinny-threads=64&skinny-wg=96"));
        Assert.Contains("skinny-wg", e.Message);
        e = Assert.Throws<TapmlException>(() => new WebGpuPlatform("webgpu?matmul-ladder=v9"));
        Assert.Contains("matmul-ladder=v9", e.Message);
    }
}
