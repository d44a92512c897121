using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>How a decode matrix-vector kernel over 4-bit (MatMulNBits) or packed f16 weights lays out its work:
/// <see cref="Threads"/> threads share one weight row, striding it in units of one 16-byte load (4 bytes where a row
/// is not 16-byte aligned); each thread carries <see cref="Rows"/> weight rows, so one load of x serves all of them; a
/// workgroup is <see cref="Workgroup"/> threads (<see cref="RowsPerWorkgroup"/> rows); <see cref="SharedX"/> stages
/// x in workgroup memory, chunk by chunk, instead of each thread reading it from the storage buffer; <see cref="Unroll"/>
/// units are loaded and added a loop iteration (independent loads in flight; 1 = one unit); <see cref="Tree"/>: a row's
/// T partial sums are added pairwise in workgroup memory (log2 T steps, every thread of the row busy) rather than by one
/// thread in a loop (T dependent additions while the rest of the workgroup waits). <see cref="Subgroup"/> &gt; 0: a row's
/// partial sums are first added across lanes with <c>subgroupShuffleXor</c> within groups of min(T, Subgroup) lanes (the
/// device's smallest subgroup), leaving T / that many sums for workgroup memory. <see cref="Split"/> &gt; 1: each row's
/// units are split in that many ranges, one a workgroup (the grid's z), whose partial sums a second kernel adds.</summary>
public readonly record struct MatVecShape(int Threads, int Rows, int Workgroup, bool SharedX, int Unroll = 1, bool Tree = false, int Subgroup = 0, int Split = 1)
{
    /// <summary>Lanes added by shuffles (0: none): the row's threads, at most a subgroup; T a power of two.</summary>
    public int ShuffleLanes => Subgroup >= 2 && Threads > 1 && (Threads & (Threads - 1)) == 0 ? Math.Min(Threads, Subgroup) : 0;
    public int RowsPerWorkgroup => Workgroup / Threads * Rows;
    /// <summary>Partial sums added as a tree: asked for and the threads of a row a power of two.</summary>
    public bool TreeSum => Tree && Threads > 1 && (Threads & (Threads - 1)) == 0;
    public override string ToString() => $"t{Threads} r{Rows} wg{Workgroup}{(SharedX ? " xs" : "")}{(Unroll > 1 ? $" u{Unroll}" : "")}{(ShuffleLanes > 0 ? $" sg{ShuffleLanes}" : TreeSum ? " tree" : "")}{(Split > 1 ? $" k{Split}" : "")}";
}

