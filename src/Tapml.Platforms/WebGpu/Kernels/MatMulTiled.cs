using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>The register-tiled GEMM for products of many rows (prefill, Gemm, batched activations): a workgroup computes
/// a <see cref="Tile.BM"/>×<see cref="Tile.BN"/> block of y, each thread a <see cref="Tile.TM"/>×<see cref="Tile.TN"/>
/// block of it in vec4 registers. A and B pass through workgroup memory <see cref="Tile.BK"/> columns of K at a time,
/// stored as vec4 along M (A) and N (B) so the inner loop reads 16 bytes a load; two buffers, the next tile's elements
/// fetched into registers while the current one is multiplied (one barrier a tile). Interior tiles load without bounds
/// checks; edge tiles (M, N or K past a multiple of the tile) check each element. Elements are read through the storage
/// helpers, so any strides (transposes), packed f16 and broadcast batches work as in the 64×64 kernel it replaces. A
/// grid of few workgroups (a short prompt's product) splits K: partial products, then a dispatch that adds them.</summary>
public static class MatMulTiled
{
    /// <summary>A tile configuration: the workgroup's block of y (BM×BN), the K step (BK) and each thread's block (TM×TN,
    /// multiples of 4). Written <c>BMxBNxBK/TMxTN</c>, e.g. <c>128x128x8/8x8</c>; <see cref="Legacy"/> is the 64×64
    /// kernel of <see cref="MatMul"/>.</summary>
    public readonly record struct Tile(int BM, int BN, int BK, int TM, int TN)
    {
        /// <summary>The earlier 64×64 kernel (4×4 a thread, scalar loads, one workgroup buffer), kept for comparison.</summary>
        public static Tile Legacy => default;
        public bool IsLegacy => BM == 0;
        public int Threads => BM / TM * (BN / TN);
        /// <summary>Workgroup memory: two buffers of BK rows of (BM/4 + 1) and (BN/4 + 1) vec4s (the extra vec4 a row keeps
        /// the transposing stores off one bank).</summary>
        public int SharedBytes => 2 * BK * (BM / 4 + 1 + BN / 4 + 1) * 16;

        public override string ToString() => IsLegacy ? "legacy" : $"{BM}x{BN}x{BK}/{TM}x{TN}";

        /// <summary>Parses <c>BMxBNxBK/TMxTN</c> or <c>legacy</c>; null when malformed or not a valid shape (checked
        /// against limits by <see cref="Unfit"/>).</summary>
        public static Tile? Parse(string s)
        {
            if (s == "legacy") return Legacy;
            var p = s.Split('/');
            if (p.Length != 2) return null;
            var b = p[0].Split('x'); var t = p[1].Split('x');
            if (b.Length != 3 || t.Length != 2) return null;
            int[] v = new int[5];
            for (int i = 0; i < 5; i++) if (!int.TryParse(i < 3 ? b[i] : t[i - 3], out v[i]) || v[i] <= 0) return null;
            var tile = new Tile(v[0], v[1], v[2], v[3], v[4]);
            return tile.Shape() is null ? tile : null;
        }

        /// <summary>Why this shape cannot be generated (null: it can).</summary>
        public string? Shape()
        {
            if (IsLegacy) return null;
            if (TM % 4 != 0 || TN % 4 != 0 || TM > 16 || TN > 16) return "TM and TN must be 4, 8, 12 or 16";
            if (BM % TM != 0 || BN % TN != 0 || BM % 4 != 0 || BN % 4 != 0) return "BM must be a multiple of TM and BN of TN";
            if (BK > 64) return "BK must be at most 64";
            return null;
        }

        /// <summary>Why this tile does not run on a device with these limits (null: it does).</summary>
        public string? Unfit(GpuLimits l) =>
            IsLegacy ? null
            : Shape() is { } s ? s
            : Threads > l.MaxInvocationsPerWorkgroup || Threads > l.MaxWorkgroupSizeX ? $"{Threads} threads is over the adapter's {l.MaxInvocationsPerWorkgroup}"
            : SharedBytes > l.MaxWorkgroupStorageBytes ? $"{SharedBytes} B of workgroup memory is over the adapter's {l.MaxWorkgroupStorageBytes}"
            : null;
    }

