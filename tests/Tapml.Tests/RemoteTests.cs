using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Tapml.Core;
using Tapml.Platforms.WebGpu;
using Tapml.Remote;
using Tapml.Remote.Proto;
using Tapml.Testing;
using Tapml.Testing.Carving;
using Xunit;

namespace Tapml.Tests;

/// <summary>remote:URL against `tapml serve` over real gRPC on loopback: the same verdicts and tokens as local,
/// faults localized across the connection, tokens, limits, garbage, a server killed mid-run, many clients.</summary>
public class RemoteTests(TinyLlamaStore tiny) : IClassFixture<TinyLlamaStore>
{
    static Task<RemoteServer> Serve(string platform, string? token = null, long maxMessage = 16 << 20) =>
        RemoteServer.StartAsync(new ServeOptions(platform, token, maxMessage), "127.0.0.1:0");

    static Dictionary<string, string> Verdicts(string json) =>
        ((JsonArray)JsonNode.Parse(File.ReadAllText(json))!["cases"]!).ToDictionary(c => (string)c!["name"]!, c => (string)c!["status"]!);

    /// <summary>A model of one Add: <paramref name="a"/> + <paramref name="b"/> → <paramref name="y"/>, f32[n] inputs.</summary>
    static Tapml.Ir.Model AddModel(string a, string b, string y, long n)
    {
        var g = new Tapml.Ir.Graph { Name = "add" };
        g.Nodes.Add(new Tapml.Ir.Node { Name = "add", OpType = "Add", Inputs = [a, b], Outputs = [y] });
        g.Inputs.Add(new Tapml.Ir.ValueInfo(a, Tapml.Ir.TypeRef.TensorOf(DType.Float32, [n])));
        g.Inputs.Add(new Tapml.Ir.ValueInfo(b, Tapml.Ir.TypeRef.TensorOf(DType.Float32, [n])));
        g.Outputs.Add(new Tapml.Ir.ValueInfo(y, null));
        return new Tapml.Ir.Model { Graph = g, Opsets = new() { [""] = 17 } };
    }

    static string Temp(string name) => Path.Combine(Path.GetTempPath(), $"tapml-remote-{name}-{Guid.NewGuid():N}");

