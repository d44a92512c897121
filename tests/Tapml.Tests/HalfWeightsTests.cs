using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Safetensors;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Xunit;

namespace Tapml.Tests;

/// <summary><c>--weights f16</c> (<see cref="HalfWeights"/>): an f16 checkpoint's weights stay f16 in the graph (half the
/// bytes, read through Casts), cpu's logits do not change by a bit, and webgpu reads the packed weights (decode
/// matrix-vector, fused projections, prefill) with cpu's greedy tokens. The f16 checkpoint is the Hugging Face–written
/// tiny Llama in ../shared with its weights rounded to f16.</summary>
public class HalfWeightsTests
{
    /// <summary>A copy of the checkpoint folder <paramref name="src"/> in <paramref name="dir"/> with every f32 tensor
    /// rounded to <paramref name="dtype"/> (f16 or bf16, to nearest even); returns the f32 tensors holding exactly the
    /// rounded values, by name.</summary>
    internal static Dictionary<string, Tensor> WriteHalfCopy(string src, string dir, DType dtype)
    {
        CopyConfig(src, dir);
        var halves = new Dictionary<string, Tensor>();
        var rounded = new Dictionary<string, Tensor>();
        using (var st = SafetensorsFile.Open(Path.Combine(src, "model.safetensors")))
            foreach (var name in st.Entries.Keys)
            {
                var t = st.Read(name);
                if (t.DType != DType.Float32) { halves[name] = t; rounded[name] = t; continue; }
                var h = Tensor.Zeros(dtype, t.Shape);
                var r = Tensor.Zeros(DType.Float32, t.Shape);
                for (long i = 0; i < t.Length; i++)
                {
                    h.SetDouble(i, t.GetDouble(i));
                    r.SetDouble(i, h.GetDouble(i));      // the value the half tensor holds, exactly
                }
                halves[name] = h;
                rounded[name] = r;
            }
        SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"), halves);
        return rounded;
    }

