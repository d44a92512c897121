using System.Text.Json;
using System.Text.Json.Nodes;

namespace Tapml.Testing.Reports;

/// <summary>JSON report per DESIGN.md: {"platform","passed","failed","skipped","errors","cases":[{"name","status",
/// "reason","metrics":{"max_abs","max_rel","cosine","nmse",…}}]}.</summary>
public static class JsonReport
{
    public static JsonObject Build(RunSummary s)
    {
        var cases = new JsonArray();
        foreach (var c in s.Cases) cases.Add(Case(c));
        var o = new JsonObject
        {
            ["platform"] = s.Platform,
            ["passed"] = s.Passed,
            ["failed"] = s.Failed,
            ["skipped"] = s.Skipped,
            ["errors"] = s.Errors,
        };
        if (s.FallbackPlatform is { } fb) { o["fallback"] = fb; o["passed_with_fallback"] = s.PassedOnFallback; }
        o["cases"] = cases;
        return o;
    }

    /// <summary>One case as the report's <c>cases[]</c> holds it.</summary>
    public static JsonObject Case(CaseResult c)
    {
        var o = new JsonObject
        {
            ["name"] = c.Name,
            ["status"] = c.Status.ToString().ToLowerInvariant(),
            ["reason"] = c.Reason,
            ["seconds"] = Math.Round(c.Seconds, 4),
        };
        if (c.Metrics is { } m) o["metrics"] = Metrics(m);
        if (c.Tolerance is { } t) o["tolerance"] = t.ToString();
        if (c.Repro is { } r) o["repro"] = r;
        if (c.Fallback is { } f) o["fallback"] = f;
        return o;
    }

    /// <summary>A case back from <see cref="Case"/>'s JSON (a resumed run's earlier verdicts); the tolerance stays text.</summary>
    public static CaseResult ReadCase(JsonObject o)
    {
        Metrics? m = o["metrics"] is JsonObject j ? ReadMetrics(j) : null;
        var status = Enum.Parse<CaseStatus>((string)o["status"]!, ignoreCase: true);
        return new CaseResult((string)o["name"]!, status, (string?)o["reason"], m, D(o["seconds"], 0)) { Repro = (string?)o["repro"], Fallback = (string?)o["fallback"] };
    }

    static double D(JsonNode? n, double dflt = double.NaN) => n is null ? dflt : (double)n;

    /// <summary>Metrics back from <see cref="Metrics(Metrics)"/>'s JSON (values JSON cannot hold come back as NaN).</summary>
    public static Metrics ReadMetrics(JsonObject j) => new()
    {
        MaxAbs = D(j["max_abs"]), MaxRel = D(j["max_rel"]), MeanAbs = D(j["mean_abs"]), Cosine = D(j["cosine"]), Nmse = D(j["nmse"]),
        NanInfMismatches = (long?)j["nan_inf_mismatches"] ?? 0, Elements = (long?)j["elements"] ?? 0,
        Agreement = (double?)j["agreement"], Rule = (string?)j["rule"], BoundRatio = (double?)j["bound_ratio"],
    };

    public static JsonObject Metrics(Metrics m)
    {
        var o = new JsonObject
        {
            ["max_abs"] = Num(m.MaxAbs),
            ["max_rel"] = Num(m.MaxRel),
            ["mean_abs"] = Num(m.MeanAbs),
            ["cosine"] = Num(m.Cosine),
            ["nmse"] = Num(m.Nmse),
            ["nan_inf_mismatches"] = m.NanInfMismatches,
            ["elements"] = m.Elements,
        };
        if (m.Agreement is { } a) o["agreement"] = Num(a);
        if (m.Rule is { } rule) o["rule"] = rule;
        if (m.BoundRatio is { } r) o["bound_ratio"] = Num(r);
        return o;
    }

    /// <summary>JSON has no NaN/Infinity: those become null.</summary>
    static JsonNode? Num(double v) => double.IsFinite(v) ? JsonValue.Create(v) : null;

    public static void Write(RunSummary s, string path) => WriteAtomic(path, Build(s).ToJsonString(Options));

    public static readonly JsonSerializerOptions Options = new() { WriteIndented = true };

    public static void WriteAtomic(string path, string text)
    {
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir != null) Directory.CreateDirectory(dir);
        string tmp = path + ".tmp";
        File.WriteAllText(tmp, text);
        File.Move(tmp, path, overwrite: true);
    }
}
