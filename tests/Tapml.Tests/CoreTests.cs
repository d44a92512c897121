using Google.Protobuf;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Onnx;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Testing;
using Xunit;

namespace Tapml.Tests;

public class CoreTests
{
    [Fact]
    public void Bf16_rounds_to_nearest_even_and_keeps_nan()
    {
        Assert.Equal((ushort)0x3F80, ((BFloat16)1.0f).Bits);
        Assert.Equal((ushort)0x3F80, ((BFloat16)(1f + 1f / 256)).Bits); // halfway: ties to even
        Assert.Equal((ushort)0x3F81, ((BFloat16)(1f + 3f / 512)).Bits); // above halfway: up
        Assert.True(float.IsNaN((float)(BFloat16)float.NaN));
    }

    [Theory]
    [InlineData(DType.Float32)] [InlineData(DType.Float16)] [InlineData(DType.BFloat16)] [InlineData(DType.Float64)]
    [InlineData(DType.Int8)] [InlineData(DType.UInt8)] [InlineData(DType.Int16)] [InlineData(DType.UInt16)]
    [InlineData(DType.Int32)] [InlineData(DType.UInt32)] [InlineData(DType.Int64)] [InlineData(DType.UInt64)] [InlineData(DType.Bool)]
    public void TensorProto_round_trip_is_bit_exact(DType dtype)
    {
        var t = Tensor.Zeros(dtype, 2, 3);
        var rng = new Random((int)dtype);
        rng.NextBytes(t.Bytes());
        if (dtype == DType.Bool) { var b = t.Bytes(); for (int i = 0; i < b.Length; i++) b[i] &= 1; }
        var back = TensorProtos.ToTensor(Ir.Onnx.Proto.TensorProto.Parser.ParseFrom(TensorProtos.FromTensor(t, "t").ToByteArray()), null, "test");
        Assert.Equal(t.DType, back.DType);
        Assert.Equal(t.Shape, back.Shape);
        Assert.True(t.Bytes().SequenceEqual(back.Bytes()));
    }

    [Fact]
    public void TensorProto_typed_fields_are_read()
    {
        var p = new Ir.Onnx.Proto.TensorProto { Name = "h", DataType = (int)DType.Float16 };
        p.Dims.Add(2);
        p.Int32Data.Add(BitConverter.HalfToUInt16Bits((Half)1.5));
        p.Int32Data.Add(BitConverter.HalfToUInt16Bits((Half)(-2)));
        var t = TensorProtos.ToTensor(p, null, "test");
        Assert.Equal([(Half)1.5, (Half)(-2)], t.As<Half>());
    }

    [Fact]
    public void TensorProto_with_too_few_values_is_a_clear_error()
    {
        var p = new Ir.Onnx.Proto.TensorProto { Name = "w", DataType = 1 };
        p.Dims.Add(3);
        p.FloatData.Add(1f);
        var e = Assert.Throws<TapmlException>(() => TensorProtos.ToTensor(p, null, "m.onnx"));
        Assert.Contains("'w'", e.Message);
        Assert.Contains("m.onnx", e.Message);
    }

    [Fact]
    public void Comparison_reports_worst_element_and_metrics()
    {
        var e = Tensor.FromArray(new float[] { 1, 2, 3, 4 }, 2, 2);
        var a = Tensor.FromArray(new float[] { 1, 2, 3.5f, 4 }, 2, 2);
        var c = Comparison.Compare("y", e, a, Tolerance.OnnxDefault);
        Assert.False(c.Passed);
        Assert.Equal(2, c.WorstIndex);
        Assert.Equal(0.5, c.Metrics.MaxAbs, 6);
        Assert.Contains("[1,0]", c.Failure);
        Assert.True(Comparison.Compare("y", e, e, Tolerance.OnnxDefault).Passed);
    }

    [Fact]
    public void Comparison_treats_nan_positions_and_dtypes_strictly()
    {
        var e = Tensor.FromArray(new float[] { float.NaN, 1 }, 2);
        Assert.True(Comparison.Compare("y", e, Tensor.FromArray(new float[] { float.NaN, 1 }, 2), Tolerance.OnnxDefault).Passed);
        var c = Comparison.Compare("y", e, Tensor.FromArray(new float[] { 0, 1 }, 2), Tolerance.OnnxDefault);
        Assert.False(c.Passed);
        Assert.Equal(1, c.Metrics.NanInfMismatches);
        Assert.False(Comparison.Compare("y", e, Tensor.FromArray(new double[] { double.NaN, 1 }, 2), Tolerance.OnnxDefault).Passed);
        Assert.False(Comparison.Compare("i", Tensor.FromArray(new long[] { long.MaxValue }, 1), Tensor.FromArray(new long[] { long.MaxValue - 1 }, 1), Tolerance.OnnxDefault).Passed);
    }

    sealed class Recorder : IExecutionObserver
    {
        public readonly List<string> Nodes = new();
        public void OnNodeRun(NodeEvent e) => Nodes.Add(e.Node.Name);
    }

    [Fact]
    public void Executor_runs_in_order_frees_intermediates_and_notifies_observers()
    {
        var b = new GraphBuilder("chain");
        string x = b.Input("x", DType.Float32, 1024);
        for (int i = 0; i < 8; i++) x = b.Node("Identity", [x], name: $"id{i}");
        b.Output(x);
        var m = new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } };
        var exec = new Executor(new CpuPlatform());
        var rec = new Recorder();
        exec.Observers.Add(rec);
        var input = Tensor.Zeros(DType.Float32, 1024);
        var outs = exec.Run(m, new Dictionary<string, Value> { ["x"] = input });
        Assert.Equal(Enumerable.Range(0, 8).Select(i => $"id{i}"), rec.Nodes);
        Assert.Same(input, outs[x]);
        // Identity passes the same buffer through, so at most two names refer to live values at once.
        Assert.True(exec.Stats.PeakLiveBytes <= 2 * 4096, $"peak {exec.Stats.PeakLiveBytes}");
    }

    [Fact]
    public void Graph_with_an_undefined_input_is_rejected_at_load()
    {
        var b = new GraphBuilder("g");
        b.Input("x", DType.Float32, 2);
        b.Output(b.Node("Identity", ["ghost"], name: "reader"));
        var bytes = OnnxExporter.ToProto(new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } }).ToByteArray();
        var e = Assert.Throws<TapmlException>(() => OnnxImporter.FromProto(Ir.Onnx.Proto.ModelProto.Parser.ParseFrom(bytes), "g.onnx"));
        Assert.Contains("'reader'", e.Message);
        Assert.Contains("'ghost'", e.Message);
    }

    [Fact]
    public void A_node_producing_another_type_than_declared_is_reported()
    {
        var b = new GraphBuilder("g");
        string x = b.Input("x", DType.Float32, 2);
        string y = b.Node("Cast", [x], new() { ["to"] = Attr.Of((long)DType.Int64) }, name: "to_int");
        b.Output(y, type: TypeRef.TensorOf(DType.Float32, 2));
        var m = new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } };
        var e = Assert.Throws<TapmlException>(() => new Executor(new CpuPlatform()).Run(m, new Dictionary<string, Value> { ["x"] = Tensor.Zeros(DType.Float32, 2) }));
        Assert.Contains("'to_int'", e.Message);
        Assert.Contains("i64", e.Message);
    }
}
