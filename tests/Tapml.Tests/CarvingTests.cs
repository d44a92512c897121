using System.Diagnostics;
using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Testing;
using Tapml.Testing.Carving;
using Xunit;

namespace Tapml.Tests;

/// <summary>One carve of builtin:tiny-llama (prefill + 4 decode steps, with the ONNX-layout export) shared by the
/// carving tests.</summary>
public sealed class TinyLlamaStore : IDisposable
{
    public string Dir { get; } = Path.Combine(Path.GetTempPath(), $"tapml-carve-{Guid.NewGuid():N}");
    public string Store => Path.Combine(Dir, "store");
    public string Onnx => Path.Combine(Dir, "onnx");
    public CliRunner.Result Carve { get; }

    public TinyLlamaStore() => Carve = CliRunner.Run("carve", "--model", "builtin:tiny-llama", "--out", Store, "--input-ids", "1,17,305,42",
                                                     "--decode-steps", "4", "--export-onnx", Onnx);

    public void Dispose() { try { Directory.Delete(Dir, true); } catch (IOException) { } }
}

public class CarvingTests(TinyLlamaStore tiny) : IClassFixture<TinyLlamaStore>
{
    static string Temp() => Path.Combine(Path.GetTempPath(), $"tapml-carve-{Guid.NewGuid():N}");

    [Fact]
    public void Tiny_llama_carves_prefill_and_every_decode_step()
    {
        Assert.True(tiny.Carve.ExitCode == 0, tiny.Carve.Stdout + tiny.Carve.Stderr);
        var store = CarvedStore.Open(tiny.Store);
        Assert.NotEmpty(store.Cases);
        Assert.Equal("cpu", store.Source);
        var phases = store.Cases.Select(c => c.Provenance.Phase).ToHashSet();
        Assert.Contains("prefill", phases);
        // the default keeps the first call and a later one (2nd, 4th call): decode steps 1 and 3 for ops whose shapes
        // do not grow; attention ops see a new KV length every step, so every step appears
        foreach (int k in new[] { 1, 2, 3, 4 }) Assert.Contains($"decode:{k}", phases);
        foreach (var c in store.Cases)
        {
            Assert.StartsWith(c.OpType + "-", c.Id);
            Assert.False(string.IsNullOrEmpty(c.Provenance.Node));
            Assert.True(c.Provenance.Count >= 1);
        }
        // at most --per-signature (2) cases per signature
        Assert.All(store.Cases.GroupBy(c => c.Signature), g => Assert.InRange(g.Count(), 1, 2));
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("onnxruntime")]
    [MemberData(nameof(TestPlatforms.Gpu), MemberType = typeof(TestPlatforms))]
    [InlineData("webgpu:gles")]
    public void Carved_cases_replay_clean(string platform)
    {
        TestPlatforms.SkipIfUnavailable(platform);
        string json = Path.Combine(tiny.Dir, $"replay-{platform}.json");
        var r = CliRunner.Run("replay", tiny.Store, "--platform", platform, "--json", json);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        var d = JsonNode.Parse(File.ReadAllText(json))!;
        int n = CarvedStore.Open(tiny.Store).Cases.Count;
        Assert.Equal(n, (int)d["passed"]!);
        Assert.EndsWith($"{n} passed, 0 failed, 0 skipped", r.Stdout.TrimEnd());
    }

