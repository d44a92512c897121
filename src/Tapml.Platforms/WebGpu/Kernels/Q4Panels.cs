using System.Text;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>The panel layout of a 4-bit weight on the GPU (<c>webgpu?q4-layout=panels</c>): each weight row's packed
/// words are taken 128 at a time (a panel: 1024 values of K), and lane l of a panel's 16-byte unit holds the panel's
/// words l, 32 + l, 64 + l and 96 + l (stored word 4l + c is word 32c + l). A warp of decode threads, each loading one
/// unit (16 bytes, consecutive across lanes), then reads x 32 bytes apart across lanes (8 values a word), where the
/// row layout's 16-byte units put a row's threads 128 bytes apart in x. A unit's four words lie in four blocks; the
/// block parameters (scales, zero-point bytes) are permuted the same way, so a unit's four scales are one aligned vec4
/// and its four zero points one u32: with WB words a block, block c·(32/WB) + g of a panel (the block of word 32c + l,
/// g = l / WB) is stored at 4g + c. Every kernel that reads such a weight (the decode unit code, the tiled prefill
/// kernel, the fused projections) reads through this mapping; the host tensors keep ONNX's order.</summary>
internal static class Q4Panels
{
    /// <summary>Packed words a panel holds (a unit of lanes × 4 words).</summary>
    public const int Words = 128;

    /// <summary>Whether a weight with rows of <paramref name="rowWords"/> words and blocks of <paramref name="block"/>
    /// values can take the layout: whole panels a row, 2 to 16 words a block, zero points absent or bytes, float A.</summary>
    public static bool Fits(long rowWords, int block, MatMulNBits.ZeroKind zeros, bool int8) =>
        rowWords % Words == 0 && block is 16 or 32 or 64 or 128 && zeros != MatMulNBits.ZeroKind.Floats && !int8;

    /// <summary>Stored position of word <paramref name="w"/> (counted from a row start that is a multiple of
    /// <see cref="Words"/>).</summary>
    public static long WordAt(long w) => (w & ~127L) | ((w & 31) << 2) | ((w >> 5) & 3);

    /// <summary>Stored position of block <paramref name="b"/> (blocks of <paramref name="wordsPerBlock"/> words; counted
    /// from a row start).</summary>
    public static long BlockAt(long b, int wordsPerBlock)
    {
        int perPanel = Words / wordsPerBlock, groups = 32 / wordsPerBlock;
        long inPanel = b % perPanel;
        return b - inPanel + 4 * (inPanel % groups) + inPanel / groups;
    }

    /// <summary><paramref name="values"/> (one per word, or one per block with <paramref name="wordsPerBlock"/> &gt; 0)
    /// in their stored order.</summary>
    public static T[] Permute<T>(ReadOnlySpan<T> values, int wordsPerBlock = 0)
    {
        var r = new T[values.Length];
        for (long i = 0; i < values.Length; i++) r[wordsPerBlock == 0 ? WordAt(i) : BlockAt(i, wordsPerBlock)] = values[(int)i];
        return r;
    }

    /// <summary>WGSL functions mapping a word index <c>pw_(w)</c> and a block index <c>pb_(b)</c> to their stored
    /// positions (for kernels that read single words and blocks: the tiled prefill kernel).</summary>
    public static string Functions(int wordsPerBlock) =>
        "fn pw_(w: u32) -> u32 { return (w & ~127u) | ((w & 31u) << 2u) | ((w >> 5u) & 3u); }\n" +
        $"fn pb_(b: u32) -> u32 {{ let r = b % {Words / wordsPerBlock}u; return b - r + 4u * (r % {32 / wordsPerBlock}u) + r / {32 / wordsPerBlock}u; }}";

    /// <summary>Code at the top of a unit: <c>pk</c>, the K index of its first word's first value (panel u / 32, lane
    /// u mod 32); its word c's values start at pk + 256·c.</summary>
    public const string UnitHead = "    let pk = (u >> 5u) * 1024u + (u & 31u) * 8u;\n";

    /// <summary>K index of x's vec4 j (0–7) of a unit: word j / 2, half j mod 2.</summary>
    public static string XAt(int j) => $"pk + {256 * (j / 2) + 4 * (j % 2)}u";

    /// <summary>WGSL adding weight row <paramref name="row"/>'s unit u (one vec4 of <paramref name="weights"/> at
    /// <c>row·U + u</c>) times x's unit (<c>xq{m}_{j}</c>, read at <see cref="XAt"/> and scaled by
    /// <see cref="MatMulNBits.XScale"/>) into <paramref name="acc"/>(m): its four scales one load (<c>scv_b</c>, vec4
    /// of f32, where <paramref name="vecScales"/>; else four <c>sc</c> reads), its zero points one u32, each word's
    /// nibbles made floats as <see cref="MatMulNBits.UnitCode"/> does and its sum times its own block's scale.</summary>
    public static string UnitCode(string weights, string row, Func<int, string> acc, int block, MatMulNBits.ZeroKind zeros, int rows, bool vecScales)
    {
        int wb = block / 8;
        var sb = new StringBuilder($"    {{\n      let wq = {weights}[{row} * U + u];\n");
        sb.Append($"      let pb = {row} * KB + (u >> 5u) * {Words / wb}u + ((u & 31u) / {wb}u) * 4u;\n");
        sb.Append(vecScales ? "      let sv = scv_b[pb >> 2u];\n" : "      let sv = vec4<f32>(sc(pb), sc(pb + 1u), sc(pb + 2u), sc(pb + 3u));\n");
        if (zeros == MatMulNBits.ZeroKind.Bytes) sb.Append("      let zw = zp(pb >> 2u);\n");
        var terms = Enumerable.Range(0, rows).Select(_ => new List<string>()).ToArray();
        for (int c = 0; c < 4; c++)
        {
            bool zp = zeros == MatMulNBits.ZeroKind.Bytes;
            if (zp) sb.Append($"      let c{c} = vec4<f32>({MatMulNBits.ZeroMagic($"zw >> {8 * c}u")}) * P16 + CK;\n");
            sb.Append(MatMulNBits.NibbleFloats("      ", c, $"wq.{"xyzw"[c]}", zp ? $"c{c}" : "C8"));
            for (int m = 0; m < rows; m++) terms[m].Add($"sv.{"xyzw"[c]} * (dot(qa{c}, xq{m}_{2 * c}) + dot(qb{c}, xq{m}_{2 * c + 1}))");
        }
        for (int m = 0; m < rows; m++) sb.Append($"      {acc(m)} += {MatMulNBits.Tree(terms[m])};\n");
        return sb.Append("    }\n").ToString();
    }
}
