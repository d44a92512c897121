using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>If, Loop, Scan: control flow through subgraphs (<see cref="NodeContext.Subgraph"/>). Outer-scope
/// names inside bodies resolve through the executor's scopes; values are passed positionally.</summary>
public sealed class ControlFlow : ICpuOpFamily
{
    public void Register(CpuOpRegistry r)
    {
        r.Add("If", If);
        r.Add("Loop", Loop);
        r.Add("Scan", Scan, sinceOpset: 8);
        r.Add(Tapml.Ir.Fusion.OpType, Fused, domain: Tapml.Ir.Fusion.Domain);
    }

    // tapml.Fused (Tapml.Ir.Fusion): the region's original nodes, run as they were; a GPU runs them as one kernel.
    static Value?[] Fused(NodeContext ctx, Value?[] inputs)
    {
        var outs = ctx.Subgraph(ctx.Graph("body"), inputs);
        if (outs.Length < 1 || outs[0] is null) throw ctx.Error("the fused body produced no output");
        return outs;
    }

    // If: runs then_branch when cond is true, else_branch otherwise; the branch's outputs are the node's outputs
    // (tensors, sequences or optionals, whatever the branch produces).
    static Value?[] If(NodeContext ctx, Value?[] inputs)
    {
        bool cond = ControlFlowHelpers.Bool(inputs.T(0, ctx), ctx, "cond");
        var branch = ctx.Graph(cond ? "then_branch" : "else_branch");
        var outs = ctx.Subgraph(branch, []);
        if (outs.Length < ctx.Node.Outputs.Length)
            throw ctx.Error($"{(cond ? "then_branch" : "else_branch")} has {outs.Length} outputs, the node has {ctx.Node.Outputs.Length}");
        for (int i = 0; i < ctx.Node.Outputs.Length; i++)
            if (outs[i] is null && ctx.Node.Outputs[i].Length > 0)
                throw ctx.Error($"branch output {i} ('{branch.Outputs[i].Name}') was not produced");
        return outs;
    }

    /// <summary>Most iterations one Loop node may run: TAPML_MAX_LOOP_ITERATIONS, default 10 million.</summary>
    public static readonly long MaxIterations =
        long.TryParse(Environment.GetEnvironmentVariable("TAPML_MAX_LOOP_ITERATIONS"), out long v) && v > 0 ? v : 10_000_000;

