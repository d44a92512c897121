using System.Globalization;
using System.Text;

namespace DGrab.Cli;

/// <summary>A curve of a panel: mean values per x, with an optional ±std band.</summary>
public sealed record Series(string Label, double[] X, double[] Mean, double[]? Std = null);

/// <summary>One chart of a figure.</summary>
public sealed record Panel(string Title, string XLabel, string YLabel, IReadOnlyList<Series> Series, bool LogY = false);

/// <summary>Small self-contained SVG line charts (a grid of panels sharing one legend): what dgrab's --plot writes.</summary>
public static class Svg
{
    static readonly string[] Colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    const int W = 360, H = 260, ML = 62, MR = 14, MT = 30, MB = 44;

    /// <param name="palette">labels in color order: a label keeps its color in every figure, whichever others it has
    /// (labels not listed follow them).</param>
    public static string Figure(string title, IReadOnlyList<Panel> panels, int columns, IReadOnlyList<string>? palette = null)
    {
        columns = Math.Max(1, Math.Min(columns, panels.Count));
        int rows = (panels.Count + columns - 1) / columns;
        var present = panels.SelectMany(p => p.Series.Select(s => s.Label)).Distinct().ToList();
        var labels = (palette ?? []).Concat(present).Distinct().ToList();
        int width = Math.Max(columns * W, Math.Max(40 + present.Count * 150, 40 + title.Length * 8)), height = rows * H + 60;
        var sb = new StringBuilder();
        sb.Append($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"11\">\n");
        sb.Append($"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>\n");
        sb.Append($"<text x=\"{width / 2}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">{Esc(title)}</text>\n");
        int slot = 0;
        foreach (var label in labels.Where(present.Contains))
        {
            int x = 20 + slot++ * 150;
            sb.Append($"<line x1=\"{x}\" y1=\"36\" x2=\"{x + 22}\" y2=\"36\" stroke=\"{Colors[labels.IndexOf(label) % Colors.Length]}\" stroke-width=\"2.5\"/>");
            sb.Append($"<text x=\"{x + 27}\" y=\"40\">{Esc(label)}</text>\n");
        }
        for (int k = 0; k < panels.Count; k++)
            DrawPanel(sb, panels[k], (k % columns) * W, 50 + (k / columns) * H, labels);
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    static void DrawPanel(StringBuilder sb, Panel p, int ox, int oy, List<string> labels)
    {
        var pts = p.Series.SelectMany(s => s.X.Select((x, i) => (x, lo: s.Mean[i] - (s.Std?[i] ?? 0), hi: s.Mean[i] + (s.Std?[i] ?? 0)))).ToList();
        if (pts.Count == 0) return;
        double x0 = pts.Min(t => t.x), x1 = pts.Max(t => t.x);
        double Tf(double y) => p.LogY ? Math.Log10(Math.Max(y, 1e-12)) : y;
        double y0 = pts.Min(t => Tf(p.LogY ? Math.Max(t.lo, pts.Where(q => q.lo > 0).Select(q => q.lo).DefaultIfEmpty(1e-3).Min()) : t.lo));
        double y1 = pts.Max(t => Tf(t.hi));
        if (p.LogY) { y0 = Math.Floor(y0); y1 = Math.Ceiling(y1); }
        else { double pad = (y1 - y0) * 0.05 + 1e-12; y0 -= pad; y1 += pad; }
        if (x1 == x0) x1 = x0 + 1;
        if (y1 == y0) y1 = y0 + 1;
        int pw = W - ML - MR, ph = H - MT - MB;
        string X(double x) => F(ox + ML + (x - x0) / (x1 - x0) * pw);
        string Y(double y) => F(oy + MT + ph - (Tf(y) - y0) / (y1 - y0) * ph);
        string Yt(double t) => F(oy + MT + ph - (t - y0) / (y1 - y0) * ph);
        sb.Append($"<text x=\"{ox + ML + pw / 2}\" y=\"{oy + MT - 10}\" text-anchor=\"middle\" font-size=\"12\">{Esc(p.Title)}</text>\n");
        sb.Append($"<rect x=\"{ox + ML}\" y=\"{oy + MT}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n");
        foreach (double t in Ticks(y0, y1, p.LogY))
        {
            string label = p.LogY ? $"1e{t:0}" : t.ToString("G4", CultureInfo.InvariantCulture);
            sb.Append($"<line x1=\"{ox + ML}\" y1=\"{Yt(t)}\" x2=\"{ox + ML + pw}\" y2=\"{Yt(t)}\" stroke=\"#ddd\"/>");
            sb.Append($"<text x=\"{ox + ML - 4}\" y=\"{Yt(t)}\" text-anchor=\"end\" dominant-baseline=\"middle\">{label}</text>\n");
        }
        foreach (double t in Ticks(x0, x1, false))
            sb.Append($"<text x=\"{X(t)}\" y=\"{oy + MT + ph + 14}\" text-anchor=\"middle\">{t.ToString("G4", CultureInfo.InvariantCulture)}</text>\n");
        sb.Append($"<text x=\"{ox + ML + pw / 2}\" y=\"{oy + H - 12}\" text-anchor=\"middle\">{Esc(p.XLabel)}</text>\n");
        sb.Append($"<text transform=\"translate({ox + 14},{oy + MT + ph / 2}) rotate(-90)\" text-anchor=\"middle\">{Esc(p.YLabel)}</text>\n");
        foreach (var s in p.Series)
        {
            string color = Colors[labels.IndexOf(s.Label) % Colors.Length];
            if (s.Std is { } std)
            {
                var upper = s.X.Select((x, i) => $"{X(x)},{Y(s.Mean[i] + std[i])}");
                var lower = s.X.Select((x, i) => $"{X(x)},{Y(Math.Max(s.Mean[i] - std[i], p.LogY ? Math.Pow(10, y0) : double.MinValue))}").Reverse();
                sb.Append($"<polygon points=\"{string.Join(' ', upper.Concat(lower))}\" fill=\"{color}\" fill-opacity=\"0.18\" stroke=\"none\"/>\n");
            }
            sb.Append($"<polyline points=\"{string.Join(' ', s.X.Select((x, i) => $"{X(x)},{Y(s.Mean[i])}"))}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\"/>\n");
        }
    }

    static IEnumerable<double> Ticks(double lo, double hi, bool log)
    {
        if (log)
        {
            for (double t = Math.Ceiling(lo); t <= hi + 1e-9; t++) yield return t;
            yield break;
        }
        double span = hi - lo, raw = span / 5, mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
        double step = new[] { 1, 2, 5, 10 }.Select(f => f * mag).First(s => s >= raw);
        for (double t = Math.Ceiling(lo / step) * step; t <= hi + 1e-9 * span; t += step) yield return Math.Round(t / step) * step;
    }

    static string F(double v) => v.ToString("0.#", CultureInfo.InvariantCulture);
    static string Esc(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");
}
