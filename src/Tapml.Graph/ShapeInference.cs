using Tapml.Core;

namespace Tapml.Ir;

/// <summary>Static type and shape inference over a graph: element types and shapes (numbers or symbolic
/// dimensions) of every value it can derive from the inputs, initializers and constant shape tensors. Ops
/// without a rule leave their outputs unknown; nothing here is fatal. <see cref="Infer"/> also lists values
/// whose inferred type contradicts the model's own declaration (value_info, graph outputs).</summary>
public static class ShapeInference
{
    public sealed record Result(Dictionary<string, TypeRef> Types, List<string> Mismatches);

    public static Result Infer(Model model, IReadOnlyDictionary<string, TypeRef>? inputTypes = null)
    {
        var g = model.Graph;
        var types = new Dictionary<string, TypeRef>();
        var consts = new Dictionary<string, Tensor>(g.Initializers);
        foreach (var (name, t) in g.Initializers) types[name] = TypeRef.TensorOf(t.DType, t.Shape);
        foreach (var i in g.Inputs)
            if (inputTypes?.GetValueOrDefault(i.Name) is { } given) types[i.Name] = given;
            else if (i.Type != null && !types.ContainsKey(i.Name)) types[i.Name] = i.Type;
        foreach (var n in g.Nodes)
        {
            TypeRef?[] outs;
            try { outs = Rule(n, model.Opset(n.Domain), n.Inputs.Select(x => x.Length > 0 ? types.GetValueOrDefault(x) : null).ToArray(), consts); }
            catch (Exception e) when (e is not OutOfMemoryException) { outs = []; } // NOTE: inference never fails a model
            for (int o = 0; o < n.Outputs.Length && o < outs.Length; o++)
                if (n.Outputs[o].Length > 0 && outs[o] is { } t) types[n.Outputs[o]] = t;
            if (n.OpType == "Constant" && n.Outputs.Length == 1 && n.Attributes.TryGetValue("value", out var v) && v.T is { } ct) consts[n.Outputs[0]] = ct;
        }
        var mismatches = new List<string>();
        foreach (var d in g.ValueInfos.Concat(g.Outputs))
        {
            if (d.Type is not { Kind: TypeKind.Tensor } want || !types.TryGetValue(d.Name, out var got) || got.Kind != TypeKind.Tensor) continue;
            if (want.ElemType != DType.Undefined && got.ElemType != DType.Undefined && want.ElemType != got.ElemType)
                mismatches.Add($"'{d.Name}' is declared {want} but inferred {got}");
            else if (want.Shape is { } ws && got.Shape is { } gs)
            {
                if (ws.Length != gs.Length) mismatches.Add($"'{d.Name}' is declared {want} but inferred {got} (rank)");
                else for (int k = 0; k < ws.Length; k++)
                    if (ws[k].Value is long a && gs[k].Value is long b && a != b) { mismatches.Add($"'{d.Name}' is declared {want} but inferred {got} (dimension {k})"); break; }
            }
        }
        return new Result(types, mismatches);
    }

    static readonly HashSet<string> SameAsInput = new()
    {
        "Abs", "Neg", "Sqrt", "Exp", "Log", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
        "Ceil", "Floor", "Round", "Sign", "Reciprocal", "Erf", "Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid",
        "HardSwish", "Softplus", "Softsign", "Tanh", "Gelu", "Mish", "ThresholdedRelu", "Shrink", "PRelu", "Identity", "Softmax",
        "LogSoftmax", "Hardmax", "Dropout", "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
        "MeanVarianceNormalization", "LRN", "LpNormalization", "CumSum", "Clip", "Not", "BitwiseNot", "Trilu", "ReverseSequence",
        "RMSNormalization", "Swish",
    };