/// <summary>The decode matrix-vector kernels' knobs, as webgpu platform-spec options (<c>webgpu?q4-threads=16&amp;q4-rows=2</c>):
/// for MatMulNBits <c>q4-threads</c> (threads per weight row), <c>q4-rows</c> (weight rows per thread), <c>q4-wg</c>
/// (threads per workgroup), <c>q4-xs=0|1</c> (x through workgroup memory), <c>q4-unroll</c> (units a loop iteration),
/// <c>q4-reduce=tree|serial</c> (how a row's partial sums are added); the same with <c>f16-</c> for packed f16
/// weights, plus <c>f16-unpack=bits|native</c> (halves widened by integer bit moves and one multiply, or by
/// <c>unpack2x16float</c>). An absent knob takes <see cref="Q4"/>'s / <see cref="F16"/>'s rule.</summary>
public sealed record MatVecTuning
{
    public int Q4Threads { get; init; }
    public int Q4Rows { get; init; }
    public int Q4Workgroup { get; init; }
    public bool? Q4SharedX { get; init; }
    public int Q4Unroll { get; init; }
    public bool? Q4Tree { get; init; }
    /// <summary>A row's partial sums added by subgroup shuffles first (<c>q4-reduce=subgroup</c>: the device must offer
    /// them; <c>tree</c>/<c>serial</c>: not; null: <see cref="Q4SubgroupRule"/> where the device offers them).</summary>
    public bool? Q4Subgroup { get; init; }
    /// <summary>u32 words of packed nibbles a thread loads as one unit (1, 2 or 4; 0: the rule, <see cref="Q4UnitWords"/>).
    /// Smaller units put a row's threads closer together in x (4 words: 128 bytes apart).</summary>
    public int Q4Words { get; init; }
    /// <summary>Each row of a MatMulNBits decode product split in this many ranges of K, one workgroup each, their partial
    /// sums added by a second kernel (<c>q4-split=N</c>; 0: <see cref="Q4SplitRule"/>). The fused projections and x staged in
    /// workgroup memory do not split.</summary>
    public int Q4Split { get; init; }
    /// <summary>A unit's loads of all a thread's weight rows (words, scales, zero points) written before any row's math
    /// (<c>q4-loads=first</c>) rather than each row's loads beside its math (<c>inline</c>, the default).</summary>
    public bool Q4Hoist { get; init; }
    /// <summary>Threads the rule's rows a thread aim to keep in flight (<c>q4-target=N</c>; 0: 65536): fewer rows a
    /// thread for small products where this is larger.</summary>
    public int Q4TargetThreads { get; init; }
    /// <summary>The same for a plain product of one row of x (a decode step's o and down projections; <c>q4-decode-target=N</c>;
    /// 0: <see cref="Q4DecodeTargetRule"/>). The fused projections and prompt rows keep <see cref="Q4TargetThreads"/>.</summary>
    public int Q4DecodeTargetThreads { get; init; }
    /// <summary>Threads the rows rule aims for in a plain one-row product: 131072 (H100, 8B shape, one process each way
    /// profiled: o and down with their residual 23.2 and 23.4 µs a call at two rows a thread against 26.7 at four and
    /// 28.0 at one, while the fused q/k/v projection lost 21.7 → 24.9 µs at the same target; docs/benchmarks.md).</summary>
    public const int Q4DecodeTargetRule = 131072;
    public int F16Threads { get; init; }
    public int F16Rows { get; init; }
    public int F16Workgroup { get; init; }
    public bool? F16SharedX { get; init; }
    public int F16Unroll { get; init; }
    public bool? F16Tree { get; init; }
    public bool? F16Subgroup { get; init; }
    /// <summary>A knob asks for subgroup shuffles.</summary>
    public bool WantsSubgroups => Q4Subgroup == true || F16Subgroup == true;
    /// <summary>Whether the 4-bit kernels' rule reduces with subgroup shuffles where the device offers them (no knob
    /// given): yes (H100, 8B shape, docs/benchmarks.md: decode 1499–1519 against 1440–1444 tokens/s, gate/up 54.4 against
    /// 60.2 µs profiled).</summary>
    public const bool Q4SubgroupRule = true;
    /// <summary>The same for packed f16 weights: no (not measured on a GPU).</summary>
    public const bool F16SubgroupRule = false;
    /// <summary>4-bit weights in a <see cref="Kernels.Q4Panels"/> layout where they fit (<c>q4-layout=panels</c> or
    /// <c>halves</c>) or in ONNX's row order (<c>rows</c>); null: <see cref="Q4LayoutRule"/>.</summary>
    public string? Q4Layout { get; init; }
    /// <summary>Panel kernels with byte zero points take each block's zero point out as z·Σx (<c>q4-zero=sum</c>) rather
    /// than from every value (<c>each</c>, the rule: H100, 8B shape, decode 1637.4–1692.6 tokens/s with sums against
    /// 1773.7–1802.8 without; docs/benchmarks.md).</summary>
    public bool Q4ZeroSum { get; init; }
    /// <summary>f32 scales that are all f16 values (as <c>--quantize q4</c> makes them) are kept as f16 on the GPU and read
    /// exactly (<c>q4-scales=f16</c>, the default), or as f32 (<c>f32</c>).</summary>
    public bool Q4F32Scales { get; init; }
    /// <summary>Panel weights (<c>panels</c>) with byte zero points and f16 scales keep each block's scale and zero point
    /// in one u32 (<c>q4-params=packed</c>: one load a unit for both, 4 bytes a block where apart reads 3) or apart
    /// (<c>apart</c>, the rule: a load of scales and one of zero-point bytes). H100, 8B shape, in one call: packed 1771.9
    /// decode tokens/s against 1807.1 and 1807.2 apart (docs/benchmarks.md).</summary>
    public bool Q4PackedParams { get; init; }
    /// <summary>How panel kernels make a nibble a float: <c>half</c>, two nibbles 16 bits apart masked in place into the
    /// mantissas of two f16 subnormals and widened by <c>unpack2x16float</c> (exact where the device widens f16
    /// subnormals, which <see cref="WebGpuPlatform.WidensHalfSubnormals"/> checks; x scaled up by 2^24 as it is loaded,
    /// zero points taken out as z·Σx a block), or <c>magic</c> (or-ed into the mantissa of 2^23, then 2^23 and the zero
    /// point subtracted). Null: <see cref="Q4HalfRule"/> where the device widens f16 subnormals.</summary>
    public string? Q4Nibbles { get; init; }
    /// <summary>Whether the rule makes nibbles f16 subnormals where the device widens them exactly: yes (H100 through Dawn,
    /// which passes the probe: <c>bench q4-sweep</c> 4.36× f32 against magic's 3.73×, +17 % on each shape of the 8B model;
    /// decode 1847.3 and 1785.4 tokens/s against 1728.0 and 1482.6, docs/benchmarks.md).</summary>
    public const bool Q4HalfRule = true;
    /// <summary>What decides how a 4-bit weight is laid out on the GPU: a weight made under another value is made again.</summary>
    internal Q4WeightLayout WeightLayout => new(Panels, Q4F32Scales, Q4PackedParams, Q4ZeroSum, Q4Nibbles);
    /// <summary>The rule's 4-bit layout where it fits: <c>panels</c> (H100, 8B shape: <c>halves</c> decodes within 2 % of
    /// it and prefills 10 % slower; docs/benchmarks.md).</summary>
    public const string Q4LayoutRule = "panels";
    /// <summary>The panel layout asked for or by rule; null: rows.</summary>
    internal Q4Panels? Panels => (Q4Layout ?? Q4LayoutRule) switch { "panels" => Kernels.Q4Panels.Words, "halves" => Kernels.Q4Panels.Halves, _ => null };
    /// <summary>Widen halves with <c>unpack2x16float</c> (true, the default: 1.1–2.4× the bit moves' speed on an H100)
    /// or with bit moves (false; a weight holding an infinity or NaN still takes unpack2x16float).</summary>
    public bool? F16Native { get; init; }

