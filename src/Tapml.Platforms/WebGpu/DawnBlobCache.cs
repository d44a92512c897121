using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace Tapml.Platforms.WebGpu;

/// <summary>Dawn's blob cache on disk (<c>WGPUDawnCacheDeviceDescriptor</c>): what Dawn compiled for a pipeline (the
/// SPIR-V Tint made of a kernel, the driver's <c>VkPipelineCache</c> data) is kept between runs, one file per key
/// (SHA-256 of Dawn's key, written whole then renamed) in <see cref="Dir"/>. Dawn calls it from its worker threads
/// (pipelines compiled ahead), so everything here is thread-safe; nothing throws into native code: a failed read is a
/// miss and a failed write is dropped. Bounded: no blob over <see cref="MaxBlobBytes"/>, and no writes once the folder
/// holds <see cref="MaxFolderBytes"/>.</summary>
public sealed unsafe class DawnBlobCache : IDisposable
{
    public const long MaxBlobBytes = 64L << 20, MaxFolderBytes = 1L << 30;

    public string Dir { get; }
    long _folderBytes = -1;
    GCHandle _self;
    /// <summary>Blobs found and blobs written (by Dawn's worker threads too).</summary>
    public long Hits, Stores;

    public DawnBlobCache(string dir)
    {
        Dir = dir;
        _self = GCHandle.Alloc(this);
    }

    /// <summary>Fills the chained descriptor Dawn reads at device creation (valid while this object lives).</summary>
    internal void Describe(ref Native.DawnCacheDeviceDescriptor d)
    {
        d.SType = Native.Wgpu.STypeDawnCacheDeviceDescriptor;
        d.Load = (nint)(delegate* unmanaged[Cdecl]<nint, nuint, nint, nuint, nint, nuint>)&OnLoad;
        d.Store = (nint)(delegate* unmanaged[Cdecl]<nint, nuint, nint, nuint, nint, void>)&OnStore;
        d.Userdata = GCHandle.ToIntPtr(_self);
    }

    string FileOf(nint key, nuint keySize) =>
        Path.Combine(Dir, Convert.ToHexStringLower(SHA256.HashData(new ReadOnlySpan<byte>((void*)key, checked((int)keySize)))));

    // Dawn asks twice: the size (value null), then the bytes into a buffer of that size.
    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static nuint OnLoad(nint key, nuint keySize, nint value, nuint valueSize, nint user)
    {
        try
        {
            var c = (DawnBlobCache)GCHandle.FromIntPtr(user).Target!;
            var f = new FileInfo(c.FileOf(key, keySize));
            if (!f.Exists || f.Length > MaxBlobBytes) return 0;
            if (value == 0) return (nuint)f.Length;
            var bytes = File.ReadAllBytes(f.FullName);
            if ((nuint)bytes.Length > valueSize) return 0;
            bytes.CopyTo(new Span<byte>((void*)value, bytes.Length));
            Interlocked.Increment(ref c.Hits);
            return (nuint)bytes.Length;
        }
        catch (Exception) { return 0; }
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static void OnStore(nint key, nuint keySize, nint value, nuint valueSize, nint user)
    {
        try
        {
            var c = (DawnBlobCache)GCHandle.FromIntPtr(user).Target!;
            if ((long)valueSize > MaxBlobBytes || !c.Reserve((long)valueSize)) return;
            Directory.CreateDirectory(c.Dir);
            string file = c.FileOf(key, keySize), tmp = $"{file}.{Environment.ProcessId}.{Environment.CurrentManagedThreadId}.tmp";
            using (var s = File.Create(tmp)) s.Write(new ReadOnlySpan<byte>((void*)value, checked((int)valueSize)));
            File.Move(tmp, file, overwrite: true);
            Interlocked.Increment(ref c.Stores);
        }
        catch (Exception) { }
    }

    /// <summary>Counts <paramref name="bytes"/> against the folder's bound (its size read once, at the first store).</summary>
    bool Reserve(long bytes)
    {
        if (Interlocked.Read(ref _folderBytes) < 0)
        {
            long size = Directory.Exists(Dir) ? new DirectoryInfo(Dir).EnumerateFiles().Sum(f => f.Length) : 0;
            Interlocked.CompareExchange(ref _folderBytes, size, -1);
        }
        return Interlocked.Add(ref _folderBytes, bytes) <= MaxFolderBytes;
    }

    public void Dispose() { if (_self.IsAllocated) _self.Free(); }
}
