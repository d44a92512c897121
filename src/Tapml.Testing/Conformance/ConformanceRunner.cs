using System.Diagnostics;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Testing.Conformance;

/// <summary>Runs ONNX backend-test cases on one platform through the <see cref="Executor"/> and compares
/// with <see cref="Comparison"/>.</summary>
public sealed class ConformanceRunner(IPlatform platform, Tolerance tolerance)
{
    public CaseResult Run(OnnxCase c)
    {
        var r = RunCase(c);
        return r.Status is CaseStatus.Failed or CaseStatus.Error
            ? r with { Repro = $"./tapml conformance {Quote(c.Dir)} --platform {Quote(platform.Name)} --rtol {tolerance.Rtol:G6} --atol {tolerance.Atol:G6}" }
            : r;
    }

    static string Quote(string s) => s.All(ch => char.IsLetterOrDigit(ch) || "/._-:=".Contains(ch)) ? s : "'" + s.Replace("'", "'\\''") + "'";

    CaseResult RunCase(OnnxCase c)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            var model = OnnxImporter.Load(c.ModelPath);
            var sets = c.DataSets;
            if (sets.Count == 0) return new CaseResult(c.Name, CaseStatus.Error, $"{c.Dir} has no test_data_set_* folder", null, sw.Elapsed.TotalSeconds);
            var outputs = new List<OutputComparison>();
            foreach (var set in sets)
            {
                var (inputs, expected) = OnnxCase.LoadDataSet(model, set);
                if (expected.Count == 0)
                    return new CaseResult(c.Name, CaseStatus.Error, $"{set} has no output_*.pb: nothing to compare", null, sw.Elapsed.TotalSeconds);
                var exec = new Executor(platform) { PreferWholeGraph = true, CheckInputShapes = false };
                var actual = exec.Run(model, inputs);
                foreach (var (name, value) in expected)
                    outputs.Add(Comparison.Compare(sets.Count > 1 ? $"{Path.GetFileName(set)}/{name}" : name, value, actual.GetValueOrDefault(name), tolerance));
            }
            var worst = outputs.Where(o => !o.Passed).FirstOrDefault();
            var metrics = outputs.Count == 0 ? null : outputs.MaxBy(o => o.Metrics.MaxAbs)!.Metrics;
            return worst is null
                ? new CaseResult(c.Name, CaseStatus.Passed, null, metrics, sw.Elapsed.TotalSeconds) { Outputs = outputs }
                : new CaseResult(c.Name, CaseStatus.Failed, $"output '{worst.Name}': {worst.Failure}", worst.Metrics, sw.Elapsed.TotalSeconds) { Outputs = outputs };
        }
        catch (UnsupportedException e)
        {
            return new CaseResult(c.Name, CaseStatus.Skipped, e.Message, null, sw.Elapsed.TotalSeconds);
        }
        catch (TapmlException e)
        {
            return new CaseResult(c.Name, CaseStatus.Error, e.Message, null, sw.Elapsed.TotalSeconds);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return new CaseResult(c.Name, CaseStatus.Error, $"{e.GetType().Name}: {e.Message}", null, sw.Elapsed.TotalSeconds);
        }
    }
}
