using System.Runtime.InteropServices;
using Tapml.Core;
using Tapml.Platforms.WebGpu.Native;

namespace Tapml.Platforms.WebGpu;

/// <summary>What the adapter is and what it allows (bytes for sizes). <paramref name="Subgroups"/>: kernels may use
/// subgroup shuffles (WGSL <c>enable subgroups;</c>, <c>subgroupShuffleXor</c>) in subgroups of at least
/// <paramref name="SubgroupMin"/> invocations.</summary>
public sealed record GpuAdapterInfo(string Vendor, string Architecture, string Device, string Description, string Backend,
    string AdapterType, int SubgroupMin, int SubgroupMax, bool ShaderF16, bool TimestampQuery, bool Subgroups = false);

public sealed record GpuLimits(long MaxStorageBindingBytes, long MaxBufferBytes, int MaxWorkgroupSizeX, int MaxInvocationsPerWorkgroup,
    int MaxWorkgroupStorageBytes, int MaxWorkgroupsPerDimension, int MaxStorageBuffersPerStage, int MinStorageOffsetAlignment);

/// <summary>A compiled compute pipeline and its bind-group layout.</summary>
public sealed class GpuPipeline(nint handle, nint layout, string label, string code)
{
    internal nint Handle = handle;
    internal nint Layout = layout;
    /// <summary>The implementation's handle of it (a Dawn pipeline, a browser bridge's id).</summary>
    public nint Id => Handle;
    public string Label { get; } = label;
    public string Code { get; } = code;
}

/// <summary>The Dawn runtime: instance, adapter, device and queue; buffers, pipelines (cached by WGSL text),
/// dispatches recorded into one compute pass and submitted on <see cref="Flush"/>, readback, error capture.
/// Knows nothing about ONNX: kernels are generated elsewhere (<see cref="Kernels"/>).</summary>
public sealed unsafe class DawnDevice : IGpuDevice, IPrecompile
{
    readonly WgpuHandle _instanceHandle = null!, _adapterHandle = null!, _deviceHandle = null!, _queueHandle = null!;
    // Their values, for the calls of every dispatch (valid until Dispose).
    readonly nint _instance, _adapter, _device, _queue;
    // Every buffer this device created and not yet destroyed (pooled, metadata, staging), by its value.
    readonly Dictionary<nint, WgpuHandle> _buffers = new();
    // Pipelines and their bind-group layouts.
    readonly List<WgpuHandle> _pipelineHandles = new();
    bool _disposed;
    // NOTE: per-submit objects (command encoder, compute pass, command buffer) and bind groups stay raw values: an
    // object per dispatch on the decode path would be an allocation each. Bind groups live in a cache released by
    // ForgetBuffer/ClearBindGroups before their buffers, and everything is released before the device in Dispose.
    nint _encoder, _pass;
    readonly List<nint> _bindGroups = new();
    // Buffers the recorded (not yet submitted) work binds: a queue write to one of them must submit that work first.
    readonly HashSet<nint> _recorded = new();
    int _sinceSubmit;
    bool _timing;
    const int AutoSubmit = 48;
    readonly Dictionary<string, GpuPipeline> _pipelines = new();
    readonly Dictionary<ulong, List<nint>> _pool = new();
    // Buffers host writes fill (feeds, weights) pool apart from kernel outputs: a write cannot take a buffer the recorded
    // work binds, so which one it takes varies step to step, and sharing one pool would pass that variation on to the
    // outputs (new bind groups every step); apart, a decode step's outputs take the buffers the last step's took.
    readonly Dictionary<ulong, List<nint>> _writePool = new();
    readonly HashSet<nint> _writeBuffers = new();
    GCHandle _eventSink;
    string? _error, _errorStatus;
    bool _lost;
    // Shape/stride metadata of every dispatch goes into one storage buffer, bound at an aligned offset.
    nint _meta;
    readonly byte[] _metaHost;
    int _metaUsed;
    readonly int _metaAlign;
    const int MetaBytes = 1 << 20;

    public GpuAdapterInfo Info { get; }
    public GpuLimits Limits { get; }
    public string Runtime => $"Dawn {Path.GetFileName(Wgpu.LibraryPath)}";
    /// <summary>Pooled buffers are taken lowest handle first (<c>webgpu?pool=lowest</c>, the default), else the last
    /// released first (<c>pool=last</c>).</summary>
    public bool LowestFirst { get; init; } = true;

    /// <summary>Node (or what) the dispatches being recorded belong to, for error messages.</summary>
    public string Context { get; set; } = "";
    public long Dispatches { get; private set; }
    public long Submits { get; private set; }
    public long Readbacks { get; private set; }
    /// <summary>Bind groups created so far (a dispatch whose buffers no cached group binds makes one).</summary>
    public long BindGroupsMade { get; private set; }
    /// <summary>Host time spent waiting for readbacks (the GPU finishing queued work), milliseconds.</summary>
    public double WaitMs { get; private set; }
    public long PooledBytes { get; private set; }

    /// <summary>The work counters now (subtract two to measure a stretch of work).</summary>
    public DeviceCounters Counters => new(Dispatches, Submits, Readbacks, WaitMs, BindGroupsMade);

