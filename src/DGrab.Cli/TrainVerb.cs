using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DGrab.Engines;
using DGrab.Orders;
using DGrab.Training;

namespace DGrab.Cli;

/// <summary><c>dgrab train</c>: data-parallel SGD on Fashion-MNIST with one order policy (or a grid of them, in parallel).</summary>
public static class TrainVerb
{
    sealed record Run(string Order, float Lr, ulong Seed, List<EpochResult> Epochs);

    public static Command Create()
    {
        var dataset = new Option<string>("--dataset") { Description = "data set (fashion-mnist)", DefaultValueFactory = _ => "fashion-mnist" };
        var data = new Option<string>("--data") { Description = "folder of the IDX files", DefaultValueFactory = _ => FashionMnist.DefaultFolder };
        var model = new Option<string>("--model") { Description = $"model: {string.Join(", ", Models.Names)}", DefaultValueFactory = _ => "logreg" };
        var order = new Option<string>("--order") { Description = $"order: {string.Join(", ", Registry.Names)} (comma-separated list runs each)", DefaultValueFactory = _ => "cd-grab" };
        var workers = new Option<int>("--workers") { Description = "workers m", DefaultValueFactory = _ => 4 };
        var batch = new Option<int>("--batch") { Description = "examples per step over all workers (B; B/m each)", DefaultValueFactory = _ => 16 };
        var lr = new Option<string>("--lr") { Description = "constant learning rate (comma-separated list runs each)", DefaultValueFactory = _ => "0.01" };
        var momentum = new Option<float>("--momentum") { Description = "SGD momentum μ", DefaultValueFactory = _ => 0.9f };
        var epochs = new Option<int>("--epochs") { Description = "epochs", DefaultValueFactory = _ => 10 };
        var seed = new Option<string>("--seed") { Description = "seed (comma-separated list runs each)", DefaultValueFactory = _ => "0" };
        var engine = new Option<string>("--engine") { Description = "inproc (all workers in this process) or mpi (one process per worker, under mpirun)", DefaultValueFactory = _ => "inproc" };
        var trainLimit = new Option<int>("--train-limit") { Description = "use only the first N training examples (0: all)", DefaultValueFactory = _ => 0 };
        var testLimit = new Option<int>("--test-limit") { Description = "use only the first N test examples (0: all)", DefaultValueFactory = _ => 0 };
        var json = new Option<string?>("--json") { Description = "write per-epoch results as JSON" };
        var plot = new Option<string?>("--plot") { Description = "write the figure as SVG" };
        var cmd = new Command("train", "data-parallel momentum SGD with coordinated (cd-grab), independent (id-grab-*) or random (d-rr) example orders")
        { dataset, data, model, order, workers, batch, lr, momentum, epochs, seed, engine, trainLimit, testLimit, json, plot };
        cmd.Action(pr =>
        {
            if (pr.GetValue(dataset) != "fashion-mnist") throw new DGrabException($"unknown --dataset '{pr.GetValue(dataset)}' (data sets: fashion-mnist)");
            var orders = pr.GetValue(order)!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
            if (orders.Length == 0) throw new DGrabException("--order needs at least one value");
            foreach (var o in orders)
                if (!Registry.Names.Contains(o)) throw new DGrabException($"unknown --order '{o}' (orders: {string.Join(", ", Registry.Names)})");
            string modelName = pr.GetValue(model)!;
            if (!Models.Names.Contains(modelName)) throw new DGrabException($"unknown --model '{modelName}' (models: {string.Join(", ", Models.Names)})");
            string engineName = pr.GetValue(engine)!;
            if (!Engines.Engines.Names.Contains(engineName)) throw new DGrabException($"unknown --engine '{engineName}' (engines: {string.Join(", ", Engines.Engines.Names)})");
            var lrs = App.List(pr.GetValue(lr)!, "--lr", App.Float);
            var seeds = App.List(pr.GetValue(seed)!, "--seed", App.ULong);
            int m = pr.GetValue(workers), e = pr.GetValue(epochs), b = pr.GetValue(batch);
            float mu = pr.GetValue(momentum);
            var grid = orders.SelectMany(o => lrs.SelectMany(l => seeds.Select(s => new TrainOptions(modelName, o, m, b, l, mu, e, s)))).ToArray();
            if (grid.Length > 1 && engineName != "inproc") throw new DGrabException("--engine mpi runs one order, lr and seed at a time");
            // NOTE: validate every run's arguments before loading 200 MB of images or starting MPI.
            foreach (var g in grid) Validate(g);

            var (train, test) = FashionMnist.Load(pr.GetValue(data)!);
            train = train.Take(pr.GetValue(trainLimit));
            test = test.Take(pr.GetValue(testLimit));
            var runs = new Run[grid.Length];
            bool root = true;
            if (grid.Length == 1)
            {
                var g = grid[0];
                using var eng = Engines.Engines.Create(engineName, m);
                root = eng.IsRoot;
                if (root) Console.Error.WriteLine($"train: {g.Model} on fashion-mnist ({train.Count} train / {test.Count} test), {g.Order}, m={m}, B={b}, lr={g.LearningRate}, μ={mu}, seed={g.Seed}, engine {eng.Name}");
                runs[0] = new Run(g.Order, g.LearningRate, g.Seed, Trainer.Train(train, test, g, eng, r => Progress(null, r, e)));
            }
            else
            {
                Console.Error.WriteLine($"train: {grid.Length} runs ({string.Join(",", orders)} × lr {string.Join(",", lrs)} × seed {string.Join(",", seeds)}) of {modelName}, m={m}, B={b}, μ={mu}, {e} epochs, {Environment.ProcessorCount} cores");
                Parallel.For(0, grid.Length, i =>
                {
                    var g = grid[i];
                    using var eng = new InProcessEngine(m);
                    runs[i] = new Run(g.Order, g.LearningRate, g.Seed,
                        Trainer.Train(train, test, g, eng, r => Progress($"{g.Order} lr={g.LearningRate} seed={g.Seed}", r, e)));
                });
            }
            if (!root) return 0;
            var summary = Summary(runs, orders, lrs);
            if (pr.GetValue(json) is { } jf) { App.EnsureFolder(jf); File.WriteAllText(jf, ToJson(runs, summary, modelName, m, b, mu).ToJsonString(new JsonSerializerOptions { WriteIndented = true })); }
            if (pr.GetValue(plot) is { } pf) { App.EnsureFolder(pf); File.WriteAllText(pf, Plot(runs, orders, lrs, modelName, m, b)); }
            return 0;
        });
        return cmd;
    }

