using System.Globalization;
using System.Net;
using System.Text;
using Tapml.Testing.Reports;

namespace Tapml.Testing.Migration;

/// <summary>Self-contained HTML of a migration: verdict, the per-node error curve along the graph (isolated and
/// accumulated max relative error, culprit marked), by-kind stages and the node table.</summary>
public static class MigrationHtml
{
    public static string Build(MigrationResult r, string title)
    {
        static string E(string? x) => WebUtility.HtmlEncode(x ?? "");
        static string N(double v) => v.ToString("G4", CultureInfo.InvariantCulture);
        var sb = new StringBuilder();
        sb.Append("<!DOCTYPE html><html><head><meta charset='utf-8'><title>").Append(E(title)).Append("</title><style>").Append(Svg.Css).Append("</style></head><body>");
        sb.Append($"<h1>{E(title)}</h1><p>strategy <b>{E(r.Strategy)}</b>, source <code>{E(r.Source)}</code>, target <code>{E(r.Target)}</code>: {r.Nodes} nodes, {r.Runs} runs, {r.PartialRuns} partial runs, {r.Transfers} transfers ({r.BytesMoved:N0} bytes), peak {r.PeakMemoryBytes:N0} bytes, {r.Seconds:F2} s</p>");
        if (r.FirstDivergent is { } f)
        {
            sb.Append($"<p id='verdict'>first divergent node: <b>{E(f.Node)}</b> ({E(f.OpType)}, index {f.Index}, {E(f.Phase)}) — isolated max_rel {N(f.Isolated.Metrics.MaxRel)}, accumulated max_rel {N(f.Accumulated.Metrics.MaxRel)}<br>{E(f.Isolated.Failure ?? f.Accumulated.Failure)}</p>");
            if (r.Repro is not null) sb.Append($"<p>reproduce: <code>{E(r.Repro)}</code></p>");
        }
        else sb.Append("<p id='verdict'>no divergence: every compared output agrees within tolerance</p>");
        if (r.TargetError is not null) sb.Append($"<p>target error: {E(r.TargetError)}</p>");
        sb.Append(Curves(r));
        if (r.Stages.Count > 0)
        {
            sb.Append("<h2>Stages</h2><table><tr><th>stage</th><th>op type moved</th><th>nodes on target</th><th>diverged</th><th>detail</th></tr>");
            foreach (var s in r.Stages) sb.Append($"<tr><td>{s.Stage}</td><td>{E(s.OpType)}</td><td>{s.NodesOnTarget}</td><td>{(s.Diverged ? "yes" : "no")}</td><td>{E(s.Detail)}</td></tr>");
            sb.Append("</table>");
        }
        sb.Append("<h2>Nodes</h2><table id='nodes'><tr><th>index</th><th>phase</th><th>node</th><th>op</th><th>platform</th><th>isolated max_rel</th><th>accumulated max_rel</th><th>verdict</th></tr>");
        foreach (var x in r.Records)
        {
            string v = !x.Isolated.Passed ? "culprit" : !x.Accumulated.Passed ? "affected" : "ok";
            sb.Append($"<tr class='{(v == "ok" ? "passed" : "failed")}'><td>{x.Index}</td><td>{E(x.Phase)}</td><td>{E(x.Node)}</td><td>{E(x.OpType)}</td><td>{E(x.Platform)}</td><td>{N(x.Isolated.Metrics.MaxRel)}</td><td>{N(x.Accumulated.Metrics.MaxRel)}</td><td class='s'>{v}</td></tr>");
        }
        sb.Append("</table></body></html>");
        return sb.ToString();
    }

    /// <summary>The per-node error curve along the graph, one chart per phase: isolated and accumulated max relative
    /// error by node index, the culprit's index marked (migrate.html and the debug report draw the same charts).</summary>
    public static string Curves(MigrationResult r, int width = 900, int height = 260)
    {
        static string N(double v) => v.ToString("G4", CultureInfo.InvariantCulture);
        var sb = new StringBuilder();
        foreach (var phase in r.Records.Select(x => x.Phase).Distinct())
        {
            var recs = r.Records.Where(x => x.Phase == phase).ToList();
            double? mark = r.FirstDivergent is { } c && c.Phase == phase ? c.Index : null;
            sb.Append(Svg.LogScatter($"error along the graph ({phase})", "node index (topological order)", "max rel error",
            [
                new Svg.Series("accumulated", "#1565c0", recs.Select(x => ((double)x.Index, x.Accumulated.Metrics.MaxRel, $"{x.Node} ({x.OpType}) accumulated {N(x.Accumulated.Metrics.MaxRel)}")).ToList(), Line: true),
                new Svg.Series("isolated", "#c62828", recs.Select(x => ((double)x.Index, x.Isolated.Metrics.MaxRel, $"{x.Node} ({x.OpType}) isolated {N(x.Isolated.Metrics.MaxRel)}")).ToList()),
            ], markX: mark, width: width, height: height));
        }
        return sb.ToString();
    }

    public static void Write(MigrationResult r, string path, string title)
    {
        File.WriteAllText(path + ".tmp", Build(r, title));
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
