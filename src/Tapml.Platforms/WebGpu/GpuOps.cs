using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms.WebGpu.Kernels;

namespace Tapml.Platforms.WebGpu;

/// <summary>Runs one node on the GPU: records dispatches and returns the outputs (GPU tensors).</summary>
public delegate Value?[] GpuRun(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] inputs);

/// <param name="Support">Returns why a node cannot run (attributes, types), or null.</param>
/// <param name="AnyInputType">Inputs of any type are accepted (metadata ops such as Shape).</param>
/// <param name="TakesStrided">The kernel reads inputs with a row <see cref="GpuTensor.Capacity"/> (a KV cache) through
/// their strides; without it, or when it says no for a node, such inputs are copied contiguous first.</param>
public sealed record GpuOp(string Domain, string OpType, int SinceOpset, GpuRun Run,
    Func<NodeContext, IReadOnlyList<TypeRef?>, string?>? Support = null, bool AnyInputType = false, Func<NodeContext, bool>? TakesStrided = null);

/// <summary>The webgpu op registry: one entry per ONNX op type, registered by the kernel family files.</summary>
public static class GpuOps
{
    static readonly Dictionary<(string, string), GpuOp> _ops = Build();

    public static GpuOp? Find(string domain, string opType) => _ops.GetValueOrDefault((domain is "ai.onnx" ? "" : domain, opType));
    public static IEnumerable<GpuOp> All => _ops.Values;

    static Dictionary<(string, string), GpuOp> Build()
    {
        var d = new Dictionary<(string, string), GpuOp>();
        void Add(GpuOp op) => d[(op.Domain, op.OpType)] = op;
        Elementwise.Register(Add);
        DataMovement.Register(Add);
        ShapeOps.Register(Add);
        MatMul.Register(Add);
        Reductions.Register(Add);
        Normalization.Register(Add);
        ConvPool.Register(Add);
        Fused.Register(Add);
        Resize.Register(Add);
        Spatial.Register(Add);
        Indexing.Register(Add);
        Losses.Register(Add);
        Misc.Register(Add);
        Detection.Register(Add);
        ControlFlow.Register(Add);
        Recurrent.Register(Add);
        MatMulNBits.Register(Add);
        Einsum.Register(Add);
        return d;
    }

    /// <summary>Tensor input <paramref name="i"/> or a clear error when it is missing.</summary>
    public static GpuTensor In(GpuTensor?[] inputs, int i, NodeContext ctx) =>
        i < inputs.Length && inputs[i] is { } t ? t : throw new TapmlException($"node '{ctx.Node.Name}' ({ctx.Node.OpType}): input {i} is missing");

    /// <summary>Refuses integer inputs whose int64 values were clamped to 32 bits on upload.</summary>
    public static void CheckNotSaturated(GpuTensor t, NodeContext ctx)
    {
        if (t.Saturated)
            throw new UnsupportedException($"node '{ctx.Node.Name}' ({ctx.Node.OpType}): int64 input {t.Describe()} holds values beyond the 32-bit range webgpu computes integers in");
    }
}
