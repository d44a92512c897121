namespace Tapml.Testing;

public enum CaseStatus { Passed, Failed, Skipped, Error }

/// <summary>Verdict of one test case (conformance case or carved case): passed, failed with the metric that
/// broke and the worst element, skipped with the reason (unsupported), or error with the message.</summary>
public sealed record CaseResult(string Name, CaseStatus Status, string? Reason, Metrics? Metrics, double Seconds)
{
    public List<OutputComparison> Outputs { get; init; } = new();
    /// <summary>The tolerance the case was judged with, where it is per case (replay).</summary>
    public Tolerance? Tolerance { get; init; }
    /// <summary>Command line that reproduces this case alone.</summary>
    public string? Repro { get; init; }
    /// <summary>Nodes that ran on the fallback platform instead, and why (<c>cpu: Add ×1 — f64 tensors have no WGSL
    /// type …</c>); null when every node ran on the platform under test.</summary>
    public string? Fallback { get; init; }
}

/// <summary>A run over many cases.</summary>
public sealed class RunSummary
{
    public required string Platform { get; init; }
    public List<CaseResult> Cases { get; } = new();
    public int Passed => Cases.Count(c => c.Status == CaseStatus.Passed);
    public int Failed => Cases.Count(c => c.Status == CaseStatus.Failed);
    public int Skipped => Cases.Count(c => c.Status == CaseStatus.Skipped);
    public int Errors => Cases.Count(c => c.Status == CaseStatus.Error);
    /// <summary>The platform nodes went to when the platform under test could not run them (<c>--fallback</c>), or null.</summary>
    public string? FallbackPlatform { get; init; }
    /// <summary>Passed cases some of whose nodes ran on <see cref="FallbackPlatform"/> (counted in <see cref="Passed"/> too).</summary>
    public int PassedOnFallback => Cases.Count(c => c.Status == CaseStatus.Passed && c.Fallback is not null);
    /// <summary>The contract's last line: <c>N passed, N failed, N skipped</c> (errors count as failed); with a fallback
    /// platform, then <c>(K passed with nodes on P)</c>.</summary>
    public string SummaryLine => $"{Passed} passed, {Failed + Errors} failed, {Skipped} skipped" +
        (FallbackPlatform is { } fb ? $" ({PassedOnFallback} passed with nodes on {fb})" : "");
}
