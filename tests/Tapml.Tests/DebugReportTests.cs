using Xunit;

namespace Tapml.Tests;

/// <summary><c>tapml debug</c>'s one page (report.html), through the real CLI: the verdict first, then the failures,
/// the per-op summary, kept-on-source nodes, the error curve, skips, environment and reproducers, in that order.</summary>
public class DebugReportTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tapml-report-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    static readonly string[] Sections = ["verdict", "failures", "ops", "kept", "curve", "skipped", "environment", "reproducers"];

    string Debug(string target, string name)
    {
        string outDir = Path.Combine(_dir, name);
        var r = CliRunner.Run("debug", "--model", "builtin:tiny-llama", "--target", target, "--input-ids", "1,17", "--decode-steps", "1", "--out", outDir);
        Assert.True(r.ExitCode is 0 or 1, r.Stdout + r.Stderr);
        string report = Path.Combine(outDir, "report.html");
        Assert.Contains($"reports: {report}", r.Stdout);
        Assert.True(File.Exists(Path.Combine(outDir, "replay.html")) && File.Exists(Path.Combine(outDir, "migrate.html")));
        return File.ReadAllText(report);
    }

    static void InOrder(string html)
    {
        var at = Sections.Select(s => (s, i: html.IndexOf($"id='{s}'", StringComparison.Ordinal))).ToList();
        foreach (var (s, i) in at) Assert.True(i >= 0, $"section {s} is missing");
        for (int k = 1; k < at.Count; k++) Assert.True(at[k - 1].i < at[k].i, $"section {at[k - 1].s} comes after {at[k].s}");
    }

    [Fact]
    public void The_report_opens_with_the_culprit_and_lists_failures_repro_and_environment_in_order()
    {
        string html = Debug("faulty:cpu?node=MatMul_11&kind=scale", "scale");
        InOrder(html);
        int verdict = html.IndexOf("id='verdict'", StringComparison.Ordinal);
        Assert.Contains("first wrong operator: MatMul_11 (MatMul", html[verdict..html.IndexOf("id='failures'", StringComparison.Ordinal)]);
        Assert.Contains("its accumulation bound (max_rel 0.5)", html);
        Assert.Contains("./tapml replay", html);
        Assert.Contains("culprit-store --case MatMul-MatMul_11", html);
        string env = html[html.IndexOf("id='environment'", StringComparison.Ordinal)..html.IndexOf("id='reproducers'", StringComparison.Ordinal)];
        foreach (var s in new[] { "faulty:cpu?node=MatMul_11&amp;kind=scale", "tapml reference kernels", ".NET", "OS", "tapml</th>" })
            Assert.Contains(s, env);
        Assert.Contains("<svg", html);
        Assert.DoesNotContain("http://", html.Replace("http://www.w3.org/2000/svg", ""));
    }

    [Fact]
    public void A_refused_op_is_listed_as_kept_on_the_source_and_the_target_agrees()
    {
        string html = Debug("faulty:cpu?refuse=Softmax", "refuse");
        InOrder(html);
        string kept = html[html.IndexOf("id='kept'", StringComparison.Ordinal)..html.IndexOf("id='curve'", StringComparison.Ordinal)];
        Assert.Contains("<td>Softmax</td>", kept);
        Assert.Contains("refused by this faulty platform", kept);
        Assert.Contains("target agrees", html[..html.IndexOf("id='failures'", StringComparison.Ordinal)]);
        // The four skipped Softmax cases (two nodes, prefill and decode) share one reason once the node prefix is gone.
        string skipped = html[html.IndexOf("id='skipped'", StringComparison.Ordinal)..html.IndexOf("id='environment'", StringComparison.Ordinal)];
        Assert.Contains("<td class='why'>Softmax is refused by this faulty platform (refuse=Softmax)</td><td>4</td>", skipped);
    }
}
