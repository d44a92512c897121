using System.Collections.Concurrent;
using Google.Protobuf;
using Grpc.Core;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Remote.Proto;

namespace Tapml.Remote;

/// <summary>What a server serves and the limits it holds every client to.</summary>
/// <param name="MaxMessageBytes">Largest request message accepted.</param>
/// <param name="SessionMemoryBytes">Bytes of tensors one session may hold (its cache gives way first).</param>
public sealed record ServeOptions(string Platform, string? Token = null, long MaxMessageBytes = 16 << 20, long SessionMemoryBytes = 4L << 30,
    int MaxSessions = 64, TimeSpan? IdleTimeout = null);

/// <summary>The sessions of one server: made on a client's first call, ended by Close or when idle.</summary>
public sealed class Sessions(ServeOptions options) : IDisposable
{
    readonly ConcurrentDictionary<string, Session> _all = new();
    readonly Dictionary<string, Family> _families = new();
    public ServeOptions Options => options;
    public int Count => _all.Count;
    /// <summary>The bulk endpoint's port (DescribeReply.bulk_port; 0: none).</summary>
    public int BulkPort { get; internal set; }

    /// <summary>A session that exists already (the bulk endpoint makes none: a client's Allocate did), or null.</summary>
    public Session? Find(string? id) => id is not null && _all.TryGetValue(id, out var s) ? s : null;

    public Session Get(ServerCallContext ctx)
    {
        string id = ctx.RequestHeaders.GetValue(Wire.SessionHeader) ?? throw new RpcException(new Status(StatusCode.InvalidArgument, $"missing '{Wire.SessionHeader}' header"));
        if (id.Length is 0 or > 64) throw new RpcException(new Status(StatusCode.InvalidArgument, $"bad '{Wire.SessionHeader}' header"));
        if (_all.TryGetValue(id, out var s)) return s;
        Reap();
        if (_all.Count >= options.MaxSessions) throw new RpcException(new Status(StatusCode.ResourceExhausted, $"the server holds {options.MaxSessions} sessions already"));
        lock (_all)
        {
            if (_all.TryGetValue(id, out s)) return s;
            string? fid = ctx.RequestHeaders.GetValue(Wire.FamilyHeader);
            if (fid is { Length: 0 or > 64 }) throw new RpcException(new Status(StatusCode.InvalidArgument, $"bad '{Wire.FamilyHeader}' header"));
            Family? family = null;
            if (fid is not null)
            {
                if (!_families.TryGetValue(fid, out family)) _families[fid] = family = new Family(fid);
                family.Members++;
            }
            // NOTE: each session has its own platform instance: its own memory, kernels and (faulty:) call counters.
            s = new Session(id, PlatformRegistry.Create(options.Platform), options.SessionMemoryBytes) { Family = family };
            _all[id] = s;
            return s;
        }
    }

    public void End(string id)
    {
        if (!_all.TryRemove(id, out var s)) return;
        lock (s.Gate) s.Dispose();
        if (s.Family is { } f)
            lock (_all)
                if (--f.Members <= 0) _families.Remove(f.Id);
    }

    /// <summary>Ends sessions no call touched for the idle timeout (a client that died without Close).</summary>
    void Reap()
    {
        var idle = options.IdleTimeout ?? TimeSpan.FromMinutes(10);
        foreach (var s in _all.Values)
            if (DateTime.UtcNow - s.LastUse > idle) End(s.Id);
    }

    public void Dispose() { foreach (var id in _all.Keys) End(id); }
}

/// <summary>The gRPC service: every call runs in the caller's session under its lock; tapml errors become gRPC
/// statuses (limits → ResourceExhausted, unknown handles and out-of-order calls → FailedPrecondition, bad input →
/// InvalidArgument, an op the platform cannot run → Unimplemented "unsupported: …").</summary>
public sealed class DeviceService(Sessions sessions) : Device.DeviceBase
{
    T Call<T>(ServerCallContext ctx, Func<Session, T> body)
    {
        long t0 = RemoteStats.On ? System.Diagnostics.Stopwatch.GetTimestamp() : 0;
        var s = sessions.Get(ctx);
        lock (s.Gate)
        {
            s.LastUse = DateTime.UtcNow;
            try { return body(s); }
            catch (Exception e) { throw Status(e); }
            finally { if (RemoteStats.On) RemoteStats.Served(ctx.Method[(ctx.Method.LastIndexOf('/') + 1)..], t0); }
        }
    }

