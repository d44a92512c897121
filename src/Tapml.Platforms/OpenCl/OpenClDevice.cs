using System.Runtime.InteropServices;
using System.Text;
using Silk.NET.OpenCL;
using Tapml.Core;
using Tapml.Platforms.WebGpu;
using Tapml.Platforms.WebGpu.Dialects;

namespace Tapml.Platforms.OpenCl;

/// <summary>OpenCL through Silk.NET.OpenCL and the ICD loader: the same kernels as webgpu, rendered to OpenCL C
/// (<see cref="OpenClRenderer"/>) and built once per source (a program cache; PoCL also caches binaries on disk).
/// One in-order queue with profiling on; buffers pooled by size bucket; each dispatch's metadata words go through a
/// host ring into a device ring buffer (non-blocking writes, ordered before the kernel by the queue); writes of up to
/// 2 MiB are copied into a host ring and enqueued without blocking; the queue is flushed every
/// <see cref="OpenClOptions.Batch"/> dispatches so the device starts while the host records. Buffer handles given out
/// are the <c>cl_mem</c> values.</summary>
public sealed unsafe class OpenClDevice : IGpuDevice, IPlatformDetails
{
    readonly CL _cl;
    // NOTE: device ids of a platform's own devices are not reference counted (nothing to release).
    readonly nint _device;
    readonly ClHandle _context, _queueHandle;
    // The queue's value, for the calls of every dispatch.
    readonly nint _queue;
    readonly BufferPool _pool = new();
    // Every buffer this device created and not yet released, by its cl_mem value (the ids given out).
    readonly Dictionary<nint, ClHandle> _mems = new();
    bool _disposed;

    sealed class Kernel
    {
        public required ClHandle Program, KernelHandle;
        /// <summary>The kernel's value, for the calls of every dispatch.</summary>
        public nint Handle;
        public int Bindings;
        public int[] Workgroup = [256, 1, 1];
    }
    readonly List<Kernel> _kernels = new();
    readonly Dictionary<string, GpuPipeline> _pipelines = new();

    readonly ClHandle _metaMem;
    readonly nint _meta;
    readonly byte* _metaHost;
    int _metaUsed;
    const int MetaBytes = 4 << 20, MetaAlign = 256;

    // Writes: a host ring the queue copies from (reused after a clFinish).
    readonly byte* _upHost;
    int _upUsed;
    const int UploadBytes = 8 << 20, UploadMax = 2 << 20;
    readonly OpenClOptions _opt;
    int _sinceFlush;
    public long Flushes { get; private set; }

    public GpuAdapterInfo Info { get; }
    public GpuLimits Limits { get; }
    public string Runtime { get; }
    public string Context { get; set; } = "";
    public long Dispatches { get; private set; }
    public long Readbacks { get; private set; }
    public double WaitMs { get; private set; }
    public DeviceCounters Counters => new(Dispatches, Flushes, Readbacks, WaitMs);
    public int PipelineCount => _pipelines.Count;
    readonly string _buildOptions = "-cl-std=CL1.2";

    readonly string[] _details;
    public IEnumerable<string> Details() => [.. _details, $"kernels: WGSL rendered to OpenCL C 1.2, built with '{_buildOptions}' (profiling events for timing)"];

    /// <summary>Platform, device and OpenCL C versions (for details).</summary>
    public string Versions { get; }

