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

/// <summary>Measures cases on platforms with interleaved runs (so drift hits both sides alike) and reports
/// ratios against the first platform given as the reference.</summary>
public static class BenchRunner
{
    public static List<BenchTiming> Measure(BenchCase c, IReadOnlyList<IPlatform> platforms, int warmup, int runs, TimeSpan budget)
    {
        var execs = platforms.Select(p => new Executor(p) { PreferWholeGraph = true }).ToArray();
        for (int w = 0; w < warmup; w++) foreach (var e in execs) e.Run(c.Model, c.Feeds);
        var times = platforms.Select(_ => new List<double>()).ToArray();
        var sw = Stopwatch.StartNew();
        for (int r = 0; r < runs; r++)
        {
            for (int i = 0; i < execs.Length; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                execs[i].Run(c.Model, c.Feeds);
                times[i].Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            }
            if (r >= 2 && sw.Elapsed > budget) break;
        }
        return platforms.Select((p, i) =>
        {
            var t = times[i].Order().ToList();
            return new BenchTiming(c.Name, p.Name, t[t.Count / 2], t[0], t.Count, c.Flops);
        }).ToList();
    }
}
