using Tapml.Core;
using Xunit;

namespace Tapml.Tests;

/// <summary>The containment rule for paths named inside files (<see cref="SafePaths"/>).</summary>
public class SafePathsTests
{
    static string Folder()
    {
        string d = Path.Combine(Path.GetTempPath(), $"tapml-safe-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path.Combine(d, "sub"));
        File.WriteAllText(Path.Combine(d, "sub", "a.bin"), "x");
        return d;
    }

    [Fact]
    public void A_relative_path_inside_the_folder_resolves()
    {
        string d = Folder();
        try
        {
            Assert.Equal(SafePaths.Resolve(Path.Combine(d, "sub", "a.bin")), SafePaths.Contained(d, "sub/a.bin", "index"));
            Assert.Equal(SafePaths.Resolve(Path.Combine(d, "sub", "a.bin")), SafePaths.Contained(d, "sub/../sub/./a.bin", "index"));
            File.CreateSymbolicLink(Path.Combine(d, "link.bin"), Path.Combine(d, "sub", "a.bin"));
            Assert.Equal(SafePaths.Resolve(Path.Combine(d, "sub", "a.bin")), SafePaths.Contained(d, "link.bin", "index"));
        }
        finally { Directory.Delete(d, true); }
    }

    [Theory]
    [InlineData("../../../../etc/passwd", "leads outside")]
    [InlineData("/etc/passwd", "must be a relative path")]
    [InlineData("sub/../../x", "leads outside")]
    [InlineData("", "empty")]
    [InlineData("a\0b", "NUL")]
    [InlineData("missing.bin", "not found")]
    [InlineData("sub", "is a folder")]
    public void Paths_that_leave_the_folder_or_name_no_file_are_refused(string relative, string message)
    {
        string d = Folder();
        try
        {
            var e = Assert.Throws<TapmlException>(() => SafePaths.Contained(d, relative, "model.safetensors.index.json: weight_map['w']"));
            Assert.Contains(message, e.Message);
            Assert.StartsWith("model.safetensors.index.json: weight_map['w']", e.Message);
        }
        finally { Directory.Delete(d, true); }
    }

    [Fact]
    public void A_symlink_to_outside_and_a_named_pipe_are_refused()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("named pipes and realpath: Linux");
        string d = Folder();
        try
        {
            File.CreateSymbolicLink(Path.Combine(d, "out.bin"), "/etc/passwd");
            Assert.Contains("is a link to /etc/passwd, outside", Assert.Throws<TapmlException>(() => SafePaths.Contained(d, "out.bin", "x")).Message);
            File.CreateSymbolicLink(Path.Combine(d, "subdir-link"), "/etc");
            Assert.Contains("outside", Assert.Throws<TapmlException>(() => SafePaths.Contained(d, "subdir-link/passwd", "x")).Message);
            using (var mk = System.Diagnostics.Process.Start("mkfifo", [Path.Combine(d, "pipe")])) mk.WaitForExit();
            Assert.Contains("not a regular file", Assert.Throws<TapmlException>(() => SafePaths.Contained(d, "pipe", "x")).Message);
            Assert.Contains("not a regular file", Assert.Throws<TapmlException>(() => SafePaths.RegularFile("/dev/null", "x")).Message);
        }
        finally { Directory.Delete(d, true); }
    }

    /// <summary>The Hugging Face Hub cache links each snapshot file to its repository's blobs folder; that layout is
    /// followed, a link from the snapshot anywhere else is not.</summary>
    [Fact]
    public void A_hub_cache_snapshot_may_link_into_its_own_blobs_folder_only()
    {
        if (!OperatingSystem.IsLinux()) Assert.Skip("realpath: Linux");
        string root = Path.Combine(Path.GetTempPath(), $"tapml-hub-{Guid.NewGuid():N}");
        string repo = Path.Combine(root, "models--org--name"), snap = Path.Combine(repo, "snapshots", "abc123");
        try
        {
            Directory.CreateDirectory(Path.Combine(repo, "blobs"));
            Directory.CreateDirectory(snap);
            File.WriteAllText(Path.Combine(repo, "blobs", "f00d"), "{}");
            File.CreateSymbolicLink(Path.Combine(snap, "config.json"), "../../blobs/f00d");
            Assert.Equal(SafePaths.Resolve(Path.Combine(repo, "blobs", "f00d")), SafePaths.Contained(snap, "config.json", "x"));
            File.WriteAllText(Path.Combine(repo, "secret"), "no");
            File.CreateSymbolicLink(Path.Combine(snap, "other.json"), "../../secret");
            Assert.Contains("outside", Assert.Throws<TapmlException>(() => SafePaths.Contained(snap, "other.json", "x")).Message);
            File.CreateSymbolicLink(Path.Combine(snap, "passwd"), "/etc/passwd");
            Assert.Contains("outside", Assert.Throws<TapmlException>(() => SafePaths.Contained(snap, "passwd", "x")).Message);
        }
        finally { Directory.Delete(root, true); }
    }
}
