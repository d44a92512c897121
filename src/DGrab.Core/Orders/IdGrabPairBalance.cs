using System.Numerics.Tensors;

namespace DGrab.Orders;

/// <summary>
/// ID-GraB with PairBalance, each worker alone: the difference of the gradients at positions 2k and 2k+1 is signed
/// against the worker's running sum of pair differences; +1 puts example 2k at the next order's front and 2k+1 at
/// its back, −1 the other way round. No mean is needed (differences cancel it).
/// </summary>
public sealed class IdGrabPairBalance : OrderPolicy
{
    readonly float[][] runSum, first;
    readonly float[] diff;
    readonly int[][] next;
    readonly int[] left, right, seen;

    public IdGrabPairBalance(int workers, int shardSize, int dim, ulong seed) : base(workers, shardSize, dim, seed)
    {
        if (shardSize % 2 != 0) throw new DGrabException($"pair balancing needs an even number of examples per worker (got {shardSize})");
        runSum = IdGrabBalance.Jagged(workers, dim);
        first = IdGrabBalance.Jagged(workers, dim);
        diff = new float[dim];
        next = new int[workers][];
        for (int w = 0; w < workers; w++) next[w] = new int[shardSize];
        left = new int[workers];
        right = new int[workers];
        seen = new int[workers];
        Reset();
    }

    public override string Name => "id-grab-pairbal";

    public override void Observe(int worker, int position, ReadOnlySpan<float> grad, Span<float> stepBlock, int indexInStep)
    {
        seen[worker]++;
        if (position % 2 == 0) { grad.CopyTo(first[worker]); return; }
        TensorPrimitives.Subtract(first[worker], grad, diff);
        var order = orders[worker];
        if (PlusSign(runSum[worker], diff))
        {
            next[worker][left[worker]] = order[position - 1];
            next[worker][right[worker]] = order[position];
            TensorPrimitives.Add(runSum[worker], diff, runSum[worker]);
        }
        else
        {
            next[worker][right[worker]] = order[position - 1];
            next[worker][left[worker]] = order[position];
            TensorPrimitives.Subtract(runSum[worker], diff, runSum[worker]);
        }
        left[worker]++;
        right[worker]--;
    }

    protected override void OnEndEpoch()
    {
        for (int w = 0; w < Workers; w++)
        {
            if (seen[w] == 0) continue;
            if (seen[w] != ShardSize) throw new InvalidOperationException($"worker {w} saw {seen[w]} of {ShardSize} examples this epoch");
            (orders[w], next[w]) = (next[w], orders[w]);
        }
        Reset();
    }

    void Reset()
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
