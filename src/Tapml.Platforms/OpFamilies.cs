namespace Tapml.Platforms;

/// <summary>Op types grouped into the families a profile reports time by (matmul, conv, elementwise, norm, …).
/// One table, read by every profile (<c>run --profile</c>) so the families mean the same on every platform.</summary>
public static class OpFamilies
{
    static readonly Dictionary<string, string> Family = Build();

    /// <summary>The family of <paramref name="opType"/>; "other" for op types not listed.</summary>
    public static string Of(string opType) =>
        Family.TryGetValue(opType, out var f) ? f : opType.StartsWith("Reduce", StringComparison.Ordinal) ? "reduction" : "other";

    static Dictionary<string, string> Build()
    {
        var d = new Dictionary<string, string>();
        void Add(string family, string ops) { foreach (var op in ops.Split(' ', StringSplitOptions.RemoveEmptyEntries)) d[op] = family; }
        Add("matmul", "MatMul Gemm MatMulNBits MatMulInteger QLinearMatMul FusedMatMul Einsum");
        Add("attention", "Attention MultiHeadAttention GroupQueryAttention RotaryEmbedding");
        Add("conv", "Conv ConvTranspose ConvInteger QLinearConv DeformConv FusedConv");
        Add("pool", "MaxPool AveragePool GlobalAveragePool GlobalMaxPool LpPool GlobalLpPool MaxRoiPool MaxUnpool RoiAlign");
        Add("norm", "BatchNormalization LayerNormalization InstanceNormalization GroupNormalization LpNormalization " +
            "SimplifiedLayerNormalization SkipLayerNormalization SkipSimplifiedLayerNormalization RMSNormalization MeanVarianceNormalization LRN");
        Add("reduction", "ArgMax ArgMin Softmax LogSoftmax Hardmax CumSum TopK");
        Add("recurrent", "LSTM GRU RNN");
        Add("control flow", "If Loop Scan");
        Add("resize", "Resize Upsample GridSample AffineGrid");
        Add("movement", "Reshape Transpose Concat Split Slice Gather GatherElements GatherND Scatter ScatterElements ScatterND Expand Tile Pad " +
            "Squeeze Unsqueeze Flatten Identity DepthToSpace SpaceToDepth Shape Size Compress OneHot Trilu ReverseSequence EyeLike " +
            "ConstantOfShape Range NonZero Unique NonMaxSuppression Col2Im CenterCropPad");
        Add("elementwise", "Add Sub Mul Div Pow Sqrt Exp Log Abs Neg Reciprocal Relu LeakyRelu Sigmoid Tanh Erf Gelu FastGelu BiasGelu QuickGelu " +
            "HardSigmoid HardSwish Clip Min Max Mean Sum Where Equal Less Greater LessOrEqual GreaterOrEqual Not And Or Xor Cast CastLike " +
            "Floor Ceil Round Sign Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh Softplus Softsign Elu Selu Celu PRelu ThresholdedRelu " +
            "Mish IsNaN IsInf Mod BitShift BitwiseAnd BitwiseOr BitwiseXor BitwiseNot Shrink Dropout QuantizeLinear DequantizeLinear " +
            "DynamicQuantizeLinear BiasAdd Swish");
        return d;
    }
}