    /// <summary>A ladder of tiles, largest first: the first that fits the adapter and whose grid has at least
    /// <see cref="MinGroups"/> workgroups (or the last that fits) runs; a grid under MinGroups/2 splits K.</summary>
    public sealed record TileLadder(string Name, Tile[] Tiles, int MinGroups)
    {
        /// <summary>The first ladder (2026-12-05): on an H100 its pick ran 21.4–37.5 TFLOP/s on M = 512/2048 × 4096-wide
        /// weights where 128x128x16/8x8 ran 39.7–40.3 (<c>matmul-ladder=v1</c>).</summary>
        public static readonly TileLadder V1 = new("v1", [new(128, 128, 8, 8, 8), new(64, 128, 8, 4, 8), new(64, 64, 8, 4, 4), new(32, 64, 8, 4, 4), new(16, 64, 16, 4, 4)], 256);

        /// <summary>The default: 128x128x16/8x8 first (where the adapter's workgroup memory, 33 KB, allows it), and a
        /// grid of 128 workgroups (about one per SM of an H100) enough for it.</summary>
        public static readonly TileLadder V2 = new("v2", [new(128, 128, 16, 8, 8), .. V1.Tiles], 128);

        public static TileLadder? Parse(string s) => s switch { "v1" => V1, "v2" => V2, _ => null };

        public override string ToString() => $"{Name}: {string.Join(", ", Tiles)}; ≥ {MinGroups} workgroups";
    }

    /// <summary>The default ladder's tiles (<see cref="TileLadder.V2"/>). <c>bench matmul-sweep</c> measures each.</summary>
    public static Tile[] Ladder => TileLadder.V2.Tiles;

    /// <summary>The default ladder's grid size (<see cref="TileLadder.V2"/>).</summary>
    public static int MinGroups => TileLadder.V2.MinGroups;

    /// <summary>K a workgroup sums at least, when a small grid splits K (see <see cref="TryRun"/>).</summary>
    public const int SplitMinK = 512;

    /// <summary>The tile for an [M,K]×[K,N] product of <paramref name="batches"/> batches: the platform's forced tile
    /// (<c>webgpu?matmul-tile=…</c>) where set, else the ladder's pick.</summary>
    public static Tile Choose(WebGpuPlatform g, long m, long n, long batches)
    {
        if (g.MatMulTile is { } forced) return forced;
        Tile? last = null;
        foreach (var t in g.MatMulLadder.Tiles)
        {
            if (t.Unfit(g.Device.Limits) is not null) continue;
            last = t;
            if ((m + t.BM - 1) / t.BM * ((n + t.BN - 1) / t.BN) * batches >= g.MatMulLadder.MinGroups) return t;
        }
        return last ?? Tile.Legacy;
    }