    // Loop(M?, cond?, v_initial...): body(iteration_num, cond, v...) -> (cond, v..., scan_out_elems...).
    // Spec table: M given, cond omitted = for loop (the body's cond output is ignored); cond given = while loop;
    // both given = for loop with early exit; neither = infinite loop (refused: it never ends).
    static Value?[] Loop(NodeContext ctx, Value?[] inputs)
    {
        var body = ctx.Graph("body");
        Tensor? mT = inputs.OptT(0);
        Tensor? condT = inputs.Length > 1 ? inputs.OptT(1) : null;
        if (mT is null && condT is null)
            throw ctx.Unsupported("Loop with neither trip count M nor cond never terminates");
        long? maxTrip = null;
        if (mT is not null)
        {
            if (mT.Length != 1) throw ctx.Error($"M must hold one element, got {mT.Describe()}");
            maxTrip = mT.GetInt64(0);
        }
        bool cond = condT is null || ControlFlowHelpers.Bool(condT, ctx, "cond");
        int n = Math.Max(0, inputs.Length - 2);
        var carried = new Value?[n];
        for (int i = 0; i < n; i++)
            carried[i] = inputs[2 + i] ?? throw ctx.Error($"loop-carried initial value {i} is missing");
        if (body.Inputs.Count != 2 + n)
            throw ctx.Error($"body has {body.Inputs.Count} inputs, expected {2 + n} (iteration_num, cond and {n} loop-carried values)");
        int k = body.Outputs.Count - 1 - n;
        if (k < 0) throw ctx.Error($"body has {body.Outputs.Count} outputs, expected at least {1 + n}");
        var scans = new List<Tensor>[k];
        for (int j = 0; j < k; j++) scans[j] = new List<Tensor>();

        long it = 0;
        var bodyIn = new Value?[2 + n];
        while ((maxTrip is null || it < maxTrip.Value) && cond)
        {
            // NOTE: a loop that never ends (cond stuck true, a huge M) is a bad model, reported, not a hang.
            if (it >= MaxIterations)
                throw ctx.Error($"stopped after {MaxIterations} iterations (set TAPML_MAX_LOOP_ITERATIONS to allow more)");
            bodyIn[0] = Tensor.Scalar(it);
            bodyIn[1] = Tensor.Scalar(cond);
            Array.Copy(carried, 0, bodyIn, 2, n);
            var outs = ctx.Subgraph(body, bodyIn);
            if (outs.Length < 1 + n + k) throw ctx.Error($"body returned {outs.Length} outputs, expected {1 + n + k}");
            if (condT is not null)
            {
                var c = outs[0] as Tensor ?? throw ctx.Error("body did not produce its cond output");
                cond = ControlFlowHelpers.Bool(c, ctx, "body cond output");
            }
            for (int i = 0; i < n; i++)
                carried[i] = outs[1 + i] ?? throw ctx.Error($"body did not produce loop-carried output {i} ('{body.Outputs[1 + i].Name}')");
            for (int j = 0; j < k; j++)
            {
                var so = outs[1 + n + j] as Tensor ?? throw ctx.Error($"scan output {j} ('{body.Outputs[1 + n + j].Name}') must be a tensor, got {outs[1 + n + j]?.Describe() ?? "nothing"}");
                scans[j].Add(so);
            }
            it++;
        }

        var result = new Value?[n + k];
        Array.Copy(carried, result, n);
        for (int j = 0; j < k; j++)
        {
            // Scan outputs: per-iteration values concatenated along a new first axis; after zero iterations an
            // empty tensor whose element type (and known dims) come from the body's declared output.
            result[n + j] = scans[j].Count > 0
                ? ControlFlowHelpers.Stack(scans[j], 0, ctx)
                : ControlFlowHelpers.EmptyScan(body.Outputs[1 + n + j], 0, ctx);
        }
        return ctx.Outputs(result);
    }

    static Value?[] Scan(NodeContext ctx, Value?[] inputs) => ctx.Opset < 9 ? Scan8(ctx, inputs) : Scan9(ctx, inputs);

    // Scan-9+: inputs (state_1..state_n, scan_1..scan_m); scan_input_axes/directions choose the axis and order in
    // which each scan input is iterated; scan_output_axes/directions where and in which order the per-iteration
    // outputs are stacked.
    static Value?[] Scan9(NodeContext ctx, Value?[] inputs)
    {
        var body = ctx.Graph("body");
        var (m, n, k, inAxes, inDirs, outAxes, outDirs) = ControlFlowHelpers.Scan9Attributes(ctx, body, inputs.Length);

        var scanIn = new Tensor[m];
        var axes = new int[m];
        long len = -1;
        for (int j = 0; j < m; j++)
        {
            scanIn[j] = inputs.T(n + j, ctx);
            axes[j] = ShapeUtil.Axis(inAxes[j], scanIn[j].Rank, "scan_input_axes entry");
            long l = scanIn[j].Shape[axes[j]];
            if (len >= 0 && l != len) throw ctx.Error($"scan inputs have different sequence lengths ({len} and {l})");
            len = l;
        }
        var states = new Value?[n];
        for (int i = 0; i < n; i++) states[i] = inputs[i] ?? throw ctx.Error($"initial state {i} is missing");
        var scans = new List<Tensor>[k];
        for (int j = 0; j < k; j++) scans[j] = new List<Tensor>();
        var bodyIn = new Value?[n + m];
        for (long t = 0; t < len; t++)
        {
            Array.Copy(states, bodyIn, n);
            for (int j = 0; j < m; j++)
                bodyIn[n + j] = ControlFlowHelpers.Take(scanIn[j], axes[j], inDirs[j] == 1 ? len - 1 - t : t);
            var outs = ctx.Subgraph(body, bodyIn);
            for (int i = 0; i < n; i++) states[i] = outs[i] ?? throw ctx.Error($"body did not produce state output {i}");
            for (int j = 0; j < k; j++)
                scans[j].Add(outs[n + j] as Tensor ?? throw ctx.Error($"body scan output {j} must be a tensor"));
        }
        var result = new Value?[n + k];
        Array.Copy(states, result, n);
        for (int j = 0; j < k; j++)
        {
            if (outDirs[j] == 1) scans[j].Reverse(); // reverse direction: the last iteration's value comes first
            if (scans[j].Count == 0)
            {
                var decl = body.Outputs[n + j].Type;
                int r = decl?.Shape?.Length ?? -1;
                int ax = r < 0 ? 0 : ShapeUtil.Axis(outAxes[j], r + 1, "scan_output_axes entry");
                result[n + j] = ControlFlowHelpers.EmptyScan(body.Outputs[n + j], ax, ctx);
            }
            else
            {
                int ax = ShapeUtil.Axis(outAxes[j], scans[j][0].Rank + 1, "scan_output_axes entry");
                result[n + j] = ControlFlowHelpers.Stack(scans[j], ax, ctx);
            }
        }
        return ctx.Outputs(result);
    }

