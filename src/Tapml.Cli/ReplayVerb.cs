using System.CommandLine;
using System.Text.RegularExpressions;
using Spectre.Console;
using Tapml.Core;
using Tapml.Platforms;
using Tapml.Testing;
using Tapml.Testing.Carving;
using Tapml.Testing.Reports;

namespace Tapml.Cli;

/// <summary><c>tapml replay STORE --platform P [--case ID] [--filter RE] [--json F] [--junit F] [--html F]
/// [--rtol R] [--atol A] [--tol OP=R,A]</c>: runs carved cases on a platform and compares with the source's outputs.
/// Last line <c>N passed, N failed, N skipped</c>; exit 0 iff nothing failed or errored. A case's error is also one line
/// on stderr; a store that cannot be read, or a case going over the memory budget, ends the replay with exit 2.</summary>
static class ReplayVerb
{
    public static Command Create()
    {
        var storeArg = new Argument<string>("STORE") { Description = "carved store folder (manifest.json + blobs/)" };
        var platform = Cli.PlatformOption();
        var caseId = new Option<string?>("--case") { Description = "replay only this case (id or unique id prefix)" };
        var filter = new Option<string?>("--filter") { Description = "regular expression on case ids (which start with the op type)" };
        var json = new Option<string?>("--json") { Description = "write the JSON report here" };
        var junit = new Option<string?>("--junit") { Description = "write a JUnit XML report here" };
        var html = new Option<string?>("--html") { Description = "write a self-contained HTML report here" };
        var rtol = new Option<double?>("--rtol") { Description = "relative tolerance for every op (default: per dtype, see docs/carving.md)" };
        var atol = new Option<double?>("--atol") { Description = "absolute tolerance for every op (default: per dtype, widened with √(reduced length))" };
        var tol = new Option<string[]>("--tol") { Description = "per-op tolerance OP=RTOL,ATOL (repeatable), e.g. --tol Softmax=1e-3,1e-5", AllowMultipleArgumentsPerToken = false };
        var outDir = new Option<string?>("--out") { Description = "folder for results.jsonl: each verdict is written as its case ends" };
        var resume = new Option<bool>("--resume") { Description = "with --out: keep the verdicts the folder already holds and run only the other cases" };
        var cmd = new Command("replay", "run carved operator tests on a platform and compare with the source") { storeArg, platform, caseId, filter, json, junit, html, rtol, atol, tol, outDir, resume };
        cmd.Action(pr =>
        {
            var store = CarvedStore.Open(pr.GetValue(storeArg)!);
            var tolerances = new Tolerances { Rtol = pr.GetValue(rtol), Atol = pr.GetValue(atol) };
            if (tolerances.Rtol < 0 || tolerances.Atol < 0) throw new TapmlException("--rtol/--atol must not be negative");
            foreach (var t in pr.GetValue(tol) ?? []) tolerances.AddOverride(t);
            var cases = store.Cases.ToList();
            if (pr.GetValue(caseId) is { } id) cases = [store.Find(id)];
            if (pr.GetValue(filter) is { } f)
            {
                var re = Cli.FilterRegex(f);
                cases = cases.Where(c => re.IsMatch(c.Id)).ToList();
            }
            // NOTE: a corrupt blob or a moved model file is bad input (one line, exit 2), not a failing case.
            store.Verify(cases);
            string spec = pr.GetValue(platform)!;
            if (pr.GetValue(resume) && pr.GetValue(outDir) is null) throw new TapmlException("--resume needs --out DIR (the folder an earlier run wrote)");
            var summary = new RunSummary { Platform = spec };
            using var p = PlatformRegistry.Create(spec);
            var byId = cases.ToDictionary(c => c.Id);
            List<CaseResult> done = [];
            using var log = pr.GetValue(outDir) is { } od ? ResultLog.Open(od, spec, p.Description, Path.GetFullPath(store.Dir), pr.GetValue(resume), out done) : null;
            if (log is not null)
            {
                var had = done.Where(r => byId.ContainsKey(r.Name)).ToList();
                summary.Cases.AddRange(had);
                var seen = had.Select(r => r.Name).ToHashSet();
                if (had.Count > 0) Console.WriteLine($"resuming: {had.Count} of {cases.Count} cases already done in {pr.GetValue(outDir)}");
                cases = cases.Where(c => !seen.Contains(c.Id)).ToList();
            }
            var replayer = new Replayer(store, p, tolerances);
            if (byId.Count == 0) Console.WriteLine(store.Cases.Count == 0 ? $"{store.Dir}: the store has no cases yet" : "no case matches");
            var sw = System.Diagnostics.Stopwatch.StartNew();
            Progress.Each(cases, $"replay on {spec}", c =>
            {
                var r = replayer.Run(c);
                summary.Cases.Add(r);
                // NOTE: one case's bad data is that case's error (stderr, the replay goes on); an unusable store is exit 2.
                if (r.Status == CaseStatus.Error) Console.Error.WriteLine($"error: {store.ManifestPath}: case {c.Id}: {Cli.OneLine(r.Reason)}");
                log?.Add(r);
                return r;
            });
            sw.Stop();
            PrintByOp(summary, byId);
            Console.WriteLine($"replayed {cases.Count} cases in {sw.Elapsed.TotalSeconds:F2} s ({(sw.Elapsed.TotalSeconds > 0 ? cases.Count / sw.Elapsed.TotalSeconds : 0):F0} cases/s)");
            string OpOf(CaseResult r) => byId.TryGetValue(r.Name, out var c) ? c.OpType : r.Name.Split('-')[0];
            if (pr.GetValue(json) is { } j) JsonReport.Write(summary, j);
            if (pr.GetValue(junit) is { } ju) JUnitReport.Write(summary, ju, "replay");
            if (pr.GetValue(html) is { } h) HtmlReport.Write(summary, h, $"tapml replay {store.Dir} on {spec}", OpOf);
            Console.WriteLine(summary.SummaryLine);
            return summary.Failed + summary.Errors == 0 ? 0 : 1;
        });
        return cmd;
    }

