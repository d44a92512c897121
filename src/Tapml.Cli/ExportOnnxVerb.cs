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
        var external = new Option<bool>("--external-data") { Description = "write weights of 1 KiB or more to F.onnx.data beside the model (automatic above 2 GiB)" };
        var quantize = Cli.QuantizeOption();
        var weights = Cli.WeightsOption();
        var cmd = new Command("export-onnx", "write a model's graph as an .onnx file") { model, output, external, quantize, weights };
        cmd.Action(pr =>
        {
            var m = ModelSpec.Load(pr.GetValue(model)!, pr.GetValue(quantize), pr.GetValue(weights));
            long bytes = m.Graph.Initializers.Values.Sum(t => t.ByteSize);
            // NOTE: protobuf messages are limited to 2 GiB: larger weights go to an external data file.
            bool ext = pr.GetValue(external) || bytes > int.MaxValue - (64L << 20);
            string path = pr.GetValue(output)!;
            if (Path.GetDirectoryName(Path.GetFullPath(path)) is { } dir) Directory.CreateDirectory(dir);
            if (ext) OnnxExporter.SaveWithExternalData(m, path); else OnnxExporter.Save(m, path);
            Console.WriteLine($"wrote {path}{(ext ? $" + {Path.GetFileName(path)}.data" : "")}: {m.Graph.Nodes.Count} nodes, {m.Graph.Initializers.Count} initializers ({bytes >> 10} KiB), opset {m.Opset("")}");
            return 0;
        });
        return cmd;
    }
}