    // Scan-8: inputs (sequence_lens?, state_1..state_n, scan_1..scan_m), batch axis 0 on every state and scan
    // input, sequence axis 1 on scan inputs. Each batch entry runs its own loop of sequence_lens[b] iterations;
    // scan outputs are [batch, max_len, ...], padded with zeros past a batch entry's length.
    static Value?[] Scan8(NodeContext ctx, Value?[] inputs)
    {
        var body = ctx.Graph("body");
        int m = (int)ctx.Int("num_scan_inputs");
        int n = inputs.Length - 1 - m;
        if (m < 1 || n < 0) throw ctx.Error($"num_scan_inputs {m} does not fit {inputs.Length} inputs");
        int k = body.Outputs.Count - n;
        if (k < 0 || body.Inputs.Count != n + m)
            throw ctx.Error($"body has {body.Inputs.Count} inputs and {body.Outputs.Count} outputs; expected {n + m} inputs and at least {n} outputs");
        long[] dirs = ctx.Ints("directions") ?? new long[m];
        if (dirs.Length != m) throw ctx.Error("directions must have num_scan_inputs entries");
        var init = new Tensor[n];
        for (int i = 0; i < n; i++) init[i] = inputs.T(1 + i, ctx);
        var scanIn = new Tensor[m];
        for (int j = 0; j < m; j++)
        {
            scanIn[j] = inputs.T(1 + n + j, ctx);
            if (scanIn[j].Rank < 2) throw ctx.Error($"scan input {j} must have batch and sequence axes, got {scanIn[j].Describe()}");
        }
        long batch = scanIn[0].Shape[0], maxLen = scanIn[0].Shape[1];
        for (int j = 1; j < m; j++)
            if (scanIn[j].Shape[0] != batch || scanIn[j].Shape[1] != maxLen)
                throw ctx.Error("scan inputs must share batch size and sequence length");
        for (int i = 0; i < n; i++)
            if (init[i].Rank < 1 || init[i].Shape[0] != batch) throw ctx.Error($"initial state {i} {init[i].Describe()} must have batch size {batch}");
        long[] lens = new long[batch];
        Array.Fill(lens, maxLen);
        if (inputs.OptT(0) is { } sl)
        {
            if (sl.Length != batch) throw ctx.Error($"sequence_lens has {sl.Length} entries, batch size is {batch}");
            for (int b = 0; b < batch; b++)
            {
                lens[b] = sl.GetInt64(b);
                if (lens[b] < 0 || lens[b] > maxLen) throw ctx.Error($"sequence_lens[{b}] = {lens[b]} is outside [0, {maxLen}]");
            }
        }

        var finalStates = new List<Tensor>[n];
        for (int i = 0; i < n; i++) finalStates[i] = new List<Tensor>();
        var scanOuts = new List<Tensor>[k, batch];
        var bodyIn = new Value?[n + m];
        for (long b = 0; b < batch; b++)
        {
            var st = new Tensor[n];
            for (int i = 0; i < n; i++) st[i] = ControlFlowHelpers.Take(init[i], 0, b);
            var perB = new Tensor[m];
            for (int j = 0; j < m; j++) perB[j] = ControlFlowHelpers.Take(scanIn[j], 0, b);
            for (int j = 0; j < k; j++) scanOuts[j, b] = new List<Tensor>();
            for (long t = 0; t < lens[b]; t++)
            {
                for (int i = 0; i < n; i++) bodyIn[i] = st[i];
                for (int j = 0; j < m; j++) bodyIn[n + j] = ControlFlowHelpers.Take(perB[j], 0, dirs[j] == 1 ? lens[b] - 1 - t : t);
                var outs = ctx.Subgraph(body, bodyIn);
                for (int i = 0; i < n; i++) st[i] = outs[i] as Tensor ?? throw ctx.Error($"body state output {i} must be a tensor");
                for (int j = 0; j < k; j++) scanOuts[j, b].Add(outs[n + j] as Tensor ?? throw ctx.Error($"body scan output {j} must be a tensor"));
            }
            for (int i = 0; i < n; i++) finalStates[i].Add(st[i]);
        }

        var result = new Value?[n + k];
        for (int i = 0; i < n; i++)
            result[i] = batch > 0 ? ControlFlowHelpers.Stack(finalStates[i], 0, ctx) : Tensor.Zeros(init[i].DType, init[i].Shape);
        for (int j = 0; j < k; j++)
        {
            Tensor? first = null;
            for (long b = 0; b < batch && first is null; b++) if (scanOuts[j, b].Count > 0) first = scanOuts[j, b][0];
            var (elemShape, dt) = ControlFlowHelpers.ScanElement(first?.Shape, first?.DType, body.Outputs[n + j], ctx);
            var shape = new long[elemShape.Length + 2];
            shape[0] = batch; shape[1] = maxLen;
            elemShape.CopyTo(shape, 2);
            var o = Tensor.Zeros(dt, shape);
            long es = ShapeUtil.Size(elemShape);
            for (long b = 0; b < batch; b++)
                for (int t = 0; t < scanOuts[j, b].Count; t++)
                {
                    var e = scanOuts[j, b][t];
                    if (e.DType != dt || !ShapeUtil.SameShape(e.Shape, elemShape))
                        throw ctx.Error($"scan output {j} changes type or shape across iterations ({e.Describe()} vs {DTypes.Name(dt)}{ShapeUtil.Format(elemShape)})");
                    Array.Copy(e.Data, 0, o.Data, (b * maxLen + t) * es, es);
                }
            result[n + j] = o;
        }
        return ctx.Outputs(result);
    }
}

