using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Platforms;
using Tapml.Testing;
using Tapml.Testing.Carving;
using Tapml.Testing.Migration;
using Tapml.Testing.Reports;

namespace Tapml.Cli;

/// <summary><c>tapml debug --model M --target P [--source cpu] [--out DIR] [--prompt S | --input-ids … | --inputs DIR]
/// [--decode-steps N] [--json F]</c>: the main job in one command — carve on the source, replay every case on the
/// target, migrate in lockstep to the first wrong operator, and write the reports to DIR (store/, replay.html,
/// replay.json, migrate.html, migrate.json). Exit 0 when the target agrees everywhere, 1 otherwise.</summary>
static class DebugVerb
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "model: .onnx, model folder, Hugging Face folder or builtin:NAME", Required = true };
        var target = new Option<string>("--target") { Description = "platform being brought up", Required = true };
        var source = new Option<string>("--source") { Description = "trusted platform", DefaultValueFactory = _ => "cpu" };
        var outDir = new Option<string?>("--out") { Description = "folder for the store and reports (default: tapml-debug-<time> in the temp folder)" };
        var prompt = new Option<string?>("--prompt") { Description = "LLMs: prompt text" };
        var inputIds = new Option<string?>("--input-ids") { Description = "LLMs: prompt token ids, comma-separated" };
        var inputs = new Option<string?>("--inputs") { Description = "ONNX models: folder of input .pb files" };
        var seed = new Option<int>("--seed") { Description = "ONNX models: seed of generated inputs", DefaultValueFactory = _ => 0 };
        var decodeSteps = new Option<int>("--decode-steps") { Description = "LLMs: decode steps carved and migrated", DefaultValueFactory = _ => 2 };
        var json = new Option<string?>("--json") { Description = "write {first_divergent, runs, nodes, peak_memory_bytes, replay{…}} here" };
        var embedWeights = new Option<bool>("--embed-weights") { Description = "copy model weights into the store (self-contained) instead of naming them in the model file" };
        var cmd = new Command("debug", "carve on the source, replay on the target, migrate to the first wrong operator, report") { model, target, source, outDir, prompt, inputIds, inputs, seed, decodeSteps, json, embedWeights };
        cmd.Action(pr =>
        {
            string spec = pr.GetValue(model)!, targetSpec = pr.GetValue(target)!, sourceSpec = pr.GetValue(source)!;
            string dir = pr.GetValue(outDir) ?? Path.Combine(Path.GetTempPath(), $"tapml-debug-{DateTime.UtcNow:yyyyMMdd-HHmmss}");
            if (File.Exists(Path.Combine(dir, "store", "manifest.json"))) throw new TapmlException($"{dir} already holds a debug run; choose another --out");
            Directory.CreateDirectory(dir);
            var m = ModelSpec.Load(spec);
            var input = CarveVerb.ResolveInput(spec, m, pr.GetValue(prompt), pr.GetValue(inputIds), pr.GetValue(inputs), pr.GetValue(seed), pr.GetValue(decodeSteps));

            Console.WriteLine($"1/3 carve on {sourceSpec}");
            CarvedStore store;
            using (var src = PlatformRegistry.Create(sourceSpec))
                store = CarveVerb.Carve(spec, m, src, Path.Combine(dir, "store"), new CarveOptions(EmbedWeights: pr.GetValue(embedWeights)), input);

            Console.WriteLine($"2/3 replay {store.Cases.Count} cases on {targetSpec}");
            var summary = new RunSummary { Platform = targetSpec };
            using (var tgt = PlatformRegistry.Create(targetSpec))
            {
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
            if (mig.FirstDivergent is { } f)
            {
                Console.WriteLine($"   first divergent node: {f.Node} ({f.OpType}, index {f.Index}, {f.Phase}); isolated max_rel {f.Isolated.Metrics.MaxRel:G4}, accumulated {f.Accumulated.Metrics.MaxRel:G4}; {mig.Affected.Count} affected nodes");
                if (mig.Repro is not null) Console.WriteLine($"   reproduce: {mig.Repro}");
            }
            else Console.WriteLine(mig.TargetError is null ? "   no divergence" : $"   target failed: {mig.TargetError}");
            foreach (var r in summary.Cases.Where(c => c.Repro is not null).Take(3)) Console.WriteLine($"   failing case: {r.Repro}");
            Console.WriteLine($"reports: {Path.Combine(dir, "replay.html")}, {Path.Combine(dir, "migrate.html")}");
            if (pr.GetValue(json) is { } j)
            {
                var o = mig.ToJson();
                o["replay"] = new JsonObject { ["passed"] = summary.Passed, ["failed"] = summary.Failed, ["errors"] = summary.Errors, ["skipped"] = summary.Skipped, ["store"] = store.Dir };
                File.WriteAllText(j + ".tmp", o.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                File.Move(j + ".tmp", j, overwrite: true);
            }
            bool clean = mig.FirstDivergent is null && mig.TargetError is null && summary.Failed + summary.Errors == 0;
            return clean ? 0 : 1;
        });
        return cmd;
    }
}
