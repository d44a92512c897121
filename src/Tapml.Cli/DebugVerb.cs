using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Testing;
using Tapml.Testing.Carving;
using Tapml.Testing.Migration;
using Tapml.Testing.Reports;

namespace Tapml.Cli;

/// <summary><c>tapml debug --model M --target P [--source cpu] [--out DIR] [--prompt S | --input-ids … | --inputs DIR]
/// [--decode-steps N] [--json F]</c>: the main job in one command — carve on the source, replay every case on the
/// target, migrate in lockstep to the first wrong operator, and write the reports to DIR (store/, report.html,
/// replay.html, replay.json, migrate.html, migrate.json). Exit 0 when the target agrees everywhere, 1 otherwise.</summary>
static class DebugVerb
{
    /// <summary>The demo's target: <c>faulty:T?node=N&amp;kind=scale</c> around the best platform here (webgpu when it
    /// starts, else cpu; or <paramref name="wanted"/>), N the middle MatMul of the model.</summary>
    static (string Target, string Node) DemoTarget(Model m, string? wanted)
    {
        string inner = wanted ?? "cpu";
        if (wanted is null)
        {
            try { using var gpu = PlatformRegistry.Create("webgpu"); inner = "webgpu"; }
            catch (TapmlException e) { Console.WriteLine($"demo: webgpu is not available here ({e.Message}); using cpu as the target"); }
        }
        var matmuls = m.Graph.Nodes.Where(n => n.OpType == "MatMul").ToList();
        var node = (matmuls.Count > 0 ? matmuls[matmuls.Count / 2] : m.Graph.Nodes[m.Graph.Nodes.Count / 2]).Name;
        string target = $"faulty:{inner}?node={node}&kind=scale";
        Console.WriteLine($"demo: the target is {target} — {inner} with node {node} made wrong (its outputs ×1.5); debug must find it");
        return (target, node);
    }

