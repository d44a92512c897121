using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.Faulty;
using Tapml.Testing;
using Xunit;

namespace Tapml.Tests;

/// <summary>Verdicts of the reducing op families (docs/verdicts.md): a correct kernel that sums in another order
/// passes (ONNX Runtime, a reversed f32 loop, an element whose terms cancel), every fault kind of <c>faulty:</c>
/// fails, and a kernel that drops one term of a sum fails.</summary>
public class VerdictTests
{
    sealed record Subject(string Op, Model Model, Dictionary<string, Value> Feeds);

    static Tensor Random(int seed, double scale, params long[] shape)
    {
        var rng = new Random(seed);
        var t = Tensor.Zeros(DType.Float32, shape);
        for (long i = 0; i < t.Length; i++) t.SetDouble(i, (rng.NextDouble() * 2 - 1) * scale);
        return t;
    }

    static Subject One(string op, (string Name, Tensor Value, bool Feed)[] inputs, Dictionary<string, Attr>? attrs = null)
    {
        var b = new GraphBuilder(op);
        var feeds = new Dictionary<string, Value>();
        var names = new List<string>();
        foreach (var (name, value, feed) in inputs)
        {
            if (feed) { names.Add(b.Input(name, value.DType, value.Shape)); feeds[name] = value; }
            else names.Add(b.Initializer(name, value));
        }
        b.Output(b.Node(op, names.ToArray(), attrs, name: op.ToLowerInvariant(), outputName: "y"));
        return new Subject(op, new Model { Graph = b.Graph, Opsets = new() { [""] = 17 }, IrVersion = 8 }, feeds);
    }

    static Subject Make(string op) => op switch
    {
        "MatMul" => One(op, [("a", Random(1, 3, 8, 256), true), ("b", Random(2, 1, 256, 48), false)]),
        "Gemm" => One(op, [("a", Random(3, 2, 16, 96), true), ("b", Random(4, 1, 24, 96), false), ("c", Random(5, 1, 24), false)],
            new() { ["alpha"] = Attr.Of(-0.5f), ["beta"] = Attr.Of(2f), ["transB"] = Attr.Of(1L) }),
        "Conv" => One(op, [("x", Random(6, 4, 1, 16, 14, 14), true), ("w", Random(7, 0.5, 24, 16, 3, 3), false), ("bias", Random(8, 1, 24), false)],
            new() { ["pads"] = Attr.Of(new long[] { 1, 1, 1, 1 }) }),
        "ConvTranspose" => One(op, [("x", Random(9, 2, 1, 8, 7, 7), true), ("w", Random(10, 1, 8, 6, 3, 3), false)],
            new() { ["strides"] = Attr.Of(new long[] { 2, 2 }) }),
        "Einsum" => One(op, [("a", Random(11, 1, 4, 12, 32), true), ("b", Random(12, 1, 4, 32, 20), true)],
            new() { ["equation"] = Attr.Of("bij,bjk->bik") }),
        "ReduceSum" => One(op, [("x", Random(13, 5, 6, 40, 50), true), ("axes", Tensor.FromArray(new long[] { -1 }, 1), false)],
            new() { ["keepdims"] = Attr.Of(0L) }),
        "ReduceMean" => One(op, [("x", Random(14, 5, 6, 40, 50), true)], new() { ["axes"] = Attr.Of(new long[] { 1 }), ["keepdims"] = Attr.Of(0L) }),
        "CumSum" => One(op, [("x", Random(15, 3, 6, 200), true), ("axis", Tensor.Scalar(1L), false)]),
        "Softmax" => One(op, [("x", Random(16, 4, 8, 300), true)]),
        "LayerNormalization" => One(op, [("x", Random(17, 3, 8, 12, 96), true), ("scale", Random(18, 1, 96), false), ("bias", Random(19, 1, 96), false)]),
        _ => throw new ArgumentException(op),
    };

