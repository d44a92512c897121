using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms.Cpu.Ops;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>The <c>projections</c> region (<see cref="Fusion"/>) over MatMulNBits products (<c>--quantize q4</c>) as one
/// dispatch for decode-shaped x (at most <see cref="MatMul.MatVecMaxRows"/> rows). The products' packed nibbles, scales
/// and zero points are stacked row after row, one buffer each (every product's rows are K long, so stacked row i is
/// simply row i); T threads share an output column, striding its units with MatMulNBits' decode unit code (16-byte
/// loads, nibbles made floats exactly); a thread group carries R columns, each with its P weight rows (SwiGLU's gate and
/// up), so one load of x serves R·P rows. The RMSNorm is folded in (x·γ as x is loaded, Σ x² from the same loads, the
/// finished sums divided by the rms) and the element-wise epilogue applied by the thread that adds a column's partial
/// sums. Layout: <see cref="MatVecTuning.Q4"/>'s rule over the R·P rows a group reads (<c>q4-*</c> platform options).
/// Null (the body runs node by node) for prefill-shaped x and what the kernel does not take.</summary>
static class ProjectionsNBits
{
    /// <summary>A region's weights stacked on the GPU, made once per node and platform.</summary>
    sealed class Stacked
    {
        public required WebGpuPlatform Owner;
        public required Tensor?[] Sources;
        /// <summary>Own cache keys for the uploads (<see cref="WebGpuPlatform.Concatenated"/> keys on the first part; a
        /// product's own tensors there would collide with its unfused upload).</summary>
        public required Tensor[] Keys;
        public required GpuTensor Words, Scales;
        public GpuTensor? Zeros, Consts;
        public required MatMulNBits.ZeroKind ZeroKind;
        /// <summary>Every product computes with int8 A where x is f32 (accuracy_level 4): x is quantized first (its RMSNorm
        /// with it) and the kernel takes integer sums.</summary>
        public required bool Int8;
        /// <summary>Words, scales and zero points in this panel layout (null: ONNX's row order).</summary>
        public required Q4Panels? Panels;
        /// <summary>The tuning's <see cref="MatVecTuning.WeightLayout"/> when this was made: a platform whose tuning
        /// changes it (<c>bench q4-sweep</c>, a test) lays the weights out again.</summary>
        public required Q4WeightLayout LayoutAsked;
        /// <summary>Nibbles are f16 subnormals (<see cref="MatMulNBits.HalfNibbled"/>): γ in <see cref="Consts"/> carries
        /// <see cref="MatMulNBits.XScaleFor"/>'s scale.</summary>
        public required bool HalfNibbles;
        public required int K, BlockSize, KBlocks;
        public required long RowWords;
        /// <summary>First stacked row of each weight (plan order).</summary>
        public required long[] RowAt;
        /// <summary>Float offset of the epilogue's per-column vectors in <see cref="Consts"/> (after γ, padded to vec4s).</summary>
        public required long VectorsAt;
        /// <summary>Launches made, by x's rows and storage, int8 A and a KV append: a decode step's launch skips its layout
        /// and kernel key.</summary>
        public readonly TunedLaunches<(int Rows, GpuStorage X, bool A8, bool Kv), Launch?> Launches = new();
    }

    /// <summary>A decode step's KV append in the epilogue (<c>projections_kv</c> regions, <see cref="Fused"/>): outputs
    /// <see cref="K"/> and <see cref="V"/> of the plan are the new key and value rows of <see cref="Heads"/> heads of
    /// <see cref="D"/> values, written to row <see cref="Row"/> of the caches <see cref="Yk"/> and <see cref="Yv"/> ([1,
    /// heads, rows, D] views of capacity buffers) instead of outputs of their own; the key rotated (rotate-half, its
    /// <see cref="Half"/> &gt; 0) by the tables <see cref="Cos"/> and <see cref="Sin"/> (D values each, every head's),
    /// which travel in the dispatch's metadata (no bindings: a device may offer 10). A rotated pair (d, d + half) is one
    /// thread's: the key's columns are taken in the order 0, half, 1, half + 1, … of each head, so a pair's two dot
    /// products finish in one workgroup.</summary>
    internal sealed record KvRows(int K, int V, GpuTensor Yk, GpuTensor Yv, float[]? Cos, float[]? Sin, long Half, long Heads, long D, long Row)
    {
        public bool Rotated => Half > 0;

        /// <summary>What the kernel key needs of it.</summary>
        public string Key => $"{K}|{V}|{D}|{Half}";

        /// <summary>Whether a projection kernel's launch can append: one row of f32 x, one product an output, K and V of
        /// heads × D columns (a rotated key: rotate-half over the whole head).</summary>
        public bool Fits(Projections.Plan plan, int rows, DType x) =>
            rows == 1 && plan.P == 1 && x == DType.Float32 && plan.Outputs[K].N == Heads * D && plan.Outputs[V].N == Heads * D && (!Rotated || D == 2 * Half);

