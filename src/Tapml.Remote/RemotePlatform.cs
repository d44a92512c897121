using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Remote.Proto;

namespace Tapml.Remote;

/// <summary>A tensor held by a remote server's session; <see cref="Host"/> is its bytes here when they are known
/// (an upload, a small output that came inline, a finished download).</summary>
public sealed class RemoteValue : Value, IDeviceValue
{
    readonly RemotePlatform _owner;
    internal RemoteValue(RemotePlatform owner, ulong handle, DType dtype, long[] shape) { _owner = owner; Handle = handle; DType = dtype; Shape = shape; }
    /// <summary>The server's handle; 0 while a small upload waits to travel with the next call that uses it.</summary>
    public ulong Handle { get; internal set; }
    public IPlatform Owner => _owner;
    public DType DType { get; }
    public long[] Shape { get; }
    public long ByteSize => ShapeUtil.Size(Shape) * DTypes.Size(DType);
    internal Tensor? Host;
    /// <summary>An upload kept for its host tensor's lifetime: <see cref="RemotePlatform.Free"/> leaves it alone.</summary>
    internal bool Cached;
    internal bool Freed;
    /// <summary>A model's bytes for RunGraph, kept as bytes on the server (not uploaded to its platform).</summary>
    internal bool KeepOnHost;
    public override string Describe() => $"{DTypes.Name(DType)}{ShapeUtil.Format(Shape)} on {_owner.Name}";

    // NOTE: a value nobody freed (an upload whose host tensor died, an output kept by a caller) is freed on the server
    // with the next call instead of living there until the session ends.
    ~RemoteValue() { if (!Freed && Handle != 0) _owner.Dead.Enqueue(Handle); }
}

/// <summary><c>remote:http(s)://HOST:PORT[?timeout=SECONDS&amp;insecure=1&amp;bulk=0]</c>: a platform served by <c>tapml serve</c>
/// on another machine (or process). Every call has a deadline; a server that dies or a connection that drops is a
/// <see cref="PlatformLostException"/> within seconds. Tensors cross once: uploads are cached per host tensor here
/// and by content hash on the server; their bytes take the server's bulk HTTP/1.1 port when it has one and it can be
/// reached (bulk=0: the gRPC streams always). The token comes from <c>TAPML_TOKEN</c>.</summary>
public sealed class RemotePlatform : IBatchRunPlatform, IGraphPlatform, ISegmentPlatform, IFreshInstance, IPlatformDetails, IOpList
{
    readonly GrpcChannel _channel;
    /// <summary>Instances on the channel (<see cref="NewInstance"/> shares it); the last one disposed returns it to
    /// <see cref="IdleChannels"/>.</summary>
    readonly StrongBox<int> _channelUsers;
    /// <summary>Address and TLS choice: which idle channel a new instance may take.</summary>
    readonly string _channelKey;

    /// <summary>Channels whose last instance was disposed, kept (at most <see cref="MaxIdleChannels"/>, oldest closed
    /// first) so that the next platform for the same server reuses the connection instead of opening one: a migration
    /// makes a platform per strategy, a `bench remote` run one per migration.</summary>
    static readonly List<(string Key, GrpcChannel Channel)> IdleChannels = new();
    const int MaxIdleChannels = 4;

    static GrpcChannel? TakeIdle(string key)
    {
        lock (IdleChannels)
        {
            int i = IdleChannels.FindLastIndex(e => e.Key == key);
            if (i < 0) return null;
            var c = IdleChannels[i].Channel;
            IdleChannels.RemoveAt(i);
            return c;
        }
    }

    static void PutIdle(string key, GrpcChannel channel)
    {
        lock (IdleChannels)
        {
            IdleChannels.Add((key, channel));
            while (IdleChannels.Count > MaxIdleChannels) { IdleChannels[0].Channel.Dispose(); IdleChannels.RemoveAt(0); }
        }
    }
    readonly Device.DeviceClient _client;
    /// <summary>The server's bulk endpoint (shared like the channel); null: none, or turned off with ?bulk=0.</summary>
    readonly BulkClient? _bulk;
    readonly Metadata _headers;
    /// <summary>This instance's family (it and its fresh instances) and the tensors, by hash, type and shape, that a
    /// session of it sent with their bytes: a later inline one names them by hash alone (<see cref="Wire.FamilyHeader"/>).</summary>
    readonly string _family;
    readonly ConcurrentDictionary<(UInt128, DType, string), byte> _familySent;
    readonly TimeSpan _timeout;
    readonly DescribeReply _far;
    readonly ConditionalWeakTable<Tensor, RemoteValue> _uploads = new();
    readonly ConditionalWeakTable<Model, RemoteValue> _models = new();
    readonly Dictionary<(Node, string), RemoteKernel> _prepared = new();
    internal readonly ConcurrentQueue<ulong> Dead = new();