/// <summary>Slicing, stacking and scalar reads shared by the control-flow kernels.</summary>
internal static class ControlFlowHelpers
{
    /// <summary>Scan-9+'s counts (m scan inputs, n states, k scan outputs) and its axis/direction attributes, checked
    /// against the body and the node's <paramref name="inputCount"/> inputs.</summary>
    public static (int M, int N, int K, long[] InAxes, long[] InDirs, long[] OutAxes, long[] OutDirs) Scan9Attributes(NodeContext ctx, Graph body, int inputCount)
    {
        int m = (int)ctx.Int("num_scan_inputs");
        int n = inputCount - m;
        if (m < 1 || n < 0) throw ctx.Error($"num_scan_inputs {m} does not fit {inputCount} inputs");
        int k = body.Outputs.Count - n;
        if (k < 0 || body.Inputs.Count != n + m)
            throw ctx.Error($"body has {body.Inputs.Count} inputs and {body.Outputs.Count} outputs; expected {n + m} inputs and at least {n} outputs");
        long[] inAxes = ctx.Ints("scan_input_axes") ?? new long[m];
        long[] inDirs = ctx.Ints("scan_input_directions") ?? new long[m];
        long[] outAxes = ctx.Ints("scan_output_axes") ?? new long[k];
        long[] outDirs = ctx.Ints("scan_output_directions") ?? new long[k];
        if (inAxes.Length != m || inDirs.Length != m) throw ctx.Error("scan_input_axes/scan_input_directions must have num_scan_inputs entries");
        if (outAxes.Length != k || outDirs.Length != k) throw ctx.Error($"scan_output_axes/scan_output_directions must have {k} entries");
        return (m, n, k, inAxes, inDirs, outAxes, outDirs);
    }

