using System.Text.RegularExpressions;
using Xunit;

namespace Tapml.Tests;

/// <summary><c>run --profile</c> on a GPU that times its kernels: GPU time per op family, each dispatch counted under the
/// op type of the node that recorded it; a host platform prints no GPU table.</summary>
public class WebGpuProfileTests
{
    [Fact]
    public void Run_profile_gives_gpu_time_per_op_family()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var r = CliRunner.Run("run", "--model", "builtin:sample-cnn", "--platform", "webgpu", "--profile");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        string text = Regex.Replace(r.Stdout, @"\s+", " ");
        Assert.Matches(@"│ conv │ Conv [0-9.]+ │ 2 │", text);
        Assert.Matches(@"│ matmul │ Gemm [0-9.]+ │ 1 │", text);
        Assert.Matches(@"│ norm │ BatchNormalization [0-9.]+ │ 2 │", text);
        // Every dispatch of the run is in one family row: the rows' dispatches add up to the caption's count.
        var total = Regex.Match(text, @"GPU time on webgpu: [0-9.]+ ms in (\d+) dispatches");
        Assert.True(total.Success, r.Stdout);
        int rows = Regex.Matches(text, @"│ [a-z ]+ │ [^│]+ │ (\d+) │ [0-9.]+ │ [0-9.]+% │").Sum(m => int.Parse(m.Groups[1].Value));
        Assert.Equal(int.Parse(total.Groups[1].Value), rows);

        var cpu = CliRunner.Run("run", "--model", "builtin:sample-cnn", "--platform", "cpu", "--profile");
        Assert.True(cpu.ExitCode == 0, cpu.Stderr);
        Assert.DoesNotContain("op family", cpu.Stdout);
    }
}
