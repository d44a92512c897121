using System.Diagnostics;
using System.Numerics.Tensors;
using DGrab.Engines;
using DGrab.Orders;

namespace DGrab.Training;

/// <summary>One run's settings. <see cref="Batch"/> is B, the examples of one step over all workers (B/m each).</summary>
public sealed record TrainOptions(string Model, string Order, int Workers, int Batch, float LearningRate, float Momentum,
    int Epochs, ulong Seed);

/// <summary>After epoch <see cref="Epoch"/> (0: before training): mean train loss over the whole training set,
/// test loss and accuracy (fraction).</summary>
public sealed record EpochResult(int Epoch, double TrainLoss, double TestLoss, double TestAccuracy, double Seconds);

/// <summary>
/// Data-parallel momentum SGD with m workers: the training set is shuffled once (seeded) and split into m shards;
/// every step each worker takes the next B/m examples of its order, computes their exact per-example gradients
/// (shown to the order policy), and the workers' gradient sums are all-gathered and added in worker order, so all
/// processes apply the same update: v ← μv + g/B, w ← w − lr·v.
/// </summary>
public static class Trainer
{
    public static List<EpochResult> Train(Dataset train, Dataset test, TrainOptions o, IEngine engine, Action<EpochResult>? progress = null)
    {
        int m = o.Workers;
        if (m < 1) throw new DGrabException($"--workers must be at least 1 (got {m})");
        if (o.Batch < m || o.Batch % m != 0) throw new DGrabException($"--batch ({o.Batch}) must be a positive multiple of --workers ({m})");
        int b = o.Batch / m;
        if (Registry.UsesPairs(o.Order) && b % 2 != 0)
            throw new DGrabException($"{o.Order} balances pairs: --batch / --workers must be even (got {o.Batch} / {m} = {b})");
        if (o.Epochs < 0) throw new DGrabException($"--epochs must be at least 0 (got {o.Epochs})");
        if (!(o.LearningRate > 0) || float.IsInfinity(o.LearningRate)) throw new DGrabException($"--lr must be a positive number (got {o.LearningRate})");
        if (!(o.Momentum >= 0 && o.Momentum < 1)) throw new DGrabException($"--momentum must be in [0, 1) (got {o.Momentum})");
        if (engine.Workers != m) throw new DGrabException($"engine {engine.Name} has {engine.Workers} workers, the run {m}");
        int n = train.Count / m / b * b;
        if (n == 0) throw new DGrabException($"{train.Count} training examples are too few for {m} workers × {b} examples a step");

        var model = Models.Create(o.Model, train.FeatureCount, train.Classes);
        int p = model.ParameterCount;
        var shuffled = Seeds.Permutation(train.Count, Seeds.Rng(o.Seed, 4));
        var policy = Registry.Create(o.Order, m, n, p, o.Seed);
        int shared = policy.SharedFloats(b);
        int stride = p + 1 + shared;  // gradient sum, loss sum, the policy's part

        var parameters = new float[p];
        model.Initialize(parameters, o.Seed);
        var velocity = new float[p];
        var update = new float[p];
        var grad = new float[p];
        var scratch = new float[model.ScratchLength];
        var buffer = new float[m * stride];
        var results = new List<EpochResult>();

        void Report(int epoch, double seconds)
        {
            if (!engine.IsRoot) return;
            var (trainLoss, _) = Evaluate(model, parameters, train);
            var (testLoss, accuracy) = Evaluate(model, parameters, test);
            var r = new EpochResult(epoch, trainLoss, testLoss, accuracy, seconds);
            results.Add(r);
            progress?.Invoke(r);
        }

        Report(0, 0);
        for (int epoch = 1; epoch <= o.Epochs; epoch++)
        {
            var clock = Stopwatch.StartNew();
            for (int first = 0; first < n; first += b)
            {
                foreach (int w in engine.LocalWorkers)
                {
                    var block = buffer.AsSpan(w * stride, stride);
                    var sum = block[..p];
                    sum.Clear();
                    float loss = 0f;
                    var order = policy.Order(w);
                    for (int i = 0; i < b; i++)
                    {
                        int example = shuffled[w * n + order[first + i]];
                        loss += model.LossAndGradient(parameters, train.Row(example), train.Labels[example], grad, scratch);
                        TensorPrimitives.Add(sum, grad, sum);
                        policy.Observe(w, first + i, grad, block[(p + 1)..], i);
                    }
                    block[p] = loss;
                }
                engine.AllGather(buffer, stride);
                policy.Coordinate(first, b, buffer, stride, p + 1);
                buffer.AsSpan(0, p).CopyTo(update);
                for (int w = 1; w < m; w++) TensorPrimitives.Add(update, buffer.AsSpan(w * stride, p), update);
                TensorPrimitives.Multiply(velocity, o.Momentum, velocity);
                TensorPrimitives.MultiplyAdd(update, 1f / o.Batch, velocity, velocity);
                TensorPrimitives.MultiplyAdd(velocity, -o.LearningRate, parameters, parameters);
            }
            policy.EndEpoch();
            if (!TensorPrimitives.IsFiniteAll(parameters))
                throw new DGrabException($"training diverged in epoch {epoch} (non-finite weights): lower --lr ({o.LearningRate})");
            Report(epoch, clock.Elapsed.TotalSeconds);
        }
        return results;
    }

    /// <summary>Mean loss and accuracy over <paramref name="data"/>; chunks of fixed size summed in chunk order, so
    /// the result does not depend on the thread count.</summary>
    public static (double Loss, double Accuracy) Evaluate(IModel model, float[] parameters, Dataset data)
    {
        const int chunk = 1000;
        int chunks = (data.Count + chunk - 1) / chunk;
        var loss = new double[chunks];
        var correct = new int[chunks];
        Parallel.For(0, chunks, () => new float[model.ScratchLength], (c, _, scratch) =>
        {
            for (int i = c * chunk; i < Math.Min(data.Count, (c + 1) * chunk); i++)
            {
                loss[c] += model.Loss(parameters, data.Row(i), data.Labels[i], scratch, out int predicted);
                if (predicted == data.Labels[i]) correct[c]++;
            }
            return scratch;
        }, _ => { });
        double total = 0;
        long right = 0;
        for (int c = 0; c < chunks; c++) { total += loss[c]; right += correct[c]; }
        return (total / data.Count, (double)right / data.Count);
    }
}