    /// <param name="platform">Index of the OpenCL platform (-1: the first with a GPU, else the first).</param>
    /// <param name="device">Index of the device on it.</param>
    /// <param name="optimize">Build with the compiler's optimizer (null: yes, except on PoCL, see below).</param>
    public OpenClDevice(int platform, int device, bool? optimize = null, OpenClOptions? options = null)
    {
        _opt = options ?? new OpenClOptions();
        try
        {
            _cl = CL.GetApi();
            uint np = 0;
            int r0 = _cl.GetPlatformIDs(0, null, &np);
            if (r0 != 0 || np == 0) throw new UnsupportedException($"opencl: no OpenCL platform (clGetPlatformIDs: {ClNative.Name(r0)}); install an ICD, e.g. apt-get install pocl-opencl-icd");
        }
        catch (Exception e) when (e is DllNotFoundException or FileNotFoundException or PlatformNotSupportedException or InvalidOperationException)
        {
            throw new UnsupportedException($"opencl: the ICD loader libOpenCL.so.1 is not installed (apt-get install ocl-icd-libopencl1 pocl-opencl-icd): {e.Message}");
        }
        uint n = 0;
        Check(_cl.GetPlatformIDs(0, null, &n), "clGetPlatformIDs");
        var platforms = new nint[n];
        fixed (nint* p = platforms) Check(_cl.GetPlatformIDs(n, p, null), "clGetPlatformIDs");
        nint[] Devices(nint pl)
        {
            uint nd = 0;
            if (_cl.GetDeviceIDs(pl, DeviceType.All, 0, null, &nd) != 0 || nd == 0) return [];
            var ds = new nint[nd];
            fixed (nint* d = ds) Check(_cl.GetDeviceIDs(pl, DeviceType.All, nd, d, null), "clGetDeviceIDs");
            return ds;
        }
        if (platform >= n) throw new UnsupportedException($"opencl: platform={platform}, but this machine has {n} OpenCL platform(s)");
        if (platform < 0)
        {
            platform = Enumerable.Range(0, (int)n).FirstOrDefault(i => Devices(platforms[i]).Any(d => (DeviceInt<ulong>(d, DeviceInfo.Type) & (ulong)DeviceType.Gpu) != 0), -1);
            if (platform < 0) platform = Enumerable.Range(0, (int)n).FirstOrDefault(i => Devices(platforms[i]).Length > 0, 0);
        }
        var devs = Devices(platforms[platform]);
        if (device >= devs.Length) throw new UnsupportedException($"opencl: device={device}, but platform {platform} has {devs.Length} device(s)");
        _device = devs[device];

        int err;
        var dev = _device;
        var context = _cl.CreateContext(null, 1, &dev, null, null, &err);
        Check(err, "clCreateContext");
        _context = new ClHandle(_cl, ClKind.Context, context, null);
        _queue = _cl.CreateCommandQueue(context, _device, CommandQueueProperties.ProfilingEnable, &err);
        Check(err, "clCreateCommandQueue");
        _queueHandle = new ClHandle(_cl, ClKind.CommandQueue, _queue, _context);

        string pname = PlatformString(platforms[platform], PlatformInfo.Name), pver = PlatformString(platforms[platform], PlatformInfo.Version);
        string dname = DeviceString(_device, DeviceInfo.Name), dver = DeviceString(_device, DeviceInfo.Version);
        string drv = DeviceString(_device, DeviceInfo.DriverVersion);
#pragma warning disable CS0618 // NOTE: deprecated in OpenCL 3.0, still what a 1.2/2.x driver answers
        string clc = DeviceString(_device, DeviceInfo.OpenclCVersion);
#pragma warning restore CS0618
        ulong maxAlloc = DeviceInt<ulong>(_device, DeviceInfo.MaxMemAllocSize);
        ulong local = DeviceInt<ulong>(_device, DeviceInfo.LocalMemSize);
        nuint maxWg = DeviceInt<nuint>(_device, DeviceInfo.MaxWorkGroupSize);
        ulong type = DeviceInt<ulong>(_device, DeviceInfo.Type);
        string vendor = DeviceString(_device, DeviceInfo.Vendor);
        Versions = $"{pver}; device {dver}; driver {drv}; {clc}";
        long binding = (long)Math.Min(maxAlloc, (ulong)int.MaxValue);
        Limits = new GpuLimits(binding, binding, (int)Math.Min(maxWg, 1024), (int)Math.Min(maxWg, 1024), (int)Math.Min(local, int.MaxValue), 65535, 64, MetaAlign);
        Info = new GpuAdapterInfo(vendor, "", dname, $"{pname} ({pver})", "opencl",
            (type & (ulong)DeviceType.Gpu) != 0 ? "GPU" : (type & (ulong)DeviceType.Cpu) != 0 ? "CPU" : (type & (ulong)DeviceType.Accelerator) != 0 ? "accelerator" : "unknown",
            0, 0, false, true);
        Runtime = $"OpenCL ICD loader, {pname} {drv}";
        _details =
        [
            $"platform: {pname} ({pver}), platform {platform} of {n}",
            $"device: {dname} ({Info.AdapterType}, {vendor}), {dver}, driver {drv}, {clc}",
            $"limits: CL_DEVICE_MAX_MEM_ALLOC_SIZE {maxAlloc}, CL_DEVICE_GLOBAL_MEM_SIZE {DeviceInt<ulong>(_device, DeviceInfo.GlobalMemSize)}, " +
            $"CL_DEVICE_LOCAL_MEM_SIZE {local}, CL_DEVICE_MAX_WORK_GROUP_SIZE {maxWg}",
        ];
        // NOTE: PoCL 3.1's optimizer runs a strided loop after a barrier loop once for work-items past its bound
        // (LayerNormalization with rows shorter than the workgroup wrote past its output); unoptimized it is right.
        if (!(optimize ?? !pname.Contains("Portable Computing Language", StringComparison.Ordinal))) _buildOptions += " -cl-opt-disable";
        _meta = _cl.CreateBuffer(context, MemFlags.ReadOnly, (nuint)MetaBytes, null, &err);
        Check(err, "clCreateBuffer (metadata ring)");
        _metaMem = new ClHandle(_cl, ClKind.Mem, _meta, _context);
        _metaHost = (byte*)NativeMemory.AlignedAlloc(MetaBytes, 4096);
        _upHost = (byte*)NativeMemory.AlignedAlloc(UploadBytes, 4096);
    }

