using Tapml.Core;
using Tapml.Models;
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
}
