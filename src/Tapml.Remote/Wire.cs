using System.Buffers;
using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using Google.Protobuf;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Ir.Onnx.Proto;
using Tapml.Platforms;
using Tapml.Remote.Proto;

namespace Tapml.Remote;

/// <summary>What client and server agree on: tensor descriptions, content hashes, the one-node model a Prepare
/// carries, and the checks a server applies to what a client sends.</summary>
public static class Wire
{
    public const int Protocol = 5;
    public const string SessionHeader = "tapml-session";
    /// <summary>The header naming a session's family: the sessions one client opened together (its fresh instances),
    /// whose uploads may serve each other's hash-only ones (an unguessable id the client makes).</summary>
    public const string FamilyHeader = "tapml-family";
    /// <summary>The start of the error a hash-only inline tensor gets when no session of its family holds its bytes
    /// any more: the client sends the call again with them.</summary>
    public const string ContentMissing = "content not held";
    /// <summary>Upload/Download chunk size in bytes (uploads: at most half the server's message limit).</summary>
    public const int ChunkBytes = 4 << 20;
    /// <summary>Tensors up to this many bytes travel inside Allocate requests and Run replies.</summary>
    public const int InlineBytes = 64 << 10;
    /// <summary>Most runs one RunGraph carries (protocol 4's <c>runs</c> plus the first); a client splits more.</summary>
    public const int MaxRunsPerCall = 256;
    const int MaxRank = 32;
    /// <summary>A run's input 2^63 + i names the i-th tensor sent with that run.</summary>
    public const ulong SentWith = 1UL << 63;

    /// <summary>XXH3-128 of the bytes (content address of an uploaded tensor).</summary>
    public static byte[] Hash(ReadOnlySpan<byte> bytes) => XxHash128.Hash(bytes);

