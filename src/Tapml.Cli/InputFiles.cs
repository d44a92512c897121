using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;

namespace Tapml.Cli;

/// <summary>Graph inputs from files, or generated.</summary>
static class InputFiles
{
    /// <summary>File name for a tensor name (path separators and odd characters replaced).</summary>
    public static string FileName(string tensorName) =>
        string.Concat(tensorName.Select(ch => char.IsLetterOrDigit(ch) || ch is '_' or '-' or '.' ? ch : '_')) + ".pb";

    /// <summary>Reads <c>&lt;input name&gt;.pb</c> files, or an ONNX backend-test data set (<c>input_0.pb</c>, …).</summary>
    public static Dictionary<string, Value> Read(Model m, string dir)
    {
        if (!Directory.Exists(dir)) throw new TapmlException($"inputs folder '{dir}' not found");
        // NOTE: an ONNX backend-test data set (input_0.pb, …) binds by stored name or position.
        if (File.Exists(Path.Combine(dir, "input_0.pb"))) return Testing.Conformance.OnnxCase.LoadDataSet(m, dir).Inputs;
        var feeds = new Dictionary<string, Value>();
        foreach (var input in m.Graph.RequiredInputs)
        {
            string f = Path.Combine(dir, FileName(input.Name));
            if (!File.Exists(f)) throw new TapmlException($"inputs folder '{dir}' has no {Path.GetFileName(f)} for graph input '{input.Name}'");
            feeds[input.Name] = TensorProtos.ReadValueFile(f, input.Type);
        }
        return feeds;
    }

    /// <summary>Generated inputs: floats get the ONNX runner's ramp i/n; integers small values; symbolic
    /// dimensions are 1.</summary>
    public static Dictionary<string, Value> Generate(Model m)
    {
        var feeds = new Dictionary<string, Value>();
        foreach (var input in m.Graph.RequiredInputs)
        {
            var t = input.Type;
            if (t is null || t.Kind != TypeKind.Tensor)
                throw new TapmlException($"cannot generate input '{input.Name}' of type {t?.ToString() ?? "unknown"}; pass --inputs");
            long[] shape = (t.Shape ?? []).Select(d => d.Value is long v && v > 0 ? v : 1).ToArray();
            if (ShapeUtil.Size(shape) > 1L << 28)
                throw new TapmlException($"input '{input.Name}' is declared {t}, too large to generate; pass --inputs");
            var x = Tensor.Zeros(t.ElemType, shape);
            long n = x.Length;
            for (long i = 0; i < n; i++)
            {
                if (DTypes.IsFloat(t.ElemType)) x.SetDouble(i, (double)i / n);
                else if (t.ElemType == DType.Bool) x.SetDouble(i, i % 2);
                else if (t.ElemType != DType.String) x.SetDouble(i, i % 7);
            }
            feeds[input.Name] = x;
        }
        return feeds;
    }
}
