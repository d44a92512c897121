using System.Globalization;
using System.Net;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using Tapml.Platforms;
using Tapml.Testing.Migration;

namespace Tapml.Testing.Reports;

/// <summary>A platform as a report names it: its role (source, target), the spec as written, its one-line
/// description and, where the platform has them (<see cref="IPlatformDetails"/>), adapter/driver/limits lines.</summary>
public sealed record PlatformInfo(string Role, string Spec, string Description, IReadOnlyList<string> Details)
{
    public static PlatformInfo Of(string role, IPlatform p) =>
        new(role, p.Name, p.Description, p is IPlatformDetails d ? d.Details().ToList() : []);
}

/// <summary>Where a report was made: the platforms, the tapml version (informational version of the entry
/// assembly), OS, .NET runtime, processor count and the time (UTC).</summary>
public sealed record ReportEnvironment(IReadOnlyList<PlatformInfo> Platforms, string TapmlVersion, string Os, string Dotnet, int Cores, DateTime Utc)
{
    public static ReportEnvironment Here(params PlatformInfo[] platforms)
    {
        var asm = Assembly.GetEntryAssembly() ?? typeof(ReportEnvironment).Assembly;
        string version = asm.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? asm.GetName().Version?.ToString() ?? "?";
        return new(platforms, version, $"{RuntimeInformation.OSDescription} ({RuntimeInformation.OSArchitecture})",
            RuntimeInformation.FrameworkDescription, Environment.ProcessorCount, DateTime.UtcNow);
    }
}

/// <summary>The one page of <c>tapml debug</c>: (1) the verdict, (2) the failures with reason, rule, ÷ allowed, worst
/// element and reproducer, (3) the per-op summary, (4) the nodes kept on the source, (5) the migration error curve
/// along the graph, (6) the skipped cases by reason, (7) the environment, (8) every reproducer. Self-contained:
/// inline CSS and SVG, nothing fetched. Section ids: verdict, failures, ops, kept, curve, skipped, environment,
/// reproducers.</summary>
public static class DebugReport
{
    static string E(string? x) => WebUtility.HtmlEncode(x ?? "");
    static string N(double v) => v.ToString("G4", CultureInfo.InvariantCulture);

    /// <summary>How a node error reads in the verdict: "3.2× its accumulation bound (max_rel 0.5)", or the failure.</summary>
    static string Error(NodeError e) =>
        e.Metrics.Elements == 0 && !e.Passed ? $"fails by error: {e.Failure}" :
        e.Metrics.BoundRatio is { } b ? $"{b.ToString("G3", CultureInfo.InvariantCulture)}× its {e.Metrics.Rule ?? ""} bound (max_rel {N(e.Metrics.MaxRel)})"
        : $"max_rel {N(e.Metrics.MaxRel)}{(e.Passed ? " (passes)" : "")}";

    /// <summary>The verdict line and whether it is good news.</summary>
    public static (string Text, bool Ok) Verdict(RunSummary replay, MigrationResult mig)
    {
        if (mig.FirstDivergent is { } f)
            return ($"first wrong operator: {f.Node} ({f.OpType}, index {f.Index}, {f.Phase}) — isolated error {Error(f.Isolated)}, accumulated {Error(f.Accumulated)}", false);
        if (mig.TargetError is not null) return ($"target failed: {mig.TargetError}", false);
        int bad = replay.Failed + replay.Errors;
        if (bad > 0) return ($"the whole model agrees, but {bad} replayed case{(bad == 1 ? "" : "s")} fail on {replay.Platform}", false);
        string drift = mig.Affected.Count == 0 ? "" : $"; {mig.Affected.Count} nodes drift past tolerance fed the target's own inputs (accumulated), first {mig.Affected[0].Node}";
        return ($"target agrees: every node's kernel on {mig.Target} is within tolerance of the source's{drift}", true);
    }

