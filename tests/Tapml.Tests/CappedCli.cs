using System.Diagnostics;

namespace Tapml.Tests;

/// <summary>Runs the real CLI under a managed-heap cap and a wall-clock limit, measuring peak resident memory,
/// optionally under <c>strace</c> to list every file it opened. A blow-up fails the test, not the machine.</summary>
public static class CappedCli
{
    /// <summary>Managed heap cap of a hostile-input run (a tiny model needs well under 200 MB).</summary>
    public const long HeapLimitBytes = 1L << 30;

    /// <param name="PeakBytes">Peak resident memory (VmHWM) of the tapml process; 0 under strace (not measured).</param>
    /// <param name="Opened">Paths the process (and its threads/children) passed to open/openat; null without strace.</param>
    public sealed record Result(int ExitCode, string Stdout, string Stderr, TimeSpan Wall, long PeakBytes, IReadOnlyList<string>? Opened);

    public static bool HasStrace { get; } = File.Exists("/usr/bin/strace") || File.Exists("/bin/strace");

    public static Result Run(bool strace, TimeSpan limit, params string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "tapml.dll");
        string? log = strace ? Path.Combine(Path.GetTempPath(), $"tapml-strace-{Guid.NewGuid():N}.log") : null;
        var psi = new ProcessStartInfo(strace ? "strace" : "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = SharedData.RepoRoot };
        if (strace) foreach (var a in new[] { "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", log!, "dotnet" }) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_GCHeapHardLimit"] = $"0x{HeapLimitBytes:X}";
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        long peak = 0;
        while (!p.WaitForExit(20))
        {
            if (!strace) peak = Math.Max(peak, PeakResident(p.Id));
            if (sw.Elapsed > limit)
            {
                p.Kill(true);
                p.WaitForExit();
                throw new TimeoutException($"tapml {string.Join(" ", args)} ran past {limit.TotalSeconds} s (peak {peak >> 20} MB): {stderr.Result}");
            }
        }
        sw.Stop();
        IReadOnlyList<string>? opened = null;
        if (log is not null)
        {
            opened = File.ReadAllLines(log).Select(OpenedPath).Where(x => x is not null).Select(x => x!).ToList();
            File.Delete(log);
        }
        return new Result(p.ExitCode, stdout.Result, stderr.Result, sw.Elapsed, peak, opened);
    }

    // VmHWM: the process's high-water mark of resident memory (kB).
    static long PeakResident(int pid)
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line.AsSpan(6).Trim().TrimEnd("kB").Trim()) * 1024;
        }
        catch (IOException) { }
        return 0;
    }

    // strace line: `1234  openat(AT_FDCWD, "/path", O_RDONLY) = 3` (the path as the process gave it).
    static string? OpenedPath(string line)
    {
        int q = line.IndexOf('"');
        if (q < 0 || !line.Contains("open")) return null;
        int end = line.IndexOf('"', q + 1);
        return end > q ? line[(q + 1)..end] : null;
    }
}
