using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Ir.Safetensors;
using Tapml.Models;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.OnnxRuntime;
using Tapml.Testing;
using Xunit;

namespace Tapml.Tests;

/// <summary>The GPT-2 builder against what transformers itself computed (../shared/models/hf-tiny/gpt2:
/// random weights, reference logits and greedy tokens), on the CPU reference and through ONNX Runtime.</summary>
public class Gpt2Tests
{
    static readonly Tolerance HfTol = new(1e-4, 1e-4);

    sealed record Reference(Model Model, HfConfig Config, long[] InputIds, Tensor Logits, long[] Generated);

    static string Dir => SharedData.Require("models", "hf-tiny", "gpt2");

    static Reference Tiny()
    {
        string dir = Dir;
        var config = HfConfig.Load(dir);
        using var refs = SafetensorsFile.Open(Path.Combine(dir, "reference.safetensors"));
        var generated = refs.Read("generated_ids");
        Assert.Equal([1L, 16L], generated.Shape);
        return new Reference(HfModels.Load(dir), config, refs.Read("input_ids").ToInt64Array(), refs.Read("logits"), generated.ToInt64Array());
    }

    static void CheckLogits(Reference r, Tensor logits, string platform)
    {
        var cmp = Comparison.Compare("logits", r.Logits, logits, HfTol);
        TestContext.Current.TestOutputHelper?.WriteLine($"{platform}: logits max_abs {cmp.Metrics.MaxAbs:G4}, max_rel {cmp.Metrics.MaxRel:G4}");
        Console.WriteLine($"gpt2 {platform}: logits max_abs {cmp.Metrics.MaxAbs:G4}, max_rel {cmp.Metrics.MaxRel:G4}");
        Assert.True(cmp.Passed, $"{platform}: {cmp.Failure}");
    }

    [Fact]
    public void Checkpoint_names_match_the_weight_map()
    {
        var config = HfConfig.Load(Dir);
        using var ckpt = new SafetensorsCheckpoint(Dir);
        var specs = Gpt2Weights.Specs(config);
        Assert.Equal(specs.Select(s => s.Name).Order(), ckpt.Entries.Keys.Order());
        Assert.Equal(2 + 3 * 12 + 2, specs.Count);
    }

    [Fact]
    public void Missing_unused_and_misshapen_weights_are_listed_and_buffers_ignored()
    {
        var config = HfConfig.Load(Dir);
        using var ckpt = new SafetensorsCheckpoint(Dir);
        var shapes = ckpt.Entries.ToDictionary(e => e.Key, e => e.Value.Shape);
        shapes["transformer.h.0.attn.bias"] = [1, 1, 256, 256];
        shapes["transformer.h.2.attn.masked_bias"] = [];
        shapes["lm_head.weight"] = [1024, 64];
        Gpt2Weights.Check(config, Gpt2Weights.Specs(config), shapes, Dir);

        shapes.Remove("transformer.h.1.mlp.c_fc.bias");
        shapes["transformer.h.9.extra.weight"] = [4];
        shapes["transformer.h.0.attn.c_attn.weight"] = [192, 64];
        var e = Assert.Throws<TapmlException>(() => Gpt2Weights.Check(config, Gpt2Weights.Specs(config), shapes, Dir));
        Assert.Contains(Dir, e.Message);
        Assert.Contains("transformer.h.1.mlp.c_fc.bias", e.Message);
        Assert.Contains("transformer.h.9.extra.weight", e.Message);
        Assert.Contains("'transformer.h.0.attn.c_attn.weight' is [192,64]", e.Message);
        Assert.DoesNotContain("attn.bias", e.Message.Replace("c_attn.bias", ""));
    }

    /// <summary>A checkpoint saved from the bare GPT2Model (no <c>transformer.</c> prefix, with the old mask
    /// buffers, as the original openai-community/gpt2 file) loads to the same model.</summary>
    [Fact]
    public void Checkpoint_without_transformer_prefix_loads()
    {
        var r = Tiny();
        string tmp = Directory.CreateTempSubdirectory("tapml-gpt2-bare").FullName;
        try
        {
            File.Copy(Path.Combine(Dir, "config.json"), Path.Combine(tmp, "config.json"));
            var tensors = new Dictionary<string, Tensor>();
            using (var f = SafetensorsFile.Open(Path.Combine(Dir, "model.safetensors")))
                foreach (var name in f.Entries.Keys) tensors[name["transformer.".Length..]] = f.Read(name);
            tensors["h.0.attn.bias"] = Tensor.Zeros(DType.Float32, 1, 1, 4, 4);
            tensors["h.0.attn.masked_bias"] = Tensor.Scalar(-1e4f);
            SafetensorsWriter.Write(Path.Combine(tmp, "model.safetensors"), tensors);
            var model = Gpt2.Load(tmp);
            var result = Generation.Greedy(new Executor(new CpuPlatform()), model, r.InputIds, 1);
            CheckLogits(r, result.PrefillLogits, "cpu (bare names)");
        }
        finally { Directory.Delete(tmp, true); }
    }

