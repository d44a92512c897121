using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Onnx;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.OnnxRuntime;
using Tapml.Testing;
using Xunit;

namespace Tapml.Tests;

/// <summary><c>com.microsoft</c> MatMulNBits (4-bit block-quantized weights): the cpu reference against ONNX Runtime's
/// own kernel, the GPU kernels against cpu, and <c>--quantize q4</c> end to end. Outputs are judged by the verdict
/// rule of docs/verdicts.md (MatMulNBits: NMSE).</summary>
public class MatMulNBitsTests
{
    /// <summary>Zero points: none (default 8), packed uint8 nibbles, or unpacked in A's type.</summary>
    public enum Zp { None, Packed, Float }

    /// <summary>A one-node MatMulNBits model: A [1, M, K] fed, B/scales/zero points/bias initializers of random
    /// values (B's bytes uniform, so every nibble value appears); <paramref name="halfScales"/>: f32 scales that are all
    /// f16 values (as <c>--quantize q4</c> makes them).</summary>
    internal static Model Case(int m, int k, int n, int block, Zp zp, DType t, bool bias, out Dictionary<string, Value> feeds, int bits = 4, long accuracy = 0, bool halfScales = false)
    {
        var rng = new Random(m * 7919 + k * 131 + n * 17 + block + (int)zp * 3 + (t == DType.Float16 ? 1 : 0) + bits);
        int kb = (k + block - 1) / block, blob = block * bits / 8;
        Tensor Floats(long[] shape, double lo, double hi)
        {
            var v = new float[ShapeUtil.Size(shape)];
            for (int i = 0; i < v.Length; i++) v[i] = (float)(lo + rng.NextDouble() * (hi - lo));
            return t == DType.Float16 ? new Tensor(t, shape, Array.ConvertAll(v, x => (Half)x)) : new Tensor(DType.Float32, shape, v);
        }
        var b = new GraphBuilder("nbits");
        feeds = new() { ["A"] = Floats([1, m, k], -1, 1) };
        b.Input("A", t, 1, m, k);
        var bytes = new byte[n * kb * blob];
        rng.NextBytes(bytes);
        var inputs = new List<string> { "A", b.Initializer("B", new Tensor(DType.UInt8, [n, kb, blob], bytes)), b.Initializer("scales", halfScales ? HalfValues(Floats([n, kb], 0.01, 0.1)) : Floats([n, kb], 0.01, 0.1)) };
        if (zp == Zp.Packed)
        {
            var z = new byte[n * ((kb * bits + 7) / 8)];
            rng.NextBytes(z);
            inputs.Add(b.Initializer("zero_points", new Tensor(DType.UInt8, [n, (kb * bits + 7) / 8], z)));
        }
        else if (zp == Zp.Float) inputs.Add(b.Initializer("zero_points", Floats([n, kb], 0, 15)));
        else if (bias) inputs.Add("");
        if (bias) { inputs.Add(""); inputs.Add(b.Initializer("bias", Floats([n], -1, 1))); }
        b.Node("MatMulNBits", [.. inputs], new()
        {
            ["K"] = Attr.Of((long)k), ["N"] = Attr.Of((long)n), ["bits"] = Attr.Of((long)bits), ["block_size"] = Attr.Of((long)block),
            ["accuracy_level"] = Attr.Of(accuracy),
        }, "nbits", "Y", WeightQuantizer.MsDomain);
        b.Output("Y");
        return new Model { Graph = b.Graph, Opsets = new() { [""] = 21, [WeightQuantizer.MsDomain] = 1 }, IrVersion = 10 };
    }

    static Tensor HalfValues(Tensor t) => new(t.DType, t.Shape, Array.ConvertAll(t.As<float>().ToArray(), v => (float)(Half)v));

    static void AssertVerdict(Model model, Dictionary<string, Value> feeds, Value expected, Value actual, string who)
    {
        var node = model.Graph.Nodes[0];
        var ins = node.Inputs.Select(s => s.Length == 0 ? null : feeds.GetValueOrDefault(s) ?? model.Graph.Initializers[s]).ToList();
        var tol = new Tolerances().For(node, ins, [expected]);
        var r = Comparison.Compare("Y", expected, actual, tol);
        Assert.True(r.Passed, $"{who}: {r.Failure} (nmse {r.Metrics.Nmse:G3}, max_abs {r.Metrics.MaxAbs:G3})");
    }

