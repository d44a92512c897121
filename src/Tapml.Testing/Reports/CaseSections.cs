using System.Globalization;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;

namespace Tapml.Testing.Reports;

/// <summary>HTML sections over a case run that the replay report and the debug report share: the failures (reason,
/// rule, ÷ allowed, worst element, reproducer), the per-op summary and the skips grouped by reason.</summary>
public static class CaseSections
{
    static string E(string? x) => WebUtility.HtmlEncode(x ?? "");
    internal static string N(double? v) => v is double d ? d.ToString("G4", CultureInfo.InvariantCulture) : "";

    /// <summary>Cases that failed or raised an error, worst first (by ÷ allowed, then max_rel).</summary>
    public static List<CaseResult> Failing(RunSummary s) =>
        s.Cases.Where(c => c.Status is CaseStatus.Failed or CaseStatus.Error)
            .OrderBy(c => c.Status == CaseStatus.Error ? 0 : 1)
            .ThenByDescending(c => c.Metrics?.BoundRatio ?? 0).ThenByDescending(c => c.Metrics?.MaxRel ?? 0).ToList();

    /// <summary>One line of the run: counts, and the op types that fail.</summary>
    public static string Verdict(RunSummary s, Func<CaseResult, string> opOf)
    {
        var failing = Failing(s).GroupBy(opOf).Select(g => $"{g.Key} ×{g.Count()}").ToList();
        string counts = $"{s.Passed} passed, {s.Failed} failed, {s.Errors} errors, {s.Skipped} skipped";
        return failing.Count == 0 ? $"{s.Platform} agrees: {counts}" : $"{s.Platform} disagrees: {counts}; failing: {string.Join(", ", failing)}";
    }

    /// <summary>The failing cases as a table (at most <paramref name="max"/> rows, the rest counted).</summary>
    public static string Failures(RunSummary s, Func<CaseResult, string> opOf, int max = 200)
    {
        var bad = Failing(s);
        if (bad.Count == 0) return "<p>no replayed case failed.</p>";
        var sb = new StringBuilder("<table class='fail'><tr><th>case</th><th>op</th><th>status</th><th>rule</th><th>÷ allowed</th><th>max_rel</th><th>worst element</th><th>reason</th><th>reproduce</th></tr>");
        foreach (var c in bad.Take(max))
        {
            var worst = c.Outputs.Where(o => !o.Passed).MaxBy(o => o.Metrics.BoundRatio ?? o.Metrics.MaxRel);
            string at = worst is { WorstIndex: >= 0 } w ? $"{w.Name}[{w.WorstIndex}]: expected {w.WorstExpected}, got {w.WorstActual}" : "";
            string st = c.Status.ToString().ToLowerInvariant();
            sb.Append($"<tr class='{st}'><td>{E(c.Name)}</td><td>{E(opOf(c))}</td><td class='s'>{st}</td><td>{E(c.Metrics?.Rule)}</td><td>{N(c.Metrics?.BoundRatio)}</td><td>{N(c.Metrics?.MaxRel)}</td>");
            sb.Append($"<td>{E(at)}</td><td class='why'>{E(c.Reason)}</td><td>{(c.Repro is null ? "" : $"<code class='cmd'>{E(c.Repro)}</code>")}</td></tr>");
        }
        sb.Append("</table>");
        if (bad.Count > max) sb.Append($"<p>… and {bad.Count - max} more (see the case table).</p>");
        return sb.ToString();
    }

    /// <summary>Per op type: passed / failed / error / skipped, the rules that judged it, the worst ÷ allowed and the
    /// worst max_rel; failing op types first.</summary>
    public static string OpTable(RunSummary s, Func<CaseResult, string> opOf)
    {
        var sb = new StringBuilder("<table class='ops'><tr><th>op</th><th>cases</th><th>passed</th><th>failed</th><th>error</th><th>skipped</th><th>rule</th><th>worst ÷ allowed</th><th>worst max_rel</th></tr>");
        var groups = s.Cases.GroupBy(opOf)
            .OrderByDescending(g => g.Count(c => c.Status is CaseStatus.Failed or CaseStatus.Error) > 0)
            .ThenBy(g => g.Key, StringComparer.Ordinal);
        foreach (var g in groups)
        {
            int Count(CaseStatus st) => g.Count(c => c.Status == st);
            var metrics = g.Select(c => c.Metrics).OfType<Metrics>().ToList();
            string rules = string.Join(", ", metrics.Select(m => m.Rule).OfType<string>().Distinct().Order(StringComparer.Ordinal));
            double? ratio = metrics.Select(m => m.BoundRatio).OfType<double>().Select(x => (double?)x).Max();
            double? rel = metrics.Count == 0 ? null : metrics.Max(m => m.MaxRel);
            bool bad = Count(CaseStatus.Failed) + Count(CaseStatus.Error) > 0;
            sb.Append($"<tr class='{(bad ? "failed" : "passed")}'><td class='s'>{E(g.Key)}</td><td>{g.Count()}</td><td>{Count(CaseStatus.Passed)}</td><td>{Count(CaseStatus.Failed)}</td><td>{Count(CaseStatus.Error)}</td><td>{Count(CaseStatus.Skipped)}</td>");
            sb.Append($"<td>{E(rules)}</td><td>{N(ratio)}</td><td>{N(rel)}</td></tr>");
        }
        return sb.Append("</table>").ToString();
    }

    /// <summary>Skipped cases grouped by reason (the op types and a few case names under each).</summary>
    public static string Skipped(RunSummary s, Func<CaseResult, string> opOf)
    {
        var skipped = s.Cases.Where(c => c.Status == CaseStatus.Skipped).ToList();
        if (skipped.Count == 0) return "<p>no case was skipped.</p>";
        var sb = new StringBuilder("<table><tr><th>reason</th><th>cases</th><th>op types</th><th>examples</th></tr>");
        // NOTE: the executor prefixes reasons with "node 'N' (Op) on P: "; without it, one reason groups many nodes.
        var prefix = new Regex($"^node '.*?' \\([^)]*\\) on {Regex.Escape(s.Platform)}: ");
        foreach (var g in skipped.GroupBy(c => prefix.Replace(c.Reason ?? "", "")).OrderByDescending(g => g.Count()))
            sb.Append($"<tr><td class='why'>{E(g.Key)}</td><td>{g.Count()}</td><td>{E(string.Join(", ", g.Select(opOf).Distinct()))}</td><td>{E(string.Join(", ", g.Take(3).Select(c => c.Name)) + (g.Count() > 3 ? ", …" : ""))}</td></tr>");
        return sb.Append("</table>").ToString();
    }
}
