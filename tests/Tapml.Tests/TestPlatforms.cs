using Tapml.Core;
using Tapml.Platforms;
using Xunit;

namespace Tapml.Tests;

/// <summary>The platforms a test row runs on, read from <see cref="PlatformRegistry"/> (llama.cpp's test-backend-ops
/// shape: one catalog of cases, every backend against the cpu): a platform added to the registry gets every
/// op-case and conformance row written with <see cref="Gpu()"/> or <see cref="Cross"/>, with no test edit. A platform
/// that cannot start here skips with the reason its registry entry gives (<see cref="UnsupportedException"/>), never
/// passes or fails.</summary>
public static class TestPlatforms
{
    /// <summary>The oracles the others are compared against (<c>cpu</c>, the reference; <c>onnxruntime</c>): their
    /// own per-case rows check them (ConformanceTests).</summary>
    public static readonly IReadOnlySet<string> Oracles = new HashSet<string> { "cpu", "onnxruntime" };

    /// <summary>Names of the registry's kernel platforms: every entry but the oracles and the wrappers (entries with
    /// an <see cref="PlatformRegistry.Entry.Example"/>: they need an inner platform, like <c>faulty:cpu?…</c>).</summary>
    public static IEnumerable<string> GpuNames() =>
        PlatformRegistry.Entries.Where(e => e.Example is null && !Oracles.Contains(e.Name)).Select(e => e.Name);

    /// <summary>One row per kernel platform of the registry.</summary>
    public static TheoryData<string> Gpu() => new(GpuNames());

    /// <summary>Every kernel platform of the registry with each of <paramref name="rows"/>: the platform first, then
    /// the row's values.</summary>
    public static IEnumerable<object[]> Cross(IEnumerable<object[]> rows)
    {
        var all = rows.ToList();
        foreach (var p in GpuNames())
            foreach (var r in all) yield return [p, .. r];
    }

    /// <summary>The platform <paramref name="spec"/> names, or the row skipped with the registry's reason where it
    /// cannot start here.</summary>
    public static IPlatform CreateOrSkip(string spec)
    {
        try { return PlatformRegistry.Create(spec); }
        catch (UnsupportedException e) { Assert.Skip(e.Message); throw; }
    }

    /// <summary>Skips the row, with the registry's reason, where <paramref name="spec"/> cannot start here.</summary>
    public static void SkipIfUnavailable(string spec) => CreateOrSkip(spec).Dispose();
}
