using Silk.NET.Vulkan;
using Tapml.Core;
using Buffer = Silk.NET.Vulkan.Buffer;

namespace Tapml.Platforms.Vulkan;

/// <summary>The Vulkan side of tapml's native interop: Silk.NET.Vulkan is the binding (one <see cref="Vk"/> over the
/// loader), this class is the one status check and the handle types. Every call that returns a <c>VkResult</c> goes
/// through <see cref="Check"/>.</summary>
static class VkNative
{
    /// <summary>Throws a <see cref="TapmlException"/> naming <paramref name="call"/> and the result unless it is
    /// VK_SUCCESS: <c>vulkan: vkQueueSubmit failed: VK_ERROR_DEVICE_LOST (-4) (node /model/MatMul)</c>. The message is
    /// formatted only on failure.</summary>
    /// <param name="what">The kernel or object the call was for, in parentheses after the call (null: none).</param>
    /// <param name="context">The node being recorded (blank: none).</param>
    public static void Check(Result r, string call, string? what = null, string context = "")
    {
        if (r != Result.Success) throw Failure(r, call, what, context);
    }

    static TapmlException Failure(Result r, string call, string? what, string context)
    {
        string memory = r switch { Result.ErrorOutOfDeviceMemory => " (out of device memory)", Result.ErrorOutOfHostMemory => " (out of host memory)", _ => "" };
        string lost = r == Result.ErrorDeviceLost ? "; the device was lost, create the platform again" : "";
        return new TapmlException($"vulkan: {call}{(what is null ? "" : $" ({what})")} failed: {Name(r)}{memory}{(context.Length > 0 ? $" ({context})" : "")}{lost}");
    }

    /// <summary><c>VK_ERROR_DEVICE_LOST (-4)</c>; a value the headers do not name is <c>VkResult -1234</c>.</summary>
    public static string Name(Result r) => Enum.IsDefined(r) ? $"{NativeHandle.CName("VK_", r.ToString())} ({(int)r})" : $"VkResult {(int)r}";
}

/// <summary>A <c>VkInstance</c>: vkDestroyInstance when released (after every device made from it).</summary>
sealed unsafe class VkInstanceHandle(Vk api, Instance instance) : NativeHandle(instance.Handle, null)
{
    public Vk Api { get; } = api;
    public Instance Instance => new(handle);
    protected override void Free(nint h) => Api.DestroyInstance(new Instance(h), null);
}

/// <summary>A <c>VkDevice</c>: waits for it to be idle, then vkDestroyDevice, when released (after every object made
/// from it: each holds a reference on this handle).</summary>
sealed unsafe class VkDeviceHandle(VkInstanceHandle instance, Device device) : NativeHandle(device.Handle, instance)
{
    public Vk Api { get; } = instance.Api;
    public Device Device => new(handle);

    protected override void Free(nint h)
    {
        var d = new Device(h);
        // NOTE: a device finalized while work runs (a platform never disposed) must not free memory the GPU uses.
        _ = Api.DeviceWaitIdle(d);
        Api.DestroyDevice(d, null);
    }
}

/// <summary>The kinds of device object a <see cref="VkObject"/> holds.</summary>
enum VkKind { CommandPool, DescriptorPool, Fence, QueryPool, ShaderModule, Pipeline, PipelineLayout, DescriptorSetLayout }

/// <summary>An object made from a <see cref="VkDeviceHandle"/> (a non-dispatchable 64-bit handle): vkDestroy* of its
/// kind when released. Command buffers and descriptor sets are not wrapped: they go with their pools.</summary>
sealed unsafe class VkObject(VkDeviceHandle device, VkKind kind, ulong value) : NativeHandle((nint)value, device)
{
    public VkKind Kind { get; } = kind;
    public ulong Raw => (ulong)handle;

    protected override void Free(nint h)
    {
        var dev = (VkDeviceHandle)Parent!;
        var (vk, d, v) = (dev.Api, dev.Device, (ulong)h);
        switch (Kind)
        {
            case VkKind.CommandPool: vk.DestroyCommandPool(d, new CommandPool(v), null); break;
            case VkKind.DescriptorPool: vk.DestroyDescriptorPool(d, new DescriptorPool(v), null); break;
            case VkKind.Fence: vk.DestroyFence(d, new Fence(v), null); break;
            case VkKind.QueryPool: vk.DestroyQueryPool(d, new QueryPool(v), null); break;
            case VkKind.ShaderModule: vk.DestroyShaderModule(d, new ShaderModule(v), null); break;
            case VkKind.Pipeline: vk.DestroyPipeline(d, new Pipeline(v), null); break;
            case VkKind.PipelineLayout: vk.DestroyPipelineLayout(d, new PipelineLayout(v), null); break;
            default: vk.DestroyDescriptorSetLayout(d, new DescriptorSetLayout(v), null); break;
        }
    }
}

/// <summary>A buffer and the memory bound to it (one allocation each, whole): vkDestroyBuffer then vkFreeMemory when
/// released (freeing unmaps). The raw <see cref="Buffer"/> is kept for the commands recorded per dispatch.</summary>
sealed unsafe class VkBufferHandle : NativeHandle
{
    public readonly Buffer Buffer;
    public readonly DeviceMemory Memory;
    public readonly ulong Size;
    /// <summary>Where the memory is mapped into the host (null: not host-visible or not mapped).</summary>
    public byte* Mapped;

    public VkBufferHandle(VkDeviceHandle device, Buffer buffer, DeviceMemory memory, ulong size) : base((nint)buffer.Handle, device)
    {
        Buffer = buffer;
        Memory = memory;
        Size = size;
    }

    protected override void Free(nint h)
    {
        var dev = (VkDeviceHandle)Parent!;
        dev.Api.DestroyBuffer(dev.Device, new Buffer((ulong)h), null);
        dev.Api.FreeMemory(dev.Device, Memory, null);
        Mapped = null;
    }
}
