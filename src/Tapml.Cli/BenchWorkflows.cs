using System.Diagnostics;
using Spectre.Console;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Testing;
using Tapml.Testing.Carving;
using Tapml.Testing.Migration;
using Recorder = Tapml.Testing.Carving.Recorder;

namespace Tapml.Cli;

/// <summary><c>tapml bench carve</c> and <c>tapml bench migrate</c>: the cost of the TapML workflow itself, measured
/// against a plain run of the same model in the same process.</summary>
static class BenchWorkflows
{
    public static IReadOnlyList<string> Names => ["carve", "migrate", "llm", "llm-large", "gpu", "matvec-sweep", "remote", "browser", "memory", .. BenchQ4.Names, .. BenchMatMul.Names, .. BenchLong.Names, .. BenchSkinny.Names];

    sealed record Subject(string Name, Model Model, Action<Executor> Run, MigrationInput Input);

    static IEnumerable<Subject> Subjects(string shared)
    {
        var llama = HfModels.Load(TinyCheckpoint.Materialize("llama"));
        long[] prompt = [1, 17, 305, 42, 7, 99, 100, 3];
        yield return new Subject("tiny-llama (prefill 8 + 16 decode)", llama, e => Generation.Greedy(e, llama, prompt, 17), new MigrationInput(PromptIds: prompt, DecodeSteps: 16));
        string dir = Path.Combine(shared, "conformance", "onnx", "light-cases", "test_light_resnet50");
        if (!Directory.Exists(dir)) { Console.Error.WriteLine($"bench: {dir} is absent; resnet50-light skipped"); yield break; }
        var resnet = OnnxImporter.Load(Path.Combine(dir, "model.onnx"));
        var feeds = Testing.Conformance.OnnxCase.LoadDataSet(resnet, Path.Combine(dir, "test_data_set_0")).Inputs;
        yield return new Subject("resnet50-light", resnet, e => e.Run(resnet, feeds), new MigrationInput(Feeds: feeds));
    }

