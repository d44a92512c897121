using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Faulty;

/// <summary><c>faulty:INNER?…</c>: runs every node on the inner platform and corrupts the outputs of the nodes
/// the <see cref="FaultSpec"/> names. It exists to prove that replay and localization find a wrong kernel.
/// Float outputs get the fault as named; integer outputs too where it has a meaning (scale multiplies and rounds,
/// offset adds, nan becomes the type's maximum); bool outputs are negated for scale/offset/nan. A fault that leaves
/// the data unchanged (transpose of a [1, n] tensor, zero-tail of zeros) is counted in <see cref="Unchanged"/>.</summary>
public sealed class FaultyPlatform : IPlatform, IPlatformDetails, IOpList
{
    readonly IPlatform _inner;
    readonly Dictionary<(string Node, int Output), Tensor> _previous = new();
    readonly Dictionary<string, int> _calls = new();

    public FaultSpec Spec { get; }
    /// <summary>Outputs corrupted so far (their data changed).</summary>
    public long Corrupted { get; private set; }
    /// <summary>Outputs the fault was applied to without changing a bit.</summary>
    public long Unchanged { get; private set; }

    public FaultyPlatform(string spec)
    {
        Spec = FaultSpec.Parse(spec);
        _inner = PlatformRegistry.Create(Spec.Inner);
        Name = spec;
    }

    public string Name { get; }
    public string Description => $"{_inner.Description}; {(Spec.Nodes.Count + Spec.Ops.Count > 0 ? "corrupts " : "")}{Describe(Spec)}";
    public PlatformLimits Limits => _inner.Limits;

    /// <summary>The inner platform's details (adapter, driver), where it has them.</summary>
    public IEnumerable<(string Domain, string OpType, int SinceOpset)> Ops =>
        _inner is IOpList l ? l.Ops.Where(o => Spec.Refuse?.Contains(o.OpType) != true) : [];

    public IEnumerable<string> Details() => _inner is IPlatformDetails d ? d.Details() : [];

    static string Describe(FaultSpec s)
    {
        var what = s.Nodes.Select(n => $"node {n}").Concat(s.Ops.Select(o => $"every {o}"));
        string refused = s.Refuse is { Count: > 0 } r ? $"refuses {string.Join(", ", r)}" : "";
        return what.Any() ? $"{string.Join(", ", what)} with {FaultSpec.Name(s.Kind)}" + (refused.Length > 0 ? "; " + refused : "") : refused;
    }

    public Support Supports(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes) =>
        Spec.Refuse?.Contains(node.OpType) == true ? Support.No($"{node.OpType} is refused by this faulty platform (refuse={node.OpType})") : _inner.Supports(node, ctx, inputTypes);

    public IKernel Prepare(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes) =>
        Spec.Refuse?.Contains(node.OpType) == true ? throw new UnsupportedException(Supports(node, ctx, inputTypes).Reason!) : _inner.Prepare(node, ctx, inputTypes);

    public Value?[] Run(IKernel kernel, NodeContext ctx, Value?[] inputs)
    {
        var outputs = _inner.Run(kernel, ctx, inputs);
        var node = kernel.Node;
        if (!Spec.Matches(node)) return outputs;
        int call = _calls.GetValueOrDefault(node.Name);
        _calls[node.Name] = call + 1;
        for (int i = 0; i < outputs.Length; i++)
        {
            if (Spec.Output is int only && only != i) continue;
            if (outputs[i] is not { } v) continue;
            var host = _inner.Download(v);
            if (host is not Tensor t || t.DType == DType.String) continue;
            var key = (node.Name, i);
            var clean = t.Clone();
            if (call < Spec.FromCall) { _previous[key] = clean; continue; }
            var bad = Corrupt(clean, _previous.GetValueOrDefault(key));
            _previous[key] = clean;
            if (bad.Bytes().SequenceEqual(t.Bytes())) { Unchanged++; continue; }
            Corrupted++;
            if (!ReferenceEquals(v, host)) _inner.Free(v);
            outputs[i] = _inner.IsResident(bad) ? bad : _inner.Upload(bad);
        }
        return outputs;
    }

    Tensor Corrupt(Tensor clean, Tensor? previous)
    {
        var t = clean.Clone();
        long n = t.Length;
        if (n == 0) return t;
        bool isFloat = DTypes.IsFloat(t.DType), isBool = t.DType == DType.Bool;
        switch (Spec.Kind)
        {
            case FaultKind.Scale:
            case FaultKind.Offset:
                for (long i = 0; i < n; i++)
                {
                    if (isBool) { t.SetInt64(i, t.GetInt64(i) == 0 ? 1 : 0); continue; }
                    double x = t.GetDouble(i);
                    double y = Spec.Kind == FaultKind.Scale ? x * Spec.Amount : x + Spec.Amount;
                    if (isFloat) t.SetDouble(i, y);
                    else t.SetInt64(i, (long)Math.Round(y, MidpointRounding.AwayFromZero));
                }
                break;
            case FaultKind.Nan:
                if (isFloat) t.SetDouble(n / 2, double.NaN);
                else if (isBool) t.SetInt64(n / 2, t.GetInt64(n / 2) == 0 ? 1 : 0);
                else t.SetInt64(n / 2, MaxOf(t.DType));
                break;
            case FaultKind.ZeroTail:
                long zeroed = Math.Max(1, (long)Math.Ceiling(n * Spec.Amount));
                for (long i = n - zeroed; i < n; i++) t.SetInt64(i, 0);
                break;
            case FaultKind.Stale:
                if (previous is not null && previous.DType == t.DType && previous.Length == n)
                    Array.Copy(previous.Data, t.Data, n);
                else
                    Array.Clear(t.Data);
                break;
            case FaultKind.Transpose:
                if (t.Rank < 2) break;
                long rows = t.Shape[^2], cols = t.Shape[^1], mat = rows * cols;
                // NOTE: element (r, c) of each matrix is written where (c, r) of the [cols, rows] transpose would go.
                for (long b = 0; b < n / mat; b++)
                    for (long r = 0; r < rows; r++)
                        for (long c = 0; c < cols; c++)
                            Array.Copy(clean.Data, b * mat + r * cols + c, t.Data, b * mat + c * rows + r, 1);
                break;
        }
        return t;
    }

    static long MaxOf(DType t) => t switch
    {
        DType.Int8 => sbyte.MaxValue, DType.UInt8 => byte.MaxValue, DType.Int16 => short.MaxValue,
        DType.UInt16 => ushort.MaxValue, DType.Int32 => int.MaxValue, DType.UInt32 => uint.MaxValue,
        _ => long.MaxValue,
    };

    public bool IsResident(Value v) => _inner.IsResident(v);
    public Value Upload(Value host) => _inner.Upload(host);
    public Value Download(Value v) => _inner.Download(v);
    public void Free(Value v) => _inner.Free(v);
    public void Synchronize() => _inner.Synchronize();
    public void Dispose() => _inner.Dispose();
}
