using System.Diagnostics;

namespace Tapml.Tests;

/// <summary>Runs the real CLI (tapml.dll next to the tests) in a child process.</summary>
public static class CliRunner
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    public static Result Run(params string[] args) => RunWith(new Dictionary<string, string?>(), args);

    /// <summary>Runs with extra environment variables (a null value removes one).</summary>
    public static Result RunWith(IReadOnlyDictionary<string, string?> env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = SharedData.RepoRoot };
        foreach (var (k, v) in env)
            if (v is null) psi.Environment.Remove(k);
            else psi.Environment[k] = v;
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "tapml.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5))) { p.Kill(true); throw new TimeoutException($"tapml {string.Join(" ", args)} did not finish in 5 minutes"); }
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }
}
