using System.Diagnostics;

namespace DGrab.Tests;

/// <summary>Runs the real dgrab CLI (dgrab.dll next to the tests) in a child process, optionally under mpirun.</summary>
public static class DGrabCli
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    static string Dll => Path.Combine(AppContext.BaseDirectory, "dgrab.dll");

    public static Result Run(params string[] args) => Start("dotnet", [Dll, .. args]);

    /// <summary>mpirun -np <paramref name="processes"/> dotnet dgrab.dll …; root and a 2-core CI machine allowed.</summary>
    public static Result Mpi(int processes, params string[] args) => Start("mpirun",
        ["-np", processes.ToString(), "--oversubscribe", "--allow-run-as-root", "--mca", "btl", "self,vader", "dotnet", Dll, .. args]);

    static Result Start(string file, string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3))) { p.Kill(true); throw new TimeoutException($"{file} {string.Join(" ", args)} did not finish in 3 minutes"); }
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    public static string? MpirunMissing()
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':'))
            if (File.Exists(Path.Combine(dir, "mpirun"))) return null;
        return "mpirun is not installed (Debian openmpi-bin; bash scripts/setup.sh installs it)";
    }

    public static string? FashionMnistMissing() =>
        File.Exists(Path.Combine(Training.FashionMnist.DefaultFolder, "train-images-idx3-ubyte.gz")) ? null
            : $"Fashion-MNIST is not installed in {Training.FashionMnist.DefaultFolder} (Debian dataset-fashion-mnist; bash scripts/setup.sh installs it)";
}
