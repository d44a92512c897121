using System.Collections.Concurrent;
using System.Net;
using System.Net.WebSockets;
using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Tapml.Core;

namespace Tapml.Browser;

/// <summary>The page's side of the bridge as tapml sees it: Kestrel serves the page (embedded in this assembly) and
/// takes the WebSocket it opens back; the first message names the token and the adapter. Loopback unless told
/// otherwise; any other address needs a token, which the page reads from the URL fragment (never sent in a request
/// line); a WebSocket from another origin is refused.</summary>
public sealed class BrowserBridge : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly byte[]? _token;
    readonly Channel<BrowserSession> _pages = new();
    public string Url { get; }
    /// <summary>The URL to open: <see cref="Url"/> with the token in its fragment.</summary>
    public string PageUrl { get; }

    sealed class Channel<T>
    {
        readonly BlockingCollection<T> _q = new();
        public void Add(T x) => _q.Add(x);
        public bool Take(TimeSpan timeout, out T x) => _q.TryTake(out x!, timeout);
    }

    BrowserBridge(WebApplication app, string url, string? token)
    {
        _app = app; Url = url;
        _token = token is { Length: > 0 } ? SHA256.HashData(Encoding.UTF8.GetBytes(token)) : null;
        PageUrl = token is { Length: > 0 } ? $"{url}/#token={Uri.EscapeDataString(token)}" : url + "/";
    }

    public static BrowserBridge Start(string listen, string? token)
    {
        var (ip, port) = ParseListen(listen);
        if (!IPAddress.IsLoopback(ip) && string.IsNullOrEmpty(token))
            throw new TapmlException($"browser: listen={listen} is not a loopback address: give token=T (the page's URL carries it) to serve on it");
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(ip, port));
        var app = builder.Build();
        app.UseWebSockets(new WebSocketOptions { KeepAliveInterval = TimeSpan.FromSeconds(2) });
        // NOTE: the page loads and talks to nothing but this origin.
        app.Use(async (ctx, next) =>
        {
            ctx.Response.Headers.ContentSecurityPolicy = "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'";
            ctx.Response.Headers.XContentTypeOptions = "nosniff";
            await next();
        });
        BrowserBridge? bridge = null;
        app.MapGet("/", () => Page("index.html", "text/html; charset=utf-8"));
        app.MapGet("/bridge.js", () => Page("bridge.js", "text/javascript; charset=utf-8"));
        app.Map("/ws", async (HttpContext ctx) =>
        {
            if (!ctx.WebSockets.IsWebSocketRequest) { ctx.Response.StatusCode = 400; return; }
            // NOTE: only the page this server served may drive the GPU: a page from another origin is refused.
            string origin = ctx.Request.Headers.Origin.ToString();
            if (origin != bridge!.Url) { ctx.Response.StatusCode = 403; await ctx.Response.WriteAsync($"origin {origin} is not {bridge.Url}"); return; }
            using var ws = await ctx.WebSockets.AcceptWebSocketAsync();
            var first = await BrowserSession.ReceiveText(ws, 1 << 16, ctx.RequestAborted);
            JsonObject? hello = null;
            try { hello = first is null ? null : JsonNode.Parse(first) as JsonObject; } catch (System.Text.Json.JsonException) { }
            if (hello is null) { await ws.CloseAsync(WebSocketCloseStatus.ProtocolError, "expected the page's hello", default); return; }
            if (!bridge.TokenMatches((string?)hello["token"]))
            {
                await ws.CloseAsync(WebSocketCloseStatus.PolicyViolation, "wrong or missing token", default);
                return;
            }
            if (hello["hello"] is not JsonObject facts || facts["limits"] is not JsonObject)
            {
                await ws.CloseAsync(WebSocketCloseStatus.ProtocolError, "the hello names no adapter limits", default);
                return;
            }
            var session = new BrowserSession(ws, facts);
            bridge._pages.Add(session);
            await session.Run(ctx.RequestAborted);
        });
        try { app.StartAsync().GetAwaiter().GetResult(); }
        catch (IOException e) { throw new TapmlException($"browser: cannot listen on {listen}: {e.Message}"); }
        var bound = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());
        string host = ip.Equals(IPAddress.Any) || ip.Equals(IPAddress.IPv6Any) ? Dns.GetHostName() : ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{ip}]" : ip.ToString();
        bridge = new BrowserBridge(app, $"http://{host}:{bound.Port}", token);
        return bridge;
    }

    bool TokenMatches(string? given) =>
        _token is null || CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(given ?? "")), _token);

    static IResult Page(string name, string type)
    {
        using var s = Assembly.GetExecutingAssembly().GetManifestResourceStream("page/" + name)
            ?? throw new InvalidOperationException($"page/{name} is not embedded");
        using var m = new MemoryStream();
        s.CopyTo(m);
        return Results.Bytes(m.ToArray(), type);
    }

    /// <summary>The next page that connects, or null after <paramref name="timeout"/>.</summary>
    public BrowserSession? WaitForPage(TimeSpan timeout) => _pages.Take(timeout, out var s) ? s : null;

    static (IPAddress, int) ParseListen(string listen)
    {
        string s = listen.Trim();
        string host = "127.0.0.1", port = s;
        int colon = s.LastIndexOf(':');
        if (colon >= 0) { host = s[..colon].Trim('[', ']'); port = s[(colon + 1)..]; }
        if (!int.TryParse(port, out int p) || p is < 0 or > 65535) throw new TapmlException($"browser: listen={listen}: '{port}' is not a port (0–65535)");
        var ip = host == "localhost" ? IPAddress.Loopback : IPAddress.TryParse(host, out var a) ? a
            : throw new TapmlException($"browser: listen={listen}: '{host}' is not an IP address");
        return (ip, p);
    }

    public async ValueTask DisposeAsync()
    {
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2))) await _app.StopAsync(cts.Token).ConfigureAwait(false);
        await _app.DisposeAsync();
    }
}

