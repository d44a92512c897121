using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>A panel layout of a 4-bit weight on the GPU: each weight row's packed words are taken 128 at a time (a
/// panel: 1024 values of K), and decode lane l of a panel reads the panel's 16-byte unit l (stored words 4l to 4l + 3),
/// so a warp's weight loads are contiguous. Two ways to fill a unit:
/// <list type="bullet">
/// <item><see cref="Words"/> (<c>q4-layout=panels</c>): lane l's word c is ONNX's word 32c + l (8 consecutive values),
/// so a warp reads x 32 bytes apart across lanes: each 16-byte load of x touches twice the cache lines it uses.</item>
/// <item><see cref="Halves"/> (<c>q4-layout=halves</c>): lane l's word c holds the four values at 256c + 4l in its low
/// half and the four at 256c + 128 + 4l in its high half (each half one of ONNX's, its nibbles in order), so each of a
/// warp's x loads reads 512 consecutive bytes. A word then spans two blocks: a unit's eight block parameters are
/// two vec4 loads of scales and two u32 of zero-point bytes.</item>
/// </list>
/// The block parameters (scales, zero-point bytes) are permuted so that a unit's are adjacent and aligned. Every kernel
/// that reads such a weight (the decode unit code, the tiled prefill kernel, the fused projections) reads through the
/// layout's mapping; the host tensors keep ONNX's order.</summary>
internal sealed class Q4Panels
{
    public static readonly Q4Panels Words = new(false, "panels", "_p");
    public static readonly Q4Panels Halves = new(true, "halves", "_h");

    Q4Panels(bool halves, string name, string suffix) { SplitWords = halves; Name = name; Suffix = suffix; }

    /// <summary>A stored word holds two halves 128 values apart (<see cref="Halves"/>).</summary>
    public bool SplitWords { get; }
    /// <summary>The <c>q4-layout</c> value.</summary>
    public string Name { get; }
    /// <summary>Kernel-name suffix.</summary>
    public string Suffix { get; }
    /// <summary>The second part of an upload's cache key (<see cref="WebGpuPlatform.Concatenated"/>): a layout's upload of
    /// a weight is another buffer than its row-order one.</summary>
    public Tensor Mark { get; } = new(DType.UInt8, [1], new byte[1]);

    /// <summary>The last part of a packed scales-and-zero-points upload's cache key (<see cref="MatMulNBits.PackParams"/>).</summary>
    public static Tensor PackedMark { get; } = new(DType.UInt8, [1], new byte[1]);

    public override string ToString() => Name;

    /// <summary>Packed words a panel holds (a unit of lanes × 4 words).</summary>
    public const int PanelWords = 128;

    /// <summary>Whether a weight with rows of <paramref name="rowWords"/> words and blocks of <paramref name="block"/>
    /// values can take a panel layout: whole panels a row, 2 to 16 words a block, zero points absent or bytes, float A.</summary>
    public static bool Fits(long rowWords, int block, MatMulNBits.ZeroKind zeros, bool int8) =>
        rowWords % PanelWords == 0 && block is 16 or 32 or 64 or 128 && zeros != MatMulNBits.ZeroKind.Floats && !int8;

    /// <summary><see cref="Words"/>: stored position of word <paramref name="w"/> (counted from a row start, a multiple of
    /// <see cref="PanelWords"/>).</summary>
    static long WordAt(long w) => (w & ~127L) | ((w & 31) << 2) | ((w >> 5) & 3);

    /// <summary><see cref="Halves"/>: stored position of half-word <paramref name="q"/> (four values 4q to 4q + 3 of a row):
    /// in a panel's 256 halves, half 64c + 32h + l goes to half h of word 4l + c.</summary>
    static long HalfAt(long q) => (q & ~255L) | (((q & 31) << 2 | (q >> 6) & 3) << 1) | ((q >> 5) & 1);

