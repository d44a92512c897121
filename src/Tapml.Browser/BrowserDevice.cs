using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Platforms;
using Tapml.Platforms.WebGpu;

namespace Tapml.Browser;

/// <summary>A WebGPU device in a browser tab: the calls the WebGPU platform makes are encoded into a compact binary
/// command stream (buffers, writes, pipelines from WGSL text, dispatches, copies, reads) and sent as one WebSocket
/// message per submit; the page (page/bridge.js) executes each message on <c>navigator.gpu</c> and submits it as one
/// command buffer. Only readbacks, synchronization and pipeline compilation wait for an answer.</summary>
public sealed class BrowserDevice : IGpuDevice
{
    readonly BrowserSession _s;
    readonly Action? _onDispose;
    readonly ArrayBufferWriter<byte> _batch = new(1 << 16);
    readonly Dictionary<string, GpuPipeline> _pipelines = new();
    readonly Dictionary<ulong, List<nint>> _pool = new();
    readonly TimeSpan _timeout;
    uint _nextId;
    int _sinceSubmit;
    long _submits, _readbacks;
    double _waitMs;
    const int AutoSubmit = 48;
    const int BatchBytes = 8 << 20;

    enum Op : uint { Buffer = 1, Destroy = 2, Write = 3, Pipeline = 4, Dispatch = 5, Copy = 6, Read = 7, Sync = 8,
                     ProfileOn = 9, ProfileRead = 10, ProfileOff = 11, TimeBegin = 12, TimeEnd = 13 }
    const int ProfileSlots = 1024;
    bool _timing;
    List<string>? _profileLabels;
    Dictionary<string, (long Calls, double Ms)>? _profile;

    public GpuAdapterInfo Info { get; }
    public GpuLimits Limits { get; }
    public string Runtime { get; }
    public string Context { get; set; } = "";
    public long Dispatches { get; private set; }
    public DeviceCounters Counters => new(Dispatches, _submits, _readbacks, _waitMs);
    public int PipelineCount => _pipelines.Count;
    /// <summary>The browser process tapml launched, when it launched one (tests close the tab by killing it).</summary>
    public int? BrowserProcessId { get; init; }
    /// <summary>What the page said about itself (adapter, limits, features, user agent).</summary>
    public JsonObject Hello => _s.Hello;

    public BrowserDevice(BrowserSession session, TimeSpan timeout, Action? onDispose = null)
    {
        _s = session; _timeout = timeout; _onDispose = onDispose;
        var h = session.Hello;
        var l = (JsonObject)h["limits"]!;
        long L(string k) => (long)(double)l[k]!;
        var features = ((JsonArray?)h["features"])?.Select(f => (string?)f).ToHashSet() ?? [];
        Info = new GpuAdapterInfo((string?)h["vendor"] ?? "", (string?)h["architecture"] ?? "", (string?)h["device"] ?? "", (string?)h["description"] ?? "",
            "browser", (bool?)h["fallback"] == true ? "CPU (fallback adapter)" : "GPU", (int?)(double?)h["subgroupMin"] ?? 0, (int?)(double?)h["subgroupMax"] ?? 0,
            features.Contains("shader-f16"), features.Contains("timestamp-query"));
        Limits = new GpuLimits(L("maxStorageBufferBindingSize"), L("maxBufferSize"), (int)L("maxComputeWorkgroupSizeX"), (int)L("maxComputeInvocationsPerWorkgroup"),
            (int)L("maxComputeWorkgroupStorageSize"), (int)L("maxComputeWorkgroupsPerDimension"), (int)L("maxStorageBuffersPerShaderStage"), (int)L("minStorageBufferOffsetAlignment"));
        string ua = (string?)h["userAgent"] ?? "a browser";
        int at = ua.IndexOf("Chrome/", StringComparison.Ordinal);
        Runtime = at >= 0 ? $"{ua[at..].Split(' ')[0]} over a WebSocket" : "a browser over a WebSocket";
        // NOTE: nothing the page may send back is larger than a readback of its largest buffer.
        session.MaxMessageBytes = Limits.MaxBufferBytes + 64;
    }

    // --- the command stream ---------------------------------------------------------------------------------------