    /// <summary>Prefill and decode tokens/s of a ~100M-parameter Llama-shaped checkpoint (12 layers, hidden 768,
    /// 12 heads, 4 KV heads, intermediate 2048, vocab 32000: 125M parameters, f32) on cpu and onnxruntime (the same
    /// graph, run whole by ORT) in one process, with the process's peak working set and the executor's peak live bytes.</summary>
    static int Llm(int runs, string gpu, QuantizeScheme? quantize, bool half)
    {
        var (plain, parameters, readBytes) = BenchLlama("tapml-bench-llama-125m", new TinyCheckpoint.Sizes(Layers: 12, Hidden: 768, Heads: 12, KvHeads: 4, Intermediate: 2048, Vocab: 32000), quantize, half);
        var rng = new Random(3);
        long[] prompt = Enumerable.Range(0, 64).Select(_ => (long)rng.Next(32000)).ToArray();
        const int newTokens = 33;                       // the prefill's token + 32 decode steps
        var table = new Table().AddColumns("platform", "prefill tokens/s", "decode tokens/s", "decode ms/token", "peak live bytes", "process peak working set");
        var results = new List<(string, GenerationResult)>();
        var specs = new List<string> { "onnxruntime", "cpu" };
        if (gpu != "webgpu" || Tapml.Platforms.WebGpu.WebGpuPlatform.Unavailable() is null) specs.Add(gpu);
        foreach (var spec in specs)
        {
            using var p = PlatformRegistry.Create(spec);
            var exec = new Executor(p) { PreferWholeGraph = true };
            var model = plain;
            if (GenerateVerb.FusesByDefault(p))
            {
                model = GenerateVerb.Fuse(plain, p, out var fr);
                Console.WriteLine($"{spec}: fused {fr}");
            }
            Generation.Greedy(exec, model, prompt.AsSpan(0, 8), 3);          // warm-up (ORT builds its session here)
            SteadyClocks(p, () => Generation.Greedy(exec, model, prompt, newTokens, keepPromptLogits: false));
            GenerationResult? best = null;
            string counters = "";
            // On webgpu, each run is preceded by variants that undo one choice (interleaved, so that all see the same
            // machine load): the logits read back and the argmax taken on the host; no folds into attention (q's rotary
            // and the KV append as their own dispatches).
            var variants = p is Tapml.Platforms.WebGpu.WebGpuPlatform
                ? new (string Name, Tapml.Ir.Model Model, bool DeviceArgmax, int AttentionGroups)[]
                  {
                      ("the logits read back and the argmax on the host (no pipelining)", model, false, 4),
                      ("no folds into attention (rotary and KV concats as their own dispatches)", Fusion.Fuse(plain, out _, projections: true, foldAttention: false), true, 4),
                      ("one key group an attention workgroup", model, true, 1),
                  }
                : [];
            var variantBest = new double[variants.Length];
            GenerationResult RunVariant(int k, int promptLength, int tokens)
            {
                Tapml.Platforms.WebGpu.Kernels.Fused.MaxAttentionGroups = variants[k].AttentionGroups;
                try { return Generation.Run(exec, variants[k].Model, prompt.AsSpan(0, promptLength), tokens, SamplingOptions.Greedy, argmaxOnDevice: variants[k].DeviceArgmax); }
                finally { Tapml.Platforms.WebGpu.Kernels.Fused.MaxAttentionGroups = 4; }
            }
            for (int k = 0; k < variants.Length; k++) RunVariant(k, 8, 3);
            for (int i = 0; i < runs; i++)
            {
                for (int k = 0; k < variants.Length; k++)
                    variantBest[k] = Math.Max(variantBest[k], RunVariant(k, prompt.Length, newTokens).DecodeTokensPerSecond);
                var (r, c) = CountedRun(p, () => Generation.Greedy(exec, model, prompt, newTokens, keepPromptLogits: false));
                if (best is null || r.DecodeTokensPerSecond > best.DecodeTokensPerSecond) (best, counters) = (r, c);
            }
            if (counters.Length > 0) Console.WriteLine($"{spec}: {counters}");
            for (int k = 0; k < variants.Length; k++)
                Console.WriteLine($"{spec}: decode {variantBest[k]:F1} tokens/s with {variants[k].Name} ({variantBest[k] / best!.DecodeTokensPerSecond:F2}× the {best.DecodeTokensPerSecond:F1} above)");
            results.Add((spec, best!));
            long peakWs = Process.GetCurrentProcess().PeakWorkingSet64;
            table.AddRow(spec, $"{best!.PrefillTokensPerSecond:F1}", $"{best.DecodeTokensPerSecond:F1}", $"{best.DecodeMs / Math.Max(1, best.DecodeSteps):F1}",
                spec == "onnxruntime" ? "(inside ORT)" : Format.Bytes(exec.Stats.PeakLiveBytes), Format.Bytes(peakWs));
            Console.Error.WriteLine($"bench llm: {spec}: prefill {best.PrefillTokensPerSecond:F1} tokens/s, decode {best.DecodeTokensPerSecond:F1} tokens/s");
        }
        var (ort, cpuR) = (results[0].Item2, results[1].Item2);
        bool same = ort.Tokens.SequenceEqual(cpuR.Tokens);
        table.Caption($"llama {parameters / 1e6:F0}M parameters (f32, {Format.Bytes(parameters * 4)}), prompt 64 tokens, 32 decode steps, best of {runs}; " +
                      $"cpu/ORT: prefill {cpuR.PrefillTokensPerSecond / ort.PrefillTokensPerSecond:F2}×, decode {cpuR.DecodeTokensPerSecond / ort.DecodeTokensPerSecond:F2}×; " +
                      $"greedy tokens {(same ? "identical" : "DIFFER")}; process peak working set is cumulative (ORT ran first)");
        AnsiConsole.Write(table);
        if (results.Count > 2)
        {
            var g = results[2].Item2;
            bool gsame = g.Tokens.SequenceEqual(cpuR.Tokens);
            Console.WriteLine($"{results[2].Item1}: decode {g.DecodeTokensPerSecond:F1} tokens/s = {g.DecodeTokensPerSecond / cpuR.DecodeTokensPerSecond:F2}× cpu, {g.DecodeTokensPerSecond / ort.DecodeTokensPerSecond:F2}× onnxruntime; " +
                              $"prefill {g.PrefillTokensPerSecond:F1} tokens/s; {Format.Bytes(readBytes)} of weights read per decode step ({readBytes} B; the embedding table only by row); greedy tokens {(gsame ? "identical to cpu" : "DIFFER from cpu")}");
            same &= gsame;
        }
        return same ? 0 : 1;
    }

