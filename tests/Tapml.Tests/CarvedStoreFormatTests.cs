using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir.Safetensors;
using Tapml.Models;
using Tapml.Testing.Carving;
using Xunit;

namespace Tapml.Tests;

/// <summary>The carved store's format (docs/carving.md "Store format"): v3 packs and weight references, v2 and v1 still
/// read, and every way a store's bytes can go bad is one clear line with exit 2.</summary>
public class CarvedStoreFormatTests
{
    static string Temp() => Path.Combine(Path.GetTempPath(), $"tapml-store-{Guid.NewGuid():N}");

    /// <summary>A private copy of tiny-llama's checkpoint (the tests move and damage it) and a carve of it.</summary>
    static (string Root, string Model, string Store) CarveCopy(params string[] extra)
    {
        string root = Temp(), model = Path.Combine(root, "tiny-llama"), store = Path.Combine(root, "store");
        Directory.CreateDirectory(model);
        foreach (var f in Directory.GetFiles(TinyCheckpoint.Materialize("llama"))) File.Copy(f, Path.Combine(model, Path.GetFileName(f)));
        var r = CliRunner.Run(["carve", "--model", model, "--out", store, "--input-ids", "1,17,305", "--decode-steps", "1", .. extra]);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        return (root, model, store);
    }

    static void AssertOneLine(CliRunner.Result r, params string[] parts)
    {
        Assert.True(r.ExitCode == 2, $"exit {r.ExitCode}: {r.Stdout}{r.Stderr}");
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        foreach (var p in parts) Assert.Contains(p, lines[0]);
    }

    static void AssertReplaysClean(string store)
    {
        var r = CliRunner.Run("replay", store, "--platform", "cpu");
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        Assert.EndsWith($"{CarvedStore.Open(store).Cases.Count} passed, 0 failed, 0 skipped", r.Stdout.TrimEnd());
    }

