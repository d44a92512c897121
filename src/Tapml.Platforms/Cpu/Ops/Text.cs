using System.Globalization;
using System.Text.RegularExpressions;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>StringNormalizer, TfIdfVectorizer, RegexFullMatch, StringConcat, StringSplit. Case changes use the
/// invariant culture (the locale attribute is not honoured beyond that).</summary>
public sealed class Text : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("StringNormalizer", StringNormalizer, sinceOpset: 10);
        r.Add("TfIdfVectorizer", TfIdf, sinceOpset: 9);
        r.Add("RegexFullMatch", RegexFullMatch, sinceOpset: 20);
        r.Add("StringConcat", StringConcat, sinceOpset: 20);
        r.Add("StringSplit", StringSplit, sinceOpset: 20);
    }

    static readonly TextInfo Inv = CultureInfo.InvariantCulture.TextInfo;

    // ---------------------------------------------------------------- StringNormalizer

    static Value?[] StringNormalizer(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (x.DType != DType.String) throw ctx.Error($"input must be string, got {x.Describe()}");
        bool twoD = x.Rank == 2;
        if (!(x.Rank == 1 || twoD && x.Shape[0] == 1)) throw ctx.Error($"input must be [C] or [1, C], got {x.Describe()}");
        string action = ctx.String("case_change_action", "NONE");
        if (action is not ("NONE" or "LOWER" or "UPPER")) throw ctx.Error($"case_change_action '{action}'");
        bool cs = ctx.Int("is_case_sensitive", 0) != 0;
        var stop = ctx.Strings("stopwords") ?? [];
        var stops = new HashSet<string>(cs ? stop : stop.Select(s => Inv.ToLower(s)), StringComparer.Ordinal);
        var outv = new List<string>();
        foreach (var s0 in x.As<string>())
        {
            string s = s0 ?? "";
            // stopwords: exact match when case-sensitive, else compared case-insensitively
            if (stops.Count > 0 && stops.Contains(cs ? s : Inv.ToLower(s))) continue;
            outv.Add(action switch { "LOWER" => Inv.ToLower(s), "UPPER" => Inv.ToUpper(s), _ => s });
        }
        if (outv.Count == 0) outv.Add(""); // everything filtered: a single empty string
        var arr = outv.ToArray();
        return [twoD ? Tensor.FromArray(arr, 1, arr.Length) : Tensor.FromArray(arr, arr.Length)];
    }

    // ---------------------------------------------------------------- TfIdfVectorizer

    /// <summary>N-gram trie node: id 0 = no n-gram ends here.</summary>
    sealed class Gram<TK> where TK : notnull
    {
        public long Id;
        public Dictionary<TK, Gram<TK>>? Leaves;
    }

    static Value?[] TfIdf(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        var strs = ctx.Strings("pool_strings");
        var ints = ctx.Ints("pool_int64s");
        if ((strs is null || strs.Length == 0) == (ints is null || ints.Length == 0))
            throw ctx.Error("exactly one of pool_strings and pool_int64s must be given");
        if (strs is { Length: > 0 })
        {
            if (x.DType != DType.String) throw ctx.Error("pool_strings needs a string input");
            return TfIdfT(ctx, x, strs, x.As<string>());
        }
        if (x.DType is not (DType.Int32 or DType.Int64)) throw ctx.Error($"pool_int64s needs an int32/int64 input, got {x.Describe()}");
        return TfIdfT(ctx, x, ints!, x.ToInt64Array());
    }

    static Value?[] TfIdfT<TK>(NodeContext ctx, Tensor x, TK[] pool, TK[] data) where TK : notnull
    {
        string mode = ctx.String("mode", "TF");
        if (mode is not ("TF" or "IDF" or "TFIDF")) throw ctx.Error($"mode '{mode}'");
        long minG = ctx.Int("min_gram_length"), maxG = ctx.Int("max_gram_length"), maxSkip = ctx.Int("max_skip_count");
        var counts = ctx.Ints("ngram_counts") ?? throw ctx.Error("needs ngram_counts");
        var indexes = ctx.Ints("ngram_indexes") ?? throw ctx.Error("needs ngram_indexes");
        var weights = ctx.Floats("weights");
        if (minG < 1 || maxG < minG) throw ctx.Error($"bad gram lengths [{minG}, {maxG}]");
        long outSize = indexes.Length == 0 ? 0 : indexes.Max() + 1;

        // Build the trie of the n-grams within [min, max] length; ids count every pool n-gram from 1.
        var root = new Gram<TK> { Leaves = new() };
        long nid = 1;
        for (int i = 0; i < counts.Length; i++)
        {
            long size = i + 1;
            long st = counts[i], en = i + 1 < counts.Length ? counts[i + 1] : pool.Length;
            long items = en - st;
            if (items <= 0) continue;
            long ng = items / size;
            if (size < minG || size > maxG) { nid += ng; continue; }
            long p = st;
            for (long g = 0; g < ng; g++)
            {
                var m = root;
                for (long k = 0; k < size && p < pool.Length; k++, p++)
                {
                    m.Leaves ??= new();
                    if (!m.Leaves.TryGetValue(pool[p], out var child)) m.Leaves[pool[p]] = child = new Gram<TK>();
                    if (k == size - 1) child.Id = nid++;
                    m = child;
                }
            }
        }

        long B, Ccols;
        bool batched;
        if (x.Rank == 0) { B = 1; Ccols = 1; batched = false; }
        else if (x.Rank == 1) { B = 1; Ccols = x.Shape[0]; batched = false; }
        else if (x.Rank == 2) { B = x.Shape[0]; Ccols = x.Shape[1]; batched = true; if (B < 1) throw ctx.Error("batch must be >= 1"); }
        else throw ctx.Error($"input must be [C] or [B, C], got {x.Describe()}");
        var freq = new long[B * outSize];
        for (long row = 0; row < B; row++)
        {
            long rb = row * Ccols, re = rb + Ccols;
            long startN = minG;
            for (long skip = 1; skip <= maxSkip + 1; skip++)
            {
                for (long s = rb; s < re; s++)
                {
                    if (s + skip * (startN - 1) >= re) break; // too close to the end for any wanted n-gram
                    var m = root;
                    long item = s, n = 1;
                    while (m.Leaves is { Count: > 0 } && n <= maxG && item < re)
                    {
                        if (!m.Leaves.TryGetValue(data[item], out var child)) break;
                        if (n >= startN && child.Id != 0)
                        {
                            long gi = child.Id - 1;
                            if (gi >= indexes.Length) throw ctx.Error("ngram_indexes is shorter than the pool's n-grams");
                            freq[row * outSize + indexes[gi]]++;
                        }
                        m = child; n++; item += skip;
                    }
                }
                // unigrams are counted once: they do not depend on the skip distance
                if (startN == 1) { startN = 2; if (startN > maxG) break; }
            }
        }
        var y = new float[B * outSize];
        bool hasW = weights is { Length: > 0 };
        // weights: "the i-th element is the weight of the i-th n-gram in pool", i.e. of output ngram_indexes[i]
        var colW = new float[outSize];
        if (hasW)
        {
            if (weights!.Length != indexes.Length) throw ctx.Error($"weights has {weights.Length} values, ngram_indexes {indexes.Length}");
            for (int i = 0; i < indexes.Length; i++) colW[indexes[i]] = weights[i];
        }
        for (long row = 0; row < B; row++)
            for (long i = 0; i < outSize; i++)
            {
                long p = row * outSize + i;
                long f = freq[p];
                y[p] = mode switch
                {
                    "TF" => f,
                    "IDF" => f > 0 ? (hasW ? colW[i] : 1f) : 0f,
                    _ => hasW ? colW[i] * f : f,
                };
            }
        return [batched ? Tensor.FromArray(y, B, outSize) : Tensor.FromArray(y, outSize)];
    }

    // ---------------------------------------------------------------- RegexFullMatch / StringConcat / StringSplit

    static Value?[] RegexFullMatch(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (x.DType != DType.String) throw ctx.Error("input must be string");
        string pat = ctx.String("pattern", "");
        Regex re;
        try { re = new Regex(@"\A(?:" + pat + @")\z", RegexOptions.CultureInvariant); }
        catch (ArgumentException e) { throw ctx.Error($"invalid pattern '{pat}': {e.Message}"); }
        var s = x.As<string>();
        var y = new bool[s.Length];
        for (int i = 0; i < s.Length; i++) y[i] = re.IsMatch(s[i] ?? "");
        return [Tensor.FromArray(y, (long[])x.Shape.Clone())];
    }

    static Value?[] StringConcat(NodeContext ctx, Value?[] inputs)
    {
        var a = inputs.T(0, ctx); var b = inputs.T(1, ctx);
        if (a.DType != DType.String || b.DType != DType.String) throw ctx.Error("inputs must be string");
        var shape = ShapeUtil.Broadcast(a.Shape, b.Shape);
        var sa = ShapeUtil.BroadcastStrides(a.Shape, shape); var sb = ShapeUtil.BroadcastStrides(b.Shape, shape);
        var da = a.As<string>(); var db = b.As<string>();
        long n = ShapeUtil.Size(shape);
        var y = new string[n];
        var idx = new long[shape.Length];
        for (long o = 0; o < n; o++)
        {
            long oa = 0, ob = 0;
            for (int d = 0; d < shape.Length; d++) { oa += idx[d] * sa[d]; ob += idx[d] * sb[d]; }
            y[o] = (da[oa] ?? "") + (db[ob] ?? "");
            for (int d = shape.Length - 1; d >= 0; d--) { if (++idx[d] < shape[d]) break; idx[d] = 0; }
        }
        return [Tensor.FromArray(y, shape)];
    }

    static Value?[] StringSplit(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        if (x.DType != DType.String) throw ctx.Error("input must be string");
        string? delim = ctx.Has("delimiter") ? ctx.String("delimiter", "") : null;
        if (delim == "") delim = null;
        long maxSplit = ctx.Has("maxsplit") ? ctx.Int("maxsplit") : -1;
        var s = x.As<string>();
        var parts = new List<string>[s.Length];
        int width = 0;
        for (int i = 0; i < s.Length; i++)
        {
            parts[i] = delim is null ? SplitWhitespace(s[i] ?? "", maxSplit) : SplitBy(s[i] ?? "", delim, maxSplit);
            width = Math.Max(width, parts[i].Count);
        }
        var yShape = x.Shape.Append(width).ToArray();
        var y = new string[s.Length * width];
        Array.Fill(y, "");
        var z = new long[s.Length];
        for (int i = 0; i < s.Length; i++)
        {
            z[i] = parts[i].Count;
            for (int k = 0; k < parts[i].Count; k++) y[i * width + k] = parts[i][k];
        }
        return ctx.Outputs(Tensor.FromArray(y, yShape), Tensor.FromArray(z, (long[])x.Shape.Clone()));
    }

    /// <summary>str.split(delim, maxsplit): empty fields are kept.</summary>
    static List<string> SplitBy(string s, string delim, long maxSplit)
    {
        var r = new List<string>();
        int pos = 0;
        while (maxSplit < 0 || r.Count < maxSplit)
        {
            int at = s.IndexOf(delim, pos, StringComparison.Ordinal);
            if (at < 0) break;
            r.Add(s[pos..at]);
            pos = at + delim.Length;
        }
        r.Add(s[pos..]);
        return r;
    }

    /// <summary>str.split(None, maxsplit): runs of whitespace separate, leading whitespace is dropped.</summary>
    static List<string> SplitWhitespace(string s, long maxSplit)
    {
        var r = new List<string>();
        int i = 0, n = s.Length;
        while (true)
        {
            while (i < n && char.IsWhiteSpace(s[i])) i++;
            if (i >= n) break;
            if (maxSplit >= 0 && r.Count == maxSplit)
            {
                r.Add(s[i..]); // the remainder keeps its trailing whitespace (Python semantics)
                break;
            }
            int st = i;
            while (i < n && !char.IsWhiteSpace(s[i])) i++;
            r.Add(s[st..i]);
        }
        return r;
    }
}
