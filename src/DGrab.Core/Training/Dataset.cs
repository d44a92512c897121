using System.IO.Compression;

namespace DGrab.Training;

/// <summary>Images as rows of floats in [0,1] (row-major Count×Features) and their labels.</summary>
public sealed class Dataset(float[] features, byte[] labels, int featureCount, int classes)
{
    public float[] Features { get; } = features;
    public byte[] Labels { get; } = labels;
    public int FeatureCount { get; } = featureCount;
    public int Classes { get; } = classes;
    public int Count => Labels.Length;
    public ReadOnlySpan<float> Row(int i) => Features.AsSpan(i * FeatureCount, FeatureCount);

    /// <summary>The first <paramref name="count"/> examples (all when count ≤ 0 or ≥ Count).</summary>
    public Dataset Take(int count) => count <= 0 || count >= Count ? this
        : new(Features[..(count * FeatureCount)], Labels[..count], FeatureCount, Classes);
}

/// <summary>Fashion-MNIST (60k train / 10k test, 28×28, 10 classes) from the IDX files Debian's
/// dataset-fashion-mnist installs (gzipped or not).</summary>
public static class FashionMnist
{
    public const string DefaultFolder = "/usr/share/datasets/fashion-mnist";

    public static (Dataset Train, Dataset Test) Load(string folder)
    {
        var train = Read(folder, "train");
        var test = Read(folder, "t10k");
        return (train, test);
    }

    static Dataset Read(string folder, string prefix)
    {
        byte[] images = ReadIdx(folder, $"{prefix}-images-idx3-ubyte", 0x803, out var dims);
        byte[] labels = ReadIdx(folder, $"{prefix}-labels-idx1-ubyte", 0x801, out var ldims);
        int count = dims[0], features = dims[1] * dims[2];
        if (ldims[0] != count) throw new DGrabException($"{folder}: {prefix} has {count} images but {ldims[0]} labels");
        var x = new float[(long)count * features];
        for (long i = 0; i < x.LongLength; i++) x[i] = images[i] / 255f;
        foreach (var l in labels)
            if (l > 9) throw new DGrabException($"{folder}: {prefix} label {l} is not a Fashion-MNIST class (0-9)");
        return new Dataset(x, labels, features, 10);
    }

    static byte[] ReadIdx(string folder, string name, int magic, out int[] dims)
    {
        string path = Path.Combine(folder, name + ".gz");
        bool gz = File.Exists(path);
        if (!gz) path = Path.Combine(folder, name);
        if (!File.Exists(path))
            throw new DGrabException($"fashion-mnist not found: no {name}(.gz) in {folder}; install Debian's dataset-fashion-mnist (bash scripts/setup.sh) or pass --data FOLDER");
        using var file = File.OpenRead(path);
        using Stream s = gz ? new GZipStream(file, CompressionMode.Decompress) : file;
        using var all = new MemoryStream();
        s.CopyTo(all);
        var b = all.ToArray();
        int Be(int at) => (b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3];
        if (b.Length < 8 || Be(0) != magic) throw new DGrabException($"{path}: not an IDX file of magic 0x{magic:X} (corrupt download?)");
        int rank = magic & 0xFF;
        dims = new int[rank];
        long size = 1;
        for (int i = 0; i < rank; i++) { dims[i] = Be(4 + 4 * i); size *= dims[i]; }
        int header = 4 + 4 * rank;
        if (b.Length - header != size) throw new DGrabException($"{path}: {b.Length - header} data bytes, header says {size}");
        return b[header..].ToArray();
    }
}