    public string Name { get; }
    public string Url { get; }
    /// <summary>The far platform's description (the same whichever port serves it; <see cref="Details"/> names the server).</summary>
    public string Description => $"{_far.Description} (remote, platform {_far.Platform})";
    public PlatformLimits Limits { get; }
    public bool KernelsServeAnyShape => _far.KernelsServeAnyShape;
    /// <summary>What the server said about itself (protocol, limits, adapter).</summary>
    public DescribeReply Far => _far;

    public static void Register() => PlatformRegistry.Register(new("remote",
        "remote:http(s)://HOST:PORT: a platform served by `tapml serve` elsewhere (token from TAPML_TOKEN; ?timeout=SECONDS per call)",
        spec => new RemotePlatform(spec), "remote:http://127.0.0.1:7411"));

    public RemotePlatform(string spec)
    {
        Name = spec;
        string rest = spec.StartsWith("remote:", StringComparison.Ordinal) ? spec["remote:".Length..] : "";
        int q = rest.IndexOf('?');
        Url = (q < 0 ? rest : rest[..q]).TrimEnd('/');
        if (!Uri.TryCreate(Url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new TapmlException($"platform '{spec}': give the server's address, remote:http://HOST:PORT (what `tapml serve` printed)");
        double timeout = 60;
        bool insecure = false, bulk = true;
        foreach (var (k, v) in PlatformSpec.Query(q < 0 ? "" : rest[q..]))
        {
            if (k == "timeout" && double.TryParse(v, System.Globalization.CultureInfo.InvariantCulture, out timeout) && timeout > 0) continue;
            if (k == "insecure" && v is "1" or "true") { insecure = true; continue; }
            if (k == "bulk" && v is "0" or "1") { bulk = v == "1"; continue; }
            throw new TapmlException($"platform '{spec}': unknown or bad option '{k}={v}' (remote takes timeout=SECONDS, insecure=1, bulk=0)");
        }
        _timeout = TimeSpan.FromSeconds(timeout);
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        _channelKey = $"{Url}|{insecure}";
        var idle = TakeIdle(_channelKey);
        _channel = idle ?? NewChannel(Url, insecure);
        _client = new Device.DeviceClient(_channel);
        _channelUsers = new StrongBox<int>(1);
        _family = Guid.NewGuid().ToString("N");
        _familySent = new();
        _headers = NewSession(_family);
        DescribeReply? far = null;
        try { far = Call(new DescribeRequest(), o => _client.Describe(new DescribeRequest(), o), "describe"); }
        catch (PlatformLostException e)
        {
            if (idle is null) throw Unreachable(e);
            // NOTE: the kept connection's server went away (restarted on the same address, say): connect afresh.
            idle.Dispose();
            _channel = NewChannel(Url, insecure);
            _client = new Device.DeviceClient(_channel);
        }
        try { _far = far ?? Call(new DescribeRequest(), o => _client.Describe(new DescribeRequest(), o), "describe"); }
        catch (PlatformLostException e) { throw Unreachable(e); }
        if (_far.Protocol != Wire.Protocol) throw new TapmlException($"{Name}: the server speaks protocol {_far.Protocol}, this client {Wire.Protocol} (use the same tapml on both sides)");
        Limits = new PlatformLimits(_far.MaxBufferBytes, _far.MaxBindingBytes, _far.MaxWorkgroupSize, _far.SessionMemoryBytes);
        if (bulk && _far.BulkPort is > 0 and <= 65535) _bulk = new BulkClient(Name, uri, _far.BulkPort, _timeout, insecure);
        if (RemoteStats.On) RemoteStats.Call("(connect)", 0, 0, t0);
    }

    TapmlException Unreachable(PlatformLostException e) =>
        new($"{Name}: cannot reach the server ({((RpcException)e.InnerException!).Status.Detail}); is `tapml serve` running there?");

    static GrpcChannel NewChannel(string url, bool insecure)
    {
        var handler = new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(5),
            // NOTE: pings find a connection that dropped silently (a device unplugged) within 5 s, not at the deadline.
            KeepAlivePingDelay = TimeSpan.FromSeconds(2),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(3),
            KeepAlivePingPolicy = HttpKeepAlivePingPolicy.WithActiveRequests,
            EnableMultipleHttp2Connections = true,
            // NOTE: downloads are megabytes in one stream: start with a window that does not stall them.
            InitialHttp2StreamWindowSize = 16 << 20,
        };
        if (insecure) handler.SslOptions.RemoteCertificateValidationCallback = (_, _, _, _) => true;
        return GrpcChannel.ForAddress(url, new GrpcChannelOptions { HttpHandler = handler, MaxReceiveMessageSize = null, MaxSendMessageSize = null });
    }

    /// <summary>A fresh instance: a new session on the server (its own platform instance, no tensors or kernels of
    /// this one) over the same connection, without connecting and describing again.</summary>
    public IPlatform NewInstance() => new RemotePlatform(this);

    RemotePlatform(RemotePlatform like)
    {
        Name = like.Name; Url = like.Url; _timeout = like._timeout; _far = like._far; Limits = like.Limits; _channelKey = like._channelKey;
        _channel = like._channel; _client = like._client; _channelUsers = like._channelUsers; _bulk = like._bulk;
        lock (_channelUsers) _channelUsers.Value++;
        _family = like._family; _familySent = like._familySent;
        _headers = NewSession(_family);
    }

    string Session => _headers.GetValue(Wire.SessionHeader)!;
    string? Authorization => _headers.GetValue("authorization");

    static Metadata NewSession(string family)
    {
        var headers = new Metadata { { Wire.SessionHeader, Guid.NewGuid().ToString("N") }, { Wire.FamilyHeader, family } };
        if (Environment.GetEnvironmentVariable("TAPML_TOKEN") is { Length: > 0 } token) headers.Add("authorization", "Bearer " + token);
        return headers;
    }

    /// <summary>The far platform's operators, as its server listed them (empty when it lists none).</summary>
    public IEnumerable<(string Domain, string OpType, int SinceOpset)> Ops => _far.Ops.Select(o => (o.Domain, o.OpType, o.SinceOpset));

    public IEnumerable<string> Details()
    {
        if (_far.Ops.Count > 0)
            yield return $"ops: {_far.Ops.Count} ({string.Join(", ", _far.Ops.Select(o => o.Domain.Length == 0 ? o.OpType : $"{o.Domain}.{o.OpType}"))})";
        yield return $"server: {Url}, platform {_far.Platform}, protocol {_far.Protocol}; session memory {_far.SessionMemoryBytes} bytes, max message {_far.MaxMessageBytes} bytes, chunk {_far.ChunkBytes} bytes, "
            + (_far.BulkPort > 0 ? $"bulk port {_far.BulkPort}{(_bulk is null ? " (not used: bulk=0)" : _bulk.Off ? " (unreachable: gRPC chunks)" : "")}" : "no bulk port");
        foreach (var d in _far.Details) yield return d;
    }

    /// <summary>Calls made to the server by this instance (benchmarks and tests: what a run costs in round trips).</summary>
    public long Calls { get; private set; }

    CallOptions Options() { Calls++; return new(_headers, DateTime.UtcNow + _timeout); }

    /// <summary>Runs one call; gRPC statuses become tapml errors naming the server.</summary>
    T Call<T>(IMessage request, Func<CallOptions, T> call, string what) where T : IMessage
    {
        long t0 = RemoteStats.On ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
        try
        {
            var reply = call(Options());
            if (RemoteStats.On) RemoteStats.Call(request is Empty ? "Synchronize" : request.Descriptor.Name.Replace("Request", ""), request.CalculateSize(), reply.CalculateSize(), t0);
            return reply;
        }
        catch (RpcException e) { throw Error(e, what); }
    }

    internal TapmlException Error(RpcException e, string what)
    {
        string detail = e.Status.Detail.ReplaceLineEndings(" ");
        return e.StatusCode switch
        {
            StatusCode.Unauthenticated => new TapmlException($"{Name}: the server refused the token ({detail}); set TAPML_TOKEN to the server's --token"),
            StatusCode.Unimplemented when detail.StartsWith("unsupported: ", StringComparison.Ordinal) => new UnsupportedException(detail["unsupported: ".Length..]),
            StatusCode.Unavailable or StatusCode.Cancelled or StatusCode.Aborted => new PlatformLostException($"{Name}: connection lost during {what} ({detail}); is `tapml serve` still running there?", e),
            StatusCode.DeadlineExceeded => new PlatformLostException($"{Name}: no answer to {what} within {_timeout.TotalSeconds:G} s (raise ?timeout=SECONDS for slow nodes)", e),
            StatusCode.ResourceExhausted => new TapmlException($"{Name}: server limit reached during {what}: {detail}"),
            StatusCode.Internal when e.Status.DebugException is HttpRequestException or IOException
                => new PlatformLostException($"{Name}: connection lost during {what} ({detail})", e),
            _ => new TapmlException($"{Name}: {what} failed on the server: {detail}"),
        };
    }

    /// <summary>The handles freed here since the last call (sent along with the next one).</summary>
    ulong[] DrainDead()
    {
        if (Dead.IsEmpty) return [];
        var list = new List<ulong>();
        while (Dead.TryDequeue(out var h)) list.Add(h);
        return list.ToArray();
    }

    /// <summary>The node's kernel for these input types: known to the server, known not to run there, or (made here
    /// and not sent yet) prepared by the first run that uses it.</summary>
    RemoteKernel Kernel(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        string sig = string.Join(";", inputTypes.Select(t => t?.ToString() ?? "-"));
        if (_prepared.TryGetValue((node, sig), out var k)) return k;
        k = new RemoteKernel(node);
        if (Local(node, inputTypes) is { } why) k.Unsupported = why;
        else
        {
            k.Model = Wire.NodeModel(node, ctx, inputTypes);
            if (k.Model.Length > _far.MaxMessageBytes / 2)
                k.Unsupported = $"its attributes take {k.Model.Length} bytes, over half the server's {_far.MaxMessageBytes}-byte message limit";
        }
        return _prepared[(node, sig)] = k;
    }

    /// <summary>Asks the server now whether a kernel not sent yet can run there.</summary>
    void Resolve(RemoteKernel k)
    {
        if (k.Id != 0 || k.Unsupported is not null) return;
        var pr = new PrepareRequest { NodeModel = k.Model };
        var r = Call(pr, o => _client.Prepare(pr, o), $"prepare of node '{k.Node.Name}'");
        if (r.Unsupported.Length > 0) k.Unsupported = r.Unsupported; else k.Id = r.Kernel;
    }

    /// <summary>Why a node cannot go over the wire at all, or null.</summary>
    static string? Local(Node node, IReadOnlyList<TypeRef?> inputTypes)
    {
        foreach (var t in inputTypes)
            if (t is { Kind: not TypeKind.Tensor } || t is { ElemType: DType.String })
                return $"{t} values do not travel to a remote platform (fixed-width tensors only)";
        foreach (var g in node.Subgraphs)
            if (g.OuterReferences().Count > 0)
                return $"{node.OpType} with a subgraph that reads outer-scope values cannot run as a single remote node";
        return null;
    }

    public Support Supports(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        var k = Kernel(node, ctx, inputTypes);
        Resolve(k);
        return k.Unsupported is { } why ? Support.No(why) : Support.Yes;
    }

    public IKernel Prepare(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        var k = Kernel(node, ctx, inputTypes);
        return k.Unsupported is { } why ? throw new UnsupportedException(why) : k;
    }

    sealed class RemoteKernel(Node node) : IKernel
    {
        public Node Node => node;
        public ulong Id;
        public ByteString Model = ByteString.Empty;
        public string? Unsupported;
    }

    public Value?[] Run(IKernel kernel, NodeContext ctx, Value?[] inputs)
    {
        var k = (RemoteKernel)kernel;
        if (k.Unsupported is { } why) throw new UnsupportedException(why);
        // NOTE: a node run on its own is nearly always followed by a download (replay, a lockstep re-run, a value moving
        // back to the source): its small outputs come with the reply instead of costing another round trip.
        var req = new RunRequest { Kernel = k.Id, HostOutputs = true };
        if (k.Id == 0) req.NodeModel = k.Model;
        var sent = new List<RemoteValue>();
        long budget = _far.MaxMessageBytes / 2 - k.Model.Length;
        foreach (var v in inputs)
        {
            if (v is null) { req.Inputs.Add(0); continue; }
            var r = Mine(v);
            if (r.Handle == 0 && sent.IndexOf(r) is int at and >= 0) { req.Inputs.Add(Wire.SentWith + (ulong)at); continue; }
            if (r.Handle == 0 && (budget -= r.ByteSize) < 0) Send(r);
            if (r.Handle != 0) { req.Inputs.Add(r.Handle); continue; }
            req.Inputs.Add(Wire.SentWith + (ulong)sent.Count);
            req.Uploads.Add(Pending(r));
            sent.Add(r);
        }
        req.Free.Add(DrainDead());
        var reply = Call(req, o => _client.Run(req, o), $"node '{kernel.Node.Name}' ({kernel.Node.OpType})");
        for (int i = 0; i < sent.Count && i < reply.Uploaded.Count; i++) sent[i].Handle = reply.Uploaded[i];
        if (reply.Unsupported.Length > 0) { k.Unsupported = reply.Unsupported; throw new UnsupportedException(reply.Unsupported); }
        if (k.Id == 0) { k.Id = reply.Kernel; k.Model = ByteString.Empty; }
        return reply.Outputs.Select(Value).ToArray();
    }

    /// <summary>A small upload not sent yet, as it travels with a call.</summary>
    static AllocateRequest Pending(RemoteValue r)
    {
        var bytes = Wire.Bytes((Tensor)r.Host!);
        return new AllocateRequest { Type = Wire.Info(r.DType, r.Shape), Hash = UnsafeByteOperations.UnsafeWrap(Wire.Hash(bytes.Span)), Data = UnsafeByteOperations.UnsafeWrap(bytes), KeepOnHost = r.KeepOnHost };
    }

    static (UInt128, DType, string) FamilyKey(AllocateRequest a)
    {
        var (dtype, shape, _) = Wire.Check(a.Type);
        return (Wire.Key(a.Hash.Span), dtype, string.Join(',', shape));
    }

    /// <summary>Sends a small upload on its own (it would not fit in the call that needs it).</summary>
    void Send(RemoteValue r)
    {
        var pending = Pending(r);
        var a = Call(pending, o => _client.Allocate(pending, o), $"upload of {r.Describe()}");
        r.Handle = a.Handle;
    }

    Value? Value(Output o)
    {
        if (o.Handle == 0) return null;
        var (dtype, shape, _) = Wire.Check(o.Type);
        var v = new RemoteValue(this, o.Handle, dtype, shape);
        if (o.HasData) v.Host = Tensor.FromBytes(dtype, shape, o.Data.Span);
        return v;
    }

    RemoteValue Mine(Value v) => v is RemoteValue r && ReferenceEquals(r.Owner, this) && !r.Freed ? r
        : throw new TapmlException($"{Name}: {v.Describe()} is not a live tensor of this remote session");

    public bool IsResident(Value v) => v is RemoteValue r && ReferenceEquals(r.Owner, this);

    public Value Upload(Value host) => Upload(host, keepOnHost: false);

    /// <summary>Uploads up to this size wait for the first call that uses them and travel inside it (its message budget,
    /// half the server's limit, sends any that do not fit with an Allocate of their own first): 1 MiB, or a quarter of
    /// the server's message limit where that is smaller. Larger ones go at once, by Allocate and the bulk port.</summary>
    long DeferredBytes => Math.Max(_far.InlineBytes, Math.Min(1L << 20, _far.MaxMessageBytes / 4));

    RemoteValue Upload(Value host, bool keepOnHost)
    {
        if (host is not Tensor t || t.DType == DType.String) throw new UnsupportedException($"{host.Describe()} values do not travel to a remote platform (fixed-width tensors only)");
        if (_uploads.TryGetValue(t, out var known) && !known.Freed) return known;
        long size = t.Length * DTypes.Size(t.DType);
        if (size <= (keepOnHost ? _far.InlineBytes : DeferredBytes))
        {
            // NOTE: a small tensor travels with the first call that uses it instead of costing a round trip of its own
            // (a model only up to the server's inline size: RunGraph takes no larger one).
            var pending = new RemoteValue(this, 0, t.DType, t.Shape) { Host = t, Cached = true, KeepOnHost = keepOnHost };
            _uploads.AddOrUpdate(t, pending);
            return pending;
        }
        var bytes = Wire.Bytes(t);
        var hash = Wire.Hash(bytes.Span);
        var req = new AllocateRequest { Type = Wire.Info(t.DType, t.Shape), Hash = UnsafeByteOperations.UnsafeWrap(hash), KeepOnHost = keepOnHost };
        if (bytes.Length <= _far.InlineBytes) req.Data = UnsafeByteOperations.UnsafeWrap(bytes);
        var a = Call(req, o => _client.Allocate(req, o), $"upload of {t.Describe()}");
        var v = new RemoteValue(this, a.Handle, t.DType, t.Shape) { Host = t, Cached = true };
        _uploads.AddOrUpdate(t, v);
        if (!a.Cached) Send(a.Handle, bytes, t);
        return v;
    }

    void Send(ulong handle, ReadOnlyMemory<byte> bytes, Tensor t)
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        if (_bulk is { Off: false } && _bulk.Upload(handle, bytes, Session, Authorization, $"upload of {t.Describe()}"))
        {
            Calls++;
            if (RemoteStats.On) RemoteStats.Call("bulk PUT", bytes.Length, 0, t0);
            return;
        }
        try
        {
            using var call = _client.Upload(Options());
            int chunk = (int)Math.Min(_far.ChunkBytes, Wire.ChunkBytes);
            for (int at = 0; at < bytes.Length; at += chunk)
                call.RequestStream.WriteAsync(new UploadChunk { Handle = at == 0 ? handle : 0, Data = UnsafeByteOperations.UnsafeWrap(bytes.Slice(at, Math.Min(chunk, bytes.Length - at))) }).GetAwaiter().GetResult();
            call.RequestStream.CompleteAsync().GetAwaiter().GetResult();
            call.ResponseAsync.GetAwaiter().GetResult();
            if (RemoteStats.On) RemoteStats.Call("Upload", bytes.Length, 0, t0);
        }
        catch (RpcException e) { throw Error(e, $"upload of {t.Describe()}"); }
    }

