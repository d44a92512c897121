using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DGrab.Orders;

namespace DGrab.Cli;

/// <summary><c>dgrab simulate-herding</c>: the parallel herding bound per reorder round of every order (paper §6).</summary>
public static class SimulateHerdingVerb
{
    public static Command Create()
    {
        var workers = new Option<string>("--workers") { Description = "workers m (comma-separated list runs each)", Required = true };
        var rounds = new Option<int>("--rounds") { Description = "reorder rounds", DefaultValueFactory = _ => 16 };
        var dim = new Option<int>("--dim") { Description = "vector dimension d", DefaultValueFactory = _ => 16 };
        var vectors = new Option<int>("--vectors") { Description = "vectors N in all, split into m shards", DefaultValueFactory = _ => 1_000_000 };
        var seed = new Option<string>("--seed") { Description = "seed (comma-separated list runs each; the figure shows mean ± std)", DefaultValueFactory = _ => "0" };
        var json = new Option<string?>("--json") { Description = "write the bounds as JSON" };
        var plot = new Option<string?>("--plot") { Description = "write the figure as SVG" };
        var cmd = new Command("simulate-herding", "parallel herding bound max_k ‖Σ_{s≤k} Σ_j (z_{j,π_j(s)} − z̄)‖_∞ per reorder round, z ~ U[0,1]^d")
        { workers, rounds, dim, vectors, seed, json, plot };
        cmd.Action(pr =>
        {
            var ms = App.List(pr.GetValue(workers)!, "--workers", App.Int);
            var seeds = App.List(pr.GetValue(seed)!, "--seed", App.ULong);
            int r = pr.GetValue(rounds), d = pr.GetValue(dim), n = pr.GetValue(vectors);
            if (ms.Any(m => m < 1)) throw new DGrabException($"--workers must be at least 1 (got {string.Join(",", ms)})");
            if (d < 1) throw new DGrabException($"--dim must be at least 1 (got {d})");
            if (r < 0) throw new DGrabException($"--rounds must be at least 0 (got {r})");
            if (n < 2 || n % 2 != 0 || ms.Any(m => n % (2 * m) != 0))
                throw new DGrabException($"--vectors ({n}) must split into even shards for every --workers value ({string.Join(",", ms)})");
            var jobs = ms.SelectMany(m => seeds.Select(s => (m, s))).ToArray();
            var runs = new HerdingRun[jobs.Length];
            var clock = System.Diagnostics.Stopwatch.StartNew();
            Parallel.For(0, jobs.Length, i =>
            {
                runs[i] = Herding.Simulate(jobs[i].m, n, d, r, jobs[i].s);
                Console.Error.WriteLine($"simulate-herding: m={jobs[i].m} seed={jobs[i].s} done ({clock.Elapsed.TotalSeconds:0.0} s)");
            });
            PrintTable(runs, ms, r);
            if (pr.GetValue(json) is { } jf) { App.EnsureFolder(jf); File.WriteAllText(jf, ToJson(runs, n, d).ToJsonString(new JsonSerializerOptions { WriteIndented = true })); }
            if (pr.GetValue(plot) is { } pf) { App.EnsureFolder(pf); File.WriteAllText(pf, Plot(runs, ms, n, d)); }
            return 0;
        });
        return cmd;
    }

    static string Key(string order) => order.Replace('-', '_');

    static void PrintTable(HerdingRun[] runs, int[] ms, int rounds)
    {
        foreach (int m in ms)
        {
            var mine = runs.Where(x => x.Workers == m).ToList();
            Console.WriteLine($"m = {m} workers, {mine.Count} seed(s): parallel herding bound, mean ± std");
            Console.WriteLine("round " + string.Concat(Registry.Names.Select(o => $"{o,22}")));
            for (int k = 0; k <= rounds; k++)
            {
                var cells = Registry.Names.Select(o => Stats.MeanStd(mine.Select(x => x.Bounds[o][k]).ToList()))
                    .Select(t => $"{t.Mean.ToString("0.000", CultureInfo.InvariantCulture) + " ± " + t.Std.ToString("0.000", CultureInfo.InvariantCulture),22}");
                Console.WriteLine($"{k,5} " + string.Concat(cells));
            }
        }
    }

    static JsonObject Rounds(HerdingRun run)
    {
        var rows = new JsonArray();
        for (int k = 0; k < run.Bounds[Registry.Names[0]].Length; k++)
        {
            var row = new JsonObject { ["round"] = k };
            foreach (var o in Registry.Names) row[Key(o)] = run.Bounds[o][k];
            rows.Add((JsonNode)row);
        }
        return new JsonObject { ["workers"] = run.Workers, ["seed"] = run.Seed, ["rounds"] = rows };
    }

    /// <summary><c>{"rounds":[…]}</c> for one run; with several (workers, seed) runs also <c>"runs":[{"workers","seed","rounds"}]</c>
    /// and "rounds" is the first run's.</summary>
    public static JsonObject ToJson(HerdingRun[] runs, int vectors, int dim)
    {
        var all = new JsonArray(runs.Select(x => (JsonNode)Rounds(x)).ToArray());
        return new JsonObject
        {
            ["vectors"] = vectors,
            ["dim"] = dim,
            ["rounds"] = Rounds(runs[0])["rounds"]!.DeepClone(),
            ["runs"] = all,
        };
    }

    static string Plot(HerdingRun[] runs, int[] ms, int vectors, int dim)
    {
        var panels = ms.Select(m =>
        {
            var mine = runs.Where(x => x.Workers == m).ToList();
            int len = mine[0].Bounds[Registry.Names[0]].Length;
            var xs = Enumerable.Range(0, len).Select(k => (double)k).ToArray();
            var series = Registry.Names.Select(o =>
            {
                var st = Enumerable.Range(0, len).Select(k => Stats.MeanStd(mine.Select(x => x.Bounds[o][k]).ToList())).ToArray();
                return new Series(o, xs, st.Select(t => t.Mean).ToArray(), st.Select(t => t.Std).ToArray());
            }).ToList();
            return new Panel($"m = {m} workers ({mine.Count} seeds)", "reorder round", "parallel herding bound", series, LogY: true);
        }).ToList();
        return Svg.Figure($"Parallel herding bound, N = {vectors:N0} vectors z ~ U[0,1]^{dim} (mean ± std)", panels, ms.Length, Registry.Names);
    }
}