    /// <summary>y[b] = alpha·A[b]·B[b] + beta·C for [M,K]×[K,N] with element strides (row, col) of A, B and C, batches
    /// through broadcast batch strides; false when the chosen tile is <see cref="Tile.Legacy"/> (the caller runs that).</summary>
    public static bool TryRun(WebGpuPlatform g, GpuTensor a, GpuTensor b, GpuTensor? c, GpuTensor y, long m, long n, long k,
        long[] batch, long[] aBatch, long[] bBatch, (long R, long C) sa, (long R, long C) sb, (long R, long C) sc, float alpha, float beta, string label)
    {
        long batches = ShapeUtil.Size(batch);
        var tile = Choose(g, m, n, batches);
        if (tile.IsLegacy) return false;
        if (tile.Unfit(g.Device.Limits) is { } why) throw new UnsupportedException($"webgpu: matmul tile {tile}: {why}");
        if (batches > g.Device.Limits.MaxWorkgroupsPerDimension) throw new TapmlException($"webgpu: {label} batch of {batches} is over maxComputeWorkgroupsPerDimension");
        var (meta, shapeAt, aAt, bAt) = MatMul.TiledMeta(y, m, n, k, batch, aBatch, bBatch, sa, sb, sc, alpha, beta);
        int r = batch.Length;
        // A grid too small for the GPU (few rows, few columns: prefill of a short prompt) splits K over workgroups that
        // write partial products, added by a second dispatch. Only the ladder splits (a forced tile runs as given).
        long groups = Math.Max(1, (m + tile.BM - 1) / tile.BM * ((n + tile.BN - 1) / tile.BN) * batches);
        int minGroups = g.MatMulLadder.MinGroups;
        int splits = g.MatMulTile is null && batches == 1 && c is null && groups < minGroups / 2
            ? (int)Math.Clamp(Math.Min(minGroups / groups, k / SplitMinK), 1, 16) : 1;
        long kc = Math.Max(tile.BK, ((k + splits - 1) / splits + tile.BK - 1) / tile.BK * tile.BK);
        splits = (int)Math.Max(1, (k + kc - 1) / kc);
        int kcAt = meta.Add(kc);
        // A is read with K fastest across threads when its K stride is 1 (rows of a row-major A), else M fastest; B with K
        // fastest when its K stride is 1 (a transposed weight [N,K]), else N fastest: neighbouring threads read neighbours.
        bool aK = sa.C == 1, bK = sb.R == 1;
        bool split = splits > 1;
        var target = split ? g.Empty(DType.Float32, [splits * m * n]) : y;
        var key = new WebGpuPlatform.KernelKey("tiled2", $"{tile}|{r}|{Wgsl.Letters([a.Storage, b.Storage])}|{(c is null ? "-" : Wgsl.Letters([c.Storage]))}|{(int)target.DType}|{aK}|{bK}|{split}");
        g.LaunchGroups(key, () => Code(tile, r, shapeAt, aAt, bAt, kcAt, split, a, b, c, target.DType, aK, bK),
            $"{label}_tiled{tile.BM}x{tile.BN}x{tile.BK}_{tile.TM}x{tile.TN}_b{r}{(c is null ? "" : "_c")}{(split ? "_split" : "")}", c is null ? [a, b, target] : [a, b, c, target], meta,
            (uint)((n + tile.BN - 1) / tile.BN), (uint)((m + tile.BM - 1) / tile.BM), (uint)(split ? splits : batches));
        if (!split) return true;
        var sm = new Meta();
        sm.Add(m * n); sm.Add(splits);
        g.Launch(new WebGpuPlatform.KernelKey("tiled2_sum", $"{(int)y.DType}"), () => new Wgsl(g.Workgroup).In("pt", target).Out("y", y.DType).Build("""
  var acc = 0.0;
  for (var s = 0u; s < md[1]; s++) { acc += pt(s * md[0] + i); }
  y_st(i, acc);
"""), $"{label}_tiled_sum", [target, y], sm, m * n);
        g.Free(target);
        return true;
    }

