namespace DGrab;

/// <summary>A user error (bad argument, missing data set, MPI absent): the CLI prints its one-line message and exits 2.</summary>
public sealed class DGrabException(string message) : Exception(message);