    public static bool Bool(Tensor t, NodeContext ctx, string what)
    {
        if (t.Length != 1) throw ctx.Error($"{what} must hold exactly one element, got {t.Describe()}");
        return t.GetDouble(0) != 0;
    }

    /// <summary>The sub-tensor at <paramref name="index"/> along <paramref name="axis"/> (rank one less).</summary>
    public static Tensor Take(Tensor t, int axis, long index)
    {
        long outer = ShapeUtil.Size(t.Shape.AsSpan(0, axis));
        long dim = t.Shape[axis];
        long inner = ShapeUtil.Size(t.Shape.AsSpan(axis + 1));
        var shape = new long[t.Rank - 1];
        for (int i = 0, j = 0; i < t.Rank; i++) if (i != axis) shape[j++] = t.Shape[i];
        var r = Tensor.Zeros(t.DType, shape);
        for (long o = 0; o < outer; o++)
            Array.Copy(t.Data, (o * dim + index) * inner, r.Data, o * inner, inner);
        return r;
    }

    /// <summary>Stacks equal-shaped tensors along a new axis <paramref name="axis"/> of the result.</summary>
    public static Tensor Stack(List<Tensor> items, int axis, NodeContext ctx)
    {
        var first = items[0];
        foreach (var e in items)
            if (e.DType != first.DType || !ShapeUtil.SameShape(e.Shape, first.Shape))
                throw ctx.Error($"scan output changes type or shape across iterations ({first.Describe()} then {e.Describe()})");
        int count = items.Count;
        var shape = new long[first.Rank + 1];
        for (int i = 0, j = 0; i < shape.Length; i++) shape[i] = i == axis ? count : first.Shape[j++];
        var r = Tensor.Zeros(first.DType, shape);
        long outer = ShapeUtil.Size(first.Shape.AsSpan(0, axis));
        long inner = ShapeUtil.Size(first.Shape.AsSpan(axis));
        for (int t = 0; t < count; t++)
            for (long o = 0; o < outer; o++)
                Array.Copy(items[t].Data, o * inner, r.Data, (o * count + t) * inner, inner);
        return r;
    }

    /// <summary>The element type and shape of a batched scan output: those of its first element, or after zero
    /// iterations the body output's declared ones (see <see cref="EmptyScan"/>).</summary>
    public static (long[] Shape, DType DType) ScanElement(long[]? firstShape, DType? firstType, ValueInfo decl, NodeContext ctx)
    {
        if (firstShape is not null && firstType is { } dt) return (firstShape, dt);
        var empty = EmptyScan(decl, 0, ctx);
        return (empty.Shape[1..], empty.DType);
    }

    /// <summary>A scan output after zero iterations: 0 at <paramref name="axis"/>, the body output's declared
    /// dims elsewhere (unknown dims count as 0, so the tensor stays empty).</summary>
    public static Tensor EmptyScan(ValueInfo decl, int axis, NodeContext ctx)
    {
        if (decl.Type is not { Kind: TypeKind.Tensor } type || type.ElemType == DType.Undefined)
            throw ctx.Unsupported($"zero iterations and the body output '{decl.Name}' declares no tensor type to build an empty scan output from");
        var dims = type.Shape ?? [];
        var shape = new long[dims.Length + 1];
        for (int i = 0, j = 0; i < shape.Length; i++) shape[i] = i == axis ? 0 : dims[j++].Value ?? 0;
        return Tensor.Zeros(type.ElemType, shape);
    }
}
