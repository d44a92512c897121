using Tapml.Core;
using Tapml.Ir;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Xunit;

namespace Tapml.Tests;

/// <summary>Prompt attention by tiles of query rows (<c>attn-tile=v2</c>: <see cref="Tapml.Platforms.WebGpu.Kernels.AttentionTiles"/>;
/// <c>v1</c>: the first layout) and one workgroup per row (<c>attn-tiled=0</c>) on the fused tiny Llama: a 70-token prompt
/// (tiles of 16 query rows and 32–64 keys, both with a ragged last tile, q rotated as it loads, the causal mask) gives the
/// cpu's logits and presents within tolerance; vulkan (GLSL) and opencl (OpenCL C) run the default layout.</summary>
public class AttentionTilesTests
{
    [Theory]
    [InlineData("webgpu")]
    [InlineData("webgpu?attn-tile=v1")]
    [InlineData("webgpu?attn-tiled=0")]
    [InlineData("vulkan")]
    [InlineData("opencl")]
    public void A_prompt_matches_cpu_with_each_attention_layout(string spec)
    {
        WebGpuTests.SkipIfNoDawn(spec.Split('?')[0]);
        var m = HfModels.Load(TinyCheckpoint.Materialize("llama"));
        var f = Fusion.Fuse(m, out _);
        var rng = new Random(7);
        long[] prompt = Enumerable.Range(0, 70).Select(_ => (long)rng.Next(1024)).ToArray();
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        IPlatform p;
        try { p = PlatformRegistry.Create(spec); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); throw; }
        using var gpu = p;
        var want = new Executor(cpu).Run(m, Generation.PrefillFeeds(m, prompt));
        var got = new Executor(gpu).Run(f, Generation.PrefillFeeds(f, prompt));
        foreach (var (name, v) in want) KvCacheTests.AssertClose((Tensor)v, (Tensor)got[name], $"{name} on {spec}");
    }
}
