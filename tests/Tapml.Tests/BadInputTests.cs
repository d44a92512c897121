using Google.Protobuf;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Onnx;
using Xunit;

namespace Tapml.Tests;

/// <summary>Bad input gets exit code 2 and one clear line naming the file, node or tensor: never a stack trace.</summary>
public class BadInputTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tapml-bad-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    static void AssertUserError(CliRunner.Result r, params string[] mustMention)
    {
        Assert.True(r.ExitCode == 2, $"exit code {r.ExitCode}, stderr: {r.Stderr}");
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.StartsWith("error: ", lines[0]);
        Assert.DoesNotContain("   at ", r.Stderr);
        foreach (var m in mustMention) Assert.Contains(m, lines[0]);
    }

    string Write(string name, byte[] bytes) { string p = Path.Combine(_dir, name); File.WriteAllBytes(p, bytes); return p; }

    static byte[] ValidModelBytes() => OnnxExporter.ToProto(SampleModels.SampleMlp()).ToByteArray();

    [Fact]
    public void Empty_file()
    {
        string p = Write("empty.onnx", []);
        AssertUserError(CliRunner.Run("run", "--model", p, "--platform", "cpu"), "empty.onnx", "empty");
    }

    [Fact]
    public void Truncated_file()
    {
        var bytes = ValidModelBytes();
        string p = Write("truncated.onnx", bytes[..(bytes.Length / 2)]);
        AssertUserError(CliRunner.Run("run", "--model", p, "--platform", "cpu"), "truncated.onnx");
    }

    [Fact]
    public void Random_bytes()
    {
        var bytes = new byte[4096];
        new Random(1).NextBytes(bytes);
        string p = Write("random.onnx", bytes);
        AssertUserError(CliRunner.Run("run", "--model", p, "--platform", "cpu"), "random.onnx");
    }

    [Fact]
    public void Missing_file() => AssertUserError(CliRunner.Run("run", "--model", Path.Combine(_dir, "nope.onnx"), "--platform", "cpu"), "nope.onnx", "not found");

    [Fact]
    public void Unknown_operator()
    {
        var b = new GraphBuilder("g");
        string x = b.Input("x", DType.Float32, 2);
        b.Output(b.Node("FrobnicateTensor", [x], name: "weird_node"));
        var m = new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } };
        string p = Path.Combine(_dir, "unknown.onnx");
        OnnxExporter.Save(m, p);
        AssertUserError(CliRunner.Run("run", "--model", p, "--platform", "cpu"), "weird_node", "FrobnicateTensor");
    }

    [Fact]
    public void Missing_external_data_file()
    {
        var b = new GraphBuilder("g");
        string x = b.Input("x", DType.Float32, 4);
        b.Output(b.Node("Add", [x, "weight"]));
        var proto = OnnxExporter.ToProto(new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } });
        var w = new Tapml.Ir.Onnx.Proto.TensorProto { Name = "weight", DataType = 1, DataLocation = Tapml.Ir.Onnx.Proto.TensorProto.Types.DataLocation.External };
        w.Dims.Add(4);
        w.ExternalData.Add(new Tapml.Ir.Onnx.Proto.StringStringEntryProto { Key = "location", Value = "weights.bin" });
        proto.Graph.Initializer.Add(w);
        string p = Write("external.onnx", proto.ToByteArray());
        AssertUserError(CliRunner.Run("run", "--model", p, "--platform", "cpu"), "weights.bin", "weight");
    }

    [Fact]
    public void Wrong_input_shape()
    {
        string p = Path.Combine(_dir, "mlp.onnx");
        OnnxExporter.Save(SampleModels.SampleMlp(), p);
        var inputs = Directory.CreateDirectory(Path.Combine(_dir, "in")).FullName;
        File.WriteAllBytes(Path.Combine(inputs, "x.pb"), TensorProtos.FromTensor(Tensor.Zeros(DType.Float32, 1, 32), "x").ToByteArray());
        AssertUserError(CliRunner.Run("run", "--model", p, "--platform", "cpu", "--inputs", inputs), "'x'", "f32[batch,64]", "f32[1,32]");
    }

    [Fact]
    public void Unknown_platform() => AssertUserError(CliRunner.Run("run", "--model", "builtin:sample-mlp", "--platform", "quantum"), "quantum");

    [Fact]
    public void Verbose_prints_the_stack_trace()
    {
        string p = Write("empty2.onnx", []);
        var r = CliRunner.Run("run", "--model", p, "--platform", "cpu", "--verbose");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(" at ", r.Stderr);
    }
}
