using System.Text.Json.Nodes;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Tapml.Platforms.WebGpu.Kernels;
using Xunit;

namespace Tapml.Tests;

/// <summary>The webgpu platform on this machine's adapters (SwiftShader Vulkan from chromium, Mesa llvmpipe GLES).</summary>
public class WebGpuTests
{
    /// <summary>Skips a webgpu row only where Dawn is not installed (CI installs it in scripts/setup.sh).</summary>
    internal static void SkipIfNoDawn(string platform)
    {
        if (platform.StartsWith("webgpu", StringComparison.Ordinal) && WebGpuPlatform.Unavailable() is { } why) Assert.Skip(why);
    }

    /// <summary>Each Dawn backend (plain <c>webgpu</c> is a registry row of GpuPlatformTests).</summary>
    [Theory]
    [InlineData("webgpu:vulkan")]
    [InlineData("webgpu:gles")]
    public void Tiny_llama_generates_the_cpu_tokens(string platform)
    {
        SkipIfNoDawn(platform);
        var cpu = CliRunner.Run("generate", "--model", "builtin:tiny-llama", "--platform", "cpu", "--input-ids", "1,17,305,42", "--max-tokens", "6");
        var gpu = CliRunner.Run("generate", "--model", "builtin:tiny-llama", "--platform", platform, "--input-ids", "1,17,305,42", "--max-tokens", "6");
        Assert.True(cpu.ExitCode == 0, cpu.Stderr);
        Assert.True(gpu.ExitCode == 0, gpu.Stdout + gpu.Stderr);
        string Tokens(string s) => s.Split('\n').Single(l => l.StartsWith("tokens:", StringComparison.Ordinal));
        Assert.Equal(Tokens(cpu.Stdout), Tokens(gpu.Stdout));
    }

    /// <summary>Greedy decode on webgpu keeps each token on the GPU and feeds it to the next step before reading it
    /// back (one small readback a step, overlapped): the tokens are the cpu's, with and without an end token that
    /// stops generation while the steps after it are already recorded (those steps are discarded, not counted).</summary>
    [Fact]
    public void Pipelined_greedy_decode_gives_the_cpu_tokens_and_stops_at_an_end_token()
    {
        SkipIfNoDawn("webgpu");
        var m = Tapml.Models.HfModels.Load(Tapml.Models.TinyCheckpoint.Materialize("llama"));
        var f = Fusion.Fuse(m, out _);
        long[] prompt = [1, 17, 305, 42];
        using var gpu = new WebGpuPlatform("webgpu");
        var ec = new Executor(new Tapml.Platforms.Cpu.CpuPlatform());
        var eg = new Executor(gpu);
        var want = Tapml.Models.Generation.Greedy(ec, m, prompt, 8).Tokens;
        long r0 = gpu.Device.Counters.Readbacks, b0 = gpu.Device.Counters.BindingsMade;
        var got = Tapml.Models.Generation.Greedy(eg, f, prompt, 8);
        long firstGroups = gpu.Device.Counters.BindingsMade - b0;
        Assert.Equal(want, got.Tokens);
        Assert.Equal(7, got.DecodeSteps);
        // The prefill's logits, then one token a decode step.
        Assert.Equal(1 + 7, gpu.Device.Counters.Readbacks - r0);
        // An end token whose first appearance is in the middle: generation stops right after it.
        int at = Enumerable.Range(1, want.Length - 2).First(i => Array.IndexOf(want, want[i]) == i);
        var eos = new[] { (int)want[at] };
        var wantEos = Tapml.Models.Generation.Greedy(ec, m, prompt, 8, eos);
        long r1 = gpu.Device.Counters.Readbacks;
        var gotEos = Tapml.Models.Generation.Greedy(eg, f, prompt, 8, eos);
        Assert.Equal(want[..(at + 1)], wantEos.Tokens);
        Assert.Equal(wantEos.Tokens, gotEos.Tokens);
        Assert.Equal(at, gotEos.DecodeSteps);
        // The end token's step was recorded with PipelineDepth steps after it (fewer where the limit came first): each
        // was read back, then dropped.
        Assert.Equal(1 + at + Math.Min(Tapml.Models.Generation.PipelineDepth, 7 - at), gpu.Device.Counters.Readbacks - r1);
        // The executor still runs after a discarded step (its KV cache and token were freed, not left bound).
        long b2 = gpu.Device.Counters.BindingsMade;
        Assert.Equal(want, Tapml.Models.Generation.Greedy(eg, f, prompt, 8).Tokens);
        // A repeated generation finds most of its bind groups in the cache (the counter counts the ones made).
        long againGroups = gpu.Device.Counters.BindingsMade - b2;
        Assert.True(firstGroups > 0 && againGroups * 2 < firstGroups, $"bind groups made: first run {firstGroups}, again {againGroups}");
    }