    public Value Download(Value v)
    {
        if (v is not RemoteValue) return v;
        var r = Mine(v);
        if (r.Host is { } known) return known;
        var t = Tensor.Uninitialized(r.DType, r.Shape);
        _ = Prefault.Start(t);   // NOTE: its pages are mapped while the request goes out and the server answers
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        if (_bulk is { Off: false } && _bulk.Download(r.Handle, Wire.WritableMemory(t), Session, Authorization, $"download of {r.Describe()}"))
        {
            Calls++;
            if (RemoteStats.On) RemoteStats.Call("bulk GET", 0, r.ByteSize, t0);
            r.Host = t;
            return t;
        }
        var dst = Wire.Bytes(t);
        int at = 0;
        try
        {
            using var call = _client.Download(new DownloadRequest { Handle = r.Handle }, Options());
            var stream = call.ResponseStream;
            while (stream.MoveNext(CancellationToken.None).GetAwaiter().GetResult())
            {
                var d = stream.Current.Data;
                if (at + d.Length > dst.Length) throw new TapmlException($"{Name}: the server sent more than the {dst.Length} bytes of {r.Describe()}");
                d.Span.CopyTo(Wire.Writable(t).Slice(at));
                at += d.Length;
            }
        }
        catch (RpcException e) { throw Error(e, $"download of {r.Describe()}"); }
        if (at != dst.Length) throw new TapmlException($"{Name}: the server sent {at} of the {dst.Length} bytes of {r.Describe()}");
        if (RemoteStats.On) RemoteStats.Call("Download", 0, at, t0);
        r.Host = t;
        return t;
    }

