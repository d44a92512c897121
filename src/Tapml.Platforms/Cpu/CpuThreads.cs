namespace Tapml.Platforms.Cpu;

/// <summary>How many threads cpu kernels use (Parallel.For degree). All kernels take their
/// <see cref="ParallelOptions"/> from here so benchmarks can hold cpu and a peer to the same thread count.</summary>
public static class CpuThreads
{
    static int _max = Environment.ProcessorCount;

    public static int Max => _max;

    public static ParallelOptions Options => new() { MaxDegreeOfParallelism = _max };

    public static void Limit(int threads) => _max = Math.Clamp(threads, 1, Environment.ProcessorCount * 4);
}