    void U32(uint v) { BinaryPrimitives.WriteUInt32LittleEndian(_batch.GetSpan(4), v); _batch.Advance(4); }
    void Op_(Op op) => U32((uint)op);
    void Bytes(ReadOnlySpan<byte> b)
    {
        U32((uint)b.Length);
        int padded = (b.Length + 3) & ~3;
        var dst = _batch.GetSpan(padded);
        b.CopyTo(dst);
        dst[b.Length..padded].Clear();
        _batch.Advance(padded);
    }
    static uint Small(ulong v, string what) => v <= uint.MaxValue ? (uint)v : throw new UnsupportedException($"browser: {what} of {v} bytes is over the bridge's 4 GiB field");

    void CheckError()
    {
        if (_s.TakeError() is { } e) throw new TapmlException($"browser: {e}{(Context.Length > 0 ? $" (while running {Context})" : "")}");
    }

    /// <summary>Sends what was recorded as one message (one submit in the page).</summary>
    void Flush()
    {
        if (_timing) return;   // NOTE: a timed region is one pass in one message; the page ends passes at a message's end
        CheckError();
        if (_batch.WrittenCount == 0) return;
        _s.Send(_batch.WrittenMemory);
        _batch.Clear();
        _sinceSubmit = 0;
        _submits++;
    }

