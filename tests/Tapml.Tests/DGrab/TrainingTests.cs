using Xunit;
using System.Text.Json.Nodes;
using DGrab.Engines;
using DGrab.Training;

namespace DGrab.Tests;

public class TrainingTests
{
    /// <summary>Two separable-ish blobs per class in 6 features, 4 classes: small enough for exact checks.</summary>
    static Dataset Blobs(int count, int seed)
    {
        var rng = new Random(seed);
        var x = new float[count * 6];
        var y = new byte[count];
        for (int i = 0; i < count; i++)
        {
            y[i] = (byte)rng.Next(4);
            for (int k = 0; k < 6; k++) x[i * 6 + k] = (float)(rng.NextDouble() * 0.6 + (k % 4 == y[i] ? 0.5 : 0));
        }
        return new Dataset(x, y, 6, 4);
    }

    [Theory]
    [InlineData("logreg")]
    [InlineData("mlp")]
    public void Per_example_gradients_match_finite_differences(string name)
    {
        var data = Blobs(3, 1);
        var model = Models.Create(name, 6, 4);
        var p = new float[model.ParameterCount];
        model.Initialize(p, 3);
        for (int i = 0; i < p.Length; i++) p[i] += (float)Math.Sin(i) * 0.1f;
        var g = new float[p.Length];
        var scratch = new float[model.ScratchLength];
        model.LossAndGradient(p, data.Row(0), data.Labels[0], g, scratch);
        for (int i = 0; i < p.Length; i += Math.Max(1, p.Length / 40))
        {
            float keep = p[i], h = 1e-2f;
            p[i] = keep + h; float up = model.Loss(p, data.Row(0), data.Labels[0], scratch, out _);
            p[i] = keep - h; float down = model.Loss(p, data.Row(0), data.Labels[0], scratch, out _);
            p[i] = keep;
            Assert.True(Math.Abs((up - down) / (2 * h) - g[i]) < 2e-3, $"{name} parameter {i}: analytic {g[i]}, numeric {(up - down) / (2 * h)}");
        }
    }

    [Theory]
    [InlineData("cd-grab", "logreg")]
    [InlineData("d-rr", "logreg")]
    [InlineData("id-grab-bal", "mlp")]
    [InlineData("id-grab-pairbal", "logreg")]
    public void Training_lowers_the_loss_and_repeats_bit_for_bit(string order, string model)
    {
        var train = Blobs(400, 2);
        var test = Blobs(100, 3);
        var o = new TrainOptions(model, order, Workers: 4, Batch: 8, LearningRate: 0.05f, Momentum: 0.9f, Epochs: 3, Seed: 4);
        var a = Trainer.Train(train, test, o, new InProcessEngine(4));
        var b = Trainer.Train(train, test, o, new InProcessEngine(4));
        Assert.True(a[^1].TrainLoss < a[0].TrainLoss * 0.7, $"loss {a[0].TrainLoss} -> {a[^1].TrainLoss}");
        Assert.Equal(a.Select(r => (r.TrainLoss, r.TestAccuracy)), b.Select(r => (r.TrainLoss, r.TestAccuracy)));
    }

    [Theory]
    [InlineData("cd-grab")]
    [InlineData("id-grab-bal")]
    public void Mpi_engine_with_4_processes_is_bit_identical_to_inproc(string order)
    {
        if (DGrabCli.MpirunMissing() is { } noMpi) Assert.Skip(noMpi);
        if (DGrabCli.FashionMnistMissing() is { } noData) Assert.Skip(noData);
        var dir = Directory.CreateTempSubdirectory("dgrab-mpi-").FullName;
        string[] args = ["train", "--order", order, "--workers", "4", "--batch", "8", "--lr", "0.01", "--epochs", "2", "--seed", "3",
            "--train-limit", "512", "--test-limit", "256"];
        var inproc = DGrabCli.Run([.. args, "--engine", "inproc", "--json", Path.Combine(dir, "inproc.json")]);
        Assert.True(inproc.ExitCode == 0, inproc.Stderr);
        var mpi = DGrabCli.Mpi(4, [.. args, "--engine", "mpi", "--json", Path.Combine(dir, "mpi.json")]);
        Assert.True(mpi.ExitCode == 0, mpi.Stderr + mpi.Stdout);
        string Epochs(string f) => JsonNode.Parse(File.ReadAllText(Path.Combine(dir, f)))!["epochs"]!.AsArray()
            .Select(e => $"{e!["epoch"]} {e["train_loss"]} {e["test_loss"]} {e["test_accuracy"]}").Aggregate((x, y) => x + "\n" + y);
        Assert.Equal(Epochs("inproc.json"), Epochs("mpi.json"));
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Mpi_engine_refuses_a_world_size_other_than_the_worker_count()
    {
        if (DGrabCli.MpirunMissing() is { } noMpi) Assert.Skip(noMpi);
        if (DGrabCli.FashionMnistMissing() is { } noData) Assert.Skip(noData);
        var r = DGrabCli.Mpi(2, "train", "--workers", "4", "--engine", "mpi", "--epochs", "1", "--train-limit", "64", "--test-limit", "16");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("use mpirun -np 4", r.Stderr);
    }
}