    /// <summary><c>generate --profile</c> on webgpu: GPU time per kernel (each dispatch timed in a pass of its own)
    /// for the run's dispatches, and the same tokens as without it; on cpu it is a clear error.</summary>
    [Fact]
    public void Generate_profile_lists_gpu_time_per_kernel_and_keeps_the_tokens()
    {
        SkipIfNoDawn("webgpu");
        string[] args = ["generate", "--model", "builtin:tiny-llama", "--input-ids", "1,17,305,42", "--max-tokens", "4"];
        var plain = CliRunner.Run([.. args, "--platform", "webgpu"]);
        var prof = CliRunner.Run([.. args, "--platform", "webgpu", "--profile"]);
        Assert.True(prof.ExitCode == 0, prof.Stderr);
        string Tokens(string s) => s.Split('\n').Single(l => l.StartsWith("tokens:", StringComparison.Ordinal));
        Assert.Equal(Tokens(plain.Stdout), Tokens(prof.Stdout));
        Assert.Contains("KvAppendRotary", prof.Stderr);
        Assert.Contains("Attention", prof.Stderr);
        var m = System.Text.RegularExpressions.Regex.Match(prof.Stderr, @"GPU time of (\d+) dispatches over 4 steps");
        Assert.True(m.Success, prof.Stderr);
        Assert.True(int.Parse(m.Groups[1].Value) >= 4 * 12, prof.Stderr);
        var cpu = CliRunner.Run([.. args, "--platform", "cpu", "--profile"]);
        Assert.Equal(2, cpu.ExitCode);
        Assert.Contains("--profile needs a platform that times its kernels", cpu.Stderr);
    }

    [Fact]
    public void A_lowered_binding_limit_is_a_clear_error_naming_node_and_tensor()
    {
        SkipIfNoDawn("webgpu");
        var r = CliRunner.Run("generate", "--model", "builtin:tiny-llama", "--platform", "webgpu?max-binding=4096", "--input-ids", "1,17", "--max-tokens", "2");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("maxStorageBufferBindingSize (4 KiB)", r.Stderr);
        Assert.Contains("model.embed_tokens.weight", r.Stderr);
        Assert.Contains("f32[1024,64]", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr); // no stack trace
    }

    [Fact]
    public void Platforms_lists_adapter_backend_and_limits()
    {
        SkipIfNoDawn("webgpu");
        var r = CliRunner.Run("platforms", "--json");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var gpu = JsonNode.Parse(r.Stdout)!["platforms"]!.AsArray().Single(p => (string)p!["name"]! == "webgpu")!;
        Assert.True((bool)gpu["available"]!, (string?)gpu["reason"]);
        var details = string.Join("\n", gpu["details"]!.AsArray().Select(d => (string)d!));
        Assert.Contains("maxStorageBufferBindingSize", details);
        Assert.Contains("backend: ", details);
        Assert.True((long)gpu["limits"]!["max_binding_bytes"]! > 0);
    }

    /// <summary>MatMul against a weight initializer: the matrix-vector kernel (few rows, long rows included) and the
    /// tiled kernel (many rows) over the transposed weight, f32 and packed f16, odd sizes included; results equal cpu
    /// within tolerance. Beside GpuPlatformTests' rows, which every kernel platform runs.</summary>
    [Theory]
    [InlineData(1, 64, 96, DType.Float32)]
    [InlineData(2, 9, 7, DType.Float16)]
    [InlineData(37, 64, 80, DType.Float32)]
    [InlineData(1, 8200, 50, DType.Float32)]
    [InlineData(3, 4100, 9, DType.Float32)]
    [InlineData(1, 8200, 50, DType.Float32, 3)]
    [InlineData(2, 4100, 9, DType.Float32, 4)]
    [InlineData(1, 4096, 40, DType.Float16, 2)]
    public void Matmul_against_a_weight_matches_cpu(int rows, int k, int n, DType wtype, int split = 1)
    {
        SkipIfNoDawn("webgpu");
        // split > 1: each weight row in that many parts (workgroups), their partial sums added by a second dispatch.
        MatMul.SplitK = split;
        try { MatmulAgainstAWeight(rows, k, n, wtype); }
        finally { MatMul.SplitK = 1; }
    }