    /// <summary>Stored position of block <paramref name="b"/> (blocks of <paramref name="wordsPerBlock"/> words, counted
    /// from a row start). <see cref="Words"/>: block c·(32/WB) + g of a panel (the block of word 32c + l, g = l / WB) at
    /// 4g + c. <see cref="Halves"/>: block c·(32/WB) + h·(16/WB) + g (lane l's half h of word c, g = l / (2·WB)) at
    /// 8g + 2c + h.</summary>
    long BlockAt(long b, int wordsPerBlock)
    {
        int perPanel = PanelWords / wordsPerBlock, perWord = 32 / wordsPerBlock;
        long r = b % perPanel;
        if (!SplitWords) return b - r + 4 * (r % perWord) + r / perWord;
        long c = r / perWord, h = r % perWord / (perWord / 2), g = r % (perWord / 2);
        return b - r + 8 * g + 2 * c + h;
    }

    /// <summary>A weight's packed words (rows of whole panels) in their stored order.</summary>
    public uint[] PermuteWords(ReadOnlySpan<uint> words)
    {
        var r = new uint[words.Length];
        if (!SplitWords)
        {
            for (long i = 0; i < words.Length; i++) r[WordAt(i)] = words[(int)i];
            return r;
        }
        var halves = System.Runtime.InteropServices.MemoryMarshal.Cast<uint, ushort>(words);
        var to = System.Runtime.InteropServices.MemoryMarshal.Cast<uint, ushort>(r.AsSpan());
        for (long q = 0; q < halves.Length; q++) to[(int)HalfAt(q)] = halves[(int)q];
        return r;
    }

    /// <summary><paramref name="values"/>, one a block of <paramref name="wordsPerBlock"/> words, in their stored order.</summary>
    public T[] PermuteBlocks<T>(ReadOnlySpan<T> values, int wordsPerBlock)
    {
        var r = new T[values.Length];
        for (long i = 0; i < values.Length; i++) r[BlockAt(i, wordsPerBlock)] = values[(int)i];
        return r;
    }

    /// <summary>WGSL functions for kernels that read single words and blocks (the tiled prefill kernel): <c>pword_(w)</c>,
    /// ONNX's word w (read through <c>bw</c>), and <c>pb_(b)</c>, block b's stored position.</summary>
    public string Functions(int wordsPerBlock)
    {
        int perPanel = PanelWords / wordsPerBlock, perWord = 32 / wordsPerBlock;
        if (!SplitWords)
            return "fn pword_(w: u32) -> u32 { return bw((w & ~127u) | ((w & 31u) << 2u) | ((w >> 5u) & 3u)); }\n" +
                   $"fn pb_(b: u32) -> u32 {{ let r = b % {perPanel}u; return b - r + 4u * (r % {perWord}u) + r / {perWord}u; }}";
        // ONNX's word r of a panel: its halves are halves 2r and 2r + 1, lanes l and l + 1 (l = 2r mod 32) of word r / 32.
        return """
fn pword_(w: u32) -> u32 {
  let p = w & ~127u; let r = w & 127u;
  let c = r >> 5u; let sh = ((r >> 4u) & 1u) * 16u; let l = (2u * r) & 31u;
  return ((bw(p + 4u * l + c) >> sh) & 65535u) | (((bw(p + 4u * l + 4u + c) >> sh) & 65535u) << 16u);
}

""" + $"fn pb_(b: u32) -> u32 {{ let r = b % {perPanel}u; return b - r + 8u * (r % {perWord / 2}u) + 2u * (r / {perWord}u) + (r % {perWord}u) / {perWord / 2}u; }}";
    }

    /// <summary>The element of <c>scv_b</c>, a unit's scales (4 for <see cref="Words"/>, 8 for <see cref="Halves"/>;
    /// adjacent and aligned): vec4s of f32 scales, their f16 values packed two a u32, or (u32 storage,
    /// <see cref="MatMulNBits.ZeroKind.Packed"/>, <see cref="Words"/> only) a u32 a block, scale and zero point.</summary>
    public string ScaleElement(GpuStorage scales) => scales switch
    {
        GpuStorage.F32 => "vec4<f32>",
        GpuStorage.F16x2 => SplitWords ? "vec4<u32>" : "vec2<u32>",
        GpuStorage.U32 when !SplitWords => "vec4<u32>",
        _ => throw new InvalidOperationException($"q4 panels: scales stored as {scales}"),
    };