    public void Free(Value v)
    {
        if (v is not RemoteValue r || !ReferenceEquals(r.Owner, this) || r.Cached || r.Freed) return;
        r.Freed = true;
        GC.SuppressFinalize(r);
        Dead.Enqueue(r.Handle);
    }

    public void Synchronize()
    {
        if (DrainDead() is { Length: > 0 } dead) { var fr = new FreeRequest { Handles = { dead } }; Call(fr, o => _client.Free(fr, o), "free"); }
        Call(new Empty(), o => _client.Synchronize(new Empty(), o), "synchronize");
    }

    /// <summary>The model's bytes on the server (sent once per session; the server parses them once).</summary>
    RemoteValue ModelHandle(Model model)
    {
        if (!_models.TryGetValue(model, out var m) || m.Freed)
        {
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            var bytes = OnnxExporter.ToProto(model).ToByteArray();
            if (RemoteStats.On) RemoteStats.Call("(model bytes)", bytes.Length, 0, t0);
            m = Upload(Tensor.FromArray(bytes, bytes.LongLength), keepOnHost: true);
            _models.AddOrUpdate(model, m);
        }
        return m;
    }

    public Dictionary<string, Value> RunGraph(Model model, IReadOnlyDictionary<string, Value> feeds)
    {
        var req = new RunGraphRequest();
        var reply = RunGraph(req, ModelHandle(model), feeds, $"graph {model.Graph.Name}");
        var result = new Dictionary<string, Value>();
        foreach (var o in reply.Outputs)
            if (Value(o.Value) is { } v) { result[o.Name] = Download(v); Free(v); }
        return result;
    }

