using System.Text.Json.Nodes;
using Tapml.Platforms.Execution;
using Tapml.Testing.Reports;

namespace Tapml.Testing.Migration;

/// <summary>Error of one node output set: worst metrics over its outputs, whether they pass, and why not.</summary>
public sealed record NodeError(Metrics Metrics, bool Passed, string? Failure)
{
    public JsonObject ToJson()
    {
        var o = JsonReport.Metrics(Metrics);
        o["passed"] = Passed;
        if (Failure is not null) o["failure"] = Failure;
        return o;
    }
}

/// <summary>One compared node of a migration run: its place in the topological order, the phase (run, prefill,
/// decode:k), the platform it ran on, and its isolated (fed the source's inputs) and accumulated (fed the target's
/// own inputs) error.</summary>
public sealed record NodeRecord(int Index, string Node, string OpType, string Phase, string Platform, NodeError Isolated, NodeError Accumulated);

/// <summary>One stage of the by-kind strategy: the op types on the target so far and whether the outputs diverged.</summary>
public sealed record StageRecord(int Stage, string OpType, int NodesOnTarget, bool Diverged, string? Detail);

/// <summary>What a migration found. <see cref="FirstDivergent"/> is the culprit (the first node whose isolated
/// error fails), null when nothing diverged; <see cref="Affected"/> lists nodes that fail only accumulated (victims).</summary>
public sealed class MigrationResult
{
    public required string Strategy { get; init; }
    public required string Source { get; init; }
    public required string Target { get; init; }
    public required int Nodes { get; init; }
    public NodeRecord? FirstDivergent { get; set; }
    public List<NodeRecord> Affected { get; } = new();
    public List<NodeRecord> Records { get; } = new();
    public List<StageRecord> Stages { get; } = new();
    /// <summary>Whole runs of the model (an LLM run covers the prefill and every decode step).</summary>
    public int Runs { get; set; }
    /// <summary>Runs over a prefix of the graph (bisect: the culprit's source inputs for its isolated error).</summary>
    public int PartialRuns { get; set; }
    /// <summary>Whole runs and lockstep phases taken from a resumed migration's journal instead of run again.</summary>
    public int Resumed { get; set; }
    public long BytesMoved { get; set; }
    public long Transfers { get; set; }
    public long PeakMemoryBytes { get; set; }
    /// <summary>Bytes all intermediates of one run would take if kept (what mark-all-outputs tools hold).</summary>
    public long AllIntermediatesBytes { get; set; }
    public double Seconds { get; set; }
    /// <summary>An error the target raised during the run (after the culprit, or instead of a comparison).</summary>
    public string? TargetError { get; set; }
    /// <summary>The culprit as an ONNX backend-test case and the command that reproduces it alone.</summary>
    public string? ReproCase { get; set; }
    public string? Repro { get; set; }
    /// <summary>Nodes placed on the target that it cannot run (no kernel, dtype, limit), kept on the source, with the
    /// target's reason; never blamed.</summary>
    public List<FallbackRecord> KeptOnSource { get; } = new();

    /// <summary>Adds the nodes an executor ran on its fallback (each node once, top-level nodes by index).</summary>
    public void Keep(IEnumerable<FallbackRecord> fallbacks)
    {
        foreach (var f in fallbacks)
            if (!KeptOnSource.Any(k => k.Node == f.Node && k.Depth == f.Depth)) KeptOnSource.Add(f);
        KeptOnSource.Sort((a, b) => a.Depth != b.Depth ? a.Depth.CompareTo(b.Depth) : a.Index.CompareTo(b.Index));
    }

    public JsonObject ToJson()
    {
        JsonObject Rec(NodeRecord r) => new()
        {
            ["node"] = r.Node, ["op_type"] = r.OpType, ["index"] = r.Index, ["phase"] = r.Phase, ["platform"] = r.Platform,
            ["isolated"] = r.Isolated.ToJson(), ["accumulated"] = r.Accumulated.ToJson(),
        };
        return new JsonObject
        {
            ["strategy"] = Strategy,
            ["source"] = Source,
            ["target"] = Target,
            ["first_divergent"] = FirstDivergent is null ? null : Rec(FirstDivergent),
            ["affected"] = new JsonArray(Affected.Select(r => (JsonNode)Rec(r)).ToArray()),
            ["runs"] = Runs,
            ["partial_runs"] = PartialRuns,
            ["resumed"] = Resumed,
            ["nodes"] = Nodes,
            ["bytes_moved"] = BytesMoved,
            ["transfers"] = Transfers,
            ["peak_memory_bytes"] = PeakMemoryBytes,
            ["all_intermediates_bytes"] = AllIntermediatesBytes,
            ["seconds"] = Math.Round(Seconds, 3),
            ["target_error"] = TargetError,
            ["repro_case"] = ReproCase,
            ["repro"] = Repro,
            ["kept_on_source"] = new JsonArray(KeptOnSource.Select(k => (JsonNode)new JsonObject
            {
                ["node"] = k.Node, ["op_type"] = k.OpType, ["index"] = k.Index, ["depth"] = k.Depth, ["reason"] = k.Reason,
            }).ToArray()),
            ["stages"] = new JsonArray(Stages.Select(s => (JsonNode)new JsonObject
            {
                ["stage"] = s.Stage, ["op_type"] = s.OpType, ["nodes_on_target"] = s.NodesOnTarget, ["diverged"] = s.Diverged, ["detail"] = s.Detail,
            }).ToArray()),
            ["records"] = new JsonArray(Records.Select(r => (JsonNode)Rec(r)).ToArray()),
        };
    }
}
