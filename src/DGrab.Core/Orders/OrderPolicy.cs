namespace DGrab.Orders;

/// <summary>
/// The example orders of m workers over one epoch after another. Each worker owns a shard of
/// <see cref="ShardSize"/> examples (local indices 0..n-1); <see cref="Order"/> is the permutation of its shard it
/// visits this epoch. The trainer reports the gradient of every example it visits (<see cref="Observe"/>, in order
/// position), calls <see cref="Coordinate"/> once per step with the blocks all workers gathered, and
/// <see cref="EndEpoch"/> when every position was visited; the next epoch's orders are then ready.
/// Policies know nothing about models: a gradient is a vector of <see cref="Dim"/> floats.
/// </summary>
/// <remarks>
/// Local policies (d-rr, id-grab-*) only need <see cref="Observe"/> for the workers a process runs, and their
/// <see cref="Order"/> is valid for those workers. A coordinated policy (cd-grab) writes what the others need into
/// the worker's step block and runs its coordinator on every rank from the gathered blocks: replicated and
/// deterministic, so all ranks hold every worker's next order and orders are never sent.
/// </remarks>
public abstract class OrderPolicy
{
    protected readonly int[][] orders;

    protected OrderPolicy(int workers, int shardSize, int dim, ulong seed)
    {
        if (workers < 1) throw new DGrabException($"workers must be at least 1 (got {workers})");
        if (shardSize < 1) throw new DGrabException($"each worker needs at least one example (shard size {shardSize})");
        if (dim < 1) throw new DGrabException($"gradient dimension must be at least 1 (got {dim})");
        Workers = workers;
        ShardSize = shardSize;
        Dim = dim;
        Seed = seed;
        orders = new int[workers][];
        for (int w = 0; w < workers; w++) orders[w] = Shuffle(w, 0);
    }

    /// <summary>The registry name (cd-grab, d-rr, id-grab-bal, id-grab-pairbal).</summary>
    public abstract string Name { get; }
    public int Workers { get; }
    /// <summary>Examples per worker (n); every order is a permutation of 0..n-1.</summary>
    public int ShardSize { get; }
    /// <summary>Floats per gradient vector.</summary>
    public int Dim { get; }
    public ulong Seed { get; }
    /// <summary>Epochs ended so far (the current epoch's number, 0-based).</summary>
    public int Epoch { get; private set; }

    /// <summary>The order worker <paramref name="worker"/> visits its shard in this epoch (local example indices).</summary>
    public ReadOnlySpan<int> Order(int worker) => orders[worker];

    /// <summary>Floats a worker adds to the per-step all-gather for a step of <paramref name="localBatch"/> examples
    /// (0: the policy needs no exchange).</summary>
    public virtual int SharedFloats(int localBatch) => 0;

    /// <summary>The gradient of the example at <paramref name="position"/> of <paramref name="worker"/>'s order;
    /// <paramref name="indexInStep"/> is its index within the step, <paramref name="stepBlock"/> the worker's part of
    /// this step's all-gather (<see cref="SharedFloats"/> long).</summary>
    public abstract void Observe(int worker, int position, ReadOnlySpan<float> grad, Span<float> stepBlock, int indexInStep);

    /// <summary>Once per step on every rank, after the all-gather: <paramref name="gathered"/> holds worker j's step
    /// block at <c>j * stride + offset</c>; the step covered positions firstPosition..firstPosition+count-1.</summary>
    public virtual void Coordinate(int firstPosition, int count, ReadOnlySpan<float> gathered, int stride, int offset) { }

    /// <summary>Ends the epoch: the orders built during it become current.</summary>
    public void EndEpoch()
    {
        Epoch++;
        OnEndEpoch();
    }

    protected abstract void OnEndEpoch();

    /// <summary>The seeded shuffle of worker <paramref name="worker"/> in epoch <paramref name="epoch"/>: D-RR's
    /// orders, and every policy's first epoch.</summary>
    protected int[] Shuffle(int worker, int epoch) => Seeds.Permutation(ShardSize, Seeds.Rng(Seed, 1, worker, epoch));

    /// <summary>The sign Balance gives <paramref name="v"/> against <paramref name="sum"/>: +1 when
    /// ‖sum + v‖₂ ≤ ‖sum − v‖₂, which is ⟨sum, v⟩ ≤ 0 (the squares differ by 4⟨sum, v⟩).</summary>
    /// <summary>A rows × cols array of zeroed rows.</summary>
    protected static float[][] Jagged(int rows, int cols)
    {
        var a = new float[rows][];
        for (int i = 0; i < rows; i++) a[i] = new float[cols];
        return a;
    }

    internal static bool PlusSign(ReadOnlySpan<float> sum, ReadOnlySpan<float> v) =>
        System.Numerics.Tensors.TensorPrimitives.Dot(sum, v) <= 0f;
}