    /// <summary>Summary table per op type: counts and the worst relative error.</summary>
    static void PrintByOp(RunSummary s, Dictionary<string, CarvedCase> byId)
    {
        var console = Console.IsOutputRedirected ? AnsiConsole.Create(new AnsiConsoleSettings { Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Out = new AnsiConsoleOutput(Console.Out) }) : AnsiConsole.Console;
        var table = new Table().AddColumns("op", "passed", "failed", "error", "skipped", "rule", "worst ÷ allowed", "worst max_rel", "worst max_abs");
        foreach (var g in s.Cases.GroupBy(c => byId.TryGetValue(c.Name, out var cc) ? cc.OpType : "?").OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            int failed = g.Count(c => c.Status == CaseStatus.Failed), errors = g.Count(c => c.Status == CaseStatus.Error);
            var metrics = g.Select(c => c.Metrics).OfType<Metrics>().ToList();
            table.AddRow(Markup.Escape(g.Key), g.Count(c => c.Status == CaseStatus.Passed).ToString(),
                failed > 0 ? $"[red]{failed}[/]" : "0", errors > 0 ? $"[red]{errors}[/]" : "0", g.Count(c => c.Status == CaseStatus.Skipped).ToString(),
                string.Join(",", metrics.Select(m => m.Rule).OfType<string>().Distinct()),
                metrics.Select(m => m.BoundRatio).OfType<double>().DefaultIfEmpty(double.NaN).Max() is var b && double.IsNaN(b) ? "" : b.ToString("G3"),
                metrics.Count == 0 ? "" : metrics.Max(m => m.MaxRel).ToString("G3"), metrics.Count == 0 ? "" : metrics.Max(m => m.MaxAbs).ToString("G3"));
        }
        table.Caption($"platform {Markup.Escape(s.Platform)}");
        console.Write(table);
        var skips = s.Cases.Where(c => c.Status == CaseStatus.Skipped).GroupBy(c => c.Reason).ToList();
        foreach (var g in skips) console.WriteLine($"  skipped {g.Count()} × {g.Key}");
    }
}
