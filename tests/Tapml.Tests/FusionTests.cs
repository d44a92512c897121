using Tapml.Core;
using Tapml.Ir;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Xunit;

namespace Tapml.Tests;

/// <summary>Graph fusion (tapml.Fused regions): the cpu runs a fused graph bit-identically to the original, webgpu runs
/// each region as one kernel within tolerance of it, and values used outside a region are never fused away.</summary>
public class FusionTests
{
    static Model Tiny(string arch) => HfModels.Load(TinyCheckpoint.Materialize(arch));

    static Dictionary<string, Value> Feeds(Model m) => Generation.PrefillFeeds(m, [1, 17, 305, 42, 7]);

    public static TheoryData<string> Archs => new(TinyCheckpoint.Architectures);

    [Theory]
    [MemberData(nameof(Archs))]
    public void Cpu_runs_the_fused_graph_exactly_as_the_original(string arch)
    {
        var m = Tiny(arch);
        var f = Fusion.Fuse(m, out var report);
        Assert.True(report.NodesAfter < report.NodesBefore, report.ToString());
        Assert.Equal(report.NodesAfter, f.Graph.Nodes.Count);
        // Every fused node's body is a slice of the original nodes (same objects), nothing lost or duplicated.
        var bodies = f.Graph.Nodes.Where(n => n.OpType == Fusion.OpType).SelectMany(n => n.Attributes["body"].G!.Nodes);
        Assert.Equal(m.Graph.Nodes.Count, f.Graph.Nodes.Count(n => n.OpType != Fusion.OpType) + bodies.Count());
        if (arch != "gpt2")
        {
            Assert.Equal(m.Graph.Nodes.Count(n => n.OpType == "ReduceMean"), report.Regions["rms_norm"]);
            Assert.True(report.Regions.GetValueOrDefault("rotary") == 2 * m.Graph.Nodes.Count(n => n.OpType == "Softmax"), report.ToString());
        }
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        var a = new Executor(cpu).Run(m, Feeds(m));
        var b = new Executor(cpu).Run(f, Feeds(f));
        foreach (var (name, v) in a)
            Assert.Equal(((Tensor)v).Span<float>().ToArray(), ((Tensor)b[name]).Span<float>().ToArray());
    }

    [Fact]
    public void A_value_used_outside_a_region_stays_outside()
    {
        // y = Sqrt(x + 1) * 2, and x + 1 is also a graph output: only Sqrt and Mul may fuse.
        var g = new Graph { Name = "g" };
        g.Inputs.Add(new ValueInfo("x", TypeRef.TensorOf(DType.Float32, 4)));
        g.Initializers["one"] = Tensor.Scalar(1f);
        g.Initializers["two"] = Tensor.Scalar(2f);
        g.Nodes.Add(new Node { Name = "add", OpType = "Add", Inputs = ["x", "one"], Outputs = ["a"] });
        g.Nodes.Add(new Node { Name = "sqrt", OpType = "Sqrt", Inputs = ["a"], Outputs = ["s"] });
        g.Nodes.Add(new Node { Name = "mul", OpType = "Mul", Inputs = ["s", "two"], Outputs = ["y"] });
        g.Outputs.Add(new ValueInfo("a", null));
        g.Outputs.Add(new ValueInfo("y", null));
        var f = Fusion.Fuse(new Model { Graph = g, Opsets = new() { [""] = 17 } }, out var report);
        Assert.Equal(2, f.Graph.Nodes.Count);
        Assert.Equal("Add", f.Graph.Nodes[0].OpType);
        var body = f.Graph.Nodes[1].Attributes["body"].G!;
        Assert.Equal(["Sqrt", "Mul"], body.Nodes.Select(n => n.OpType));
        Assert.Equal(["a", "two"], f.Graph.Nodes[1].Inputs);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        var outs = new Executor(cpu).Run(f, new Dictionary<string, Value> { ["x"] = Tensor.FromArray(new[] { 0f, 3f, 8f, 15f }, 4) });
        Assert.Equal([1f, 4f, 9f, 16f], ((Tensor)outs["a"]).Span<float>().ToArray());
        Assert.Equal([2f, 4f, 6f, 8f], ((Tensor)outs["y"]).Span<float>().ToArray());
    }

    /// <summary>The fused graph on webgpu against the original graph on cpu, every output (logits and KV cache)
    /// within f32 matmul tolerance; the kernels ran (fewer dispatches than nodes of the original graph).</summary>
    [Theory]
    [InlineData("llama", "webgpu")]
    [InlineData("phi3", "webgpu:gles")]
    [InlineData("gpt2", "webgpu:gles")]
    public void Webgpu_runs_fused_regions_as_single_kernels_within_tolerance(string arch, string platform)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        var m = Tiny(arch);
        var f = Fusion.Fuse(m, out _);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = new WebGpuPlatform(platform);
        var want = new Executor(cpu).Run(m, Feeds(m));
        long d0 = gpu.Device.Dispatches;
        var got = new Executor(gpu).Run(f, Feeds(f));
        long dispatches = gpu.Device.Dispatches - d0;
        Assert.True(dispatches < m.Graph.Nodes.Count, $"{dispatches} dispatches for {m.Graph.Nodes.Count} original nodes");
        foreach (var (name, v) in want)
        {
            var e = ((Tensor)v).Span<float>();
            var a = ((Tensor)got[name]).Span<float>();
            Assert.Equal(e.Length, a.Length);
            for (int i = 0; i < e.Length; i++)
                Assert.True(Math.Abs(a[i] - e[i]) <= 1e-4 + 1e-3 * Math.Abs(e[i]), $"{name}[{i}]: {a[i]} vs {e[i]}");
        }
    }

    [Fact]
    public void Generate_fuses_on_webgpu_and_gives_the_cpu_tokens()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var cpu = CliRunner.Run("generate", "--model", "builtin:tiny-qwen2", "--platform", "cpu", "--input-ids", "1,17,305,42", "--max-tokens", "8");
        var gpu = CliRunner.Run("generate", "--model", "builtin:tiny-qwen2", "--platform", "webgpu", "--input-ids", "1,17,305,42", "--max-tokens", "8");
        Assert.True(gpu.ExitCode == 0, gpu.Stdout + gpu.Stderr);
        Assert.Contains("fused: ", gpu.Stderr);
        Assert.Contains("rms_norm", gpu.Stderr);
        Assert.DoesNotContain("fused: ", cpu.Stderr);
        string Tokens(string s) => s.Split('\n').Single(l => l.StartsWith("tokens:", StringComparison.Ordinal));
        Assert.Equal(Tokens(cpu.Stdout), Tokens(gpu.Stdout));
    }
}
