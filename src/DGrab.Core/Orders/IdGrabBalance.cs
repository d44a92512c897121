using System.Numerics.Tensors;

namespace DGrab.Orders;

/// <summary>
/// ID-GraB with Balance (GraB, Lu et al. 2022, run by each worker alone): online, each gradient minus the worker's
/// previous-epoch mean gradient is signed against the worker's running sum (<see cref="OrderPolicy.PlusSign"/>);
/// +1 fills the next order from the front, −1 from the back. The first epoch centers with a zero mean.
/// </summary>
public sealed class IdGrabBalance : PerWorkerBalance
{
    readonly float[][] mean, nextMean;
    readonly float[] centered;

    public IdGrabBalance(int workers, int shardSize, int dim, ulong seed) : base(workers, shardSize, dim, seed)
    {
        mean = Jagged(workers, dim);
        nextMean = Jagged(workers, dim);
        centered = new float[dim];
        Reset();
    }

    public override string Name => "id-grab-bal";

    public override void Observe(int worker, int position, ReadOnlySpan<float> grad, Span<float> stepBlock, int indexInStep)
    {
        // NOTE: the mean is accumulated as a sum and divided at the epoch's end (the reference adds g/n each step).
        TensorPrimitives.Add(nextMean[worker], grad, nextMean[worker]);
        TensorPrimitives.Subtract(grad, mean[worker], centered);
        if (Balance(worker, centered)) PutFront(worker, orders[worker][position]);
        else PutBack(worker, orders[worker][position]);
        Seen(worker);
    }

    protected override void OnWorkerEpochEnd(int w) => TensorPrimitives.Multiply(nextMean[w], 1f / ShardSize, mean[w]);

    protected override void Reset()
    {
        base.Reset();
        for (int w = 0; w < Workers; w++) Array.Clear(nextMean[w]);
    }
}