        /// <summary>The first output column of the key (the outputs before it, side by side).</summary>
        public long KeyStart(Projections.Plan plan) => plan.Outputs.Take(K).Sum(o => o.N);

        /// <summary>Whether a rotated pair's two lane-order columns meet in one workgroup of
        /// <paramref name="columnsPerWorkgroup"/> columns: an even count, and the key starting at an even column.</summary>
        public bool PairsFit(Projections.Plan plan, long columnsPerWorkgroup) => !Rotated || columnsPerWorkgroup % 2 == 0 && KeyStart(plan) % 2 == 0;

        /// <summary>The cache output <paramref name="o"/> is written to (null: an output of its own).</summary>
        public GpuTensor? Cache(int o) => o == K ? Yk : o == V ? Yv : null;

        /// <summary>The caches (bound after the other outputs), and the metadata words from the kernel's own: the row
        /// written, the caches' row capacities, then the rotary tables.</summary>
        public void Bind(List<GpuTensor> list, Meta meta)
        {
            list.AddRange([Yk, Yv]);
            meta.Add(Row); meta.Add(Fused.Rows(Yk)); meta.Add(Fused.Rows(Yv));
            foreach (var v in Cos ?? []) meta.AddFloat(v);
            foreach (var v in Sin ?? []) meta.AddFloat(v);
        }

        /// <summary>The caches' bindings, the tables' reads from metadata word <paramref name="at"/> (where
        /// <see cref="Bind"/>'s words start), and with a rotated key <c>kvcol_</c>: the key column of lane-order column c
        /// (the key's range starts at output column <paramref name="kStart"/>).</summary>
        public void Declare(Wgsl w, int at, long kStart, long kColumns)
        {
            w.Out("yk", DType.Float32).Out("yv", DType.Float32);
            if (!Rotated) return;
            w.Decl($$"""
fn cs_(d: u32) -> f32 { return bitcast<f32>(md[{{at + 3}}u + d]); }
fn sn_(d: u32) -> f32 { return bitcast<f32>(md[{{at + 3 + D}}u + d]); }
fn kvcol_(c: u32) -> u32 {
  if (c < {{kStart}}u || c >= {{kStart + kColumns}}u) { return c; }
  let j = c - {{kStart}}u; let d = j % {{D}}u;
  return c - d + select({{Half}}u + d / 2u, d / 2u, (d & 1u) == 0u);
}
""");
        }

        /// <summary>WGSL storing output <paramref name="o"/>'s value where the thread of lane-order column <c>c</c> (key
        /// column, or output column, <c>j</c>) finishes it: <paramref name="code"/> makes <c>v</c> from <c>m0</c> and <c>j</c>. V's and an
        /// unrotated key's go to their cache rows; a rotated key's pair is finished by its first column, which runs
        /// <paramref name="neighbour"/> (statements leaving the next lane-order column's <c>m0</c> in <c>m0b</c>) and
        /// writes both rotated. Null for other outputs.</summary>
        public string? Store(int o, string code, string neighbour, long kStart, int at)
        {
            // Element j of the new row in a cache of the row capacity in md[at + capacity].
            string Row(int capacity) => $"((j / {D}u) * md[{at + capacity}u] + md[{at}u]) * {D}u + j % {D}u";
            if (o == V) return $"{code}      yv_st({Row(2)}, v);\n";
            if (o != K) return null;
            if (!Rotated) return $"{code}      yk_st({Row(1)}, v);\n";
            return $$"""
      if (((c - {{kStart}}u) & 1u) == 0u) {
      let ja = kvcol_(c) - {{kStart}}u;
      var ka = 0.0; var kb = 0.0;
      {
      let j = ja;
{{code}}      ka = v;
      }
{{neighbour}}      {
      let m0 = m0b;
      let j = ja + {{Half}}u;
{{code}}      kb = v;
      }
      let h = ja / {{D}}u; let d = ja % {{D}}u; let at = (h * md[{{at + 1}}u] + md[{{at}}u]) * {{D}}u + d;
      yk_st(at, ka * cs_(d) + (-kb) * sn_(d));
      yk_st(at + {{Half}}u, kb * cs_(d + {{Half}}u) + ka * sn_(d + {{Half}}u));
      }

""";
        }
    }

    /// <summary>A kernel and its grid for one row count (null in <see cref="Stacked.Launches"/>: the kernel does not apply).</summary>
    internal sealed record Launch(GpuPipeline Pipeline, long Units, long Columns, bool Consts, int Bindings, uint Gx, uint Gy);

    static readonly ConditionalWeakTable<Node, Stacked> Cache = new();

