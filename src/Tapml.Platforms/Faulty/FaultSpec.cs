using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Faulty;

/// <summary>The kinds of wrong output a <see cref="FaultyPlatform"/> produces, each a classic kernel bug.</summary>
public enum FaultKind
{
    /// <summary>Every element multiplied by <see cref="FaultSpec.Amount"/> (default 1.5): a wrong scale factor.</summary>
    Scale,
    /// <summary>Every element plus <see cref="FaultSpec.Amount"/> (default 1): a wrong bias/accumulator init.</summary>
    Offset,
    /// <summary>One element (the middle one) becomes NaN: an overflow or a 0/0.</summary>
    Nan,
    /// <summary>The last ⌈fraction·n⌉ elements zeroed (<see cref="FaultSpec.Amount"/> = fraction, default 0.25):
    /// an out-of-bounds guard or a workgroup count that is too small.</summary>
    ZeroTail,
    /// <summary>The previous call's output of the same node (zeros on the first call, as a fresh buffer): a
    /// missing synchronization.</summary>
    Stale,
    /// <summary>The last two dimensions written transposed into the same shape: a layout bug.</summary>
    Transpose,
}

/// <summary>Which nodes a <see cref="FaultyPlatform"/> corrupts and how, parsed from the platform spec
/// <c>faulty:INNER?node=N1,N2&amp;op=T&amp;kind=K[&amp;amount=X][&amp;output=I][&amp;from=C]</c>.</summary>
/// <param name="Inner">The wrapped platform's spec.</param>
/// <param name="Nodes">Node names to corrupt (empty: none by name).</param>
/// <param name="Ops">Op types to corrupt, every node of each (empty: none by type).</param>
/// <param name="Output">Only this output index (null: every output).</param>
/// <param name="FromCall">Corrupt only from this call of a matching node on (0-based, counted per node).</param>
/// <param name="Refuse">Op types the platform says it cannot run (<c>refuse=Resize,Pad</c>): an injected gap, to prove
/// that placement keeps such nodes on the source instead of blaming them.</param>
public sealed record FaultSpec(string Inner, IReadOnlySet<string> Nodes, IReadOnlySet<string> Ops, FaultKind Kind,
                               double Amount, int? Output, int FromCall, IReadOnlySet<string>? Refuse = null)
{
    public static readonly IReadOnlyList<string> KindNames = ["scale", "offset", "nan", "zero-tail", "stale", "transpose"];

    public bool Matches(Node node) => Nodes.Contains(node.Name) || Ops.Contains(node.OpType);

    public static string Name(FaultKind k) => KindNames[(int)k];

    public static FaultKind ParseKind(string s, string spec)
    {
        int i = KindNames.ToList().IndexOf(s.ToLowerInvariant());
        return i >= 0 ? (FaultKind)i : throw new TapmlException($"platform '{spec}': kind={s} is not a fault kind (kinds: {string.Join(", ", KindNames)})");
    }

    public static FaultSpec Parse(string spec)
    {
        if (!spec.StartsWith("faulty:", StringComparison.Ordinal))
            throw new TapmlException($"platform '{spec}': a faulty platform is written faulty:INNER?node=NAME&kind=KIND");
        int q = spec.LastIndexOf('?');
        string inner = q < 0 ? spec["faulty:".Length..] : spec["faulty:".Length..q];
        if (inner.Length == 0) throw new TapmlException($"platform '{spec}': no inner platform after 'faulty:' (e.g. faulty:cpu?op=Softmax&kind=scale)");
        var query = PlatformSpec.Query(spec);
        string[] known = ["node", "op", "kind", "amount", "output", "from", "refuse"];
        foreach (var k in query.Keys)
            if (!known.Contains(k, StringComparer.OrdinalIgnoreCase))
                throw new TapmlException($"platform '{spec}': unknown option '{k}' (options: {string.Join(", ", known)})");
        static HashSet<string> List(string? v) => v is null ? [] : [.. v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];
        var nodes = List(query.GetValueOrDefault("node"));
        var ops = List(query.GetValueOrDefault("op"));
        var refuse = List(query.GetValueOrDefault("refuse"));
        if (nodes.Count == 0 && ops.Count == 0 && refuse.Count == 0)
            throw new TapmlException($"platform '{spec}': say which nodes to corrupt with node=NAME or op=TYPE (or which op types to refuse with refuse=TYPE)");
        string? kindText = query.GetValueOrDefault("kind");
        if (kindText is null && (nodes.Count > 0 || ops.Count > 0))
            throw new TapmlException($"platform '{spec}': no kind= (kinds: {string.Join(", ", KindNames)})");
        var kind = kindText is null ? FaultKind.Scale : ParseKind(kindText, spec);
        double amount = kind switch { FaultKind.Scale => 1.5, FaultKind.Offset => 1.0, FaultKind.ZeroTail => 0.25, _ => 0 };
        if (query.TryGetValue("amount", out var a))
        {
            if (!double.TryParse(a, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out amount) || !double.IsFinite(amount))
                throw new TapmlException($"platform '{spec}': amount={a} is not a finite number");
            if (kind == FaultKind.ZeroTail && amount is <= 0 or > 1)
                throw new TapmlException($"platform '{spec}': zero-tail amount is the zeroed fraction, in (0, 1]; got {a}");
        }
        int? output = query.TryGetValue("output", out var o) ? PlatformSpec.Int(spec, "output", o) : null;
        int from = query.TryGetValue("from", out var f) ? PlatformSpec.Int(spec, "from", f) : 0;
        return new FaultSpec(inner, nodes, ops, kind, amount, output, from, refuse);
    }
}
