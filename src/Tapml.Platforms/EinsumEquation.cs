namespace Tapml.Platforms;

/// <summary>An Einsum equation read against its operands' ranks: one label per dim of each operand and the output's
/// labels. Letters are their char codes; ellipsis dims are labels <see cref="EllipsisBase"/>+j, right-aligned over the
/// widest ellipsis. Shared by every platform's Einsum.</summary>
public sealed record EinsumEquation(List<int>[] Inputs, List<int> Output)
{
    public const int EllipsisBase = 1000;

    /// <summary>Parses <paramref name="equation"/> (spaces ignored) for operands of <paramref name="ranks"/>; the
    /// implicit output is the ellipsis dims, then the labels used exactly once, sorted.</summary>
    public static EinsumEquation Parse(NodeContext ctx, string equation, IReadOnlyList<int> ranks)
    {
        string eq = equation.Replace(" ", "");
        string lhs = eq, rhs = "";
        bool explicitOut = eq.Contains("->");
        if (explicitOut) { int p = eq.IndexOf("->"); lhs = eq[..p]; rhs = eq[(p + 2)..]; }
        var terms = lhs.Split(',');
        if (terms.Length != ranks.Count) throw ctx.Error($"equation '{eq}' has {terms.Length} operands, {ranks.Count} inputs given");
        int ell = 0;
        var letters = new List<int>[terms.Length];
        var ellAt = new int[terms.Length];
        for (int i = 0; i < terms.Length; i++)
        {
            (letters[i], ellAt[i]) = Term(ctx, terms[i], eq);
            int nEll = ranks[i] - letters[i].Count;
            if (ellAt[i] < 0 ? nEll != 0 : nEll < 0)
                throw ctx.Error($"operand {i} '{terms[i]}' does not match its rank {ranks[i]}");
            ell = Math.Max(ell, nEll);
        }
        var inputs = new List<int>[terms.Length];
        for (int i = 0; i < terms.Length; i++)
        {
            var l = new List<int>(letters[i]);
            if (ellAt[i] >= 0)
            {
                int nEll = ranks[i] - letters[i].Count;
                l.InsertRange(ellAt[i], Enumerable.Range(EllipsisBase + ell - nEll, nEll));
            }
            inputs[i] = l;
        }
        List<int> output;
        if (explicitOut)
        {
            var (ol, oe) = Term(ctx, rhs, eq);
            if (ol.Distinct().Count() != ol.Count) throw ctx.Error($"output '{rhs}' repeats a label");
            output = new List<int>(ol);
            if (oe >= 0) output.InsertRange(oe, Enumerable.Range(EllipsisBase, ell));
            foreach (int lab in output)
                if (!inputs.Any(l => l.Contains(lab)) && lab < EllipsisBase)
                    throw ctx.Error($"output label '{(char)lab}' does not appear in the inputs");
        }
        else
        {
            var counts = new SortedDictionary<int, int>();
            foreach (var l in letters) foreach (int lab in l) counts[lab] = counts.GetValueOrDefault(lab) + 1;
            output = Enumerable.Range(EllipsisBase, ell).ToList();
            output.AddRange(counts.Where(kv => kv.Value == 1).Select(kv => kv.Key));
        }
        return new EinsumEquation(inputs, output);
    }

    /// <summary>The size of every label (size-1 dims broadcast; output labels no input has are 1).</summary>
    public Dictionary<int, long> Sizes(NodeContext ctx, IReadOnlyList<long[]> shapes)
    {
        var size = new Dictionary<int, long>();
        for (int i = 0; i < shapes.Count; i++)
            for (int d = 0; d < Inputs[i].Count; d++)
            {
                int lab = Inputs[i][d];
                long s = shapes[i][d];
                if (!size.TryGetValue(lab, out long have) || have == 1) size[lab] = s;
                else if (s != have && s != 1) throw ctx.Error($"label {Name(lab)} has sizes {have} and {s}");
            }
        foreach (int lab in Output) size.TryAdd(lab, 1);
        return size;
    }

    /// <summary>A label as the user wrote it: <c>'i'</c>, or <c>...[j]</c> for ellipsis dim j.</summary>
    public static string Name(int lab) => lab >= EllipsisBase ? $"...[{lab - EllipsisBase}]" : $"'{(char)lab}'";

    static (List<int> letters, int ellAt) Term(NodeContext ctx, string term, string eq)
    {
        var l = new List<int>();
        int ellAt = -1;
        for (int i = 0; i < term.Length; i++)
        {
            char c = term[i];
            if (c == '.')
            {
                if (ellAt >= 0 || i + 3 > term.Length || term.Substring(i, 3) != "...")
                    throw ctx.Error($"bad ellipsis in equation '{eq}'");
                ellAt = l.Count;
                i += 2;
            }
            else if (char.IsAsciiLetter(c)) l.Add(c);
            else throw ctx.Error($"bad character '{c}' in equation '{eq}'");
        }
        return (l, ellAt);
    }
}
