using System.CommandLine;
using System.Text.Json.Nodes;
using Spectre.Console;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Testing.Bench;
using Tapml.Testing.Reports;

namespace Tapml.Cli;

/// <summary><c>tapml bench SCENARIO [--platform P] [--reference R] [--threads N]</c>: wall time of the same workloads
/// on a platform and a reference in one process, reported as ratios.</summary>
static class BenchVerb
{
    public static Command Create()
    {
        var scenario = new Argument<string>("SCENARIO") { Description = $"workload: {string.Join(", ", BenchScenarios.Names.Concat(BenchWorkflows.Names))}" };
        var platform = Cli.PlatformOption();
        var reference = new Option<string>("--reference") { Description = "peer platform to compare with", DefaultValueFactory = _ => "onnxruntime" };
        var threads = new Option<int>("--threads") { Description = "threads for both sides (0 = all cores)", DefaultValueFactory = _ => 0 };
        var runs = new Option<int>("--runs") { Description = "measured runs per case (median reported)", DefaultValueFactory = _ => 10 };
        var json = new Option<string?>("--json") { Description = "write results as JSON" };
        var filter = new Option<string?>("--filter") { Description = "regular expression on case names" };
        var model = new Option<string?>("--model") { Description = "memory: the checkpoint folder to measure (tapml checkpoint new makes one)" };
        var quantize = Cli.QuantizeOption();
        var weights = Cli.WeightsOption();
        var cmd = new Command("bench", "measure a platform against a peer (ratios, GFLOP/s)") { scenario, platform, reference, threads, runs, json, filter, model, quantize, weights };
        cmd.Action(pr =>
        {
            int n = pr.GetValue(threads);
            if (n > 0) CpuThreads.Limit(n);
            if (pr.GetValue(scenario) == "browser") return BenchBrowser.Run(pr.GetValue(runs));
            if (pr.GetValue(scenario) == "memory") return BenchMemory.Run(pr.GetValue(model), pr.GetResult(platform) is null ? "cpu" : pr.GetValue(platform)!, pr.GetValue(json));
            if (pr.GetValue(scenario) == "remote") return BenchRemote.Run(pr.GetResult(platform) is null ? "cpu" : pr.GetValue(platform)!, pr.GetValue(runs));
            var scheme = pr.GetValue(quantize) is { } q ? QuantizeScheme.Parse(q) : null;
            bool half = pr.GetValue(weights) is { } wf && HalfWeights.Parse(wf);
            if ((scheme is not null || half) && !BenchWorkflows.Names.Contains(pr.GetValue(scenario)!))
                throw new TapmlException($"bench --{(scheme is not null ? "quantize" : "weights")} applies to the llm and llm-large scenarios, not {pr.GetValue(scenario)}");
            if (BenchWorkflows.Names.Contains(pr.GetValue(scenario)!))
                return BenchWorkflows.Run(pr.GetValue(scenario)!, Path.Combine(Directory.GetCurrentDirectory(), "..", "shared"), Math.Max(1, Math.Min(pr.GetValue(runs), pr.GetValue(scenario) == "carve" ? 15 : 5)),
                    pr.GetResult(platform) is null ? "webgpu" : pr.GetValue(platform)!, scheme, half);   // NOTE: carve's runs are short and noisy; up to 15
            string refSpec = pr.GetValue(reference)!;
            if (n > 0 && refSpec.StartsWith("onnxruntime") && !refSpec.Contains("threads=")) refSpec += (refSpec.Contains('?') ? "&" : "?") + $"threads={n}";
            using var target = PlatformRegistry.Create(pr.GetValue(platform)!);
            using var peer = PlatformRegistry.Create(refSpec);
            var cases = BenchScenarios.Create(pr.GetValue(scenario)!, Path.Combine(Directory.GetCurrentDirectory(), "..", "shared"));
            if (pr.GetValue(filter) is { } f) cases = cases.Where(c => System.Text.RegularExpressions.Regex.IsMatch(c.Name, f)).ToList();
            var table = new Table().AddColumns("case", $"{target.Name} ms", $"{peer.Name} ms", "ratio (target/peer)", "target GFLOP/s");
            var rows = new JsonArray();
            foreach (var c in cases)
            {
                var t = BenchRunner.Measure(c, [target, peer], warmup: 2, runs: pr.GetValue(runs), budget: TimeSpan.FromSeconds(60));
                double ratio = t[0].MedianMs / t[1].MedianMs;
                table.AddRow(Markup.Escape(c.Name), $"{t[0].MedianMs:F2}", $"{t[1].MedianMs:F2}", $"{ratio:F2}×", t[0].GflopsPerS > 0 ? $"{t[0].GflopsPerS:F1}" : "");
                rows.Add(new JsonObject { ["case"] = c.Name, ["target_ms"] = t[0].MedianMs, ["peer_ms"] = t[1].MedianMs, ["ratio"] = ratio, ["runs"] = t[0].Runs, ["target_gflops"] = t[0].GflopsPerS });
                Console.Error.WriteLine($"bench: {c.Name}: {t[0].MedianMs:F2} ms vs {t[1].MedianMs:F2} ms");
            }
            table.Caption($"median of up to {pr.GetValue(runs)} runs, threads {(n == 0 ? Environment.ProcessorCount : n)}, {Environment.ProcessorCount} cores");
            AnsiConsole.Write(table);
            if (pr.GetValue(json) is { } j)
                JsonReport.WriteAtomic(j, new JsonObject { ["target"] = target.Name, ["peer"] = peer.Name, ["threads"] = n, ["cases"] = rows }.ToJsonString(JsonReport.Options));
            return 0;
        });
        return cmd;
    }
}
