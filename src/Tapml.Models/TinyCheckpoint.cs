using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir.Safetensors;

namespace Tapml.Models;

/// <summary>Tiny deterministic checkpoints in the real Hugging Face layout (config.json + model.safetensors,
/// the weight names and shapes the architecture's weight map expects), for tests and <c>builtin:tiny-ARCH</c>.
/// Weights are uniform in ±2/√fan_in (norm scales near 1, Gemma's near 0 since it applies 1 + w), so activations
/// stay in a sane range; the same (arch, seed, sizes) always gives the same bytes.</summary>
public static class TinyCheckpoint
{
    /// <summary>The architectures with a tiny checkpoint (<see cref="Architecture.TinyConfig"/>), in registry order.</summary>
    public static IReadOnlyList<string> Architectures => Models.Architectures.WithTiny;

    /// <summary>Sizes of a tiny model (defaults: 2 layers, hidden 64, 4 heads of 16, 2 KV heads, vocab 1024).</summary>
    public sealed record Sizes(int Layers = 2, int Hidden = 64, int Heads = 4, int KvHeads = 2, int Intermediate = 160, int Vocab = 1024);

    public static JsonObject Config(string arch, Sizes s)
    {
        if (s.Hidden % s.Heads != 0 || s.Heads % s.KvHeads != 0)
            throw new TapmlException($"tiny {arch}: hidden {s.Hidden} must split into {s.Heads} heads and the heads into {s.KvHeads} KV heads");
        var make = Models.Architectures.Find(arch)?.TinyConfig
            ?? throw new TapmlException($"no tiny checkpoint for architecture '{arch}' (known: {string.Join(", ", Architectures)})");
        return make(s);
    }

    /// <summary>The tiny config of a Llama-family architecture: Llama's keys, then <paramref name="tweak"/> for the
    /// keys the architecture needs to be exercised.</summary>
    public static JsonObject LlamaLike(string modelType, string cls, Sizes s, Action<JsonObject>? tweak = null)
    {
        var c = new JsonObject
        {
            ["architectures"] = new JsonArray(cls), ["model_type"] = modelType, ["vocab_size"] = s.Vocab,
            ["hidden_size"] = s.Hidden, ["intermediate_size"] = s.Intermediate, ["num_hidden_layers"] = s.Layers,
            ["num_attention_heads"] = s.Heads, ["num_key_value_heads"] = s.KvHeads,
            ["head_dim"] = s.Hidden / s.Heads, ["max_position_embeddings"] = 256, ["rms_norm_eps"] = 1e-6,
            ["rope_theta"] = 10000.0, ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = false, ["bos_token_id"] = 1, ["eos_token_id"] = 2,
        };
        tweak?.Invoke(c);
        return c;
    }

    /// <summary>GPT-2's tiny config (its own key names).</summary>
    public static JsonObject Gpt2Config(Sizes s) => new()
    {
        ["architectures"] = new JsonArray("GPT2LMHeadModel"), ["model_type"] = "gpt2", ["vocab_size"] = s.Vocab,
        ["n_embd"] = s.Hidden, ["n_layer"] = s.Layers, ["n_head"] = s.Heads, ["n_inner"] = s.Intermediate,
        ["n_positions"] = 256, ["activation_function"] = "gelu_new", ["layer_norm_epsilon"] = 1e-5,
        ["tie_word_embeddings"] = true, ["bos_token_id"] = 1, ["eos_token_id"] = 2,
    };

