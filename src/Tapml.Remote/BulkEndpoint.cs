using System.IO.Hashing;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Tapml.Core;

namespace Tapml.Remote;

/// <summary>Tensor bytes over plain HTTP/1.1 on the server's bulk port (DescribeReply.bulk_port): what the gRPC
/// <c>Upload</c> and <c>Download</c> streams do, as one request body or response body written straight into or out
/// of the tensor. The same checks hold: the token (constant-time), the session header (an existing session only),
/// a handle Allocate reserved and counted against the session's memory, the exact size (Content-Length checked before
/// a byte is read, the count checked as bytes arrive), the content hash, and nothing but a number from the path.
/// Errors are an HTTP status with the reason as the body: 400 bad input, 401 token, 409 unknown handle or out of
/// order, 413 a limit, 501 unsupported.</summary>
static class BulkEndpoint
{
    public const string Prefix = "/tapml/v1/tensor/";
    const int SliceBytes = 1 << 20;

    public static void Map(IEndpointRouteBuilder app, Sessions sessions, TokenCheck tokens)
    {
        app.MapPut(Prefix + "{handle}", (RequestDelegate)(c => Serve(c, sessions, tokens, Upload)));
        app.MapGet(Prefix + "{handle}", (RequestDelegate)(c => Serve(c, sessions, tokens, Download)));
    }

    static async Task Serve(HttpContext c, Sessions sessions, TokenCheck tokens, Func<HttpContext, Session, ulong, Task> body)
    {
        try
        {
            if (tokens.Refusal(c.Request.Headers.Authorization.FirstOrDefault()) is { } why) { await Refuse(c, 401, why); return; }
            string? id = c.Request.Headers[Wire.SessionHeader].FirstOrDefault();
            if (sessions.Find(id) is not { } s)
            {
                await Refuse(c, 409, id is null ? $"missing '{Wire.SessionHeader}' header" : "no such session on this server (it ended, or the server restarted)");
                return;
            }
            if (!ulong.TryParse(c.Request.RouteValues["handle"] as string, System.Globalization.NumberStyles.None, null, out ulong h) || h == 0)
            {
                await Refuse(c, 400, "the path names no tensor handle");
                return;
            }
            await body(c, s, h);
        }
        catch (Exception e) when (!c.RequestAborted.IsCancellationRequested)
        {
            var (code, message) = e switch
            {
                RemoteLimitException => (413, e.Message),
                RemoteStateException => (409, e.Message),
                UnsupportedException => (501, "unsupported: " + e.Message),
                TapmlException or OverflowException => (400, e.Message),
                // NOTE: a body cut short (the client went away, or sent a bad chunk encoding) ends this request only.
                BadHttpRequestException or IOException => (400, $"the request body broke off: {e.Message}"),
                OutOfMemoryException => (413, "the server ran out of memory"),
                _ => (500, $"{e.GetType().Name}: {e.Message}"),
            };
            if (!c.Response.HasStarted) await Refuse(c, code, message);
            else c.Abort();
        }
        catch (Exception) { c.Abort(); }
    }

    static async Task Refuse(HttpContext c, int code, string message)
    {
        c.Response.StatusCode = code;
        c.Response.ContentType = "text/plain; charset=utf-8";
        // NOTE: a refused upload's body is not read: the connection closes after the reply instead of draining it.
        if (c.Request.Method == HttpMethods.Put) c.Response.Headers.Connection = "close";
        await c.Response.WriteAsync(message.ReplaceLineEndings(" "));
    }

    static T Locked<T>(Session s, Func<Session, T> body)
    {
        lock (s.Gate)
        {
            s.LastUse = DateTime.UtcNow;
            return body(s);
        }
    }

    static async Task Upload(HttpContext c, Session session, ulong h)
    {
        var (dtype, shape, bytes, hash, _) = Locked(session, s => s.Pending(h));
        if (c.Request.ContentLength is long announced && announced != bytes)
            throw new TapmlException($"upload into handle {h} announces {announced} bytes; {DTypes.Name(dtype)}{ShapeUtil.Format(shape)} has {bytes}");
        // NOTE: the destination was counted against the session's memory by Allocate. The body goes straight into the
        // tensor and into the hash as it arrives: one copy, one pass.
        var t = Locked(session, s => s.UploadTarget(h));
        var dst = Wire.WritableMemory(t);
        var hasher = new XxHash128();
        var reader = c.Request.BodyReader;
        long at = 0;
        while (true)
        {
            var read = await reader.ReadAsync(c.RequestAborted);
            foreach (var seg in read.Buffer)
            {
                if (at + seg.Length > bytes) throw new TapmlException($"upload into handle {h} brings more than its {bytes} bytes");
                seg.Span.CopyTo(dst.Span[(int)at..]);
                hasher.Append(seg.Span);
                at += seg.Length;
            }
            reader.AdvanceTo(read.Buffer.End);
            if (read.IsCompleted) break;
        }
        if (at != bytes) throw new TapmlException($"upload into handle {h} brought {at} of its {bytes} bytes");
        if (Wire.Key(hasher.GetCurrentHash()) != hash) throw new TapmlException("the uploaded bytes do not match their hash (corrupted in transit?)");
        Locked(session, s =>
        {
            s.Pending(h);
            s.Fill(h, t);
            return 0;
        });
        c.Response.StatusCode = 204;
    }

    static async Task Download(HttpContext c, Session session, ulong h)
    {
        var t = Locked(session, s => s.Platform.Download(s.Get(h)) as Tensor ?? throw new UnsupportedException("only tensors can be downloaded"));
        if (t.DType == DType.String) throw new UnsupportedException("string tensors do not travel");
        var bytes = Wire.Bytes(t);
        c.Response.ContentType = "application/octet-stream";
        c.Response.ContentLength = bytes.Length;
        // NOTE: in slices, so Kestrel's output buffer holds a few blocks at a time, not a copy of the whole tensor.
        for (int at = 0; at < bytes.Length; at += SliceBytes)
            await c.Response.Body.WriteAsync(bytes.Slice(at, Math.Min(SliceBytes, bytes.Length - at)), c.RequestAborted);
    }
}
