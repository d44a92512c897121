using System.CommandLine;
using System.Diagnostics;
using System.Security.Cryptography;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Testing.Carving;
using Tapml.Testing.Migration;

namespace Tapml.Cli;

/// <summary><c>tapml carve --model M --out STORE [--prompt S | --input-ids …] [--decode-steps N] [--inputs DIR]
/// [--per-signature K] [--max-bytes B] [--embed-weights] [--export-onnx DIR]</c>: runs the model on the source platform and records
/// every operator call into a carved store (LLMs: the prefill and N decode steps, provenance prefill / decode:k).</summary>
static class CarveVerb
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "model: .onnx, model folder, Hugging Face folder or builtin:NAME", Required = true };
        var output = new Option<string>("--out", "-o") { Description = "store folder to create (manifest.json + blobs/)", Required = true };
        var source = new Option<string>("--source") { Description = "platform the reference run uses", DefaultValueFactory = _ => "cpu" };
        var prompt = new Option<string?>("--prompt") { Description = "LLMs: prompt text (the model folder's tokenizer.json encodes it)" };
        var inputIds = new Option<string?>("--input-ids") { Description = "LLMs: prompt token ids, comma-separated" };
        var decodeSteps = new Option<int>("--decode-steps") { Description = "LLMs: decode steps carved after the prefill", DefaultValueFactory = _ => 4 };
        var inputs = new Option<string?>("--inputs") { Description = "ONNX models: folder of <input name>.pb files (default: seeded generated inputs)" };
        var seed = new Option<int>("--seed") { Description = "ONNX models: seed of the generated inputs", DefaultValueFactory = _ => 0 };
        var perSignature = new Option<int>("--per-signature") { Description = "cases kept per signature (op, attributes, input shapes): the first and later ones", DefaultValueFactory = _ => 2 };
        var maxBytes = new Option<long>("--max-bytes") { Description = "stop adding cases once the blobs reach this many bytes (0: no cap)", DefaultValueFactory = _ => 0 };
        var exportOnnx = new Option<string?>("--export-onnx") { Description = "also write the cases in the ONNX backend-test layout here" };
        var embedWeights = new Option<bool>("--embed-weights") { Description = "copy model weights into the store (self-contained, for shipping to a device) instead of naming them in the model file" };
        var quantize = Cli.QuantizeOption();
        var weights = Cli.WeightsOption();
        var cmd = new Command("carve", "record every operator call of a source run as replayable unit tests") { model, output, source, prompt, inputIds, decodeSteps, inputs, seed, perSignature, maxBytes, exportOnnx, embedWeights, quantize, weights };
        cmd.Action(pr =>
        {
            string spec = pr.GetValue(model)!, dir = pr.GetValue(output)!;
            int steps = pr.GetValue(decodeSteps);
            var m = ModelSpec.Load(spec, pr.GetValue(quantize), pr.GetValue(weights));
            var input = ResolveInput(spec, m, pr.GetValue(prompt), pr.GetValue(inputIds), pr.GetValue(inputs), pr.GetValue(seed), steps);
            using var platform = PlatformRegistry.Create(pr.GetValue(source)!);
            var store = Carve(spec, m, platform, dir, new CarveOptions(pr.GetValue(perSignature), pr.GetValue(maxBytes), pr.GetValue(embedWeights)), input);
            if (pr.GetValue(exportOnnx) is { } onnxDir)
            {
                int n = Replayer.ExportOnnx(store, onnxDir);
                Console.WriteLine($"wrote {n} cases in the ONNX backend-test layout to {onnxDir}");
            }
            Console.WriteLine($"store: {dir}  (replay: ./tapml replay {CaseRunnerQuote(dir)} --platform P)");
            return 0;
        });
        return cmd;
    }

    static string CaseRunnerQuote(string s) => Testing.CaseRunner.Quote(s);

    /// <summary>The run a driver makes: an LLM's prompt ids and decode steps, or an ONNX model's feeds
    /// (<c>--inputs DIR</c>, else seeded generated inputs).</summary>
    public static MigrationInput ResolveInput(string spec, Model m, string? prompt, string? inputIds, string? inputsDir, int seed, int decodeSteps)
    {
        if (decodeSteps < 0) throw new TapmlException($"--decode-steps must not be negative (got {decodeSteps})");
        if (IsLlm(spec)) return new MigrationInput(PromptIds: PromptArgs.Resolve(spec, prompt, inputIds).Ids, DecodeSteps: decodeSteps);
        if (prompt is not null || inputIds is not null)
            throw new TapmlException($"--prompt/--input-ids are for LLM checkpoints; '{spec}' is an ONNX model (use --inputs DIR)");
        return new MigrationInput(Feeds: inputsDir is not null ? InputFiles.Read(m, inputsDir) : GeneratedInputs(m, seed));
    }

    /// <summary>Runs <paramref name="input"/> on <paramref name="platform"/> with a <see cref="Recorder"/> into a new
    /// store at <paramref name="dir"/>, printing what was carved.</summary>
    public static CarvedStore Carve(string spec, Model m, IPlatform platform, string dir, CarveOptions options, MigrationInput input)
    {
        bool llm = input.PromptIds is not null;
        var store = CarvedStore.Create(dir, spec, ModelHash(spec, m), platform.Name);
        store.Notes["carve"] = $"per-signature {options.PerSignature}, max-bytes {options.MaxBytes}" + (llm ? $", decode-steps {input.DecodeSteps}" : "")
                               + (options.EmbedWeights ? ", embed-weights" : "");
        var exec = new Executor(platform);
        var recorder = new Recorder(store, options) { PhaseOf = llm ? run => run == 0 ? "prefill" : $"decode:{run}" : _ => "run" };
        exec.Observers.Add(recorder);
        var sw = Stopwatch.StartNew();
        using (recorder)
        {
            if (input.PromptIds is { } ids)
            {
                // NOTE: no eos ids: the carve runs exactly the requested decode steps.
                var r = Generation.Greedy(exec, m, ids, input.DecodeSteps + 1);
                Console.WriteLine($"ran prefill of {ids.Length} tokens and {r.DecodeSteps} decode steps on {platform.Name}");
            }
            else
            {
                exec.Run(m, input.Feeds!);
                Console.WriteLine($"ran {m.Graph.Nodes.Count} nodes on {platform.Name}");
            }
        }
        sw.Stop();
        Console.WriteLine($"carved {store.Cases.Count} cases from {recorder.Calls} operator calls in {sw.Elapsed.TotalSeconds:F2} s: " +
                          $"{Format.Bytes(store.ReferencedBlobBytes())} of blobs ({Format.Bytes(recorder.BytesBeforeDedup)} before dedup)" +
                          (store.ReferencedWeightBytes() is > 0 and var w ? $", {Format.Bytes(w)} of weights by reference to the model's files" : ""));
        foreach (var (why, n) in recorder.NotCarved) Console.WriteLine($"  not carved: {n} calls: {why}");
        if (recorder.Capped) Console.WriteLine($"  {store.Notes["capped"]}");
        return store;
    }

    /// <summary>LLM checkpoints (Hugging Face folders and builtin:tiny-*) carve prefill and decode.</summary>
    public static bool IsLlm(string spec) =>
        spec.StartsWith("builtin:tiny-", StringComparison.Ordinal) || Directory.Exists(spec) && !File.Exists(Path.Combine(spec, "model.onnx")) && HfModels.IsHfFolder(spec);

    /// <summary>SHA-256 identifying the model: the .onnx file's bytes, or for a folder its config.json and
    /// safetensors headers (not gigabytes of weights), or the built graph's ONNX bytes.</summary>
    static string ModelHash(string spec, Model m)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        string? folder = ModelSpec.Folder(spec);
        if (File.Exists(spec))
        {
            using var f = File.OpenRead(spec);
            return Convert.ToHexStringLower(SHA256.HashData(f));
        }
        if (folder is not null)
        {
            foreach (var f in Directory.GetFiles(folder).Order(StringComparer.Ordinal))
            {
                h.AppendData(System.Text.Encoding.UTF8.GetBytes(Path.GetFileName(f)));
                using var s = File.OpenRead(f);
                var buf = new byte[Math.Min(s.Length, 1 << 20)];
                s.ReadExactly(buf);
                h.AppendData(buf);
                h.AppendData(BitConverter.GetBytes(s.Length));
            }
            return Convert.ToHexStringLower(h.GetHashAndReset());
        }
        return Convert.ToHexStringLower(SHA256.HashData(Google.Protobuf.MessageExtensions.ToByteArray(Ir.Onnx.OnnxExporter.ToProto(m))));
    }

    /// <summary>Realistic generated inputs: floats from a seeded standard normal (the range of normalized images
    /// and activations), integers in [0, 7) (valid small indices), bools alternating; symbolic dims are 1.</summary>
    public static Dictionary<string, Value> GeneratedInputs(Model m, int seed)
    {
        var feeds = InputFiles.Generate(m);
        var rng = new Random(seed);
        foreach (var (name, v) in feeds)
        {
            if (v is not Tensor t || !DTypes.IsFloat(t.DType)) continue;
            for (long i = 0; i < t.Length; i++)
            {
                double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
                t.SetDouble(i, Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
            }
        }
        return feeds;
    }
}
