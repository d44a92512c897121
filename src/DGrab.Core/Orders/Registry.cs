namespace DGrab.Orders;

/// <summary>The one list of order policies: the CLI, the tests and the docs read it.</summary>
public static class Registry
{
    public static readonly IReadOnlyList<string> Names = ["cd-grab", "id-grab-bal", "id-grab-pairbal", "d-rr"];

    /// <summary>Whether the policy balances pairs (needs an even shard and an even local batch).</summary>
    public static bool UsesPairs(string name) => name is "cd-grab" or "id-grab-pairbal";

    public static OrderPolicy Create(string name, int workers, int shardSize, int dim, ulong seed) => name switch
    {
        "cd-grab" => new CdGrab(workers, shardSize, dim, seed),
        "d-rr" => new DRandomReshuffling(workers, shardSize, dim, seed),
        "id-grab-bal" => new IdGrabBalance(workers, shardSize, dim, seed),
        "id-grab-pairbal" => new IdGrabPairBalance(workers, shardSize, dim, seed),
        _ => throw new DGrabException($"unknown order '{name}' (orders: {string.Join(", ", Names)})"),
    };
}