    /// <summary>A Llama checkpoint of <paramref name="sizes"/> (seed 1; written into the temp folder <paramref name="name"/>
    /// once), its parameter count and the bytes a decode step reads: every weight except tables only a Gather reads
    /// (one row of the embedding); with <paramref name="quantize"/>, its MatMul weights quantized (the bytes read are
    /// then the packed weights'). With <paramref name="half"/>, the same checkpoint stored in f16 (the f32 values rounded
    /// to nearest; folder <paramref name="name"/>-f16) loaded with <c>--weights f16</c>.</summary>
    internal static (Tapml.Ir.Model Model, long Parameters, long ReadBytes) BenchLlama(string name, TinyCheckpoint.Sizes sizes, QuantizeScheme? quantize = null, bool half = false)
    {
        if (half) name += "-f16";
        string dir = Path.Combine(Path.GetTempPath(), name);
        if (!File.Exists(Path.Combine(dir, "model.safetensors"))) TinyCheckpoint.Write("llama", 1, dir, sizes, half ? DType.Float16 : DType.Float32);
        var m = HfModels.Load(dir);
        long parameters = m.Graph.Initializers.Values.Where(t => t.Rank >= 1 && t.Length > 1000).Sum(t => t.Length);
        if (quantize is not null) Console.WriteLine($"{name}: weights quantized, {quantize.Name}: {WeightQuantizer.Apply(m, quantize)}");
        if (half) Console.WriteLine($"{name}: f16: {HalfWeights.Apply(m)}");
        return (m, parameters, DecodeReadBytes(m));
    }

    /// <summary>Bytes of the initializers a decode step reads: all but tables only a Gather reads (one row of them),
    /// directly or through a Cast (<c>--weights f16</c>).</summary>
    internal static long DecodeReadBytes(Tapml.Ir.Model m)
    {
        var nodes = m.Graph.Nodes;
        bool GatherOnly(string v) => nodes.Where(n => n.Inputs.Contains(v)).All(n => n.OpType == "Gather" || n.OpType == "Cast" && GatherOnly(n.Outputs[0]));
        return m.Graph.Initializers.Where(kv => !GatherOnly(kv.Key)).Sum(kv => kv.Value.Length * DTypes.Size(kv.Value.DType));
    }

    /// <summary>A generation run and what it cost besides: per step (prefill and decode steps run the same graph)
    /// dispatches, submits and readbacks, the share of the run's wall time the host spent waiting for the GPU (near 0:
    /// the host sets the pace, not the GPU), and the garbage collections during it ("" for platforms without counters).</summary>
    static (GenerationResult Result, string Counters) CountedRun(IPlatform p, Func<GenerationResult> run)
    {
        var dev = p as IKernelProfile;
        var before = dev?.Counters ?? default;
        int gc0 = GC.CollectionCount(0), gc2 = GC.CollectionCount(2);
        var pause0 = GC.GetTotalPauseDuration();
        long alloc0 = GC.GetTotalAllocatedBytes();
        var r = run();
        string gc = $"{GC.CollectionCount(0) - gc0} GCs ({GC.CollectionCount(2) - gc2} full), {(GC.GetTotalPauseDuration() - pause0).TotalMilliseconds:F1} ms paused, " +
                    $"{(GC.GetTotalAllocatedBytes() - alloc0) / 1024.0 / (r.DecodeSteps + 1):F1} KiB allocated a step";
        if (dev is null) return (r, "");
        var c = dev.Counters - before;
        return (r, $"{c.PerStep(r.DecodeSteps + 1)}; waiting for the GPU {c.WaitMs / (r.PrefillMs + r.DecodeMs) * 100:F0}% of the run; {gc}");
    }