    static Stacked? Prepare(WebGpuPlatform g, NodeContext ctx, Projections.Plan plan, int opset, GpuTensor x, GpuTensor?[] ins)
    {
        var node = ctx.Node;
        int nw = plan.Weights.Length;
        var parts = new (Node Product, Tensor B, Tensor S, Tensor? Z)[nw];
        var sources = new List<Tensor?>();
        for (int i = 0; i < nw; i++)
        {
            var pn = plan.Products[Array.IndexOf(plan.ProductWeight, i)];
            if (pn.Inputs.Length is < 3 or > 4) return null;                    // bias or g_idx
            Tensor? Src(int k) => k < pn.Inputs.Length && pn.Inputs[k].Length > 0 && Array.IndexOf(node.Inputs, pn.Inputs[k]) is int at and >= 0 ? ins[at]?.Source : null;
            if (Src(1) is not { } b || Src(2) is not { } s) return null;
            var z = Src(3);
            if (pn.Inputs.Length == 4 && pn.Inputs[3].Length > 0 && z is null) return null;
            parts[i] = (pn, b, s, z);
            sources.AddRange([b, s, z]);
        }
        var gamma = plan.Norm ? ins[1]?.Source : null;
        if (plan.Norm && gamma is null) return null;
        var vectors = plan.Vectors.Select(v => ins[v]!.Source!).ToArray();
        sources.Add(gamma);
        sources.AddRange(vectors);
        if (Cache.TryGetValue(node, out var st) && st.Owner == g && st.LayoutAsked == g.MatVec.WeightLayout
            && st.Sources.Length == sources.Count && st.Sources.Zip(sources).All(p => ReferenceEquals(p.First, p.Second)))
            return st;
        var ws = parts.Select(p => NBitsWeight.Of(new NodeContext(p.Product, opset), x.DType, x.Shape, p.B, p.S, p.Z, false, null)).ToArray();
        var w0 = ws[0];
        if (ws.Any(w => w.Bits != 4 || w.K != w0.K || w.BlockSize != w0.BlockSize || (w.Zeros is null) != (w0.Zeros is null))) return null;
        if (parts.Any(p => p.S.DType != parts[0].S.DType)) return null;
        var int8 = parts.Select((p, i) => NBitsWeight.Int8Compute(p.Product, DType.Float32, ws[i], p.Z)).ToArray();
        if (int8.Distinct().Count() > 1) return null;
        bool byteZeros = ws.All(w => w.Zeros is { } zs && Array.TrueForAll(zs, v => v >= 0 && v <= 255 && v == MathF.Floor(v)));
        var kind = w0.Zeros is null ? MatMulNBits.ZeroKind.None : byteZeros ? MatMulNBits.ZeroKind.Bytes : MatMulNBits.ZeroKind.Floats;
        bool halfScales = parts.Select((p, i) => MatMulNBits.HalfScales(g, p.S, ws[i].Scales)).All(h => h);
        var rowAt = new long[nw];
        for (int i = 1; i < nw; i++) rowAt[i] = rowAt[i - 1] + ws[i - 1].N;
        Tensor[] keys = [Key(), Key(), Key(), Key()];
        float[] Concat(Func<NBitsWeight, float[]> f) => ws.SelectMany(f).ToArray();
        long vectorsAt = gamma is null ? 0 : (gamma.Length + 3) / 4 * 4;
        long rowWords = (long)w0.KBlocks * w0.BlobSize / 4;
        var panels = g.MatVec.Panels is { } pl && Q4Panels.Fits(rowWords, w0.BlockSize, kind, int8[0]) ? pl : null;
        float[] Blocks(float[] v) => panels?.PermuteBlocks<float>(v, w0.BlockSize / 8) ?? v;
        if (MatMulNBits.Packs(g, panels, kind, halfScales)) kind = MatMulNBits.ZeroKind.Packed;
        bool half = MatMulNBits.HalfNibbled(g, panels, int8[0]);
        st = new Stacked
        {
            Owner = g, Sources = [.. sources], Keys = keys, ZeroKind = kind, Int8 = int8[0], Panels = panels, LayoutAsked = g.MatVec.WeightLayout, HalfNibbles = half,
            K = w0.K, BlockSize = w0.BlockSize, KBlocks = w0.KBlocks, RowWords = rowWords, RowAt = rowAt, VectorsAt = vectorsAt,
            Words = g.Concatenated([keys[0], .. parts.Select(p => p.B)], () =>
            {
                var bytes = new byte[ws.Sum(w => (long)w.B.Length)];
                long at = 0;
                foreach (var w in ws) { w.B.CopyTo(bytes, at); at += w.B.Length; }
                var words = MemoryMarshal.Cast<byte, uint>(bytes);
                return new Tensor(DType.UInt32, [bytes.Length / 4], panels?.PermuteWords(words) ?? words.ToArray());
            }),
            // NOTE: scales are kept as f16 where the unfused kernel keeps them so (MatMulNBits.HalfScales).
            Scales = g.Concatenated([keys[1], .. parts.Select(p => p.S)], () => kind == MatMulNBits.ZeroKind.Packed
                ? MatMulNBits.PackParams(Blocks(Concat(w => w.Scales)), Blocks(Concat(w => w.Zeros!)))
                : halfScales
                ? new Tensor(DType.Float16, [ws.Sum(w => (long)w.Scales.Length)], Array.ConvertAll(Blocks(Concat(w => w.Scales)), v => (Half)v))
                : new Tensor(DType.Float32, [ws.Sum(w => (long)w.Scales.Length)], Blocks(Concat(w => w.Scales)))),
            Zeros = kind is MatMulNBits.ZeroKind.None or MatMulNBits.ZeroKind.Packed ? null : g.Concatenated([keys[2], .. parts.Select(p => p.Z!)], () =>
                kind == MatMulNBits.ZeroKind.Bytes ? MatMulNBits.PackBytes(Blocks(Concat(w => w.Zeros!))) : new Tensor(DType.Float32, [ws.Sum(w => (long)w.Zeros!.Length)], Concat(w => w.Zeros!))),
            // γ then the epilogue's vectors, read as vec4s (γ four lanes at a time as x is).
            Consts = gamma is null && vectors.Length == 0 ? null : g.Concatenated([keys[3], .. (gamma is null ? Array.Empty<Tensor>() : [gamma]), .. vectors], () =>
            {
                var all = new float[(vectorsAt + vectors.Sum(v => v.Length) + 3) / 4 * 4];
                if (gamma is not null) Projections.Floats(gamma).CopyTo(all, 0);
                // γ times the unit code's x scale (16^-(k mod 4), MatMulNBits.XScale): x·γ' is then the scaled x with
                // one product fewer a value, the same floats (a power of two commutes with rounding).
                for (long i = 0; i < (gamma?.Length ?? 0); i++) all[i] *= MatMulNBits.XScaleOf(i, half);
                long at = vectorsAt;
                foreach (var v in vectors) { Projections.Floats(v).CopyTo(all, at); at += v.Length; }
                return new Tensor(DType.Float32, [all.Length], all);
            }),
        };
        Cache.AddOrUpdate(node, st);
        // Each product run alone (prefill runs the body) reads its rows of the stacked buffers.
        for (int p = 0; p < plan.Products.Length; p++)
        {
            int i = plan.ProductWeight[p];
            if (plan.Products[p].Inputs.Length == parts[i].Product.Inputs.Length)
                MatMulNBits.Share(g, plan.Products[p], parts[i].B, parts[i].S, parts[i].Z, ws[i], rowAt[i], st.Words, st.Scales, st.Zeros, kind == MatMulNBits.ZeroKind.Bytes, panels, st.Keys);
        }
        return st;
    }

