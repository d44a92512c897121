using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Onnx;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Tapml.Testing;
using Tapml.Testing.Conformance;
using Xunit;

namespace Tapml.Tests;

/// <summary>If, Loop, Scan and RNN, GRU, LSTM on webgpu: bodies run on the device, loop-carried tensors are not read
/// back per iteration, the recurrent kernels give the cpu reference's results for every attribute the spec has.</summary>
public class WebGpuControlFlowTests
{
    static readonly Lazy<WebGpuPlatform> Shared = new(() => new WebGpuPlatform("webgpu"));

    static WebGpuPlatform Gpu()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        return Shared.Value;
    }

    [Theory]
    [InlineData("test_if")]
    [InlineData("test_loop11")]
    [InlineData("test_scan_sum")]
    [InlineData("test_lstm_batchwise")]
    [InlineData("test_lstm_defaults")]
    [InlineData("test_lstm_with_peepholes")]
    [InlineData("test_gru_batchwise")]
    [InlineData("test_gru_with_initial_bias")]
    [InlineData("test_rnn_seq_length")]
    [InlineData("test_simple_rnn_batchwise")]
    [InlineData("test_simple_rnn_with_initial_bias")]
    public void Onnx_node_case_passes_on_webgpu(string name)
    {
        var gpu = Gpu();
        string dir = SharedData.Require("conformance", "onnx/node");
        var r = new ConformanceRunner(gpu, Tolerance.OnnxDefault).Run(new OnnxCase(name, Path.Combine(dir, name)));
        Assert.True(r.Status == CaseStatus.Passed, $"{r.Status}: {r.Reason}");
    }

    /// <summary>Sequence and optional values have no GPU form: the case is skipped, and the reason says so.</summary>
    [Theory]
    [InlineData("test_if_seq", "SequenceConstruct")]
    [InlineData("test_loop13_seq", "seq<f32>")]
    [InlineData("test_loop16_seq_none", "optional(")]
    public void Sequence_cases_are_skipped_with_the_reason(string name, string why)
    {
        var gpu = Gpu();
        string dir = SharedData.Require("conformance", "onnx/node");
        var r = new ConformanceRunner(gpu, Tolerance.OnnxDefault).Run(new OnnxCase(name, Path.Combine(dir, name)));
        Assert.Equal(CaseStatus.Skipped, r.Status);
        Assert.Contains(why, r.Reason);
    }

    /// <summary>A Loop of 60 iterations carrying a f32[256] tensor (and stacking it as a scan output): cpu's result,
    /// and the only readbacks are the two graph outputs — the carried tensor never leaves the GPU inside the loop.
    /// The while form (cond computed on the device each iteration) reads one scalar per iteration, nothing more.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Loop_carries_a_tensor_on_the_device_and_matches_cpu(bool whileLoop)
    {
        var gpu = Gpu();
        const int n = 256, trips = 60;
        var model = LoopModel(n, trips, whileLoop, out var feeds);
        var want = new Executor(new CpuPlatform()).Run(model, feeds);
        var exec = new Executor(gpu);
        long r0 = gpu.Counters.Readbacks;
        var got = exec.Run(model, feeds);
        long readbacks = gpu.Counters.Readbacks - r0;
        foreach (var name in new[] { "x_final", "xs" })
        {
            var c = Comparison.Compare(name, want[name], got[name], new Tolerance(1e-5, 1e-6));
            Assert.True(c.Passed, $"{name}: {c.Failure}");
        }
        long iterations = ((Tensor)want["xs"]).Shape[0];
        if (whileLoop) Assert.InRange(iterations, 10, trips - 10);
        else Assert.Equal(trips, iterations);
        Assert.Equal(whileLoop ? iterations + 2 : 2, readbacks);
        Assert.Empty(exec.Fallbacks);
    }

    /// <summary>Loop(M, cond, x): body x' = x·0.98 + iteration/100; the while form stops once Σx' ≥ 200 (cond computed
    /// from the carried tensor on the device; Σx grows by about 2.56·iteration a step from 77).</summary>
    static Model LoopModel(int n, int trips, bool whileLoop, out Dictionary<string, Value> feeds)
    {
        var body = new GraphBuilder("body");
        string it = body.Input("it", DType.Int64, Array.Empty<long>());
        string condIn = body.Input("cond_in", DType.Bool, Array.Empty<long>());
        string x = body.Input("x_in", DType.Float32, n);
        string scaled = body.Node("Mul", [x, body.Initializer("k", Tensor.Scalar(0.98f))]);
        string step = body.Node("Div", [body.Node("Cast", [it], new() { ["to"] = Attr.Of((long)DType.Float32) }), body.Initializer("hundred", Tensor.Scalar(100f))]);
        string next = body.Node("Add", [scaled, step], outputName: "x_out");
        string condOut = whileLoop
            ? body.Node("Less", [body.Node("ReduceSum", [next], new() { ["keepdims"] = Attr.Of(0L) }), body.Initializer("limit", Tensor.Scalar(200f))], outputName: "cond_out")
            : body.Node("Identity", [condIn], outputName: "cond_out");
        string scan = body.Node("Identity", [next], outputName: "x_scan");
        body.Output(condOut, type: TypeRef.TensorOf(DType.Bool, Array.Empty<long>()));
        body.Output(next, type: TypeRef.TensorOf(DType.Float32, [n]));
        body.Output(scan, type: TypeRef.TensorOf(DType.Float32, [n]));

        var b = new GraphBuilder("loop");
        string x0 = b.Input("x0", DType.Float32, n);
        string m = b.Initializer("M", Tensor.Scalar((long)trips));
        string cond = b.Initializer("cond", Tensor.Scalar(true));
        b.NodeMulti("Loop", [m, cond, x0], 2, new() { ["body"] = Attr.Of(body.Graph) }, "loop", ["x_final", "xs"]);
        b.Output("x_final");
        b.Output("xs");
        feeds = new() { ["x0"] = Tensor.FromArray(Enumerable.Range(0, n).Select(i => (float)(0.3 + 0.2 * Math.Sin(i * 0.7))).ToArray(), n) };
        return new Model { Graph = b.Graph, Opsets = new() { [""] = 17 }, IrVersion = 8 };
    }

    public static TheoryData<string, string, int, string> RecurrentCases => new()
    {
        // cell, direction, layout, options: b = bias, l = sequence_lens, h = initial_h (and initial_c), p = peepholes,
        // c = clip, f = input_forget, r = linear_before_reset, a = non-default activations
        { "LSTM", "bidirectional", 0, "b l h p" },
        { "LSTM", "bidirectional", 1, "b l h" },
        { "LSTM", "reverse", 0, "c f a" },
        { "GRU", "bidirectional", 0, "b l h r" },
        { "GRU", "forward", 1, "b l a c" },
        { "GRU", "reverse", 0, "b h" },
        { "RNN", "bidirectional", 1, "b l h a" },
        { "RNN", "forward", 0, "c" },
    };

    /// <summary>Every output of a recurrent node on webgpu against the cpu reference.</summary>
    [Theory, MemberData(nameof(RecurrentCases))]
    public void Recurrent_op_matches_cpu(string cell, string direction, int layout, string options)
    {
        var gpu = Gpu();
        var model = RecurrentModel(cell, direction, layout, options.Split(' '), out var feeds);
        var want = new Executor(new CpuPlatform()).Run(model, feeds);
        var exec = new Executor(gpu);
        var got = exec.Run(model, feeds);
        Assert.Empty(exec.Fallbacks);
        foreach (var (name, v) in want)
        {
            var c = Comparison.Compare(name, v, got[name], new Tolerance(1e-4, 1e-5));
            Assert.True(c.Passed, $"{name}: {c.Failure}");
        }
    }

    static Model RecurrentModel(string cell, string direction, int layout, string[] opts, out Dictionary<string, Value> feeds)
    {
        int G = cell switch { "RNN" => 1, "GRU" => 3, _ => 4 };
        int D = direction == "bidirectional" ? 2 : 1;
        const int S = 5, B = 3, I = 4, H = 6;
        bool Has(string o) => opts.Contains(o);
        var b = new GraphBuilder("rnn");
        var values = feeds = new();
        string In(string name, Tensor t) { values[name] = t; return b.Input(name, t.DType, t.Shape); }
        var inputs = new string[cell == "LSTM" ? 8 : 6];
        Array.Fill(inputs, "");
        inputs[0] = In("X", NewOpsHarness.R(1, layout == 0 ? [S, B, I] : [B, S, I]));
        inputs[1] = In("W", NewOpsHarness.Rand(2, 0.5, D, G * H, I));
        inputs[2] = In("R", NewOpsHarness.Rand(3, 0.5, D, G * H, H));
        if (Has("b")) inputs[3] = In("B", NewOpsHarness.Rand(4, 0.5, D, 2 * G * H));
        if (Has("l")) inputs[4] = In("lens", Tensor.FromArray(new[] { 5, 2, 4 }, B));
        long[] state = layout == 0 ? [D, B, H] : [B, D, H];
        if (Has("h")) inputs[5] = In("h0", NewOpsHarness.R(5, state));
        if (Has("h") && cell == "LSTM") inputs[6] = In("c0", NewOpsHarness.R(6, state));
        if (Has("p")) inputs[7] = In("P", NewOpsHarness.Rand(7, 0.5, D, 3 * H));
        var attrs = new Dictionary<string, Attr> { ["hidden_size"] = Attr.Of((long)H), ["direction"] = Attr.Of(direction), ["layout"] = Attr.Of((long)layout) };
        if (Has("c")) attrs["clip"] = Attr.Of(0.7f);
        if (Has("f")) attrs["input_forget"] = Attr.Of(1L);
        if (Has("r")) attrs["linear_before_reset"] = Attr.Of(1L);
        if (Has("a"))
        {
            string[] acts = cell switch
            {
                "RNN" => ["LeakyRelu", "Softsign"],
                "GRU" => ["HardSigmoid", "ScaledTanh"],
                _ => ["HardSigmoid", "Elu", "Softplus"],
            };
            attrs["activations"] = Attr.Of(D == 2 || cell != "RNN" ? acts : acts[..1]);
            attrs["activation_alpha"] = Attr.Of(new[] { 0.3f, 0.8f });
            attrs["activation_beta"] = Attr.Of(new[] { 0.4f, 1.2f });
        }
        string[] outs = cell == "LSTM" ? ["Y", "Y_h", "Y_c"] : ["Y", "Y_h"];
        b.NodeMulti(cell, inputs, outs.Length, attrs, "rnn", outs);
        foreach (var o in outs) b.Output(o);
        return new Model { Graph = b.Graph, Opsets = new() { [""] = 14 }, IrVersion = 8 };
    }

    /// <summary>Scan-9 over axis 1 of one input and, reversed, axis 0 of another, its outputs stacked on axis 1 and
    /// (reversed) axis 0: cpu's results.</summary>
    [Fact]
    public void Scan_slices_and_stacks_on_the_device_like_cpu()
    {
        var gpu = Gpu();
        var body = new GraphBuilder("body");
        string s = body.Input("s", DType.Float32, 4);
        string a = body.Input("a", DType.Float32, 4);
        string c = body.Input("c", DType.Float32, 4);
        string next = body.Node("Add", [s, body.Node("Mul", [a, c])], outputName: "s_out");
        string prod = body.Node("Sub", [a, c], outputName: "d_out");
        body.Output(next);
        body.Output(prod);
        string sum = body.Node("Identity", [next], outputName: "sum_out");
        body.Output(sum);
        var g = new GraphBuilder("scan");
        var feeds = new Dictionary<string, Value>
        {
            ["s0"] = NewOpsHarness.R(11, 4), ["A"] = NewOpsHarness.R(12, 4, 7), ["C"] = NewOpsHarness.R(13, 7, 4),
        };
        foreach (var (k, v) in feeds) g.Input(k, DType.Float32, ((Tensor)v).Shape);
        var attrs = new Dictionary<string, Attr>
        {
            ["body"] = Attr.Of(body.Graph), ["num_scan_inputs"] = Attr.Of(2L),
            ["scan_input_axes"] = Attr.Of(new long[] { 1, 0 }), ["scan_input_directions"] = Attr.Of(new long[] { 0, 1 }),
            ["scan_output_axes"] = Attr.Of(new long[] { 1, 0 }), ["scan_output_directions"] = Attr.Of(new long[] { 0, 1 }),
        };
        g.NodeMulti("Scan", ["s0", "A", "C"], 3, attrs, "scan", ["s", "ds", "sums"]);
        foreach (var o in new[] { "s", "ds", "sums" }) g.Output(o);
        var model = new Model { Graph = g.Graph, Opsets = new() { [""] = 16 }, IrVersion = 8 };
        var want = new Executor(new CpuPlatform()).Run(model, feeds);
        var exec = new Executor(gpu);
        var got = exec.Run(model, feeds);
        Assert.Empty(exec.Fallbacks);
        foreach (var (name, v) in want)
        {
            var cmp = Comparison.Compare(name, v, got[name], new Tolerance(1e-5, 1e-6));
            Assert.True(cmp.Passed, $"{name}: {cmp.Failure}");
        }
    }

    /// <summary>Silero VAD v5 (STFT and LSTM inside an If on the sample rate): on webgpu with cpu as the fallback, only
    /// Pad (no WGSL kernel yet) leaves the GPU, the If and the LSTM run there, and the outputs are cpu's.</summary>
    [Fact]
    public void Silero_vad_v5_runs_its_If_and_LSTM_on_webgpu_like_cpu()
    {
        var gpu = Gpu();
        var m = OnnxImporter.Load(RealModelTests.Require("silero-vad-v5"));
        var feeds = RealModelTests.Inputs("silero-vad-v5");
        var want = new Executor(new CpuPlatform()).Run(m, feeds);
        var exec = new Executor(gpu) { Fallback = new CpuPlatform() };
        var seen = new PlacementLog();
        exec.Observers.Add(seen);
        var got = exec.Run(m, feeds);
        Assert.All(exec.Fallbacks, f => Assert.Equal("Pad", f.OpType));
        Assert.Contains(("If", gpu.Name), seen.Runs);
        Assert.Contains(("LSTM", gpu.Name), seen.Runs);
        Assert.DoesNotContain(seen.Runs, r => r.Op is "If" or "LSTM" && r.Platform != gpu.Name);
        foreach (var (name, v) in want)
        {
            var c = Comparison.Compare(name, v, got[name], new Tolerance(1e-4, 1e-5));
            Assert.True(c.Passed, $"{name}: {c.Failure}");
        }
    }

    sealed class PlacementLog : IExecutionObserver
    {
        public readonly List<(string Op, string Platform)> Runs = new();
        public void OnNodeRun(NodeEvent e) => Runs.Add((e.Node.OpType, e.Platform.Name));
    }
}
