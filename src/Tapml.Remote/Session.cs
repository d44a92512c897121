using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Remote;

/// <summary>One client's state on the server: its own platform instance, tensors by handle, prepared kernels,
/// and a bounded content-addressed cache of uploaded tensors (a weight crosses the wire once per session).
/// Every byte it holds counts against <see cref="MemoryLimit"/>; the cache gives way first. Calls are serialized
/// by the service (one lock per session).</summary>
public sealed class Session : IDisposable
{
    /// <summary>A value on the platform; shared by every handle (and the cache entry) that names it.</summary>
    sealed class Slot(Value? value, long bytes, UInt128? hash)
    {
        public Value? Value = value;      // null while an upload is pending
        public readonly long Bytes = bytes;
        public readonly UInt128? Hash = hash;
        public DType DType; public long[] Shape = [];
        public bool KeepOnHost;
        /// <summary>The tensor an upload will fill, made (and its pages mapped) when the handle was reserved.</summary>
        public Tensor? Staging;
        public int Refs;
        public bool Cached;
        public LinkedListNode<Slot>? Lru;
    }

    sealed record Kernel(IKernel K, NodeContext Ctx);

    readonly Dictionary<ulong, Slot> _handles = new();
    /// <summary>Content by hash, type and shape (equal bytes under another shape are another entry: a scalar 1 and a
    /// [1] tensor holding 1 hash alike).</summary>
    readonly Dictionary<(UInt128 Hash, DType DType, string Shape), Slot> _cache = new();

    static (UInt128, DType, string) CacheKey(UInt128 hash, DType dtype, long[] shape) => (hash, dtype, string.Join(',', shape));
    readonly LinkedList<Slot> _lru = new();
    readonly Dictionary<ulong, Kernel> _kernels = new();
    readonly Dictionary<UInt128, Model> _models = new();
    // One executor per model and kind of run, kept with the model: its plans and prepared kernels (packed weights on
    // cpu) serve every later run of that model, as one executor serves a local process's runs.
    readonly Dictionary<(UInt128, bool), Executor> _executors = new();

    /// <summary>Parsed models (and their executors) a session keeps; past it they are dropped and parsed again.</summary>
    public const int MaxModels = 64;
    ulong _next = 1;

    public string Id { get; }
    public IPlatform Platform { get; }
    public long MemoryLimit { get; }
    /// <summary>Bytes held (handles and cache), as the host tensors would hold them.</summary>
    public long MemoryBytes { get; private set; }
    public DateTime LastUse { get; set; } = DateTime.UtcNow;
    public object Gate { get; } = new();

    /// <summary>The sessions this one was opened with, or null.</summary>
    public Family? Family { get; init; }

    public Session(string id, IPlatform platform, long memoryLimit) { Id = id; Platform = platform; MemoryLimit = memoryLimit; }

    /// <summary>A host tensor with this hash, type and shape that a session of this one's family received, or null.</summary>
    public Tensor? FromFamily(UInt128 hash, DType dtype, long[] shape) => Family?.Find(CacheKey(hash, dtype, shape));

    /// <summary>Reserves room for <paramref name="bytes"/>, evicting unused cache entries first.</summary>
    void Reserve(long bytes)
    {
        while (MemoryBytes + bytes > MemoryLimit && _lru.First is { } oldest) Uncache(oldest.Value);
        if (MemoryBytes + bytes > MemoryLimit)
            throw new RemoteLimitException($"session memory limit: {MemoryBytes} bytes held + {bytes} requested is over the {MemoryLimit}-byte limit (--max-memory-mb on the server)");
        MemoryBytes += bytes;
    }

    void Uncache(Slot s)
    {
        _lru.Remove(s.Lru!);
        s.Lru = null;
        s.Cached = false;
        _cache.Remove(CacheKey(s.Hash!.Value, s.DType, s.Shape));
        if (s.Refs == 0) Release(s);
    }

    void Release(Slot s)
    {
        MemoryBytes -= s.Bytes;
        if (s.Value is IDeviceValue) Platform.Free(s.Value);
        s.Value = null;
        s.Staging = null;
    }

    ulong NewHandle(Slot s) { s.Refs++; _handles[_next] = s; return _next++; }

    /// <summary>A handle for cached content with this hash and type, or null.</summary>
    public ulong? FromCache(UInt128 hash, DType dtype, long[] shape)
    {
        if (!_cache.TryGetValue(CacheKey(hash, dtype, shape), out var s)) return null;
        _lru.Remove(s.Lru!);
        _lru.AddLast(s.Lru!);
        return NewHandle(s);
    }

    /// <summary>A handle whose bytes an Upload will bring.</summary>
    public ulong Reserve(DType dtype, long[] shape, long bytes, UInt128 hash, bool keepOnHost, bool staging = true)
    {
        Reserve(bytes);
        var s = new Slot(null, bytes, hash) { DType = dtype, Shape = shape, KeepOnHost = keepOnHost };
        if (staging && bytes >= Prefault.MinBytes)
        {
            // NOTE: the destination's pages are mapped while the client is still sending (Prefault).
            s.Staging = Tensor.Uninitialized(dtype, shape);
            _ = Prefault.Start(s.Staging);
        }
        return NewHandle(s);
    }

