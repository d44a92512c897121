using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Native;

// All native calls of the webgpu platform live in this file (the binding, the one status check Wgpu.Check and the
// handle type WgpuHandle): Dawn's C ABI (webgpu.h, the 2025 revision with
// WGPUStringView labels and *CallbackInfo structs passed by value) as shipped by the npm package
// bun-webgpu-linux-x64 0.1.7 (libwebgpu_wrapper.so). Struct layouts were checked against the library's DWARF
// (see ../shared/PLATFORMS.md §1); enum values are those of Dawn's webgpu.h of that revision.

[StructLayout(LayoutKind.Sequential)]
struct StringView
{
    public nint Data;
    public nuint Length;
    public override string ToString() => Data == 0 ? "" : Length == nuint.MaxValue
        ? Marshal.PtrToStringUTF8(Data) ?? "" : Marshal.PtrToStringUTF8(Data, checked((int)Length)) ?? "";
}

[StructLayout(LayoutKind.Sequential)]
struct CallbackInfo // RequestAdapter / RequestDevice / BufferMap / DeviceLost / QueueWorkDone / PopErrorScope: 40 B
{
    public nint Next;
    public uint Mode;
    public nint Callback;
    public nint Userdata1;
    public nint Userdata2;
}

[StructLayout(LayoutKind.Sequential)]
struct UncapturedErrorCallbackInfo // 32 B, no mode
{
    public nint Next;
    public nint Callback;
    public nint Userdata1;
    public nint Userdata2;
}

[StructLayout(LayoutKind.Sequential)]
struct InstanceDescriptor
{
    public nint Next;
    public nint CapsNext;
    public uint TimedWaitAnyEnable;
    public nuint TimedWaitAnyMaxCount;
}

[StructLayout(LayoutKind.Sequential)]
struct RequestAdapterOptions
{
    public nint Next;
    public uint FeatureLevel;
    public uint PowerPreference;
    public uint ForceFallbackAdapter;
    public uint BackendType;
    public nint CompatibleSurface;
}

/// <summary>WGPULimits of this build: 152 B, ends with maxImmediateSize.</summary>
[StructLayout(LayoutKind.Sequential)]
unsafe struct NativeLimits
{
    public nint Next;
    public uint MaxTextureDimension1D, MaxTextureDimension2D, MaxTextureDimension3D, MaxTextureArrayLayers;
    public uint MaxBindGroups, MaxBindGroupsPlusVertexBuffers, MaxBindingsPerBindGroup;
    public uint MaxDynamicUniformBuffersPerPipelineLayout, MaxDynamicStorageBuffersPerPipelineLayout;
    public uint MaxSampledTexturesPerShaderStage, MaxSamplersPerShaderStage, MaxStorageBuffersPerShaderStage;
    public uint MaxStorageTexturesPerShaderStage, MaxUniformBuffersPerShaderStage;
    public ulong MaxUniformBufferBindingSize, MaxStorageBufferBindingSize;
    public uint MinUniformBufferOffsetAlignment, MinStorageBufferOffsetAlignment;
    public uint MaxVertexBuffers;
    public ulong MaxBufferSize;
    public uint MaxVertexAttributes, MaxVertexBufferArrayStride, MaxInterStageShaderVariables, MaxColorAttachments;
    public uint MaxColorAttachmentBytesPerSample, MaxComputeWorkgroupStorageSize, MaxComputeInvocationsPerWorkgroup;
    public uint MaxComputeWorkgroupSizeX, MaxComputeWorkgroupSizeY, MaxComputeWorkgroupSizeZ;
    public uint MaxComputeWorkgroupsPerDimension, MaxImmediateSize;
}

[StructLayout(LayoutKind.Sequential)]
struct NativeAdapterInfo
{
    public nint Next;
    public StringView Vendor, Architecture, Device, Description;
    public uint BackendType, AdapterType, VendorId, DeviceId, SubgroupMinSize, SubgroupMaxSize;
}

