using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Platforms;
using Xunit;

namespace Tapml.Tests;

/// <summary>The GPU platforms that run the webgpu kernels rendered to another dialect (vulkan: GLSL → SPIR-V;
/// opencl: OpenCL C), on this machine's software drivers (SwiftShader/lavapipe, PoCL). A platform that cannot
/// start here skips with its reason.</summary>
public class GpuPlatformTests
{
    static void SkipIfUnavailable(string spec)
    {
        try { using var p = PlatformRegistry.Create(spec); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); }
    }

    [Theory]
    [InlineData("vulkan")]
    [InlineData("opencl")]
    public void Onnx_node_cases_pass_as_many_as_webgpu_and_none_fail(string platform)
    {
        SkipIfUnavailable(platform);
        string node = SharedData.Require("conformance", "onnx", "node");
        string json = Path.Combine(Path.GetTempPath(), $"tapml-{platform}-conf-{Guid.NewGuid():N}.json");
        var r = CliRunner.Run("conformance", node, "--platform", platform, "--json", json);
        var d = JsonNode.Parse(File.ReadAllText(json))!;
        File.Delete(json);
        Assert.True((int)d["failed"]! == 0 && (int)d["errors"]! == 0, r.Stdout);
        Assert.True((int)d["passed"]! >= 395, r.Stdout);
        foreach (var c in d["cases"]!.AsArray().Where(c => (string)c!["status"]! == "skipped"))
            Assert.False(string.IsNullOrWhiteSpace((string?)c!["reason"]), (string)c["name"]!);
    }

    /// <summary>The exported Hugging Face graphs (../shared/conformance/hf-onnx) at their suite's tolerance.</summary>
    [Theory]
    [InlineData("vulkan")]
    [InlineData("opencl")]
    public void Hf_onnx_cases_pass(string platform)
    {
        SkipIfUnavailable(platform);
        string dir = SharedData.Require("conformance", "hf-onnx");
        var r = CliRunner.Run("conformance", dir, "--platform", platform, "--rtol", "1e-3", "--atol", "1e-4");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.Contains(" 0 failed", r.Stdout);
        Assert.Contains(" 0 skipped", r.Stdout);
    }

    [Theory]
    [InlineData("vulkan", "llama")]
    [InlineData("vulkan", "gpt2")]
    [InlineData("vulkan?icd=lavapipe", "qwen2")]
    [InlineData("opencl", "llama")]
    [InlineData("opencl", "gpt2")]
    public void Greedy_tokens_equal_cpu(string platform, string arch)
    {
        SkipIfUnavailable(platform);
        string[] args = ["generate", "--model", $"builtin:tiny-{arch}", "--input-ids", "1,17,305,42", "--max-tokens", "6"];
        var cpu = CliRunner.Run([.. args, "--platform", "cpu"]);
        var gpu = CliRunner.Run([.. args, "--platform", platform]);
        Assert.True(gpu.ExitCode == 0, gpu.Stderr);
        string Tokens(string s) => s.Split('\n').First(l => l.StartsWith("tokens:", StringComparison.Ordinal));
        Assert.Equal(Tokens(cpu.Stdout), Tokens(gpu.Stdout));
    }
}
