using Spectre.Console;
using Tapml.Testing;

namespace Tapml.Cli;

/// <summary>Live progress on a terminal; one line per failing case when output is redirected.</summary>
static class Progress
{
    public static void Each<T>(IReadOnlyList<T> items, string title, Func<T, CaseResult> run)
    {
        if (Console.IsOutputRedirected || !AnsiConsole.Profile.Capabilities.Interactive)
        {
            foreach (var item in items) Report(run(item));
            return;
        }
        AnsiConsole.Progress().AutoClear(true).Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(title), maxValue: items.Count);
                foreach (var item in items)
                {
                    var r = run(item);
                    if (r.Status is CaseStatus.Failed or CaseStatus.Error || r.Fallback is not null) AnsiConsole.MarkupLine(Line(r));
                    task.Increment(1);
                }
            });
    }

    static void Report(CaseResult r)
    {
        if (r.Status is CaseStatus.Failed or CaseStatus.Error || r.Fallback is not null) Console.WriteLine(Markup.Remove(Line(r)));
    }

    static string Line(CaseResult r) => r.Status == CaseStatus.Passed
        ? $"[green]passed[/] {Markup.Escape(r.Name)} ({Markup.Escape(r.Fallback ?? "")})"
        : $"[red]{r.Status.ToString().ToUpperInvariant()}[/] {Markup.Escape(r.Name)}: {Markup.Escape(r.Reason ?? "")}" +
          (r.Fallback is null ? "" : $" (nodes on {Markup.Escape(r.Fallback)})") +
          (r.Repro is null ? "" : $"\n  reproduce: {Markup.Escape(r.Repro)}");
}

/// <summary>End-of-run summary: counts and skip reasons grouped.</summary>
static class Summaries
{
    public static void Print(RunSummary s, string tolerance)
    {
        var table = new Table().AddColumns("status", "cases");
        table.AddRow("[green]passed[/]", s.Passed.ToString());
        if (s.FallbackPlatform is { } fb) table.AddRow($"[green]  of which with nodes on {Markup.Escape(fb)}[/]", s.PassedOnFallback.ToString());
        table.AddRow("[red]failed[/]", s.Failed.ToString());
        table.AddRow("[red]error[/]", s.Errors.ToString());
        table.AddRow("[yellow]skipped[/]", s.Skipped.ToString());
        table.Caption($"platform {Markup.Escape(s.Platform)}, {Markup.Escape(tolerance)}");
        var skips = s.Cases.Where(c => c.Status == CaseStatus.Skipped).GroupBy(c => SkipKey(c.Reason)).OrderByDescending(g => g.Count()).ToList();
        var console = Console.IsOutputRedirected ? AnsiConsole.Create(new AnsiConsoleSettings { Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Out = new AnsiConsoleOutput(Console.Out) }) : AnsiConsole.Console;
        if (skips.Count > 0)
        {
            console.WriteLine("skipped:");
            foreach (var g in skips) console.WriteLine($"  {g.Count(),4} × {g.Key}  ({string.Join(", ", g.Take(3).Select(c => c.Name))}{(g.Count() > 3 ? ", …" : "")})");
        }
        var onFallback = s.Cases.Where(c => c.Status == CaseStatus.Passed && c.Fallback is not null).GroupBy(c => c.Fallback!).OrderByDescending(g => g.Count()).ToList();
        if (onFallback.Count > 0)
        {
            console.WriteLine($"passed with nodes on {s.FallbackPlatform}:");
            foreach (var g in onFallback) console.WriteLine($"  {g.Count(),4} × {g.Key}  ({string.Join(", ", g.Take(3).Select(c => c.Name))}{(g.Count() > 3 ? ", …" : "")})");
        }
        console.Write(table);
    }

    // Group skip reasons by their text without node names.
    static string SkipKey(string? reason) => System.Text.RegularExpressions.Regex.Replace(reason ?? "", @"node '[^']*' \([^)]*\) on [^:]*: ", "");
}
