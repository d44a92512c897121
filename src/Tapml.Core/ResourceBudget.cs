namespace Tapml.Core;

/// <summary>The one memory budget of a run: every allocation whose size comes from a file (tensor shapes from
/// attributes and inputs, function expansion, blobs, manifests) is checked here before it happens. The budget is 3/4
/// of the memory this process may use (<see cref="GCMemoryInfo.TotalAvailableMemoryBytes"/>), or the global
/// <c>--max-memory SIZE</c> option (TAPML_MAX_MEMORY). Going over is a <see cref="ResourceLimitException"/>: one line
/// naming what asked and the budget; the CLI exits 2.</summary>
public static class ResourceBudget
{
    static long _max = Default();
    static readonly AsyncLocal<Limit?> _scope = new();

    sealed record Limit(long Bytes, string Name);

    /// <summary>Requests from this many bytes also check the live heap (smaller ones cannot run away alone).</summary>
    const long HeapCheckFrom = 1 << 20;

    /// <summary>The run's budget in bytes.</summary>
    public static long MaxBytes => _max;

    /// <summary>Sets the run's budget (the <c>--max-memory</c> option).</summary>
    public static void SetMaxBytes(long bytes) => _max = bytes > 0 ? bytes : throw new TapmlException($"--max-memory must be positive, got {bytes}");

    static long Default()
    {
        if (Environment.GetEnvironmentVariable("TAPML_MAX_MEMORY") is { Length: > 0 } env)
            return ParseSize(env, "TAPML_MAX_MEMORY");
        long avail = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        return avail > 0 ? avail / 4 * 3 : 8L << 30;
    }

    /// <summary>Parses a size: bytes, or a number with K, M, G or T (powers of 1024; an optional trailing B or iB).</summary>
    public static long ParseSize(string text, string what)
    {
        string s = text.Trim().ToUpperInvariant();
        if (s.EndsWith("IB")) s = s[..^2]; else if (s.EndsWith('B')) s = s[..^1];
        int shift = s.Length == 0 ? 0 : s[^1] switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, _ => 0 };
        if (shift > 0) s = s[..^1];
        if (!double.TryParse(s, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v)
            || !(v > 0) || v * Math.Pow(2, shift) >= long.MaxValue)
            throw new TapmlException($"{what}: '{TapmlException.Bounded(text, 40)}' is not a size (e.g. 4G, 512M, 1000000)");
        return (long)(v * Math.Pow(2, shift));
    }

    /// <summary>A tighter budget for the current async flow (and the threads it starts) until disposed: a replayed
    /// case's own bound, or a test's. <paramref name="name"/> says which budget it is and its size, for messages.</summary>
    public static IDisposable Scope(long bytes, string name)
    {
        var outer = _scope.Value;
        _scope.Value = new Limit(bytes, name);
        return new Restore(outer);
    }

    sealed class Restore(Limit? outer) : IDisposable
    {
        public void Dispose() => _scope.Value = outer;
    }

    /// <summary>Checks that <paramref name="bytes"/> more for <paramref name="what"/> (a tensor, a function's
    /// expansion, a file) fit: alone within the scope's and the run's budget, and, for large requests, together with
    /// the live heap within the run's budget. Throws <see cref="ResourceLimitException"/> before anything is
    /// allocated.</summary>
    public static void Reserve(long bytes, string what)
    {
        if (_scope.Value is { } scope && bytes > scope.Bytes && scope.Bytes < _max)
            throw new ResourceLimitException($"{what} needs {Format(bytes)}, over {scope.Name}");
        if (bytes > _max) throw Over(what, bytes, 0);
        if (bytes < HeapCheckFrom) return;
        long live = GC.GetTotalMemory(false);
        if (live + bytes <= _max) return;
        // NOTE: the estimate counts garbage too; collect once before calling it an overrun.
        live = GC.GetTotalMemory(true);
        if (live + bytes > _max) throw Over(what, bytes, live);
    }

    static ResourceLimitException Over(string what, long bytes, long live) => new(
        $"{what} needs {Format(bytes)}{(live > 0 ? $" with {Format(live)} in use" : "")}, over the memory budget of {Format(_max)} (--max-memory to change it)");

    /// <summary>True when <paramref name="e"/> or an exception it wraps is a budget overrun.</summary>
    public static bool IsOverrun(Exception? e)
    {
        for (; e is not null; e = e.InnerException)
            if (e is ResourceLimitException) return true;
        return false;
    }

    /// <summary>Bytes for messages: <c>512 B</c>, <c>3.0 MiB</c>, <c>4.0 GiB</c>.</summary>
    public static string Format(long b) => b switch
    {
        < 1 << 10 => $"{b} B",
        < 1 << 20 => $"{b / 1024.0:F1} KiB",
        < 1 << 30 => $"{b / (1024.0 * 1024):F1} MiB",
        < 1L << 40 => $"{b / (1024.0 * 1024 * 1024):F1} GiB",
        _ => $"{b / (1024.0 * 1024 * 1024 * 1024):F1} TiB",
    };
}
