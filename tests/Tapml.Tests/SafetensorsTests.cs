using System.Text;
using Tapml.Core;
using Tapml.Ir.Safetensors;
using Xunit;

namespace Tapml.Tests;

public class SafetensorsTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tapml-st-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    static Tensor Ramp(DType t, params long[] shape)
    {
        var x = Tensor.Zeros(t, shape);
        for (long i = 0; i < x.Length; i++) x.SetDouble(i, (i % 13) - 6);
        return x;
    }

    [Fact]
    public void Round_trip_keeps_every_dtype_bit_exact_and_metadata()
    {
        var tensors = new Dictionary<string, Tensor>
        {
            ["a.f32"] = Ramp(DType.Float32, 3, 4), ["b.f16"] = Ramp(DType.Float16, 5), ["c.bf16"] = Ramp(DType.BFloat16, 2, 2),
            ["d.i64"] = Ramp(DType.Int64, 7), ["e.u8"] = Ramp(DType.UInt8, 3), ["f.bool"] = Ramp(DType.Bool, 4), ["g.empty"] = Tensor.Zeros(DType.Float32, 0, 3),
        };
        string p = Path.Combine(_dir, "m.safetensors");
        SafetensorsWriter.Write(p, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        Assert.Equal(0, (new FileInfo(p).Length - 8 - BitConverter.ToInt64(File.ReadAllBytes(p), 0) - tensors.Values.Sum(t => t.Bytes().Length)));
        using var f = SafetensorsFile.Open(p);
        Assert.Equal("pt", f.Metadata["format"]);
        foreach (var (name, t) in tensors)
        {
            var back = f.Read(name);
            Assert.Equal(t.DType, back.DType);
            Assert.Equal(t.Shape, back.Shape);
            Assert.True(t.Bytes().SequenceEqual(back.Bytes()), name);
        }
    }

    string WriteRaw(string name, string header, int dataBytes)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + h.Length + dataBytes];
        BitConverter.GetBytes((ulong)h.Length).CopyTo(bytes, 0);
        h.CopyTo(bytes, 8);
        string p = Path.Combine(_dir, name);
        File.WriteAllBytes(p, bytes);
        return p;
    }

    [Theory]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,12]}}", 16, "'w'", "needs 16 bytes")]
    [InlineData("{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, "'w'", "past")]
    [InlineData("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, "overlap", "'b'")]
    [InlineData("{\"w\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,1]}}", 1, "'w'", "Q4")]
    [InlineData("{\"w\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "'w'", "dtype")]
    [InlineData("[1,2,3]", 0, "JSON object", "")]
    [InlineData("{not json", 0, "not valid JSON", "")]
    public void Corrupt_headers_are_clear_errors(string header, int dataBytes, string mention1, string mention2)
    {
        string p = WriteRaw("bad.safetensors", header, dataBytes);
        var e = Assert.ThrowsAny<TapmlException>(() => SafetensorsFile.Open(p));
        Assert.Contains("bad.safetensors", e.Message);
        Assert.Contains(mention1, e.Message);
        Assert.Contains(mention2, e.Message);
    }

    [Fact]
    public void Truncated_file_and_huge_header_length_are_clear_errors()
    {
        string p = Path.Combine(_dir, "t.safetensors");
        SafetensorsWriter.Write(p, new Dictionary<string, Tensor> { ["w"] = Ramp(DType.Float32, 64) });
        var bytes = File.ReadAllBytes(p);
        File.WriteAllBytes(p, bytes[..^10]);
        Assert.Contains("past", Assert.Throws<TapmlException>(() => SafetensorsFile.Open(p)).Message);
        BitConverter.GetBytes(ulong.MaxValue / 2).CopyTo(bytes, 0);
        File.WriteAllBytes(p, bytes);
        Assert.Contains("limit", Assert.Throws<TapmlException>(() => SafetensorsFile.Open(p)).Message);
        File.WriteAllBytes(p, bytes[..5]);
        Assert.Contains("too short", Assert.Throws<TapmlException>(() => SafetensorsFile.Open(p)).Message);
    }

    [Fact]
    public void Sharded_checkpoint_reads_through_the_index()
    {
        SafetensorsWriter.Write(Path.Combine(_dir, "model-00001-of-00002.safetensors"), new Dictionary<string, Tensor> { ["a"] = Ramp(DType.Float32, 4) });
        SafetensorsWriter.Write(Path.Combine(_dir, "model-00002-of-00002.safetensors"), new Dictionary<string, Tensor> { ["b"] = Ramp(DType.BFloat16, 2) });
        File.WriteAllText(Path.Combine(_dir, "model.safetensors.index.json"),
            "{\"metadata\":{\"total_size\":12},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\",\"b\":\"model-00002-of-00002.safetensors\"}}");
        using var ck = new SafetensorsCheckpoint(_dir);
        Assert.Equal(2, ck.Entries.Count);
        Assert.Equal(DType.BFloat16, ck.Read("b").DType);
        Assert.Equal(-6f, ck.Read("a").As<float>()[0]);
        Assert.Contains("'zzz'", Assert.Throws<TapmlException>(() => ck.Read("zzz")).Message);
    }

    [Fact]
    public void Reads_checkpoints_written_by_transformers()
    {
        string root = SharedData.Require("models", "hf-tiny");
        foreach (var dir in Directory.GetDirectories(root))
        {
            using var ck = new SafetensorsCheckpoint(dir);
            Assert.NotEmpty(ck.Entries);
            foreach (var (name, e) in ck.Entries)
            {
                var t = ck.Read(name);
                Assert.Equal(e.Shape, t.Shape);
                Assert.Equal(DType.Float32, t.DType);
            }
        }
    }
}
