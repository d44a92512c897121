using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tapml.Ir.Safetensors;
using Tapml.Platforms.Cpu;

namespace Tapml.Testing.Carving;

/// <summary>Reads model weights a carved store names by reference (<see cref="InitializerSource"/>): a tensor of a
/// .safetensors file (converted to the carved dtype, as the model loaders convert f16/bf16 checkpoints to f32, and
/// transposed when the source says so) or an initializer of an .onnx model (external data included). Files are
/// opened once per store.</summary>
sealed class WeightFiles
{
    readonly Dictionary<string, SafetensorsFile> _safetensors = new();
    readonly Dictionary<string, Model> _onnx = new();

    /// <param name="what">Names the store, case, file and tensor in errors.</param>
    public Tensor Load(InitializerSource src, DType dtype, string what)
    {
        // NOTE: the path comes from a manifest that may have come from elsewhere: only an absolute path to a model file
        // is followed, and only to a regular file with data (a named pipe or a device would block or never end).
        string ext = Path.GetExtension(src.File).ToLowerInvariant();
        if (!Path.IsPathFullyQualified(src.File) || ext is not (".safetensors" or ".onnx"))
            throw new TapmlException($"{what}: a weight reference must name an absolute path to a .safetensors or .onnx file");
        var info = new FileInfo(src.File);
        if (!info.Exists)
            throw new TapmlException($"{what}, which is missing (the model moved or was deleted?); restore it, or carve with --embed-weights for a self-contained store");
        if ((info.LinkTarget is null ? info : info.ResolveLinkTarget(true)) is not FileInfo { Exists: true, Length: > 0 })
            throw new TapmlException($"{what}, which is not a regular file with data (a pipe, a device, an empty file or a dangling link)");
        Tensor t;
        if (src.File.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            if (!_safetensors.TryGetValue(src.File, out var f)) _safetensors[src.File] = f = SafetensorsFile.Open(src.File);
            if (!f.Entries.ContainsKey(src.Tensor)) throw new TapmlException($"{what}: the file has no tensor '{src.Tensor}' (the model changed since the carve?)");
            t = f.Read(src.Tensor);
            if (t.DType != dtype && DTypes.IsFloat(t.DType) && DTypes.IsFloat(dtype)) t = TensorConvert.To(t, dtype);
        }
        else
        {
            if (!_onnx.TryGetValue(src.File, out var m)) _onnx[src.File] = m = OnnxImporter.Load(src.File);
            if (!m.Graph.Initializers.TryGetValue(src.Tensor, out var init)) throw new TapmlException($"{what}: the model has no initializer '{src.Tensor}' (it changed since the carve?)");
            t = init;
        }
        return src.Transform == "transpose" ? Transposed(t, what) : t;
    }

    /// <summary>A [rows, cols] matrix as [cols, rows] (the model loaders' <c>x @ W^T</c> layout).</summary>
    static Tensor Transposed(Tensor t, string what)
    {
        if (t.Rank != 2) throw new TapmlException($"{what}: 'transpose' needs a matrix, the file holds {t.Describe()}");
        long rows = t.Shape[0], cols = t.Shape[1];
        int size = DTypes.Size(t.DType);
        var dst = Tensor.Uninitialized(t.DType, cols, rows);
        ReadOnlySpan<byte> s = t.Bytes();
        Span<byte> d = dst.Bytes();
        if (size == 4)
        {
            var s4 = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(s);
            var d4 = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(d);
            for (int r = 0; r < rows; r++)
                for (int k = 0; k < cols; k++) d4[(int)(k * rows + r)] = s4[(int)(r * cols + k)];
            return dst;
        }
        for (long r = 0; r < rows; r++)
            for (long k = 0; k < cols; k++)
                s.Slice((int)((r * cols + k) * size), size).CopyTo(d.Slice((int)((k * rows + r) * size), size));
        return dst;
    }
}