    static Tensor Key() => new(DType.UInt8, [1], new byte[1]);

    /// <summary>The outputs, or null when the kernel does not apply (the caller runs the body).</summary>
    /// <param name="kv">The KV append this dispatch also does (its outputs K and V are then the caches' views).</param>
    public static GpuTensor[]? Run(WebGpuPlatform g, NodeContext ctx, Projections.Plan plan, int opset, GpuTensor x, GpuTensor?[] ins, KvRows? kv = null)
    {
        long k = x.Shape[^1];
        long rowCount = x.Length / k;
        if (plan.Norm && (ins.Length < 2 || ins[1] is not { Source: { } gs } gm || gs.Length != k || gm.DType != x.DType || gm.Rank > x.Rank)) return null;
        foreach (var v in plan.Vectors) if (ins[v] is not { Source: not null } t || t.DType != x.DType || t.Rank > x.Rank) return null;
        var st = Prepare(g, ctx, plan, opset, x, ins);
        if (st is null || st.K != k) return null;
        if (rowCount > MatMul.MatVecMaxRows) return null;                     // prefill: the body runs (tiled MatMulNBits over views of the stack)
        int rows = (int)rowCount;
        bool a8 = st.Int8 && x.DType == DType.Float32 && x.Storage == GpuStorage.F32;
        if (kv is not null && (a8 || !kv.Fits(plan, rows, x.DType))) return null;
        float eps = ctx.Float("epsilon", 1e-6f);
        if (!st.Launches.TryGet(g.MatVec, (rows, x.Storage, a8, kv is not null), out var launch))
            launch = st.Launches.Add((rows, x.Storage, a8, kv is not null), MakeLaunch(g, ctx, plan, st, x, rows, a8, eps, kv));
        if (launch is null) return null;
        var qa = a8 ? MatMulNBits.QuantizeA(g, x, rows, st.K, st.BlockSize, plan.Norm ? ins[1] : null, eps) : null;
        var list = qa is null ? new List<GpuTensor>(launch.Bindings) { x } : [qa.Data];
        if (launch.Consts) list.Add(st.Consts!);
        list.Add(st.Words);
        list.Add(st.Scales);
        if (st.Zeros is not null) list.Add(st.Zeros);
        var ys = Projections.Outputs(g, plan, x, kv, list);
        var meta = new Meta();
        meta.Add(k); meta.Add(launch.Units); meta.Add(st.KBlocks); meta.Add(launch.Columns);
        if (qa is not null) meta.Add(qa.PairsAt);
        kv?.Bind(list, meta);                                                 // md[4..]
        g.NoteWeights(st.Words);
        g.LaunchGroups(launch.Pipeline, [.. list], meta, launch.Gx, launch.Gy);
        if (qa is not null) MatMulNBits.Free(g, qa);
        return ys;
    }

