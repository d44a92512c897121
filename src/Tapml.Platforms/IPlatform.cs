using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms;

/// <summary>Limits a platform enforces; checked before allocation and reported, never crashed into.
/// All sizes in bytes; 0 = no limit known.</summary>
public sealed record PlatformLimits(long MaxBufferBytes = 0, long MaxBindingBytes = 0, int MaxWorkgroupSize = 0, long MemoryBytes = 0)
{
    public static PlatformLimits Host => new(Tensor.MaxBytes, Tensor.MaxBytes, 0, GC.GetGCMemoryInfo().TotalAvailableMemoryBytes);
}

/// <summary>A platform's verdict on a node: supported, or not with the reason (a skip, never a failure).</summary>
public readonly record struct Support(bool IsSupported, string? Reason)
{
    public static readonly Support Yes = new(true, null);
    public static Support No(string reason) => new(false, reason);
}

/// <summary>A node prepared for one platform (compiled and cached by signature where the platform compiles).</summary>
public interface IKernel
{
    Node Node { get; }
}

/// <summary>Where operators run. A platform never falls back silently: what it cannot run it says so in
/// <see cref="Supports"/> or by throwing <see cref="UnsupportedException"/>.</summary>
public interface IPlatform : IDisposable
{
    /// <summary>Platform spec as the user writes it (cpu, onnxruntime, faulty:cpu?…).</summary>
    string Name { get; }
    /// <summary>One line: device/adapter/library version.</summary>
    string Description { get; }
    PlatformLimits Limits { get; }

    Support Supports(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes);
    IKernel Prepare(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes);
    /// <summary>Runs a prepared kernel. Inputs are values resident on this platform (see <see cref="Upload"/>);
    /// returns one value per node output (null for an omitted optional output).</summary>
    Value?[] Run(IKernel kernel, NodeContext ctx, Value?[] inputs);

    /// <summary>True when what <see cref="Prepare"/> returns depends only on the inputs' element types and ranks
    /// (the kernel reads shapes when it runs): the executor then reuses a node's kernel as its inputs' sizes change
    /// (a decode step's KV-cache length), instead of preparing one per shape.</summary>
    bool KernelsServeAnyShape => false;

    /// <summary>True when the platform runs fused graphs (tapml.Fused nodes: projections, attention, element-wise chains)
    /// faster than plain ones, so <c>generate</c> and the benchmarks fuse by default (each dispatch costs more than a
    /// small kernel's work on a GPU).</summary>
    bool PrefersFusedGraphs => false;

    /// <summary>Whether a fused graph for this platform takes each layer's KV append into its q/k/v projections region
    /// (<c>projections_kv</c>) rather than into its attention region (<c>kv_attention</c>): <c>Fusion.Fuse</c>'s
    /// <c>kvInProjections</c>.</summary>
    bool KvAppendInProjections => true;

    /// <summary>Whether <paramref name="v"/> already lives on this platform.</summary>
    bool IsResident(Value v);
    /// <summary>Copies a host value to the platform.</summary>
    Value Upload(Value host);
    /// <summary>Copies a platform value to the host.</summary>
    Value Download(Value v);
    void Free(Value v);
    void Synchronize();
}

/// <summary>A platform that can say more about where it runs than its one-line <see cref="IPlatform.Description"/>:
/// adapter, driver/backend, features, limits, library path, one fact per line (<c>tapml platforms</c>, reports).</summary>
public interface IPlatformDetails
{
    IEnumerable<string> Details();
}

/// <summary>A device platform that can take a small host value as made on the host (a decode step's position): a node
/// whose inputs such values start and small constants finish runs on the host and its results upload when a kernel
/// binds them (the rotary tables of a step cost no dispatch). Only callers that know the value is not under test pass
/// it this way (generation); a plain feed always runs the kernels that read it.</summary>
public interface IHostInputs
{
    /// <summary>The device value for <paramref name="t"/>, its host copy what host-run nodes read.</summary>
    Value HostInput(Tensor t);
}

/// <summary>A device platform that can start a download and let the host go on: generation records the next decode
/// step while the GPU still runs the one whose token it waits for.</summary>
public interface IAsyncDownload
{
    /// <summary>Starts copying <paramref name="v"/> to the host; the value may be freed right after.</summary>
    IPendingDownload BeginDownload(Value v);
}

/// <summary>A download <see cref="IAsyncDownload.BeginDownload"/> started.</summary>
public interface IPendingDownload
{
    /// <summary>Waits for the copy and returns the host value (the same one on a second call).</summary>
    Value Wait();
}

/// <summary>A download that finished when it began (a host value, or one read back at once).</summary>
public sealed class CompletedDownload(Value v) : IPendingDownload
{
    public Value Wait() => v;
}

/// <summary>A platform that can also run a whole model at once (ONNX Runtime, a remote server).</summary>
public interface IGraphPlatform : IPlatform
{
    Dictionary<string, Value> RunGraph(Model model, IReadOnlyDictionary<string, Value> feeds);
}

