using Spectre.Console;
using Tapml.Core;
using Tapml.Testing;

namespace Tapml.Cli;

/// <summary>Prints the comparison of two runs' outputs, one row per output.</summary>
static class CompareTable
{
    /// <summary>Returns whether every output is within tolerance.</summary>
    public static bool Print(Dictionary<string, Value> expected, Dictionary<string, Value> actual, Tolerance tol, string expectedName, string actualName)
    {
        var table = new Table().AddColumns("output", "max_abs", "max_rel", "cosine", "verdict");
        table.Caption($"{Markup.Escape(actualName)} vs {Markup.Escape(expectedName)}, {tol}");
        bool ok = true;
        foreach (var (name, e) in expected)
        {
            var c = Comparison.Compare(name, e, actual.GetValueOrDefault(name), tol);
            ok &= c.Passed;
            table.AddRow(Markup.Escape(name), c.Metrics.MaxAbs.ToString("G3"), c.Metrics.MaxRel.ToString("G3"), c.Metrics.Cosine.ToString("F6"),
                c.Passed ? "[green]match[/]" : $"[red]MISMATCH[/] {Markup.Escape(c.Failure ?? "")}");
        }
        AnsiConsole.Write(table);
        Console.WriteLine(ok ? $"outputs match ({actualName} vs {expectedName})" : $"outputs differ ({actualName} vs {expectedName})");
        return ok;
    }
}
