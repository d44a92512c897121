using System.Diagnostics;
using Tapml.Core;
using Tapml.Platforms;
using Tapml.Platforms.WebGpu;

namespace Tapml.Browser;

/// <summary><c>browser[?connect][&amp;listen=ADDR][&amp;token=T][&amp;browser=PATH][&amp;timeout=SECONDS]</c>: the WebGPU platform's
/// kernels run by a browser tab. Plain <c>browser</c> launches Chromium headless with WebGPU (SwiftShader where there
/// is no GPU); <c>browser?connect</c> prints the page's URL for a browser the user opens (a phone on the LAN, say)
/// and waits for it.</summary>
public static class BrowserPlatform
{
    public static void Register() => PlatformRegistry.Register(new("browser",
        "browser[?connect]: WebGPU in a browser tab over a WebSocket (headless Chromium, or a browser you open with ?connect)",
        Create, "browser"));

    /// <summary>Chromium's path, or null (tests skip with <see cref="Unavailable"/>).</summary>
    public static string? FindChromium(string? given = null)
    {
        if (given is not null) return File.Exists(given) ? given : null;
        foreach (var name in new[] { "chromium", "chromium-browser", "google-chrome" })
            foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
                if (File.Exists(Path.Combine(dir, name))) return Path.Combine(dir, name);
        return null;
    }

    public static string? Unavailable() => FindChromium() is null ? "no Chromium here (apt-get install chromium; scripts/setup.sh does)" : null;

    public static IPlatform Create(string spec)
    {
        bool connect = false;
        string listen = "127.0.0.1:0";
        string? token = null, browserPath = null;
        double timeout = 120;
        foreach (var (k, v) in PlatformSpec.Query(spec))
        {
            switch (k)
            {
                case "connect" when v is "" or "1" or "true": connect = true; break;
                case "listen": listen = v; break;
                case "token" when v.Length > 0: token = v; break;
                case "browser": browserPath = v; break;
                case "timeout" when double.TryParse(v, System.Globalization.CultureInfo.InvariantCulture, out timeout) && timeout > 0: break;
                default: throw new TapmlException($"platform '{spec}': unknown or bad option '{k}={v}' (browser takes connect, listen=ADDR, token=T, browser=PATH, timeout=SECONDS)");
            }
        }
        string? chromium = null;
        if (!connect && (chromium = FindChromium(browserPath)) is null)
            throw new TapmlException($"platform '{spec}': {(browserPath is null ? "no Chromium here (apt-get install chromium), or give browser=PATH" : $"browser={browserPath} does not exist")}; or use browser?connect and open the page yourself");
        var bridge = BrowserBridge.Start(listen, token);
        Process? proc = null;
        string? profile = null;
        try
        {
            if (connect)
            {
                Console.Error.WriteLine($"browser: open {bridge.PageUrl} in a browser with WebGPU (waiting {timeout:G} s)");
                foreach (var line in QrCode.Render(bridge.PageUrl)) Console.Error.WriteLine(line);
            }
            else (proc, profile) = Launch(chromium!, bridge.PageUrl);
            var session = bridge.WaitForPage(TimeSpan.FromSeconds(connect ? timeout : Math.Min(timeout, 60)))
                ?? throw new TapmlException($"platform '{spec}': no page connected{(proc is { HasExited: true } ? $" (Chromium exited with code {proc.ExitCode})" : "")}; " +
                    (connect ? $"was {bridge.PageUrl} opened?" : "does this Chromium have WebGPU (--enable-unsafe-webgpu)?"));
            BrowserDevice device;
            try { device = new BrowserDevice(session, TimeSpan.FromSeconds(timeout), () => Stop(bridge, proc, profile)) { BrowserProcessId = proc?.Id }; }
            catch (Exception e) when (e is InvalidCastException or InvalidOperationException or NullReferenceException or FormatException or OverflowException)
            {
                throw new TapmlException($"platform '{spec}': the page's description of its adapter is malformed ({e.Message})");
            }
            return new WebGpuPlatform(spec, device);
        }
        catch
        {
            Stop(bridge, proc, profile);
            throw;
        }
    }

    static (Process, string) Launch(string chromium, string url)
    {
        string profile = Path.Combine(Path.GetTempPath(), $"tapml-chromium-{Guid.NewGuid():N}");
        Directory.CreateDirectory(profile);
        string xdg = Path.Combine(profile, "xdg");
        Directory.CreateDirectory(xdg);
        if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(xdg, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var psi = new ProcessStartInfo(chromium)
        {
            RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false,
        };
        // NOTE: flags verified in ../shared/PLATFORMS.md: headless WebGPU on Chromium's bundled SwiftShader where there is no GPU.
        foreach (var a in new[] { "--headless", "--no-sandbox", "--enable-unsafe-webgpu", "--no-first-run", "--no-default-browser-check", $"--user-data-dir={profile}", url })
            psi.ArgumentList.Add(a);
        psi.Environment["XDG_RUNTIME_DIR"] = xdg;
        var p = Process.Start(psi) ?? throw new TapmlException($"browser: could not start {chromium}");
        // NOTE: Chromium writes harmless D-Bus errors; drain both pipes so it never blocks on them.
        p.OutputDataReceived += (_, _) => { };
        p.ErrorDataReceived += (_, _) => { };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return (p, profile);
    }

    static void Stop(BrowserBridge bridge, Process? proc, string? profile)
    {
        try { if (proc is { HasExited: false }) { proc.Kill(entireProcessTree: true); proc.WaitForExit(5000); } }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception) { }
        proc?.Dispose();
        bridge.DisposeAsync().AsTask().GetAwaiter().GetResult();
        try { if (profile is not null && Directory.Exists(profile)) Directory.Delete(profile, true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