    internal static RpcException Status(Exception e) => e switch
    {
        RpcException r => r,
        RemoteLimitException => new(new Status(StatusCode.ResourceExhausted, e.Message)),
        RemoteStateException => new(new Status(StatusCode.FailedPrecondition, e.Message)),
        UnsupportedException => new(new Status(StatusCode.Unimplemented, "unsupported: " + e.Message)),
        TapmlException or OverflowException => new(new Status(StatusCode.InvalidArgument, e.Message)),
        OutOfMemoryException => new(new Status(StatusCode.ResourceExhausted, "the server ran out of memory")),
        _ => new(new Status(StatusCode.Internal, $"{e.GetType().Name}: {e.Message}")),
    };

    public override Task<DescribeReply> Describe(DescribeRequest request, ServerCallContext context) => Task.FromResult(Call(context, s =>
    {
        var p = s.Platform;
        var r = new DescribeReply
        {
            Protocol = Wire.Protocol, Platform = sessions.Options.Platform, Description = p.Description,
            MaxBufferBytes = p.Limits.MaxBufferBytes, MaxBindingBytes = p.Limits.MaxBindingBytes, MaxWorkgroupSize = p.Limits.MaxWorkgroupSize,
            MemoryBytes = p.Limits.MemoryBytes, MaxMessageBytes = sessions.Options.MaxMessageBytes, ChunkBytes = Math.Min(Wire.ChunkBytes, sessions.Options.MaxMessageBytes / 2),
            SessionMemoryBytes = s.MemoryLimit, InlineBytes = Wire.InlineBytes, KernelsServeAnyShape = p.KernelsServeAnyShape,
            BulkPort = sessions.BulkPort,
        };
        if (p is IPlatformDetails d) r.Details.Add(d.Details());
        if (p is IOpList l)
            r.Ops.Add(l.Ops.OrderBy(o => o.Domain, StringComparer.Ordinal).ThenBy(o => o.OpType, StringComparer.Ordinal)
                .Select(o => new OpSupport { Domain = o.Domain, OpType = o.OpType, SinceOpset = o.SinceOpset }));
        return r;
    }));

    public override Task<AllocateReply> Allocate(AllocateRequest request, ServerCallContext context) => Task.FromResult(Call(context, s => Allocate(s, request)));

    static AllocateReply Allocate(Session s, AllocateRequest request)
    {
        var (dtype, shape, bytes) = Wire.Check(request.Type);
        if (request.Hash.Length != 16) throw new TapmlException("Allocate needs the 16-byte XXH3-128 hash of the tensor's bytes");
        var hash = Wire.Key(request.Hash.Span);
        if (s.FromCache(hash, dtype, shape) is { } cached) return new AllocateReply { Handle = cached, Cached = true };
        var known = request.Data.Length == 0 && bytes > 0 ? s.FromFamily(hash, dtype, shape) : null;
        ulong h = s.Reserve(dtype, shape, bytes, hash, request.KeepOnHost, staging: known is null);
        if (known is not null)
        {
            // NOTE: another session of the client's family received these bytes: they need not cross again.
            try { s.Fill(h, known); }
            catch { s.Free(h); throw; }
            return new AllocateReply { Handle = h, Cached = true };
        }
        if (request.Data.Length == 0 && bytes > 0) return new AllocateReply { Handle = h };
        try { s.Fill(h, Receive(dtype, shape, bytes, request.Hash.Span, request.Data.Span)); }
        catch { s.Free(h); throw; }
        return new AllocateReply { Handle = h, Cached = true };
    }

    /// <summary>The tensor from bytes a client sent, checked against the size and hash it announced.</summary>
    static Tensor Receive(DType dtype, long[] shape, long bytes, ReadOnlySpan<byte> hash, ReadOnlySpan<byte> data)
    {
        if (data.Length != bytes) throw new TapmlException($"{DTypes.Name(dtype)}{ShapeUtil.Format(shape)} needs {bytes} bytes, {data.Length} came");
        if (!Wire.Hash(data).AsSpan().SequenceEqual(hash)) throw new TapmlException("the uploaded bytes do not match their hash (corrupted in transit?)");
        return Tensor.FromBytes(dtype, shape, data);
    }

