using System.CommandLine;
using Tapml.Core;
using Tapml.Models;

namespace Tapml.Cli;

/// <summary><c>tapml checkpoint new --arch A [--seed S] [--layers L --hidden H --heads N --kv-heads K --vocab V] [--dtype bf16] [--tie true] --out DIR</c>:
/// a tiny deterministic checkpoint in the real Hugging Face layout.</summary>
static class CheckpointVerb
{
    public static Command Create()
    {
        var arch = new Option<string>("--arch") { Description = $"architecture: {string.Join(", ", TinyCheckpoint.Architectures)}", Required = true };
        var seed = new Option<int>("--seed") { Description = "weights seed", DefaultValueFactory = _ => 0 };
        var outDir = new Option<string>("--out") { Description = "folder to write config.json and model.safetensors into", Required = true };
        var d = new TinyCheckpoint.Sizes();
        var layers = new Option<int>("--layers") { DefaultValueFactory = _ => d.Layers };
        var hidden = new Option<int>("--hidden") { DefaultValueFactory = _ => d.Hidden };
        var heads = new Option<int>("--heads") { DefaultValueFactory = _ => d.Heads };
        var kvHeads = new Option<int>("--kv-heads") { DefaultValueFactory = _ => d.KvHeads };
        var intermediate = new Option<int>("--intermediate") { DefaultValueFactory = _ => d.Intermediate };
        var vocab = new Option<int>("--vocab") { DefaultValueFactory = _ => d.Vocab };
        var dtype = new Option<string>("--dtype") { Description = "weight dtype: f32, bf16 or f16 (the f32 values rounded)", DefaultValueFactory = _ => "f32" };
        var tie = new Option<bool?>("--tie") { Description = "tie lm_head to the embeddings (true/false; default: the architecture's tiny config)" };
        var create = new Command("new", "write a tiny deterministic checkpoint (config.json + model.safetensors)") { arch, seed, outDir, layers, hidden, heads, kvHeads, intermediate, vocab, dtype, tie };
        create.Action(pr =>
        {
            var sizes = new TinyCheckpoint.Sizes(pr.GetValue(layers), pr.GetValue(hidden), pr.GetValue(heads), pr.GetValue(kvHeads), pr.GetValue(intermediate), pr.GetValue(vocab));
            if (sizes.Layers < 1 || sizes.Hidden < 1 || sizes.Heads < 1 || sizes.KvHeads < 1 || sizes.Intermediate < 1 || sizes.Vocab < 1)
                throw new TapmlException("sizes must be positive");
            string dir = pr.GetValue(outDir)!;
            var dt = pr.GetValue(dtype) switch
            {
                "f32" => DType.Float32, "bf16" => DType.BFloat16, "f16" => DType.Float16,
                var other => throw new TapmlException($"--dtype '{TapmlException.Bounded(other ?? "", 20)}' is not one of f32, bf16, f16"),
            };
            string? noTokenizer = TinyCheckpoint.Write(pr.GetValue(arch)!, pr.GetValue(seed), dir, sizes, dt, pr.GetValue(tie));
            Console.WriteLine($"wrote tiny-{pr.GetValue(arch)} (seed {pr.GetValue(seed)}) to {dir}" + (noTokenizer is null ? " with its tokenizer" : $"; no tokenizer: {noTokenizer}"));
            return 0;
        });
        return new Command("checkpoint", "tiny checkpoints for tests and bring-up") { create };
    }
}
