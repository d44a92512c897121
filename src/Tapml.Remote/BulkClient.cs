using System.Net;
using System.Net.Sockets;
using Tapml.Core;

namespace Tapml.Remote;

/// <summary>The client side of the server's bulk endpoint (<see cref="BulkEndpoint"/>): a tensor's bytes as one
/// HTTP/1.1 request or response body, read and written in place. Shared by the sessions over one connection. When the
/// port cannot be reached (a tunnel or firewall that passes only the gRPC port) it turns itself off and the caller
/// uses the gRPC streams.</summary>
sealed class BulkClient : IDisposable
{
    readonly HttpClient _http;
    readonly Uri _base;
    readonly string _name;
    readonly TimeSpan _timeout;
    /// <summary>Set once the port proved unreachable: transfers go over gRPC from then on.</summary>
    public bool Off { get; private set; }

    public BulkClient(string name, Uri server, int port, TimeSpan timeout, bool insecure)
    {
        _name = name;
        _timeout = timeout;
        _base = new UriBuilder(server) { Port = port, Path = BulkEndpoint.Prefix }.Uri;
        var handler = new SocketsHttpHandler
        {
            ConnectTimeout = TimeSpan.FromSeconds(5),
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
            // NOTE: no HTTP/2 pings here: TCP keep-alive (1 s idle, 1 s apart, 3 probes) and a 5 s user timeout on unacked
            // data find a connection that dropped silently within 5 s, sending or waiting.
            ConnectCallback = Connect,
        };
        if (insecure) handler.SslOptions.RemoteCertificateValidationCallback = (_, _, _, _) => true;
        _http = new HttpClient(handler) { Timeout = Timeout.InfiniteTimeSpan, DefaultRequestVersion = HttpVersion.Version11, DefaultVersionPolicy = HttpVersionPolicy.RequestVersionExact };
    }

    static async ValueTask<Stream> Connect(SocketsHttpConnectionContext ctx, CancellationToken ct)
    {
        var s = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            s.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
            s.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, 1);
            s.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, 1);
            s.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, 3);
            // TCP_USER_TIMEOUT (Linux): unacknowledged data for 5 s ends the connection.
            if (OperatingSystem.IsLinux()) s.SetRawSocketOption(6, 18, BitConverter.GetBytes(5000));
            await s.ConnectAsync(ctx.DnsEndPoint, ct).ConfigureAwait(false);
            return new NetworkStream(s, ownsSocket: true);
        }
        catch { s.Dispose(); throw; }
    }

    HttpRequestMessage Request(HttpMethod method, ulong handle, string session, string? authorization)
    {
        var req = new HttpRequestMessage(method, new Uri(_base, handle.ToString(System.Globalization.CultureInfo.InvariantCulture)));
        req.Headers.TryAddWithoutValidation(Wire.SessionHeader, session);
        if (authorization is not null) req.Headers.TryAddWithoutValidation("Authorization", authorization);
        return req;
    }

    /// <summary>Fills a reserved handle; false when the bulk port cannot be reached (use gRPC).</summary>
    public bool Upload(ulong handle, ReadOnlyMemory<byte> bytes, string session, string? authorization, string what)
    {
        using var req = Request(HttpMethod.Put, handle, session, authorization);
        req.Content = new ReadOnlyMemoryContent(bytes);
        req.Content.Headers.ContentType = new("application/octet-stream");
        return Exchange(req, what, _ => { });
    }

    /// <summary>Reads a tensor's bytes into <paramref name="dst"/>; false when the bulk port cannot be reached.</summary>
    public bool Download(ulong handle, Memory<byte> dst, string session, string? authorization, string what)
    {
        using var req = Request(HttpMethod.Get, handle, session, authorization);
        return Exchange(req, what, resp =>
        {
            long? length = resp.Content.Headers.ContentLength;
            if (length != dst.Length) throw new TapmlException($"{_name}: the server announced {length?.ToString() ?? "no"} bytes for {what}, {dst.Length} expected");
            using var body = resp.Content.ReadAsStream();
            int at = 0, n;
            // NOTE: large reads go from the socket straight into the tensor.
            while (at < dst.Length && (n = body.Read(dst.Span[at..])) > 0) at += n;
            if (at != dst.Length) throw new PlatformLostException($"{_name}: connection lost during {what} ({at} of {dst.Length} bytes came)", null);
        });
    }

    bool Exchange(HttpRequestMessage req, string what, Action<HttpResponseMessage> read)
    {
        // NOTE: one deadline for the whole exchange, body included: when it passes, the response is torn down.
        using var cts = new CancellationTokenSource(_timeout);
        HttpResponseMessage? resp = null;
        using var reg = cts.Token.Register(() => resp?.Dispose());
        try
        {
            resp = _http.Send(req, HttpCompletionOption.ResponseHeadersRead, cts.Token);
            using (resp)
            {
                if (!resp.IsSuccessStatusCode) throw Refused(resp, what);
                read(resp);
            }
            return true;
        }
        catch (HttpRequestException e) when (e.HttpRequestError == HttpRequestError.ConnectionError && resp is null)
        {
            // NOTE: the gRPC port answered a moment ago; a bulk port that does not is out of reach from here (a tunnel
            // of one port). A server that died meanwhile is reported by the gRPC call that follows.
            Off = true;
            return false;
        }
        catch (Exception e) when (cts.IsCancellationRequested && e is OperationCanceledException or ObjectDisposedException or IOException or HttpRequestException)
        {
            throw new PlatformLostException($"{_name}: no answer to {what} within {_timeout.TotalSeconds:G} s (raise ?timeout=SECONDS for slow transfers)", e);
        }
        catch (Exception e) when (e is HttpRequestException or IOException)
        {
            throw new PlatformLostException($"{_name}: connection lost during {what} ({e.Message}); is `tapml serve` still running there?", e);
        }
    }

    TapmlException Refused(HttpResponseMessage resp, string what)
    {
        string detail;
        try
        {
            using var s = resp.Content.ReadAsStream();
            var buf = new byte[4096];
            int n = s.ReadAtLeast(buf, buf.Length, throwOnEndOfStream: false);
            detail = System.Text.Encoding.UTF8.GetString(buf, 0, n).ReplaceLineEndings(" ");
        }
        catch (Exception e) when (e is IOException or HttpRequestException) { detail = resp.ReasonPhrase ?? ""; }
        return (int)resp.StatusCode switch
        {
            401 => new TapmlException($"{_name}: the server refused the token ({detail}); set TAPML_TOKEN to the server's --token"),
            413 => new TapmlException($"{_name}: server limit reached during {what}: {detail}"),
            501 when detail.StartsWith("unsupported: ", StringComparison.Ordinal) => new UnsupportedException(detail["unsupported: ".Length..]),
            _ => new TapmlException($"{_name}: {what} failed on the server: {detail}"),
        };
    }

    public void Dispose() => _http.Dispose();
}
