using System.CommandLine;

namespace DGrab.Cli;

/// <summary>The dgrab command tree. <see cref="Run"/> is the whole CLI (tests call it in-process too).</summary>
public static class App
{
    public static readonly Option<bool> Verbose = new("--verbose") { Description = "print stack traces with errors", Recursive = true };

    public static int Run(string[] args)
    {
        var root = new RootCommand("dgrab: coordinated example orders for distributed training (CD-GraB, arXiv 2302.00845) against D-RR and independent GraB");
        root.Options.Add(Verbose);
        root.Subcommands.Add(SimulateHerdingVerb.Create());
        root.Subcommands.Add(TrainVerb.Create());
        if (args.Length > 0 && !args[0].StartsWith('-') && root.Subcommands.All(c => c.Name != args[0]))
        {
            Console.Error.WriteLine($"error: unknown command '{args[0]}' (commands: {string.Join(", ", root.Subcommands.Select(c => c.Name))})");
            return 2;
        }
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            Console.Error.WriteLine($"error: {parse.Errors[0].Message}");
            return 2;
        }
        return parse.Invoke();
    }

    /// <summary>Runs a verb body; a user error is one line on stderr and exit code 2.</summary>
    public static void Action(this Command cmd, Func<ParseResult, int> body) => cmd.SetAction(pr =>
    {
        bool verbose = pr.GetValue(Verbose);
        try { return body(pr); }
        catch (Exception e) when (e is DGrabException or IOException or UnauthorizedAccessException
                                      || e is AggregateException { InnerException: DGrabException })
        {
            var inner = e is AggregateException a ? a.InnerException! : e;
            Console.Error.WriteLine($"error: {OneLine(inner.Message)}");
            if (verbose) Console.Error.WriteLine(e);
            return 2;
        }
        catch (Exception e)
        {
            // NOTE: a bug of ours still ends as one line and exit 2; --verbose adds the trace for the report.
            Console.Error.WriteLine($"error: internal error {e.GetType().Name}: {OneLine(e.Message)} (run with --verbose for the stack trace; please report it)");
            if (verbose) Console.Error.WriteLine(e);
            return 2;
        }
    });

    static string OneLine(string s) => s.ReplaceLineEndings(" ");

    /// <summary>A comma-separated list option's values, each parsed by <paramref name="parse"/>.</summary>
    public static T[] List<T>(string text, string option, Func<string, T?> parse) where T : struct
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new DGrabException($"{option} needs at least one value");
        var values = new T[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            values[i] = parse(parts[i]) ?? throw new DGrabException($"{option}: '{parts[i]}' is not a valid value");
        return values;
    }

    public static int? Int(string s) => int.TryParse(s, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int v) ? v : null;
    public static ulong? ULong(string s) => ulong.TryParse(s, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out ulong v) ? v : null;
    public static float? Float(string s) => float.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out float v) && float.IsFinite(v) ? v : null;

    /// <summary>Creates the folder of an output file.</summary>
    public static void EnsureFolder(string file)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(file));
        if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
    }
}