    public static readonly MatVecTuning Rule = new();

    /// <summary>Ranges of K a MatMulNBits decode row is split in when no knob says: 1, not split (H100, 8B shape: q4 decode
    /// 1432.3 tokens/s with <c>q4-split=4</c>, 1139.1 with 2, against 1696.1 unsplit; docs/benchmarks.md).</summary>
    public const int Q4SplitRule = 1;

    public const string Help = "q4-threads=N, q4-rows=N, q4-wg=N, q4-xs=0|1, q4-unroll=N, q4-reduce=tree|serial|subgroup, q4-unit=1|2|4, q4-loads=first|inline, q4-target=N, q4-decode-target=N, q4-layout=panels|halves|rows, q4-zero=each|sum, q4-scales=f16|f32, q4-params=packed|apart, q4-nibbles=half|magic, q4-split=N, f16-threads=N, f16-rows=N, f16-wg=N, f16-xs=0|1, f16-unroll=N, f16-reduce=tree|serial|subgroup, f16-unpack=bits|native";

    /// <summary>This tuning with one spec option applied, or null when <paramref name="key"/> is not a matrix-vector knob.</summary>
    public MatVecTuning? With(string spec, string key, string value)
    {
        int Count(int max)
        {
            if (!int.TryParse(value, out int v) || v < 1 || v > max) throw new TapmlException($"platform '{spec}': {key}={value} must be an integer from 1 to {max}");
            return v;
        }
        bool Reduce() => value switch { "tree" or "subgroup" => true, "serial" => false, _ => throw new TapmlException($"platform '{spec}': {key}={value} must be tree, serial or subgroup") };
        bool Flag() => value switch { "1" or "true" or "" => true, "0" or "false" => false, _ => throw new TapmlException($"platform '{spec}': {key}={value} must be 0 or 1") };
        var t = key switch
        {
            "q4-threads" => this with { Q4Threads = Count(256) },
            "q4-rows" => this with { Q4Rows = Count(16) },
            "q4-wg" => this with { Q4Workgroup = Count(1024) },
            "q4-xs" => this with { Q4SharedX = Flag() },
            "q4-unroll" => this with { Q4Unroll = Count(8) },
            "q4-reduce" => this with { Q4Tree = Reduce(), Q4Subgroup = value == "subgroup" },
            "q4-loads" => this with { Q4Hoist = value switch { "first" => true, "inline" => false, _ => throw new TapmlException($"platform '{spec}': {key}={value} must be first or inline") } },
            "q4-layout" => this with { Q4Layout = value is "panels" or "halves" or "rows" ? value : throw new TapmlException($"platform '{spec}': {key}={value} must be panels, halves or rows") },
            "q4-zero" => this with { Q4ZeroSum = value switch { "sum" => true, "each" => false, _ => throw new TapmlException($"platform '{spec}': {key}={value} must be sum or each") } },
            "q4-scales" => this with { Q4F32Scales = value switch { "f32" => true, "f16" => false, _ => throw new TapmlException($"platform '{spec}': {key}={value} must be f16 or f32") } },
            "q4-params" => this with { Q4PackedParams = value switch { "packed" => true, "apart" => false, _ => throw new TapmlException($"platform '{spec}': {key}={value} must be packed or apart") } },
            "q4-nibbles" => this with { Q4Nibbles = value is "half" or "magic" ? value : throw new TapmlException($"platform '{spec}': {key}={value} must be half or magic") },
            "q4-split" => this with { Q4Split = Count(16) },
            "q4-target" => this with { Q4TargetThreads = Count(1 << 24) },
            "q4-decode-target" => this with { Q4DecodeTargetThreads = Count(1 << 24) },
            "q4-unit" => this with { Q4Words = value is "1" or "2" or "4" ? int.Parse(value) : throw new TapmlException($"platform '{spec}': {key}={value} must be 1, 2 or 4") },
            "f16-threads" => this with { F16Threads = Count(256) },
            "f16-rows" => this with { F16Rows = Count(16) },
            "f16-wg" => this with { F16Workgroup = Count(1024) },
            "f16-xs" => this with { F16SharedX = Flag() },
            "f16-unroll" => this with { F16Unroll = Count(8) },
            "f16-reduce" => this with { F16Tree = Reduce(), F16Subgroup = value == "subgroup" },
            "f16-unpack" => this with { F16Native = value switch { "native" => true, "bits" => false, _ => throw new TapmlException($"platform '{spec}': f16-unpack={value} must be bits or native") } },
            _ => null,
        };
        if (t is not null && (t.Q4Workgroup > 0 && t.Q4Threads > 0 && t.Q4Workgroup % t.Q4Threads != 0 || t.F16Workgroup > 0 && t.F16Threads > 0 && t.F16Workgroup % t.F16Threads != 0))
            throw new TapmlException($"platform '{spec}': a workgroup size must be a multiple of the threads per row");
        return t;
    }