    internal static void MatmulAgainstAWeight(int rows, int k, int n, DType wtype, string platform = "webgpu")
    {
        var rng = new Random(rows * 1000 + k * 10 + n);
        var w = new float[k * n];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 2 - 1);
        var weight = wtype == DType.Float16 ? new Tensor(DType.Float16, [k, n], w.Select(v => (Half)v).ToArray()) : new Tensor(DType.Float32, [k, n], w);
        var g = new Graph { Name = "mm" };
        g.Inputs.Add(new ValueInfo("x", TypeRef.TensorOf(wtype, 1L, rows, k)));
        g.Outputs.Add(new ValueInfo("y", TypeRef.TensorOf(wtype, 1L, rows, n)));
        g.Initializers["w"] = weight;
        g.Nodes.Add(new Node { Name = "mm", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["y"] });
        var model = new Model { Graph = g, Opsets = { [""] = 17 } };
        var xs = new float[rows * k];
        for (int i = 0; i < xs.Length; i++) xs[i] = (float)(rng.NextDouble() * 2 - 1);
        var x = wtype == DType.Float16 ? new Tensor(DType.Float16, [1, rows, k], xs.Select(v => (Half)v).ToArray()) : new Tensor(DType.Float32, [1, rows, k], xs);
        var feeds = new Dictionary<string, Value> { ["x"] = x };
        var want = (Tensor)new Executor(PlatformRegistry.Create("cpu")).Run(model, feeds)["y"];
        using var gpu = PlatformRegistry.Create(platform);
        var got = (Tensor)new Executor(gpu).Run(model, feeds)["y"];
        Assert.Equal(want.Shape, got.Shape);
        double tol = wtype == DType.Float16 ? 2e-2 : 1e-4 * Math.Sqrt(k);
        var a = want.Data.Cast<object>().Select(v => v is Half h ? (double)h : Convert.ToDouble(v)).ToArray();
        var b = got.Data.Cast<object>().Select(v => v is Half h ? (double)h : Convert.ToDouble(v)).ToArray();
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= tol * (1 + Math.Abs(a[i])), $"element {i}: cpu {a[i]}, {platform} {b[i]}");
    }

    /// <summary>Add(MatMul(x, W), r) fused as matmul_add, r a residual [1, rows, n] or a bias [n], long and short rows:
    /// equal to cpu within tolerance, one dispatch (two with the rows split: r is added by the second).</summary>
    [Theory]
    [InlineData(1, 8200, 37, false)]
    [InlineData(2, 8200, 40, true)]
    [InlineData(1, 512, 33, true)]
    [InlineData(1, 8200, 37, false, 3)]
    [InlineData(2, 8200, 40, true, 2)]
    public void Matmul_add_matches_cpu(int rows, int k, int n, bool bias, int split = 1)
    {
        SkipIfNoDawn("webgpu");
        MatMul.SplitK = split;
        try { MatmulAdd(rows, k, n, bias, split); }
        finally { MatMul.SplitK = 1; }
    }

    static void MatmulAdd(int rows, int k, int n, bool bias, int split)
    {
        var rng = new Random(k + n);
        float[] R(int len) => Enumerable.Range(0, len).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var g = new Graph { Name = "mma" };
        g.Inputs.Add(new ValueInfo("x", TypeRef.TensorOf(DType.Float32, 1L, rows, k)));
        g.Outputs.Add(new ValueInfo("y", TypeRef.TensorOf(DType.Float32, 1L, rows, n)));
        g.Initializers["w"] = new Tensor(DType.Float32, [k, n], R(k * n));
        var feeds = new Dictionary<string, Value> { ["x"] = new Tensor(DType.Float32, [1, rows, k], R(rows * k)) };
        if (bias) g.Initializers["r"] = new Tensor(DType.Float32, [n], R(n));
        else { g.Inputs.Add(new ValueInfo("r", TypeRef.TensorOf(DType.Float32, 1L, rows, n))); feeds["r"] = new Tensor(DType.Float32, [1, rows, n], R(rows * n)); }
        g.Nodes.Add(new Node { Name = "mm", OpType = "MatMul", Inputs = ["x", "w"], Outputs = ["p"] });
        g.Nodes.Add(new Node { Name = "add", OpType = "Add", Inputs = ["p", "r"], Outputs = ["y"] });
        var model = new Model { Graph = g, Opsets = { [""] = 17 } };
        var fused = Fusion.Fuse(model, out var report);
        Assert.Equal(1, report.Regions.GetValueOrDefault("matmul_add"));
        var want = (Tensor)new Executor(PlatformRegistry.Create("cpu")).Run(model, feeds)["y"];
        using var gpu = new WebGpuPlatform("webgpu");
        var exec = new Executor(gpu);
        exec.Run(fused, feeds);                                        // uploads the weight
        long d0 = gpu.Device.Dispatches;
        var got = (Tensor)exec.Run(fused, feeds)["y"];
        Assert.Equal(split == 1 ? 1 : 2, gpu.Device.Dispatches - d0);
        var a = want.Span<float>(); var b = got.Span<float>();
        for (int i = 0; i < a.Length; i++) Assert.True(Math.Abs(a[i] - b[i]) <= 1e-4 * Math.Sqrt(k) * (1 + Math.Abs(a[i])), $"y[{i}]: cpu {a[i]}, webgpu {b[i]}");
    }

    /// <summary>ArgMax/ArgMin over rows longer than a workgroup, with ties spread across threads, NaNs, infinities and −0 = +0:
    /// the indices equal the cpu reference's (numpy order: the first NaN, else the first extreme; the last ones with
    /// select_last_index), for f32 and int32 input; a row within 32 values a thread of the widest workgroup in one
    /// dispatch, a longer one in two.</summary>
    [Theory]
    [InlineData("ArgMax", 1, 0, DType.Float32, 3001)]
    [InlineData("ArgMax", 1, 1, DType.Float32, 3001)]
    [InlineData("ArgMin", 0, 0, DType.Float32, 3001)]
    [InlineData("ArgMin", 1, 1, DType.Float32, 3001)]
    [InlineData("ArgMax", 1, 0, DType.Int32, 3001)]
    [InlineData("ArgMin", 1, 1, DType.Int32, 3001)]
    [InlineData("ArgMax", 1, 0, DType.Float32, 40001)]
    [InlineData("ArgMax", 1, 1, DType.Float32, 40001)]
    [InlineData("ArgMin", 1, 0, DType.Int32, 40001)]
    [InlineData("ArgMax", 1, 0, DType.Float32, 3000)]                  // f32 rows of whole vec4s: vec4 loads, subgroup merge
    [InlineData("ArgMax", 1, 1, DType.Float32, 3000)]
    [InlineData("ArgMin", 1, 1, DType.Float32, 3000)]
    [InlineData("ArgMax", 1, 0, DType.Float32, 3000, "opencl")]        // no subgroups: the tree merge
    [InlineData("ArgMin", 1, 1, DType.Float32, 3000, "opencl")]
    public void Arg_reductions_match_cpu_with_ties_and_nans(string op, int axis, int last, DType dtype, int n, string platform = "webgpu")
    {
        SkipIfNoDawn(platform);
        long[] shape = [5, n];
        var rng = new Random(axis * 10 + last);
        var v = new float[5 * n];
        for (int i = 0; i < v.Length; i++) v[i] = rng.Next(-50, 50);   // many ties
        v[1 * n + n - 101] = float.NaN; v[1 * n + 17] = float.NaN;     // row 1: two NaNs
        v[2 * n + 5] = float.PositiveInfinity; v[2 * n + n - 2] = float.NegativeInfinity;
        for (int j = 0; j < n; j++) v[3 * n + j] = 7;                 // row 3: all equal
        for (int j = 0; j < n; j++) v[4 * n + j] = op == "ArgMax" ? -1 - j % 9 : 1 + j % 9;
        v[4 * n + 10] = -0f; v[4 * n + 20] = 0f;                       // row 4: the extreme is −0 then +0, equal values
        var x = dtype == DType.Int32 ? new Tensor(DType.Int32, shape, v.Select(f => float.IsFinite(f) ? (int)f : 0).ToArray()) : new Tensor(DType.Float32, shape, v);
        var g = new Graph { Name = "arg" };
        g.Inputs.Add(new ValueInfo("x", TypeRef.TensorOf(dtype, shape)));
        g.Outputs.Add(new ValueInfo("y", TypeRef.TensorOf(DType.Int64)));
        g.Nodes.Add(new Node { Name = "arg", OpType = op, Inputs = ["x"], Outputs = ["y"],
            Attributes = { ["axis"] = Attr.Of((long)axis), ["keepdims"] = Attr.Of(0L), ["select_last_index"] = Attr.Of((long)last) } });
        var model = new Model { Graph = g, Opsets = { [""] = 13 } };
        var feeds = new Dictionary<string, Value> { ["x"] = x };
        var want = (Tensor)new Executor(PlatformRegistry.Create("cpu")).Run(model, feeds)["y"];
        using var gpu = (WebGpuPlatform)TestPlatforms.CreateOrSkip(platform);
        long d0 = gpu.Device.Dispatches;
        var got = (Tensor)new Executor(gpu).Run(model, feeds)["y"];
        Assert.Equal(want.Shape, got.Shape);
        Assert.Equal((long[])want.Data, (long[])got.Data);
        if (axis == 1)
        {
            int wide = (int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Min(1024, gpu.Device.Limits.MaxInvocationsPerWorkgroup) + 1) / 2;
            Assert.Equal(n <= 32L * wide ? 1 : 2, gpu.Device.Dispatches - d0);
        }
    }
}
