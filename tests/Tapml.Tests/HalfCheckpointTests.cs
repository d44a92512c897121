using Tapml.Core;
using Tapml.Ir.Safetensors;
using Tapml.Models;
using Tapml.Platforms.Cpu;
using Tapml.Platforms.Execution;
using Xunit;

namespace Tapml.Tests;

/// <summary>Checkpoints stored in bf16 and f16 load exactly: the builders upcast each weight to f32 without changing
/// its value, so a bf16 (f16) checkpoint gives bit for bit the logits of an f32 checkpoint holding the same rounded
/// values. The weights are those of the Hugging Face–written tiny checkpoints in ../shared.</summary>
public class HalfCheckpointTests
{
    public static TheoryData<string, string> Rows => new() { { "llama", "bf16" }, { "llama", "f16" }, { "gemma", "bf16" }, { "gpt2", "bf16" }, { "phi3", "f16" } };

    [Theory]
    [MemberData(nameof(Rows))]
    public void Half_weights_upcast_exactly(string arch, string dtype)
    {
        string src = SharedData.Require("models", "hf-tiny", arch);
        string root = Directory.CreateTempSubdirectory("tapml-half-").FullName;
        try
        {
            string half = Path.Combine(root, "half"), full = Path.Combine(root, "f32");
            var rounded = HalfWeightsTests.WriteHalfCopy(src, half, dtype == "bf16" ? DType.BFloat16 : DType.Float16);
            using (var written = SafetensorsFile.Open(Path.Combine(half, "model.safetensors")))
                Assert.Contains(written.Entries.Values, e => e.DType != DType.Float32);
            HalfWeightsTests.CopyConfig(src, full);
            SafetensorsWriter.Write(Path.Combine(full, "model.safetensors"), rounded);
            long[] ids = [1, 17, 305, 42];
            Tensor Logits(string dir) => Generation.Greedy(new Executor(new CpuPlatform()), HfModels.Load(dir), ids, 1).PrefillLogits;
            var a = Logits(half);
            var b = Logits(full);
            Assert.Equal(DType.Float32, a.DType);
            Assert.True(a.Bytes().SequenceEqual(b.Bytes()), "logits of the half checkpoint differ from the f32 checkpoint of the same values");
            // and rounding really changed the weights (the test would be empty otherwise)
            using var orig = SafetensorsFile.Open(Path.Combine(src, "model.safetensors"));
            string big = orig.Entries.Values.Where(e => e.DType == DType.Float32).MaxBy(e => e.ByteLength)!.Name;
            Assert.False(orig.Read(big).Bytes().SequenceEqual(rounded[big].Bytes()));
        }
        finally { Directory.Delete(root, true); }
    }
}
