using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.OnnxRuntime;
using Tapml.Testing;
using Xunit;

namespace Tapml.Tests;

/// <summary>One-node models of ops newer than ONNX 1.12's node cases (and com.microsoft contrib ops), run on
/// cpu and on ONNX Runtime, outputs compared.</summary>
public static class NewOpsHarness
{
    public static readonly Tolerance Tol = new(1e-4, 1e-5);

    public sealed record Case(string Op, string Domain, int Opset, Tensor?[] Inputs, Dictionary<string, Attr>? Attrs = null,
        int Outputs = 1, bool[]? Want = null);

    public static Tensor R(int seed, params long[] shape) => Rand(seed, 1.0, shape);

    public static Tensor Rand(int seed, double scale, params long[] shape)
    {
        var rng = new Random(seed);
        var d = new float[ShapeUtil.Size(shape)];
        for (int i = 0; i < d.Length; i++) d[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return Tensor.FromArray(d, shape);
    }

    public static Tensor F(float[] v, params long[] shape) => Tensor.FromArray(v, shape);
    public static Tensor I64(long[] v, params long[] shape) => Tensor.FromArray(v, shape);
    public static Tensor I32(int[] v, params long[] shape) => Tensor.FromArray(v, shape);

    public static Model Build(Case c, out Dictionary<string, Value> feeds)
    {
        var b = new GraphBuilder("newops");
        feeds = new();
        var names = new string[c.Inputs.Length];
        for (int i = 0; i < c.Inputs.Length; i++)
        {
            if (c.Inputs[i] is { } t) { names[i] = b.Input($"in{i}", t.DType, t.Shape); feeds[names[i]] = t; }
            else names[i] = "";
        }
        var want = c.Want ?? Enumerable.Repeat(true, c.Outputs).ToArray();
        var outs = Enumerable.Range(0, c.Outputs).Select(i => want[i] ? $"out{i}" : "").ToArray();
        b.NodeMulti(c.Op, names, c.Outputs, c.Attrs ?? new(), "node", outs, c.Domain);
        foreach (var o in outs) if (o.Length > 0) b.Output(o);
        var opsets = new Dictionary<string, int> { [""] = c.Domain == "" ? c.Opset : 21 };
        if (c.Domain != "") opsets[c.Domain] = c.Opset;
        return new Model { Graph = b.Graph, Opsets = opsets, IrVersion = 10 };
    }

    /// <summary>Runs <paramref name="model"/> on cpu (the oracle) and on <paramref name="target"/> and asserts every
    /// graph output within <paramref name="tolerance"/> of cpu's (per output; default <see cref="Tol"/>).</summary>
    public static void AssertMatchesCpu(string name, Model model, Dictionary<string, Value> feeds, IPlatform target, Func<Value, Tolerance>? tolerance = null)
    {
        var want = new Executor(new CpuPlatform()).Run(model, feeds);
        var got = new Executor(target).Run(model, feeds);
        foreach (var o in model.Graph.Outputs)
        {
            var cmp = Comparison.Compare(o.Name, want[o.Name], got.GetValueOrDefault(o.Name), tolerance?.Invoke(want[o.Name]) ?? Tol);
            Assert.True(cmp.Passed, $"{name} {o.Name}: {cmp.Failure}");
        }
    }

    /// <summary>Runs the case on both; returns (null, comparisons) or (ORT's unsupported reason, empty).</summary>
    public static (string? ortUnsupported, List<OutputComparison> cmps) Compare(Case c, Tolerance? tol = null)
    {
        var model = Build(c, out var feeds);
        var cpu = new Executor(new CpuPlatform()).Run(model, feeds);
        Dictionary<string, Value> ort;
        try { ort = new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }.Run(model, feeds); }
        catch (UnsupportedException e) { return (e.Message, []); }
        catch (TapmlException e) when (e.Message.Contains("NOT_IMPLEMENTED") || e.Message.Contains("No Op registered")
                                       || e.Message.Contains("not a registered function/op"))
        { return (e.Message, []); }
        var r = new List<OutputComparison>();
        foreach (var o in model.Graph.Outputs)
            r.Add(Comparison.Compare(o.Name, ort[o.Name], cpu.GetValueOrDefault(o.Name), tol ?? Tol));
        return (null, r);
    }

