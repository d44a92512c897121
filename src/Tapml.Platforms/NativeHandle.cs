using System.Runtime.InteropServices;
using System.Text;

namespace Tapml.Platforms;

/// <summary>A native object a GPU device owns (a Dawn buffer, a Vulkan pipeline, an OpenCL program): released exactly
/// once, by <see cref="SafeHandle.Dispose()"/> or by the runtime's finalizer when it was leaked, through
/// <see cref="Free"/>. A child holds a reference on its parent (the device or context it was made from, with
/// <see cref="SafeHandle.DangerousAddRef"/>), so the parent is released after its last child whatever order they
/// are disposed or finalized in, and a second dispose does nothing.</summary>
public abstract class NativeHandle : SafeHandle
{
    readonly NativeHandle? _parent;

    /// <param name="handle">The object (non-zero: create the handle only after the native call succeeded).</param>
    /// <param name="parent">What it was made from; kept alive until this one is released.</param>
    protected NativeHandle(nint handle, NativeHandle? parent) : base(0, ownsHandle: true)
    {
        if (parent is not null)
        {
            bool added = false;
            parent.DangerousAddRef(ref added);
            _parent = parent;
        }
        SetHandle(handle);
    }

    public override bool IsInvalid => handle == 0;

    /// <summary>The native value (for calls; valid while this handle is not disposed).</summary>
    public nint Value => handle;

    /// <summary>The parent this handle keeps alive (null for a root such as an instance).</summary>
    protected NativeHandle? Parent => _parent;

    /// <summary>Calls the library's release or destroy function on <paramref name="handle"/>.</summary>
    protected abstract void Free(nint handle);

    protected sealed override bool ReleaseHandle()
    {
        try { Free(handle); }
        finally { _parent?.DangerousRelease(); }
        return true;
    }

    /// <summary>An enum member's name as the C headers spell it: <c>ErrorDeviceLost</c> with prefix <c>VK_</c> is
    /// <c>VK_ERROR_DEVICE_LOST</c> (for the status checks' messages).</summary>
    public static string CName(string prefix, string pascal)
    {
        var sb = new StringBuilder(prefix, prefix.Length + pascal.Length + 8);
        for (int i = 0; i < pascal.Length; i++)
        {
            char c = pascal[i];
            bool boundary = i > 0 && char.IsUpper(c) && (char.IsLower(pascal[i - 1]) || char.IsDigit(pascal[i - 1]) ||
                i + 1 < pascal.Length && char.IsLower(pascal[i + 1]) && char.IsUpper(pascal[i - 1]));
            if (boundary) sb.Append('_');
            sb.Append(char.ToUpperInvariant(c));
        }
        return sb.ToString();
    }
}
