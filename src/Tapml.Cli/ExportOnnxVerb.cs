using System.CommandLine;
using Tapml.Core;
using Tapml.Ir.Onnx;

namespace Tapml.Cli;

/// <summary><c>tapml export-onnx --model M --out F.onnx</c>: the model's graph as a standard .onnx file (for
/// ONNX Runtime, Netron, other tools).</summary>
static class ExportOnnxVerb
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "model spec (HF folder, builtin:tiny-ARCH, .onnx)", Required = true };
        var output = new Option<string>("--out") { Description = "the .onnx file to write", Required = true };
        var cmd = new Command("export-onnx", "write a model's graph as an .onnx file") { model, output };
        cmd.Action(pr =>
        {
            var m = ModelSpec.Load(pr.GetValue(model)!);
            long bytes = m.Graph.Initializers.Values.Sum(t => t.ByteSize);
            // NOTE: protobuf messages are limited to 2 GiB; larger weights need external data, not written yet.
            if (bytes > int.MaxValue - (64L << 20))
                throw new TapmlException($"the model holds {bytes >> 20} MiB of weights; a single .onnx file holds under 2 GiB (external data is not written yet)");
            string path = pr.GetValue(output)!;
            if (Path.GetDirectoryName(Path.GetFullPath(path)) is { } dir) Directory.CreateDirectory(dir);
            OnnxExporter.Save(m, path);
            Console.WriteLine($"wrote {path}: {m.Graph.Nodes.Count} nodes, {m.Graph.Initializers.Count} initializers ({bytes >> 10} KiB), opset {m.Opset("")}");
            return 0;
        });
        return cmd;
    }
}
