using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Metadata words of one dispatch (sizes, shapes, strides); kernels read them from a storage buffer
/// so one compiled kernel serves every shape of a rank. The position of each word is baked into the WGSL.</summary>
public sealed class Meta
{
    readonly List<uint> _w = new(32);
    public int Add(long v) { _w.Add(checked((uint)v)); return _w.Count - 1; }
    public int AddSigned(long v) { _w.Add(unchecked((uint)checked((int)v))); return _w.Count - 1; }
    public int AddFloat(float v) { _w.Add(BitConverter.SingleToUInt32Bits(v)); return _w.Count - 1; }
    public int AddAll(IEnumerable<long> vs) { int at = _w.Count; foreach (var v in vs) Add(v); return at; }
    public int AddAllSigned(IEnumerable<long> vs) { int at = _w.Count; foreach (var v in vs) AddSigned(v); return at; }
    public uint[] ToArray() => _w.ToArray();
    public ReadOnlySpan<uint> Words => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_w);
}

/// <summary>Writes one WGSL compute kernel: storage bindings with typed load/store helpers (a binding's
/// storage format is hidden behind <c>NAME(i)</c> loads and <c>NAME_st(i, v)</c> stores), the metadata
/// binding, and <c>main</c>. Pure text: no Dawn here, so a browser target can reuse every generator.</summary>
public sealed class Wgsl
{
    readonly StringBuilder _decl = new();
    readonly StringBuilder _fns = new();
    int _binding;
    public int Workgroup { get; }

    public Wgsl(int workgroup = 256) => Workgroup = workgroup;

    /// <summary>Storages as a short key string, one letter each (f32 f, i32 i, u32 u, packed f16 h): kernel keys are
    /// made per dispatch, and enum names are slow to format.</summary>
    public static string Letters(IReadOnlyList<GpuStorage> storages) => string.Create(storages.Count, storages, static (span, st) =>
    {
        for (int i = 0; i < span.Length; i++) span[i] = st[i] switch { GpuStorage.F32 => 'f', GpuStorage.I32 => 'i', GpuStorage.U32 => 'u', _ => 'h' };
    });

    /// <summary>WGSL scalar a storage computes in.</summary>
    public static string Scalar(GpuStorage s) => s switch { GpuStorage.F32 or GpuStorage.F16x2 => "f32", GpuStorage.I32 => "i32", _ => "u32" };

    /// <summary>Storage of a logical type on the GPU, or null when WGSL has no type for it.</summary>
    public static GpuStorage? StorageOf(DType t) => t switch
    {
        DType.Float32 or DType.Float16 or DType.BFloat16 => GpuStorage.F32,
        DType.Int8 or DType.Int16 or DType.Int32 or DType.Int64 => GpuStorage.I32,
        DType.UInt8 or DType.UInt16 or DType.UInt32 or DType.Bool => GpuStorage.U32,
        _ => null,
    };

    /// <summary>A read-only input: <c>name(i: u32) -> scalar</c>.</summary>
    public Wgsl In(string name, GpuStorage storage)
    {
        string elem = storage == GpuStorage.F16x2 ? "u32" : Scalar(storage);
        _decl.Append($"@group(0) @binding({_binding++}) var<storage, read> {name}_b: array<{elem}>;\n");
        _fns.Append(storage == GpuStorage.F16x2
            ? $"fn {name}(i: u32) -> f32 {{ return unpack2x16float({name}_b[i >> 1u])[i & 1u]; }}\n"
            : $"fn {name}(i: u32) -> {elem} {{ return {name}_b[i]; }}\n");
        return this;
    }

    public Wgsl In(string name, GpuTensor t) => In(name, t.Storage);

    /// <summary>An f32 input read as vec4 loads: <c>{name}_b[i]</c> holds elements 4i … 4i + 3.</summary>
    public Wgsl InVec4(string name) => InArray(name, "vec4<f32>");

    /// <summary>A read-only input of <paramref name="element"/>s (<c>vec2&lt;u32&gt;</c>, say), read as <c>{name}_b[i]</c>.</summary>
    public Wgsl InArray(string name, string element)
    {
        _decl.Append($"@group(0) @binding({_binding++}) var<storage, read> {name}_b: array<{element}>;\n");
        return this;
    }

    /// <summary>Skips a binding number (the caller declares that binding by hand, e.g. as vec4 loads).</summary>
    public Wgsl Reserve() { _binding++; return this; }

