using System.Diagnostics;
using System.Net.WebSockets;
using System.Text;
using System.Text.Json.Nodes;
using Tapml.Browser;
using Tapml.Core;
using Tapml.Platforms.WebGpu;
using Tapml.Testing;
using Tapml.Testing.Carving;
using Xunit;

namespace Tapml.Tests;

/// <summary>The `browser` platform in headless Chromium (WebGPU on SwiftShader): the same kernels as native webgpu,
/// driven over a WebSocket; and the bridge's failure paths (a tab closed mid-run, another origin, a wrong token).</summary>
public class BrowserTests(TinyLlamaStore tiny) : IClassFixture<TinyLlamaStore>
{
    static void SkipUnlessChromium() { if (BrowserPlatform.Unavailable() is { } why) Assert.Skip(why); }

    static string Temp(string name) => Path.Combine(Path.GetTempPath(), $"tapml-browser-{name}-{Guid.NewGuid():N}");

    [Fact]
    public void Carved_tiny_llama_replays_clean_and_generate_gives_cpus_greedy_tokens()
    {
        SkipUnlessChromium();
        string json = Temp("replay.json");
        var r = CliRunner.Run("replay", tiny.Store, "--platform", "browser", "--json", json);
        Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
        var cases = (JsonArray)JsonNode.Parse(File.ReadAllText(json))!["cases"]!;
        Assert.Equal(CarvedStore.Open(tiny.Store).Cases.Count, cases.Count);
        Assert.All(cases, c => Assert.Equal("passed", (string?)c!["status"]));

        string Tokens(string platform)
        {
            string j = Temp("g.json");
            var g = CliRunner.Run("generate", "--model", "builtin:tiny-llama", "--platform", platform, "--input-ids", "1,17,305", "--max-tokens", "8", "--json", j);
            Assert.True(g.ExitCode == 0, g.Stdout + g.Stderr);
            return JsonNode.Parse(File.ReadAllText(j))!["tokens"]!.ToJsonString();
        }
        Assert.Equal(Tokens("cpu"), Tokens("browser"));
    }

    [Fact]
    public void Onnx_node_conformance_passes_the_same_cases_as_native_webgpu()
    {
        SkipUnlessChromium();
        if (WebGpuPlatform.Unavailable() is { } why) Assert.Skip(why);
        string node = SharedData.Require("conformance", "onnx", "node");
        Dictionary<string, string> Statuses(string platform)
        {
            string json = Temp(platform + ".json");
            var r = CliRunner.Run("conformance", node, "--platform", platform, "--json", json);
            Assert.True(r.ExitCode == 0, r.Stdout + r.Stderr);
            return ((JsonArray)JsonNode.Parse(File.ReadAllText(json))!["cases"]!).ToDictionary(c => (string)c!["name"]!, c => (string)c!["status"]!);
        }
        var native = Statuses("webgpu");
        var browser = Statuses("browser");
        Assert.DoesNotContain("failed", browser.Values);
        Assert.True(browser.Count(x => x.Value == "passed") > 300, $"{browser.Count(x => x.Value == "passed")} passed");
        var differ = native.Keys.Union(browser.Keys).Where(k => native.GetValueOrDefault(k) != browser.GetValueOrDefault(k)).ToList();
        Assert.True(differ.Count == 0, "statuses differ: " + string.Join(", ", differ.Take(20).Select(k => $"{k} {native.GetValueOrDefault(k)}/{browser.GetValueOrDefault(k)}")));
    }

    [Fact]
    public void Six_architectures_give_cpus_greedy_tokens_in_one_tab()
    {
        SkipUnlessChromium();
        using var browser = (WebGpuPlatform)BrowserPlatform.Create("browser");
        using var cpu = Tapml.Platforms.PlatformRegistry.Create("cpu");
        long[] prompt = [1, 17, 305, 42];
        foreach (var arch in new[] { "llama", "qwen2", "mistral", "gemma", "phi3", "gpt2" })
        {
            var m = Tapml.Models.HfModels.Load(Tapml.Models.TinyCheckpoint.Materialize(arch));
            var expected = Tapml.Models.Generation.Greedy(new Tapml.Platforms.Execution.Executor(cpu), m, prompt, 8).Tokens;
            var fused = Tapml.Ir.Fusion.Fuse(m, out _);
            var actual = Tapml.Models.Generation.Greedy(new Tapml.Platforms.Execution.Executor(browser) { PreferWholeGraph = true }, fused, prompt, 8).Tokens;
            Assert.True(expected.SequenceEqual(actual), $"{arch}: cpu {string.Join(",", expected)}, browser {string.Join(",", actual)}");
        }
    }

