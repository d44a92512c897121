using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Platforms;

namespace Tapml.Testing.Carving;

/// <summary>Replays carved cases on a platform: each case is loaded as a one-node model with its blobs as inputs and
/// the source's outputs as expected values, and run by <see cref="CaseRunner"/> — the engine conformance uses.</summary>
public sealed class Replayer(CarvedStore store, IPlatform platform, Tolerances tolerances)
{
    public CaseResult Run(CarvedCase c)
    {
        // NOTE: one one-node model per case serves the tolerance and the run (building it parses the case's proto).
        Model model;
        try { model = c.ToModel(); }
        catch (TapmlException e) when (!CaseRunner.EndsRun(e)) { return new CaseResult(c.Name, CaseStatus.Error, e.Message, null, 0); }
        catch (Exception e) when (e is not OutOfMemoryException && !CaseRunner.EndsRun(e)) { return new CaseResult(c.Name, CaseStatus.Error, $"{e.GetType().Name}: {e.Message}", null, 0); }
        var tol = ToleranceOf(c, model.Graph.Nodes[0]);
        CaseResult r;
        try
        {
            long budget = CaseBudget(c);
            using (ResourceBudget.Scope(budget, $"the case's budget of {ResourceBudget.Format(budget)} ({CaseBudgetFactor} × its carved inputs and outputs + {ResourceBudget.Format(CaseBudgetBase)})"))
                r = CaseRunner.Run(c.Name, () => Load(store, c, model), platform, tol, magnitudes: tol.Rule == ToleranceRule.Accumulation);
        }
        catch (TapmlException e) when (ResourceBudget.IsOverrun(e))
        {
            throw new ResourceLimitException($"{store.ManifestPath}: case {c.Id}: {e.Message}", e);
        }
        r = r with { Tolerance = tol };
        return r.Status is CaseStatus.Failed or CaseStatus.Error
            ? r with { Repro = $"./tapml replay {CaseRunner.Quote(store.Dir)} --case {c.Id} --platform {CaseRunner.Quote(platform.Name)}" }
            : r;
    }

    // NOTE: a case's kernel needs about what its carved inputs and outputs hold; one that asks for far more (a Pad
    // with huge pads, an Expand to a huge shape) is hostile data, stopped before it allocates.
    const int CaseBudgetFactor = 16;
    const long CaseBudgetBase = 256L << 20;

    /// <summary>The most bytes one allocation of <paramref name="c"/>'s run may take.</summary>
    static long CaseBudget(CarvedCase c)
    {
        long declared = 0;
        foreach (var t in c.Inputs.Concat(c.Outputs))
            declared = Math.Min(declared + ShapeUtil.Size(t.Shape) * Math.Max(DTypes.Size(t.DType), 1), long.MaxValue / (2 * CaseBudgetFactor));
        return CaseBudgetFactor * declared + CaseBudgetBase;
    }

    Tolerance ToleranceOf(CarvedCase c, Node node)
    {
        var outType = c.Outputs.Select(o => o.DType).FirstOrDefault(DTypes.IsFloat, c.Outputs.FirstOrDefault()?.DType ?? DType.Float32);
        return tolerances.For(node, c.Inputs.Select(t => t.Blob is null ? null : t.Shape).ToList(), c.Outputs.Select(t => t.Shape).ToList(), outType);
    }

    /// <summary>The case's one-node model and its one data set, blobs checked by hash.</summary>
    public static (Model Model, IReadOnlyList<DataSet> Sets) Load(CarvedStore store, CarvedCase c) => Load(store, c, c.ToModel());

    static (Model Model, IReadOnlyList<DataSet> Sets) Load(CarvedStore store, CarvedCase c, Model model)
    {
        var inputs = new Dictionary<string, Value>();
        foreach (var t in c.Inputs)
            if (t.Blob is { } sha) inputs[t.Name] = Checked(store.Read(sha, c.Id), t, c);
        var expected = c.Outputs.Select(t => (t.Name, (Value)Checked(store.Read(t.Blob!, c.Id), t, c))).ToList();
        return (model, [new DataSet("carved", inputs, expected)]);
    }

    static Tensor Checked(Tensor t, TensorRef r, CarvedCase c) =>
        t.DType == r.DType && t.Shape.AsSpan().SequenceEqual(r.Shape) ? t
            : throw new TapmlException($"case {c.Id}: blob {r.Blob} holds {t.Describe()}, the manifest says {DTypes.Name(r.DType)}{ShapeUtil.Format(r.Shape)} for '{r.Name}'");

    /// <summary>Writes cases in the ONNX backend-test layout: <c>DIR/test_&lt;id&gt;/model.onnx</c> and
    /// <c>test_data_set_0/input_i.pb, output_i.pb</c>, which <c>tapml conformance</c> (and ONNX's own runner) reads.</summary>
    public static int ExportOnnx(CarvedStore store, string dir, Action<CarvedCase>? progress = null)
    {
        Directory.CreateDirectory(dir);
        int n = 0;
        foreach (var c in store.Cases)
        {
            string caseDir = Path.Combine(dir, "test_" + c.Id);
            string data = Path.Combine(caseDir, "test_data_set_0");
            Directory.CreateDirectory(data);
            var (_, sets) = Load(store, c);
            int i = 0;
            foreach (var t in c.Inputs.Where(t => t.Blob is not null))
                WriteAtomic(Path.Combine(data, $"input_{i++}.pb"), TensorProtos.Serialize(sets[0].Inputs[t.Name], t.Name));
            i = 0;
            foreach (var (name, v) in sets[0].Expected)
                WriteAtomic(Path.Combine(data, $"output_{i++}.pb"), TensorProtos.Serialize(v, name));
            WriteAtomic(Path.Combine(caseDir, "model.onnx"), Google.Protobuf.MessageExtensions.ToByteArray(c.ToModelProto()));
            progress?.Invoke(c);
            n++;
        }
        return n;
    }

    static void WriteAtomic(string path, byte[] bytes)
    {
        File.WriteAllBytes(path + ".tmp", bytes);
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