    /// <summary>The kernel for <paramref name="rows"/> rows of x under the platform's tuning, or null where it does not
    /// fit the device (workgroup memory, storage bindings).</summary>
    static Launch? MakeLaunch(WebGpuPlatform g, NodeContext ctx, Projections.Plan plan, Stacked st, GpuTensor x, int rows, bool a8, float eps, KvRows? kv)
    {
        long k = st.K;
        int P = plan.P, outs = plan.Outputs.Length;
        long columns = plan.Outputs.Sum(o => o.N);
        // int8 A: a unit is one block (its codes, scale and sum go together).
        int words = a8 ? st.BlockSize / 8 : st.Panels is not null ? 4 : g.MatVec.Q4UnitWords(st.RowWords, columns * P);
        long units = st.RowWords / words;
        bool vec = units * words * 8 == k;
        var lim = g.Device.Limits;
        var shape = g.MatVec.Q4(columns * P, units, lim.MaxInvocationsPerWorkgroup, g.SubgroupLanes, st.Panels is not null);
        if (a8 || st.Panels is not null) shape = shape with { SharedX = false };
        int T = shape.Threads, WG = shape.Workgroup, R = Math.Max(1, shape.Rows / P);
        int Slots(int r) => r * P * rows + (plan.Norm && !a8 ? rows : 0);
        while (R > 1 && (long)Slots(R) * WG * 4 > lim.MaxWorkgroupStorageBytes) R /= 2;
        if ((long)Slots(R) * WG * 4 > lim.MaxWorkgroupStorageBytes) return null;
        // NOTE: int8 A leaves γ to the quantize kernel; the consts are bound only where an epilogue reads them.
        bool consts = st.Consts is not null && (!a8 || plan.Vectors.Length > 0);
        int bindings = 1 + (consts ? 1 : 0) + 2 + (st.Zeros is null ? 0 : 1) + outs + 1;
        if (bindings > lim.MaxStorageBuffersPerStage) return null;
        if (kv is not null && !kv.PairsFit(plan, WG / T * R)) return null;
        var (gx, gy) = Wgsl.Grid(columns, WG / T * R, lim.MaxWorkgroupsPerDimension);
        // x staged in workgroup memory (q4-xs=1): chunks of units that fit beside the partial sums.
        int chunk = !shape.SharedX ? 0 : (int)Math.Min(units, (lim.MaxWorkgroupStorageBytes - (long)Slots(R) * WG * 4) / (rows * words * 2 * 16L));
        var layout = new MatVecShape(T, R, WG, chunk > 0, shape.Unroll, shape.Tree, shape.Subgroup);
        string kvKey = kv?.Key ?? "";
        var pipeline = g.Kernel(new WebGpuPlatform.KernelKey("projections_nbits", $"{rows}|{layout}|{words}|{vec}|{(int)x.DType}|{st.ZeroKind}|{(int)st.Scales.Storage}|{a8}|{g.MatVec.Q4Hoist}|{g.MatVec.Q4ZeroSum}|{st.Panels}|{st.HalfNibbles}|{kvKey}", ctx.Node),
            () => Code(plan, st, x, rows, layout, chunk, words, vec, eps, x.DType, a8, consts, g.MatVec.Q4Hoist, g.MatVec.Q4ZeroSum, kv),
            $"ProjectionsNBits_{outs}x{P}{(plan.Norm ? "_rms" : "")}{(a8 ? "_a8" : "")}{(kv is null ? "" : "_kv")}_t{T}c{R}_r{rows}");
        return new Launch(pipeline, units, columns, consts, bindings, gx, gy);
    }

