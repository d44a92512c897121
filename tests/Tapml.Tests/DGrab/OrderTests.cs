using Xunit;
using DGrab.Orders;

namespace DGrab.Tests;

public class OrderTests
{
    static float[][][] RandomVectors(int m, int n, int d, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, m).Select(_ => Enumerable.Range(0, n).Select(_ => Enumerable.Range(0, d).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray()).ToArray()).ToArray();
    }

    /// <summary>Runs one epoch of <paramref name="policy"/> over fixed vectors, <paramref name="step"/> examples a step.</summary>
    static void Epoch(OrderPolicy policy, float[][][] vecs, int step)
    {
        int m = policy.Workers, n = policy.ShardSize, d = policy.Dim;
        int stride = policy.SharedFloats(step);
        var gathered = new float[Math.Max(1, m * stride)];
        for (int first = 0; first < n; first += step)
        {
            int count = Math.Min(step, n - first);
            for (int j = 0; j < m; j++)
                for (int i = 0; i < count; i++)
                    policy.Observe(j, first + i, vecs[j][policy.Order(j)[first + i]], gathered.AsSpan(j * stride, stride), i);
            policy.Coordinate(first, count, gathered, stride, 0);
        }
        policy.EndEpoch();
    }

    public static TheoryData<int, int, int, int> PairCases => new()
    {
        { 2, 1, 2, 1 }, { 4, 3, 2, 2 }, { 8, 5, 4, 3 }, { 16, 2, 6, 4 }, { 32, 8, 8, 5 }, { 10, 4, 10, 6 },
    };

    [Theory]
    [MemberData(nameof(PairCases))]
    public void PairBalance_matches_the_brute_force_reference_for_three_epochs(int n, int d, int step, int seed)
    {
        var vecs = RandomVectors(1, n, d, seed);
        var policy = new IdGrabPairBalance(1, n, d, (ulong)seed);
        for (int epoch = 0; epoch < 3; epoch++)
        {
            var expected = ReferenceOrders.PairBalance(policy.Order(0).ToArray(), vecs[0]);
            Epoch(policy, vecs, step);
            Assert.Equal(expected, policy.Order(0).ToArray());
        }
    }

    public static TheoryData<int, int, int, int, int> CdCases => new()
    {
        { 1, 4, 3, 2, 1 }, { 2, 4, 2, 2, 2 }, { 3, 8, 5, 4, 3 }, { 5, 6, 4, 2, 4 }, { 4, 16, 7, 8, 5 }, { 8, 10, 3, 10, 6 },
    };

    [Theory]
    [MemberData(nameof(CdCases))]
    public void CdGrab_matches_the_brute_force_reference_for_three_epochs(int m, int n, int d, int step, int seed)
    {
        var vecs = RandomVectors(m, n, d, seed);
        var policy = new CdGrab(m, n, d, (ulong)seed);
        for (int epoch = 0; epoch < 3; epoch++)
        {
            var expected = ReferenceOrders.CdGrab(Enumerable.Range(0, m).Select(j => policy.Order(j).ToArray()).ToArray(), vecs);
            Epoch(policy, vecs, step);
            for (int j = 0; j < m; j++) Assert.Equal(expected[j], policy.Order(j).ToArray());
        }
    }

    [Theory]
    [InlineData(5, 3, 1)]
    [InlineData(12, 4, 2)]
    [InlineData(31, 6, 3)]
    public void Balance_with_the_previous_epochs_mean_matches_the_brute_force_reference(int n, int d, int seed)
    {
        var vecs = RandomVectors(2, n, d, seed);
        var policy = new IdGrabBalance(2, n, d, (ulong)seed);
        var mean = new float[2][] { new float[d], new float[d] };
        for (int epoch = 0; epoch < 3; epoch++)
        {
            var expected = Enumerable.Range(0, 2).Select(j => ReferenceOrders.Balance(policy.Order(j).ToArray(), vecs[j], mean[j])).ToArray();
            Epoch(policy, vecs, 3);
            for (int j = 0; j < 2; j++)
            {
                Assert.Equal(expected[j], policy.Order(j).ToArray());
                mean[j] = Enumerable.Range(0, d).Select(k => vecs[j].Sum(v => v[k]) / n).ToArray();
            }
        }
    }

    [Fact]
    public void CdGrab_with_one_worker_is_PairBalance()
    {
        var vecs = RandomVectors(1, 20, 6, 7);
        var cd = new CdGrab(1, 20, 6, 7);
        var pb = new IdGrabPairBalance(1, 20, 6, 7);
        for (int epoch = 0; epoch < 4; epoch++)
        {
            Epoch(cd, vecs, 4);
            Epoch(pb, vecs, 4);
            Assert.Equal(pb.Order(0).ToArray(), cd.Order(0).ToArray());
        }
    }

    public static TheoryData<string, int, int> AllOrders()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var name in Registry.Names)
            foreach (var (m, n) in new[] { (1, 2), (3, 10), (4, 64), (7, 18) })
                data.Add(name, m, n);
        return data;
    }

    [Theory]
    [MemberData(nameof(AllOrders))]
    public void Every_order_is_a_permutation_of_each_workers_shard_every_epoch(string order, int m, int n)
    {
        var vecs = RandomVectors(m, n, 5, n);
        var policy = Registry.Create(order, m, n, 5, 11);
        for (int epoch = 0; epoch < 5; epoch++)
        {
            for (int j = 0; j < m; j++)
            {
                var o = policy.Order(j).ToArray();
                Array.Sort(o);
                Assert.Equal(Enumerable.Range(0, n).ToArray(), o);
            }
            Epoch(policy, vecs, 2);
        }
    }

    [Fact]
    public void Drr_reshuffles_every_worker_independently_and_reproducibly()
    {
        var a = new DRandomReshuffling(3, 50, 1, 5);
        var b = new DRandomReshuffling(3, 50, 1, 5);
        var first = a.Order(0).ToArray();
        Assert.NotEqual(first, a.Order(1).ToArray());
        a.EndEpoch();
        b.EndEpoch();
        Assert.NotEqual(first, a.Order(0).ToArray());
        for (int j = 0; j < 3; j++) Assert.Equal(a.Order(j).ToArray(), b.Order(j).ToArray());
    }

    [Fact]
    public void Pair_orders_refuse_an_odd_shard_or_step_with_a_clear_error()
    {
        Assert.Contains("even", Assert.Throws<DGrabException>(() => new CdGrab(2, 7, 3, 0)).Message);
        Assert.Contains("even", Assert.Throws<DGrabException>(() => new IdGrabPairBalance(2, 9, 3, 0)).Message);
        Assert.Contains("even", Assert.Throws<DGrabException>(() => new CdGrab(2, 8, 3, 0).SharedFloats(3)).Message);
        Assert.Contains("unknown order", Assert.Throws<DGrabException>(() => Registry.Create("grab", 2, 8, 3, 0)).Message);
    }

    [Fact]
    public void Herding_bound_of_the_balancing_orders_falls_well_below_drr()
    {
        var run = Herding.Simulate(workers: 4, vectors: 8000, dim: 8, rounds: 8, seed: 1);
        double drr = run.Bounds["d-rr"].Skip(1).Average();
        foreach (var name in new[] { "cd-grab", "id-grab-bal", "id-grab-pairbal" })
            Assert.True(run.Bounds[name][8] < drr / 5, $"{name}: round 8 bound {run.Bounds[name][8]} vs d-rr mean {drr}");
        Assert.True(run.Bounds["cd-grab"][8] <= run.Bounds["id-grab-pairbal"][8], "cd-grab should balance at least as well as id-grab-pairbal");
    }
}
