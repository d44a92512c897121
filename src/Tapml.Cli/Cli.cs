using System.CommandLine;
using Tapml.Core;

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

    public static Option<string> PlatformOption(string dflt = "cpu") => new("--platform", "-p")
    {
        Description = "platform spec: cpu, onnxruntime[?threads=N], …",
        DefaultValueFactory = _ => dflt,
    };

    /// <summary>Runs a verb body; turns user errors into exit code 2 with one clear line.</summary>
    public static void Action(this Command cmd, Func<ParseResult, int> body) => cmd.SetAction(pr =>
    {
        bool verbose = pr.GetValue(Verbose);
        try { return body(pr); }
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

    static string OneLine(string s) => s.ReplaceLineEndings(" ");
}