    public SegmentResult RunSegment(Model segment, IReadOnlyDictionary<string, Value> feeds, bool hostCopies)
    {
        var req = new RunGraphRequest { Partial = true, HostOutputs = hostCopies };
        var first = segment.Graph.Nodes[0];
        var reply = RunGraph(req, ModelHandle(segment), feeds, $"nodes '{first.Name}' ({first.OpType}) … '{segment.Graph.Nodes[^1].Name}'");
        if (reply.UnsupportedAt > 0) return new SegmentResult(new(), (int)reply.UnsupportedAt - 1, reply.Unsupported);
        var outs = new Dictionary<string, Value>();
        foreach (var o in reply.Outputs) if (Value(o.Value) is { } v) outs[o.Name] = v;
        return new SegmentResult(outs);
    }

    public IReadOnlyList<Dictionary<string, Value>> RunMany(Model model, IReadOnlyList<IReadOnlyDictionary<string, Value>> runs)
    {
        if (runs.Count == 0) return [];
        if (runs.Count > Wire.MaxRunsPerCall)
            return runs.Chunk(Wire.MaxRunsPerCall).SelectMany(c => RunMany(model, c)).ToList();
        var req = new RunGraphRequest { Partial = true, HostOutputs = true };
        var reply = RunGraph(req, ModelHandle(model), runs, $"graph {model.Graph.Name} ({runs.Count} runs)");
        if (reply.UnsupportedAt > 0)
        {
            var bad = model.Graph.Nodes[(int)reply.UnsupportedAt - 1];
            throw new UnsupportedException($"node '{bad.Name}' ({bad.OpType}) on {Name}: {reply.Unsupported}");
        }
        var results = new List<Dictionary<string, Value>>(runs.Count);
        foreach (var outputs in new[] { reply.Outputs }.Concat(reply.Runs.Select(x => x.Outputs)))
        {
            var result = new Dictionary<string, Value>();
            foreach (var o in outputs)
                if (Value(o.Value) is { } v) { result[o.Name] = Download(v); Free(v); }
            results.Add(result);
        }
        if (results.Count != runs.Count) throw new TapmlException($"{Name}: the server answered {results.Count} of {runs.Count} runs");
        return results;
    }

