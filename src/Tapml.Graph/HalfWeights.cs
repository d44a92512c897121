using Tapml.Core;

namespace Tapml.Ir;

/// <summary>What <see cref="HalfWeights.Apply"/> did: weights now held in f16, their bytes before and after, and the
/// weights left in f32 because f16 cannot hold their values exactly.</summary>
public sealed record HalfWeightsReport(int Weights, long BytesBefore, long BytesAfter, int Inexact)
{
    public override string ToString() =>
        $"{Weights} weights kept in f16 ({BytesBefore >> 10} KiB as f32 → {BytesAfter >> 10} KiB)" + (Inexact > 0 ? $"; {Inexact} left in f32 (values f16 cannot hold exactly)" : "");
}

/// <summary><c>--weights f16</c>: the model's large weights held as f16 initializers, each read through a
/// <c>Cast(to = float)</c> in front of the MatMul (as B) or Gather (as the table, axis 0) that used it — a valid ONNX
/// graph whose values are exactly those of the f32 graph (f16 → f32 is exact), so cpu's results do not change by a bit
/// and a GPU reads half the bytes (webgpu's matrix kernels read the packed f16 buffer behind the Cast; see
/// <c>Kernels/MatMul.cs</c>). A weight is converted when every value is exactly an f16: a checkpoint stored in f16 always
/// (its weights stay views of the mapped file, nothing is copied), an f32 or bf16 one only if it happens to be (never
/// rounded: a bf16 value past f16's range or precision keeps the weight in f32, counted in the report). Rank-2
/// initializers of at least <see cref="MinElements"/> elements only; the graph's inputs and other readers of a weight
/// are unchanged, and a weight no other node reads is dropped.</summary>
public static class HalfWeights
{
    public static readonly string[] Names = ["f32", "f16"];

    /// <summary>Smaller matrices stay f32 (as the checkpoint loaders read them into memory).</summary>
    public const long MinElements = 1024;

    /// <summary>Checks a <c>--weights</c> value: f32 (as loaded; nothing to do) or f16; else a clear error.</summary>
    public static bool Parse(string name) => name switch
    {
        "f32" => false,
        "f16" => true,
        _ => throw new TapmlException($"--weights '{name}' is not a known weight format (known: {string.Join(", ", Names)})"),
    };

    public static HalfWeightsReport Apply(Model model)
    {
        var g = model.Graph;
        var uses = g.CountUses();
        var inputs = g.Inputs.Select(v => v.Name).ToHashSet();
        var cast = new Dictionary<string, string?>();      // weight → its f32 Cast output (null: kept in f32)
        int weights = 0, inexact = 0;
        long before = 0, after = 0;
        for (int i = 0; i < g.Nodes.Count; i++)
        {
            var node = g.Nodes[i];
            if (node.Domain is not ("" or "ai.onnx")) continue;
            int at = node.OpType switch
            {
                "MatMul" when node.Inputs.Length == 2 => 1,
                "Gather" when node.Inputs.Length == 2 && (node.Attributes.GetValueOrDefault("axis")?.I ?? 0) == 0 => 0,
                _ => -1,
            };
            if (at < 0) continue;
            string wName = node.Inputs[at];
            if (inputs.Contains(wName) || !g.Initializers.TryGetValue(wName, out var w) || w.Rank != 2 || w.DType != DType.Float32 || w.Length < MinElements) continue;
            if (!cast.TryGetValue(wName, out var castOut))
            {
                var half = ToHalf(w);
                if (half is null) { cast[wName] = null; inexact++; continue; }
                string hName = g.FreshName(wName + "_f16");
                g.Initializers[hName] = half;
                if (half.External is not null && model.InitializerSources.TryGetValue(wName, out var src)) model.InitializerSources[hName] = src;
                castOut = cast[wName] = g.FreshName(wName + "_f16_as_f32");
                // NOTE: the Cast stands right before the first reader: its input is an initializer, so the order stays topological.
                g.Nodes.Insert(i, new Node
                {
                    Name = $"Cast_{hName}", OpType = "Cast", Inputs = [hName], Outputs = [castOut],
                    Attributes = new() { ["to"] = Attr.Of((long)DType.Float32) },
                });
                i++;
                weights++;
                before += w.ByteSize;
                after += half.ByteSize;
            }
            if (castOut is null) continue;
            var inputsOf = (string[])node.Inputs.Clone();
            inputsOf[at] = castOut;
            g.Nodes[i] = new Node { Name = node.Name, OpType = node.OpType, Domain = node.Domain, Inputs = inputsOf, Outputs = node.Outputs, Attributes = node.Attributes };
            uses[wName]--;
        }
        foreach (var (wName, castOut) in cast)
            if (castOut is not null && uses.GetValueOrDefault(wName) <= 0)
            {
                g.Initializers.Remove(wName);
                model.InitializerSources.Remove(wName);
            }
        return new HalfWeightsReport(weights, before, after, inexact);
    }


    /// <summary>The f32 weight as an f16 tensor holding the same values, or null when one is not an f16. A view of
    /// f16 bytes in a mapped file stays a view (of the same bytes, as f16).</summary>
    static Tensor? ToHalf(Tensor w)
    {
        if (w.External is { Stored: DType.Float16 } e) return new Tensor(DType.Float16, w.Shape, e);
        if (w.External is { } other)
        {
            // NOTE: checked a stored row at a time first (exactness does not depend on the layout): a bf16 weight f16 cannot
            // hold is refused without widening the whole matrix.
            var row = new float[other.Cols];
            for (long r = 0; r < other.Rows; r++)
            {
                other.RowsToF32(r, 1, row);
                foreach (var v in row) if (BitConverter.SingleToUInt32Bits((float)(Half)v) != BitConverter.SingleToUInt32Bits(v)) return null;
            }
        }
        var f = w.Span<float>();
        var h = new Half[f.Length];
        for (int i = 0; i < f.Length; i++)
        {
            h[i] = (Half)f[i];
            // NOTE: compared as bits, so −0 stays −0 and a NaN payload is not silently changed.
            if (BitConverter.SingleToUInt32Bits((float)h[i]) != BitConverter.SingleToUInt32Bits(f[i])) return null;
        }
        return new Tensor(DType.Float16, w.Shape, h);
    }
}
