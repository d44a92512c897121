using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Onnx;

namespace Tapml.Testing.Bench;

/// <summary>Named workloads for <c>tapml bench</c>.</summary>
public static class BenchScenarios
{
    public static IReadOnlyList<string> Names => ["cnn", "ops", "all"];

    /// <summary>Cases of a scenario; <paramref name="shared"/> is the ../shared folder (light CNNs live there).</summary>
    public static List<BenchCase> Create(string scenario, string shared) => scenario switch
    {
        "cnn" => Cnn(shared),
        "ops" => Ops(),
        "all" => [.. Ops(), .. Cnn(shared)],
        _ => throw new TapmlException($"unknown bench scenario '{scenario}' (known: {string.Join(", ", Names)})"),
    };

    /// <summary>The light CNNs (resnet50, squeezenet, alexnet) at 1×3×224×224 with the ONNX runner's input.</summary>
    static List<BenchCase> Cnn(string shared)
    {
        string dir = Path.Combine(shared, "conformance", "onnx", "light-cases");
        if (!Directory.Exists(dir)) throw new TapmlException($"bench cnn needs the light CNNs in {dir}");
        var cases = new List<BenchCase>();
        foreach (var c in Conformance.OnnxCase.Discover([dir]))
        {
            var m = OnnxImporter.Load(c.ModelPath);
            var (inputs, _) = Conformance.OnnxCase.LoadDataSet(m, c.DataSets[0]);
            cases.Add(new BenchCase(c.Name.Replace("test_light_", ""), m, inputs));
        }
        return cases;
    }

    /// <summary>MatMul and Conv shapes as one-node models: LLM prefill/decode products and ResNet convolutions.</summary>
    static List<BenchCase> Ops()
    {
        var rng = new Random(1);
        var r = new List<BenchCase>();
        foreach (var (m, k, n) in new[] { (128, 768, 3072), (512, 512, 512), (1, 4096, 4096) })
            r.Add(OneNode($"MatMul {m}x{k}x{n}", "MatMul", [Rand(rng, m, k), Rand(rng, k, n)], new(), 2.0 * m * k * n));
        foreach (var (c, h, o, ks, s) in new[] { (64, 56, 64, 3, 1), (256, 56, 64, 1, 1), (3, 224, 64, 7, 2), (512, 7, 512, 3, 1) })
        {
            long oh = (h + 2 * (ks / 2) - ks) / s + 1;
            var attrs = new Dictionary<string, Attr>
            {
                ["kernel_shape"] = Attr.Of(new long[] { ks, ks }),
                ["strides"] = Attr.Of(new long[] { s, s }),
                ["pads"] = Attr.Of(new long[] { ks / 2, ks / 2, ks / 2, ks / 2 }),
            };
            r.Add(OneNode($"Conv {c}x{h}x{h} k{ks} s{s} -> {o}", "Conv", [Rand(rng, 1, c, h, h), Rand(rng, o, c, ks, ks)], attrs, 2.0 * o * oh * oh * c * ks * ks));
        }
        return r;
    }

    static BenchCase OneNode(string name, string op, Tensor[] inputs, Dictionary<string, Attr> attrs, double flops)
    {
        var b = new GraphBuilder(name);
        var feeds = new Dictionary<string, Value>();
        var names = new string[inputs.Length];
        for (int i = 0; i < inputs.Length; i++)
        {
            if (i == 0) { names[i] = b.Input("x", inputs[i].DType, inputs[i].Shape); feeds["x"] = inputs[i]; }
            else names[i] = b.Initializer($"w{i}", inputs[i]);
        }
        b.Output(b.Node(op, names, attrs, name: op.ToLowerInvariant()));
        return new BenchCase(name, new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } }, feeds, flops);
    }

    static Tensor Rand(Random rng, params long[] shape)
    {
        var t = Tensor.Zeros(DType.Float32, shape);
        var s = t.Span<float>();
        for (int i = 0; i < s.Length; i++) s[i] = (float)(rng.NextDouble() - 0.5);
        return t;
    }
}
