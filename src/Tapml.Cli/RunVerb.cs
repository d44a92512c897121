using System.CommandLine;
using System.Diagnostics;
using Spectre.Console;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Cli;

/// <summary><c>tapml run --model M --platform P [--inputs DIR] [--outputs DIR]</c>: one inference. Inputs and
/// outputs are TensorProto .pb files named after the graph's inputs/outputs; without --inputs, inputs are
/// generated (the ONNX runner's ramp for floats, small in-range values for integers).</summary>
static class RunVerb
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "model: path to .onnx", Required = true };
        var platform = Cli.PlatformOption();
        var inputs = new Option<string?>("--inputs") { Description = "folder of <input name>.pb files (TensorProto)" };
        var outputs = new Option<string?>("--outputs") { Description = "write <output name>.pb files here" };
        var compare = new Option<string?>("--compare") { Description = "also run on this platform (e.g. onnxruntime) and compare every output" };
        var rtol = new Option<double>("--rtol") { Description = "relative tolerance for --compare", DefaultValueFactory = _ => 1e-3 };
        var atol = new Option<double>("--atol") { Description = "absolute tolerance for --compare", DefaultValueFactory = _ => 1e-5 };
        var profile = new Option<bool>("--profile") { Description = "time every node (node by node, no whole-graph hand-off) and print the time per operator type; on a GPU that times its kernels, also the GPU time per op family" };
        var fallback = Cli.FallbackOption();
        var quantize = Cli.QuantizeOption();
        var weights = Cli.WeightsOption();
        var cmd = new Command("run", "run one inference of a model on a platform") { model, platform, inputs, outputs, compare, rtol, atol, profile, fallback, quantize, weights };
        cmd.Action(pr =>
        {
            var m = ModelSpec.Load(pr.GetValue(model)!, pr.GetValue(quantize), pr.GetValue(weights));
            var feeds = pr.GetValue(inputs) is { } dir ? InputFiles.Read(m, dir) : InputFiles.Generate(m);
            using var p = PlatformRegistry.Create(pr.GetValue(platform)!);
            using var fb = pr.GetValue(fallback) is { } fbSpec ? PlatformRegistry.Create(fbSpec) : null;
            var exec = new Executor(p) { PreferWholeGraph = true, Fallback = fb };
            var prof = pr.GetValue(profile) ? new Profiler() : null;
            string modelSpec = pr.GetValue(model)!;
            if (prof != null) { exec.Observers.Add(prof); Cli.Naming(modelSpec, () => exec.Run(m, feeds)); prof.Clear(); } // warm-up run
            // NOTE: a device that times its kernels also gives GPU time per op family (each dispatch in a pass of its own).
            var device = prof != null && p is IKernelProfile kp && kp.StartProfile() ? kp : null;
            var sw = Stopwatch.StartNew();
            var result = Cli.Naming(modelSpec, () => exec.Run(m, feeds));
            sw.Stop();
            prof?.Print(sw.Elapsed.TotalMilliseconds);
            if (device != null) { device.StopProfile(); Profiler.PrintFamilies(device.OpTimes, p.Name); }
            if (ModelSpec.IsCheckpoint(pr.GetValue(model)!) && result.TryGetValue("logits", out var logits) && logits is Tensor lt)
                Models.Generation.CheckFinite(lt, "the run");
            foreach (var (name, v) in result) Console.WriteLine($"{name}: {v.Describe()}{Preview(v)}");
            if (pr.GetValue(outputs) is { } outDir)
            {
                Directory.CreateDirectory(outDir);
                foreach (var (name, v) in result)
                {
                    string f = Path.Combine(outDir, InputFiles.FileName(name));
                    File.WriteAllBytes(f + ".tmp", TensorProtos.Serialize(v, name));
                    File.Move(f + ".tmp", f, true);
                }
                Console.WriteLine($"wrote {result.Count} outputs to {outDir}");
            }
            Console.WriteLine($"ran {m.Graph.Nodes.Count} nodes on {p.Name} in {sw.Elapsed.TotalMilliseconds:F1} ms");
            Cli.PrintFallbacks(exec);
            if (pr.GetValue(compare) is not { } other) return 0;
            using var q = PlatformRegistry.Create(other);
            sw.Restart();
            var reference = new Executor(q) { PreferWholeGraph = true }.Run(m, feeds);
            Console.WriteLine($"ran on {q.Name} in {sw.Elapsed.TotalMilliseconds:F1} ms");
            return CompareTable.Print(reference, result, new Testing.Tolerance(pr.GetValue(rtol), pr.GetValue(atol)), q.Name, p.Name) ? 0 : 1;
        });
        return cmd;
    }

    static string Preview(Value v)
    {
        if (v is not Tensor t || t.DType == DType.String || t.Length == 0) return "";
        int k = (int)Math.Min(6, t.Length);
        var vals = Enumerable.Range(0, k).Select(i => t.GetDouble(i).ToString("G5", System.Globalization.CultureInfo.InvariantCulture));
        return " = [" + string.Join(", ", vals) + (t.Length > k ? ", …" : "") + "]";
    }
}

