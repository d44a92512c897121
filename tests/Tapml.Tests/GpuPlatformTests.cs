using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Platforms;
using Xunit;

namespace Tapml.Tests;

/// <summary>Every kernel platform of the registry (<see cref="TestPlatforms"/>: webgpu, and vulkan and opencl, which run
/// the webgpu kernels rendered to GLSL → SPIR-V and OpenCL C) against the cpu, on this machine's software drivers
/// (SwiftShader/lavapipe, PoCL): a conformance folder is one aggregate run a platform (a row per case would cost a
/// platform start each on SwiftShader). A platform that cannot start here skips with its reason.</summary>
public class GpuPlatformTests
{
    static void SkipIfUnavailable(string spec) => TestPlatforms.SkipIfUnavailable(spec);

    [Theory]
    [MemberData(nameof(TestPlatforms.Gpu), MemberType = typeof(TestPlatforms))]
    public void Onnx_node_cases_pass_as_many_as_webgpu_and_none_fail(string platform)
    {
        SkipIfUnavailable(platform);
        string node = SharedData.Require("conformance", "onnx", "node");
        string json = Path.Combine(Path.GetTempPath(), $"tapml-{platform}-conf-{Guid.NewGuid():N}.json");
        var r = CliRunner.Run("conformance", node, "--platform", platform, "--json", json);
        var d = JsonNode.Parse(File.ReadAllText(json))!;
        File.Delete(json);
        Assert.True((int)d["failed"]! == 0 && (int)d["errors"]! == 0, r.Stdout);
        Assert.True((int)d["passed"]! >= 395, r.Stdout);
        foreach (var c in d["cases"]!.AsArray().Where(c => (string)c!["status"]! == "skipped"))
            Assert.False(string.IsNullOrWhiteSpace((string?)c!["reason"]), (string)c["name"]!);
    }

    /// <summary>The exported Hugging Face graphs (../shared/conformance/hf-onnx) at their suite's tolerance.</summary>
    [Theory]
    [MemberData(nameof(TestPlatforms.Gpu), MemberType = typeof(TestPlatforms))]
    public void Hf_onnx_cases_pass(string platform)
    {
        SkipIfUnavailable(platform);
        string dir = SharedData.Require("conformance", "hf-onnx");
        var r = CliRunner.Run("conformance", dir, "--platform", platform, "--rtol", "1e-3", "--atol", "1e-4");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.Contains(" 0 failed", r.Stdout);
        Assert.Contains(" 0 skipped", r.Stdout);
    }

    /// <summary>MatMul against a weight initializer: the matrix-vector kernel (f32 vec4 loads, packed f16 weights
    /// unpacked in the kernel) and the tiled kernel, as webgpu's rows check them.</summary>
    public static IEnumerable<object[]> MatmulRows() => TestPlatforms.Cross(
    [
        [1, 128, 40, DType.Float16],
        [3, 70, 33, DType.Float32],
        [65, 130, 67, DType.Float16],
    ]);

    [Theory]
    [MemberData(nameof(MatmulRows))]
    public void Matmul_against_a_weight_matches_cpu(string platform, int rows, int k, int n, DType wtype)
    {
        SkipIfUnavailable(platform);
        WebGpuTests.MatmulAgainstAWeight(rows, k, n, wtype, platform);
    }

    public static IEnumerable<object[]> GreedyRows() => TestPlatforms.Cross([["llama"], ["gpt2"]]);

