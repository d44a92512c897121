using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Builders;
using Tapml.Platforms.WebGpu;
using Xunit;

namespace Tapml.Tests;

/// <summary>The kernel lists webgpu keeps per model (<see cref="KernelList"/>): what a model compiled on its first run
/// compiles ahead, in parallel, on the next platform's first run, with the same results, and what Dawn compiled
/// comes from its blob cache; a damaged list is skipped.</summary>
public class KernelListTests
{
    static string TempDir() => Directory.CreateTempSubdirectory("tapml-kernels-").FullName;

    [Fact]
    public void A_list_gives_back_what_was_added_and_skips_damaged_entries()
    {
        var dir = TempDir();
        try
        {
            var model = SampleModels.SampleMlp();
            var list = new KernelList("adapter", model, dir);
            list.Add("@compute @workgroup_size(1) fn main() {}", "empty");
            list.Add("@compute @workgroup_size(2) fn main() {}", "two\nlines");
            list.Add("@compute @workgroup_size(1) fn main() {}", "empty again");   // known: not added twice
            var back = new KernelList("adapter", model, dir).Load();
            Assert.Equal(["empty", "two lines"], back.Select(k => k.Label));
            Assert.Equal("@compute @workgroup_size(2) fn main() {}", back[1].Code);
            // Another adapter, or another model (a different initializer shape), has a list of its own.
            Assert.Empty(new KernelList("other adapter", model, dir).Load());
            Assert.Empty(new KernelList("adapter", SampleModels.SampleCnn(), dir).Load());
            Assert.NotEqual(KernelList.Fingerprint(model), KernelList.Fingerprint(SampleModels.SampleCnn()));
            Assert.Equal(KernelList.Fingerprint(model), KernelList.Fingerprint(SampleModels.SampleMlp(seed: 5)));   // values do not count
            // A text whose bytes no longer match its hash, a truncated line and garbage are skipped.
            var texts = Directory.GetFiles(dir, "*.wgsl");
            File.WriteAllText(texts.Single(f => File.ReadAllText(f).Contains("(1)")), "tampered");
            var listFile = Directory.GetFiles(Path.Combine(dir, "lists")).Single();
            File.AppendAllText(listFile, "0123abc\nnot a line at all\n");
            Assert.Equal(["two lines"], new KernelList("adapter", model, dir).Load().Select(k => k.Label));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void A_second_platform_compiles_the_models_kernels_ahead_with_the_same_outputs()
    {
        WebGpuTests.SkipIfNoDawn("webgpu");
        var dir = TempDir();
        try
        {
            var model = SampleModels.SampleMlp();
            var feeds = new Dictionary<string, Value> { ["x"] = Tensor.FromArray(Enumerable.Range(0, 128).Select(i => (i % 9) * 0.25f - 1).ToArray(), 2, 64) };
            string spec = $"webgpu?kernel-cache={dir}";
            using (var first = new WebGpuPlatform(spec))
            {
                first.Warm(model);
                Assert.Equal(0, ((DawnDevice)first.Device).Precompiling);   // nothing known yet
                NewOpsHarness.AssertMatchesCpu("first platform", model, feeds, first);
                Assert.True(first.KernelCount > 0);
                Assert.True(((DawnDevice)first.Device).Blobs!.Stores > 0, "Dawn stored nothing in its blob cache");
            }
            Assert.NotEmpty(Directory.GetFiles(Path.Combine(dir, "blobs")));
            using var second = new WebGpuPlatform(spec);
            second.Warm(model);
            int ahead = ((DawnDevice)second.Device).Precompiling;
            Assert.True(ahead > 0, "the second platform started no compilation ahead");
            NewOpsHarness.AssertMatchesCpu("second platform", model, feeds, second);
            Assert.Equal(0, ((DawnDevice)second.Device).Precompiling);   // every one was used
            Assert.True(((DawnDevice)second.Device).Blobs!.Hits > 0, "Dawn found nothing in its blob cache");
            // Off (and auto on this CPU adapter): nothing compiled ahead, no blob cache.
            foreach (var s in new[] { "webgpu?kernel-cache=off", "webgpu" })
            {
                using var off = new WebGpuPlatform(s);
                if (s == "webgpu" && off.Info.AdapterType != "CPU") continue;
                off.Warm(model);
                Assert.Equal(0, ((DawnDevice)off.Device).Precompiling);
                Assert.Null(((DawnDevice)off.Device).Blobs);
            }
        }
        finally { Directory.Delete(dir, true); }
    }
}