    /// <summary>The 4-bit kernel's layout for N rows of <paramref name="units"/> loads each. Rule (<c>bench q4-sweep</c> on
    /// H100s, docs/benchmarks.md): 64 threads a row (in the row layout 32 for N ≥ 65536, an lm_head; never more than the
    /// row has units), as many rows a thread (up to 8; up to 4 in <paramref name="panels"/>' 16-byte units) as keep
    /// N·threads/rows at 65536 threads or more (131072 for a plain product of <paramref name="oneRow"/> row of x:
    /// <see cref="Q4DecodeTargetRule"/>), 128 threads a workgroup, x from the storage buffer, partial sums added by
    /// shuffles over <paramref name="subgroup"/> lanes (the device's smallest subgroup; 0: none) before workgroup memory.
    /// On the 8B shape's decode (H100, host-paced call, docs/benchmarks.md) <c>q4-unroll=2</c>, <c>q4-rows=2</c>,
    /// <c>q4-threads=128&amp;q4-wg=256</c> and <c>q4-wg=256</c> each decoded below this rule.</summary>
    public MatVecShape Q4(long n, long units, int maxWorkgroup, int subgroup = 0, bool panels = false, bool oneRow = false)
    {
        int t = Q4Threads > 0 ? Q4Threads : Math.Min(n >= 65536 && !panels ? 32 : 64, Math.Max(4, Wgsl.FloorPow2(units)));
        long target = oneRow ? Q4DecodeTargetThreads > 0 ? Q4DecodeTargetThreads : Q4DecodeTargetRule : Q4TargetThreads > 0 ? Q4TargetThreads : 65536;
        int r = Q4Rows > 0 ? Q4Rows : (int)Math.Clamp(Wgsl.FloorPow2(n * t / target), 1, panels ? 4 : 8);
        var s = Fit(t, r, Q4Workgroup > 0 ? Q4Workgroup : 128, Q4SharedX ?? false, maxWorkgroup) with { Unroll = Q4Unroll > 0 ? Q4Unroll : 1, Tree = Q4Tree ?? true, Subgroup = Q4Subgroup ?? Q4SubgroupRule ? subgroup : 0 };
        // Never more ranges than leave each of a row's threads a unit in every range; x staged in workgroup memory
        // (q4-xs=1) does not split.
        int split = (int)Math.Clamp(Q4Split > 0 ? Q4Split : Q4SplitRule, 1, Math.Max(1, units / s.Threads));
        return split > 1 && !s.SharedX ? s with { Split = split } : s;
    }

