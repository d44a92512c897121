using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.Faulty;
using Xunit;

namespace Tapml.Tests;

/// <summary>The faulty platform corrupts exactly the nodes it names, each fault kind as documented, and the rest
/// of the graph runs as on its inner platform.</summary>
public class FaultyPlatformTests
{
    // x[2,3] → Relu (node "relu") → Mul by 2 (node "double") → y
    static (Model, Dictionary<string, Value>) Build(float[]? data = null)
    {
        var b = new GraphBuilder("faulty");
        string x = b.Input("x", DType.Float32, 2, 3);
        string r = b.Node("Relu", [x], name: "relu", outputName: "r");
        string two = b.Initializer("two", Tensor.Scalar(2f));
        string y = b.Node("Mul", [r, two], name: "double", outputName: "y");
        b.Output(r);
        b.Output(y);
        var feeds = new Dictionary<string, Value> { ["x"] = Tensor.FromArray(data ?? [1f, -2f, 3f, 4f, 5f, -6f], 2, 3) };
        return (new Model { Graph = b.Graph, Opsets = new() { [""] = 17 }, IrVersion = 8 }, feeds);
    }

    static float[] Run(string spec, string output, float[]? data = null)
    {
        var (m, feeds) = Build(data);
        using var p = PlatformRegistry.Create(spec);
        return ((Tensor)new Executor(p).Run(m, feeds)[output]).As<float>();
    }

    public static TheoryData<string, float[]> KindRows => new()
    {
        // relu of [1,-2,3,4,5,-6] is [1,0,3,4,5,0]
        { "scale", [1.5f, 0, 4.5f, 6, 7.5f, 0] },
        { "offset", [2, 1, 4, 5, 6, 1] },
        { "nan", [1, 0, 3, float.NaN, 5, 0] },
        { "zero-tail", [1, 0, 3, 4, 0, 0] },                 // ⌈0.25·6⌉ = 2 zeroed
        { "stale", [0, 0, 0, 0, 0, 0] },                     // first call: a fresh (zero) buffer
        { "transpose", [1, 4, 0, 5, 3, 0] },                 // [2,3] written as its [3,2] transpose
    };

    [Theory]
    [MemberData(nameof(KindRows))]
    public void Kind_corrupts_the_named_node_as_documented(string kind, float[] want)
    {
        var got = Run($"faulty:cpu?node=relu&kind={kind}", "r");
        Assert.Equal(want, got);
        // the consumer runs unchanged on the corrupted input
        var y = Run($"faulty:cpu?node=relu&kind={kind}", "y");
        Assert.Equal(want.Select(v => v * 2), y);
    }

    [Fact]
    public void Other_nodes_are_untouched_and_op_selects_by_type()
    {
        Assert.Equal([1f, 0, 3, 4, 5, 0], Run("faulty:cpu?node=double&kind=scale", "r"));
        Assert.Equal([3f, 0, 9, 12, 15, 0], Run("faulty:cpu?op=Mul&kind=scale", "y"));
        Assert.Equal([2f, 0, 6, 8, 10, 0], Run("faulty:cpu?op=Softmax&kind=scale", "y"));
        Assert.Equal([3f, 0, 9, 12, 15, 0], Run("faulty:cpu?op=Mul&kind=scale&amount=1.5", "y"));
    }

    [Fact]
    public void Stale_returns_the_previous_call()
    {
        var (m, _) = Build();
        using var p = new FaultyPlatform("faulty:cpu?node=relu&kind=stale");
        var exec = new Executor(p);
        var a = Tensor.FromArray(new[] { 1f, 2, 3, 4, 5, 6 }, 2, 3);
        var b = Tensor.FromArray(new[] { 7f, 8, 9, 10, 11, 12 }, 2, 3);
        exec.Run(m, new Dictionary<string, Value> { ["x"] = a });
        var second = ((Tensor)exec.Run(m, new Dictionary<string, Value> { ["x"] = b })["r"]).As<float>();
        Assert.Equal(a.As<float>(), second);
        Assert.Equal(2, p.Corrupted);
    }

    [Fact]
    public void From_delays_the_fault_and_unchanged_faults_are_counted()
    {
        var (m, feeds) = Build();
        using var p = new FaultyPlatform("faulty:cpu?node=relu&kind=scale&from=1");
        var exec = new Executor(p);
        Assert.Equal([1f, 0, 3, 4, 5, 0], ((Tensor)exec.Run(m, feeds)["r"]).As<float>());
        Assert.Equal([1.5f, 0, 4.5f, 6, 7.5f, 0], ((Tensor)exec.Run(m, feeds)["r"]).As<float>());

        using var q = new FaultyPlatform("faulty:cpu?node=relu&kind=zero-tail");
        new Executor(q).Run(Build([1f, 2, 3, 4, -5, -6]).Item1, new Dictionary<string, Value> { ["x"] = Tensor.FromArray(new[] { 1f, 2, 3, 4, -5, -6 }, 2, 3) });
        Assert.Equal(0, q.Corrupted);
        Assert.Equal(1, q.Unchanged);
    }

    [Fact]
    public void Integer_outputs_are_corrupted_too()
    {
        var b = new GraphBuilder("ints");
        string x = b.Input("x", DType.Float32, 2, 3);
        string s = b.Node("Shape", [x], name: "shape", outputName: "s");
        b.Output(s);
        var m = new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } };
        var feeds = new Dictionary<string, Value> { ["x"] = Tensor.Zeros(DType.Float32, 2, 3) };
        long[] Shape(string kind)
        {
            using var p = PlatformRegistry.Create($"faulty:cpu?op=Shape&kind={kind}");
            return ((Tensor)new Executor(p).Run(m, feeds)["s"]).As<long>();
        }
        Assert.Equal([3L, 5], Shape("scale"));
        Assert.Equal([3L, 4], Shape("offset"));
        Assert.Equal([2L, long.MaxValue], Shape("nan"));
        Assert.Equal([2L, 0], Shape("zero-tail"));
    }

    [Theory]
    [InlineData("faulty:cpu", "node=NAME or op=TYPE")]
    [InlineData("faulty:cpu?node=a", "no kind=")]
    [InlineData("faulty:cpu?node=a&kind=melt", "not a fault kind")]
    [InlineData("faulty:cpu?node=a&kind=scale&colour=red", "unknown option 'colour'")]
    [InlineData("faulty:cpu?node=a&kind=zero-tail&amount=2", "fraction")]
    [InlineData("faulty:?node=a&kind=scale", "no inner platform")]
    [InlineData("faulty:gpu9?node=a&kind=scale", "unknown platform 'gpu9'")]
    public void Bad_specs_are_clear_errors(string spec, string message)
    {
        var e = Assert.ThrowsAny<TapmlException>(() => PlatformRegistry.Create(spec));
        Assert.Contains(message, e.Message);
    }
}
