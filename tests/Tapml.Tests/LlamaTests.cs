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

/// <summary>The Llama builder against what transformers itself computed (../shared/models/hf-tiny/llama:
/// random weights, reference logits and greedy tokens), on the CPU reference and through ONNX Runtime.</summary>
public class LlamaTests
{
    static readonly Tolerance HfTol = new(1e-4, 1e-4);

    sealed record Reference(Model Model, HfConfig Config, long[] InputIds, Tensor Logits, long[] Generated);

    static Reference Tiny()
    {
        string dir = SharedData.Require("models", "hf-tiny", "llama");
        var config = HfConfig.Load(dir);
        using var refs = SafetensorsFile.Open(Path.Combine(dir, "reference.safetensors"));
        var generated = refs.Read("generated_ids");
        Assert.Equal([1L, 16L], generated.Shape);
        return new Reference(Llama.Load(dir), config, refs.Read("input_ids").ToInt64Array(), refs.Read("logits"), generated.ToInt64Array());
    }

    static OutputComparison CheckLogits(Reference r, Tensor logits, string platform)
    {
        var cmp = Comparison.Compare("logits", r.Logits, logits, HfTol);
        TestContext.Current.TestOutputHelper?.WriteLine($"{platform}: logits max_abs {cmp.Metrics.MaxAbs:G4}, max_rel {cmp.Metrics.MaxRel:G4}");
        Assert.True(cmp.Passed, $"{platform}: {cmp.Failure}");
        return cmp;
    }

    [Fact]
    public void Missing_and_unused_weights_are_listed()
    {
        var r = Tiny();
        string dir = SharedData.Require("models", "hf-tiny", "llama");
        using var ckpt = new SafetensorsCheckpoint(dir);
        var shapes = ckpt.Entries.ToDictionary(e => e.Key, e => e.Value.Shape);
        shapes.Remove("model.layers.1.mlp.up_proj.weight");
        shapes["model.layers.9.extra.weight"] = [4];
        shapes["model.norm.weight"] = [63];
        var e = Assert.Throws<TapmlException>(() => LlamaWeights.Check(r.Config, LlamaWeights.Specs(r.Config), shapes, dir));
        Assert.Contains(dir, e.Message);
        Assert.Contains("model.layers.1.mlp.up_proj.weight", e.Message);
        Assert.Contains("model.layers.9.extra.weight", e.Message);
        Assert.Contains("'model.norm.weight' is [63]", e.Message);
    }

    public static TheoryData<string> PublishedLlamaConfigs()
    {
        var d = new TheoryData<string>();
        string root = SharedData.PathOf("models", "hf-configs");
        if (!Directory.Exists(root)) { d.Add("(absent)"); return d; }
        foreach (var dir in Directory.GetDirectories(root).Order())
            if (JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))?["model_type"]?.GetValue<string>() == "llama")
                d.Add(Path.GetFileName(dir));
        return d;
    }

    /// <summary>A published config shrunk to 2 layers of width 64 (same GQA ratio, RoPE scaling, tying): the
    /// weight map has the expected names and shapes, and the graph built from random weights runs on the CPU
    /// and agrees with ONNX Runtime.</summary>
    [Theory, MemberData(nameof(PublishedLlamaConfigs))]
    public void Published_config_shrunk_builds_and_runs(string name)
    {
        string src = SharedData.Require("models", "hf-configs", name, "config.json");
        var full = HfConfig.Load(src);
        int ratio = full.NumHeads / full.NumKvHeads;
        var raw = JsonNode.Parse(File.ReadAllText(src))!.AsObject();
        raw["num_hidden_layers"] = 2; raw["hidden_size"] = 64; raw["intermediate_size"] = 96; raw["vocab_size"] = 128;
        raw["num_key_value_heads"] = 2; raw["num_attention_heads"] = 2 * ratio; raw["head_dim"] = 16;
        string dir = Directory.CreateTempSubdirectory("tapml-llama-config").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), raw.ToJsonString());
            var c = HfConfig.Load(dir);
            var specs = LlamaWeights.Specs(c);
            Assert.Equal(2 + 2 * 9 + (full.TieWordEmbeddings ? 0 : 1), specs.Count);
            var byName = specs.ToDictionary(s => s.Name, s => s.Shape);
            Assert.Equal([128L, 64], byName["model.embed_tokens.weight"]);
            Assert.Equal([32L * ratio, 64], byName["model.layers.1.self_attn.q_proj.weight"]);
            Assert.Equal([32L, 64], byName["model.layers.1.self_attn.k_proj.weight"]);
            Assert.Equal([64L, 32L * ratio], byName["model.layers.0.self_attn.o_proj.weight"]);
            Assert.Equal([96L, 64], byName["model.layers.0.mlp.gate_proj.weight"]);
            Assert.Equal([64L, 96], byName["model.layers.0.mlp.down_proj.weight"]);
            Assert.Equal([64L], byName["model.norm.weight"]);
            Assert.Equal(!full.TieWordEmbeddings, byName.ContainsKey("lm_head.weight"));

            var weights = TestWeights.Random(specs);
            var model = Llama.Build(c, weights);
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

    /// <summary><c>tapml generate</c> on the HF folder: the reference tokens in --json (with load time and time to first
    /// token), prefill logits in --logits-out.</summary>
    [Fact]
    public void Generate_verb_writes_tokens_and_logits()
    {
        var r = Tiny();
        string dir = SharedData.Require("models", "hf-tiny", "llama");
        string tmp = Directory.CreateTempSubdirectory("tapml-generate").FullName;
        try
        {
            string json = Path.Combine(tmp, "g.json"), logits = Path.Combine(tmp, "l.safetensors");
            var res = CliRunner.Run("generate", "--model", dir, "--platform", "cpu", "--input-ids", string.Join(",", r.InputIds),
                "--max-tokens", "16", "--json", json, "--logits-out", logits);
            Assert.True(res.ExitCode == 0, res.Stderr);
            var o = JsonNode.Parse(File.ReadAllText(json))!;
            Assert.Equal(r.Generated, o["tokens"]!.AsArray().Select(t => t!.GetValue<long>()).ToArray());
            Assert.True(o["decode_tokens_per_s"]!.GetValue<double>() > 0);
            // Load and time to first token are reported apart: the first token comes after the prompt run.
            Assert.True(o["load_ms"]!.GetValue<double>() > 0);
            Assert.True(o["time_to_first_token_ms"]!.GetValue<double>() > 0);
            Assert.Matches(@"load [\d.]+ ms .*; time to first token [\d.]+ ms", res.Stderr);
            using var f = SafetensorsFile.Open(logits);
            Assert.True(Comparison.Compare("logits", r.Logits, f.Read("logits"), HfTol).Passed);
        }
        finally { Directory.Delete(tmp, true); }
    }
}