    public static string Build(RunSummary replay, Func<CaseResult, string> opOf, MigrationResult mig, ReportEnvironment env, string title)
    {
        var sb = new StringBuilder();
        sb.Append("<!DOCTYPE html><html><head><meta charset='utf-8'><title>").Append(E(title)).Append("</title><style>").Append(Svg.Css).Append("</style></head><body>");
        sb.Append($"<h1>{E(title)}</h1>");

        // (1) verdict
        var (verdict, ok) = Verdict(replay, mig);
        sb.Append($"<div id='verdict' class='banner {(ok ? "ok" : "bad")}'><b>{E(verdict)}</b><small>");
        sb.Append($"replay on <code>{E(replay.Platform)}</code>: {replay.Passed} passed, {replay.Failed} failed, {replay.Errors} errors, {replay.Skipped} skipped · ");
        sb.Append($"migration ({E(mig.Strategy)}, {E(mig.Source)} → {E(mig.Target)}): {mig.Records.Count} node outputs compared over {mig.Nodes} nodes, {mig.Affected.Count} affected, {mig.KeptOnSource.Count} kept on the source; ");
        sb.Append($"{mig.Runs} runs, {mig.Transfers} transfers ({mig.BytesMoved:N0} bytes moved), peak {mig.PeakMemoryBytes:N0} bytes, {mig.Seconds:F2} s</small></div>");

        // (2) failures first
        sb.Append("<h2 id='failures'>Failures</h2>");
        if (mig.FirstDivergent is { } f)
        {
            sb.Append($"<h3>First wrong operator (migration)</h3><table><tr><th>node</th><th>op</th><th>index</th><th>phase</th><th>platform</th><th>error</th><th>rule</th><th>÷ allowed</th><th>max_rel</th><th>max_abs</th><th>cosine</th><th>failure</th></tr>");
            foreach (var (kind, e) in new[] { ("isolated (fed the source's inputs)", f.Isolated), ("accumulated (fed its own inputs)", f.Accumulated) })
                sb.Append($"<tr class='{(e.Passed ? "passed" : "failed")}'><td>{E(f.Node)}</td><td>{E(f.OpType)}</td><td>{f.Index}</td><td>{E(f.Phase)}</td><td>{E(f.Platform)}</td><td class='s'>{kind}</td><td>{E(e.Metrics.Rule)}</td><td>{CaseSections.N(e.Metrics.BoundRatio)}</td><td>{N(e.Metrics.MaxRel)}</td><td>{N(e.Metrics.MaxAbs)}</td><td>{e.Metrics.Cosine.ToString("G6", CultureInfo.InvariantCulture)}</td><td class='why'>{E(e.Failure)}</td></tr>");
            sb.Append("</table>");
            if (mig.Repro is not null) sb.Append($"<p>reproduce the culprit alone: <code class='cmd'>{E(mig.Repro)}</code></p>");
            if (mig.Affected.Count > 0)
                sb.Append($"<p>affected (inherit the error, not blamed): {mig.Affected.Count} nodes, first {E(string.Join(", ", mig.Affected.Take(8).Select(a => $"{a.Node} ({a.OpType})")))}</p>");
        }
        if (mig.TargetError is not null) sb.Append($"<p class='why'>target error: {E(mig.TargetError)}</p>");
        sb.Append("<h3>Replayed cases that fail</h3>").Append(CaseSections.Failures(replay, opOf));

        // (3) per-op summary
        sb.Append("<h2 id='ops'>Per op type (replay)</h2>").Append(CaseSections.OpTable(replay, opOf));

        // (4) kept on the source
        sb.Append("<h2 id='kept'>Nodes kept on the source</h2>");
        if (mig.KeptOnSource.Count == 0) sb.Append($"<p>none: {E(mig.Target)} ran every node placed on it.</p>");
        else
        {
            sb.Append($"<p>{mig.KeptOnSource.Count} nodes the target cannot run ran on {E(mig.Source)} instead; they are never blamed.</p>");
            sb.Append("<table><tr><th>op</th><th>nodes</th><th>reason</th><th>examples</th></tr>");
            foreach (var g in mig.KeptOnSource.GroupBy(k => (k.OpType, Reason: k.ReasonWithoutNode)).OrderByDescending(g => g.Count()))
                sb.Append($"<tr><td>{E(g.Key.OpType)}</td><td>{g.Count()}</td><td class='why'>{E(g.Key.Reason)}</td><td>{E(string.Join(", ", g.Take(4).Select(k => k.Node)) + (g.Count() > 4 ? ", …" : ""))}</td></tr>");
            sb.Append("</table>");
        }

        // (5) error curve
        sb.Append("<h2 id='curve'>Error along the graph (migration)</h2>");
        sb.Append(mig.Records.Count == 0 ? "<p>no node outputs were compared.</p>"
            : "<p>isolated: the target kernel fed the source's inputs; accumulated: fed its own. The red bar marks the first wrong operator.</p>" + MigrationHtml.Curves(mig, width: 1000, height: 260));

        // (6) skipped
        sb.Append("<h2 id='skipped'>Skipped cases, by reason</h2>").Append(CaseSections.Skipped(replay, opOf));

        // (7) environment
        sb.Append("<h2 id='environment'>Environment</h2><table>");
        foreach (var p in env.Platforms)
        {
            sb.Append($"<tr><th>{E(p.Role)}</th><td><code>{E(p.Spec)}</code> — {E(p.Description)}");
            foreach (var d in p.Details) sb.Append($"<br>{E(d)}");
            sb.Append("</td></tr>");
        }
        sb.Append($"<tr><th>tapml</th><td>{E(env.TapmlVersion)}</td></tr><tr><th>OS</th><td>{E(env.Os)}, {env.Cores} cores</td></tr>");
        sb.Append($"<tr><th>.NET</th><td>{E(env.Dotnet)}</td></tr><tr><th>date</th><td>{env.Utc:yyyy-MM-dd HH:mm:ss} UTC</td></tr></table>");

        // (8) reproducers
        sb.Append("<h2 id='reproducers'>Reproducers</h2>");
        var repros = new List<(string What, string Cmd)>();
        if (mig.Repro is not null) repros.Add(($"culprit {mig.FirstDivergent?.Node}", mig.Repro));
        foreach (var c in CaseSections.Failing(replay).Where(c => c.Repro is not null)) repros.Add(($"case {c.Name} ({c.Status.ToString().ToLowerInvariant()})", c.Repro!));
        if (repros.Count == 0) sb.Append("<p>nothing to reproduce: nothing failed.</p>");
        else
        {
            sb.Append("<table><tr><th>what</th><th>command</th></tr>");
            foreach (var (what, cmd) in repros) sb.Append($"<tr><td>{E(what)}</td><td><code class='cmd'>{E(cmd)}</code></td></tr>");
            sb.Append("</table>");
        }
        sb.Append("</body></html>");
        return sb.ToString();
    }

    public static void Write(RunSummary replay, Func<CaseResult, string> opOf, MigrationResult mig, ReportEnvironment env, string path, string title)
    {
        File.WriteAllText(path + ".tmp", Build(replay, opOf, mig, env, title));
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
