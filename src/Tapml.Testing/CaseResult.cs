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
    /// <summary>The contract's last line: <c>N passed, N failed, N skipped</c> (errors count as failed).</summary>
    public string SummaryLine => $"{Passed} passed, {Failed + Errors} failed, {Skipped} skipped";
}