/// <summary>One connected page: sends command messages, matches replies to requests, and turns a closed tab or a lost
/// device into one clear error for every waiter.</summary>
public sealed class BrowserSession
{
    readonly WebSocket _ws;
    readonly ConcurrentDictionary<uint, TaskCompletionSource<byte[]>> _waiting = new();
    readonly SemaphoreSlim _send = new(1, 1);
    readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    uint _next;
    string? _lost;

    public JsonObject Hello { get; }
    /// <summary>An error the page reported for work already sent (a validation error): thrown at the next wait.</summary>
    public string? PendingError { get; private set; }

    internal BrowserSession(WebSocket ws, JsonObject hello) { _ws = ws; Hello = hello; }

    public uint NextRequest() => Interlocked.Increment(ref _next);

    /// <summary>Largest message the page may send (a readback of the largest buffer, and its header).</summary>
    public long MaxMessageBytes { get; set; } = 1L << 30;

    internal async Task Run(CancellationToken stop)
    {
        var buf = new byte[1 << 16];
        try
        {
            while (_ws.State == WebSocketState.Open)
            {
                using var m = new MemoryStream();
                WebSocketReceiveResult r;
                do
                {
                    r = await _ws.ReceiveAsync(buf, stop);
                    if (r.MessageType == WebSocketMessageType.Close) { Lose($"the browser tab closed the connection ({r.CloseStatusDescription})"); return; }
                    if (m.Length + r.Count > MaxMessageBytes)
                    {
                        Lose($"the page sent a message over {MaxMessageBytes} bytes");
                        await _ws.CloseAsync(WebSocketCloseStatus.MessageTooBig, "message too big", CancellationToken.None);
                        return;
                    }
                    m.Write(buf, 0, r.Count);
                } while (!r.EndOfMessage);
                if (r.MessageType == WebSocketMessageType.Text) continue;
                var msg = m.ToArray();
                if (msg.Length < 8) continue;
                byte kind = msg[0];
                uint req = BitConverter.ToUInt32(msg, 4);
                var payload = msg[8..];
                if (kind == 2)   // error
                {
                    string text = Encoding.UTF8.GetString(payload);
                    if (req != 0 && _waiting.TryRemove(req, out var t)) t.TrySetException(new TapmlException(text));
                    else PendingError ??= text;
                    continue;
                }
                if (_waiting.TryRemove(req, out var w)) w.TrySetResult(payload);
            }
            Lose("the browser tab closed the connection");
        }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException)
        {
            Lose($"the connection to the browser dropped ({e.Message})");
        }
    }

    void Lose(string why)
    {
        _lost ??= why;
        foreach (var (k, t) in _waiting) if (_waiting.TryRemove(k, out _)) t.TrySetException(new PlatformLostException($"browser: {why}"));
        _closed.TrySetResult();
    }

    public bool IsLost => _lost is not null;

    /// <summary>Registers a request whose reply will be waited for (before the message naming it is sent).</summary>
    public Task<byte[]> Expect(uint request)
    {
        var t = new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (_lost is { } why) t.SetException(new PlatformLostException($"browser: {why}"));
        else _waiting[request] = t;
        return t.Task;
    }

    public void Send(ReadOnlyMemory<byte> message)
    {
        if (_lost is { } why) throw new PlatformLostException($"browser: {why}");
        _send.Wait();
        try { _ws.SendAsync(message, WebSocketMessageType.Binary, true, CancellationToken.None).AsTask().GetAwaiter().GetResult(); }
        catch (Exception e) when (e is WebSocketException or IOException or ObjectDisposedException) { Lose($"the connection to the browser dropped ({e.Message})"); throw new PlatformLostException($"browser: {_lost}"); }
        finally { _send.Release(); }
    }

    /// <summary>Waits for a reply; a page that stays silent past <paramref name="timeout"/> is an error naming what waited.</summary>
    public byte[] Wait(Task<byte[]> reply, TimeSpan timeout, string what)
    {
        try
        {
            if (!reply.Wait(timeout)) throw new PlatformLostException($"browser: no answer to {what} within {timeout.TotalSeconds:G} s (is the tab still open and its GPU alive?)");
            return reply.Result;
        }
        catch (AggregateException e) when (e.InnerException is TapmlException t) { throw t is PlatformLostException ? new PlatformLostException(t.Message) : new TapmlException(t.Message); }
    }

    public string? TakeError()
    {
        var e = PendingError;
        PendingError = null;
        return e;
    }

    internal static async Task<string?> ReceiveText(WebSocket ws, int max, CancellationToken stop)
    {
        var buf = new byte[max];
        int at = 0;
        while (true)
        {
            var r = await ws.ReceiveAsync(buf.AsMemory(at), stop);
            if (r.MessageType != WebSocketMessageType.Text) return null;
            at += r.Count;
            if (r.EndOfMessage) return Encoding.UTF8.GetString(buf, 0, at);
            if (at >= max) return null;
        }
    }

    public async Task CloseAsync()
    {
        try { if (_ws.State == WebSocketState.Open) await _ws.CloseAsync(WebSocketCloseStatus.NormalClosure, "tapml is done", new CancellationTokenSource(1000).Token); }
        catch (Exception e) when (e is WebSocketException or OperationCanceledException or IOException) { }
        Lose("closed by tapml");
    }
}