    /// <summary>The kernel text for one tile, batch rank, storages and read orders.</summary>
    static string Code(Tile t, int rank, int shapeAt, int aAt, int bAt, int kcAt, bool split, GpuTensor a, GpuTensor b, GpuTensor? c, DType y, bool aK, bool bK)
    {
        int threads = t.Threads, tx = t.BN / t.TN;
        int aps = t.BM / 4 + 1, bps = t.BN / 4 + 1;          // vec4s a row of K in workgroup memory
        int asz = t.BK * aps, bsz = t.BK * bps;               // one buffer
        var w = new Wgsl(threads).In("a", a).In("b", b);
        if (c is not null) w.In("c", c);
        w.Out("y", y);
        w.Decl($"var<workgroup> As: array<vec4<f32>, {2 * asz}>;\nvar<workgroup> Bs: array<vec4<f32>, {2 * bsz}>;");
        var s = new StringBuilder();
        s.Append(Wgsl.Offsets("wid.z", rank, shapeAt, ("a", aAt, -1), ("b", bAt, -1)));
        s.Append($"""
  let M = md[1]; let N = md[2]; let K = md[3];
  let sam = md[4]; let sak = md[5]; let sbk = md[6]; let sbn = md[7];
  let row0 = wid.y * {t.BM}u; let col0 = wid.x * {t.BN}u;
  let tx = lid.x % {tx}u; let ty = lid.x / {tx}u;
  let interior = row0 + {t.BM}u <= M && col0 + {t.BN}u <= N;
  let kb = {(split ? $"wid.z * md[{kcAt}]" : "0u")}; let ke = {(split ? $"min(K, kb + md[{kcAt}])" : "K")};

""");
        // Each operand is loaded in units of 4 elements along M (A) or N (B) at one k: a unit is one vec4 of workgroup memory.
        var aUnits = Units("a", t.BM, t.BK, threads, aK, "row0", "sam", "sak", "M", "u32(o_a)", s);
        var bUnits = Units("b", t.BN, t.BK, threads, bK, "col0", "sbn", "sbk", "N", "u32(o_b)", s);
        for (int i = 0; i < t.TM * t.TN / 4; i++) s.Append($"  var c{i} = vec4<f32>(0.0);\n");
        string Load(string k0) =>
            $"    if (interior && {k0} + {t.BK}u <= ke) {{\n{aUnits.Load(k0, false)}{bUnits.Load(k0, false)}    }} else {{\n{aUnits.Load(k0, true)}{bUnits.Load(k0, true)}    }}\n";
        string Store(string buf) => aUnits.Store("As", buf, aps, asz) + bUnits.Store("Bs", buf, bps, bsz);
        s.Append($"  let nt = (ke - kb + {t.BK - 1}u) / {t.BK}u;\n  {{\n{Load("kb")}{Store("0u")}  }}\n  workgroupBarrier();\n");
        s.Append("  for (var kt = 0u; kt < nt; kt++) {\n    let cur = kt & 1u;\n");
        s.Append($"    if (kt + 1u < nt) {{\n  let k1 = kb + (kt + 1u) * {t.BK}u;\n{Load("k1")}    }}\n");
        s.Append($"    let ao = cur * {asz}u + ty; let bo = cur * {bsz}u + tx;\n");
        for (int kk = 0; kk < t.BK; kk++)
        {
            s.Append("    {\n");
            for (int g = 0; g < t.TM / 4; g++) s.Append($"      let a{g} = As[ao + {kk * aps + g * (t.BM / t.TM)}u];\n");
            for (int h = 0; h < t.TN / 4; h++) s.Append($"      let b{h} = Bs[bo + {kk * bps + h * tx}u];\n");
            for (int i = 0; i < t.TM; i++)
                for (int h = 0; h < t.TN / 4; h++) s.Append($"      c{i * (t.TN / 4) + h} += a{i / 4}.{"xyzw"[i % 4]} * b{h};\n");
            s.Append("    }\n");
        }
        s.Append($"    if (kt + 1u < nt) {{\n{Store("(1u - cur)")}    }}\n    workgroupBarrier();\n  }}\n");
        // Epilogue: alpha·acc (+ beta·C), each element checked against M and N.
        s.Append("  let ybase = wid.z * M * N; let alpha = bitcast<f32>(md[10]);\n");
        if (c is not null) s.Append("  let beta = bitcast<f32>(md[11]);\n");
        for (int i = 0; i < t.TM; i++)
        {
            s.Append($"  {{ let gm = row0 + {(i / 4) * (t.BM / t.TM) * 4 + i % 4}u + ty * 4u;\n  if (gm < M) {{\n");
            for (int h = 0; h < t.TN / 4; h++)
                for (int j = 0; j < 4; j++)
                {
                    string gn = $"col0 + {h * tx * 4 + j}u + tx * 4u";
                    string cterm = c is null ? "" : $" + beta * c(gm * md[8] + ({gn}) * md[9])";
                    s.Append($"    if ({gn} < N) {{ y_st(ybase + gm * N + {gn}, alpha * c{i * (t.TN / 4) + h}.{"xyzw"[j]}{cterm}); }}\n");
                }
            s.Append("  } }\n");
        }
        return w.Build(s.ToString(), elementwise: false);
    }

