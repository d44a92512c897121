using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Tapml.Testing;
using Xunit;
using static Tapml.Tests.NewOpsHarness;

namespace Tapml.Tests;

/// <summary>The vision/spatial kernels of the WGSL platforms (Resize, ConvTranspose, 3-D Conv and pools, Pad, Tile,
/// DepthToSpace, GridSample, Instance/Group/MeanVariance normalization …): ONNX's node cases pass (not skip) on
/// webgpu and on the dialects rendered from the same WGSL, and cases the suite lacks match the cpu reference.</summary>
public class WebGpuVisionOpsTests
{
    static void SkipIfUnavailable(string spec)
    {
        WebGpuTests.SkipIfNoDawn(spec);
        try { using var p = PlatformRegistry.Create(spec); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); }
    }

    /// <summary>Every node case of these families, by name: each must pass.</summary>
    static readonly string[] Cases =
    [
        "test_resize_downsample_scales_cubic", "test_resize_downsample_scales_cubic_A_n0p5_exclude_outside",
        "test_resize_downsample_scales_cubic_align_corners", "test_resize_downsample_scales_linear",
        "test_resize_downsample_scales_linear_align_corners", "test_resize_downsample_scales_nearest",
        "test_resize_downsample_sizes_cubic", "test_resize_downsample_sizes_linear_pytorch_half_pixel",
        "test_resize_tf_crop_and_resize", "test_resize_upsample_scales_cubic", "test_resize_upsample_scales_cubic_align_corners",
        "test_resize_upsample_scales_cubic_asymmetric", "test_resize_upsample_scales_linear", "test_resize_upsample_scales_nearest",
        "test_resize_upsample_sizes_nearest", "test_resize_upsample_sizes_nearest_ceil_half_pixel",
        "test_resize_upsample_sizes_nearest_floor_align_corners", "test_resize_upsample_sizes_nearest_round_prefer_ceil_asymmetric",
        "test_convtranspose", "test_convtranspose_1d", "test_convtranspose_3d", "test_convtranspose_autopad_same",
        "test_convtranspose_dilations", "test_convtranspose_kernel_shape", "test_convtranspose_output_shape", "test_convtranspose_pads",
        "test_averagepool_3d_default", "test_maxpool_with_argmax_2d_precomputed_strides", "test_maxunpool_export_with_output_shape",
        "test_constant_pad", "test_edge_pad", "test_tile", "test_tile_precomputed",
        "test_depthtospace_crd_mode_example", "test_depthtospace_example", "test_spacetodepth",
        "test_gridsample", "test_gridsample_aligncorners_true", "test_gridsample_bicubic", "test_gridsample_bilinear",
        "test_gridsample_border_padding", "test_gridsample_nearest", "test_gridsample_zeros_padding",
        "test_instancenorm_epsilon", "test_instancenorm_example", "test_mvn", "test_roialign_aligned_false",
    ];

    [Theory]
    [InlineData("webgpu")]
    [InlineData("vulkan")]
    [InlineData("opencl")]
    public void Vision_node_cases_pass_and_none_skip(string platform)
    {
        SkipIfUnavailable(platform);
        string node = SharedData.Require("conformance", "onnx", "node");
        string json = Path.Combine(Path.GetTempPath(), $"tapml-vision-{platform}-{Guid.NewGuid():N}.json");
        var r = CliRunner.Run("conformance", node, "--platform", platform, "--json", json, "--filter", "^(" + string.Join("|", Cases) + ")$");
        var d = JsonNode.Parse(File.ReadAllText(json))!;
        File.Delete(json);
        var status = d["cases"]!.AsArray().ToDictionary(c => (string)c!["name"]!, c => $"{(string)c!["status"]!} {(string?)c["reason"]}");
        Assert.True((int)d["failed"]! == 0 && (int)d["errors"]! == 0, r.Stdout);
        foreach (var name in Cases)
            Assert.True(status.TryGetValue(name, out var s) && s.StartsWith("passed", StringComparison.Ordinal), $"{name}: {s ?? "missing"}");
    }

    static Dictionary<string, Attr> A(params (string k, object v)[] kv) => kv.ToDictionary(x => x.k, x => x.v switch
    {
        int i => Attr.Of((long)i),
        float f => Attr.Of(f),
        string s => Attr.Of(s),
        long[] li => Attr.Of(li),
        _ => throw new ArgumentException(x.k),
    });

    /// <summary>Shapes and attribute mixes the ONNX suite lacks (odd scales, groups with dilation and output_padding,
    /// grouped dilated 3-D conv, reflect with negative pads on listed axes).</summary>
    public static readonly Dictionary<string, Func<Case>> Beyond = new()
    {
        ["Resize_linear_half_pixel_odd_scales"] = () => new("Resize", "", 19,
            [R(1, 1, 2, 5, 7), null, F([1f, 1f, 1.7f, 0.6f], 4)], A(("mode", "linear"))),
        ["Resize_cubic_antialias_down"] = () => new("Resize", "", 19,
            [R(2, 1, 3, 9, 11), null, F([0.45f, 0.7f], 2)], A(("mode", "cubic"), ("antialias", 1), ("axes", new long[] { 2, 3 }))),
        ["Resize_nearest_sizes_not_smaller"] = () => new("Resize", "", 19,
            [R(3, 1, 2, 4, 6), null, null, I64([7, 9], 2)], A(("axes", new long[] { 2, 3 }), ("keep_aspect_ratio_policy", "not_smaller"))),
        ["ConvTranspose_groups_dilation_stride_outpad"] = () => new("ConvTranspose", "", 17,
            [R(4, 1, 4, 5, 6), R(5, 4, 3, 3, 2), R(6, 6)],
            A(("group", 2), ("dilations", new long[] { 2, 1 }), ("strides", new long[] { 2, 3 }), ("output_padding", new long[] { 1, 2 }), ("pads", new long[] { 1, 0, 2, 1 }))),
        ["Conv3d_grouped_dilated_strided"] = () => new("Conv", "", 17,
            [R(7, 1, 4, 5, 6, 7), R(8, 6, 2, 2, 3, 2), R(9, 6)],
            A(("group", 2), ("dilations", new long[] { 2, 1, 2 }), ("strides", new long[] { 1, 2, 1 }), ("pads", new long[] { 1, 0, 1, 0, 1, 1 }))),
        ["Pad_reflect_negative_axes"] = () => new("Pad", "", 19,
            [R(10, 2, 3, 5, 6), I64([2, -1, 1, 3], 4), null, I64([-1, 2], 2)], A(("mode", "reflect"))),
        ["RoiAlign_max_output_half_pixel"] = () => new("RoiAlign", "", 16,
            [R(14, 2, 3, 10, 12), F([0.5f, 1f, 7.5f, 6f, 2f, 0f, 11f, 9.5f, -1f, 3f, 4f, 12f], 3, 4), I64([1, 0, 1], 3)],
            A(("mode", "max"), ("coordinate_transformation_mode", "output_half_pixel"), ("output_height", 3), ("output_width", 4), ("sampling_ratio", 2), ("spatial_scale", 0.9f))),
        ["GroupNorm_opset21_per_channel"] = () => new("GroupNormalization", "", 21,
            [R(11, 2, 6, 3, 4), R(12, 6), R(13, 6)], A(("num_groups", 3))),
    };

    public static TheoryData<string> BeyondNames => new(Beyond.Keys);

    [Theory]
    [MemberData(nameof(BeyondNames))]
    public void Cases_beyond_the_onnx_suite_match_cpu_on_webgpu(string name)
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var model = Build(Beyond[name](), out var feeds);
        using var gpu = new WebGpuPlatform("webgpu");
        // No fallback: a node without a kernel is an error here, not a cpu run.
        AssertMatchesCpu(name, model, feeds, gpu);
        Assert.True(gpu.Device.Dispatches > 0, $"{name}: no kernel was dispatched");
    }
}
