using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Tapml.Core;
using Tapml.Ir.Safetensors;
using Tapml.Models;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.OnnxRuntime;
using Tapml.Testing;
using Xunit;

namespace Tapml.Tests;

public class HfConfigTests
{
    public static TheoryData<string> Published()
    {
        var d = new TheoryData<string>();
        string root = SharedData.PathOf("models", "hf-configs");
        if (!Directory.Exists(root)) { d.Add("(absent)"); return d; }
        foreach (var dir in Directory.GetDirectories(root).Order()) d.Add(Path.GetFileName(dir));
        return d;
    }

    /// <summary>Every published config parses; derived sizes are consistent.</summary>
    [Theory, MemberData(nameof(Published))]
    public void Published_configs_parse(string name)
    {
        var c = HfConfig.Load(SharedData.Require("models", "hf-configs", name));
        Assert.True(c.HiddenSize > 0 && c.NumLayers > 0 && c.VocabSize > 0);
        Assert.Equal(0, c.NumHeads % c.NumKvHeads);
        Assert.True(c.Rope.Theta > 0);
    }

    [Fact]
    public void Old_and_new_rope_keys_mean_the_same()
    {
        var old = HfConfig.Load(SharedData.Require("models", "hf-configs", "Llama-3.2-1B"));
        Assert.Equal("llama3", old.Rope.Type);
        Assert.Equal(500000, old.Rope.Theta);
        Assert.Equal(32, old.Rope.Factor);
        Assert.Equal(8192, old.Rope.OriginalMaxPositions);
        var tiny = HfConfig.Load(SharedData.Require("models", "hf-tiny", "llama"));
        Assert.Equal("llama3", tiny.Rope.Type);
        Assert.Equal(500000, tiny.Rope.Theta);
        Assert.Equal(8, tiny.Rope.Factor);
        Assert.Equal(64, tiny.Rope.OriginalMaxPositions);
        Assert.Equal(2, tiny.NumKvHeads);
        Assert.Equal(16, tiny.HeadDim);
    }

    [Fact]
    public void Gpt2_aliases_and_phi3_longrope()
    {
        var gpt2 = HfConfig.Load(SharedData.Require("models", "hf-configs", "gpt2"));
        Assert.Equal(768, gpt2.HiddenSize);
        Assert.Equal(12, gpt2.NumLayers);
        Assert.Equal(1024, gpt2.MaxPositions);
        Assert.True(gpt2.TieWordEmbeddings);
        var phi = HfConfig.Load(SharedData.Require("models", "hf-configs", "Phi-3.5-mini-instruct"));
        Assert.Equal("longrope", phi.Rope.Type);
        Assert.Equal(phi.HeadDim / 2, phi.Rope.LongFactor!.Length);
    }

    [Fact]
    public void Bad_values_name_the_file_and_key()
    {
        string dir = Directory.CreateTempSubdirectory("tapml-cfg-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), "{\"model_type\":\"llama\",\"vocab_size\":\"many\",\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4}");
            var e = Assert.Throws<TapmlException>(() => HfConfig.Load(dir));
            Assert.Contains("config.json", e.Message);
            Assert.Contains("'vocab_size'", e.Message);
            File.WriteAllText(Path.Combine(dir, "config.json"), "{\"model_type\":\"llama\",\"vocab_size\":10,\"hidden_size\":64,\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":3}");
            Assert.Contains("'num_key_value_heads'", Assert.Throws<TapmlException>(() => HfConfig.Load(dir)).Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>Published configs of the architectures beyond the first six (those have LlamaFamilyTests' rows).</summary>
    public static TheoryData<string> PublishedNewArchitectures()
    {
        var d = new TheoryData<string>();
        string root = SharedData.PathOf("models", "hf-configs");
        if (!Directory.Exists(root)) { d.Add("(absent)"); return d; }
        foreach (var dir in Directory.GetDirectories(root).Order())
            if (JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))?["model_type"]?.GetValue<string>() is { } t
                && t is not ("llama" or "qwen2" or "mistral" or "gemma" or "phi3" or "gpt2") && Architectures.Find(t) is not null)
                d.Add(Path.GetFileName(dir));
        return d;
    }

    /// <summary>Layer and expert indices as N: the name's structure.</summary>
    static string Structure(string name) => Regex.Replace(name, @"\.\d+\.", ".N.");

    /// <summary>A published config shrunk (2 layers, width 64, 4 experts, window 3; its switches kept) builds; every
    /// weight name it implies is one that transformers itself wrote for that architecture (the checkpoints of
    /// tests/data/hf-arch, as no index file of the real checkpoints is at hand); cpu and onnxruntime agree on the
    /// graph, prefill and greedy decode.</summary>
    [Theory, MemberData(nameof(PublishedNewArchitectures))]
    public void Published_config_of_a_new_architecture_shrunk_builds_with_transformers_names(string name)
    {
        string src = SharedData.Require("models", "hf-configs", name, "config.json");
        var full = HfConfig.Load(src);
        var raw = JsonNode.Parse(File.ReadAllText(src))!.AsObject();
        int ratio = full.NumHeads / full.NumKvHeads, kvHeads = Math.Min(2, full.NumKvHeads);
        raw["num_hidden_layers"] = 2; raw["hidden_size"] = 64; raw["intermediate_size"] = 96; raw["vocab_size"] = 128;
        raw["num_attention_heads"] = kvHeads * ratio;
        if (raw.ContainsKey("num_key_value_heads")) raw["num_key_value_heads"] = kvHeads;
        if (raw.ContainsKey("head_dim")) raw["head_dim"] = 16;
        if (raw.ContainsKey("query_pre_attn_scalar")) raw["query_pre_attn_scalar"] = 16;
        if (full.SlidingWindow is not null) raw["sliding_window"] = 3;
        foreach (var key in new[] { "num_experts", "num_local_experts", "n_routed_experts" }) if (raw.ContainsKey(key)) raw[key] = 4;
        if (raw.ContainsKey("num_experts_per_tok")) raw["num_experts_per_tok"] = 2;
        if (raw.ContainsKey("moe_intermediate_size")) raw["moe_intermediate_size"] = 32;
        string dir = Directory.CreateTempSubdirectory("tapml-new-arch-config").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "config.json"), raw.ToJsonString());
            var c = HfConfig.Load(dir);
            var arch = Architectures.For(c);
            var specs = arch.Specs(c);
            var written = new HashSet<string>();
            foreach (var ckpt in Directory.GetDirectories(Path.Combine(SharedData.RepoRoot, "tests", "data", "hf-arch"), c.ModelType + "-*"))
                using (var st = new SafetensorsCheckpoint(ckpt)) written.UnionWith(st.Entries.Keys.Select(Structure));
            Assert.NotEmpty(written);
            Assert.All(specs, s => Assert.Contains(Structure(s.Name), written));

            var weights = TestWeights.Random(specs);
            var model = Llama.Build(c, weights, arch.Options!(c));
            long[] prompt = [1, 5, 99, 7];
            var cpu = Generation.Greedy(new Executor(new CpuPlatform()), model, prompt, 6);
            var ort = Generation.Greedy(new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }, model, prompt, 6);
            Assert.Equal([1L, 4, 128], cpu.PrefillLogits.Shape);
            var cmp = Comparison.Compare("logits", ort.PrefillLogits, cpu.PrefillLogits, new Tolerance(1e-4, 1e-4));
            Assert.True(cmp.Passed, cmp.Failure);
            Assert.Equal(ort.Tokens, cpu.Tokens);
        }
        finally { Directory.Delete(dir, true); }
    }
}
