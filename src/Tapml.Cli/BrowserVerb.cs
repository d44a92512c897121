using System.CommandLine;
using Tapml.Core;
using Tapml.Platforms;
using Tapml.Platforms.WebGpu;

namespace Tapml.Cli;

/// <summary><c>tapml browser [--listen ADDR] [--no-launch] [--browser PATH] [--token T]</c>: brings up the browser
/// platform once and says what the tab has (adapter, limits, features, user agent) and whether a kernel runs there;
/// the spec to give other verbs is printed with it.</summary>
static class BrowserVerb
{
    public static Command Create()
    {
        var listen = new Option<string>("--listen") { Description = "HOST:PORT the page is served on (loopback by default; any other address needs --token)", DefaultValueFactory = _ => "127.0.0.1:0" };
        var noLaunch = new Option<bool>("--no-launch") { Description = "launch no browser: print the page's URL (and a QR code) for one you open" };
        var browser = new Option<string?>("--browser") { Description = "the Chromium (or Chrome) to launch (default: chromium on PATH)" };
        var token = new Option<string?>("--token") { Description = "token the page must present (carried in the URL's fragment); needed off loopback" };
        var cmd = new Command("browser", "run the WebGPU platform in a browser tab and show what it has") { listen, noLaunch, browser, token };
        cmd.Action(pr =>
        {
            var q = new List<string>();
            if (pr.GetValue(noLaunch)) q.Add("connect");
            if (pr.GetValue(listen) is { } l && l != "127.0.0.1:0") q.Add("listen=" + l);
            if (pr.GetValue(browser) is { } b) q.Add("browser=" + b);
            if (pr.GetValue(token) is { } t) q.Add("token=" + t);
            string spec = "browser" + (q.Count > 0 ? "?" + string.Join("&", q) : "");
            using var p = (WebGpuPlatform)PlatformRegistry.Create(spec);
            Console.WriteLine($"{spec}: {p.Description}");
            foreach (var d in p.Details()) Console.WriteLine($"  {d}");
            if (p.Device is Browser.BrowserDevice bd) Console.WriteLine($"  user agent: {(string?)bd.Hello["userAgent"]}");
            // A kernel there and back: Add of two small vectors.
            var a = Tensor.FromArray(new float[] { 1, 2, 3, 4 }, 4);
            var node = new Ir.Node { Name = "check", OpType = "Add", Inputs = ["a", "b"], Outputs = ["y"] };
            var ctx = new NodeContext(node, 17);
            var k = p.Prepare(node, ctx, [Ir.TypeRef.TensorOf(DType.Float32, [4]), Ir.TypeRef.TensorOf(DType.Float32, [4])]);
            var y = (Tensor)p.Download(p.Run(k, ctx, [p.Upload(a), p.Upload(a)])[0]!);
            bool ok = y.Span<float>().SequenceEqual(new float[] { 2, 4, 6, 8 });
            Console.WriteLine(ok ? "kernel check: Add ran in the tab and gave 2,4,6,8" : $"kernel check FAILED: Add gave {string.Join(",", y.Span<float>().ToArray())}");
            Console.WriteLine($"use it as --platform '{spec}' (or --target) with any verb");
            return ok ? 0 : 1;
        });
        return cmd;
    }
}
