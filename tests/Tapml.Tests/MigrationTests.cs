using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Onnx;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.Faulty;
using Tapml.Testing;
using Tapml.Testing.Migration;
using Xunit;

namespace Tapml.Tests;

/// <summary>Localization must-shows: injected faults are found at exactly their node (lockstep, bisect, by-kind),
/// faults that change nothing are "no divergence", a clean target has no culprit, lockstep's memory stays bounded.</summary>
public class MigrationTests
{
    static readonly long[] Prompt = [1, 17, 305, 42];

    internal static (Model Model, MigrationInput Input) Subject(string name)
    {
        if (name.StartsWith("tiny-", StringComparison.Ordinal))
            return (HfModels.Load(TinyCheckpoint.Materialize(name["tiny-".Length..])), new MigrationInput(PromptIds: Prompt, DecodeSteps: 0));
        string path = SharedData.Require("conformance", "onnx", "light", $"light_{name}.onnx");
        var m = OnnxImporter.Load(path);
        var feeds = new Dictionary<string, Value>();
        var rng = new Random(1);
        foreach (var i in m.Graph.RequiredInputs)
        {
            var t = Tensor.Zeros(i.Type!.ElemType, i.Type.Shape!.Select(d => d.Value ?? 1).ToArray());
            for (long k = 0; k < t.Length; k++) t.SetDouble(k, rng.NextDouble() * 2 - 1);
            feeds[i.Name] = t;
        }
        return (m, new MigrationInput(Feeds: feeds));
    }

    /// <summary>Independent oracle: does the fault change the node's own output in the first run beyond the node's
    /// tolerance? (A plain executor over the faulty platform vs cpu, the node's outputs compared directly; an offset
    /// of 1 on activations of 10^6 is within tolerance and counts as no change.)</summary>
    internal static bool FaultChangesNode(Model m, MigrationInput input, string spec, string node)
    {
        var feeds = input.Feeds ?? Generation.PrefillFeeds(m, input.PromptIds!);
        Grab Run(IPlatform p)
        {
            var grab = new Grab(node);
            var exec = new Executor(p);
            exec.Observers.Add(grab);
            try { exec.Run(m, feeds); } catch (TapmlException) { }    // a corrupted shape may break a later node
            return grab;
        }
        using var cleanPlatform = PlatformRegistry.Create("cpu");
        using var faulty = PlatformRegistry.Create(spec);
        var clean = Run(cleanPlatform);
        var a = clean.Outputs!;
        var b = Run(faulty).Outputs!;
        var n = m.Graph.Nodes.First(x => x.Name == node);
        var inputs = clean.Inputs!;
        var tol = new Tolerances().For(n, inputs, a);
        return a.Zip(b).Select((x, i) => (x.First, x.Second, i)).Any(x =>
        {
            if (x.First is not Tensor s || x.Second is not Tensor t || n.Outputs[x.i].Length == 0) return false;
            if (!DTypes.IsFloat(s.DType)) return !s.Bytes().SequenceEqual(t.Bytes());
            return !Comparison.CompareTensors("o", s, t, tol, () => Magnitudes.Of(n, m.Opset(n.Domain), inputs)[x.i]).Passed;
        });
    }

    sealed class ShapeGrab(string node) : IExecutionObserver
    {
        public List<long[]?>? Inputs;
        public List<long[]>? Outputs;
        public void OnNodeRun(NodeEvent e)
        {
            if (e.Depth != 0 || e.Node.Name != node || Inputs is not null) return;
            Inputs = e.Inputs.Select(v => (v as Tensor)?.Shape).ToList();
            Outputs = e.Outputs.OfType<Tensor>().Select(t => t.Shape).ToList();
        }
    }

    sealed class Grab(string node) : IExecutionObserver
    {
        public Value?[]? Outputs, Inputs;
        public void OnNodeRun(NodeEvent e)
        {
            if (e.Depth != 0 || e.Node.Name != node || Outputs is not null) return;
            Outputs = Enumerable.Range(0, e.Outputs.Length).Select(i => e.HostOutput(i) is Tensor t ? t.Clone() : null).ToArray();
            Inputs = Enumerable.Range(0, e.Inputs.Length).Select(e.HostInput).ToArray();
        }
    }