    /// <summary>Code loading a unit's scales at block <c>pb</c> into <c>sv0</c> (and <c>sv1</c> for
    /// <see cref="Halves"/>), vec4s in block order: one load (two of f32 for halves), f16 values widened exactly.</summary>
    public string ScaleLoads(GpuStorage scales)
    {
        if (scales == GpuStorage.U32)
            return $"      let pq = scv_b[pb >> 2u];\n      let sv0 = vec4<f32>({string.Join(", ", "xyzw".Select(c => $"unpack2x16float(pq.{c}).x"))});\n";
        if (scales == GpuStorage.F32)
            return SplitWords ? "      let sv0 = scv_b[pb >> 2u];\n      let sv1 = scv_b[(pb >> 2u) + 1u];\n" : "      let sv0 = scv_b[pb >> 2u];\n";
        _ = ScaleElement(scales);
        return SplitWords
            ? "      let sh = scv_b[pb >> 3u];\n      let sv0 = vec4<f32>(unpack2x16float(sh.x), unpack2x16float(sh.y));\n      let sv1 = vec4<f32>(unpack2x16float(sh.z), unpack2x16float(sh.w));\n"
            : "      let sh = scv_b[pb >> 2u];\n      let sv0 = vec4<f32>(unpack2x16float(sh.x), unpack2x16float(sh.y));\n";
    }

    /// <summary>Code at the top of a unit: <c>pk</c>, the K index of x's first value the unit reads (panel u / 32, lane
    /// u mod 32).</summary>
    public string UnitHead => $"    let pk = (u >> 5u) * 1024u + (u & 31u) * {(SplitWords ? 4 : 8)}u;\n";

    /// <summary>K index of x's vec4 j (0–7) of a unit: word j / 2, half j mod 2.</summary>
    public string XAt(int j) => $"pk + {256 * (j / 2) + (SplitWords ? 128 : 4) * (j % 2)}u";

    /// <summary>With zero points taken out of the values (<c>q4-zero=sum</c>): code once a unit for x row m, the sums
    /// of x's values (γ applied, <see cref="MatMulNBits.XScale"/> undone: a dot with P16) over each block part a lane's
    /// unit covers (<c>sx{m}_{p}</c>: each half-word for <see cref="Halves"/>, each word for <see cref="Words"/>), which
    /// every weight row of the unit shares.</summary>
    public string BlockSums(int m) => BlockSums(m, "P16");

    /// <summary><see cref="BlockSums(int)"/> with <paramref name="undo"/> in place of P16 (the vec4 a dot with scaled x
    /// takes to its sum, or to a multiple of it).</summary>
    public string BlockSums(int m, string undo) => SplitWords
        ? string.Concat(Enumerable.Range(0, 8).Select(j => $"    let sx{m}_{j} = dot(xq{m}_{j}, {undo});\n"))
        : string.Concat(Enumerable.Range(0, 4).Select(c => $"    let sx{m}_{c} = dot(xq{m}_{2 * c}, {undo}) + dot(xq{m}_{2 * c + 1}, {undo});\n"));

    /// <summary>Code for <c>pb</c>, the stored position of weight row <paramref name="row"/>'s first block parameter of
    /// unit u (blocks of <paramref name="wordsPerBlock"/> words), where the unit's parameters start.</summary>
    string UnitBlock(string row, int wordsPerBlock) => SplitWords
        ? $"      let pb = {row} * KB + (u >> 5u) * {PanelWords / wordsPerBlock}u + ((u & 31u) / {2 * wordsPerBlock}u) * 8u;\n"
        : $"      let pb = {row} * KB + (u >> 5u) * {PanelWords / wordsPerBlock}u + ((u & 31u) / {wordsPerBlock}u) * 4u;\n";