    [Fact]
    public void Debug_localizes_a_fault_injected_behind_the_browser()
    {
        SkipUnlessChromium();
        string dir = Temp("debug");
        string json = dir + ".json";
        var r = CliRunner.Run("debug", "--model", "builtin:tiny-llama", "--target", "faulty:browser?node=Softmax_1&kind=nan", "--input-ids", "1,17,305", "--out", dir, "--json", json);
        Assert.True(r.ExitCode == 1, r.Stdout + r.Stderr);
        var d = JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal("Softmax_1", (string?)d["first_divergent"]?["node"]);
        Assert.True((int)d["replay"]!["failed"]! > 0);
    }

    [Fact]
    public void Generate_profile_times_kernels_in_the_tab_and_keeps_the_tokens()
    {
        SkipUnlessChromium();
        var cpu = CliRunner.Run("generate", "--model", "builtin:tiny-llama", "--platform", "cpu", "--input-ids", "1,17,305", "--max-tokens", "4");
        var prof = CliRunner.Run("generate", "--model", "builtin:tiny-llama", "--platform", "browser", "--input-ids", "1,17,305", "--max-tokens", "4", "--profile");
        Assert.True(prof.ExitCode == 0, prof.Stdout + prof.Stderr);
        Assert.Contains("GPU time of", prof.Stderr);
        Assert.Contains("Attention", prof.Stderr);
        string Tokens(string stdout) => stdout.Split('\n').First(l => l.StartsWith("tokens: ", StringComparison.Ordinal));
        Assert.Equal(Tokens(cpu.Stdout), Tokens(prof.Stdout));
    }

    [Fact]
    public void A_tab_closed_mid_replay_is_one_clear_error_within_5_s()
    {
        SkipUnlessChromium();
        using var p = (WebGpuPlatform)BrowserPlatform.Create("browser");
        var device = (BrowserDevice)p.Device;
        var store = CarvedStore.Open(tiny.Store);
        var replayer = new Replayer(store, p, new Tolerances());
        Assert.Equal(CaseStatus.Passed, replayer.Run(store.Cases[0]).Status);
        using (var chromium = Process.GetProcessById(device.BrowserProcessId!.Value)) chromium.Kill(entireProcessTree: true);
        var sw = Stopwatch.StartNew();
        var e = Assert.ThrowsAny<TapmlException>(() => { foreach (var c in store.Cases) replayer.Run(c); });
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"the error took {sw.Elapsed.TotalSeconds:F1} s");
        Assert.IsType<PlatformLostException>(e);
        Assert.StartsWith("browser: ", e.Message);
        Assert.DoesNotContain("\n", e.Message);
    }

    [Fact]
    public async Task Another_origin_and_a_wrong_token_are_refused()
    {
        await using var bridge = BrowserBridge.Start("127.0.0.1:0", "sesame");
        var ws = new Uri(bridge.Url.Replace("http://", "ws://") + "/ws");
        // A page from another origin: refused before the socket opens.
        using (var evil = new ClientWebSocket())
        {
            evil.Options.SetRequestHeader("Origin", "http://evil.example");
            await Assert.ThrowsAsync<WebSocketException>(() => evil.ConnectAsync(ws, CancellationToken.None));
        }
        // The right origin with a wrong token: closed with a policy violation, and no page is handed to tapml.
        using (var wrong = new ClientWebSocket())
        {
            wrong.Options.SetRequestHeader("Origin", bridge.Url);
            await wrong.ConnectAsync(ws, CancellationToken.None);
            await wrong.SendAsync(Encoding.UTF8.GetBytes("{\"token\":\"open\",\"hello\":{}}"), WebSocketMessageType.Text, true, CancellationToken.None);
            var r = await wrong.ReceiveAsync(new byte[256], new CancellationTokenSource(5000).Token);
            Assert.Equal(WebSocketMessageType.Close, r.MessageType);
            Assert.Equal(WebSocketCloseStatus.PolicyViolation, wrong.CloseStatus);
        }
        Assert.Null(bridge.WaitForPage(TimeSpan.FromMilliseconds(200)));
        // A non-loopback address without a token is refused outright.
        var e = Assert.Throws<TapmlException>(() => BrowserBridge.Start("0.0.0.0:0", null));
        Assert.Contains("token", e.Message);
    }
}
