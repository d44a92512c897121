namespace DGrab;

/// <summary>Deterministic seeds and shuffles: the same (seed, stream…) gives the same numbers in every process, so
/// MPI ranks agree without sending anything (<see cref="HashCode"/> is randomized per process, hence splitmix64).</summary>
public static class Seeds
{
    /// <summary>splitmix64 of <paramref name="seed"/> mixed with each of <paramref name="streams"/>.</summary>
    public static ulong Mix(ulong seed, params ReadOnlySpan<long> streams)
    {
        ulong z = seed;
        foreach (long s in streams) z = SplitMix(z ^ SplitMix((ulong)s + 0x9E3779B97F4A7C15UL));
        return z;
    }

    static ulong SplitMix(ulong x)
    {
        x += 0x9E3779B97F4A7C15UL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9UL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBUL;
        return x ^ (x >> 31);
    }

    /// <summary>A seeded <see cref="Random"/> (the seeded algorithm is fixed across runs and machines).</summary>
    public static Random Rng(ulong seed, params ReadOnlySpan<long> streams) => new((int)(Mix(seed, streams) & 0x7FFFFFFF));

    /// <summary>0..n-1 in a seeded random order (Fisher–Yates).</summary>
    public static int[] Permutation(int n, Random rng)
    {
        var p = new int[n];
        for (int i = 0; i < n; i++) p[i] = i;
        for (int i = n - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (p[i], p[j]) = (p[j], p[i]);
        }
        return p;
    }
}