    static void Validate(TrainOptions o)
    {
        if (o.Workers < 1) throw new DGrabException($"--workers must be at least 1 (got {o.Workers})");
        if (o.Batch < o.Workers || o.Batch % o.Workers != 0) throw new DGrabException($"--batch ({o.Batch}) must be a positive multiple of --workers ({o.Workers})");
        if (Registry.UsesPairs(o.Order) && o.Batch / o.Workers % 2 != 0)
            throw new DGrabException($"{o.Order} balances pairs: --batch / --workers must be even (got {o.Batch} / {o.Workers})");
        if (o.Epochs < 0) throw new DGrabException($"--epochs must be at least 0 (got {o.Epochs})");
        if (!(o.LearningRate > 0)) throw new DGrabException($"--lr must be a positive number (got {o.LearningRate})");
        if (!(o.Momentum >= 0 && o.Momentum < 1)) throw new DGrabException($"--momentum must be in [0, 1) (got {o.Momentum})");
    }

    static void Progress(string? label, EpochResult r, int epochs)
    {
        string line = $"epoch {r.Epoch,3}/{epochs}  train loss {r.TrainLoss:0.0000}  test loss {r.TestLoss:0.0000}  test acc {100 * r.TestAccuracy:0.00}%  ({r.Seconds:0.0} s)";
        Console.Error.WriteLine(label is null ? line : $"{label}: {line}");
    }

