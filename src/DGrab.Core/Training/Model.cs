using System.Numerics.Tensors;

namespace DGrab.Training;

/// <summary>A classifier with exact per-example gradients in closed form. Parameters are one flat float vector;
/// <see cref="ScratchLength"/> floats of scratch make a call allocation-free.</summary>
public interface IModel
{
    string Name { get; }
    int ParameterCount { get; }
    int ScratchLength { get; }
    void Initialize(Span<float> parameters, ulong seed);
    /// <summary>Cross-entropy loss (nats) of one example; its gradient is written to <paramref name="grad"/>.</summary>
    float LossAndGradient(ReadOnlySpan<float> parameters, ReadOnlySpan<float> x, int label, Span<float> grad, Span<float> scratch);
    /// <summary>Cross-entropy loss (nats) of one example; the predicted class in <paramref name="predicted"/>.</summary>
    float Loss(ReadOnlySpan<float> parameters, ReadOnlySpan<float> x, int label, Span<float> scratch, out int predicted);
}

/// <summary>The one list of models (the CLI and docs read it).</summary>
public static class Models
{
    public static readonly IReadOnlyList<string> Names = ["logreg", "mlp"];

    public static IModel Create(string name, int features, int classes) => name switch
    {
        "logreg" => new LogisticRegression(features, classes),
        "mlp" => new Mlp(features, Mlp.DefaultHidden, classes),
        _ => throw new DGrabException($"unknown model '{name}' (models: {string.Join(", ", Names)})"),
    };

    /// <summary>Softmax of <paramref name="logits"/> in place; returns −log p[label].</summary>
    internal static float SoftmaxCrossEntropy(Span<float> logits, int label)
    {
        float max = TensorPrimitives.Max(logits);
        TensorPrimitives.Subtract(logits, max, logits);
        float z = 0f;
        for (int c = 0; c < logits.Length; c++) z += MathF.Exp(logits[c]);
        float logZ = MathF.Log(z);
        float loss = logZ - logits[label];
        for (int c = 0; c < logits.Length; c++) logits[c] = MathF.Exp(logits[c] - logZ);
        return loss;
    }
}

/// <summary>Multinomial logistic regression: logits = W x + b, W is classes×features (row-major), then b.</summary>
public sealed class LogisticRegression(int features, int classes) : IModel
{
    public string Name => "logreg";
    public int ParameterCount => classes * features + classes;
    public int ScratchLength => classes;

    public void Initialize(Span<float> parameters, ulong seed) => parameters.Clear();

    public float LossAndGradient(ReadOnlySpan<float> p, ReadOnlySpan<float> x, int label, Span<float> grad, Span<float> scratch)
    {
        var probs = scratch[..classes];
        float loss = Forward(p, x, label, probs);
        probs[label] -= 1f;  // ∂loss/∂logits = softmax − onehot
        for (int c = 0; c < classes; c++) TensorPrimitives.Multiply(x, probs[c], grad.Slice(c * features, features));
        probs.CopyTo(grad[(classes * features)..]);
        return loss;
    }

    public float Loss(ReadOnlySpan<float> p, ReadOnlySpan<float> x, int label, Span<float> scratch, out int predicted)
    {
        var probs = scratch[..classes];
        float loss = Forward(p, x, label, probs);
        predicted = TensorPrimitives.IndexOfMax(probs);
        return loss;
    }

    float Forward(ReadOnlySpan<float> p, ReadOnlySpan<float> x, int label, Span<float> logits)
    {
        var bias = p.Slice(classes * features, classes);
        for (int c = 0; c < classes; c++) logits[c] = TensorPrimitives.Dot(p.Slice(c * features, features), x) + bias[c];
        return Models.SoftmaxCrossEntropy(logits, label);
    }
}

/// <summary>One hidden ReLU layer: h = relu(W1 x + b1), logits = W2 h + b2; parameters W1 (hidden×features), b1,
/// W2 (classes×hidden), b2 in that order.</summary>
public sealed class Mlp(int features, int hidden, int classes) : IModel
{
    public const int DefaultHidden = 64;
    readonly int w1 = 0, b1 = hidden * features, w2 = hidden * features + hidden, b2 = hidden * features + hidden + classes * hidden;

    public string Name => "mlp";
    public int ParameterCount => b2 + classes;
    public int ScratchLength => 2 * hidden + classes;

    /// <summary>Uniform ±1/√fan-in weights (PyTorch's nn.Linear default), zero biases.</summary>
    public void Initialize(Span<float> p, ulong seed)
    {
        var rng = Seeds.Rng(seed, 3);
        p.Clear();
        float a1 = 1f / MathF.Sqrt(features), a2 = 1f / MathF.Sqrt(hidden);
        for (int i = w1; i < b1; i++) p[i] = (float)(rng.NextDouble() * 2 - 1) * a1;
        for (int i = w2; i < b2; i++) p[i] = (float)(rng.NextDouble() * 2 - 1) * a2;
    }

    public float LossAndGradient(ReadOnlySpan<float> p, ReadOnlySpan<float> x, int label, Span<float> grad, Span<float> scratch)
    {
        var h = scratch[..hidden];
        var dh = scratch.Slice(hidden, hidden);
        var probs = scratch.Slice(2 * hidden, classes);
        float loss = Forward(p, x, label, h, probs);
        probs[label] -= 1f;
        dh.Clear();
        for (int c = 0; c < classes; c++)
        {
            var row = p.Slice(w2 + c * hidden, hidden);
            TensorPrimitives.Multiply(h, probs[c], grad.Slice(w2 + c * hidden, hidden));   // ∂W2 = δ2 hᵀ
            TensorPrimitives.MultiplyAdd(row, probs[c], dh, dh);                            // W2ᵀ δ2
        }
        probs.CopyTo(grad.Slice(b2, classes));
        for (int k = 0; k < hidden; k++) if (h[k] <= 0f) dh[k] = 0f;                        // ReLU'
        for (int k = 0; k < hidden; k++) TensorPrimitives.Multiply(x, dh[k], grad.Slice(w1 + k * features, features));
        dh.CopyTo(grad.Slice(b1, hidden));
        return loss;
    }

    public float Loss(ReadOnlySpan<float> p, ReadOnlySpan<float> x, int label, Span<float> scratch, out int predicted)
    {
        var probs = scratch.Slice(2 * hidden, classes);
        float loss = Forward(p, x, label, scratch[..hidden], probs);
        predicted = TensorPrimitives.IndexOfMax(probs);
        return loss;
    }

    float Forward(ReadOnlySpan<float> p, ReadOnlySpan<float> x, int label, Span<float> h, Span<float> logits)
    {
        for (int k = 0; k < hidden; k++) h[k] = MathF.Max(0f, TensorPrimitives.Dot(p.Slice(w1 + k * features, features), x) + p[b1 + k]);
        for (int c = 0; c < classes; c++) logits[c] = TensorPrimitives.Dot(p.Slice(w2 + c * hidden, hidden), h) + p[b2 + c];
        return Models.SoftmaxCrossEntropy(logits, label);
    }
}
