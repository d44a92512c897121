using System.Runtime.InteropServices;

namespace DGrab.Engines;

/// <summary>
/// The few libmpi calls D-GraB needs (Open MPI's ABI: handles are addresses of exported objects), all native
/// interop in one place with one <see cref="Check"/>. libmpi is opened RTLD_GLOBAL because Open MPI's plugins
/// resolve its symbols from the global scope.
/// </summary>
internal static unsafe class MpiNative
{
    const string Library = "libmpi.so.40";
    const int RtldNow = 0x2, RtldGlobal = 0x100;
    static readonly nint InPlace = 1;  // MPI_IN_PLACE in Open MPI's mpi.h
    static nint lib, commWorld, mpiFloat, datatypeNull;
    static delegate* unmanaged<int*, byte***, int> init;
    static delegate* unmanaged<int*, int> initialized, finalized;
    static delegate* unmanaged<int> finalize;
    static delegate* unmanaged<nint, int*, int> commRank, commSize;
    static delegate* unmanaged<nint, int, nint, void*, int, nint, nint, int> allgather;

    [DllImport("libc", EntryPoint = "dlopen")]
    static extern nint DlOpen(string file, int mode);

    [DllImport("libc", EntryPoint = "dlerror")]
    static extern nint DlError();

    static void Load()
    {
        if (lib != 0) return;
        lib = DlOpen(Library, RtldNow | RtldGlobal);
        if (lib == 0)
            throw new DGrabException($"--engine mpi needs Open MPI's {Library} ({Marshal.PtrToStringAnsi(DlError())}); install openmpi-bin (bash scripts/setup.sh)");
        init = (delegate* unmanaged<int*, byte***, int>)Export("MPI_Init");
        initialized = (delegate* unmanaged<int*, int>)Export("MPI_Initialized");
        finalized = (delegate* unmanaged<int*, int>)Export("MPI_Finalized");
        finalize = (delegate* unmanaged<int>)Export("MPI_Finalize");
        commRank = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_rank");
        commSize = (delegate* unmanaged<nint, int*, int>)Export("MPI_Comm_size");
        allgather = (delegate* unmanaged<nint, int, nint, void*, int, nint, nint, int>)Export("MPI_Allgather");
        commWorld = Export("ompi_mpi_comm_world");
        mpiFloat = Export("ompi_mpi_float");
        datatypeNull = Export("ompi_mpi_datatype_null");
    }

    static nint Export(string name) => NativeLibrary.TryGetExport(lib, name, out var p) ? p
        : throw new DGrabException($"{Library} has no {name}: --engine mpi needs Open MPI 4 (Debian's openmpi-bin)");

    static void Check(int rc, string call)
    {
        if (rc != 0) throw new DGrabException($"{call} failed with MPI error {rc}");
    }

    public static void Init()
    {
        Load();
        int done;
        Check(initialized(&done), "MPI_Initialized");
        if (done == 0) Check(init(null, null), "MPI_Init");
    }

    public static int WorldSize() { int n; Check(commSize(commWorld, &n), "MPI_Comm_size"); return n; }
    public static int WorldRank() { int r; Check(commRank(commWorld, &r), "MPI_Comm_rank"); return r; }

    public static void AllGatherInPlace(Span<float> buffer, int blockLength)
    {
        fixed (float* p = buffer)
            Check(allgather(InPlace, 0, datatypeNull, p, blockLength, mpiFloat, commWorld), "MPI_Allgather");
    }

    public static void FinalizeQuietly()
    {
        if (lib == 0) return;
        int done;
        if (finalized(&done) == 0 && done == 0) finalize();
    }
}
