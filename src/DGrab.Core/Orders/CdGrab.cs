using System.Numerics.Tensors;

namespace DGrab.Orders;

/// <summary>
/// CD-GraB (Cooper et al., NeurIPS 2023, Alg. 1 with PairBalance): each worker sends the difference of its gradients
/// at positions 2k and 2k+1; the coordinator signs the pair differences worker by worker (pair index outer, worker
/// inner) against ONE running sum shared by all workers, and fills each worker's next order: +1 puts 2k at the
/// front and 2k+1 at the back, −1 the other way round. The coordinator runs on every rank from the all-gathered
/// differences (same data, same arithmetic, same result), so orders are never sent.
/// </summary>
public sealed class CdGrab : OrderPolicy
{
    readonly float[] runSum;
    readonly float[][] first;
    readonly int[][] next;
    int left, right, pairsDone;

    public CdGrab(int workers, int shardSize, int dim, ulong seed) : base(workers, shardSize, dim, seed)
    {
        if (shardSize % 2 != 0) throw new DGrabException($"cd-grab needs an even number of examples per worker (got {shardSize})");
        runSum = new float[dim];
        first = Jagged(workers, dim);
        next = new int[workers][];
        for (int w = 0; w < workers; w++) next[w] = new int[shardSize];
        Reset();
    }

    public override string Name => "cd-grab";

    /// <summary>A step of b examples (b even) sends b/2 pair differences.</summary>
    public override int SharedFloats(int localBatch)
    {
        if (localBatch % 2 != 0) throw new DGrabException($"cd-grab needs an even number of examples per worker and step (got {localBatch})");
        return localBatch / 2 * Dim;
    }

    public override void Observe(int worker, int position, ReadOnlySpan<float> grad, Span<float> stepBlock, int indexInStep)
    {
        if (position % 2 == 0) { grad.CopyTo(first[worker]); return; }
        TensorPrimitives.Subtract(first[worker], grad, stepBlock.Slice(indexInStep / 2 * Dim, Dim));
    }

    public override void Coordinate(int firstPosition, int count, ReadOnlySpan<float> gathered, int stride, int offset)
    {
        if (firstPosition != 2 * pairsDone || count % 2 != 0)
            throw new InvalidOperationException($"cd-grab expects whole pairs in order (position {firstPosition}, {count} examples, {pairsDone} pairs done)");
        for (int k = 0; k < count / 2; k++)
        {
            int position = firstPosition + 2 * k;
            for (int w = 0; w < Workers; w++)
            {
                var diff = gathered.Slice(w * stride + offset + k * Dim, Dim);
                var order = orders[w];
                if (PlusSign(runSum, diff))
                {
                    next[w][left] = order[position];
                    next[w][right] = order[position + 1];
                    TensorPrimitives.Add(runSum, diff, runSum);
                }
                else
                {
                    next[w][right] = order[position];
                    next[w][left] = order[position + 1];
                    TensorPrimitives.Subtract(runSum, diff, runSum);
                }
            }
            left++;
            right--;
        }
        pairsDone += count / 2;
    }

    protected override void OnEndEpoch()
    {
        if (2 * pairsDone != ShardSize) throw new InvalidOperationException($"cd-grab coordinated {pairsDone} of {ShardSize / 2} pairs this epoch");
        for (int w = 0; w < Workers; w++) (orders[w], next[w]) = (next[w], orders[w]);
        Reset();
    }

    void Reset()
    {
        Array.Clear(runSum);
        left = 0;
        right = ShardSize - 1;
        pairsDone = 0;
    }
}
