using Google.Protobuf;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Ir.Onnx;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Tapml.Testing;
using Tapml.Testing.Carving;
using System.Text.Json.Nodes;
using Xunit;

namespace Tapml.Tests;

/// <summary>Thousands of mutated model files: loading and running each must either work or fail with a
/// <see cref="TapmlException"/> (the CLI's exit-2 error) — never another exception, a crash or a hang. Everything runs
/// under a tight <see cref="ResourceBudget"/> scope, so a blow-up fails the test instead of the machine.</summary>
public class FuzzTests
{
    static readonly string[] NodeSeeds =
    [
        "test_sum_two_inputs", "test_gather_0", "test_reshape_negative_dim", "test_slice", "test_concat_2d_axis_0",
        "test_conv_with_strides_and_asymmetric_padding", "test_transpose_default", "test_split_variable_parts_1d", "test_maxpool_2d_pads",
        "test_softmax_axis_1", "test_reduce_mean_keepdims_example", "test_edge_pad", "test_resize_upsample_scales_linear", "test_loop11",
    ];

    static IEnumerable<(string Name, byte[] Bytes)> Seeds()
    {
        yield return ("sample-mlp", OnnxExporter.ToProto(SampleModels.SampleMlp()).ToByteArray());
        yield return ("sample-cnn", OnnxExporter.ToProto(SampleModels.SampleCnn()).ToByteArray());
        yield return ("functions", HostileOnnxStoreTests.FunctionBomb(4).ToByteArray());
        string node = SharedData.PathOf("conformance", "onnx", "node");
        if (!Directory.Exists(node)) yield break;
        foreach (var name in NodeSeeds)
        {
            string f = Path.Combine(node, name, "model.onnx");
            Assert.True(File.Exists(f), $"fuzz seed {f} is missing");
            yield return (name, File.ReadAllBytes(f));
        }
    }

    [Fact]
    public async Task Mutated_models_fail_cleanly()
    {
        var rng = new Random(20261123);
        var cpu = new CpuPlatform();
        string dir = Directory.CreateTempSubdirectory("tapml-fuzz-").FullName;
        int ran = 0, rejected = 0, total = 0;
        var unexpected = new List<string>();
        using var budget = ResourceBudget.Scope(FuzzBudget, $"the fuzz test's budget of {FuzzBudget >> 20} MiB");
        try
        {
            foreach (var (name, seed) in Seeds())
            {
                for (int i = 0; i < 250; i++)
                {
                    total++;
                    // Half the mutations flip bytes (the parser's job), half change the model's meaning (dims,
                    // attributes, wiring: the loader's, validator's and kernels' job).
                    byte[] bytes = i % 2 == 0 ? Mutate(seed, rng) : MutateModel(seed, rng);
                    string path = Path.Combine(dir, $"{name}-{i}.onnx");
                    File.WriteAllBytes(path, bytes);
                    try
                    {
                        var model = OnnxImporter.Load(path);
                        var feeds = Feeds(model);
                        var task = Task.Run(() => new Executor(cpu).Run(model, feeds), TestContext.Current.CancellationToken);
                        if (await Task.WhenAny(task, Task.Delay(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken)) != task)
                        { unexpected.Add($"{name}#{i}: hang (> 20 s)"); continue; }
                        await task;
                        ran++;
                    }
                    catch (Exception e) when (Unwrap(e) is InternalErrorException ie)
                    {
                        // A kernel crashed: reported as one clear line, but it is a bug of ours, not a verdict on the input.
                        unexpected.Add($"{name}#{i}: {ie.Message}\n{ie.InnerException?.StackTrace}");
                    }
                    catch (Exception e) when (Unwrap(e) is TapmlException) { rejected++; }
                    catch (Exception e)
                    {
                        var inner = Unwrap(e);
                        unexpected.Add($"{name}#{i}: {inner.GetType().Name}: {inner.Message}\n{inner.StackTrace}");
                    }
                }
            }
        }
        finally { Directory.Delete(dir, true); }
        Assert.True(total >= 500, $"only {total} mutated files");
        Assert.True(unexpected.Count == 0, $"{unexpected.Count} of {total} mutated models crashed (ran {ran}, rejected {rejected}):\n" + string.Join("\n", unexpected.Take(5)));
        Assert.True(rejected > 0 && ran > 0, $"ran {ran}, rejected {rejected}: the mutations should produce both");
        TestContext.Current.SendDiagnosticMessage($"fuzz: {total} mutated models, {ran} ran, {rejected} rejected with a clear error");
    }

    /// <summary>The most one allocation of a fuzzed input may take.</summary>
    const long FuzzBudget = 256L << 20;