    string PlatformString(nint p, PlatformInfo what) => InfoString((n, v, size) => _cl.GetPlatformInfo(p, what, n, v, size), "clGetPlatformInfo");
    string DeviceString(nint d, DeviceInfo what) => InfoString((n, v, size) => _cl.GetDeviceInfo(d, what, n, v, size), "clGetDeviceInfo");

    delegate int InfoQuery(nuint size, void* value, nuint* sizeRet);

    /// <summary>A string-valued clGet*Info: its size first, then its bytes.</summary>
    string InfoString(InfoQuery query, string call)
    {
        nuint size;
        Check(query(0, null, &size), call);
        var b = new byte[size];
        fixed (byte* q = b) Check(query(size, q, null), call);
        return Encoding.UTF8.GetString(b).TrimEnd('\0').Trim();
    }

    T DeviceInt<T>(nint d, DeviceInfo what) where T : unmanaged
    {
        T v = default;
        Check(_cl.GetDeviceInfo(d, what, (nuint)sizeof(T), &v, null), "clGetDeviceInfo");
        return v;
    }

    /// <summary><see cref="ClNative.Check"/> with the node being recorded.</summary>
    void Check(int status, string call, string? what = null)
    {
        if (status != 0) ClNative.Check(status, call, what, Context);
    }

    void CheckUsable()
    {
        if (_disposed) throw new ObjectDisposedException("opencl device", "opencl: the platform was disposed; create it again");
    }

    // ---- buffers ----------------------------------------------------------------------------------------------------

    public nint Allocate(ulong bytes, out ulong size, bool forWrite = false)
    {
        CheckUsable();
        var pooled = _pool.Take(bytes, out size, Limits.MaxBufferBytes, "opencl", Context);
        if (pooled != 0) return pooled;
        int err;
        var m = _cl.CreateBuffer(_context.Value, MemFlags.ReadWrite, (nuint)size, null, &err);
        if (err != 0 && _pool.PooledBytes > 0)
        {
            Synchronize();
            foreach (var b in _pool.Drain()) Destroy(b);
            m = _cl.CreateBuffer(_context.Value, MemFlags.ReadWrite, (nuint)size, null, &err);
        }
        Check(err, "clCreateBuffer", DawnDevice.Bytes((long)size));
        _mems[m] = new ClHandle(_cl, ClKind.Mem, m, _context);
        return m;
    }

