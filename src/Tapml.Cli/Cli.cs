using System.CommandLine;
using Tapml.Core;

using Tapml.Platforms.Execution;

namespace Tapml.Cli;

/// <summary>Options and error handling shared by every verb: a user error prints one line on stderr and
/// exits 2; a stack trace only with --verbose.</summary>
static class Cli
{
    /// <summary>The <c>--filter</c> regular expression, or a clear error when it does not compile.</summary>
    public static System.Text.RegularExpressions.Regex FilterRegex(string pattern)
    {
        try { return new System.Text.RegularExpressions.Regex(pattern); }
        catch (ArgumentException e) { throw new Core.TapmlException($"--filter '{pattern}' is not a valid regular expression: {e.Message}"); }
    }

    public static readonly Option<bool> Verbose = new("--verbose") { Description = "print stack traces with errors", Recursive = true };

    /// <summary><c>--max-memory SIZE</c> (every verb): the run's memory budget (<see cref="ResourceBudget"/>).</summary>
    public static readonly Option<string?> MaxMemory = new("--max-memory")
    {
        Description = "memory budget of the run, e.g. 4G or 512M (default: 3/4 of the memory this process may use); going over is an error naming what asked",
        Recursive = true,
    };

    public static Option<string> PlatformOption(string dflt = "cpu") => new("--platform", "-p")
    {
        Description = "platform spec: cpu, onnxruntime[?threads=N], …",
        DefaultValueFactory = _ => dflt,
    };

    /// <summary><c>--fallback P</c>: where nodes the platform cannot run go (run, generate, conformance).</summary>
    public static Option<string?> FallbackOption() => new("--fallback")
    {
        Description = "run nodes the platform cannot run (no kernel, dtype, limit) on this platform instead (e.g. cpu); counted and printed",
    };

    /// <summary><c>--quantize SCHEME</c>: quantize the model's MatMul weights at load (<see cref="Ir.WeightQuantizer"/>).</summary>
    public static Option<string?> QuantizeOption() => new("--quantize")
    {
        Description = "quantize MatMul weights at load into com.microsoft MatMulNBits: q4 (4-bit, blocks of 32, scale + zero point per block) or q4sym (scale only); -a8 (q4-a8, q4sym-a8): A quantized to int8 per block, integer dot products (accuracy_level=4)",
    };

    /// <summary><c>--weights f16</c>: keep half weights half at load (<see cref="Ir.HalfWeights"/>).</summary>
    public static Option<string?> WeightsOption() => new("--weights")
    {
        Description = "f16: hold the MatMul and Gather weights in f16 (a Cast to f32 in front of each; exact: f16 checkpoints as stored, " +
                      "f32/bf16 weights only where every value is an f16), so GPUs read half the bytes; f32 (default): as loaded",
    };

    /// <summary>One line on the nodes an executor ran on its fallback and what crossing platforms cost (stderr).</summary>
    public static void PrintFallbacks(Executor exec)
    {
        if (exec.Fallback is not { } fb) return;
        var kept = exec.Fallbacks;
        if (kept.Count == 0) { Console.Error.WriteLine($"fallback {fb.Name}: no node needed it"); return; }
        var ops = kept.GroupBy(k => k.OpType).Select(g => $"{g.Key} ×{g.Count()}");
        Console.Error.WriteLine($"fallback {fb.Name}: {kept.Count} nodes ({string.Join(", ", ops)}); {exec.Stats.Transfers} transfers, {Format.Bytes(exec.Stats.BytesMoved)} moved");
        foreach (var k in kept.Take(5)) Console.Error.WriteLine($"  {k.Reason}");
        if (kept.Count > 5) Console.Error.WriteLine($"  … {kept.Count - 5} more");
    }

    /// <summary>Runs <paramref name="f"/>; a budget overrun inside also names <paramref name="file"/> (a node's name
    /// alone does not say which model asked).</summary>
    public static T Naming<T>(string file, Func<T> f)
    {
        try { return f(); }
        catch (TapmlException e) when (ResourceBudget.IsOverrun(e) && !e.Message.Contains(file))
        {
            throw new ResourceLimitException($"{file}: {e.Message}", e);
        }
    }

    /// <summary>Runs a verb body; turns user errors into exit code 2 with one clear line.</summary>
    public static void Action(this Command cmd, Func<ParseResult, int> body) => cmd.SetAction(pr =>
    {
        bool verbose = pr.GetValue(Verbose);
        try
        {
            if (pr.GetValue(MaxMemory) is { } max) ResourceBudget.SetMaxBytes(ResourceBudget.ParseSize(max, "--max-memory"));
            return body(pr);
        }
        catch (TapmlException e)
        {
            Console.Error.WriteLine($"error: {OneLine(e.Message)}");
            if (verbose) Console.Error.WriteLine(e);
            return 2;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"error: {OneLine(e.Message)}");
            if (verbose) Console.Error.WriteLine(e);
            return 2;
        }
        catch (Exception e)
        {
            // NOTE: a bug of ours still ends as one line and exit 2; --verbose adds the trace for the report.
            Console.Error.WriteLine($"error: internal error {e.GetType().Name}: {OneLine(e.Message)} ({(verbose ? "stack trace below" : "run with --verbose for the stack trace")}; please report it)");
            if (verbose) Console.Error.WriteLine(e);
            return 2;
        }
    });

    /// <summary>A message as one line of at most <see cref="TapmlException.MaxMessageChars"/> characters.</summary>
    public static string OneLine(string? s) => TapmlException.Bounded(s).ReplaceLineEndings(" ");
}