    public static Command Create()
    {
        var model = new Option<string?>("--model", "-m") { Description = "model: .onnx, model folder, Hugging Face folder or builtin:NAME (required unless --demo)" };
        var target = new Option<string?>("--target") { Description = "platform being brought up (required unless --demo)" };
        var demo = new Option<bool>("--demo") { Description = "inject a fault into one node of builtin:tiny-llama on the best target here (webgpu, else cpu) and show that debug finds it; exit 0 when it does" };
        var source = new Option<string>("--source") { Description = "trusted platform", DefaultValueFactory = _ => "cpu" };
        var outDir = new Option<string?>("--out") { Description = "folder for the store and reports (default: tapml-debug-<time> in the temp folder)" };
        var prompt = new Option<string?>("--prompt") { Description = "LLMs: prompt text" };
        var inputIds = new Option<string?>("--input-ids") { Description = "LLMs: prompt token ids, comma-separated" };
        var inputs = new Option<string?>("--inputs") { Description = "ONNX models: folder of input .pb files" };
        var seed = new Option<int>("--seed") { Description = "ONNX models: seed of generated inputs", DefaultValueFactory = _ => 0 };
        var decodeSteps = new Option<int>("--decode-steps") { Description = "LLMs: decode steps carved and migrated", DefaultValueFactory = _ => 2 };
        var json = new Option<string?>("--json") { Description = "write {first_divergent, runs, nodes, peak_memory_bytes, replay{…}} here" };
        var embedWeights = new Option<bool>("--embed-weights") { Description = "copy model weights into the store (self-contained) instead of naming them in the model file" };
        var quantize = Cli.QuantizeOption();
        var weights = Cli.WeightsOption();
        var cmd = new Command("debug", "carve on the source, replay on the target, migrate to the first wrong operator, report") { model, target, source, outDir, prompt, inputIds, inputs, seed, decodeSteps, json, demo, embedWeights, quantize, weights };
        cmd.Action(pr =>
        {
            string sourceSpec = pr.GetValue(source)!;
            string dir = pr.GetValue(outDir) ?? Path.Combine(Path.GetTempPath(), $"tapml-debug-{DateTime.UtcNow:yyyyMMdd-HHmmss}");
            if (File.Exists(Path.Combine(dir, "store", "manifest.json"))) throw new TapmlException($"{dir} already holds a debug run; choose another --out");
            string? injected = null;
            string spec, targetSpec;
            Model m;
            if (pr.GetValue(demo))
            {
                spec = pr.GetValue(model) ?? "builtin:tiny-llama";
                m = ModelSpec.Load(spec, pr.GetValue(quantize), pr.GetValue(weights));
                (targetSpec, injected) = DemoTarget(m, pr.GetValue(target));
            }
            else
            {
                spec = pr.GetValue(model) ?? throw new TapmlException("debug needs --model M (or --demo)");
                targetSpec = pr.GetValue(target) ?? throw new TapmlException("debug needs --target P (or --demo)");
                m = ModelSpec.Load(spec, pr.GetValue(quantize), pr.GetValue(weights));
            }
            using (PlatformRegistry.Create(targetSpec)) { }   // NOTE: a bad target spec fails before the carve, not after it
            Directory.CreateDirectory(dir);
            var input = CarveVerb.ResolveInput(spec, m, pr.GetValue(prompt), pr.GetValue(inputIds) ?? (injected is not null && pr.GetValue(prompt) is null ? "1,17,305,42" : null),
                pr.GetValue(inputs), pr.GetValue(seed), pr.GetValue(decodeSteps));

            Console.WriteLine($"1/3 carve on {sourceSpec}");
            CarvedStore store;
            PlatformInfo srcInfo, tgtInfo;
            using (var src = PlatformRegistry.Create(sourceSpec))
            {
                srcInfo = PlatformInfo.Of("source", src);
                store = CarveVerb.Carve(spec, m, src, Path.Combine(dir, "store"), new CarveOptions(EmbedWeights: pr.GetValue(embedWeights)), input);
            }

            Console.WriteLine($"2/3 replay {store.Cases.Count} cases on {targetSpec}");
            var summary = new RunSummary { Platform = targetSpec };
            using (var tgt = PlatformRegistry.Create(targetSpec))
            {
                tgtInfo = PlatformInfo.Of("target", tgt);
                var replayer = new Replayer(store, tgt, new Tolerances());
                Progress.Each(store.Cases, $"replay on {targetSpec}", c => { var r = replayer.Run(c); summary.Cases.Add(r); return r; });
            }
            var byId = store.Cases.ToDictionary(c => c.Id);
            JsonReport.Write(summary, Path.Combine(dir, "replay.json"));
            HtmlReport.Write(summary, Path.Combine(dir, "replay.html"), $"tapml debug: replay on {targetSpec}", r => byId.TryGetValue(r.Name, out var c) ? c.OpType : "?");
            var failingOps = summary.Cases.Where(c => c.Status is CaseStatus.Failed or CaseStatus.Error)
                .GroupBy(c => byId[c.Name].OpType).Select(g => $"{g.Key} ×{g.Count()}").ToList();
            Console.WriteLine($"   {summary.SummaryLine}" + (failingOps.Count > 0 ? $"; failing: {string.Join(", ", failingOps)}" : ""));

            Console.WriteLine($"3/3 migrate (lockstep) {sourceSpec} → {targetSpec}");
            var mig = new Migrator(m, sourceSpec, targetSpec, input, new Tolerances(), new Tolerance(1e-3, 1e-4)) { ReproDir = dir }.Lockstep();
            File.WriteAllText(Path.Combine(dir, "migrate.json"), mig.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            MigrationHtml.Write(mig, Path.Combine(dir, "migrate.html"), $"tapml debug: migrate {spec} → {targetSpec}");
            DebugReport.Write(summary, r => byId.TryGetValue(r.Name, out var c) ? c.OpType : "?", mig, ReportEnvironment.Here(srcInfo, tgtInfo),
                Path.Combine(dir, "report.html"), $"tapml debug: {spec} on {targetSpec}");
            MigrateVerb.PrintKept(mig, "   ");
            MigrateVerb.PrintVerdict(mig, "   ");
            foreach (var r in summary.Cases.Where(c => c.Repro is not null).Take(3)) Console.WriteLine($"   failing case: {r.Repro}");
            Console.WriteLine($"reports: {Path.Combine(dir, "report.html")} (also replay.html, migrate.html)");
            if (pr.GetValue(json) is { } j)
            {
                var o = mig.ToJson();
                o["replay"] = new JsonObject { ["passed"] = summary.Passed, ["failed"] = summary.Failed, ["errors"] = summary.Errors, ["skipped"] = summary.Skipped, ["store"] = store.Dir };
                File.WriteAllText(j + ".tmp", o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                File.Move(j + ".tmp", j, overwrite: true);
            }
            if (injected is not null)
            {
                bool found = mig.FirstDivergent?.Node == injected;
                Console.WriteLine(found ? $"demo: found the injected node {injected} ✓ (first divergent, isolated error; the nodes after it only inherit it)"
                                        : $"demo: the injected node {injected} was NOT found (first divergent: {mig.FirstDivergent?.Node ?? "none"})");
                return found ? 0 : 1;
            }
            bool clean = mig.FirstDivergent is null && mig.TargetError is null && summary.Failed + summary.Errors == 0;
            return clean ? 0 : 1;
        });
        return cmd;
    }
}
