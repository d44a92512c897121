using Spectre.Console;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Cli;

/// <summary><c>bench llm-weights</c> (alias <c>llm-q4</c>): prefill and decode tokens/s of f32, f16 (<c>--weights f16</c>
/// over the same checkpoint stored in f16) and <c>--quantize q4</c> weights on the GPU platform, on the 125M Llama shape
/// and four layers of Llama-3-8B's shape (the checkpoints <c>bench llm</c> and <c>bench llm-large</c> write, and their
/// f16 copies), with the dispatches a decode step records (q4 fused as f32 is, and q4 with its MatMulNBits products
/// unfused: the baseline of 4-bit fusion), the weight bytes a decode step reads and their rate; the f16 and q4 graphs'
/// greedy tokens checked against cpu running the same graph (the 8B shape: the first 4 tokens).
/// <c>bench llm-weights-tiny</c> (alias <c>llm-q4-tiny</c>) runs the same on a tiny checkpoint (a smoke test for
/// software adapters).</summary>
static class BenchQ4
{
    public static IReadOnlyList<string> Names => ["llm-weights", "llm-weights-tiny", "llm-q4", "llm-q4-tiny", "q4-sweep", "q4-sweep-tiny"];

    public static int Run(string scenario, int runs, string gpu)
    {
        if (scenario.StartsWith("q4-sweep", StringComparison.Ordinal)) return BenchMatVecVariants.Run(scenario == "q4-sweep-tiny", runs, gpu);
        if (gpu == "webgpu" && Tapml.Platforms.WebGpu.WebGpuPlatform.Unavailable() is { } why) { Console.Error.WriteLine($"bench {scenario}: {why}"); return 2; }
        var shapes = scenario.EndsWith("-tiny", StringComparison.Ordinal)
            ? new[] { ("tiny", "tapml-bench-llama-tiny", new TinyCheckpoint.Sizes(Layers: 2, Hidden: 256, Heads: 4, KvHeads: 2, Intermediate: 512, Vocab: 1024), 16, 9, 9) }
            : [
                ("125M", "tapml-bench-llama-125m", new TinyCheckpoint.Sizes(Layers: 12, Hidden: 768, Heads: 12, KvHeads: 4, Intermediate: 2048, Vocab: 32000), 64, 33, 33),
                ("4x4096 (Llama-3-8B shape)", "tapml-bench-llama-4x4096", new TinyCheckpoint.Sizes(Layers: 4, Hidden: 4096, Heads: 32, KvHeads: 8, Intermediate: 14336, Vocab: 32000), 16, 17, 4),
            ];
        var table = new Table().AddColumns("model", "weights", "prefill tokens/s", "decode tokens/s", "decode ms/token", "dispatches per decode step", "bytes read per decode step", "weight bandwidth");
        bool allSame = true;
        var summary = new List<string>();
        foreach (var (label, folder, sizes, promptLength, newTokens, cpuTokens) in shapes)
        {
            var (plain, _, _) = BenchWorkflows.BenchLlama(folder, sizes);
            var (half, _, _) = BenchWorkflows.BenchLlama(folder, sizes, half: true);
            var quantized = HfModels.Load(Path.Combine(Path.GetTempPath(), folder));
            var report = WeightQuantizer.Apply(quantized, QuantizeScheme.Parse("q4"));
            Console.WriteLine($"{label}: q4: {report}");
            var rng = new Random(3);
            long[] prompt = Enumerable.Range(0, promptLength).Select(_ => (long)rng.Next(sizes.Vocab)).ToArray();
            var decode = new Dictionary<string, double>();
            var prefills = new Dictionary<string, double>();
            var dispatches = new Dictionary<string, double>();
            var results = new Dictionary<string, GenerationResult>();
            using (var p = PlatformRegistry.Create(gpu))
            {
                var rows = new List<(string, Model, IPlatform, bool)> { ("f32", plain, p, true), ("f16", half, p, true) };
                // NOTE: the f16 products also node by node (each through the blocked packed-f16 matrix-vector), on a second
                // platform of the same adapter: webgpu?f16-proj=split.
                using var split = gpu.StartsWith("webgpu", StringComparison.Ordinal) ? PlatformRegistry.Create(gpu + (gpu.Contains('?') ? "&" : "?") + "f16-proj=split") : null;
                if (split is not null) rows.Add(("f16 split", half, split, true));
                // "q4 unfused": the same q4 graph with its MatMulNBits products left out of the fused regions (one dispatch
                // each, norm and epilogues apart): the baseline of 4-bit fusion.
                rows.Add(("q4", quantized, p, true));
                rows.Add(("q4 unfused", quantized, p, false));
                var prepared = new List<(string Weights, Model Plain, Executor Exec, Model Model, string PerStep)>();
                foreach (var (weights, m, platform, nbits) in rows)
                {
                    var exec = new Executor(platform) { PreferWholeGraph = true };
                    var model = GenerateVerb.FusesByDefault(platform) ? GenerateVerb.Fuse(m, platform, out _, nbits) : m;
                    Generation.Greedy(exec, model, prompt.AsSpan(0, Math.Min(4, prompt.Length)), 2);     // warm-up: pipelines, uploads
                    string perStep = "–";
                    if (platform is IKernelProfile prof)
                    {
                        // Decode steps alone: a run of 5 new tokens (4 decode steps) less a run of 1 (prefill only).
                        long Dispatches(int n) { var c0 = prof.Counters; Generation.Greedy(exec, model, prompt.AsSpan(0, Math.Min(4, prompt.Length)), n); return (prof.Counters - c0).Dispatches; }
                        double d = (Dispatches(5) - Dispatches(1)) / 4.0;
                        perStep = $"{d:F0}";
                        dispatches[weights] = d;
                    }
                    prepared.Add((weights, m, exec, model, perStep));
                }
                // NOTE: runs interleave the rows (f32, f16, …, f32, f16, …) so that every row sees the same machine state;
                // prefill and decode are each the best of the runs.
                BenchWorkflows.SteadyClocks(p, () => { foreach (var row in prepared) Generation.Greedy(row.Exec, row.Model, prompt, newTokens, keepPromptLogits: false); });
                for (int i = 0; i < runs; i++)
                    foreach (var (weights, _, exec, model, _) in prepared)
                    {
                        var r = Generation.Greedy(exec, model, prompt, newTokens, keepPromptLogits: false);
                        if (!results.TryGetValue(weights, out var b) || r.DecodeTokensPerSecond > b.DecodeTokensPerSecond) results[weights] = r;
                        prefills[weights] = Math.Max(prefills.GetValueOrDefault(weights), r.PrefillTokensPerSecond);
                    }
                foreach (var (weights, m, _, _, perStep) in prepared)
                {
                    var best = results[weights];
                    long bytes = BenchWorkflows.DecodeReadBytes(m);
                    decode[weights] = best.DecodeTokensPerSecond;
                    table.AddRow(label, weights, $"{prefills[weights]:F1}", $"{best.DecodeTokensPerSecond:F1}", $"{best.DecodeMs / Math.Max(1, best.DecodeSteps):F2}",
                        perStep, Format.Bytes(bytes), $"{bytes * best.DecodeTokensPerSecond / 1e9:F1} GB/s");
                    Console.Error.WriteLine($"bench {scenario}: {label} {weights}: prefill {prefills[weights]:F1} tokens/s, decode {best.DecodeTokensPerSecond:F1} tokens/s");
                }
            }
            using var cpu = PlatformRegistry.Create("cpu");
            var same = new Dictionary<string, bool>();
            foreach (var (weights, m) in new[] { ("f16", half), ("q4", quantized) })
            {
                var reference = Generation.Greedy(new Executor(cpu) { PreferWholeGraph = true }, m, prompt, cpuTokens);
                same[weights] = results[weights].Tokens.Take(cpuTokens).SequenceEqual(reference.Tokens)
                    && (weights != "q4" || results["q4 unfused"].Tokens.Take(cpuTokens).SequenceEqual(reference.Tokens));
                allSame &= same[weights];
            }
            string Same(string w) => same[w] ? "identical to" : "DIFFER from";
            string splitRatio = decode.TryGetValue("f16 split", out var sd) ? $" (f16-proj=split {sd / decode["f32"]:F2}×)" : "";
            summary.Add($"{label}: decode f16 {decode["f16"] / decode["f32"]:F2}× f32{splitRatio}, q4 {decode["q4"] / decode["f32"]:F2}× f32 ({decode["q4 unfused"] / decode["f32"]:F2}× with the products unfused); " +
                        $"prefill f16 {prefills["f16"] / prefills["f32"]:F2}× f32, q4 {prefills["q4"] / prefills["f32"]:F2}× f32 on {gpu}; " +
                        $"greedy tokens: f16 {Same("f16")}, q4 (fused and unfused) {Same("q4")} cpu's ({cpuTokens} tokens)"
                + (dispatches.ContainsKey("q4 unfused") ? $"; dispatches per decode step f32 {dispatches["f32"]:F0}, f16 {dispatches["f16"]:F0}, q4 {dispatches["q4"]:F0}, q4 unfused {dispatches["q4 unfused"]:F0}" : ""));
        }
        table.Caption($"{gpu}, best of {runs} (runs interleaved across rows; prefill and decode each the best run); f16 = the checkpoint stored in f16, --weights f16 (packed f16 read by the matrix kernels; f16 split: webgpu?f16-proj=split); q4 = MatMulNBits, 4-bit, blocks of 32, f32 scale + 4-bit zero point per block; q4 unfused: its products outside the fused regions");
        AnsiConsole.Write(table);
        foreach (var s in summary) Console.WriteLine(s);
        return allSame ? 0 : 1;
    }
}