    public static TheoryData<string, string> Subjects => new()
    {
        { "tiny-llama", "lockstep" }, { "tiny-qwen2", "lockstep" }, { "tiny-mistral", "lockstep" }, { "tiny-gemma", "lockstep" },
        { "tiny-phi3", "lockstep" }, { "tiny-gpt2", "lockstep" }, { "squeezenet", "lockstep" }, { "resnet50", "lockstep" },
        { "tiny-llama", "bisect" }, { "tiny-gpt2", "bisect" }, { "squeezenet", "bisect" },
        { "tiny-phi3", "by-kind" }, { "squeezenet", "by-kind" },
    };

    [Theory]
    [MemberData(nameof(Subjects))]
    public void Injected_faults_are_localized_at_their_node(string subject, string strategy)
    {
        var (m, input) = Subject(subject);
        var rng = new Random(subject.Sum(c => c) * 31 + strategy.Length);   // NOTE: string.GetHashCode is randomized per process
        int draws = subject == "resnet50" ? 5 : strategy == "lockstep" ? 12 : 6, exact = 0, changed = 0;
        var misses = new List<string>();
        for (int d = 0; d < draws; d++)
        {
            var node = m.Graph.Nodes[rng.Next(m.Graph.Nodes.Count)];
            string kind = FaultSpec.KindNames[rng.Next(FaultSpec.KindNames.Count)];
            string spec = $"faulty:cpu?node={node.Name}&kind={kind}";
            bool changes = FaultChangesNode(m, input, spec, node.Name);
            var r = new Migrator(m, "cpu", spec, input, new Tolerances(), new Tolerance(1e-3, 1e-4)).Run(strategy);
            if (strategy == "bisect") Assert.True(r.Runs <= (int)Math.Ceiling(Math.Log2(m.Graph.Nodes.Count)) + 2, $"bisect used {r.Runs} runs");
            if (!changes)
            {
                // a fault that changes nothing is never blamed on another node
                Assert.True(r.FirstDivergent is null, $"{spec}: changes nothing, yet {r.FirstDivergent?.Node} was blamed");
                continue;
            }
            changed++;
            if (r.FirstDivergent?.Node == node.Name) { exact++; continue; }
            misses.Add($"{spec} ({node.OpType}): got {r.FirstDivergent?.Node ?? "no divergence"} {r.TargetError}");
        }
        // bisect and by-kind compare only the graph outputs: a change that no output sees (e.g. a mask later
        // overwritten) is no divergence there. Every such miss must be "no divergence", never another node.
        if (strategy != "lockstep")
            Assert.All(misses, miss => Assert.Contains("got no divergence", miss));
        else
            Assert.True(exact >= Math.Ceiling(0.95 * changed), $"{exact}/{changed} exact; misses: {string.Join("; ", misses)}");
        Assert.True(changed > 0, "no draw changed anything: the test tested nothing");
    }

    [Fact]
    public void Decode_only_fault_is_found_in_its_decode_step_with_the_kv_cache()
    {
        var m = HfModels.Load(TinyCheckpoint.Materialize("llama"));
        var node = m.Graph.Nodes.First(n => n.OpType == "Softmax");
        var r = new Migrator(m, "cpu", $"faulty:cpu?node={node.Name}&kind=offset&from=1", new MigrationInput(PromptIds: Prompt, DecodeSteps: 3),
                             new Tolerances(), new Tolerance(1e-3, 1e-4)).Lockstep();
        Assert.Equal(node.Name, r.FirstDivergent?.Node);
        Assert.Equal("decode:1", r.FirstDivergent!.Phase);
        Assert.Contains(r.Records, x => x.Phase == "prefill" && x.Node == node.Name && x.Isolated.Passed);
        Assert.Contains(r.Affected, x => x.Node.Contains("present") || x.OpType is "MatMul" or "Concat");
    }

