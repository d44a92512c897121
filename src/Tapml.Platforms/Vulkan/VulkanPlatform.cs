using Tapml.Core;
using Tapml.Platforms.WebGpu;

namespace Tapml.Platforms.Vulkan;

/// <summary>The <c>vulkan</c> platform: tapml's GPU platform (kernels, fusion, decode pipeline of
/// <see cref="WebGpuPlatform"/>) over a <see cref="VulkanDevice"/>. Spec:
/// <c>vulkan[?icd=swiftshader|lavapipe|PATH][&amp;device=N][&amp;max-binding=BYTES]</c> plus the host-path knobs of
/// <see cref="VulkanOptions"/>: <c>push-descriptors=on|off</c>, <c>barriers=tracked|all</c>, <c>barrier-src=wide|precise</c>, <c>barrier-dst=wide|precise</c>, <c>barrier-mem=global|buffers</c>, <c>writes=ring|inline</c>, <c>writes-ahead=on|off</c>,
/// <c>int-dot=on|off</c>, <c>shader-stats=on|off</c>, <c>batch=N</c>.</summary>
public static class VulkanPlatform
{
    public static IPlatform Create(string spec)
    {
        string icd = "";
        int device = -1;
        long maxBinding = 0;
        var o = new VulkanOptions();
        const string takes = "icd=swiftshader|lavapipe|PATH, device=N, max-binding=BYTES, push-descriptors=on|off, barriers=tracked|all, barrier-src=wide|precise, barrier-dst=wide|precise, barrier-mem=global|buffers, writes=ring|inline, writes-ahead=on|off, int-dot=on|off, shader-stats=on|off, batch=N";
        var kernel = new List<(string, string)>();
        foreach (var (k, v) in PlatformSpec.Query(spec))
        {
            switch (k)
            {
                case "icd" when v.Length > 0: icd = v; break;
                case "device": device = PlatformSpec.Int(spec, k, v); break;
                case "max-binding" when long.TryParse(v, out maxBinding) && maxBinding >= 16: break;
                case "push-descriptors" when v is "on" or "off": o = o with { PushDescriptors = v == "on" }; break;
                case "barriers" when v is "tracked" or "all": o = o with { TrackedBarriers = v == "tracked" }; break;
                case "writes-ahead" when v is "on" or "off": o = o with { WritesAhead = v == "on" }; break;
                case "barrier-src" when v is "precise" or "wide": o = o with { PreciseSource = v == "precise" }; break;
                case "barrier-dst" when v is "precise" or "wide": o = o with { PreciseDestination = v == "precise" }; break;
                case "barrier-mem" when v is "global" or "buffers": o = o with { BufferBarriers = v == "buffers" }; break;
                case "writes" when v is "ring" or "inline": o = o with { UploadRing = v == "ring" }; break;
                case "int-dot" when v is "on" or "off": o = o with { IntegerDot = v == "on" }; break;
                case "shader-stats" when v is "on" or "off": o = o with { ShaderStats = v == "on" }; break;
                case "batch" when int.TryParse(v, out int n) && n >= 1: o = o with { Batch = n }; break;
                default: kernel.Add((k, v)); break;
            }
        }
        if (spec.Split('?', 2)[0] != "vulkan") throw new TapmlException($"platform '{spec}': write vulkan[?icd=…&device=N]");
        var options = GpuKernelOptions.Parse(spec, kernel, takes);
        return new WebGpuPlatform(spec, new VulkanDevice(icd, device, maxBinding, o), options);
    }
}

/// <summary>Host-path choices of a <see cref="VulkanDevice"/> (platform-spec options, so that both sides of each can be
/// measured in one run).</summary>
/// <param name="PushDescriptors">Bind buffers with <c>vkCmdPushDescriptorSetKHR</c> where the device has
/// VK_KHR_push_descriptor (<c>push-descriptors=on</c>, the default); off: descriptor sets allocated, written and
/// cached by their buffers.</param>
/// <param name="TrackedBarriers">A memory barrier only before a command that touches a buffer written (or, to write
/// it, one read) since the last barrier (<c>barriers=tracked</c>, the default); <c>all</c>: one after every
/// command.</param>
/// <param name="UploadRing">Writes of up to 2 MiB are copied through a persistently mapped upload ring
/// (<c>writes=ring</c>, the default); <c>inline</c>: up to 64 KiB as <c>vkCmdUpdateBuffer</c>, larger ones through a
/// staging buffer each.</param>
/// <param name="Batch">Dispatches recorded per command buffer before it is submitted (<c>batch=N</c>, default 48 as
/// webgpu's).</param>
/// <param name="IntegerDot">Where the device has VK_KHR_shader_integer_dot_product's <c>shaderIntegerDotProduct</c>,
/// enable it and render WGSL's <c>dot4I8Packed</c> as SPIR-V's <c>OpSDot</c> (through GL_EXT_spirv_intrinsics;
/// <c>int-dot=on</c>, the default); <c>off</c>, or a device without it: four sign-extended byte products.</param>
/// <param name="ShaderStats">Capture the driver's statistics of each kernel as it is compiled (VK_KHR_pipeline_executable_properties;
/// on NVIDIA: registers a thread, shared memory, spills) and print them on stderr, one line a kernel (<c>shader-stats=on</c>;
/// a device without the extension is an error); <c>off</c>, the default.</param>
/// <param name="PreciseSource">A barrier waits only for the pipeline stages of the commands recorded since the last one
/// (compute, transfer or both: <c>barrier-src=precise</c>); <c>wide</c> (the default): for compute and transfer
/// always. Either way it makes the writes visible to both stages.</param>
/// <param name="WritesAhead">A ring write into a buffer that no command of the batch has touched (and that no barrier
/// is owed for) is copied in a command buffer submitted ahead of the batch's, one barrier after all such copies,
/// rather than between the batch's dispatches with a barrier of its own (<c>writes-ahead=on</c>); <c>off</c> (the
/// default: no gain measured on an H100, docs/benchmarks.md).</param>
/// <param name="PreciseDestination">A barrier before a dispatch orders only compute work after it (<c>barrier-dst=precise</c>;
/// Dawn's compute passes do so): the next transfer (a write or a readback copy) then takes a barrier of both stages first;
/// <c>wide</c> (the default): every barrier orders compute and transfer work after it.</param>
/// <param name="BufferBarriers">A barrier's memory dependency names the buffers written since the last barrier
/// (<c>VkBufferMemoryBarrier</c>s, as Dawn records them: <c>barrier-mem=buffers</c>) rather than all memory (one
/// <c>VkMemoryBarrier</c>, <c>global</c>, the default).</param>
public sealed record VulkanOptions(bool PushDescriptors = true, bool TrackedBarriers = true, bool UploadRing = true, int Batch = 48, bool PreciseSource = false, bool WritesAhead = false,
    bool PreciseDestination = false, bool BufferBarriers = false, bool IntegerDot = true, bool ShaderStats = false);
