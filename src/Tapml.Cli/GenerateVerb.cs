using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Spectre.Console;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Safetensors;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Cli;

/// <summary><c>tapml generate --model M --platform P --input-ids 1,2,3 [--max-tokens N] [--json F]
/// [--logits-out F.safetensors]</c>: greedy generation through the model's KV-cache graph (prefill, then one
/// run per token), with prefill and decode throughput. <c>--prompt</c> is encoded with the model's tokenizer.</summary>
static class GenerateVerb
{
    /// <summary>Platforms where fused regions pay (one dispatch instead of several); elsewhere the graph runs as written.</summary>
    public static bool FusesByDefault(IPlatform p) => p.PrefersFusedGraphs;

    /// <summary><paramref name="m"/> fused for <paramref name="p"/> (its KV appends where the platform runs them).</summary>
    public static Model Fuse(Model m, IPlatform p, out FusionReport report, bool nbits = true) =>
        Fusion.Fuse(m, out report, projections: true, nbits: nbits, kvInProjections: p.KvAppendInProjections);

    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "model: Hugging Face folder (config.json + safetensors) or .onnx with past_key_values/present I/O", Required = true };
        var platform = Cli.PlatformOption();
        var prompt = new Option<string?>("--prompt") { Description = "prompt text, encoded with the model folder's tokenizer.json" };
        var inputIds = new Option<string?>("--input-ids") { Description = "prompt token ids, comma-separated (e.g. 1,17,305)" };
        var maxTokens = new Option<int>("--max-tokens") { Description = "new tokens to generate at most", DefaultValueFactory = _ => 16 };
        var seed = new Option<int>("--seed") { Description = "seed of the sampling draw (with --temperature, --top-k or --top-p)", DefaultValueFactory = _ => 0 };
        var temperature = new Option<double?>("--temperature") { Description = "sample with this temperature (default: greedy)" };
        var topK = new Option<int?>("--top-k") { Description = "sample among the k most likely tokens" };
        var topP = new Option<double?>("--top-p") { Description = "sample among the most likely tokens whose probability reaches p" };
        var repetition = new Option<double>("--repetition-penalty") { Description = "divide positive (multiply negative) logits of tokens already seen", DefaultValueFactory = _ => 1.0 };
        var stop = new Option<string?>("--stop") { Description = "token ids that end generation, comma-separated (besides the model's eos ids)" };
        var json = new Option<string?>("--json") { Description = "write {tokens, text, prefill_tokens_per_s, decode_tokens_per_s, peak_rss_bytes} here" };
        var logitsOut = new Option<string?>("--logits-out") { Description = "write the prefill logits here as safetensors tensor 'logits' [1, seq, vocab]" };
        var fuse = new Option<string>("--fuse") { Description = "fuse RMSNorm, rotary and element-wise chains into one kernel each (tapml.Fused nodes): auto (on for webgpu), on, off", DefaultValueFactory = _ => "auto" };
        fuse.AcceptOnlyFromAmong("auto", "on", "off");
        var profile = new Option<bool>("--profile") { Description = "webgpu: GPU time per kernel (timestamp queries around each dispatch, which then runs in a compute pass of its own), printed after the run" };
        var fallback = Cli.FallbackOption();
        var quantize = Cli.QuantizeOption();
        var weights = Cli.WeightsOption();
        var cmd = new Command("generate", "generate tokens with the model's KV cache (greedy unless --temperature, --top-k or --top-p is given)") { model, platform, prompt, inputIds, maxTokens, seed, temperature, topK, topP, repetition, stop, json, logitsOut, fuse, profile, fallback, quantize, weights };
        cmd.Action(pr =>
        {
            long start = System.Diagnostics.Stopwatch.GetTimestamp();
            string spec = pr.GetValue(model)!;
            var (ids, tokenizer) = PromptArgs.Resolve(spec, pr.GetValue(prompt), pr.GetValue(inputIds));
            var m = ModelSpec.Load(spec, pr.GetValue(quantize), pr.GetValue(weights));
            var hf = Directory.Exists(spec) && HfModels.IsHfFolder(spec) ? HfConfig.Load(spec) : null;
            IReadOnlyCollection<int>? eos = hf?.EosTokenIds;
            if (hf is not null && ids.FirstOrDefault(i => i >= hf.VocabSize, -1) is var outside and >= 0)
                throw new TapmlException($"prompt token id {outside} is outside the model's vocabulary ({hf.Path}: vocab_size {hf.VocabSize})" +
                                         (tokenizer is null ? "" : $"; {tokenizer.Source} gave it"));
            using var p = PlatformRegistry.Create(pr.GetValue(platform)!);
            if (pr.GetValue(profile) && !(p is IKernelProfile pw && pw.StartProfile()))
                throw new TapmlException($"--profile needs a platform that times its kernels on the device (webgpu with timestamp queries; {p.Name} cannot)");
            using var fb = pr.GetValue(fallback) is { } fbSpec ? PlatformRegistry.Create(fbSpec) : null;
            var exec = new Executor(p) { PreferWholeGraph = true, Fallback = fb };
            if (pr.GetValue(fuse) == "on" || pr.GetValue(fuse) == "auto" && FusesByDefault(p))
            {
                m = Fuse(m, p, out var fr);
                Console.Error.WriteLine($"fused: {fr}");
            }
            // DESIGN: greedy unless --temperature, --top-k or --top-p is given; then --seed fixes the draw.
            bool sample = pr.GetValue(temperature) is not null || pr.GetValue(topK) is not null || pr.GetValue(topP) is not null;
            var sampling = new SamplingOptions
            {
                Temperature = sample ? pr.GetValue(temperature) ?? 1.0 : 0,
                TopK = pr.GetValue(topK) ?? 0,
                TopP = pr.GetValue(topP) ?? 1.0,
                RepetitionPenalty = pr.GetValue(repetition),
                Seed = pr.GetValue(seed),
                StopTokens = pr.GetValue(stop) is { } st ? PromptArgs.ParseIds(st).Select(x => (int)x).ToArray() : [],
            };
            // Streaming: each token is printed as soon as it is chosen, as text when the model has a tokenizer (the
            // new suffix of the decoded text, so multi-byte characters split over tokens print whole), else as ids.
            var streamed = new List<int>();
            string shown = "";
            if (tokenizer is null) Console.Write("tokens: ");
            // Load: reading the model, starting the platform, fusing. Time to first token: the prompt run (with the GPU's
            // weight uploads and kernel compilation on a first run) and the first choice.
            double loadMs = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalMilliseconds, firstTokenMs = 0;
            long runStart = System.Diagnostics.Stopwatch.GetTimestamp();
            // The decode steps' managed allocations and collections (from the first token on): the host's share of a step.
            long decodeAlloc = 0; int decodeGcs = 0;
            var r = Generation.Run(exec, m, ids, pr.GetValue(maxTokens), sampling, eos, t =>
            {
                if (streamed.Count == 0)
                {
                    firstTokenMs = System.Diagnostics.Stopwatch.GetElapsedTime(runStart).TotalMilliseconds;
                    (decodeAlloc, decodeGcs) = (GC.GetTotalAllocatedBytes(), GC.CollectionCount(0));
                }
                streamed.Add((int)t);
                if (tokenizer is null) { Console.Write(streamed.Count == 1 ? $"{t}" : $",{t}"); return; }
                string text = tokenizer.Decode(streamed);
                if (text.EndsWith('\uFFFD')) return;          // an incomplete UTF-8 sequence: wait for the next token
                Console.Write(text.StartsWith(shown, StringComparison.Ordinal) ? text[shown.Length..] : "\n" + text);
                shown = text;
            }, keepPromptLogits: pr.GetValue(logitsOut) is not null);
            Console.WriteLine();
            if (tokenizer is not null) Console.WriteLine($"tokens: {string.Join(",", r.Tokens)}");
            if (p is IKernelProfile wg)
            {
                string alloc = r.DecodeSteps == 0 ? "" : $"; decode {(GC.GetTotalAllocatedBytes() - decodeAlloc) / 1024.0 / r.DecodeSteps:F1} KiB allocated a step, {GC.CollectionCount(0) - decodeGcs} GCs";
                Console.Error.WriteLine($"{p.Name}: {wg.Counters.PerStep(r.DecodeSteps + 1)} (prefill and decode steps); {wg.KernelCount} kernels compiled{alloc}");
                if (pr.GetValue(profile)) PrintProfile(wg.StopProfile(), r.DecodeSteps + 1);
            }
            Cli.PrintFallbacks(exec);
            Console.Error.WriteLine($"load {loadMs:F1} ms (model, platform, fusion); time to first token {firstTokenMs:F1} ms (prompt run, with uploads and kernel compilation)");
            Console.WriteLine($"prefill {r.PromptTokens} tokens in {r.PrefillMs:F1} ms ({r.PrefillTokensPerSecond:F1} tokens/s); decode {r.DecodeSteps} tokens in {r.DecodeMs:F1} ms ({r.DecodeTokensPerSecond:F1} tokens/s) on {p.Name}");
            if (pr.GetValue(json) is { } jsonPath)
            {
                var o = new JsonObject
                {
                    ["tokens"] = new JsonArray(r.Tokens.Select(t => (JsonNode)JsonValue.Create(t)).ToArray()),
                    ["text"] = tokenizer?.Decode(r.Tokens.Select(t => (int)t)) ?? "",
                    ["prefill_tokens_per_s"] = r.PrefillTokensPerSecond,
                    ["decode_tokens_per_s"] = r.DecodeTokensPerSecond,
                    ["load_ms"] = loadMs,
                    ["time_to_first_token_ms"] = firstTokenMs,
                    ["peak_rss_bytes"] = ProcessMemory.PeakResidentBytes(),
                    ["rss_anon_bytes"] = ProcessMemory.ResidentBytes().Anonymous,
                    ["rss_file_bytes"] = ProcessMemory.ResidentBytes().File,
                };
                File.WriteAllText(jsonPath, o.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            }
            if (pr.GetValue(logitsOut) is { } lp)
                SafetensorsWriter.Write(lp, [new("logits", r.PrefillLogits)]);
            return 0;
        });
        return cmd;
    }

    /// <summary>GPU time per kernel of a profiled run (to stderr): calls, total, share, per call and per step.</summary>
    internal static void PrintProfile(List<(string Kernel, long Calls, double Ms)> rows, int steps)
    {
        double total = rows.Sum(r => r.Ms);
        var t = new Table().AddColumns("kernel", "calls", "GPU ms", "share", "µs / call", "ms / step");
        foreach (var (k, c, ms) in rows)
            t.AddRow(Markup.Escape(k), $"{c}", $"{ms:F3}", $"{ms / Math.Max(total, 1e-9) * 100:F1}%", $"{ms * 1e3 / c:F1}", $"{ms / steps:F3}");
        t.Caption($"GPU time of {rows.Sum(r => r.Calls)} dispatches over {steps} steps (prefill and decode): {total:F2} ms, {total / steps:F3} ms a step; each dispatch ran in a pass of its own");
        AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) }).Write(t);
    }
}