    /// <summary>Decode where weight bandwidth, not dispatches, sets the pace: four layers of Llama-3-8B's shape (hidden
    /// 4096, 32 heads, 8 KV heads, intermediate 14336; vocab 32000): 1.13B parameters, 3.7 GiB f32 read per token.
    /// webgpu against cpu in one process (ORT is left out: the graph's 4.5 GiB are over protobuf's 2 GiB, and its
    /// session would take minutes); prompt 16, 16 decode steps. Prints the effective weight bandwidth of a decode step
    /// (bytes read ÷ time), to set against the matrix-vector bandwidth <c>bench gpu</c> measures. Several GPU specs
    /// separated by <c>;</c> run one after another in the same process on the same weights (a layout sweep pays the
    /// checkpoint and its quantization once; repeat a spec to see the noise), each against cpu's tokens.</summary>
    static int LlmLarge(int runs, string gpu, QuantizeScheme? quantize, bool half)
    {
        var gpus = gpu.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (gpus.Length == 0) throw new TapmlException("bench llm-large: --platform names no platform");
        var (plain, parameters, readBytes) = BenchLlama("tapml-bench-llama-4x4096", new TinyCheckpoint.Sizes(Layers: 4, Hidden: 4096, Heads: 32, KvHeads: 8, Intermediate: 14336, Vocab: 32000), quantize, half);
        var rng = new Random(3);
        long[] prompt = Enumerable.Range(0, 16).Select(_ => (long)rng.Next(32000)).ToArray();
        const int newTokens = 17;
        if (gpus.Contains("webgpu") && Tapml.Platforms.WebGpu.WebGpuPlatform.Unavailable() is { } why) { Console.Error.WriteLine($"bench llm-large: {why}"); return 2; }
        var table = new Table().AddColumns("platform", "prefill tokens/s", "decode tokens/s", "decode ms/token", "weight bandwidth of a decode step");
        var results = new List<GenerationResult>();
        var promptLogits = new List<float[]>();
        foreach (var spec in gpus.Prepend("cpu"))
        {
            using var p = PlatformRegistry.Create(spec);
            var exec = new Executor(p) { PreferWholeGraph = true };
            var model = GenerateVerb.FusesByDefault(p) ? GenerateVerb.Fuse(plain, p, out _) : plain;
            // The prompt's last-position logits (compared across platforms below when the tokens differ).
            var pl = Generation.Greedy(exec, model, prompt, 1).PrefillLogits;
            promptLogits.Add(Tapml.Platforms.Cpu.TensorConvert.ToF32(pl).As<float>()[^(int)pl.Shape[^1]..]);
            Generation.Greedy(exec, model, prompt.AsSpan(0, 4), 2);
            SteadyClocks(p, () => Generation.Greedy(exec, model, prompt, newTokens, keepPromptLogits: false));
            GenerationResult? best = null;
            string counters = "";
            for (int i = 0; i < (spec == "cpu" ? 1 : runs); i++)
            {
                var (r, c) = CountedRun(p, () => Generation.Greedy(exec, model, prompt, newTokens, keepPromptLogits: false));
                if (best is null || r.DecodeTokensPerSecond > best.DecodeTokensPerSecond) (best, counters) = (r, c);
            }
            if (counters.Length > 0) Console.Error.WriteLine($"bench llm-large: {spec}: {counters}");
            results.Add(best!);
            // One more run with GPU time per kernel (each dispatch in a pass of its own: slower, not the measurement).
            if (p is IKernelProfile wg && wg.StartProfile())
            {
                var pr = Generation.Greedy(exec, model, prompt, newTokens, keepPromptLogits: false);
                GenerateVerb.PrintProfile(wg.StopProfile(), pr.DecodeSteps + 1);
            }
            table.AddRow(spec, $"{best!.PrefillTokensPerSecond:F1}", $"{best.DecodeTokensPerSecond:F1}", $"{best.DecodeMs / Math.Max(1, best.DecodeSteps):F2}",
                $"{readBytes * best.DecodeTokensPerSecond / 1e12:F2} TB/s");
            Console.Error.WriteLine($"bench llm-large: {spec}: prefill {best.PrefillTokensPerSecond:F1} tokens/s, decode {best.DecodeTokensPerSecond:F1} tokens/s");
        }
        bool all = true;
        for (int i = 1; i < results.Count; i++) all &= results[0].Tokens.SequenceEqual(results[i].Tokens);
        table.Caption($"llama {parameters / 1e9:F2}B parameters (4 layers of 4096/14336, f32), {Format.Bytes(readBytes)} read per decode step, prompt 16, 16 decode steps; " +
                      $"{(gpus.Length == 1 ? gpus[0] : "each GPU platform")} best of {runs}, cpu one run; greedy tokens {(all ? "identical" : "DIFFER")}");
        AnsiConsole.Write(table);
        for (int i = 1; i < results.Count; i++)
        {
            string spec = gpus[i - 1];
            Console.WriteLine($"{spec}: decode {results[i].DecodeTokensPerSecond:F1} tokens/s = {results[i].DecodeTokensPerSecond / results[0].DecodeTokensPerSecond:F1}× cpu; " +
                              $"{readBytes} B of weights per step at {readBytes * results[i].DecodeTokensPerSecond / 1e12:F2} TB/s");
            if (!results[0].Tokens.SequenceEqual(results[i].Tokens))
                Console.WriteLine(TokensDiffer(results[0].Tokens, results[i].Tokens, promptLogits[0], promptLogits[i], spec));
        }
        return all ? 0 : 1;
    }

