using System.Xml.Linq;

namespace Tapml.Testing.Reports;

/// <summary>JUnit XML (one testsuite, one testcase per case) for CI dashboards.</summary>
public static class JUnitReport
{
    /// <summary>XML 1.0 cannot hold most control characters; reasons may quote raw data or native messages.</summary>
    static string Clean(string? s) => new((s ?? "").Select(ch => ch is '\t' or '\n' or '\r' || ch >= ' ' && !char.IsSurrogate(ch) && ch != '\uFFFE' && ch != '\uFFFF' ? ch : '?').ToArray());

    public static void Write(RunSummary s, string path, string suiteName)
    {
        var suite = new XElement("testsuite",
            new XAttribute("name", suiteName),
            new XAttribute("tests", s.Cases.Count),
            new XAttribute("failures", s.Failed),
            new XAttribute("errors", s.Errors),
            new XAttribute("skipped", s.Skipped),
            new XAttribute("time", s.Cases.Sum(c => c.Seconds).ToString("F3", System.Globalization.CultureInfo.InvariantCulture)));
        foreach (var c in s.Cases)
        {
            var tc = new XElement("testcase", new XAttribute("classname", $"{suiteName}.{s.Platform}"), new XAttribute("name", Clean(c.Name)),
                new XAttribute("time", c.Seconds.ToString("F4", System.Globalization.CultureInfo.InvariantCulture)));
            string msg = Clean(c.Reason);
            if (c.Repro != null) msg += $"\nreproduce: {c.Repro}";
            switch (c.Status)
            {
                case CaseStatus.Failed: tc.Add(new XElement("failure", new XAttribute("message", Clean(c.Reason)), msg)); break;
                case CaseStatus.Error: tc.Add(new XElement("error", new XAttribute("message", Clean(c.Reason)), msg)); break;
                case CaseStatus.Skipped: tc.Add(new XElement("skipped", new XAttribute("message", Clean(c.Reason)))); break;
            }
            suite.Add(tc);
        }
        var doc = new XDocument(new XElement("testsuites", suite));
        JsonReport.WriteAtomic(path, doc.ToString());
    }
}