[StructLayout(LayoutKind.Sequential)]
struct DeviceDescriptor
{
    public nint Next;
    public StringView Label;
    public nuint RequiredFeatureCount;
    public nint RequiredFeatures;
    public nint RequiredLimits;
    public nint QueueNext;
    public StringView QueueLabel;
    public CallbackInfo DeviceLost;
    public UncapturedErrorCallbackInfo UncapturedError;
}

[StructLayout(LayoutKind.Sequential)]
struct BufferDescriptor
{
    public nint Next;
    public StringView Label;
    public ulong Usage;
    public ulong Size;
    public uint MappedAtCreation;
}

/// <summary>Chained into the device descriptor: Dawn's blob cache functions (<see cref="Tapml.Platforms.WebGpu.DawnBlobCache"/>).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct DawnCacheDeviceDescriptor
{
    public nint ChainNext;
    public uint SType;
    public StringView IsolationKey;
    public nint Load;
    public nint Store;
    public nint Userdata;
}

/// <summary>Chained into the device descriptor: Dawn toggles to enable and disable (names, UTF-8).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct DawnTogglesDescriptor
{
    public nint ChainNext;
    public uint SType;
    public nuint EnabledCount;
    public nint Enabled;
    public nuint DisabledCount;
    public nint Disabled;
}

[StructLayout(LayoutKind.Sequential)]
struct ShaderSourceWgsl
{
    public nint ChainNext;
    public uint SType;
    public StringView Code;
}

[StructLayout(LayoutKind.Sequential)]
struct ShaderModuleDescriptor
{
    public nint Next;
    public StringView Label;
}

[StructLayout(LayoutKind.Sequential)]
struct ComputePipelineDescriptor
{
    public nint Next;
    public StringView Label;
    public nint Layout;
    public nint ComputeNext;
    public nint Module;
    public StringView EntryPoint;
    public nuint ConstantCount;
    public nint Constants;
}

[StructLayout(LayoutKind.Sequential)]
struct BindGroupEntry
{
    public nint Next;
    public uint Binding;
    public nint Buffer;
    public ulong Offset;
    public ulong Size;
    public nint Sampler;
    public nint TextureView;
}

[StructLayout(LayoutKind.Sequential)]
struct BindGroupDescriptor
{
    public nint Next;
    public StringView Label;
    public nint Layout;
    public nuint EntryCount;
    public nint Entries;
}

[StructLayout(LayoutKind.Sequential)]
struct QuerySetDescriptor
{
    public nint Next;
    public StringView Label;
    public uint Type;
    public uint Count;
}

[StructLayout(LayoutKind.Sequential)]
struct FutureWaitInfo
{
    public ulong Future;
    public uint Completed;
}

/// <summary>The Dawn entry points tapml uses, loaded once from libwebgpu_wrapper.so.</summary>
static unsafe class Wgpu
{
    public const uint StatusSuccess = 1;
    public const uint CallbackWaitAnyOnly = 1;
    public const uint BackendUndefined = 0, BackendVulkan = 6, BackendOpenGL = 7, BackendOpenGLES = 8;
    public const uint FeatureLevelCompatibility = 1, FeatureLevelCore = 2;
    public const uint PowerHighPerformance = 2;
    public const uint STypeShaderSourceWgsl = 2;
    /// <summary>WGPUSType_DawnCacheDeviceDescriptor (Dawn's extension range; checked on this build: Dawn calls the
    /// functions it names, KernelListTests).</summary>
    public const uint STypeDawnCacheDeviceDescriptor = 0x00050007;
    /// <summary>WGPUSType_DawnTogglesDescriptor in the same numbering (three after the cache descriptor; checked on this
    /// build: a device asked for an unknown toggle is refused naming it, DawnToggleTests).</summary>
    public const uint STypeDawnTogglesDescriptor = 0x0005000A;
    public const uint FeatureTimestampQuery = 3, FeatureShaderF16 = 0x0A, FeatureSubgroups = 0x11;
    public const uint ErrorFilterValidation = 1, ErrorFilterOutOfMemory = 2, ErrorFilterInternal = 3;
    public const uint ErrorTypeNoError = 1;
    public const uint QueryTypeTimestamp = 2;
    public const ulong UsageMapRead = 1, UsageCopySrc = 4, UsageCopyDst = 8, UsageStorage = 0x80, UsageQueryResolve = 0x200;
    public const ulong MapModeRead = 1;

