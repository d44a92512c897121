using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Tapml.Testing.Carving;

/// <summary>A buffer of <see cref="DirectFile.ChunkBytes"/> bytes at an address aligned for direct I/O, filled by
/// the carve and written by the store's writer thread.</summary>
sealed class PackChunk
{
    readonly byte[] _array = GC.AllocateUninitializedArray<byte>(DirectFile.ChunkBytes + DirectFile.Align, pinned: true);
    readonly int _start;

    public unsafe PackChunk()
    {
        fixed (byte* p = _array) _start = (int)((DirectFile.Align - (long)p % DirectFile.Align) % DirectFile.Align);
    }

    public Span<byte> Span => _array.AsSpan(_start, DirectFile.ChunkBytes);
}

/// <summary>A file written at explicit offsets from <see cref="PackChunk"/>s, through <c>O_DIRECT</c> where the OS
/// and file system allow it (Linux), else through the page cache. Direct writes skip the kernel's copy into fresh
/// page-cache pages, which costs more CPU than the carve's own work on small VMs (docs/benchmarks.md, "Carving"). A
/// direct write covers whole <see cref="Align"/>-byte blocks, so a chunk's last block may carry bytes past the data;
/// the next chunk (which starts at that block) overwrites them, and <see cref="Close"/> cuts the file at the data's
/// end.</summary>
sealed class DirectFile : IDisposable
{
    public const int ChunkBytes = 4 << 20, Align = 4096;
    readonly string _path;
    SafeFileHandle _handle;
    bool _direct;

    /// <summary>Opens <paramref name="path"/> for writing: a new, empty file when <paramref name="create"/>, else the
    /// existing one (a store reopened after <see cref="Close"/>).</summary>
    public DirectFile(string path, bool create)
    {
        _path = path;
        if (OpenDirect(path, create) is { } direct) (_handle, _direct) = (direct, true);
        else _handle = File.OpenHandle(path, create ? FileMode.Create : FileMode.OpenOrCreate, FileAccess.Write, FileShare.Read);
    }

    /// <summary>Writes <paramref name="length"/> bytes of <paramref name="chunk"/> at <paramref name="offset"/> (a
    /// multiple of <see cref="Align"/>).</summary>
    public void Write(PackChunk chunk, long offset, int length)
    {
        if (_direct)
        {
            try
            {
                RandomAccess.Write(_handle, chunk.Span[..(int)RoundUp(length)], offset);
                return;
            }
            catch (IOException)
            {
                // NOTE: some file systems accept O_DIRECT at open and refuse the write (EINVAL); go on through the page cache.
                _handle.Dispose();
                _handle = File.OpenHandle(_path, FileMode.Open, FileAccess.Write, FileShare.Read);
                _direct = false;
            }
        }
        RandomAccess.Write(_handle, chunk.Span[..length], offset);
    }

    /// <summary>Cuts the file at <paramref name="end"/>, the data's end (direct writes may have gone past it), and closes it.</summary>
    public void Close(long end)
    {
        if (_direct && RandomAccess.GetLength(_handle) > end) RandomAccess.SetLength(_handle, end);
        Dispose();
    }

    public void Dispose() => _handle.Dispose();

    /// <summary>Writes <paramref name="bytes"/> as the whole of a new file <paramref name="path"/>, through
    /// <paramref name="scratch"/>.</summary>
    public static void WriteAll(string path, ReadOnlySpan<byte> bytes, PackChunk scratch)
    {
        using var f = new DirectFile(path, create: true);
        long offset = 0;
        while (offset < bytes.Length)
        {
            int n = (int)Math.Min(ChunkBytes, bytes.Length - offset);
            bytes.Slice((int)offset, n).CopyTo(scratch.Span);
            f.Write(scratch, offset, n);
            offset += n;
        }
        f.Close(bytes.Length);
    }

    static long RoundUp(long n) => (n + Align - 1) / Align * Align;

    static SafeFileHandle? OpenDirect(string path, bool create)
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("TAPML_NO_DIRECT_IO") == "1") return null;
        // NOTE: flag values of Linux's generic and x86 ABIs; arm64 moves O_DIRECT.
        int direct = RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.X64 or Architecture.X86 => 0x4000,
            Architecture.Arm64 or Architecture.Arm => 0x10000,
            _ => 0,
        };
        if (direct == 0) return null;
        const int WriteOnly = 0x1, Create = 0x40, Truncate = 0x200, CloseOnExec = 0x80000;
        int fd = open(path, WriteOnly | Create | (create ? Truncate : 0) | CloseOnExec | direct, Convert.ToInt32("644", 8));
        return fd < 0 ? null : new SafeFileHandle(fd, ownsHandle: true);
    }

    [DllImport("libc", SetLastError = true)]
    static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, int mode);
}
