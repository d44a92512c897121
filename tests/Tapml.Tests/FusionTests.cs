using Tapml.Core;
using Tapml.Ir;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Xunit;

namespace Tapml.Tests;

/// <summary>Graph fusion (tapml.Fused regions): the cpu runs a fused graph bit-identically to the original, webgpu runs
/// each region as one kernel within tolerance of it, and values used outside a region are never fused away.</summary>
public class FusionTests
{
    static Model Tiny(string arch) => HfModels.Load(TinyCheckpoint.Materialize(arch));

    static Dictionary<string, Value> Feeds(Model m) => Generation.PrefillFeeds(m, [1, 17, 305, 42, 7]);

    public static TheoryData<string> Archs => new(TinyCheckpoint.Architectures);

    [Theory]
    [MemberData(nameof(Archs))]
    public void Cpu_runs_the_fused_graph_exactly_as_the_original(string arch)
    {
        var m = Tiny(arch);
        var f = Fusion.Fuse(m, out var report);
        Assert.True(report.NodesAfter < report.NodesBefore, report.ToString());
        Assert.Equal(report.NodesAfter, f.Graph.Nodes.Count);
        // Every fused node's body is a slice of the original nodes (same objects), nothing lost or duplicated; a
        // kv_attention region holds its kv_append and attention regions as they were.
        var regions = Regions(f.Graph.Nodes).ToList();
        var bodies = regions.SelectMany(n => n.Attributes["body"].G!.Nodes).Where(n => n.OpType != Fusion.OpType);
        Assert.Equal(m.Graph.Nodes.Count, f.Graph.Nodes.Count(n => n.OpType != Fusion.OpType) + bodies.Count());
        Assert.Equal(bodies.Count(), bodies.Distinct().Count());
        if (arch != "gpt2")
        {
            // Every RMSNorm is a region: alone, or folded into the products it feeds. The block norms all fold (q/k/v,
            // gate/up, lm_head); Qwen3's per-head q/k norms feed the rotary, not a product, so they are rms_norm regions.
            int layers = m.Graph.Nodes.Count(n => n.OpType == "Softmax");
            int normed = regions.Count(n => n.Attributes["kind"].Str == "projections" && n.Attributes["norm"].Str == "rms");
            Assert.Equal(m.Graph.Nodes.Count(n => n.OpType == "ReduceMean"), report.Regions.GetValueOrDefault("rms_norm") + normed);
            Assert.Equal(arch == "qwen3" ? 2 * layers : 0, report.Regions.GetValueOrDefault("rms_norm"));
            // Both rotaries of a layer are folded: q's into its attention, K's into the KV append with V's.
            Assert.False(report.Regions.ContainsKey("rotary"), report.ToString());
            Assert.Equal(layers, report.Regions.GetValueOrDefault("kv_append"));
            Assert.Equal(layers, regions.Count(n => n.Attributes["kind"].Str == "kv_append"));
            Assert.All(regions.Where(n => n.Attributes["kind"].Str == "attention"), n => Assert.True(n.Attributes.ContainsKey("rotary_q")));
            Assert.All(regions.Where(n => n.Attributes["kind"].Str == "kv_append"), n => Assert.True(n.Attributes.ContainsKey("half")));
            // Each layer's append joins its q/k/v projections (one projections_kv region: the projections, the Reshape and
            // Transpose of k and v, the append), except Qwen3's, whose k goes through its norm first: that append joins
            // its attention (kv_attention), as every append does in a graph fused for the joint kernel.
            int viaNorm = arch == "qwen3" ? layers : 0;
            Assert.Equal(layers - viaNorm, report.Regions.GetValueOrDefault("projections_kv"));
            Assert.Equal(viaNorm, report.Regions.GetValueOrDefault("kv_attention"));
            Assert.All(f.Graph.Nodes.Where(n => n.OpType == Fusion.OpType && n.Attributes["kind"].Str == "projections_kv"), n =>
                Assert.Equal(["Fused", "Reshape", "Transpose", "Reshape", "Transpose", "Fused"], n.Attributes["body"].G!.Nodes.Select(b => b.OpType)));
            var joint = Fusion.Fuse(m, out var jointReport, projections: true, kvInProjections: false);
            Assert.Equal(layers, jointReport.Regions.GetValueOrDefault("kv_attention"));
            Assert.False(jointReport.Regions.ContainsKey("projections_kv"), jointReport.ToString());
            Assert.All(joint.Graph.Nodes.Where(n => n.OpType == Fusion.OpType && n.Attributes["kind"].Str == "kv_attention"), n =>
                Assert.Equal(["kv_append", "attention"], n.Attributes["body"].G!.Nodes.Select(b => b.Attributes["kind"].Str)));
        }
        Assert.True(report.Regions.GetValueOrDefault("attention") == m.Graph.Nodes.Count(n => n.OpType == "Softmax"), report.ToString());
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        var a = new Executor(cpu).Run(m, Feeds(m));
        var b = new Executor(cpu).Run(f, Feeds(f));
        foreach (var (name, v) in a)
            Assert.Equal(((Tensor)v).Span<float>().ToArray(), ((Tensor)b[name]).Span<float>().ToArray());
    }

    /// <summary>Fused regions and the regions nested in them (a kv_attention's kv_append and attention).</summary>
    static IEnumerable<Node> Regions(IEnumerable<Node> nodes) => nodes.Where(n => n.OpType == Fusion.OpType)
        .SelectMany(n => Regions(n.Attributes["body"].G!.Nodes).Prepend(n));