    /// <summary>Seeded JSON-aware mutations of a carved store's manifest (type swaps, nulls, huge and negative numbers,
    /// deleted keys, deep nesting, duplicate keys) and byte flips in its pack, each opened and replayed on cpu: every
    /// outcome is a replay (cases passing, failing or erroring one by one) or one <see cref="TapmlException"/>.</summary>
    [Fact]
    public void Mutated_carved_stores_fail_cleanly()
    {
        var rng = new Random(20261218);
        string root = Directory.CreateTempSubdirectory("tapml-fuzz-store-").FullName;
        int total = 0, replayed = 0, caseErrors = 0, rejected = 0;
        var unexpected = new List<string>();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        using var budget = ResourceBudget.Scope(FuzzBudget, $"the fuzz test's budget of {FuzzBudget >> 20} MiB");
        try
        {
            string seed = HostileOnnxStoreTests.SeedStore(Path.Combine(root, "seed"));
            string manifest = File.ReadAllText(Path.Combine(seed, "manifest.json"));
            byte[] pack = File.ReadAllBytes(Path.Combine(seed, "packs", "0.pack"));
            string store = Path.Combine(root, "store");
            Directory.CreateDirectory(Path.Combine(store, "packs"));
            var cpu = new CpuPlatform();
            for (int i = 0; i < 3000; i++)
            {
                total++;
                bool flipPack = i % 6 == 5;
                File.WriteAllText(Path.Combine(store, "manifest.json"), flipPack ? manifest : MutateJson(manifest, rng));
                File.WriteAllBytes(Path.Combine(store, "packs", "0.pack"), flipPack ? Mutate(pack, rng) : pack);
                try
                {
                    var s = CarvedStore.Open(store);
                    s.Verify(s.Cases);
                    var replayer = new Replayer(s, cpu, new Tolerances());
                    foreach (var c in s.Cases)
                    {
                        var r = replayer.Run(c);
                        if (r.Status == CaseStatus.Error)
                        {
                            caseErrors++;
                            // NOTE: a non-TapmlException inside a case becomes "TypeName: message" or an internal error.
                            if (r.Reason is { } why && (why.Contains("internal error") || System.Text.RegularExpressions.Regex.IsMatch(why, @"^\w+Exception: ")))
                                unexpected.Add($"#{i} case {c.Id}: {why}");
                        }
                    }
                    replayed++;
                }
                catch (TapmlException) { rejected++; }
                catch (Exception e) { unexpected.Add($"#{i}: {e.GetType().Name}: {e.Message}\n{e.StackTrace}"); }
            }
        }
        finally { Directory.Delete(root, true); }
        Assert.True(unexpected.Count == 0, $"{unexpected.Count} of {total} mutated stores crashed:\n" + string.Join("\n", unexpected.Take(5)));
        Assert.True(replayed > 0 && rejected > 0, $"replayed {replayed}, rejected {rejected}: the mutations should produce both");
        TestContext.Current.SendDiagnosticMessage($"store fuzz: {total} mutated stores in {sw.Elapsed.TotalSeconds:F1} s, {replayed} replayed ({caseErrors} case errors), {rejected} rejected with one line");
    }

    /// <summary>One JSON-aware change to a manifest: a value anywhere replaced by another type, a null, a huge,
    /// negative or fractional number, a deep nest; a key deleted or duplicated; or a few bytes of the text changed.</summary>
    static string MutateJson(string text, Random rng)
    {
        if (rng.Next(8) == 0) return System.Text.Encoding.UTF8.GetString(Mutate(System.Text.Encoding.UTF8.GetBytes(text), rng));
        var root = JsonNode.Parse(text)!;
        var all = new List<JsonNode>();
        void Walk(JsonNode n)
        {
            all.Add(n);
            if (n is JsonObject o) foreach (var (_, v) in o) { if (v is not null) Walk(v); }
            else if (n is JsonArray a) foreach (var v in a) { if (v is not null) Walk(v); }
        }
        Walk(root);
        var target = all[1 + rng.Next(all.Count - 1)];
        var parent = target.Parent!;
        JsonNode?[] replacements =
        [
            null, JsonValue.Create("17"), JsonValue.Create(long.MaxValue), JsonValue.Create(-1), JsonValue.Create(1e300), JsonValue.Create(1.5),
            JsonValue.Create((1L << 40) + 1), JsonValue.Create(true), new JsonObject(), new JsonArray(), new JsonArray(JsonValue.Create(30000), null),
            JsonValue.Create(new string('x', 5000)), JsonValue.Create(""), JsonValue.Create("../../etc/passwd"),
        ];
        int kind = rng.Next(4);
        string? key = parent is JsonObject po ? po.First(kv => ReferenceEquals(kv.Value, target)).Key : null;
        if (kind == 0 && key is not null) { ((JsonObject)parent).Remove(key); return root.ToJsonString(); }
        if (kind == 1 && key is not null)
        {
            // A duplicate key, written as text (JsonObject cannot hold one).
            string json = root.ToJsonString();
            string needle = $"\"{key}\":";
            int at = json.IndexOf(needle, StringComparison.Ordinal);
            return at < 0 ? json : json.Insert(at, $"{needle}0,");
        }
        JsonNode? replacement = kind == 2
            ? Nest(rng.Next(2) == 0 ? 10 : 200)
            : replacements[rng.Next(replacements.Length)]?.DeepClone();
        if (parent is JsonObject obj) obj[key!] = replacement;
        else if (parent is JsonArray arr) arr[arr.IndexOf(target)] = replacement;
        return root.ToJsonString(new System.Text.Json.JsonSerializerOptions { MaxDepth = 1000 });

        static JsonNode Nest(int depth) { JsonNode n = JsonValue.Create(1); for (int d = 0; d < depth; d++) n = new JsonArray(n); return n; }
    }