    /// <summary>The rest of <see cref="UnitCode"/> where nibbles are f16 subnormals (<see cref="MatMulNBits.HalfNibbles"/>):
    /// each part of the unit that lies in one block (a word, or a half-word for <see cref="Halves"/>) adds Σn·x less its
    /// zero point times its block sum (<see cref="BlockSums(int, string)"/> with <c>PH</c>: Σx·2^24; <paramref name="zero"/>(i),
    /// block i's zero point as z·2^-24, null: 8, <c>Z8H</c>), times its scale.</summary>
    string HalfUnit(StringBuilder sb, Func<int, string> acc, int rows, int n, Func<int, string>? zero, Func<int, string> scale)
    {
        var terms = Enumerable.Range(0, rows).Select(_ => new List<string>()).ToArray();
        if (zero is not null) for (int i = 0; i < n; i++) sb.Append($"      let zh{i} = {zero(i)};\n");
        string Zh(int i) => zero is null ? "Z8H" : $"zh{i}";
        for (int c = 0; c < 4; c++)
        {
            sb.Append(MatMulNBits.HalfNibbles("      ", c, $"wq.{"xyzw"[c]}"));
            for (int m = 0; m < rows; m++)
            {
                if (SplitWords)
                {
                    terms[m].Add($"{scale(2 * c)} * (dot(qa{c}, xq{m}_{2 * c}) - {Zh(2 * c)} * sx{m}_{2 * c})");
                    terms[m].Add($"{scale(2 * c + 1)} * (dot(qb{c}, xq{m}_{2 * c + 1}) - {Zh(2 * c + 1)} * sx{m}_{2 * c + 1})");
                }
                else terms[m].Add($"{scale(c)} * ((dot(qa{c}, xq{m}_{2 * c}) + dot(qb{c}, xq{m}_{2 * c + 1})) - {Zh(c)} * sx{m}_{c})");
            }
        }
        for (int m = 0; m < rows; m++) sb.Append($"      {acc(m)} += {MatMulNBits.Tree(terms[m])};\n");
        return sb.Append("    }\n").ToString();
    }

    /// <summary><c>TAPML_DIAG_Q4</c>: a measuring aid whose outputs are wrong by design (docs/benchmarks.md): <c>words</c>
    /// reads a unit's packed words only, <c>params</c> its words, scales and zero points; either folds what it read into
    /// the sum with a few integer operations instead of the nibble arithmetic, so a decode step's time without that
    /// arithmetic (and, for <c>words</c>, without the block parameters) can be set against the real kernels'.</summary>
    static readonly string? Diagnostic = Environment.GetEnvironmentVariable("TAPML_DIAG_Q4") is var d && d is "words" or "params" ? d : null;

    string DiagnosticUnit(StringBuilder sb, string diag, string weights, string row, Func<int, string> acc, int wb, MatMulNBits.ZeroKind zeros, int rows, GpuStorage scales)
    {
        sb.Append("      var dw = wq.x ^ wq.y ^ wq.z ^ wq.w;\n");
        // words: the block parameters' bindings stay in the kernel's layout (named, never loaded).
        if (diag == "words") sb.Append($"      dw ^= (arrayLength(&scv_b){(zeros == MatMulNBits.ZeroKind.Bytes ? " ^ arrayLength(&zp_b)" : "")}) & u;\n");
        if (diag == "params")
        {
            sb.Append(UnitBlock(row, wb));
            sb.Append(ScaleLoads(scales));
            sb.Append("      dw ^= bitcast<u32>(sv0.x + sv0.y + sv0.z + sv0.w);\n");
            if (zeros == MatMulNBits.ZeroKind.Bytes) sb.Append("      dw ^= zp(pb >> 2u);\n");
        }
        for (int m = 0; m < rows; m++) sb.Append($"      {acc(m)} += f32(dw & 255u);\n");
        return sb.Append("    }\n").ToString();
    }

