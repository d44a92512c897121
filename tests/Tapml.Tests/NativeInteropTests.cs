using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.OpenCl;
using Tapml.Platforms.WebGpu;
using Xunit;

namespace Tapml.Tests;

/// <summary>The native interop of the GPU platforms (Dawn, Vulkan, OpenCL): a failing native call is one
/// <see cref="TapmlException"/> line naming the call and the status the library returned, and the native objects are
/// released once, the device last, whatever order the platform and its tensors are disposed in.</summary>
public class NativeInteropTests
{
    static IPlatform CreateOrSkip(string spec)
    {
        WebGpuTests.SkipIfNoDawn(spec);
        try { return PlatformRegistry.Create(spec); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); return null!; }
    }

    static (IKernel Kernel, NodeContext Ctx) Relu(IPlatform p)
    {
        var node = new Node { Name = "relu", OpType = "Relu", Inputs = ["x"], Outputs = ["y"] };
        var ctx = new NodeContext(node, 17);
        return (p.Prepare(node, ctx, [TypeRef.TensorOf(DType.Float32, 4L)]), ctx);
    }

    [Theory]
    [InlineData("webgpu")]
    [InlineData("vulkan")]
    [InlineData("vulkan?icd=lavapipe")]
    [InlineData("opencl")]
    public void Disposing_the_platform_twice_then_freeing_its_tensors_is_safe(string spec)
    {
        var p = CreateOrSkip(spec);
        var (kernel, ctx) = Relu(p);
        var x = p.Upload(new Tensor(DType.Float32, [4], new float[] { -1, 2, -3, 4 }));
        var y = p.Run(kernel, ctx, [x])[0]!;
        // ONNX Relu: max(0, x).
        Assert.Equal([0f, 2f, 0f, 4f], ((Tensor)p.Download(y)).As<float>());
        p.Dispose();
        p.Dispose();
        p.Free(y);
        p.Free(x);
        Assert.Throws<ObjectDisposedException>(() => p.Synchronize());
        // The next platform of the same kind starts clean.
        using var q = PlatformRegistry.Create(spec);
        var (k2, c2) = Relu(q);
        var y2 = q.Run(k2, c2, [q.Upload(new Tensor(DType.Float32, [4], new float[] { 5, -6, 7, -8 }))])[0]!;
        Assert.Equal([5f, 0f, 7f, 0f], ((Tensor)q.Download(y2)).As<float>());
    }

    /// <summary>A read past the end of a buffer fails with the message <paramref name="check"/> accepts; then the device
    /// still writes and reads back the same bytes.</summary>
    static void ReadPastTheEndThenRoundTrip(IGpuDevice dev, Action<string> check)
    {
        var b = dev.Allocate(1024, out _);
        check(Assert.Throws<TapmlException>(() => dev.Read(b, 1UL << 40, new byte[16])).Message);
        byte[] bytes = [1, 2, 3, 4, 5, 6, 7, 8], got = new byte[8];
        dev.Write(b, 0, bytes);
        dev.Read(b, 0, got);
        Assert.Equal(bytes, got);
    }

    /// <summary>A read past the end of a buffer: PoCL answers CL_INVALID_VALUE, and the device goes on working.</summary>
    [Fact]
    public void A_failing_opencl_call_is_one_line_naming_the_call_and_the_status()
    {
        OpenClDevice dev;
        try { dev = new OpenClDevice(-1, 0); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); return; }
        using (dev) ReadPastTheEndThenRoundTrip(dev, m => Assert.Equal("opencl: clEnqueueReadBuffer failed: CL_INVALID_VALUE (-30)", m));
    }

    /// <summary>A copy past the end of a buffer: Dawn's validation error comes back as the call that reported it and
    /// the error type on the first line (Dawn's own explanation follows), and the device goes on working.</summary>
    [Fact]
    public void A_failing_dawn_call_names_the_call_and_the_error_type()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        DawnDevice dev;
        try { dev = new DawnDevice(""); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); return; }
        using (dev) ReadPastTheEndThenRoundTrip(dev, m => Assert.Matches(@"^webgpu: wgpu[A-Za-z]+ failed: WGPUErrorType_Validation: \S", m.Split('\n')[0]));
    }

    /// <summary>A driver manifest whose library is not there: the Vulkan loader has no driver, vkCreateInstance
    /// answers VK_ERROR_INCOMPATIBLE_DRIVER, and that is the reason the platform is unavailable.</summary>
    [Fact]
    public void A_failing_vulkan_call_names_the_call_and_the_result()
    {
        if (Tapml.Platforms.Vulkan.Glslc.Unavailable() is { } why) Assert.Skip(why);
        string icd = Path.Combine(Path.GetTempPath(), $"tapml-no-driver-{Guid.NewGuid():N}.json");
        File.WriteAllText(icd, """{ "file_format_version": "1.0.0", "ICD": { "library_path": "/nonexistent/libvulkan_none.so", "api_version": "1.1.0" } }""");
        try
        {
            var e = Assert.Throws<UnsupportedException>(() => PlatformRegistry.Create($"vulkan?icd={icd}"));
            if (e.Message.Contains("libvulkan.so.1 is not installed", StringComparison.Ordinal)) Assert.Skip(e.Message);
            Assert.StartsWith("vulkan: vkCreateInstance failed: VK_ERROR_INCOMPATIBLE_DRIVER (-9); drivers tried: ", e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        finally { File.Delete(icd); }
    }
}
