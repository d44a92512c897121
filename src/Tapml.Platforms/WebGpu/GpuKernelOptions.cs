using Tapml.Core;
using Tapml.Platforms.WebGpu.Kernels;

namespace Tapml.Platforms.WebGpu;

/// <summary>The kernels' spec options, the same on every device they run on (<c>webgpu?q4-unroll=2</c>,
/// <c>vulkan?attn-groups=1024</c>, <c>opencl?matmul-tile=…</c>); each platform parses its device's own options and
/// hands the rest here before it opens a device, so a bad option is one line without touching a GPU.</summary>
public sealed class GpuKernelOptions
{
    /// <summary>See <see cref="WebGpuPlatform.MatMulTile"/>.</summary>
    public MatMulTiled.Tile? MatMulTile { get; set; }
    public MatMulTiled.TileLadder MatMulLadder { get; set; } = MatMulTiled.TileLadder.V2;
    public SkinnyTuning Skinny { get; set; } = SkinnyTuning.Rule;
    public MatVecTuning MatVec { get; set; } = MatVecTuning.Rule;
    public bool KvInPlace { get; private set; } = true;
    /// <summary>Where a decode step's KV append runs: in the epilogue of the q/k/v projection kernel (<c>kv-append=projections</c>,
    /// the rule: <c>projections_kv</c> regions, one dispatch a layer fewer; on an H100 4-bit decode of the 8B shape 1942.7
    /// and 1943.4 tokens/s against 1837.9 and 1864.2 apart, f32 680.1 against 667.1, docs/benchmarks.md), as a dispatch of
    /// its own (<c>apart</c>) or inside the attention kernel (<c>joint</c>: graphs fused without the fourth pass,
    /// <c>Fusion.Fuse(…, kvInProjections: false)</c>; 5 % slower than apart on an H100, likely because the attention then
    /// binds the caches read-write).</summary>
    public string KvAppend { get; private set; } = "projections";
    public bool KvJoint => KvAppend == "joint";
    /// <summary>Host inputs (<see cref="IHostInputs"/>) start host-run nodes (<c>host-inputs=on</c>, the default) or are
    /// plain feeds (<c>off</c>: a decode step's rotary tables run their kernel).</summary>
    public bool HostInputs { get; private set; } = true;
    /// <summary>A decode row's attention kernel also reads the weights of the product after it into the GPU's cache, with
    /// workgroups of its own while its few rows run (<c>prefetch=on</c>; weights up to 24 MB: a 4-bit o_proj).</summary>
    public bool Prefetch { get; private set; }
    public bool HalfProjectionsFused { get; private set; } = true;
    public int AttentionTargetGroups { get; private set; } = 256;
    public int AttentionTiledFrom { get; private set; } = 32;
    public int AttentionTileLayout { get; private set; } = 2;
    /// <summary>Decode-row attention with a key's dims across subgroup lanes (<c>attn-decode=lanes</c>; null: the rule,
    /// lanes where the device has subgroup shuffles) or a thread a key (<c>threads</c>).</summary>
    public bool? AttentionLanes { get; private set; }

    public static readonly string Help = "kv=inplace|copy, kv-append=apart|projections|joint, host-inputs=on|off, prefetch=on|off, attn-groups=N (at least 1), attn-tiled=ROWS (0: never), attn-tile=v2|v1, attn-decode=lanes|threads, f16-proj=fused|split, " +
        $"matmul-tile=BMxBNxBK/TMxTN or legacy, matmul-ladder=v2|v1, matmul-groups=N (1 to 65536), {MatVecTuning.Help}, {SkinnyTuning.Help}";

    /// <summary>The options of <paramref name="options"/> (what is left of the spec after the device's own); an
    /// unknown one throws naming the spec, the option and all a <c>kind</c> takes (<paramref name="deviceOptions"/> first).</summary>
    public static GpuKernelOptions Parse(string spec, IEnumerable<(string Key, string Value)> options, string deviceOptions)
    {
        var o = new GpuKernelOptions();
        int minGroups = 0;
        foreach (var (k, v) in options)
            if (!o.Apply(spec, k, v, ref minGroups))
                throw new TapmlException($"platform '{spec}': unknown or bad option '{k}={v}' ({spec.Split([':', '?'], 2)[0]} takes {deviceOptions}, {Help})");
        if (minGroups > 0) o.MatMulLadder = o.MatMulLadder with { Name = $"{o.MatMulLadder.Name}, {minGroups} groups", MinGroups = minGroups };
        return o;
    }

    bool Apply(string spec, string k, string v, ref int minGroups)
    {
        if (k == "matmul-tile" && MatMulTiled.Tile.Parse(v) is { } tile) { MatMulTile = tile; return true; }
        if (k == "kv" && v is "inplace" or "copy") { KvInPlace = v == "inplace"; return true; }
        if (k == "kv-append" && v is "projections" or "joint" or "apart") { KvAppend = v; return true; }
        if (k == "host-inputs" && v is "on" or "off") { HostInputs = v == "on"; return true; }
        if (k == "prefetch" && v is "on" or "off") { Prefetch = v == "on"; return true; }
        if (k == "attn-groups" && int.TryParse(v, out int groups) && groups >= 1) { AttentionTargetGroups = groups; return true; }
        if (k == "attn-tiled" && int.TryParse(v, out int from) && from >= 0) { AttentionTiledFrom = from; return true; }
        if (k == "f16-proj" && v is "fused" or "split") { HalfProjectionsFused = v == "fused"; return true; }
        if (k == "attn-decode" && v is "lanes" or "threads") { AttentionLanes = v == "lanes"; return true; }
        if (k == "attn-tile" && v is "v1" or "v2") { AttentionTileLayout = v == "v1" ? 1 : 2; return true; }
        if (k == "matmul-ladder" && MatMulTiled.TileLadder.Parse(v) is { } ladder) { MatMulLadder = ladder; return true; }
        if (k == "matmul-groups" && int.TryParse(v, out minGroups) && minGroups is >= 1 and <= 65536) return true;
        if (MatVec.With(spec, k, v) is { } tuned) { MatVec = tuned; return true; }
        if (Skinny.With(spec, k, v) is { } skinny) { Skinny = skinny; return true; }
        return false;
    }
}