    /// <summary>WGSL adding weight row <paramref name="row"/>'s unit u (one vec4 of <paramref name="weights"/> at
    /// <c>row·U + u</c>) times x's unit (<c>xq{m}_{j}</c>, read at <see cref="XAt"/> and scaled by
    /// <see cref="MatMulNBits.XScale"/>) into <paramref name="acc"/>(m): its scales in one load (<see cref="ScaleLoads"/>),
    /// its zero points u32 loads, each half-word's nibbles made
    /// floats as <see cref="MatMulNBits.UnitCode"/> does and its sum times its own block's scale. With
    /// <paramref name="zeroSums"/> (byte zero points), the nibbles less 8 only (a constant), and each block's zero
    /// point times x's sum over the block part (<see cref="BlockSums"/>) subtracted once: Σ(q − z)·x as Σq·x − z·Σx,
    /// two operations a block in place of a vec4 of constants.</summary>
    public string UnitCode(string weights, string row, Func<int, string> acc, int block, MatMulNBits.ZeroKind zeros, int rows, GpuStorage scales, bool zeroSums = false, bool half = false)
    {
        int wb = block / 8, n = SplitWords ? 8 : 4;
        var sb = new StringBuilder($"    {{\n      let wq = {weights}[{row} * U + u];\n");
        if (Diagnostic is { } diag) return DiagnosticUnit(sb, diag, weights, row, acc, wb, zeros, rows, scales);
        sb.Append(UnitBlock(row, wb));
        sb.Append(ScaleLoads(scales));
        bool packed = zeros == MatMulNBits.ZeroKind.Packed, zp = zeros == MatMulNBits.ZeroKind.Bytes || packed, sums = zp && zeroSums;
        if (zp && !packed) for (int v = 0; v < n / 4; v++) sb.Append($"      let zw{v} = zp((pb >> 2u) + {v}u);\n");
        // Block parameter i of the unit's n: scale and zero-point constant (MAG + z·P16), the zero point in the low
        // byte of ZeroWord(i).
        string Scale(int i) => $"sv{i / 4}.{"xyzw"[i % 4]}";
        string ZeroWord(int i) => packed ? $"pq.{"xyzw"[i]} >> 16u" : $"zw{i / 4} >> {8 * (i % 4)}u";
        if (half) return HalfUnit(sb, acc, rows, n, zp ? i => MatMulNBits.HalfZero(ZeroWord(i)) : null, Scale);
        string Zero(int i) => $"vec4<f32>({MatMulNBits.ZeroMagic(ZeroWord(i))}) * P16 + CK";
        // The zero point less 8 as a float (the nibbles are made floats less 8: C8).
        string ZeroLess8(int i) => $"({MatMulNBits.ZeroMagic(ZeroWord(i))} - 8388616.0)";
        var terms = Enumerable.Range(0, rows).Select(_ => new List<string>()).ToArray();
        for (int c = 0; c < 4; c++)
        {
            if (!SplitWords)
            {
                if (zp && !sums) sb.Append($"      let c{c} = {Zero(c)};\n");
                if (sums) sb.Append($"      let z{c} = {ZeroLess8(c)};\n");
                sb.Append(MatMulNBits.NibbleFloats("      ", c, $"wq.{"xyzw"[c]}", zp && !sums ? $"c{c}" : "C8"));
                for (int m = 0; m < rows; m++)
                    terms[m].Add($"{Scale(c)} * (dot(qa{c}, xq{m}_{2 * c}) + dot(qb{c}, xq{m}_{2 * c + 1}){(sums ? $" - z{c} * sx{m}_{c}" : "")})");
                continue;
            }
            if (zp && !sums) sb.Append($"      let ca{c} = {Zero(2 * c)};\n      let cb{c} = {Zero(2 * c + 1)};\n");
            if (sums) sb.Append($"      let za{c} = {ZeroLess8(2 * c)};\n      let zb{c} = {ZeroLess8(2 * c + 1)};\n");
            sb.Append(MatMulNBits.NibbleFloats("      ", c, $"wq.{"xyzw"[c]}", zp && !sums ? $"ca{c}" : "C8", zp && !sums ? $"cb{c}" : "C8"));
            for (int m = 0; m < rows; m++)
            {
                terms[m].Add($"{Scale(2 * c)} * (dot(qa{c}, xq{m}_{2 * c}){(sums ? $" - za{c} * sx{m}_{2 * c}" : "")})");
                terms[m].Add($"{Scale(2 * c + 1)} * (dot(qb{c}, xq{m}_{2 * c + 1}){(sums ? $" - zb{c} * sx{m}_{2 * c + 1}" : "")})");
            }
        }
        for (int m = 0; m < rows; m++) sb.Append($"      {acc(m)} += {MatMulNBits.Tree(terms[m])};\n");
        return sb.Append("    }\n").ToString();
    }
}