    /// <summary>Where two greedy runs part and by how much their logits differ: the first differing token, and at the
    /// prompt's last position the largest logit difference against the cpu's margin between its two best tokens (a
    /// difference near that margin can turn a near-tie).</summary>
    static string TokensDiffer(long[] cpu, long[] other, float[] cpuLogits, float[] otherLogits, string who)
    {
        int at = 0;
        while (at < Math.Min(cpu.Length, other.Length) && cpu[at] == other[at]) at++;
        float maxDiff = 0, scale = 0, best = float.NegativeInfinity, second = float.NegativeInfinity;
        for (int i = 0; i < cpuLogits.Length; i++)
        {
            maxDiff = Math.Max(maxDiff, Math.Abs(cpuLogits[i] - otherLogits[i]));
            scale = Math.Max(scale, Math.Abs(cpuLogits[i]));
            if (cpuLogits[i] > best) (second, best) = (best, cpuLogits[i]);
            else if (cpuLogits[i] > second) second = cpuLogits[i];
        }
        return $"{who}: greedy tokens differ from cpu's from token {at} of {cpu.Length} (cpu {(at < cpu.Length ? cpu[at] : -1)}, {who} {(at < other.Length ? other[at] : -1)}); " +
               $"prompt's last logits: max |{who} − cpu| {maxDiff:G3} (largest |logit| {scale:G3}), cpu's top-2 margin {best - second:G3}";
    }

    /// <summary>WebGPU kernels alone, GPU time from timestamp queries: decode-shaped matrix-vector products (weight
    /// bytes ÷ time = achieved bandwidth) and a prefill-shaped matmul (FLOP/s), 50 dispatches per measurement, best of runs.</summary>
    static int Gpu(int runs, string gpu)
    {
        using var g = GpuPlatform(gpu);
        Console.WriteLine($"device: {g.Description}");
        var table = new Table().AddColumns("kernel", "shape", "weights", "GPU ms / call", "achieved");
        var mm = Tapml.Platforms.WebGpu.GpuOps.Find("", "MatMul")!;
        var node = new Tapml.Ir.Node { Name = "bench", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["y"] };
        var ctx = new NodeContext(node, 17);
        var rng = new Random(1);
        foreach (var (rows, k, n, half) in new[] { (1, 8192, 8192, false), (1, 4096, 14336, false), (1, 14336, 4096, false), (1, 8192, 8192, true), (1, 4096, 14336, true), (1, 14336, 4096, true),
                     (1, 768, 768, false), (1, 768, 2048, false), (1, 768, 32000, false), (512, 4096, 4096, false) })
        {
            var wdata = new float[(long)k * n];
            for (long i = 0; i < wdata.LongLength; i++) wdata[i] = (float)(rng.NextDouble() - 0.5);
            var w = half ? new Tensor(DType.Float16, [k, n], wdata.Select(v => (Half)v).ToArray()) : new Tensor(DType.Float32, [k, n], wdata);
            wdata = null;
            var xd = new float[rows * k];
            for (int i = 0; i < xd.Length; i++) xd[i] = (float)(rng.NextDouble() - 0.5);
            var x = g.Upload(new Tensor(DType.Float32, [1, rows, k], xd));
            var wg = g.Upload(w);
            void Once() { var y = mm.Run(g, ctx, [x, wg]); g.Free(y[0]!); }
            Once();
            g.Synchronize();
            const int calls = 50;
            double best = double.MaxValue;
            for (int r = 0; r < Math.Max(3, runs); r++)
            {
                var ms = g.Device.TimeGpu(() => { for (int c = 0; c < calls; c++) Once(); });
                if (ms is null) { Console.Error.WriteLine("bench gpu: the adapter has no timestamp queries"); return 2; }
                best = Math.Min(best, ms.Value / calls);
            }
            long wbytes = (long)k * n * (half ? 2 : 4);
            string achieved = rows <= Tapml.Platforms.WebGpu.Kernels.MatMul.MatVecMaxRows
                ? $"{wbytes / (best / 1e3) / 1e12:F2} TB/s"
                : $"{2.0 * rows * k * n / (best / 1e3) / 1e12:F2} TFLOP/s";
            table.AddRow(rows <= 4 ? "matrix-vector (decode)" : "tiled matmul (prefill)", $"{rows}×{k} · {k}×{n}", half ? "f16 (packed)" : "f32", $"{best:F4}", achieved);
            Console.Error.WriteLine($"bench gpu: {rows}x{k}x{n} {(half ? "f16" : "f32")}: {best:F4} ms, {achieved}");
        }
        AnsiConsole.Write(table);
        DispatchFloor(g, runs);
        return 0;
    }

