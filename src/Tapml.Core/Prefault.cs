using System.Runtime.InteropServices;

namespace Tapml.Core;

/// <summary>Maps a fresh tensor's pages in ahead of the bytes that will fill it, on another thread: a new 64 MiB
/// array costs 16,384 page faults at its first write, which a network receive would otherwise pay one by one while
/// it copies (docs/benchmarks.md "Remote upload"). Linux's <c>madvise(MADV_POPULATE_WRITE)</c> faults the pages in
/// writable without writing to them, so it may run while the copy already runs. Elsewhere, or on an older kernel,
/// it does nothing.</summary>
public static class Prefault
{
    /// <summary>Below this, faulting in place is cheap enough.</summary>
    public const long MinBytes = 4 << 20;
    const int MadvPopulateWrite = 23;
    static volatile bool _unsupported = !OperatingSystem.IsLinux();

    /// <summary>Starts populating <paramref name="t"/>'s pages; the task ends when they are (or at once when it cannot).</summary>
    public static Task Start(Tensor t)
    {
        if (_unsupported || t.ByteSize < MinBytes || t.DType == DType.String) return Task.CompletedTask;
        return Task.Run(() => Populate(t.Data));
    }

    static void Populate(Array data)
    {
        // NOTE: pinned while the kernel walks the range; a later move (small-object heap compaction) only loses the benefit.
        var h = GCHandle.Alloc(data, GCHandleType.Pinned);
        try
        {
            long page = Environment.SystemPageSize;
            long start = h.AddrOfPinnedObject(), end = start + (long)Buffer.ByteLength(data);
            long first = (start + page - 1) / page * page, last = end / page * page;
            if (last > first && madvise((nint)first, (nuint)(last - first), MadvPopulateWrite) != 0) _unsupported = true;
        }
        finally { h.Free(); }
    }

    [DllImport("libc", SetLastError = true)]
    static extern int madvise(nint addr, nuint length, int advice);
}
