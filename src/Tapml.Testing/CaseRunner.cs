using System.Diagnostics;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Testing;

/// <summary>One set of inputs and expected outputs of a test case.</summary>
public sealed record DataSet(string Label, Dictionary<string, Value> Inputs, List<(string Name, Value Value)> Expected);

/// <summary>The one engine behind <c>conformance</c> and <c>replay</c>: runs a case's model on a platform through the
/// <see cref="Executor"/>, compares every output with <see cref="Comparison"/>, and turns what happened into a
/// verdict (unsupported → skipped with the reason, a TapmlException → error with its message).</summary>
public static class CaseRunner
{
    /// <param name="load">Loads the model and its data sets (inside the verdict: a bad case is an error, not a crash).</param>
    /// <param name="magnitudes">For the accumulation rule: the magnitude of the terms of each output of a one-node model
    /// (see <see cref="Magnitudes"/>), asked for only when an output fails the bound with m = |expected|.</param>
    /// <param name="fallback">Where nodes <paramref name="platform"/> cannot run go (the executor's <see cref="Executor.Fallback"/>);
    /// the verdict then names them (<see cref="CaseResult.Fallback"/>). Null: unsupported skips the case.</param>
    public static CaseResult Run(string name, Func<(Model Model, IReadOnlyList<DataSet> Sets)> load, IPlatform platform, Tolerance tol, bool magnitudes = false,
        IPlatform? fallback = null)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            var (model, sets) = load();
            if (sets.Count == 0) return new CaseResult(name, CaseStatus.Error, "no data set: nothing to compare", null, sw.Elapsed.TotalSeconds);
            var outputs = new List<OutputComparison>();
            var kept = new List<FallbackRecord>();
            foreach (var set in sets)
            {
                if (set.Expected.Count == 0)
                    return new CaseResult(name, CaseStatus.Error, $"{set.Label} has no expected outputs: nothing to compare", null, sw.Elapsed.TotalSeconds);
                var exec = new Executor(platform) { PreferWholeGraph = true, CheckInputShapes = false, Fallback = fallback };
                var actual = exec.Run(model, set.Inputs);
                foreach (var f in exec.Fallbacks) if (!kept.Any(k => k.Node == f.Node && k.Depth == f.Depth)) kept.Add(f);
                Tensor?[]? mags = null;
                Func<Tensor?>? Magnitude(string output)
                {
                    if (!magnitudes || model.Graph.Nodes.Count != 1) return null;
                    var node = model.Graph.Nodes[0];
                    int o = Array.IndexOf(node.Outputs, output);
                    return o < 0 ? null : () => (mags ??= Magnitudes.Of(node, model.Opset(node.Domain),
                        node.Inputs.Select(i => i.Length == 0 ? null : set.Inputs.GetValueOrDefault(i) ?? (Value?)model.Graph.Initializers.GetValueOrDefault(i)).ToArray()))[o];
                }
                foreach (var (output, value) in set.Expected)
                    outputs.Add(Comparison.Compare(sets.Count > 1 ? $"{set.Label}/{output}" : output, value, actual.GetValueOrDefault(output), tol, Magnitude(output)));
            }
            var worst = outputs.FirstOrDefault(o => !o.Passed);
            var metrics = outputs.MaxBy(o => o.Metrics.BoundRatio ?? o.Metrics.MaxAbs)!.Metrics;
            string? onFallback = kept.Count == 0 ? null : FallbackMarker(fallback!.Name, kept);
            return worst is null
                ? new CaseResult(name, CaseStatus.Passed, null, metrics, sw.Elapsed.TotalSeconds) { Outputs = outputs, Fallback = onFallback }
                : new CaseResult(name, CaseStatus.Failed, $"output '{worst.Name}': {worst.Failure}", worst.Metrics, sw.Elapsed.TotalSeconds) { Outputs = outputs, Fallback = onFallback };
        }
        catch (UnsupportedException e)
        {
            return new CaseResult(name, CaseStatus.Skipped, e.Message, null, sw.Elapsed.TotalSeconds);
        }
        // NOTE: going over the memory budget or losing the platform ends the run (exit 2); it is not one case's verdict.
        catch (TapmlException e) when (!EndsRun(e))
        {
            return new CaseResult(name, CaseStatus.Error, e.Message, null, sw.Elapsed.TotalSeconds);
        }
        catch (Exception e) when (e is not OutOfMemoryException && !EndsRun(e))
        {
            return new CaseResult(name, CaseStatus.Error, TapmlException.Bounded($"{e.GetType().Name}: {e.Message}"), null, sw.Elapsed.TotalSeconds);
        }
    }

    /// <summary><c>cpu: Add ×2 — f64 tensors have no WGSL type …</c>: the op types that ran on the fallback, each with the
    /// first reason its platform gave (without the node's name).</summary>
    public static string FallbackMarker(string fallback, IReadOnlyCollection<FallbackRecord> kept) =>
        $"{fallback}: " + string.Join("; ", kept.GroupBy(k => k.OpType).Select(g => $"{g.Key} ×{g.Count()} — {WithoutNode(g.First().Reason)}"));

    /// <summary>A reason without the <c>node 'N' (Op) [input 'x'] on P: </c> prefix the platforms put on it.</summary>
    public static string WithoutNode(string reason) =>
        System.Text.RegularExpressions.Regex.Replace(reason, @"^node '[^']*' \([^)]*\)( input '[^']*')? on [^:]*: ", "");

    /// <summary>Quotes a command-line argument for a POSIX shell when it needs it.</summary>
    public static string Quote(string s) => s.Length > 0 && s.All(ch => char.IsLetterOrDigit(ch) || "/._-:=,+@".Contains(ch)) ? s : "'" + s.Replace("'", "'\\''") + "'";

    /// <summary>Errors that end a whole run instead of being one case's verdict: the memory budget ran out, or the
    /// platform was lost (a remote server died).</summary>
    public static bool EndsRun(Exception e) => ResourceBudget.IsOverrun(e) || e is PlatformLostException;
}