    /// <summary>The checkpoint folder's files but its weights (config, tokenizer) into <paramref name="dir"/>.</summary>
    internal static void CopyConfig(string src, string dir)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(src).Where(f => !f.EndsWith(".safetensors")))
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
    }

    static readonly long[] Prompt = [1, 17, 305, 42];

    /// <summary>Runs <paramref name="test"/> over an f16 copy of the tiny Llama.</summary>
    static void WithHalfLlama(Action<string> test)
    {
        string root = Directory.CreateTempSubdirectory("tapml-f16w-").FullName;
        try
        {
            string dir = Path.Combine(root, "f16");
            WriteHalfCopy(SharedData.Require("models", "hf-tiny", "llama"), dir, DType.Float16);
            test(dir);
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void An_f16_checkpoint_keeps_its_weights_f16_at_half_the_bytes_and_cpu_logits_bit_identical() => WithHalfLlama(dir =>
    {
        var plain = HfModels.Load(dir);
        var half = HfModels.Load(dir);
        var report = HalfWeights.Apply(half);
        Assert.True(report.Weights > 0, report.ToString());
        Assert.Equal(0, report.Inexact);
        Assert.Equal(report.BytesBefore, 2 * report.BytesAfter);
        // Every product and the embedding's Gather read an f16 initializer through a Cast; it is the mapped file's bytes.
        var g = half.Graph;
        foreach (var n in g.Nodes.Where(n => n.OpType is "MatMul" or "Gather"))
        {
            string w = n.Inputs[n.OpType == "MatMul" ? 1 : 0];
            if (g.Initializers.TryGetValue(w, out var t)) { Assert.True(t.Length < HalfWeights.MinElements, $"{n.Name} reads f32 '{w}'"); continue; }
            var cast = g.Nodes.FirstOrDefault(c => c.OpType == "Cast" && c.Outputs[0] == w);
            if (cast is null) continue;                      // an activation (attention's products)
            var h = g.Initializers[cast.Inputs[0]];
            Assert.Equal(DType.Float16, h.DType);
            Assert.NotNull(h.External);
        }
        // Each f16 initializer replaces the f32 one of its name (gone from the graph) at half its bytes: every Linear and the embedding.
        var halves = g.Initializers.Where(kv => kv.Value.DType == DType.Float16).ToList();
        Assert.Equal(plain.Graph.Nodes.Count(n => n.OpType == "MatMul" && plain.Graph.Initializers.ContainsKey(n.Inputs[1])) + 1, halves.Count);
        foreach (var (name, t) in halves)
        {
            string f32 = name[..^"_f16".Length];
            Assert.False(g.Initializers.ContainsKey(f32), f32);
            Assert.Equal(plain.Graph.Initializers[f32].ByteSize, 2 * t.ByteSize);
        }
        Assert.Equal(report.BytesAfter, halves.Sum(kv => kv.Value.ByteSize));
        // cpu reads the Cast's output in place (a view of the same bytes): logits bit for bit those of the f32 graph.
        var a = Generation.Greedy(new Executor(new CpuPlatform()), plain, Prompt, 1).PrefillLogits;
        var b = Generation.Greedy(new Executor(new CpuPlatform()), half, Prompt, 1).PrefillLogits;
        Assert.True(a.Bytes().SequenceEqual(b.Bytes()), "logits with --weights f16 differ from the f32 graph's");
        Assert.All(g.Initializers.Values.Where(t => t.External is not null), t => Assert.Equal(0, t.Materializations));
    });

    /// <summary>A bf16 checkpoint: each weight becomes f16 only if every value is one (else it stays f32, counted); either
    /// way cpu's logits are bit-identical to the graph without the option.</summary>
    [Fact]
    public void A_bf16_checkpoint_converts_only_exact_weights_and_keeps_cpu_logits()
    {
        string root = Directory.CreateTempSubdirectory("tapml-bf16w-").FullName;
        try
        {
            string dir = Path.Combine(root, "bf16");
            WriteHalfCopy(SharedData.Require("models", "hf-tiny", "llama"), dir, DType.BFloat16);
            var plain = HfModels.Load(dir);
            var half = HfModels.Load(dir);
            var report = HalfWeights.Apply(half);
            int products = plain.Graph.Nodes.Count(n => n.OpType == "MatMul" && plain.Graph.Initializers.ContainsKey(n.Inputs[1])) + 1;
            Assert.Equal(products, report.Weights + report.Inexact);
            Assert.Equal(report.Weights, half.Graph.Initializers.Values.Count(t => t.DType == DType.Float16));
            var a = Generation.Greedy(new Executor(new CpuPlatform()), plain, Prompt, 1).PrefillLogits;
            var b = Generation.Greedy(new Executor(new CpuPlatform()), half, Prompt, 1).PrefillLogits;
            Assert.True(a.Bytes().SequenceEqual(b.Bytes()), $"logits differ ({report})");
        }
        finally { Directory.Delete(root, true); }
    }

    /// <summary>Weights not exactly f16 (the tiny checkpoint as written, in f32) stay f32: nothing is rounded.</summary>
    [Fact]
    public void Weights_f16_cannot_hold_exactly_stay_f32()
    {
        var m = HfModels.Load(SharedData.Require("models", "hf-tiny", "llama"));
        var before = m.Graph.Initializers.Keys.ToHashSet();
        var report = HalfWeights.Apply(m);
        Assert.Equal(0, report.Weights);
        Assert.True(report.Inexact > 0, report.ToString());
        Assert.True(before.SetEquals(m.Graph.Initializers.Keys));
        Assert.DoesNotContain(m.Graph.Nodes, n => n.OpType == "Cast" && m.Graph.Initializers.TryGetValue(n.Inputs[0], out var t) && t.DType == DType.Float16);
    }

    /// <summary>The fused graph of the f16 checkpoint on webgpu (packed f16 decode kernels, prefill through the tiled
    /// matmul) gives cpu's greedy tokens, its decode kernels are the packed f16 ones, and its uploads move about half the
    /// bytes of the same checkpoint loaded without <c>--weights f16</c> (no weight is widened to f32 on its way).</summary>
    [Fact]
    public void Greedy_tokens_of_an_f16_checkpoint_are_the_same_on_cpu_and_webgpu() => WithHalfLlama(dir =>
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var half = HfModels.Load(dir);
        HalfWeights.Apply(half);
        long[] prompt = [1, 17, 305, 42, 7, 99, 3];       // over MatVecMaxRows: the prefill takes the tiled matmul
        var want = Generation.Greedy(new Executor(new CpuPlatform()), half, prompt, 8);
        using var gpu = new WebGpuPlatform("webgpu");
        var fused = Fusion.Fuse(half, out _);
        gpu.StartProfile();
        var got = Generation.Greedy(new Executor(gpu) { PreferWholeGraph = true }, fused, prompt, 8);
        var kernels = gpu.StopProfile().Select(k => k.Kernel).ToList();
        Assert.Equal(want.Tokens, got.Tokens);
        Assert.Contains(kernels, k => k.StartsWith("Projections_", StringComparison.Ordinal) && k.Contains("_f16"));
        Assert.Contains(kernels, k => k.StartsWith("MatVec_f16", StringComparison.Ordinal));
        using var wide = new WebGpuPlatform("webgpu");
        var plain = Generation.Greedy(new Executor(wide) { PreferWholeGraph = true }, Fusion.Fuse(HfModels.Load(dir), out _), prompt, 8);
        Assert.Equal(want.Tokens, plain.Tokens);
        Assert.True(gpu.UploadedBytes < 0.55 * wide.UploadedBytes, $"uploaded {gpu.UploadedBytes} B with --weights f16, {wide.UploadedBytes} B without");
    });

    /// <summary>The projections kernel and its prefill path (node by node over the stacked weights) with half weights
    /// behind Casts, against cpu on the same graph: as many dispatches as with f32 weights (the Casts cost none).</summary>
    [Theory]
    [InlineData("webgpu", 1, 64, true, "qkv", 2)]
    [InlineData("webgpu", 3, 64, true, "swiglu", 2)]
    [InlineData("webgpu", 2, 64, false, "pair", 2)]
    [InlineData("webgpu", 6, 64, true, "swiglu", 5)]
    [InlineData("webgpu?f16-proj=split", 1, 64, true, "qkv", 5)]        // x's Add, the norm, a packed-f16 matrix-vector per product
    [InlineData("webgpu?f16-proj=split", 2, 64, true, "swiglu", 5)]     // … and the epilogue
    public void Webgpu_projections_over_half_weights_match_cpu(string platform, int rows, int k, bool norm, string structure, int expectedDispatches)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        var (m, feeds) = FusionTests.ProjectionsGraph(rows, k, norm, structure, DType.Float32);
        foreach (var (name, t) in m.Graph.Initializers.ToList())
            if (t.Rank == 2) m.Graph.Initializers[name] = new Tensor(DType.Float32, t.Shape, t.Span<float>().ToArray().Select(v => (float)(Half)v).ToArray());
        var report = HalfWeights.Apply(m);
        Assert.True(report.Weights >= 2 && report.Inexact == 0, report.ToString());
        var f = Fusion.Fuse(m, out var fr);
        Assert.True(fr.Regions.GetValueOrDefault("projections") == 1, fr.ToString());
        Assert.Equal(2, f.Graph.Nodes.Count);
        using var cpu = new CpuPlatform();
        using var gpu = new WebGpuPlatform(platform);
        var want = new Executor(cpu).Run(m, feeds);
        long d0 = gpu.Device.Dispatches;
        var got = new Executor(gpu).Run(f, feeds);
        Assert.Equal(expectedDispatches, gpu.Device.Dispatches - d0);
        foreach (var (name, v) in want)
        {
            var e = ((Tensor)v).Span<float>().ToArray();
            var a = ((Tensor)got[name]).Span<float>().ToArray();
            Assert.Equal(((Tensor)v).Shape, ((Tensor)got[name]).Shape);
            for (int i = 0; i < e.Length; i++)
                Assert.True(Math.Abs(a[i] - e[i]) <= 1e-5 + 1e-4 * Math.Abs(e[i]), $"{name}[{i}]: {a[i]} vs {e[i]}");
        }
    }

    /// <summary>An unfused MatMul and Gather over half weights on webgpu (decode rows, prefill rows): the Cast is a view of
    /// the packed upload and the values equal cpu's.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(9)]
    public void Webgpu_matmul_and_gather_over_a_cast_half_weight_match_cpu(int rows)
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var rng = new Random(5);
        float[] Rand(int n) => Enumerable.Range(0, n).Select(_ => (float)(Half)(float)(rng.NextDouble() * 2 - 1)).ToArray();
        const int K = 96, N = 40, V = 50;
        var g = new Graph { Name = "half" };
        g.Inputs.Add(new ValueInfo("x", TypeRef.TensorOf(DType.Float32, rows, K)));
        g.Inputs.Add(new ValueInfo("ids", TypeRef.TensorOf(DType.Int64, 3)));
        g.Initializers["W"] = new Tensor(DType.Float32, [K, N], Rand(K * N));
        g.Initializers["E"] = new Tensor(DType.Float32, [V, K], Rand(V * K));
        g.Nodes.Add(new Node { Name = "mm", OpType = "MatMul", Inputs = ["x", "W"], Outputs = ["y"] });
        g.Nodes.Add(new Node { Name = "emb", OpType = "Gather", Inputs = ["E", "ids"], Outputs = ["e"] });
        g.Outputs.Add(new ValueInfo("y", null));
        g.Outputs.Add(new ValueInfo("e", null));
        var m = new Model { Graph = g, Opsets = new() { [""] = 17 } };
        Assert.Equal(2, HalfWeights.Apply(m).Weights);
        var feeds = new Dictionary<string, Value> { ["x"] = new Tensor(DType.Float32, [rows, K], Rand(rows * K)), ["ids"] = new Tensor(DType.Int64, [3], new long[] { 4, 0, 49 }) };
        var want = new Executor(new CpuPlatform()).Run(m, feeds);
        using var gpu = new WebGpuPlatform("webgpu");
        var got = new Executor(gpu).Run(m, feeds);
        Assert.Equal(((Tensor)want["e"]).Span<float>().ToArray(), ((Tensor)got["e"]).Span<float>().ToArray());
        var e = ((Tensor)want["y"]).Span<float>().ToArray();
        var a = ((Tensor)got["y"]).Span<float>().ToArray();
        for (int i = 0; i < e.Length; i++) Assert.True(Math.Abs(a[i] - e[i]) <= 1e-5 + 1e-4 * Math.Abs(e[i]), $"y[{i}]: {a[i]} vs {e[i]}");
    }

    /// <summary>export-onnx --weights f16 writes f16 initializers behind Casts that ONNX Runtime runs, with cpu's tokens.</summary>
    [Fact]
    public void Exported_f16_model_runs_on_onnxruntime_with_the_cpu_tokens() => WithHalfLlama(dir =>
    {
        string path = Path.Combine(dir, "model.onnx");
        var r = CliRunner.Run("export-onnx", "--model", dir, "--weights", "f16", "--out", path);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        var model = Tapml.Ir.Onnx.OnnxImporter.Load(path);
        Assert.Contains(model.Graph.Initializers.Values, t => t.DType == DType.Float16 && t.Rank == 2);
        var cpu = Generation.Greedy(new Executor(new CpuPlatform()), model, Prompt, 6);
        var ort = Generation.Greedy(new Executor(new Tapml.Platforms.OnnxRuntime.OrtPlatform("onnxruntime")) { PreferWholeGraph = true }, model, Prompt, 6);
        Assert.Equal(cpu.Tokens, ort.Tokens);
        File.Delete(path);        // the folder holds model.onnx now: the checkpoint loader would take it
    });

    /// <summary>The CLI: generate --weights f16 on an f16 checkpoint gives cpu's tokens on webgpu; a bad name is one line.</summary>
    [Fact]
    public void Generate_weights_f16_gives_cpus_tokens_on_webgpu_and_a_bad_name_is_one_line() => WithHalfLlama(dir =>
    {
        var bad = CliRunner.Run("generate", "--model", dir, "--platform", "cpu", "--input-ids", "1,2", "--weights", "f8");
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("--weights 'f8'", bad.Stderr);
        Assert.Single(bad.Stderr.Trim().Split('\n'));
        WebGpuTests.SkipIfNoDawn("webgpu");
        string Tokens(string platform)
        {
            var r = CliRunner.Run("generate", "--model", dir, "--platform", platform, "--input-ids", "1,17,305,42", "--max-tokens", "6", "--weights", "f16");
            Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
            Assert.Contains("f16:", r.Stderr);
            return r.Stdout.Split('\n').First(l => l.StartsWith("tokens:", StringComparison.Ordinal));
        }
        Assert.Equal(Tokens("cpu"), Tokens("webgpu"));
    });
}