    /// <summary>The load plan of one operand (<paramref name="name"/> a or b): BLOCK×BK elements a tile in units of 4
    /// along the block (M or N) at one k, unit u = thread + l·threads; K fastest across threads when
    /// <paramref name="kFast"/>. Declares each unit's indices and element offsets (without k) into <paramref name="s"/>.</summary>
    static UnitPlan Units(string name, int block, int bk, int threads, bool kFast, string origin, string strideBlock, string strideK, string limit, string baseOffset, StringBuilder s)
    {
        int units = block / 4 * bk, per = (units + threads - 1) / threads;
        for (int l = 0; l < per; l++)
        {
            string u = $"(lid.x + {l * threads}u)";
            string uk = kFast ? $"{u} % {bk}u" : $"{u} / {block / 4}u", ub = kFast ? $"{u} / {bk}u" : $"{u} % {block / 4}u";
            s.Append($"  let {name}k{l} = {uk}; let {name}v{l} = {ub}; let {name}r{l} = {origin} + {name}v{l} * 4u;\n");
            for (int i = 0; i < 4; i++) s.Append($"  let {name}o{l}_{i} = {baseOffset} + ({name}r{l} + {i}u) * {strideBlock};\n");
            for (int i = 0; i < 4; i++) s.Append($"  var {name}p{l}_{i} = 0.0;\n");
        }
        return new UnitPlan(name, per, units, threads, limit, strideK);
    }

    sealed record UnitPlan(string Name, int Per, int Units, int Threads, string Limit, string StrideK)
    {
        /// <summary>Reads the tile at k0 into the unit registers (zeros past M/N/K when <paramref name="guarded"/>).</summary>
        public string Load(string k0, bool guarded)
        {
            var s = new StringBuilder();
            for (int l = 0; l < Per; l++)
            {
                bool partial = (l + 1) * Threads > Units;          // the last round of units has fewer than a workgroup
                string pad = partial ? "        " : "      ";
                if (partial) s.Append($"      if (lid.x + {l * Threads}u < {Units}u) {{\n");
                s.Append($"{pad}let kk{Name}{l} = {k0} + {Name}k{l};\n");
                for (int i = 0; i < 4; i++)
                {
                    string read = $"{Name}({Name}o{l}_{i} + kk{Name}{l} * {StrideK})";
                    s.Append(guarded
                        ? $"{pad}{Name}p{l}_{i} = 0.0; if ({Name}r{l} + {i}u < {Limit} && kk{Name}{l} < ke) {{ {Name}p{l}_{i} = f32({read}); }}\n"
                        : $"{pad}{Name}p{l}_{i} = f32({read});\n");
                }
                if (partial) s.Append("      }\n");
            }
            return s.ToString();
        }

        /// <summary>Writes the unit registers to buffer <paramref name="buf"/> of the workgroup array.</summary>
        public string Store(string array, string buf, int rowVec4s, int size)
        {
            var s = new StringBuilder();
            for (int l = 0; l < Per; l++)
            {
                string st = $"{array}[{buf} * {size}u + {Name}k{l} * {rowVec4s}u + {Name}v{l}] = vec4<f32>({Name}p{l}_0, {Name}p{l}_1, {Name}p{l}_2, {Name}p{l}_3);";
                s.Append((l + 1) * Threads > Units ? $"    if (lid.x + {l * Threads}u < {Units}u) {{ {st} }}\n" : $"    {st}\n");
            }
            return s.ToString();
        }
    }
}
