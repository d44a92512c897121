using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms.WebGpu.Kernels;

namespace Tapml.Platforms.WebGpu;

/// <summary>The native WebGPU target: Dawn (webgpu.h) with WGSL kernels generated per op family.
/// Spec: <c>webgpu[:vulkan|:gles][?max-binding=BYTES][&amp;KNOB=V…]</c> (KNOB: <see cref="MatVecTuning"/>'s). Values stay on the GPU between nodes; host tensors
/// uploaded (weights) are cached per tensor object, so a model's weights cross the bus once.</summary>
public sealed class WebGpuPlatform : IPlatform, IAsyncDownload, IPlatformDetails, IOpList, IKernelProfile, IModelWarmup, IHostInputs
{
    public IEnumerable<(string Domain, string OpType, int SinceOpset)> Ops => GpuOps.All.Select(o => (o.Domain, o.OpType, o.SinceOpset));

    readonly ConditionalWeakTable<Tensor, UploadEntry> _uploads = new();
    readonly ConcurrentQueue<GpuBuffer> _deadUploads = new();
    readonly string _backend;

    public IGpuDevice Device { get; }
    public bool PrefersFusedGraphs => true;
    public bool KvAppendInProjections => !KvJoint;
    public DeviceCounters Counters => Device.Counters;
    public int KernelCount => Device.PipelineCount;
    public bool StartProfile()
    {
        _profiling = Device.StartProfile();
        _opTimes = [];
        return _profiling;
    }