    public override async Task<UploadReply> Upload(IAsyncStreamReader<UploadChunk> requestStream, ServerCallContext context)
    {
        if (!await requestStream.MoveNext(context.CancellationToken)) throw new RpcException(new Status(StatusCode.InvalidArgument, "empty upload"));
        ulong h = requestStream.Current.Handle;
        var (dtype, shape, bytes, hash, _) = Call(context, s => s.Pending(h));
        // NOTE: the destination was counted against the session's memory by Allocate; a chunk past it is refused.
        // Chunks go straight into the tensor and into the hash as they come: no second copy, no second pass.
        var t = Call(context, s => s.UploadTarget(h));
        var hasher = new System.IO.Hashing.XxHash128();
        long at = 0;
        do
        {
            var d = requestStream.Current.Data;
            if (at + d.Length > bytes) throw new RpcException(new Status(StatusCode.InvalidArgument, $"upload into handle {h} brings more than its {bytes} bytes"));
            d.Span.CopyTo(Wire.Writable(t)[(int)at..]);
            hasher.Append(d.Span);
            at += d.Length;
        } while (await requestStream.MoveNext(context.CancellationToken));
        if (at != bytes) throw new RpcException(new Status(StatusCode.InvalidArgument, $"upload into handle {h} brought {at} of its {bytes} bytes"));
        if (Wire.Key(hasher.GetCurrentHash()) != hash) throw new RpcException(new Status(StatusCode.InvalidArgument, "the uploaded bytes do not match their hash (corrupted in transit?)"));
        Call(context, s =>
        {
            s.Pending(h);
            s.Fill(h, t);
            return 0;
        });
        return new UploadReply();
    }

    public override async Task Download(DownloadRequest request, IServerStreamWriter<DownloadChunk> responseStream, ServerCallContext context)
    {
        var t = Call(context, s => s.Platform.Download(s.Get(request.Handle)) as Tensor ?? throw new UnsupportedException("only tensors can be downloaded"));
        var bytes = t.DType == DType.String ? throw new UnsupportedException("string tensors do not travel") : Wire.Bytes(t);
        for (int at = 0; at < bytes.Length; at += Wire.ChunkBytes)
            await responseStream.WriteAsync(new DownloadChunk { Data = UnsafeByteOperations.UnsafeWrap(bytes.Slice(at, Math.Min(Wire.ChunkBytes, bytes.Length - at))) });
    }

    public override Task<Empty> Free(FreeRequest request, ServerCallContext context) => Task.FromResult(Call(context, s =>
    {
        foreach (var h in request.Handles) s.Free(h);
        return new Empty();
    }));

    public override Task<PrepareReply> Prepare(PrepareRequest request, ServerCallContext context) => Task.FromResult(Call(context, s => Prepare(s, request.NodeModel)));

    static PrepareReply Prepare(Session s, ByteString nodeModel)
    {
        var model = Wire.ParseModel(nodeModel.Span);
        if (model.Graph.Nodes.Count != 1) throw new TapmlException($"Prepare takes a model of one node, not {model.Graph.Nodes.Count}");
        var node = model.Graph.Nodes[0];
        var p = s.Platform;
        var ctx = new NodeContext(node, model.Opset(node.Domain))
        {
            Owner = model.Graph,
            // NOTE: bodies run here on the served platform; names from outside the node cannot be reached from here.
            RunSubgraph = (body, inputs) => new Executor(p).RunBody(model, body, inputs, name => throw new TapmlException($"a subgraph of node '{node.Name}' reads '{name}' from outside it, which a remote node cannot see")),
        };
        var types = model.Graph.Inputs.Select(i => (TypeRef?)i.Type).ToList();
        // Graph inputs are the node's present inputs only: put them back at their positions.
        var byPos = new TypeRef?[node.Inputs.Length];
        for (int i = 0, j = 0; i < node.Inputs.Length; i++) if (node.Inputs[i].Length > 0) byPos[i] = types[j++];
        var support = p.Supports(node, ctx, byPos);
        if (!support.IsSupported) return new PrepareReply { Unsupported = support.Reason ?? "not supported" };
        try { return new PrepareReply { Kernel = s.AddKernel(p.Prepare(node, ctx, byPos), ctx) }; }
        catch (UnsupportedException e) { return new PrepareReply { Unsupported = e.Message }; }
    }