    public void Release(nint buffer, ulong size) => _pool.Add(buffer, size);

    /// <summary>Releases a buffer (OpenCL keeps it alive until enqueued work that uses it is done).</summary>
    public void Destroy(nint buffer)
    {
        if (_mems.Remove(buffer, out var h)) h.Dispose();
    }

    public void Write(nint buffer, ulong offset, ReadOnlySpan<byte> data)
    {
        if (data.Length == 0) return;
        CheckUsable();
        if (_opt.RingWrites && data.Length <= UploadMax)
        {
            // NOTE: a blocking write would wait for everything queued before it (a decode step's start would wait for
            // the last step's end); the host ring keeps the bytes until the queue copied them.
            if (_upUsed + data.Length > UploadBytes)
            {
                Synchronize();
                _upUsed = 0;
            }
            int at = _upUsed;
            data.CopyTo(new Span<byte>(_upHost + at, data.Length));
            _upUsed = (at + data.Length + 63) & ~63;
            Check(_cl.EnqueueWriteBuffer(_queue, buffer, false, (nuint)offset, (nuint)data.Length, _upHost + at, 0, null, null), "clEnqueueWriteBuffer");
            return;
        }
        fixed (byte* p = data) Check(_cl.EnqueueWriteBuffer(_queue, buffer, true, (nuint)offset, (nuint)data.Length, p, 0, null, null), "clEnqueueWriteBuffer");
    }

    // ---- kernels ----------------------------------------------------------------------------------------------------

    static readonly OpenClRenderer Renderer = new();

    public GpuPipeline Pipeline(string code, string label)
    {
        if (_pipelines.TryGetValue(code, out var gp)) return gp;
        CheckUsable();
        string src;
        // NOTE: the renderer keeps per-render state and is shared by every device: two platforms compiling at once raced.
        lock (Renderer) src = Renderer.Render(code);
        var module = WgslModule.Parse(code);
        return Build(src, label, code, module.Globals.Count(g => g.Space == "storage"), module.Entry.WorkgroupSize!);
    }

    /// <summary>Builds OpenCL C <paramref name="src"/> (entry <see cref="OpenClRenderer.EntryName"/>) into a kernel; a build
    /// error is a <see cref="TapmlException"/> naming clBuildProgram, the status and <paramref name="label"/>, with the
    /// compiler's log and the source on the lines after.</summary>
    GpuPipeline Build(string src, string label, string key, int bindings, int[] workgroup)
    {
        int err;
        var lens = (nuint)Encoding.UTF8.GetByteCount(src);
        var prog = _cl.CreateProgramWithSource(_context.Value, 1, [src], &lens, &err);
        Check(err, "clCreateProgramWithSource", label);
        var program = new ClHandle(_cl, ClKind.Program, prog, _context);
        try
        {
            var dev = _device;
            int built = _cl.BuildProgram(prog, 1, &dev, _buildOptions, null, null);
            if (built != 0)
            {
                nuint size;
                string log = "";
                if (_cl.GetProgramBuildInfo(prog, _device, ProgramBuildInfo.BuildLog, 0, null, &size) == 0)
                {
                    var bytes = new byte[size];
                    fixed (byte* l = bytes) Check(_cl.GetProgramBuildInfo(prog, _device, ProgramBuildInfo.BuildLog, size, l, null), "clGetProgramBuildInfo");
                    log = Encoding.UTF8.GetString(bytes).TrimEnd('\0').Trim();
                }
                ClNative.Check(built, "clBuildProgram", label, Context, $"{log}\n--- OpenCL C ---\n{src}");
            }
            var k = _cl.CreateKernel(prog, OpenClRenderer.EntryName, &err);
            Check(err, "clCreateKernel", label);
            _kernels.Add(new Kernel { Program = program, KernelHandle = new ClHandle(_cl, ClKind.Kernel, k, program), Handle = k, Bindings = bindings, Workgroup = workgroup });
        }
        catch { program.Dispose(); throw; }
        var gp = new GpuPipeline(_kernels.Count - 1, 0, label, key);
        _pipelines[key] = gp;
        return gp;
    }