    static nint _lib;
    public static string? LibraryPath { get; private set; }

    public static delegate* unmanaged[Cdecl]<InstanceDescriptor*, nint> CreateInstance;
    public static delegate* unmanaged[Cdecl]<nint, RequestAdapterOptions*, CallbackInfo, ulong> InstanceRequestAdapter;
    public static delegate* unmanaged[Cdecl]<nint, nuint, FutureWaitInfo*, ulong, uint> InstanceWaitAny;
    public static delegate* unmanaged[Cdecl]<nint, void> InstanceProcessEvents;
    public static delegate* unmanaged[Cdecl]<nint, void> InstanceRelease;
    public static delegate* unmanaged[Cdecl]<nint, NativeAdapterInfo*, uint> AdapterGetInfo;
    public static delegate* unmanaged[Cdecl]<NativeAdapterInfo, void> AdapterInfoFreeMembers;
    public static delegate* unmanaged[Cdecl]<nint, NativeLimits*, uint> AdapterGetLimits;
    public static delegate* unmanaged[Cdecl]<nint, uint, uint> AdapterHasFeature;
    public static delegate* unmanaged[Cdecl]<nint, DeviceDescriptor*, CallbackInfo, ulong> AdapterRequestDevice;
    public static delegate* unmanaged[Cdecl]<nint, void> AdapterRelease;
    public static delegate* unmanaged[Cdecl]<nint, NativeLimits*, uint> DeviceGetLimits;
    public static delegate* unmanaged[Cdecl]<nint, nint> DeviceGetQueue;
    public static delegate* unmanaged[Cdecl]<nint, BufferDescriptor*, nint> DeviceCreateBuffer;
    public static delegate* unmanaged[Cdecl]<nint, ShaderModuleDescriptor*, nint> DeviceCreateShaderModule;
    public static delegate* unmanaged[Cdecl]<nint, ComputePipelineDescriptor*, nint> DeviceCreateComputePipeline;
    /// <summary>Compiles on Dawn's worker threads; the callback (<see cref="HandleCallback"/>'s shape) gives the pipeline.</summary>
    public static delegate* unmanaged[Cdecl]<nint, ComputePipelineDescriptor*, CallbackInfo, ulong> DeviceCreateComputePipelineAsync;
    public static delegate* unmanaged[Cdecl]<nint, BindGroupDescriptor*, nint> DeviceCreateBindGroup;
    public static delegate* unmanaged[Cdecl]<nint, nint, nint> DeviceCreateCommandEncoder;
    public static delegate* unmanaged[Cdecl]<nint, QuerySetDescriptor*, nint> DeviceCreateQuerySet;
    public static delegate* unmanaged[Cdecl]<nint, uint, void> DevicePushErrorScope;
    public static delegate* unmanaged[Cdecl]<nint, CallbackInfo, ulong> DevicePopErrorScope;
    public static delegate* unmanaged[Cdecl]<nint, void> DeviceDestroy;
    public static delegate* unmanaged[Cdecl]<nint, void> DeviceRelease;
    public static delegate* unmanaged[Cdecl]<nint, uint, nint> ComputePipelineGetBindGroupLayout;
    public static delegate* unmanaged[Cdecl]<nint, void> ComputePipelineRelease;
    public static delegate* unmanaged[Cdecl]<nint, void> ShaderModuleRelease;
    public static delegate* unmanaged[Cdecl]<nint, void> BindGroupLayoutRelease;
    public static delegate* unmanaged[Cdecl]<nint, void> BindGroupRelease;
    public static delegate* unmanaged[Cdecl]<nint, nint, nint> CommandEncoderBeginComputePass;
    public static delegate* unmanaged[Cdecl]<nint, nint, ulong, nint, ulong, ulong, void> CommandEncoderCopyBufferToBuffer;
    public static delegate* unmanaged[Cdecl]<nint, nint, uint, uint, nint, ulong, void> CommandEncoderResolveQuerySet;
    public static delegate* unmanaged[Cdecl]<nint, nint, nint> CommandEncoderFinish;
    public static delegate* unmanaged[Cdecl]<nint, void> CommandEncoderRelease;
    public static delegate* unmanaged[Cdecl]<nint, nint, void> ComputePassSetPipeline;
    public static delegate* unmanaged[Cdecl]<nint, uint, nint, nuint, uint*, void> ComputePassSetBindGroup;
    public static delegate* unmanaged[Cdecl]<nint, uint, uint, uint, void> ComputePassDispatch;
    public static delegate* unmanaged[Cdecl]<nint, nint, uint, void> ComputePassWriteTimestamp;
    public static delegate* unmanaged[Cdecl]<nint, void> ComputePassEnd;
    public static delegate* unmanaged[Cdecl]<nint, void> ComputePassRelease;
    public static delegate* unmanaged[Cdecl]<nint, void> CommandBufferRelease;
    public static delegate* unmanaged[Cdecl]<nint, nuint, nint*, void> QueueSubmit;
    public static delegate* unmanaged[Cdecl]<nint, nint, ulong, void*, nuint, void> QueueWriteBuffer;
    public static delegate* unmanaged[Cdecl]<nint, void> QueueRelease;
    public static delegate* unmanaged[Cdecl]<nint, ulong, nuint, nuint, CallbackInfo, ulong> BufferMapAsync;
    public static delegate* unmanaged[Cdecl]<nint, nuint, nuint, void*> BufferGetConstMappedRange;
    public static delegate* unmanaged[Cdecl]<nint, void> BufferUnmap;
    public static delegate* unmanaged[Cdecl]<nint, void> BufferDestroy;
    public static delegate* unmanaged[Cdecl]<nint, void> BufferRelease;
    public static delegate* unmanaged[Cdecl]<nint, void> QuerySetRelease;

    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnvNative(string name, string value, int overwrite);

