using System.CommandLine;
using Tapml.Core;
using Tapml.Remote;

namespace Tapml.Cli;

/// <summary><c>tapml serve --platform P [--listen ADDR] [--token T] [--tls-cert F --tls-key F] [--max-message-mb N]
/// [--max-memory-mb N] [--bulk-port N]</c>: hosts a platform for <c>remote:URL</c> clients; prints <c>listening on URL</c> when
/// ready and serves until interrupted.</summary>
static class ServeVerb
{
    public static Command Create()
    {
        var platform = Cli.PlatformOption();
        var listen = new Option<string>("--listen") { Description = "HOST:PORT to listen on (loopback by default; any other address needs --token)", DefaultValueFactory = _ => "127.0.0.1:7411" };
        var token = new Option<string?>("--token") { Description = "token clients must send (they set TAPML_TOKEN); default: the TAPML_TOKEN environment variable" };
        var cert = new Option<string?>("--tls-cert") { Description = "PEM certificate: serve HTTPS (HTTP/2 over TLS)" };
        var key = new Option<string?>("--tls-key") { Description = "PEM private key of --tls-cert" };
        var maxMessage = new Option<int>("--max-message-mb") { Description = "largest request message accepted, MiB", DefaultValueFactory = _ => 16 };
        var maxMemory = new Option<int>("--max-memory-mb") { Description = "tensor memory one client session may hold, MiB", DefaultValueFactory = _ => 4096 };
        var bulkPort = new Option<int?>("--bulk-port") { Description = "port of the bulk tensor endpoint (plain HTTP/1.1 on the same address, same TLS and token): default the --listen port + 1 (any free port with port 0); -1: none, tensors travel in gRPC chunks" };
        var cmd = new Command("serve", "serve a platform to remote clients (remote:URL) over gRPC") { platform, listen, token, cert, key, maxMessage, maxMemory, bulkPort };
        cmd.Action(pr =>
        {
            if (pr.GetValue(maxMessage) is < 1 or > 2047) throw new TapmlException("--max-message-mb must be 1–2047");
            if (pr.GetValue(maxMemory) < 1) throw new TapmlException("--max-memory-mb must be at least 1");
            var options = new ServeOptions(pr.GetValue(platform)!, pr.GetValue(token) ?? Environment.GetEnvironmentVariable("TAPML_TOKEN"),
                (long)pr.GetValue(maxMessage) << 20, (long)pr.GetValue(maxMemory) << 20);
            var server = RemoteServer.StartAsync(options, pr.GetValue(listen)!, pr.GetValue(cert), pr.GetValue(key), w => Console.Error.WriteLine($"warning: {w}"), pr.GetValue(bulkPort)).GetAwaiter().GetResult();
            Console.WriteLine($"listening on {server.Url}");
            server.Stopping.WaitHandle.WaitOne();
            server.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 0;
        });
        return cmd;
    }
}
