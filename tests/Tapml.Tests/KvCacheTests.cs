using Tapml.Core;
using Tapml.Ir;
using Tapml.Models;
using Tapml.Platforms;
using Tapml.Platforms.Execution;
using Tapml.Platforms.WebGpu;
using Tapml.Testing;
using Tapml.Testing.Carving;
using Xunit;

namespace Tapml.Tests;

/// <summary>The webgpu KV cache appended in place (a layer's present K/V are views into a buffer with room for more rows,
/// regrown by copying when full) against the cpu reference: long decodes, the regrowth crossings, and carving.</summary>
public class KvCacheTests
{
    static Model Tiny(string arch) => HfModels.Load(TinyCheckpoint.Materialize(arch));

    /// <summary>Decode steps of the fused tiny Llama fed the cpu's tokens: every step's logits and presents within
    /// tolerance of the cpu on the original graph; each step's present K is a longer view of the last one's buffer
    /// except where the cache outgrows its capacity (64 rows after the prefill here) and is copied into one twice as long.</summary>
    [Theory]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void Decode_appends_in_place_and_regrows_by_copying(string arch)
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var m = Tiny(arch);
        var f = Fusion.Fuse(m, out _);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = new WebGpuPlatform("webgpu");
        var (ec, eg) = (new Executor(cpu), new Executor(gpu));
        long[] prompt = [1, 17, 305, 42, 7];
        var want = ec.Run(m, Generation.PrefillFeeds(m, prompt));
        var got = eg.Run(f, Generation.PrefillFeeds(f, prompt), KeepKv);
        int inPlace = 0, regrown = 0;
        const int steps = 72;
        for (int step = 0; step < steps; step++)
        {
            long token = Generation.ArgmaxLast((Tensor)want["logits"]), position = prompt.Length + step;
            var wf = Generation.NextFeeds(m, want, token, position);
            var gf = Generation.NextFeeds(f, got, token, position);
            want = ec.Run(m, wf);
            got = eg.Run(f, gf, KeepKv);
            var (past, present) = ((GpuTensor)gf["past_key_values.0.key"], (GpuTensor)got["present.0.key"]);
            if (ReferenceEquals(past.Buffer, present.Buffer)) inPlace++; else regrown++;
            if (step % 20 == 0 || step == steps - 1)
                foreach (var (name, v) in want) AssertClose((Tensor)v, (Tensor)gpu.Download(got[name]), $"{name} at decode step {step + 1}");
            foreach (var (name, v) in gf) if (name.StartsWith("past_key_values.", StringComparison.Ordinal)) gpu.Free(v);
        }
        // 5 + 72 rows: past the prefill's capacity (64 rows for this model's 128-byte rows) once.
        Assert.Equal(1, regrown);
        Assert.Equal(steps - regrown, inPlace);
        foreach (var v in got.Values) gpu.Free(v);
    }

    static bool KeepKv(string name) => name.StartsWith("present.", StringComparison.Ordinal);

    /// <summary>A long greedy generation (300 tokens, the cache regrown three times) on webgpu gives the cpu's tokens.</summary>
    [Fact]
    public void Long_greedy_generation_gives_the_cpu_tokens()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var m = Tiny("llama");
        var f = Fusion.Fuse(m, out _);
        long[] prompt = [1, 17, 305, 42, 7, 99, 100, 3];
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = new WebGpuPlatform("webgpu");
        var want = Generation.Greedy(new Executor(cpu), m, prompt, 300).Tokens;
        var got = Generation.Greedy(new Executor(gpu) { PreferWholeGraph = true }, f, prompt, 300).Tokens;
        Assert.Equal(300, want.Length);
        Assert.Equal(want, got);
    }

    /// <summary>With <c>keepPromptLogits: false</c> the prompt's argmax runs on webgpu: the same tokens as cpu's (whose
    /// prompt logits are read back), no prompt logits crossing the bus ([1, 0, vocab]); the default keeps all of them.</summary>
    [Fact]
    public void The_prompt_argmax_on_the_device_gives_the_cpu_tokens()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var m = Tiny("llama");
        var f = Fusion.Fuse(m, out _);
        long[] prompt = [1, 17, 305, 42, 7, 99, 100, 3, 12, 5, 64];
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = new WebGpuPlatform("webgpu");
        var want = Generation.Greedy(new Executor(cpu), m, prompt, 6, keepPromptLogits: false);
        Assert.Equal([1L, prompt.Length, 1024], want.PrefillLogits.Shape);
        var exec = new Executor(gpu) { PreferWholeGraph = true };
        var got = Generation.Greedy(exec, f, prompt, 6, keepPromptLogits: false);
        Assert.Equal(want.Tokens, got.Tokens);
        Assert.Equal([1L, 0, 1024], got.PrefillLogits.Shape);
        var kept = Generation.Greedy(exec, f, prompt, 6);
        Assert.Equal(want.Tokens, kept.Tokens);
        Assert.Equal([1L, prompt.Length, 1024], kept.PrefillLogits.Shape);
    }

    /// <summary>A generation carved on webgpu (fused graph, cache appended in place) records plain tensors of the
    /// values' logical shapes, and its cases replay clean on cpu and webgpu.</summary>
    [Fact]
    public void A_generation_carved_on_webgpu_replays_clean()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var m = Tiny("llama");
        var f = Fusion.Fuse(m, out _);
        string dir = Path.Combine(Path.GetTempPath(), $"tapml-kv-carve-{Guid.NewGuid():N}");
        try
        {
            using var gpu = new WebGpuPlatform("webgpu");
            var store = CarvedStore.Create(dir, "builtin:tiny-llama", new string('0', 64), gpu.Name);
            var exec = new Executor(gpu);
            var recorder = new Recorder(store, new CarveOptions()) { PhaseOf = run => run == 0 ? "prefill" : $"decode:{run}" };
            exec.Observers.Add(recorder);
            using (recorder) Generation.Greedy(exec, f, [1, 17, 305, 42, 7], 6);
            store = CarvedStore.Open(dir);
            Assert.NotEmpty(store.Cases);
            using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
            foreach (IPlatform p in new IPlatform[] { cpu, gpu })
            {
                var replayer = new Replayer(store, p, new Tolerances());
                foreach (var c in store.Cases)
                {
                    var r = replayer.Run(c);
                    Assert.True(r.Status == CaseStatus.Passed, $"{p.Name}: {c.Name}: {r.Status} {r.Reason}");
                }
            }
        }
        finally { try { Directory.Delete(dir, true); } catch (IOException) { } }
    }

    /// <summary>A 200-token prompt on the fused graph (attention by tiles of query rows, q rotated as it loads) gives the
    /// cpu's logits and presents within tolerance, and the next decode step appends to that cache in place.</summary>
    [Fact]
    public void A_long_prompt_matches_cpu_and_decodes_on()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var m = Tiny("llama");
        var f = Fusion.Fuse(m, out _);
        var rng = new Random(5);
        long[] prompt = Enumerable.Range(0, 200).Select(_ => (long)rng.Next(1024)).ToArray();
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        using var gpu = new WebGpuPlatform("webgpu");
        var (ec, eg) = (new Executor(cpu), new Executor(gpu));
        var want = ec.Run(m, Generation.PrefillFeeds(m, prompt));
        var got = eg.Run(f, Generation.PrefillFeeds(f, prompt), KeepKv);
        foreach (var (name, v) in want) AssertClose((Tensor)v, (Tensor)gpu.Download(got[name]), $"{name} of the prompt");
        long token = Generation.ArgmaxLast((Tensor)want["logits"]);
        var gf = Generation.NextFeeds(f, got, token, prompt.Length);
        want = ec.Run(m, Generation.NextFeeds(m, want, token, prompt.Length));
        got = eg.Run(f, gf, KeepKv);
        Assert.Same(((GpuTensor)gf["past_key_values.1.value"]).Buffer, ((GpuTensor)got["present.1.value"]).Buffer);
        foreach (var (name, v) in want) AssertClose((Tensor)v, (Tensor)gpu.Download(got[name]), $"{name} of the decode step");
    }

    internal static void AssertClose(Tensor want, Tensor got, string what)
    {
        Assert.Equal(want.Shape, got.Shape);
        var e = want.Span<float>();
        var a = got.Span<float>();
        for (int i = 0; i < e.Length; i++)
            Assert.True(Math.Abs(a[i] - e[i]) <= 1e-4 + 1e-3 * Math.Abs(e[i]), $"{what}: [{i}] {a[i]} vs {e[i]}");
    }
}
