using System.Globalization;
using System.Net;
using System.Text;

namespace Tapml.Testing.Reports;

/// <summary>Small inline-SVG charts for the self-contained HTML reports (no scripts, no network).</summary>
public static class Svg
{
    /// <summary>One series of points for <see cref="LogScatter"/>.</summary>
    public sealed record Series(string Label, string Color, IReadOnlyList<(double X, double Y, string Tip)> Points, bool Line = false);

    static string F(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);

    /// <summary>A scatter (or line) chart with a log10 y axis; y ≤ 0 is drawn at the floor. Optional horizontal
    /// reference lines (e.g. tolerances) and a marked x (e.g. the culprit node). The title has the first row, the
    /// legend its own row below it (never over the title, however long), the plot starts under both.</summary>
    public static string LogScatter(string title, string xLabel, string yLabel, IReadOnlyList<Series> series,
        IReadOnlyList<(double Y, string Label)>? hlines = null, double? markX = null, int width = 720, int height = 220)
    {
        const double floor = 1e-12;
        var all = series.SelectMany(s => s.Points).ToList();
        double xMin = all.Count == 0 ? 0 : all.Min(p => p.X), xMax = all.Count == 0 ? 1 : all.Max(p => p.X);
        if (xMax <= xMin) xMax = xMin + 1;
        var ys = all.Select(p => p.Y).Concat(hlines?.Select(h => h.Y) ?? []).Where(y => y > 0 && double.IsFinite(y)).ToList();
        double lo = Math.Floor(Math.Log10(ys.Count == 0 ? 0.1 : Math.Max(ys.Min(), floor))), hi = Math.Ceiling(Math.Log10(ys.Count == 0 ? 1 : ys.Max()));
        if (hi <= lo) hi = lo + 1;
        // NOTE: exact zeros (common: a node that agrees bit for bit) get their own bottom decade labelled 0, so they
        // do not read as errors of the smallest nonzero size.
        bool zeros = all.Any(p => p.Y <= 0);
        if (zeros) lo -= 1;
        int l = 60, r = 10, t = 42, b = 34;
        double W = width - l - r, H = height - t - b;
        double X(double x) => l + (x - xMin) / (xMax - xMin) * W;
        double Y(double y) => t + H - (Math.Log10(Math.Max(double.IsFinite(y) ? y : Math.Pow(10, hi), Math.Pow(10, lo))) - lo) / (hi - lo) * H;
        var sb = new StringBuilder();
        sb.Append($"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' class='chart'>");
        sb.Append($"<text x='{l}' y='15' class='t'>{WebUtility.HtmlEncode(title)}</text>");
        for (double e = lo; e <= hi; e++)
            sb.Append($"<line x1='{l}' x2='{l + W}' y1='{F(Y(Math.Pow(10, e)))}' y2='{F(Y(Math.Pow(10, e)))}' class='g'/><text x='{l - 4}' y='{F(Y(Math.Pow(10, e)) + 4)}' class='a' text-anchor='end'>{(zeros && e == lo ? "0" : $"1e{e}")}</text>");
        sb.Append($"<text x='{l + W / 2}' y='{height - 4}' class='a' text-anchor='middle'>{WebUtility.HtmlEncode(xLabel)}</text>");
        sb.Append($"<text x='12' y='{t + H / 2}' class='a' transform='rotate(-90 12 {t + H / 2})' text-anchor='middle'>{WebUtility.HtmlEncode(yLabel)}</text>");
        foreach (var (y, label) in hlines ?? [])
            sb.Append($"<line x1='{l}' x2='{l + W}' y1='{F(Y(y))}' y2='{F(Y(y))}' class='h'/><text x='{l + W - 2}' y='{F(Y(y) - 3)}' class='a' text-anchor='end'>{WebUtility.HtmlEncode(label)}</text>");
        if (markX is double mx)
            sb.Append($"<line x1='{F(X(mx))}' x2='{F(X(mx))}' y1='{t}' y2='{t + H}' class='m'/>");
        int legendX = l;
        foreach (var s in series)
        {
            if (s.Line && s.Points.Count > 1)
                sb.Append($"<polyline fill='none' stroke='{s.Color}' stroke-width='1.2' points='{string.Join(" ", s.Points.Select(p => $"{F(X(p.X))},{F(Y(p.Y))}"))}'/>");
            foreach (var p in s.Points)
                sb.Append($"<circle cx='{F(X(p.X))}' cy='{F(Y(p.Y))}' r='2.5' fill='{s.Color}'><title>{WebUtility.HtmlEncode(p.Tip)}</title></circle>");
            sb.Append($"<circle cx='{legendX + 4}' cy='29' r='4' fill='{s.Color}'/><text x='{legendX + 11}' y='33' class='a'>{WebUtility.HtmlEncode(s.Label)}</text>");
            legendX += 24 + 7 * s.Label.Length;
        }
        sb.Append("</svg>");
        return sb.ToString();
    }

    /// <summary>CSS for the charts and report tables.</summary>
    public const string Css = """
        body{font:14px system-ui,sans-serif;margin:20px;color:#222}
        table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:3px 6px;text-align:left;vertical-align:top}
        th{background:#f4f4f4;position:sticky;top:0}tr.passed td.s{color:#196c2e}tr.failed td.s,tr.error td.s{color:#b3261e;font-weight:600}tr.skipped td.s{color:#8a6d00}
        code{font-size:12px;background:#f6f6f6;padding:1px 3px}.chart .t{font-weight:600;font-size:13px}.chart .a{font-size:11px;fill:#555}
        .chart .g{stroke:#eee}.chart .h{stroke:#b3261e;stroke-dasharray:4 3}.chart .m{stroke:#b3261e;stroke-width:2}
        .bar{margin:10px 0}.charts{display:flex;flex-wrap:wrap;gap:8px}
        .banner{font-size:17px;padding:10px 14px;border-radius:4px;margin:10px 0}.banner.ok{background:#e6f4ea;border-left:6px solid #2e7d32}
        .banner.bad{background:#fdecea;border-left:6px solid #c62828}.banner small{display:block;font-size:13px;color:#444;margin-top:4px}
        td.why{max-width:520px}code.cmd{user-select:all;word-break:break-all}h2{margin-top:28px;border-bottom:1px solid #ddd}
        """;
}