    /// <summary>A RunGraph call with <paramref name="feeds"/> (here or on the host); small uploads not sent yet travel
    /// with it.</summary>
    RunGraphReply RunGraph(RunGraphRequest req, RemoteValue model, IReadOnlyDictionary<string, Value> feeds, string what) =>
        RunGraph(req, model, [feeds], what);

    /// <summary>A RunGraph call of one or more runs (the first in <c>feeds</c>, the rest in <c>runs</c>); a small upload
    /// not sent yet travels with the first run that uses it, and later runs name it by the handle the server gives it.</summary>
    RunGraphReply RunGraph(RunGraphRequest req, RemoteValue model, IReadOnlyList<IReadOnlyDictionary<string, Value>> runs, string what)
    {
        var byFamily = new List<(UInt128, DType, string)>();
        try { return RunGraph(req, model, runs, what, byFamily); }
        catch (TapmlException e) when (byFamily.Count > 0 && e is not PlatformLostException && e.Message.Contains(Wire.ContentMissing, StringComparison.Ordinal))
        {
            // NOTE: no session of the family holds what was named by its hash any more (ended, or sent on to a GPU):
            // the same call again, with the bytes.
            foreach (var k in byFamily) _familySent.TryRemove(k, out _);
            return RunGraph(new RunGraphRequest { Partial = req.Partial, HostOutputs = req.HostOutputs }, model, runs, what, null);
        }
    }