    public void Dispatch(GpuPipeline p, ReadOnlySpan<nint> buffers, ReadOnlySpan<ulong> offsets, ReadOnlySpan<ulong> sizes, ReadOnlySpan<uint> meta, uint gx, uint gy = 1, uint gz = 1)
    {
        CheckUsable();
        var k = _kernels[(int)p.Id];
        if (buffers.Length != k.Bindings - 1) throw new TapmlException($"opencl: kernel {p.Label} binds {k.Bindings - 1} buffers, the dispatch gave {buffers.Length} (internal error)");
        int metaBytes = Math.Max(16, meta.Length * 4);
        if (_metaUsed + metaBytes > MetaBytes)
        {
            // The ring is full: the writes still reading it must finish first.
            Synchronize();
            _metaUsed = 0;
        }
        int metaOffset = _metaUsed;
        MemoryMarshal.AsBytes(meta).CopyTo(new Span<byte>(_metaHost + metaOffset, meta.Length * 4));
        _metaUsed = (metaOffset + metaBytes + MetaAlign - 1) / MetaAlign * MetaAlign;
        Check(_cl.EnqueueWriteBuffer(_queue, _meta, false, (nuint)metaOffset, (nuint)metaBytes, _metaHost + metaOffset, 0, null, null), "clEnqueueWriteBuffer (metadata)");

        for (int i = 0; i <= buffers.Length; i++)
        {
            nint mem = i < buffers.Length ? buffers[i] : _meta;
            uint off = i < buffers.Length ? checked((uint)offsets[i]) : (uint)metaOffset;
            Check(_cl.SetKernelArg(k.Handle, (uint)(2 * i), (nuint)sizeof(nint), &mem), "clSetKernelArg", p.Label);
            Check(_cl.SetKernelArg(k.Handle, (uint)(2 * i + 1), sizeof(uint), &off), "clSetKernelArg", p.Label);
        }
        var global = stackalloc nuint[3] { (nuint)(gx * (uint)k.Workgroup[0]), (nuint)(gy * (uint)k.Workgroup[1]), (nuint)(gz * (uint)k.Workgroup[2]) };
        var local = stackalloc nuint[3] { (nuint)k.Workgroup[0], (nuint)k.Workgroup[1], (nuint)k.Workgroup[2] };
        nint ev = 0;
        bool timed = _events is not null;
        Check(_cl.EnqueueNdrangeKernel(_queue, k.Handle, 3, null, global, local, 0, null, timed ? &ev : null), "clEnqueueNDRangeKernel", p.Label);
        if (timed) _events!.Add((p.Label, ev));
        Dispatches++;
        if (++_sinceFlush >= _opt.Batch)
        {
            Check(_cl.Flush(_queue), "clFlush");
            _sinceFlush = 0;
            Flushes++;
        }
    }

    // ---- readback ---------------------------------------------------------------------------------------------------

    public void Read(nint buffer, ulong offset, Span<byte> dest)
    {
        if (dest.Length == 0) return;
        CheckUsable();
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        fixed (byte* p = dest) Check(_cl.EnqueueReadBuffer(_queue, buffer, true, (nuint)offset, (nuint)dest.Length, p, 0, null, null), "clEnqueueReadBuffer");
        WaitMs += System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
        Readbacks++;
    }

    sealed class PendingRead : GpuPendingRead
    {
        public nint Event;
        public byte* Host;
        public int Bytes;
    }

    public GpuPendingRead BeginRead(nint buffer, ulong offset, int bytes)
    {
        CheckUsable();
        var host = (byte*)NativeMemory.Alloc((nuint)Math.Max(4, bytes));
        nint ev;
        try
        {
            Check(_cl.EnqueueReadBuffer(_queue, buffer, false, (nuint)offset, (nuint)bytes, host, 0, null, &ev), "clEnqueueReadBuffer");
        }
        catch { NativeMemory.Free(host); throw; }
        Check(_cl.Flush(_queue), "clFlush");
        _sinceFlush = 0;
        Flushes++;
        Readbacks++;
        return new PendingRead { Event = ev, Host = host, Bytes = bytes };
    }