    /// <summary>Packed words a 4-bit unit loads for N rows of <paramref name="rowWords"/> u32 words: <see cref="Q4Words"/>
    /// where it divides the row; else (rule, H100 profiles of the 8B shape, docs/benchmarks.md) 2 for N ≥ 6144, where a row's
    /// threads then read x 64 bytes apart instead of 128 and there are threads enough to keep 8-byte loads in flight (gate/up
    /// 58–59 against 68–69 µs, q/k/v 18–27 against 32–34, lm_head 65 against 78–82), 4 for fewer rows (o and down
    /// with N = 4096: 31 against 34 µs), each where it divides the row; else 1.</summary>
    public int Q4UnitWords(long rowWords, long n)
    {
        if (Q4Words > 0 && rowWords % Q4Words == 0) return Q4Words;
        if (rowWords % 2 == 0 && (n >= 6144 || rowWords % 4 != 0)) return 2;
        return rowWords % 4 == 0 ? 4 : 1;
    }

    /// <summary>The packed f16 kernel's layout. Rule (<c>bench q4-sweep</c> on H100s): 64 threads a row (never more than
    /// the row has units), 2 rows a thread (1 where that leaves under 65536 threads), 256 threads a workgroup, halves
    /// widened by <c>unpack2x16float</c>.</summary>
    public MatVecShape F16(long n, long units, int maxWorkgroup, int subgroup = 0)
    {
        int t = F16Threads > 0 ? F16Threads : Math.Min(64, Math.Max(4, Wgsl.FloorPow2(units)));
        int r = F16Rows > 0 ? F16Rows : n * t >= 2 * 65536 ? 2 : 1;
        return Fit(t, r, F16Workgroup > 0 ? F16Workgroup : 256, F16SharedX ?? false, maxWorkgroup) with { Unroll = F16Unroll > 0 ? F16Unroll : 1, Tree = F16Tree ?? false, Subgroup = F16Subgroup ?? F16SubgroupRule ? subgroup : 0 };
    }


    static MatVecShape Fit(int threads, int rows, int wg, bool xs, int maxWorkgroup)
    {
        threads = Math.Min(threads, maxWorkgroup);
        wg = Math.Max(threads, Math.Min(wg, maxWorkgroup) / threads * threads);
        return new MatVecShape(threads, rows, wg, xs);
    }
}

/// <summary>The tuning's knobs that decide how a 4-bit weight is laid out on the GPU (<see cref="MatVecTuning.WeightLayout"/>).</summary>
internal readonly record struct Q4WeightLayout(Q4Panels? Panels, bool F32Scales, bool PackedParams, bool ZeroSum, string? Nibbles);

/// <summary>Launches made under one <see cref="MatVecTuning"/>, by key: the tuning is immutable and the platform
/// replaces it when an option changes, so it is compared by reference (a decode step does not hash its fields) and a
/// new one empties the cache.</summary>
internal sealed class TunedLaunches<TKey, TLaunch> where TKey : notnull
{
    readonly Dictionary<TKey, TLaunch> made = [];
    MatVecTuning? tuning;

    public bool TryGet(MatVecTuning t, TKey key, out TLaunch launch)
    {
        if (!ReferenceEquals(t, tuning)) { made.Clear(); tuning = t; }
        return made.TryGetValue(key, out launch!);
    }

    public TLaunch Add(TKey key, TLaunch launch) => made[key] = launch;
}

/// <summary>The skeleton both decode kernels share: y[m, row] = Σ_k x[m, k]·W[row, k] for M ≤ 4 rows of x, W in units
/// of <c>UnitValues</c> values of K (one u32 or vec4&lt;u32&gt; load each). Each unit's x values are loaded once (as
/// vec4, multiplied by the format's <c>XScale</c>) into <c>xq{m}_{j}</c> and serve every row a thread carries; the
/// format's row code adds into <c>a{r}_{m}</c>. Partial sums go to workgroup memory once; after one barrier a thread per
/// output adds its row's partials (no tree, no subgroups).</summary>
internal static class BlockedMatVec
{
    public sealed class Format
    {
        /// <summary>Values of K per unit (a multiple of 4).</summary>
        public required int UnitValues;
        /// <summary>A vec4 x is multiplied by as it is loaded (null: none).</summary>
        public string? XScale;
        /// <summary>Code loading unit <c>u</c>'s x values for x row m in place of the vec4 loads (x in another form; x
        /// in workgroup memory is then not offered), or null.</summary>
        public Func<int, string>? LoadUnit;
        /// <summary>Code for weight row <c>r</c> of unit <c>u</c> (row index <c>row{r}</c>, clamped to N−1).</summary>
        public required Func<int, string> Row;
        /// <summary>Code for all R weight rows of unit <c>u</c> at once, in place of <see cref="Row"/> each (null: Row's).</summary>
        public Func<int, string>? Rows;
        /// <summary>K index of unit u's vec4 j of x (null: <c>k0 + 4·j</c>, a unit's values contiguous), and code at the
        /// unit's top that index reads (after <c>k0 = u·UnitValues</c>): a weight layout whose units are not contiguous
        /// in K (<see cref="Q4Panels"/>). x in workgroup memory is then not offered.</summary>
        public Func<int, string>? XAt;
        public string UnitHead = "";
        /// <summary>Code once per unit after x's loads, for x row m (values derived from x that every row uses).</summary>
        public Func<int, string>? PerUnit;
        /// <summary>Lets at the top of main (constants the row code uses).</summary>
        public string Prologue = "";
        /// <summary>The store of one output: (m, row expression, sum expression) → statement.</summary>
        public required Func<int, string, string, string> Store;
    }