    public static TheoryData<int, int, int, int, Zp, string, bool> Rows => new()
    {
        { 1, 64, 24, 32, Zp.None, "f32", false },
        { 1, 64, 24, 32, Zp.Packed, "f32", false },
        { 1, 128, 40, 16, Zp.Packed, "f32", true },
        { 1, 256, 33, 128, Zp.None, "f32", false },
        { 1, 96, 20, 64, Zp.Packed, "f32", false },     // K not a multiple of the block: the last block padded
        { 1, 100, 17, 32, Zp.Packed, "f32", false },    // K not a multiple of 8
        { 5, 128, 48, 32, Zp.Packed, "f32", false },     // 5 to 32 rows: decode kernels over 4 rows at a time
        { 16, 96, 40, 32, Zp.Packed, "f32", true },
        { 70, 96, 65, 32, Zp.None, "f32", true },       // tiled
        { 33, 64, 24, 32, Zp.Packed, "f32", false },
        { 9, 100, 17, 32, Zp.Packed, "f32", false },    // K not a multiple of 8
        { 3, 64, 24, 32, Zp.Float, "f32", false },
        { 1, 128, 32, 32, Zp.Packed, "f16", false },
        { 6, 64, 40, 16, Zp.None, "f16", true },
        { 2, 64, 24, 32, Zp.Float, "f16", false },
    };

    static DType T(string s) => s == "f16" ? DType.Float16 : DType.Float32;

    /// <summary>accuracy_level=4 (int8 A): block sizes 16–128, K padded, zero points none and packed, 1–70 rows (decode,
    /// short prompts, tiled), bias; float zero points and f16 A keep f32 compute.</summary>
    public static TheoryData<int, int, int, int, Zp, string, bool> Int8Rows => new()
    {
        { 1, 64, 24, 32, Zp.None, "f32", false },
        { 1, 128, 40, 16, Zp.Packed, "f32", true },
        { 1, 256, 33, 128, Zp.Packed, "f32", false },
        { 1, 96, 20, 64, Zp.Packed, "f32", false },
        { 1, 100, 17, 32, Zp.Packed, "f32", false },
        { 3, 128, 48, 32, Zp.None, "f32", false },
        { 9, 100, 17, 32, Zp.Packed, "f32", true },
        { 70, 96, 65, 32, Zp.Packed, "f32", true },
        { 1, 4160, 24, 32, Zp.Packed, "f32", false },   // K over one quantize workgroup's 2048 values: three slices, the last part-empty
        { 2, 2400, 20, 128, Zp.None, "f32", true },
        { 2, 64, 24, 32, Zp.Float, "f32", false },
        { 1, 128, 32, 32, Zp.Packed, "f16", false },
    };

