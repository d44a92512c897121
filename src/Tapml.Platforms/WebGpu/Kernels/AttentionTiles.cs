using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Flash attention for prompts, second layout (<c>webgpu?attn-tile=v2</c>, the default): a workgroup of 256
/// threads per (batch·head, tile of 16 query rows), 16 threads a row. A tile of BC keys (64, or 32 where workgroup memory
/// is small) is loaded into workgroup memory as vec4 rows; thread (r, c) scores query r against keys c, c+16, … (one q
/// vec4 load serves BC/16 keys), the row's max comes from the 16 threads' maxima, each thread turns its own scores into
/// probabilities, and after the V tile replaces the K tile thread (r, c) accumulates output dims 4c…4c+3 (+64, …) as
/// vec4. Against the first layout (16 keys a tile, one score a thread, scalar workgroup reads, every thread recomputing
/// its row's 16 exponentials): 4× fewer barriers a key, 4–16 FMAs a workgroup load instead of 1–2. Same metadata as the
/// row kernel (md[0..22], rotary at md[25..33]).</summary>
static class AttentionTiles
{
    const int BR = 16, TC = 16;

    /// <summary>Records the dispatch; false when the head dims, the workgroup size or workgroup memory do not fit (the caller
    /// runs another kernel).</summary>
    public static bool Run(WebGpuPlatform g, GpuTensor q, GpuTensor k, GpuTensor v, GpuTensor? mask, GpuTensor? rcos, GpuTensor? rsin, Meta meta,
        long heads, long s, long d, long dv, string maskKind, GpuTensor y)
    {
        var lim = g.Device.Limits;
        int dmax = Math.Max(d, dv) <= 64 ? 64 : Math.Max(d, dv) <= 128 ? 128 : 0;
        if (dmax == 0 || d % 4 != 0 || dv % 4 != 0 || lim.MaxInvocationsPerWorkgroup < BR * TC || lim.MaxWorkgroupSizeX < BR * TC) return false;
        int stride = dmax / 4 + 1;                              // vec4s a row; NOTE: padded so a row's threads read distinct banks
        int Bytes(int bc) => (BR * stride + bc * stride) * 16 + (BR * bc + BR * TC) * 4;
        int bc = Bytes(64) <= lim.MaxWorkgroupStorageBytes ? 64 : Bytes(32) <= lim.MaxWorkgroupStorageBytes ? 32 : 0;
        if (bc == 0) return false;
        int keys = bc / TC, dv4 = dmax / 4 / TC;               // scores and output vec4s a thread
        long tiles = (s + BR - 1) / BR;
        var (gx, gy) = Wgsl.Grid(heads * tiles, 1, lim.MaxWorkgroupsPerDimension);
        bool rot = rcos is not null;
        string QAt(string e) => rot
            ? Fused.RotatedValue("q", $"qb + {e}", e, "md[25]", $"rc(bb * md[26] + hh * md[27] + ii * md[28] + ({e}) * md[29])", $"rs(bb * md[30] + hh * md[31] + ii * md[32] + ({e}) * md[33])")
            : $"q(qb + {e})";
        string Q4(string e) => $"vec4<f32>({string.Join(", ", Enumerable.Range(0, 4).Select(c => QAt($"{e} + {c}u")))})";
        int nt = BR * TC;
        g.LaunchGroups(new WebGpuPlatform.KernelKey("attention_tiles", $"{maskKind}|{rot}|{dmax}|{bc}"), () =>
        {
            var w = Fused.AttentionBindings(nt, q, k, v, mask, rcos, rsin);
            w.Decl($"var<workgroup> qs: array<vec4<f32>, {BR * stride}>;\nvar<workgroup> kvs: array<vec4<f32>, {bc * stride}>;\n" +
                   $"var<workgroup> ps: array<f32, {BR * bc}>;\nvar<workgroup> rm: array<f32, {BR * TC}>;");
            // NOTE: guarded reads through a helper (key rows past T are zeros); D and Dv are multiples of 4.
            w.Decl("fn kg(i: u32, ok: bool) -> f32 { if (ok) { return k(i); } return 0.0; }\nfn vg(i: u32, ok: bool) -> f32 { if (ok) { return v(i); } return 0.0; }");
            var b = new StringBuilder();
            b.Append(Fused.TiledAttentionHead(BR, TC)).Append('\n');
            b.Append($$"""
  let D4 = D / 4u; let Dv4 = Dv / 4u;
  for (var x = lid.x; x < {{BR * (dmax / 4)}}u; x += {{nt}}u) {
    let rr = x / {{dmax / 4}}u; let e = (x % {{dmax / 4}}u) * 4u; let ii = i0 + rr;
    var qv = vec4<f32>(0.0);
    if (ii < S && e < D) { let qb = bb * md[14] + hh * md[15] + ii * md[16]; qv = {{Q4("e")}}; }
    qs[rr * {{stride}}u + x % {{dmax / 4}}u] = qv;
  }
  let kb = bb * md[17] + kvh * md[18]; let ks = md[19];
  let vb = bb * md[20] + kvh * md[21]; let vs = md[22];
  let mo = bb * md[10] + hh * md[11] + min(i, S - 1u) * md[12];
  var m = ninf;
  var l = 0.0;

""");
            for (int a = 0; a < dv4; a++) b.Append($"  var acc{a} = vec4<f32>(0.0);\n");
            b.Append($$"""
  for (var j0 = 0u; j0 < T; j0 += {{bc}}u) {
    for (var x = lid.x; x < {{bc}}u * D4; x += {{nt}}u) {
      let jj = x / D4; let e = (x % D4) * 4u; let ok = j0 + jj < T;
      let kr = kb + (j0 + jj) * ks + e;
      kvs[jj * {{stride}}u + x % D4] = vec4<f32>(kg(kr, ok), kg(kr + 1u, ok), kg(kr + 2u, ok), kg(kr + 3u, ok));
    }
    workgroupBarrier();

""");
            for (int u = 0; u < keys; u++) b.Append($"    var d{u} = 0.0;\n");
            b.Append($"    for (var e4 = 0u; e4 < D4; e4++) {{\n      let qv = qs[r * {stride}u + e4];\n");
            for (int u = 0; u < keys; u++) b.Append($"      d{u} += dot(qv, kvs[(c + {u * TC}u) * {stride}u + e4]);\n");
            b.Append("    }\n    var tmax = ninf;\n");
            for (int u = 0; u < keys; u++)
                b.Append($"    var s{u} = ninf;\n    {{ let j = j0 + c + {u * TC}u; var sc = ninf;\n      if (live && j < T) {{ sc = d{u} * scale; {Fused.MaskApply(maskKind)} }}\n      s{u} = sc; tmax = max(tmax, sc); }}\n");
            b.Append($$"""
    rm[lid.x] = tmax;
    workgroupBarrier();
    var mt = ninf;
    for (var cc = 0u; cc < {{TC}}u; cc++) { mt = max(mt, rm[r * {{TC}}u + cc]); }
    let mnew = max(m, mt);
    // Nothing is accumulated while every score so far is -inf; a -inf score weighs 0.
    let corr = select(exp(m - mnew), 1.0, mnew == ninf);
    var psum = 0.0;

""");
            for (int u = 0; u < keys; u++)
                b.Append($"    {{ var p = 0.0; if (s{u} != ninf) {{ p = exp(s{u} - mnew); }} ps[r * {bc}u + c + {u * TC}u] = p; psum += p; }}\n");
            b.Append("    l = l * corr + psum;\n    m = mnew;\n");
            for (int a = 0; a < dv4; a++) b.Append($"    acc{a} = acc{a} * corr;\n");
            b.Append($$"""
    workgroupBarrier();
    for (var x = lid.x; x < {{bc}}u * Dv4; x += {{nt}}u) {
      let jj = x / Dv4; let e = (x % Dv4) * 4u; let ok = j0 + jj < T;
      let vr = vb + (j0 + jj) * vs + e;
      kvs[jj * {{stride}}u + x % Dv4] = vec4<f32>(vg(vr, ok), vg(vr + 1u, ok), vg(vr + 2u, ok), vg(vr + 3u, ok));
    }
    workgroupBarrier();
    for (var jj = 0u; jj < {{bc}}u; jj++) {
      let p = ps[r * {{bc}}u + jj];

""");
            for (int a = 0; a < dv4; a++) b.Append($"      acc{a} += p * kvs[jj * {stride}u + c + {a * TC}u];\n");
            b.Append("    }\n    workgroupBarrier();\n  }\n");
            // The row's sum from its 16 threads' partial sums (each rescaled by the same running max).
            b.Append($"  rm[lid.x] = l;\n  workgroupBarrier();\n  var lt = 0.0;\n  for (var cc = 0u; cc < {TC}u; cc++) {{ lt += rm[r * {TC}u + cc]; }}\n");
            b.Append("  if (live) {\n    let ob = ((bb * H + hh) * S + i) * Dv;\n");
            for (int a = 0; a < dv4; a++)
                for (int comp = 0; comp < 4; comp++)
                    b.Append($"    {{ let e = (c + {a * TC}u) * 4u + {comp}u; if (e < Dv) {{ y_st(ob + e, acc{a}.{"xyzw"[comp]} / lt); }} }}\n");
            b.Append("  }\n");
            return w.Build(b.ToString(), elementwise: false);
        }, "AttentionTiles", Fused.AttentionTensors(q, k, v, mask, rcos, rsin, y), meta, gx, gy);
        return true;
    }
}
