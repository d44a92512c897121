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

/// <summary>Every architecture against what transformers itself computed (../shared/models/hf-tiny/&lt;arch&gt;): prefill
/// logits and 16 greedy tokens through the KV cache on the CPU reference, and the exported .onnx through ONNX
/// Runtime; plus the Llama-family specifics (Qwen2, Mistral, Gemma, Phi-3: the Llama decoder with each
/// architecture's switches) and their published configs shrunk and built.</summary>
public class LlamaFamilyTests
{
    static readonly Tolerance HfTol = new(1e-4, 1e-4);

    static readonly Dictionary<string, Func<HfConfig, DecoderOptions>> Options = new()
    {
        ["qwen2"] = Qwen2.Options,
        ["mistral"] = Mistral.Options,
        ["gemma"] = Gemma.Options,
        ["phi3"] = Phi3.Options,
    };

    /// <summary>All six architectures of ../shared/models/hf-tiny: the reference rows below run for each.</summary>
    public static TheoryData<string> Archs() => new("llama", "qwen2", "mistral", "gemma", "phi3", "gpt2");

    sealed record Reference(Model Model, HfConfig Config, long[] InputIds, Tensor Logits, long[] Generated);

    static Reference Tiny(string arch)
    {
        string dir = SharedData.Require("models", "hf-tiny", arch);
        var config = HfConfig.Load(dir);
        Assert.Equal(arch, config.ModelType);
        using var refs = SafetensorsFile.Open(Path.Combine(dir, "reference.safetensors"));
        var generated = refs.Read("generated_ids");
        Assert.Equal([1L, 16L], generated.Shape);
        return new Reference(HfModels.Load(dir), config, refs.Read("input_ids").ToInt64Array(), refs.Read("logits"), generated.ToInt64Array());
    }

    static void CheckLogits(Reference r, Tensor logits, string platform)
    {
        var cmp = Comparison.Compare("logits", r.Logits, logits, HfTol);
        string line = $"{r.Config.ModelType} {platform}: logits max_abs {cmp.Metrics.MaxAbs:G4}, max_rel {cmp.Metrics.MaxRel:G4}";
        TestContext.Current.TestOutputHelper?.WriteLine(line);
        if (Environment.GetEnvironmentVariable("TAPML_LOG_ERRORS") is { Length: > 0 } log) File.AppendAllText(log, line + "\n");
        Assert.True(cmp.Passed, $"{r.Config.ModelType} {platform}: {cmp.Failure}");
    }

    [Theory, MemberData(nameof(Archs))]
    public void Prefill_logits_match_transformers_on_cpu(string arch)
    {
        var r = Tiny(arch);
        var result = Generation.Greedy(new Executor(new CpuPlatform()), r.Model, r.InputIds, 1);
        CheckLogits(r, result.PrefillLogits, "cpu");
    }

    [Theory, MemberData(nameof(Archs))]
    public void Greedy_generation_with_kv_cache_matches_transformers_on_cpu(string arch)
    {
        var r = Tiny(arch);
        // No EOS stop: HF's reference generated all 16 tokens (none of them is an EOS of these random models).
        var result = Generation.Greedy(new Executor(new CpuPlatform()), r.Model, r.InputIds, 16, r.Config.EosTokenIds);
        Assert.Equal(r.Generated, result.Tokens);
        Assert.Equal(15, result.DecodeSteps);
    }