    /// <summary>Sets a variable in the native environment (Dawn and the Vulkan loader read it with getenv;
    /// Environment.SetEnvironmentVariable does not reach them on Unix).</summary>
    public static void SetNativeEnv(string name, string value)
    {
        SetEnvNative(name, value, 1);
        Environment.SetEnvironmentVariable(name, value);
    }

    /// <summary>Where the Dawn library is: $TAPML_WEBGPU_LIB, else <see cref="NpmPackages.Find(string, string, string?)"/>
    /// (a checkout's .tapml/webgpu/… from scripts/fetch-webgpu.sh, else the user cache folder from <c>tapml setup</c>).</summary>
    public static string? FindLibrary() =>
        Environment.GetEnvironmentVariable("TAPML_WEBGPU_LIB") is { Length: > 0 } env ? env : NpmPackages.Find("webgpu", LibraryInPackage, LibraryFile);

    /// <summary>The library's file name; a bare copy beside the program (or above it) is also used: how a device
    /// bundle may ship Dawn.</summary>
    public const string LibraryFile = "libwebgpu_wrapper.so";

    /// <summary>The library's path relative to the webgpu group's node_modules.</summary>
    public static string LibraryInPackage => Path.Combine(Dawn.Name, LibraryFile);

    /// <summary>The pinned Dawn package (npm bun-webgpu-linux-x64).</summary>
    public static NpmPackages.Pin Dawn => NpmPackages.Get("bun-webgpu-linux-x64");

    /// <summary>Why webgpu cannot load: the library is missing, and how to install it.</summary>
    public static string NotInstalled =>
        $"webgpu: Dawn (npm {Dawn.Name} {Dawn.Version}) is not installed: {NpmPackages.InstallHint("fetch-webgpu.sh")}, or set TAPML_WEBGPU_LIB to {LibraryFile}";

