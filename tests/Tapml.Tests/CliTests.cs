using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir.Onnx;
using Xunit;

namespace Tapml.Tests;

/// <summary>The CLI contract (DESIGN.md): verbs, JSON shapes, summary lines, exit codes.</summary>
public class CliTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tapml-cli-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    [Theory]
    [InlineData("builtin:sample-cnn")]
    [InlineData("builtin:sample-mlp")]
    public void Main_job_runs_a_builtin_model_on_cpu_and_matches_onnxruntime(string model)
    {
        var r = CliRunner.Run("run", "--model", model, "--platform", "cpu", "--compare", "onnxruntime");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.Contains("outputs match (cpu vs onnxruntime)", r.Stdout);
    }

    [Fact]
    public void Run_writes_outputs_that_read_back_as_tensor_protos()
    {
        string outDir = Path.Combine(_dir, "out");
        var r = CliRunner.Run("run", "--model", "builtin:sample-cnn", "--platform", "cpu", "--outputs", outDir);
        Assert.Equal(0, r.ExitCode);
        var probs = (Tensor)TensorProtos.ReadValueFile(Path.Combine(outDir, "probabilities.pb"), null);
        Assert.Equal(new long[] { 1, 10 }, probs.Shape);
        Assert.Equal(1.0, probs.As<float>().Sum(), 5);
    }

    [Fact]
    public void Conformance_json_and_summary_line_follow_the_contract()
    {
        string node = SharedData.Require("conformance", "onnx", "node");
        string json = Path.Combine(_dir, "c.json"), junit = Path.Combine(_dir, "c.xml");
        var r = CliRunner.Run("conformance", node, "--platform", "cpu", "--filter", "^test_(relu|sigmoid|bernoulli)$", "--json", json, "--junit", junit);
        Assert.Equal(0, r.ExitCode);
        Assert.Equal("2 passed, 0 failed, 1 skipped", r.Stdout.TrimEnd().Split('\n')[^1]);
        var d = JsonNode.Parse(File.ReadAllText(json))!.AsObject();
        foreach (var key in new[] { "platform", "passed", "failed", "skipped", "errors", "cases" }) Assert.True(d.ContainsKey(key), key);
        var cases = d["cases"]!.AsArray();
        Assert.Equal(3, cases.Count);
        var skipped = cases.Single(c => (string)c!["status"]! == "skipped")!;
        Assert.Equal("test_bernoulli", (string)skipped["name"]!);
        Assert.Contains("random", (string)skipped["reason"]!);
        var passed = cases.First(c => (string)c!["status"]! == "passed")!;
        Assert.NotNull(passed["metrics"]!["max_abs"]);
        Assert.Contains("<testsuite", File.ReadAllText(junit));
    }

    [Fact]
    public void Conformance_exits_1_when_a_case_fails()
    {
        // A copy of ONNX's Relu case whose expected output is off by 0.5 in one element must fail, naming it.
        string src = Path.Combine(SharedData.Require("conformance", "onnx", "node"), "test_relu");
        string dst = Path.Combine(_dir, "cases", "test_relu_wrong");
        Directory.CreateDirectory(Path.Combine(dst, "test_data_set_0"));
        File.Copy(Path.Combine(src, "model.onnx"), Path.Combine(dst, "model.onnx"));
        File.Copy(Path.Combine(src, "test_data_set_0", "input_0.pb"), Path.Combine(dst, "test_data_set_0", "input_0.pb"));
        var y = (Tensor)TensorProtos.ReadValueFile(Path.Combine(src, "test_data_set_0", "output_0.pb"), null);
        y.Span<float>()[7] += 0.5f;
        File.WriteAllBytes(Path.Combine(dst, "test_data_set_0", "output_0.pb"), TensorProtos.Serialize(y, "y"));
        var r = CliRunner.Run("conformance", Path.Combine(_dir, "cases"), "--platform", "cpu");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("test_relu_wrong", r.Stdout);
        // The failure carries the one-line command that reproduces it alone, and that command fails the same way.
        string repro = r.Stdout.Split('\n').Single(l => l.TrimStart().StartsWith("reproduce: ")).Trim()["reproduce: ./tapml ".Length..];
        var again = CliRunner.Run(repro.Split(' '));
        Assert.Equal(1, again.ExitCode);
        Assert.Contains("test_relu_wrong", again.Stdout);
        Assert.Equal("0 passed, 1 failed, 0 skipped", r.Stdout.TrimEnd().Split('\n')[^1]);
    }

    [Fact]
    public void Negative_tolerance_is_a_user_error()
    {
        var r = CliRunner.Run("conformance", _dir, "--atol", "-1");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("non-negative", r.Stderr);
    }

    [Fact]
    public void Platforms_json_lists_cpu_and_onnxruntime()
    {
        var r = CliRunner.Run("platforms", "--json");
        Assert.Equal(0, r.ExitCode);
        var names = JsonNode.Parse(r.Stdout)!["platforms"]!.AsArray().Select(p => (string)p!["name"]!).ToList();
        Assert.Contains("cpu", names);
        Assert.Contains("onnxruntime", names);
    }

    [Fact]
    public void Unknown_verb_is_exit_2() => Assert.Equal(2, CliRunner.Run("frobnicate", "--help").ExitCode);
}
