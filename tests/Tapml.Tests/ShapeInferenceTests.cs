using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Testing.Conformance;
using Xunit;

namespace Tapml.Tests;

/// <summary>Static inference must agree with what the reference actually computes: for every ONNX case the cpu
/// runs, each graph output whose type inference fully determined must match the real output.</summary>
public class ShapeInferenceTests
{
    [Theory]
    [InlineData("onnx/node")]
    [InlineData("onnx/pytorch-converted")]
    [InlineData("onnx/pytorch-operator")]
    [InlineData("onnx/light-cases")]
    [InlineData("hf-onnx")]
    public void Inferred_output_types_match_the_cpu_run(string folder)
    {
        var cpu = new CpuPlatform();
        int checkedOutputs = 0;
        var wrong = new List<string>();
        foreach (var c in OnnxCase.Discover([SharedData.Require("conformance", folder)]))
        {
            Model m;
            Dictionary<string, Value> inputs;
            try { m = OnnxImporter.Load(c.ModelPath); (inputs, _) = OnnxCase.LoadDataSet(m, c.DataSets[0]); }
            catch (UnsupportedException) { continue; }
            var given = inputs.Where(kv => kv.Value is Tensor).ToDictionary(kv => kv.Key, kv => TypeRef.TensorOf(((Tensor)kv.Value).DType, ((Tensor)kv.Value).Shape));
            var inferred = ShapeInference.Infer(m, given).Types;
            Dictionary<string, Value> outs;
            try { outs = new Executor(cpu) { CheckInputShapes = false }.Run(m, inputs); }
            catch (UnsupportedException) { continue; }
            foreach (var (name, v) in outs)
            {
                if (v is not Tensor t || !inferred.TryGetValue(name, out var ty) || ty.Kind != TypeKind.Tensor) continue;
                if (ty.ElemType != DType.Undefined && ty.ElemType != t.DType) wrong.Add($"{c.Name}/{name}: inferred {ty}, got {t.Describe()}");
                else if (ty.Shape is { } s && s.All(d => d.Value is long))
                {
                    checkedOutputs++;
                    if (!s.Select(d => d.Value!.Value).SequenceEqual(t.Shape)) wrong.Add($"{c.Name}/{name}: inferred {ty}, got {t.Describe()}");
                }
            }
        }
        Assert.True(wrong.Count == 0, $"{wrong.Count} inferred types disagree with the run:\n" + string.Join("\n", wrong.Take(30)));
        Assert.True(checkedOutputs > 0, "no output shape was inferred completely");
        TestContext.Current.SendDiagnosticMessage($"{folder}: {checkedOutputs} outputs with fully inferred shapes, all equal to the run");
    }

    [Fact]
    public void Symbolic_sequence_length_flows_to_the_logits()
    {
        var m = OnnxImporter.Load(Path.Combine(SharedData.Require("conformance", "hf-onnx", "test_hf_llama"), "model.onnx"));
        var r = ShapeInference.Infer(m);
        var logits = r.Types[m.Graph.Outputs[0].Name];
        Assert.Equal(DType.Float32, logits.ElemType);
        Assert.Equal(3, logits.Shape!.Length);
        Assert.Equal(1024, logits.Shape[2].Value);
        Assert.Empty(r.Mismatches);
    }
}
