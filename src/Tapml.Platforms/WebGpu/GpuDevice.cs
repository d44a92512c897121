namespace Tapml.Platforms.WebGpu;

/// <summary>What the WebGPU platform needs of a device: buffers (pooled by size bucket), compute pipelines from WGSL
/// text, dispatches recorded and submitted in batches, readback, GPU timing. The kernels are single-source: the same
/// WGSL runs on every implementation — native Dawn in this process (<see cref="DawnDevice"/>), or a browser's
/// <c>navigator.gpu</c> driven over a WebSocket.</summary>
public interface IGpuDevice : IDisposable
{
    GpuAdapterInfo Info { get; }
    GpuLimits Limits { get; }
    /// <summary>What runs the WebGPU API (for descriptions): "Dawn libwebgpu…so", "Chromium 156 over a WebSocket".</summary>
    string Runtime { get; }
    /// <summary>Node (or what) the dispatches being recorded belong to, for error messages.</summary>
    string Context { get; set; }
    long Dispatches { get; }
    DeviceCounters Counters { get; }
    int PipelineCount { get; }

    /// <summary>A storage buffer of at least <paramref name="bytes"/> (pooled); checks the device limits first.</summary>
    /// <param name="forWrite">The caller fills it with a queue write next: take a pooled buffer the recorded work does
    /// not bind.</param>
    nint Allocate(ulong bytes, out ulong size, bool forWrite = false);
    /// <summary>Returns a buffer to the pool.</summary>
    void Release(nint buffer, ulong size);
    /// <summary>Destroys a buffer now.</summary>
    void Destroy(nint buffer);
    void Write(nint buffer, ulong offset, ReadOnlySpan<byte> data);
    /// <summary>The pipeline for <paramref name="code"/> (entry point <c>main</c>), compiled once.</summary>
    GpuPipeline Pipeline(string code, string label);
    /// <summary>Records one dispatch: bindings 0..n-1 are the buffers, binding n the metadata words.</summary>
    void Dispatch(GpuPipeline p, ReadOnlySpan<nint> buffers, ReadOnlySpan<ulong> offsets, ReadOnlySpan<ulong> sizes, ReadOnlySpan<uint> meta, uint gx, uint gy = 1, uint gz = 1);
    /// <summary>Copies bytes of a buffer to the host (waits for all recorded work).</summary>
    void Read(nint buffer, ulong offset, Span<byte> dest);
    /// <summary>Starts a readback and returns at once (the work recorded so far is submitted).</summary>
    GpuPendingRead BeginRead(nint buffer, ulong offset, int bytes);
    /// <summary>Waits for a readback <see cref="BeginRead"/> started.</summary>
    void EndRead(GpuPendingRead r, Span<byte> dest);
    void Synchronize();
    /// <summary>GPU time of <paramref name="record"/>'s dispatches (ms), null without timestamp queries.</summary>
    double? TimeGpu(Action record);
    bool StartProfile();
    List<(string Kernel, long Calls, double Ms)> StopProfile();
}

/// <summary>A readback in flight (<see cref="IGpuDevice.BeginRead"/>).</summary>
public abstract class GpuPendingRead;

/// <summary>A device that can compile pipelines ahead of their first use, in parallel (Dawn's
/// <c>wgpuDeviceCreateComputePipelineAsync</c>), and says when it compiled one (what <see cref="KernelList"/> keeps).</summary>
public interface IPrecompile
{
    /// <summary>Starts compiling <paramref name="code"/> and returns at once; the first <see cref="IGpuDevice.Pipeline"/>
    /// of the same text waits for it.</summary>
    void Precompile(string code, string label);
    /// <summary>Called with the text and label of every pipeline this device compiled and kept.</summary>
    Action<string, string>? Compiled { get; set; }
}
