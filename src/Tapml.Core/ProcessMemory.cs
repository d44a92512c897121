namespace Tapml.Core;

/// <summary>This process's memory as the operating system counts it.</summary>
public static class ProcessMemory
{
    /// <summary>Peak resident set size in bytes since the process started (Linux: VmHWM of /proc/self/status, which
    /// counts mapped file pages that were read as well as the heap); null where the system does not say.</summary>
    public static long? PeakResidentBytes() => Status("VmHWM");

    /// <summary>Resident bytes now: anonymous (heap, stacks, the runtime) and file-backed (mapped files such as a
    /// checkpoint's pages that were read, and the runtime's own code); nulls where the system does not say.</summary>
    public static (long? Anonymous, long? File) ResidentBytes() => (Status("RssAnon"), Status("RssFile"));

    static long? Status(string key)
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) return null;
        foreach (var line in File.ReadLines(status))
            if (line.StartsWith(key + ":", StringComparison.Ordinal)
                && long.TryParse(line.AsSpan(key.Length + 1).Trim().TrimEnd("kB").Trim(), out long kb))
                return kb * 1024;
        return null;
    }
}
