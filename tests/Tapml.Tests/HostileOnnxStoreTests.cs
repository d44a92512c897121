using System.Diagnostics;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Onnx;
using Tapml.Ir.Onnx.Proto;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Testing.Carving;
using Xunit;

namespace Tapml.Tests;

/// <summary>Hostile ONNX models and carved stores through the real CLI process (issue 18): bombs, huge shapes,
/// external data that leads out of the model's folder, wrong JSON types and named pipes in a manifest. Each is exit 2,
/// exactly one stderr line naming the file, within 30 s and a bounded peak memory, opening nothing outside.</summary>
public class HostileOnnxStoreTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tapml-hostile-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>What a measured CLI run gave: the result, its wall time and its peak resident memory (VmHWM).</summary>
    public sealed record Measured(CliRunner.Result R, double Seconds, long PeakBytes);

    /// <summary>Runs the CLI under <see cref="CappedCli"/>'s heap cap and a 60 s limit, measuring its peak memory.</summary>
    public static Measured RunMeasured(params string[] args)
    {
        var r = CappedCli.Run(strace: false, TimeSpan.FromSeconds(60), args);
        return new Measured(new CliRunner.Result(r.ExitCode, r.Stdout, r.Stderr), r.Wall.TotalSeconds, r.PeakBytes);
    }

    /// <summary>Exit 2, one stderr line starting "error: " that names every part, under 30 s and 1.5 GiB peak.</summary>
    static void AssertOneLine(Measured m, params string[] parts)
    {
        var r = m.R;
        Assert.True(r.ExitCode == 2, $"exit {r.ExitCode}: {r.Stdout}{r.Stderr}");
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"{lines.Length} stderr lines:\n{r.Stderr}");
        Assert.StartsWith("error: ", lines[0]);
        Assert.DoesNotContain("internal error", lines[0]);
        Assert.True(lines[0].Length < 2300, $"the error line is {lines[0].Length} characters long");
        foreach (var p in parts) Assert.Contains(p, lines[0]);
        Assert.True(m.Seconds < 30, $"took {m.Seconds:F1} s");
        Assert.True(m.PeakBytes < 3L << 29, $"peak memory {m.PeakBytes >> 20} MiB");
        TestContext.Current.SendDiagnosticMessage($"{m.Seconds:F1} s, peak {m.PeakBytes >> 20} MiB: {lines[0]}");
    }

    // --- ONNX ------------------------------------------------------------------------------------------------------

    /// <summary>Functions f0 … f(depth-1), each calling the next twice; the last is one Identity. 2^depth nodes.</summary>
    public static ModelProto FunctionBomb(int depth)
    {
        var m = new ModelProto { IrVersion = 8, Graph = new GraphProto { Name = "bomb" } };
        m.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 17 });
        m.OpsetImport.Add(new OperatorSetIdProto { Domain = "local", Version = 1 });
        for (int i = 0; i < depth; i++)
        {
            var f = new FunctionProto { Name = $"f{i}", Domain = "local" };
            f.Input.Add("x"); f.Output.Add("y");
            f.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 17 });
            f.OpsetImport.Add(new OperatorSetIdProto { Domain = "local", Version = 1 });
            if (i == depth - 1) f.Node.Add(new NodeProto { OpType = "Identity", Input = { "x" }, Output = { "y" } });
            else
            {
                f.Node.Add(new NodeProto { OpType = $"f{i + 1}", Domain = "local", Input = { "x" }, Output = { "t" } });
                f.Node.Add(new NodeProto { OpType = $"f{i + 1}", Domain = "local", Input = { "t" }, Output = { "y" } });
            }
            m.Functions.Add(f);
        }
        m.Graph.Node.Add(new NodeProto { Name = "call", OpType = "f0", Domain = "local", Input = { "x" }, Output = { "y" } });
        m.Graph.Input.Add(OnnxExporter.ToProto(new ValueInfo("x", TypeRef.TensorOf(DType.Float32, [2]))));
        m.Graph.Output.Add(OnnxExporter.ToProto(new ValueInfo("y", TypeRef.TensorOf(DType.Float32, [2]))));
        return m;
    }

    [Fact]
    public void A_function_expansion_bomb_is_one_line_naming_the_function()
    {
        string p = Path.Combine(_dir, "bomb.onnx");
        File.WriteAllBytes(p, FunctionBomb(40).ToByteArray());
        Assert.True(new FileInfo(p).Length < 4096);
        AssertOneLine(RunMeasured("run", "--model", p, "--platform", "cpu"), "bomb.onnx", "'f0'", "--max-memory");
    }

    [Fact]
    public void A_recursive_function_through_a_subgraph_is_one_line()
    {
        var m = FunctionBomb(2);
        // f1 calls f0 inside an If branch: a cycle only a walk through subgraphs sees.
        var branch = new GraphProto { Name = "then" };
        branch.Node.Add(new NodeProto { OpType = "f0", Domain = "local", Input = { "x" }, Output = { "z" } });
        branch.Output.Add(OnnxExporter.ToProto(new ValueInfo("z", TypeRef.TensorOf(DType.Float32, [2]))));
        m.Functions[1].Node.Add(new NodeProto { OpType = "If", Input = { "x" }, Output = { "w" }, Attribute = { new AttributeProto { Name = "then_branch", Type = AttributeProto.Types.AttributeType.Graph, G = branch } } });
        string p = Path.Combine(_dir, "cycle.onnx");
        File.WriteAllBytes(p, m.ToByteArray());
        AssertOneLine(RunMeasured("run", "--model", p, "--platform", "cpu"), "cycle.onnx", "recursively");
    }

    static string ShapeModel(string dir, string op, long[] shape)
    {
        var b = new GraphBuilder("g");
        string x = b.Input("x", DType.Float32, 1);
        string s = b.Ints("shape", shape);
        string y = op == "ConstantOfShape" ? b.Node("ConstantOfShape", [s], name: "huge") : b.Node("Expand", [x, s], name: "huge");
        b.Output(y);
        string p = Path.Combine(dir, $"{op}.onnx");
        OnnxExporter.Save(new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } }, p);
        return p;
    }

    [Theory]
    [InlineData("ConstantOfShape")]
    [InlineData("Expand")]
    public void A_huge_shape_is_one_line_naming_file_node_and_budget(string op)
    {
        string p = ShapeModel(_dir, op, [40000, 40000]);   // 6 GiB of f32
        AssertOneLine(RunMeasured("run", "--model", p, "--platform", "cpu", "--max-memory", "1G"), $"{op}.onnx", "'huge'", "1.0 GiB", "--max-memory");
    }

    /// <summary>A model whose initializer 'w' has external data at <paramref name="location"/>, in <c>_dir/model/</c>.</summary>
    string ExternalModel(string location)
    {
        string folder = Directory.CreateDirectory(Path.Combine(_dir, "model")).FullName;
        var b = new GraphBuilder("g");
        string x = b.Input("x", DType.Float32, 4);
        b.Output(b.Node("Add", [x, "w"]));
        var proto = OnnxExporter.ToProto(new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } });
        var w = new TensorProto { Name = "w", DataType = 1, DataLocation = TensorProto.Types.DataLocation.External };
        w.Dims.Add(4);
        w.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
        proto.Graph.Initializer.Add(w);
        string p = Path.Combine(folder, "model.onnx");
        File.WriteAllBytes(p, proto.ToByteArray());
        return p;
    }

    public static TheoryData<string> EscapingLocations => new() { "dotdot", "absolute", "symlink", "fifo" };

    [Theory]
    [MemberData(nameof(EscapingLocations))]
    public void External_data_outside_the_folder_or_a_pipe_is_refused_without_opening_it(string kind)
    {
        string canary = Path.Combine(_dir, "canary.bin");
        File.WriteAllBytes(canary, new byte[16]);
        string folder = Path.Combine(_dir, "model");
        Directory.CreateDirectory(folder);
        string location = kind switch
        {
            "dotdot" => "../canary.bin",
            "absolute" => canary,
            "symlink" => "weights.bin",
            _ => "pipe.bin",
        };
        if (kind == "symlink") File.CreateSymbolicLink(Path.Combine(folder, "weights.bin"), canary);
        if (kind == "fifo") Assert.Equal(0, Process.Start("mkfifo", Path.Combine(folder, "pipe.bin")).WaitForExitAndGet());
        string model = ExternalModel(location);
        AssertOneLine(RunMeasured("run", "--model", model, "--platform", "cpu"), "model.onnx", "'w'");
        AssertNothingOpened(["run", "--model", model, "--platform", "cpu"], kind == "fifo" ? Path.Combine(folder, "pipe.bin") : canary);
    }

    /// <summary>Under strace: the CLI never opens <paramref name="path"/> (skipped with a message when strace is absent).</summary>
    static void AssertNothingOpened(string[] args, string path)
    {
        if (!CappedCli.HasStrace) Assert.Skip("strace is not installed (scripts/setup.sh installs it): the open calls cannot be listed");
        var r = CappedCli.Run(strace: true, TimeSpan.FromSeconds(60), args);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(r.Opened!, p => p.EndsWith("tapml.dll", StringComparison.Ordinal));
        var opens = r.Opened!.Where(p => p.Contains(path)).ToList();
        Assert.True(opens.Count == 0, $"{path} was opened:\n{string.Join("\n", opens)}");
    }

    // --- carved stores ----------------------------------------------------------------------------------------------

    /// <summary>A v3 store of a few real cases (Add, Softmax with an attribute, Pad with its pads as an input, Gather,
    /// Transpose), outputs computed on cpu.</summary>
    public static string SeedStore(string dir)
    {
        var store = CarvedStore.Create(dir, "seed", "", "cpu");
        var rng = new Random(7);
        Tensor Rand(params long[] shape)
        {
            var t = Tensor.Zeros(DType.Float32, shape);
            var d = t.Span<float>();
            for (int i = 0; i < d.Length; i++) d[i] = (float)rng.NextDouble() - 0.5f;
            return t;
        }
        void Add(string op, Tensor[] inputs, Dictionary<string, Attr>? attrs = null)
        {
            var b = new GraphBuilder("case");
            var names = inputs.Select((t, i) => b.Input($"in{i}", t.DType, t.Shape)).ToArray();
            string y = b.Node(op, names, attrs, name: $"{op.ToLowerInvariant()}0");
            b.Output(y);
            var model = new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } };
            var feeds = names.Select((n, i) => (n, (Value)inputs[i])).ToDictionary(x => x.n, x => x.Item2);
            var outs = new Executor(new CpuPlatform()).Run(model, feeds);
            var o = (Tensor)outs[y];
            var ins = inputs.Select((t, i) => new TensorRef(names[i], t.DType, t.Shape, store.Put(t, out _))).ToList();
            var node = b.Graph.Nodes[0];
            store.Cases.Add(new CarvedCase
            {
                Id = $"{op}-{store.Cases.Count}", OpType = op, Opset = 17, Attributes = CarvedCase.AttributesJson(node),
                Inputs = ins, Outputs = [new TensorRef(y, o.DType, o.Shape, store.Put(o, out _))],
                Provenance = new(node.Name, "run", 1), Signature = op,
            });
        }
        Add("Add", [Rand(2, 3), Rand(2, 3)]);
        Add("Softmax", [Rand(2, 5)], new() { ["axis"] = Attr.Of(1L) });
        Add("Pad", [Rand(2, 2), Tensor.FromArray(new long[] { 0, 1, 0, 1 }, 4)]);
        Add("Gather", [Rand(4, 3), Tensor.FromArray(new long[] { 3, 0 }, 2)], new() { ["axis"] = Attr.Of(0L) });
        Add("Transpose", [Rand(2, 3, 4)], new() { ["perm"] = Attr.Of(new long[] { 2, 0, 1 }) });
        store.Close();
        return dir;
    }

    static string Manifest(string store) => Path.Combine(store, "manifest.json");

    static void EditManifest(string store, Action<JsonObject> edit)
    {
        var o = JsonNode.Parse(File.ReadAllText(Manifest(store)))!.AsObject();
        edit(o);
        File.WriteAllText(Manifest(store), o.ToJsonString());
    }

    [Fact]
    public void The_seed_store_replays_clean()
    {
        string store = SeedStore(Path.Combine(_dir, "store"));
        var r = CliRunner.Run("replay", store, "--platform", "cpu");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.EndsWith("5 passed, 0 failed, 0 skipped", r.Stdout.TrimEnd());
    }

    [Fact]
    public void A_pad_bomb_in_a_carved_store_is_one_line_naming_manifest_and_case()
    {
        string store = SeedStore(Path.Combine(_dir, "store"));
        // Pads of 30000 on each side of a 2×2: 3.6 GB of f32 from 32 bytes of pads; the blob is re-hashed, the case
        // stays valid in every other way.
        var s = CarvedStore.Open(store);
        var pad = s.Cases.Single(c => c.OpType == "Pad");
        var pads = Tensor.FromArray(new long[] { 30000, 30000, 30000, 30000 }, 4);
        var edited = CarvedStore.Create(Path.Combine(_dir, "bomb"), "seed", "", "cpu");
        foreach (var c in s.Cases)
        {
            var ins = c.Inputs.Select(t => t with { Blob = edited.Put(c == pad && t.Name == pad.Inputs[1].Name ? pads : s.Read(t.Blob!, c.Id), out _) }).ToList();
            var outs = c.Outputs.Select(t => t with { Blob = edited.Put(s.Read(t.Blob!, c.Id), out _) }).ToList();
            edited.Cases.Add(c with { Inputs = ins, Outputs = outs });
        }
        edited.Close();
        AssertOneLine(RunMeasured("replay", edited.Dir, "--platform", "cpu"), "manifest.json", pad.Id, "'pad0'");
    }

    public static TheoryData<string> WrongTypes => new()
    {
        "opset-as-string", "null-in-shape", "object-for-inputs", "huge-dimension", "negative-offset", "duplicate-key", "number-for-name", "deep-nesting",
    };

    [Theory]
    [MemberData(nameof(WrongTypes))]
    public void A_manifest_with_wrong_json_types_is_one_line_naming_manifest_and_field(string kind)
    {
        string store = SeedStore(Path.Combine(_dir, "store"));
        string field = kind switch
        {
            "opset-as-string" => "opset", "null-in-shape" => "shape", "object-for-inputs" => "inputs", "huge-dimension" => "shape",
            "negative-offset" => "offset", "number-for-name" => "name", _ => "",
        };
        if (kind == "duplicate-key")
        {
            string text = File.ReadAllText(Manifest(store));
            File.WriteAllText(Manifest(store), text.Replace("\"opset\":17", "\"opset\":17,\"opset\":18"));
        }
        else if (kind == "deep-nesting")
            File.WriteAllText(Manifest(store), new string('[', 100_000) + new string(']', 100_000));
        else EditManifest(store, o =>
        {
            var c = o["cases"]![0]!.AsObject();
            switch (kind)
            {
                case "opset-as-string": c["opset"] = "17"; break;
                case "null-in-shape": c["inputs"]![0]!["shape"]!.AsArray()[0] = null; break;
                case "object-for-inputs": c["inputs"] = new JsonObject(); break;
                case "huge-dimension": c["inputs"]![0]!["shape"]!.AsArray()[0] = JsonValue.Create(1e300); break;
                case "negative-offset": o["blobs"]!.AsObject().First(b => b.Value!["offset"] is not null).Value!["offset"] = -5; break;
                case "number-for-name": c["inputs"]![0]!["name"] = 42; break;
            }
        });
        AssertOneLine(RunMeasured("replay", store, "--platform", "cpu"), ["manifest.json", .. field.Length > 0 ? [field] : Array.Empty<string>()]);
    }

    [Theory]
    [InlineData("manifest-fifo")]
    [InlineData("manifest-symlink-out")]
    [InlineData("pack-fifo")]
    public void A_manifest_or_pack_that_is_a_pipe_or_leads_out_is_one_line(string kind)
    {
        string store = SeedStore(Path.Combine(_dir, "store"));
        string target = kind == "pack-fifo" ? Path.Combine(store, "packs", "0.pack") : Manifest(store);
        if (kind == "manifest-symlink-out")
        {
            string outside = Path.Combine(_dir, "outside.json");
            File.Move(target, outside);
            File.CreateSymbolicLink(target, outside);
        }
        else
        {
            File.Delete(target);
            Assert.Equal(0, Process.Start("mkfifo", target).WaitForExitAndGet());
        }
        AssertOneLine(RunMeasured("replay", store, "--platform", "cpu"), kind == "pack-fifo" ? "0.pack" : "manifest.json");
    }

    [Fact]
    public void A_case_level_error_is_reported_on_stderr_and_the_replay_goes_on()
    {
        string store = SeedStore(Path.Combine(_dir, "store"));
        // The Softmax case's axis is out of range: that case errors, the other four still run.
        EditManifest(store, o => o["cases"]!.AsArray().First(c => c!["op_type"]!.GetValue<string>() == "Softmax")!["attributes"]!["axis"]!["value"] = 7);
        var r = CliRunner.Run("replay", store, "--platform", "cpu");
        Assert.True(r.ExitCode == 1, r.Stdout + r.Stderr);
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains("Softmax-1", lines[0]);
        Assert.Contains("4 passed", r.Stdout);
    }

    [Fact]
    public void A_long_error_is_cut_to_one_bounded_line()
    {
        var b = new GraphBuilder("g");
        string x = b.Input("x", DType.Float32, 4);
        b.Output(b.Node("FrobnicateTensor", [x], name: new string('n', 100_000)));
        string p = Path.Combine(_dir, "long.onnx");
        OnnxExporter.Save(new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } }, p);
        var r = CliRunner.Run("run", "--model", p, "--platform", "cpu");
        Assert.Equal(2, r.ExitCode);
        var line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.True(line.Length < 2300, $"{line.Length} characters");
        Assert.Contains("more characters)", line);
    }

    [Theory]
    [InlineData("4G", 4L << 30)]
    [InlineData("512M", 512L << 20)]
    [InlineData("1.5GiB", 3L << 29)]
    [InlineData("1000000", 1000000)]
    public void Sizes_parse(string text, long bytes) => Assert.Equal(bytes, ResourceBudget.ParseSize(text, "--max-memory"));

    [Fact]
    public void A_bad_max_memory_is_one_line() => AssertOneLine(RunMeasured("run", "--model", "builtin:sample-mlp", "--max-memory", "lots"), "--max-memory", "lots");
}

static class ProcessExtensions
{
    public static int WaitForExitAndGet(this Process p) { p.WaitForExit(); return p.ExitCode; }
}
