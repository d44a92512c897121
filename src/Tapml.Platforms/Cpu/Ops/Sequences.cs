using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>SequenceConstruct, SequenceEmpty, SequenceAt, SequenceInsert, SequenceErase, SequenceLength,
/// SplitToSequence, ConcatFromSequence, Optional, OptionalHasElement, OptionalGetElement.
/// Sequences are immutable values: every op that changes one builds a new list.</summary>
public sealed class SequenceOps : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("SequenceConstruct", SequenceConstruct);
        r.Add("SequenceEmpty", (ctx, _) => [new SequenceValue(ctx.Has("dtype") ? (DType)ctx.Int("dtype") : DType.Float32)]);
        r.Add("SequenceAt", SequenceAt);
        r.Add("SequenceInsert", SequenceInsert);
        r.Add("SequenceErase", SequenceErase);
        r.Add("SequenceLength", (ctx, x) => [Tensor.Scalar((long)Seq(ctx, x, 0).Items.Count)]);
        r.Add("SplitToSequence", SplitToSequence);
        r.Add("ConcatFromSequence", ConcatFromSequence);
        r.Add("Optional", Optional);
        r.Add("OptionalHasElement", OptionalHasElement);
        r.Add("OptionalGetElement", OptionalGetElement);
    }

    static SequenceValue Seq(NodeContext ctx, Value?[] inputs, int i) =>
        i < inputs.Length && inputs[i] is SequenceValue s ? s
        : throw ctx.Error(i < inputs.Length && inputs[i] is { } v ? $"input {i} must be a sequence, got {v.Describe()}" : $"required input {i} is missing");

    static Value?[] SequenceConstruct(NodeContext ctx, Value?[] inputs)
    {
        if (inputs.Length == 0) throw ctx.Error("needs at least one input");
        var items = new List<Tensor>();
        for (int i = 0; i < inputs.Length; i++) items.Add(inputs.T(i, ctx));
        foreach (var t in items)
            if (t.DType != items[0].DType) throw ctx.Error($"inputs have different element types ({DTypes.Name(items[0].DType)} and {DTypes.Name(t.DType)})");
        return [new SequenceValue(items[0].DType, items)];
    }

    /// <summary>Position in [-n, n-1] (or [-n, n] when <paramref name="insert"/>) normalized to non-negative.</summary>
    static int Position(NodeContext ctx, Tensor p, int n, bool insert)
    {
        if (p.Length != 1) throw ctx.Error($"position must be a scalar, got {p.Describe()}");
        long v = p.GetInt64(0);
        long k = v < 0 ? v + n : v;
        if (k < 0 || k > n || k == n && !insert) throw ctx.Error($"position {v} is out of range for a sequence of length {n}");
        return (int)k;
    }

    static Value?[] SequenceAt(NodeContext ctx, Value?[] inputs)
    {
        var s = Seq(ctx, inputs, 0);
        return [s.Items[Position(ctx, inputs.T(1, ctx), s.Items.Count, false)]];
    }

    static Value?[] SequenceInsert(NodeContext ctx, Value?[] inputs)
    {
        var s = Seq(ctx, inputs, 0);
        var t = inputs.T(1, ctx);
        if (t.DType != s.ElementType && s.ElementType != DType.Undefined)
            throw ctx.Error($"cannot insert {t.Describe()} into a sequence of {DTypes.Name(s.ElementType)}");
        int at = inputs.OptT(2) is { } p ? Position(ctx, p, s.Items.Count, true) : s.Items.Count;
        var items = new List<Tensor>(s.Items);
        items.Insert(at, t);
        return [new SequenceValue(t.DType, items)];
    }

    static Value?[] SequenceErase(NodeContext ctx, Value?[] inputs)
    {
        var s = Seq(ctx, inputs, 0);
        if (s.Items.Count == 0) throw ctx.Error("cannot erase from an empty sequence");
        int at = inputs.OptT(1) is { } p ? Position(ctx, p, s.Items.Count, false) : s.Items.Count - 1;
        var items = new List<Tensor>(s.Items);
        items.RemoveAt(at);
        return [new SequenceValue(s.ElementType, items)];
    }

    // SplitToSequence: split (scalar: chunks of that size, the last smaller; 1-D: sizes) along axis; without
    // split, chunks of size 1, squeezed when keepdims = 0.
    static Value?[] SplitToSequence(NodeContext ctx, Value?[] inputs)
    {
        var x = inputs.T(0, ctx);
        int axis = ShapeOps.NormAxis(ctx, ctx.Int("axis", 0), x.Rank);
        long dim = x.Shape[axis];
        var items = new List<Tensor>();
        var sp = inputs.OptT(1);
        if (sp is null)
        {
            bool keep = ctx.Int("keepdims", 1) != 0;
            var sq = x.Shape.Where((_, i) => i != axis).ToArray();
            for (long i = 0; i < dim; i++)
            {
                var part = ShapeKit.SliceAxis(x, axis, i, 1);
                items.Add(keep ? part : part.Reshape(sq));
            }
            return [new SequenceValue(x.DType, items)];
        }
        long[] sizes;
        if (sp.Rank == 0)
        {
            long c = sp.GetInt64(0);
            if (c <= 0) throw ctx.Error($"split size {c} must be positive");
            var l = new List<long>();
            for (long at = 0; at < dim; at += c) l.Add(Math.Min(c, dim - at));
            sizes = l.ToArray();
        }
        else
        {
            sizes = ShapeKit.Ints(sp);
            long sum = 0;
            foreach (long s in sizes) { if (s < 0) throw ctx.Error("negative split size"); sum += s; }
            if (sum != dim) throw ctx.Error($"split {ShapeUtil.Format(sizes)} sums to {sum}, axis {axis} has {dim}");
        }
        long pos = 0;
        foreach (long s in sizes) { items.Add(ShapeKit.SliceAxis(x, axis, pos, s)); pos += s; }
        return [new SequenceValue(x.DType, items)];
    }

    // ConcatFromSequence: concatenation along axis, or stacking along a new axis (new_axis = 1, axis in [-r-1, r]).
    static Value?[] ConcatFromSequence(NodeContext ctx, Value?[] inputs)
    {
        var s = Seq(ctx, inputs, 0);
        if (s.Items.Count == 0) throw ctx.Error("cannot concatenate an empty sequence");
        bool newAxis = ctx.Int("new_axis", 0) != 0;
        long axis = ctx.Int("axis");
        int r = s.Items[0].Rank;
        if (!newAxis) return [ShapeKit.ConcatAxis(s.Items, ShapeOps.NormAxis(ctx, axis, r), m => ctx.Error(m))];
        int a = ShapeOps.NormAxis(ctx, axis, r + 1);
        var parts = s.Items.Select(t =>
        {
            var sh = new List<long>(t.Shape);
            sh.Insert(a, 1);
            return t.Reshape(sh.ToArray());
        }).ToList();
        return [ShapeKit.ConcatAxis(parts, a, m => ctx.Error(m))];
    }

    // Optional: wraps the input, or an empty optional of the 'type' attribute.
    static Value?[] Optional(NodeContext ctx, Value?[] inputs)
    {
        var v = inputs.Length > 0 ? inputs[0] : null;
        if (v is OptionalValue) throw ctx.Error("input must be a tensor or a sequence");
        if (v is not null) return [new OptionalValue(v)];
        if (!ctx.Node.Attributes.TryGetValue("type", out var ta) || ta.Tp is null)
            throw ctx.Error("an empty Optional needs the 'type' attribute");
        var tp = ta.Tp;
        return tp.Kind switch
        {
            TypeKind.Tensor => [new OptionalValue(null, tp.ElemType)],
            TypeKind.Sequence => [new OptionalValue(null, tp.Elem?.ElemType ?? DType.Undefined, isSequence: true)],
            _ => throw ctx.Unsupported($"optional of {tp}"),
        };
    }

    // OptionalHasElement: false for an empty optional or an omitted input (opset 18), true otherwise.
    static Value?[] OptionalHasElement(NodeContext ctx, Value?[] inputs)
    {
        var v = inputs.Length > 0 ? inputs[0] : null;
        bool has = v switch { null => false, OptionalValue o => o.Item is not null, _ => true };
        return [Tensor.Scalar(has)];
    }

    // OptionalGetElement: the held value; a tensor or sequence input (opset 18) passes through.
    static Value?[] OptionalGetElement(NodeContext ctx, Value?[] inputs)
    {
        var v = inputs.Length > 0 ? inputs[0] : null;
        return v switch
        {
            null => throw ctx.Error("required input 0 is missing"),
            OptionalValue { Item: null } => throw ctx.Error("the optional is empty"),
            OptionalValue o => [o.Item],
            _ => [v],
        };
    }
}
