using System.Text.Json.Nodes;
using Xunit;

namespace Tapml.Tests;

/// <summary><c>conformance --fallback P</c>: a case whose nodes the platform cannot run (an f64 Add on webgpu) passes
/// with those nodes on P, and says so on its line, in the JSON and in the last line; without the option it is skipped.</summary>
public class ConformanceFallbackTests
{
    [Fact]
    public void An_f64_case_passes_on_webgpu_with_its_node_on_cpu_and_is_skipped_without_fallback()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        string dir = SharedData.Require("conformance", "onnx", "pytorch-operator");
        string json = Path.Combine(Path.GetTempPath(), $"tapml-fallback-{Guid.NewGuid():N}.json");
        var r = CliRunner.Run("conformance", dir, "--platform", "webgpu", "--fallback", "cpu", "--filter", "^test_operator_add_broadcast$", "--json", json);
        var d = JsonNode.Parse(File.ReadAllText(json))!;
        File.Delete(json);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.Equal("1 passed, 0 failed, 0 skipped (1 passed with nodes on cpu)", r.Stdout.TrimEnd().Split('\n')[^1]);
        Assert.Contains("passed test_operator_add_broadcast (cpu: Add ×1 — f64 tensors have no WGSL type", r.Stdout);
        var c = d["cases"]![0]!;
        Assert.Equal("passed", (string)c["status"]!);
        Assert.StartsWith("cpu: Add ×1", (string)c["fallback"]!);
        Assert.Equal(1, (int)d["passed_with_fallback"]!);

        var without = CliRunner.Run("conformance", dir, "--platform", "webgpu", "--filter", "^test_operator_add_broadcast$");
        Assert.Equal("0 passed, 0 failed, 1 skipped", without.Stdout.TrimEnd().Split('\n')[^1]);
        Assert.Contains("f64 tensors have no WGSL type", without.Stdout);
    }

    /// <summary>A case every node of which the platform runs has no marker: the fallback is never used silently.</summary>
    [Fact]
    public void A_case_the_platform_runs_whole_has_no_fallback_marker()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        string dir = SharedData.Require("conformance", "onnx", "pytorch-operator");
        var r = CliRunner.Run("conformance", dir, "--platform", "webgpu", "--fallback", "cpu", "--filter", "^test_operator_basic$");
        Assert.Equal("1 passed, 0 failed, 0 skipped (0 passed with nodes on cpu)", r.Stdout.TrimEnd().Split('\n')[^1]);
        Assert.DoesNotContain("(cpu:", r.Stdout);
    }
}
