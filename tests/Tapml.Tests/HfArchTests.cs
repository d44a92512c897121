using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Ir.Safetensors;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.OnnxRuntime;
using Tapml.Platforms.WebGpu;
using Tapml.Testing;
using Xunit;

namespace Tapml.Tests;

/// <summary>Every registered architecture against what transformers itself computed (tests/data/hf-arch, made by
/// tools/models/make_arch_refs.py on the device machine; see its README): one row per checkpoint (two or more per
/// architecture, one of them bf16). cpu prefill logits (atol 1e-4 + rtol 1e-4) and 16 greedy tokens through the KV
/// cache; tapml's exported .onnx on onnxruntime gives the same tokens; webgpu (one row per distinct block) gives them
/// too; and a
/// missing or misshaped weight is one line naming the tensor.</summary>
public class HfArchTests
{
    static readonly Tolerance HfTol = new(1e-4, 1e-4);

    static string Root => Path.Combine(SharedData.RepoRoot, "tests", "data", "hf-arch");

    static string? ModelType(string dir) => JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))?["model_type"]?.GetValue<string>();

    /// <summary>Variants of registered architectures that tapml refuses, and the config key the refusal names.</summary>
    static readonly Dictionary<string, string> Refused = new() { ["falcon-c"] = "alibi" };

    /// <summary>The checkpoints whose architecture is registered (less <see cref="Refused"/>).</summary>
    public static TheoryData<string> Checkpoints()
    {
        var d = new TheoryData<string>();
        foreach (var dir in Directory.GetDirectories(Root).Order().Where(x => !Refused.ContainsKey(Path.GetFileName(x))))
            if (ModelType(dir) is { } t && Architectures.Find(t) is not null)
                d.Add(Path.GetFileName(dir));
        return d;
    }

    /// <summary>The webgpu rows: one checkpoint for each distinct block the decoder graph has (SwiftShader is slow, so
    /// not every architecture): per-head q/k norm, MoE, soft-capping with sandwich norms and sliding layers, interleaved
    /// RoPE with a parallel block, ALiBi, learned positions, latent attention with the grouped router, fused per-head
    /// q/k/v with partial rotary.</summary>
    public static TheoryData<string> WebgpuRows() =>
        new("qwen3-a", "mixtral-a", "gemma2-a", "cohere-a", "bloom-a", "opt-a", "deepseek_v3-a", "gpt_neox-a");

    sealed record Reference(string Dir, HfConfig Config, long[] InputIds, Tensor Logits, long[] Generated);

    static Reference Ref(string name)
    {
        string dir = Path.Combine(Root, name);
        using var refs = SafetensorsFile.Open(Path.Combine(dir, "reference.safetensors"));
        var generated = refs.Read("generated_ids");
        Assert.Equal([1L, 16L], generated.Shape);
        return new Reference(dir, HfConfig.Load(dir), refs.Read("input_ids").ToInt64Array(), refs.Read("logits"), generated.ToInt64Array());
    }

    static void CheckLogits(string name, Tensor want, Tensor got, string platform)
    {
        var cmp = Comparison.Compare("logits", want, got, HfTol);
        TestContext.Current.TestOutputHelper?.WriteLine($"{name} {platform}: logits max_abs {cmp.Metrics.MaxAbs:G4}, max_rel {cmp.Metrics.MaxRel:G4}");
        Assert.True(cmp.Passed, $"{name} {platform}: {cmp.Failure}");
    }

    public static TheoryData<string> RefusedVariants() => new(Refused.Keys);

    /// <summary>A config value the graph does not implement is refused with one line naming the file and the key,
    /// never computed wrongly.</summary>
    [Theory, MemberData(nameof(RefusedVariants))]
    public void An_unsupported_variant_is_refused_naming_the_key(string name)
    {
        var e = Assert.Throws<TapmlException>(() => HfModels.Load(Path.Combine(Root, name)));
        Assert.DoesNotContain('\n', e.Message);
        Assert.Contains(Path.Combine(Root, name, "config.json"), e.Message);
        Assert.Contains($"'{Refused[name]}'", e.Message);
    }

    /// <summary>Config values a held-out checkpoint may carry that the graph does not implement: each is one line naming
    /// the file and the key (checkpoint, key, JSON value, key named).</summary>
    [Theory]
    [InlineData("deepseek_v3-a", "rope_parameters", "{\"rope_type\":\"yarn\",\"factor\":40,\"rope_theta\":10000,\"original_max_position_embeddings\":64}", "rope_type")]
    [InlineData("mixtral-a", "router_jitter_noise", "0.1", "router_jitter_noise")]
    [InlineData("gemma2-a", "layer_types", "[\"sliding_attention\",\"chunked_attention\"]", "layer_types")]
    [InlineData("qwen3_moe-a", "num_experts_per_tok", "9", "num_experts_per_tok")]
    [InlineData("gpt_bigcode-a", "scale_attn_weights", "false", "scale_attn_weights")]
    [InlineData("opt-a", "layer_norm_elementwise_affine", "false", "layer_norm_elementwise_affine")]
    [InlineData("phi-a", "hidden_act", "\"quick_gelu\"", "hidden_act")]
    public void An_unimplemented_config_value_is_one_line_naming_the_key(string name, string key, string json, string named)
    {
        string dir = Directory.CreateTempSubdirectory("tapml-arch-cfg").FullName;
        try
        {
            var raw = JsonNode.Parse(File.ReadAllText(Path.Combine(Root, name, "config.json")))!.AsObject();
            raw[key] = JsonNode.Parse(json);
            File.WriteAllText(Path.Combine(dir, "config.json"), raw.ToJsonString());
            File.Copy(Path.Combine(Root, name, "model.safetensors"), Path.Combine(dir, "model.safetensors"));
            var e = Assert.Throws<TapmlException>(() => HfModels.Load(dir));
            Assert.DoesNotContain('\n', e.Message);
            Assert.Contains(Path.Combine(dir, "config.json"), e.Message);
            Assert.Contains($"'{named}'", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory, MemberData(nameof(Checkpoints))]
    public void Cpu_matches_transformers_logits_and_greedy_tokens(string name)
    {
        var r = Ref(name);
        var result = Generation.Greedy(new Executor(new CpuPlatform()), HfModels.Load(r.Dir), r.InputIds, 16);
        CheckLogits(name, r.Logits, result.PrefillLogits, "cpu");
        Assert.Equal(r.Generated, result.Tokens);
        Assert.Equal(15, result.DecodeSteps);
    }

    [Theory, MemberData(nameof(Checkpoints))]
    public void Exported_onnx_on_onnxruntime_gives_transformers_tokens(string name)
    {
        var r = Ref(name);
        string path = Path.Combine(Path.GetTempPath(), $"tapml-{name}-{Guid.NewGuid():N}.onnx");
        try
        {
            OnnxExporter.Save(HfModels.Load(r.Dir), path);
            var ort = new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true };
            var result = Generation.Greedy(ort, OnnxImporter.Load(path), r.InputIds, 16);
            CheckLogits(name, r.Logits, result.PrefillLogits, "onnxruntime");
            Assert.Equal(r.Generated, result.Tokens);
        }
        finally { File.Delete(path); }
    }

    /// <summary>The fused graph (what <c>generate --platform webgpu</c> runs) on webgpu: transformers' 16 tokens.</summary>
    [Theory, MemberData(nameof(WebgpuRows))]
    public void Webgpu_gives_transformers_greedy_tokens(string name)
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var r = Ref(name);
        using var gpu = new WebGpuPlatform("webgpu");
        var result = Generation.Greedy(new Executor(gpu), Fusion.Fuse(HfModels.Load(r.Dir), out _), r.InputIds, 16);
        Assert.Equal(r.Generated, result.Tokens);
    }

    /// <summary>A copy of the checkpoint without one tensor and with another cut by a row: loading fails with one line
    /// naming the folder, the missing tensor with its expected shape and the misshaped one.</summary>
    [Theory, MemberData(nameof(Checkpoints))]
    public void A_missing_or_misshaped_weight_is_one_line_naming_the_tensor(string name)
    {
        var r = Ref(name);
        var specs = Architectures.For(r.Config).Specs(r.Config);
        string dir = Directory.CreateTempSubdirectory("tapml-arch-bad").FullName;
        try
        {
            File.Copy(Path.Combine(r.Dir, "config.json"), Path.Combine(dir, "config.json"));
            using var src = new SafetensorsCheckpoint(r.Dir);
            var missing = specs[^1];
            var cut = specs.Last(s => s.Shape.Length == 2 && s.Shape[0] > 1 && s.Name != missing.Name);
            var weights = new Dictionary<string, Tensor>();
            foreach (var s in specs)
            {
                if (s.Name == missing.Name) continue;
                var t = TensorConvert.To(src.Read(s.Name), DType.Float32);
                if (s.Name == cut.Name)
                {
                    var smaller = Tensor.Uninitialized(DType.Float32, s.Shape[0] - 1, s.Shape[1]);
                    t.Span<float>()[..(int)((s.Shape[0] - 1) * s.Shape[1])].CopyTo(smaller.Span<float>());
                    t = smaller;
                }
                weights[s.Name] = t;
            }
            SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"), weights, new Dictionary<string, string> { ["format"] = "pt" });
            var e = Assert.Throws<TapmlException>(() => HfModels.Load(dir));
            Assert.DoesNotContain('\n', e.Message);
            Assert.Contains(dir, e.Message);
            Assert.Contains($"missing 1 weight(s): {missing}", e.Message);
            Assert.Contains($"'{cut.Name}' is [{cut.Shape[0] - 1},{cut.Shape[1]}]", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>docs/adding-an-architecture.md's table names every registry entry with its class (the page is written
    /// from the registry; a new entry fails here until the page has it), and the registry has the 27 of issue 22.</summary>
    [Fact]
    public void Adding_an_architecture_doc_lists_every_entry()
    {
        string doc = File.ReadAllText(Path.Combine(SharedData.RepoRoot, "docs", "adding-an-architecture.md"));
        Assert.All(Architectures.All, a => Assert.Contains($"| `{a.ModelType}` | `{a.Classes[0]}` |", doc));
        Assert.Equal(27, Architectures.All.Count);
    }
}