/// <summary>Per-operator-type time of one run (the observer sees each node's elapsed time).</summary>
sealed class Profiler : IExecutionObserver
{
    readonly Dictionary<string, (int Count, double Ms)> _byOp = new();
    public void OnNodeRun(NodeEvent e)
    {
        var (c, ms) = _byOp.GetValueOrDefault(e.Node.OpType);
        _byOp[e.Node.OpType] = (c + 1, ms + e.Elapsed.TotalMilliseconds);
    }
    public void Clear() => _byOp.Clear();
    public void Print(double totalMs)
    {
        var table = new Table().AddColumns("op", "nodes", "ms", "share");
        foreach (var (op, (c, ms)) in _byOp.OrderByDescending(x => x.Value.Ms))
            table.AddRow(op, c.ToString(), ms.ToString("F2"), (ms / totalMs).ToString("P1"));
        table.Caption($"total {totalMs:F1} ms");
        AnsiConsole.Write(table);
    }

    /// <summary>Device time per op family (<see cref="OpFamilies"/>) and, within each, per op type, with its share of
    /// the run's device time.</summary>
    public static void PrintFamilies(IReadOnlyList<(string OpType, long Calls, double Ms)> ops, string platform)
    {
        double total = ops.Sum(o => o.Ms);
        var table = new Table().AddColumns("op family", "op types (GPU ms)", "dispatches", "GPU ms", "share");
        foreach (var f in ops.GroupBy(o => o.OpType.Length == 0 ? "(outside nodes)" : OpFamilies.Of(o.OpType)).OrderByDescending(g => g.Sum(o => o.Ms)))
        {
            double ms = f.Sum(o => o.Ms);
            string types = string.Join(", ", f.OrderByDescending(o => o.Ms).Select(o => $"{(o.OpType.Length == 0 ? "-" : o.OpType)} {o.Ms:F2}"));
            table.AddRow(Markup.Escape(f.Key), Markup.Escape(types), $"{f.Sum(o => o.Calls)}", $"{ms:F2}", $"{ms / Math.Max(total, 1e-9) * 100:F1}%");
        }
        table.Caption($"GPU time on {Markup.Escape(platform)}: {total:F2} ms in {ops.Sum(o => o.Calls)} dispatches (each timed in a pass of its own)");
        AnsiConsole.Write(table);
    }
}

/// <summary>Model specs: a path to an .onnx file, a folder holding model.onnx or a Hugging Face checkpoint
/// (config.json + safetensors), or <c>builtin:NAME</c>.</summary>
static class ModelSpec
{
    /// <summary>The folder holding the model's files (HF checkpoint or model.onnx folder; for
    /// <c>builtin:tiny-ARCH</c> the materialized checkpoint), or null for a bare .onnx file or sample model.</summary>
    public static string? Folder(string spec)
    {
        if (Directory.Exists(spec)) return spec;
        if (spec.StartsWith("builtin:tiny-")) return Models.TinyCheckpoint.Materialize(spec["builtin:tiny-".Length..]);
        return null;
    }

    /// <summary>Whether the spec is a Hugging Face checkpoint (a folder with config.json and no model.onnx, or
    /// <c>builtin:tiny-ARCH</c>): an LLM tapml built, whose logits must be finite.</summary>
    public static bool IsCheckpoint(string spec) => spec.StartsWith("builtin:tiny-", StringComparison.Ordinal)
        || Directory.Exists(spec) && !File.Exists(Path.Combine(spec, "model.onnx")) && Models.HfModels.IsHfFolder(spec);

    /// <summary>The model of <paramref name="spec"/>, its MatMul weights quantized when <paramref name="quantize"/>
    /// names a scheme (<see cref="QuantizeScheme"/>), then its other weights held in f16 when <paramref name="weights"/>
    /// is f16 (<see cref="HalfWeights"/>).</summary>
    public static Model Load(string spec, string? quantize, string? weights = null)
    {
        var scheme = quantize is null ? null : QuantizeScheme.Parse(quantize);   // NOTE: bad names fail before the load
        bool half = weights is not null && HalfWeights.Parse(weights);
        var m = Load(spec);
        if (scheme is not null) Console.Error.WriteLine($"{scheme.Name}: {WeightQuantizer.Apply(m, scheme)}");
        if (half) Console.Error.WriteLine($"f16: {HalfWeights.Apply(m)}");
        return m;
    }

    public static Model Load(string spec)
    {
        if (Directory.Exists(spec))
        {
            string onnx = Path.Combine(spec, "model.onnx");
            if (File.Exists(onnx)) return OnnxImporter.Load(onnx);
            if (Models.HfModels.IsHfFolder(spec)) return Models.HfModels.Load(spec);
            throw new TapmlException($"'{spec}' is a folder with neither model.onnx nor config.json");
        }
        if (spec.StartsWith("builtin:tiny-"))
            return Models.HfModels.Load(Models.TinyCheckpoint.Materialize(spec["builtin:tiny-".Length..]));
        if (spec.StartsWith("builtin:"))
            return Ir.Builders.SampleModels.Create(spec["builtin:".Length..])
                ?? throw new TapmlException($"unknown built-in model '{spec}' (built-in: {string.Join(", ", Ir.Builders.SampleModels.Names.Select(n => "builtin:" + n))})");
        return OnnxImporter.Load(spec);
    }
}
