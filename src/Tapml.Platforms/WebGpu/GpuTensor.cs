using Tapml.Core;
using Tapml.Platforms.Execution;

namespace Tapml.Platforms.WebGpu;

/// <summary>How a tensor's elements sit in a GPU buffer. WGSL has 32-bit scalars only (f16 needs an optional
/// feature), so every ONNX type maps to one of these; the logical <see cref="GpuTensor.DType"/> is kept.</summary>
public enum GpuStorage
{
    /// <summary>f32 per element (f32, and f16/bf16 computed in f32 and rounded to their precision on store).</summary>
    F32,
    /// <summary>i32 per element (int8/16/32, and int64 within the 32-bit range: checked on upload).</summary>
    I32,
    /// <summary>u32 per element (bool as 0/1, uint8/16/32).</summary>
    U32,
    /// <summary>f16 packed two per u32 (uploaded f16 tensors: weights keep half the bytes; unpacked in the shader).</summary>
    F16x2,
}

/// <summary>A reference-counted GPU buffer (aliases such as Reshape share one). An upload's buffer is created
/// when a kernel first binds it (<see cref="Pending"/> holds the bytes until then), so weights that only a
/// MatMul reads in transposed form never take GPU memory in their original layout.</summary>
public sealed class GpuBuffer(nint handle, ulong size, bool pooled)
{
    internal nint Handle = handle;
    /// <summary>The elements to write when the buffer is created (an array whose bytes are the GPU layout, at most
    /// <see cref="Size"/> bytes; the rest of the buffer is zeroed).</summary>
    internal Array? Pending;
    public ulong Size { get; internal set; } = size;
    internal bool Pooled = pooled;
    internal int Refs = 1;
    /// <summary>For a KV-cache capacity buffer: the rows (along axis −2) its longest view holds. An append writes in
    /// place only from a view of exactly this length, so no two views ever claim the same rows.</summary>
    internal long KvRows;
}

/// <summary>A tensor resident on the webgpu platform.</summary>
public sealed class GpuTensor : Value, IDeviceValue
{
    internal GpuTensor(WebGpuPlatform owner, DType dtype, long[] shape, GpuBuffer buffer, GpuStorage storage)
    {
        Platform = owner; DType = dtype; Shape = shape; Buffer = buffer; Storage = storage;
        Length = ShapeUtil.Size(shape);
    }

    internal WebGpuPlatform Platform { get; }
    public IPlatform Owner => Platform;
    public DType DType { get; }
    public long[] Shape { get; }
    public GpuBuffer Buffer { get; }
    public GpuStorage Storage { get; }
    public long Length { get; }
    public int Rank => Shape.Length;
    /// <summary>Logical bytes (as the host tensor would hold them), for the executor's accounting.</summary>
    public long ByteSize => Length * DTypes.Size(DType);
    /// <summary>Bytes the elements take in the buffer (with <see cref="Capacity"/>, up to the end of the last row).</summary>
    public ulong StorageBytes => Storage == GpuStorage.F16x2 ? (ulong)((Length + 1) / 2 * 4)
        : IsStrided ? (ulong)(ShapeUtil.Size(Shape.AsSpan(0, Rank - 2)) * Capacity * Shape[^1] * 4) : (ulong)(Length * 4);
    /// <summary>Rows allocated along axis −2 (a KV cache of [batch, heads, capacity, head_dim] whose first
    /// <c>Shape[^2]</c> rows per head are the value), or 0: the elements are contiguous. Only kernels that say so
    /// (<see cref="GpuOp.TakesStrided"/>) see such a tensor; the others get a contiguous copy.</summary>
    internal long Capacity { get; init; }
    /// <summary>The rows of axis −2 are <see cref="Capacity"/> apart, not <c>Shape[^2]</c>.</summary>
    internal bool IsStrided => Capacity > 0 && Rank >= 2 && Capacity != Shape[^2];
    /// <summary>Element strides per axis (row-major over the allocated extent).</summary>
    internal long[] Strides
    {
        get
        {
            if (!IsStrided) return ShapeUtil.Strides(Shape);
            var alloc = (long[])Shape.Clone();
            alloc[^2] = Capacity;
            return ShapeUtil.Strides(alloc);
        }
    }
    /// <summary>A host copy of a small integer tensor uploaded from the host (shape inputs read it instead of a readback).</summary>
    internal Tensor? HostCopy { get; init; }
    /// <summary>The host's own computation of a small integer value (shape arithmetic), for sizing reads only: never
    /// returned by a download, so the GPU kernel's result is what tests compare.</summary>
    internal Tensor? Shadow { get; set; }
    /// <summary>Derived on the host: a Shape/Size output, a caller's host input (<see cref="IHostInputs"/>), or what
    /// host-run nodes made of them (see WebGpuPlatform.OnHost).</summary>
    internal bool FromShape { get; init; }
    /// <summary>The host tensor an upload came from (weights: MatMul keeps a transposed copy of it).</summary>
    internal Tensor? Source { get; init; }
    /// <summary>Uploaded int64 values were clamped to the 32-bit range (only host-copy readers may use them).</summary>
    internal bool Saturated { get; init; }
    /// <summary>Where the tensor starts in its buffer (a weight's rows inside a stacked weight; 0 for all else).</summary>
    internal ulong ByteOffset { get; init; }
    /// <summary>Owned by the upload cache: the executor's Free leaves it alone.</summary>
    internal bool Pinned { get; init; }
    internal bool Freed;

    public override string Describe() => $"{DTypes.Name(DType)}[{string.Join(",", Shape)}]@webgpu";
}
