namespace DGrab.Engines;

/// <summary>One worker per MPI process (rank = worker): start with <c>mpirun -np M dgrab train … --engine mpi</c>.</summary>
public sealed class MpiEngine : IEngine
{
    readonly int rank;
    bool disposed;

    MpiEngine(int rank, int size)
    {
        this.rank = rank;
        Workers = size;
        LocalWorkers = [rank];
    }

    /// <summary>MPI_Init; the world size must be the run's worker count.</summary>
    public static MpiEngine Start(int workers)
    {
        MpiNative.Init();
        int size = MpiNative.WorldSize(), rank = MpiNative.WorldRank();
        if (size != workers)
        {
            MpiNative.FinalizeQuietly();
            throw new DGrabException($"--engine mpi runs one worker per process: started with {size} process(es) but --workers {workers} (use mpirun -np {workers})");
        }
        return new MpiEngine(rank, size);
    }

    public string Name => "mpi";
    public int Workers { get; }
    public IReadOnlyList<int> LocalWorkers { get; }
    public bool IsRoot => rank == 0;

    public void AllGather(Span<float> buffer, int blockLength) => MpiNative.AllGatherInPlace(buffer, blockLength);

    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        MpiNative.FinalizeQuietly();
    }
}