    /// <summary>Declares x at binding 0: <c>xv_b</c> (vec4&lt;f32&gt;) when <paramref name="vec"/>, else the accessor <c>x(i)</c>.</summary>
    public static void DeclareX(Wgsl w, GpuTensor x, bool vec)
    {
        if (vec) w.Reserve().Decl("@group(0) @binding(0) var<storage, read> xv_b: array<vec4<f32>>;");
        else w.In("x", x);
    }

    /// <summary>The kernel body; meta words: md[0] = N, md[1] = K, md[2] = units per row. <paramref name="vec"/>: x is
    /// <c>xv_b</c> and every unit lies inside K (K = units·UnitValues, a multiple of 4), so x needs no bounds checks.
    /// <paramref name="rowBase"/>: an expression for x's first row (a kernel over rows rowBase… of a taller x), or null.</summary>
    public static string Body(Wgsl w, Format f, MatVecShape s, int rows, bool vec, int maxWorkgroupBytes, string? rowBase = null)
    {
        int T = s.Threads, R = s.Rows, WG = s.Workgroup, G = WG / T, M = rows, UV = f.UnitValues, J = UV / 4;
        // Partial sums of all R·M outputs at once if they fit in half the workgroup memory, else in passes.
        int slots = R * M, perPass = Math.Clamp(maxWorkgroupBytes / 2 / (WG * 4), 1, slots);
        int chunk = 0;
        if (s.SharedX) chunk = Math.Max(1, Math.Min(4096, (maxWorkgroupBytes - WG * perPass * 4) / 4) / (M * UV));
        w.Decl($"var<workgroup> red: array<f32, {WG * perPass}>;");
        if (s.SharedX) w.Decl($"var<workgroup> xsh: array<vec4<f32>, {M * chunk * J}>;");
        // NOTE: K is a parameter, not md[1] read inside the helper (the vulkan dialect's rows stalled reading md there).
        if (!vec) w.Decl("fn xg(m: u32, k: u32, K: u32) -> f32 { if (k < K) { return f32(x(m * K + k)); } return 0.0; }");
        string scale = f.XScale is null ? "" : $" * {f.XScale}";
        string X4(string m, string k) => LoadX4(vec, m, k);
        var rs = Enumerable.Range(0, R).ToArray();
        var ms = Enumerable.Range(0, M).ToArray();
        string rowsCode = f.Rows is { } all ? all(R) : string.Concat(rs.Select(f.Row));
        string perUnit = f.PerUnit is null ? "" : string.Concat(ms.Select(f.PerUnit));
        var b = new StringBuilder();
        b.Append($"  let N = md[0]; let K = md[1]; let U = md[2];\n{f.Prologue}");
        b.Append($"  let t = lid.x % {T}u;\n  let wgi = wid.x + wid.y * nwg.x;\n  let rowBase = (wgi * {G}u + lid.x / {T}u) * {R}u;\n");
        foreach (int r in rs) b.Append($"  let row{r} = min(rowBase + {r}u, N - 1u);\n");
        foreach (int r in rs) foreach (int m in ms) b.Append($"  var a{r}_{m} = 0.0;\n");
        if (s.SharedX && s.Split > 1) throw new InvalidOperationException("a split row takes no staged x");
        if (!s.SharedX)
        {
            // Split: this workgroup's range of units (the grid's z).
            string end = "U";
            if (s.Split > 1) { b.Append($"  let us_ = (U + {s.Split - 1}u) / {s.Split}u;\n  let u0 = wid.z * us_;\n  let ue = min(U, u0 + us_);\n"); end = "ue"; }
            var unit = new StringBuilder($"    let k0 = u * {UV}u;\n{f.UnitHead}");
            foreach (int m in ms)
                if (f.LoadUnit is { } load) unit.Append(load(m));
                else for (int j = 0; j < J; j++) unit.Append($"    let xq{m}_{j} = {X4(rowBase is null ? $"{m}u" : $"({rowBase} + {m}u)", f.XAt?.Invoke(j) ?? $"k0 + {4 * j}u")}{scale};\n");
            b.Append(UnitLoop(T, s.Unroll, unit.Append(perUnit).Append(rowsCode).ToString(), s.Split > 1 ? "u0 + t" : "t", end));
        }
        else
        {
            if (f.LoadUnit is not null || f.XAt is not null) throw new InvalidOperationException("a format that loads its own units or places them apart in K takes no staged x");
            int cj = chunk * J;
            b.Append($$"""
  for (var c0 = 0u; c0 < U; c0 += {{chunk}}u) {
    workgroupBarrier();
    for (var e = lid.x; e < {{M * cj}}u; e += {{WG}}u) {
      let m = e / {{cj}}u;
      let k = c0 * {{UV}}u + (e % {{cj}}u) * 4u;
      var v = vec4<f32>(0.0);
      if (k < K) { v = {{X4(rowBase is null ? "m" : $"({rowBase} + m)", "k")}}; }
      xsh[{{XshAt("m", "(e % " + cj + "u)", J, cj)}}] = v{{scale}};
    }

""");
            b.Append(StagedUnits(chunk, T, M, J, cj)).Append(perUnit).Append(rowsCode).Append("    }\n  }\n");
        }
        // Reduction: slot sl of output (r, m) = r·M + m; thread (g, t) writes red[sl·WG + g·T + t]; one thread per (slot, g) adds T partials
        // (after the tree: takes the first; after shuffles over L lanes: adds T / L).
        int L = s.ShuffleLanes;
        if (L > 0) b.Append(ShuffleSums(L, rs.SelectMany(r => ms.Select(m => $"a{r}_{m}"))));
        for (int p0 = 0; p0 < slots; p0 += perPass)
        {
            int n = Math.Min(perPass, slots - p0);
            if (p0 > 0) b.Append("  workgroupBarrier();\n");
            for (int sl = p0; sl < p0 + n; sl++) b.Append($"  red[{(sl - p0) * WG}u + lid.x] = a{sl / M}_{sl % M};\n");
            b.Append("  workgroupBarrier();\n");
            if (s.TreeSum && L == 0) b.Append(TreeSum(T, n, WG));
            b.Append($"  for (var o = lid.x; o < {G * n}u; o += {WG}u) {{\n    let sl = o / {G}u; let gg = o % {G}u;\n");
            b.Append(PartialsTotal("sum", $"sl * {WG}u + gg * {T}u", T, L > 0 ? L : s.TreeSum ? T : 1, "    "));
            b.Append($"    let slot = sl + {p0}u;\n    let row = (wgi * {G}u + gg) * {R}u + slot / {M}u;\n    if (row < N) {{\n");
            foreach (int m in ms) b.Append($"      if (slot % {M}u == {m}u) {{ {f.Store(m, "row", "sum")} }}\n");
            b.Append("    }\n  }\n");
        }
        return b.ToString();
    }

