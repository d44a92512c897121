using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Tapml.Core;
using Tensor = Tapml.Core.Tensor;

namespace Tapml.Platforms.OnnxRuntime;

/// <summary>Copies between tapml values and ORT values (element types share ONNX numbering).</summary>
static class OrtValues
{
    public static OrtValue From(Value v)
    {
        switch (v)
        {
            case Tensor t when t.DType == DType.String:
            {
                var o = OrtValue.CreateTensorWithEmptyStrings(OrtAllocator.DefaultInstance, t.Shape);
                var s = t.As<string>();
                for (int i = 0; i < s.Length; i++) o.StringTensorSetElementAt(s[i].AsSpan(), i);
                return o;
            }
            case Tensor t:
            {
                var o = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, (TensorElementType)(int)t.DType, t.Shape);
                t.Bytes().CopyTo(o.GetTensorMutableRawData());
                return o;
            }
            case SequenceValue s:
                return OrtValue.CreateSequence(s.Items.Select(From).ToList());
            case OptionalValue { Item: { } inner }:
                return From(inner);
            default:
                throw new UnsupportedException($"onnxruntime: cannot pass {v.Describe()}");
        }
    }

    public static Value? To(OrtValue o)
    {
        switch (o.OnnxType)
        {
            case OnnxValueType.ONNX_TYPE_TENSOR:
            {
                var info = o.GetTensorTypeAndShape();
                var dtype = (DType)(int)info.ElementDataType;
                long[] shape = info.Shape;
                if (dtype == DType.String) return new Tensor(dtype, shape, o.GetStringTensorAsArray());
                if (!DTypes.IsSupported(dtype)) throw new UnsupportedException($"onnxruntime returned element type {DTypes.Name(dtype)}");
                return Tensor.FromBytes(dtype, shape, o.GetTensorMutableRawData());
            }
            case OnnxValueType.ONNX_TYPE_SEQUENCE:
            {
                int n = o.GetValueCount();
                var items = new List<Tensor>();
                for (int i = 0; i < n; i++)
                {
                    using var item = o.GetValue(i, OrtAllocator.DefaultInstance);
                    items.Add(To(item) as Tensor ?? throw new UnsupportedException("onnxruntime returned a sequence of non-tensors"));
                }
                return new SequenceValue(items.Count > 0 ? items[0].DType : DType.Float32, items);
            }
            default:
                throw new UnsupportedException($"onnxruntime returned a {o.OnnxType} value, which tapml does not read");
        }
    }
}