    public List<(string Kernel, long Calls, double Ms)> StopProfile()
    {
        var rows = Device.StopProfile();
        _profiling = false;
        var byKernel = new Dictionary<string, (long Calls, double Ms)>();
        var byOp = new Dictionary<string, (long Calls, double Ms)>();
        foreach (var (label, calls, ms) in rows)
        {
            int at = label.IndexOf(ScopeMark, StringComparison.Ordinal);
            string op = at < 0 ? "" : label[..at], kernel = at < 0 ? label : label[(at + ScopeMark.Length)..];
            var k = byKernel.GetValueOrDefault(kernel);
            byKernel[kernel] = (k.Calls + calls, k.Ms + ms);
            var o = byOp.GetValueOrDefault(op);
            byOp[op] = (o.Calls + calls, o.Ms + ms);
        }
        _opTimes = byOp.Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Ms)).OrderByDescending(r => r.Ms).ToList();
        return byKernel.Select(kv => (kv.Key, kv.Value.Calls, kv.Value.Ms)).OrderByDescending(r => r.Ms).ToList();
    }

    public IReadOnlyList<(string OpType, long Calls, double Ms)> OpTimes => _opTimes;

    // NOTE: while profiling, each dispatch is recorded under a copy of its pipeline labelled "OpType»kernel" (the op
    // type of the node being run), so device time splits by op type on every device without a device knowing nodes.
    const string ScopeMark = "»";
    bool _profiling;
    string _profileOp = "";
    List<(string OpType, long Calls, double Ms)> _opTimes = [];
    readonly Dictionary<(GpuPipeline, string), GpuPipeline> _scoped = new();

    GpuPipeline Scoped(GpuPipeline p)
    {
        if (!_profiling || _profileOp.Length == 0) return p;
        if (!_scoped.TryGetValue((p, _profileOp), out var s))
            _scoped[(p, _profileOp)] = s = new GpuPipeline(p.Handle, p.Layout, _profileOp + ScopeMark + p.Label, p.Code);
        return s;
    }
    public string Name { get; }
    /// <summary>The kernels' options (spec options shared by every device the kernels run on).</summary>
    public GpuKernelOptions Options { get; }
    /// <summary>Knobs of the decode matrix-vector kernels for 4-bit and packed f16 weights (spec options; a benchmark
    /// may set it between runs: kernels are cached by their layout).</summary>
    public MatVecTuning MatVec { get => Options.MatVec; set => Options.MatVec = value; }
    /// <summary>Lanes a kernel may add across with subgroup shuffles (the device's smallest subgroup), or 0.</summary>
    public int SubgroupLanes => Device.Info.Subgroups ? Device.Info.SubgroupMin : 0;
    /// <summary>The platform kind for messages: the spec's head (webgpu, vulkan, opencl, browser).</summary>
    public string Kind { get; }
    public string Description { get; }
    public PlatformLimits Limits { get; }
    public GpuAdapterInfo Info => Device.Info;

    public WebGpuPlatform(string spec = "webgpu")
    {
        string head = spec.Split('?', 2)[0];
        _backend = head.Contains(':') ? head[(head.IndexOf(':') + 1)..] : "";
        if (_backend is not ("" or "vulkan" or "gles"))
            throw new TapmlException($"platform '{spec}': unknown webgpu backend '{_backend}' (use webgpu, webgpu:vulkan or webgpu:gles)");
        long maxBinding = 0;
        string[]? toggles = null;
        bool lowestFirst = true;
        var rest = new List<(string, string)>();
        foreach (var (k, v) in PlatformSpec.Query(spec))
        {
            if (k == "max-binding" && long.TryParse(v, out maxBinding) && maxBinding >= 16) continue;
            if (k == "pool" && v is "lowest" or "last") { lowestFirst = v == "lowest"; continue; }
            if (k == "kernel-cache" && (v is "on" or "off" || Path.IsPathRooted(v))) { _kernelCache = v != "off"; _kernelCacheRoot = Path.IsPathRooted(v) ? v : null; continue; }
            if (k == "toggles" && v.Split(',', StringSplitOptions.RemoveEmptyEntries) is { Length: > 0 } ts && ts.All(t => System.Text.RegularExpressions.Regex.IsMatch(t, "^-?[a-z0-9_]+$")))
            {
                toggles = ts;
                continue;
            }
            rest.Add((k, v));
        }
        Options = GpuKernelOptions.Parse(spec, rest, "max-binding=BYTES (at least 16), kernel-cache=on|off|DIR, toggles=NAME,-NAME,… (Dawn device toggles), pool=lowest|last");
        Name = spec;
        Kind = "webgpu";
        Device = new DawnDevice(_backend, maxBinding, info => KernelCacheOn(info) ? Path.Combine(_kernelCacheRoot ?? KernelList.Root, "blobs") : null, toggles) { LowestFirst = lowestFirst };
        (Description, Limits, Workgroup) = Describe(Device);
        CheckDeviceOptions(spec);
    }

    /// <summary>Whether the device widens f16 subnormals exactly through the operations of 4-bit panel kernels whose
    /// nibbles are f16 subnormals (<see cref="MatVecTuning.Q4Nibbles"/>): one probe kernel, run as the platform is made
    /// (before its work counters are read) by the first platform of this kind over this adapter in the process.</summary>
    public bool WidensHalfSubnormals => _halfSubnormals ??= HalfSubnormalsSeen.GetOrAdd((Kind, Device.Info), _ => ProbeHalfSubnormals());
    // NOTE: a device that cannot run the probe (its compiler refuses the kernel) keeps magic nibbles rather than failing
    // to make the platform.
    bool ProbeHalfSubnormals()
    {
        try { return Kernels.MatMulNBits.ProbeHalfNibbles(this); }
        catch (TapmlException) { return false; }
    }
    bool? _halfSubnormals;
    static readonly System.Collections.Concurrent.ConcurrentDictionary<(string Kind, GpuAdapterInfo Adapter), bool> HalfSubnormalsSeen = new();

    /// <summary>Whether 4-bit panel kernels make nibbles floats as f16 subnormals: <c>q4-nibbles</c> if given (<c>half</c>
    /// on a device that flushes them is an error), else <see cref="MatVecTuning.Q4HalfRule"/> where the device keeps them.</summary>
    internal bool Q4HalfNibbles => MatVec.Q4Nibbles switch
    {
        "half" => WidensHalfSubnormals ? true : throw new UnsupportedException($"{Kind}: {HalfNibblesRefused}"),
        "magic" => false,
        _ => MatVecTuning.Q4HalfRule && WidensHalfSubnormals,
    };

    const string HalfNibblesRefused = "q4-nibbles=half needs f16 subnormals widened exactly, and this device does not (its probe kernel's sums differ)";

    /// <summary>A matrix-vector knob asking for subgroup reductions on a device without subgroup shuffles is one clear
    /// error (not a silent fallback); so is <c>q4-nibbles=half</c> on a device that flushes f16 subnormals.</summary>
    void CheckDeviceOptions(string spec)
    {
        // The probe runs now, before the platform's work counters are read, unless magic nibbles are asked for.
        bool half = MatVec.Q4Nibbles != "magic" && WidensHalfSubnormals;
        if (MatVec.Q4Nibbles == "half" && !half)
        {
            Device.Dispose();
            throw new UnsupportedException($"platform '{spec}': {HalfNibblesRefused}");
        }
        if (!MatVec.WantsSubgroups && Options.AttentionLanes != true || Device.Info.Subgroups) return;
        Device.Dispose();
        throw new UnsupportedException($"platform '{spec}': q4-reduce=subgroup / f16-reduce=subgroup / attn-decode=lanes need subgroup shuffles, which this device does not offer (tapml platforms lists them)");
    }

    /// <summary>The platform over another device with the same kernels: a browser's WebGPU, or a device that renders
    /// the WGSL to its own dialect (vulkan, opencl). <paramref name="options"/>: the kernels' options from the spec
    /// (<see cref="GpuKernelOptions.Parse"/>; null: the defaults).</summary>
    public WebGpuPlatform(string spec, IGpuDevice device, GpuKernelOptions? options = null)
    {
        Name = spec;
        Kind = spec.Split([':', '?'], 2)[0];
        _backend = "";
        Device = device;
        Options = options ?? new GpuKernelOptions();
        (Description, Limits, Workgroup) = Describe(Device);
        CheckDeviceOptions(spec);
    }

    static (string, PlatformLimits, int) Describe(IGpuDevice device)
    {
        var i = device.Info;
        string description = $"{(i.Device.Length > 0 ? i.Device : i.Description.Length > 0 ? i.Description : i.Architecture)} ({i.Vendor}, {i.Backend}, {i.AdapterType}) via {device.Runtime}" +
            $"; max binding {DawnDevice.Bytes(device.Limits.MaxStorageBindingBytes)}, max buffer {DawnDevice.Bytes(device.Limits.MaxBufferBytes)}, workgroup ≤ {device.Limits.MaxInvocationsPerWorkgroup}" +
            $"{(i.ShaderF16 ? ", shader-f16" : ", no shader-f16 (f16 weights packed in u32)")}";
        return (description, new PlatformLimits(device.Limits.MaxBufferBytes, device.Limits.MaxStorageBindingBytes, device.Limits.MaxInvocationsPerWorkgroup, 0),
            Math.Min(256, device.Limits.MaxInvocationsPerWorkgroup));
    }

    // ---- kernels of a model compiled ahead (KernelList) ------------------------------------------------------

    bool? _kernelCache;
    string? _kernelCacheRoot;
    readonly ConditionalWeakTable<Model, KernelList> _kernelLists = new();
    KernelList? _kernelList;

    // NOTE: auto is off on CPU adapters: SwiftShader compiled the kernels of a model one at a time whether asked ahead
    // or not, and Dawn's blob cache did not shorten it (tiny Llama's 17 kernels: 3.3-3.5 s in each case), so there the
    // cache would only add the kernels of earlier shapes to compile.
    bool KernelCacheOn(GpuAdapterInfo info) => _kernelCache ?? info.AdapterType != "CPU";

    /// <summary>Starts compiling, in parallel, the kernels <paramref name="model"/> compiled on this adapter with these
    /// options last time (<see cref="KernelList"/>); kernels compiled from now on are added to its list. Off with
    /// <c>kernel-cache=off</c> (<c>kernel-cache=DIR</c> keeps the lists in DIR; <c>on</c> also on CPU adapters, where it
    /// is off by default), and on devices that cannot compile ahead.</summary>
    public void Warm(Model model)
    {
        if (!KernelCacheOn(Device.Info) || Device is not IPrecompile pre) return;
        if (_kernelLists.TryGetValue(model, out var known)) { _kernelList = known; return; }
        var i = Device.Info;
        var list = new KernelList($"{Device.Runtime}\n{i.Vendor}|{i.Architecture}|{i.Device}|{i.Description}|{i.Backend}\n{Name}", model, _kernelCacheRoot);
        _kernelLists.Add(model, list);
        _kernelList = list;
        pre.Compiled ??= (code, label) => _kernelList?.Add(code, label);
        foreach (var (code, label) in list.Load()) pre.Precompile(code, label);
    }

    /// <summary>Null when the Dawn library is installed here, else why not (tests skip with it on a user's machine).</summary>
    public static string? Unavailable() => Native.Wgpu.FindLibrary() is null ? Native.Wgpu.NotInstalled : null;

    /// <summary>The tile every tiled matmul uses (<c>webgpu?matmul-tile=BMxBNxBK/TMxTN</c>, or <c>legacy</c> for the
    /// 64×64 kernel); null: <see cref="Kernels.MatMulTiled.Choose"/>'s ladder by shape. Benchmarks set it per run.</summary>
    public Kernels.MatMulTiled.Tile? MatMulTile { get => Options.MatMulTile; set => Options.MatMulTile = value; }

    /// <summary>The tiles <see cref="Kernels.MatMulTiled.Choose"/> tries and the grid size that stops it
    /// (<c>webgpu?matmul-ladder=v2</c>, the default, or <c>v1</c>, the earlier ladder; <c>matmul-groups=N</c> sets the grid
    /// size a tile must reach, below which the smallest tile's product splits K over workgroups).</summary>
    public Kernels.MatMulTiled.TileLadder MatMulLadder { get => Options.MatMulLadder; set => Options.MatMulLadder = value; }

    /// <summary>Layout of products of a few rows against a weight (short prompts; spec options <c>skinny-…</c>, see
    /// <see cref="Kernels.SkinnyTuning"/>; a benchmark may set it between runs: kernels are cached by their layout).</summary>
    public Kernels.SkinnyTuning Skinny { get => Options.Skinny; set => Options.Skinny = value; }

    /// <summary>The KV cache is appended in place (option <c>kv=inplace</c>, the default): a layer's present K/V live in a
    /// buffer with room for more rows, and a decode step writes only its new row; <c>kv=copy</c> writes the whole cache
    /// into a new buffer each step.</summary>
    public bool KvInPlace => Options.KvInPlace;
    public bool KvJoint => Options.KvJoint;

    /// <summary>Decode-shaped projections regions over packed f16 weights run as one kernel (option <c>f16-proj=fused</c>,
    /// the default: norm, products and epilogue in one dispatch) or node by node (<c>split</c>: each product through
    /// <see cref="Kernels.BlockedMatVec"/>'s packed-f16 matrix-vector, with the norm and epilogue dispatches around it).
    /// <c>bench llm-weights</c> measures both.</summary>
    public bool HalfProjectionsFused => Options.HalfProjectionsFused;

    /// <summary>Workgroups decode-shaped attention over a long key range aims at when it splits the keys (option
    /// <c>attn-groups=N</c>, default 256).</summary>
    public int AttentionTargetGroups => Options.AttentionTargetGroups;

    /// <summary>Query rows from which attention runs tiled (flash attention over tiles of query rows; option
    /// <c>attn-tiled=ROWS</c>, default 32, 0 never): prompts; decode and short prompts keep one workgroup per row.</summary>
    public int AttentionTiledFrom => Options.AttentionTiledFrom;

    /// <summary>The tiled prompt attention's layout (option <c>attn-tile=v2</c>, the default: <see cref="Kernels.AttentionTiles"/>,
    /// 64 keys a tile, vec4 workgroup reads; <c>v1</c>: the first layout, 16 keys a tile, one score a thread).</summary>
    public int AttentionTileLayout => Options.AttentionTileLayout;
    /// <summary>Lanes a key's dims spread over in decode-row attention (the device's smallest subgroup, at most 32), or
    /// 0 for a thread a key: <c>attn-decode</c>, else lanes where the device has subgroups of 4 or more.</summary>
    public int AttentionLanes => Options.AttentionLanes != false && SubgroupLanes >= 4 ? Math.Min(SubgroupLanes, 32) : 0;

    /// <summary>Threads per workgroup the element kernels use (256, or less on a small adapter).</summary>
    public int Workgroup { get; }

    /// <summary>Adapter, backend and limits, one per line (for <c>tapml platforms</c>).</summary>
    public IEnumerable<string> Details()
    {
        // A device with details of its own (vulkan, opencl) names its limits in its API's words.
        if (Device is IPlatformDetails own)
        {
            foreach (var line in own.Details()) yield return line;
            yield break;
        }
        var i = Device.Info;
        var l = Device.Limits;
        yield return $"adapter: {i.Device} — {i.Description} (vendor {i.Vendor}, architecture {i.Architecture}, {i.AdapterType})";
        yield return $"backend: {i.Backend}; features: {(i.ShaderF16 ? "shader-f16" : "no shader-f16")}, {(i.TimestampQuery ? "timestamp-query" : "no timestamp-query")}; subgroup {i.SubgroupMin}–{i.SubgroupMax}{(i.Subgroups ? " (subgroup shuffles)" : "")}";
        yield return $"limits: maxStorageBufferBindingSize {l.MaxStorageBindingBytes}, maxBufferSize {l.MaxBufferBytes}, maxComputeWorkgroupSizeX {l.MaxWorkgroupSizeX}, " +
            $"maxComputeInvocationsPerWorkgroup {l.MaxInvocationsPerWorkgroup}, maxComputeWorkgroupStorageSize {l.MaxWorkgroupStorageBytes}, " +
            $"maxComputeWorkgroupsPerDimension {l.MaxWorkgroupsPerDimension}, maxStorageBuffersPerShaderStage {l.MaxStorageBuffersPerStage}";
        yield return Device is DawnDevice ? $"library: {Native.Wgpu.LibraryPath}" : $"runtime: {Device.Runtime}";
    }

    public Support Supports(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        var op = GpuOps.Find(node.Domain, node.OpType);
        if (op is null)
            return Support.No($"operator {(node.Domain is "" ? "" : node.Domain + ".")}{node.OpType} has no WGSL kernel on {Kind}");
        if (ctx.Opset < op.SinceOpset)
            return Support.No($"{node.OpType} at opset {ctx.Opset} is not implemented on {Kind} (from opset {op.SinceOpset})");
        foreach (var t in inputTypes)
            if (t is { Kind: TypeKind.Tensor } tt && Wgsl.StorageOf(tt.ElemType) is null && !op.AnyInputType)
                return Support.No($"{DTypes.Name(tt.ElemType)} tensors have no WGSL type ({Kind} computes in 32-bit f32/i32/u32)");
            else if (t is { Kind: not TypeKind.Tensor })
                return Support.No($"{t.Kind} values are not supported on {Kind} (tensors only)");
        string? why = op.Support?.Invoke(ctx, inputTypes);
        return why is null ? Support.Yes : Support.No(why);
    }

    public IKernel Prepare(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        var s = Supports(node, ctx, inputTypes);
        if (!s.IsSupported) throw new UnsupportedException(s.Reason!);
        return new GpuKernel(node, GpuOps.Find(node.Domain, node.OpType)!);
    }

    /// <summary>Supports/Prepare look at element types and ranks only; every kernel reads shapes when it runs.</summary>
    public bool KernelsServeAnyShape => true;

    public Value?[] Run(IKernel kernel, NodeContext ctx, Value?[] inputs)
    {
        DrainDeadUploads();
        var k = (GpuKernel)kernel;
        var ins = new GpuTensor?[inputs.Length];
        for (int i = 0; i < inputs.Length; i++)
            ins[i] = inputs[i] switch
            {
                null => null,
                GpuTensor g when g.Platform == this => g,
                var v => throw new TapmlException($"input {i} is {v.Describe()}, not a tensor on this {Kind} device"),
            };
        Device.Context = k.Label;
        string outerOp = _profileOp;
        if (_profiling) _profileOp = k.Node.OpType;
        if (_depth++ == 0) _noted = _launched = false;
        try
        {
            if (OnHost(k, ctx, ins) is { } hostOuts) return hostOuts;
            var outs = RunOp(k.Op, ctx, ins);
            Shadow(k, ctx, ins, outs);
            return outs;
        }
        finally
        {
            Device.Context = ""; _profileOp = outerOp;
            if (--_depth == 0 && _launched && Options.Prefetch)
            {
                if (_noted) _sinceWeights.Clear();
                else if (_sinceWeights.Count < 8) _sinceWeights.Add(k.Node);
            }
        }
    }

    // ---- weights prefetched into the GPU's cache (prefetch=on) -------------------------------------------------

    int _depth;
    bool _noted, _launched;
    readonly List<Node> _sinceWeights = [];
    readonly ConditionalWeakTable<Node, GpuTensor> _nextWeights = new();
    GpuTensor? _prefetchSink;

    /// <summary>Weights at most this large are prefetched (a fraction of a datacenter GPU's L2: the 4-bit o_proj of an
    /// 8B model is 9.4 MB, f32 67 MB).</summary>
    internal const long PrefetchMaxBytes = 24L << 20;

    /// <summary>Notes that the node running now (a graph's node, or one a caller runs alone, as generation's greedy
    /// ArgMax) reads the weights <paramref name="w"/> (its first product's, if it has several): the nodes that dispatched
    /// kernels since the last one that read weights (views and host-run nodes do not count; an attention, or a step's
    /// ArgMax and embedding Gather) may prefetch them next time (<see cref="PrefetchFor"/>).</summary>
    internal void NoteWeights(GpuTensor w)
    {
        if (!Options.Prefetch || _noted) return;
        _noted = true;
        if (w.StorageBytes > PrefetchMaxBytes) return;
        foreach (var n in _sinceWeights) _nextWeights.AddOrUpdate(n, w);
    }

    /// <summary>With <c>prefetch=on</c>, the weights the node that ran after <paramref name="n"/> read last time (while
    /// they are alive), which a light kernel of <paramref name="n"/> may read into the cache with idle workgroups; and
    /// the buffer their loads are folded into.</summary>
    internal (GpuTensor Weights, GpuTensor Sink)? PrefetchFor(Node n)
    {
        if (!Options.Prefetch || !_nextWeights.TryGetValue(n, out var w)) return null;
        if (w.Freed || w.Buffer.Handle == 0) { _nextWeights.Remove(n); return null; }
        PrefetchedBytes += (long)w.StorageBytes;
        if (_prefetchSink is null)
        {
            var e = Empty(DType.UInt32, [PrefetchSinkWords]);
            _prefetchSink = new GpuTensor(this, e.DType, e.Shape, e.Buffer, e.Storage) { Pinned = true };
        }
        return (w, _prefetchSink);
    }

    /// <summary>Weight bytes kernels were asked to prefetch (<c>prefetch=on</c>) so far.</summary>
    public long PrefetchedBytes { get; private set; }

    /// <summary>u32 slots of the prefetch sink (a prefetching thread writes slot i modulo this).</summary>
    internal const int PrefetchSinkWords = 1 << 16;

    /// <summary>Runs <paramref name="op"/>'s kernel; inputs with a row capacity (KV caches appended in place) are first
    /// copied contiguous unless the kernel reads strides (<see cref="GpuOp.TakesStrided"/>).</summary>
    internal Value?[] RunOp(GpuOp op, NodeContext ctx, GpuTensor?[] ins)
    {
        List<GpuTensor>? temps = null;
        if (op.TakesStrided?.Invoke(ctx) != true)
            for (int i = 0; i < ins.Length; i++)
                if (ins[i] is { IsStrided: true } s)
                {
                    if (temps is null) { temps = new(); ins = (GpuTensor?[])ins.Clone(); }
                    ins[i] = Contiguous(s);
                    temps.Add(ins[i]!);
                }
        var outs = op.Run(this, ctx, ins);
        if (temps is not null)
            foreach (var t in temps) if (Array.IndexOf(outs, t) < 0) Free(t);
        return outs;
    }

    /// <summary>A contiguous copy of a tensor with a row capacity.</summary>
    internal GpuTensor Contiguous(GpuTensor t)
    {
        var y = Empty(t.DType, t.Shape);
        DataMovement.Copy(this, t, y, t.Shape, t.Strides, 0, ShapeUtil.Strides(t.Shape), 0, "Contiguous");
        return y;
    }

    /// <summary>What a generated kernel's WGSL depends on: a family name, a variant string (storages, ranks, flags),
    /// and for kernels whose text comes from node attributes (element-wise expressions) the node itself.</summary>
    public readonly record struct KernelKey(string Family, string Variant, Node? Node = null);

    sealed class GpuKernel(Node node, GpuOp op) : IKernel
    {
        public Node Node { get; } = node;
        public GpuOp Op { get; } = op;
        public string Label { get; } = $"node '{node.Name}' ({node.OpType})";
        /// <summary>The cpu kernel computing host shadows of this node's small integer outputs (made on first need).</summary>
        public IKernel? HostKernel;
        /// <summary>An element-wise fused region: on the host (<see cref="OnHost"/>) its body runs node by node, these
        /// the cpu kernels of its nodes.</summary>
        public IKernel?[]? HostBody = ElementwiseRegion(node) ? new IKernel?[node.Attributes["body"].G!.Nodes.Count] : null;
        // NOTE: a node with a body (If/Loop/Scan) is never re-run on the host for shadows: its body would run twice. An
        // element-wise region has float outputs only, which get no shadow.
        public bool NoShadow = node.Subgraphs.Any() && !ElementwiseRegion(node);

        static bool ElementwiseRegion(Node n) => n.Domain == Fusion.Domain && n.OpType == Fusion.OpType && n.Attributes.GetValueOrDefault("kind")?.Str == "elementwise";
        /// <summary>Host results in a row too large to upload as a deferred value (<see cref="OnHost"/>).</summary>
        public int TooLarge;
    }

    // ---- host shadows of shape values ------------------------------------------------------------------

    /// <summary>Shape-like values (at most this many elements) get a host shadow when every input has one.</summary>
    const int ShadowMaxElements = 64;
    /// <summary>Host-computed results (<see cref="OnHost"/>; inputs at most <see cref="ShadowMaxElements"/>) up to this
    /// many elements are uploaded as deferred values; larger ones run the node's kernel.</summary>
    const int HostResultMaxElements = 4096;
    readonly Cpu.CpuPlatform _host = new();

    /// <summary>Shape arithmetic (Shape → Gather → Add → Range, Concat of dims …) also runs on the host when all its
    /// inputs are known there, so a later Range/Reshape/Expand reads the value without a GPU readback (which would
    /// stall the queue). The GPU kernel still ran and its buffer is what <see cref="Download"/> returns: a wrong
    /// WGSL kernel still shows in conformance and replay. Only sizes and indices are read from shadows.</summary>
    void Shadow(GpuKernel k, NodeContext ctx, GpuTensor?[] ins, Value?[] outs)
    {
        foreach (var o in outs)
            if (o is GpuTensor g && (g.Length > ShadowMaxElements || g.Storage == GpuStorage.F32 || g.Storage == GpuStorage.F16x2)) return;
        if (RunOnHost(k, ctx, ins) is not { } r) return;
        for (int i = 0; i < outs.Length && i < r.Length; i++)
            if (outs[i] is GpuTensor g && r[i] is Tensor t && ShapeUtil.SameShape(t.Shape, g.Shape) && t.DType == g.DType) g.Shadow = t;
    }

    /// <summary>Runs the node on the cpu reference when every input is small (at most <paramref name="maxInput"/>
    /// elements) and known on the host (else null). A node the cpu cannot run this way is not tried again.</summary>
    Value?[]? RunOnHost(GpuKernel k, NodeContext ctx, GpuTensor?[] ins, int maxInput = ShadowMaxElements)
    {
        if (k.NoShadow) return null;
        var host = new Value?[ins.Length];
        for (int i = 0; i < ins.Length; i++)
        {
            if (ins[i] is not { } t) continue;
            if (t.Length > maxInput || HostValue(t, maxInput) is not { } h) return null;
            host[i] = h;
        }
        try
        {
            if (k.HostBody is { } kernels) return RunBodyOnHost(kernels, ctx, host);
            if (k.HostKernel is null)
            {
                var types = host.Select(v => v is Tensor t ? TypeRef.TensorOf(t.DType, t.Shape) : null).ToArray();
                if (!_host.Supports(k.Node, ctx, types).IsSupported) { k.NoShadow = true; return null; }
                k.HostKernel = _host.Prepare(k.Node, ctx, types);
            }
            return _host.Run(k.HostKernel, ctx, host);
        }
        catch (TapmlException) { k.NoShadow = true; return null; }
    }

    /// <summary>Shape arithmetic on the host: a node whose inputs are all known there (small), at least one of
    /// them derived from a Shape/Size (<see cref="GpuTensor.FromShape"/>), runs on the cpu reference and its outputs
    /// become deferred uploads (a GPU buffer only if a kernel binds them), as ONNX Runtime keeps shape subgraphs on
    /// the CPU. A decode step's Shape → Gather → Add → Range → mask chain then costs no dispatch and no readback.
    /// Values fed from outside (graph inputs, initializers) never start such a chain, so conformance and replay of
    /// one node always run its WGSL kernel.</summary>
    Value?[]? OnHost(GpuKernel k, NodeContext ctx, GpuTensor?[] ins)
    {
        if (k.Node.OpType is "Shape" or "Size" || !ins.Any(t => t is { FromShape: true })) return null;
        if (RunOnHost(k, ctx, ins, HostResultMaxElements) is not { } r) return null;
        var outs = new Value?[r.Length];
        for (int i = 0; i < r.Length; i++)
        {
            if (r[i] is not Tensor t) { outs[i] = r[i]; continue; }
            // A result of no WGSL type: this node runs its kernel from now on. One too large to upload (a prompt's mask
            // [P, P]) runs the kernel this time; twice in a row, from now on (a decode step's mask [1, P + t] stays here).
            if (Wgsl.StorageOf(t.DType) is null) { k.NoShadow = true; return null; }
            if (t.Length > HostResultMaxElements) { if (++k.TooLarge >= 2) k.NoShadow = true; return null; }
            outs[i] = Deferred(t);
        }
        k.TooLarge = 0;
        return outs;
    }

    /// <summary>The output of Shape/Size: metadata, uploaded only if a kernel binds it.</summary>
    public GpuTensor ShapeValue(Tensor t) => Deferred(t);

    /// <summary>A small value the host made (a Loop's iteration number and cond): its host copy serves shape reads
    /// and conditions, its buffer is made when a kernel first binds it. Unlike <see cref="ShapeValue"/> it starts no
    /// host-computed chain: the kernels that read it still run.</summary>
    public GpuTensor HostKnown(Tensor t)
    {
        var g = UploadNew(t);
        g.Buffer.Pooled = true;
        return new GpuTensor(this, g.DType, g.Shape, g.Buffer, g.Storage) { HostCopy = t, Saturated = g.Saturated };
    }

    /// <summary>A small host-computed value as a GPU tensor whose buffer is made when a kernel first binds it.</summary>
    GpuTensor Deferred(Tensor t)
    {
        var g = UploadNew(t);
        g.Buffer.Pooled = true;
        return new GpuTensor(this, g.DType, g.Shape, g.Buffer, g.Storage) { HostCopy = t, Saturated = g.Saturated, FromShape = true };
    }

    /// <summary>The value of <paramref name="t"/> as the host knows it without a readback (upload source or shadow).</summary>
    internal static Tensor? HostValue(GpuTensor t, int maxSource = ShadowMaxElements) => t.HostCopy ?? t.Shadow ?? (t.Source is { } s && t.Length <= maxSource ? s : null);

    /// <summary>An element-wise region's body on the cpu reference, node by node (<paramref name="kernels"/>: its nodes'
    /// cpu kernels, made on first need).</summary>
    Value?[] RunBodyOnHost(IKernel?[] kernels, NodeContext ctx, Value?[] ins) =>
        Kernels.Fused.EachNode(ctx, ctx.Graph("body"), (int)ctx.Int("opset", ctx.Opset), ins, (n, nctx, args) =>
            _host.Run(kernels[n] ??= _host.Prepare(nctx.Node, nctx, args.Select(v => v is Tensor t ? TypeRef.TensorOf(t.DType, t.Shape) : null).ToArray()), nctx, args));

    /// <summary>A host input (<see cref="IHostInputs"/>): uploaded when a kernel binds it; nodes it starts may run on the
    /// host. With <c>host-inputs=off</c>, the tensor itself (a plain feed).</summary>
    public Value HostInput(Tensor t) => Options.HostInputs ? Deferred(t) : t;

    // ---- values ----------------------------------------------------------------------------------------

    public bool IsResident(Value v) => v is GpuTensor g && g.Platform == this;

    /// <summary>Checks a tensor of <paramref name="bytes"/> against the binding limit (every kernel binds whole tensors).</summary>
    internal void CheckBinding(long bytes, DType dtype, long[] shape, string what)
    {
        if (bytes > Device.Limits.MaxStorageBindingBytes)
            throw new UnsupportedException($"{Kind}: {what} {DTypes.Name(dtype)}[{string.Join(",", shape)}] takes {DawnDevice.Bytes(bytes)} on the GPU, " +
                $"over this device's maxStorageBufferBindingSize ({DawnDevice.Bytes(Device.Limits.MaxStorageBindingBytes)}); it cannot be bound to a kernel");
    }

    /// <summary>A new uninitialized tensor (buffer from the pool).</summary>
    public GpuTensor Empty(DType dtype, long[] shape)
    {
        var storage = Wgsl.StorageOf(dtype) ?? throw new UnsupportedException($"{DTypes.Name(dtype)} tensors have no WGSL type");
        long n = ShapeUtil.Size(shape);
        CheckBinding(n * 4, dtype, shape, "output");
        var h = Device.Allocate((ulong)Math.Max(4, n * 4), out var size);
        return new GpuTensor(this, dtype, shape, new GpuBuffer(h, size, pooled: true), storage);
    }

    /// <summary>A new f32 tensor of rank ≥ 2 with room for more rows along axis −2 than <paramref name="shape"/> holds (a KV
    /// cache to append to in place): about twice its rows (at least 64), and whatever more the pool's size bucket
    /// gives, within the binding limit. Regrowing by doubling keeps the copies a long generation makes to one per
    /// doubling.</summary>
    internal GpuTensor WithCapacity(long[] shape)
    {
        long rows = shape[^2], rowElems = ShapeUtil.Size(shape.AsSpan(0, shape.Length - 2)) * shape[^1];
        if (rowElems == 0) return Empty(DType.Float32, shape);
        long maxRows = Device.Limits.MaxStorageBindingBytes / (rowElems * 4);
        long want = Math.Min(Math.Max(64, rows * 2), maxRows);
        if (want <= rows) return Empty(DType.Float32, shape);
        var h = Device.Allocate((ulong)(want * rowElems * 4), out var size);
        long cap = Math.Min((long)size / (rowElems * 4), maxRows);
        return new GpuTensor(this, DType.Float32, shape, new GpuBuffer(h, size, pooled: true) { KvRows = rows }, GpuStorage.F32) { Capacity = cap };
    }

    /// <summary>A view of <paramref name="t"/>'s capacity buffer <paramref name="rows"/> rows long along axis −2 (rows
    /// within its capacity); the buffer's <see cref="GpuBuffer.KvRows"/> becomes <paramref name="rows"/>.</summary>
    internal GpuTensor Extended(GpuTensor t, long rows)
    {
        var shape = (long[])t.Shape.Clone();
        shape[^2] = rows;
        t.Buffer.Refs++;
        t.Buffer.KvRows = rows;
        return new GpuTensor(this, t.DType, shape, t.Buffer, t.Storage) { Capacity = t.Capacity };
    }

    /// <summary>An uploaded f16 weight (packed two per u32) seen as f32 without a copy or a dispatch: Cast(to = float) of
    /// a <c>--weights f16</c> weight. Every kernel reads its elements through the storage helpers (which widen them) and
    /// the matrix kernels read the packed buffer directly (<see cref="GpuTensor.Source"/> is the f16 weight), so the f32
    /// values never take GPU memory. Null when <paramref name="x"/> is not such a weight.</summary>
    public GpuTensor? HalfWeightAsF32(GpuTensor x)
    {
        // NOTE: weights only (matrices of at least 1024 elements): small values may be read on the host as shape data.
        if (x.Storage != GpuStorage.F16x2 || x.DType != DType.Float16 || x.Source is not { Rank: 2 } src || src.Length < 1024 || x.IsStrided) return null;
        x.Buffer.Refs++;
        return new GpuTensor(this, DType.Float32, x.Shape, x.Buffer, GpuStorage.F16x2) { Source = src, ByteOffset = x.ByteOffset };
    }

    /// <summary>A tensor sharing <paramref name="t"/>'s buffer with another shape (Reshape and friends).</summary>
    public GpuTensor Alias(GpuTensor t, long[] shape)
    {
        if (t.IsStrided) throw new TapmlException($"webgpu: a view of {t.Describe()} with a row capacity (internal error: kernels get such tensors contiguous)");
        t.Buffer.Refs++;
        return new GpuTensor(this, t.DType, shape, t.Buffer, t.Storage) { HostCopy = t.HostCopy?.Reshape(shape), Shadow = t.Shadow?.Reshape(shape), Saturated = t.Saturated, FromShape = t.FromShape };
    }

    sealed class UploadEntry(WebGpuPlatform owner, GpuTensor t)
    {
        public readonly GpuTensor Tensor = t;
        ~UploadEntry() => owner._deadUploads.Enqueue(Tensor.Buffer);
    }

    const ulong SmallUploadBytes = 64 << 10;

    void DrainDeadUploads()
    {
        while (_deadUploads.TryDequeue(out var b))
        {
            if (--b.Refs > 0 || b.Handle == 0) continue;
            // NOTE: a small upload's buffer (a decode step's feeds: positions, lengths) goes back to the pool instead of
            // being destroyed: the next step's upload takes it again, so its bind groups stay cached and no submit is
            // forced to destroy a buffer the batch binds.
            if (b.Size <= SmallUploadBytes && b.Size == DawnDevice.Bucket(b.Size)) Device.Release(b.Handle, b.Size);
            else Device.Destroy(b.Handle);
            b.Handle = 0;   // a reference still held (a prefetch plan's) sees the buffer gone
        }
    }

    Value IPlatform.Upload(Value host) => host switch
    {
        Tensor t => Upload(t),
        GpuTensor g when g.Platform == this => g,
        _ => throw new UnsupportedException($"{host.Describe()} cannot live on {Kind} (tensors only)"),
    };

    /// <summary>Copies a host tensor to the GPU once per tensor object (weights, feeds); f16 stays packed.</summary>
    public GpuTensor Upload(Tensor t)
    {
        if (_uploads.TryGetValue(t, out var u)) return u.Tensor;
        DrainDeadUploads();
        var g = UploadNew(t);
        _uploads.AddOrUpdate(t, new UploadEntry(this, g));
        return g;
    }

    GpuTensor UploadNew(Tensor t)
    {
        var storage = t.DType == DType.Float16 ? GpuStorage.F16x2
            : Wgsl.StorageOf(t.DType) ?? throw new UnsupportedException($"{DTypes.Name(t.DType)} tensors have no WGSL type (webgpu computes in 32-bit f32/i32/u32)");
        long n = t.Length;
        bool saturated = false;
        Array bytes;
        switch (t.DType)
        {
            // NOTE: the array itself is the payload (no copy): a tensor's elements are not changed after it is made.
            case DType.Float32: bytes = t.Data; break;
            case DType.Float16:
                {
                    var h = (Half[])t.Data;
                    var w = new ushort[(n + 1) / 2 * 2];
                    for (long i = 0; i < n; i++) w[i] = BitConverter.HalfToUInt16Bits(h[i]);
                    bytes = w;
                    break;
                }
            case DType.BFloat16:
                {
                    var f = new float[n];
                    var b = (BFloat16[])t.Data;
                    for (long i = 0; i < n; i++) f[i] = (float)b[i];
                    bytes = f;
                    break;
                }
            case DType.Int64:
                {
                    var src = (long[])t.Data;
                    var w = new int[n];
                    for (long i = 0; i < n; i++)
                    {
                        long v = src[i];
                        if (v is > int.MaxValue or < int.MinValue) { saturated = true; v = Math.Clamp(v, int.MinValue, int.MaxValue); }
                        w[i] = (int)v;
                    }
                    bytes = w;
                    break;
                }
            default:
                {
                    // Narrow and 32-bit integers, bool: widen to 32 bits.
                    var w = new uint[n];
                    // NOTE: by DType, not by array type: the CLR lets a byte[] match `sbyte[]` (and the reverse), which
                    // would sign-extend uint8 values of 128 and above.
                    switch (t.Data)
                    {
                        case int[] a: for (long i = 0; i < n; i++) w[i] = (uint)a[i]; break;
                        case uint[] a: for (long i = 0; i < n; i++) w[i] = a[i]; break;
                        case Array a when t.DType is DType.Int16: { var v = (short[])a; for (long i = 0; i < n; i++) w[i] = (uint)v[i]; break; }
                        case Array a when t.DType is DType.UInt16: { var v = (ushort[])a; for (long i = 0; i < n; i++) w[i] = v[i]; break; }
                        case Array a when t.DType is DType.Int8: { var v = (sbyte[])a; for (long i = 0; i < n; i++) w[i] = (uint)v[i]; break; }
                        case Array a when t.DType is DType.UInt8: { var v = (byte[])a; for (long i = 0; i < n; i++) w[i] = v[i]; break; }
                        case bool[] a: for (long i = 0; i < n; i++) w[i] = a[i] ? 1u : 0u; break;
                        default: throw new UnsupportedException($"{DTypes.Name(t.DType)} tensors have no WGSL type");
                    }
                    bytes = w;
                    break;
                }
        }
        long length = bytes.LongLength * (t.DType == DType.Float16 ? 2 : 4);
        CheckBinding(length, t.DType, t.Shape, "tensor");
        long padded = Math.Max(16, (length + 15) & ~15L);
        // Small integer tensors keep a host copy: shape-like inputs (Reshape, Slice, Range …) read it, no readback.
        var host = t.DType is DType.Int64 or DType.Int32 && n <= 64 ? t : null;
        var buffer = new GpuBuffer(0, (ulong)padded, pooled: false) { Pending = bytes };
        return new GpuTensor(this, t.DType, t.Shape, buffer, storage) { HostCopy = host, Saturated = saturated, Pinned = true, Source = t };
    }

    /// <summary>Bytes host uploads have written to GPU buffers so far (weights, feeds, host-made values).</summary>
    public long UploadedBytes { get; private set; }

    const long WriteChunkBytes = 256L << 20;

    /// <summary>Creates and fills a pending upload's buffer (first time a kernel binds it or it is read).</summary>
    internal void Materialize(GpuBuffer b)
    {
        if (b.Pending is not { } data) return;
        long have = Math.Min((long)b.Size, data.LongLength * Marshal.SizeOf(data.GetType().GetElementType()!));
        UploadedBytes += (long)b.Size;
        var handle = Device.Allocate(b.Size, out var size, forWrite: true);
        // NOTE: in pieces of at most WriteChunkBytes: a binding may be over 2 GiB (4 GiB on an H100 through Dawn; an f32
        // lm_head of Llama-3-8B is 2.1 GB), which one span cannot hold.
        ref byte start = ref MemoryMarshal.GetArrayDataReference(data);
        for (long at = 0; at < have; at += WriteChunkBytes)
            Device.Write(handle, (ulong)at, MemoryMarshal.CreateReadOnlySpan(ref Unsafe.Add(ref start, (nint)at), (int)Math.Min(WriteChunkBytes, have - at)));
        if ((ulong)have < b.Size) Device.Write(handle, (ulong)have, new byte[b.Size - (ulong)have]);
        b.Handle = handle;
        b.Size = size;
        b.Pending = null;
    }

    /// <summary>Uploads a tensor made for one run (not cached: freed like any kernel output).</summary>
    public GpuTensor UploadTemporary(Tensor t)
    {
        var g = UploadNew(t);
        var b = g.Buffer;
        Materialize(b);
        b.Pooled = true;
        return new GpuTensor(this, g.DType, g.Shape, b, g.Storage) { HostCopy = g.HostCopy, Saturated = g.Saturated };
    }

    readonly ConditionalWeakTable<Tensor, UploadEntry> _transposed = new();

    /// <summary>A 2-D weight [K,N] as [N,K] (transposed on the host once, uploaded in its storage format): the
    /// matrix-vector kernel reads each output's weights contiguously.</summary>
    public GpuTensor TransposedWeight(GpuTensor b)
    {
        var src = b.Source ?? throw new TapmlException("webgpu: TransposedWeight needs an uploaded host tensor");
        if (_transposed.TryGetValue(src, out var u)) return u.Tensor;
        long k = src.Shape[0], n = src.Shape[1];
        var t = new Tensor(src.DType, [n, k], src.DType switch
        {
            DType.Float32 => TransposedData<float>(src),
            DType.Float16 => TransposedData<Half>(src),
            DType.BFloat16 => TransposedData<BFloat16>(src),
            _ => throw new UnsupportedException($"MatMul weight of {DTypes.Name(src.DType)} on webgpu"),
        });
        var g = UploadNew(t);
        _transposed.AddOrUpdate(src, new UploadEntry(this, g));
        return g;
    }

    sealed class ConcatEntry(WebGpuPlatform owner, Tensor[] parts, GpuTensor t)
    {
        public readonly Tensor[] Parts = parts;
        public readonly GpuTensor Tensor = t;
        ~ConcatEntry() => owner._deadUploads.Enqueue(Tensor.Buffer);
    }

    readonly ConditionalWeakTable<Tensor, ConcatEntry> _concatenated = new();

    /// <summary>Host tensors uploaded once as one buffer, <paramref name="make"/> laying them out (cached on the
    /// first part while the same parts ask again): several weights or bias vectors one kernel binds as one.</summary>
    public GpuTensor Concatenated(Tensor[] parts, Func<Tensor> make)
    {
        if (_concatenated.TryGetValue(parts[0], out var e) && e.Parts.Length == parts.Length && e.Parts.Zip(parts).All(p => ReferenceEquals(p.First, p.Second)))
            return e.Tensor;
        var g = UploadNew(make());
        _concatenated.AddOrUpdate(parts[0], new ConcatEntry(this, parts, g));
        return g;
    }

    /// <summary>2-D weights [K,Nᵢ] (one dtype) as one [ΣNᵢ, K] tensor: each transposed, stacked by rows. Each weight's
    /// rows also serve as its <see cref="TransposedWeight"/> (a view at its offset, where that offset meets the binding
    /// alignment), so a product run alone (prefill) reads the same buffer: the weights are on the GPU once.</summary>
    public GpuTensor TransposedWeights(Tensor[] ws)
    {
        var stacked = Stacked(ws);
        ulong align = (ulong)Math.Max(4, Device.Limits.MinStorageOffsetAlignment);
        ulong at = 0;
        foreach (var w in ws)
        {
            long k = w.Shape[0], n = w.Shape[1];
            ulong bytes = stacked.Storage == GpuStorage.F16x2 ? (ulong)(n * k) * 2 : (ulong)(n * k) * 4;
            bool aligned = at % align == 0 && (stacked.Storage != GpuStorage.F16x2 || n * k % 2 == 0);
            if (aligned && !_transposed.TryGetValue(w, out _))
            {
                stacked.Buffer.Refs++;
                var view = new GpuTensor(this, stacked.DType, [n, k], stacked.Buffer, stacked.Storage) { ByteOffset = at, Pinned = true };
                _transposed.AddOrUpdate(w, new UploadEntry(this, view));
            }
            at += bytes;
        }
        return stacked;
    }

    GpuTensor Stacked(Tensor[] ws) => Concatenated(ws, () =>
    {
        long k = ws[0].Shape[0], rows = ws.Sum(w => w.Shape[1]);
        Array Stack<T>() where T : unmanaged
        {
            var all = new T[rows * k];
            long at = 0;
            foreach (var w in ws)
            {
                TransposedInto(w, all, at);
                at += w.Length;
            }
            return all;
        }
        Array data = ws[0].DType switch
        {
            DType.Float32 => Stack<float>(),
            DType.Float16 => Stack<Half>(),
            DType.BFloat16 => Stack<BFloat16>(),
            _ => throw new UnsupportedException($"MatMul weight of {DTypes.Name(ws[0].DType)} on webgpu"),
        };
        return new Tensor(ws[0].DType, [rows, k], data);
    });

    public Value Download(Value v) => v switch
    {
        GpuTensor g => Download(g),
        Tensor t => t,
        _ => throw new TapmlException($"webgpu: cannot download {v.Describe()}"),
    };

    public Tensor Download(GpuTensor g)
    {
        if (g.Freed) throw new TapmlException($"webgpu: {g.Describe()} was read after it was freed (internal error)");
        if (g.HostCopy is { } hc) return hc;
        if (g.Source is { } src && g.Buffer.Pending is not null) return src.DType == g.DType ? src : Cpu.TensorConvert.To(src, g.DType);
        if (g.IsStrided) return DownloadRows(g);
        Materialize(g.Buffer);
        var r = Tensor.Uninitialized(g.DType, (long[])g.Shape.Clone());
        // 32-bit values whose host type has the storage's layout (f32, i32, u32) are read straight into the result
        // (a decode step reads 32000 logits each step: no second large array).
        Span<byte> direct = g.Storage == GpuStorage.F16x2 ? default : r.Data switch
        {
            float[] a => MemoryMarshal.AsBytes(a.AsSpan()),
            int[] a => MemoryMarshal.AsBytes(a.AsSpan()),
            uint[] a => MemoryMarshal.AsBytes(a.AsSpan()),
            _ => default,
        };
        if (!direct.IsEmpty) { Device.Read(g.Buffer.Handle, g.ByteOffset, direct); return r; }
        var bytes = new byte[g.StorageBytes];
        Device.Read(g.Buffer.Handle, g.ByteOffset, bytes);
        return Decode(g.Storage, bytes, r);
    }

    /// <summary>A tensor with a row capacity read whole (its allocated extent) and its rows gathered on the host: no
    /// dispatch, and at most twice the bytes.</summary>
    Tensor DownloadRows(GpuTensor g)
    {
        var all = new float[g.StorageBytes / 4];
        Device.Read(g.Buffer.Handle, g.ByteOffset, MemoryMarshal.AsBytes(all.AsSpan()));
        var r = Tensor.Uninitialized(g.DType, (long[])g.Shape.Clone());
        int rowLen = (int)g.Shape[^1], rows = (int)g.Shape[^2];
        long blocks = ShapeUtil.Size(g.Shape.AsSpan(0, g.Rank - 2));
        var dst = r.Span<float>();
        for (long b = 0; b < blocks; b++)
            all.AsSpan((int)(b * g.Capacity * rowLen), rows * rowLen).CopyTo(dst.Slice((int)(b * rows * rowLen), rows * rowLen));
        return r;
    }

    /// <summary>Starts a download and returns at once (<see cref="IPendingDownload.Wait"/> waits): the work recorded so
    /// far is submitted and the host goes on recording while the GPU runs it. The value may be freed after this call.</summary>
    public IPendingDownload BeginDownload(Value v)
    {
        if (v is not GpuTensor g || g.HostCopy is not null || g.IsStrided || g.StorageBytes == 0 || g.StorageBytes > 1UL << 20) return new CompletedDownload(Download(v));
        if (g.Freed) throw new TapmlException($"webgpu: {g.Describe()} was read after it was freed (internal error)");
        Materialize(g.Buffer);
        var read = Device.BeginRead(g.Buffer.Handle, g.ByteOffset, (int)g.StorageBytes);
        return new PendingGpuDownload(this, read, g.DType, (long[])g.Shape.Clone(), g.Storage, (int)g.StorageBytes);
    }

    sealed class PendingGpuDownload(WebGpuPlatform owner, GpuPendingRead read, DType dtype, long[] shape, GpuStorage storage, int bytes) : IPendingDownload
    {
        Value? _value;

        public Value Wait()
        {
            if (_value is not null) return _value;
            var data = new byte[bytes];
            owner.Device.EndRead(read, data);
            return _value = Decode(storage, data, Tensor.Uninitialized(dtype, shape));
        }
    }

    /// <summary>Fills host tensor <paramref name="r"/> from the buffer bytes of its <paramref name="storage"/>.</summary>
    static Tensor Decode(GpuStorage storage, ReadOnlySpan<byte> bytes, Tensor r)
    {
        long n = r.Length;
        switch (storage)
        {
            case GpuStorage.F16x2:
                {
                    var w = MemoryMarshal.Cast<byte, ushort>(bytes);
                    if (r.Data is float[] f)         // an f16 weight seen as f32 (HalfWeightAsF32)
                        for (long i = 0; i < n; i++) f[i] = (float)BitConverter.UInt16BitsToHalf(w[(int)i]);
                    else
                    {
                        var h = (Half[])r.Data;
                        for (long i = 0; i < n; i++) h[i] = BitConverter.UInt16BitsToHalf(w[(int)i]);
                    }
                    break;
                }
            case GpuStorage.F32:
                {
                    var f = MemoryMarshal.Cast<byte, float>(bytes);
                    switch (r.Data)
                    {
                        case float[] a: f[..(int)n].CopyTo(a); break;
                        case Half[] a: for (int i = 0; i < n; i++) a[i] = (Half)f[i]; break;
                        case BFloat16[] a: for (int i = 0; i < n; i++) a[i] = (BFloat16)f[i]; break;
                    }
                    break;
                }
            default:
                {
                    var w = MemoryMarshal.Cast<byte, int>(bytes);
                    switch (r.Data)
                    {
                        case long[] a: for (int i = 0; i < n; i++) a[i] = w[i]; break;
                        case int[] a: w[..(int)n].CopyTo(a); break;
                        case short[] a: for (int i = 0; i < n; i++) a[i] = (short)w[i]; break;
                        case sbyte[] a: for (int i = 0; i < n; i++) a[i] = (sbyte)w[i]; break;
                        case uint[] a: for (int i = 0; i < n; i++) a[i] = (uint)w[i]; break;
                        case ushort[] a: for (int i = 0; i < n; i++) a[i] = (ushort)w[i]; break;
                        case byte[] a: for (int i = 0; i < n; i++) a[i] = (byte)w[i]; break;
                        case bool[] a: for (int i = 0; i < n; i++) a[i] = w[i] != 0; break;
                    }
                    break;
                }
        }
        return r;
    }

    /// <summary>A small input's values for sizing decisions (Range bounds): host copy or shadow, else a readback.</summary>
    public Tensor HostOrDownload(GpuTensor t) => HostValue(t) ?? Download(t);

    /// <summary>Integer values of a shape-like input (host copy or shadow when there is one, else a readback).</summary>
    public long[] Ints(GpuTensor t)
    {
        var h = HostOrDownload(t);
        return h.Data switch
        {
            long[] a => a,
            int[] a => Array.ConvertAll(a, x => (long)x),
            _ => throw new TapmlException($"expected an integer tensor, got {t.Describe()}"),
        };
    }

    /// <summary>A 2-D [K,N] weight's elements as [N,K]. A weight that is a transposed view of a checkpoint matrix stored
    /// [N,K] in its own dtype (a Linear weight) is copied as stored: no transpose on the host, and nothing widened.</summary>
    static T[] TransposedData<T>(Tensor w) where T : unmanaged
    {
        var r = new T[w.Length];
        TransposedInto(w, r, 0);
        return r;
    }

    /// <summary>Weight [K, N] written transposed ([N, K], rows contiguous) into <paramref name="dst"/> from
    /// <paramref name="at"/>, read in place from a mapped checkpoint where it is stored in this type.</summary>
    static unsafe void TransposedInto<T>(Tensor w, T[] dst, long at) where T : unmanaged
    {
        long k = w.Shape[0], n = w.Shape[1];
        if (w.External is { Transposed: true } e && e.Stored == w.DType && e.Rows == n && e.Cols == k)
        {
            e.StoredRows<T>(0, checked((int)n)).CopyTo(dst.AsSpan(checked((int)at)));
            return;
        }
        var pin = default(GCHandle);
        T* src;
        if (w.External is { Transposed: false } x && x.Stored == w.DType && x.Rows == k && x.Cols == n) src = (T*)x.Address;
        else
        {
            pin = GCHandle.Alloc((T[])w.Data, GCHandleType.Pinned);
            src = (T*)pin.AddrOfPinnedObject();
        }
        try
        {
            fixed (T* d0 = dst)
            {
                T* d = d0 + at;
                // NOTE: blocked so both sides stay in cache, and blocks of K over the host's cores: a model's weights are
                // transposed once, before its first run (4.4 GB for four Llama-3-8B layers).
                const int B = 64;
                void Block(long kb)
                {
                    long k0 = kb * B, k1 = Math.Min(k, k0 + B);
                    for (long n0 = 0; n0 < n; n0 += B)
                        for (long kk = k0; kk < k1; kk++)
                            for (long nn = n0; nn < Math.Min(n, n0 + B); nn++)
                                d[nn * k + kk] = src[kk * n + nn];
                }
                long blocks = (k + B - 1) / B;
                if (k * n < 1 << 20) for (long kb = 0; kb < blocks; kb++) Block(kb);
                else Parallel.For(0L, blocks, Block);
            }
        }
        finally { if (pin.IsAllocated) pin.Free(); }
    }

    public void Free(Value v)
    {
        if (v is not GpuTensor g || g.Pinned || g.Freed) return;
        g.Freed = true;
        if (--g.Buffer.Refs > 0) return;
        if (g.Buffer.Handle == 0) { g.Buffer.Pending = null; return; }   // a deferred upload no kernel bound
        if (g.Buffer.Pooled) Device.Release(g.Buffer.Handle, g.Buffer.Size);
        else Device.Destroy(g.Buffer.Handle);
    }

    public void Synchronize() => Device.Synchronize();

    // ---- dispatch helpers used by the kernels ------------------------------------------------------------

    readonly Dictionary<KernelKey, GpuPipeline> _kernels = new();

    /// <summary>The pipeline of a generated kernel, looked up by <paramref name="key"/> before any WGSL is written:
    /// <paramref name="build"/> runs once per key (a decode step reruns ~700 nodes; regenerating and hashing their
    /// WGSL text each time was most of the host time). The key must name everything the text depends on.</summary>
    public GpuPipeline Kernel(in KernelKey key, Func<string> build, string label)
    {
        if (_kernels.TryGetValue(key, out var p)) return p;
        string code = build();
        if (DumpKernels is { } dir) DumpKernel(dir, label, code);
        p = Device.Pipeline(code, label);
        _kernels[key] = p;
        return p;
    }

    /// <summary>TAPML_DUMP_KERNELS=DIR: every kernel this process compiles is written there as WGSL (the text each
    /// dialect renders), one file a kernel, named by its label and a hash of its text.</summary>
    static readonly string? DumpKernels = Environment.GetEnvironmentVariable("TAPML_DUMP_KERNELS") is { Length: > 0 } d ? d : null;

    static void DumpKernel(string dir, string label, string code)
    {
        try
        {
            Directory.CreateDirectory(dir);
            string safe = string.Concat(label.Select(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' ? c : '_'));
            string hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(code)))[..8];
            File.WriteAllText(Path.Combine(dir, $"{safe}-{hash}.wgsl"), code);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new TapmlException($"TAPML_DUMP_KERNELS: cannot write kernels to '{dir}': {e.Message}");
        }
    }

    /// <summary>Compiles (cached) and records one dispatch over <paramref name="threads"/> element threads.</summary>
    public void Launch(string code, string label, GpuTensor[] bindings, Meta meta, long threads)
    {
        var (x, y) = Wgsl.Grid(threads, Workgroup, Device.Limits.MaxWorkgroupsPerDimension);
        LaunchGroups(code, label, bindings, meta, x, y);
    }

    /// <summary>Records one dispatch over <paramref name="threads"/> element threads of a keyed kernel.</summary>
    public void Launch(in KernelKey key, Func<string> build, string label, GpuTensor[] bindings, Meta meta, long threads)
    {
        var (x, y) = Wgsl.Grid(threads, Workgroup, Device.Limits.MaxWorkgroupsPerDimension);
        Record(Kernel(key, build, label), bindings, meta, x, y, 1);
    }

    /// <summary>Records one dispatch of <paramref name="gx"/>×<paramref name="gy"/> workgroups of a keyed kernel.</summary>
    public void LaunchGroups(in KernelKey key, Func<string> build, string label, GpuTensor[] bindings, Meta meta, uint gx, uint gy = 1, uint gz = 1) =>
        Record(Kernel(key, build, label), bindings, meta, gx, gy, gz);

    /// <summary>Records one dispatch of <paramref name="gx"/>×<paramref name="gy"/> workgroups of a compiled kernel.</summary>
    public void LaunchGroups(GpuPipeline p, GpuTensor[] bindings, Meta meta, uint gx, uint gy = 1, uint gz = 1) => Record(p, bindings, meta, gx, gy, gz);

    /// <summary>Records one dispatch of <paramref name="gx"/>×<paramref name="gy"/> workgroups.</summary>
    public void LaunchGroups(string code, string label, GpuTensor[] bindings, Meta meta, uint gx, uint gy = 1, uint gz = 1) =>
        Record(Device.Pipeline(code, label), bindings, meta, gx, gy, gz);

    void Record(GpuPipeline p, GpuTensor[] bindings, Meta meta, uint gx, uint gy, uint gz)
    {
        if (gx > Device.Limits.MaxWorkgroupsPerDimension || gy > Device.Limits.MaxWorkgroupsPerDimension || gz > Device.Limits.MaxWorkgroupsPerDimension)
            throw new UnsupportedException($"{Kind}: kernel {p.Label} needs {gx}×{gy}×{gz} workgroups, over maxComputeWorkgroupsPerDimension {Device.Limits.MaxWorkgroupsPerDimension}");
        Span<nint> handles = stackalloc nint[bindings.Length];
        Span<ulong> offsets = stackalloc ulong[bindings.Length];
        Span<ulong> sizes = stackalloc ulong[bindings.Length];
        ulong maxBinding = (ulong)Device.Limits.MaxStorageBindingBytes;
        for (int i = 0; i < bindings.Length; i++)
        {
            if (bindings[i].Buffer.Pending is not null) Materialize(bindings[i].Buffer);
            handles[i] = bindings[i].Buffer.Handle;
            offsets[i] = bindings[i].ByteOffset;
            // NOTE: the whole (pooled, bucket-sized) buffer is bound, not just the tensor's bytes: a KV cache one row
            // longer each step then keeps its buffer and its bind group until it outgrows the bucket (kernels bound
            // every access by the sizes in their metadata, none reads arrayLength). A view binds from its offset on.
            ulong whole = bindings[i].Buffer.Size - offsets[i];
            sizes[i] = whole >= bindings[i].StorageBytes && whole <= maxBinding ? whole : Math.Max(4, bindings[i].StorageBytes);
        }
        Device.Dispatch(Scoped(p), handles, offsets, sizes, meta.Words, gx, gy, gz);
        _launched = true;
    }

    public void Dispose()
    {
        Device.Dispose();
    }
}