    [Theory]
    [MemberData(nameof(GreedyRows))]
    // NOTE: rows about one platform's own options (drivers, host paths), beside the registry's rows.
    [InlineData("vulkan?icd=lavapipe", "qwen2")]
    [InlineData("vulkan?icd=lavapipe&push-descriptors=off&barriers=all&writes=inline&batch=4", "llama")]
    [InlineData("vulkan?barrier-src=precise&writes-ahead=on&batch=5", "llama")]
    [InlineData("vulkan?icd=lavapipe&writes-ahead=on", "gpt2")]
    [InlineData("vulkan?barrier-dst=precise&barrier-mem=buffers&batch=3", "llama")]
    [InlineData("vulkan?icd=lavapipe&barrier-dst=precise&writes=inline", "gpt2")]
    [InlineData("vulkan?icd=lavapipe&barrier-mem=buffers&barrier-src=precise", "qwen2")]
    [InlineData("opencl?writes=blocking&batch=4", "llama")]
    [InlineData("webgpu?toggles=skip_validation,disable_robustness,disable_workgroup_init,-timestamp_quantization", "llama")]
    [InlineData("webgpu?pool=last", "gpt2")]
    public void Greedy_tokens_equal_cpu(string platform, string arch)
    {
        SkipIfUnavailable(platform);
        string[] args = ["generate", "--model", $"builtin:tiny-{arch}", "--input-ids", "1,17,305,42", "--max-tokens", "6"];
        var cpu = CliRunner.Run([.. args, "--platform", "cpu"]);
        var gpu = CliRunner.Run([.. args, "--platform", platform]);
        Assert.True(gpu.ExitCode == 0, gpu.Stderr);
        string Tokens(string s) => s.Split('\n').First(l => l.StartsWith("tokens:", StringComparison.Ordinal));
        Assert.Equal(Tokens(cpu.Stdout), Tokens(gpu.Stdout));
    }

    /// <summary><c>vulkan?shader-stats=on</c>: where the device has VK_KHR_pipeline_executable_properties, generation
    /// runs and every compiled kernel gets one line of the driver's statistics on stderr; where it has not (SwiftShader,
    /// lavapipe here), one error naming the extension, exit 2.</summary>
    [Fact]
    public void Vulkan_shader_stats_print_a_line_a_kernel_or_name_the_missing_extension()
    {
        SkipIfUnavailable("vulkan");
        var r = CliRunner.Run(["generate", "--model", "builtin:tiny-llama", "--input-ids", "1,17", "--max-tokens", "2", "--platform", "vulkan?shader-stats=on"]);
        if (r.ExitCode == 0)
        {
            int kernels = r.Stderr.Split('\n').Count(l => l.StartsWith("vulkan shader stats: ", StringComparison.Ordinal));
            Assert.True(kernels > 0, r.Stderr);
        }
        else
        {
            Assert.Equal(2, r.ExitCode);
            Assert.Contains("VK_KHR_pipeline_executable_properties", r.Stderr);
            Assert.DoesNotContain("   at ", r.Stderr);
        }
    }

    /// <summary>Writes through vulkan's upload ring, more bytes than it holds (so it fills, submits, waits and starts
    /// over) while a dispatch that binds the buffer is recorded, read back intact; on lavapipe, which has
    /// VK_KHR_push_descriptor (the dispatch pushes its descriptors).</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Vulkan_writes_through_a_full_upload_ring_read_back_intact(bool pushDescriptors)
    {
        Tapml.Platforms.Vulkan.VulkanDevice dev;
        try { dev = new Tapml.Platforms.Vulkan.VulkanDevice("lavapipe", -1, 0, new Tapml.Platforms.Vulkan.VulkanOptions(PushDescriptors: pushDescriptors)); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); return; }
        using (dev)
        {
            Assert.Contains(dev.Details(), d => d.Contains(pushDescriptors ? "VK_KHR_push_descriptor;" : "VK_KHR_push_descriptor (not used", StringComparison.Ordinal));
            const int chunk = 1 << 20, chunks = 12;   // 12 MiB through an 8 MiB ring
            var buf = dev.Allocate(chunk * chunks, out _);
            var p = dev.Pipeline("""
                @group(0) @binding(0) var<storage, read_write> a: array<u32>;
                @group(0) @binding(1) var<storage, read> md: array<u32>;
                @compute @workgroup_size(1) fn main() { a[md[0]] = a[md[0]] + 1u; }
                """, "ring-test");
            var expect = new byte[chunk * chunks];
            new Random(5).NextBytes(expect);
            for (int c = 0; c < chunks; c++)
            {
                // A recorded dispatch binds the buffer, so the write cannot go straight into mapped memory.
                dev.Dispatch(p, [buf], [0UL], [(ulong)(chunk * chunks)], [(uint)(c * chunk / 4)], 1);
                dev.Write(buf, (ulong)(c * chunk), expect.AsSpan(c * chunk, chunk));
            }
            var got = new byte[expect.Length];
            dev.Read(buf, 0, got);
            Assert.True(expect.AsSpan().SequenceEqual(got), "bytes read back differ from the bytes written");
        }
    }
}