/// <summary>A platform whose every call costs far more than a small kernel does (a server across a connection): the
/// executor hands it each run of two or more consecutive nodes placed on it as one sub-graph, one call instead of one
/// per node.</summary>
public interface ISegmentPlatform : IPlatform
{
    /// <summary>Runs the nodes of <paramref name="segment"/> in order, fed <paramref name="feeds"/> (values resident
    /// here, or host values: the platform moves them, with the call where it can). Returns the segment graph's outputs, kept here (the small ones with their host bytes too when
    /// <paramref name="hostCopies"/>), or, when one of its nodes cannot run here, that node's position in the
    /// segment and the reason, and nothing else (what ran before it is dropped; the executor splits the segment).</summary>
    SegmentResult RunSegment(Model segment, IReadOnlyDictionary<string, Value> feeds, bool hostCopies);
}

/// <summary>A platform that runs one model for several sets of feeds in one call (a server across a connection: one
/// round trip for a migration's phases, whose feeds are known before any of them runs).</summary>
public interface IBatchRunPlatform : IPlatform
{
    /// <summary>The model's graph outputs on the host for each of <paramref name="runs"/>, in order. A node this platform
    /// cannot run throws <see cref="UnsupportedException"/> (nothing is kept).</summary>
    IReadOnlyList<Dictionary<string, Value>> RunMany(Model model, IReadOnlyList<IReadOnlyDictionary<string, Value>> runs);
}

/// <summary>What <see cref="ISegmentPlatform.RunSegment"/> gave: outputs by name, or the first node it cannot run.</summary>
public sealed record SegmentResult(Dictionary<string, Value> Outputs, int UnsupportedNode = -1, string? Reason = null);

/// <summary>A platform that makes a fresh instance of itself for less than its spec costs: one with none of this
/// instance's tensors, kernels or state, sharing only what takes time to set up (a remote server's connection).
/// Migration makes a fresh target for every run.</summary>
public interface IFreshInstance
{
    IPlatform NewInstance();
}

/// <summary>A platform that prepares for a model it has run before (a GPU platform compiles, in parallel, the kernels
/// that model needed last time): the executor names the model at the start of every run.</summary>
public interface IModelWarmup
{
    void Warm(Model model);
}

/// <summary>A platform that can list the operators it has kernels for (a kernel may still refuse some inputs: dtypes,
/// limits; <see cref="IPlatform.Supports"/> has the last word). A remote server describes its platform with it.</summary>
public interface IOpList
{
    IEnumerable<(string Domain, string OpType, int SinceOpset)> Ops { get; }
}

/// <summary>Dispatches, submits and readbacks recorded, and host time spent waiting for readbacks (ms).</summary>
public readonly record struct DeviceCounters(long Dispatches, long Submits, long Readbacks, double WaitMs, long BindingsMade = 0)
{
    public static DeviceCounters operator -(DeviceCounters a, DeviceCounters b) =>
        new(a.Dispatches - b.Dispatches, a.Submits - b.Submits, a.Readbacks - b.Readbacks, a.WaitMs - b.WaitMs, a.BindingsMade - b.BindingsMade);

    /// <summary>"N dispatches, N submits, N readbacks per step" over <paramref name="steps"/> graph runs, and the bind groups
    /// (descriptor sets) made rather than found in the device's cache where it keeps one (each costs the host a driver
    /// call a dispatch).</summary>
    public string PerStep(int steps) =>
        $"{Dispatches / (double)steps:F0} dispatches, {Submits / (double)steps:F1} submits, {Readbacks / (double)steps:F1} readbacks per step" +
        (BindingsMade > 0 ? $", {BindingsMade / (double)steps:F1} new bind groups" : "");
}

/// <summary>A device platform that counts its work and can time its kernels on the device: <c>generate --profile</c>,
/// the benchmarks' per-step counters.</summary>
public interface IKernelProfile
{
    DeviceCounters Counters { get; }
    /// <summary>Compiled kernels (pipelines, programs) held.</summary>
    int KernelCount { get; }
    /// <summary>Starts attributing device time to kernels; false when the device cannot time them.</summary>
    bool StartProfile();
    /// <summary>Device time per kernel label since <see cref="StartProfile"/>.</summary>
    List<(string Kernel, long Calls, double Ms)> StopProfile();
    /// <summary>The same device time per op type of the node that recorded each dispatch (most first; "" for work
    /// outside a node: uploads' conversions, transfers), as of the last <see cref="StopProfile"/>.</summary>
    IReadOnlyList<(string OpType, long Calls, double Ms)> OpTimes { get; }
}

/// <summary>Base for platforms whose values live in host memory (cpu, onnxruntime, wrappers).</summary>
public abstract class HostPlatform : IPlatform
{
    public abstract string Name { get; }
    public abstract string Description { get; }
    public virtual PlatformLimits Limits => PlatformLimits.Host;
    public abstract Support Supports(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes);
    public abstract IKernel Prepare(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes);
    public abstract Value?[] Run(IKernel kernel, NodeContext ctx, Value?[] inputs);
    public bool IsResident(Value v) => v is Tensor or SequenceValue or OptionalValue;
    public Value Upload(Value host) => host;
    public Value Download(Value v) => v;
    public void Free(Value v) { }
    public void Synchronize() { }
    public virtual void Dispose() { }
}
