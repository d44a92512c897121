using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;

namespace Tapml.Remote;

/// <summary><c>TAPML_REMOTE_STATS=1</c>: per call kind, how many calls a client made, the bytes that crossed each way
/// (message payloads: tensors, models) and the milliseconds it waited; and what the server spent inside its
/// handlers. Printed to stderr by <c>bench remote</c> after each measurement and when the process exits.</summary>
public static class RemoteStats
{
    public static readonly bool On = Environment.GetEnvironmentVariable("TAPML_REMOTE_STATS") == "1";

    sealed class Row { public long Calls, BytesOut, BytesIn, Ticks; }

    static readonly ConcurrentDictionary<string, Row> Client = new(), Server = new();

    static RemoteStats()
    {
        if (On) AppDomain.CurrentDomain.ProcessExit += (_, _) => { if (!Client.IsEmpty || !Server.IsEmpty) Console.Error.Write(Report("at exit")); };
    }

    /// <summary>A client call of <paramref name="kind"/> that sent <paramref name="bytesOut"/> and received
    /// <paramref name="bytesIn"/> payload bytes, started at <paramref name="started"/> (Stopwatch ticks).</summary>
    public static void Call(string kind, long bytesOut, long bytesIn, long started) => Add(Client, kind, bytesOut, bytesIn, started);

    /// <summary>Time the server spent in a handler (its session lock held).</summary>
    public static void Served(string kind, long started) => Add(Server, kind, 0, 0, started);

    static void Add(ConcurrentDictionary<string, Row> d, string kind, long bytesOut, long bytesIn, long started)
    {
        var r = d.GetOrAdd(kind, _ => new Row());
        Interlocked.Increment(ref r.Calls);
        Interlocked.Add(ref r.BytesOut, bytesOut);
        Interlocked.Add(ref r.BytesIn, bytesIn);
        Interlocked.Add(ref r.Ticks, Stopwatch.GetTimestamp() - started);
    }

    /// <summary>The counters since the last reset, one line per call kind, then cleared.</summary>
    public static string Report(string title)
    {
        var sb = new StringBuilder($"remote stats ({title}):\n");
        foreach (var (side, d) in new[] { ("client", Client), ("server", Server) })
            foreach (var (kind, r) in d.OrderBy(k => k.Key, StringComparer.Ordinal))
                sb.Append($"  {side} {kind,-12} {r.Calls,6} calls {r.BytesOut,12} B out {r.BytesIn,12} B in {r.Ticks * 1000.0 / Stopwatch.Frequency,10:F2} ms\n");
        Client.Clear();
        Server.Clear();
        return sb.ToString();
    }
}