    static readonly HashSet<string> Broadcasting = new()
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Mod", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "Max", "Min", "Sum", "Mean",
        "And", "Or", "Xor", "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Where",
    };

    static TypeRef?[] Rule(Node n, int opset, TypeRef?[] ins, Dictionary<string, Tensor> consts)
    {
        TypeRef? In(int i) => i < ins.Length ? ins[i] : null;
        Dim[]? S(int i) => In(i)?.Shape;
        DType T(int i) => In(i)?.ElemType ?? DType.Undefined;
        Tensor? C(int i) => i < n.Inputs.Length && n.Inputs[i].Length > 0 ? consts.GetValueOrDefault(n.Inputs[i]) : null;
        long? AttrI(string a) => n.Attributes.TryGetValue(a, out var v) ? v.I : null;
        long[]? AttrInts(string a) => n.Attributes.TryGetValue(a, out var v) ? v.Ints : null;
        TypeRef Of(DType t, Dim[]? s) => TypeRef.TensorOf(t, s);
        static Dim D(long v) => new(v, null);

        if (n.Domain != "") return [];
        if (SameAsInput.Contains(n.OpType)) return [In(0) is { Kind: TypeKind.Tensor } t ? t : null];
        switch (n.OpType)
        {
            case var op when Broadcasting.Contains(op):
            {
                var shapes = ins.Select(x => x?.Shape).ToArray();
                DType et = op is "Equal" or "Greater" or "Less" or "GreaterOrEqual" or "LessOrEqual" or "And" or "Or" or "Xor" ? DType.Bool
                    : op == "Where" ? T(1) : T(0);
                return [Of(et, shapes.All(s => s != null) ? Broadcast(shapes!) : null)];
            }
            case "Cast": return [Of((DType)(AttrI("to") ?? 0), S(0))];
            case "CastLike": return [Of(T(1), S(0))];
            case "Shape":
            {
                if (S(0) is not { } s) return [Of(DType.Int64, null)];
                long r = s.Length, st = AttrI("start") ?? 0, en = AttrI("end") ?? r;
                st = Math.Clamp(st < 0 ? st + r : st, 0, r); en = Math.Clamp(en < 0 ? en + r : en, 0, r);
                return [Of(DType.Int64, [D(Math.Max(0, en - st))])];
            }
            case "Size": return [Of(DType.Int64, [])];
            case "MatMul":
            {
                if (S(0) is not { } a || S(1) is not { } b || a.Length == 0 || b.Length == 0) return [Of(T(0), null)];
                var aa = a.Length == 1 ? new[] { D(1), a[0] } : a;
                var bb = b.Length == 1 ? new[] { b[0], D(1) } : b;
                var batch = Broadcast([aa[..^2], bb[..^2]]);
                if (batch is null) return [Of(T(0), null)];
                var r = batch.Concat(a.Length == 1 ? [] : new[] { aa[^2] }).Concat(b.Length == 1 ? [] : new[] { bb[^1] }).ToArray();
                return [Of(T(0), r)];
            }
            case "Gemm":
            {
                if (S(0) is not { Length: 2 } a || S(1) is not { Length: 2 } b) return [Of(T(0), null)];
                return [Of(T(0), [(AttrI("transA") ?? 0) != 0 ? a[1] : a[0], (AttrI("transB") ?? 0) != 0 ? b[0] : b[1]])];
            }
            case "Transpose":
            {
                if (S(0) is not { } s) return [Of(T(0), null)];
                var perm = AttrInts("perm") ?? Enumerable.Range(0, s.Length).Reverse().Select(x => (long)x).ToArray();
                return [Of(T(0), perm.Select(p => s[p]).ToArray())];
            }
            case "Reshape":
            {
                if (C(1) is not { } shp) return [Of(T(0), null)];
                var want = shp.ToInt64Array();
                var s = S(0);
                bool allowZero = (AttrI("allowzero") ?? 0) != 0;
                var r = new Dim[want.Length];
                int infer = -1;
                for (int i = 0; i < want.Length; i++)
                {
                    if (want[i] == -1) { infer = i; r[i] = default; }
                    else if (want[i] == 0 && !allowZero) r[i] = s is not null && i < s.Length ? s[i] : default;
                    else r[i] = D(want[i]);
                }
                if (infer >= 0)
                {
                    long? total = s is null ? null : Product(s);
                    long? known = Product(r.Where((_, i) => i != infer).ToArray());
                    r[infer] = total is long t && known is long k && k > 0 ? D(t / k) : default;
                }
                return [Of(T(0), r)];
            }
            case "Flatten":
            {
                if (S(0) is not { } s) return [Of(T(0), null)];
                int axis = (int)(AttrI("axis") ?? 1); if (axis < 0) axis += s.Length;
                return [Of(T(0), [Prod(s[..axis]), Prod(s[axis..])])];
            }
            case "Unsqueeze":
            {
                var axes = opset >= 13 ? C(1)?.ToInt64Array() : AttrInts("axes");
                if (S(0) is not { } s || axes is null) return [Of(T(0), null)];
                int r = s.Length + axes.Length;
                var norm = axes.Select(a => a < 0 ? a + r : a).ToHashSet();
                var res = new Dim[r];
                for (int i = 0, j = 0; i < r; i++) res[i] = norm.Contains(i) ? D(1) : s[j++];
                return [Of(T(0), res)];
            }
            case "Squeeze":
            {
                var axes = opset >= 13 ? C(1)?.ToInt64Array() : AttrInts("axes");
                if (S(0) is not { } s) return [Of(T(0), null)];
                bool axesGiven = opset >= 13 ? n.Inputs.Length > 1 && n.Inputs[1].Length > 0 : axes != null;
                if (axesGiven && axes is null) return [Of(T(0), null)]; // axes computed at run time
                if (axes is null) return [s.All(d => d.Value is long) ? Of(T(0), s.Where(d => d.Value != 1).ToArray()) : Of(T(0), null)];
                var norm = axes.Select(a => a < 0 ? a + s.Length : a).ToHashSet();
                return [Of(T(0), s.Where((_, i) => !norm.Contains(i)).ToArray())];
            }
            case "Concat":
            {
                if (ins.Any(x => x?.Shape is null)) return [Of(T(0), null)];
                var s0 = S(0)!;
                int axis = (int)(AttrI("axis") ?? 0); if (axis < 0) axis += s0.Length;
                var r = (Dim[])s0.Clone();
                long? sum = 0;
                foreach (var x in ins) sum = sum is long acc && x!.Shape![axis].Value is long v ? acc + v : null;
                r[axis] = sum is long t ? D(t) : default;
                return [Of(T(0), r)];
            }
            case "Gather":
            {
                if (S(0) is not { } d || S(1) is not { } idx) return [Of(T(0), null)];
                int axis = (int)(AttrI("axis") ?? 0); if (axis < 0) axis += d.Length;
                return [Of(T(0), d[..axis].Concat(idx).Concat(d[(axis + 1)..]).ToArray())];
            }
            case "Conv" or "MaxPool" or "AveragePool" or "LpPool":
            {
                if (S(0) is not { } x || x.Length < 3 || x.Skip(2).Any(d => d.Value is null)) return [Of(T(0), null), Of(DType.Int64, null)];
                int r = x.Length - 2;
                long[] k = AttrInts("kernel_shape") ?? (n.OpType == "Conv" && S(1) is { } w && w.Skip(2).All(d => d.Value is long) ? w.Skip(2).Select(d => d.Value!.Value).ToArray() : null) ?? throw new TapmlException("kernel shape unknown");
                long[] st = AttrInts("strides") ?? Enumerable.Repeat(1L, r).ToArray();
                long[] dil = AttrInts("dilations") ?? Enumerable.Repeat(1L, r).ToArray();
                long[] pads = AttrInts("pads") ?? new long[2 * r];
                string autoPad = n.Attributes.TryGetValue("auto_pad", out var ap) ? ap.Str : "NOTSET";
                bool ceil = (AttrI("ceil_mode") ?? 0) != 0;
                var outDims = new Dim[x.Length];
                outDims[0] = x[0];
                outDims[1] = n.OpType == "Conv" ? (S(1) is { } ww ? ww[0] : default) : x[1];
                for (int i = 0; i < r; i++)
                {
                    long inD = x[i + 2].Value!.Value, ek = (k[i] - 1) * dil[i] + 1;
                    long o = autoPad is "SAME_UPPER" or "SAME_LOWER" ? (inD + st[i] - 1) / st[i]
                        : autoPad == "VALID" ? (inD - ek) / st[i] + 1
                        : (ceil ? (long)Math.Ceiling((inD + pads[i] + pads[i + r] - ek) / (double)st[i]) : (inD + pads[i] + pads[i + r] - ek) / st[i]) + 1;
                    outDims[i + 2] = D(o);
                }
                return [Of(T(0), outDims), Of(DType.Int64, outDims)];
            }
            case "GlobalAveragePool" or "GlobalMaxPool" or "GlobalLpPool":
                return [S(0) is { } g ? Of(T(0), g.Take(2).Concat(Enumerable.Repeat(D(1), g.Length - 2)).ToArray()) : Of(T(0), null)];
            case "ReduceSum" or "ReduceMean" or "ReduceMax" or "ReduceMin" or "ReduceProd" or "ReduceL1" or "ReduceL2" or "ReduceLogSum" or "ReduceLogSumExp" or "ReduceSumSquare" or "ArgMax" or "ArgMin":
            {
                bool arg = n.OpType.StartsWith("Arg");
                DType et = arg ? DType.Int64 : T(0);
                if (S(0) is not { } s) return [Of(et, null)];
                bool inputAxes = !arg && (n.OpType == "ReduceSum" ? opset >= 13 : opset >= 18);
                long[]? axes = arg ? [AttrI("axis") ?? 0] : inputAxes ? (n.Inputs.Length > 1 && n.Inputs[1].Length > 0 ? C(1)?.ToInt64Array() : []) : AttrInts("axes") ?? [];
                if (axes is null) return [Of(et, null)];
                bool keep = (AttrI("keepdims") ?? 1) != 0;
                if (axes.Length == 0 && !arg)
                {
                    if ((AttrI("noop_with_empty_axes") ?? 0) != 0) return [Of(et, s)];
                    axes = Enumerable.Range(0, s.Length).Select(a => (long)a).ToArray();
                }
                var norm = axes.Select(a => a < 0 ? a + s.Length : a).ToHashSet();
                var r = new List<Dim>();
                for (int i = 0; i < s.Length; i++) if (!norm.Contains(i)) r.Add(s[i]); else if (keep) r.Add(D(1));
                return [Of(et, r.ToArray())];
            }
            case "Expand":
            {
                if (C(1) is not { } shp || S(0) is not { } s) return [Of(T(0), null)];
                return [Of(T(0), Broadcast([s, shp.ToInt64Array().Select(D).ToArray()]))];
            }
            case "ConstantOfShape":
            {
                DType et = n.Attributes.TryGetValue("value", out var v) && v.T is { } vt ? vt.DType : DType.Float32;
                return [Of(et, C(0)?.ToInt64Array().Select(D).ToArray())];
            }
            case "Constant":
                return [n.Attributes.TryGetValue("value", out var cv) && cv.T is { } ct ? Of(ct.DType, ct.Shape.Select(D).ToArray()) : null];
            case "NonZero": return [Of(DType.Int64, S(0) is { } nz ? [D(nz.Length), default] : null)];
            case "TopK": return [Of(T(0), null), Of(DType.Int64, null)];
            default: return [];
        }
    }

    static long? Product(Dim[] s)
    {
        long p = 1;
        foreach (var d in s) { if (d.Value is not long v) return null; p *= v; }
        return p;
    }

    static Dim Prod(Dim[] s) => Product(s) is long p ? new Dim(p, null) : default;

    /// <summary>Numpy broadcast of possibly symbolic shapes (null when incompatible).</summary>
    static Dim[]? Broadcast(Dim[][] shapes)
    {
        int rank = shapes.Max(s => s.Length);
        var r = new Dim[rank];
        for (int i = 0; i < rank; i++)
        {
            Dim? acc = null;
            foreach (var s in shapes)
            {
                int j = i - (rank - s.Length);
                if (j < 0) continue;
                var d = s[j];
                if (acc is null || acc.Value.Value == 1) { acc = d; continue; }
                if (d.Value == 1) continue;
                if (acc.Value.Value is long a && d.Value is long b && a != b) return null;
                if (acc.Value.Value is null && d.Value is long) acc = d;
            }
            r[i] = acc ?? new Dim(1, null);
        }
        return r;
    }
}