    public override Task<RunReply> Run(RunRequest request, ServerCallContext context) => Task.FromResult(Call(context, s =>
    {
        foreach (var h in request.Free) s.Free(h);
        var r = new RunReply();
        try
        {
            foreach (var u in request.Uploads)
            {
                var a = Allocate(s, u);
                r.Uploaded.Add(a.Handle);
                if (!a.Cached) throw new TapmlException("a tensor sent with a run came without its bytes");
            }
            ulong kernelId = request.Kernel;
            if (kernelId == 0 && request.NodeModel.Length > 0)
            {
                var prepared = Prepare(s, request.NodeModel);
                if (prepared.Unsupported.Length > 0) { r.Unsupported = prepared.Unsupported; return r; }
                r.Kernel = kernelId = prepared.Kernel;
            }
            var (kernel, ctx) = s.GetKernel(kernelId);
            var inputs = request.Inputs.Select(h => h == 0 ? null : s.Get(h >= Wire.SentWith ? Sent(r, h) : h)).ToArray();
            var outs = s.Platform.Run(kernel, ctx, inputs);
            foreach (var v in outs) r.Outputs.Add(Register(s, v, request.HostOutputs));
            return r;
        }
        catch
        {
            // NOTE: the client learns the handles of what it sent with the call only from a reply: without one they go.
            foreach (var h in r.Uploaded) s.Free(h);
            throw;
        }
    }));

    static ulong Sent(RunReply r, ulong marker) =>
        marker - Wire.SentWith < (ulong)r.Uploaded.Count ? r.Uploaded[(int)(marker - Wire.SentWith)] : throw new RemoteStateException($"input {marker - Wire.SentWith} of the run's uploads does not exist");

    /// <summary>A value the platform made, as a handle (small host tensors travel inline too).</summary>
    static Output Register(Session s, Value? v, bool hostCopy = false)
    {
        if (v is null) return new Output();
        var (dtype, shape) = v switch
        {
            Tensor t when t.DType != DType.String => (t.DType, t.Shape),
            IDeviceValue d => (d.DType, d.Shape),
            _ => throw new UnsupportedException($"{v.Describe()} values do not travel (tensors only)"),
        };
        long bytes = ShapeUtil.Size(shape) * DTypes.Size(dtype);
        var o = new Output { Handle = s.Add(v, dtype, shape, bytes), Type = Wire.Info(dtype, shape) };
        if (bytes <= Wire.InlineBytes && (v is Tensor || hostCopy) && s.Platform.Download(v) is Tensor host)
        { o.Data = ByteString.CopyFrom(Wire.Bytes(host).Span); o.HasData = true; }
        return o;
    }

    public override Task<Empty> Synchronize(Empty request, ServerCallContext context) => Task.FromResult(Call(context, s => { s.Platform.Synchronize(); return new Empty(); }));