    static Dictionary<string, Attr> A(params (string k, object v)[] kv) => kv.ToDictionary(x => x.k, x => x.v switch
    {
        int i => Attr.Of((long)i),
        long l => Attr.Of(l),
        float f => Attr.Of(f),
        double d => Attr.Of((float)d),
        string s => Attr.Of(s),
        long[] li => Attr.Of(li),
        _ => throw new ArgumentException(x.k),
    });

    const string Ms = "com.microsoft";

    /// <summary>Named cases; every op has a few shapes and attribute settings.</summary>
    public static readonly Dictionary<string, Func<Case>> Cases = new()
    {
        // ---------------- standard
        ["LpNormalization_p2_last"] = () => new("LpNormalization", "", 17, [R(1, 3, 5)]),
        ["LpNormalization_p1_axis0"] = () => new("LpNormalization", "", 17, [R(2, 4, 3)], A(("p", 1), ("axis", 0))),
        ["LpNormalization_p2_axis1_3d"] = () => new("LpNormalization", "", 17, [R(3, 2, 4, 3)], A(("axis", 1))),
        ["MaxRoiPool_basic"] = () => new("MaxRoiPool", "", 17, [R(4, 2, 3, 8, 8), F([0, 1, 1, 5, 6, 1, 0, 2, 7, 7, 0, 2.4f, 1.6f, 6.5f, 3.5f], 3, 5)], A(("pooled_shape", new long[] { 2, 2 }))),
        ["MaxRoiPool_scale"] = () => new("MaxRoiPool", "", 17, [R(5, 1, 2, 6, 7), F([0, 2, 2, 12, 10, 0, 0, 0, 3, 3, 0, -4, -4, 20, 20], 3, 5)], A(("pooled_shape", new long[] { 3, 2 }), ("spatial_scale", 0.5f))),
        ["DeformConv_basic"] = () => new("DeformConv", "", 19, [R(6, 1, 2, 5, 5), R(7, 3, 2, 3, 3), Rand(8, 2, 1, 18, 3, 3)]),
        ["DeformConv_groups_mask_bias"] = () => new("DeformConv", "", 19, [R(9, 2, 4, 6, 5), R(10, 4, 2, 3, 3), Rand(11, 1.5, 2, 36, 6, 5), R(12, 4), Rand(13, 1, 2, 18, 6, 5)],
            A(("group", 2), ("offset_group", 2), ("pads", new long[] { 1, 1, 1, 1 }))),
        ["DeformConv_stride_dilation"] = () => new("DeformConv", "", 19, [R(14, 1, 2, 9, 8), R(15, 2, 2, 2, 3), Rand(16, 1, 1, 12, 4, 4)],
            A(("strides", new long[] { 2, 2 }), ("dilations", new long[] { 2, 1 }), ("pads", new long[] { 0, 1, 1, 0 }))),
        ["RMSNormalization_last"] = () => new("RMSNormalization", "", 23, [R(17, 2, 3, 8), R(18, 8)]),
        ["RMSNormalization_axis1"] = () => new("RMSNormalization", "", 23, [R(19, 2, 3, 4), R(20, 3, 4)], A(("axis", 1), ("epsilon", 1e-3f))),
        ["RotaryEmbedding_4d_pos"] = () => new("RotaryEmbedding", "", 23, [R(21, 2, 3, 4, 8), R(22, 10, 4), R(23, 10, 4), I64([0, 1, 2, 3, 5, 6, 7, 9], 2, 4)]),
        ["RotaryEmbedding_3d_interleaved"] = () => new("RotaryEmbedding", "", 23, [R(24, 2, 4, 12), R(25, 10, 3), R(26, 10, 3), I64([0, 1, 2, 3, 5, 6, 7, 9], 2, 4)], A(("num_heads", 2), ("interleaved", 1))),
        ["RotaryEmbedding_partial_nopos"] = () => new("RotaryEmbedding", "", 23, [R(27, 2, 2, 3, 8), R(28, 2, 3, 2), R(29, 2, 3, 2)], A(("rotary_embedding_dim", 4))),
        ["Attention_4d"] = () => new("Attention", "", 23, [R(30, 2, 3, 4, 8), R(31, 2, 3, 6, 8), R(32, 2, 3, 6, 5)]),
        ["Attention_3d_gqa_causal"] = () => new("Attention", "", 23, [R(33, 2, 5, 16), R(34, 2, 5, 8), R(35, 2, 5, 6)], A(("q_num_heads", 4), ("kv_num_heads", 2), ("is_causal", 1))),
        ["Attention_past_causal_present"] = () => new("Attention", "", 23, [R(36, 1, 2, 3, 4), R(37, 1, 2, 3, 4), R(38, 1, 2, 3, 4), null, R(39, 1, 2, 5, 4), R(40, 1, 2, 5, 4)],
            A(("is_causal", 1)), 3),
        ["Attention_boolmask_scale_softcap"] = () => new("Attention", "", 23, [R(41, 2, 2, 3, 4), Rand(42, 3, 2, 2, 5, 4), R(43, 2, 2, 5, 4),
            Tensor.FromArray(new[] { true, false, true, true, true, false, true, false, true, true, true, true, false, false, true }, 3, 5)],
            A(("scale", 0.7f), ("softcap", 2.0f))),
        ["Attention_floatmask_qk0"] = () => new("Attention", "", 23, [R(44, 2, 2, 3, 4), R(45, 2, 2, 5, 4), R(46, 2, 2, 5, 4), R(47, 2, 1, 3, 5)], A(("qk_matmul_output_mode", 0)), 4),
        ["Attention_qk_mode1"] = () => new("Attention", "", 23, [R(48, 1, 2, 3, 4), Rand(49, 3, 1, 2, 5, 4), R(50, 1, 2, 5, 4), R(51, 3, 5)], A(("qk_matmul_output_mode", 1), ("softcap", 1.5f)), 4),
        ["Attention_qk_mode2"] = () => new("Attention", "", 23, [R(52, 1, 2, 3, 4), R(53, 1, 2, 5, 4), R(54, 1, 2, 5, 4), R(55, 3, 5)], A(("qk_matmul_output_mode", 2)), 4),
        ["Attention_qk_mode3_causal"] = () => new("Attention", "", 23, [R(56, 1, 2, 4, 4), R(57, 1, 2, 4, 4), R(58, 1, 2, 4, 4)], A(("qk_matmul_output_mode", 3), ("is_causal", 1)), 4),
        ["Attention_mqa_3d_past"] = () => new("Attention", "", 23, [R(59, 2, 2, 12), R(60, 2, 2, 3), R(61, 2, 2, 3), null, R(62, 2, 1, 3, 3), R(63, 2, 1, 3, 3)],
            A(("q_num_heads", 4), ("kv_num_heads", 1)), 3),
        ["Attention_nonpad_24"] = () => new("Attention", "", 24, [R(64, 2, 2, 2, 4), R(65, 2, 2, 6, 4), R(66, 2, 2, 6, 4), null, null, null, I64([3, 6], 2)], A(("is_causal", 1))),
        ["Swish"] = () => new("Swish", "", 24, [Rand(67, 4, 3, 7)], A(("alpha", 0.8f))),
        ["TensorScatter_linear"] = () => new("TensorScatter", "", 24, [R(68, 2, 3, 6, 4), R(69, 2, 3, 2, 4), I64([1, 4], 2)]),
        ["TensorScatter_circular_axis1"] = () => new("TensorScatter", "", 24, [R(70, 2, 5, 3), R(71, 2, 3, 3), I64([3, 1], 2)], A(("axis", 1), ("mode", "circular"))),
        // ---------------- com.microsoft
        ["Gelu_ms"] = () => new("Gelu", Ms, 1, [Rand(72, 4, 3, 9)]),
        ["BiasGelu"] = () => new("BiasGelu", Ms, 1, [Rand(73, 3, 2, 3, 8), R(74, 8)]),
        ["FastGelu"] = () => new("FastGelu", Ms, 1, [Rand(75, 4, 3, 9)]),
        ["FastGelu_bias"] = () => new("FastGelu", Ms, 1, [Rand(76, 3, 2, 3, 8), R(77, 8)]),
        ["QuickGelu"] = () => new("QuickGelu", Ms, 1, [Rand(78, 4, 3, 9)]),
        ["QuickGelu_alpha"] = () => new("QuickGelu", Ms, 1, [Rand(79, 4, 3, 9)], A(("alpha", 1.1f))),
        ["BiasAdd"] = () => new("BiasAdd", Ms, 1, [R(80, 2, 4, 6), R(81, 6), R(82, 2, 4, 6)]),
        ["SkipLayerNormalization"] = () => new("SkipLayerNormalization", Ms, 1, [R(83, 2, 3, 8), R(84, 2, 3, 8), R(85, 8), R(86, 8), R(87, 8)], A(("epsilon", 1e-5f)), 4, [true, false, false, true]),
        ["SkipLayerNormalization_nobeta_2d"] = () => new("SkipLayerNormalization", Ms, 1, [R(88, 4, 16), R(89, 4, 16), R(90, 16)]),
        ["SkipLayerNormalization_stats"] = () => new("SkipLayerNormalization", Ms, 1, [R(91, 2, 3, 8), R(92, 2, 3, 8), R(93, 8), R(94, 8)], null, 3),
        ["SkipSimplifiedLayerNormalization"] = () => new("SkipSimplifiedLayerNormalization", Ms, 1, [R(95, 2, 3, 8), R(96, 2, 3, 8), R(97, 8)], A(("epsilon", 1e-6f)), 4, [true, false, false, true]),
        ["SkipSimplifiedLayerNormalization_bias"] = () => new("SkipSimplifiedLayerNormalization", Ms, 1, [R(98, 2, 3, 8), R(99, 2, 3, 8), R(100, 8), R(101, 8)], null, 4, [true, false, false, true]),
        ["SimplifiedLayerNormalization"] = () => new("SimplifiedLayerNormalization", "", 17, [R(102, 2, 3, 8), R(103, 8)], A(("epsilon", 1e-6f))),
        ["SimplifiedLayerNormalization_axis1_invstd"] = () => new("SimplifiedLayerNormalization", "", 17, [R(104, 2, 3, 4), R(105, 3, 4)], A(("axis", 1)), 2),
        ["FusedMatMul_transB_alpha"] = () => new("FusedMatMul", Ms, 1, [R(106, 2, 3, 4), R(107, 2, 5, 4)], A(("transB", 1), ("alpha", 0.5f))),
        ["FusedMatMul_transA"] = () => new("FusedMatMul", Ms, 1, [R(108, 4, 3), R(109, 4, 5)], A(("transA", 1))),
        ["FusedMatMul_transBatchA"] = () => new("FusedMatMul", Ms, 1, [R(110, 2, 3, 4), R(111, 3, 4, 5)], A(("transBatchA", 1))),
        ["FusedMatMul_transBatchB_transB"] = () => new("FusedMatMul", Ms, 1, [R(112, 3, 2, 4), R(113, 5, 3, 4)], A(("transBatchB", 1), ("transB", 1))),
        ["RotaryEmbedding_ms_3d"] = () => new("RotaryEmbedding", Ms, 1, [R(114, 2, 4, 16), I64([0, 1, 2, 3, 2, 3, 4, 5], 2, 4), R(115, 8, 4), R(116, 8, 4)], A(("num_heads", 2))),
        ["RotaryEmbedding_ms_offset_interleaved"] = () => new("RotaryEmbedding", Ms, 1, [R(117, 1, 3, 8), I64([2], 1), R(118, 8, 4), R(119, 8, 4)], A(("interleaved", 1))),
        ["RotaryEmbedding_ms_4d_partial"] = () => new("RotaryEmbedding", Ms, 1, [R(120, 2, 3, 4, 8), I64([0, 1, 2, 3, 1, 2, 3, 4], 2, 4), R(121, 6, 2), R(122, 6, 2)], A(("num_heads", 3), ("rotary_embedding_dim", 4))),
        ["MultiHeadAttention_basic"] = () => new("MultiHeadAttention", Ms, 1, [R(123, 2, 3, 8), R(124, 2, 5, 8), R(125, 2, 5, 8)], A(("num_heads", 2))),
        ["MultiHeadAttention_bias_mask"] = () => new("MultiHeadAttention", Ms, 1, [R(126, 2, 3, 8), R(127, 2, 5, 8), R(128, 2, 5, 12), R(129, 28), I32([1, 1, 1, 0, 0, 1, 1, 1, 1, 1], 2, 5)], A(("num_heads", 2))),
        ["MultiHeadAttention_past_unidir"] = () => new("MultiHeadAttention", Ms, 1, [R(130, 1, 2, 8), R(131, 1, 2, 8), R(132, 1, 2, 8), null, null, R(133, 1, 2, 2, 5), R(134, 1, 2, 3, 4), R(135, 1, 2, 3, 4)],
            A(("num_heads", 2), ("unidirectional", 1), ("scale", 0.3f)), 3),
        ["Attention_ms"] = () => new("Attention", Ms, 1, [R(136, 2, 3, 8), Rand(137, 0.5, 8, 24), R(138, 24)], A(("num_heads", 2))),
        ["Attention_ms_mask_unidir_past"] = () => new("Attention", Ms, 1, [R(139, 2, 3, 8), Rand(140, 0.5, 8, 24), R(141, 24), I32([1, 1, 1, 1, 1, 0, 1, 1, 1, 1], 2, 5), R(142, 2, 2, 2, 2, 4)],
            A(("num_heads", 2), ("unidirectional", 1)), 2),
        ["Attention_ms_keylen"] = () => new("Attention", Ms, 1, [R(143, 2, 4, 8), Rand(144, 0.5, 8, 24), R(145, 24), I32([2, 4], 2)], A(("num_heads", 4))),
    };