    /// <summary>Per (order, lr): final train loss and test accuracy, mean ± std over seeds; and per lr the first
    /// epoch at which each order's mean train loss reaches d-rr's final mean train loss.</summary>
    static JsonArray Summary(Run[] runs, string[] orders, float[] lrs)
    {
        var rows = new JsonArray();
        foreach (var lr in lrs)
        {
            var drr = runs.Where(x => x.Order == "d-rr" && x.Lr == lr).ToList();
            double? target = drr.Count > 0 ? Stats.MeanStd(drr.Select(x => x.Epochs[^1].TrainLoss).ToList()).Mean : null;
            foreach (var o in orders)
            {
                var mine = runs.Where(x => x.Order == o && x.Lr == lr).ToList();
                var loss = Stats.MeanStd(mine.Select(x => x.Epochs[^1].TrainLoss).ToList());
                var acc = Stats.MeanStd(mine.Select(x => x.Epochs[^1].TestAccuracy).ToList());
                int? reach = null;
                if (target is { } t)
                    for (int k = 0; k < mine[0].Epochs.Count && reach is null; k++)
                        if (Stats.MeanStd(mine.Select(x => x.Epochs[k].TrainLoss).ToList()).Mean <= t) reach = mine[0].Epochs[k].Epoch;
                rows.Add((JsonNode)new JsonObject
                {
                    ["order"] = o, ["lr"] = lr, ["seeds"] = mine.Count,
                    ["final_train_loss"] = loss.Mean, ["final_train_loss_std"] = loss.Std,
                    ["final_test_accuracy"] = acc.Mean, ["final_test_accuracy_std"] = acc.Std,
                    ["epoch_reaching_d_rr_final_loss"] = reach,
                });
                string reachText = target is null ? "" : reach is { } ep ? $"  reaches d-rr's final loss at epoch {ep}" : "  never reaches d-rr's final loss";
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{o,-16} lr={lr,-7} final train loss {loss.Mean:0.00000} ± {loss.Std:0.00000}  test acc {100 * acc.Mean:0.00} ± {100 * acc.Std:0.00}%{reachText}"));
            }
        }
        return rows;
    }

    static JsonArray Epochs(List<EpochResult> epochs) => new(epochs.Select(r => (JsonNode)new JsonObject
    {
        ["epoch"] = r.Epoch, ["train_loss"] = r.TrainLoss, ["test_accuracy"] = r.TestAccuracy, ["test_loss"] = r.TestLoss, ["seconds"] = r.Seconds,
    }).ToArray());

    /// <summary><c>{"epochs":[…]}</c> for one run; several runs give <c>"runs":[{"order","lr","seed","epochs"}]</c> and "summary".</summary>
    static JsonObject ToJson(Run[] runs, JsonArray summary, string model, int m, int b, float mu)
    {
        var j = new JsonObject { ["dataset"] = "fashion-mnist", ["model"] = model, ["workers"] = m, ["batch"] = b, ["momentum"] = mu };
        if (runs.Length == 1)
        {
            j["order"] = runs[0].Order; j["lr"] = runs[0].Lr; j["seed"] = runs[0].Seed;
            j["epochs"] = Epochs(runs[0].Epochs);
        }
        else
        {
            j["runs"] = new JsonArray(runs.Select(x => (JsonNode)new JsonObject { ["order"] = x.Order, ["lr"] = x.Lr, ["seed"] = x.Seed, ["epochs"] = Epochs(x.Epochs) }).ToArray());
            j["summary"] = summary;
        }
        return j;
    }

    static string Plot(Run[] runs, string[] orders, float[] lrs, string model, int m, int b)
    {
        var panels = new List<Panel>();
        foreach (var (title, pick) in new (string, Func<EpochResult, double>)[] { ("train loss", r => r.TrainLoss), ("test accuracy (%)", r => 100 * r.TestAccuracy) })
            foreach (var lr in lrs)
            {
                var series = orders.Select(o =>
                {
                    var mine = runs.Where(x => x.Order == o && x.Lr == lr).ToList();
                    var xs = mine[0].Epochs.Select(r => (double)r.Epoch).ToArray();
                    var st = Enumerable.Range(0, xs.Length).Select(k => Stats.MeanStd(mine.Select(x => pick(x.Epochs[k])).ToList())).ToArray();
                    return new Series(o, xs, st.Select(t => t.Mean).ToArray(), st.Select(t => t.Std).ToArray());
                }).ToList();
                // NOTE: epoch 0 (the initial model) would flatten the loss axis; the curves start after epoch 1.
                series = series.Select(s => s with { X = s.X[1..], Mean = s.Mean[1..], Std = s.Std![1..] }).Where(s => s.X.Length > 0).ToList();
                panels.Add(new Panel(string.Create(CultureInfo.InvariantCulture, $"{title}, lr = {lr}"), "epoch", title, series, LogY: false));
            }
        int seeds = runs.Select(x => x.Seed).Distinct().Count();
        return Svg.Figure($"Fashion-MNIST {model}, m = {m} workers, B = {b}: mean ± std over {seeds} seed(s)", panels, lrs.Length, Registry.Names);
    }
}
