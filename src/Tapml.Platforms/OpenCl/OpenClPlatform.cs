using Tapml.Core;
using Tapml.Platforms.WebGpu;

namespace Tapml.Platforms.OpenCl;

/// <summary>The <c>opencl</c> platform: tapml's GPU platform (kernels, fusion, decode pipeline of
/// <see cref="WebGpuPlatform"/>) over an <see cref="OpenClDevice"/>. Spec: <c>opencl[?platform=N][&amp;device=N][&amp;opt=on|off]</c> (opt: the OpenCL compiler's optimizer; off by
/// default on PoCL only).</summary>
public static class OpenClPlatform
{
    public static IPlatform Create(string spec)
    {
        int platform = -1, device = 0;
        bool? optimize = null;
        foreach (var (k, v) in PlatformSpec.Query(spec))
        {
            switch (k)
            {
                case "platform": platform = PlatformSpec.Int(spec, k, v); break;
                case "device": device = PlatformSpec.Int(spec, k, v); break;
                case "opt" when v is "on" or "off": optimize = v == "on"; break;
                default: throw new TapmlException($"platform '{spec}': unknown option '{k}={v}' (opencl takes platform=N, device=N, opt=on|off)");
            }
        }
        if (spec.Split('?', 2)[0] != "opencl") throw new TapmlException($"platform '{spec}': write opencl[?platform=N&device=N]");
        return new WebGpuPlatform(spec, new OpenClDevice(platform, device, optimize));
    }
}
