using System.Buffers;
using System.Collections.Concurrent;
using Microsoft.AspNetCore.Connections;

namespace Tapml.Remote;

/// <summary>Kestrel's buffers for the server's connections in blocks of 256 KiB instead of its 4 KiB ones: a socket
/// read fills a whole block, so a tensor body arrives in 64× fewer reads (bulk upload 0.8 → 1.6 GB/s on loopback in
/// the harness measured for docs/benchmarks.md). Freed blocks are kept for reuse, up to <see cref="Kept"/> of them
/// (16 MiB); blocks are pinned (socket I/O needs no pinning per call).</summary>
sealed class LargeBlockPoolFactory : IMemoryPoolFactory<byte>
{
    public MemoryPool<byte> Create(MemoryPoolOptions? options = null) => new LargeBlockPool();
}

sealed class LargeBlockPool : MemoryPool<byte>
{
    public const int BlockBytes = 256 << 10;
    const int Kept = 64;
    readonly ConcurrentQueue<byte[]> _free = new();

    public override int MaxBufferSize => BlockBytes;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1) =>
        minBufferSize > BlockBytes ? new Block(null, new byte[minBufferSize])
            : new Block(this, _free.TryDequeue(out var a) ? a : GC.AllocateUninitializedArray<byte>(BlockBytes, pinned: true));

    void Return(byte[] a) { if (_free.Count < Kept) _free.Enqueue(a); }

    protected override void Dispose(bool disposing) => _free.Clear();

    sealed class Block(LargeBlockPool? pool, byte[] array) : IMemoryOwner<byte>
    {
        byte[]? _array = array;
        public Memory<byte> Memory => _array ?? throw new ObjectDisposedException(nameof(Block));
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _array, null) is { } a) pool?.Return(a);
        }
    }
}