    /// <summary>An epilogue's per-column constants (<see cref="Projections"/> writes <c>vecs_b[OFFSETu + j]</c>) read from
    /// the consts buffer, where they start at <paramref name="at"/>.</summary>
    static string Vectors(string code, long at)
    {
        var s = System.Text.RegularExpressions.Regex.Replace(code, @"vecs_b\[(\d+)u \+ j\]", m => $"cv_({long.Parse(m.Groups[1].Value) + at}u + j)");
        return s.Contains("vecs_b", StringComparison.Ordinal) ? throw new InvalidOperationException("projections: an epilogue reads vecs_b other than per column") : s;
    }

    /// <summary>Kernel text; meta words md[0] = K, md[1] = units per row, md[2] = blocks per row, md[3] = columns (with
    /// int8 A, md[4] = its pairs' word offset); <paramref name="consts"/>: γ and the epilogue's vectors are bound.</summary>
    static string Code(Projections.Plan plan, Stacked st, GpuTensor x, int M, MatVecShape layout, int chunk, int words, bool vec, float eps, DType dtype, bool a8, bool consts, bool hoist, bool zeroSum, KvRows? kv)
    {
        int P = plan.P, outs = plan.Outputs.Length, T = layout.Threads, R = layout.Rows, WG = layout.Workgroup, G = WG / T, UV = 8 * words, J = UV / 4;
        // int8 A: the quantize kernel applied the RMSNorm.
        bool norm = plan.Norm && !a8;
        var w = new Wgsl(WG);
        if (a8) MatMulNBits.DeclareA8(w, true);
        else BlockedMatVec.DeclareX(w, x, vec);
        int binding = 1;
        if (consts)
        {
            w.Reserve().Decl($"@group(0) @binding({binding}) var<storage, read> cv_b: array<vec4<f32>>;\nfn cv_(i: u32) -> f32 {{ return cv_b[i >> 2u][i & 3u]; }}");
            binding++;
        }
        MatMulNBits.DeclareWords(w, binding, Math.Min(words, 4));
        bool zeroSums = st.Panels is not null && !a8 && st.ZeroKind == MatMulNBits.ZeroKind.Bytes && zeroSum;
        bool half = st.HalfNibbles && !a8;
        string xScale = MatMulNBits.XScaleFor(half);
        MatMulNBits.DeclareScales(w, st.Scales, st.Panels);
        if (st.ZeroKind == MatMulNBits.ZeroKind.Bytes) w.In("zp", GpuStorage.U32);
        if (st.ZeroKind == MatMulNBits.ZeroKind.Floats) w.In("zp", GpuStorage.F32);
        for (int o = 0; o < outs; o++) if (kv?.Cache(o) is null) w.Out($"y{o}", dtype);
        w.Decl(MatMulNBits.ZeroFunction(st.ZeroKind));
        w.Decl(Elementwise.HelperFunctions);
        int normAt = R * P * M, slots = normAt + (norm ? M : 0);
        w.Decl($"var<workgroup> red: array<f32, {WG * slots}>;");
        bool shared = layout.SharedX;
        int cj = chunk * J;
        if (shared) w.Decl($"var<workgroup> xsh: array<vec4<f32>, {M * cj}>;");
        if (!vec && !a8) w.Decl("fn xg(m: u32, k: u32, K: u32) -> f32 { if (k < K) { return f32(x(m * K + k)); } return 0.0; }");
        if (norm && !vec) w.Decl("fn gm_(k: u32, K: u32) -> f32 { if (k < K) { return cv_(k); } return 0.0; }");
        string weights = MatMulNBits.Weights(words);
        // Stacked weight row of product q of a column c: its output's first column and its weight's first row.
        var starts = new long[outs];
        for (int o = 1; o < outs; o++) starts[o] = starts[o - 1] + plan.Outputs[o - 1].N;
        string Select(string c, Func<int, string> assign, string indent = "  ")
        {
            var sb = new StringBuilder();
            for (int o = 0; o < outs; o++)
            {
                string cond = o == outs - 1 ? "" : $"if ({c} < {starts[o] + plan.Outputs[o].N}u) ";
                sb.Append($"{indent}{(o == 0 ? "" : "else ")}{cond}{{ {assign(o)} }}\n");
            }
            return sb.ToString();
        }
        string RowOf(int o, int q, string c) => $"{st.RowAt[plan.ProductWeight[plan.Outputs[o].Products[q]]]}u + {c} - {starts[o]}u";
        var b = new StringBuilder();
        b.Append("  let K = md[0]; let U = md[1]; let KB = md[2]; let C = md[3];\n").Append(a8 ? "  let QP = md[4] / 4u;\n" : MatMulNBits.UnitPrologue + (half ? MatMulNBits.HalfPrologue : ""));
        b.Append($"  let t = lid.x % {T}u;\n  let wgi = wid.x + wid.y * nwg.x;\n  let cb = (wgi * {G}u + lid.x / {T}u) * {R}u;\n");
        // With a rotated key: lane-order column c of the key's range is key column (c even) d = c/2 of its head, (c odd)
        // half + c/2 (kvcol_).
        bool rot = kv is { Rotated: true };
        long kStart = kv is null ? 0 : starts[kv.K];
        kv?.Declare(w, 4, kStart, plan.Outputs[kv.K].N);
        for (int r = 0; r < R; r++)
        {
            b.Append(rot ? $"  let c{r} = kvcol_(min(cb + {r}u, C - 1u));\n" : $"  let c{r} = min(cb + {r}u, C - 1u);\n");
            for (int q = 0; q < P; q++) b.Append($"  var w{r}_{q} = 0u;\n");
            int rr = r;
            b.Append(Select($"c{r}", o => string.Concat(Enumerable.Range(0, P).Select(q => $"w{rr}_{q} = {RowOf(o, q, $"c{rr}")}; "))));
            for (int q = 0; q < P; q++) for (int m = 0; m < M; m++) b.Append($"  var a{r}_{q}_{m} = 0.0;\n");
        }
        if (norm) for (int m = 0; m < M; m++) b.Append($"  var s{m} = 0.0;\n");
        var b0 = b;
        var weightRows = new List<(string Row, Func<int, string> Acc)>();
        for (int r = 0; r < R; r++)
            for (int q = 0; q < P; q++)
            {
                int rr = r, qq = q;
                weightRows.Add(($"w{r}_{q}", m => $"a{rr}_{qq}_{m}"));
            }
        string rowsCode = a8 ? string.Concat(weightRows.Select(wr => MatMulNBits.UnitCodeA8(weights, wr.Row, wr.Acc, st.BlockSize, st.ZeroKind, M)))
            : st.Panels is { } pl ? string.Concat(weightRows.Select(wr => pl.UnitCode(weights, wr.Row, wr.Acc, st.BlockSize, st.ZeroKind, M, st.Scales.Storage, zeroSums, half)))
            : MatMulNBits.UnitRows(weights, weightRows, st.BlockSize, st.ZeroKind, words, M, hoist);
        // γ's four values from K index k (vec4 index k / 4 where x is read as vec4s).
        string Gamma(string name, string k, string indent) =>
            vec ? $"{indent}let {name} = cv_b[({k}) / 4u];\n" : $"{indent}let {name} = vec4<f32>({string.Join(", ", Enumerable.Range(0, 4).Select(i => $"gm_({k} + {i}u, K)"))});\n";
        string Load(string m, string k4) => BlockedMatVec.LoadX4(vec, m, k4);
        if (shared)
        {
            // Each chunk: every thread of the workgroup stages x·γ (scaled as the unit code reads it) and adds its Σ x²;
            // then the threads of a column read their units' x from workgroup memory (swizzled: no bank conflicts).
            b = b0.Append($$"""
  for (var c0 = 0u; c0 < U; c0 += {{chunk}}u) {
    workgroupBarrier();
    for (var e = lid.x; e < {{M * cj}}u; e += {{WG}}u) {
      let m = e / {{cj}}u;
      let el = e % {{cj}}u;
      let k = (c0 + el / {{J}}u) * {{UV}}u + (el % {{J}}u) * 4u;
      var v = vec4<f32>(0.0);
      if (k < K) {
        v = {{Load("m", "k")}};

""");
            if (norm)
            {
                for (int m = 0; m < M; m++) b.Append($"        if (m == {m}u) {{ s{m} += dot(v, v); }}\n");
                b.Append(Gamma("gv", "k", "        ")).Append("        v = v * gv;\n");
            }
            b.Append($$"""
      }
      xsh[{{BlockedMatVec.XshAt("m", "el", J, cj)}}] = v{{(norm ? "" : $" * {xScale}")}};
    }

""");
            b.Append(BlockedMatVec.StagedUnits(chunk, T, M, J, cj)).Append(rowsCode).Append("    }\n  }\n");
        }
        else
        {
            // A unit's vec4 j of x (and γ) from K index k0 + 4j, or where the panel layout puts it.
            string XAt(int jj) => st.Panels?.XAt(jj) ?? $"k0 + {4 * jj}u";
            b = new StringBuilder($"    let k0 = u * {UV}u;\n{st.Panels?.UnitHead}");
            if (a8) for (int m = 0; m < M; m++) b.Append(MatMulNBits.LoadA8(m, $"{m}u", st.BlockSize));
            if (norm)
                for (int jj = 0; jj < J; jj++) b.Append(Gamma($"g{jj}", XAt(jj), "    "));
            for (int m = 0; m < M && !a8; m++)
                for (int jj = 0; jj < J; jj++)
                {
                    b.Append($"    let xr{m}_{jj} = {Load($"{m}u", XAt(jj))};\n");
                    if (norm) b.Append($"    s{m} += dot(xr{m}_{jj}, xr{m}_{jj});\n");
                    b.Append($"    let xq{m}_{jj} = xr{m}_{jj} * {(norm ? $"g{jj}" : xScale)};\n");
                }
            if (half) for (int m = 0; m < M; m++) b.Append(st.Panels!.BlockSums(m, "PH"));
            else if (zeroSums) for (int m = 0; m < M; m++) b.Append(st.Panels!.BlockSums(m));
            b = b0.Append(BlockedMatVec.UnitLoop(T, layout.Unroll, b.Append(rowsCode).ToString()));
        }
        // Partials: slot (r·P + q)·M + m, then Σ x² of x row m at slot R·P·M + m; thread (group gi, t) writes red[slot·WG + gi·T + t].
        if (layout.ShuffleLanes > 0)
        {
            var sums = new List<string>();
            for (int r = 0; r < R; r++) for (int q = 0; q < P; q++) for (int m = 0; m < M; m++) sums.Add($"a{r}_{q}_{m}");
            // NOTE: staged x's Σ x² is summed over the whole workgroup below (each thread holds its own elements' part).
            if (norm && !shared) for (int m = 0; m < M; m++) sums.Add($"s{m}");
            b.Append(BlockedMatVec.ShuffleSums(layout.ShuffleLanes, sums));
        }
        for (int r = 0; r < R; r++) for (int q = 0; q < P; q++) for (int m = 0; m < M; m++)
            b.Append($"  red[{((r * P + q) * M + m) * WG}u + lid.x] = a{r}_{q}_{m};\n");
        if (norm) for (int m = 0; m < M; m++) b.Append($"  red[{(normAt + m) * WG}u + lid.x] = s{m};\n");
        b.Append("  workgroupBarrier();\n");
        int L = layout.ShuffleLanes;
        bool tree = layout.TreeSum && L == 0;
        if (tree) b.Append(BlockedMatVec.TreeSum(T, slots, WG));
        // A slot's total: the tree left it in the row's first entry, shuffles in every L-th, else the T partials are added here.
        string Total(string v, string slot, string pb = "pb") => BlockedMatVec.PartialsTotal(v, $"{slot} * {WG}u + {pb}", T, L > 0 ? L : tree ? T : 1, "      ");
        b.Append($"  for (var e = lid.x; e < {G * R}u; e += {WG}u) {{\n    let gi = e / {R}u; let r = e % {R}u;\n");
        b.Append($"    let c = (wgi * {G}u + gi) * {R}u + r;\n    if (c >= C) {{ continue; }}\n    let pb = gi * {T}u;\n");
        b.Append("    var o = 0u; var j = c;\n");
        b.Append(Select("c", o => $"o = {o}u; j = c - {starts[o]}u;", "    "));
        for (int m = 0; m < M; m++)
        {
            b.Append("    {\n");
            string inv = "";
            if (norm)
            {
                if (shared)
                    b.Append(tree ? $"      var ss = 0.0;\n      for (var i = 0u; i < {G}u; i++) {{ ss += red[{normAt + m}u * {WG}u + i * {T}u]; }}\n"
                        : $"      var ss = 0.0;\n      for (var i = 0u; i < {WG}u; i++) {{ ss += red[{normAt + m}u * {WG}u + i]; }}\n");
                else b.Append(Total("ss", $"{normAt + m}u"));
                b.Append($"      let rms = sqrt(ss / f32(K) + {Projections.Literal(eps)});\n");
                inv = " / rms";
            }
            for (int q = 0; q < P; q++)
            {
                b.Append(Total($"p{q}", $"((r * {P}u + {q}u) * {M}u + {m}u)"));
                b.Append($"      let m{q} = p{q}{inv};\n");
            }
            for (int o = 0; o < outs; o++)
            {
                var op = plan.Outputs[o];
                string code = Vectors(op.Code, st.VectorsAt);
                b.Append($"      {(o == 0 ? "" : "else ")}if (o == {o}u) {{\n");
                // A rotated key's neighbour column: the next slot of this workgroup's epilogue loop.
                string neighbour = $"      let e2 = e + 1u; let r2 = e2 % {R}u; let pb2 = (e2 / {R}u) * {T}u;\n"
                    + Total("p0b", $"((r2 * {P}u) * {M}u + {m}u)", "pb2") + $"      let m0b = p0b{inv};\n";
                b.Append(kv?.Store(o, code, neighbour, kStart, 4) ?? $"{code}      y{o}_st({m}u * {op.N}u + j, v);\n");
                b.Append("      }\n");
            }
            b.Append("    }\n");
        }
        b.Append("  }\n");
        return w.Build(b.ToString(), elementwise: false);
    }
}