    /// <summary>The f32 matrix-vector kernel's achieved bandwidth (GPU time, 50 dispatches, best of runs) over the decode
    /// shapes of the 125M and 8B-class Llamas, for 32 to 256 threads per output and for the rule the kernels use
    /// (<see cref="Tapml.Platforms.WebGpu.Kernels.MatMul.MatVecThreads"/>; packed f16 and 4-bit weights: <c>bench q4-sweep</c>), the
    /// rule also with each row split in 2 and 4 parts (<see cref="Tapml.Platforms.WebGpu.Kernels.MatMul.SplitK"/>; GPU
    /// time of both dispatches).</summary>
    static int MatVecSweep(int runs, string gpu)
    {
        using var g = GpuPlatform(gpu);
        Console.WriteLine($"device: {g.Description}");
        var mm = Tapml.Platforms.WebGpu.GpuOps.Find("", "MatMul")!;
        var ctx = new NodeContext(new Tapml.Ir.Node { Name = "sweep", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["y"] }, 17);
        (int? Threads, int Split)[] configs = [(32, 1), (64, 1), (128, 1), (256, 1), (null, 1), (null, 2), (null, 4)];
        var table = new Table().AddColumns(["shape (K×N)", .. configs.Select(c => (c.Threads is null ? "rule" : $"{c.Threads} threads") + (c.Split > 1 ? $", rows in {c.Split}" : ""))]);
        var rng = new Random(1);
        try
        {
            foreach (var (k, n, half) in new[] { (768, 768, false), (768, 2048, false), (2048, 768, false), (768, 32000, false), (4096, 4096, false), (4096, 6144, false),
                         (4096, 14336, false), (14336, 4096, false), (8192, 8192, false), (4096, 32000, false) })
            {
                var wdata = new float[(long)k * n];
                for (long i = 0; i < wdata.LongLength; i++) wdata[i] = (float)(rng.NextDouble() - 0.5);
                var w = g.Upload(half ? new Tensor(DType.Float16, [k, n], Array.ConvertAll(wdata, v => (Half)v)) : new Tensor(DType.Float32, [k, n], wdata));
                var x = g.Upload(new Tensor(DType.Float32, [1, 1, k], Enumerable.Range(0, k).Select(i => (float)(i % 7) - 3).ToArray()));
                var cells = new List<string> { $"{k}×{n}{(half ? " f16" : "")}" };
                foreach (var (t, split) in configs)
                {
                    Tapml.Platforms.WebGpu.Kernels.MatMul.ThreadsPerOutput = t;
                    Tapml.Platforms.WebGpu.Kernels.MatMul.SplitK = split;
                    void Once() { var y = mm.Run(g, ctx, [x, w]); g.Free(y[0]!); }
                    Once();
                    g.Synchronize();
                    double best = double.MaxValue;
                    for (int r = 0; r < Math.Max(3, runs); r++)
                        if (g.Device.TimeGpu(() => { for (int c = 0; c < 50; c++) Once(); }) is { } ms) best = Math.Min(best, ms / 50);
                    if (best == double.MaxValue) { Console.Error.WriteLine("bench matvec-sweep: the adapter has no timestamp queries"); return 2; }
                    cells.Add($"{(long)k * n * (half ? 2 : 4) / (best / 1e3) / 1e12:F2} TB/s{(t is null && !half ? $" (t{Tapml.Platforms.WebGpu.Kernels.MatMul.MatVecThreads(k / 4)})" : "")}");
                }
                table.AddRow(cells.ToArray());
                Console.Error.WriteLine($"bench matvec-sweep: {string.Join("  ", cells)}");
            }
        }
        finally { Tapml.Platforms.WebGpu.Kernels.MatMul.ThreadsPerOutput = null; Tapml.Platforms.WebGpu.Kernels.MatMul.SplitK = 1; }
        AnsiConsole.Write(table);
        return 0;
    }

    /// <summary>A platform running tapml's GPU kernels (webgpu, vulkan, opencl, browser): the GPU benches time its kernels.</summary>
    internal static Tapml.Platforms.WebGpu.WebGpuPlatform GpuPlatform(string spec)
    {
        var p = PlatformRegistry.Create(spec);
        if (p is Tapml.Platforms.WebGpu.WebGpuPlatform g) return g;
        p.Dispose();
        throw new TapmlException($"bench: '{spec}' does not run tapml's GPU kernels (use webgpu, vulkan or opencl)");
    }

