using Tapml.Core;
using Tapml.Platforms.Cpu;

namespace Tapml.Platforms;

/// <summary>Creates platforms from the specs users write (<c>cpu</c>, <c>onnxruntime</c>, …) and lists them.</summary>
public static class PlatformRegistry
{
    /// <param name="Example">A full spec that creates this kind, for listing and probing (wrappers such as
    /// <c>faulty</c> need an inner platform); null: the bare name.</param>
    public sealed record Entry(string Name, string Summary, Func<string, IPlatform> Create, string? Example = null);

    static readonly List<Entry> _entries =
    [
        new("cpu", "tapml's exact reference kernels (the source platform)", _ => new CpuPlatform()),
        new("onnxruntime", "ONNX Runtime CPU execution provider (oracle): whole graphs and single nodes", spec => new OnnxRuntime.OrtPlatform(spec)),
        new("webgpu", "WebGPU native through Dawn (webgpu.h), WGSL kernels; webgpu:vulkan / webgpu:gles force a backend, ?max-binding=BYTES lowers the binding limit", spec => new WebGpu.WebGpuPlatform(spec)),
        new("vulkan", "Vulkan compute (Silk.NET.Vulkan): the webgpu kernels rendered to GLSL, SPIR-V through glslc; ?icd=swiftshader|lavapipe|PATH, ?device=N", Vulkan.VulkanPlatform.Create),
        new("opencl", "OpenCL 1.2+ through the ICD loader (Silk.NET.OpenCL): the webgpu kernels rendered to OpenCL C; ?platform=N, ?device=N", OpenCl.OpenClPlatform.Create),
        new("faulty", "faulty:INNER?node=N|op=T&kind=scale|offset|nan|zero-tail|stale|transpose: INNER with corrupted outputs (proves localization)", spec => new Faulty.FaultyPlatform(spec), "faulty:cpu?op=Softmax&kind=scale"),
    ];

    public static IReadOnlyList<Entry> Entries => _entries;

    /// <summary>Registers a platform kind (used by assemblies that add targets).</summary>
    public static void Register(Entry e)
    {
        _entries.RemoveAll(x => x.Name == e.Name);
        _entries.Add(e);
    }

    public static IPlatform Create(string spec)
    {
        string kind = spec.Split([':', '?'], 2)[0];
        var e = _entries.FirstOrDefault(x => x.Name == kind)
            ?? throw new TapmlException($"unknown platform '{spec}' (known: {string.Join(", ", _entries.Select(x => x.Name))})");
        return e.Create(spec);
    }
}
