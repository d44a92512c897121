using System.CommandLine;
using System.Text.RegularExpressions;
using Spectre.Console;
using Tapml.Core;
using Tapml.Platforms;
using Tapml.Testing;
using Tapml.Testing.Conformance;
using Tapml.Testing.Reports;

namespace Tapml.Cli;

/// <summary><c>tapml conformance DIR… [--platform P] [--filter RE] [--json F] [--junit F]</c>: ONNX backend-test
/// cases. Last line: <c>N passed, N failed, N skipped</c>; exit 0 iff nothing failed or errored.</summary>
static class ConformanceVerb
{
    public static Command Create()
    {
        var dirs = new Argument<string[]>("DIR") { Description = "folders of cases (test_x/model.onnx + test_data_set_k/) or single cases", Arity = ArgumentArity.OneOrMore };
        var platform = Cli.PlatformOption();
        var filter = new Option<string?>("--filter") { Description = "regular expression on case names" };
        var json = new Option<string?>("--json") { Description = "write the JSON report here" };
        var junit = new Option<string?>("--junit") { Description = "write a JUnit XML report here" };
        var rtol = new Option<double?>("--rtol") { Description = "relative tolerance (default 1e-3, the ONNX runner's)" };
        var atol = new Option<double?>("--atol") { Description = "absolute tolerance (default 1e-7, the ONNX runner's)" };
        var fallback = Cli.FallbackOption();
        var cmd = new Command("conformance", "run ONNX backend-test cases on a platform") { dirs, platform, filter, json, junit, rtol, atol, fallback };
        cmd.Action(pr =>
        {
            var tol = new Tolerance(pr.GetValue(rtol) ?? Tolerance.OnnxDefault.Rtol, pr.GetValue(atol) ?? Tolerance.OnnxDefault.Atol);
            if (!(tol.Rtol >= 0 && tol.Atol >= 0)) throw new TapmlException($"tolerances must be non-negative numbers (got {tol})");
            var cases = OnnxCase.Discover(pr.GetValue(dirs)!);
            if (pr.GetValue(filter) is { } f)
            {
                var re = Cli.FilterRegex(f);
                cases = cases.Where(c => re.IsMatch(c.Name)).ToList();
            }
            if (cases.Count == 0) throw new TapmlException("no cases found (a case is a folder with model.onnx and test_data_set_*/)");
            string spec = pr.GetValue(platform)!;
            using var p = PlatformRegistry.Create(spec);
            using var fb = pr.GetValue(fallback) is { } fbSpec ? PlatformRegistry.Create(fbSpec) : null;
            var runner = new ConformanceRunner(p, tol, fb);
            var summary = new RunSummary { Platform = spec, FallbackPlatform = fb?.Name };
            Progress.Each(cases, $"conformance on {spec}", c =>
            {
                var r = runner.Run(c);
                summary.Cases.Add(r);
                return r;
            });
            Summaries.Print(summary, tol.ToString());
            if (pr.GetValue(json) is { } j) JsonReport.Write(summary, j);
            if (pr.GetValue(junit) is { } ju) JUnitReport.Write(summary, ju, "conformance");
            Console.WriteLine(summary.SummaryLine);
            return summary.Failed + summary.Errors == 0 ? 0 : 1;
        });
        return cmd;
    }
}