    public void EndRead(GpuPendingRead pending, Span<byte> dest)
    {
        var r = (PendingRead)pending;
        if (r.Host == null) throw new TapmlException("opencl: a readback was waited for twice (internal error)");
        try
        {
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            var ev = r.Event;
            Check(_cl.WaitForEvents(1, &ev), "clWaitForEvents");
            WaitMs += System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            new ReadOnlySpan<byte>(r.Host, r.Bytes).CopyTo(dest);
        }
        finally
        {
            _cl.ReleaseEvent(r.Event);
            NativeMemory.Free(r.Host);
            r.Host = null;
        }
    }

    public void Synchronize()
    {
        CheckUsable();
        Check(_cl.Finish(_queue), "clFinish");
        // Nothing queued reads the host rings any more.
        _upUsed = 0;
        _metaUsed = 0;
    }

    // ---- timing -----------------------------------------------------------------------------------------------------

    List<(string Label, nint Event)>? _events;

    (double Start, double End) Times(nint ev)
    {
        ulong s = 0, e = 0;
        Check(_cl.GetEventProfilingInfo(ev, ProfilingInfo.Start, sizeof(ulong), &s, null), "clGetEventProfilingInfo");
        Check(_cl.GetEventProfilingInfo(ev, ProfilingInfo.End, sizeof(ulong), &e, null), "clGetEventProfilingInfo");
        return (s / 1e6, e / 1e6);
    }

    List<(string Label, double Ms)> Drain()
    {
        Synchronize();
        var r = new List<(string, double)>();
        foreach (var (label, ev) in _events ?? [])
        {
            var (s, e) = Times(ev);
            r.Add((label, Math.Max(0, e - s)));
            _cl.ReleaseEvent(ev);
        }
        _events?.Clear();
        return r;
    }

    public double? TimeGpu(Action record)
    {
        Synchronize();
        var outer = _events;
        _events = new();
        try
        {
            record();
            Synchronize();
            if (_events.Count == 0) return 0;
            double start = double.MaxValue, end = 0;
            foreach (var (_, ev) in _events) { var (s, e) = Times(ev); start = Math.Min(start, s); end = Math.Max(end, e); }
            return end - start;
        }
        finally
        {
            foreach (var (_, ev) in _events) _cl.ReleaseEvent(ev);
            _events = outer;
        }
    }

    Dictionary<string, (long Calls, double Ms)>? _profile;

    public bool StartProfile()
    {
        Synchronize();
        _events = new();
        _profile = new();
        return true;
    }

    public List<(string Kernel, long Calls, double Ms)> StopProfile()
    {
        var profile = _profile ?? new();
        foreach (var (label, ms) in Drain())
        {
            var (c, t) = profile.GetValueOrDefault(label);
            profile[label] = (c + 1, t + ms);
        }
        _events = null;
        _profile = null;
        return profile.Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Ms)).OrderByDescending(t => t.Ms).ToList();
    }

    /// <summary>Waits for the queue, then releases what this device holds; the context goes last (every child handle
    /// holds a reference on it). A second call does nothing; buffers freed afterwards are ignored.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        try { Synchronize(); } catch (TapmlException) { }
        _disposed = true;
        if (_events is not null) foreach (var (_, ev) in _events) _cl.ReleaseEvent(ev);
        _events = null;
        foreach (var m in _mems.Values) m.Dispose();
        _mems.Clear();
        _pool.Drain();
        _metaMem.Dispose();
        // NOTE: the host rings are not finalizable memory: the queue was finished above, nothing reads them now.
        NativeMemory.AlignedFree(_metaHost);
        NativeMemory.AlignedFree(_upHost);
        foreach (var k in _kernels) { k.KernelHandle.Dispose(); k.Program.Dispose(); }
        _kernels.Clear();
        _pipelines.Clear();
        _queueHandle.Dispose();
        _context.Dispose();
    }
}