    static Exception Unwrap(Exception e) => e is AggregateException { InnerException: { } i } ? Unwrap(i) : e;

    /// <summary>Feeds for the model's inputs: zeros of the declared shape (symbolic dims = 1), small.</summary>
    static Dictionary<string, Value> Feeds(Model m)
    {
        var feeds = new Dictionary<string, Value>();
        foreach (var input in m.Graph.RequiredInputs)
        {
            var t = input.Type;
            if (t is null || t.Kind != TypeKind.Tensor || !DTypes.IsSupported(t.ElemType))
                throw new TapmlException($"input '{input.Name}' has a type the fuzz harness does not feed");
            long[] shape = (t.Shape ?? []).Select(d => d.Value is long v && v >= 0 ? Math.Min(v, 64) : 1).ToArray();
            if (shape.Aggregate(1L, (a, b) => a * b) > 1 << 22) throw new TapmlException("input too large for the fuzz harness");
            feeds[input.Name] = Tensor.Zeros(t.ElemType, shape);
        }
        return feeds;
    }

    /// <summary>Parses the seed and changes one thing a real broken exporter might: an attribute integer, an
    /// initializer's dims, a node's input, or an input's declared dimension.</summary>
    static byte[] MutateModel(byte[] seed, Random rng)
    {
        var m = Ir.Onnx.Proto.ModelProto.Parser.ParseFrom(seed);
        var g = m.Graph;
        long[] odd = [0, -1, -2, 1, 2, 3, 7, 64, 1 << 20, long.MaxValue, long.MinValue];
        long Pick() => odd[rng.Next(odd.Length)];
        switch (rng.Next(4))
        {
            case 0:
                var attrs = g.Node.SelectMany(n => n.Attribute).Where(a => a.Ints.Count > 0 || a.Type == Ir.Onnx.Proto.AttributeProto.Types.AttributeType.Int).ToList();
                if (attrs.Count == 0) goto case 1;
                var a = attrs[rng.Next(attrs.Count)];
                if (a.Ints.Count > 0) a.Ints[rng.Next(a.Ints.Count)] = Pick(); else a.I = Pick();
                break;
            case 1:
                if (g.Initializer.Count == 0 || g.Initializer.All(t => t.Dims.Count == 0)) goto case 2;
                var t = g.Initializer.Where(x => x.Dims.Count > 0).ElementAt(rng.Next(g.Initializer.Count(x => x.Dims.Count > 0)));
                t.Dims[rng.Next(t.Dims.Count)] = Pick();
                break;
            case 2:
                var withInputs = g.Node.Where(n => n.Input.Count > 0).ToList();
                if (withInputs.Count == 0) goto default;
                var n = withInputs[rng.Next(withInputs.Count)];
                var names = g.Input.Select(x => x.Name).Concat(g.Node.SelectMany(x => x.Output)).ToList();
                n.Input[rng.Next(n.Input.Count)] = rng.Next(5) == 0 ? "" : names[rng.Next(names.Count)];
                break;
            default:
                var dims = g.Input.Where(x => x.Type?.TensorType?.Shape != null).SelectMany(x => x.Type.TensorType.Shape.Dim).ToList();
                if (dims.Count == 0) break;
                dims[rng.Next(dims.Count)].DimValue = rng.Next(66) - 1; // -1 .. 64
                break;
        }
        return m.ToByteArray();
    }

    static byte[] Mutate(byte[] seed, Random rng)
    {
        var b = new List<byte>(seed);
        int edits = 1 + rng.Next(4);
        for (int e = 0; e < edits && b.Count > 0; e++)
        {
            int at = rng.Next(b.Count);
            switch (rng.Next(6))
            {
                case 0: b[at] ^= (byte)(1 << rng.Next(8)); break;
                case 1: b[at] = (byte)rng.Next(256); break;
                case 2: b.RemoveRange(at, Math.Min(b.Count - at, 1 + rng.Next(16))); break;
                case 3: b.InsertRange(at, Enumerable.Range(0, 1 + rng.Next(8)).Select(_ => (byte)rng.Next(256))); break;
                case 4: b.RemoveRange(at, b.Count - at); break;
                case 5: { int len = Math.Min(b.Count - at, 1 + rng.Next(32)); b.InsertRange(rng.Next(b.Count), b.GetRange(at, len)); break; }
            }
        }
        return b.ToArray();
    }
}
