using Tapml.Core;
using Tapml.Ir;
using CpuFlow = Tapml.Platforms.Cpu.Ops.ControlFlow;
using Tapml.Platforms.Cpu.Ops;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>If, Loop, Scan: the condition and trip count are read on the host (a host copy or shadow when there is one,
/// else one scalar readback), the bodies run through the same executor on this device, and loop-carried values,
/// scan slices and stacked scan outputs stay in GPU buffers (strided copies, <see cref="DataMovement.Copy"/>).</summary>
public static class ControlFlow
{
    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "If", 1, If));
        add(new GpuOp("", "Loop", 1, Loop));
        add(new GpuOp("", "Scan", 8, (g, ctx, ins) => ctx.Opset < 9 ? Scan8(g, ctx, ins) : Scan9(g, ctx, ins)));
    }

    // If: the branch cond picks runs here; its outputs are the node's outputs.
    static Value?[] If(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        bool cond = Bool(g, GpuOps.In(ins, 0, ctx), ctx, "cond");
        string name = cond ? "then_branch" : "else_branch";
        var outs = RunBody(g, ctx, ctx.Graph(name), []);
        if (outs.Length < ctx.Node.Outputs.Length)
        {
            FreeAll(g, outs);
            throw ctx.Error($"{name} has {outs.Length} outputs, the node has {ctx.Node.Outputs.Length}");
        }
        for (int i = 0; i < ctx.Node.Outputs.Length; i++)
            if (outs[i] is null && ctx.Node.Outputs[i].Length > 0)
            {
                FreeAll(g, outs);
                throw ctx.Error($"{name} output {i} was not produced");
            }
        return Outputs(g, ctx, outs);
    }

    // Loop(M?, cond?, v_initial...): body(iteration_num, cond, v...) -> (cond, v..., scan_out_elems...), as the cpu
    // reference runs it (ControlFlow.cs there); the body's cond output is read only when the node has a cond input.
    static Value?[] Loop(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var body = ctx.Graph("body");
        var mT = ins.Length > 0 ? ins[0] : null;
        var condT = ins.Length > 1 ? ins[1] : null;
        if (mT is null && condT is null)
            throw ctx.Unsupported("Loop with neither trip count M nor cond never terminates");
        long? maxTrip = null;
        if (mT is not null)
        {
            var m = g.HostOrDownload(mT);
            if (m.Length != 1) throw ctx.Error($"M must hold one element, got {mT.Describe()}");
            maxTrip = m.GetInt64(0);
        }
        bool cond = condT is null || Bool(g, condT, ctx, "cond");
        int n = Math.Max(0, ins.Length - 2);
        if (body.Inputs.Count != 2 + n)
            throw ctx.Error($"body has {body.Inputs.Count} inputs, expected {2 + n} (iteration_num, cond and {n} loop-carried values)");
        int k = body.Outputs.Count - 1 - n;
        if (k < 0) throw ctx.Error($"body has {body.Outputs.Count} outputs, expected at least {1 + n}");
        // The carried values; owned[i]: made by this node (an earlier iteration), so freed once replaced.
        var carried = new GpuTensor[n];
        var owned = new bool[n];
        for (int i = 0; i < n; i++)
            carried[i] = ins[2 + i] ?? throw ctx.Error($"loop-carried initial value {i} is missing");
        var scans = new List<GpuTensor>[k];
        for (int j = 0; j < k; j++) scans[j] = new List<GpuTensor>();
        try
        {
            long it = 0;
            var bodyIn = new Value?[2 + n];
            while ((maxTrip is null || it < maxTrip.Value) && cond)
            {
                if (it >= CpuFlow.MaxIterations)
                    throw ctx.Error($"stopped after {CpuFlow.MaxIterations} iterations (set TAPML_MAX_LOOP_ITERATIONS to allow more)");
                // NOTE: iteration_num and cond are host values uploaded only if a body kernel binds them.
                var iterT = g.HostKnown(Tensor.Scalar(it));
                var condIn = g.HostKnown(Tensor.Scalar(cond));
                bodyIn[0] = iterT;
                bodyIn[1] = condIn;
                Array.Copy(carried, 0, bodyIn, 2, n);
                GpuTensor?[] outs;
                try { outs = RunBody(g, ctx, body, bodyIn); }
                finally { g.Free(iterT); g.Free(condIn); }
                try
                {
                    if (outs.Length < 1 + n + k) throw ctx.Error($"body returned {outs.Length} outputs, expected {1 + n + k}");
                    if (condT is not null)
                        cond = Bool(g, outs[0] ?? throw ctx.Error("body did not produce its cond output"), ctx, "body cond output");
                    for (int i = 0; i < n; i++)
                        if (outs[1 + i] is null) throw ctx.Error($"body did not produce loop-carried output {i} ('{body.Outputs[1 + i].Name}')");
                    for (int j = 0; j < k; j++)
                        if (outs[1 + n + j] is null) throw ctx.Error($"scan output {j} ('{body.Outputs[1 + n + j].Name}') was not produced");
                }
                catch { FreeAll(g, outs); throw; }
                if (outs[0] is { } c) g.Free(c);
                for (int i = 0; i < n; i++)
                {
                    if (owned[i]) g.Free(carried[i]);
                    carried[i] = outs[1 + i]!;
                    owned[i] = true;
                }
                for (int j = 0; j < k; j++) scans[j].Add(outs[1 + n + j]!);
                it++;
            }
            var result = new Value?[n + k];
            for (int j = 0; j < k; j++)
                result[n + j] = scans[j].Count > 0 ? Stack(g, ctx, scans[j], 0, reverse: false)
                    : EmptyOf(g, ControlFlowHelpers.EmptyScan(body.Outputs[1 + n + j], 0, ctx));
            // A carried value the loop never replaced is the node's input: the output is a view of it.
            for (int i = 0; i < n; i++) { result[i] = owned[i] ? carried[i] : Own(g, carried[i]); owned[i] = false; }
            return Outputs(g, ctx, result);
        }
        finally
        {
            for (int i = 0; i < n; i++) if (owned[i]) g.Free(carried[i]);
            foreach (var list in scans) foreach (var t in list) g.Free(t);
        }
    }

    // Scan-9+: inputs (state_1..state_n, scan_1..scan_m); scan inputs are sliced along scan_input_axes (in
    // scan_input_directions order) on the device; per-iteration outputs are stacked along scan_output_axes.
    static Value?[] Scan9(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var body = ctx.Graph("body");
        var (m, n, k, inAxes, inDirs, outAxes, outDirs) = Cpu.Ops.ControlFlowHelpers.Scan9Attributes(ctx, body, ins.Length);
        var scanIn = new GpuTensor[m];
        var axes = new int[m];
        long len = -1;
        for (int j = 0; j < m; j++)
        {
            scanIn[j] = GpuOps.In(ins, n + j, ctx);
            axes[j] = ShapeUtil.Axis(inAxes[j], scanIn[j].Rank, "scan_input_axes entry");
            long l = scanIn[j].Shape[axes[j]];
            if (len >= 0 && l != len) throw ctx.Error($"scan inputs have different sequence lengths ({len} and {l})");
            len = l;
        }
        var states = new GpuTensor[n];
        for (int i = 0; i < n; i++) states[i] = ins[i] ?? throw ctx.Error($"initial state {i} is missing");
        var run = new StateLoop(g, ctx, body, states, k);
        try
        {
            for (long t = 0; t < len; t++)
            {
                var slices = new GpuTensor[m];
                for (int j = 0; j < m; j++) slices[j] = Take(g, scanIn[j], axes[j], inDirs[j] == 1 ? len - 1 - t : t);
                run.Step(slices);
            }
            var result = new Value?[n + k];
            for (int j = 0; j < k; j++)
            {
                var items = run.Scans[j];
                if (items.Count == 0)
                {
                    int r = body.Outputs[n + j].Type?.Shape?.Length ?? -1;
                    int ax = r < 0 ? 0 : ShapeUtil.Axis(outAxes[j], r + 1, "scan_output_axes entry");
                    result[n + j] = EmptyOf(g, ControlFlowHelpers.EmptyScan(body.Outputs[n + j], ax, ctx));
                }
                else
                {
                    int ax = ShapeUtil.Axis(outAxes[j], items[0].Rank + 1, "scan_output_axes entry");
                    result[n + j] = Stack(g, ctx, items, ax, reverse: outDirs[j] == 1);
                }
            }
            run.TakeStates(result);
            return Outputs(g, ctx, result);
        }
        finally { run.Dispose(); }
    }

    // Scan-8: inputs (sequence_lens?, state_1..state_n, scan_1..scan_m), batch axis 0 on every state and scan input,
    // sequence axis 1 on scan inputs; each batch entry loops over its own length, scan outputs are padded with zeros.
    static Value?[] Scan8(WebGpuPlatform g, NodeContext ctx, GpuTensor?[] ins)
    {
        var body = ctx.Graph("body");
        int m = (int)ctx.Int("num_scan_inputs");
        int n = ins.Length - 1 - m;
        if (m < 1 || n < 0) throw ctx.Error($"num_scan_inputs {m} does not fit {ins.Length} inputs");
        int k = body.Outputs.Count - n;
        if (k < 0 || body.Inputs.Count != n + m)
            throw ctx.Error($"body has {body.Inputs.Count} inputs and {body.Outputs.Count} outputs; expected {n + m} inputs and at least {n} outputs");
        long[] dirs = ctx.Ints("directions") ?? new long[m];
        if (dirs.Length != m) throw ctx.Error("directions must have num_scan_inputs entries");
        var init = new GpuTensor[n];
        for (int i = 0; i < n; i++) init[i] = GpuOps.In(ins, 1 + i, ctx);
        var scanIn = new GpuTensor[m];
        for (int j = 0; j < m; j++)
        {
            scanIn[j] = GpuOps.In(ins, 1 + n + j, ctx);
            if (scanIn[j].Rank < 2) throw ctx.Error($"scan input {j} must have batch and sequence axes, got {scanIn[j].Describe()}");
        }
        long batch = scanIn[0].Shape[0], maxLen = scanIn[0].Shape[1];
        for (int j = 1; j < m; j++)
            if (scanIn[j].Shape[0] != batch || scanIn[j].Shape[1] != maxLen) throw ctx.Error("scan inputs must share batch size and sequence length");
        for (int i = 0; i < n; i++)
            if (init[i].Rank < 1 || init[i].Shape[0] != batch) throw ctx.Error($"initial state {i} {init[i].Describe()} must have batch size {batch}");
        long[] lens = new long[batch];
        Array.Fill(lens, maxLen);
        if (ins[0] is { } sl)
        {
            var l = g.Ints(sl);
            if (l.Length != batch) throw ctx.Error($"sequence_lens has {l.Length} entries, batch size is {batch}");
            for (int b = 0; b < batch; b++)
            {
                if (l[b] < 0 || l[b] > maxLen) throw ctx.Error($"sequence_lens[{b}] = {l[b]} is outside [0, {maxLen}]");
                lens[b] = l[b];
            }
        }
        var finals = new List<GpuTensor>[n];
        for (int i = 0; i < n; i++) finals[i] = new List<GpuTensor>();
        var perBatch = new List<GpuTensor>[k, batch];
        var made = new List<GpuTensor>();   // every tensor this node made, freed at the end
        try
        {
            for (long b = 0; b < batch; b++)
            {
                var st = new GpuTensor[n];
                for (int i = 0; i < n; i++) { st[i] = Take(g, init[i], 0, b); made.Add(st[i]); }
                var seqs = new GpuTensor[m];
                for (int j = 0; j < m; j++) { seqs[j] = Take(g, scanIn[j], 0, b); made.Add(seqs[j]); }
                var run = new StateLoop(g, ctx, body, st, k);
                try
                {
                    for (long t = 0; t < lens[b]; t++)
                    {
                        var slices = new GpuTensor[m];
                        for (int j = 0; j < m; j++) slices[j] = Take(g, seqs[j], 0, dirs[j] == 1 ? lens[b] - 1 - t : t);
                        run.Step(slices);
                    }
                    var last = new Value?[n];
                    run.TakeStates(last);
                    for (int i = 0; i < n; i++) { finals[i].Add((GpuTensor)last[i]!); made.Add((GpuTensor)last[i]!); }
                    for (int j = 0; j < k; j++) { perBatch[j, b] = [.. run.Scans[j]]; made.AddRange(run.Scans[j]); }
                    run.Release();
                }
                finally { run.Dispose(); }
            }
            var result = new Value?[n + k];
            for (int i = 0; i < n; i++)
                result[i] = batch > 0 ? Stack(g, ctx, finals[i], 0, reverse: false) : ShapeOps.Fill(g, init[i].DType, init[i].Shape, 0);
            for (int j = 0; j < k; j++)
            {
                GpuTensor? first = null;
                for (long b = 0; b < batch && first is null; b++) if (perBatch[j, b].Count > 0) first = perBatch[j, b][0];
                var (elemShape, dt) = ControlFlowHelpers.ScanElement(first?.Shape, first?.DType, body.Outputs[n + j], ctx);
                long[] shape = [batch, maxLen, .. elemShape];
                var y = ShapeOps.Fill(g, dt, shape, 0);
                result[n + j] = y;
                var yst = ShapeUtil.Strides(shape);
                for (long b = 0; b < batch; b++)
                    for (int t = 0; t < perBatch[j, b].Count; t++)
                    {
                        var e = perBatch[j, b][t];
                        if (e.DType != dt || !ShapeUtil.SameShape(e.Shape, elemShape))
                        {
                            FreeAll(g, result);
                            throw ctx.Error($"scan output {j} changes type or shape across iterations ({e.Describe()} vs {DTypes.Name(dt)}{ShapeUtil.Format(elemShape)})");
                        }
                        DataMovement.Copy(g, e, y, e.Shape, ShapeUtil.Strides(e.Shape), 0, yst[2..], b * yst[0] + t * yst[1], "ScanStack");
                    }
            }
            return Outputs(g, ctx, result);
        }
        finally { foreach (var t in made) g.Free(t); }
    }

    /// <summary>A body run over states: each step feeds the states and the step's scan slices, keeps the new states
    /// (freeing those it made before) and collects the scan outputs.</summary>
    sealed class StateLoop(WebGpuPlatform g, NodeContext ctx, Graph body, GpuTensor[] states, int k) : IDisposable
    {
        readonly bool[] _owned = new bool[states.Length];
        public readonly List<GpuTensor>[] Scans = Enumerable.Range(0, k).Select(_ => new List<GpuTensor>()).ToArray();

        /// <summary>Runs the body once; the slices are freed after it.</summary>
        public void Step(GpuTensor[] slices)
        {
            int n = states.Length;
            var bodyIn = new Value?[n + slices.Length];
            Array.Copy(states, bodyIn, n);
            Array.Copy(slices, 0, bodyIn, n, slices.Length);
            GpuTensor?[] outs;
            try { outs = RunBody(g, ctx, body, bodyIn); }
            finally { foreach (var s in slices) g.Free(s); }
            if (outs.Length < n + k || outs.Take(n + k).Any(o => o is null))
            {
                FreeAll(g, outs);
                throw ctx.Error($"body returned {outs.Count(o => o is not null)} of its {n + k} state and scan outputs");
            }
            for (int i = 0; i < n; i++)
            {
                if (_owned[i]) g.Free(states[i]);
                states[i] = outs[i]!;
                _owned[i] = true;
            }
            for (int j = 0; j < k; j++) Scans[j].Add(outs[n + j]!);
        }

        /// <summary>The final states into <paramref name="result"/>[0..n) (views of inputs never replaced); the caller owns them.</summary>
        public void TakeStates(Value?[] result)
        {
            for (int i = 0; i < states.Length; i++) { result[i] = _owned[i] ? states[i] : Own(g, states[i]); _owned[i] = false; }
        }

        /// <summary>The scan outputs now belong to the caller.</summary>
        public void Release() { foreach (var l in Scans) l.Clear(); }

        public void Dispose()
        {
            for (int i = 0; i < states.Length; i++) if (_owned[i]) { g.Free(states[i]); _owned[i] = false; }
            foreach (var l in Scans) { foreach (var t in l) g.Free(t); l.Clear(); }
        }
    }

    /// <summary>Runs a body and returns its outputs as tensors on this device that the caller owns: values the body
    /// made are taken as they are; values it passed through (its inputs, outer values) become views; host values
    /// (a body node on a fallback platform, or a runner without resident outputs) are uploaded.</summary>
    static GpuTensor?[] RunBody(WebGpuPlatform g, NodeContext ctx, Graph body, IReadOnlyList<Value?> inputs)
    {
        string context = g.Device.Context;
        SubgraphOutputs r;
        try
        {
            r = ctx.RunSubgraphResident is { } resident ? resident(body, inputs)
                : ctx.RunSubgraph is { } plain ? new SubgraphOutputs(plain(body, inputs), new bool[body.Outputs.Count])
                : throw ctx.Error("subgraphs cannot run here");
        }
        finally { g.Device.Context = context; }
        var outs = new GpuTensor?[r.Values.Length];
        for (int i = 0; i < outs.Length; i++)
        {
            var v = r.Values[i];
            bool mine = i < r.Owned.Length && r.Owned[i] && Array.IndexOf(r.Values, v) == i && !inputs.Any(x => ReferenceEquals(x, v));
            switch (v)
            {
                case null: break;
                case GpuTensor t when g.IsResident(t): outs[i] = mine ? t : Own(g, t); break;
                case Tensor t: outs[i] = g.UploadTemporary(t); break;
                case Execution.IDeviceValue d when d.Owner.Download(v) is Tensor host:
                    outs[i] = g.UploadTemporary(host);
                    if (mine) d.Owner.Free(v);
                    break;
                default:
                    for (int j = i + 1; j < r.Values.Length; j++)
                        if (r.Owned[j] && r.Values[j] is Execution.IDeviceValue dv && Array.IndexOf(r.Values, r.Values[j]) == j) dv.Owner.Free(r.Values[j]!);
                    FreeAll(g, outs);
                    throw ctx.Unsupported($"body output '{body.Outputs[i].Name}' is {v.Describe()}; {g.Kind} holds tensors only");
            }
        }
        return outs;
    }

    /// <summary>A tensor the caller owns with <paramref name="t"/>'s contents: a view sharing its buffer.</summary>
    static GpuTensor Own(WebGpuPlatform g, GpuTensor t)
    {
        if (t.ByteOffset == 0) return g.Alias(t, t.Shape);
        var y = g.Empty(t.DType, t.Shape);
        DataMovement.Copy(g, t, y, t.Shape, ShapeUtil.Strides(t.Shape), 0, ShapeUtil.Strides(t.Shape), 0, "Copy");
        return y;
    }

    /// <summary>The node's outputs: entries beyond its outputs or for unnamed ones are freed.</summary>
    static Value?[] Outputs(WebGpuPlatform g, NodeContext ctx, IReadOnlyList<Value?> values)
    {
        var r = new Value?[ctx.Node.Outputs.Length];
        for (int i = 0; i < values.Count; i++)
        {
            if (i < r.Length && ctx.Node.Outputs[i].Length > 0) r[i] = values[i];
            else if (values[i] is { } v) g.Free(v);
        }
        return r;
    }

    static GpuTensor EmptyOf(WebGpuPlatform g, Tensor empty) => g.Empty(empty.DType, empty.Shape);

    static void FreeAll(WebGpuPlatform g, IEnumerable<Value?> values)
    {
        foreach (var v in values) if (v is not null) g.Free(v);
    }

    /// <summary>A one-element condition: its host copy or shadow when there is one, else one readback.</summary>
    static bool Bool(WebGpuPlatform g, GpuTensor t, NodeContext ctx, string what)
    {
        if (t.Length != 1) throw ctx.Error($"{what} must hold exactly one element, got {t.Describe()}");
        return g.HostOrDownload(t).GetDouble(0) != 0;
    }

    /// <summary>The sub-tensor at <paramref name="index"/> along <paramref name="axis"/> (rank one less), copied.</summary>
    static GpuTensor Take(WebGpuPlatform g, GpuTensor x, int axis, long index)
    {
        var xst = ShapeUtil.Strides(x.Shape);
        long[] shape = [.. x.Shape[..axis], .. x.Shape[(axis + 1)..]];
        long[] src = [.. xst[..axis], .. xst[(axis + 1)..]];
        var y = g.Empty(x.DType, shape);
        DataMovement.Copy(g, x, y, shape, src, index * xst[axis], ShapeUtil.Strides(shape), 0, "ScanSlice");
        return y;
    }

    /// <summary>Equal-shaped tensors stacked along a new axis <paramref name="axis"/> (the last first when reversed).</summary>
    static GpuTensor Stack(WebGpuPlatform g, NodeContext ctx, List<GpuTensor> items, int axis, bool reverse)
    {
        var first = items[0];
        foreach (var e in items)
            if (e.DType != first.DType || !ShapeUtil.SameShape(e.Shape, first.Shape))
                throw ctx.Error($"scan output changes type or shape across iterations ({first.Describe()} then {e.Describe()})");
        int count = items.Count;
        long[] shape = [.. first.Shape[..axis], count, .. first.Shape[axis..]];
        var y = g.Empty(first.DType, shape);
        var yst = ShapeUtil.Strides(shape);
        long[] dst = [.. yst[..axis], .. yst[(axis + 1)..]];
        var est = ShapeUtil.Strides(first.Shape);
        for (int t = 0; t < count; t++)
            DataMovement.Copy(g, items[t], y, first.Shape, est, 0, dst, (reverse ? count - 1 - t : t) * yst[axis], "ScanStack");
        return y;
    }
}
