using Tapml.Core;
using Tapml.Platforms.WebGpu;

namespace Tapml.Platforms.OpenCl;

/// <summary>The <c>opencl</c> platform: tapml's GPU platform (kernels, fusion, decode pipeline of
/// <see cref="WebGpuPlatform"/>) over an <see cref="OpenClDevice"/>. Spec: <c>opencl[?platform=N][&amp;device=N]</c>.</summary>
public static class OpenClPlatform
{
    public static IPlatform Create(string spec)
    {
        int platform = -1, device = 0;
        foreach (var (k, v) in PlatformSpec.Query(spec))
        {
            switch (k)
            {
                case "platform": platform = PlatformSpec.Int(spec, k, v); break;
                case "device": device = PlatformSpec.Int(spec, k, v); break;
                default: throw new TapmlException($"platform '{spec}': unknown option '{k}={v}' (opencl takes platform=N, device=N)");
            }
        }
        if (spec.Split('?', 2)[0] != "opencl") throw new TapmlException($"platform '{spec}': write opencl[?platform=N&device=N]");
        return new WebGpuPlatform(spec, new OpenClDevice(platform, device));
    }
}
