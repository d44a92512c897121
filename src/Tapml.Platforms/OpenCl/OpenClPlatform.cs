using Tapml.Core;
using Tapml.Platforms.WebGpu;

namespace Tapml.Platforms.OpenCl;

/// <summary>The <c>opencl</c> platform: tapml's GPU platform (kernels, fusion, decode pipeline of
/// <see cref="WebGpuPlatform"/>) over an <see cref="OpenClDevice"/>. Spec: <c>opencl[?platform=N][&amp;device=N][&amp;opt=on|off][&amp;writes=ring|blocking][&amp;batch=N]</c> (opt: the
/// OpenCL compiler's optimizer; off by default on PoCL only; the others: <see cref="OpenClOptions"/>).</summary>
public static class OpenClPlatform
{
    public static IPlatform Create(string spec)
    {
        int platform = -1, device = 0;
        bool? optimize = null;
        var o = new OpenClOptions();
        var kernel = new List<(string, string)>();
        foreach (var (k, v) in PlatformSpec.Query(spec))
        {
            switch (k)
            {
                case "platform": platform = PlatformSpec.Int(spec, k, v); break;
                case "device": device = PlatformSpec.Int(spec, k, v); break;
                case "opt" when v is "on" or "off": optimize = v == "on"; break;
                case "writes" when v is "ring" or "blocking": o = o with { RingWrites = v == "ring" }; break;
                case "batch" when int.TryParse(v, out int n) && n >= 1: o = o with { Batch = n }; break;
                default: kernel.Add((k, v)); break;
            }
        }
        if (spec.Split('?', 2)[0] != "opencl") throw new TapmlException($"platform '{spec}': write opencl[?platform=N&device=N]");
        var options = GpuKernelOptions.Parse(spec, kernel, "platform=N, device=N, opt=on|off, writes=ring|blocking, batch=N");
        return new WebGpuPlatform(spec, new OpenClDevice(platform, device, optimize, o), options);
    }
}

/// <summary>Host-path choices of an <see cref="OpenClDevice"/> (platform-spec options).</summary>
/// <param name="RingWrites">Writes of up to 2 MiB are copied into a host ring and enqueued without blocking
/// (<c>writes=ring</c>, the default); <c>blocking</c>: each write waits until the queue copied it.</param>
/// <param name="Batch">Dispatches enqueued between two clFlush calls (<c>batch=N</c>, default 48 as webgpu's
/// submits).</param>
public sealed record OpenClOptions(bool RingWrites = true, int Batch = 48);