    [Theory]
    [InlineData("cpu")]
    [InlineData("onnxruntime")]
    [InlineData("webgpu")]
    public void Exported_onnx_layout_passes_conformance(string platform)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        var r = CliRunner.Run("conformance", tiny.Onnx, "--platform", platform);
        int n = Directory.GetDirectories(tiny.Onnx).Length;
        Assert.True(n > 0);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.EndsWith($"{n} passed, 0 failed, 0 skipped", r.Stdout.TrimEnd());
    }

    public static TheoryData<string> FaultKinds => new(Platforms.Faulty.FaultSpec.KindNames);

    [Theory]
    [MemberData(nameof(FaultKinds))]
    public void Faulty_softmax_fails_exactly_the_softmax_cases_it_changes(string kind)
    {
        var store = CarvedStore.Open(tiny.Store);
        using var p = PlatformRegistry.Create($"faulty:cpu?op=Softmax&kind={kind}");
        var replayer = new Replayer(store, p, new Tolerances());
        var failed = store.Cases.Where(c => replayer.Run(c).Status != CaseStatus.Passed).Select(c => c.Id).ToHashSet();
        // Independent of the platform: a Softmax output is positive everywhere, so every kind changes it, except a
        // transpose of matrices with a dimension of 1 (decode steps: [1, heads, 1, kv]), which moves no element.
        var expected = store.Cases.Where(c => c.OpType == "Softmax")
            .Where(c => kind != "transpose" || c.Outputs[0].Shape is var s && s.Length >= 2 && s[^1] > 1 && s[^2] > 1)
            .Select(c => c.Id).ToHashSet();
        Assert.NotEmpty(expected);
        Assert.Equal(expected.Order(), failed.Order());
    }

    [Fact]
    public void Weights_are_stored_once_and_blobs_match_the_manifest()
    {
        var store = CarvedStore.Open(tiny.Store);
        Assert.Equal(CarvedStore.FormatName, store.Format);
        var referenced = store.Cases.SelectMany(c => c.Blobs).ToHashSet();
        Assert.Equal(referenced.Order(), store.Blobs.Keys.Order());   // the index lists exactly the blobs cases name
        Assert.False(Directory.Exists(store.BlobDir));                  // v2: small blobs live in the pack
        Assert.Equal(["0.pack"], Directory.GetFiles(store.PackDir).Select(Path.GetFileName));
        // the embedding table [vocab, hidden] is one blob even though every step's Gather reads it, and it is a
        // reference to the checkpoint, not a copy
        var gathers = store.Cases.Where(c => c.OpType == "Gather" && c.Inputs[0].Shape.Length == 2 && c.Inputs[0].Shape[0] == 1024).ToList();
        Assert.True(gathers.Count >= 2);
        var blob = Assert.Single(gathers.Select(c => c.Inputs[0].Blob).Distinct());
        var w = Assert.IsType<WeightBlob>(store.Blobs[blob!]);
        Assert.Equal("model.embed_tokens.weight", w.Source.Tensor);
        Assert.EndsWith("model.safetensors", w.Source.File);
        Assert.True(Path.IsPathRooted(w.Source.File));
        // transposed projections are references too; no weight is in the pack
        Assert.Contains(store.Blobs.Values, b => b is WeightBlob { Source.Transform: "transpose" });
        Assert.Contains("before dedup", tiny.Carve.Stdout);
        Assert.Contains("of weights by reference", tiny.Carve.Stdout);
    }

    [Fact]
    public void A_corrupt_pack_is_one_clear_line_naming_the_blob_and_case()
    {
        string dir = Temp();
        try
        {
            CopyDir(tiny.Store, dir);
            var store = CarvedStore.Open(dir);
            var c = store.Cases.First(x => x.OpType == "MatMul" && store.Blobs[x.Inputs[0].Blob!] is PackedBlob);
            var at = (PackedBlob)store.Blobs[c.Inputs[0].Blob!];
            using (var f = File.Open(store.PackPath(at.Pack), FileMode.Open))
            {
                f.Position = at.Offset + at.Length - 1;
                int b = f.ReadByte();
                f.Position--;
                f.WriteByte((byte)(b ^ 0x40));
            }
            var r = CliRunner.Run("replay", dir, "--platform", "cpu", "--case", c.Id);
            AssertOneLine(r, $"blob of case {c.Id} is corrupt", c.Inputs[0].Blob!, store.PackPath(at.Pack));
        }
        finally { Directory.Delete(dir, true); }
    }

    static void AssertOneLine(CliRunner.Result r, params string[] parts)
    {
        Assert.True(r.ExitCode == 2, $"exit {r.ExitCode}: {r.Stdout}{r.Stderr}");
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        foreach (var p in parts) Assert.Contains(p, lines[0]);
    }

    [Fact]
    public void Html_report_renders_in_headless_chromium()
    {
        string chromium = new[] { "/usr/bin/chromium", "/usr/bin/chromium-browser" }.FirstOrDefault(File.Exists)
            ?? throw SkipException("chromium is not installed (scripts/setup.sh installs it)");
        string html = Path.Combine(tiny.Dir, "report.html");
        var r = CliRunner.Run("replay", tiny.Store, "--platform", "faulty:cpu?op=Softmax&kind=scale", "--html", html);
        Assert.Equal(1, r.ExitCode);
        string text = File.ReadAllText(html);
        Assert.DoesNotContain("http://", text.Replace("http://www.w3.org/2000/svg", ""));
        Assert.DoesNotContain("https://", text);
        var psi = new ProcessStartInfo(chromium) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--dump-dom", new Uri(html).AbsoluteUri }) psi.ArgumentList.Add(a);
        psi.Environment["XDG_RUNTIME_DIR"] = Directory.CreateTempSubdirectory("tapml-xdg").FullName;
        using var p = Process.Start(psi)!;
        string err = "";
        p.ErrorDataReceived += (_, a) => { if (a.Data is not null) lock (psi) err += a.Data + "\n"; };
        p.BeginErrorReadLine();
        string dom = p.StandardOutput.ReadToEnd();
        Assert.True(p.WaitForExit(60_000), "chromium did not finish in 60 s");
        int n = CarvedStore.Open(tiny.Store).Cases.Count;
        // the script ran (it writes the count) and the table has every case
        Assert.Contains($"{n} of {n} shown", dom);
        int start = dom.IndexOf("id=\"cases\"", StringComparison.Ordinal), end = dom.IndexOf("</table>", Math.Max(start, 0), StringComparison.Ordinal);
        Assert.True(start >= 0 && end > start, "no case table (id=cases) in the rendered page");
        Assert.Equal(n, dom[start..end].Split("<tr class=").Length - 1);
        p.WaitForExit();
        lock (psi) Assert.DoesNotContain("Uncaught", err);
    }

    static Exception SkipException(string why) { Assert.Skip(why); return new InvalidOperationException(); }

    [Fact]
    public void Killed_carves_leave_stores_that_load_and_replay()
    {
        var rng = new Random(5);
        using var cpu = PlatformRegistry.Create("cpu");
        int withCases = 0;
        for (int round = 0; round < 5; round++)
        {
            string dir = Temp();
            try
            {
                var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
                foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "tapml.dll"), "carve", "--model", "builtin:tiny-llama", "--out", dir,
                                          "--input-ids", "1,17,305,42", "--decode-steps", "200", "--per-signature", "3" })
                    psi.ArgumentList.Add(a);
                using var p = Process.Start(psi)!;
                // NOTE: round 0 kills at once (the store may not exist yet); later rounds wait until cases are being
                // written (start-up time varies with the machine's load), then kill at a random moment after that.
                string manifest = Path.Combine(dir, "manifest.json");
                if (round > 0)
                {
                    var wait = Stopwatch.StartNew();
                    while (!p.HasExited && wait.Elapsed < TimeSpan.FromSeconds(90) && !(File.Exists(manifest) && SafeRead(manifest).Contains("\"op_type\"")))
                        Thread.Sleep(20);
                }
                Thread.Sleep(rng.Next(0, round == 0 ? 400 : 1500));
                p.Kill(entireProcessTree: true);          // SIGKILL
                p.WaitForExit();
                if (!File.Exists(Path.Combine(dir, "manifest.json"))) continue;   // killed before the store existed
                var store = CarvedStore.Open(dir);
                if (store.Cases.Count > 0) withCases++;
                var replayer = new Replayer(store, cpu, new Tolerances());
                foreach (var c in store.Cases)
                {
                    var r = replayer.Run(c);
                    Assert.True(r.Status == CaseStatus.Passed, $"round {round}: {c.Id}: {r.Status} {r.Reason}");
                }
            }
            finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
        }
        Assert.True(withCases >= 3, $"only {withCases} of 5 kills happened after cases were written: the test did not test much");
    }

    static string SafeRead(string path)
    {
        try { return File.ReadAllText(path); }
        catch (IOException) { return ""; }
    }

    [Fact]
    public void Light_resnet50_carves_and_replays_on_cpu_and_onnxruntime()
    {
        string model = SharedData.Require("conformance", "onnx", "light", "light_resnet50.onnx");
        string dir = Temp();
        try
        {
            var c = CliRunner.Run("carve", "--model", model, "--out", dir);
            Assert.True(c.ExitCode == 0, c.Stdout + c.Stderr);
            var store = CarvedStore.Open(dir);
            Assert.Contains(store.Cases, x => x.OpType == "Conv");
            Assert.All(store.Cases, x => Assert.Equal("run", x.Provenance.Phase));
            foreach (var platform in new[] { "cpu", "onnxruntime" })
            {
                var r = CliRunner.Run("replay", dir, "--platform", platform);
                Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
                Assert.EndsWith($"{store.Cases.Count} passed, 0 failed, 0 skipped", r.Stdout.TrimEnd());
            }
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Pytorch_exported_llama_onnx_carves_with_its_own_inputs()
    {
        string caseDir = SharedData.Require("conformance", "hf-onnx", "test_hf_llama");
        string dir = Temp();
        try
        {
            var c = CliRunner.Run("carve", "--model", caseDir, "--inputs", Path.Combine(caseDir, "test_data_set_0"), "--out", dir, "--per-signature", "1");
            Assert.True(c.ExitCode == 0, c.Stdout + c.Stderr);
            var store = CarvedStore.Open(dir);
            Assert.Contains(store.Cases, x => x.OpType == "MatMul");
            Assert.All(store.Cases.GroupBy(x => x.Signature), g => Assert.Single(g));
            foreach (var platform in new[] { "cpu", "onnxruntime" })
            {
                var r = CliRunner.Run("replay", dir, "--platform", platform);
                Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
            }
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Max_bytes_caps_the_store_and_says_so()
    {
        string dir = Temp();
        try
        {
            var c = CliRunner.Run("carve", "--model", "builtin:tiny-llama", "--out", dir, "--input-ids", "1,2,3", "--decode-steps", "1", "--max-bytes", "200000");
            Assert.True(c.ExitCode == 0, c.Stdout + c.Stderr);
            var store = CarvedStore.Open(dir);
            Assert.True(store.Notes["capped"] is not null, "the manifest notes the cap");
            Assert.Contains("--max-bytes 200000 reached", c.Stdout);
            long bytes = Directory.GetFiles(store.PackDir).Sum(f => new FileInfo(f).Length);
            Assert.True(bytes <= 200000 + 64 * 1024, $"{bytes} blob bytes");   // headers are not counted in the cap
            Assert.NotEmpty(store.Cases);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("replay", "/nonexistent/store", "--platform", "cpu", "carved store '/nonexistent/store' not found")]
    [InlineData("replay", "tests", "--platform", "cpu", "is not a carved store (no manifest.json)")]
    [InlineData("carve", "--model", "builtin:tiny-llama", "--out", "--decode-steps=-1", "--decode-steps must not be negative")]
    public void Bad_input_is_one_clear_line(params string[] args)
    {
        var argv = args[..^1];
        if (argv.Contains("--out")) argv = argv.Select(a => a == "--out" ? "--out=" + Temp() : a).ToArray();
        var r = CliRunner.Run(argv);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains(args[^1], r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void Carving_into_an_existing_store_is_refused()
    {
        var r = CliRunner.Run("carve", "--model", "builtin:tiny-llama", "--out", tiny.Store, "--input-ids", "1");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("already holds a carved store", r.Stderr);
    }

    [Fact]
    public void The_nodes_of_a_Scan_body_are_carved_with_their_outer_values_and_replay()
    {
        string d = SharedData.Require("conformance", "onnx", "node", "test_scan_sum");
        string store = Path.Combine(Path.GetTempPath(), $"tapml-scan-{Guid.NewGuid():N}");
        var r = CliRunner.Run("carve", "--model", Path.Combine(d, "model.onnx"), "--inputs", Path.Combine(d, "test_data_set_0"), "--out", store);
        Assert.True(r.ExitCode == 0, r.Stderr);
        var cases = CarvedStore.Open(store).Cases;
        Assert.Contains(cases, c => c.OpType == "Add" && c.Provenance.Count == 3);   // the body's Add, once per iteration
        Assert.DoesNotContain(cases, c => c.OpType == "Scan");
        var replay = CliRunner.Run("replay", store, "--platform", "onnxruntime");
        Assert.True(replay.ExitCode == 0, replay.Stdout + replay.Stderr);
        Directory.Delete(store, true);
    }

    static Node N(string op, params (string, Attr)[] attrs) => new() { Name = "n", OpType = op, Inputs = ["a", "b"], Outputs = ["y"], Attributes = attrs.ToDictionary(x => x.Item1, x => x.Item2) };

    [Fact]
    public void Tolerances_pick_a_rule_per_op_family_count_terms_and_take_overrides()
    {
        Assert.Equal(64, Tolerances.ReducedLength(N("MatMul"), [[1, 4, 64], [64, 32]], [[1, 4, 32]]));
        Assert.Equal(16, Tolerances.ReducedLength(N("Gemm", ("transA", Attr.Of(1L))), [[16, 8], [16, 4]], [[8, 4]]));
        Assert.Equal(3 * 7 * 7, Tolerances.ReducedLength(N("Conv"), [[1, 3, 224, 224], [64, 3, 7, 7]], [[1, 64, 112, 112]]));
        Assert.Equal(8 * 3 * 3, Tolerances.ReducedLength(N("Conv", ("group", Attr.Of(4L))), [[1, 32, 9, 9], [16, 8, 3, 3]], [[1, 16, 7, 7]]));
        Assert.Equal(16 * 4 * 4, Tolerances.ReducedLength(N("ConvTranspose", ("group", Attr.Of(2L))), [[1, 32, 9, 9], [32, 5, 4, 4]], [[1, 10, 20, 20]]));
        Assert.Equal(10, Tolerances.ReducedLength(N("ReduceMean"), [[2, 10]], [[2, 1]]));
        Assert.Equal(1, Tolerances.ReducedLength(N("Add"), [[2, 10], [10]], [[2, 10]]));
        Assert.Equal(7, Tolerances.ReducedLength(N("Einsum", ("equation", Attr.Of("bij,bjk->bik"))), [[5, 3, 7], [5, 7, 2]], [[5, 3, 2]]));
        Assert.Equal(7 * 3, Tolerances.ReducedLength(N("Einsum", ("equation", Attr.Of("...ij,...ij"))), [[5, 3, 7], [5, 3, 7]], [[5]]));
        var t = new Tolerances();
        var mm = t.For(N("MatMul"), [[1, 4, 64], [64, 32]], [[1, 4, 32]], DType.Float32);
        Assert.Equal(ToleranceRule.Accumulation, mm.Rule);
        Assert.Equal(Math.Pow(2, -23) * 66, mm.MagnitudeScale, 15);
        Assert.Equal(ToleranceRule.Nmse, t.For(N("Softmax"), [[2, 128]], [[2, 128]], DType.Float32).Rule);
        Assert.Equal(1e-7, t.For(N("LayerNormalization"), [[2, 128]], [[2, 128]], DType.Float32).MaxNmse);
        var add = t.For(N("Add"), [[2, 10], [10]], [[2, 10]], DType.Float16);
        Assert.Equal((ToleranceRule.Elementwise, 1e-2), (add.Rule, add.Rtol));
        t.AddOverride("Softmax=1e-3,1e-6");
        Assert.Equal(new Tolerance(1e-3, 1e-6), t.For(N("Softmax"), [[2, 128]], [[2, 128]], DType.Float32));
        Assert.Throws<TapmlException>(() => t.AddOverride("Softmax=abc"));
        Assert.Equal(new Tolerance(0.5, 0.25), new Tolerances { Rtol = 0.5, Atol = 0.25 }.For(N("MatMul"), [[1, 1024], [1024, 1]], [[1, 1]], DType.Float32));
    }

    static void CopyDir(string from, string to)
    {
        foreach (var d in Directory.GetDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(from, to));
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to));
    }
}
