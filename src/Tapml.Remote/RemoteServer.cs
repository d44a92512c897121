using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using Grpc.Core;
using Grpc.Core.Interceptors;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Tapml.Core;

namespace Tapml.Remote;

/// <summary><c>tapml serve</c>: Kestrel on HTTP/2 hosting one platform for remote clients. Loopback unless told
/// otherwise; any other address needs a token.</summary>
public sealed class RemoteServer : IAsyncDisposable, IDisposable
{
    readonly WebApplication _app;
    readonly Sessions _sessions;

    /// <summary>The address clients use (<c>http://127.0.0.1:PORT</c>), with the port Kestrel bound.</summary>
    public string Url { get; }

    RemoteServer(WebApplication app, Sessions sessions, string url) { _app = app; _sessions = sessions; Url = url; }

    /// <summary>Starts serving. <paramref name="listen"/>: HOST:PORT or PORT (port 0: any free port).
    /// <paramref name="warn"/> gets warnings (no TLS on a non-loopback address). <paramref name="bulkPort"/>: the port
    /// of the bulk tensor endpoint on the same address (null: the listen port + 1, or any free port when that is 0;
    /// 0: any free port; -1: none, tensors travel in gRPC chunks only).</summary>
    public static async Task<RemoteServer> StartAsync(ServeOptions options, string listen = "127.0.0.1:0", string? tlsCert = null, string? tlsKey = null, Action<string>? warn = null, int? bulkPort = null)
    {
        var (ip, port) = ParseListen(listen);
        int bulk = bulkPort ?? (port is 0 or 65535 ? 0 : port + 1);
        if (bulk is < -1 or > 65535) throw new TapmlException($"--bulk-port {bulk}: not a port (0–65535, or -1 for none)");
        if (bulk > 0 && bulk == port) throw new TapmlException($"--bulk-port {bulk} is the gRPC port itself: give another (or -1 for none)");
        bool loopback = IPAddress.IsLoopback(ip);
        if (!loopback && string.IsNullOrEmpty(options.Token))
            throw new TapmlException($"--listen {listen} is not a loopback address: give --token T (clients set TAPML_TOKEN) to serve on it");
        if ((tlsCert is null) != (tlsKey is null)) throw new TapmlException("--tls-cert and --tls-key go together");
        if (!loopback && tlsCert is null) warn?.Invoke($"serving on {listen} without TLS: the token and tensors cross the network in clear (give --tls-cert F --tls-key F)");
        X509Certificate2? cert = null;
        if (tlsCert is not null)
        {
            try { cert = X509Certificate2.CreateFromPemFile(tlsCert, tlsKey); }
            catch (Exception e) when (e is CryptographicException or IOException) { throw new TapmlException($"--tls-cert {tlsCert} / --tls-key {tlsKey}: {e.Message}"); }
        }
        // NOTE: the platform must be creatable here: a server that cannot serve says so before it listens.
        PlatformSpecCheck(options.Platform);

        ListenOptions? bulkListen = null;
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = null;   // NOTE: gRPC's per-message limit applies; streams may exceed one message
            k.Limits.Http2.KeepAlivePingDelay = TimeSpan.FromSeconds(10);
            k.Limits.Http2.KeepAlivePingTimeout = TimeSpan.FromSeconds(10);
            // NOTE: HTTP/2 flow-control windows and frames far above Kestrel's defaults (1 MiB, 768 KiB, 16 KiB): a
            // tensor upload is megabytes in one stream, and small windows stall it on every round trip.
            k.Limits.Http2.InitialConnectionWindowSize = 64 << 20;
            k.Limits.Http2.InitialStreamWindowSize = 32 << 20;
            k.Limits.Http2.MaxFrameSize = (1 << 24) - 1;
            k.Listen(ip, port, l =>
            {
                l.Protocols = HttpProtocols.Http2;
                if (cert is not null) l.UseHttps(cert);
            });
            // NOTE: tensor bytes on plain HTTP/1.1 beside it: one socket write/read per buffer instead of 16 KiB HTTP/2
            // frames and protobuf copies on both sides (3× the throughput on loopback; docs/remote.md "Bulk transfers").
            // Kestrel refuses h2c and HTTP/1.1 on one cleartext port, hence a port of its own.
            if (bulk >= 0)
                k.Listen(ip, bulk, l =>
                {
                    bulkListen = l;
                    l.Protocols = HttpProtocols.Http1;
                    if (cert is not null) l.UseHttps(cert);
                });
        });
        var sessions = new Sessions(options);
        var tokens = new TokenCheck(options.Token);
        builder.Services.AddSingleton(sessions);
        builder.Services.AddSingleton(tokens);
        builder.Services.AddSingleton<Microsoft.AspNetCore.Connections.IMemoryPoolFactory<byte>>(new LargeBlockPoolFactory());
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = (int)Math.Min(int.MaxValue, options.MaxMessageBytes);
            o.MaxSendMessageSize = null;
            o.EnableDetailedErrors = true;
            o.Interceptors.Add<TokenCheck>();
        });
        var app = builder.Build();
        app.MapGrpcService<DeviceService>();
        if (bulkListen is not null) BulkEndpoint.Map(app, sessions, tokens);
        try { await app.StartAsync(); }
        catch (IOException e)
        {
            bool bulkBusy = bulk > 0 && e.Message.Contains($":{bulk}", StringComparison.Ordinal);
            throw new TapmlException($"cannot listen on {listen}{(bulk > 0 ? $" and bulk port {bulk}" : "")}: {e.Message}{(bulkBusy ? " (--bulk-port N picks another bulk port, -1 none)" : "")}");
        }
        var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        string url = new Uri(bound).Port is int p ? $"{(cert is null ? "http" : "https")}://{(ip.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"[{ip}]" : ip.ToString())}:{p}" : bound;
        // NOTE: Kestrel writes the bound endpoint back into the listen options (port 0 → the port it got).
        sessions.BulkPort = bulkListen?.IPEndPoint?.Port ?? 0;
        return new RemoteServer(app, sessions, url);
    }

    static void PlatformSpecCheck(string spec)
    {
        if (spec.StartsWith("remote:", StringComparison.Ordinal)) throw new TapmlException("serve --platform remote:… would only forward; serve a local platform");
        using var p = Platforms.PlatformRegistry.Create(spec);
    }

    static (IPAddress, int) ParseListen(string listen)
    {
        string s = listen.Trim();
        if (s.Contains("://")) s = new Uri(s).Authority;
        string host = "127.0.0.1", port = s;
        int colon = s.LastIndexOf(':');
        if (colon >= 0) { host = s[..colon].Trim('[', ']'); port = s[(colon + 1)..]; }
        if (!int.TryParse(port, out int p) || p is < 0 or > 65535) throw new TapmlException($"--listen {listen}: '{port}' is not a port (0–65535)");
        var ip = host == "localhost" ? IPAddress.Loopback
            : IPAddress.TryParse(host, out var a) ? a
            : throw new TapmlException($"--listen {listen}: '{host}' is not an IP address (use 127.0.0.1, 0.0.0.0, ::, or the interface's address)");
        return (ip, p);
    }

    /// <summary>Fires when the host stops (SIGTERM, Ctrl-C: ASP.NET's console lifetime handles both).</summary>
    public CancellationToken Stopping => _app.Lifetime.ApplicationStopping;

    /// <summary>The bulk tensor endpoint's port (0: none).</summary>
    public int BulkPort => _sessions.BulkPort;

    /// <summary>Sessions held now (tests, status lines).</summary>
    public int SessionCount => _sessions.Count;

    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    public async ValueTask DisposeAsync()
    {
        using (var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2))) await _app.StopAsync(cts.Token).ConfigureAwait(false);
        await _app.DisposeAsync();
        _sessions.Dispose();
    }
}