    /// <param name="byFamily">Where to list the tensors named by hash because the family sent them before; null: send
    /// every inline tensor's bytes.</param>
    RunGraphReply RunGraph(RunGraphRequest req, RemoteValue model, IReadOnlyList<IReadOnlyDictionary<string, Value>> runs, string what, List<(UInt128, DType, string)>? byFamily)
    {
        var sent = new List<(int Run, int At, RemoteValue V)>();
        var inThisCall = new Dictionary<RemoteValue, AllocateRequest>(ReferenceEqualityComparer.Instance);
        var named = new List<(int Run, int At)>();
        long budget = _far.MaxMessageBytes / 2;
        // NOTE: a small model not sent yet travels with its first run (the reply names its handle).
        if (model.Handle == 0) { budget -= model.ByteSize; req.ModelTensor = Pending(model); }
        else req.Model = model.Handle;
        for (int run = 0; run < runs.Count; run++)
        {
            if (run > 0) req.Runs.Add(new FeedSet());
            var list = run == 0 ? req.Feeds : req.Runs[^1].Feeds;
            foreach (var (name, v) in runs[run])
            {
                var r = IsResident(v) ? Mine(v) : Upload(v, keepOnHost: false);
                // NOTE: sent inline by an earlier run of this call: named by its hash alone, the server has it by then.
                if (r.Handle == 0 && inThisCall.TryGetValue(r, out var first)) { named.Add((run, list.Count)); list.Add(new NamedHandle { Name = name, Tensor = first }); continue; }
                AllocateRequest? pending = null;
                if (r.Handle == 0 && byFamily is not null)
                {
                    pending = Pending(r);
                    var key = FamilyKey(pending);
                    if (_familySent.ContainsKey(key)) { pending.Data = ByteString.Empty; byFamily.Add(key); }
                }
                if (r.Handle == 0 && pending is not { Data.IsEmpty: true } && (budget -= r.ByteSize) < 0) Send(r);
                if (r.Handle != 0) { list.Add(new NamedHandle { Name = name, Handle = r.Handle }); continue; }
                pending ??= Pending(r);
                inThisCall[r] = new AllocateRequest { Type = pending.Type, Hash = pending.Hash, KeepOnHost = pending.KeepOnHost };
                sent.Add((run, list.Count, r));
                list.Add(new NamedHandle { Name = name, Tensor = pending });
            }
        }
        req.Free.Add(DrainDead());
        var reply = Call(req, o => _client.RunGraph(req, o), what);
        Google.Protobuf.Collections.RepeatedField<ulong>? Fed(int run) => run == 0 ? reply.Fed : run - 1 < reply.Runs.Count ? reply.Runs[run - 1].Fed : null;
        foreach (var (run, at, r) in sent)
        {
            if (Fed(run) is { } fed && at < fed.Count) r.Handle = fed[at];
            // NOTE: what went with its bytes is the family's now: its other sessions may name it by hash.
            var t = (run == 0 ? req.Feeds : req.Runs[run - 1].Feeds)[at].Tensor;
            if (t is { Data.IsEmpty: false }) _familySent.TryAdd(FamilyKey(t), 0);
        }
        // The server's second handles of tensors named by their hash go with the next call.
        foreach (var (run, at) in named)
            if (Fed(run) is { } fed && at < fed.Count) Dead.Enqueue(fed[at]);
        if (model.Handle == 0) model.Handle = reply.ModelHandle;
        return reply;
    }