    /// <summary>x's four values from K index <paramref name="k"/> of row <paramref name="m"/>: one vec4 load of
    /// <c>xv_b</c> when <paramref name="vec"/> (no bounds checks), else four <c>xg</c> reads (zero past K).</summary>
    internal static string LoadX4(bool vec, string m, string k) => vec ? $"xv_b[({m} * K + {k}) / 4u]"
        : $"vec4<f32>(xg({m}, {k}, K), xg({m}, {k} + 1u, K), xg({m}, {k} + 2u, K), xg({m}, {k} + 3u, K))";

    /// <summary>Where staged x element <paramref name="el"/> (vec4 j of chunk unit ul: el = ul·J + j) of x row
    /// <paramref name="m"/> lives in <c>xsh</c>: vec4 j of a unit at j XOR (ul mod J), so the threads of a row, each
    /// reading vec4 j of its own unit, hit different banks (J a power of two; units are J·16 bytes apart).</summary>
    internal static string XshAt(string m, string el, int J, int cj) =>
        $"{m} * {cj}u + ({el} / {J}u) * {J}u + (({el} % {J}u) ^ (({el} / {J}u) & {J - 1}u))";

    /// <summary>After a chunk's staging loop: a barrier, then the loop over a thread's units of the chunk (<c>u</c>), each
    /// reading its x values <c>xq{m}_{j}</c> back from <c>xsh</c> where <see cref="XshAt"/> put them; the caller appends
    /// the unit's code and closes this loop and the chunk loop.</summary>
    internal static string StagedUnits(int chunk, int T, int M, int J, int cj)
    {
        var b = new StringBuilder($$"""
    workgroupBarrier();
    let ce = min(c0 + {{chunk}}u, U);
    for (var u = c0 + t; u < ce; u += {{T}}u) {
      let xo = (u - c0) * {{J}}u;
      let sw = (u - c0) & {{J - 1}}u;

""");
        for (int m = 0; m < M; m++)
            for (int j = 0; j < J; j++) b.Append($"      let xq{m}_{j} = xsh[{m * cj}u + xo + ({j}u ^ sw)];\n");
        return b.ToString();
    }