/// <summary>Refuses calls without the server's token (constant-time compare); every call when the server has one.</summary>
sealed class TokenCheck(string? token) : Interceptor
{
    readonly byte[]? _want = token is { Length: > 0 } ? SHA256.HashData(Encoding.UTF8.GetBytes(token)) : null;

    /// <summary>Why an <c>authorization</c> header value is refused, or null when it is accepted (gRPC calls and the
    /// bulk endpoint alike).</summary>
    public string? Refusal(string? authorization)
    {
        if (_want is null) return null;
        string given = authorization is not null && authorization.StartsWith("Bearer ", StringComparison.Ordinal) ? authorization[7..] : "";
        // NOTE: hashing both sides first makes the compare's time independent of the token's length too.
        if (CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(given)), _want)) return null;
        return authorization is null ? "this server needs a token (set TAPML_TOKEN)" : "wrong token";
    }

    void Check(ServerCallContext ctx)
    {
        if (Refusal(ctx.RequestHeaders.GetValue("authorization")) is { } why) throw new RpcException(new Status(StatusCode.Unauthenticated, why));
    }

    public override Task<TResponse> UnaryServerHandler<TRequest, TResponse>(TRequest request, ServerCallContext context, UnaryServerMethod<TRequest, TResponse> continuation)
    { Check(context); return continuation(request, context); }

    public override Task<TResponse> ClientStreamingServerHandler<TRequest, TResponse>(IAsyncStreamReader<TRequest> requestStream, ServerCallContext context, ClientStreamingServerMethod<TRequest, TResponse> continuation)
    { Check(context); return continuation(requestStream, context); }

    public override Task ServerStreamingServerHandler<TRequest, TResponse>(TRequest request, IServerStreamWriter<TResponse> responseStream, ServerCallContext context, ServerStreamingServerMethod<TRequest, TResponse> continuation)
    { Check(context); return continuation(request, responseStream, context); }
}