    /// <param name="backend">"" (best adapter), "vulkan" or "gles".</param>
    /// <param name="maxBindingBytes">Lower maxStorageBufferBindingSize to this (0: the adapter's maximum).</param>
    /// <param name="blobCache">Given the adapter, the folder of Dawn's blob cache (<see cref="DawnBlobCache"/>), or null for none.</param>
    /// <param name="toggles">Dawn device toggles: a name enables one, <c>-name</c> disables it (ONNX Runtime's WebGPU EP
    /// enables skip_validation, disable_robustness and disable_workgroup_init).</param>
    public DawnDevice(string backend, long maxBindingBytes = 0, Func<GpuAdapterInfo, string?>? blobCache = null, IReadOnlyList<string>? toggles = null)
    {
        Wgpu.Load();
        PrepareEnvironment(backend);
        var idesc = new InstanceDescriptor { TimedWaitAnyEnable = 1, TimedWaitAnyMaxCount = 1 };
        _instance = Wgpu.Created(Wgpu.CreateInstance(&idesc), "wgpuCreateInstance");
        _instanceHandle = new WgpuHandle(WgpuKind.Instance, _instance, null);
        try
        {
            var opts = new RequestAdapterOptions
            {
                FeatureLevel = backend == "gles" ? Wgpu.FeatureLevelCompatibility : Wgpu.FeatureLevelCore,
                PowerPreference = Wgpu.PowerHighPerformance,
                BackendType = backend switch { "vulkan" => Wgpu.BackendVulkan, "gles" => Wgpu.BackendOpenGLES, _ => Wgpu.BackendUndefined },
            };
            var inst = _instance;
            nint po = (nint)(&opts);
            var ra = Wgpu.Await(inst, Wgpu.HandleCallback, info => Wgpu.InstanceRequestAdapter(inst, (RequestAdapterOptions*)po, info), "an adapter");
            if (ra.Status != Wgpu.StatusSuccess || ra.Handle == 0)
                throw new UnsupportedException($"webgpu: no adapter{(backend == "" ? "" : $" for backend {backend}")} (wgpuInstanceRequestAdapter: WGPURequestAdapterStatus {ra.Status}): {ra.Message}" +
                    " (Vulkan needs libvulkan1 and an ICD: here chromium's SwiftShader, /usr/lib/chromium/vk_swiftshader_icd.json; GLES needs Mesa EGL)");
            _adapter = ra.Handle;
            _adapterHandle = new WgpuHandle(WgpuKind.Adapter, _adapter, _instanceHandle);

            NativeAdapterInfo ai;
            Wgpu.Check(Wgpu.AdapterGetInfo(_adapter, &ai), "wgpuAdapterGetInfo");
            NativeLimits al;
            al.Next = 0;
            Wgpu.Check(Wgpu.AdapterGetLimits(_adapter, &al), "wgpuAdapterGetLimits");
            bool f16 = Wgpu.AdapterHasFeature(_adapter, Wgpu.FeatureShaderF16) != 0;
            bool ts = Wgpu.AdapterHasFeature(_adapter, Wgpu.FeatureTimestampQuery) != 0;
            bool sg = Wgpu.AdapterHasFeature(_adapter, Wgpu.FeatureSubgroups) != 0 && ai.SubgroupMinSize > 0;
            Info = new GpuAdapterInfo(ai.Vendor.ToString(), ai.Architecture.ToString(), ai.Device.ToString(), ai.Description.ToString(),
                ai.BackendType switch { 6 => "vulkan", 7 => "opengl", 8 => "gles", 5 => "metal", 4 => "d3d12", var b => $"backend {b}" },
                ai.AdapterType switch { 1 => "discrete GPU", 2 => "integrated GPU", 3 => "CPU", _ => "unknown" },
                (int)ai.SubgroupMinSize, (int)ai.SubgroupMaxSize, f16, ts, sg);
            Wgpu.AdapterInfoFreeMembers(ai);
            if (ai.BackendType == 1)
                throw new UnsupportedException("webgpu: Dawn offers only its Null backend here (no Vulkan or GL driver loaded; Vulkan needs libvulkan1 and an ICD: here chromium's SwiftShader, /usr/lib/chromium/vk_swiftshader_icd.json)");

            // NOTE: device limits default to WebGPU's base values (128 MiB bindings); ask for the adapter's maximums.
            var req = al;
            req.Next = 0;
            if (maxBindingBytes > 0) req.MaxStorageBufferBindingSize = Math.Min(req.MaxStorageBufferBindingSize, (ulong)maxBindingBytes);
            var features = stackalloc uint[2];
            int nf = 0;
            if (ts) features[nf++] = Wgpu.FeatureTimestampQuery;
            if (sg) features[nf++] = Wgpu.FeatureSubgroups;
            _eventSink = GCHandle.Alloc((Action<uint, uint, string>)OnDeviceEvent);
            var ddesc = new DeviceDescriptor
            {
                RequiredFeatureCount = (nuint)nf,
                RequiredFeatures = (nint)features,
                RequiredLimits = (nint)(&req),
                DeviceLost = new CallbackInfo { Mode = 3 /* AllowSpontaneous */, Callback = Wgpu.DeviceEventCallback, Userdata1 = GCHandle.ToIntPtr(_eventSink), Userdata2 = Wgpu.DeviceLostSource },
                UncapturedError = new UncapturedErrorCallbackInfo { Callback = Wgpu.DeviceEventCallback, Userdata1 = GCHandle.ToIntPtr(_eventSink), Userdata2 = Wgpu.UncapturedErrorSource },
            };
            var cacheDesc = new DawnCacheDeviceDescriptor();
            if (blobCache?.Invoke(Info) is { } blobDir)
            {
                Blobs = new DawnBlobCache(blobDir);
                Blobs.Describe(ref cacheDesc);
                ddesc.Next = (nint)(&cacheDesc);
            }
            var togglesDesc = new DawnTogglesDescriptor();
            var names = new List<nint>();
            try
            {
                if (toggles is { Count: > 0 })
                {
                    var on = toggles.Where(t => !t.StartsWith('-')).ToArray();
                    var off = toggles.Where(t => t.StartsWith('-')).Select(t => t[1..]).ToArray();
                    var ptrs = stackalloc nint[toggles.Count];
                    int i = 0;
                    foreach (var t in on.Concat(off)) names.Add(ptrs[i++] = Marshal.StringToCoTaskMemUTF8(t));
                    togglesDesc = new DawnTogglesDescriptor
                    {
                        ChainNext = ddesc.Next, SType = Wgpu.STypeDawnTogglesDescriptor,
                        EnabledCount = (nuint)on.Length, Enabled = (nint)ptrs, DisabledCount = (nuint)off.Length, Disabled = (nint)(ptrs + on.Length),
                    };
                    ddesc.Next = (nint)(&togglesDesc);
                }
                var adapter = _adapter;
                nint pd = (nint)(&ddesc);
                var rd = Wgpu.Await(inst, Wgpu.HandleCallback, info => Wgpu.AdapterRequestDevice(adapter, (DeviceDescriptor*)pd, info), "a device");
                if (rd.Status != Wgpu.StatusSuccess && toggles is { Count: > 0 })
                    throw new TapmlException($"webgpu: Dawn refused a device with toggles {string.Join(",", toggles)}: {rd.Message}");
                Wgpu.Check(rd.Status, "wgpuAdapterRequestDevice", "WGPURequestDeviceStatus", rd.Message);
                _device = Wgpu.Created(rd.Handle, "wgpuAdapterRequestDevice");
            }
            finally { foreach (var n in names) Marshal.FreeCoTaskMem(n); }
            _deviceHandle = new WgpuHandle(WgpuKind.Device, _device, _adapterHandle);
            _queue = Wgpu.Created(Wgpu.DeviceGetQueue(_device), "wgpuDeviceGetQueue");
            _queueHandle = new WgpuHandle(WgpuKind.Queue, _queue, _deviceHandle);
            NativeLimits dl;
            dl.Next = 0;
            Wgpu.Check(Wgpu.DeviceGetLimits(_device, &dl), "wgpuDeviceGetLimits");
            // NOTE: Dawn may grant more than requested (limit tiers); a lowered binding limit is enforced by tapml itself.
            long binding = (long)Math.Min(dl.MaxStorageBufferBindingSize, long.MaxValue);
            if (maxBindingBytes > 0) binding = Math.Min(binding, maxBindingBytes);
            Limits = new GpuLimits(binding, (long)Math.Min(dl.MaxBufferSize, long.MaxValue),
                (int)dl.MaxComputeWorkgroupSizeX, (int)dl.MaxComputeInvocationsPerWorkgroup, (int)dl.MaxComputeWorkgroupStorageSize,
                (int)dl.MaxComputeWorkgroupsPerDimension, (int)dl.MaxStorageBuffersPerShaderStage, (int)dl.MinStorageBufferOffsetAlignment);
            _metaAlign = Math.Max(16, Limits.MinStorageOffsetAlignment);
            _metaHost = new byte[MetaBytes];
            _meta = CreateRaw(MetaBytes, Wgpu.UsageStorage | Wgpu.UsageCopyDst | Wgpu.UsageCopySrc, "tapml-meta");
        }
        catch
        {
            _disposing = true;
            foreach (var b in _buffers.Values) b.Dispose();
            _queueHandle?.Dispose(); _deviceHandle?.Dispose(); _adapterHandle?.Dispose(); _instanceHandle.Dispose();
            throw;
        }
    }

