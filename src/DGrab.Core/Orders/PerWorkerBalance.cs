using System.Numerics.Tensors;

namespace DGrab.Orders;

/// <summary>
/// What the ID-GraB orders share: every worker balances alone, against its own running sum, and fills its own next
/// order from the front (+1) and the back (−1); at the epoch's end each worker that ran here must have seen its
/// whole shard, and the filled order becomes the current one.
/// </summary>
public abstract class PerWorkerBalance : OrderPolicy
{
    protected readonly float[][] runSum;
    readonly int[][] next;
    readonly int[] left, right, seen;

    protected PerWorkerBalance(int workers, int shardSize, int dim, ulong seed) : base(workers, shardSize, dim, seed)
    {
        runSum = Jagged(workers, dim);
        next = new int[workers][];
        for (int w = 0; w < workers; w++) next[w] = new int[shardSize];
        left = new int[workers];
        right = new int[workers];
        seen = new int[workers];
    }

    /// <summary>Counts one example of <paramref name="worker"/> as seen this epoch.</summary>
    protected void Seen(int worker) => seen[worker]++;

    /// <summary>Signs <paramref name="v"/> against the worker's running sum, adds or subtracts it, and returns the sign.</summary>
    protected bool Balance(int worker, ReadOnlySpan<float> v)
    {
        bool plus = PlusSign(runSum[worker], v);
        if (plus) TensorPrimitives.Add(runSum[worker], v, runSum[worker]);
        else TensorPrimitives.Subtract(runSum[worker], v, runSum[worker]);
        return plus;
    }

    /// <summary>Puts <paramref name="example"/> at the front of the worker's next order.</summary>
    protected void PutFront(int worker, int example) => next[worker][left[worker]++] = example;

    /// <summary>Puts <paramref name="example"/> at the back of the worker's next order.</summary>
    protected void PutBack(int worker, int example) => next[worker][right[worker]--] = example;

    protected sealed override void OnEndEpoch()
    {
        for (int w = 0; w < Workers; w++)
        {
            if (seen[w] == 0) continue;  // a worker another process runs
            if (seen[w] != ShardSize) throw new InvalidOperationException($"worker {w} saw {seen[w]} of {ShardSize} examples this epoch");
            (orders[w], next[w]) = (next[w], orders[w]);
            OnWorkerEpochEnd(w);
        }
        Reset();
    }

    /// <summary>After worker <paramref name="w"/>'s next order became current (per-worker state to carry over).</summary>
    protected virtual void OnWorkerEpochEnd(int w) { }

    /// <summary>Clears the per-worker state for a new epoch.</summary>
    protected virtual void Reset()
    {
        for (int w = 0; w < Workers; w++)
        {
            Array.Clear(runSum[w]);
            left[w] = 0;
            right[w] = ShardSize - 1;
            seen[w] = 0;
        }
    }
}
