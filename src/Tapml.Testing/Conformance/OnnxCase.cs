using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;

namespace Tapml.Testing.Conformance;

/// <summary>One case in the ONNX backend-test layout: <c>NAME/model.onnx</c> with
/// <c>test_data_set_K/input_I.pb</c> and <c>output_I.pb</c>.</summary>
public sealed record OnnxCase(string Name, string Dir)
{
    public string ModelPath => Path.Combine(Dir, "model.onnx");

    public IReadOnlyList<string> DataSets => Directory.Exists(Dir)
        ? Directory.GetDirectories(Dir, "test_data_set_*").Order(StringComparer.Ordinal).ToList() : [];

    /// <summary>Finds cases under each path: a path that holds model.onnx is a case; otherwise its
    /// sub-folders (two levels deep) are searched. Sorted by name.</summary>
    public static List<OnnxCase> Discover(IEnumerable<string> paths)
    {
        var found = new List<OnnxCase>();
        foreach (var p in paths)
        {
            if (!Directory.Exists(p)) throw new TapmlException($"conformance folder '{p}' not found");
            Walk(p, 0, found);
        }
        return found.OrderBy(c => c.Name, StringComparer.Ordinal).ToList();
    }

    static void Walk(string dir, int depth, List<OnnxCase> found)
    {
        if (File.Exists(Path.Combine(dir, "model.onnx"))) { found.Add(new OnnxCase(Path.GetFileName(Path.TrimEndingDirectorySeparator(dir)), dir)); return; }
        if (depth >= 2) return;
        foreach (var sub in Directory.GetDirectories(dir)) Walk(sub, depth + 1, found);
    }

    /// <summary>Loads one data set: inputs bound to the graph's required inputs (by the name stored in the
    /// file when it matches one, else by position), outputs by position against the graph outputs.</summary>
    public static (Dictionary<string, Value> Inputs, List<(string Name, Value Value)> Outputs) LoadDataSet(Model model, string dataDir)
    {
        var g = model.Graph;
        var required = g.RequiredInputs.ToList();
        var inputs = new Dictionary<string, Value>();
        var inFiles = NumberedFiles(dataDir, "input_");
        if (inFiles.Count > g.Inputs.Count)
            throw new TapmlException($"{dataDir} has {inFiles.Count} input files, the model declares {g.Inputs.Count} inputs");
        for (int i = 0; i < inFiles.Count; i++)
        {
            var byPos = i < required.Count ? required[i] : g.Inputs[i];
            string? stored = TensorProtos.NameOf(inFiles[i], byPos.Type);
            var target = !string.IsNullOrEmpty(stored) && g.Inputs.FirstOrDefault(x => x.Name == stored) is { } named ? named : byPos;
            inputs[target.Name] = AsDeclared(TensorProtos.ReadValueFile(inFiles[i], target.Type), target.Type);
        }
        var outputs = new List<(string, Value)>();
        var outFiles = NumberedFiles(dataDir, "output_");
        for (int i = 0; i < outFiles.Count; i++)
        {
            if (i >= g.Outputs.Count) throw new TapmlException($"{dataDir} has output_{i}.pb but the model declares {g.Outputs.Count} outputs");
            outputs.Add((g.Outputs[i].Name, AsDeclared(TensorProtos.ReadValueFile(outFiles[i], g.Outputs[i].Type), g.Outputs[i].Type)));
        }
        return (inputs, outputs);
    }

    /// <summary>ONNX's generators (1.12) store bfloat16 data as uint16 bit patterns; read them as the bf16 the
    /// graph declares (same bits, no conversion).</summary>
    static Value AsDeclared(Value v, TypeRef? declared) =>
        v is Tensor { DType: DType.UInt16 } t && declared is { Kind: TypeKind.Tensor, ElemType: DType.BFloat16 }
            ? Tensor.FromBytes(DType.BFloat16, t.Shape, t.Bytes()) : v;

    static List<string> NumberedFiles(string dir, string prefix)
    {
        var r = new List<string>();
        for (int i = 0; ; i++)
        {
            string f = Path.Combine(dir, $"{prefix}{i}.pb");
            if (!File.Exists(f)) break;
            r.Add(f);
        }
        return r;
    }
}