    /// <summary>The fused graph on a GPU through prefill and two decode steps (KV append with its rotary, attention
    /// rotating q as it loads it, past lengths 0, 5, 6) against the cpu reference on the original graph: logits and
    /// presents within tolerance, and a decode step takes five dispatches a layer with <c>kv-append=joint</c> (no region
    /// fell back to its body: the attention kernel appended the new K and V rows itself) and with
    /// <c>kv-append=projections</c> (the q/k/v projection kernel appended them: 4-bit and f32 weights, checkpoints of 64
    /// and 1024 hidden, rows and panel layouts, Qwen2's biases; the rule), six with the append apart, and none for the
    /// rotary tables (the position a host input), with subgroup lanes and with a thread a key.</summary>
    [Theory]
    [InlineData("llama", "webgpu?kv-append=joint")]
    [InlineData("qwen2", "webgpu?kv-append=joint")]
    [InlineData("phi3", "webgpu?kv-append=joint")]
    [InlineData("llama", "webgpu?attn-decode=threads&kv-append=joint")]
    [InlineData("qwen2", "vulkan?kv-append=joint")]
    [InlineData("llama", "opencl?kv-append=joint")]
    [InlineData("llama", "webgpu?kv-append=apart")]                  // f32 weights: the append a dispatch of its own
    [InlineData("llama", "webgpu?kv-append=projections", "q4")]     // the append in the q/k/v projection kernel
    [InlineData("llama", "webgpu?kv-append=projections", "q4", 1024)]
    [InlineData("llama", "webgpu?kv-append=projections&q4-nibbles=magic", "q4sym", 1024)]
    [InlineData("qwen2", "vulkan?kv-append=projections", "q4", 1024)]
    [InlineData("phi3", "webgpu?kv-append=projections", "q4")]
    [InlineData("llama", "opencl?kv-append=projections", "q4", 1024)]
    [InlineData("llama", "webgpu?kv-append=apart", "q4", 1024)]
    [InlineData("llama", "webgpu")]                                  // the rule: f32 projections append too
    [InlineData("llama", "webgpu?prefetch=on", "q4", 1024)]          // the attention reads o_proj's weights ahead
    [InlineData("qwen2", "vulkan?prefetch=on", "q4", 1024)]
    [InlineData("llama", "webgpu?prefetch=on")]                      // f32: the f32 o_proj is small enough here
    [InlineData("qwen2", "vulkan?kv-append=projections", null, 1024)]
    public void Webgpu_decode_steps_of_the_fused_graph_match_cpu(string arch, string platform, string? quantize = null, int hidden = 0)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        Model m;
        if (hidden == 0) m = Tiny(arch);
        else
        {
            string dir = Path.Combine(Path.GetTempPath(), $"tapml-fusion-{arch}-{hidden}-{Environment.ProcessId}");
            try
            {
                TinyCheckpoint.Write(arch, 1, dir, new TinyCheckpoint.Sizes(Layers: 2, Hidden: hidden, Heads: hidden / 128, KvHeads: 2, Intermediate: 2 * hidden, Vocab: 512));
                m = HfModels.Load(dir);
            }
            finally { Directory.Delete(dir, true); }
        }
        if (quantize is not null) WeightQuantizer.Apply(m, QuantizeScheme.Parse(quantize));
        using var gpu = (WebGpuPlatform)TestPlatforms.CreateOrSkip(platform);
        var f = Fusion.Fuse(m, out _, projections: true, kvInProjections: gpu.KvAppendInProjections);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        var (ec, eg) = (new Executor(cpu), new Executor(gpu));
        var feeds = Feeds(m);
        var want = ec.Run(m, feeds);
        // The presents stay on the GPU and come back as the next step's pasts, as in generation: the caches grow in place.
        Func<string, bool> keep = name => name.StartsWith("present.", StringComparison.Ordinal);
        Tensor Host(Value v) => v is IDeviceValue ? (Tensor)gpu.Download(v) : (Tensor)v;
        var got = eg.Run(f, feeds, keep);
        int layers = m.Graph.Nodes.Count(n => n.OpType == "Softmax");
        // The prefill (5 rows) ran each projections region node by node over views of the stacked weight its decode
        // kernel reads: a region's weights share one GPU buffer.
        foreach (var n in f.Graph.Nodes.Where(n => quantize is null && n.OpType == Fusion.OpType && n.Attributes["kind"].Str == "projections"))
        {
            var views = n.Inputs.Where(i => f.Graph.Initializers.TryGetValue(i, out var t) && t.Rank == 2 && t.Length > 64)
                .Select(i => gpu.TransposedWeight(gpu.Upload(f.Graph.Initializers[i]))).ToList();
            Assert.NotEmpty(views);
            Assert.All(views, v => Assert.Same(views[0].Buffer, v.Buffer));
        }
        for (int step = 0; step < 3; step++)
        {
            foreach (var (name, v) in want) AssertClose((Tensor)v, Host(got[name]));
            if (step == 2) break;
            long token = 11 + step, position = 5 + step;
            var wf = Generation.NextFeeds(m, want, token, position);
            // The position as the GPU's host input, as generation feeds it: the rotary tables are made on the host.
            var gf = Generation.NextFeeds(f, got, Tensor.FromArray(new[] { token }, 1, 1), position, gpu);
            want = ec.Run(m, wf);
            long d0 = gpu.Device.Dispatches;
            got = eg.Run(f, gf, keep);
            long perStep = gpu.Device.Dispatches - d0;
            foreach (var (name, v) in gf) if (v is IDeviceValue) gpu.Free(v);
            // Per layer: projections (norm, q/k/v) with the KV append (kv-append=projections), attention (with the
            // append: joint), the append apart otherwise, o_proj + residual, projections (norm, MLP), down_proj +
            // residual; then two more (the embedding row, the final norm with lm_head).
            bool appendFused = !platform.Contains("kv-append=apart", StringComparison.Ordinal);
            int perLayer = appendFused ? 5 : 6;
            Assert.True(perStep == perLayer * layers + 2, $"{perStep} dispatches in a decode step of {layers} layers, not {perLayer} a layer and 2 more");
        }
        // prefetch=on: from the second step on each layer's attention read its o_proj's words ahead.
        if (platform.Contains("prefetch=on", StringComparison.Ordinal)) Assert.True(gpu.PrefetchedBytes > 0, "no attention kernel prefetched weights");
        else Assert.Equal(0, gpu.PrefetchedBytes);
    }

    /// <summary><c>prefetch=on</c> while the o_proj's weights are laid out again between generations (a tuning change,
    /// as <c>bench q4-sweep</c> makes, and a collection that destroys the old buffers): the attention prefetches the
    /// buffers the products read now, and the tokens stay the cpu's.</summary>
    [Fact]
    public void Prefetch_follows_weights_laid_out_again()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        string dir = Path.Combine(Path.GetTempPath(), $"tapml-prefetch-{Environment.ProcessId}");
        Model m;
        try
        {
            TinyCheckpoint.Write("llama", 1, dir, new TinyCheckpoint.Sizes(Layers: 2, Hidden: 1024, Heads: 8, KvHeads: 2, Intermediate: 2048, Vocab: 512));
            m = HfModels.Load(dir);
        }
        finally { Directory.Delete(dir, true); }
        WeightQuantizer.Apply(m, QuantizeScheme.Parse("q4"));
        using var gpu = (WebGpuPlatform)TestPlatforms.CreateOrSkip("webgpu?prefetch=on");
        var f = Fusion.Fuse(m, out _, projections: true, kvInProjections: gpu.KvAppendInProjections);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        long[] prompt = [1, 17, 305];
        var want = Generation.Greedy(new Executor(cpu), m, prompt, 5).Tokens;
        var eg = new Executor(gpu);
        foreach (var tuning in new[] { Tapml.Platforms.WebGpu.Kernels.MatVecTuning.Rule, new Tapml.Platforms.WebGpu.Kernels.MatVecTuning { Q4Layout = "rows" }, Tapml.Platforms.WebGpu.Kernels.MatVecTuning.Rule })
        {
            gpu.MatVec = tuning;
            GC.Collect();
            GC.WaitForPendingFinalizers();
            Assert.Equal(want, Generation.Greedy(eg, f, prompt, 5).Tokens);
        }
        Assert.True(gpu.PrefetchedBytes > 0, "no attention kernel prefetched weights");
    }

    [Fact]
    public void A_value_used_outside_a_region_stays_outside()
    {
        // y = Sqrt(x + 1) * 2, and x + 1 is also a graph output: only Sqrt and Mul may fuse.
        var g = new Graph { Name = "g" };
        g.Inputs.Add(new ValueInfo("x", TypeRef.TensorOf(DType.Float32, 4)));
        g.Initializers["one"] = Tensor.Scalar(1f);
        g.Initializers["two"] = Tensor.Scalar(2f);
        g.Nodes.Add(new Node { Name = "add", OpType = "Add", Inputs = ["x", "one"], Outputs = ["a"] });
        g.Nodes.Add(new Node { Name = "sqrt", OpType = "Sqrt", Inputs = ["a"], Outputs = ["s"] });
        g.Nodes.Add(new Node { Name = "mul", OpType = "Mul", Inputs = ["s", "two"], Outputs = ["y"] });
        g.Outputs.Add(new ValueInfo("a", null));
        g.Outputs.Add(new ValueInfo("y", null));
        var f = Fusion.Fuse(new Model { Graph = g, Opsets = new() { [""] = 17 } }, out var report);
        Assert.Equal(2, f.Graph.Nodes.Count);
        Assert.Equal("Add", f.Graph.Nodes[0].OpType);
        var body = f.Graph.Nodes[1].Attributes["body"].G!;
        Assert.Equal(["Sqrt", "Mul"], body.Nodes.Select(n => n.OpType));
        Assert.Equal(["a", "two"], f.Graph.Nodes[1].Inputs);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        var outs = new Executor(cpu).Run(f, new Dictionary<string, Value> { ["x"] = Tensor.FromArray(new[] { 0f, 3f, 8f, 15f }, 4) });
        Assert.Equal([1f, 4f, 9f, 16f], ((Tensor)outs["a"]).Span<float>().ToArray());
        Assert.Equal([2f, 4f, 6f, 8f], ((Tensor)outs["y"]).Span<float>().ToArray());
    }

    /// <summary>A value read only by element-wise nodes (an angle's Cos and Sin, as the rotary tables) becomes one region
    /// with an output a reader, standing where the last reader stood; on webgpu one dispatch with both outputs, equal
    /// to cpu within the element-wise tolerance. Where a reader's output is consumed before the last reader runs (the
    /// region would be placed after that consumer), nothing fuses.</summary>
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void Element_wise_fan_out_is_one_region_with_an_output_a_reader(bool consumedBetween, bool castPositions)
    {
        // castPositions: the angle's input is int64 positions through a Cast to f32 (the Llama builder's rotary tables),
        // which joins the region: the kernel converts the positions as it loads them.
        var g = new Graph { Name = "g" };
        g.Inputs.Add(new ValueInfo(castPositions ? "pi" : "p", TypeRef.TensorOf(castPositions ? DType.Int64 : DType.Float32, 1, 3, 1)));
        g.Initializers["inv"] = Tensor.FromArray(new[] { 1f, 0.5f, 0.25f, 0.125f }, 4);
        if (castPositions) g.Nodes.Add(new Node { Name = "cast", OpType = "Cast", Inputs = ["pi"], Outputs = ["p"], Attributes = { ["to"] = Attr.Of((long)DType.Float32) } });
        g.Nodes.Add(new Node { Name = "mul", OpType = "Mul", Inputs = ["p", "inv"], Outputs = ["a"] });
        g.Nodes.Add(new Node { Name = "cos", OpType = "Cos", Inputs = ["a"], Outputs = ["c"] });
        if (consumedBetween) g.Nodes.Add(new Node { Name = "floor", OpType = "Floor", Inputs = ["c"], Outputs = ["n"] });
        g.Nodes.Add(new Node { Name = "sin", OpType = "Sin", Inputs = ["a"], Outputs = ["s"] });
        g.Outputs.Add(new ValueInfo(consumedBetween ? "n" : "c", null));
        g.Outputs.Add(new ValueInfo("s", null));
        var m = new Model { Graph = g, Opsets = new() { [""] = 17 } };
        var f = Fusion.Fuse(m, out var report);
        var fused = f.Graph.Nodes.Where(n => n.OpType == Fusion.OpType).ToList();
        if (consumedBetween)
        {
            Assert.Equal(["Mul", "Cos", "Floor", "Sin"], f.Graph.Nodes.Select(n => n.OpType));
            return;
        }
        var node = Assert.Single(f.Graph.Nodes);
        Assert.Equal(["c", "s"], node.Outputs);
        Assert.Equal(castPositions ? ["Cast", "Mul", "Cos", "Sin"] : ["Mul", "Cos", "Sin"], node.Attributes["body"].G!.Nodes.Select(n => n.OpType));
        Dictionary<string, Value> Feeds(long big) => castPositions
            ? new() { ["pi"] = Tensor.FromArray(new[] { 0L, 7L, big }, 1, 3, 1) }
            : new() { ["p"] = Tensor.FromArray(new[] { 0f, 7f, big }, 1, 3, 1) };
        var feeds = Feeds(300);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        var want = new Executor(cpu).Run(m, feeds);
        var same = new Executor(cpu).Run(f, feeds);
        foreach (var o in new[] { "c", "s" }) Assert.Equal(((Tensor)want[o]).Span<float>().ToArray(), ((Tensor)same[o]).Span<float>().ToArray());
        WebGpuTests.SkipIfNoDawn("webgpu");
        using var gpu = new WebGpuPlatform();
        long d0 = gpu.Device.Dispatches;
        var got = new Executor(gpu).Run(f, feeds);
        Assert.Equal(1, gpu.Device.Dispatches - d0);
        foreach (var o in new[] { "c", "s" })
        {
            var (a, b) = (((Tensor)want[o]).Span<float>().ToArray(), ((Tensor)got[o]).Span<float>().ToArray());
            Assert.Equal(12, b.Length);
            for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= 1e-5, $"{o}[{i}]: cpu {a[i]}, webgpu {b[i]}");
        }
        // Positions past webgpu's 32-bit integers: the region is unsupported there (a fallback's to run), never wrong.
        if (castPositions)
            Assert.Contains("beyond the 32-bit range", Assert.Throws<UnsupportedException>(() => new Executor(gpu).Run(f, Feeds(5_000_000_000L))).Message);
    }

    /// <summary>The fused graph on webgpu against the original graph on cpu, every output (logits and KV cache)
    /// within f32 matmul tolerance; the kernels ran (fewer dispatches than nodes of the original graph).</summary>
    [Theory]
    [InlineData("llama", "webgpu")]
    [InlineData("phi3", "webgpu:gles")]
    [InlineData("gpt2", "webgpu:gles")]
    public void Webgpu_runs_fused_regions_as_single_kernels_within_tolerance(string arch, string platform)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        var m = Tiny(arch);
        var f = Fusion.Fuse(m, out _);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = new WebGpuPlatform(platform);
        var want = new Executor(cpu).Run(m, Feeds(m));
        long d0 = gpu.Device.Dispatches;
        var got = new Executor(gpu).Run(f, Feeds(f));
        long dispatches = gpu.Device.Dispatches - d0;
        Assert.True(dispatches < m.Graph.Nodes.Count, $"{dispatches} dispatches for {m.Graph.Nodes.Count} original nodes");
        foreach (var (name, v) in want)
        {
            var e = ((Tensor)v).Span<float>();
            var a = ((Tensor)got[name]).Span<float>();
            Assert.Equal(e.Length, a.Length);
            for (int i = 0; i < e.Length; i++)
                Assert.True(Math.Abs(a[i] - e[i]) <= 1e-4 + 1e-3 * Math.Abs(e[i]), $"{name}[{i}]: {a[i]} vs {e[i]}");
        }
    }

    [Fact]
    public void Generate_fuses_on_webgpu_and_gives_the_cpu_tokens()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var cpu = CliRunner.Run("generate", "--model", "builtin:tiny-qwen2", "--platform", "cpu", "--input-ids", "1,17,305,42", "--max-tokens", "8");
        var gpu = CliRunner.Run("generate", "--model", "builtin:tiny-qwen2", "--platform", "webgpu", "--input-ids", "1,17,305,42", "--max-tokens", "8");
        Assert.True(gpu.ExitCode == 0, gpu.Stdout + gpu.Stderr);
        Assert.Contains("fused: ", gpu.Stderr);
        Assert.Contains("projections", gpu.Stderr);
        Assert.DoesNotContain("fused: ", cpu.Stderr);
        string Tokens(string s) => s.Split('\n').Single(l => l.StartsWith("tokens:", StringComparison.Ordinal));
        Assert.Equal(Tokens(cpu.Stdout), Tokens(gpu.Stdout));
    }

    /// <summary>One attention block as the builtin and HF-exported graphs write it: q·kᵀ (K, V through repeat_kv when
    /// <paramref name="hk"/> &lt; <paramref name="h"/>), scale, mask, Softmax, ·V.</summary>
    static (Model Model, Dictionary<string, Value> Feeds) AttentionGraph(int b, int h, int hk, int s, int t, int d, int dv, string mask, string scaleOp,
        Func<int, int, bool>? allowed = null, long[]? expandOverride = null)
    {
        var g = new Graph { Name = "attn" };
        var rng = new Random(b * 1000 + h * 100 + t);
        Tensor Rand(params long[] shape)
        {
            var a = new float[ShapeUtil.Size(shape)];
            for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
            return new Tensor(DType.Float32, shape, a);
        }
        var feeds = new Dictionary<string, Value> { ["q"] = Rand(b, h, s, d), ["k"] = Rand(b, hk, t, d), ["v"] = Rand(b, hk, t, dv) };
        foreach (var (name, tensor) in feeds) g.Inputs.Add(new ValueInfo(name, TypeRef.TensorOf(DType.Float32, ((Tensor)tensor).Shape)));
        int n = 0;
        string Node(string op, string[] ins, Dictionary<string, Attr>? attrs = null)
        {
            string o = $"{op.ToLowerInvariant()}_{n++}";
            g.Nodes.Add(new Node { Name = o, OpType = op, Inputs = ins, Outputs = [o], Attributes = attrs ?? new() });
            return o;
        }
        string Repeat(string x, long width)
        {
            if (hk == h) return x;
            g.Initializers["axis2"] = Tensor.FromArray(new long[] { 2 }, 1);
            g.Initializers[$"expand_{width}"] = Tensor.FromArray(expandOverride ?? [1, 1, h / hk, 1, 1], 5);
            g.Initializers[$"merge_{width}"] = Tensor.FromArray(new long[] { 0, h, -1, width }, 4);
            return Node("Reshape", [Node("Expand", [Node("Unsqueeze", [x, "axis2"]), $"expand_{width}"]), $"merge_{width}"]);
        }
        string scores = Node("MatMul", ["q", Node("Transpose", [Repeat("k", d)], new() { ["perm"] = Attr.Of(new long[] { 0, 1, 3, 2 }) })]);
        g.Initializers["scale"] = Tensor.Scalar(scaleOp == "Div" ? (float)Math.Sqrt(d) : (float)(1 / Math.Sqrt(d)));
        if (scaleOp != "none") scores = Node(scaleOp, [scores, "scale"]);
        allowed ??= (i, j) => j <= t - s + i;
        if (mask == "where")
        {
            var cond = new bool[s * t];
            for (int i = 0; i < s; i++) for (int j = 0; j < t; j++) cond[i * t + j] = allowed(i, j);
            feeds["cond"] = new Tensor(DType.Bool, [s, t], cond);
            g.Inputs.Add(new ValueInfo("cond", TypeRef.TensorOf(DType.Bool, s, t)));
            g.Initializers["neg_inf"] = Tensor.Scalar(float.NegativeInfinity);
            scores = Node("Where", ["cond", scores, "neg_inf"]);
        }
        else if (mask == "add")
        {
            var add = new float[s * t];
            for (int i = 0; i < s; i++) for (int j = 0; j < t; j++) add[i * t + j] = allowed(i, j) ? 0 : float.MinValue;
            g.Initializers["addmask"] = new Tensor(DType.Float32, [1, 1, s, t], add);
            scores = Node("Add", [scores, "addmask"]);
        }
        string probs = Node("Softmax", [scores], new() { ["axis"] = Attr.Of(-1L) });
        string y = Node("MatMul", [probs, Repeat("v", dv)]);
        g.Outputs.Add(new ValueInfo(y, null));
        return (new Model { Graph = g, Opsets = new() { [""] = 17 } }, feeds);
    }

    /// <summary>The attention kernel against the cpu reference on the original graph: GQA and plain heads, one and
    /// several query rows, more keys than one 64-key chunk, head sizes that are not powers of two, Where and additive
    /// masks, Mul/Div/no scale, and a sliding-window mask that hides every key of the first chunk (so one of a
    /// workgroup's key groups sees only masked keys); one, two and four key groups a workgroup; long key ranges split
    /// over workgroups (a window hiding whole chunks of them); prompt-shaped rows (32 or more) by tiles of query rows
    /// (head dims up to 64 and up to 128, a tile partly past the last row). Decode rows run with a key's dims across
    /// subgroup lanes where the device has subgroups (SwiftShader here: groups of 4 lanes), and with a thread a key
    /// (<c>attn-decode=threads</c>). One dispatch, two when split.</summary>
    [Theory]
    [InlineData("webgpu", 1, 12, 4, 1, 37, 64, 64, "where", "Mul", 0)]
    [InlineData("webgpu:gles", 1, 12, 4, 1, 37, 64, 64, "where", "Mul", 0)]
    [InlineData("webgpu", 2, 4, 4, 5, 150, 80, 48, "add", "Div", 0)]
    [InlineData("webgpu", 1, 6, 2, 3, 200, 16, 130, "none", "none", 0)]
    [InlineData("webgpu:gles", 1, 8, 2, 4, 160, 32, 32, "where", "Mul", 40)]
    [InlineData("webgpu", 1, 2, 1, 64, 64, 16, 16, "add", "Mul", 0)]
    [InlineData("webgpu", 1, 12, 4, 1, 100, 64, 64, "where", "Mul", 0)]
    [InlineData("webgpu:gles", 1, 4, 2, 1, 120, 32, 32, "where", "Mul", 30)]
    [InlineData("webgpu", 1, 12, 4, 1, 600, 64, 64, "where", "Mul", 0)]
    [InlineData("webgpu:gles", 1, 8, 2, 2, 700, 32, 40, "where", "Mul", 100)]
    [InlineData("webgpu", 1, 4, 4, 3, 300, 16, 16, "add", "Div", 0)]
    [InlineData("webgpu", 1, 8, 2, 100, 100, 64, 64, "where", "Mul", 0)]
    [InlineData("webgpu:gles", 1, 4, 4, 40, 140, 128, 96, "add", "Div", 0)]
    [InlineData("webgpu", 2, 4, 2, 33, 33, 24, 40, "where", "Mul", 10)]
    [InlineData("webgpu", 1, 2, 2, 48, 48, 16, 16, "none", "none", 0)]
    [InlineData("webgpu", 1, 4, 2, 1, 37, 18, 20, "where", "Mul", 0)]      // a head dim and a key count past a multiple of 4
    [InlineData("vulkan", 2, 4, 2, 3, 37, 18, 20, "add", "Div", 0)]
    [InlineData("webgpu?attn-decode=threads", 1, 12, 4, 1, 100, 64, 64, "where", "Mul", 0)]
    [InlineData("webgpu?attn-decode=threads", 1, 8, 2, 2, 700, 32, 40, "where", "Mul", 100)]
    [InlineData("webgpu?attn-decode=threads", 1, 4, 2, 1, 37, 18, 20, "where", "Mul", 0)]
    [InlineData("vulkan?attn-decode=threads", 2, 4, 2, 3, 37, 18, 20, "add", "Div", 0)]
    [InlineData("webgpu", 1, 4, 2, 1, 3, 8, 8, "where", "Mul", 2)]          // fewer keys than a workgroup's lane groups take, two of them masked
    [InlineData("vulkan", 1, 8, 2, 1, 300, 40, 24, "where", "Mul", 70)]     // split, a window hiding whole chunks
    [InlineData("webgpu", 1, 8, 2, 1, 50, 128, 128, "where", "Mul", 0)]    // Llama's head dim across the lanes
    [InlineData("vulkan", 1, 2, 1, 2, 21, 256, 200, "add", "Div", 0)]       // the largest head dim, v narrower than k
    public void Attention_kernel_matches_the_reference(string platform, int b, int h, int hk, int s, int t, int d, int dv, string mask, string scaleOp, int window)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        Func<int, int, bool>? allowed = window > 0 ? (i, j) => j <= t - s + i && j > t - s + i - window : null;
        var (m, feeds) = AttentionGraph(b, h, hk, s, t, d, dv, mask, scaleOp, allowed);
        var f = Fusion.Fuse(m, out var report);
        Assert.Equal(1, report.Regions.GetValueOrDefault("attention"));
        Assert.Single(f.Graph.Nodes);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = (WebGpuPlatform)PlatformRegistry.Create(platform);
        var want = (Tensor)new Executor(cpu).Run(m, feeds).Values.Single();
        long d0 = gpu.Device.Dispatches;
        var got = (Tensor)new Executor(gpu).Run(f, feeds).Values.Single();
        // Decode-shaped rows over 256 keys or more split the keys over workgroups: a second dispatch combines them.
        Assert.Equal(t >= 256 && b * h * s < 256 ? 2 : 1, gpu.Device.Dispatches - d0);
        AssertClose(want, got);
    }

    /// <summary>A pattern whose constants do not mean repeat_kv for the shapes it meets (an Expand that also
    /// broadcasts the batch) runs the body node by node: the reference's result, more than one dispatch.</summary>
    [Fact]
    public void Attention_outside_the_kernel_runs_its_body()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var (m, feeds) = AttentionGraph(1, 4, 2, 1, 10, 16, 16, "where", "Mul", expandOverride: [2, 1, 2, 1, 1]);
        var f = Fusion.Fuse(m, out var report);
        Assert.Equal(1, report.Regions.GetValueOrDefault("attention"));
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = new WebGpuPlatform("webgpu");
        var want = (Tensor)new Executor(cpu).Run(m, feeds).Values.Single();
        long d0 = gpu.Device.Dispatches;
        var got = (Tensor)new Executor(gpu).Run(f, feeds).Values.Single();
        Assert.True(gpu.Device.Dispatches - d0 > 1);
        AssertClose(want, got);
    }

    /// <summary>Graphs PyTorch exported (HF repeat_kv with concrete shapes, an additive mask constant, GPT-2's kᵀ
    /// straight from [batch, seq, heads, head_dim]): every Softmax
    /// becomes an attention region, and the fused graph on webgpu gives transformers' logits within 1e-4.</summary>
    [Theory]
    [InlineData("test_hf_llama")]
    [InlineData("test_hf_qwen2")]
    [InlineData("test_hf_gpt2")]
    [InlineData("test_hf_gemma")]
    [InlineData("test_hf_phi3")]
    [InlineData("test_hf_mistral")]
    public void Exported_graphs_fuse_attention_and_keep_their_logits(string name)
    {
        WebGpuTests.SkipIfNoDawn("webgpu:gles");
        string dir = SharedData.Require("conformance", "hf-onnx", name);
        var m = Tapml.Ir.Onnx.OnnxImporter.Load(Path.Combine(dir, "model.onnx"));
        var (feeds, outputs) = Tapml.Testing.Conformance.OnnxCase.LoadDataSet(m, Path.Combine(dir, "test_data_set_0"));
        var f = Fusion.Fuse(m, out var report);
        Assert.Equal(m.Graph.Nodes.Count(n => n.OpType == "Softmax"), report.Regions.GetValueOrDefault("attention"));
        using var gpu = new WebGpuPlatform("webgpu:gles");
        var got = new Executor(gpu).Run(f, feeds);
        var (outName, want) = outputs.Single();
        var e = ((Tensor)want).Span<float>();
        var a = ((Tensor)got[outName]).Span<float>();
        Assert.Equal(e.Length, a.Length);
        for (int i = 0; i < e.Length; i++)
            Assert.True(Math.Abs(a[i] - e[i]) <= 1e-4 + 1e-3 * Math.Abs(e[i]), $"{outName}[{i}]: {a[i]} vs {e[i]}");
    }

    /// <summary>Products of one value by weights as the builtin and HF-exported graphs write them: an optional RMSNorm
    /// in front, and per structure the outputs q/k/v (GQA widths), q/k with a bias (Qwen2), silu(gate)·up (Llama's MLP),
    /// a tanh-GELU(gate)·up with scalar constants (Gemma), or two plain products. x is [1, rows, k].</summary>
    internal static (Model Model, Dictionary<string, Value> Feeds) ProjectionsGraph(int rows, int k, bool norm, string structure, DType dtype)
    {
        var g = new Graph { Name = "proj" };
        var rng = new Random(rows * 100 + k);
        Tensor Of(long[] shape, Func<float> f)
        {
            var a = new float[ShapeUtil.Size(shape)];
            for (int i = 0; i < a.Length; i++) a[i] = f();
            var t = new Tensor(DType.Float32, shape, a);
            return dtype == DType.Float16 ? new Tensor(DType.Float16, shape, a.Select(v => (Half)v).ToArray()) : t;
        }
        Tensor Rand(params long[] shape) => Of(shape, () => (float)(rng.NextDouble() * 2 - 1));
        string Const(string name, Tensor t) { g.Initializers[name] = t; return name; }
        var feeds = new Dictionary<string, Value> { ["x_in"] = Rand(1, rows, k) };
        g.Inputs.Add(new ValueInfo("x_in", TypeRef.TensorOf(dtype, 1, rows, k)));
        int n = 0;
        string Node(string op, string[] ins, Dictionary<string, Attr>? attrs = null)
        {
            string o = $"{op.ToLowerInvariant()}_{n++}";
            g.Nodes.Add(new Node { Name = o, OpType = op, Inputs = ins, Outputs = [o], Attributes = attrs ?? new() });
            return o;
        }
        Tensor Scalar(float v) => Of([], () => v);
        // x is computed (an uploaded f16 input is stored packed; activations are not).
        string x = Node("Add", ["x_in", Const("zero", Scalar(0))]);
        string h = x;
        if (norm)
        {
            string ms = Node("ReduceMean", [Node("Pow", [x, Const("two", Scalar(2))])], new() { ["axes"] = Attr.Of(new long[] { -1 }), ["keepdims"] = Attr.Of(1L) });
            h = Node("Mul", [Node("Div", [x, Node("Sqrt", [Node("Add", [ms, Const("eps", Scalar(1e-5f))])])]), Const("gamma", Rand(k))]);
        }
        string Product(string name, long width) => Node("MatMul", [h, Const(name, Rand(k, width))]);
        var outs = new List<string>();
        switch (structure)
        {
            case "qkv":
                outs.AddRange([Product("wq", 64), Product("wk", 32), Product("wv", 32)]);
                break;
            case "qkv_bias":
                outs.AddRange([Node("Add", [Product("wq", 64), Const("bq", Rand(64))]), Node("Add", [Const("bk", Rand(32)), Product("wk", 32)]), Product("wv", 32)]);
                break;
            case "swiglu":
                {
                    string gate = Product("wg", 96);
                    outs.Add(Node("Mul", [Node("Mul", [gate, Node("Sigmoid", [gate])]), Product("wu", 96)]));
                    break;
                }
            case "gelu_tanh":
                {
                    string gate = Product("wg", 40);
                    string inner = Node("Mul", [Const("c0", Scalar(0.7978846f)), Node("Add", [gate, Node("Mul", [Const("c1", Scalar(0.044715f)), Node("Pow", [gate, Const("three", Scalar(3))])])])]);
                    string gelu = Node("Mul", [Node("Mul", [gate, Const("half", Scalar(0.5f))]), Node("Add", [Const("one", Scalar(1)), Node("Tanh", [inner])])]);
                    outs.Add(Node("Mul", [gelu, Product("wu", 40)]));
                    break;
                }
            default:
                outs.AddRange([Product("wa", 48), Product("wb", 16)]);
                break;
        }
        foreach (var o in outs) g.Outputs.Add(new ValueInfo(o, null));
        return (new Model { Graph = g, Opsets = new() { [""] = 17 } }, feeds);
    }

    /// <summary>The projections kernel against the cpu reference on the original graph: norm or not, one to four rows,
    /// GQA widths, bias and SwiGLU/GELU epilogues, f16 weights read packed. Exactly one dispatch (plus x's Add).
    /// Outside the kernel (five rows, a row length not a multiple of 4) the body runs as its norm, products and
    /// epilogue (x's Add, one norm, a product each, one epilogue: 5 dispatches) with the same values.</summary>
    [Theory]
    [InlineData("webgpu", 1, 64, true, "qkv", false, 2)]
    [InlineData("webgpu:gles", 3, 64, true, "qkv_bias", false, 2)]
    [InlineData("webgpu", 2, 128, true, "swiglu", false, 2)]
    [InlineData("webgpu", 4, 64, true, "gelu_tanh", false, 2)]
    [InlineData("webgpu:gles", 1, 72, false, "pair", false, 2)]
    [InlineData("webgpu", 2, 64, true, "swiglu", true, 2)]
    [InlineData("webgpu:gles", 1, 64, true, "qkv_bias", true, 2)]
    [InlineData("webgpu", 5, 64, true, "swiglu", false, 5)]
    [InlineData("webgpu", 1, 30, true, "qkv", false, 5)]
    public void Projections_kernel_matches_the_reference(string platform, int rows, int k, bool norm, string structure, bool f16, int expectedDispatches)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        var (m, feeds) = ProjectionsGraph(rows, k, norm, structure, f16 ? DType.Float16 : DType.Float32);
        var f = Fusion.Fuse(m, out var report);
        Assert.True(report.Regions.GetValueOrDefault("projections") == 1, report.ToString());
        var fused = Assert.Single(f.Graph.Nodes, n => n.OpType == Fusion.OpType);
        Assert.Equal(m.Graph.Outputs.Select(o => o.Name).Order(), fused.Outputs.Order());
        Assert.Equal(2, f.Graph.Nodes.Count);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = new WebGpuPlatform(platform);
        var want = new Executor(cpu).Run(m, feeds);
        long d0 = gpu.Device.Dispatches;
        var got = new Executor(gpu).Run(f, feeds);
        long dispatches = gpu.Device.Dispatches - d0;
        Assert.Equal(expectedDispatches, dispatches);
        foreach (var (name, v) in want)
        {
            float[] F(Tensor t) => t.Data is Half[] hs ? hs.Select(x => (float)x).ToArray() : t.Span<float>().ToArray();
            var e = F((Tensor)v);
            var a = F((Tensor)got[name]);
            Assert.Equal(((Tensor)v).Shape, ((Tensor)got[name]).Shape);
            Assert.Equal(((Tensor)v).DType, ((Tensor)got[name]).DType);
            double abs = f16 ? 5e-3 : 1e-5, rel = f16 ? 1e-2 : 1e-4;
            for (int i = 0; i < e.Length; i++)
                Assert.True(Math.Abs(a[i] - e[i]) <= abs + rel * Math.Abs(e[i]), $"{name}[{i}]: {a[i]} vs {e[i]}");
        }
    }

    /// <summary>The projections kernel over <c>--quantize q4</c> products (MatMulNBits, stacked nibbles) against the cpu
    /// running the same quantized graph unfused: norm or not, one to four rows, GQA widths, bias and SwiGLU/GELU
    /// epilogues, a K that is not a multiple of the block (72: the last block padded, x read with bounds checks). One
    /// dispatch (plus x's Add); five rows run the body (x's Add, one norm, MatMulNBits' decode kernel twice a product, one epilogue), each
    /// product reading its rows of the stacked buffers where their offsets meet the binding alignment.</summary>
    [Theory]
    [InlineData("webgpu", 1, 64, true, "qkv", 2)]
    [InlineData("webgpu", 3, 64, true, "qkv_bias", 2)]
    [InlineData("webgpu", 2, 128, true, "swiglu", 2)]
    [InlineData("webgpu:gles", 4, 64, true, "gelu_tanh", 2)]
    [InlineData("webgpu", 1, 72, false, "pair", 2)]
    [InlineData("webgpu", 1, 72, true, "swiglu", 2)]
    [InlineData("webgpu", 5, 64, true, "swiglu", 7)]       // 5 rows: two decode kernels a product (4 rows, then 1)
    [InlineData("webgpu", 5, 256, true, "qkv", 8)]         // the products' rows start 256-byte aligned: prefill reads views of the stack
    [InlineData("opencl", 3, 64, true, "qkv_bias", 2)]
    [InlineData("opencl", 1, 72, true, "swiglu", 2)]
    [InlineData("webgpu?q4-threads=2&q4-unroll=2", 1, 128, true, "swiglu", 2)]   // units two an iteration, no tail
    [InlineData("vulkan?q4-threads=2&q4-unroll=3", 2, 256, true, "qkv", 2)]      // three an iteration, then a tail
    [InlineData("webgpu?q4-threads=4&q4-reduce=serial", 3, 256, true, "swiglu", 2)] // partial sums added by one thread a column
    [InlineData("opencl?q4-threads=8", 2, 256, true, "qkv", 2)]                     // a tree of partial sums over 8 threads
    [InlineData("webgpu?q4-xs=1", 1, 256, true, "swiglu", 2)]                       // x·γ staged in workgroup memory
    [InlineData("webgpu?q4-xs=1&q4-reduce=serial", 3, 72, true, "qkv_bias", 2)]     // staged, K not a whole number of 16-byte units
    [InlineData("vulkan?q4-xs=1", 2, 8192, true, "swiglu", 2)]                      // staged in several chunks
    [InlineData("opencl?q4-xs=1&q4-threads=4", 1, 128, false, "pair", 2)]           // staged, no norm
    [InlineData("webgpu?q4-unit=1", 2, 256, true, "swiglu", 2)]                     // one u32 a unit: a row's threads 32 bytes apart in x
    [InlineData("vulkan?q4-unit=2&q4-xs=1", 1, 256, true, "qkv", 2)]                // two words a unit, staged
    [InlineData("vulkan?q4-loads=first", 2, 256, true, "swiglu", 2)]                 // every row's loads before the math
    [InlineData("webgpu?q4-loads=first&q4-unit=1", 1, 72, true, "qkv_bias", 2)]      // the same, one word a unit
    [InlineData("webgpu?q4-reduce=subgroup&q4-threads=8", 2, 256, true, "swiglu", 2)] // partial sums and Σ x² by subgroup shuffles
    [InlineData("vulkan?q4-reduce=subgroup&q4-xs=1&q4-threads=4", 1, 256, true, "qkv", 2)] // the same, x·γ staged
    [InlineData("webgpu", 2, 1024, true, "swiglu", 2)]                               // whole 1024-value panels (q4-layout=panels, the rule)
    [InlineData("vulkan", 5, 2048, true, "qkv", 8)]                                  // the body over views of the panel stack
    [InlineData("webgpu", 40, 1024, true, "qkv", 5)]                                 // prefill: the tiled kernel over views of the panel stack
    [InlineData("opencl", 1, 1024, true, "qkv_bias", 2)]
    [InlineData("webgpu?q4-layout=rows", 1, 1024, true, "swiglu", 2)]
    [InlineData("webgpu?q4-layout=halves", 2, 1024, true, "swiglu", 2)]             // a word's halves 128 values apart
    [InlineData("webgpu?q4-params=packed", 2, 1024, true, "swiglu", 2)]              // a block's f16 scale and zero point in one u32
    [InlineData("vulkan?q4-params=packed", 40, 1024, true, "qkv", 5)]                // prefill: the tiled kernel over views of the packed stack
    [InlineData("opencl?q4-params=packed", 5, 2048, true, "qkv", 8)]                 // the body over views of the packed stack
    [InlineData("vulkan?q4-layout=halves", 40, 1024, true, "qkv", 5)]                // prefill: the tiled kernel over views of the halves stack
    [InlineData("opencl?q4-layout=halves", 5, 2048, true, "qkv", 8)]                 // the body over views of the halves stack
    [InlineData("webgpu?q4-layout=halves&q4-zero=sum", 3, 2048, true, "swiglu", 2)]  // zero points out of the values: z·Σx a block
    [InlineData("vulkan?q4-zero=sum", 1, 1024, false, "pair", 2)]
    [InlineData("vulkan?q4-reduce=tree&q4-threads=64", 3, 1024, false, "pair", 2)]   // panels, a tree of 64 partial sums
    [InlineData("webgpu?q4-nibbles=half", 2, 1024, true, "swiglu", 2)]          // nibbles widened as f16 subnormals (skipped where flushed)
    [InlineData("vulkan?q4-nibbles=half&q4-layout=halves", 1, 2048, false, "pair", 2)]
    [InlineData("opencl?q4-nibbles=half&q4-params=packed", 3, 1024, true, "qkv", 2)]
    [InlineData("webgpu", 2, 1024, true, "swiglu", 2, true)]                          // f32 scales (not all f16 values): vec4 loads
    [InlineData("vulkan?q4-layout=halves", 3, 1024, true, "qkv", 2, true)]
    [InlineData("opencl?q4-layout=halves", 40, 1024, true, "qkv", 5, true)]          // prefill over views of the halves stack, f32 scales
    [InlineData("webgpu?q4-layout=halves&q4-zero=sum", 1, 2048, true, "swiglu", 2, true)]
    public void Q4_projections_kernel_matches_cpu(string platform, int rows, int k, bool norm, string structure, int expectedDispatches, bool f32Scales = false) =>
        Q4ProjectionsMatchCpu(platform, rows, k, norm, structure, expectedDispatches, "q4", f32Scales);

    /// <summary>The same over <c>q4-a8</c> products (accuracy_level 4): x (its RMSNorm with it) quantized to int8 by
    /// one kernel, then the projections kernel's integer sums, against the cpu's int8 reference run unfused: one
    /// dispatch more than q4's where the region fuses; five rows run the body (each product quantizing its x).</summary>
    [Theory]
    [InlineData("webgpu", 1, 64, true, "qkv", 3)]
    [InlineData("webgpu", 3, 64, true, "qkv_bias", 3)]
    [InlineData("webgpu", 2, 128, true, "swiglu", 3)]
    [InlineData("webgpu", 4, 64, true, "gelu_tanh", 3)]
    [InlineData("vulkan", 1, 72, true, "swiglu", 3)]                 // K padded to whole blocks
    [InlineData("opencl", 2, 256, false, "pair", 3)]
    [InlineData("webgpu", 5, 64, true, "swiglu", 9)]                 // the body: quantize + two decode kernels a product
    [InlineData("webgpu", 1, 4096, true, "swiglu", 3)]               // x quantized by two workgroups
    public void Q4_a8_projections_kernel_matches_cpu(string platform, int rows, int k, bool norm, string structure, int expectedDispatches) =>
        Q4ProjectionsMatchCpu(platform, rows, k, norm, structure, expectedDispatches, "q4-a8");

    /// <summary><paramref name="f32Scales"/>: each scale's lowest mantissa bit set after quantizing, so they are no longer
    /// f16 values and stay f32 on the GPU (the quantizer's are f16 values, kept as f16).</summary>
    static void Q4ProjectionsMatchCpu(string platform, int rows, int k, bool norm, string structure, int expectedDispatches, string scheme, bool f32Scales = false)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        IPlatform made;
        try { made = PlatformRegistry.Create(platform); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); return; }
        var (m, feeds) = ProjectionsGraph(rows, k, norm, structure, DType.Float32);
        var q = WeightQuantizer.Apply(m, QuantizeScheme.Parse(scheme));
        Assert.True(q.Products >= 2, q.ToString());
        foreach (var name in m.Graph.Initializers.Keys.Where(n => n.Contains("_scales", StringComparison.Ordinal)).ToList())
        {
            var s = m.Graph.Initializers[name].As<float>().ToArray();
            Assert.All(s, v => Assert.True(WeightQuantizer.HalfExact(v), $"{name}: {v} is not an f16 value"));
            if (f32Scales) m.Graph.Initializers[name] = new Tensor(DType.Float32, m.Graph.Initializers[name].Shape, Array.ConvertAll(s, v => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(v) | 1)));
        }
        var f = Fusion.Fuse(m, out var report);
        Assert.True(report.Regions.GetValueOrDefault("projections") == 1, report.ToString());
        var fused = Assert.Single(f.Graph.Nodes, n => n.OpType == Fusion.OpType);
        Assert.All(fused.Attributes["body"].G!.Nodes.Where(n => n.OpType.StartsWith("MatMul", StringComparison.Ordinal)), n => Assert.Equal("MatMulNBits", n.OpType));
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = (WebGpuPlatform)made;
        var want = new Executor(cpu).Run(m, feeds);
        long d0 = gpu.Device.Dispatches;
        var got = new Executor(gpu).Run(f, feeds);
        Assert.Equal(expectedDispatches, gpu.Device.Dispatches - d0);
        // NOTE: the absolute bound grows with the outputs' size: another order of f32 sums over K (up to 60 here at K 2048).
        foreach (var (name, v) in want) AssertClose((Tensor)v, (Tensor)got[name], 1e-5 + 2e-6 * ((Tensor)v).As<float>().ToArray().Max(Math.Abs), 1e-4);
    }

    /// <summary>A platform whose tuning changes the q4 layout between runs (<c>bench q4-sweep</c> does) lays a projections
    /// region's stacked weights out again in the new layout: a second upload, and outputs still cpu's.</summary>
    [Fact]
    public void Q4_projections_follow_a_layout_change()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var (m, feeds) = ProjectionsGraph(1, 1024, true, "swiglu", DType.Float32);
        WeightQuantizer.Apply(m, QuantizeScheme.Parse("q4"));
        var f = Fusion.Fuse(m, out _);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = (WebGpuPlatform)PlatformRegistry.Create("webgpu");
        var want = new Executor(cpu).Run(m, feeds);
        long weightBytes = m.Graph.Initializers.Where(p => p.Key.Contains("_Q4", StringComparison.Ordinal)).Sum(p => p.Value.Length);
        foreach (var layout in new[] { "panels", "rows", "panels" })
        {
            gpu.MatVec = gpu.MatVec with { Q4Layout = layout };
            long before = gpu.UploadedBytes;
            var got = new Executor(gpu).Run(f, feeds);
            Assert.True(gpu.UploadedBytes - before >= weightBytes, $"{layout}: {gpu.UploadedBytes - before} bytes uploaded, the packed weights are {weightBytes}");
            foreach (var (name, v) in want) AssertClose((Tensor)v, (Tensor)got[name], 1e-5 + 2e-6 * ((Tensor)v).As<float>().ToArray().Max(Math.Abs), 1e-4);
        }
    }

    /// <summary>A second greedy run on the same platform binds the buffers the first bound: few new bind groups a decode
    /// step (host writes of the per-step feeds pool apart from kernel outputs: 4.4 of 19.3 dispatches a step here; with
    /// one pool 10.7, every step).</summary>
    [Fact]
    public void Decode_steps_reuse_their_bind_groups()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var f = Fusion.Fuse(Tiny("llama"), out _);
        using var gpu = (WebGpuPlatform)PlatformRegistry.Create("webgpu");
        var dev = Assert.IsType<DawnDevice>(gpu.Device);
        long[] prompt = [1, 17, 305, 42];
        const int tokens = 24;
        var first = Generation.Greedy(new Executor(gpu) { PreferWholeGraph = true }, f, prompt, tokens).Tokens;
        long made = dev.BindGroupsMade, d0 = dev.Dispatches;
        var second = Generation.Greedy(new Executor(gpu) { PreferWholeGraph = true }, f, prompt, tokens).Tokens;
        Assert.Equal(first, second);
        double perStep = (double)(dev.BindGroupsMade - made) / tokens, dispatches = (double)(dev.Dispatches - d0) / tokens;
        Assert.True(perStep <= 6, $"{perStep:F1} new bind groups a step of {dispatches:F1} dispatches");
    }

    /// <summary>The causal mask is shape arithmetic on the host (Shape → Range → LessOrEqual), uploaded where attention
    /// binds it: after a prompt whose mask [12, 12] is over the shadow size, decode steps still make theirs on the host
    /// (no LessOrEqual kernel a step), and the tokens are the cpu's.</summary>
    [Fact]
    public void Decode_masks_stay_on_the_host_after_a_long_prompt()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var m = Tiny("llama");
        var f = Fusion.Fuse(m, out _);
        using var gpu = (WebGpuPlatform)PlatformRegistry.Create("webgpu");
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        long[] prompt = [1, 17, 305, 42, 5, 6, 7, 8, 9, 10, 11, 12];
        Assert.True(gpu.StartProfile());
        var got = Generation.Greedy(new Executor(gpu) { PreferWholeGraph = true }, f, prompt, 6).Tokens;
        var kernels = gpu.StopProfile();
        Assert.Equal(Generation.Greedy(new Executor(cpu) { PreferWholeGraph = true }, m, prompt, 6).Tokens, got);
        Assert.Contains(kernels, k => k.Kernel == "Attention");
        Assert.DoesNotContain(kernels, k => k.Kernel.StartsWith("LessOrEqual", StringComparison.Ordinal));
    }

    /// <summary><c>--quantize q4</c> on the tiny Llama, fused: every product is in a region (q/k/v and gate/up with their
    /// norm, o/down with the residual add, lm_head with the final norm) and the cpu runs the fused graph bit-identically
    /// to the unfused one; a decode step on webgpu takes as many dispatches
    /// as the f32 graph's (six a layer, plus seven) with logits and presents within tolerance of the cpu on the unfused
    /// quantized graph; and greedy generation gives the same tokens on cpu, fused and unfused on the GPU (webgpu; opencl
    /// renders the same kernels; <c>q4-split</c>: the down projection's rows in two ranges of K, one dispatch more a layer).</summary>
    [Theory]
    [InlineData("webgpu", 0)]
    [InlineData("opencl", 0)]
    [InlineData("vulkan?q4-split=2&q4-threads=2", 1)]
    public void Q4_decode_steps_fuse_like_f32_and_give_the_cpu_tokens(string platform, int splitPerLayer)
    {
        WebGpuTests.SkipIfNoDawn(platform);
        IPlatform made;
        try { made = PlatformRegistry.Create(platform); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); return; }
        var m = Tiny("llama");
        WeightQuantizer.Apply(m, QuantizeScheme.Parse("q4"));
        int layers = m.Graph.Nodes.Count(n => n.OpType == "Softmax");
        var f = Fusion.Fuse(m, out var report);
        Assert.Equal(2 * layers + 1, report.Regions.GetValueOrDefault("projections"));
        Assert.Equal(2 * layers, report.Regions.GetValueOrDefault("matmul_add"));
        Assert.DoesNotContain(f.Graph.Nodes, n => n.OpType == "MatMulNBits");
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = (WebGpuPlatform)made;
        var (ec, eg) = (new Executor(cpu), new Executor(gpu));
        var feeds = Feeds(m);
        var want = ec.Run(m, feeds);
        // The cpu runs the fused q4 graph's bodies node by node: bit-identical to the unfused graph.
        foreach (var (name, v) in ec.Run(f, feeds))
            Assert.Equal(((Tensor)want[name]).Span<float>().ToArray(), ((Tensor)v).Span<float>().ToArray());
        var got = eg.Run(f, feeds);
        for (int step = 0; step < 2; step++)
        {
            long token = 11 + step, position = 5 + step;
            want = ec.Run(m, Generation.NextFeeds(m, want, token, position));
            long d0 = gpu.Device.Dispatches;
            got = eg.Run(f, Generation.NextFeeds(f, got, token, position));
            long perStep = gpu.Device.Dispatches - d0;
            Assert.True(perStep <= (6 + splitPerLayer) * layers + 7, $"{perStep} dispatches in a q4 decode step of {layers} layers");
            foreach (var (name, v) in want) AssertClose((Tensor)v, (Tensor)got[name], 1e-4, 1e-3);
        }
        if (splitPerLayer > 0)
        {
            // One more step, profiled: each split product's partial sums added by one MatVecSum dispatch.
            Assert.True(gpu.StartProfile());
            eg.Run(f, Generation.NextFeeds(f, got, 13, 7));
            Assert.Equal(splitPerLayer * layers, gpu.StopProfile().Where(k => k.Kernel == "MatVecSum").Sum(k => k.Calls));
        }
        long[] prompt = [1, 17, 305, 42];
        var reference = Generation.Greedy(new Executor(cpu) { PreferWholeGraph = true }, m, prompt, 6).Tokens;
        Assert.Equal(reference, Generation.Greedy(new Executor(gpu) { PreferWholeGraph = true }, f, prompt, 6).Tokens);
        Assert.Equal(reference, Generation.Greedy(new Executor(gpu) { PreferWholeGraph = true }, m, prompt, 6).Tokens);
    }

    static void AssertClose(Tensor want, Tensor got, double abs, double rel)
    {
        Assert.Equal(want.Shape, got.Shape);
        var e = want.Span<float>();
        var a = got.Span<float>();
        for (int i = 0; i < e.Length; i++)
            Assert.True(Math.Abs(a[i] - e[i]) <= abs + rel * Math.Abs(e[i]), $"y[{i}]: {a[i]} vs {e[i]}");
    }

    static void AssertClose(Tensor want, Tensor got)
    {
        Assert.Equal(want.Shape, got.Shape);
        var e = want.Span<float>();
        var a = got.Span<float>();
        for (int i = 0; i < e.Length; i++)
            Assert.True(Math.Abs(a[i] - e[i]) <= 1e-5 + 1e-4 * Math.Abs(e[i]), $"y[{i}]: {a[i]} vs {e[i]}");
    }
}
