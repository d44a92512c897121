using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu;

/// <summary>The reference platform: exact ONNX semantics, deterministic, readable kernels (one file per op
/// family). Speed comes from TensorPrimitives and Parallel.For, never from changing results beyond float
/// reassociation in reductions and matmul.</summary>
public sealed class CpuPlatform : HostPlatform, IOpList
{
    readonly CpuOpRegistry _ops;

    public CpuPlatform(CpuOpRegistry? ops = null) => _ops = ops ?? CpuOpRegistry.Default;

    public override string Name => "cpu";
    public override string Description => $"tapml reference kernels, {CpuThreads.Max} threads, {_ops.All.Count()} ops";

    public override Support Supports(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        var op = _ops.Find(node.Domain, node.OpType);
        if (op is null)
            return Support.No(node.Domain is "" ? $"operator {node.OpType} is not implemented on cpu" : $"operator {node.Domain}.{node.OpType} is not implemented on cpu");
        if (ctx.Opset < op.SinceOpset)
            return Support.No($"{node.OpType} at opset {ctx.Opset} is not implemented on cpu (from opset {op.SinceOpset})");
        string? why = op.Support?.Invoke(ctx, inputTypes);
        return why is null ? Support.Yes : Support.No(why);
    }

    public override IKernel Prepare(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        var s = Supports(node, ctx, inputTypes);
        if (!s.IsSupported) throw new UnsupportedException(s.Reason!);
        return new CpuKernel(node, _ops.Find(node.Domain, node.OpType)!);
    }

    public override Value?[] Run(IKernel kernel, NodeContext ctx, Value?[] inputs) => ((CpuKernel)kernel).Op.Run(ctx, inputs);

    public IEnumerable<(string Domain, string OpType, int SinceOpset)> Ops => _ops.All.Select(o => (o.Domain, o.OpType, o.SinceOpset));

    public IEnumerable<string> OpTypes => _ops.All.Select(o => o.Domain == "" ? o.OpType : $"{o.Domain}.{o.OpType}").Order();

    sealed record CpuKernel(Node Node, CpuOp Op) : IKernel;
}