    [Fact]
    public void A_v3_store_round_trips_every_dtype_through_the_pack()
    {
        string dir = Temp();
        try
        {
            var store = CarvedStore.Create(dir, "m", "", "cpu");
            Tensor[] tensors =
            [
                Tensor.FromArray(new[] { 1f, -2.5f, float.NaN, 4f }, 2, 2),
                Tensor.FromArray(new[] { 3L, -7L }, 2),
                Tensor.FromArray(new[] { true, false, true }, 3),
                Tensor.FromArray(new[] { (Half)1.5, (Half)(-0.25) }, 2),
                Tensor.Zeros(DType.Float32, 0, 3),
            ];
            var shas = tensors.Select(t => store.Put(t, out _)).ToList();
            Assert.Equal(shas[0], store.Put(tensors[0].Clone(), out long again));   // content-addressed: stored once
            Assert.Equal(0, again);
            var refs = tensors.Select((t, i) => new TensorRef($"input_{i}", t.DType, t.Shape, shas[i])).ToList();
            store.Cases.Add(new CarvedCase { Id = "Identity-0", OpType = "Identity", Opset = 17, Inputs = refs, Outputs = refs, Provenance = new("n", "run", 1), Signature = "s" });
            store.SaveManifest();
            var back = CarvedStore.Open(dir);
            Assert.Equal(CarvedStore.FormatName, back.Format);
            for (int i = 0; i < tensors.Length; i++)
            {
                var t = back.Read(shas[i], "Identity-0");
                Assert.Equal(tensors[i].DType, t.DType);
                Assert.Equal(tensors[i].Shape, t.Shape);
                Assert.True(tensors[i].Bytes().SequenceEqual(t.Bytes()));
                Assert.IsType<PackedBlob>(back.Blobs[shas[i]]);
            }
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>Blobs larger than a staging chunk, blobs across chunk boundaries and manifests between them (each
    /// hands a partial chunk to the writer) come back bit-exact, and the pack ends where its last blob does; on a
    /// file system without direct I/O (tmpfs) too.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Blobs_across_staging_chunks_and_manifests_round_trip(bool tmpfs)
    {
        if (tmpfs && !Directory.Exists("/dev/shm")) Assert.Skip("no /dev/shm (tmpfs) on this machine");
        string dir = tmpfs ? Path.Combine("/dev/shm", $"tapml-store-{Guid.NewGuid():N}") : Temp();
        try
        {
            var store = CarvedStore.Create(dir, "m", "", "cpu");
            var rng = new Random(7);
            var tensors = new List<Tensor>();
            var names = new List<string>();
            long expectedEnd = 0;
            foreach (int n in new[] { 3, 1_500_000, 11, 700_001, 5, 2_000_000, 1, 4093 })
            {
                var data = new float[n];
                for (int i = 0; i < n; i++) data[i] = (float)rng.NextDouble();
                var t = Tensor.FromArray(data, n);
                names.Add(store.Put(t, out long written));
                tensors.Add(t);
                expectedEnd += written;
                var refs = names.Select((b, i) => new TensorRef($"input_{i}", DType.Float32, tensors[i].Shape, b)).ToList();
                store.Cases.Clear();
                store.Cases.Add(new CarvedCase { Id = "Identity-0", OpType = "Identity", Opset = 17, Inputs = refs, Outputs = refs, Provenance = new("n", "run", 1), Signature = "s" });
                store.SaveManifest();
                var partial = CarvedStore.Open(dir);                       // every manifest names only written bytes
                for (int i = 0; i < names.Count; i++) Assert.True(tensors[i].Bytes().SequenceEqual(partial.Read(names[i], "Identity-0").Bytes()));
            }
            store.Close();
            Assert.Equal(expectedEnd, new FileInfo(store.PackPath(0)).Length);
            var back = CarvedStore.Open(dir);
            for (int i = 0; i < names.Count; i++)
            {
                Assert.Matches("^[0-9a-f]{32}$", names[i]);
                Assert.True(tensors[i].Bytes().SequenceEqual(back.Read(names[i], "Identity-0").Bytes()));
            }
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>Manifests written mid-carve and at the end: the last one on disk says exactly what the cases in
    /// memory say, call counts included.</summary>
    [Fact]
    public void The_final_manifest_equals_the_cases_with_their_final_counts()
    {
        string dir = Temp();
        try
        {
            var llama = HfModels.Load(TinyCheckpoint.Materialize("llama"));
            var store = CarvedStore.Create(dir, "tiny-llama", "", "cpu");
            using var cpu = Tapml.Platforms.PlatformRegistry.Create("cpu");
            var exec = new Tapml.Platforms.Execution.Executor(cpu);
            var rec = new Recorder(store, new CarveOptions()) { PhaseOf = r => r == 0 ? "prefill" : $"decode:{r}" };
            exec.Observers.Add(rec);
            Generation.Greedy(exec, llama, [1, 17, 305, 42], 5);
            rec.Flush();                                                    // a manifest mid-carve renders every case so far
            Generation.Greedy(exec, llama, [1, 17, 305, 42], 5);
            rec.Dispose();
            Assert.Contains(store.Cases, c => c.Provenance.Count > 2);      // counts grew after the cases were rendered
            var onDisk = CarvedStore.Open(dir).Cases;
            Assert.Equal(store.Cases.Count, onDisk.Count);
            for (int i = 0; i < onDisk.Count; i++)
                Assert.True(JsonNode.DeepEquals(store.Cases[i].ToJson(), onDisk[i].ToJson()), $"case {i}: {store.Cases[i].ToJson()} vs {onDisk[i].ToJson()}");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Uniform_tensors_are_splat_entries_with_no_bytes_and_round_trip_bit_exact()
    {
        string dir = Temp();
        try
        {
            var store = CarvedStore.Create(dir, "m", "", "cpu");
            float nan = BitConverter.Int32BitsToSingle(0x7fc01234);   // a NaN with a payload: bits, not values
            Tensor[] splats =
            [
                Tensor.FromArray(Enumerable.Repeat(1f, 6).ToArray(), 2, 3),
                Tensor.FromArray(Enumerable.Repeat(nan, 4).ToArray(), 4),
                Tensor.Zeros(DType.Int64, 1, 2, 5, 4),
                Tensor.FromArray(new[] { true, true, true }, 3),
                Tensor.FromArray(Enumerable.Repeat((Half)(-0.5), 7).ToArray(), 7),
                Tensor.FromArray(Enumerable.Repeat((byte)9, 33).ToArray(), 33),
                Tensor.Scalar(42),
            ];
            var shas = splats.Select(t => { string sha = store.Put(t, out long w); Assert.Equal(0, w); return sha; }).ToList();
            Assert.Equal(shas.Count, shas.Distinct().Count());
            Assert.Equal(shas[0], store.Put(Tensor.FromArray(Enumerable.Repeat(1f, 6).ToArray(), 2, 3), out _));
            Assert.NotEqual(shas[0], store.Put(Tensor.FromArray(Enumerable.Repeat(1f, 6).ToArray(), 3, 2), out _));   // the shape is part of the name
            var ramp = Tensor.FromArray(new[] { 1f, 1f, 1f, 2f }, 4);                                             // differs only at the end
            string rampSha = store.Put(ramp, out long rampBytes);
            Assert.True(rampBytes > 0);
            var all = splats.Append(ramp).ToArray();
            var ids = shas.Append(rampSha).ToArray();
            var refs = all.Select((t, i) => new TensorRef($"input_{i}", t.DType, t.Shape, ids[i])).ToList();
            store.Cases.Add(new CarvedCase { Id = "Identity-0", OpType = "Identity", Opset = 17, Inputs = refs, Outputs = refs, Provenance = new("n", "run", 1), Signature = "s" });
            store.Close();
            var manifest = JsonNode.Parse(File.ReadAllText(store.ManifestPath))!["blobs"]!;
            Assert.Equal("0000803f", manifest[shas[0]]!["splat"]!.GetValue<string>());
            var back = CarvedStore.Open(dir);
            back.Verify(back.Cases);
            for (int i = 0; i < all.Length; i++)
            {
                var t = back.Read(ids[i], "Identity-0");
                Assert.Equal(all[i].DType, t.DType);
                Assert.Equal(all[i].Shape, t.Shape);
                Assert.True(all[i].Bytes().SequenceEqual(t.Bytes()), $"tensor {i}");
                if (i < splats.Length) Assert.IsType<SplatBlob>(back.Blobs[ids[i]]);
                else Assert.IsType<PackedBlob>(back.Blobs[ids[i]]);
            }
            Assert.Equal(rampBytes, back.ReferencedBlobBytes());
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void A_carve_stores_constant_fills_as_splats_and_replays_them()
    {
        var (root, _, store) = CarveCopy("--embed-weights");
        try
        {
            var s = CarvedStore.Open(store);
            Assert.Contains(s.Blobs.Values, b => b is SplatBlob);
            AssertReplaysClean(store);
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void A_corrupt_splat_entry_is_one_clear_line()
    {
        var (root, _, store) = CarveCopy();
        try
        {
            string path = Path.Combine(store, "manifest.json");
            var manifest = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            var (sha, entry) = manifest["blobs"]!.AsObject().First(kv => kv.Value!["splat"] is not null && kv.Value!["dtype"]!.GetValue<string>() != "bool");
            string value = entry!["splat"]!.GetValue<string>();
            entry["splat"] = (value[0] == '0' ? "1" : "0") + value[1..];     // still well-formed, another value
            File.WriteAllText(path, manifest.ToJsonString());
            var s = CarvedStore.Open(store);
            var victim = s.Cases.First(c => c.Blobs.Contains(sha));
            AssertOneLine(CliRunner.Run("replay", store, "--platform", "cpu"), store, "splat", sha[..16], "corrupt", $"case {victim.Id}");
            entry["splat"] = "zz";                                             // malformed: refused when the store opens
            File.WriteAllText(path, manifest.ToJsonString());
            AssertOneLine(CliRunner.Run("replay", store, "--platform", "cpu"), store, sha, "splat");
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void The_hand_written_blob_header_equals_the_safetensors_writers()
    {
        Tensor[] ts =
        [
            Tensor.Scalar(1f), Tensor.Zeros(DType.Float32, 0, 3), Tensor.Zeros(DType.BFloat16, 1, 7), Tensor.Zeros(DType.Bool, 5),
            Tensor.Zeros(DType.Int64, 1, 2, 3, 4, 5, 6), Tensor.Zeros(DType.UInt8, 1234567), Tensor.Zeros(DType.Float16, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1),
        ];
        foreach (var t in ts)
            Assert.Equal(SafetensorsWriter.Header([new("tensor", t)]), CarvedStore.BlobHeader(t));
    }

    [Fact]
    public void A_v1_store_still_loads_and_replays()
    {
        var (root, _, store) = CarveCopy();
        try
        {
            // the v1 layout written by the v1 carver: one blobs/<sha256>.safetensors per blob, weights copied, no index
            string v1 = Path.Combine(root, "v1");
            var s = CarvedStore.Open(store);
            Directory.CreateDirectory(Path.Combine(v1, "blobs"));
            string text = File.ReadAllText(s.ManifestPath);
            foreach (var c in s.Cases)
                foreach (var name in c.Blobs)
                {
                    // v1 had no splats and named every blob by the SHA-256 of its bytes
                    var t = s.Read(name, c.Id);
                    string sha = CarvedStore.BlobSha(t);
                    text = text.Replace(name, sha);
                    string path = Path.Combine(v1, "blobs", sha + ".safetensors");
                    if (!File.Exists(path)) SafetensorsWriter.Write(path, [new("tensor", t)]);
                }
            var manifest = JsonNode.Parse(text)!.AsObject();
            manifest["format"] = CarvedStore.FormatV1;
            manifest.Remove("blobs");
            File.WriteAllText(Path.Combine(v1, "manifest.json"), manifest.ToJsonString());
            var opened = CarvedStore.Open(v1);
            Assert.Equal(CarvedStore.FormatV1, opened.Format);
            Assert.All(opened.Blobs.Values, b => Assert.IsType<FileBlob>(b));
            AssertReplaysClean(v1);
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void A_v2_store_with_sha256_names_still_loads_and_replays()
    {
        var (root, _, store) = CarveCopy();
        try
        {
            // v2: the same pack and entries, every name a SHA-256 (splats: of their description), weights without "sha256"
            string v2 = Path.Combine(root, "v2");
            var s = CarvedStore.Open(store);
            Assert.Equal(CarvedStore.FormatName, s.Format);
            var manifest = JsonNode.Parse(File.ReadAllText(s.ManifestPath))!.AsObject();
            var renamed = new Dictionary<string, string>();
            var blobs = new JsonObject();
            foreach (var (name, entry) in manifest["blobs"]!.AsObject().ToList())
            {
                Assert.Matches("^[0-9a-f]{32}$", name);
                var loc = s.Blobs[name];
                string sha = loc is SplatBlob z ? CarvedStore.SplatName(z.DType, z.Shape, z.Value, sha256: true) : CarvedStore.BlobSha(s.Read(name, "v2"));
                if (loc is WeightBlob w) Assert.Equal(w.Sha256, sha);
                var e = entry!.DeepClone().AsObject();
                e.Remove("sha256");
                blobs[sha] = e;
                renamed[name] = sha;
            }
            manifest["blobs"] = blobs;
            manifest["format"] = CarvedStore.FormatV2;
            string text = manifest.ToJsonString();
            foreach (var (name, sha) in renamed) text = text.Replace($"\"{name}\"", $"\"{sha}\"");
            Directory.CreateDirectory(Path.Combine(v2, "packs"));
            File.Copy(s.PackPath(0), Path.Combine(v2, "packs", "0.pack"));
            File.WriteAllText(Path.Combine(v2, "manifest.json"), text);
            var opened = CarvedStore.Open(v2);
            Assert.Equal(CarvedStore.FormatV2, opened.Format);
            Assert.All(opened.Blobs.Keys, k => Assert.Equal(64, k.Length));
            AssertReplaysClean(v2);
            // a flipped byte is still caught by the v2 names
            var bytes = File.ReadAllBytes(opened.PackPath(0));
            var victim = opened.Blobs.First(b => b.Value is PackedBlob);
            bytes[((PackedBlob)victim.Value).Offset + ((PackedBlob)victim.Value).Length - 1] ^= 1;
            File.WriteAllBytes(opened.PackPath(0), bytes);
            AssertOneLine(CliRunner.Run("replay", v2, "--platform", "cpu"), "corrupt", "SHA-256", victim.Key);
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void Weights_are_read_from_the_model_file_by_reference()
    {
        var (root, model, store) = CarveCopy();
        try
        {
            var s = CarvedStore.Open(store);
            var weights = s.Blobs.Values.OfType<WeightBlob>().ToList();
            Assert.NotEmpty(weights);
            Assert.All(weights, w => Assert.Equal(Path.GetFullPath(Path.Combine(model, "model.safetensors")), w.Source.File));
            Assert.Equal(0, new FileInfo(s.PackPath(0)).Length / (1 << 20));   // the weights (≈1 MiB) were not copied
            AssertReplaysClean(store);
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void A_moved_model_file_is_one_clear_line_naming_store_case_file_and_tensor()
    {
        var (root, model, store) = CarveCopy();
        try
        {
            string file = Path.GetFullPath(Path.Combine(model, "model.safetensors"));
            Directory.Move(model, model + "-moved");
            var r = CliRunner.Run("replay", store, "--platform", "cpu");
            var s = CarvedStore.Open(store);
            var first = s.Cases.First(c => c.Blobs.Any(b => s.Blobs[b] is WeightBlob));
            var tensor = ((WeightBlob)s.Blobs[first.Blobs.First(b => s.Blobs[b] is WeightBlob)]).Source.Tensor;
            AssertOneLine(r, store, $"case {first.Id}", file, $"'{tensor}'", "missing", "--embed-weights");
            Assert.True(File.Exists(s.ManifestPath));                         // nothing lost
        }
        finally { Directory.Delete(root, true); }
    }

    /// <summary>A manifest names its model files itself: a pipe in the model's place, a relative path or a file that
    /// is no model are one line each, at once (a pipe used to block the replay forever).</summary>
    [Theory]
    [InlineData("fifo", "not a regular file with data")]
    [InlineData("relative", "must name an absolute path")]
    [InlineData("passwd", "must name an absolute path to a .safetensors or .onnx file")]
    public void A_weight_reference_to_a_pipe_or_a_non_model_path_is_one_clear_line(string kind, string message)
    {
        var (root, model, store) = CarveCopy();
        try
        {
            string file = Path.GetFullPath(Path.Combine(model, "model.safetensors"));
            if (kind == "fifo")
            {
                File.Delete(file);
                using var mk = System.Diagnostics.Process.Start("mkfifo", [file]);
                mk.WaitForExit();
            }
            else
            {
                string manifest = Path.Combine(store, "manifest.json");
                string to = kind == "relative" ? "../model/model.safetensors" : "/etc/passwd";
                File.WriteAllText(manifest, File.ReadAllText(manifest).Replace(System.Text.Json.JsonEncodedText.Encode(file).ToString(), to));
            }
            var r = CliRunner.Run("replay", store, "--platform", "cpu");
            AssertOneLine(r, store, message);
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void A_changed_weight_is_one_clear_line_naming_its_hash()
    {
        var (root, model, store) = CarveCopy();
        try
        {
            string file = Path.Combine(model, "model.safetensors");
            string tensor = CarvedStore.Open(store).Blobs.Values.OfType<WeightBlob>().First().Source.Tensor;
            SafetensorsEntry e;
            using (var st = SafetensorsFile.Open(file)) e = st.Entries[tensor];
            var bytes = File.ReadAllBytes(file);
            long dataStart = 8 + BitConverter.ToInt64(bytes.AsSpan(0, 8));
            bytes[dataStart + e.Begin + 1] ^= 0x10;
            File.WriteAllBytes(file, bytes);
            var r = CliRunner.Run("replay", store, "--platform", "cpu");
            AssertOneLine(r, store, $"'{tensor}'", Path.GetFullPath(file), "changed since the carve", "SHA-256");
        }
        finally { Directory.Delete(root, true); }
    }

    [Fact]
    public void An_embedded_weights_store_replays_without_the_model()
    {
        var (root, model, store) = CarveCopy("--embed-weights");
        try
        {
            Directory.Delete(model, true);
            var s = CarvedStore.Open(store);
            Assert.DoesNotContain(s.Blobs.Values, b => b is WeightBlob);
            Assert.Contains("embed-weights", s.Notes["carve"]!.GetValue<string>());
            AssertReplaysClean(store);
        }
        finally { Directory.Delete(root, true); }
    }
}