    /// <summary>Loads the library once; throws a <see cref="TapmlException"/> saying how to install it when absent.</summary>
    public static void Load()
    {
        if (_lib != 0) return;
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
            throw new UnsupportedException($"webgpu: the pinned Dawn build (npm bun-webgpu-linux-x64 0.1.7) is for linux x64; this is {RuntimeInformation.OSDescription} {RuntimeInformation.ProcessArchitecture}");
        var path = FindLibrary() ?? throw new UnsupportedException(NotInstalled);
        if (!File.Exists(path)) throw new UnsupportedException($"webgpu: TAPML_WEBGPU_LIB={path} does not exist");
        nint lib;
        try { lib = NativeLibrary.Load(path); }
        catch (DllNotFoundException e) { throw new UnsupportedException($"webgpu: cannot load {path}: {e.Message}"); }
        nint F(string name) => NativeLibrary.TryGetExport(lib, name, out var p) ? p
            : throw new UnsupportedException($"webgpu: {path} has no export {name} (expected the Dawn build of bun-webgpu-linux-x64 0.1.7)");
        CreateInstance = (delegate* unmanaged[Cdecl]<InstanceDescriptor*, nint>)F("wgpuCreateInstance");
        InstanceRequestAdapter = (delegate* unmanaged[Cdecl]<nint, RequestAdapterOptions*, CallbackInfo, ulong>)F("wgpuInstanceRequestAdapter");
        InstanceWaitAny = (delegate* unmanaged[Cdecl]<nint, nuint, FutureWaitInfo*, ulong, uint>)F("wgpuInstanceWaitAny");
        InstanceProcessEvents = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuInstanceProcessEvents");
        InstanceRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuInstanceRelease");
        AdapterGetInfo = (delegate* unmanaged[Cdecl]<nint, NativeAdapterInfo*, uint>)F("wgpuAdapterGetInfo");
        AdapterInfoFreeMembers = (delegate* unmanaged[Cdecl]<NativeAdapterInfo, void>)F("wgpuAdapterInfoFreeMembers");
        AdapterGetLimits = (delegate* unmanaged[Cdecl]<nint, NativeLimits*, uint>)F("wgpuAdapterGetLimits");
        AdapterHasFeature = (delegate* unmanaged[Cdecl]<nint, uint, uint>)F("wgpuAdapterHasFeature");
        AdapterRequestDevice = (delegate* unmanaged[Cdecl]<nint, DeviceDescriptor*, CallbackInfo, ulong>)F("wgpuAdapterRequestDevice");
        AdapterRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuAdapterRelease");
        DeviceGetLimits = (delegate* unmanaged[Cdecl]<nint, NativeLimits*, uint>)F("wgpuDeviceGetLimits");
        DeviceGetQueue = (delegate* unmanaged[Cdecl]<nint, nint>)F("wgpuDeviceGetQueue");
        DeviceCreateBuffer = (delegate* unmanaged[Cdecl]<nint, BufferDescriptor*, nint>)F("wgpuDeviceCreateBuffer");
        DeviceCreateShaderModule = (delegate* unmanaged[Cdecl]<nint, ShaderModuleDescriptor*, nint>)F("wgpuDeviceCreateShaderModule");
        DeviceCreateComputePipeline = (delegate* unmanaged[Cdecl]<nint, ComputePipelineDescriptor*, nint>)F("wgpuDeviceCreateComputePipeline");
        DeviceCreateComputePipelineAsync = (delegate* unmanaged[Cdecl]<nint, ComputePipelineDescriptor*, CallbackInfo, ulong>)F("wgpuDeviceCreateComputePipelineAsync");
        DeviceCreateBindGroup = (delegate* unmanaged[Cdecl]<nint, BindGroupDescriptor*, nint>)F("wgpuDeviceCreateBindGroup");
        DeviceCreateCommandEncoder = (delegate* unmanaged[Cdecl]<nint, nint, nint>)F("wgpuDeviceCreateCommandEncoder");
        DeviceCreateQuerySet = (delegate* unmanaged[Cdecl]<nint, QuerySetDescriptor*, nint>)F("wgpuDeviceCreateQuerySet");
        DevicePushErrorScope = (delegate* unmanaged[Cdecl]<nint, uint, void>)F("wgpuDevicePushErrorScope");
        DevicePopErrorScope = (delegate* unmanaged[Cdecl]<nint, CallbackInfo, ulong>)F("wgpuDevicePopErrorScope");
        DeviceDestroy = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuDeviceDestroy");
        DeviceRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuDeviceRelease");
        ComputePipelineGetBindGroupLayout = (delegate* unmanaged[Cdecl]<nint, uint, nint>)F("wgpuComputePipelineGetBindGroupLayout");
        ComputePipelineRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuComputePipelineRelease");
        ShaderModuleRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuShaderModuleRelease");
        BindGroupLayoutRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuBindGroupLayoutRelease");
        BindGroupRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuBindGroupRelease");
        CommandEncoderBeginComputePass = (delegate* unmanaged[Cdecl]<nint, nint, nint>)F("wgpuCommandEncoderBeginComputePass");
        CommandEncoderCopyBufferToBuffer = (delegate* unmanaged[Cdecl]<nint, nint, ulong, nint, ulong, ulong, void>)F("wgpuCommandEncoderCopyBufferToBuffer");
        CommandEncoderResolveQuerySet = (delegate* unmanaged[Cdecl]<nint, nint, uint, uint, nint, ulong, void>)F("wgpuCommandEncoderResolveQuerySet");
        CommandEncoderFinish = (delegate* unmanaged[Cdecl]<nint, nint, nint>)F("wgpuCommandEncoderFinish");
        CommandEncoderRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuCommandEncoderRelease");
        ComputePassSetPipeline = (delegate* unmanaged[Cdecl]<nint, nint, void>)F("wgpuComputePassEncoderSetPipeline");
        ComputePassSetBindGroup = (delegate* unmanaged[Cdecl]<nint, uint, nint, nuint, uint*, void>)F("wgpuComputePassEncoderSetBindGroup");
        ComputePassDispatch = (delegate* unmanaged[Cdecl]<nint, uint, uint, uint, void>)F("wgpuComputePassEncoderDispatchWorkgroups");
        ComputePassWriteTimestamp = (delegate* unmanaged[Cdecl]<nint, nint, uint, void>)F("wgpuComputePassEncoderWriteTimestamp");
        ComputePassEnd = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuComputePassEncoderEnd");
        ComputePassRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuComputePassEncoderRelease");
        CommandBufferRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuCommandBufferRelease");
        QueueSubmit = (delegate* unmanaged[Cdecl]<nint, nuint, nint*, void>)F("wgpuQueueSubmit");
        QueueWriteBuffer = (delegate* unmanaged[Cdecl]<nint, nint, ulong, void*, nuint, void>)F("wgpuQueueWriteBuffer");
        QueueRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuQueueRelease");
        BufferMapAsync = (delegate* unmanaged[Cdecl]<nint, ulong, nuint, nuint, CallbackInfo, ulong>)F("wgpuBufferMapAsync");
        BufferGetConstMappedRange = (delegate* unmanaged[Cdecl]<nint, nuint, nuint, void*>)F("wgpuBufferGetConstMappedRange");
        BufferUnmap = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuBufferUnmap");
        BufferDestroy = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuBufferDestroy");
        BufferRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuBufferRelease");
        QuerySetRelease = (delegate* unmanaged[Cdecl]<nint, void>)F("wgpuQuerySetRelease");
        LibraryPath = path;
        _lib = lib;
    }

