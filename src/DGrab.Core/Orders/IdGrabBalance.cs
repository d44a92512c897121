using System.Numerics.Tensors;

namespace DGrab.Orders;

/// <summary>
/// ID-GraB with Balance (GraB, Lu et al. 2022, run by each worker alone): online, each gradient minus the worker's
/// previous-epoch mean gradient is signed against the worker's running sum (<see cref="OrderPolicy.PlusSign"/>);
/// +1 fills the next order from the front, −1 from the back. The first epoch centers with a zero mean.
/// </summary>
public sealed class IdGrabBalance : OrderPolicy
{
    readonly float[][] mean, nextMean, runSum;
    readonly float[] centered;
    readonly int[][] next;
    readonly int[] left, right, seen;

    public IdGrabBalance(int workers, int shardSize, int dim, ulong seed) : base(workers, shardSize, dim, seed)
    {
        mean = Jagged(workers, dim);
        nextMean = Jagged(workers, dim);
        runSum = Jagged(workers, dim);
        centered = new float[dim];
        next = new int[workers][];
        for (int w = 0; w < workers; w++) next[w] = new int[shardSize];
        left = new int[workers];
        right = new int[workers];
        seen = new int[workers];
        Reset();
    }

    public override string Name => "id-grab-bal";

    public override void Observe(int worker, int position, ReadOnlySpan<float> grad, Span<float> stepBlock, int indexInStep)
    {
        // NOTE: the mean is accumulated as a sum and divided at the epoch's end (the reference adds g/n each step).
        TensorPrimitives.Add(nextMean[worker], grad, nextMean[worker]);
        TensorPrimitives.Subtract(grad, mean[worker], centered);
        if (PlusSign(runSum[worker], centered))
        {
            next[worker][left[worker]++] = orders[worker][position];
            TensorPrimitives.Add(runSum[worker], centered, runSum[worker]);
        }
        else
        {
            next[worker][right[worker]--] = orders[worker][position];
            TensorPrimitives.Subtract(runSum[worker], centered, runSum[worker]);
        }
        seen[worker]++;
    }

    protected override void OnEndEpoch()
    {
        for (int w = 0; w < Workers; w++)
        {
            if (seen[w] == 0) continue;  // a worker another process runs
            if (seen[w] != ShardSize) throw new InvalidOperationException($"worker {w} saw {seen[w]} of {ShardSize} examples this epoch");
            (orders[w], next[w]) = (next[w], orders[w]);
            TensorPrimitives.Multiply(nextMean[w], 1f / ShardSize, mean[w]);
        }
        Reset();
    }

    void Reset()
    {
        for (int w = 0; w < Workers; w++)
        {
            Array.Clear(nextMean[w]);
            Array.Clear(runSum[w]);
            left[w] = 0;
            right[w] = ShardSize - 1;
            seen[w] = 0;
        }
    }

    internal static float[][] Jagged(int rows, int cols)
    {
        var a = new float[rows][];
        for (int i = 0; i < rows; i++) a[i] = new float[cols];
        return a;
    }
}
