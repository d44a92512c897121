using System.Globalization;
using System.Net;
using System.Text;

namespace Tapml.Testing.Reports;

/// <summary>A self-contained HTML report of a case run (replay or conformance): the verdict, the failures first, the
/// per-op summary, a max-relative-error chart per op type against each case's tolerance, the skips by reason and the
/// case table with status and text filters. One file,
/// inline CSS/JS/SVG, nothing fetched from the network.</summary>
public static class HtmlReport
{
    /// <param name="opOf">Op type of a case (carved case names start with it).</param>
    public static string Build(RunSummary s, string title, Func<CaseResult, string> opOf)
    {
        static string E(string? x) => WebUtility.HtmlEncode(x ?? "");
        static string N(double? v) => v is double d ? d.ToString("G4", CultureInfo.InvariantCulture) : "";
        var sb = new StringBuilder();
        sb.Append("<!DOCTYPE html><html><head><meta charset='utf-8'><title>").Append(E(title)).Append("</title><style>").Append(Svg.Css).Append("</style></head><body>");
        bool bad = s.Failed + s.Errors > 0;
        sb.Append($"<h1>{E(title)}</h1><p id='verdict' class='banner {(bad ? "bad" : "ok")}'>{E(CaseSections.Verdict(s, opOf))}</p>");
        sb.Append($"<p id='summary'>platform <code>{E(s.Platform)}</code>: <b>{s.Passed}</b> passed, <b>{s.Failed}</b> failed, <b>{s.Errors}</b> errors, <b>{s.Skipped}</b> skipped</p>");
        if (bad) sb.Append("<h2 id='failures'>Failures</h2>").Append(CaseSections.Failures(s, opOf));
        sb.Append("<h2 id='ops'>Per op type</h2>").Append(CaseSections.OpTable(s, opOf));

        sb.Append("<h2>Error per op type</h2><div class='charts'>");
        foreach (var g in s.Cases.Where(c => c.Metrics is not null).GroupBy(opOf).OrderBy(g => g.Key, StringComparer.Ordinal))
        {
            var list = g.ToList();
            var pass = new List<(double, double, string)>(); var fail = new List<(double, double, string)>();
            for (int i = 0; i < list.Count; i++)
            {
                var c = list[i];
                (c.Status == CaseStatus.Passed ? pass : fail).Add((i, c.Metrics!.MaxRel, $"{c.Name}: max_rel {N(c.Metrics.MaxRel)}, max_abs {N(c.Metrics.MaxAbs)}"));
            }
            var tol = list.Select(c => c.Tolerance?.Rtol).OfType<double>().DefaultIfEmpty(0).Max();
            sb.Append(Svg.LogScatter($"{g.Key} ({list.Count} cases)", "case", "max rel error",
                [new Svg.Series("passed", "#2e7d32", pass), new Svg.Series("failed", "#c62828", fail)],
                tol > 0 ? [(tol, $"rtol {tol:G2}")] : null, width: 360, height: 200));
        }
        sb.Append("</div>");

        if (s.Skipped > 0) sb.Append("<h2 id='skipped'>Skipped, by reason</h2>").Append(CaseSections.Skipped(s, opOf));
        sb.Append("<h2>Cases</h2><div class='bar'>");
        foreach (var st in new[] { "passed", "failed", "error", "skipped" })
            sb.Append($"<label><input type='checkbox' class='st' value='{st}' checked> {st}</label> ");
        sb.Append("<input id='q' placeholder='filter by name, op or reason' size='40'> <span id='shown'></span></div>");
        sb.Append("<table id='cases'><thead><tr><th>case</th><th>op</th><th>status</th><th>max_abs</th><th>max_rel</th><th>cosine</th><th>nmse</th><th>tolerance</th><th>reason / worst element</th><th>reproduce</th></tr></thead><tbody>");
        foreach (var c in s.Cases)
        {
            string st = c.Status.ToString().ToLowerInvariant();
            var m = c.Metrics;
            sb.Append($"<tr class='{st}'><td>{E(c.Name)}</td><td>{E(opOf(c))}</td><td class='s'>{st}</td><td>{N(m?.MaxAbs)}</td><td>{N(m?.MaxRel)}</td><td>{N(m?.Cosine)}</td><td>{N(m?.Nmse)}</td>");
            sb.Append($"<td>{E(c.Tolerance?.ToString())}</td><td>{E(c.Reason)}</td><td>{(c.Repro is null ? "" : $"<code>{E(c.Repro)}</code>")}</td></tr>");
        }
        sb.Append("</tbody></table>");
        sb.Append("""
            <script>
            (function(){
              var rows=[].slice.call(document.querySelectorAll('#cases tbody tr'));
              var boxes=[].slice.call(document.querySelectorAll('input.st')); var q=document.getElementById('q');
              function apply(){
                var on={}; boxes.forEach(function(b){on[b.value]=b.checked;}); var t=q.value.toLowerCase(); var n=0;
                rows.forEach(function(r){var ok=on[r.className]&&(!t||r.textContent.toLowerCase().indexOf(t)>=0); r.style.display=ok?'':'none'; if(ok)n++;});
                document.getElementById('shown').textContent=n+' of '+rows.length+' shown';
              }
              boxes.forEach(function(b){b.addEventListener('change',apply);}); q.addEventListener('input',apply); apply();
            })();
            </script></body></html>
            """);
        return sb.ToString();
    }

    public static void Write(RunSummary s, string path, string title, Func<CaseResult, string> opOf)
    {
        File.WriteAllText(path + ".tmp", Build(s, title, opOf));
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
