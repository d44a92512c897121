using System.Diagnostics;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Testing.Bench;

/// <summary>One measured workload: the same model and inputs on several platforms, in one process.</summary>
public sealed record BenchCase(string Name, Model Model, Dictionary<string, Value> Feeds, double Flops = 0);

/// <summary>Timings of one case on one platform: median and min of the measured runs (after warm-up), in ms.</summary>
public sealed record BenchTiming(string Case, string Platform, double MedianMs, double MinMs, int Runs, double Flops)
{
    public double GflopsPerS => Flops > 0 ? Flops / (MedianMs * 1e6) : 0;
}

/// <summary>Measures cases on several platforms in one process (blocks of runs, two rounds, so slow drift hits
/// both sides alike); medians are compared as ratios.</summary>
public static class BenchRunner
{
    public static List<BenchTiming> Measure(BenchCase c, IReadOnlyList<IPlatform> platforms, int warmup, int runs, TimeSpan budget)
    {
        // NOTE: platforms run in blocks (two rounds of half the runs each), not alternately run by run: a peer's
        // worker threads keep spinning for a while after a run (ONNX Runtime does by default) and would steal
        // cores from the next platform's run on a small machine.
        var execs = platforms.Select(p => new Executor(p) { PreferWholeGraph = true }).ToArray();
        var times = platforms.Select(_ => new List<double>()).ToArray();
        var sw = Stopwatch.StartNew();
        int perBlock = Math.Max(1, (runs + 1) / 2);
        for (int round = 0; round < 2; round++)
        {
            for (int i = 0; i < execs.Length; i++)
            {
                for (int w = 0; w < (round == 0 ? warmup : 1); w++) execs[i].Run(c.Model, c.Feeds);
                for (int r = 0; r < perBlock; r++)
                {
                    long t0 = Stopwatch.GetTimestamp();
                    execs[i].Run(c.Model, c.Feeds);
                    times[i].Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                    if (r >= 1 && sw.Elapsed > budget) break;
                }
            }
        }
        return platforms.Select((p, i) =>
        {
            var t = times[i].Order().ToList();
            return new BenchTiming(c.Name, p.Name, t[t.Count / 2], t[0], t.Count, c.Flops);
        }).ToList();
    }
}