    public static TheoryData<string> Names()
    {
        var d = new TheoryData<string>();
        foreach (var k in Cases.Keys) d.Add(k);
        return d;
    }
}

public class NewOpsTests
{
    [Theory]
    [MemberData(nameof(NewOpsHarness.Names), MemberType = typeof(NewOpsHarness))]
    public void Cpu_matches_onnxruntime(string name)
    {
        var (unsupported, cmps) = NewOpsHarness.Compare(NewOpsHarness.Cases[name]());
        if (unsupported is not null) Assert.Skip($"onnxruntime: {unsupported}");
        foreach (var c in cmps) Assert.True(c.Passed, $"{name} {c.Name}: {c.Failure} (max abs {c.Metrics.MaxAbs:G3})");
    }

    static Dictionary<string, Value> RunCpu(NewOpsHarness.Case c)
    {
        var m = NewOpsHarness.Build(c, out var feeds);
        return new Executor(new CpuPlatform()).Run(m, feeds);
    }

    [Fact]
    public void BiasAdd_is_x_plus_bias_plus_skip()
    {
        // ONNX Runtime has no CPU kernel for BiasAdd: checked against its definition.
        var x = NewOpsHarness.R(1, 2, 3, 4); var bias = NewOpsHarness.R(2, 4); var skip = NewOpsHarness.R(3, 2, 3, 4);
        var y = ((Tensor)RunCpu(new("BiasAdd", "com.microsoft", 1, [x, bias, skip]))["out0"]).As<float>();
        for (int i = 0; i < y.Length; i++)
            Assert.Equal((float)((double)x.As<float>()[i] + bias.As<float>()[i % 4] + skip.As<float>()[i]), y[i]);
    }