    // ---- the one status check -------------------------------------------------------------------------------------

    /// <summary>Throws a <see cref="TapmlException"/> naming <paramref name="call"/> and the status unless it is
    /// success (1 in every WGPU*Status enum): <c>webgpu: wgpuBufferMapAsync failed: WGPUMapAsyncStatus 3: …</c>.</summary>
    /// <param name="enumName">The status enum (<c>WGPUStatus</c>, <c>WGPUMapAsyncStatus</c>), for the message.</param>
    /// <param name="message">What the callback said (blank: nothing).</param>
    /// <param name="context">The node being recorded (blank: none).</param>
    public static void Check(uint status, string call, string enumName = "WGPUStatus", string message = "", string context = "")
    {
        if (status != StatusSuccess) throw Failure(call, StatusName(enumName, status), message, context);
    }

    /// <summary>A created object, or a <see cref="TapmlException"/> naming <paramref name="call"/> when it returned null.</summary>
    public static nint Created(nint handle, string call, string context = "") =>
        handle != 0 ? handle : throw Failure(call, "returned null", "", context);

    /// <summary>The one message format of a failed Dawn call: <c>webgpu: {call} ({context}) failed: {status}: {message}</c>.
    /// Also for errors Dawn reports through an error scope or the uncaptured-error callback (status: the error type).</summary>
    public static TapmlException Failure(string call, string status, string message, string context)
    {
        message = message.Trim();
        return new TapmlException($"webgpu: {call}{(context.Length > 0 ? $" ({context})" : "")} failed: {status}{(message.Length > 0 ? $": {message}" : "")}");
    }

