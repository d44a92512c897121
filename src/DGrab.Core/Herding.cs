using DGrab.Orders;

namespace DGrab;

/// <summary>The parallel herding bound of each order policy per reorder round, for one (workers, seed).</summary>
/// <param name="Bounds">Bounds[order name][round], round 0 being the first (random) orders.</param>
public sealed record HerdingRun(int Workers, ulong Seed, IReadOnlyDictionary<string, double[]> Bounds);

/// <summary>
/// The herding simulation of the CD-GraB paper (§6, Fig. 3): N vectors z ~ U[0,1]^d, centered by their mean z̄, split
/// into m shards of n = N/m; each round every policy reorders its shards once (the vectors stand in for gradients,
/// which do not change), and the parallel herding bound max_k ‖Σ_{s≤k} Σ_j (z_{j,π_j(s)} − z̄)‖_∞ of the new orders
/// is recorded.
/// </summary>
public static class Herding
{
    /// <summary>Examples per coordinated step (even): how many pair differences one all-gather would carry.</summary>
    const int StepExamples = 512;

    /// <summary>N vectors of d floats, uniform in [0,1) from <paramref name="seed"/>, minus their mean (row-major N×d).</summary>
    public static float[] CenteredUniform(int vectors, int dim, ulong seed)
    {
        var rng = Seeds.Rng(seed, 2);
        var z = new float[(long)vectors * dim];
        var mean = new double[dim];
        for (long i = 0; i < z.LongLength; i++)
        {
            z[i] = (float)rng.NextDouble();
            mean[i % dim] += z[i];
        }
        for (int k = 0; k < dim; k++) mean[k] /= vectors;
        for (long i = 0; i < z.LongLength; i++) z[i] = (float)(z[i] - mean[i % dim]);
        return z;
    }

    /// <summary>max_k ‖Σ_{s≤k} Σ_j z_{j,π_j(s)}‖_∞ with worker j's shard at rows j·n..j·n+n−1 (summed in double).</summary>
    public static double ParallelBound(ReadOnlySpan<float> z, int dim, OrderPolicy policy)
    {
        int m = policy.Workers, n = policy.ShardSize;
        var sum = new double[dim];
        double bound = 0;
        for (int s = 0; s < n; s++)
        {
            for (int j = 0; j < m; j++)
            {
                var v = z.Slice(((j * n) + policy.Order(j)[s]) * dim, dim);
                for (int k = 0; k < dim; k++) sum[k] += v[k];
            }
            for (int k = 0; k < dim; k++) bound = Math.Max(bound, Math.Abs(sum[k]));
        }
        return bound;
    }

    /// <summary>One reorder round: every worker visits its current order; the policy builds the next one.</summary>
    public static void Round(ReadOnlySpan<float> z, int dim, OrderPolicy policy)
    {
        int m = policy.Workers, n = policy.ShardSize;
        int step = Math.Min(StepExamples, n);
        int stride = policy.SharedFloats(step);
        var gathered = new float[Math.Max(1, stride * m)];
        for (int first = 0; first < n; first += step)
        {
            int count = Math.Min(step, n - first);
            for (int j = 0; j < m; j++)
            {
                var block = gathered.AsSpan(j * stride, stride);
                var order = policy.Order(j);
                for (int i = 0; i < count; i++)
                    policy.Observe(j, first + i, z.Slice(((j * n) + order[first + i]) * dim, dim), block, i);
            }
            policy.Coordinate(first, count, gathered, stride, 0);
        }
        policy.EndEpoch();
    }

    /// <summary>Runs every policy of <see cref="Registry"/> for <paramref name="rounds"/> rounds on one data set.</summary>
    public static HerdingRun Simulate(int workers, int vectors, int dim, int rounds, ulong seed)
    {
        if (workers < 1) throw new DGrabException($"--workers must be at least 1 (got {workers})");
        if (vectors < 2 * workers || vectors % (2 * workers) != 0)
            throw new DGrabException($"--vectors ({vectors}) must split into {workers} even shards (a multiple of {2 * workers})");
        if (dim < 1) throw new DGrabException($"--dim must be at least 1 (got {dim})");
        if (rounds < 0) throw new DGrabException($"--rounds must be at least 0 (got {rounds})");
        var z = CenteredUniform(vectors, dim, seed);
        var bounds = new System.Collections.Concurrent.ConcurrentDictionary<string, double[]>();
        Parallel.ForEach(Registry.Names, name =>
        {
            var policy = Registry.Create(name, workers, vectors / workers, dim, seed);
            var b = new double[rounds + 1];
            b[0] = ParallelBound(z, dim, policy);
            for (int r = 1; r <= rounds; r++)
            {
                Round(z, dim, policy);
                b[r] = ParallelBound(z, dim, policy);
            }
            bounds[name] = b;
        });
        return new HerdingRun(workers, seed, Registry.Names.ToDictionary(n => n, n => bounds[n]));
    }
}
