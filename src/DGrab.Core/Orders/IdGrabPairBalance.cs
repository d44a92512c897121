using System.Numerics.Tensors;

namespace DGrab.Orders;

/// <summary>
/// ID-GraB with PairBalance, each worker alone: the difference of the gradients at positions 2k and 2k+1 is signed
/// against the worker's running sum of pair differences; +1 puts example 2k at the next order's front and 2k+1 at
/// its back, −1 the other way round. No mean is needed (differences cancel it).
/// </summary>
public sealed class IdGrabPairBalance : PerWorkerBalance
{
    readonly float[][] first;
    readonly float[] diff;

    public IdGrabPairBalance(int workers, int shardSize, int dim, ulong seed) : base(workers, shardSize, dim, seed)
    {
        if (shardSize % 2 != 0) throw new DGrabException($"pair balancing needs an even number of examples per worker (got {shardSize})");
        first = Jagged(workers, dim);
        diff = new float[dim];
        Reset();
    }

    public override string Name => "id-grab-pairbal";

    public override void Observe(int worker, int position, ReadOnlySpan<float> grad, Span<float> stepBlock, int indexInStep)
    {
        Seen(worker);
        if (position % 2 == 0) { grad.CopyTo(first[worker]); return; }
        TensorPrimitives.Subtract(first[worker], grad, diff);
        var order = orders[worker];
        bool plus = Balance(worker, diff);
        PutFront(worker, order[plus ? position - 1 : position]);
        PutBack(worker, order[plus ? position : position - 1]);
    }
}