    /// <summary>Makes Dawn find a usable adapter without the user exporting variables: Vulkan ICDs other than
    /// Mesa's lavapipe (which Dawn rejects) plus chromium's SwiftShader; surfaceless EGL for GLES; a private
    /// XDG_RUNTIME_DIR. Variables the user set are kept.</summary>
    static void PrepareEnvironment(string backend)
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR")))
        {
            var dir = Path.Combine(Path.GetTempPath(), $"tapml-xdg-{Environment.UserName}");
            Directory.CreateDirectory(dir);
            if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            Wgpu.SetNativeEnv("XDG_RUNTIME_DIR", dir);
        }
        if (backend == "gles" && string.IsNullOrEmpty(Environment.GetEnvironmentVariable("EGL_PLATFORM")))
            Wgpu.SetNativeEnv("EGL_PLATFORM", "surfaceless");
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable("VK_ICD_FILENAMES")) && string.IsNullOrEmpty(Environment.GetEnvironmentVariable("VK_DRIVER_FILES")))
        {
            var icds = new List<string>();
            foreach (var dir in new[] { "/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d" })
                if (Directory.Exists(dir))
                    icds.AddRange(Directory.GetFiles(dir, "*.json").Where(f => !Path.GetFileName(f).StartsWith("lvp_", StringComparison.Ordinal)).Order());
            const string swiftshader = "/usr/lib/chromium/vk_swiftshader_icd.json";
            if (File.Exists(swiftshader)) icds.Add(swiftshader);
            if (icds.Count > 0) Wgpu.SetNativeEnv("VK_DRIVER_FILES", string.Join(':', icds));
        }
    }

    void OnDeviceEvent(uint source, uint kind, string message)
    {
        // Both device-lost (reason) and uncaptured errors (type) land here; the first message is kept.
        if (message.Contains("Destroyed", StringComparison.OrdinalIgnoreCase) && _disposing) return;
        if (_error is null)
        {
            _error = message;
            _errorStatus = source == Wgpu.DeviceLostSource ? $"device lost (WGPUDeviceLostReason {kind})" : Wgpu.ErrorTypeName(kind);
        }
        if (kind is 1 or 4 && message.Contains("lost", StringComparison.OrdinalIgnoreCase)) _lost = true;
    }

    bool _disposing;

    /// <summary>Dawn reports most errors through its uncaptured-error callback, after the call that caused them: throws
    /// the first one since the last check as <see cref="Wgpu.Failure"/> of <paramref name="call"/> (the call just made).</summary>
    void ThrowIfFailed(string call)
    {
        if (_error is null) return;
        var (e, status) = (_error, _errorStatus ?? "error");
        _error = _errorStatus = null;
        throw Wgpu.Failure(call, status, e, Context);
    }

    /// <summary><see cref="ThrowIfFailed(string)"/> for "<paramref name="call"/> (<paramref name="label"/>)", the message
    /// formatted only when there is an error (this runs once per dispatch).</summary>
    void ThrowIfFailed(string call, string label)
    {
        if (_error is not null) ThrowIfFailed($"{call} ({label})");
    }

    void CheckUsable()
    {
        if (_disposed) throw new ObjectDisposedException("webgpu device", "webgpu: the platform was disposed; create it again");
        if (_lost) throw new TapmlException("webgpu: the device was lost; create the platform again");
    }

    nint CreateRaw(ulong size, ulong usage, string label)
    {
        var sv = Wgpu.Utf8(label, out var mem);
        try
        {
            var d = new BufferDescriptor { Label = sv, Usage = usage, Size = size };
            Wgpu.DevicePushErrorScope(_device, Wgpu.ErrorFilterOutOfMemory);
            var b = Wgpu.DeviceCreateBuffer(_device, &d);
            var h = b != 0 ? new WgpuHandle(WgpuKind.Buffer, b, _deviceHandle) : null;
            var dev = _device;
            var r = Wgpu.Await(_instance, Wgpu.ErrorScopeCallback, info => Wgpu.DevicePopErrorScope(dev, info), "wgpuDevicePopErrorScope");
            string call = $"wgpuDeviceCreateBuffer ({Bytes((long)size)} {label})";
            try
            {
                Wgpu.Check(r.Status, "wgpuDevicePopErrorScope", "WGPUPopErrorScopeStatus", r.Message, Context);
                if (r.Kind != Wgpu.ErrorTypeNoError) throw Wgpu.Failure(call, Wgpu.ErrorTypeName(r.Kind), r.Message, Context);
                ThrowIfFailed(call);
                Wgpu.Created(b, call, Context);
            }
            catch { h?.Dispose(); throw; }
            _buffers[b] = h!;
            return b;
        }
        finally { Marshal.FreeHGlobal(mem); }
    }

    /// <summary>Rounds a request to a pool bucket: 256 B steps up to 4 KiB, then four steps per power of two (at most
    /// 25% over). Coarse on purpose: a KV cache one row longer each decode step lands in the bucket the previous
    /// step's cache freed, instead of creating a buffer per step.</summary>
    public static ulong Bucket(ulong bytes)
    {
        bytes = Math.Max(bytes, 16);
        if (bytes <= 4096) return (bytes + 255) & ~255UL;
        int p = 63 - System.Numerics.BitOperations.LeadingZeroCount(bytes - 1);
        ulong step = 1UL << (p - 2);
        return (bytes + step - 1) / step * step;
    }

    /// <summary>A storage buffer of at least <paramref name="bytes"/> (pooled). Checks the device limits first.</summary>
    /// <param name="forWrite">The caller fills it with a queue write next: take a pooled buffer the recorded work does
    /// not bind (a write to one would have to submit that work first).</param>
    public nint Allocate(ulong bytes, out ulong size, bool forWrite = false)
    {
        CheckUsable();
        size = Bucket(bytes);
        var pool = forWrite ? _writePool : _pool;
        if (pool.TryGetValue(size, out var s) && s.Count > 0)
        {
            // The lowest handle of those free: the same free set gives the same buffer, so a decode step's dispatches
            // bind the buffers the last step's did and find their bind groups cached.
            int pick = -1;
            for (int i = s.Count - 1; i >= 0; i--)
            {
                if (forWrite && _recorded.Contains(s[i])) continue;
                if (pick < 0 || s[i] < s[pick]) pick = i;
                if (!LowestFirst) break;
            }
            if (pick >= 0)
            {
                var b = s[pick];
                s[pick] = s[^1];
                s.RemoveAt(s.Count - 1);
                PooledBytes -= (long)size;
                return b;
            }
        }
        if ((long)size > Limits.MaxBufferBytes && (long)bytes <= Limits.MaxBufferBytes) size = (bytes + 15) & ~15UL;
        if ((long)size > Limits.MaxBufferBytes)
            throw new UnsupportedException($"webgpu: a {Bytes((long)bytes)} buffer{(Context.Length > 0 ? $" for {Context}" : "")} is over this device's maxBufferSize ({Bytes(Limits.MaxBufferBytes)})");
        nint made;
        try { made = CreateRaw(size, Wgpu.UsageStorage | Wgpu.UsageCopySrc | Wgpu.UsageCopyDst, "tapml"); }
        catch (TapmlException) when (PooledBytes > 0)
        {
            TrimPool();
            made = CreateRaw(size, Wgpu.UsageStorage | Wgpu.UsageCopySrc | Wgpu.UsageCopyDst, "tapml");
        }
        if (forWrite) _writeBuffers.Add(made);
        return made;
    }

    public void Release(nint buffer, ulong size)
    {
        var pool = _writeBuffers.Contains(buffer) ? _writePool : _pool;
        if (!pool.TryGetValue(size, out var s)) pool[size] = s = new List<nint>();
        s.Add(buffer);
        PooledBytes += (long)size;
    }

    /// <summary>Destroys every pooled buffer (after pending work finished).</summary>
    public void TrimPool()
    {
        Flush();
        DestroyPool();
    }

    void DestroyPool()
    {
        ClearBindGroups();
        foreach (var s in _pool.Values.Concat(_writePool.Values)) { foreach (var b in s) DestroyBuffer(b); s.Clear(); }
        PooledBytes = 0;
    }

    /// <summary>Destroys and releases a buffer this device created (nothing when it already was).</summary>
    void DestroyBuffer(nint b)
    {
        if (_buffers.Remove(b, out var h)) h.Dispose();
        _writeBuffers.Remove(b);
    }

    public void Write(nint buffer, ulong offset, ReadOnlySpan<byte> data)
    {
        CheckUsable();
        if (data.Length == 0) return;
        // NOTE: writeBuffer runs on the queue before work recorded but not yet submitted; a pooled buffer may still
        // be read or written by that work, so submit it first (only then). writeBuffer needs a multiple of 4 bytes; callers pad.
        if (_recorded.Contains(buffer)) Flush();
        fixed (byte* p = data) Wgpu.QueueWriteBuffer(_queue, buffer, offset, p, (nuint)data.Length);
        ThrowIfFailed("wgpuQueueWriteBuffer");
    }

    /// <summary>The pipeline for <paramref name="code"/> (entry point <c>main</c>), compiled once; a WGSL or
    /// validation error names <paramref name="label"/> and carries the source.</summary>
    public GpuPipeline Pipeline(string code, string label)
    {
        if (_pipelines.TryGetValue(code, out var p)) return p;
        CheckUsable();
        if (_compiling.Remove(code, out var started) && Finish(started, code) is { } done) return done;
        return WithModule(code, label, (module, pd) =>
        {
            var pipe = Wgpu.DeviceCreateComputePipeline(_device, (ComputePipelineDescriptor*)pd);
            var pipeHandle = pipe != 0 ? new WgpuHandle(WgpuKind.ComputePipeline, pipe, _deviceHandle) : null;
            var dev = _device;
            var r = Wgpu.Await(_instance, Wgpu.ErrorScopeCallback, info => Wgpu.DevicePopErrorScope(dev, info), "wgpuDevicePopErrorScope");
            string call = $"wgpuDeviceCreateComputePipeline ({label})";
            nint layout;
            try
            {
                Wgpu.Check(r.Status, "wgpuDevicePopErrorScope", "WGPUPopErrorScopeStatus", r.Message, Context);
                if (r.Kind != Wgpu.ErrorTypeNoError) throw Wgpu.Failure(call, Wgpu.ErrorTypeName(r.Kind), $"{r.Message.Trim()}\n--- WGSL ---\n{code}", Context);
                ThrowIfFailed(call);
                Wgpu.Created(pipe, call, Context);
                layout = Wgpu.Created(Wgpu.ComputePipelineGetBindGroupLayout(pipe, 0), "wgpuComputePipelineGetBindGroupLayout", Context);
            }
            catch { pipeHandle?.Dispose(); throw; }
            return Register(pipeHandle!, layout, label, code);
        });
    }

    /// <summary>Makes <paramref name="code"/>'s shader module inside a validation error scope (popped by
    /// <paramref name="make"/>) and calls <paramref name="make"/> with it (0 when it failed) and a pipeline descriptor
    /// naming it (a <c>ComputePipelineDescriptor*</c>, valid during the call).</summary>
    T WithModule<T>(string code, string label, Func<nint, nint, T> make)
    {
        var csv = Wgpu.Utf8(code, out var cmem);
        var lsv = Wgpu.Utf8(label, out var lmem);
        var esv = Wgpu.Utf8("main", out var emem);
        try
        {
            var src = new ShaderSourceWgsl { SType = Wgpu.STypeShaderSourceWgsl, Code = csv };
            var md = new ShaderModuleDescriptor { Next = (nint)(&src), Label = lsv };
            Wgpu.DevicePushErrorScope(_device, Wgpu.ErrorFilterValidation);
            var module = Wgpu.DeviceCreateShaderModule(_device, &md);
            using var moduleHandle = module != 0 ? new WgpuHandle(WgpuKind.ShaderModule, module, _deviceHandle) : null;
            var pd = new ComputePipelineDescriptor { Label = lsv, Module = module, EntryPoint = esv };
            return make(module, (nint)(&pd));
        }
        finally { Marshal.FreeHGlobal(cmem); Marshal.FreeHGlobal(lmem); Marshal.FreeHGlobal(emem); }
    }

    GpuPipeline Register(WgpuHandle pipe, nint layout, string label, string code)
    {
        _pipelineHandles.Add(pipe);
        _pipelineHandles.Add(new WgpuHandle(WgpuKind.BindGroupLayout, layout, _deviceHandle));
        var p = new GpuPipeline(pipe.Value, layout, label, code);
        _pipelines[code] = p;
        Compiled?.Invoke(code, label);
        return p;
    }

    /// <summary>A pipeline Dawn compiles on its worker threads: the shader module's error scope and the creation.</summary>
    sealed record Compiling(Wgpu.Pending Scope, Wgpu.Pending? Creation, string Label);
    readonly Dictionary<string, Compiling> _compiling = new();

    public Action<string, string>? Compiled { get; set; }
    /// <summary>Dawn's blob cache on disk, when this device has one.</summary>
    public DawnBlobCache? Blobs { get; }

    /// <summary>Pipelines started by <see cref="Precompile"/> and not yet asked for.</summary>
    public int Precompiling => _compiling.Count;

    /// <summary>Starts compiling <paramref name="code"/> on Dawn's worker threads and returns at once: a later
    /// <see cref="Pipeline"/> of the same text waits for it (kernels known ahead compile in parallel, while weights
    /// upload). Nothing when it is compiled or started already. A text that fails here is compiled again, synchronously,
    /// when asked for, so its error is reported where it is used.</summary>
    public void Precompile(string code, string label)
    {
        if (_disposed || _lost || _pipelines.ContainsKey(code) || _compiling.ContainsKey(code)) return;
        var dev = _device;
        _compiling[code] = WithModule(code, label, (module, pd) =>
        {
            var creation = module == 0 ? null
                : Wgpu.Begin(Wgpu.HandleCallback, info => Wgpu.DeviceCreateComputePipelineAsync(dev, (ComputePipelineDescriptor*)pd, info));
            return new Compiling(Wgpu.Begin(Wgpu.ErrorScopeCallback, info => Wgpu.DevicePopErrorScope(dev, info)), creation, label);
        });
    }

    /// <summary>Waits for a pipeline <see cref="Precompile"/> started; null when it failed (the caller compiles it
    /// synchronously and reports the error).</summary>
    GpuPipeline? Finish(Compiling c, string code)
    {
        var scope = Wgpu.End(_instance, c.Scope, "wgpuDevicePopErrorScope");
        if (c.Creation is null) return null;
        var r = Wgpu.End(_instance, c.Creation, $"wgpuDeviceCreateComputePipelineAsync ({c.Label})");
        if (r.Handle == 0) return null;
        var pipe = new WgpuHandle(WgpuKind.ComputePipeline, r.Handle, _deviceHandle);
        nint layout = r.Status == Wgpu.StatusSuccess && scope.Kind == Wgpu.ErrorTypeNoError ? Wgpu.ComputePipelineGetBindGroupLayout(r.Handle, 0) : 0;
        if (layout == 0) { pipe.Dispose(); return null; }
        return Register(pipe, layout, c.Label, code);
    }

    /// <summary>A byte count for messages (B, KiB, MiB, GiB).</summary>
    public static string Bytes(long b) => b switch
    {
        < 1024 => $"{b} B",
        < 1 << 20 => $"{b / 1024.0:0.#} KiB",
        < 1 << 30 => $"{b / 1048576.0:0.#} MiB",
        _ => $"{b / 1073741824.0:0.##} GiB",
    };

    public int PipelineCount => _pipelines.Count;

    /// <summary>Records one dispatch: bindings 0..n-1 are <paramref name="buffers"/> from byte <paramref name="offsets"/>[i]
    /// (each a multiple of minStorageBufferOffsetAlignment) for <paramref name="sizes"/>[i] bytes, binding n the metadata
    /// words. Submitted by <see cref="Flush"/>.</summary>
    public void Dispatch(GpuPipeline p, ReadOnlySpan<nint> buffers, ReadOnlySpan<ulong> offsets, ReadOnlySpan<ulong> sizes, ReadOnlySpan<uint> meta, uint gx, uint gy = 1, uint gz = 1)
    {
        CheckUsable();
        if (_profile is not null && _profilePending.Count == ProfileSlots) Flush();
        int metaBytes = Math.Max(16, (meta.Length * 4 + 15) & ~15);
        if (_metaUsed + metaBytes > MetaBytes) Flush();
        int metaOffset = _metaUsed;
        MemoryMarshal.AsBytes(meta).CopyTo(_metaHost.AsSpan(metaOffset));
        _metaUsed = (metaOffset + metaBytes + _metaAlign - 1) / _metaAlign * _metaAlign;

        int n = buffers.Length;
        var entries = stackalloc BindGroupEntry[n + 1];
        for (int i = 0; i < n; i++) _recorded.Add(buffers[i]);
        for (int i = 0; i < n; i++)
            entries[i] = new BindGroupEntry { Binding = (uint)i, Buffer = buffers[i], Offset = offsets[i], Size = Math.Max(4, (sizes[i] + 3) & ~3UL) };
        entries[n] = new BindGroupEntry { Binding = (uint)n, Buffer = _meta, Offset = (ulong)metaOffset, Size = (ulong)metaBytes };
        var bg = CachedBindGroup(p, entries, n + 1);
        if (_encoder == 0) _encoder = Wgpu.DeviceCreateCommandEncoder(_device, 0);
        if (_profile is not null && !_timing) BeginProfiledPass(p.Label);
        if (_pass == 0) _pass = Wgpu.CommandEncoderBeginComputePass(_encoder, 0);
        Wgpu.ComputePassSetPipeline(_pass, p.Handle);
        Wgpu.ComputePassSetBindGroup(_pass, 0, bg, 0, null);
        Wgpu.ComputePassDispatch(_pass, gx, gy, gz);
        Dispatches++;
        if (_profile is not null && !_timing) EndPass();
        ThrowIfFailed("wgpuComputePassEncoderDispatchWorkgroups", p.Label);
        // Submit every AutoSubmit dispatches so the GPU runs while the host records the rest (a decode step would
        // otherwise reach the GPU only at its readback). Not inside a timed pass.
        if (++_sinceSubmit >= AutoSubmit && !_timing) Flush();
    }

    // Bind groups by (layout, buffers, sizes, meta offset): a decode step repeats the last one's dispatches with the
    // same pooled buffers at the same metadata offsets, so most of its bind groups already exist. Entries naming a
    // destroyed buffer are released with it (a handle value can come back for a new buffer).
    sealed class CachedGroup(nint group, BindGroupEntry[] entries)
    {
        public readonly nint Group = group;
        public readonly BindGroupEntry[] Entries = entries;
    }
    readonly Dictionary<(nint Layout, int Hash), CachedGroup> _groups = new();
    readonly Dictionary<nint, List<(nint, int)>> _groupsByBuffer = new();
    const int MaxCachedGroups = 8192;

    nint CachedBindGroup(GpuPipeline p, BindGroupEntry* entries, int count)
    {
        var h = new HashCode();
        h.Add(p.Layout);
        for (int i = 0; i < count; i++) { h.Add(entries[i].Buffer); h.Add(entries[i].Offset); h.Add(entries[i].Size); }
        var key = (p.Layout, h.ToHashCode());
        if (_groups.TryGetValue(key, out var c) && c.Entries.Length == count)
        {
            bool same = true;
            for (int i = 0; i < count && same; i++)
                same = c.Entries[i].Buffer == entries[i].Buffer && c.Entries[i].Offset == entries[i].Offset && c.Entries[i].Size == entries[i].Size;
            if (same) return c.Group;
        }
        BindGroupsMade++;
        var bd = new BindGroupDescriptor { Layout = p.Layout, EntryCount = (nuint)count, Entries = (nint)entries };
        var bg = Wgpu.DeviceCreateBindGroup(_device, &bd);
        ThrowIfFailed("wgpuDeviceCreateBindGroup", p.Label);
        if (_groups.ContainsKey(key)) { _bindGroups.Add(bg); return bg; }   // a hash collision: use once, release at submit
        if (_groups.Count >= MaxCachedGroups) ClearBindGroups();
        var copy = new BindGroupEntry[count];
        for (int i = 0; i < count; i++) copy[i] = entries[i];
        _groups[key] = new CachedGroup(bg, copy);
        for (int i = 0; i < count; i++)
        {
            if (!_groupsByBuffer.TryGetValue(entries[i].Buffer, out var list)) _groupsByBuffer[entries[i].Buffer] = list = new();
            list.Add(key);
        }
        return bg;
    }

    /// <summary>Releases cached bind groups that bind <paramref name="buffer"/> (before it is destroyed). Recorded work
    /// holds its own references, so releasing is safe before a submit.</summary>
    void ForgetBuffer(nint buffer)
    {
        if (!_groupsByBuffer.Remove(buffer, out var keys)) return;
        foreach (var k in keys)
            if (_groups.Remove(k, out var c)) Wgpu.BindGroupRelease(c.Group);
    }

    void ClearBindGroups()
    {
        foreach (var c in _groups.Values) Wgpu.BindGroupRelease(c.Group);
        _groups.Clear();
        _groupsByBuffer.Clear();
    }

    /// <summary>Records a buffer-to-buffer copy (ends the current compute pass).</summary>
    public void Copy(nint src, ulong srcOffset, nint dst, ulong dstOffset, ulong bytes)
    {
        CheckUsable();
        if (bytes == 0) return;
        if (_encoder == 0) _encoder = Wgpu.DeviceCreateCommandEncoder(_device, 0);
        EndPass();
        _recorded.Add(src); _recorded.Add(dst);
        Wgpu.CommandEncoderCopyBufferToBuffer(_encoder, src, srcOffset, dst, dstOffset, bytes);
        ThrowIfFailed("wgpuCommandEncoderCopyBufferToBuffer");
    }

    void EndPass()
    {
        if (_pass == 0) return;
        Wgpu.ComputePassEnd(_pass);
        Wgpu.ComputePassRelease(_pass);
        _pass = 0;
    }

    // ---- profiling: each dispatch in a pass of its own with timestamps at its start and end ----------------------

    Dictionary<string, (long Calls, double Ms)>? _profile;
    nint _profileQueries, _profileResolve;
    WgpuHandle? _profileQueriesHandle;
    readonly List<string> _profilePending = new();
    const int ProfileSlots = 1024;

    /// <summary>Starts attributing GPU time to kernels (by label): from now on every dispatch runs in a compute pass of
    /// its own between two timestamps, which costs GPU time of its own; read with <see cref="StopProfile"/>. False when
    /// the adapter has no timestamp queries.</summary>
    public bool StartProfile()
    {
        if (!Info.TimestampQuery) return false;
        Flush();
        if (_profileQueries == 0)
        {
            var qd = new QuerySetDescriptor { Type = Wgpu.QueryTypeTimestamp, Count = 2 * ProfileSlots };
            _profileQueries = Wgpu.Created(Wgpu.DeviceCreateQuerySet(_device, &qd), "wgpuDeviceCreateQuerySet");
            _profileQueriesHandle = new WgpuHandle(WgpuKind.QuerySet, _profileQueries, _deviceHandle);
            _profileResolve = CreateRaw(16UL * ProfileSlots, Wgpu.UsageQueryResolve | Wgpu.UsageCopySrc, "tapml-profile");
        }
        _profile = new();
        return true;
    }

    /// <summary>GPU milliseconds and calls per kernel label since <see cref="StartProfile"/>, most time first; stops it.</summary>
    public List<(string Kernel, long Calls, double Ms)> StopProfile()
    {
        Flush();
        var r = (_profile ?? new()).Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Ms)).OrderByDescending(t => t.Ms).ToList();
        _profile = null;
        return r;
    }

    void BeginProfiledPass(string label)
    {
        EndPass();
        uint slot = (uint)_profilePending.Count;
        var tw = stackalloc nint[3]; // {next, querySet, begin|end}
        tw[0] = 0; tw[1] = _profileQueries; ((uint*)&tw[2])[0] = 2 * slot; ((uint*)&tw[2])[1] = 2 * slot + 1;
        var pd = stackalloc nint[4]; // {next, label.data, label.length, timestampWrites}
        pd[0] = 0; pd[1] = 0; pd[2] = 0; pd[3] = (nint)tw;
        _pass = Wgpu.CommandEncoderBeginComputePass(_encoder, (nint)pd);
        _profilePending.Add(label);
    }

    /// <summary>Resolves the pending timestamps into the profile (after their work was submitted).</summary>
    void CollectProfile()
    {
        int n = _profilePending.Count;
        var labels = _profilePending.ToArray();
        _profilePending.Clear();
        var bytes = new byte[16 * n];
        Read(_profileResolve, 0, bytes, shared: false);
        var ts = MemoryMarshal.Cast<byte, ulong>(bytes);
        var profile = _profile!;
        for (int i = 0; i < n; i++)
        {
            double ms = ts[2 * i + 1] >= ts[2 * i] ? (ts[2 * i + 1] - ts[2 * i]) / 1e6 : 0;
            var (c, t) = profile.GetValueOrDefault(labels[i]);
            profile[labels[i]] = (c + 1, t + ms);
        }
    }

    /// <summary>Submits everything recorded so far (metadata first).</summary>
    public void Flush()
    {
        if (_encoder == 0) return;
        CheckUsable();
        EndPass();
        bool profiled = _profilePending.Count > 0 && _profile is not null;
        if (profiled) Wgpu.CommandEncoderResolveQuerySet(_encoder, _profileQueries, 0, (uint)(2 * _profilePending.Count), _profileResolve, 0);
        if (_metaUsed > 0)
        {
            fixed (byte* m = _metaHost) Wgpu.QueueWriteBuffer(_queue, _meta, 0, m, (nuint)_metaUsed);
            _metaUsed = 0;
        }
        var cb = Wgpu.CommandEncoderFinish(_encoder, 0);
        Wgpu.CommandEncoderRelease(_encoder);
        _encoder = 0;
        Wgpu.QueueSubmit(_queue, 1, &cb);
        Wgpu.CommandBufferRelease(cb);
        foreach (var bg in _bindGroups) Wgpu.BindGroupRelease(bg);
        _bindGroups.Clear();
        _recorded.Clear();
        _sinceSubmit = 0;
        Submits++;
        ThrowIfFailed("wgpuQueueSubmit");
        if (profiled) CollectProfile();
    }

    /// <summary>Copies <paramref name="bytes"/> of <paramref name="buffer"/> to the host (waits for all work).</summary>
    public void Read(nint buffer, ulong offset, Span<byte> dest) => Read(buffer, offset, dest, shared: true);

    /// <param name="shared">Use the kept staging buffer (false: a buffer of its own, for a read made while another
    /// read's copy into the kept one is pending: the profile's timestamps, collected inside that read's submit).</param>
    void Read(nint buffer, ulong offset, Span<byte> dest, bool shared)
    {
        CheckUsable();
        ulong bytes = (ulong)dest.Length;
        if (bytes == 0) return;
        if (buffer == 0) throw new TapmlException("webgpu: read of a buffer that was never created (internal error)");
        ulong size = (bytes + 3) & ~3UL;
        bool keep = shared && size <= StagingKeepBytes;
        var staging = keep ? Staging(size) : CreateRaw(size, Wgpu.UsageMapRead | Wgpu.UsageCopyDst, "tapml-readback");
        try { FinishMap(StartMap(buffer, offset, staging, size, size), staging, size, dest); }
        finally
        {
            if (!keep) DestroyBuffer(staging);
        }
    }

    /// <summary>Records the copy of <paramref name="bytes"/> (a multiple of 4) into <paramref name="staging"/>, submits
    /// everything recorded, and requests the map of its first <paramref name="mapSize"/> bytes (not waited for).</summary>
    Wgpu.Pending StartMap(nint buffer, ulong offset, nint staging, ulong bytes, ulong mapSize)
    {
        Copy(buffer, offset, staging, 0, bytes);
        Flush();
        Readbacks++;
        return Wgpu.Begin(Wgpu.StatusCallback, info => Wgpu.BufferMapAsync(staging, Wgpu.MapModeRead, 0, (nuint)mapSize, info));
    }

    /// <summary>Waits for <see cref="StartMap"/>'s map and copies the staging bytes into <paramref name="dest"/>.</summary>
    void FinishMap(Wgpu.Pending map, nint staging, ulong mapSize, Span<byte> dest)
    {
        long w0 = System.Diagnostics.Stopwatch.GetTimestamp();
        var reply = Wgpu.End(_instance, map, "wgpuBufferMapAsync");
        WaitMs += System.Diagnostics.Stopwatch.GetElapsedTime(w0).TotalMilliseconds;
        ThrowIfFailed("wgpuBufferMapAsync (a readback)");
        Wgpu.Check(reply.Status, "wgpuBufferMapAsync (a readback)", "WGPUMapAsyncStatus", reply.Message, Context);
        var src = Wgpu.BufferGetConstMappedRange(staging, 0, (nuint)mapSize);
        new ReadOnlySpan<byte>(src, dest.Length).CopyTo(dest);
        Wgpu.BufferUnmap(staging);
    }

    /// <summary>A readback <see cref="BeginRead"/> started: its copy is submitted and its staging buffer's map
    /// requested; <see cref="EndRead"/> waits for it.</summary>
    public sealed class PendingRead : GpuPendingRead
    {
        internal nint Staging;
        internal ulong Size;
        internal int Bytes;
        internal Wgpu.Pending? Map;
    }

    readonly Dictionary<ulong, Stack<nint>> _asyncStaging = new();
    readonly HashSet<PendingRead> _pendingReads = new();

    /// <summary>Starts copying <paramref name="bytes"/> of <paramref name="buffer"/> to the host and returns at
    /// once: the work recorded so far is submitted, and the host may record more while the GPU runs it (a decode
    /// step records the next step before it waits for this one's token). Each read has a staging buffer of its own
    /// (a mapped buffer cannot be used by a submit), taken from a small pool.</summary>
    public GpuPendingRead BeginRead(nint buffer, ulong offset, int bytes)
    {
        CheckUsable();
        if (buffer == 0) throw new TapmlException("webgpu: read of a buffer that was never created (internal error)");
        if (bytes <= 0 || (ulong)bytes > StagingKeepBytes)
            throw new TapmlException($"webgpu: an asynchronous read of {Bytes(bytes)} (1 B to {Bytes((long)StagingKeepBytes)}) (internal error)");
        ulong size = Bucket(((ulong)bytes + 3) & ~3UL);
        var staging = _asyncStaging.TryGetValue(size, out var free) && free.Count > 0 ? free.Pop()
            : CreateRaw(size, Wgpu.UsageMapRead | Wgpu.UsageCopyDst, "tapml-readback-async");
        var r = new PendingRead { Staging = staging, Size = size, Bytes = bytes };
        try { r.Map = StartMap(buffer, offset, staging, ((ulong)bytes + 3) & ~3UL, size); }
        catch { ReturnStaging(r); throw; }
        _pendingReads.Add(r);
        return r;
    }

    /// <summary>Waits for <paramref name="r"/> and copies its bytes into <paramref name="dest"/> (its length or more).</summary>
    public void EndRead(GpuPendingRead pending, Span<byte> dest)
    {
        var r = (PendingRead)pending;
        if (r.Map is not { } map) throw new TapmlException("webgpu: a readback was waited for twice (internal error)");
        r.Map = null;
        _pendingReads.Remove(r);
        try { FinishMap(map, r.Staging, r.Size, dest[..r.Bytes]); }
        finally { ReturnStaging(r); }
    }

    void ReturnStaging(PendingRead r)
    {
        if (r.Staging == 0) return;
        if (!_asyncStaging.TryGetValue(r.Size, out var free)) _asyncStaging[r.Size] = free = new Stack<nint>();
        // A few per size serve a pipeline of reads; more are dropped.
        if (free.Count < 4) free.Push(r.Staging);
        else DestroyBuffer(r.Staging);
        r.Staging = 0;
    }

    // One map-read buffer for readbacks up to StagingKeepBytes, kept between them: a decode step reads its logits back
    // every step, and creating a buffer is an error-scope round trip. Grown (to the next pool bucket) for a larger read.
    nint _staging;
    ulong _stagingSize;
    const ulong StagingKeepBytes = 64UL << 20;

    nint Staging(ulong size)
    {
        if (_staging != 0 && _stagingSize >= size) return _staging;
        DestroyStaging();
        ulong want = Math.Min(Bucket(size), StagingKeepBytes);
        _staging = CreateRaw(want, Wgpu.UsageMapRead | Wgpu.UsageCopyDst, "tapml-readback");
        _stagingSize = want;
        return _staging;
    }

    void DestroyStaging()
    {
        if (_staging == 0) return;
        DestroyBuffer(_staging);
        _staging = 0;
        _stagingSize = 0;
    }

    /// <summary>Waits until the queue is idle (by reading back 4 bytes of the metadata buffer).</summary>
    public void Synchronize()
    {
        Span<byte> b = stackalloc byte[4];
        Read(_meta, 0, b);
    }

    /// <summary>GPU time of <paramref name="record"/>'s dispatches, from timestamp queries around one compute
    /// pass (ms); null when the adapter has no timestamp-query feature.</summary>
    public double? TimeGpu(Action record)
    {
        if (!Info.TimestampQuery) return null;
        Flush();
        var qd = new QuerySetDescriptor { Type = Wgpu.QueryTypeTimestamp, Count = 2 };
        var qs = Wgpu.Created(Wgpu.DeviceCreateQuerySet(_device, &qd), "wgpuDeviceCreateQuerySet");
        using var qsHandle = new WgpuHandle(WgpuKind.QuerySet, qs, _deviceHandle);
        var resolve = CreateRaw(256, Wgpu.UsageQueryResolve | Wgpu.UsageCopySrc, "tapml-timestamps");
        try
        {
            _encoder = Wgpu.DeviceCreateCommandEncoder(_device, 0);
            // NOTE: timestampWrites on the pass descriptor time the whole pass on the GPU.
            var tw = stackalloc nint[3]; // {next, querySet, begin|end}
            tw[0] = 0; tw[1] = qs; ((uint*)&tw[2])[0] = 0; ((uint*)&tw[2])[1] = 1;
            var pd = stackalloc nint[4]; // {next, label.data, label.length, timestampWrites}
            pd[0] = 0; pd[1] = 0; pd[2] = 0; pd[3] = (nint)tw;
            _pass = Wgpu.CommandEncoderBeginComputePass(_encoder, (nint)pd);
            _timing = true;
            try { record(); }
            finally { _timing = false; }
            EndPass();
            Wgpu.CommandEncoderResolveQuerySet(_encoder, qs, 0, 2, resolve, 0);
            Flush();
            Span<byte> t = stackalloc byte[16];
            Read(resolve, 0, t);
            ulong t0 = MemoryMarshal.Read<ulong>(t), t1 = MemoryMarshal.Read<ulong>(t[8..]);
            return (t1 - t0) / 1e6;
        }
        finally { DestroyBuffer(resolve); }
    }

    /// <summary>Waits for pending work and reads, then releases everything this device holds; the device, adapter and
    /// instance go last (every object made from them holds a reference on their handles). A second call does
    /// nothing; buffers freed afterwards are ignored.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposing = true;
        try { if (!_lost) Flush(); } catch (TapmlException) { }
        // Reads begun and never waited for: their callbacks hold handles into managed memory; wait for them first.
        foreach (var r in _pendingReads.ToArray())
        {
            try { EndRead(r, new byte[r.Bytes]); } catch (TapmlException) { }
        }
        _disposed = true;
        // Work a failed flush left recorded, and bind groups used once (released at submit otherwise).
        if (_pass != 0) { Wgpu.ComputePassRelease(_pass); _pass = 0; }
        if (_encoder != 0) { Wgpu.CommandEncoderRelease(_encoder); _encoder = 0; }
        foreach (var bg in _bindGroups) Wgpu.BindGroupRelease(bg);
        _bindGroups.Clear();
        ClearBindGroups();
        // Compilations started and never asked for: wait for their callbacks (which hold handles into managed memory).
        foreach (var (code, c) in _compiling.ToArray())
        {
            try { Finish(c, code); } catch (TapmlException) { }
        }
        _compiling.Clear();
        foreach (var h in _pipelineHandles) h.Dispose();
        _pipelineHandles.Clear();
        _pipelines.Clear();
        foreach (var h in _buffers.Values) h.Dispose();
        _buffers.Clear();
        foreach (var s in _pool.Values.Concat(_writePool.Values)) s.Clear();
        _writeBuffers.Clear();
        PooledBytes = 0;
        _asyncStaging.Clear();
        _staging = _meta = _profileResolve = 0;
        _profileQueriesHandle?.Dispose();
        _profileQueries = 0;
        _queueHandle.Dispose();
        _deviceHandle.Dispose();
        Blobs?.Dispose();
        _adapterHandle.Dispose();
        _instanceHandle.Dispose();
        // NOTE: the event sink's GCHandle is never freed: Dawn may still deliver the device-lost callback of a
        // destroyed device later (from another instance's event processing); a freed handle would crash there.
    }

    /// <summary>Destroys a buffer now (weights evicted, device values of a disposed platform).</summary>
    public void Destroy(nint buffer)
    {
        if (_disposed) return;
        // Work recorded but not yet submitted may bind it (a weight or feed whose host tensor was just collected):
        // submit that first, a destroyed buffer cannot be used in a submit.
        if (_recorded.Contains(buffer)) Flush();
        ForgetBuffer(buffer);
        DestroyBuffer(buffer);
    }
}