    public override Task<RunGraphReply> RunGraph(RunGraphRequest request, ServerCallContext context) => Task.FromResult(Call(context, s =>
    {
        if (request.Runs.Count + 1 > Wire.MaxRunsPerCall)
            throw new RemoteLimitException($"RunGraph carries {request.Runs.Count + 1} runs, over the {Wire.MaxRunsPerCall} a call takes");
        foreach (var h in request.Free) s.Free(h);
        var fed = new List<ulong>();
        var inline = new List<ulong>();
        try
        {
            ulong modelHandle = request.Model, sentModel = 0;
            if (modelHandle == 0 && request.ModelTensor is { } mt)
            {
                // NOTE: a small model travels with its first run instead of costing an Allocate of its own (protocol 3).
                if (!mt.KeepOnHost) throw new TapmlException("a model sent with RunGraph must be marked keep_on_host");
                if (mt.Data.Length > Wire.InlineBytes)
                    throw new RemoteLimitException($"a model sent with RunGraph takes {mt.Data.Length} bytes, over the {Wire.InlineBytes}-byte inline size (Allocate and upload it)");
                var a = Allocate(s, mt);
                inline.Add(modelHandle = sentModel = a.Handle);
                if (!a.Cached) throw new TapmlException("the model sent with RunGraph came without its bytes");
            }
            var modelHash = s.HashOf(modelHandle) ?? throw new RemoteStateException($"unknown model handle {modelHandle}");
            var model = s.ModelFor(modelHash, () => Wire.ParseModel(Wire.Bytes((Tensor)s.Get(modelHandle)).Span));
            // A run's feeds: handles, or small tensors sent inline (kept, cached; the reply names their handles).
            Dictionary<string, Value> Feeds(IEnumerable<NamedHandle> list, List<ulong> handles)
            {
                var feeds = new Dictionary<string, Value>();
                foreach (var f in list)
                {
                    ulong h = f.Handle;
                    if (h == 0 && f.Tensor is not null)
                    {
                        var a = Allocate(s, f.Tensor);
                        inline.Add(h = a.Handle);
                        if (!a.Cached) throw new RemoteStateException($"{Wire.ContentMissing}: feed '{f.Name}' came inline without its bytes and no session of its family holds them");
                    }
                    handles.Add(h);
                    if (!feeds.TryAdd(f.Name, s.Get(h))) throw new TapmlException($"feed '{f.Name}' given twice");
                }
                return feeds;
            }
            // A run's outputs, kept in the session; their bytes inline while the reply stays under half the message limit.
            long replyBytes = 0;
            void Outputs(Dictionary<string, Value> outs, Google.Protobuf.Collections.RepeatedField<NamedOutput> into)
            {
                foreach (var (name, v) in outs)
                {
                    var o = Register(s, v, request.HostOutputs && replyBytes < sessions.Options.MaxMessageBytes / 2);
                    replyBytes += o.Data.Length;
                    into.Add(new NamedOutput { Name = name, Value = o });
                }
            }
            var r = new RunGraphReply { ModelHandle = sentModel };
            for (int run = 0; run <= request.Runs.Count; run++)
            {
                var handles = run == 0 ? fed : new List<ulong>();
                var feeds = Feeds(run == 0 ? request.Feeds : request.Runs[run - 1].Feeds, handles);
                var exec = s.ExecutorFor(modelHash, request.Partial);
                var ran = new RanNodes();
                exec.Observers.Clear();
                if (request.Partial) exec.Observers.Add(ran);
                Dictionary<string, Value> outs;
                try { outs = exec.Run(model, feeds, keepOnDevice: _ => true); }
                catch (UnsupportedException e) when (request.Partial && ran.Count < model.Graph.Nodes.Count)
                {
                    // NOTE: the runs before this one are dropped with their outputs: the client runs them another way.
                    foreach (var o in r.Outputs.Concat(r.Runs.SelectMany(x => x.Outputs))) s.Free(o.Value.Handle);
                    var n = model.Graph.Nodes[ran.Count];
                    string prefix = $"node '{n.Name}' ({n.OpType}) on {s.Platform.Name}: ";
                    return new RunGraphReply { UnsupportedAt = (uint)ran.Count + 1, Unsupported = e.Message.StartsWith(prefix, StringComparison.Ordinal) ? e.Message[prefix.Length..] : e.Message, Fed = { fed }, ModelHandle = sentModel };
                }
                if (run == 0) { Outputs(outs, r.Outputs); continue; }
                var ro = new RunOutputs { Fed = { handles } };
                Outputs(outs, ro.Outputs);
                r.Runs.Add(ro);
            }
            r.Fed.Add(fed);
            return r;
        }
        catch
        {
            // NOTE: the client learns the handles of tensors it sent inline only from a reply: without one they go.
            foreach (var h in inline) s.Free(h);
            throw;
        }
    }));

    /// <summary>Counts the main-graph nodes that ran (a partial run's unsupported node is the next one).</summary>
    sealed class RanNodes : IExecutionObserver
    {
        public int Count;
        public void OnNodeRun(NodeEvent e) { if (e.Depth == 0) Count++; }
    }

    public override Task<Empty> Close(Empty request, ServerCallContext context)
    {
        sessions.End(sessions.Get(context).Id);
        return Task.FromResult(new Empty());
    }
}