    [Theory, MemberData(nameof(Archs))]
    public void Exported_onnx_on_onnxruntime_matches_transformers(string arch)
    {
        var r = Tiny(arch);
        string path = Path.Combine(Path.GetTempPath(), $"tapml-{arch}-{Guid.NewGuid():N}.onnx");
        try
        {
            OnnxExporter.Save(r.Model, path);
            var loaded = OnnxImporter.Load(path);
            var ort = new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true };
            var result = Generation.Greedy(ort, loaded, r.InputIds, 16, r.Config.EosTokenIds);
            CheckLogits(r, result.PrefillLogits, "onnxruntime");
            Assert.Equal(r.Generated, result.Tokens);
        }
        finally { File.Delete(path); }
    }

    /// <summary>The tiny Mistral's window (4) is shorter than the prompt (12): without it the logits differ, so
    /// the reference match above really exercises the sliding-window mask.</summary>
    [Fact]
    public void Mistral_sliding_window_changes_the_result()
    {
        var r = Tiny("mistral");
        Assert.Equal(4, r.Config.SlidingWindow);
        string dir = SharedData.Require("models", "hf-tiny", "mistral");
        using var ckpt = new SafetensorsCheckpoint(dir);
        var full = Llama.Build(r.Config, LlamaWeights.Load(r.Config, ckpt, Mistral.Options(r.Config)), Mistral.Options(r.Config) with { SlidingWindow = null });
        var logits = Generation.Greedy(new Executor(new CpuPlatform()), full, r.InputIds, 1).PrefillLogits;
        Assert.False(Comparison.Compare("logits", r.Logits, logits, HfTol).Passed);
    }

    [Fact]
    public void Phi3_fused_weights_are_checked_under_their_checkpoint_names()
    {
        var r = Tiny("phi3");
        string dir = SharedData.Require("models", "hf-tiny", "phi3");
        using var ckpt = new SafetensorsCheckpoint(dir);
        var shapes = ckpt.Entries.ToDictionary(e => e.Key, e => e.Value.Shape);
        shapes.Remove("model.layers.1.mlp.gate_up_proj.weight");
        shapes["model.layers.0.self_attn.qkv_proj.weight"] = [191, 64];
        shapes["model.layers.0.self_attn.q_proj.weight"] = [64, 64];
        var o = Phi3.Options(r.Config);
        var e = Assert.Throws<TapmlException>(() => LlamaWeights.Check(r.Config, LlamaWeights.Specs(r.Config, o), shapes, dir));
        Assert.Contains("model.layers.1.mlp.gate_up_proj.weight [320,64]", e.Message);
        Assert.Contains("'model.layers.0.self_attn.qkv_proj.weight' is [191,64]", e.Message);
        Assert.Contains("unused weight(s): model.layers.0.self_attn.q_proj.weight", e.Message);
    }

    /// <summary>partial_rotary_factor 0.5 on the tiny Phi-3: only the first 8 of 16 channels rotate (4 frequencies; the logits
    /// change), and the CPU and ONNX Runtime agree on the graph, prefill and decode.</summary>
    [Fact]
    public void Phi3_partial_rotary_runs_and_matches_onnxruntime()
    {
        var r = Tiny("phi3");
        string src = SharedData.Require("models", "hf-tiny", "phi3");
        var raw = JsonNode.Parse(File.ReadAllText(Path.Combine(src, "config.json")))!.AsObject();
        raw["rope_parameters"]!["partial_rotary_factor"] = 0.5;
        string dir = Directory.CreateTempSubdirectory("tapml-phi3-partial").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), raw.ToJsonString());
            var c = HfConfig.Load(dir);
            Assert.Equal(0.5, c.Rope.PartialRotaryFactor);
            using var ckpt = new SafetensorsCheckpoint(src);
            var model = Llama.Build(c, LlamaWeights.Load(c, ckpt, Phi3.Options(c)), Phi3.Options(c));
            // rotary_dim 8: 4 frequencies, each twice (HF's cat(freqs, freqs) folded into the constant)
            var inv = model.Graph.Initializers["rope.inv_freq"];
            Assert.Equal([8L], inv.Shape);
            Assert.Equal(inv.As<float>()[..4].ToArray(), inv.As<float>()[4..].ToArray());
            var cpu = Generation.Greedy(new Executor(new CpuPlatform()), model, r.InputIds, 6);
            var ort = Generation.Greedy(new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }, model, r.InputIds, 6);
            Assert.True(Comparison.Compare("logits", ort.PrefillLogits, cpu.PrefillLogits, HfTol).Passed);
            Assert.Equal(ort.Tokens, cpu.Tokens);
            Assert.False(Comparison.Compare("logits", r.Logits, cpu.PrefillLogits, HfTol).Passed);
        }
        finally { Directory.Delete(dir, true); }
    }

    public static TheoryData<string> PublishedConfigs()
    {
        var d = new TheoryData<string>();
        string root = SharedData.PathOf("models", "hf-configs");
        if (!Directory.Exists(root)) { d.Add("(absent)"); return d; }
        foreach (var dir in Directory.GetDirectories(root).Order())
            if (JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))?["model_type"]?.GetValue<string>() is "qwen2" or "mistral" or "gemma" or "phi3")
                d.Add(Path.GetFileName(dir));
        return d;
    }

    /// <summary>A published config shrunk to 2 layers of width 64 (same GQA ratio, RoPE scaling, tying, sliding
    /// window ≤ 3 so it matters): the weight map has the architecture's names and shapes, and the graph built from
    /// random weights runs on the CPU and agrees with ONNX Runtime, prefill and greedy decode. LongRoPE configs get
    /// original_max_position_embeddings = 5 so the decode crosses over to the long factors.</summary>
    [Theory, MemberData(nameof(PublishedConfigs))]
    public void Published_config_shrunk_builds_and_runs(string name)
    {
        string src = SharedData.Require("models", "hf-configs", name, "config.json");
        var full = HfConfig.Load(src);
        int ratio = full.NumHeads / full.NumKvHeads;
        int kvHeads = Math.Min(2, full.NumKvHeads);
        var raw = JsonNode.Parse(File.ReadAllText(src))!.AsObject();
        raw["num_hidden_layers"] = 2; raw["hidden_size"] = 64; raw["intermediate_size"] = 96; raw["vocab_size"] = 128;
        raw["num_key_value_heads"] = kvHeads; raw["num_attention_heads"] = kvHeads * ratio; raw["head_dim"] = 16;
        if (full.SlidingWindow is not null) raw["sliding_window"] = 3;
        if (full.Rope.Type == "longrope" && raw["rope_scaling"] is JsonObject rs)
        {
            foreach (var key in new[] { "short_factor", "long_factor" })
                rs[key] = new JsonArray(rs[key]!.AsArray().Take(8).Select(x => (JsonNode?)JsonValue.Create(x!.GetValue<double>())).ToArray());
            raw["original_max_position_embeddings"] = 5;
        }
        string dir = Directory.CreateTempSubdirectory("tapml-family-config").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), raw.ToJsonString());
            var c = HfConfig.Load(dir);
            var o = Options[c.ModelType](c);
            var specs = LlamaWeights.Specs(c, o);
            var byName = specs.ToDictionary(s => s.Name, s => s.Shape);
            long q = 16L * kvHeads * ratio, kv = 16L * kvHeads;
            int perLayer = 2 + (o.FusedQkv ? 1 : 3) + (o.QkvBias ? 3 : 0) + 1 + (o.FusedGateUp ? 2 : 3);
            Assert.Equal(2 + 2 * perLayer + (c.TieWordEmbeddings ? 0 : 1), specs.Count);
            Assert.Equal([128L, 64], byName["model.embed_tokens.weight"]);
            if (o.FusedQkv) Assert.Equal([q + 2 * kv, 64], byName["model.layers.1.self_attn.qkv_proj.weight"]);
            else
            {
                Assert.Equal([q, 64], byName["model.layers.1.self_attn.q_proj.weight"]);
                Assert.Equal([kv, 64], byName["model.layers.1.self_attn.k_proj.weight"]);
            }
            Assert.Equal(c.ModelType == "qwen2", byName.ContainsKey("model.layers.0.self_attn.q_proj.bias"));
            if (c.ModelType == "qwen2") Assert.Equal([kv], byName["model.layers.0.self_attn.v_proj.bias"]);
            Assert.False(byName.ContainsKey("model.layers.0.self_attn.o_proj.bias"));
            Assert.Equal([64L, q], byName["model.layers.0.self_attn.o_proj.weight"]);
            if (o.FusedGateUp) Assert.Equal([192L, 64], byName["model.layers.0.mlp.gate_up_proj.weight"]);
            else Assert.Equal([96L, 64], byName["model.layers.0.mlp.gate_proj.weight"]);
            Assert.Equal([64L, 96], byName["model.layers.0.mlp.down_proj.weight"]);
            Assert.Equal(!c.TieWordEmbeddings, byName.ContainsKey("lm_head.weight"));

            var weights = TestWeights.Random(specs);
            var model = Llama.Build(c, weights, o);
            long[] prompt = [1, 5, 99, 7];
            var cpu = Generation.Greedy(new Executor(new CpuPlatform()), model, prompt, 6);
            var ort = Generation.Greedy(new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }, model, prompt, 6);
            Assert.Equal([1L, 4, 128], cpu.PrefillLogits.Shape);
            var cmp = Comparison.Compare("logits", ort.PrefillLogits, cpu.PrefillLogits, HfTol);
            Assert.True(cmp.Passed, cmp.Failure);
            Assert.Equal(ort.Tokens, cpu.Tokens);
        }
        finally { Directory.Delete(dir, true); }
    }
}
