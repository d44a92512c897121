using Silk.NET.OpenCL;
using Tapml.Core;

namespace Tapml.Platforms.OpenCl;

/// <summary>The OpenCL side of tapml's native interop: Silk.NET.OpenCL is the binding (one <see cref="CL"/> over the
/// ICD loader), this class is the one status check and the handle types. Every call that returns a <c>cl_int</c>
/// (directly or through its <c>errcode_ret</c>) goes through <see cref="Check"/>.</summary>
static class ClNative
{
    /// <summary>Throws a <see cref="TapmlException"/> naming <paramref name="call"/> and the status unless it is
    /// CL_SUCCESS: <c>opencl: clEnqueueNDRangeKernel (Softmax) failed: CL_OUT_OF_RESOURCES (-5) (out of memory) (node
    /// /model/Softmax)</c>. The message is formatted only on failure (this runs several times per dispatch).</summary>
    /// <param name="what">The kernel or object the call was for, in parentheses after the call (null: none).</param>
    /// <param name="context">The node being recorded (blank: none).</param>
    /// <param name="detail">More text after a colon (a build log).</param>
    public static void Check(int status, string call, string? what = null, string context = "", string? detail = null)
    {
        if (status != 0) throw Failure(status, call, what, context, detail);
    }

    static TapmlException Failure(int status, string call, string? what, string context, string? detail)
    {
        var code = (ErrorCodes)status;
        bool memory = code is ErrorCodes.MemObjectAllocationFailure or ErrorCodes.OutOfResources or ErrorCodes.OutOfHostMemory;
        return new TapmlException($"opencl: {call}{(what is null ? "" : $" ({what})")} failed: {Name(status)}{(memory ? " (out of memory)" : "")}" +
            $"{(context.Length > 0 ? $" ({context})" : "")}{(detail is null ? "" : $": {detail}")}");
    }

    /// <summary><c>CL_OUT_OF_RESOURCES (-5)</c>; a code the headers do not name is <c>CL error -1234</c>.</summary>
    public static string Name(int status) =>
        Enum.IsDefined((ErrorCodes)status) ? $"{NativeHandle.CName("CL_", ((ErrorCodes)status).ToString())} ({status})" : $"CL error {status}";
}

/// <summary>The kinds of OpenCL object tapml keeps (each released with its own clRelease*).</summary>
enum ClKind { Context, CommandQueue, Mem, Program, Kernel }

/// <summary>An OpenCL object tapml created (a reference it holds): clRelease* when disposed. Children (queue,
/// buffers, programs, kernels) keep their context's handle alive, a kernel its program's.</summary>
sealed class ClHandle : NativeHandle
{
    readonly CL _cl;
    public ClKind Kind { get; }

    public ClHandle(CL cl, ClKind kind, nint handle, ClHandle? parent) : base(handle, parent)
    {
        _cl = cl;
        Kind = kind;
    }

    protected override void Free(nint h)
    {
        // NOTE: a release failing leaves nothing to do (the object is gone or the runtime is); its status is ignored.
        _ = Kind switch
        {
            ClKind.Context => _cl.ReleaseContext(h),
            ClKind.CommandQueue => _cl.ReleaseCommandQueue(h),
            ClKind.Mem => _cl.ReleaseMemObject(h),
            ClKind.Program => _cl.ReleaseProgram(h),
            _ => _cl.ReleaseKernel(h),
        };
    }
}