    /// <summary>A 16-byte hash as a dictionary key, and back.</summary>
    public static UInt128 Key(ReadOnlySpan<byte> h) => new(BinaryPrimitives.ReadUInt64BigEndian(h), BinaryPrimitives.ReadUInt64BigEndian(h[8..]));
    public static byte[] KeyBytes(UInt128 k)
    {
        var b = new byte[16];
        BinaryPrimitives.WriteUInt64BigEndian(b, (ulong)(k >> 64));
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), (ulong)k);
        return b;
    }

    /// <summary>A tensor's element bytes as memory, without a copy (gRPC writes chunks of it).</summary>
    public static ReadOnlyMemory<byte> Bytes(Tensor t) => t.Length == 0 ? ReadOnlyMemory<byte>.Empty : new TensorBytes(t).Memory;

    /// <summary>A tensor's element bytes to write into.</summary>
    public static Span<byte> Writable(Tensor t) => t.Bytes();

    /// <summary>A tensor's element bytes to write into, as memory (an asynchronous read fills it).</summary>
    public static Memory<byte> WritableMemory(Tensor t) => t.Length == 0 ? Memory<byte>.Empty : new TensorBytes(t).Memory;

    sealed unsafe class TensorBytes(Tensor t) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => t.Bytes();
        public override MemoryHandle Pin(int elementIndex = 0)
        {
            var h = GCHandle.Alloc(t.Data, GCHandleType.Pinned);
            return new MemoryHandle((byte*)Marshal.UnsafeAddrOfPinnedArrayElement(t.Data, 0) + elementIndex, h);
        }
        public override void Unpin() { }
        protected override void Dispose(bool disposing) { }
    }

    public static TensorInfo Info(DType dtype, long[] shape)
    {
        var i = new TensorInfo { Dtype = (int)dtype };
        i.Shape.Add(shape);
        return i;
    }

    /// <summary>The element type, shape and byte size a client described, or a clear error when it is not a
    /// fixed-width tensor tapml can hold (the server checks every size before it allocates anything).</summary>
    public static (DType DType, long[] Shape, long Bytes) Check(TensorInfo? info)
    {
        if (info is null) throw new TapmlException("tensor type missing");
        var dtype = (DType)info.Dtype;
        if (!Enum.IsDefined(dtype) || !DTypes.IsSupported(dtype) || dtype == DType.String)
            throw new TapmlException($"dtype {info.Dtype} is not a fixed-width tensor type tapml holds");
        if (info.Shape.Count > MaxRank) throw new TapmlException($"rank {info.Shape.Count} is over {MaxRank}");
        long n = 1;
        foreach (long d in info.Shape)
        {
            if (d < 0) throw new TapmlException($"shape [{string.Join(",", info.Shape)}] has a negative dimension");
            n = checked(n * d);
        }
        long bytes = checked(n * DTypes.Size(dtype));
        if (bytes > Tensor.MaxBytes) throw new TapmlException($"tensor of {bytes} bytes is over the {Tensor.MaxBytes}-byte tensor limit");
        return (dtype, info.Shape.ToArray(), bytes);
    }

    /// <summary>A one-node ONNX model: the node with inputs in0…, outputs out0…, input types, and the opset of its
    /// domain (what a Prepare carries: op, attributes, input types).</summary>
    public static ByteString NodeModel(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        var g = new Graph { Name = "node" };
        var n = new Node
        {
            Name = node.Name, OpType = node.OpType, Domain = node.Domain, Attributes = node.Attributes,
            Inputs = node.Inputs.Select((x, i) => x.Length == 0 ? "" : $"in{i}").ToArray(),
            Outputs = node.Outputs.Select((x, i) => x.Length == 0 ? "" : $"out{i}").ToArray(),
        };
        for (int i = 0; i < n.Inputs.Length; i++) if (n.Inputs[i].Length > 0) g.Inputs.Add(new ValueInfo(n.Inputs[i], i < inputTypes.Count ? inputTypes[i] : null));
        for (int i = 0; i < n.Outputs.Length; i++) if (n.Outputs[i].Length > 0) g.Outputs.Add(new ValueInfo(n.Outputs[i], null));
        g.Nodes.Add(n);
        var opsets = new Dictionary<string, int> { [""] = node.Domain is "" or "ai.onnx" ? ctx.Opset : 21 };
        if (node.Domain is not ("" or "ai.onnx")) opsets[node.Domain] = ctx.Opset;
        return OnnxExporter.ToProto(new Model { Graph = g, Opsets = opsets }).ToByteString();
    }

    /// <summary>Parses a model a client sent. External data is refused: the server never opens a path a client
    /// names.</summary>
    public static Model ParseModel(ReadOnlySpan<byte> bytes)
    {
        ModelProto proto;
        try { proto = ModelProto.Parser.ParseFrom(bytes); }
        catch (InvalidProtocolBufferException e) { throw new TapmlException($"not an ONNX model (protobuf: {e.Message})"); }
        if (proto.Graph is { } g) RefuseExternal(g);
        foreach (var f in proto.Functions) foreach (var n in f.Node) RefuseExternal(n);
        return OnnxImporter.FromProto(proto, null);
    }

    static void RefuseExternal(GraphProto g)
    {
        foreach (var t in g.Initializer) RefuseExternal(t);
        foreach (var s in g.SparseInitializer) { RefuseExternal(s.Values); RefuseExternal(s.Indices); }
        foreach (var n in g.Node) RefuseExternal(n);
    }

    static void RefuseExternal(NodeProto n)
    {
        foreach (var a in n.Attribute)
        {
            RefuseExternal(a.T);
            foreach (var t in a.Tensors) RefuseExternal(t);
            if (a.G is { } g) RefuseExternal(g);
            foreach (var sg in a.Graphs) RefuseExternal(sg);
            if (a.SparseTensor is { } s) { RefuseExternal(s.Values); RefuseExternal(s.Indices); }
            foreach (var st in a.SparseTensors) { RefuseExternal(st.Values); RefuseExternal(st.Indices); }
        }
    }

    static void RefuseExternal(TensorProto? t)
    {
        if (t is not null && (t.DataLocation == TensorProto.Types.DataLocation.External || t.ExternalData.Count > 0))
            throw new TapmlException($"tensor '{t.Name}' names external data; a remote server reads no files a client names (send the data inline)");
    }
}