    /// <summary>The per-dispatch cost no kernel can go under: a chain of dependent 768-wide Neg dispatches (the
    /// size of a decode step's element-wise work), as GPU time per dispatch (timestamp queries) and as host
    /// wall time per dispatch (record, submit and wait).</summary>
    static void DispatchFloor(Tapml.Platforms.WebGpu.WebGpuPlatform g, int runs)
    {
        var neg = Tapml.Platforms.WebGpu.GpuOps.Find("", "Neg")!;
        var ctx = new NodeContext(new Tapml.Ir.Node { Name = "floor", OpType = "Neg", Inputs = ["x"], Outputs = ["y"] }, 17);
        var x = g.Upload(new Tensor(DType.Float32, [1, 1, 768], new float[768]));
        const int chain = 400;
        void Chain()
        {
            var cur = x;
            for (int i = 0; i < chain; i++) { var y = (Tapml.Platforms.WebGpu.GpuTensor)neg.Run(g, ctx, [cur])[0]!; if (!ReferenceEquals(cur, x)) g.Free(cur); cur = y; }
            g.Free(cur);
        }
        Chain();
        g.Synchronize();
        double gpu = double.MaxValue, wall = double.MaxValue;
        for (int r = 0; r < Math.Max(3, runs); r++)
        {
            if (g.Device.TimeGpu(Chain) is { } ms) gpu = Math.Min(gpu, ms * 1e3 / chain);
            var sw = Stopwatch.StartNew();
            Chain();
            g.Synchronize();
            wall = Math.Min(wall, sw.Elapsed.TotalMilliseconds * 1e3 / chain);
        }
        var t = new Table().AddColumns("dispatch floor", "GPU µs / dispatch", "host wall µs / dispatch");
        t.AddRow($"{chain} dependent 768-wide Neg dispatches", gpu == double.MaxValue ? "n/a" : $"{gpu:F2}", $"{wall:F2}");
        AnsiConsole.Write(t);
        Console.Error.WriteLine($"bench gpu: dispatch floor: {(gpu == double.MaxValue ? "n/a" : gpu.ToString("F2"))} µs GPU, {wall:F2} µs wall per dispatch");
    }

    static double Mid(List<double> xs) { var t = xs.Skip(1).Order().ToList(); return t.Count == 0 ? 0 : t[t.Count / 2]; }   // NOTE: without the warm-up

    /// <summary>Runs <paramref name="run"/> on a GPU platform until it has kept the GPU busy for
    /// <paramref name="seconds"/> (at least once, at most 200 times): a GPU idle for a moment lowers its clocks and takes
    /// about a second of load to raise them, so runs measured right after a host-side phase (a checkpoint written, the cpu
    /// reference) read weights at half speed or less (an H100: the 1.1B-shape decode 294 tokens/s cold, 623 warm).
    /// Host platforms: nothing.</summary>
    internal static void SteadyClocks(IPlatform p, Action run, double seconds = 1.5)
    {
        if (p is not IKernelProfile) return;
        var sw = Stopwatch.StartNew();
        int n = 0;
        do run(); while (sw.Elapsed.TotalSeconds < seconds && ++n < 200);
    }

    static double Median(int runs, Action a)
    {
        var t = new List<double>();
        a();                                        // warm-up
        for (int i = 0; i < runs; i++) { var sw = Stopwatch.StartNew(); a(); t.Add(sw.Elapsed.TotalMilliseconds); }
        t.Sort();
        return t[t.Count / 2];
    }

