using System.Text;
using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir.Safetensors;
using Tapml.Models;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Xunit;

namespace Tapml.Tests;

/// <summary>Hostile Hugging Face folders (checkpoint index, config.json, safetensors, tokenizers): through the real
/// CLI each class ends in exit 2 and one line naming the file, in bounded time and memory, with nothing outside the
/// folder opened; seeded mutations of every format end in success or a <see cref="TapmlException"/>, never another
/// exception, a hang or a blow-up.</summary>
public class HostileHfTests : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("tapml-hostile-").FullName;
    public void Dispose() => Directory.Delete(_root, true);

    static readonly TimeSpan CliLimit = TimeSpan.FromSeconds(30);
    const long MemoryLimit = 1200L << 20;

    /// <summary>A copy of builtin:tiny-ARCH (real files, no links) in a fresh folder under the test's root.</summary>
    string Model(string arch = "llama", string name = "model")
    {
        string src = TinyCheckpoint.Materialize(arch), dir = Path.Combine(_root, name);
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        return dir;
    }

    static void RequireTokenizer(string dir)
    {
        if (!File.Exists(Path.Combine(dir, "tokenizer.json")) && !File.Exists(Path.Combine(dir, "encoder.json")))
            Assert.Skip($"the tiny checkpoint has no tokenizer: {TinyTokenizer.NotInstalled}");
    }

    static void EditJson(string path, Action<JsonObject> edit)
    {
        var o = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        edit(o);
        File.WriteAllText(path, o.ToJsonString());
    }

    static void Index(string dir, string embedShard)
    {
        var ck = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors"));
        var map = new JsonObject();
        foreach (var name in ck.Entries.Keys) map[name] = name == "model.embed_tokens.weight" ? embedShard : "model.safetensors";
        ck.Dispose();
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), new JsonObject { ["weight_map"] = map }.ToJsonString());
    }

    static void Fifo(string path)
    {
        File.Delete(path);
        var p = System.Diagnostics.Process.Start("mkfifo", [path])!;
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
    }

    /// <summary>Rewrites model.safetensors with its JSON header edited (the length prefix follows the new header).</summary>
    static void EditHeader(string dir, Func<byte[], byte[]> edit)
    {
        string path = Path.Combine(dir, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        long n = BitConverter.ToInt64(bytes, 0);
        var header = edit(bytes[8..(int)(8 + n)]);
        using var fs = File.Create(path);
        fs.Write(BitConverter.GetBytes((long)header.Length));
        fs.Write(header);
        fs.Write(bytes.AsSpan((int)(8 + n)));
    }

    static byte[] EditHeaderJson(byte[] header, Action<JsonObject> edit)
    {
        var o = JsonNode.Parse(header)!.AsObject();
        edit(o);
        // NOTE: real headers are padded with spaces to 8 bytes; data offsets are relative to the header's end, so any length works.
        return Encoding.UTF8.GetBytes(o.ToJsonString());
    }

    /// <summary>Hostile cases: (name, what to break, the file the line must name, words it must contain). The name
    /// says the class: contain (paths leading out), fifo (blocking files), bomb (sizes), hang, number, type, header.</summary>
    public static TheoryData<string> Cases() =>
    [
        "contain-index-dotdot", "contain-index-absolute", "contain-index-symlink", "contain-index-nul", "contain-config-symlink",
        "contain-tokenizer-symlink", "fifo-config", "fifo-tokenizer", "fifo-shard", "fifo-index",
        "bomb-num_hidden_layers", "bomb-vocab_size", "bomb-hidden_size", "bomb-header-length",
        "hang-empty-added-token", "hang-null-added-token", "hang-backtracking-regex",
        "number-rope_theta-0", "number-rms_norm_eps-negative", "number-num_attention_heads-0", "number-rope_theta-inf",
        "number-partial_rotary_factor-2", "number-rope_scaling-factor-nan-literal", "number-vocab-id-huge", "number-tokenizer-id-past-vocab_size",
        "type-hidden_size-string", "type-eos_token_id-null-entry", "type-architectures-number", "type-rope_scaling-string",
        "type-vocab-id-string", "type-merge-numbers", "type-merge-unknown-token", "type-config-duplicate-key",
        "header-invalid-utf8", "header-overlap", "header-offsets-past-end", "header-dtype-shape-mismatch", "header-null-in-shape",
    ];

    /// <summary>Breaks <paramref name="dir"/> as case <paramref name="name"/> says; returns the file the error must
    /// name, the words it must contain and the prompt to give.</summary>
    (string File, string[] Words, string Prompt) Break(string name, string dir)
    {
        string canary = Path.Combine(_root, "canary.safetensors");
        File.Copy(Path.Combine(dir, "model.safetensors"), canary, true);
        string config = Path.Combine(dir, "config.json"), tokenizer = Path.Combine(dir, "tokenizer.json");
        const string hello = "hello world";
        void Config(string key, JsonNode? value) => EditJson(config, o => o[key] = value);
        void Tok(Action<JsonObject> edit) => EditJson(tokenizer, edit);
        switch (name)
        {
            case "contain-index-dotdot": Index(dir, "../canary.safetensors"); return ("model.safetensors.index.json", ["leads outside"], hello);
            case "contain-index-absolute": Index(dir, canary); return ("model.safetensors.index.json", ["relative path"], hello);
            case "contain-index-symlink":
                File.CreateSymbolicLink(Path.Combine(dir, "shard.safetensors"), canary);
                Index(dir, "shard.safetensors");
                return ("model.safetensors.index.json", ["link", "outside"], hello);
            case "contain-index-nul": Index(dir, "model\0.safetensors"); return ("model.safetensors.index.json", ["NUL"], hello);
            case "contain-config-symlink":
                File.Move(config, Path.Combine(_root, "canary-config.json"));
                File.CreateSymbolicLink(config, Path.Combine(_root, "canary-config.json"));
                return ("config.json", ["link", "outside"], hello);
            case "contain-tokenizer-symlink":
                File.Move(tokenizer, Path.Combine(_root, "canary-tokenizer.json"));
                File.CreateSymbolicLink(tokenizer, Path.Combine(_root, "canary-tokenizer.json"));
                return ("tokenizer.json", ["link", "outside"], hello);
            case "fifo-config": Fifo(config); return ("config.json", ["not a regular file"], hello);
            case "fifo-tokenizer": Fifo(tokenizer); return ("tokenizer.json", ["not a regular file"], hello);
            case "fifo-shard": Fifo(Path.Combine(dir, "shard.safetensors")); Index(dir, "shard.safetensors"); return ("model.safetensors.index.json", ["not a regular file"], hello);
            case "fifo-index": Fifo(Path.Combine(dir, "model.safetensors.index.json")); return ("model.safetensors.index.json", ["not a regular file"], hello);
            case "bomb-num_hidden_layers": Config("num_hidden_layers", 1_000_000); return ("config.json", ["num_hidden_layers", "1000000", "2 layer"], hello);
            case "bomb-vocab_size": Config("vocab_size", 2_000_000_000); return ("config.json", ["vocab_size", "2000000000"], hello);
            case "bomb-hidden_size": Config("hidden_size", 1_000_000_000); return ("config.json", ["hidden_size", "1000000000"], hello);
            case "bomb-header-length":
                using (var fs = File.OpenWrite(Path.Combine(dir, "model.safetensors"))) fs.Write(BitConverter.GetBytes(1L << 40));
                return ("model.safetensors", ["header length"], hello);
            case "hang-empty-added-token": Tok(o => o["added_tokens"]![0]!["content"] = ""); return ("tokenizer.json", ["added_tokens[0].content"], hello);
            case "hang-null-added-token": Tok(o => o["added_tokens"]![0]!["content"] = null); return ("tokenizer.json", ["added_tokens[0].content"], hello);
            case "hang-backtracking-regex":
                Tok(o => o["pre_tokenizer"]!["pretokenizers"]![0]!["pattern"]!["Regex"] = "(a|aa)+$");
                return ("tokenizer.json", ["pre_tokenizer pattern", "timed out"], new string('a', 64) + "!");
            case "number-rope_theta-0": Config("rope_theta", 0); return ("config.json", ["rope_theta", "positive"], hello);
            case "number-rms_norm_eps-negative": Config("rms_norm_eps", -1); return ("config.json", ["rms_norm_eps", "positive"], hello);
            case "number-num_attention_heads-0": Config("num_attention_heads", 0); return ("config.json", ["num_attention_heads", "positive integer"], hello);
            case "number-rope_theta-inf": File.WriteAllText(config, File.ReadAllText(config).Replace("\"rope_theta\": 10000", "\"rope_theta\": 1e400")); return ("config.json", ["rope_theta"], hello);
            case "number-partial_rotary_factor-2": Config("partial_rotary_factor", 2); return ("config.json", ["partial_rotary_factor"], hello);
            case "number-rope_scaling-factor-nan-literal": File.WriteAllText(config, File.ReadAllText(config).TrimEnd().TrimEnd('}') + ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": NaN}}"); return ("config.json", ["not valid JSON"], hello);
            case "number-vocab-id-huge": Tok(o => o["model"]!["vocab"]!["a"] = 2_000_000_000); return ("tokenizer.json", ["model.vocab['a']"], hello);
            case "number-tokenizer-id-past-vocab_size": Tok(o => o["model"]!["vocab"]!["h"] = 100_000); return ("config.json", ["vocab_size", "100000", "tokenizer.json"], "h");
            case "type-hidden_size-string": Config("hidden_size", "64"); return ("config.json", ["hidden_size"], hello);
            case "type-eos_token_id-null-entry": Config("eos_token_id", new JsonArray(1, null)); return ("config.json", ["eos_token_id"], hello);
            case "type-architectures-number": Config("architectures", new JsonArray(1)); return ("config.json", ["architectures"], hello);
            case "type-rope_scaling-string": Config("rope_scaling", "yes"); return ("config.json", ["rope_scaling"], hello);
            case "type-vocab-id-string": Tok(o => o["model"]!["vocab"]!["a"] = "5"); return ("tokenizer.json", ["model.vocab['a']"], hello);
            case "type-merge-numbers": Tok(o => o["model"]!["merges"]![0] = new JsonArray(1, 2)); return ("tokenizer.json", ["model.merges[0]"], hello);
            case "type-merge-unknown-token": Tok(o => o["model"]!["merges"]![0] = "Ġ zzzqqq"); return ("tokenizer.json", ["model.merges[0]", "not in the vocabulary"], hello);
            case "type-config-duplicate-key": File.WriteAllText(config, "{\"vocab_size\": 5, " + File.ReadAllText(config).TrimStart()[1..]); return ("config.json", ["Duplicate", "vocab_size"], hello);
            case "header-invalid-utf8": EditHeader(dir, h => [.. h[..2], 0xFF, 0xFE, .. h[2..]]); return ("model.safetensors", ["UTF-8"], hello);
            case "header-overlap":
                EditHeader(dir, h => EditHeaderJson(h, o =>
                {
                    long begin = o["model.embed_tokens.weight"]!["data_offsets"]![0]!.GetValue<long>();
                    o["model.norm.weight"]!["data_offsets"] = new JsonArray(begin, begin + 256);
                }));
                return ("model.safetensors", ["overlap"], hello);
            case "header-offsets-past-end":
                EditHeader(dir, h => EditHeaderJson(h, o => o["model.norm.weight"]!["data_offsets"] = new JsonArray(1L << 40, (1L << 40) + 256)));
                return ("model.safetensors", ["model.norm.weight", "past"], hello);
            case "header-dtype-shape-mismatch":
                EditHeader(dir, h => EditHeaderJson(h, o => o["model.norm.weight"]!["dtype"] = "F16"));
                return ("model.safetensors", ["model.norm.weight", "bytes"], hello);
            case "header-null-in-shape":
                EditHeader(dir, h => EditHeaderJson(h, o => o["model.norm.weight"]!["shape"] = new JsonArray(null, 64)));
                return ("model.safetensors", ["model.norm.weight", "shape"], hello);
        }
        throw new ArgumentException(name);
    }

    static string[] Generate(string dir, string prompt) => ["generate", "-m", dir, "--platform", "cpu", "--prompt", prompt, "--max-tokens", "2"];

    static string AssertOneLine(CappedCli.Result r, string file, string[] words)
    {
        Assert.True(r.ExitCode == 2, $"exit code {r.ExitCode}; stderr: {r.Stderr}; stdout: {r.Stdout}");
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"{lines.Length} stderr lines: {r.Stderr}");
        Assert.StartsWith("error: ", lines[0]);
        Assert.DoesNotContain("internal error", lines[0]);
        Assert.Contains(file, lines[0]);
        foreach (var w in words) Assert.Contains(w, lines[0]);
        Assert.True(lines[0].Length < 1000, $"the error line is {lines[0].Length} characters");
        return lines[0];
    }

    [Theory, MemberData(nameof(Cases))]
    public void A_hostile_folder_is_one_line_naming_the_file_in_bounded_time_and_memory(string name)
    {
        string dir = Model();
        RequireTokenizer(dir);
        var (file, words, prompt) = Break(name, dir);
        var r = CappedCli.Run(strace: false, CliLimit, Generate(dir, prompt));
        AssertOneLine(r, file, words);
        Assert.True(r.Wall < CliLimit, $"took {r.Wall}");
        Assert.True(r.PeakBytes < MemoryLimit, $"peak resident memory {r.PeakBytes >> 20} MB");
        TestContext.Current.SendDiagnosticMessage($"{name}: {r.Wall.TotalMilliseconds:F0} ms, peak {r.PeakBytes >> 20} MB");
    }

    [Theory]
    [InlineData("contain-index-dotdot")]
    [InlineData("contain-index-absolute")]
    [InlineData("contain-index-symlink")]
    [InlineData("contain-config-symlink")]
    [InlineData("contain-tokenizer-symlink")]
    public void Nothing_outside_the_folder_is_opened(string name)
    {
        if (!CappedCli.HasStrace) Assert.Skip("strace is not installed (scripts/setup.sh installs it): the open calls cannot be listed");
        string dir = Model();
        RequireTokenizer(dir);
        var (file, words, prompt) = Break(name, dir);
        var r = CappedCli.Run(strace: true, CliLimit, Generate(dir, prompt));
        AssertOneLine(r, file, words);
        Assert.NotEmpty(r.Opened!);
        Assert.Contains(r.Opened!, p => p.EndsWith("tapml.dll", StringComparison.Ordinal));
        var outside = r.Opened!.Where(p => p.Contains("canary")).ToList();
        Assert.True(outside.Count == 0, $"opened outside the folder: {string.Join(", ", outside)}");
    }

    [Theory]
    [InlineData("generate")]
    [InlineData("run")]
    public void Non_finite_logits_are_an_error_of_the_run(string verb)
    {
        string dir = Model();
        string path = Path.Combine(dir, "model.safetensors");
        var bytes = File.ReadAllBytes(path);
        long n = BitConverter.ToInt64(bytes, 0);
        long begin = JsonNode.Parse(bytes.AsSpan(8, (int)n))!["model.norm.weight"]!["data_offsets"]![0]!.GetValue<long>();
        for (int i = 0; i < 64; i++) BitConverter.TryWriteBytes(bytes.AsSpan((int)(8 + n + begin + 4 * i)), float.NaN);
        File.WriteAllBytes(path, bytes);
        string[] args = verb == "run" ? ["run", "--model", dir, "--platform", "cpu"] : ["generate", "-m", dir, "--platform", "cpu", "--input-ids", "1,2,3", "--max-tokens", "2"];
        var r = CappedCli.Run(strace: false, CliLimit, args);
        string line = AssertOneLine(r, "logits", ["NaN", "position"]);
        Assert.DoesNotContain("tokens:", r.Stdout);
        TestContext.Current.SendDiagnosticMessage($"{verb} with NaN weights: {line}");
    }

    // ---- seeded mutations, in process ----------------------------------------------------------------------

    /// <summary>Outcomes of one format's mutations: ran, clean error (one TapmlException line), anything else.</summary>
    sealed class Tally(string format)
    {
        public int Ok, Clean;
        public readonly List<string> Other = [];
        public int Total => Ok + Clean + Other.Count;

        /// <summary>Runs one case with a time bound; a hang, another exception or a giant message is "other".</summary>
        public void Attempt(string label, Action act, TimeSpan? limit = null)
        {
            var task = Task.Run(act);
            try
            {
                if (!task.Wait(limit ?? TimeSpan.FromSeconds(10))) { Other.Add($"{label}: hang"); return; }
                Ok++;
            }
            catch (AggregateException ae) when (ae.InnerException is TapmlException e and not InternalErrorException)
            {
                if (e.Message.Length > 2000) Other.Add($"{label}: a {e.Message.Length}-character message: {e.Message[..300]}");
                else Clean++;
            }
            catch (AggregateException ae)
            {
                var e = ae.InnerException!;
                Other.Add($"{label}: {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            }
        }

        public void AssertClean(int atLeast)
        {
            TestContext.Current.SendDiagnosticMessage($"fuzz {format}: {Total} inputs, {Ok} ok, {Clean} clean errors, {Other.Count} other");
            Assert.True(Total >= atLeast, $"{format}: only {Total} inputs");
            Assert.True(Other.Count == 0, $"{format}: {Other.Count} of {Total} inputs ended otherwise:\n{string.Join("\n", Other.Take(5))}");
            Assert.True(Clean > 0, $"{format}: no mutation was rejected");
        }
    }

    static byte[] FlipBytes(byte[] seed, Random rng, int within)
    {
        var b = (byte[])seed.Clone();
        for (int e = 1 + rng.Next(4); e > 0; e--)
        {
            int at = rng.Next(Math.Min(within, b.Length));
            b[at] = rng.Next(2) == 0 ? (byte)(b[at] ^ (1 << rng.Next(8))) : (byte)rng.Next(256);
        }
        return b;
    }

    [Fact]
    public void Mutated_safetensors_headers_fail_cleanly()
    {
        var seed = File.ReadAllBytes(Path.Combine(TinyCheckpoint.Materialize("llama"), "model.safetensors"));
        int n = (int)BitConverter.ToInt64(seed, 0);
        var header = JsonNode.Parse(seed.AsSpan(8, n))!;
        var rng = new Random(18_001);
        var tally = new Tally("safetensors");
        string path = Path.Combine(_root, "m.safetensors");
        for (int i = 0; i < 1500; i++)
        {
            byte[] bytes;
            if (i % 3 == 0) bytes = FlipBytes(seed, rng, 8 + n);
            else
            {
                var h = Encoding.UTF8.GetBytes(JsonMutator.Mutate(header, rng));
                long len = rng.Next(20) == 0 ? h.Length + rng.Next(-4, 5) : h.Length;
                bytes = [.. BitConverter.GetBytes(len), .. h, .. seed.AsSpan(8 + n)];
            }
            File.WriteAllBytes(path, bytes);
            tally.Attempt($"safetensors #{i}", () =>
            {
                using var f = SafetensorsFile.Open(path);
                foreach (var name in f.Entries.Keys) f.Read(name);
            });
        }
        tally.AssertClean(1500);
    }

    [Fact]
    public void Mutated_configs_fail_cleanly()
    {
        var rng = new Random(18_002);
        var tally = new Tally("config.json");
        var cpu = new CpuPlatform();
        foreach (var arch in TinyCheckpoint.Architectures)
        {
            string dir = Model(arch, $"cfg-{arch}");
            var seed = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
            for (int i = 0; i < 120; i++)
            {
                File.WriteAllText(Path.Combine(dir, "config.json"), JsonMutator.Mutate(seed, rng));
                bool run = i % 4 == 0;
                tally.Attempt($"{arch} config #{i}", () =>
                {
                    var m = HfModels.Load(dir);
                    if (run) Generation.Greedy(new Executor(cpu), m, [1, 2, 3], 2);
                });
            }
        }
        tally.AssertClean(700);
    }

    /// <summary>A small SentencePiece-style tokenizer.json (byte fallback, ▁ for spaces) as Llama 2 / Gemma write.</summary>
    static JsonNode SentencePieceSeed()
    {
        var vocab = new JsonObject { ["<unk>"] = 0, ["<s>"] = 1, ["</s>"] = 2 };
        for (int b = 0; b < 256; b++) vocab[$"<0x{b:X2}>"] = 3 + b;
        string[] pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "▁h", "el", "lo", "▁w", "or", "ld", "▁he", "llo", "▁hello", "▁wor", "▁world"];
        foreach (var p in pieces) vocab[p] = vocab.Count;
        var merges = new JsonArray("▁ h", "e l", "l o", "▁ w", "o r", "l d", "▁h e", "l lo", "▁he llo", "▁w or", "▁wor ld");
        return new JsonObject
        {
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = 1, ["content"] = "<s>", ["special"] = true }, new JsonObject { ["id"] = 2, ["content"] = "</s>", ["special"] = true }),
            ["normalizer"] = new JsonObject { ["type"] = "Sequence", ["normalizers"] = new JsonArray(new JsonObject { ["type"] = "Prepend", ["prepend"] = "▁" }, new JsonObject { ["type"] = "Replace", ["pattern"] = new JsonObject { ["String"] = " " }, ["content"] = "▁" }) },
            ["pre_tokenizer"] = null,
            ["decoder"] = new JsonObject { ["type"] = "Sequence", ["decoders"] = new JsonArray(new JsonObject { ["type"] = "Strip", ["content"] = " ", ["start"] = 1, ["stop"] = 0 }) },
            ["model"] = new JsonObject { ["type"] = "BPE", ["unk_token"] = "<unk>", ["byte_fallback"] = true, ["fuse_unk"] = true, ["vocab"] = vocab, ["merges"] = merges },
        };
    }

    [Fact]
    public void Mutated_tokenizers_fail_cleanly()
    {
        var seeds = new List<(string Name, JsonNode Doc)> { ("sentencepiece", SentencePieceSeed()) };
        foreach (var arch in new[] { "llama", "qwen2" })
        {
            string f = Path.Combine(TinyCheckpoint.Materialize(arch), "tokenizer.json");
            if (File.Exists(f)) seeds.Add((arch, JsonNode.Parse(File.ReadAllText(f))!));
        }
        var rng = new Random(18_003);
        var tally = new Tally("tokenizer.json");
        string path = Path.Combine(_root, "tokenizer.json");
        const string text = "Hello world! 123 ünïcödé <|end_of_text|><s> aaaa";
        foreach (var (name, doc) in seeds)
        {
            string plain = doc.ToJsonString();
            for (int i = 0; i < 400; i++)
            {
                File.WriteAllText(path, i % 5 == 0 ? Encoding.UTF8.GetString(FlipBytes(Encoding.UTF8.GetBytes(plain), rng, plain.Length)) : JsonMutator.Mutate(doc, rng));
                tally.Attempt($"{name} tokenizer #{i}", () =>
                {
                    var t = Tokenizer.FromTokenizerJson(path);
                    t.Decode(t.Encode(text));
                });
            }
        }
        if (seeds.Count == 1) TestContext.Current.SendDiagnosticMessage($"byte-level tokenizer seeds absent: {TinyTokenizer.NotInstalled}");
        tally.AssertClean(400);
    }

    [Fact]
    public void Mutated_shard_indexes_fail_cleanly()
    {
        string dir = Model("llama", "index");
        Index(dir, "model.safetensors");
        string index = Path.Combine(dir, "model.safetensors.index.json");
        var seed = JsonNode.Parse(File.ReadAllText(index))!;
        string[] names = ["../canary.safetensors", "/etc/hostname", "sub/../../x", "", "model.safetensors\0", "config.json", ".", "..", "~/x"];
        var rng = new Random(18_004);
        var tally = new Tally("model.safetensors.index.json");
        for (int i = 0; i < 300; i++)
        {
            var doc = seed.DeepClone();
            if (i % 2 == 0)
            {
                var map = doc["weight_map"]!.AsObject();
                var key = map.ElementAt(rng.Next(map.Count)).Key;
                map[key] = names[rng.Next(names.Length)];
                File.WriteAllText(index, doc.ToJsonString());
            }
            else File.WriteAllText(index, JsonMutator.Mutate(doc, rng));
            tally.Attempt($"index #{i}", () => new SafetensorsCheckpoint(dir).Dispose());
        }
        tally.AssertClean(300);
    }

    // ---- the real CLI over mutated folders, under a memory cap ------------------------------------------------

    [Fact]
    public void Mutated_folders_through_the_cli_stay_within_memory()
    {
        string dir = Model("llama", "sweep");
        RequireTokenizer(dir);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        var tokenizer = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "tokenizer.json")))!;
        var weights = File.ReadAllBytes(Path.Combine(dir, "model.safetensors"));
        int n = (int)BitConverter.ToInt64(weights, 0);
        var header = JsonNode.Parse(weights.AsSpan(8, n))!;
        var rng = new Random(18_005);
        int ok = 0, clean = 0;
        long peak = 0;
        var wall = TimeSpan.Zero;
        var other = new List<string>();
        for (int i = 0; i < 24; i++)
        {
            string d = Model("llama", $"sweep-{i}");
            switch (i % 3)
            {
                case 0: File.WriteAllText(Path.Combine(d, "config.json"), JsonMutator.Mutate(config, rng)); break;
                case 1: File.WriteAllText(Path.Combine(d, "tokenizer.json"), JsonMutator.Mutate(tokenizer, rng)); break;
                default:
                    var h = Encoding.UTF8.GetBytes(JsonMutator.Mutate(header, rng));
                    File.WriteAllBytes(Path.Combine(d, "model.safetensors"), [.. BitConverter.GetBytes((long)h.Length), .. h, .. weights.AsSpan(8 + n)]);
                    break;
            }
            var r = CappedCli.Run(strace: false, CliLimit, Generate(d, "hello world"));
            peak = Math.Max(peak, r.PeakBytes);
            wall += r.Wall;
            var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            if (r.ExitCode == 0) ok++;
            else if (r.ExitCode == 2 && lines.Length == 1 && !lines[0].Contains("internal error") && lines[0].Length < 1000) clean++;
            else other.Add($"#{i}: exit {r.ExitCode}: {r.Stderr}");
            TestContext.Current.SendDiagnosticMessage($"cli sweep #{i}: exit {r.ExitCode} {(lines.Length > 0 ? lines[0][..Math.Min(160, lines[0].Length)] : "")}");
            Directory.Delete(d, true);
        }
        TestContext.Current.SendDiagnosticMessage($"cli sweep: 24 folders, {ok} ok, {clean} clean errors, {other.Count} other, peak {peak >> 20} MB, {wall.TotalSeconds:F1} s");
        Assert.True(other.Count == 0, string.Join("\n", other));
        Assert.True(peak < MemoryLimit, $"peak resident memory {peak >> 20} MB");
    }
}
