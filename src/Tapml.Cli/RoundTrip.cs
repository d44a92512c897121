using System.Diagnostics;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Cli;

/// <summary>A small node's round trip on a platform (benchmarks of the remote and browser bridges): Add of two
/// f32[16] whose inputs stay uploaded, run and read back through the executor; median ms per run.</summary>
static class RoundTrip
{
    public static double Median(IPlatform p, int warmup, int calls, int runs)
    {
        var g = new Graph { Name = "add" };
        g.Inputs.Add(new ValueInfo("a", TypeRef.TensorOf(DType.Float32, [16])));
        g.Inputs.Add(new ValueInfo("b", TypeRef.TensorOf(DType.Float32, [16])));
        g.Outputs.Add(new ValueInfo("y", TypeRef.TensorOf(DType.Float32, [16])));
        g.Nodes.Add(new Node { Name = "add", OpType = "Add", Inputs = ["a", "b"], Outputs = ["y"] });
        var m = new Model { Graph = g, Opsets = new() { [""] = 17 } };
        var feeds = new Dictionary<string, Value> { ["a"] = Tensor.FromArray(new float[16], 16), ["b"] = Tensor.FromArray(new float[16], 16) };
        var e = new Executor(p);
        for (int i = 0; i < warmup; i++) e.Run(m, feeds);
        var t = new List<double>();
        for (int r = 0; r < Math.Max(3, runs); r++)
        {
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < calls; i++) e.Run(m, feeds);
            t.Add(sw.Elapsed.TotalMilliseconds / calls);
        }
        t.Sort();
        return t[t.Count / 2];
    }
}
