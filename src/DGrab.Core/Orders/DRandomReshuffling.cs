namespace DGrab.Orders;

/// <summary>D-RR: every worker reshuffles its shard independently each epoch (seeded by seed, worker, epoch).</summary>
public sealed class DRandomReshuffling(int workers, int shardSize, int dim, ulong seed) : OrderPolicy(workers, shardSize, dim, seed)
{
    public override string Name => "d-rr";

    public override void Observe(int worker, int position, ReadOnlySpan<float> grad, Span<float> stepBlock, int indexInStep) { }

    protected override void OnEndEpoch()
    {
        for (int w = 0; w < Workers; w++) orders[w] = Shuffle(w, Epoch);
    }
}
