using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>MatMul and Gemm. Two kernels: a 64×64 tiled GEMM through workgroup memory (4×4 outputs per thread,
/// any strides, so transposes are free) and, for decode-shaped products (few rows) against a 2-D weight, a
/// matrix-vector kernel over the weight transposed once to [N,K]: for f32 weights a workgroup per 4 outputs, 64
/// threads reading each weight row contiguously (vec4 loads), tree-reduced in workgroup memory; packed f16 weights
/// (two per u32) through <see cref="BlockedMatVec"/>'s layout (<see cref="MatVecF16"/>).</summary>
public static class MatMul
{
    /// <summary>At most this many rows use the matrix-vector kernel (each row re-reads the weight).</summary>
    public const int MatVecMaxRows = 4;

    /// <summary>Threads per output of the matrix-vector kernels (f32 weights) for a row of <paramref name="loads"/>
    /// 16-byte loads: 64 (32 for rows under 64 loads). <c>bench matvec-sweep</c> on an H200 measured 64 best or within 9%
    /// of best on every decode shape of the 125M and 8B-class Llamas, where the earlier rule (about 4 loads a thread, up
    /// to 256 threads) lost up to 4× (4096×32000): with one output a workgroup, each workgroup also re-reads all of x.</summary>
    public static int MatVecThreads(long loads) => ThreadsPerOutput ?? (loads >= 64 ? 64 : 32);

    /// <summary><see cref="MatVecThreads"/> for f32 weights; packed f16 weights (8 halves a load): 32.</summary>
    public static int MatVecThreads(long loads, bool packed) => packed ? ThreadsPerOutput ?? 32 : MatVecThreads(loads);

    /// <summary>Threads per output for every matrix-vector kernel (a power of two, 32–256), set only by
    /// <c>bench matvec-sweep</c>; null: <see cref="MatVecThreads"/>'s rule.</summary>
    public static int? ThreadsPerOutput { get => _threadsPerOutput == 0 ? null : _threadsPerOutput; set => _threadsPerOutput = value ?? 0; }
    [ThreadStatic] static int _threadsPerOutput;      // per thread: a benchmark or test sets it for its own runs only

    /// <summary>Parts each weight row of the matrix-vector kernel is split into (1: none), set only by
    /// <c>bench matvec-sweep</c>: each part is a workgroup of its own writing partial sums, and a second dispatch adds
    /// them (with the residual or bias). Per thread, as <see cref="ThreadsPerOutput"/>.</summary>
    public static int SplitK { get => Math.Max(1, _splitK); set => _splitK = value; }
    [ThreadStatic] static int _splitK;

    public static void Register(Action<GpuOp> add)
    {
        add(new GpuOp("", "MatMul", 1, (g, ctx, ins) => [Run(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx))], FloatOnly));
        add(new GpuOp("", "Gemm", 1, (g, ctx, ins) =>
        {
            var a = GpuOps.In(ins, 0, ctx);
            var b = GpuOps.In(ins, 1, ctx);
            if (a.Rank != 2 || b.Rank != 2) throw ctx.Error($"Gemm needs 2-D A and B, got {ShapeUtil.Format(a.Shape)} and {ShapeUtil.Format(b.Shape)}");
            bool ta = ctx.Int("transA", 0) != 0, tb = ctx.Int("transB", 0) != 0;
            long m = ta ? a.Shape[1] : a.Shape[0], k = ta ? a.Shape[0] : a.Shape[1];
            long kb = tb ? b.Shape[1] : b.Shape[0], n = tb ? b.Shape[0] : b.Shape[1];
            if (k != kb) throw ctx.Error($"inner dimensions differ: A {ShapeUtil.Format(a.Shape)}{(ta ? "ᵀ" : "")}, B {ShapeUtil.Format(b.Shape)}{(tb ? "ᵀ" : "")}");
            var c = ins.Length > 2 ? ins[2] : null;
            var y = g.Empty(a.DType, [m, n]);
            long[] cStrides = [0, 0];
            if (c is not null)
            {
                if (ShapeUtil.Broadcast(c.Shape, [m, n]) is not [var bm, var bn] || bm != m || bn != n)
                    throw ctx.Error($"C {ShapeUtil.Format(c.Shape)} does not broadcast to [{m},{n}]");
                cStrides = ShapeUtil.BroadcastStrides(c.Shape, [m, n]);
            }
            Tiled(g, a, b, c, y, m, n, k, [], [], [],
                ta ? (1, m) : (k, 1), tb ? (1, k) : (n, 1), (cStrides[0], cStrides[1]), ctx.Float("alpha", 1f), ctx.Float("beta", 1f), "Gemm");
            return [y];
        }, FloatOnly));
    }

    static string? FloatOnly(Tapml.Platforms.NodeContext ctx, IReadOnlyList<Tapml.Ir.TypeRef?> t) =>
        t.Count > 0 && t[0] is { } a && a.ElemType is not (DType.Float32 or DType.Float16 or DType.BFloat16)
            ? $"{ctx.Node.OpType} on {DTypes.Name(a.ElemType)} is not implemented on webgpu (floats only)" : null;

    static GpuTensor Run(WebGpuPlatform g, Tapml.Platforms.NodeContext ctx, GpuTensor a, GpuTensor b)
    {
        // numpy matmul: 1-D A gets a leading 1, 1-D B a trailing 1 (both removed from the result).
        var ash = a.Rank == 1 ? new[] { 1L, a.Shape[0] } : a.Shape;
        var bsh = b.Rank == 1 ? new[] { b.Shape[0], 1L } : b.Shape;
        long m = ash[^2], k = ash[^1], n = bsh[^1];
        if (bsh[^2] != k) throw ctx.Error($"inner dimensions differ: {ShapeUtil.Format(a.Shape)} × {ShapeUtil.Format(b.Shape)}");
        var batch = ShapeUtil.Broadcast(ash[..^2], bsh[..^2]);
        var outShape = batch.Concat(a.Rank == 1 ? [] : new[] { m }).Concat(b.Rank == 1 ? [] : new[] { n }).ToArray();
        var y = g.Empty(a.DType, outShape);
        if (y.Length == 0) return y;
        if (k == 0) return ShapeOps.Fill(g, a.DType, outShape, 0);
        long rows = ShapeUtil.Size(batch) * m;
        var aB = ShapeUtil.BroadcastStrides(ash[..^2], batch).Select(s => s * m * k).ToArray();
        // A weight (an upload of a 2-D tensor) is read transposed: [N,K] rows contiguous.
        bool weight = b.Rank == 2 && b.Source is not null && b.Storage is GpuStorage.F32 or GpuStorage.F16x2;
        if (weight)
        {
            var bt = g.TransposedWeight(b);
            bool contiguousA = ash[..^2].SequenceEqual(batch);
            if (contiguousA && (rows <= MatVecMaxRows || g.Skinny.Takes(rows, bt.Storage, k))) MatVec(g, a, bt, y, rows, n, k, source: b.Source);
            else Tiled(g, a, bt, null, y, m, n, k, batch, aB, new long[batch.Length], (k, 1), (1, k), (0, 0), 1f, 0f, "MatMul");
            return y;
        }
        var bBatch = ShapeUtil.BroadcastStrides(bsh[..^2], batch).Select(s => s * k * n).ToArray();
        Tiled(g, a, b, null, y, m, n, k, batch, aB, bBatch, (k, 1), (n, 1), (0, 0), 1f, 0f, "MatMul");
        return y;
    }

    /// <summary>x·W + r in one matrix-vector dispatch (r added in the epilogue), or null when that kernel does not
    /// apply (W not a 2-D weight, more rows than <see cref="MatVecMaxRows"/>, r neither of the product's shape nor a
    /// [N] bias broadcast to every row, non-f32).</summary>
    public static GpuTensor? MatVecAdd(WebGpuPlatform g, GpuTensor a, GpuTensor b, GpuTensor r)
    {
        if (a.Rank < 2 || b.Rank != 2 || b.Source is null || b.Storage is not (GpuStorage.F32 or GpuStorage.F16x2)) return null;
        if (a.DType != DType.Float32 || a.Storage != GpuStorage.F32 || r.DType != DType.Float32 || r.Storage != GpuStorage.F32) return null;
        long k = a.Shape[^1], n = b.Shape[1];
        if (b.Shape[0] != k || k == 0) return null;
        long rows = a.Length / k;
        var outShape = a.Shape[..^1].Append(n).ToArray();
        // r is the product's shape (a residual) or one row of N broadcast to every row (a bias).
        bool bias = r.Length == n && r.Rank <= outShape.Length && r.Shape.Take(r.Rank - 1).All(d => d == 1) && (r.Rank == 0 ? n == 1 : r.Shape[^1] == n);
        if (rows > MatVecMaxRows && !g.Skinny.Takes(rows, b.Storage, k) || rows == 0 || !(bias || ShapeUtil.SameShape(r.Shape, outShape))) return null;
        var y = g.Empty(DType.Float32, outShape);
        MatVec(g, a, g.TransposedWeight(b), y, rows, n, k, r, bias, b.Source);
        return y;
    }

    /// <summary>The metadata both tiled kernels read: md[0] = |y|, md[1..3] = M, N, K, md[4..9] = the (row, col) strides
    /// of A, B and C, md[10..11] = alpha, beta, then the batch shape and A's and B's batch strides (their offsets returned).</summary>
    internal static (Meta Meta, int ShapeAt, int AAt, int BAt) TiledMeta(GpuTensor y, long m, long n, long k, long[] batch, long[] aBatch, long[] bBatch,
        (long R, long C) sa, (long R, long C) sb, (long R, long C) sc, float alpha, float beta)
    {
        var meta = new Meta();
        meta.Add(y.Length);
        meta.Add(m); meta.Add(n); meta.Add(k);
        meta.Add(sa.R); meta.Add(sa.C); meta.Add(sb.R); meta.Add(sb.C); meta.Add(sc.R); meta.Add(sc.C);
        meta.AddFloat(alpha); meta.AddFloat(beta);
        return (meta, meta.AddAll(batch), meta.AddAll(aBatch), meta.AddAll(bBatch));
    }

    /// <summary>y[b] = alpha·A[b]·B[b] + beta·C for a batch of [M,K]×[K,N] with element strides
    /// (row, col) for A and B; batches addressed through broadcast batch strides.</summary>
    internal static void Tiled(WebGpuPlatform g, GpuTensor a, GpuTensor b, GpuTensor? c, GpuTensor y, long m, long n, long k,
        long[] batch, long[] aBatch, long[] bBatch, (long R, long C) sa, (long R, long C) sb, (long R, long C) sc, float alpha, float beta, string label)
    {
        if (MatMulTiled.TryRun(g, a, b, c, y, m, n, k, batch, aBatch, bBatch, sa, sb, sc, alpha, beta, label)) return;
        long batches = ShapeUtil.Size(batch);
        if (batches > g.Device.Limits.MaxWorkgroupsPerDimension) throw new TapmlException($"webgpu: {label} batch of {batches} is over maxComputeWorkgroupsPerDimension");
        var (meta, shapeAt, aAt, bAt) = MatMul.TiledMeta(y, m, n, k, batch, aBatch, bBatch, sa, sb, sc, alpha, beta);
        int r = batch.Length;
        string cterm = c is null ? "" : " + bitcast<f32>(md[11]) * c(gm * md[8] + gn * md[9])";
        string body = Wgsl.Offsets("wid.z", r, shapeAt, ("a", aAt, -1), ("b", bAt, -1)) + $$"""
  let M = md[1]; let N = md[2]; let K = md[3];
  let abase = u32(o_a); let bbase = u32(o_b);
  let tx = lid.x % 16u; let ty = lid.x / 16u;
  let row0 = wid.y * 64u; let col0 = wid.x * 64u;
  var acc: array<f32, 16>;
  for (var k0 = 0u; k0 < K; k0 += 16u) {
    for (var l = 0u; l < 4u; l++) {
      let e = lid.x + l * 256u;
      let am = e / 16u; let ak = e % 16u;
      let gm = row0 + am; let gk = k0 + ak;
      var av = 0.0;
      if (gm < M && gk < K) { av = f32(a(abase + gm * md[4] + gk * md[5])); }
      As[ak * 64u + am] = av;
      let bk = e / 64u; let bn = e % 64u;
      let gk2 = k0 + bk; let gn = col0 + bn;
      var bv = 0.0;
      if (gk2 < K && gn < N) { bv = f32(b(bbase + gk2 * md[6] + gn * md[7])); }
      Bs[bk * 64u + bn] = bv;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 16u; kk++) {
      let a0 = As[kk * 64u + ty * 4u]; let a1 = As[kk * 64u + ty * 4u + 1u];
      let a2 = As[kk * 64u + ty * 4u + 2u]; let a3 = As[kk * 64u + ty * 4u + 3u];
      for (var cc = 0u; cc < 4u; cc++) {
        let bv = Bs[kk * 64u + tx * 4u + cc];
        acc[cc] += a0 * bv; acc[4u + cc] += a1 * bv; acc[8u + cc] += a2 * bv; acc[12u + cc] += a3 * bv;
      }
    }
    workgroupBarrier();
  }
  let ybase = wid.z * M * N;
  for (var rr = 0u; rr < 4u; rr++) {
    for (var cc = 0u; cc < 4u; cc++) {
      let gm = row0 + ty * 4u + rr; let gn = col0 + tx * 4u + cc;
      if (gm < M && gn < N) { y_st(ybase + gm * N + gn, bitcast<f32>(md[10]) * acc[rr * 4u + cc]{{cterm}}); }
    }
  }
""";
        var key = new WebGpuPlatform.KernelKey("tiled", $"{r}|{(int)a.Storage}|{(int)b.Storage}|{c?.Storage.ToString() ?? "-"}|{(int)y.DType}");
        g.LaunchGroups(key, () =>
        {
            var w = new Wgsl(256).In("a", a).In("b", b);
            if (c is not null) w.In("c", c);
            w.Out("y", y.DType);
            w.Decl("var<workgroup> As: array<f32, 1024>;\nvar<workgroup> Bs: array<f32, 1024>;");
            return w.Build(body, elementwise: false);
        }, $"{label}_tiled_b{r}{(c is null ? "" : "_c")}", c is null ? [a, b, y] : [a, b, c, y], meta,
            (uint)((n + 63) / 64), (uint)((m + 63) / 64), (uint)batches);
    }

    /// <summary>y[r, j] = Σ_k x[r, k]·wt[j, k] (+ res[r, j]) for a few rows r. <c>T</c> threads per output (32–256 by
    /// row length; 32 for packed f16: 8 halves per load), 256 per workgroup; each thread strides the row in 16-byte
    /// loads of the weight and of x (when x is f32 and K a multiple of 4), every weight element read once for all
    /// rows; partial sums tree-reduced in workgroup memory.</summary>
    static void MatVec(WebGpuPlatform g, GpuTensor x, GpuTensor wt, GpuTensor y, long rows, long n, long k, GpuTensor? res = null, bool bias = false, Tensor? source = null)
    {
        var meta = new Meta();
        meta.Add(n); meta.Add(k);                   // the row count is baked into the kernel
        bool packed = wt.Storage == GpuStorage.F16x2;
        bool vec = packed ? k % 8 == 0 : k % 4 == 0;
        if (packed && vec)
        {
            MatVecF16(g, x, wt, y, rows, n, k, res, bias, source, meta);
            return;
        }
        if (rows > MatVecMaxRows)
        {
            MatMulSkinny.Run(g, x, wt, y, rows, n, k, res, bias);
            return;
        }
        bool xvec = vec && x.Storage == GpuStorage.F32;
        int per = packed && vec ? 8 : vec ? 4 : 1;
        int t = MatVecThreads(k / per, packed);
        int wg = Math.Min(256, g.Device.Limits.MaxInvocationsPerWorkgroup);
        t = Math.Min(t, wg);
        int outsPerGroup = wg / t;
        // NOTE: the key and label strings are made once per variant, not per call (a decode step runs ~25 of these).
        var (key, label) = MatVecNames.GetOrAdd((packed, vec, xvec, t, wg, rows, x.Storage, y.DType, res is not null, bias), v =>
            ($"{v.Packed}|{v.Vec}|{v.XVec}|{v.T}|{v.Wg}|{v.Rows}|{v.X}|{v.Y}|{v.Res}|{v.Bias}",
             $"MatVec{(v.Packed ? "_f16" : "")}{(v.Vec ? "_v" : "")}_t{v.T}{(v.Res ? "_add" : "")}"));
        var (gx, gy) = Wgsl.Grid(n, outsPerGroup, g.Device.Limits.MaxWorkgroupsPerDimension);
        g.NoteWeights(wt);
        long loads = k / per;
        int splits = (int)Math.Clamp(SplitK, 1, Math.Max(1, loads / t));
        if (splits == 1)
        {
            g.LaunchGroups(new WebGpuPlatform.KernelKey("matvec", key), () => MatVecCode(x, y, packed, vec, xvec, per, t, wg, (int)rows, res is not null, bias, 1),
                label, res is null ? [x, y, wt] : [x, y, wt, res], meta, gx, gy);
            return;
        }
        // Split rows: part s of every row in workgroup z = s, partial sums [splits, rows, N], then their sum (+ r).
        meta.Add((loads + splits - 1) / splits);
        var part = g.Empty(DType.Float32, [splits * rows * n]);
        g.LaunchGroups(new WebGpuPlatform.KernelKey("matvec_split", key), () => MatVecCode(x, part, packed, vec, xvec, per, t, wg, (int)rows, false, false, splits),
            label + "_split", [x, part, wt], meta, gx, gy, (uint)splits);
        SumParts(g, part, splits, rows * n, n, y, 0, bias ? res : null, bias ? null : res);
        g.Free(part);
    }

    /// <summary>The second kernel of a split matrix-vector product: <c>y[at + i] = (Σ_s part[s·count + i] + bias[i mod n])
    /// + residual[at + i]</c> for i below <paramref name="count"/> (bias, residual optional; the cpu reference's order).</summary>
    internal static void SumParts(WebGpuPlatform g, GpuTensor part, int splits, long count, long n, GpuTensor y, long at, GpuTensor? bias, GpuTensor? residual)
    {
        var cm = new Meta();
        cm.Add(count); cm.Add(n); cm.Add(splits); cm.Add(at);
        string sum = bias is null ? "acc" : "acc + bias(i % md[1])";
        if (residual is not null) sum = $"({sum}) + res(md[3] + i)";
        g.Launch(new WebGpuPlatform.KernelKey("matvec_sum", $"{bias is not null}|{residual is not null}|{(int)y.DType}|{(int)(bias?.Storage ?? GpuStorage.F32)}|{(int)(residual?.Storage ?? GpuStorage.F32)}"), () =>
        {
            var w = new Wgsl(g.Workgroup).In("pt", part);
            if (bias is not null) w.In("bias", bias);
            if (residual is not null) w.In("res", residual);
            return w.Out("y", y.DType).Build($$"""
  if (i < md[0]) {
    var acc = 0.0;
    for (var s = 0u; s < md[2]; s++) { acc += pt(s * md[0] + i); }
    y_st(md[3] + i, {{sum}});
  }
""");
        }, "MatVecSum", [part, .. (bias is null ? Array.Empty<GpuTensor>() : [bias]), .. (residual is null ? Array.Empty<GpuTensor>() : [residual]), y], cm, count);
    }

    /// <summary>Packed f16 weights [N, K] (K a multiple of 8): <see cref="BlockedMatVec"/>'s layout from the platform's
    /// <see cref="MatVecTuning"/>, one 16-byte load (8 halves) a unit. Halves are widened by <c>unpack2x16float</c>, or
    /// where the tuning asks for it by bit moves — a half's exponent and mantissa shifted into an f32's, times 2^112, is
    /// the same value, subnormals included — unless the weight holds an infinity or NaN (which the bit moves would not keep).</summary>
    static void MatVecF16(WebGpuPlatform g, GpuTensor x, GpuTensor wt, GpuTensor y, long rows, long n, long k, GpuTensor? res, bool bias, Tensor? source, Meta meta)
    {
        long units = k / 8;
        bool xvec = x.Storage == GpuStorage.F32;
        var shape = rows > MatVecMaxRows ? g.Skinny.Shape(n, units, (int)rows, g.Device.Limits.MaxInvocationsPerWorkgroup, packed: true) : g.MatVec.F16(n, units, g.Device.Limits.MaxInvocationsPerWorkgroup, g.SubgroupLanes);
        bool native = g.MatVec.F16Native ?? true;
        if (!native && (source is null || HasNonFinite(source))) native = true;
        meta.Add(units);
        var (gx, gy) = BlockedMatVec.Grid(g, n, shape);
        g.NoteWeights(wt);
        var (key, label) = F16Names.GetOrAdd((shape, native, xvec, rows, x.Storage, y.DType, res is not null, bias), v =>
            ($"{v.Shape}|{v.Native}|{v.XVec}|{v.Rows}|{v.X}|{v.Y}|{v.Res}|{v.Bias}", $"MatVec_f16_t{v.Shape.Threads}r{v.Shape.Rows}{(v.Res ? "_add" : "")}"));
        g.LaunchGroups(new WebGpuPlatform.KernelKey("matvec_f16", key), () =>
        {
            var w = new Wgsl(shape.Workgroup);
            BlockedMatVec.DeclareX(w, x, xvec);
            w.Out("y", y.DType);
            w.Reserve().Decl("@group(0) @binding(2) var<storage, read> wt_b: array<vec4<u32>>;");
            if (res is not null) w.In("res", res);
            string Row(int r)
            {
                string load = $"      let wv = wt_b[row{r} * U + u];\n";
                if (native)
                    return $"    {{\n{load}      let lo = vec4<f32>(unpack2x16float(wv.x), unpack2x16float(wv.y));\n      let hi = vec4<f32>(unpack2x16float(wv.z), unpack2x16float(wv.w));\n" +
                        string.Concat(Enumerable.Range(0, (int)rows).Select(m => $"      a{r}_{m} += dot(lo, xq{m}_0) + dot(hi, xq{m}_1);\n")) + "    }\n";
                // lo: halves 0, 2, 4, 6 (the low half of each word); hi: halves 1, 3, 5, 7.
                return $"    {{\n{load}      let lo = bitcast<vec4<f32>>(((wv << vec4<u32>(13u)) & EM) | ((wv << vec4<u32>(16u)) & SM)) * H112;\n" +
                       "      let hi = bitcast<vec4<f32>>(((wv >> vec4<u32>(3u)) & EM) | (wv & SM)) * H112;\n" +
                       string.Concat(Enumerable.Range(0, (int)rows).Select(m => $"      a{r}_{m} += dot(lo, xe{m}) + dot(hi, xo{m});\n")) + "    }\n";
            }
            var f = new BlockedMatVec.Format
            {
                UnitValues = 8,
                Prologue = native ? "" : "  let EM = vec4<u32>(268427264u);\n  let SM = vec4<u32>(2147483648u);\n  let H112 = bits_(2004877312u);\n",
                PerUnit = native ? null : m => $"    let xe{m} = vec4<f32>(xq{m}_0.x, xq{m}_0.z, xq{m}_1.x, xq{m}_1.z);\n    let xo{m} = vec4<f32>(xq{m}_0.y, xq{m}_0.w, xq{m}_1.y, xq{m}_1.w);\n",
                Row = Row,
                Store = (m, row, sum) => $"y_st({m}u * N + {row}, {sum}{(res is null ? "" : bias ? $" + res({row})" : $" + res({m}u * N + {row})")});",
            };
            return w.Build(BlockedMatVec.Body(w, f, shape, (int)rows, xvec, g.Device.Limits.MaxWorkgroupStorageBytes), elementwise: false);
        }, label, res is null ? [x, y, wt] : [x, y, wt, res], meta, gx, gy);
    }

    static readonly System.Collections.Concurrent.ConcurrentDictionary<(MatVecShape Shape, bool Native, bool XVec, long Rows, GpuStorage X, DType Y, bool Res, bool Bias),
        (string Key, string Label)> F16Names = new();

    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Tensor, object> NonFinite = new();

    /// <summary>Whether an f16 weight holds an infinity or NaN (exponent bits all ones); checked once per weight.</summary>
    static bool HasNonFinite(Tensor t)
    {
        if (NonFinite.TryGetValue(t, out var known)) return (bool)known;
        bool any = true;
        if (t.Data is Half[] h)
        {
            var bits = System.Runtime.InteropServices.MemoryMarshal.Cast<Half, ushort>(h.AsSpan());
            var mask = new System.Numerics.Vector<ushort>(0x7C00);
            int i = 0;
            any = false;
            for (; i + System.Numerics.Vector<ushort>.Count <= bits.Length && !any; i += System.Numerics.Vector<ushort>.Count)
                any = System.Numerics.Vector.EqualsAny(new System.Numerics.Vector<ushort>(bits[i..]) & mask, mask);
            for (; i < bits.Length && !any; i++) any = (bits[i] & 0x7C00) == 0x7C00;
        }
        NonFinite.AddOrUpdate(t, any);
        return any;
    }

    static readonly System.Collections.Concurrent.ConcurrentDictionary<(bool Packed, bool Vec, bool XVec, int T, int Wg, long Rows, GpuStorage X, DType Y, bool Res, bool Bias),
        (string Key, string Label)> MatVecNames = new();

    static string MatVecCode(GpuTensor x, GpuTensor y, bool packed, bool vec, bool xvec, int per, int t, int wg, int rows, bool res, bool bias, int splits)
    {
        // NOTE: bindings: x=0, y=1, wt=2, res=3 when there is one, then meta; x and the weight are declared by hand for vector loads. The rows are
        // unrolled (one accumulator each, no dynamically indexed private array: drivers spill those to memory).
        var w = new Wgsl(wg);
        if (xvec) w.Reserve().Decl("@group(0) @binding(0) var<storage, read> xv_b: array<vec4<f32>>;");
        else w.In("x", x);
        w.Out("y", y.DType);
        string elem = packed ? (vec ? "vec4<u32>" : "u32") : (vec ? "vec4<f32>" : "f32");
        string xs(string at) => xvec ? $"xv_b[({at}) / 4u]" : $"vec4<f32>(f32(x({at})), f32(x({at} + 1u)), f32(x({at} + 2u)), f32(x({at} + 3u)))";
        string Load(int r) => (packed, vec) switch
        {
            (false, true) => $"    p{r} += dot(wv, {xs($"{r}u * K + kk * 4u")});\n",
            (true, true) => $"    p{r} += dot(w01, {xs($"{r}u * K + kk * 8u")}) + dot(w23, {xs($"{r}u * K + kk * 8u + 4u")});\n",
            (_, false) => $"    p{r} += wv * f32(x({r}u * K + kk));\n",
        };
        string fetch = (packed, vec) switch
        {
            (true, true) => $"    let wv = wt_b[wrow * (K / {per}u) + kk];\n    let w01 = vec4<f32>(unpack2x16float(wv.x), unpack2x16float(wv.y));\n    let w23 = vec4<f32>(unpack2x16float(wv.z), unpack2x16float(wv.w));\n",
            (true, false) => "    let e = wrow * K + kk;\n    let wv = unpack2x16float(wt_b[e >> 1u])[e & 1u];\n",
            _ => $"    let wv = wt_b[wrow * (K / {per}u) + kk];\n",
        };
        var rs = Enumerable.Range(0, rows).ToArray();
        w.Decl($"@group(0) @binding(2) var<storage, read> wt_b: array<{elem}>;\nvar<workgroup> red: array<f32, {wg * rows}>;" +
               (res ? "\n@group(0) @binding(3) var<storage, read> res_b: array<f32>;" : ""));
        string plus(int r) => !res ? "" : bias ? " + res_b[wrow]" : $" + res_b[{r}u * N + wrow]";
        string body = $$"""
  let N = md[0]; let K = md[1];
  let t = lid.x % {{t}}u;
  let slot = lid.x / {{t}}u;
  let wrow = (wid.x + wid.y * nwg.x) * {{wg / t}}u + slot;
{{string.Concat(rs.Select(r => $"  var p{r} = 0.0;\n"))}}
  if (wrow < N) {
    for (var kk = {{(splits == 1 ? "t" : "wid.z * md[2] + t")}}; kk < {{(splits == 1 ? $"K / {per}u" : $"min(K / {per}u, (wid.z + 1u) * md[2])")}}; kk += {{t}}u) {
{{fetch}}{{string.Concat(rs.Select(Load))}}    }
  }
{{string.Concat(rs.Select(r => $"  red[{r * wg}u + lid.x] = p{r};\n"))}}
  workgroupBarrier();
  for (var s = {{t / 2}}u; s > 0u; s >>= 1u) {
    if (t < s) {
{{string.Concat(rs.Select(r => $"      red[{r * wg}u + lid.x] += red[{r * wg}u + lid.x + s];\n"))}}    }
    workgroupBarrier();
  }
  if (t == 0u && wrow < N) {
{{string.Concat(rs.Select(r => $"    y_st({(splits == 1 ? "" : $"wid.z * {rows}u * N + ")}{r}u * N + wrow, red[{r * wg}u + lid.x]{plus(r)});\n"))}}  }
""";
        string code = w.Build(body, elementwise: false);
        return code.Replace("@binding(2) var<storage, read> md", $"@binding({(res ? 4 : 3)}) var<storage, read> md");
    }
}
