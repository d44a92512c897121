using Tapml.Core;

namespace Tapml.Ir.Builders;

/// <summary>Small built-in models (<c>builtin:NAME</c>) with deterministic weights, so the main job runs with
/// no downloads.</summary>
public static class SampleModels
{
    public static IReadOnlyList<string> Names => ["sample-cnn", "sample-mlp"];

    public static Model? Create(string name) => name switch
    {
        "sample-cnn" => SampleCnn(),
        "sample-mlp" => SampleMlp(),
        _ => null,
    };

    /// <summary>A small image classifier: Conv-BatchNorm-Relu-MaxPool ×2, GlobalAveragePool, Flatten, Gemm, Softmax
    /// on a 1×3×32×32 input.</summary>
    public static Model SampleCnn(int seed = 7)
    {
        var rng = new Random(seed);
        var b = new GraphBuilder("sample-cnn");
        string x = b.Input("image", DType.Float32, 1, 3, 32, 32);
        long cin = 3;
        foreach (long cout in new long[] { 16, 32 })
        {
            string w = b.Initializer($"conv{cout}.weight", Random(rng, 1.0 / Math.Sqrt(cin * 9), [cout, cin, 3, 3]));
            string bias = b.Initializer($"conv{cout}.bias", Random(rng, 0.1, [cout]));
            x = b.Node("Conv", [x, w, bias], new() { ["kernel_shape"] = Attr.Of(new long[] { 3, 3 }), ["pads"] = Attr.Of(new long[] { 1, 1, 1, 1 }) });
            string scale = b.Initializer($"bn{cout}.scale", Random(rng, 0.2, [cout], 1));
            string shift = b.Initializer($"bn{cout}.bias", Random(rng, 0.1, [cout]));
            string mean = b.Initializer($"bn{cout}.mean", Random(rng, 0.1, [cout]));
            string var = b.Initializer($"bn{cout}.var", Random(rng, 0.1, [cout], 1));
            x = b.Node("BatchNormalization", [x, scale, shift, mean, var], new() { ["epsilon"] = Attr.Of(1e-5f) });
            x = b.Node("Relu", [x]);
            x = b.Node("MaxPool", [x], new() { ["kernel_shape"] = Attr.Of(new long[] { 2, 2 }), ["strides"] = Attr.Of(new long[] { 2, 2 }) });
            cin = cout;
        }
        x = b.Node("GlobalAveragePool", [x]);
        x = b.Node("Flatten", [x], new() { ["axis"] = Attr.Of(1L) });
        string fw = b.Initializer("fc.weight", Random(rng, 1.0 / Math.Sqrt(cin), [10, cin]));
        string fb = b.Initializer("fc.bias", Random(rng, 0.1, [10]));
        x = b.Node("Gemm", [x, fw, fb], new() { ["transB"] = Attr.Of(1L) });
        x = b.Node("Softmax", [x], new() { ["axis"] = Attr.Of(-1L) });
        b.Output(x, "probabilities");
        return new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } };
    }

    /// <summary>A two-layer perceptron with LayerNormalization and Gelu on a [batch, 64] input.</summary>
    public static Model SampleMlp(int seed = 11)
    {
        var rng = new Random(seed);
        var b = new GraphBuilder("sample-mlp");
        string x = b.Input("x", DType.Float32, [new Dim(null, "batch"), new Dim(64, null)]);
        string w1 = b.Initializer("fc1.weight", Random(rng, 0.125, [64, 128]));
        string b1 = b.Initializer("fc1.bias", Random(rng, 0.1, [128]));
        string h = b.Node("Add", [b.Node("MatMul", [x, w1]), b1]);
        string g = b.Initializer("ln.weight", Random(rng, 0.1, [128], 1));
        string beta = b.Initializer("ln.bias", Random(rng, 0.1, [128]));
        h = b.Node("LayerNormalization", [h, g, beta], new() { ["axis"] = Attr.Of(-1L), ["epsilon"] = Attr.Of(1e-5f) });
        h = b.Node("Tanh", [h]);
        string w2 = b.Initializer("fc2.weight", Random(rng, 0.09, [128, 16]));
        string y = b.Node("MatMul", [h, w2]);
        b.Output(y, "y");
        return new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } };
    }

    static Tensor Random(Random rng, double scale, long[] shape, double offset = 0)
    {
        var t = Tensor.Zeros(DType.Float32, shape);
        var s = t.Span<float>();
        for (int i = 0; i < s.Length; i++) s[i] = (float)(offset + scale * (rng.NextDouble() * 2 - 1));
        return t;
    }
}