    /// <summary>The int8-compute reference against ONNX Runtime's CompInt8 kernels (the same quantization of A; the
    /// f32 sums differ in order only).</summary>
    [Theory]
    [MemberData(nameof(Int8Rows))]
    public void Cpu_matches_onnxruntime_with_int8_compute(int m, int k, int n, int block, Zp zp, string type, bool bias)
    {
        var model = Case(m, k, n, block, zp, T(type), bias, out var feeds, accuracy: 4);
        var cpu = (Tensor)new Executor(new CpuPlatform()).Run(model, feeds)["Y"];
        var ort = (Tensor)new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }.Run(model, feeds)["Y"];
        AssertVerdict(model, feeds, ort, cpu, "cpu vs onnxruntime (accuracy_level 4)");
        // Not the f32 product: the same node at accuracy_level 0 differs by A's rounding to int8 (where it applies).
        var f32 = (Tensor)new Executor(new CpuPlatform()).Run(Case(m, k, n, block, zp, T(type), bias, out _), feeds)["Y"];
        var d = TensorConvert.ToF32(cpu).As<float>().Zip(TensorConvert.ToF32(f32).As<float>(), (a, b) => Math.Abs(a - b)).Max();
        var o = TensorConvert.ToF32(ort).As<float>().Zip(TensorConvert.ToF32(cpu).As<float>(), (a, b) => Math.Abs(a - b)).Max();
        if (zp != Zp.Float && type == "f32") Assert.True(d > 10 * o, $"int8 compute should differ from f32 by more than from onnxruntime: {d} vs {o}");
        else Assert.Equal(0f, d);
    }

    [Theory]
    [MemberData(nameof(Rows))]
    public void Cpu_matches_onnxruntime(int m, int k, int n, int block, Zp zp, string type, bool bias)
    {
        var model = Case(m, k, n, block, zp, T(type), bias, out var feeds);
        var cpu = new Executor(new CpuPlatform()).Run(model, feeds)["Y"];
        Dictionary<string, Value> ort;
        try { ort = new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }.Run(model, feeds); }
        catch (TapmlException e) when (e.Message.Contains("NOT_IMPLEMENTED") || e.Message.Contains("Could not find an implementation"))
        { Assert.Skip($"onnxruntime has no kernel for this row: {e.Message}"); return; }
        Assert.Equal(((Tensor)ort["Y"]).Shape, ((Tensor)cpu).Shape);
        AssertVerdict(model, feeds, ort["Y"], cpu, "cpu vs onnxruntime");
    }

    [Fact]
    public void Cpu_matches_onnxruntime_for_8_bit_weights()
    {
        var model = Case(2, 64, 24, 32, Zp.Packed, DType.Float32, false, out var feeds, bits: 8);
        var cpu = new Executor(new CpuPlatform()).Run(model, feeds)["Y"];
        var ort = new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }.Run(model, feeds)["Y"];
        AssertVerdict(model, feeds, ort, cpu, "cpu vs onnxruntime (8 bits)");
    }

    /// <summary>The catalog on every kernel platform of the registry.</summary>
    public static IEnumerable<object[]> GpuRows() => TestPlatforms.Cross(Rows.Select(r => ((ITheoryDataRow)r).GetData()!));

    [Theory]
    [MemberData(nameof(GpuRows))]
    public void Gpu_matches_cpu(string platform, int m, int k, int n, int block, Zp zp, string type, bool bias) =>
        GpuMatchesCpu(platform, m, k, n, block, zp, type, bias);

    static void GpuMatchesCpu(string platform, int m, int k, int n, int block, Zp zp, string type, bool bias)
    {
        using (var gpu = TestPlatforms.CreateOrSkip(platform))
        {
            var model = Case(m, k, n, block, zp, T(type), bias, out var feeds);
            var cpu = new Executor(new CpuPlatform()).Run(model, feeds)["Y"];
            var got = new Executor(gpu).Run(model, feeds)["Y"];
            Assert.Equal(((Tensor)cpu).Shape, ((Tensor)got).Shape);
            AssertVerdict(model, feeds, cpu, got, $"{platform} vs cpu");
        }
    }

    public static IEnumerable<object[]> GpuInt8Rows() => TestPlatforms.Cross(Int8Rows.Select(r => ((ITheoryDataRow)r).GetData()!));

    /// <summary>accuracy_level=4 on every kernel platform: within the verdict of cpu's int8 reference, and nearer it
    /// than the f32 product (the kernels quantize A as cpu does and take the same integer sums).</summary>
    [Theory]
    [MemberData(nameof(GpuInt8Rows))]
    public void Gpu_matches_cpu_with_int8_compute(string platform, int m, int k, int n, int block, Zp zp, string type, bool bias)
    {
        using var gpu = TestPlatforms.CreateOrSkip(platform);
        var model = Case(m, k, n, block, zp, T(type), bias, out var feeds, accuracy: 4);
        var cpu = (Tensor)new Executor(new CpuPlatform()).Run(model, feeds)["Y"];
        var got = (Tensor)new Executor(gpu).Run(model, feeds)["Y"];
        AssertVerdict(model, feeds, cpu, got, $"{platform} vs cpu (accuracy_level 4)");
        if (zp == Zp.Float || type != "f32") return;
        var f32 = (Tensor)new Executor(new CpuPlatform()).Run(Case(m, k, n, block, zp, T(type), bias, out _), feeds)["Y"];
        static float MaxDiff(Tensor a, Tensor b) => a.As<float>().Zip(b.As<float>(), (x, y) => Math.Abs(x - y)).Max();
        Assert.True(MaxDiff(got, cpu) * 10 < MaxDiff(got, f32), $"{platform}: {MaxDiff(got, cpu)} from cpu's int8 product, {MaxDiff(got, f32)} from the f32 one");
    }

    /// <summary>vulkan's two renderings of <c>dot4I8Packed</c>: OpSDot (the default where the device has
    /// shaderIntegerDotProduct; lavapipe's row) and the byte-product helper (<c>int-dot=off</c>).</summary>
    [Theory]
    [InlineData("vulkan?int-dot=off")]
    [InlineData("vulkan?icd=lavapipe")]
    public void Vulkan_int8_compute_renders_both_ways(string platform)
    {
        Gpu_matches_cpu_with_int8_compute(platform, 1, 128, 40, 16, Zp.Packed, "f32", true);
        Gpu_matches_cpu_with_int8_compute(platform, 9, 100, 17, 32, Zp.Packed, "f32", true);
    }

    /// <summary>One node run on two webgpu platforms in turn (debug's source-fed and accumulated runs do this): each
    /// binds its own copy of the weight.</summary>
    [Fact]
    public void One_node_runs_on_two_webgpu_platforms_in_turn()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var model = Case(1, 64, 24, 32, Zp.Packed, DType.Float32, false, out var feeds);
        var cpu = new Executor(new CpuPlatform()).Run(model, feeds)["Y"];
        using var first = PlatformRegistry.Create("webgpu");
        using var second = PlatformRegistry.Create("webgpu");
        foreach (var p in new[] { first, second, first })
            AssertVerdict(model, feeds, cpu, new Executor(p).Run(model, feeds)["Y"], "webgpu vs cpu");
    }

    /// <summary>The quantizer's output dequantizes to within half a step of every weight (the round-to-nearest
    /// promise; symmetric blocks clamp the end opposite their largest value at 7, so one step there), for both schemes
    /// and a K that is not a multiple of the block.</summary>
    [Theory]
    [InlineData("q4")]
    [InlineData("q4sym")]
    public void Quantized_weights_are_within_half_a_step(string scheme)
    {
        var rng = new Random(5);
        int k = 80, n = 12;
        var w = new float[k * n];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 2 - 1.5);
        var s = QuantizeScheme.Parse(scheme);
        var (b, scales, zeros) = WeightQuantizer.Quantize(new Tensor(DType.Float32, [k, n], w), s);
        var g = new GraphBuilder("q");
        g.Input("A", DType.Float32, 1, k);
        var inputs = new List<string> { "A", g.Initializer("B", b), g.Initializer("s", scales) };
        if (zeros is not null) inputs.Add(g.Initializer("z", zeros));
        g.Node("MatMulNBits", [.. inputs], new() { ["K"] = Attr.Of((long)k), ["N"] = Attr.Of((long)n), ["bits"] = Attr.Of(4L), ["block_size"] = Attr.Of(32L) },
            "q", "Y", WeightQuantizer.MsDomain);
        g.Output("Y");
        var model = new Model { Graph = g.Graph, Opsets = new() { [""] = 21, [WeightQuantizer.MsDomain] = 1 } };
        // A = identity rows, one at a time: Y is row k of the dequantized weight.
        var sc = scales.As<float>();
        for (int r = 0; r < k; r++)
        {
            var a = new float[k]; a[r] = 1;
            var y = ((Tensor)new Executor(new CpuPlatform()).Run(model, new Dictionary<string, Value> { ["A"] = new Tensor(DType.Float32, [1, k], a) })["Y"]).As<float>();
            for (int j = 0; j < n; j++)
            {
                float step = Math.Abs(sc[j * 3 + r / 32]) * (s.Symmetric ? 2 : 1);
                Assert.True(Math.Abs(y[j] - w[r * n + j]) <= step / 2 * 1.0001f, $"w[{r},{j}] = {w[r * n + j]}, dequantized {y[j]}, step {step}");
            }
        }
    }

    /// <summary>The pass on an f16 graph: MatMul against an f16 weight becomes MatMulNBits with f16 scales (ONNX Runtime
    /// wants A's type), which ONNX Runtime runs with cpu's result; the quantized product stays near the f32 one.</summary>
    [Theory]
    [InlineData("q4")]
    [InlineData("q4sym")]
    public void Quantize_pass_on_f16_weights_gives_f16_scales_that_onnxruntime_runs(string scheme)
    {
        var rng = new Random(11);
        int m = 3, k = 96, n = 40;
        Half[] R(int len) => Enumerable.Range(0, len).Select(_ => (Half)(rng.NextDouble() * 2 - 1)).ToArray();
        var b = new GraphBuilder("mm16");
        b.Input("A", DType.Float16, 1, m, k);
        b.Node("MatMul", ["A", b.Initializer("W", new Tensor(DType.Float16, [k, n], R(k * n)))], null, "mm", "Y");
        b.Output("Y");
        var model = new Model { Graph = b.Graph, Opsets = new() { [""] = 21 }, IrVersion = 10 };
        var feeds = new Dictionary<string, Value> { ["A"] = new Tensor(DType.Float16, [1, m, k], R(m * k)) };
        var plain = (Tensor)new Executor(new CpuPlatform()).Run(model, feeds)["Y"];
        var report = WeightQuantizer.Apply(model, QuantizeScheme.Parse(scheme));
        Assert.Equal(1, report.Products);
        var node = Assert.Single(model.Graph.Nodes);
        Assert.Equal(("MatMulNBits", WeightQuantizer.MsDomain), (node.OpType, node.Domain));
        Assert.Equal(DType.Float16, model.Graph.Initializers[node.Inputs[2]].DType);
        Assert.False(model.Graph.Initializers.ContainsKey("W"));
        var cpu = new Executor(new CpuPlatform()).Run(model, feeds)["Y"];
        var ort = new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }.Run(model, feeds)["Y"];
        AssertVerdict(model, feeds, ort, cpu, "cpu vs onnxruntime (quantized f16)");
        // 4-bit weights of uniform values: the product's relative error is a few percent, not more.
        var (p, q) = (plain.As<Half>(), ((Tensor)cpu).As<Half>());
        double num = 0, den = 0;
        for (int i = 0; i < p.Length; i++) { num += Math.Pow((double)p[i] - (double)q[i], 2); den += Math.Pow((double)p[i], 2); }
        Assert.True(num / den < 0.01, $"NMSE of the q4 product against the f16 one: {num / den:G3}");
    }

    static readonly string[] Gen = ["generate", "--input-ids", "1,17,305,42", "--max-tokens", "6"];

    static string Tokens(CliRunner.Result r)
    {
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        return r.Stdout.Split('\n').First(l => l.StartsWith("tokens:", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("llama", "q4", "webgpu")]
    [InlineData("gpt2", "q4", "webgpu")]
    [InlineData("llama", "q4-a8", "webgpu")]
    [InlineData("gpt2", "q4-a8", "webgpu")]
    [InlineData("llama", "q4sym-a8", "vulkan")]
    public void Generate_quantize_q4_gives_the_same_greedy_tokens_on_cpu_and_gpu(string arch, string scheme, string platform)
    {
        using (TestPlatforms.CreateOrSkip(platform)) { }
        var cpu = CliRunner.Run([.. Gen, "--quantize", scheme, "--model", $"builtin:tiny-{arch}", "--platform", "cpu"]);
        var gpu = CliRunner.Run([.. Gen, "--quantize", scheme, "--model", $"builtin:tiny-{arch}", "--platform", platform]);
        Assert.Equal(Tokens(cpu), Tokens(gpu));
    }

    /// <summary>export-onnx --quantize q4 writes real MatMulNBits nodes that ONNX Runtime runs, with the greedy tokens
    /// tapml's cpu gives for the same quantized graph.</summary>
    [Fact]
    public void Exported_q4_model_runs_on_onnxruntime_with_the_cpu_tokens()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"tapml-q4-{Guid.NewGuid():N}");
        string path = Path.Combine(dir, "model.onnx");
        try
        {
            var r = CliRunner.Run("export-onnx", "--model", "builtin:tiny-llama", "--quantize", "q4", "--out", path);
            Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
            var model = OnnxImporter.Load(path);
            Assert.Contains(model.Graph.Nodes, nd => nd.OpType == "MatMulNBits" && nd.Domain == WeightQuantizer.MsDomain);
            Assert.DoesNotContain(model.Graph.Nodes, nd => nd.OpType == "MatMul" && model.Graph.Initializers.ContainsKey(nd.Inputs[1]));
            long[] prompt = [1, 17, 305, 42];
            var ort = Generation.Greedy(new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }, model, prompt, 6);
            var cpu = Generation.Greedy(new Executor(new CpuPlatform()), model, prompt, 6);
            Assert.Equal(cpu.Tokens, ort.Tokens);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void A_badly_packed_weight_is_one_clear_line_naming_node_and_tensor()
    {
        var model = Case(1, 64, 24, 32, Zp.None, DType.Float32, false, out _);
        var bad = model.Graph.Initializers["B"];
        model.Graph.Initializers["B"] = new Tensor(DType.UInt8, [24, 2, 8], new byte[24 * 2 * 8]);   // blob of 8 bytes, block 32 needs 16
        Assert.NotNull(bad);
        string dir = Path.Combine(Path.GetTempPath(), $"tapml-q4bad-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "bad.onnx");
        try
        {
            OnnxExporter.Save(model, path);
            var r = CliRunner.Run("run", "--model", path, "--platform", "cpu");
            Assert.Equal(2, r.ExitCode);
            var lines = r.Stderr.Trim().Split('\n');
            Assert.Single(lines);
            Assert.Contains("nbits", lines[0]);
            Assert.Contains("B u8[24,2,8]", lines[0]);
            Assert.Contains("[24,2,16]", lines[0]);
        }
        finally { Directory.Delete(dir, true); }
    }
}
