using Xunit;

namespace Tapml.Tests;

/// <summary>Locates the external, read-only test data in ../shared (beside the repository). Tests that need
/// it skip with a clear message when it is absent, so the suite also runs on a user's machine.</summary>
public static class SharedData
{
    public static readonly string RepoRoot = FindRepoRoot();
    public static readonly string Root = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));

    public static string PathOf(params string[] parts) => Path.Combine([Root, .. parts]);

    /// <summary>The folder, or a skip saying what is missing.</summary>
    public static string Require(params string[] parts)
    {
        string p = PathOf(parts);
        if (!Directory.Exists(p) && !File.Exists(p))
            Assert.Skip($"external test data {p} is absent (it lives in ../shared beside the repository)");
        return p;
    }

    static string FindRepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "tapml.sln"))) return d.FullName;
        return Directory.GetCurrentDirectory();
    }
}
