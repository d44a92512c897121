using Tapml.Ir.Onnx;
using Tapml.Platforms;

namespace Tapml.Testing.Conformance;

/// <summary>Runs ONNX backend-test cases on one platform: the backend-test loader over <see cref="CaseRunner"/>
/// (the engine <c>replay</c> shares).</summary>
/// <param name="fallback">Where nodes the platform cannot run go (<c>--fallback</c>), or null: such a case is skipped.</param>
public sealed class ConformanceRunner(IPlatform platform, Tolerance tolerance, IPlatform? fallback = null)
{
    public CaseResult Run(OnnxCase c)
    {
        var r = CaseRunner.Run(c.Name, () =>
        {
            var model = OnnxImporter.Load(c.ModelPath);
            var sets = c.DataSets.Select(set =>
            {
                var (inputs, expected) = OnnxCase.LoadDataSet(model, set);
                return new DataSet(Path.GetFileName(set), inputs, expected);
            }).ToList();
            if (sets.Count == 0) throw new Core.TapmlException($"{c.Dir} has no test_data_set_* folder");
            return (model, sets);
        }, platform, tolerance, fallback: fallback);
        return r.Status is CaseStatus.Failed or CaseStatus.Error
            ? r with { Repro = $"./tapml conformance {CaseRunner.Quote(c.Dir)} --platform {CaseRunner.Quote(platform.Name)} --rtol {tolerance.Rtol:G6} --atol {tolerance.Atol:G6}{(fallback is null ? "" : $" --fallback {CaseRunner.Quote(fallback.Name)}")}" }
            : r;
    }
}
