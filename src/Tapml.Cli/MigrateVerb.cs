using System.CommandLine;
using System.Text.Json;
using Spectre.Console;
using Tapml.Core;
using Tapml.Testing;
using Tapml.Testing.Migration;

namespace Tapml.Cli;

/// <summary><c>tapml migrate --model M --target P [--source cpu] [--strategy lockstep|bisect|by-kind] [--inputs DIR |
/// --prompt S | --input-ids …] [--decode-steps N] [--json F] [--html F] [--out DIR]</c>: finds the first node whose
/// own kernel is wrong on the target (isolated error), separating it from nodes that only inherit its error.
/// Exit 0 when nothing diverged, 1 when a culprit was found.</summary>
static class MigrateVerb
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "model: .onnx, model folder, Hugging Face folder or builtin:NAME", Required = true };
        var target = new Option<string>("--target") { Description = "platform being brought up (e.g. webgpu, onnxruntime, faulty:cpu?node=N&kind=scale)", Required = true };
        var source = new Option<string>("--source") { Description = "trusted platform", DefaultValueFactory = _ => "cpu" };
        var strategy = new Option<string>("--strategy") { Description = "lockstep (node by node), bisect (⌈log2 n⌉+2 whole runs) or by-kind (one op type at a time)", DefaultValueFactory = _ => "lockstep" };
        var inputs = new Option<string?>("--inputs") { Description = "ONNX models: folder of <input name>.pb files or a backend-test data set (default: seeded generated inputs)" };
        var seed = new Option<int>("--seed") { Description = "ONNX models: seed of the generated inputs", DefaultValueFactory = _ => 0 };
        var prompt = new Option<string?>("--prompt") { Description = "LLMs: prompt text (the model folder's tokenizer.json encodes it)" };
        var inputIds = new Option<string?>("--input-ids") { Description = "LLMs: prompt token ids, comma-separated" };
        var decodeSteps = new Option<int>("--decode-steps") { Description = "LLMs: decode steps after the prefill", DefaultValueFactory = _ => 2 };
        var json = new Option<string?>("--json") { Description = "write {first_divergent, runs, nodes, peak_memory_bytes, …} here" };
        var html = new Option<string?>("--html") { Description = "write a self-contained HTML report (error curve along the graph) here" };
        var outDir = new Option<string?>("--out") { Description = "folder for the culprit's carved case and the journal of finished runs, migration.jsonl (default: a temporary folder)" };
        var resume = new Option<bool>("--resume") { Description = "with --out: take the runs and clean lockstep phases the folder's journal holds and run only the rest" };
        var rtol = new Option<double?>("--rtol") { Description = "relative tolerance (node comparisons and graph outputs)" };
        var atol = new Option<double?>("--atol") { Description = "absolute tolerance (node comparisons and graph outputs)" };
        var cmd = new Command("migrate", "move a model to the target node by node and find the first wrong operator") { model, target, source, strategy, inputs, seed, prompt, inputIds, decodeSteps, json, html, outDir, resume, rtol, atol };
        cmd.Action(pr =>
        {
            string spec = pr.GetValue(model)!, strat = pr.GetValue(strategy)!;
            if (strat is not ("lockstep" or "bisect" or "by-kind")) throw new TapmlException($"--strategy {strat} is not one of lockstep, bisect, by-kind");
            var m = ModelSpec.Load(spec);
            var input = CarveVerb.ResolveInput(spec, m, pr.GetValue(prompt), pr.GetValue(inputIds), pr.GetValue(inputs), pr.GetValue(seed), pr.GetValue(decodeSteps));
            var nodeTol = new Tolerances { Rtol = pr.GetValue(rtol), Atol = pr.GetValue(atol) };
            var outTol = new Tolerance(pr.GetValue(rtol) ?? 1e-3, pr.GetValue(atol) ?? 1e-4);
            if (pr.GetValue(resume) && pr.GetValue(outDir) is null) throw new TapmlException("--resume needs --out DIR (the folder an earlier migration wrote)");
            string repro = pr.GetValue(outDir) ?? Path.Combine(Path.GetTempPath(), $"tapml-migrate-{Environment.ProcessId}");
            var migrator = new Migrator(m, pr.GetValue(source)!, pr.GetValue(target)!, input, nodeTol, outTol)
            {
                ReproDir = repro,
                Progress = Console.IsOutputRedirected ? null : s => AnsiConsole.MarkupLine($"[grey]{Markup.Escape(s)}[/]"),
            };
            using var journal = pr.GetValue(outDir) is { } od ? MigrationJournal.Open(od, migrator.JournalHeader(strat), pr.GetValue(resume)) : null;
            if (journal is { Held: > 0 }) Console.WriteLine($"resuming: {journal.Held} finished runs and phases in {Path.Combine(pr.GetValue(outDir)!, MigrationJournal.FileName)}");
            migrator.Journal = journal;
            var r = migrator.Run(strat);
            Print(r);
            if (pr.GetValue(json) is { } j)
            {
                File.WriteAllText(j + ".tmp", r.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                File.Move(j + ".tmp", j, overwrite: true);
            }
            if (pr.GetValue(html) is { } h) MigrationHtml.Write(r, h, $"tapml migrate {spec} → {r.Target}");
            return r.FirstDivergent is null && r.TargetError is null ? 0 : 1;
        });
        return cmd;
    }

    /// <summary>The nodes kept on the source, grouped by op type and reason, one line each.</summary>
    internal static void PrintKept(MigrationResult r, string indent = "")
    {
        if (r.KeptOnSource.Count == 0) return;
        Console.WriteLine($"{indent}kept on the source ({r.Source}): {r.KeptOnSource.Count} nodes the target cannot run");
        foreach (var g in r.KeptOnSource.GroupBy(k => (k.OpType, Reason: ReasonOf(k))))
            Console.WriteLine($"{indent}  {g.Key.OpType} ×{g.Count()} ({string.Join(", ", g.Take(3).Select(k => k.Node))}{(g.Count() > 3 ? ", …" : "")}): {g.Key.Reason}");
    }

    /// <summary>A fallback reason without the node prefix the executor puts on it (grouped over nodes).</summary>
    static string ReasonOf(Platforms.Execution.FallbackRecord k) => k.ReasonWithoutNode;

    /// <summary>The culprit (with the failure text when it failed by error), or why there is none.</summary>
    internal static void PrintVerdict(MigrationResult r, string indent = "")
    {
        if (r.FirstDivergent is { } f)
        {
            Console.WriteLine($"{indent}first divergent node: {f.Node} ({f.OpType}, index {f.Index}, {f.Phase}) on {f.Platform}");
            Console.WriteLine($"{indent}  isolated:    {Describe(f.Isolated)}");
            Console.WriteLine($"{indent}  accumulated: {Describe(f.Accumulated)}");
            if (r.Affected.Count > 0)
                Console.WriteLine($"{indent}  affected (inherit the error, not blamed): {r.Affected.Count} nodes, first {string.Join(", ", r.Affected.Take(5).Select(a => $"{a.Node} ({a.OpType})"))}");
            if (r.Repro is not null) Console.WriteLine($"{indent}  reproduce: {r.Repro}");
        }
        else if (r.TargetError is not null) Console.WriteLine($"{indent}target failed: {r.TargetError}");
        else if (r.Affected.Count > 0)
            Console.WriteLine($"{indent}no divergence: every node's own kernel agrees within tolerance (isolated); {r.Affected.Count} nodes drift past it fed the target's own " +
                              $"inputs (accumulated), first {r.Affected[0].Node} ({r.Affected[0].OpType}, {r.Affected[0].Phase}): rounding inherited along the graph, or a result that depends on state");
        else Console.WriteLine($"{indent}no divergence: every compared output agrees within tolerance");
    }

    static void Print(MigrationResult r)
    {
        Console.WriteLine($"{r.Strategy}: {r.Nodes} nodes, {r.Runs} runs ({r.PartialRuns} partial{(r.Resumed > 0 ? $", {r.Resumed} runs or phases taken from the journal" : "")}), {r.Transfers} transfers, {Format.Bytes(r.BytesMoved)} moved, peak {Format.Bytes(r.PeakMemoryBytes)}" +
                          (r.AllIntermediatesBytes > 0 ? $" (all intermediates of a run: {Format.Bytes(r.AllIntermediatesBytes)})" : "") + $", {r.Seconds:F2} s");
        foreach (var s in r.Stages) Console.WriteLine($"  stage {s.Stage}: +{s.OpType} ({s.NodesOnTarget} nodes on the target): {(s.Diverged ? "diverged: " + s.Detail : "agrees")}");
        PrintKept(r);
        PrintVerdict(r);
    }

    static string Describe(NodeError e) =>
        (e.Metrics.Elements == 0 && !e.Passed ? "FAILS by error" :
        $"{(e.Passed ? "passes" : "FAILS")} {e.Metrics.Rule ?? "max_abs"}{(e.Metrics.BoundRatio is { } b ? $" {b:G3}× allowed," : "")} max_abs {e.Metrics.MaxAbs:G4}, max_rel {e.Metrics.MaxRel:G4}, cosine {e.Metrics.Cosine:G6}")
        + (e.Failure is null ? "" : $" — {e.Failure}");
}
