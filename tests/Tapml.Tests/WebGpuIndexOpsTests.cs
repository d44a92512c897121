using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Tapml.Testing;
using Xunit;
using static Tapml.Tests.NewOpsHarness;

namespace Tapml.Tests;

/// <summary>The webgpu kernels of indexing, loss, quantization (ConvInteger, QLinearConv too) and row-wise ops (Kernels/Indexing.cs, Losses.cs,
/// Misc.cs, Detection.cs): their ONNX node cases pass (none skipped), and cases the suite lacks match the cpu.</summary>
public class WebGpuIndexOpsTests
{
    /// <summary>Node cases of these ops, by name; every one must run its WGSL kernel and pass.</summary>
    const string Ops = "gather_elements|gathernd|scatter_elements|scatter_with|scatternd|onehot|tril|triu|eyelike|reversesequence|compress|nonzero|" +
        "nllloss|sce_|top_k|convinteger|qlinearconv|hardmax|shrink|bitshift_.*int(8|16|32)$|det_2d|quantizelinear|hannwindow|hammingwindow|blackmanwindow|nonmaxsuppression|unique|tile|depthtospace|spacetodepth|test_pow";

    [Fact]
    public void Node_cases_of_the_indexing_loss_and_quantize_ops_pass_on_webgpu()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        string node = SharedData.Require("conformance", "onnx", "node");
        string json = Path.Combine(Path.GetTempPath(), $"tapml-webgpu-index-{Guid.NewGuid():N}.json");
        var r = CliRunner.Run("conformance", node, "--platform", "webgpu", "--filter", Ops, "--json", json);
        var d = JsonNode.Parse(File.ReadAllText(json))!;
        File.Delete(json);
        var cases = d["cases"]!.AsArray();
        Assert.True(cases.Count >= 150, $"only {cases.Count} cases matched\n{r.Stdout}");
        foreach (var c in cases)
            Assert.True((string)c!["status"]! == "passed", $"{c["name"]}: {c["status"]} {c["reason"]}");
    }

    /// <summary>Pow of a negative base: a real power for integer exponents, NaN otherwise (the pytorch case mixes both).</summary>
    [Fact]
    public void Pow_of_negative_bases_matches_the_pytorch_case()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        string dir = SharedData.Require("conformance", "onnx", "pytorch-operator");
        var r = CliRunner.Run("conformance", dir, "--platform", "webgpu", "--filter", "test_operator_pow$");
        Assert.True(r.ExitCode == 0 && r.Stdout.Contains("1 passed, 0 failed"), r.Stdout + r.Stderr);
    }

    static Dictionary<string, Attr> A(params (string k, object v)[] kv) => kv.ToDictionary(x => x.k, x => x.v switch
    {
        int i => Attr.Of((long)i),
        long l => Attr.Of(l),
        float f => Attr.Of(f),
        string s => Attr.Of(s),
        long[] a => Attr.Of(a),
        _ => throw new ArgumentException(x.k),
    });

    /// <summary>Cases beyond the ONNX suite: reductions and duplicates in scatters, negative indices, ties, axes
    /// other than the last, f16 and integer inputs.</summary>
    public static readonly Dictionary<string, Func<Case>> Extra = new()
    {
        ["ScatterElements_add_duplicates_axis1"] = () => new("ScatterElements", "", 18, [R(1, 3, 5), I64([0, 4, 0, 1, 1, 1, -1, 2, 4], 3, 3), R(2, 3, 3)], A(("axis", 1), ("reduction", "add"))),
        ["ScatterElements_mul_axis0"] = () => new("ScatterElements", "", 18, [R(3, 4, 3), I64([3, 0, 3, 3, 0, 1], 2, 3), R(4, 2, 3)], A(("reduction", "mul"))),
        ["ScatterElements_max_i32"] = () => new("ScatterElements", "", 18, [I32([1, 9, -3, 4, 0, 7], 2, 3), I64([2, 2, 0, 1, 1, 1], 2, 3), I32([5, -8, 6, 3, 2, 11], 2, 3)], A(("axis", 1), ("reduction", "max"))),
        ["ScatterElements_min_axis2_3d"] = () => new("ScatterElements", "", 18, [R(5, 2, 2, 4), I64([3, 0, 1, 1, 2, 2, -4, 0], 2, 2, 2), R(6, 2, 2, 2)], A(("axis", 2), ("reduction", "min"))),
        ["GatherElements_negative_axis0_3d"] = () => new("GatherElements", "", 13, [R(7, 3, 2, 4), I64([-1, 0, 2, -3, 1, -2, 0, 0, 2, 1, -1, 1], 2, 2, 3)], A(("axis", 0))),
        ["GatherElements_i32_indices_axis2"] = () => new("GatherElements", "", 13, [R(8, 2, 3, 5), I32([4, -5, 0, 2, 1, 3], 2, 3, 1)], A(("axis", -1))),
        ["TopK_ties_smallest_axis0"] = () => new("TopK", "", 11, [F([1, 2, 1, 0, 2, 1, 1, 0, 3, 0, 0, 2], 4, 3), I64([3], 1)], A(("axis", 0), ("largest", 0)), 2),
        ["TopK_ties_largest_last"] = () => new("TopK", "", 11, [F([5, 1, 5, 2, 5, 7, 7, 0, 1, 1], 2, 5), I64([4], 1)], null, 2),
        ["TopK_int32_middle_axis"] = () => new("TopK", "", 11, [I32([3, -1, 4, 1, -5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2, 3], 2, 3, 3), I64([2], 1)], A(("axis", 1)), 2),
        ["CumSum_exclusive_reverse_axis0"] = () => new("CumSum", "", 14, [R(9, 4, 3), I64([0], 1)], A(("exclusive", 1), ("reverse", 1))),
        ["CumSum_f32_middle_axis"] = () => new("CumSum", "", 14, [R(10, 2, 5, 3), I32([1], 1)]),
        ["CumSum_i32_reverse_negative_axis"] = () => new("CumSum", "", 14, [I32([1, 2, 3, 4, 5, 6, 7, 8], 2, 4), I64([-1], 1)], A(("reverse", 1))),
        ["ScatterND_add_duplicates"] = () => new("ScatterND", "", 18, [R(11, 4, 3), I64([1, 3, 1, -4], 4, 1), R(12, 4, 3)], A(("reduction", "add"))),
        ["GatherND_batch_dims1"] = () => new("GatherND", "", 13, [R(13, 2, 3, 4), I64([1, 3, 0, -1, 2, 0, 1, 2], 2, 2, 2)], A(("batch_dims", 1))),
        ["OneHot_axis0_float_indices"] = () => new("OneHot", "", 11, [F([0, 2, -1, 5, 1], 5), I64([4], 1), F([-2, 3], 2)], A(("axis", 0))),
        ["Trilu_lower_k_neg_3d"] = () => new("Trilu", "", 14, [R(14, 2, 4, 5), I64([-1], 1)], A(("upper", 0))),
        ["Compress_axis1"] = () => new("Compress", "", 11, [R(15, 3, 4, 2), Tensor.FromArray(new[] { true, false, true }, 3)], A(("axis", 1))),
        ["NonZero_3d_i32"] = () => new("NonZero", "", 13, [I32([0, 1, 0, 2, 3, 0, 0, 0, -4, 5, 0, 6], 2, 3, 2)]),
        ["Unique_unsorted_axis1"] = () => new("Unique", "", 11, [F([1, 2, 1, 3, 2, 4, 0, 4, 5, 0], 2, 5)], A(("axis", 1), ("sorted", 0)), 4),
        ["Unique_sorted_i32_flat"] = () => new("Unique", "", 11, [I32([5, -1, 5, 3, -1, 0, 3, 3], 2, 4)], null, 4),
        ["Hardmax_ties_axis1"] = () => new("Hardmax", "", 13, [F([1, 3, 3, 2, 0, 0, 5, 5, -1, 4, 4, 4], 2, 3, 2)], A(("axis", 1))),
        ["Det_batch_3x3"] = () => new("Det", "", 13, [R(16, 4, 3, 3)]),
        ["NegativeLogLikelihoodLoss_f16_mean"] = () => new("NegativeLogLikelihoodLoss", "", 13,
            [TensorConvert.To(R(17, 3, 4, 2), DType.Float16), I64([0, 3, 1, 2, 2, -1], 3, 2), TensorConvert.To(R(18, 4), DType.Float16)], A(("ignore_index", -1))),
        ["QuantizeLinear_int8_per_axis"] = () => new("QuantizeLinear", "", 13, [Rand(19, 3, 2, 3, 4), F([0.02f, 0.05f, 0.1f], 3), Tensor.FromArray(new sbyte[] { 0, -3, 5 }, 3)]),
        ["ConvInteger_i8_group2_stride2_pads_per_channel_w_zero"] = () => new("ConvInteger", "", 10,
            [I8(1, 1, 4, 5, 5), I8(2, 4, 2, 3, 3), Tensor.FromArray(new sbyte[] { -3 }), Tensor.FromArray(new sbyte[] { 1, -2, 0, 5 }, 4)],
            A(("group", 2), ("strides", new long[] { 2, 2 }), ("pads", new long[] { 1, 0, 1, 2 }))),
        ["ConvInteger_u8_1d_dilated_no_zero_points"] = () => new("ConvInteger", "", 10,
            [Tensor.FromArray(Enumerable.Range(0, 2 * 3 * 9).Select(i => (byte)(i * 37 % 256)).ToArray(), 2, 3, 9), Tensor.FromArray(Enumerable.Range(0, 2 * 3 * 3).Select(i => (byte)(i * 91 % 256)).ToArray(), 2, 3, 3)],
            A(("dilations", new long[] { 2 }))),
        ["QLinearConv_i8_per_channel_scales_bias_pads"] = () => new("QLinearConv", "", 10,
            [I8(3, 1, 3, 6, 6), F([0.05f], 1), Tensor.FromArray(new sbyte[] { 2 }), I8(4, 4, 3, 3, 3), F([0.01f, 0.02f, 0.015f, 0.03f], 4),
             Tensor.FromArray(new sbyte[] { 0, 0, 0, 0 }, 4), F([0.7f], 1), Tensor.FromArray(new sbyte[] { -5 }), Tensor.FromArray(new[] { 100, -250, 0, 37 }, 4)],
            A(("pads", new long[] { 1, 1, 1, 1 }))),
        ["DequantizeLinear_uint8_per_axis"] = () => new("DequantizeLinear", "", 13, [Tensor.FromArray(new byte[] { 0, 128, 255, 7, 200, 13 }, 2, 3), F([0.5f, 2f], 2), Tensor.FromArray(new byte[] { 128, 3 }, 2)], A(("axis", 0))),
    };

    /// <summary>int8 values spread over the whole range (seeded).</summary>
    static Tensor I8(int seed, params long[] shape) =>
        Tensor.FromArray(Enumerable.Range(0, (int)shape.Aggregate(1L, (a, b) => a * b)).Select(i => (sbyte)((i * 73 + seed * 29) % 256 - 128)).ToArray(), shape);

    public static TheoryData<string> ExtraNames() => new(Extra.Keys);

    static readonly Lazy<WebGpuPlatform> Gpu = new(() => new WebGpuPlatform("webgpu"));

    [Theory]
    [MemberData(nameof(ExtraNames))]
    public void Webgpu_matches_cpu(string name)
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var c = Extra[name]();
        var model = Build(c, out var feeds);
        AssertMatchesCpu(name, model, feeds, Gpu.Value);
    }
}