    [Theory]
    [InlineData("onnxruntime")]
    [InlineData("cpu")]
    public void Clean_target_has_no_culprit(string target)
    {
        var json = Path.Combine(Path.GetTempPath(), $"tapml-mig-{Guid.NewGuid():N}.json");
        var r = CliRunner.Run("migrate", "--model", "builtin:tiny-llama", "--target", target, "--input-ids", "1,17,305", "--decode-steps", "2", "--json", json);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        var d = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Null(d["first_divergent"]);
        Assert.Equal(2, (int)d["runs"]!);
        Assert.True((int)d["nodes"]! > 100);
        Assert.Contains("no divergence", r.Stdout);
        File.Delete(json);
    }

    [Fact]
    public void Cli_reports_culprit_json_html_and_a_working_reproducer()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"tapml-mig-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        try
        {
            string target = "faulty:cpu?node=Softmax_1&kind=nan";
            var r = CliRunner.Run("migrate", "--model", "builtin:tiny-llama", "--target", target, "--input-ids", "1,17,305", "--strategy", "bisect",
                                  "--json", Path.Combine(dir, "m.json"), "--html", Path.Combine(dir, "m.html"), "--out", dir);
            Assert.Equal(1, r.ExitCode);
            var d = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "m.json")))!;
            Assert.Equal("Softmax_1", (string)d["first_divergent"]!["node"]!);
            Assert.Equal("Softmax", (string)d["first_divergent"]!["op_type"]!);
            Assert.False((bool)d["first_divergent"]!["isolated"]!["passed"]!);
            Assert.True((int)d["runs"]! <= (int)Math.Ceiling(Math.Log2((int)d["nodes"]!)) + 2);
            Assert.Contains("first divergent node: <b>Softmax_1</b>", File.ReadAllText(Path.Combine(dir, "m.html")));
            // the reproducer replays the culprit alone: it fails on the target and passes on cpu
            string repro = (string)d["repro"]!;
            var args = repro.Replace("./tapml ", "").Replace("'", "").Split(' ');
            var rr = CliRunner.Run(args);
            Assert.Equal(1, rr.ExitCode);
            Assert.Contains("NaN", rr.Stdout);
            var ok = CliRunner.Run(args.Select(a => a == target ? "cpu" : a).ToArray());
            Assert.True(ok.ExitCode == 0, ok.Stdout);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Lockstep_memory_stays_near_three_activations_not_all_intermediates()
    {
        // activations dwarf weights: [1, 16, 256, 256] f32 (4 MiB) through 10 element-wise ops with scalar weights
        var b = new GraphBuilder("wide");
        string x = b.Input("x", DType.Float32, 1, 16, 256, 256);
        string[] ops = ["Relu", "Sigmoid", "Tanh", "Neg", "Abs", "Sqrt", "Exp", "Sigmoid", "Relu", "Tanh"];
        string h = x;
        long weights = 0;
        for (int i = 0; i < ops.Length; i++)
        {
            h = b.Node(ops[i], [h], name: $"n{i}", outputName: $"h{i}");
            string w = b.Initializer($"w{i}", Tensor.FromArray(new[] { 0.5f }, 1));
            weights += 4;
            h = b.Node("Mul", [h, w], name: $"m{i}", outputName: $"s{i}");
        }
        b.Output(h);
        var m = new Model { Graph = b.Graph, Opsets = new() { [""] = 17 } };
        var feed = Tensor.Zeros(DType.Float32, 1, 16, 256, 256);
        var span = feed.Span<float>();
        for (int i = 0; i < span.Length; i++) span[i] = (i % 97) / 97f - 0.5f;
        var r = new Migrator(m, "cpu", "cpu", new MigrationInput(Feeds: new() { ["x"] = feed }), new Tolerances(), new Tolerance(1e-3, 1e-4)).Lockstep();
        long activation = feed.ByteSize;
        Assert.Null(r.FirstDivergent);
        Assert.True(r.PeakMemoryBytes <= weights + 3 * activation, $"peak {r.PeakMemoryBytes} > weights {weights} + 3 × {activation}");
        Assert.Equal(2 * ops.Length * activation, r.AllIntermediatesBytes);
    }

    [Theory]
    [InlineData("cpu", null)]
    [InlineData("faulty:cpu?node=Tanh&kind=offset", "Tanh")]
    public void Debug_carves_replays_and_migrates_in_one_command(string target, string? culprit)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"tapml-debug-{Guid.NewGuid():N}");
        try
        {
            string json = Path.Combine(dir, "debug.json");
            Directory.CreateDirectory(dir);
            var r = CliRunner.Run("debug", "--model", "builtin:tiny-gpt2", "--target", target, "--input-ids", "1,17,305", "--out", Path.Combine(dir, "run"), "--json", json);
            Assert.True(r.ExitCode == (culprit is null ? 0 : 1), r.Stdout + r.Stderr);
            var d = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(json))!;
            Assert.Equal(culprit, (string?)d["first_divergent"]?["node"]);
            int failed = (int)d["replay"]!["failed"]!;
            Assert.True(culprit is null ? failed == 0 : failed > 0, $"replay failed {failed}");
            Assert.True((int)d["replay"]!["passed"]! > 50);
            foreach (var f in new[] { "replay.html", "replay.json", "migrate.html", "migrate.json", "store/manifest.json" })
                Assert.True(File.Exists(Path.Combine(dir, "run", f)), f);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }
    // NOTE: lockstep runs every phase on one target instance, so a fault counted in calls (from=) would move on resume:
    // its resume is checked on a clean target; bisect's runs each have a fresh target.
    [Theory]
    [InlineData("lockstep", false, 2)]
    [InlineData("bisect", true, 3)]
    public void A_migration_cut_off_resumes_from_its_journal_with_the_same_result(string strategy, bool faulty, int keep)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"tapml-mresume-{Guid.NewGuid():N}");
        try
        {
            var m = HfModels.Load(TinyCheckpoint.Materialize("llama"));
            var node = m.Graph.Nodes.First(n => n.OpType == "Softmax");
            string target = faulty ? $"faulty:cpu?node={node.Name}&kind=offset&from=2" : "cpu";
            string[] Args(string json, params string[] more) => ["migrate", "--model", "builtin:tiny-llama", "--target", target, "--input-ids", "1,17,305",
                "--decode-steps", "3", "--strategy", strategy, "--out", Path.Combine(dir, "out"), "--json", json, .. more];
            var full = CliRunner.Run(Args(Path.Combine(dir, "full.json")));
            Assert.True(full.ExitCode == (faulty ? 1 : 0), full.Stdout + full.Stderr);
            string journal = Path.Combine(dir, "out", "migration.jsonl");
            var lines = File.ReadAllLines(journal);
            Assert.True(lines.Length > keep + 1, string.Join("\n", lines));
            // Cut off after `keep` entries, mid-way through writing the next one.
            File.WriteAllText(journal, string.Join("\n", lines.Take(keep + 1)) + "\n" + lines[keep + 1][..(lines[keep + 1].Length / 2)]);
            var resumed = CliRunner.Run(Args(Path.Combine(dir, "resumed.json"), "--resume"));
            Assert.True(resumed.ExitCode == (faulty ? 1 : 0), resumed.Stdout + resumed.Stderr);
            Assert.Contains($"resuming: {keep} finished", resumed.Stdout);
            var a = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "full.json")))!;
            var b = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "resumed.json")))!;
            Assert.Equal(keep, (int)b["resumed"]!);
            Assert.Equal(faulty ? node.Name : null, (string?)b["first_divergent"]?["node"]);
            Assert.Equal(a["first_divergent"]?.ToJsonString(), b["first_divergent"]?.ToJsonString());
            Assert.Equal(((System.Text.Json.Nodes.JsonArray)a["records"]!).Count, ((System.Text.Json.Nodes.JsonArray)b["records"]!).Count);
            Assert.Equal((int)a["runs"]!, (int)b["runs"]! + (strategy == "bisect" ? keep : 0));
            // A journal of another migration is never mixed in.
            var other = CliRunner.Run(["migrate", "--model", "builtin:tiny-llama", "--target", target, "--input-ids", "1,17,306", "--decode-steps", "3",
                "--strategy", strategy, "--out", Path.Combine(dir, "out"), "--resume"]);
            Assert.Equal(2, other.ExitCode);
            Assert.Contains("journal of another migration", other.Stderr);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }
}