    byte[] Await(Task<byte[]> reply, string what)
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        try { return _s.Wait(reply, _timeout, what); }
        finally { _waitMs += System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalMilliseconds; CheckError(); }
    }

    // --- buffers --------------------------------------------------------------------------------------------------

    public nint Allocate(ulong bytes, out ulong size, bool forWrite = false)
    {
        size = DawnDevice.Bucket(bytes);
        if (_pool.TryGetValue(size, out var s) && s.Count > 0)
        {
            var b = s[^1];
            s.RemoveAt(s.Count - 1);
            return b;
        }
        if ((long)size > Limits.MaxBufferBytes && (long)bytes <= Limits.MaxBufferBytes) size = (bytes + 15) & ~15UL;
        if ((long)size > Limits.MaxBufferBytes)
            throw new UnsupportedException($"browser: a {DawnDevice.Bytes((long)bytes)} buffer{(Context.Length > 0 ? $" for {Context}" : "")} is over this device's maxBufferSize ({DawnDevice.Bytes(Limits.MaxBufferBytes)})");
        uint id = ++_nextId;
        Op_(Op.Buffer); U32(id); U32(Small(size, "a buffer"));
        return (nint)id;
    }

    public void Release(nint buffer, ulong size)
    {
        if (!_pool.TryGetValue(size, out var s)) _pool[size] = s = new List<nint>();
        s.Add(buffer);
    }

    public void Destroy(nint buffer) { Op_(Op.Destroy); U32((uint)buffer); }

    public void Write(nint buffer, ulong offset, ReadOnlySpan<byte> data)
    {
        if (data.Length == 0) return;
        if (_batch.WrittenCount + data.Length > BatchBytes) Flush();
        Op_(Op.Write); U32((uint)buffer); U32(Small(offset, "a write offset")); Bytes(data);
        if (_batch.WrittenCount > BatchBytes) Flush();
    }

    // --- pipelines and dispatches ---------------------------------------------------------------------------------

    public GpuPipeline Pipeline(string code, string label)
    {
        if (_pipelines.TryGetValue(code, out var p)) return p;
        uint id = ++_nextId, req = _s.NextRequest();
        Op_(Op.Pipeline); U32(id); U32(req); Bytes(Encoding.UTF8.GetBytes(label)); Bytes(Encoding.UTF8.GetBytes(code));
        var reply = _s.Expect(req);
        Flush();
        try { Await(reply, $"compiling {label}"); }
        catch (TapmlException e) when (e is not PlatformLostException)
        {
            throw new TapmlException($"webgpu (browser): {e.Message}{(Context.Length > 0 ? $" (for {Context})" : "")}\n--- WGSL ---\n{code}");
        }
        p = new GpuPipeline((nint)id, 0, label, code);
        _pipelines[code] = p;
        return p;
    }

    public void Dispatch(GpuPipeline p, ReadOnlySpan<nint> buffers, ReadOnlySpan<ulong> offsets, ReadOnlySpan<ulong> sizes, ReadOnlySpan<uint> meta, uint gx, uint gy = 1, uint gz = 1)
    {
        Op_(Op.Dispatch); U32((uint)p.Id); U32((uint)buffers.Length);
        for (int i = 0; i < buffers.Length; i++) { U32((uint)buffers[i]); U32(Small(offsets[i], "a binding offset")); U32(Small(Math.Max(4, (sizes[i] + 3) & ~3UL), "a binding")); }
        U32((uint)meta.Length);
        var m = MemoryMarshal.AsBytes(meta);
        m.CopyTo(_batch.GetSpan(m.Length)); _batch.Advance(m.Length);
        U32(gx); U32(gy); U32(gz);
        Dispatches++;
        if (_profileLabels is { } labels && !_timing)
        {
            labels.Add(p.Label);
            if (labels.Count == ProfileSlots) CollectProfile();
        }
        if (++_sinceSubmit >= AutoSubmit || _batch.WrittenCount > BatchBytes) Flush();
    }

    // --- readback -------------------------------------------------------------------------------------------------

    sealed class Pending(Task<byte[]> reply, int bytes) : GpuPendingRead
    {
        public readonly Task<byte[]> Reply = reply;
        public readonly int Bytes = bytes;
        public bool Done;
    }

    public GpuPendingRead BeginRead(nint buffer, ulong offset, int bytes)
    {
        uint req = _s.NextRequest();
        Op_(Op.Read); U32(req); U32((uint)buffer); U32(Small(offset, "a read offset")); U32((uint)bytes);
        var reply = _s.Expect(req);
        Flush();
        _readbacks++;
        return new Pending(reply, bytes);
    }

    public void EndRead(GpuPendingRead pending, Span<byte> dest)
    {
        var r = (Pending)pending;
        if (r.Done) throw new TapmlException("browser: a readback was waited for twice (internal error)");
        r.Done = true;
        var data = Await(r.Reply, "a readback");
        if (data.Length != r.Bytes) throw new TapmlException($"browser: a readback brought {data.Length} of {r.Bytes} bytes");
        data.CopyTo(dest);
    }

    public void Read(nint buffer, ulong offset, Span<byte> dest)
    {
        if (dest.Length == 0) return;
        EndRead(BeginRead(buffer, offset, dest.Length), dest);
    }

    public void Synchronize()
    {
        uint req = _s.NextRequest();
        Op_(Op.Sync); U32(req);
        var reply = _s.Expect(req);
        Flush();
        Await(reply, "synchronize");
    }

    /// <summary>Nanosecond timestamp pairs the page resolved, as milliseconds per pair.</summary>
    static double[] Durations(byte[] data)
    {
        var ts = MemoryMarshal.Cast<byte, ulong>(data);
        var ms = new double[ts.Length / 2];
        for (int i = 0; i < ms.Length; i++) ms[i] = ts[2 * i + 1] >= ts[2 * i] ? (ts[2 * i + 1] - ts[2 * i]) / 1e6 : 0;
        return ms;
    }

    public double? TimeGpu(Action record)
    {
        if (!Info.TimestampQuery) return null;
        Flush();
        Op_(Op.TimeBegin);
        _timing = true;
        try { record(); }
        finally { _timing = false; }
        uint req = _s.NextRequest();
        Op_(Op.TimeEnd); U32(req);
        var reply = _s.Expect(req);
        Flush();
        return Durations(Await(reply, "GPU timestamps"))[0];
    }

    public bool StartProfile()
    {
        if (!Info.TimestampQuery) return false;
        Flush();
        Op_(Op.ProfileOn);
        _profileLabels = new();
        _profile = new();
        return true;
    }

    void CollectProfile()
    {
        var labels = _profileLabels!;
        uint req = _s.NextRequest();
        Op_(Op.ProfileRead); U32(req);
        var reply = _s.Expect(req);
        Flush();
        var ms = Durations(Await(reply, "kernel timestamps"));
        for (int i = 0; i < labels.Count && i < ms.Length; i++)
        {
            var (c, t) = _profile!.GetValueOrDefault(labels[i]);
            _profile![labels[i]] = (c + 1, t + ms[i]);
        }
        labels.Clear();
    }

    public List<(string Kernel, long Calls, double Ms)> StopProfile()
    {
        if (_profileLabels is null) return [];
        CollectProfile();
        Op_(Op.ProfileOff);
        var r = _profile!.Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Ms)).OrderByDescending(x => x.Ms).ToList();
        _profileLabels = null;
        _profile = null;
        return r;
    }

    public void Dispose()
    {
        try { if (!_s.IsLost) Flush(); } catch (TapmlException) { }
        _s.CloseAsync().GetAwaiter().GetResult();
        _onDispose?.Invoke();
    }
}