    public static TheoryData<string> PublishedGpt2Configs()
    {
        var d = new TheoryData<string>();
        string root = SharedData.PathOf("models", "hf-configs");
        if (!Directory.Exists(root)) { d.Add("(absent)"); return d; }
        foreach (var dir in Directory.GetDirectories(root).Order())
            if (File.Exists(Path.Combine(dir, "config.json"))
                && JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))?["model_type"]?.GetValue<string>() == "gpt2")
                d.Add(Path.GetFileName(dir));
        return d;
    }

    /// <summary>A published config shrunk to 2 layers, n_embd 64, 4 heads (activation, eps, scaling kept):
    /// the weight map has the names and shapes the config implies, and the graph built from random weights
    /// runs on the CPU and agrees with ONNX Runtime.</summary>
    [Theory, MemberData(nameof(PublishedGpt2Configs))]
    public void Published_config_shrunk_builds_and_runs(string name)
    {
        string src = SharedData.Require("models", "hf-configs", name, "config.json");
        var full = HfConfig.Load(src);
        Assert.Equal("gelu_new", full.HiddenAct);
        Assert.True(full.TieWordEmbeddings);
        var raw = JsonNode.Parse(File.ReadAllText(src))!.AsObject();
        raw["n_layer"] = 2; raw["n_embd"] = 64; raw["n_head"] = 4; raw["vocab_size"] = 128;
        raw["n_positions"] = 32; raw["n_ctx"] = 32;
        string dir = Directory.CreateTempSubdirectory("tapml-gpt2-config").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), raw.ToJsonString());
            var c = HfConfig.Load(dir);
            Assert.Equal(16, c.HeadDim);
            Assert.Equal(256, c.IntermediateSize);
            var specs = Gpt2Weights.Specs(c);
            Assert.Equal(2 + 2 * 12 + 2, specs.Count);
            var byName = specs.ToDictionary(s => s.Name, s => s.Shape);
            Assert.Equal([128L, 64], byName["transformer.wte.weight"]);
            Assert.Equal([32L, 64], byName["transformer.wpe.weight"]);
            Assert.Equal([64L], byName["transformer.h.0.ln_1.weight"]);
            Assert.Equal([64L], byName["transformer.h.1.ln_2.bias"]);
            Assert.Equal([64L, 192], byName["transformer.h.1.attn.c_attn.weight"]);
            Assert.Equal([192L], byName["transformer.h.1.attn.c_attn.bias"]);
            Assert.Equal([64L, 64], byName["transformer.h.0.attn.c_proj.weight"]);
            Assert.Equal([64L, 256], byName["transformer.h.0.mlp.c_fc.weight"]);
            Assert.Equal([256L, 64], byName["transformer.h.0.mlp.c_proj.weight"]);
            Assert.Equal([64L], byName["transformer.ln_f.bias"]);
            Assert.False(byName.ContainsKey("lm_head.weight"));

            var rng = new Random(5);
            var weights = specs.ToDictionary(s => s.Name, s =>
            {
                var t = Tensor.Zeros(DType.Float32, s.Shape);
                var v = t.Span<float>();
                bool gain = s.Name.EndsWith(".weight") && s.Shape.Length == 1;
                for (int i = 0; i < v.Length; i++) v[i] = gain ? 1 + 0.1f * (float)(rng.NextDouble() - 0.5) : 0.2f * (float)(rng.NextDouble() - 0.5);
                return t;
            });
            var model = Gpt2.Build(c, weights);
            long[] prompt = [1, 5, 99, 7];
            var cpu = Generation.Greedy(new Executor(new CpuPlatform()), model, prompt, 4);
            var ort = Generation.Greedy(new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }, model, prompt, 4);
            Assert.Equal([1L, 4, 128], cpu.PrefillLogits.Shape);
            var cmp = Comparison.Compare("logits", ort.PrefillLogits, cpu.PrefillLogits, HfTol);
            Assert.True(cmp.Passed, cmp.Failure);
            Assert.Equal(ort.Tokens, cpu.Tokens);
        }
        finally { Directory.Delete(dir, true); }
    }
}
