namespace DGrab.Engines;

/// <summary>
/// How the m workers of a run are placed: which of them this process computes, and the one collective the trainer
/// needs, an all-gather of equal blocks in worker order. Every process holds the same buffer afterwards, so every
/// replicated computation (the model update, the CD-GraB coordinator) gives the same bits everywhere.
/// </summary>
public interface IEngine : IDisposable
{
    string Name { get; }
    int Workers { get; }
    /// <summary>The workers this process computes.</summary>
    IReadOnlyList<int> LocalWorkers { get; }
    /// <summary>Whether this process reports (evaluates, prints, writes files).</summary>
    bool IsRoot { get; }
    /// <summary><paramref name="buffer"/> holds <see cref="Workers"/> blocks of <paramref name="blockLength"/> floats;
    /// each process has filled its own workers' blocks, and afterwards every process has all of them.</summary>
    void AllGather(Span<float> buffer, int blockLength);
}

/// <summary>All workers in this process, one after another: no communication, same arithmetic as MPI.</summary>
public sealed class InProcessEngine(int workers) : IEngine
{
    public string Name => "inproc";
    public int Workers { get; } = workers;
    public IReadOnlyList<int> LocalWorkers { get; } = Enumerable.Range(0, workers).ToArray();
    public bool IsRoot => true;
    public void AllGather(Span<float> buffer, int blockLength) { }
    public void Dispose() { }
}

/// <summary>The engines the CLI offers.</summary>
public static class Engines
{
    public static readonly IReadOnlyList<string> Names = ["inproc", "mpi"];

    public static IEngine Create(string name, int workers) => name switch
    {
        "inproc" => new InProcessEngine(workers),
        "mpi" => MpiEngine.Start(workers),
        _ => throw new DGrabException($"unknown engine '{name}' (engines: {string.Join(", ", Names)})"),
    };
}