    /// <summary>Adds each of <paramref name="vars"/> across aligned groups of <paramref name="lanes"/> consecutive lanes (a
    /// power of two, at most the device's smallest subgroup) with <c>subgroupShuffleXor</c>: every lane of a group ends
    /// with the group's sum. Code in uniform control flow (every invocation of the workgroup reaches it).</summary>
    internal static string ShuffleSums(int lanes, IEnumerable<string> vars, string indent = "  ")
    {
        var b = new StringBuilder();
        foreach (var v in vars)
            for (int mask = lanes / 2; mask >= 1; mask /= 2) b.Append($"{indent}{v} += subgroupShuffleXor({v}, {mask}u);\n");
        return b.ToString();
    }

    /// <summary>A <c>let</c> <paramref name="name"/> = a row's total from its T entries of <c>red</c> starting at
    /// <paramref name="at"/>, where every <paramref name="stride"/>-th entry holds the sum of that many (1: all T added
    /// here; T: the first alone, after the tree or shuffles over all T lanes).</summary>
    internal static string PartialsTotal(string name, string at, int threads, int stride, string indent)
    {
        if (stride >= threads) return $"{indent}let {name} = red[{at}];\n";
        return $"{indent}var {name} = 0.0;\n{indent}for (var i = 0u; i < {threads}u; i += {stride}u) {{ {name} += red[{at} + i]; }}\n";
    }

    /// <summary>Adds each row's <paramref name="threads"/> partial sums (a power of two; thread t of a row holds
    /// <c>red[k·WG + lid.x]</c> for each of <paramref name="slots"/> slots k) pairwise in place, a barrier a step, so
    /// the row's first thread's entries (<c>red[k·WG + g·T]</c>) end as the totals. Code after a barrier.</summary>
    internal static string TreeSum(int threads, int slots, int workgroup) => $$"""
  for (var st = {{threads / 2}}u; st > 0u; st >>= 1u) {
    if (lid.x % {{threads}}u < st) {
      for (var k = 0u; k < {{slots}}u; k++) { red[k * {{workgroup}}u + lid.x] += red[k * {{workgroup}}u + lid.x + st]; }
    }
    workgroupBarrier();
  }

""";

    /// <summary>The loop over a thread's units (u = t, t + T, … below U) around <paramref name="unit"/>, code that reads
    /// <c>u</c>: with <paramref name="unroll"/> &gt; 1, that many units an iteration, each in a block of its own (so their
    /// loads are independent and can all be in flight), then the units left one at a time.</summary>
    internal static string UnitLoop(int T, int unroll, string unit, string first = "t", string end = "U")
    {
        if (unroll <= 1) return $"  for (var u = {first}; u < {end}; u += {T}u) {{\n{unit}  }}\n";
        var b = new StringBuilder($"  var ub = {first};\n  for (; ub + {(unroll - 1) * T}u < {end}; ub += {unroll * T}u) {{\n");
        for (int i = 0; i < unroll; i++) b.Append($"   {{\n    let u = ub{(i == 0 ? "" : $" + {i * T}u")};\n{unit}   }}\n");
        return b.Append($"  }}\n  for (var u = ub; u < {end}; u += {T}u) {{\n{unit}  }}\n").ToString();
    }

    /// <summary>Workgroups for N rows at <paramref name="s"/>'s rows per workgroup.</summary>
    public static (uint X, uint Y) Grid(WebGpuPlatform g, long n, MatVecShape s) =>
        Wgsl.Grid(n, s.RowsPerWorkgroup, g.Device.Limits.MaxWorkgroupsPerDimension);
}
