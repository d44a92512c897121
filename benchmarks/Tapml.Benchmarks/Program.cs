using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Running;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Platforms;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Platforms.OnnxRuntime;

BenchmarkSwitcher.FromAssembly(typeof(MatMulBench).Assembly).Run(args);

/// <summary>One-node MatMul on cpu vs onnxruntime in the same process (the ratio is what matters).
/// The end-to-end CNN comparison is <c>./tapml bench cnn</c>.</summary>
[MemoryDiagnoser]
public class MatMulBench
{
    [Params("128x768x3072", "1x4096x4096")]
    public string Shape = "";

    Model _model = null!;
    Dictionary<string, Value> _feeds = null!;
    Executor _cpu = null!, _ort = null!;

    [GlobalSetup]
    public void Setup()
    {
        var d = Shape.Split('x').Select(long.Parse).ToArray();
        var rng = new Random(1);
        Tensor Rand(params long[] s) { var t = Tensor.Zeros(DType.Float32, s); var sp = t.Span<float>(); for (int i = 0; i < sp.Length; i++) sp[i] = (float)rng.NextDouble(); return t; }
        var b = new GraphBuilder("mm");
        string x = b.Input("x", DType.Float32, d[0], d[1]);
        b.Output(b.Node("MatMul", [x, b.Initializer("w", Rand(d[1], d[2]))]));
        _model = new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } };
        _feeds = new() { ["x"] = Rand(d[0], d[1]) };
        _cpu = new Executor(new CpuPlatform());
        _ort = new Executor(new OrtPlatform("onnxruntime")) { PreferWholeGraph = true };
    }

    [Benchmark(Baseline = true)] public object OnnxRuntime() => _ort.Run(_model, _feeds);
    [Benchmark] public object Cpu() => _cpu.Run(_model, _feeds);
}