    public static TheoryData<string> Ops => new() { "MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "ReduceSum", "ReduceMean", "CumSum", "Softmax", "LayerNormalization" };

    public static TheoryData<string, string> OpsAndFaults()
    {
        var d = new TheoryData<string, string>();
        foreach (var op in Ops) foreach (var k in FaultSpec.KindNames) d.Add(op, k);
        return d;
    }

    /// <summary>The subject's output on <paramref name="spec"/>, judged against cpu's by the rule its op family gets.</summary>
    static OutputComparison Judge(Subject s, string spec)
    {
        using var cpu = PlatformRegistry.Create("cpu");
        using var p = PlatformRegistry.Create(spec);
        var expected = (Tensor)new Executor(cpu).Run(s.Model, s.Feeds)["y"];
        var actual = (Tensor)new Executor(p).Run(s.Model, s.Feeds)["y"];
        return JudgeValues(s, expected, actual);
    }

    static OutputComparison JudgeValues(Subject s, Tensor expected, Tensor actual)
    {
        var node = s.Model.Graph.Nodes[0];
        var inputs = node.Inputs.Select(n => s.Feeds.GetValueOrDefault(n) ?? s.Model.Graph.Initializers[n]).ToArray();
        var tol = new Tolerances().For(node, inputs, [expected]);
        return Comparison.CompareTensors("y", expected, actual, tol, () => Magnitudes.Of(node, 17, inputs)[0]);
    }

    [Theory]
    [MemberData(nameof(Ops))]
    public void A_correct_kernel_summing_in_another_order_passes(string op)
    {
        var c = Judge(Make(op), "onnxruntime");
        Assert.True(c.Passed, $"{op} on onnxruntime: {c.Failure}");
        Assert.NotNull(c.Metrics.Rule);
    }

    [Theory]
    [MemberData(nameof(OpsAndFaults))]
    public void Every_fault_kind_fails(string op, string kind)
    {
        var c = Judge(Make(op), $"faulty:cpu?op={op}&kind={kind}");
        Assert.False(c.Passed, $"{op} with fault {kind} passed: {c.Metrics}");
        Assert.NotNull(c.Failure);
    }

    /// <summary>y[i,j] = Σ_k a[i,k]·b[k,j] in f32, over k from <paramref name="from"/> down or up.</summary>
    static Tensor NaiveMatMul(Tensor a, Tensor b, bool reversed, int dropLast = 0)
    {
        long m = a.Shape[0], k = a.Shape[1], n = b.Shape[1];
        var y = Tensor.Zeros(DType.Float32, m, n);
        var x = a.As<float>(); var w = b.As<float>(); var o = y.As<float>();
        for (long i = 0; i < m; i++)
            for (long j = 0; j < n; j++)
            {
                float s = 0;
                for (long t = 0; t < k - dropLast; t++) { long q = reversed ? k - dropLast - 1 - t : t; s += x[i * k + q] * w[q * n + j]; }
                o[i * n + j] = s;
            }
        return y;
    }

    /// <summary>Rows whose products cancel to a small sum: the case the element-wise rule calls wrong
    /// (a [1,96,80,80]·[24,96,3,3] Conv of a real OCR model, NMSE 1e-14, failed on one such element).</summary>
    static Subject Cancelling()
    {
        const int k = 864;
        var a = Random(21, 100, 4, k);
        var b = Random(22, 1, k, 8);
        // the last term of each row cancels the others at column 0, leaving a small result there
        var x = a.As<float>(); var w = b.As<float>();
        for (int i = 0; i < 4; i++)
        {
            double s = 0;
            for (int t = 0; t < k - 1; t++) s += (double)x[i * k + t] * w[t * 8];
            x[i * k + k - 1] = (float)((0.01 * (i + 1) - s) / w[(k - 1) * 8]);
        }
        return One("MatMul", [("a", a, true), ("b", b, false)]);
    }

    [Fact]
    public void Terms_that_cancel_pass_the_accumulation_bound_where_the_elementwise_rule_cried_wolf()
    {
        var s = Cancelling();
        using var cpu = PlatformRegistry.Create("cpu");
        var expected = (Tensor)new Executor(cpu).Run(s.Model, s.Feeds)["y"];
        var a = (Tensor)s.Feeds["a"]; var b = s.Model.Graph.Initializers["b"];
        var reversed = NaiveMatMul(a, b, reversed: true);
        var c = JudgeValues(s, expected, reversed);
        Assert.True(c.Passed, c.Failure);
        Assert.Equal("accumulation", c.Metrics.Rule);
        Assert.InRange(c.Metrics.BoundRatio!.Value, 0, 1);
        // the rule it replaces (rtol 1e-4, atol 1e-5·√K) fails the same, correct result
        var old = Comparison.CompareTensors("y", expected, reversed, new Tolerance(1e-4, 1e-5 * Math.Sqrt(864)));
        Assert.False(old.Passed);
    }

    [Fact]
    public void A_kernel_that_drops_the_last_term_of_each_sum_fails()
    {
        var s = Make("MatMul");
        using var cpu = PlatformRegistry.Create("cpu");
        var expected = (Tensor)new Executor(cpu).Run(s.Model, s.Feeds)["y"];
        var c = JudgeValues(s, expected, NaiveMatMul((Tensor)s.Feeds["a"], s.Model.Graph.Initializers["b"], reversed: false, dropLast: 1));
        Assert.False(c.Passed);
        Assert.Contains("accumulation bound", c.Failure);
        Assert.True(JudgeValues(s, expected, NaiveMatMul((Tensor)s.Feeds["a"], s.Model.Graph.Initializers["b"], reversed: true)).Passed);
    }
}
