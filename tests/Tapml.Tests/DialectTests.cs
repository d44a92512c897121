using Tapml.Core;
using Tapml.Platforms.WebGpu.Dialects;
using Xunit;

namespace Tapml.Tests;

/// <summary>The renderers that print tapml's WGSL kernels as GLSL (vulkan) and OpenCL C (opencl): what each dialect
/// gets for the constructs whose meaning differs between WGSL and C.</summary>
public class DialectTests
{
    const string Kernel = """
@group(0) @binding(0) var<storage, read> x_b: array<f32>;
@group(0) @binding(1) var<storage, read_write> y_b: array<i32>;
@group(0) @binding(2) var<storage, read> md: array<u32>;
var<workgroup> red: array<f32, 256>;
fn x(i: u32) -> f32 { return x_b[i]; }
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let i = gid.x;
  if (i >= md[0]) { return; }
  red[lid.x] = x(i) * 2;
  workgroupBarrier();
  let q = i / md[1];
  let h = unpack2x16float(md[2])[i & 1u];
  var acc: array<f32, 4>;
  acc[0] = select(0.5, h, q > 3u) + f32(i % 7u) + (x(i) % 1.5);
  y_b[i] = i32(acc[0] + red[0]);
}
""";

    [Fact]
    public void Glsl_keeps_wgsl_semantics_for_division_conversion_and_select()
    {
        var g = new GlslRenderer().Render(Kernel);
        Assert.Contains("#version 450", g);
        Assert.Contains("layout(std430, set = 0, binding = 0) readonly buffer", g);
        Assert.Contains("tp_udiv(i, md[1])", g);          // division by zero gives the dividend
        Assert.Contains("tp_f2i(", g);                    // float → int saturates
        Assert.Contains("tp_fmod(", g);                   // float % truncates
        Assert.Contains("unpackHalf2x16(md[2])", g);
        Assert.Contains("? h : 0.5)", g);                 // select(f, t, c) → c ? t : f
        Assert.Contains("(x(i) * 2.0)", g);               // the abstract literal takes its operand's type
        Assert.Contains("memoryBarrierShared(); barrier();", g);
    }

    [Fact]
    public void OpenCl_passes_buffers_to_helpers_and_suffixes_float_literals()
    {
        var c = new OpenClRenderer().Render(Kernel);
        Assert.Contains($"__kernel __attribute__((reqd_work_group_size(256, 1, 1))) void {OpenClRenderer.EntryName}(", c);
        Assert.Contains("float x(uint i, __global const float* x_b)", c);
        Assert.Contains("x(i, x_b)", c);
        Assert.Contains("__local float red[256];", c);
        Assert.Contains("0.5f", c);
        Assert.Contains("tp_vget2f(tp_unpack2x16float(md[2])", c);
        Assert.Contains("barrier(CLK_LOCAL_MEM_FENCE);", c);
        Assert.DoesNotContain(" 0.5)", c);
    }

    /// <summary>Early returns in a helper become one return at its end in GLSL, as Tint does for SPIR-V (inlined early
    /// returns make if/else diamonds, and SwiftShader's compile time doubles with each one inside a loop: the vulkan
    /// decode matrix-vector kernels never finished compiling); OpenCL C keeps the early returns.</summary>
    [Fact]
    public void Glsl_helpers_leave_through_one_return()
    {
        const string helpers = """
@group(0) @binding(0) var<storage, read_write> y_b: array<f32>;
@group(0) @binding(1) var<storage, read> md: array<u32>;
fn act(k: u32, x: f32) -> f32 {
  if (k == 0u) { return max(x, 0.0); }
  let t = x * 2.0;
  if (k == 1u) { let u = t + 1.0; return u; } else if (k == 2u) { return -t; }
  return t;
}
fn find(n: u32) -> u32 {
  for (var i = 0u; i < n; i++) { if (md[i] == 7u) { return i; } }
  return n;
}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x >= md[0]) { return; }
  y_b[gid.x] = act(md[1], f32(gid.x)) + f32(find(md[2]));
}
""";
        var g = new GlslRenderer().Render(helpers);
        string act = g[g.IndexOf("float act(uint k, float x) {", StringComparison.Ordinal)..g.IndexOf("uint find(uint n) {", StringComparison.Ordinal)];
        Assert.Equal(1, act.Split("return").Length - 1);
        Assert.Contains("float tp_ret = 0.0;", act);
        Assert.Contains("bool tp_go = true;", act);
        Assert.Contains("tp_ret = max(x, 0.0);", act);
        Assert.Contains("tp_ret = (-t);", act);
        Assert.Contains("tp_ret = t;", act);
        Assert.EndsWith("return tp_ret;\n}\n", act);
        string find = g[g.IndexOf("uint find(uint n) {", StringComparison.Ordinal)..g.IndexOf("void main()", StringComparison.Ordinal)];
        Assert.Equal(1, find.Split("return").Length - 1);
        Assert.Contains("tp_ret = i;", find);            // a return inside a loop leaves it through break
        Assert.Contains("break;", find);
        Assert.Contains("if (tp_go) {", find);           // the code after the loop runs only where it did not return
        Assert.Contains("return;", g[g.IndexOf("void main()", StringComparison.Ordinal)..]);   // the entry point keeps its own
        Assert.DoesNotContain(MergeReturns.Result, new OpenClRenderer().Render(helpers));
    }

    [Fact]
    public void A_construct_outside_the_subset_is_unsupported_with_its_name()
    {
        const string withPointer = """
@group(0) @binding(0) var<storage, read> md: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  var v = 1u;
  let p = &v;
}
""";
        var e = Assert.Throws<UnsupportedException>(() => new GlslRenderer().Render(withPointer));
        Assert.Contains("pointers", e.Message);
    }
}