    /// <summary>Writes config.json and model.safetensors for <paramref name="arch"/> into <paramref name="dir"/>, weights
    /// in <paramref name="dtype"/> (f32, or bf16/f16: the f32 values rounded), tensor by tensor (a checkpoint of 8B
    /// parameters never sits in memory); <paramref name="tie"/> overrides the config's tie_word_embeddings.</summary>
    /// <returns>Null when a tokenizer was written beside the weights, else why not.</returns>
    public static string? Write(string arch, int seed, string dir, Sizes? sizes = null, DType dtype = DType.Float32, bool? tie = null)
    {
        if (dtype is not (DType.Float32 or DType.BFloat16 or DType.Float16)) throw new TapmlException($"tiny checkpoints are f32, bf16 or f16, not {DTypes.Name(dtype)}");
        var config = Config(arch, sizes ?? new Sizes());
        if (tie is bool t) config["tie_word_embeddings"] = t;
        Directory.CreateDirectory(dir);
        var special = TinyTokenizer.Write(arch, config["vocab_size"]!.GetValue<int>(), dir, out string? noTokenizer);
        if (special is { } ids) { config["bos_token_id"] = ids.Bos; config["eos_token_id"] = ids.Eos; }
        string cfgPath = Path.Combine(dir, "config.json");
        File.WriteAllText(cfgPath + ".tmp", config.ToJsonString(new() { WriteIndented = true }));
        File.Move(cfgPath + ".tmp", cfgPath, true);
        var hf = HfConfig.Load(dir);
        var entry = Models.Architectures.For(hf);
        var specs = entry.Specs(hf);
        bool zeroCenteredNorms = entry.Options?.Invoke(hf).NormAddsOne ?? false;
        var rng = new Random(seed);
        var sorted = specs.OrderBy(s => s.Name, StringComparer.Ordinal).ToList();
        var chunk = new float[1 << 20];
        var bytes = new byte[chunk.Length * 4];
        SafetensorsWriter.WriteStreaming(Path.Combine(dir, "model.safetensors"), sorted.Select(s => (s.Name, dtype, s.Shape)).ToList(), (i, stream) =>
        {
            var spec = sorted[i];
            bool norm = spec.Shape.Length == 1 && spec.Name.EndsWith(".weight", StringComparison.Ordinal);
            double center = norm ? (zeroCenteredNorms ? 0 : 1) : 0;
            double scale = norm || spec.Shape.Length == 1 ? 0.1 : 2 / Math.Sqrt(entry.InOutLinears && spec.Name.Contains(".c_") ? spec.Shape[0] : spec.Shape[^1]);
            // NOTE: one stream of draws in name order, chunk by chunk: the same values as drawing whole tensors.
            for (long left = ShapeUtil.Size(spec.Shape); left > 0;)
            {
                int n = (int)Math.Min(chunk.Length, left);
                for (int k = 0; k < n; k++) chunk[k] = (float)(center + scale * (rng.NextDouble() * 2 - 1));
                int size = Encode(chunk.AsSpan(0, n), dtype, bytes);
                stream.Write(bytes, 0, size);
                left -= n;
            }
        }, new Dictionary<string, string> { ["format"] = "pt", ["tapml"] = $"tiny-{arch} seed {seed}" + (dtype == DType.Float32 ? "" : $" {DTypes.Name(dtype)}") });
        return noTokenizer;
    }

    /// <summary>f32 values as little-endian <paramref name="dtype"/> bytes (bf16/f16 rounded to nearest even); the byte count.</summary>
    static int Encode(ReadOnlySpan<float> src, DType dtype, byte[] dst)
    {
        switch (dtype)
        {
            case DType.Float32: System.Runtime.InteropServices.MemoryMarshal.AsBytes(src).CopyTo(dst); return src.Length * 4;
            case DType.BFloat16:
                for (int i = 0; i < src.Length; i++) System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(dst.AsSpan(2 * i), ((BFloat16)src[i]).Bits);
                return src.Length * 2;
            default:
                for (int i = 0; i < src.Length; i++) System.Buffers.Binary.BinaryPrimitives.WriteHalfLittleEndian(dst.AsSpan(2 * i), (Half)src[i]);
                return src.Length * 2;
        }
    }

    /// <summary>The folder of <c>builtin:tiny-ARCH</c> (seed 0), written once under the temp folder.</summary>
    public static string Materialize(string arch, int seed = 0)
    {
        // NOTE: v2: checkpoints with a tokenizer; a folder written without one (packages absent) is rewritten later.
        string dir = Path.Combine(Path.GetTempPath(), "tapml-builtin", $"tiny-{arch}-{seed}-v2");
        bool hasTokenizer = File.Exists(Path.Combine(dir, "tokenizer.json")) || File.Exists(Path.Combine(dir, "encoder.json"));
        if (File.Exists(Path.Combine(dir, "model.safetensors")) && File.Exists(Path.Combine(dir, "config.json")) && (hasTokenizer || TinyTokenizer.PackageDir(arch) is null)) return dir;
        if (Directory.Exists(dir)) try { Directory.Delete(dir, true); } catch (IOException) { }
        string tmp = dir + $".{Environment.ProcessId}.tmp";
        Write(arch, seed, tmp);
        try { Directory.Move(tmp, dir); }
        catch (IOException) when (Directory.Exists(dir)) { Directory.Delete(tmp, true); } // another process won the race
        return dir;
    }
}
