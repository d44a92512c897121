using Tapml.Core;
using Tapml.Platforms.WebGpu;

namespace Tapml.Platforms.Vulkan;

/// <summary>The <c>vulkan</c> platform: tapml's GPU platform (kernels, fusion, decode pipeline of
/// <see cref="WebGpuPlatform"/>) over a <see cref="VulkanDevice"/>. Spec:
/// <c>vulkan[?icd=swiftshader|lavapipe|PATH][&amp;device=N][&amp;max-binding=BYTES]</c>.</summary>
public static class VulkanPlatform
{
    public static IPlatform Create(string spec)
    {
        string icd = "";
        int device = -1;
        long maxBinding = 0;
        foreach (var (k, v) in PlatformSpec.Query(spec))
        {
            switch (k)
            {
                case "icd" when v.Length > 0: icd = v; break;
                case "device": device = PlatformSpec.Int(spec, k, v); break;
                case "max-binding" when long.TryParse(v, out maxBinding) && maxBinding >= 16: break;
                default: throw new TapmlException($"platform '{spec}': unknown or bad option '{k}={v}' (vulkan takes icd=swiftshader|lavapipe|PATH, device=N, max-binding=BYTES)");
            }
        }
        if (spec.Split('?', 2)[0] != "vulkan") throw new TapmlException($"platform '{spec}': write vulkan[?icd=…&device=N]");
        return new WebGpuPlatform(spec, new VulkanDevice(icd, device, maxBinding));
    }
}