    /// <param name="gpu">The GPU platform spec llm, llm-large, gpu and matvec-sweep measure (webgpu, vulkan, opencl …).</param>
    public static int Run(string scenario, string shared, int runs, string gpu = "webgpu", QuantizeScheme? quantize = null, bool half = false)
    {
        if ((quantize is not null || half) && scenario is not ("llm" or "llm-large"))
            throw new TapmlException($"bench --{(quantize is not null ? "quantize" : "weights")} applies to the llm and llm-large scenarios, not {scenario} (llm-weights compares f32, f16 and q4 itself)");
        if (scenario == "llm") return Llm(runs, gpu, quantize, half);
        if (scenario == "llm-large") return LlmLarge(runs, gpu, quantize, half);
        if (scenario == "gpu") return Gpu(runs, gpu);
        if (scenario == "matvec-sweep") return MatVecSweep(runs, gpu);
        if (BenchQ4.Names.Contains(scenario)) return BenchQ4.Run(scenario, runs, gpu);
        if (BenchMatMul.Names.Contains(scenario)) return BenchMatMul.Run(scenario, runs, gpu);
        if (BenchSkinny.Names.Contains(scenario)) return BenchSkinny.Run(scenario, runs, gpu);
        if (BenchLong.Names.Contains(scenario)) return BenchLong.Run(scenario, Math.Min(runs, 3), gpu);
        var table = scenario == "carve"
            ? new Table().AddColumns("model", "plain run ms", "carve ms", "carve ÷ plain", "cases", "blobs (after dedup)", "splats", "weights by reference", "tensors (before dedup)", "replay cases/s")
            : new Table().AddColumns("model", "strategy", "found", "runs", "partial", "bytes moved", "time ms");
        var ratios = new List<string>();
        foreach (var s in Subjects(shared))
        {
            using var cpu = PlatformRegistry.Create("cpu");
            if (scenario == "carve")
            {
                double plain = Median(runs, () => s.Run(new Executor(cpu)));
                CarvedStore? store = null;
                Recorder? last = null;
                var dirs = new List<string>();
                List<double> runMs = [], closeMs = [];
                double carve = Median(runs, () =>
                {
                    string dir = Path.Combine(Path.GetTempPath(), $"tapml-bench-carve-{Guid.NewGuid():N}");
                    dirs.Add(dir);
                    store = CarvedStore.Create(dir, s.Name, "", "cpu");
                    var exec = new Executor(cpu);
                    var rec = new Recorder(store, new CarveOptions()) { PhaseOf = r => r == 0 ? "prefill" : $"decode:{r}" };
                    exec.Observers.Add(rec);
                    long t0 = Stopwatch.GetTimestamp();
                    s.Run(exec);
                    long t1 = Stopwatch.GetTimestamp();
                    rec.Dispose();
                    closeMs.Add(Stopwatch.GetElapsedTime(t1).TotalMilliseconds);
                    runMs.Add(Stopwatch.GetElapsedTime(t0, t1).TotalMilliseconds);
                    last = rec;
                });
                var replayer = new Replayer(store!, cpu, new Tolerances());
                var sw = Stopwatch.StartNew();
                foreach (var c in store!.Cases) replayer.Run(c);
                double perS = store.Cases.Count / sw.Elapsed.TotalSeconds;
                table.AddRow(Markup.Escape(s.Name), $"{plain:F1}", $"{carve:F1}", $"{carve / plain:F2}×", store.Cases.Count.ToString(),
                    Format.Bytes(store.ReferencedBlobBytes()), Format.Bytes(store.ReferencedSplatBytes()), Format.Bytes(store.ReferencedWeightBytes()), Format.Bytes(last!.BytesBeforeDedup), $"{perS:F0}");
                Console.Error.WriteLine($"bench carve: {s.Name}: plain {plain:F1} ms, carve {carve:F1} ms ({carve / plain:F2}×), {Format.Bytes(last.BytesWritten)} appended to the pack; run with the recorder {Mid(runMs):F1} ms, final manifest + close {Mid(closeMs):F1} ms (medians)");
                ratios.Add($"{s.Name} {carve / plain:F2}×");
                foreach (var d in dirs) try { Directory.Delete(d, true); } catch (IOException) { }
            }
            else
            {
                // NOTE: a NaN two thirds along the graph (a MatMul/Conv where there is one) reaches the outputs of every model; a scale can be damped below the output tolerance (resnet50-light: softmax near one-hot).
                var nodes = s.Model.Graph.Nodes;
                var victim = nodes.Skip(nodes.Count * 2 / 3).FirstOrDefault(n => n.OpType is "MatMul" or "Conv") ?? nodes[nodes.Count * 2 / 3];
                string target = $"faulty:cpu?node={victim.Name}&kind=nan";
                foreach (var strategy in new[] { "lockstep", "bisect", "by-kind" })
                {
                    var sw = Stopwatch.StartNew();
                    var r = new Migrator(s.Model, "cpu", target, s.Input, new Tolerances(), new Tolerance(1e-3, 1e-4)).Run(strategy);
                    double ms = sw.Elapsed.TotalMilliseconds;
                    table.AddRow(Markup.Escape(s.Name), strategy, r.FirstDivergent?.Node == victim.Name ? $"[green]{Markup.Escape(victim.Name)}[/]" : $"[red]{Markup.Escape(r.FirstDivergent?.Node ?? "none")}[/]",
                        r.Runs.ToString(), r.PartialRuns.ToString(), Format.Bytes(r.BytesMoved), $"{ms:F0}");
                    Console.Error.WriteLine($"bench migrate: {s.Name} {strategy}: {ms:F0} ms, {r.Runs} runs");
                }
            }
        }
        table.Caption(scenario == "carve" ? $"median of {runs} runs after a warm-up; cpu source; store per carve in the temp folder"
                                          : "fault faulty:cpu?node=N&kind=nan two thirds along the graph; lockstep includes the reference run");
        AnsiConsole.Write(table);
        if (scenario == "carve") Console.WriteLine($"carve ÷ plain run (target ≤ 1.5×): {string.Join(", ", ratios)}");
        return 0;
    }
}
