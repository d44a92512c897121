using Tapml.Core;
using Tapml.Ir.Safetensors;
using Tapml.Models;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Xunit;

namespace Tapml.Tests;

/// <summary>Weights read in place from the memory-mapped checkpoint: a bf16 checkpoint's matrices are never widened,
/// transposed or copied by a cpu decode, a tied lm_head shares the embedding's bytes, and the in-place MatMul and
/// Gather compute the f32 product of the stored values.</summary>
public class InPlaceWeightsTests
{
    [Fact]
    public void A_bf16_checkpoint_decodes_on_cpu_without_materializing_a_matrix_and_ties_share_one_buffer()
    {
        string dir = Directory.CreateTempSubdirectory("tapml-inplace-").FullName;
        try
        {
            TinyCheckpoint.Write("qwen2", 3, dir, new TinyCheckpoint.Sizes(Layers: 2), DType.BFloat16);   // qwen2's tiny config ties lm_head
            var model = HfModels.Load(dir);
            var inits = model.Graph.Initializers;
            var embed = inits["model.embed_tokens.weight"];
            var head = inits["model.embed_tokens.weight.T"];
            Assert.Equal(DType.BFloat16, embed.External?.Stored);
            Assert.True(head.External is { Transposed: true }, "the tied lm_head is not a transposed view");
            Assert.Equal(embed.External!.Address, head.External!.Address);
            Assert.Equal(new long[] { 64, 1024 }, head.Shape);
            var inPlace = inits.Values.Where(t => t.External is not null).ToList();
            Assert.Equal(2 * 7 + 2, inPlace.Count);           // q, k, v, o, gate, up, down a layer; the embedding and lm_head

            long[] prompt = [1, 17, 305, 42];
            var r = Generation.Greedy(new Executor(new CpuPlatform()), model, prompt, 4);
            Assert.All(inPlace, t => Assert.Equal(0, t.Materializations));

            // The same weights read into f32 arrays (transposed copies, the path of small matrices): the same tokens
            // and logits.
            var config = HfConfig.Load(dir);
            var copies = new Dictionary<string, Tensor>();
            using (var st = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors")))
                foreach (var name in st.Entries.Keys) copies[name] = TensorConvert.To(st.Read(name), DType.Float32);
            var plain = Llama.Build(config, copies, Architectures.Find("qwen2")!.Options!(config));
            Assert.All(plain.Graph.Initializers.Values, t => Assert.Null(t.External));
            var e = Generation.Greedy(new Executor(new CpuPlatform()), plain, prompt, 4);
            Assert.Equal(e.Tokens, r.Tokens);
            var cmp = Testing.Comparison.Compare("logits", e.PrefillLogits, r.PrefillLogits, new Testing.Tolerance(1e-5, 1e-5));
            Assert.True(cmp.Passed, cmp.Failure);

            // Reading Data converts (and is counted): what the assertions above would have seen.
            Assert.Equal(1024 * 64, head.Data.Length);
            Assert.Equal(1, head.Materializations);
        }
        finally { Directory.Delete(dir, true); }
    }

    public static TheoryData<string, bool, int, int, int> Products => new()
    {
        { "bf16", true, 1, 70, 37 }, { "bf16", true, 5, 70, 37 }, { "bf16", false, 1, 70, 37 }, { "bf16", false, 6, 33, 300 },
        { "f16", true, 1, 48, 130 }, { "f16", false, 4, 48, 130 }, { "f32", true, 1, 70, 37 }, { "f32", false, 5, 70, 37 },
    };

    /// <summary>Y = A · B for B in place (stored <paramref name="dtype"/>; <paramref name="transposed"/>: stored [N, K]),
    /// against the product in double of the values B holds.</summary>
    [Theory, MemberData(nameof(Products))]
    public void MatMul_in_place_is_the_product_of_the_stored_values(string dtype, bool transposed, int rows, int k, int n)
    {
        var dt = DTypes.Parse(dtype);
        var rng = new Random(rows * 1000 + k);
        long[] stored = transposed ? [n, k] : [k, n];
        var w = Tensor.Zeros(dt, stored);
        for (long i = 0; i < w.Length; i++) w.SetDouble(i, rng.NextDouble() * 2 - 1);
        var a = new float[rows * k];
        for (int i = 0; i < a.Length; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
        string path = Path.Combine(Path.GetTempPath(), $"tapml-inplace-{Guid.NewGuid():N}.safetensors");
        try
        {
            SafetensorsWriter.Write(path, [new("w", w)]);
            using var file = SafetensorsFile.Open(path);
            var view = file.View("w")!;
            var b = new Tensor(DType.Float32, [k, n], transposed ? view.Transpose() : view);
            var y = new float[rows * n];
            InPlaceWeights.MatMul(a, b, y, rows);
            for (int i = 0; i < rows; i++)
                for (int j = 0; j < n; j++)
                {
                    double expect = 0;
                    for (int p = 0; p < k; p++) expect += a[i * k + p] * w.GetDouble(transposed ? (long)j * k + p : (long)p * n + j);
                    Assert.True(Math.Abs(y[i * n + j] - expect) <= 1e-5 * (1 + Math.Abs(expect)), $"y[{i},{j}] = {y[i * n + j]}, expected {expect}");
                }
            Assert.Equal(0, b.Materializations);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Gather_in_place_reads_the_rows_asked_for()
    {
        var w = Tensor.Zeros(DType.BFloat16, 50, 40);
        for (long i = 0; i < w.Length; i++) w.SetDouble(i, i % 97 - 48);
        string path = Path.Combine(Path.GetTempPath(), $"tapml-inplace-{Guid.NewGuid():N}.safetensors");
        try
        {
            SafetensorsWriter.Write(path, [new("w", w)]);
            using var file = SafetensorsFile.Open(path);
            var b = new Tensor(DType.Float32, [50, 40], file.View("w")!);
            var g = InPlaceWeights.Gather(b, [49, 0, 7], [3]);
            Assert.Equal(new long[] { 3, 40 }, g.Shape);
            long[] rows = [49, 0, 7];
            for (int j = 0; j < 3; j++)
                for (int c = 0; c < 40; c++) Assert.Equal(w.GetDouble(rows[j] * 40 + c), g.GetDouble(j * 40 + c));
            Assert.Equal(0, b.Materializations);
            // A view reshaped so that a slice is no longer whole stored rows is left to the general kernel.
            Assert.True(InPlaceWeights.HandlesGather(b, 0));
            Assert.False(InPlaceWeights.HandlesGather(b.Reshape(2000), 0));
            Assert.False(InPlaceWeights.Handles(Tensor.Zeros(DType.Float32, 1, 25), b.Reshape(25, 80)));
        }
        finally { File.Delete(path); }
    }
}
