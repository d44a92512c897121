using System.Numerics;
using Tapml.Core;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>One elementwise kernel over two inputs: <see cref="Op"/> per element, plus optional vectorized span
/// forms (same-shape rows, row ∘ scalar, scalar ∘ row) that return false when the op has none for T. The
/// broadcast loop in <see cref="BinaryBroadcast"/> drives every binary op through this (TensorPrimitives style).</summary>
internal interface IBinaryKernel<T, TR>
{
    static abstract TR Op(T x, T y);
    static virtual bool Vec(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<TR> d) => false;
    static virtual bool VecXS(ReadOnlySpan<T> x, T y, Span<TR> d) => false;
    static virtual bool VecSX(T x, ReadOnlySpan<T> y, Span<TR> d) => false;
}

/// <summary>A type-generic arithmetic op (Add, Max, Mod, …) over every numeric CLR type; adapted to
/// <see cref="IBinaryKernel{T,TR}"/> by <see cref="BinaryBroadcast.ArithK{TOp,T}"/>.</summary>
internal interface IBinaryArith
{
    static abstract T Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T>;
    static virtual bool Vec<T>(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => false;
    static virtual bool VecXS<T>(ReadOnlySpan<T> x, T y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => false;
    static virtual bool VecSX<T>(T x, ReadOnlySpan<T> y, Span<T> d) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => false;
}

/// <summary>A type-generic comparison (Equal, Less, …) with a bool result.</summary>
internal interface IBinaryCompare
{
    static abstract bool Op<T>(T x, T y) where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T>;
}

/// <summary>Visits a numeric element type (for dtype dispatch without one switch per op).</summary>
internal interface IBinaryNumericVisitor<TResult>
{
    TResult Visit<T>() where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T>;
}

/// <summary>Visits any element type tapml holds (strings and bools included).</summary>
internal interface IBinaryAnyVisitor<TResult>
{
    TResult Visit<T>();
}

/// <summary>Multidirectional (numpy) broadcasting of k inputs: dimensions of size 1 are dropped and adjacent
/// dimensions that are contiguous for every input are merged, leaving an inner row (each input steps 1 or 0
/// along it) and outer rows addressed by per-input strides. Work is split into segments of rows (or of one long
/// row) that run in parallel for big outputs; every output element is computed by the same expression whatever
/// the split, so results do not depend on the thread count.</summary>
internal sealed class BinaryBroadcastPlan
{
    public long[] OutShape { get; }
    public long Length { get; }
    /// <summary>Length of the innermost (merged) dimension.</summary>
    public int Inner { get; }
    /// <summary>Per input: 1 when it walks the inner row, 0 when it is broadcast along it.</summary>
    public int[] InnerStride { get; }
    public long Rows { get; }
    readonly long[] _dims;        // outer dims (row index space)
    readonly long[][] _strides;   // per input, element stride of each outer dim

    /// <summary>A segment: output elements [outOffset, outOffset+length), input i starting at element inOffsets[i].</summary>
    public delegate void Segment(long outOffset, int length, ReadOnlySpan<long> inOffsets);

    const long ParallelThreshold = 1 << 15;
    const long MinSegment = 1 << 14;

    public BinaryBroadcastPlan(params long[][] shapes)
    {
        OutShape = ShapeUtil.Broadcast(shapes);
        Length = ShapeUtil.Size(OutShape);
        int k = shapes.Length;
        var st = new long[k][];
        for (int i = 0; i < k; i++) st[i] = ShapeUtil.BroadcastStrides(shapes[i], OutShape);
        var dims = new List<long>();
        var strides = new List<long>[k];
        for (int i = 0; i < k; i++) strides[i] = new List<long>();
        for (int d = 0; d < OutShape.Length; d++)
        {
            long n = OutShape[d];
            if (n == 1) continue;
            int last = dims.Count - 1;
            bool merge = last >= 0;
            for (int i = 0; i < k && merge; i++) merge = strides[i][last] == st[i][d] * n;
            if (merge)
            {
                dims[last] *= n;
                for (int i = 0; i < k; i++) strides[i][last] = st[i][d];
            }
            else
            {
                dims.Add(n);
                for (int i = 0; i < k; i++) strides[i].Add(st[i][d]);
            }
        }
        if (dims.Count == 0)
        {
            dims.Add(1);
            for (int i = 0; i < k; i++) strides[i].Add(0);
        }
        int r = dims.Count - 1;
        Inner = (int)dims[r];
        InnerStride = new int[k];
        for (int i = 0; i < k; i++) InnerStride[i] = (int)strides[i][r];
        _dims = dims.Take(r).ToArray();
        _strides = new long[k][];
        for (int i = 0; i < k; i++) _strides[i] = strides[i].Take(r).ToArray();
        Rows = Length == 0 ? 0 : Length / Math.Max(Inner, 1);
    }

    void RowOffsets(long row, Span<long> offs)
    {
        offs.Clear();
        for (int d = _dims.Length - 1; d >= 0 && row != 0; d--)
        {
            long q = row / _dims[d], idx = row - q * _dims[d];
            row = q;
            for (int i = 0; i < offs.Length; i++) offs[i] += idx * _strides[i][d];
        }
    }

    /// <summary>Calls <paramref name="fn"/> for every segment of the output, in parallel for big outputs.</summary>
    public void Run(Segment fn)
    {
        if (Length == 0) return;
        int k = InnerStride.Length;
        long target = Length < ParallelThreshold || CpuThreads.Max == 1
            ? long.MaxValue
            : Math.Max(MinSegment, Length / (CpuThreads.Max * 4L));
        if (Inner >= target)
        {
            // Long rows (e.g. same-shape inputs, merged into one row): split each row into segments.
            long segs = (Inner + target - 1) / target, tasks = Rows * segs;
            Parallel.For(0L, tasks, CpuThreads.Options, t =>
            {
                Span<long> offs = stackalloc long[k];
                long row = t / segs, start = t % segs * target;
                RowOffsets(row, offs);
                for (int i = 0; i < k; i++) offs[i] += start * InnerStride[i];
                fn(row * Inner + start, (int)Math.Min(target, Inner - start), offs);
            });
            return;
        }
        long rowsPer = target == long.MaxValue ? Rows : Math.Max(1, target / Inner);
        long nTasks = (Rows + rowsPer - 1) / rowsPer;
        void Body(long t)
        {
            Span<long> offs = stackalloc long[k];
            long end = Math.Min(Rows, (t + 1) * rowsPer);
            for (long row = t * rowsPer; row < end; row++)
            {
                RowOffsets(row, offs);
                fn(row * Inner, Inner, offs);
            }
        }
        if (nTasks == 1) Body(0);
        else Parallel.For(0L, nTasks, CpuThreads.Options, Body);
    }
}

/// <summary>The broadcast loop shared by every binary/variadic/logical op of this family, and dtype dispatch.</summary>
internal static class BinaryBroadcast
{
    /// <summary>out = F(a, b) elementwise with numpy broadcasting; output element type <paramref name="outType"/>.</summary>
    public static Tensor Map<T, TR, F>(Tensor a, Tensor b, DType outType) where F : IBinaryKernel<T, TR>
    {
        var plan = new BinaryBroadcastPlan(a.Shape, b.Shape);
        TR[] d = Uninitialized<TR>(plan.Length);
        var r = new Tensor(outType, plan.OutShape, d);
        T[] x = a.As<T>(), y = b.As<T>();
        int sx = plan.InnerStride[0], sy = plan.InnerStride[1];
        plan.Run((o, n, offs) =>
        {
            var ds = d.AsSpan((int)o, n);
            int ox = (int)offs[0], oy = (int)offs[1];
            if (sx == 1 && sy == 1)
            {
                ReadOnlySpan<T> xs = x.AsSpan(ox, n), ys = y.AsSpan(oy, n);
                if (!F.Vec(xs, ys, ds)) for (int i = 0; i < ds.Length; i++) ds[i] = F.Op(xs[i], ys[i]);
            }
            else if (sx == 1)
            {
                ReadOnlySpan<T> xs = x.AsSpan(ox, n);
                T yv = y[oy];
                if (!F.VecXS(xs, yv, ds)) for (int i = 0; i < ds.Length; i++) ds[i] = F.Op(xs[i], yv);
            }
            else if (sy == 1)
            {
                ReadOnlySpan<T> ys = y.AsSpan(oy, n);
                T xv = x[ox];
                if (!F.VecSX(xv, ys, ds)) for (int i = 0; i < ds.Length; i++) ds[i] = F.Op(xv, ys[i]);
            }
            else ds.Fill(F.Op(x[ox], y[oy]));
        });
        return r;
    }

    /// <summary>An output buffer that every element of will be written (skips zeroing big arrays).</summary>
    public static T[] Uninitialized<T>(long n)
    {
        if (n > Array.MaxLength) throw new TapmlException($"{n} elements are over the {Array.MaxLength} one host buffer can hold");
        return GC.AllocateUninitializedArray<T>((int)n);
    }

    /// <summary>Calls fn over [0, n) in contiguous chunks, in parallel when n is big (elementwise work only).</summary>
    public static void Chunks(long n, Action<int, int> fn)
    {
        const long chunk = 1 << 15;
        if (n <= chunk || CpuThreads.Max == 1) { if (n > 0) fn(0, (int)n); return; }
        long size = Math.Max(chunk, n / (CpuThreads.Max * 4L));
        long tasks = (n + size - 1) / size;
        Parallel.For(0L, tasks, CpuThreads.Options, t => { long s = t * size; fn((int)s, (int)Math.Min(size, n - s)); });
    }

    /// <summary>Adapts a type-generic <see cref="IBinaryArith"/> op to one element type.</summary>
    public readonly struct ArithK<TOp, T> : IBinaryKernel<T, T>
        where TOp : IBinaryArith where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T>
    {
        public static T Op(T x, T y) => TOp.Op(x, y);
        public static bool Vec(ReadOnlySpan<T> x, ReadOnlySpan<T> y, Span<T> d) => TOp.Vec(x, y, d);
        public static bool VecXS(ReadOnlySpan<T> x, T y, Span<T> d) => TOp.VecXS(x, y, d);
        public static bool VecSX(T x, ReadOnlySpan<T> y, Span<T> d) => TOp.VecSX(x, y, d);
    }

    public readonly struct CompareK<TOp, T> : IBinaryKernel<T, bool>
        where TOp : IBinaryCompare where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T>
    {
        public static bool Op(T x, T y) => TOp.Op(x, y);
    }

    /// <summary>Calls <paramref name="v"/> with the CLR type of a numeric dtype (f16/bf16 excluded: they compute
    /// through f32, see <see cref="Arith{TOp}"/>).</summary>
    public static TResult Numeric<TResult, V>(DType t, V v, NodeContext ctx) where V : IBinaryNumericVisitor<TResult> => t switch
    {
        DType.Float32 => v.Visit<float>(),
        DType.Float64 => v.Visit<double>(),
        DType.Int8 => v.Visit<sbyte>(),
        DType.UInt8 => v.Visit<byte>(),
        DType.Int16 => v.Visit<short>(),
        DType.UInt16 => v.Visit<ushort>(),
        DType.Int32 => v.Visit<int>(),
        DType.UInt32 => v.Visit<uint>(),
        DType.Int64 => v.Visit<long>(),
        DType.UInt64 => v.Visit<ulong>(),
        _ => throw ctx.Error($"element type {DTypes.Name(t)} is not supported by {ctx.Node.OpType}"),
    };

    /// <summary>Calls <paramref name="v"/> with the CLR element type of any dtype tapml holds.</summary>
    public static TResult Any<TResult, V>(DType t, V v, NodeContext ctx) where V : IBinaryAnyVisitor<TResult> => t switch
    {
        DType.Float32 => v.Visit<float>(),
        DType.Float64 => v.Visit<double>(),
        DType.Float16 => v.Visit<Half>(),
        DType.BFloat16 => v.Visit<BFloat16>(),
        DType.Int8 => v.Visit<sbyte>(),
        DType.UInt8 => v.Visit<byte>(),
        DType.Int16 => v.Visit<short>(),
        DType.UInt16 => v.Visit<ushort>(),
        DType.Int32 => v.Visit<int>(),
        DType.UInt32 => v.Visit<uint>(),
        DType.Int64 => v.Visit<long>(),
        DType.UInt64 => v.Visit<ulong>(),
        DType.Bool => v.Visit<bool>(),
        DType.String => v.Visit<string>(),
        _ => throw ctx.Error($"element type {DTypes.Name(t)} is not supported by {ctx.Node.OpType}"),
    };

    readonly struct ArithVisitor<TOp>(Tensor a, Tensor b) : IBinaryNumericVisitor<Tensor> where TOp : IBinaryArith
    {
        public Tensor Visit<T>() where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => Map<T, T, ArithK<TOp, T>>(a, b, a.DType);
    }

    readonly struct CompareVisitor<TOp>(Tensor a, Tensor b) : IBinaryNumericVisitor<Tensor> where TOp : IBinaryCompare
    {
        public Tensor Visit<T>() where T : unmanaged, IBinaryNumber<T>, IMinMaxValue<T> => Map<T, bool, CompareK<TOp, T>>(a, b, DType.Bool);
    }

    /// <summary>Whether t is f16 or bf16 (computed through f32 and rounded once).</summary>
    public static bool IsHalfLike(DType t) => t is DType.Float16 or DType.BFloat16;

    /// <summary>a ∘ b for a numeric op; both inputs must share the element type. f16/bf16 compute in f32 and round
    /// once (the ONNX reference's numpy float16 arithmetic does the same for single operations).</summary>
    public static Tensor Arith<TOp>(NodeContext ctx, Tensor a, Tensor b) where TOp : IBinaryArith
    {
        SameType(ctx, a, b);
        if (IsHalfLike(a.DType))
            return TensorConvert.To(Guard(ctx, () => Arith<TOp>(ctx, TensorConvert.ToF32(a), TensorConvert.ToF32(b))), a.DType);
        return Guard(ctx, () => Numeric<Tensor, ArithVisitor<TOp>>(a.DType, new ArithVisitor<TOp>(a, b), ctx));
    }

    /// <summary>a ∘ b → bool for a numeric comparison (f16/bf16 compare their exact f32 images).</summary>
    public static Tensor Compare<TOp>(NodeContext ctx, Tensor a, Tensor b) where TOp : IBinaryCompare
    {
        SameType(ctx, a, b);
        if (IsHalfLike(a.DType)) { a = TensorConvert.ToF32(a); b = TensorConvert.ToF32(b); }
        return Guard(ctx, () => Numeric<Tensor, CompareVisitor<TOp>>(a.DType, new CompareVisitor<TOp>(a, b), ctx));
    }

    public static void SameType(NodeContext ctx, Tensor a, Tensor b)
    {
        if (a.DType != b.DType)
            throw ctx.Error($"inputs have different element types ({DTypes.Name(a.DType)} and {DTypes.Name(b.DType)})");
    }

    /// <summary>Runs f, turning arithmetic faults (integer division by zero) and broadcast errors into node errors.</summary>
    public static Tensor Guard(NodeContext ctx, Func<Tensor> f)
    {
        try { return f(); }
        catch (AggregateException e) when (e.InnerException is ArithmeticException ae) { throw ctx.Error(ae.Message); }
        catch (ArithmeticException e) { throw ctx.Error(e.Message); }
        catch (TapmlException e) when (e is not UnsupportedException && !e.Message.StartsWith("node '")) { throw ctx.Error(e.Message); }
    }

    /// <summary>ONNX ≤ 6 ("legacy") broadcasting of Add/Sub/Mul/Div/Pow/And/Or/Xor/Equal/Greater/Less: with
    /// broadcast=1 the right operand B is broadcast to A's shape, its shape matching a contiguous run of A's
    /// dimensions starting at <c>axis</c> (suffix matching when axis is absent); with broadcast=0 the shapes
    /// must be equal. From opset 7 numpy broadcasting applies (returns b unchanged).</summary>
    public static Tensor LegacyAlign(NodeContext ctx, Tensor a, Tensor b, int firstNumpyOpset = 7)
    {
        if (ctx.Opset >= firstNumpyOpset) return b;
        if (ctx.Int("broadcast", 0) == 0)
        {
            if (!ShapeUtil.SameShape(a.Shape, b.Shape))
                throw ctx.Error($"shapes {ShapeUtil.Format(a.Shape)} and {ShapeUtil.Format(b.Shape)} differ and broadcast=0");
            return b;
        }
        if (b.Length == 1) return b.Reshape(Enumerable.Repeat(1L, a.Rank).ToArray());
        if (b.Rank > a.Rank) throw ctx.Error($"legacy broadcast: B {ShapeUtil.Format(b.Shape)} has higher rank than A {ShapeUtil.Format(a.Shape)}");
        int axis = ctx.Has("axis") ? ShapeUtil.Axis(ctx.Int("axis"), a.Rank) : a.Rank - b.Rank;
        if (axis + b.Rank > a.Rank) throw ctx.Error($"legacy broadcast: B {ShapeUtil.Format(b.Shape)} does not fit A {ShapeUtil.Format(a.Shape)} at axis {axis}");
        var shape = Enumerable.Repeat(1L, a.Rank).ToArray();
        for (int i = 0; i < b.Rank; i++)
        {
            // NOTE: the spec says "1-dim expansion doesn't work yet", but PyTorch's opset-6 exports rely on it
            // (test_operator_add_size1_broadcast: B [2,1] at axis 0 of A [2,3]); size-1 dims of B expand.
            if (b.Shape[i] != a.Shape[axis + i] && b.Shape[i] != 1)
                throw ctx.Error($"legacy broadcast: B {ShapeUtil.Format(b.Shape)} does not match A {ShapeUtil.Format(a.Shape)} at axis {axis}");
            shape[axis + i] = b.Shape[i];
        }
        return b.Reshape(shape);
    }
}