    [Fact]
    public async Task Replay_over_remote_gives_the_same_verdicts_as_local()
    {
        await using var server = await Serve("cpu");
        string local = Temp("local.json"), remote = Temp("remote.json");
        var l = CliRunner.Run("replay", tiny.Store, "--platform", "cpu", "--json", local);
        var r = CliRunner.Run("replay", tiny.Store, "--platform", "remote:" + server.Url, "--json", remote);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);
        Assert.Equal(Verdicts(local), Verdicts(remote));
        Assert.Equal(l.Stdout.Trim().Split('\n')[^1], r.Stdout.Trim().Split('\n')[^1]);
    }

    [Fact]
    public async Task Generate_over_remote_gives_the_same_greedy_tokens_as_local()
    {
        await using var server = await Serve("cpu");
        string local = Temp("g-local.json"), remote = Temp("g-remote.json");
        CliRunner.Run("generate", "--model", "builtin:tiny-llama", "--platform", "cpu", "--input-ids", "1,17,305", "--max-tokens", "6", "--json", local);
        var r = CliRunner.Run("generate", "--model", "builtin:tiny-llama", "--platform", "remote:" + server.Url, "--input-ids", "1,17,305", "--max-tokens", "6", "--json", remote);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Equal(JsonNode.Parse(File.ReadAllText(local))!["tokens"]!.ToJsonString(), JsonNode.Parse(File.ReadAllText(remote))!["tokens"]!.ToJsonString());
    }

    [Fact]
    public async Task A_fault_behind_the_server_is_localized_exactly_over_the_connection()
    {
        await using var server = await Serve("faulty:cpu?node=Softmax_1&kind=nan");
        string json = Temp("m.json");
        var r = CliRunner.Run("migrate", "--model", "builtin:tiny-llama", "--input-ids", "1,17,305", "--target", "remote:" + server.Url, "--json", json);
        Assert.True(r.ExitCode == 1, r.Stderr + r.Stdout);
        var f = JsonNode.Parse(File.ReadAllText(json))!["first_divergent"]!;
        Assert.Equal("Softmax_1", (string)f["node"]!);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("wrong")]
    public async Task A_missing_or_wrong_token_is_exit_2_and_one_clear_line(string? token)
    {
        await using var server = await Serve("cpu", token: "s3cret");
        var r = CliRunner.RunWith(new Dictionary<string, string?> { ["TAPML_TOKEN"] = token }, "platforms", "--remote", server.Url);
        Assert.Equal(2, r.ExitCode);
        var line = Assert.Single(r.Stderr.Trim().Split('\n'));
        Assert.Contains("refused the token", line);
        var ok = CliRunner.RunWith(new Dictionary<string, string?> { ["TAPML_TOKEN"] = "s3cret" }, "platforms", "--remote", server.Url);
        Assert.True(ok.ExitCode == 0, ok.Stderr);
    }

    [Fact]
    public void A_non_loopback_address_without_a_token_is_refused()
    {
        var r = CliRunner.Run("serve", "--platform", "cpu", "--listen", "0.0.0.0:0");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("--token", r.Stderr);
    }

    static (Device.DeviceClient, CallOptions, GrpcChannel) Raw(string url)
    {
        var channel = GrpcChannel.ForAddress(url, new GrpcChannelOptions { MaxSendMessageSize = null });
        return (new Device.DeviceClient(channel), new CallOptions(new Metadata { { Wire.SessionHeader, Guid.NewGuid().ToString("N") } }, DateTime.UtcNow.AddSeconds(10)), channel);
    }

    [Fact]
    public async Task Oversized_malformed_and_out_of_order_requests_get_a_status_and_the_server_keeps_serving()
    {
        await using var server = await Serve("cpu", maxMessage: 1 << 20);
        var (c, o, channel) = Raw(server.Url);
        using var _ = channel;
        var big = new byte[2 << 20];
        var req = new AllocateRequest { Type = Wire.Info(DType.UInt8, [big.Length]), Hash = ByteString.CopyFrom(Wire.Hash(big)), Data = ByteString.CopyFrom(big) };
        Assert.Equal(StatusCode.ResourceExhausted, Assert.Throws<RpcException>(() => c.Allocate(req, o)).StatusCode);
        var huge = new AllocateRequest { Type = Wire.Info(DType.Float32, [1L << 40, 1L << 40]), Hash = ByteString.CopyFrom(new byte[16]) };
        Assert.Equal(StatusCode.InvalidArgument, Assert.Throws<RpcException>(() => c.Allocate(huge, o)).StatusCode);
        Assert.Equal(StatusCode.FailedPrecondition, Assert.Throws<RpcException>(() => c.Run(new RunRequest { Kernel = 99, Inputs = { 7 } }, o)).StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, Assert.Throws<RpcException>(() => c.Prepare(new PrepareRequest { NodeModel = ByteString.CopyFrom(1, 2, 3) }, o)).StatusCode);
        Assert.Equal(StatusCode.InvalidArgument, Assert.Throws<RpcException>(() => c.Describe(new DescribeRequest(), new CallOptions(deadline: DateTime.UtcNow.AddSeconds(10)))).StatusCode);
        using var p = new RemotePlatform("remote:" + server.Url);
        Assert.Contains("cpu", p.Description);
    }

    /// <summary>Several runs of one model in one RunGraph (protocol 4, a bisect's phases): each run's outputs are those of
    /// a run of its own; a tensor every run shares travels once (later runs name it by hash); a [1] tensor and a scalar
    /// with the same bytes stay two tensors on the server; more runs than a call takes are split, and a request over that
    /// bound is refused.</summary>
    [Fact]
    public async Task Runs_of_one_model_in_one_call_give_what_separate_runs_give()
    {
        await using var server = await Serve("cpu");
        var g = new Tapml.Ir.Graph { Name = "add3" };
        g.Nodes.Add(new Tapml.Ir.Node { Name = "add", OpType = "Add", Inputs = ["x", "s"], Outputs = ["t"] });
        g.Nodes.Add(new Tapml.Ir.Node { Name = "add2", OpType = "Add", Inputs = ["t", "one"], Outputs = ["z"] });
        g.Inputs.Add(new Tapml.Ir.ValueInfo("x", Tapml.Ir.TypeRef.TensorOf(DType.Float32, [1])));
        g.Inputs.Add(new Tapml.Ir.ValueInfo("s", Tapml.Ir.TypeRef.TensorOf(DType.Float32, Array.Empty<long>())));
        g.Inputs.Add(new Tapml.Ir.ValueInfo("one", Tapml.Ir.TypeRef.TensorOf(DType.Float32, [1])));
        g.Outputs.Add(new Tapml.Ir.ValueInfo("z", null));
        var model = new Tapml.Ir.Model { Graph = g, Opsets = new() { [""] = 17 } };
        var s = new Tensor(DType.Float32, [], new[] { 1f });
        var one = new Tensor(DType.Float32, [1], new[] { 1f });          // the same 4 bytes as s, another shape
        var runs = Enumerable.Range(0, 5).Select(i => (IReadOnlyDictionary<string, Value>)new Dictionary<string, Value>
            { ["x"] = new Tensor(DType.Float32, [1], new[] { 10f * i }), ["s"] = s, ["one"] = one }).ToList();
        using var p = new RemotePlatform("remote:" + server.Url);
        var many = ((Tapml.Platforms.IBatchRunPlatform)p).RunMany(model, runs);
        Assert.Equal(runs.Count, many.Count);
        for (int i = 0; i < runs.Count; i++)
        {
            var alone = p.RunGraph(model, runs[i]);
            Assert.Equal(10f * i + 2, ((Tensor)many[i]["z"]).Span<float>()[0]);
            Assert.Equal(((Tensor)alone["z"]).Span<float>()[0], ((Tensor)many[i]["z"]).Span<float>()[0]);
            Assert.Equal(new long[] { 1 }, ((Tensor)many[i]["z"]).Shape);
        }
        // More runs than a call takes go in several calls; a raw request over the bound is refused, not run.
        var longer = Enumerable.Range(0, Wire.MaxRunsPerCall + 44).Select(i => runs[i % runs.Count]).ToList();
        var split = ((Tapml.Platforms.IBatchRunPlatform)p).RunMany(model, longer);
        Assert.Equal(longer.Count, split.Count);
        for (int i = 0; i < longer.Count; i++) Assert.Equal(10f * (i % runs.Count) + 2, ((Tensor)split[i]["z"]).Span<float>()[0]);
        var (c, o, channel) = Raw(server.Url);
        using (channel)
        {
            var over = new RunGraphRequest { Model = 1 };
            for (int i = 0; i < Wire.MaxRunsPerCall; i++) over.Runs.Add(new FeedSet());
            var e = Assert.Throws<RpcException>(() => c.RunGraph(over, o));
            Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
            Assert.Contains($"over the {Wire.MaxRunsPerCall} a call takes", e.Status.Detail);
        }
        // A node the server cannot run is UnsupportedException, as a partial run reports it.
        g.Nodes[1] = new Tapml.Ir.Node { Name = "add2", OpType = "NoSuchOp", Inputs = ["t", "one"], Outputs = ["z"] };
        var bad = new Tapml.Ir.Model { Graph = g, Opsets = new() { [""] = 17 } };
        Assert.Throws<UnsupportedException>(() => ((Tapml.Platforms.IBatchRunPlatform)p).RunMany(bad, runs));
    }

    /// <summary>bisect over remote runs each mixed run's target nodes for all phases in one or two calls; it finds the
    /// culprit a local bisect finds, in the same phase, with the same isolated error and accumulated verdict.</summary>
    [Fact]
    public async Task Bisect_over_remote_finds_the_culprit_local_bisect_finds()
    {
        const string fault = "faulty:cpu?node=Softmax_1&kind=nan";
        await using var server = await Serve(fault);
        string local = Temp("b-local.json"), remote = Temp("b-remote.json");
        var l = CliRunner.Run("migrate", "--model", "builtin:tiny-llama", "--input-ids", "1,17,305", "--decode-steps", "3", "--strategy", "bisect", "--target", fault, "--json", local);
        var r = CliRunner.Run("migrate", "--model", "builtin:tiny-llama", "--input-ids", "1,17,305", "--decode-steps", "3", "--strategy", "bisect", "--target", "remote:" + server.Url, "--json", remote);
        Assert.True(l.ExitCode == 1, l.Stderr + l.Stdout);
        Assert.True(r.ExitCode == 1, r.Stderr + r.Stdout);
        var lf = JsonNode.Parse(File.ReadAllText(local))!["first_divergent"]!;
        var rf = JsonNode.Parse(File.ReadAllText(remote))!["first_divergent"]!;
        Assert.Equal("Softmax_1", (string)lf["node"]!);
        Assert.Equal("Softmax_1", (string)rf["node"]!);
        Assert.Equal((string)lf["phase"]!, (string)rf["phase"]!);
        Assert.Equal(lf["isolated"]!.ToJsonString(), rf["isolated"]!.ToJsonString());
        // NOTE: the accumulated run of the culprit's prefix goes through the server's executor; its metrics may differ in
        // the last bits (a 3e-7 max_abs here before protocol 4 too), its verdict and failure may not.
        Assert.Equal((bool)lf["accumulated"]!["passed"]!, (bool)rf["accumulated"]!["passed"]!);
        Assert.Equal((string)lf["accumulated"]!["failure"]!, (string)rf["accumulated"]!["failure"]!);
    }

    [Fact]
    public async Task A_model_sent_with_its_first_run_gives_what_an_uploaded_one_gives_and_an_oversized_one_is_refused()
    {
        await using var server = await Serve("cpu");
        var (c, o, channel) = Raw(server.Url);
        using var _ = channel;
        var model = AddModel("x", "y", "z", 4);
        var bytes = Tapml.Ir.Onnx.OnnxExporter.ToProto(model).ToByteArray();
        AllocateRequest Tensor(DType dtype, long[] shape, byte[] data, bool keep = false) =>
            new() { Type = Wire.Info(dtype, shape), Hash = ByteString.CopyFrom(Wire.Hash(data)), Data = ByteString.CopyFrom(data), KeepOnHost = keep };
        byte[] F32(params float[] v) => System.Runtime.InteropServices.MemoryMarshal.AsBytes(v.AsSpan()).ToArray();
        RunGraphRequest Request() => new()
        {
            HostOutputs = true,
            Feeds = { new NamedHandle { Name = "x", Tensor = Tensor(DType.Float32, [4], F32(1, 2, 3, 4)) }, new NamedHandle { Name = "y", Tensor = Tensor(DType.Float32, [4], F32(10, 20, 30, 40)) } },
        };
        var withModel = Request();
        withModel.ModelTensor = Tensor(DType.UInt8, [bytes.Length], bytes, keep: true);
        var sent = c.RunGraph(withModel, o);
        Assert.NotEqual(0UL, sent.ModelHandle);
        Assert.Equal(F32(11, 22, 33, 44), sent.Outputs.Single(x => x.Name == "z").Value.Data.ToByteArray());
        // The handle it named serves the next run; a model uploaded by Allocate (protocol 2's way) gives the same.
        var again = Request();
        again.Model = sent.ModelHandle;
        Assert.Equal(F32(11, 22, 33, 44), c.RunGraph(again, o).Outputs.Single(x => x.Name == "z").Value.Data.ToByteArray());
        var uploaded = Request();
        uploaded.Model = c.Allocate(Tensor(DType.UInt8, [bytes.Length], bytes, keep: true), o).Handle;
        Assert.Equal(F32(11, 22, 33, 44), c.RunGraph(uploaded, o).Outputs.Single(x => x.Name == "z").Value.Data.ToByteArray());
        // Over the inline size: refused with the reason, nothing kept; a model not marked keep_on_host: refused too.
        var big = new byte[Wire.InlineBytes + 1];
        var oversized = Request();
        oversized.ModelTensor = Tensor(DType.UInt8, [big.Length], big, keep: true);
        var e = Assert.Throws<RpcException>(() => c.RunGraph(oversized, o));
        Assert.Equal(StatusCode.ResourceExhausted, e.StatusCode);
        Assert.Contains("inline size", e.Status.Detail);
        var notKept = Request();
        notKept.ModelTensor = Tensor(DType.UInt8, [bytes.Length], bytes);
        Assert.Equal(StatusCode.InvalidArgument, Assert.Throws<RpcException>(() => c.RunGraph(notKept, o)).StatusCode);
    }

    /// <summary>Weights up to 1 MiB (a quarter of the server's message limit where smaller) wait for the run that needs
    /// them and travel inside it; those past the run's message budget go by Allocate first. Against a server taking
    /// 1 MiB messages five 240 KB weights (1.2 MB) cannot all ride in one run: the result must still be cpu's.</summary>
    [Fact]
    public async Task Weights_sent_with_their_first_run_stay_within_the_servers_message_limit()
    {
        await using var server = await Serve("cpu", maxMessage: 1 << 20);
        const int n = 60_000;
        var g = new Tapml.Ir.Graph { Name = "adds" };
        g.Inputs.Add(new Tapml.Ir.ValueInfo("x", Tapml.Ir.TypeRef.TensorOf(DType.Float32, [n])));
        string last = "x";
        for (int i = 0; i < 5; i++)
        {
            var w = Tensor.Zeros(DType.Float32, [n]);
            var d = (float[])w.Data;
            for (int j = 0; j < n; j++) d[j] = (i + 1) * 0.5f + j % 7;
            g.Initializers[$"w{i}"] = w;
            g.Inputs.Add(new Tapml.Ir.ValueInfo($"w{i}", Tapml.Ir.TypeRef.TensorOf(DType.Float32, [n])));
            g.Nodes.Add(new Tapml.Ir.Node { Name = $"add{i}", OpType = "Add", Inputs = [last, $"w{i}"], Outputs = [$"s{i}"] });
            last = $"s{i}";
        }
        g.Outputs.Add(new Tapml.Ir.ValueInfo(last, null));
        var model = new Tapml.Ir.Model { Graph = g, Opsets = new() { [""] = 17 } };
        var x = Tensor.Zeros(DType.Float32, [n]);
        for (int j = 0; j < n; j++) ((float[])x.Data)[j] = j * 1e-3f;
        var feeds = new Dictionary<string, Value> { ["x"] = x };
        var want = (Tensor)new Tapml.Platforms.Execution.Executor(Tapml.Platforms.PlatformRegistry.Create("cpu")).Run(model, feeds)[last];
        using var remote = new RemotePlatform("remote:" + server.Url);
        foreach (bool whole in new[] { true, false })
        {
            var got = (Tensor)new Tapml.Platforms.Execution.Executor(remote) { PreferWholeGraph = whole }.Run(model, feeds)[last];
            Assert.Equal((float[])want.Data, (float[])got.Data);
        }
    }

    [Fact]
    public async Task Bulk_transfers_with_a_wrong_hash_a_short_body_or_too_many_bytes_are_refused_with_a_clear_reason()
    {
        await using var server = await Serve("cpu", token: "sesame");
        Assert.True(server.BulkPort > 0);
        var (c, _, channel) = Raw(server.Url);
        using var __ = channel;
        string session = Guid.NewGuid().ToString("N");
        var o = new CallOptions(new Metadata { { Wire.SessionHeader, session }, { "authorization", "Bearer sesame" } }, DateTime.UtcNow.AddSeconds(10));
        var rng = new Random(3);
        var data = new byte[1 << 20];
        rng.NextBytes(data);
        ulong Reserve(byte[] d) => c.Allocate(new AllocateRequest { Type = Wire.Info(DType.UInt8, [d.Length]), Hash = ByteString.CopyFrom(Wire.Hash(d)) }, o).Handle;
        using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{server.BulkPort}/tapml/v1/tensor/"), Timeout = TimeSpan.FromSeconds(10) };
        async Task<(int Code, string Body)> Send(HttpMethod m, string path, HttpContent? content = null, string token = "sesame", string? sessionId = null)
        {
            using var req = new HttpRequestMessage(m, path) { Content = content };
            req.Headers.Add(Wire.SessionHeader, sessionId ?? session);
            req.Headers.Add("Authorization", "Bearer " + token);
            using var resp = await http.SendAsync(req);
            return ((int)resp.StatusCode, await resp.Content.ReadAsStringAsync());
        }

        ulong h = Reserve(data);
        var corrupt = (byte[])data.Clone();
        corrupt[12345] ^= 1;
        var r = await Send(HttpMethod.Put, $"{h}", new ByteArrayContent(corrupt));
        Assert.Equal((400, "the uploaded bytes do not match their hash (corrupted in transit?)"), r);
        r = await Send(HttpMethod.Put, $"{h}", new ByteArrayContent(data, 0, data.Length / 2));
        Assert.Equal(400, r.Code);
        Assert.Contains($"announces {data.Length / 2} bytes", r.Body);
        // No Content-Length (chunked): the count is checked as the bytes arrive.
        r = await Send(HttpMethod.Put, $"{h}", new StreamContent(new MemoryStream(data.Concat(new byte[] { 1 }).ToArray())) { Headers = { ContentLength = null } });
        Assert.Equal((400, $"upload into handle {h} brings more than its {data.Length} bytes"), r);
        r = await Send(HttpMethod.Put, $"{h}", new StreamContent(new MemoryStream(data, 0, 1000)) { Headers = { ContentLength = null } });
        Assert.Equal((400, $"upload into handle {h} brought 1000 of its {data.Length} bytes"), r);
        Assert.Equal(401, (await Send(HttpMethod.Put, $"{h}", new ByteArrayContent(data), token: "guess")).Code);
        Assert.Equal(409, (await Send(HttpMethod.Put, $"{h}", new ByteArrayContent(data), sessionId: "nobody")).Code);
        Assert.Equal(409, (await Send(HttpMethod.Get, "999")).Code);
        Assert.Equal(400, (await Send(HttpMethod.Get, "x1")).Code);
        Assert.Equal(404, (await Send(HttpMethod.Get, "..%2F..%2Fetc%2Fpasswd/x")).Code);

        // A body cut off mid-way (the client dies): that request ends, the handle stays pending, the server serves on.
        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync("127.0.0.1", server.BulkPort);
            var ns = tcp.GetStream();
            await ns.WriteAsync(System.Text.Encoding.ASCII.GetBytes($"PUT /tapml/v1/tensor/{h} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sesame\r\n{Wire.SessionHeader}: {session}\r\nContent-Length: {data.Length}\r\n\r\n"));
            await ns.WriteAsync(data.AsMemory(0, 4096));
            tcp.Client.Shutdown(SocketShutdown.Send);
            var reply = new byte[512];
            int n;
            // NOTE: Kestrel takes the half-closed connection as the client gone: it closes or resets it, or answers 400.
            try { n = await ns.ReadAsync(reply).AsTask().WaitAsync(TimeSpan.FromSeconds(5)); }
            catch (IOException) { n = 0; }
            string answer = System.Text.Encoding.ASCII.GetString(reply, 0, n);
            Assert.True(n == 0 || answer.StartsWith("HTTP/1.1 400", StringComparison.Ordinal), answer);
        }

        // The right bytes still go in, and come back the same, over the bulk port and over gRPC.
        Assert.Equal(204, (await Send(HttpMethod.Put, $"{h}", new ByteArrayContent(data))).Code);
        Assert.Equal(409, (await Send(HttpMethod.Put, $"{h}", new ByteArrayContent(data))).Code);
        using (var req = new HttpRequestMessage(HttpMethod.Get, $"{h}"))
        {
            req.Headers.Add(Wire.SessionHeader, session);
            req.Headers.Add("Authorization", "Bearer sesame");
            using var resp = await http.SendAsync(req);
            Assert.Equal(data, await resp.Content.ReadAsByteArrayAsync());
        }
        await using var open = await Serve("cpu");
        foreach (var spec in new[] { "", "?bulk=0" })
        {
            using var p = new RemotePlatform("remote:" + open.Url + spec);
            var v = p.Upload(Tensor.FromBytes(DType.UInt8, [data.Length], data));
            var id = new Tapml.Ir.Node { Name = "id", OpType = "Identity", Inputs = ["x"], Outputs = ["y"] };
            var ctx = new Tapml.Platforms.NodeContext(id, 17);
            var y = p.Run(p.Prepare(id, ctx, [Tapml.Ir.TypeRef.TensorOf(DType.UInt8, [data.Length])]), ctx, [v])[0]!;
            Assert.Equal(data, ((Tensor)p.Download(y)).Bytes().ToArray());
            // NOTE: after the transfers: a bulk port the client could not reach would read "(unreachable: gRPC chunks)".
            Assert.Contains(p.Details(), d => d.EndsWith(spec.Length == 0 ? $"bulk port {open.BulkPort}" : "(not used: bulk=0)", StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task Garbage_bytes_to_the_port_do_not_crash_the_server()
    {
        await using var server = await Serve("cpu");
        var uri = new Uri(server.Url);
        var rng = new Random(7);
        // NOTE: the gRPC port and the bulk port alike.
        foreach (int port in new[] { uri.Port, server.BulkPort })
        foreach (var payload in new[] { "GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray(), "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\xff\x04"u8.ToArray(), Enumerable.Range(0, 64 << 10).Select(_ => (byte)rng.Next()).ToArray() })
        {
            using var tcp = new TcpClient();
            await tcp.ConnectAsync(uri.Host, port);
            var s = tcp.GetStream();
            try { await s.WriteAsync(payload); await s.ReadAsync(new byte[256]).AsTask().WaitAsync(TimeSpan.FromSeconds(2)); }
            catch (Exception e) when (e is IOException or TimeoutException) { } // NOTE: the server may close on us: that is the point
        }
        using var p = new RemotePlatform("remote:" + server.Url);
        Assert.Contains("cpu", p.Description);
    }

    [Fact]
    public void A_server_killed_mid_replay_is_one_clear_line_within_5_s_then_resume_completes()
    {
        string outDir = Temp("out");
        using (var first = ServeProcess())
        {
            var replay = CliProcess("replay", tiny.Store, "--platform", "remote:" + first.Url, "--out", outDir);
            string log = Path.Combine(outDir, "results.jsonl");
            var until = DateTime.UtcNow.AddSeconds(60);
            while ((!File.Exists(log) || File.ReadAllLines(log).Length < 20) && !replay.HasExited && DateTime.UtcNow < until) Thread.Sleep(5);
            Assert.False(replay.HasExited, "the replay ended before the server was killed");
            first.Kill();
            var killed = Stopwatch.StartNew();
            Assert.True(replay.WaitForExit(TimeSpan.FromSeconds(5)), "no error within 5 s of the server's death");
            Assert.True(killed.Elapsed < TimeSpan.FromSeconds(5));
            Assert.Equal(2, replay.ExitCode);
            var line = Assert.Single(replay.StandardError.ReadToEnd().Trim().Split('\n'));
            Assert.Contains("connection lost", line);
        }
        using var second = ServeProcess();
        string json = Temp("resumed.json");
        var r = CliRunner.Run("replay", tiny.Store, "--platform", "remote:" + second.Url, "--out", outDir, "--resume", "--json", json);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);
        Assert.Contains("resuming:", r.Stdout);
        Assert.Equal(CarvedStore.Open(tiny.Store).Cases.Count, Verdicts(json).Count);
        Assert.All(Verdicts(json).Values, v => Assert.Equal("passed", v));
    }

    [Fact]
    public void A_server_killed_mid_migration_is_one_clear_line_then_resume_finds_the_same_culprit()
    {
        const string faulty = "faulty:cpu?node=Softmax_1&kind=nan";
        string outDir = Temp("mout");
        string[] Args(string url, params string[] more) => ["migrate", "--model", "builtin:tiny-llama", "--input-ids", "1,17,305", "--decode-steps", "300",
            "--strategy", "bisect", "--target", "remote:" + url, "--out", outDir, .. more];
        using (var first = ServeProcess(faulty))
        {
            var migrate = CliProcess(Args(first.Url));
            var stdout = migrate.StandardOutput.ReadToEndAsync();
            var stderr = migrate.StandardError.ReadToEndAsync();
            string journal = Path.Combine(outDir, "migration.jsonl");
            var until = DateTime.UtcNow.AddSeconds(60);
            while ((!File.Exists(journal) || File.ReadAllLines(journal).Length < 3) && !migrate.HasExited && DateTime.UtcNow < until) Thread.Sleep(5);
            if (migrate.HasExited) Assert.Fail("the migration ended before the server was killed: " + stdout.Result);
            first.Kill();
            var killed = Stopwatch.StartNew();
            Assert.True(migrate.WaitForExit(TimeSpan.FromSeconds(5)), "no error within 5 s of the server's death");
            string err = stderr.Result;
            Assert.True(migrate.ExitCode == 2, $"exit {migrate.ExitCode}: {err} {stdout.Result}");
            var line = Assert.Single(err.Trim().Split('\n'));
            Assert.Contains("connection lost", line);
        }
        using var second = ServeProcess(faulty);
        string json = Temp("mresumed.json");
        var r = CliRunner.Run(Args(second.Url, "--resume", "--json", json));
        Assert.True(r.ExitCode == 1, r.Stderr + r.Stdout);
        Assert.Contains("resuming:", r.Stdout);
        var d = JsonNode.Parse(File.ReadAllText(json))!;
        Assert.Equal("Softmax_1", (string?)d["first_divergent"]?["node"]);
        Assert.True((int)d["resumed"]! >= 2, $"resumed {d["resumed"]}");
    }

    [Fact]
    public async Task Consecutive_remote_nodes_run_as_one_call_and_an_unsupported_node_inside_falls_back()
    {
        await using var server = await Serve("faulty:cpu?refuse=Mul");
        var llama = Tapml.Models.HfModels.Load(Tapml.Models.TinyCheckpoint.Materialize("llama"));
        var feeds = Tapml.Models.Generation.PrefillFeeds(llama, [1, 17, 305, 42]);
        using var cpu = Tapml.Platforms.PlatformRegistry.Create("cpu");
        var expected = new Tapml.Platforms.Execution.Executor(cpu).Run(llama, feeds);
        using var remote = new RemotePlatform("remote:" + server.Url);
        var exec = new Tapml.Platforms.Execution.Executor(remote) { Fallback = cpu };
        exec.Run(llama, feeds);
        long before = remote.Calls;
        var actual = exec.Run(llama, feeds);
        long calls = remote.Calls - before;
        int muls = llama.Graph.Nodes.Count(n => n.OpType == "Mul");
        Assert.True(muls > 2, "the model needs Mul nodes between segments");
        // Every Mul on the fallback, listed with the server's reason; nothing else moved.
        Assert.Equal(muls, exec.Fallbacks.Count);
        Assert.All(exec.Fallbacks, f => { Assert.Equal("Mul", f.OpType); Assert.Contains("refuse", f.Reason); });
        foreach (var (name, v) in expected) Assert.True(((Tensor)v).Bytes().SequenceEqual(((Tensor)actual[name]).Bytes()), $"output '{name}' differs");
        // One call per segment between Muls (and the uploads of Mul outputs), not one per node.
        Assert.True(calls <= 2 * (muls + 1), $"{calls} calls for {llama.Graph.Nodes.Count} nodes with {muls} Muls on the fallback");
    }

    [Fact]
    public async Task Lockstep_over_remote_gives_every_record_local_gives_with_isolated_reruns_batched()
    {
        var llama = Tapml.Models.HfModels.Load(Tapml.Models.TinyCheckpoint.Materialize("llama"));
        // NOTE: a fault early in the graph, so that most nodes after it are fed drifted inputs and re-run isolated
        // (over remote: in batches of unconnected nodes, one call each).
        string fault = $"faulty:cpu?node={llama.Graph.Nodes[llama.Graph.Nodes.Count / 4].Name}&kind=offset";
        await using var server = await Serve(fault);
        JsonNode Lockstep(string target)
        {
            string json = Temp("lockstep.json");
            var r = CliRunner.Run("migrate", "--model", "builtin:tiny-llama", "--input-ids", "1,17,305,42", "--decode-steps", "1", "--target", target, "--json", json);
            Assert.True(r.ExitCode == 1, r.Stderr + r.Stdout);
            return JsonNode.Parse(File.ReadAllText(json))!;
        }
        var local = Lockstep(fault);
        var remote = Lockstep("remote:" + server.Url);
        // Same nodes in the same order, the same verdicts both ways and the same errors to the last bit.
        static string[] Rows(JsonNode d, string key) => ((JsonArray)d[key]!).Select(x =>
            $"{x!["index"]} {x["node"]} {x["phase"]} {x["isolated"]!.ToJsonString()} {x["accumulated"]!.ToJsonString()}").ToArray();
        Assert.Equal(Rows(local, "records"), Rows(remote, "records"));
        Assert.Equal(Rows(local, "affected"), Rows(remote, "affected"));
        Assert.Equal(local["first_divergent"]!["node"]!.ToJsonString(), remote["first_divergent"]!["node"]!.ToJsonString());
        int culprit = (int)remote["first_divergent"]!["index"]!;
        int rerun = ((JsonArray)remote["records"]!).Count(x => (int)x!["index"]! > culprit);
        Assert.True(rerun > 20, $"only {rerun} nodes after the fault: the test needs isolated re-runs to batch");
    }

    [Fact]
    public async Task Debug_over_remote_gives_the_same_replay_verdicts_and_culprit_as_local()
    {
        const string faulty = "faulty:cpu?node=Softmax_1&kind=nan";
        await using var server = await Serve(faulty);
        string dir = Temp("debug");
        try
        {
            JsonNode Debug(string target, string name)
            {
                string json = Path.Combine(dir, name + ".json");
                var r = CliRunner.Run("debug", "--model", "builtin:tiny-llama", "--target", target, "--input-ids", "1,17,305", "--out", Path.Combine(dir, name), "--json", json);
                Assert.True(r.ExitCode == 1, r.Stdout + r.Stderr);
                return JsonNode.Parse(File.ReadAllText(json))!;
            }
            var local = Debug(faulty, "local");
            var remote = Debug("remote:" + server.Url, "remote");
            Assert.Equal("Softmax_1", (string?)remote["first_divergent"]?["node"]);
            Assert.Equal((string?)local["first_divergent"]?["phase"], (string?)remote["first_divergent"]?["phase"]);
            foreach (var k in new[] { "passed", "failed", "skipped" }) Assert.Equal((int)local["replay"]![k]!, (int)remote["replay"]![k]!);
            Assert.True((int)remote["replay"]!["failed"]! > 0);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, true); }
    }

    [Fact]
    public async Task Describe_lists_the_served_platforms_operators()
    {
        await using var server = await Serve("faulty:cpu?refuse=Mul");
        using var remote = new RemotePlatform("remote:" + server.Url);
        using var cpu = new Tapml.Platforms.Cpu.CpuPlatform();
        var ops = remote.Ops.Select(o => (o.Domain, o.OpType)).ToHashSet();
        Assert.Contains(("", "Add"), ops);
        Assert.DoesNotContain(("", "Mul"), ops);
        Assert.Equal(cpu.Ops.Count(o => o.OpType != "Mul"), ops.Count);
        Assert.Contains(remote.Details(), d => d.StartsWith("ops: ", StringComparison.Ordinal));
    }

    /// <summary>A session may name by hash alone a tensor another session of its family sent (its fresh instances:
    /// lockstep's isolated re-runs re-send no weights); a session of another family may not; and where the family no
    /// longer holds it, the client sends the call again with the bytes.</summary>
    [Fact]
    public async Task A_family_of_sessions_shares_what_one_sent_and_no_one_else_does()
    {
        await using var server = await Serve("cpu");
        var model = AddModel("x", "w", "y", 3);
        var modelBytes = Tapml.Ir.Onnx.OnnxExporter.ToProto(model).ToByteArray();
        var wBytes = Wire.Bytes(new Tensor(DType.Float32, [3], new[] { 1f, 2f, 3f })).ToArray();
        AllocateRequest Inline(byte[] bytes, long[] shape, bool data, bool keep) => new()
        {
            Type = Wire.Info(shape.Length == 1 && bytes.Length == modelBytes.Length ? DType.UInt8 : DType.Float32, shape),
            Hash = ByteString.CopyFrom(Wire.Hash(bytes)), Data = data ? ByteString.CopyFrom(bytes) : ByteString.Empty, KeepOnHost = keep,
        };
        RunGraphRequest Request(bool wData)
        {
            var r = new RunGraphRequest { ModelTensor = Inline(modelBytes, [modelBytes.Length], true, true), HostOutputs = true };
            r.Feeds.Add(new NamedHandle { Name = "x", Tensor = Inline(Wire.Bytes(new Tensor(DType.Float32, [3], new[] { 10f, 20f, 30f })).ToArray(), [3], true, false) });
            r.Feeds.Add(new NamedHandle { Name = "w", Tensor = Inline(wBytes, [3], wData, false) });
            return r;
        }
        string family = Guid.NewGuid().ToString("N");
        CallOptions Session(string fam) => new(new Metadata { { Wire.SessionHeader, Guid.NewGuid().ToString("N") }, { Wire.FamilyHeader, fam } }, DateTime.UtcNow.AddSeconds(10));
        using var channel = GrpcChannel.ForAddress(server.Url);
        var c = new Device.DeviceClient(channel);
        float[] Y(RunGraphReply r) => Tensor.FromBytes(DType.Float32, [3], r.Outputs.Single(o => o.Name == "y").Value.Data.Span).As<float>().ToArray();
        Assert.Equal(new[] { 11f, 22f, 33f }, Y(c.RunGraph(Request(wData: true), Session(family))));
        Assert.Equal(new[] { 11f, 22f, 33f }, Y(c.RunGraph(Request(wData: false), Session(family))));
        var e = Assert.Throws<RpcException>(() => c.RunGraph(Request(wData: false), Session(Guid.NewGuid().ToString("N"))));
        Assert.Equal(StatusCode.FailedPrecondition, e.StatusCode);
        Assert.StartsWith(Wire.ContentMissing, e.Status.Detail);
        // The client: a fresh instance names the weight by hash; once no session of the family holds it, it sends it.
        var w = new Tensor(DType.Float32, [3], new[] { 1f, 2f, 3f });
        var first = new RemotePlatform("remote:" + server.Url);
        var second = (RemotePlatform)first.NewInstance();
        var feeds = new Dictionary<string, Value> { ["x"] = new Tensor(DType.Float32, [3], new[] { 10f, 20f, 30f }), ["w"] = w };
        Assert.Equal(new[] { 11f, 22f, 33f }, ((Tensor)first.RunGraph(model, feeds)["y"]).As<float>().ToArray());
        first.Dispose();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        // Dispose does not wait for the server to end the session: wait here, or the server may still hold w.
        Assert.True(RemotePlatform.WaitForCloses(TimeSpan.FromSeconds(10)));
        long calls = second.Calls;
        Assert.Equal(new[] { 11f, 22f, 33f }, ((Tensor)second.RunGraph(model, feeds)["y"]).As<float>().ToArray());
        Assert.Equal(calls + 2, second.Calls);                // refused (no session holds w), then sent with it
        using var third = (RemotePlatform)second.NewInstance();
        calls = third.Calls;
        Assert.Equal(new[] { 11f, 22f, 33f }, ((Tensor)third.RunGraph(model, feeds)["y"]).As<float>().ToArray());
        Assert.Equal(calls + 1, third.Calls);                 // second holds w again: named by hash, one call
        second.Dispose();
    }

    [Fact]
    public async Task A_second_platform_reuses_the_connection_and_a_server_gone_since_is_one_clear_error()
    {
        var server = await Serve("cpu");
        string url = "remote:" + server.Url;
        var x = new Tensor(DType.Float32, [4], new float[] { 1, 2, 3, 4 });
        for (int i = 0; i < 2; i++)
        {
            // NOTE: the second platform takes the first one's idle channel; each is a session of its own.
            using var p = new RemotePlatform(url);
            var back = (Tensor)p.Download(p.Upload(x));
            Assert.Equal(x.As<float>().ToArray(), back.As<float>().ToArray());
        }
        await server.DisposeAsync();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.Throws<TapmlException>(() => new RemotePlatform(url).Dispose());
        Assert.Contains("cannot reach the server", e.Message);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"took {sw.Elapsed}");
    }

    [Fact]
    public async Task Eight_clients_at_once_each_get_their_own_session_and_correct_results()
    {
        await using var server = await Serve("cpu");
        var store = CarvedStore.Open(tiny.Store);
        var cases = store.Cases.Take(40).ToList();
        var results = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() =>
        {
            using var p = new RemotePlatform("remote:" + server.Url);
            var replayer = new Replayer(store, p, new Tolerances());
            return cases.Select(c => replayer.Run(c).Status).ToList();
        })));
        Assert.All(results, r => Assert.All(r, s => Assert.Equal(CaseStatus.Passed, s)));
    }

    [Fact]
    public async Task Webgpu_behind_the_server_gives_the_same_verdicts_as_local_webgpu()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        await using var server = await Serve("webgpu");
        string local = Temp("w-local.json"), remote = Temp("w-remote.json");
        CliRunner.Run("replay", tiny.Store, "--platform", "webgpu", "--filter", "^(MatMul|Softmax|Mul|Add)", "--json", local);
        var r = CliRunner.Run("replay", tiny.Store, "--platform", "remote:" + server.Url, "--filter", "^(MatMul|Softmax|Mul|Add)", "--json", remote);
        Assert.True(r.ExitCode == 0, r.Stderr + r.Stdout);
        Assert.Equal(Verdicts(local), Verdicts(remote));
    }

    /// <summary>`tapml serve` as a child process on a free port (killed with the whole tree on dispose).</summary>
    sealed class ServeChild : IDisposable
    {
        public required Process Process { get; init; }
        public required string Url { get; init; }
        public void Kill() { if (!Process.HasExited) { Process.Kill(true); Process.WaitForExit(); } }
        public void Dispose() { Kill(); Process.Dispose(); }
    }

    static ServeChild ServeProcess(string platform = "cpu")
    {
        var p = CliProcess("serve", "--platform", platform, "--listen", "127.0.0.1:0");
        var line = p.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30)).GetAwaiter().GetResult();
        Assert.True(line?.StartsWith("listening on ") == true, $"serve printed '{line}'");
        return new ServeChild { Process = p, Url = line!["listening on ".Length..] };
    }

    static Process CliProcess(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = SharedData.RepoRoot };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "tapml.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        return Process.Start(psi)!;
    }
}