    public void Dispose()
    {
        // NOTE: the session's Close is not waited for (a migration ends a session per fresh instance); the process
        // waits for those still on their way when it exits. A server already gone has ended the session itself.
        try
        {
            var close = _client.CloseAsync(new Empty(), new CallOptions(_headers, DateTime.UtcNow.AddSeconds(1))).ResponseAsync;
            lock (Closing)
            {
                Closing.RemoveAll(t => t.IsCompleted);
                Closing.Add(close.ContinueWith(_ => { }, TaskScheduler.Default));
            }
        }
        catch (RpcException) { }
        lock (_channelUsers) if (--_channelUsers.Value > 0) return;
        _bulk?.Dispose();
        PutIdle(_channelKey, _channel);
    }

    /// <summary>Closes sent and not yet answered (each at most a second).</summary>
    static readonly List<Task> Closing = new();

    /// <summary>Waits, at most <paramref name="timeout"/>, for the closes of disposed platforms still on their way (a
    /// caller that must know the server has ended those sessions); false when some were still unanswered.</summary>
    public static bool WaitForCloses(TimeSpan timeout)
    {
        Task[] pending;
        lock (Closing) pending = [.. Closing];
        return Task.WaitAll(pending, timeout);
    }

    static RemotePlatform() => AppDomain.CurrentDomain.ProcessExit += (_, _) => WaitForCloses(TimeSpan.FromSeconds(1));
}