    static string StatusName(string enumName, uint status) => enumName == "WGPUStatus" && status == 2 ? "WGPUStatus_Error (2)" : $"{enumName} {status}";

    /// <summary>A WGPUErrorType as webgpu.h names it (<c>WGPUErrorType_OutOfMemory</c>).</summary>
    public static string ErrorTypeName(uint type) => type switch
    {
        1 => "WGPUErrorType_NoError", 2 => "WGPUErrorType_Validation", 3 => "WGPUErrorType_OutOfMemory",
        4 => "WGPUErrorType_Internal", 5 => "WGPUErrorType_Unknown", _ => $"WGPUErrorType {type}",
    };

    /// <summary>A UTF-8 copy of <paramref name="s"/> on the native heap (free with <see cref="Marshal.FreeHGlobal"/>).</summary>
    public static StringView Utf8(string s, out nint mem)
    {
        var bytes = Encoding.UTF8.GetBytes(s);
        mem = Marshal.AllocHGlobal(bytes.Length + 1);
        Marshal.Copy(bytes, 0, mem, bytes.Length);
        ((byte*)mem)[bytes.Length] = 0;
        return new StringView { Data = mem, Length = (nuint)bytes.Length };
    }

    /// <summary>Result box a callback fills; passed as userdata1 through a GCHandle.</summary>
    public sealed class Reply
    {
        public uint Status;
        public uint Kind;
        public nint Handle;
        public string Message = "";
        public bool Done;
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static void OnHandle(uint status, nint handle, StringView msg, nint u1, nint u2)
    {
        var r = (Reply)GCHandle.FromIntPtr(u1).Target!;
        r.Status = status; r.Handle = handle; r.Message = msg.ToString(); r.Done = true;
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static void OnStatus(uint status, StringView msg, nint u1, nint u2)
    {
        var r = (Reply)GCHandle.FromIntPtr(u1).Target!;
        r.Status = status; r.Message = msg.ToString(); r.Done = true;
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static void OnErrorScope(uint status, uint type, StringView msg, nint u1, nint u2)
    {
        var r = (Reply)GCHandle.FromIntPtr(u1).Target!;
        r.Status = status; r.Kind = type; r.Message = msg.ToString(); r.Done = true;
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    static void OnDeviceEvent(nint* device, uint reason, StringView msg, nint u1, nint u2)
    {
        if (u1 == 0) return;
        // userdata2 says which callback it is: DeviceLostSource or UncapturedErrorSource.
        if (GCHandle.FromIntPtr(u1).Target is Action<uint, uint, string> sink) sink((uint)u2, reason, msg.ToString());
    }

    public static nint HandleCallback => (nint)(delegate* unmanaged[Cdecl]<uint, nint, StringView, nint, nint, void>)&OnHandle;
    public static nint StatusCallback => (nint)(delegate* unmanaged[Cdecl]<uint, StringView, nint, nint, void>)&OnStatus;
    public static nint ErrorScopeCallback => (nint)(delegate* unmanaged[Cdecl]<uint, uint, StringView, nint, nint, void>)&OnErrorScope;
    /// <summary>Userdata2 of the device-lost and the uncaptured-error callback info (<see cref="DeviceEventCallback"/>
    /// serves both; the sink gets it first, then the reason or error type, then the message).</summary>
    public const nint DeviceLostSource = 1, UncapturedErrorSource = 2;
    public static nint DeviceEventCallback => (nint)(delegate* unmanaged[Cdecl]<nint*, uint, StringView, nint, nint, void>)&OnDeviceEvent;

    /// <summary>Calls <paramref name="start"/> with a WaitAnyOnly callback info and blocks until the callback ran.</summary>
    public static Reply Await(nint instance, nint callback, Func<CallbackInfo, ulong> start, string what) =>
        End(instance, Begin(callback, start), what);

    /// <summary>An operation started by <see cref="Begin"/>: its future and the reply its callback fills.</summary>
    public sealed class Pending(ulong future, Reply reply, GCHandle handle)
    {
        public readonly ulong Future = future;
        public readonly Reply Reply = reply;
        internal GCHandle Handle = handle;
    }

    /// <summary>Calls <paramref name="start"/> with a WaitAnyOnly callback info and returns without waiting
    /// (<see cref="End"/> waits): a readback's map runs while the host records the next work.</summary>
    public static Pending Begin(nint callback, Func<CallbackInfo, ulong> start)
    {
        var reply = new Reply();
        var h = GCHandle.Alloc(reply);
        try
        {
            var info = new CallbackInfo { Mode = CallbackWaitAnyOnly, Callback = callback, Userdata1 = GCHandle.ToIntPtr(h) };
            return new Pending(start(info), reply, h);
        }
        catch { h.Free(); throw; }
    }

    /// <summary>Blocks until <paramref name="p"/>'s callback ran; frees its handle.</summary>
    public static Reply End(nint instance, Pending p, string what)
    {
        try
        {
            var w = new FutureWaitInfo { Future = p.Future };
            Check(InstanceWaitAny(instance, 1, &w, ulong.MaxValue), $"wgpuInstanceWaitAny ({what})", "WGPUWaitStatus");
            if (!p.Reply.Done) throw Failure($"wgpuInstanceWaitAny ({what})", "returned before the callback ran", "", "");
            return p.Reply;
        }
        finally { if (p.Handle.IsAllocated) p.Handle.Free(); }
    }
}

/// <summary>The kinds of Dawn object a <see cref="WgpuHandle"/> holds (each with its own release function).</summary>
enum WgpuKind { Instance, Adapter, Device, Queue, Buffer, ShaderModule, ComputePipeline, BindGroupLayout, QuerySet }

/// <summary>A reference to a Dawn object tapml holds: released (a buffer or device also destroyed first) exactly once.
/// Children keep their parent's handle alive (adapter → instance, device → adapter, the rest → device), so the device
/// goes after its last buffer and pipeline whatever order they are disposed in. Bind groups, command encoders,
/// passes and command buffers are not wrapped (see <c>DawnDevice</c>): they live for one submit or in a cache.</summary>
sealed unsafe class WgpuHandle(WgpuKind kind, nint value, WgpuHandle? parent) : Tapml.Platforms.NativeHandle(value, parent)
{
    public WgpuKind Kind { get; } = kind;

    protected override void Free(nint h)
    {
        switch (Kind)
        {
            case WgpuKind.Instance: Wgpu.InstanceProcessEvents(h); Wgpu.InstanceRelease(h); break;
            case WgpuKind.Adapter: Wgpu.AdapterRelease(h); break;
            case WgpuKind.Device: Wgpu.DeviceDestroy(h); Wgpu.DeviceRelease(h); break;
            case WgpuKind.Queue: Wgpu.QueueRelease(h); break;
            case WgpuKind.Buffer: Wgpu.BufferDestroy(h); Wgpu.BufferRelease(h); break;
            case WgpuKind.ShaderModule: Wgpu.ShaderModuleRelease(h); break;
            case WgpuKind.ComputePipeline: Wgpu.ComputePipelineRelease(h); break;
            case WgpuKind.BindGroupLayout: Wgpu.BindGroupLayoutRelease(h); break;
            default: Wgpu.QuerySetRelease(h); break;
        }
    }
}
