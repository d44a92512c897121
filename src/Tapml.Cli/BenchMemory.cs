using System.Diagnostics;
using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir.Safetensors;
using Tapml.Models;

namespace Tapml.Cli;

/// <summary><c>tapml bench memory --model DIR [--platform P]</c>: the peak resident memory of one decode step of a
/// checkpoint against its weight bytes. A child tapml process runs <c>generate --max-tokens 2</c> (prefill of 4
/// tokens, then one decode step) and reports its own peak RSS (VmHWM: heap plus the mapped checkpoint pages it read);
/// a second child does the same on a tiny llama with the model's tokenizer: the fixed overhead of the runtime and the
/// tokenizer. Make the checkpoint with <c>tapml checkpoint new</c> (e.g. Llama-3-8B's shape in bf16). Exit 0 when
/// peak ≤ 1.25 × weight bytes + that fixed overhead.</summary>
static class BenchMemory
{
    /// <summary>Peak RSS over weight bytes this scenario accepts.</summary>
    const double Budget = 1.25;

    public static int Run(string? modelDir, string platform, string? jsonPath)
    {
        if (modelDir is null) throw new TapmlException("bench memory needs --model DIR (a checkpoint folder; make one with `tapml checkpoint new --dtype bf16 ...`)");
        long weights;
        string dtypes;
        using (var ck = new SafetensorsCheckpoint(modelDir))
        {
            weights = ck.Entries.Values.Sum(e => e.ByteLength);
            dtypes = string.Join("+", ck.Entries.Values.Select(e => DTypes.Name(e.DType)).Distinct().Order());
        }
        // The fixed part: the same steps on a tiny llama beside the model's own tokenizer files (a 128k-entry
        // tokenizer alone takes about 110 MB).
        string tiny = Directory.CreateTempSubdirectory("tapml-bench-memory-").FullName;
        ChildRun baseline, run;
        try
        {
            TinyCheckpoint.Write("llama", 0, tiny);
            foreach (var f in Directory.GetFiles(modelDir))
            {
                string name = Path.GetFileName(f);
                if (name.StartsWith("tokenizer", StringComparison.Ordinal) || name is "vocab.json" or "merges.txt" or "special_tokens_map.json")
                    File.Copy(f, Path.Combine(tiny, name), overwrite: true);
            }
            baseline = Child(tiny, platform);
        }
        finally { Directory.Delete(tiny, true); }
        run = Child(modelDir, platform);
        double ratio = run.Peak / (double)weights;
        bool ok = run.Peak <= Budget * weights + baseline.Peak;
        Console.WriteLine($"weights: {Format.Bytes(weights)} ({weights} B, {dtypes}) in {modelDir}");
        Console.WriteLine($"runtime and tokenizer alone (a tiny llama with the model's tokenizer, same steps): peak RSS {Format.Bytes(baseline.Peak)} ({baseline.Peak} B)");
        Console.WriteLine($"one decode step on {platform}: peak RSS {Format.Bytes(run.Peak)} ({run.Peak} B) = {ratio:F3}× the weight bytes " +
                          $"({(run.Peak - baseline.Peak) / (double)weights:F3}× without the runtime's {Format.Bytes(baseline.Peak)}); " +
                          $"{run.Seconds:F1} s; tokens {string.Join(",", run.Tokens)}");
        Console.WriteLine(ok ? $"within {Budget}× the weight bytes + the runtime's {Format.Bytes(baseline.Peak)}" : $"OVER {Budget}× the weight bytes + the runtime's {Format.Bytes(baseline.Peak)}");
        if (jsonPath is not null)
            Testing.Reports.JsonReport.WriteAtomic(jsonPath, new JsonObject
            {
                ["model"] = modelDir, ["platform"] = platform, ["weight_bytes"] = weights, ["weight_dtypes"] = dtypes,
                ["peak_rss_bytes"] = run.Peak, ["ratio"] = ratio, ["runtime_peak_rss_bytes"] = baseline.Peak, ["seconds"] = run.Seconds,
            }.ToJsonString(Testing.Reports.JsonReport.Options));
        return ok ? 0 : 1;
    }

    sealed record ChildRun(long Peak, double Seconds, long[] Tokens);

    /// <summary>Runs <c>tapml generate</c> on <paramref name="model"/> in a child process (this executable: the dotnet
    /// host with tapml.dll, or the single-file bundle) and reads its peak RSS from its --json.</summary>
    static ChildRun Child(string model, string platform)
    {
        string json = Path.Combine(Path.GetTempPath(), $"tapml-bench-memory-{Environment.ProcessId}-{Guid.NewGuid():N}.json");
        var psi = new ProcessStartInfo(Environment.ProcessPath ?? throw new TapmlException("bench memory: cannot tell this process's executable"))
        {
            UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        // NOTE: under the dotnet host the first argument is tapml.dll; a single-file bundle is the executable itself.
        string first = Environment.GetCommandLineArgs()[0];
        if (Path.GetFileNameWithoutExtension(psi.FileName) == "dotnet" && first.EndsWith(".dll", StringComparison.OrdinalIgnoreCase)) psi.ArgumentList.Add(first);
        foreach (var a in new[] { "generate", "--model", model, "--platform", platform, "--input-ids", "1,2,3,4", "--max-tokens", "2", "--json", json })
            psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi) ?? throw new TapmlException($"bench memory: could not start {psi.FileName}");
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        double seconds = sw.Elapsed.TotalSeconds;
        try
        {
            if (p.ExitCode != 0 || !File.Exists(json))
                throw new TapmlException($"bench memory: `generate --model {model}` exited {p.ExitCode}: {TapmlException.Bounded(stderr.Result.Trim(), 400)}");
            var o = JsonNode.Parse(File.ReadAllText(json))!;
            long peak = o["peak_rss_bytes"]?.GetValue<long>() ?? throw new TapmlException("bench memory: this system does not report a process's peak RSS (/proc/self/status)");
            return new ChildRun(peak, seconds, o["tokens"]!.AsArray().Select(t => t!.GetValue<long>()).ToArray());
        }
        finally { File.Delete(json); }
    }
}