    /// <summary>An output: <c>name_st(i, v)</c> rounds to the logical type (f16, bf16, narrow integers).</summary>
    public Wgsl Out(string name, DType logical)
    {
        var storage = StorageOf(logical) ?? throw new UnsupportedException($"{DTypes.Name(logical)} has no WGSL storage");
        string s = Scalar(storage);
        _decl.Append($"@group(0) @binding({_binding++}) var<storage, read_write> {name}_b: array<{s}>;\n");
        string v = logical switch
        {
            DType.Float16 => "unpack2x16float(pack2x16float(vec2<f32>(v, 0.0))).x",
            // NOTE: round-to-nearest-even on the upper 16 bits (NaN payloads are not preserved).
            DType.BFloat16 => "bitcast<f32>((bitcast<u32>(v) + 0x7fffu + ((bitcast<u32>(v) >> 16u) & 1u)) & 0xffff0000u)",
            DType.Int8 => "(v << 24u) >> 24u",
            DType.Int16 => "(v << 16u) >> 16u",
            DType.UInt8 => "v & 0xffu",
            DType.UInt16 => "v & 0xffffu",
            DType.Bool => "select(0u, 1u, v != 0u)",
            _ => "v",
        };
        _fns.Append($"fn {name}_st(i: u32, v: {s}) {{ {name}_b[i] = {v}; }}\n");
        return this;
    }

    /// <summary>Extra declarations (workgroup memory, helper functions).</summary>
    public Wgsl Decl(string text) { _fns.Append(text).Append('\n'); return this; }

    /// <summary>The kernel. <paramref name="body"/> sees <c>gid, lid, wid, nwg</c>, <c>meta</c>, and for
    /// element kernels <c>i</c> (guarded by <c>md[0]</c> = element count).</summary>
    public string Build(string body, bool elementwise = true)
    {
        var sb = new StringBuilder();
        if (body.Contains("subgroupShuffleXor", StringComparison.Ordinal)) sb.Append("enable subgroups;\n");
        sb.Append(_decl);
        sb.Append($"@group(0) @binding({_binding}) var<storage, read> md: array<u32>;\n");
        // NOTE: a user function, not bitcast<f32>(…) directly: constant ±inf/NaN literals do not compile in WGSL.
        sb.Append("fn bits_(x: u32) -> f32 { return bitcast<f32>(x); }\n");
        sb.Append(_fns);
        sb.Append($"@compute @workgroup_size({Workgroup})\nfn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n");
        if (elementwise) sb.Append($"  let i = gid.x + gid.y * nwg.x * {Workgroup}u;\n  if (i >= md[0]) {{ return; }}\n");
        else sb.Append("  let _n = md[0];\n");
        sb.Append(body).Append("\n}\n");
        return sb.ToString();
    }

    /// <summary>Code that splits <c>i</c> into coordinates of a shape (meta words shapeAt..+rank) and sums them
    /// with each target's strides (meta words at the target's strideAt, signed) plus its offset word, into
    /// <c>var o_NAME: i32</c>.</summary>
    public static string Offsets(string index, int rank, int shapeAt, params (string Name, int StrideAt, int OffsetAt)[] targets)
    {
        var sb = new StringBuilder();
        foreach (var t in targets)
            sb.Append($"  var o_{t.Name}: i32 = {(t.OffsetAt < 0 ? "0" : $"bitcast<i32>(md[{t.OffsetAt}])")};\n");
        sb.Append($"  var rem: u32 = {index};\n");
        for (int d = rank - 1; d >= 0; d--)
        {
            sb.Append($"  {{ let c = i32(rem % md[{shapeAt + d}]); rem = rem / md[{shapeAt + d}];");
            foreach (var t in targets) sb.Append($" o_{t.Name} += c * bitcast<i32>(md[{t.StrideAt + d}]);");
            sb.Append(" }\n");
        }
        return sb.ToString();
    }

    /// <summary>The largest power of two at most <paramref name="v"/> (1 for v ≤ 1; at most 2^30): thread and row counts
    /// of kernel layouts.</summary>
    public static int FloorPow2(long v) => v <= 1 ? 1 : (int)Math.Min(1 << 30, 1L << (63 - System.Numerics.BitOperations.LeadingZeroCount((ulong)v)));

    /// <summary>Workgroup counts covering <paramref name="threads"/> in groups of <paramref name="workgroup"/>
    /// (a 2-D grid past 65535 groups).</summary>
    public static (uint X, uint Y) Grid(long threads, int workgroup, int maxPerDim)
    {
        long groups = Math.Max(1, (threads + workgroup - 1) / workgroup);
        if (groups <= maxPerDim) return ((uint)groups, 1);
        long y = (groups + maxPerDim - 1) / maxPerDim;
        if (y > maxPerDim) throw new TapmlException($"webgpu: {threads} threads need more than {maxPerDim}² workgroups");
        return ((uint)maxPerDim, (uint)y);
    }
}