    /// <summary>The tensor an upload into <paramref name="handle"/> writes into (made at <see cref="Reserve(DType, long[], long, UInt128, bool)"/> for large ones).</summary>
    public Tensor UploadTarget(ulong handle)
    {
        var s = _handles[handle];
        var t = s.Staging ?? Tensor.Uninitialized(s.DType, s.Shape);
        s.Staging = null;
        return t;
    }

    /// <summary>What an Upload into <paramref name="handle"/> must bring, or an error when none is pending there.</summary>
    public (DType DType, long[] Shape, long Bytes, UInt128 Hash, bool KeepOnHost) Pending(ulong handle)
    {
        if (!_handles.TryGetValue(handle, out var s)) throw new RemoteStateException($"upload into unknown handle {handle}");
        if (s.Value is not null || s.Hash is null) throw new RemoteStateException($"handle {handle} is not waiting for an upload");
        return (s.DType, s.Shape, s.Bytes, s.Hash.Value, s.KeepOnHost);
    }

    /// <summary>Completes an upload: the host tensor goes to the platform and into the cache.</summary>
    public void Fill(ulong handle, Tensor t)
    {
        var s = _handles[handle];
        s.Value = s.KeepOnHost || Platform.IsResident(t) ? t : Platform.Upload(t);
        var key = CacheKey(s.Hash!.Value, s.DType, s.Shape);
        Family?.Remember(key, t);
        if (_cache.ContainsKey(key)) return;
        _cache[key] = s;
        s.Cached = true;
        s.Lru = _lru.AddLast(s);
    }

    /// <summary>Registers a value the platform made (a kernel's output); null for an omitted one.</summary>
    public ulong Add(Value v, DType dtype, long[] shape, long bytes)
    {
        try { Reserve(bytes); }
        catch { if (v is IDeviceValue) Platform.Free(v); throw; }
        return NewHandle(new Slot(v, bytes, null) { DType = dtype, Shape = shape });
    }

    public Value Get(ulong handle) =>
        _handles.TryGetValue(handle, out var s) ? s.Value ?? throw new RemoteStateException($"handle {handle} is still waiting for its upload")
            : throw new RemoteStateException($"unknown tensor handle {handle} (freed, or never made in this session)");

    public void Free(ulong handle)
    {
        if (!_handles.Remove(handle, out var s)) return;
        if (--s.Refs == 0 && !s.Cached) Release(s);
    }

    public ulong AddKernel(IKernel k, NodeContext ctx) { _kernels[_next] = new Kernel(k, ctx); return _next++; }

    public (IKernel Kernel, NodeContext Ctx) GetKernel(ulong id) =>
        _kernels.TryGetValue(id, out var k) ? (k.K, k.Ctx) : throw new RemoteStateException($"unknown kernel handle {id} (Prepare first)");

    public Model ModelFor(UInt128 hash, Func<Model> parse)
    {
        if (_models.TryGetValue(hash, out var m)) return m;
        if (_models.Count >= MaxModels) { _models.Clear(); _executors.Clear(); }
        return _models[hash] = parse();
    }

    /// <summary>The executor of the model with <paramref name="hash"/> (<see cref="ModelFor"/> first) for whole-graph
    /// (<paramref name="partial"/> false) or node-by-node runs.</summary>
    public Executor ExecutorFor(UInt128 hash, bool partial)
    {
        if (!_executors.TryGetValue((hash, partial), out var e))
            _executors[(hash, partial)] = e = new Executor(Platform) { PreferWholeGraph = !partial };
        return e;
    }

    /// <summary>The content hash of an uploaded tensor (models are cached by it).</summary>
    public UInt128? HashOf(ulong handle) => _handles.TryGetValue(handle, out var s) ? s.Hash : null;

    public void Dispose()
    {
        foreach (var s in _handles.Values.Concat(_cache.Values).Distinct())
            if (s.Value is IDeviceValue) Platform.Free(s.Value);
        _handles.Clear();
        _cache.Clear();
        Platform.Dispose();
    }
}

/// <summary>Sessions one client opened together (<see cref="Wire.FamilyHeader"/>): a tensor one of them received can
/// fill another's hash-only upload while some session still holds it. Weak references only: a family keeps nothing
/// alive and holds no memory of its own (a tensor uploaded to a GPU is soon gone from it; one a cpu session keeps is
/// shared, not copied).</summary>
public sealed class Family(string id)
{
    public string Id { get; } = id;
    readonly Dictionary<(UInt128, DType, string), WeakReference<Tensor>> _seen = new();
    /// <summary>Entries past which the family forgets what it saw (then clients send bytes again).</summary>
    public const int MaxEntries = 16384;
    /// <summary>Live sessions of the family (guarded by <see cref="Sessions"/>).</summary>
    public int Members;

    public void Remember((UInt128, DType, string) key, Tensor t)
    {
        lock (_seen)
        {
            if (_seen.Count >= MaxEntries) _seen.Clear();
            _seen[key] = new WeakReference<Tensor>(t);
        }
    }

    public Tensor? Find((UInt128, DType, string) key)
    {
        lock (_seen) return _seen.TryGetValue(key, out var w) && w.TryGetTarget(out var t) ? t : null;
    }
}

/// <summary>A request that would go past a server limit (memory, message size): gRPC ResourceExhausted.</summary>
public sealed class RemoteLimitException(string message) : TapmlException(message);

/// <summary>A request that names what the session does not hold, or comes out of order: gRPC FailedPrecondition.</summary>
public sealed class RemoteStateException(string message) : TapmlException(message);
