using Tapml.Core;

namespace Tapml.Platforms.WebGpu;

/// <summary>Free device buffers by size bucket (<see cref="DawnDevice.Bucket"/>), for the GPU devices: a released
/// buffer serves the next request of its bucket, so a decode step reuses the buffers the previous one freed.</summary>
public sealed class BufferPool
{
    readonly Dictionary<ulong, List<nint>> _free = new();

    /// <summary>Bytes held in the pool.</summary>
    public long PooledBytes { get; private set; }

    /// <summary>The size to allocate for <paramref name="bytes"/> (its bucket, or the request itself where the bucket
    /// is over the limit) and a pooled buffer of that size not <paramref name="busy"/>, else 0. A request over
    /// <paramref name="maxBufferBytes"/> is an <see cref="UnsupportedException"/> naming <paramref name="device"/>.</summary>
    public nint Take(ulong bytes, out ulong size, long maxBufferBytes, string device, string context, Func<nint, bool>? busy = null)
    {
        size = DawnDevice.Bucket(bytes);
        if (_free.TryGetValue(size, out var s))
            for (int i = s.Count - 1; i >= 0; i--)
            {
                if (busy is not null && busy(s[i])) continue;
                var b = s[i];
                s[i] = s[^1];
                s.RemoveAt(s.Count - 1);
                PooledBytes -= (long)size;
                return b;
            }
        if ((long)size > maxBufferBytes && (long)bytes <= maxBufferBytes) size = (bytes + 15) & ~15UL;
        if ((long)size > maxBufferBytes)
            throw new UnsupportedException($"{device}: a {DawnDevice.Bytes((long)bytes)} buffer{(context.Length > 0 ? $" for {context}" : "")} is over this device's largest buffer ({DawnDevice.Bytes(maxBufferBytes)})");
        return 0;
    }

    public void Add(nint buffer, ulong size)
    {
        if (!_free.TryGetValue(size, out var s)) _free[size] = s = new List<nint>();
        s.Add(buffer);
        PooledBytes += (long)size;
    }

    /// <summary>Empties the pool, returning what it held (for the caller to destroy).</summary>
    public List<nint> Drain()
    {
        var all = _free.Values.SelectMany(l => l).ToList();
        _free.Clear();
        PooledBytes = 0;
        return all;
    }
}
