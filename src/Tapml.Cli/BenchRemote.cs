using System.Diagnostics;
using Spectre.Console;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Remote;
using Tapml.Testing;
using Tapml.Testing.Migration;

namespace Tapml.Cli;

/// <summary><c>tapml bench remote</c>: what the remote layer costs on loopback, against the local platform in the same
/// process: a small node's round trip, upload/download throughput, and a tiny-llama migration.</summary>
static class BenchRemote
{
    public static int Run(string platform, int runs)
    {
        using var server = RemoteServer.StartAsync(new ServeOptions(platform), "127.0.0.1:0").GetAwaiter().GetResult();
        string spec = "remote:" + server.Url;
        using var local = PlatformRegistry.Create(platform);
        using var remote = new RemotePlatform(spec);
        var table = new Table().AddColumns("measure", Markup.Escape($"{platform} (local)"), "remote (loopback)", "ratio / target");
        void Row(params string[] cells) => table.AddRow(cells.Select(Markup.Escape).ToArray());

        // A small node: Add of two f32[16]; inputs stay uploaded (cached per host tensor), one Run call per node.
        double lRt = RoundTrip.Median(local, 200, 1000, runs), rRt = RoundTrip.Median(remote, 200, 1000, runs);
        Row("small node round trip (Add f32[16]), ms", $"{lRt:F4}", $"{rRt:F4}", $"{rRt:F3} ms (target ≤ 0.3 ms)");

        // Throughput: 64 MiB f32 tensors, new content each time (the server's content cache does not help), over the
        // bulk HTTP/1.1 port and over the gRPC streams (bulk=0) in turn.
        using var chunked = new RemotePlatform(spec + "?bulk=0");
        const int n = 16 << 20;
        var big = Tensor.FromArray(new float[n], n);
        var id = new Node { Name = "id", OpType = "Identity", Inputs = ["x"], Outputs = ["y"] };
        var ctx = new NodeContext(id, 17);
        double mb = n * 4 / 1e6;
        foreach (var (p, how) in new[] { (remote, "bulk HTTP/1.1"), (chunked, "gRPC chunks") })
        {
            var kernel = p.Prepare(id, ctx, [TypeRef.TensorOf(DType.Float32, [n])]);
            List<double> up = [], down = [];
            for (int r = 0; r < Math.Max(3, runs); r++)
            {
                big.Span<float>()[0] = r + 1;
                var copy = big.Clone();
                var sw = Stopwatch.StartNew();
                var v = p.Upload(copy);
                up.Add(sw.Elapsed.TotalSeconds);
                var o = p.Run(kernel, ctx, [v])[0]!;
                sw.Restart();
                p.Download(o);
                down.Add(sw.Elapsed.TotalSeconds);
                p.Free(o);
                p.Free(v);
            }
            up.Sort(); down.Sort();
            double upMBs = mb / up[up.Count / 2], downMBs = mb / down[down.Count / 2];
            Row($"upload 64 MiB (hash + {how}), MB/s", "—", $"{upMBs:F0}", "target ≥ 1000 MB/s");
            Row($"download 64 MiB ({how}), MB/s", "—", $"{downMBs:F0}", "target ≥ 1000 MB/s");
        }

        // Migration of tiny-llama (prefill 8 + 16 decode), a nan fault behind each side, so both localize it.
        var llama = HfModels.Load(TinyCheckpoint.Materialize("llama"));
        var input = new MigrationInput(PromptIds: [1, 17, 305, 42, 7, 99, 100, 3], DecodeSteps: 16);
        string fault = $"?node={llama.Graph.Nodes[llama.Graph.Nodes.Count * 2 / 3].Name}&kind=nan";
        if (RemoteStats.On) RemoteStats.Report("discarded");
        using var faultyServer = RemoteServer.StartAsync(new ServeOptions($"faulty:{platform}{fault}"), "127.0.0.1:0").GetAwaiter().GetResult();
        foreach (var strategy in new[] { "lockstep", "bisect" })
        {
            // NOTE: local and remote migrations alternate (one untimed of each first: the JIT and each platform's
            // first-use costs, on both sides alike), so both sample the same load of a shared machine; medians.
            string[] targets = [$"faulty:{platform}{fault}", "remote:" + faultyServer.Url];
            var times = new[] { new List<double>(), new List<double>() };
            for (int run = -1; run < Math.Max(3, runs); run++)
                for (int side = 0; side < 2; side++)
                {
                    var sw = Stopwatch.StartNew();
                    var res = new Migrator(llama, "cpu", targets[side], input, new Tolerances(), new Tolerance(1e-3, 1e-4)).Run(strategy);
                    if (run >= 0) times[side].Add(sw.Elapsed.TotalMilliseconds);
                    if (res.FirstDivergent is null) throw new TapmlException($"bench remote: migration to {targets[side]} found no culprit");
                    if (side == 1 && run < 0 && RemoteStats.On) RemoteStats.Report("discarded");
                }
            if (RemoteStats.On) Console.Error.Write(RemoteStats.Report($"{strategy} to {targets[1]}, {times[1].Count} timed runs"));
            double Median(List<double> t) { t.Sort(); return t[t.Count / 2]; }
            double l = Median(times[0]), r = Median(times[1]);
            Row($"migrate tiny-llama ({strategy}), ms", $"{l:F0}", $"{r:F0}", $"{r / l:F2}× (target ≤ 2×)");
        }
        table.Caption(Markup.Escape($"loopback gRPC (h2c) and bulk HTTP/1.1 to an in-process `serve --platform {platform}`; medians; {Environment.ProcessorCount} cores"));
        AnsiConsole.Write(table);
        return 0;
    }
}
