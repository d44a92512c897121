using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Weights a light kernel reads into the GPU's cache with workgroups of its own after its real ones
/// (<c>prefetch=on</c>): the weights the node after it read last time (<see cref="WebGpuPlatform.PrefetchFor"/>). Each
/// of those workgroups' threads makes <see cref="Loads"/> 16-byte loads (consecutive threads on consecutive vec4s, all in
/// flight at once), folds them into one word and stores it in a sink buffer, so the loads are not dead code. Two more
/// bindings; the kernel's outputs are unchanged.</summary>
internal sealed record Prefetch(GpuTensor Weights, GpuTensor Sink, int At)
{
    /// <summary>vec4 loads a prefetching thread makes.</summary>
    const int Loads = 8;

    /// <summary>The prefetch for <paramref name="node"/>'s kernel, which binds <paramref name="bindings"/> buffers
    /// (metadata included), or null: none planned, or no room for two more bindings. Adds its metadata word.</summary>
    public static Prefetch? For(WebGpuPlatform g, Node node, Meta meta, int bindings)
    {
        if (bindings + 2 > g.Device.Limits.MaxStorageBuffersPerStage || g.PrefetchFor(node) is not { } p) return null;
        return new Prefetch(p.Weights, p.Sink, meta.Add((long)(p.Weights.StorageBytes / 16)));
    }

    /// <summary>The kernel-key part of an optional prefetch.</summary>
    public static string Key(Prefetch? p) => p is null ? "" : "|pf";

    /// <summary>The grid of <paramref name="own"/> workgroups of <paramref name="threads"/> and the prefetching ones after them.</summary>
    public static (uint X, uint Y) Grid(WebGpuPlatform g, Prefetch? p, long own, int threads)
    {
        long groups = own;
        if (p is not null) groups += ((long)(p.Weights.StorageBytes / 16) + (long)threads * Loads - 1) / ((long)threads * Loads);
        return Wgsl.Grid(groups, 1, g.Device.Limits.MaxWorkgroupsPerDimension);
    }

    /// <summary>The bindings, declared after the kernel's own (before the metadata).</summary>
    public void Declare(Wgsl w) => w.InArray("pf", "vec4<u32>").Out("sk", DType.UInt32);

    /// <summary>The tensors of <see cref="Declare"/>'s bindings, in order.</summary>
    public GpuTensor[] Tensors => [Weights, Sink];

    /// <summary>A kernel's first lines: a workgroup at or past <paramref name="own"/> (a WGSL expression: the kernel's own
    /// workgroup count) prefetches its share of the weights and returns.</summary>
    public string Head(int threads, string own) => $$"""
  let pw_ = wid.x + wid.y * nwg.x;
  if (pw_ >= {{own}}) {
    let pn_ = md[{{At}}]; let pg_ = pw_ - {{own}};
    var pa_ = vec4<u32>(0u);
    for (var pi_ = 0u; pi_ < {{Loads}}u; pi_++) {
      let pj_ = pg_ * {{threads * Loads}}u + pi_ * {{threads}}u + lid.x;
      if (pj_ < pn_) { pa_ ^= pf_b[pj_]; }
    }
    sk_st((pg_ * {{threads}}u + lid.x) % {{WebGpuPlatform.PrefetchSinkWords}}u, pa_.x ^ pa_.y ^ pa_.z ^ pa_.w);
    return;
  }

""";
}