    [Fact]
    public void Attention_short_mask_pads_with_minus_infinity()
    {
        // Spec: a mask shorter than total_sequence_length is padded with -inf (ONNX Runtime refuses such masks), so
        // the keys beyond it take no part: the same as ONNX Runtime on the first keys only.
        var q = NewOpsHarness.R(12, 1, 2, 3, 4); var k = NewOpsHarness.R(13, 1, 2, 5, 4); var v = NewOpsHarness.R(14, 1, 2, 5, 4); var m = NewOpsHarness.R(15, 3, 3);
        static Tensor Cut(Tensor t)
        {
            var a = t.As<float>(); var r = new float[2 * 3 * 4];
            for (int h = 0; h < 2; h++) Array.Copy(a, h * 20, r, h * 12, 12);
            return Tensor.FromArray(r, 1, 2, 3, 4);
        }
        var cpu = RunCpu(new("Attention", "", 23, [q, k, v, m]));
        var cut = NewOpsHarness.Build(new("Attention", "", 23, [q, Cut(k), Cut(v), m]), out var feeds);
        var ort = new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true }.Run(cut, feeds);
        var c = Comparison.Compare("Y", ort["out0"], cpu["out0"], NewOpsHarness.Tol);
        Assert.True(c.Passed, c.Failure);
    }
}
