using System.Runtime.InteropServices;

namespace Tapml.Core;

/// <summary>The one containment rule for paths read from inside a file (a shard index's file names, a carved
/// store's blobs, ONNX external data, tokenizer files) and the file-type check for every file tapml opens by name:
/// checked before anything is opened, so a hostile folder can neither point tapml outside itself nor block it on a
/// named pipe or a device.</summary>
public static class SafePaths
{
    /// <summary>The resolved path of <paramref name="relative"/>, named inside a file of <paramref name="folder"/>:
    /// it must be relative, stay inside the folder once <c>..</c> and every symbolic link are resolved, and be a
    /// regular file. <paramref name="what"/> names the file and field that gave the path (for the error line).</summary>
    public static string Contained(string folder, string relative, string what)
    {
        if (string.IsNullOrEmpty(relative)) throw new TapmlException($"{what}: the path is empty");
        if (relative.Contains('\0')) throw new TapmlException($"{what}: the path contains a NUL character");
        if (relative.Length > 4096) throw new TapmlException($"{what}: the path is {relative.Length} characters long (at most 4096)");
        if (Path.IsPathRooted(relative) || relative.StartsWith('~'))
            throw new TapmlException($"{what}: '{Shorten(relative)}' must be a relative path inside {folder}");
        string root = Resolve(folder) ?? throw new TapmlException($"{what}: the folder {folder} does not exist");
        string lexical = Path.GetFullPath(Path.Combine(root, relative));
        if (!IsInside(root, lexical))
            throw new TapmlException($"{what}: '{Shorten(relative)}' leads outside {folder}");
        string real = Resolve(lexical) ?? throw new TapmlException($"{what}: {lexical} not found");
        if (!IsInside(root, real) && !IsHubCacheBlob(root, real))
            throw new TapmlException($"{what}: '{Shorten(relative)}' is a link to {real}, outside {folder}");
        RegularFile(real, what);
        return real;
    }

    /// <summary>Checks that <paramref name="path"/> exists and is a regular file (not a directory, named pipe,
    /// socket or device, which could block a reader forever or never end).</summary>
    public static void RegularFile(string path, string what)
    {
        if (path.Contains('\0')) throw new TapmlException($"{what}: the path contains a NUL character");
        switch (KindOf(path))
        {
            case FileKind.Missing: throw new TapmlException($"{what}: {path} not found");
            case FileKind.Directory: throw new TapmlException($"{what}: {path} is a folder, not a file");
            case FileKind.Other: throw new TapmlException($"{what}: {path} is not a regular file (a named pipe, socket or device)");
        }
    }

    /// <summary>True when <paramref name="root"/> is a Hugging Face Hub cache snapshot
    /// (<c>…/models--ORG--NAME/snapshots/REV</c>, where every file is a link to <c>../../blobs/HASH</c>) and
    /// <paramref name="real"/> is in that repository's <c>blobs</c> folder: the Hub's own layout, not an escape.</summary>
    static bool IsHubCacheBlob(string root, string real)
    {
        string? snapshots = Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(root));
        string? repo = snapshots is null ? null : Path.GetDirectoryName(snapshots);
        if (repo is null || Path.GetFileName(snapshots) != "snapshots") return false;
        string name = Path.GetFileName(repo);
        if (!name.StartsWith("models--", StringComparison.Ordinal) && !name.StartsWith("datasets--", StringComparison.Ordinal)) return false;
        string blobs = Path.Combine(repo, "blobs");
        return IsInside(blobs, real) && Path.GetDirectoryName(real) == blobs;
    }

    /// <summary>True when <paramref name="path"/> is inside (or is) <paramref name="root"/>; both full paths.</summary>
    public static bool IsInside(string root, string path)
    {
        var cmp = OperatingSystem.IsWindows() ? StringComparison.OrdinalIgnoreCase : StringComparison.Ordinal;
        string r = Path.TrimEndingDirectorySeparator(root);
        return path.Equals(r, cmp) || path.StartsWith(r + Path.DirectorySeparatorChar, cmp);
    }

    /// <summary>The full path with every symbolic link resolved (null when it does not exist).</summary>
    public static string? Resolve(string path)
    {
        string full = Path.GetFullPath(path);
        if (OperatingSystem.IsWindows())
        {
            FileSystemInfo info = Directory.Exists(full) ? new DirectoryInfo(full) : new FileInfo(full);
            if (!info.Exists) return null;
            return info.LinkTarget is null ? full : info.ResolveLinkTarget(true)?.FullName;
        }
        IntPtr p = realpath(full, IntPtr.Zero);
        if (p == IntPtr.Zero) return null;
        try { return Marshal.PtrToStringUTF8(p); }
        finally { free(p); }
    }

    enum FileKind { Missing, Regular, Directory, Other }

    static unsafe FileKind KindOf(string path)
    {
        if (Directory.Exists(path)) return FileKind.Directory;
        if (!File.Exists(path)) return FileKind.Missing;
        // NOTE: .NET reports pipes and devices as normal files; st_mode tells them apart (offsets of Linux's x86-64 and generic ABIs).
        int modeOffset = RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.X64 => 24,
            Architecture.Arm64 => 16,
            _ => -1,
        };
        if (!OperatingSystem.IsLinux() || modeOffset < 0) return FileKind.Regular;
        byte* buf = stackalloc byte[256];
        if (stat(path, buf) != 0) return FileKind.Missing;
        uint mode = *(uint*)(buf + modeOffset);
        return (mode & 0xF000) switch
        {
            0x8000 => FileKind.Regular,
            0x4000 => FileKind.Directory,
            _ => FileKind.Other,
        };
    }

    static string Shorten(string s) => s.Length <= 200 ? s : s[..200] + "…";

    [DllImport("libc", SetLastError = true)]
    static extern IntPtr realpath([MarshalAs(UnmanagedType.LPUTF8Str)] string path, IntPtr resolved);

    [DllImport("libc")]
    static extern void free(IntPtr p);

    [DllImport("libc", SetLastError = true)]
    static extern unsafe int stat([MarshalAs(UnmanagedType.LPUTF8Str)] string path, byte* buf);
}
