using System.Reflection;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu;

/// <summary>A reference kernel: computes the node's outputs from its inputs (null = omitted optional input).
/// Returns one value per node output; outputs the node does not request may be null.</summary>
public delegate Value?[] CpuKernelFn(NodeContext ctx, Value?[] inputs);

/// <summary>Says why a node cannot run (null when it can), from attributes and input types alone.</summary>
public delegate string? CpuSupportFn(NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes);

/// <summary>One file per op family implements this; <see cref="CpuOpRegistry"/> finds them all by reflection,
/// so adding a family never edits a shared list.</summary>
public interface ICpuOpFamily
{
    void Register(CpuOpRegistry registry);
}

public sealed record CpuOp(string Domain, string OpType, CpuKernelFn Run, CpuSupportFn? Support, int SinceOpset);

/// <summary>The cpu platform's kernels by (domain, op type).</summary>
public sealed class CpuOpRegistry
{
    readonly Dictionary<(string, string), CpuOp> _ops = new();

    /// <summary>Registers <paramref name="opType"/>. <paramref name="support"/> may refuse nodes (attribute values,
    /// dtypes) with a reason; <paramref name="sinceOpset"/> refuses nodes of older opsets.</summary>
    public void Add(string opType, CpuKernelFn run, CpuSupportFn? support = null, string domain = "", int sinceOpset = 1)
    {
        var key = (Normalize(domain), opType);
        if (_ops.ContainsKey(key)) throw new InvalidOperationException($"cpu op {opType} registered twice");
        _ops[key] = new CpuOp(key.Item1, opType, run, support, sinceOpset);
    }

    public CpuOp? Find(string domain, string opType) => _ops.GetValueOrDefault((Normalize(domain), opType));

    public IEnumerable<CpuOp> All => _ops.Values;

    static string Normalize(string d) => d == "ai.onnx" ? "" : d;

    static readonly Lazy<CpuOpRegistry> _default = new(() =>
    {
        var r = new CpuOpRegistry();
        foreach (var t in typeof(CpuOpRegistry).Assembly.GetTypes()
                     .Where(t => typeof(ICpuOpFamily).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
                     .OrderBy(t => t.FullName))
            ((ICpuOpFamily)Activator.CreateInstance(t)!).Register(r);
        return r;
    });

    /// <summary>Every family in this assembly.</summary>
    public static CpuOpRegistry Default => _default.Value;
}
