using System.Text;

namespace Tapml.Platforms.WebGpu.Dialects;

/// <summary>GLSL 4.50 compute shaders for Vulkan (compiled to SPIR-V): storage bindings become std430 buffer blocks in
/// set 0 with WGSL's binding numbers, workgroup variables <c>shared</c>, the built-ins <c>gl_*</c>.</summary>
public sealed class GlslRenderer : CStyleRenderer
{
    public override string Dialect => "glsl";

    /// <summary>0: the metadata words (<c>md</c>, the last storage binding) stay a storage buffer; N: they are an array of
    /// N push-constant words instead.</summary>
    public int PushConstantWords { get; init; }

    /// <summary>Render <c>dot4I8Packed</c> as SPIR-V's <c>OpSDot</c> (packed 4×8-bit format) through GL_EXT_spirv_intrinsics:
    /// the device must have shaderIntegerDotProduct enabled. Else a helper of four sign-extended byte products.</summary>
    public bool IntegerDot { get; init; }

    /// <summary>Storage bindings of the last kernel rendered (the metadata buffer excluded when it became push constants).</summary>
    public int StorageBindings { get; private set; }

    /// <summary>Whether the last kernel rendered reads its metadata from push constants (not when it names a word
    /// past <see cref="PushConstantWords"/>).</summary>
    public bool UsesPushConstants { get; private set; }

    /// <summary>Per storage binding of the last kernel rendered: whether it is writable (not <c>readonly</c>).</summary>
    public bool[] WritableBindings { get; private set; } = [];

    static readonly System.Text.RegularExpressions.Regex MetaWord = new(@"\bmd\[(\d+)u?\]", System.Text.RegularExpressions.RegexOptions.Compiled);

    protected override void Header(StringBuilder sb)
    {
        var ws = Module.Entry.WorkgroupSize!;
        sb.Append("#version 450\n");
        if (UsesIntegerDot) sb.Append("#extension GL_EXT_spirv_intrinsics : require\n");
        if (Module.Enables.Contains("subgroups")) sb.Append("#extension GL_KHR_shader_subgroup_shuffle : require\n");
        sb.Append($"layout(local_size_x = {ws[0]}, local_size_y = {ws[1]}, local_size_z = {ws[2]}) in;\n");
    }

    bool UsesIntegerDot => IntegerDot && Source.Contains("dot4I8Packed", StringComparison.Ordinal);

    // NOTE: OpSDot (4450) with capabilities DotProduct (6019) and DotProductInput4x8BitPacked (6018); the literal 0 is
    // PackedVectorFormat4x8Bit.
    protected override string Helpers => UsesIntegerDot ? BaseHelpers + "spirv_instruction(extensions = [\"SPV_KHR_integer_dot_product\"], capabilities = [6019, 6018], id = 4450)\nint tp_sdot(uint a, uint b, spirv_literal int fmt);\n" : BaseHelpers;

    static readonly string BaseHelpers = CHelpers("float", "int", "uint", "", "int(x)", "uint(x)", "(-2147483647 - 1)")
        + "int tp_dot4i8(uint a, uint b) { int s = 0; for (int k = 0; k < 32; k += 8) { s += bitfieldExtract(int(a), k, 8) * bitfieldExtract(int(b), k, 8); } return s; }\n";

    protected override void Globals(StringBuilder sb)
    {
        int last = Module.Globals.Where(g => g.Space == "storage").Select(g => g.Binding).DefaultIfEmpty(-1).Max();
        StorageBindings = last + 1;
        UsesPushConstants = false;
        WritableBindings = new bool[last + 1];
        foreach (var g in Module.Globals) if (g.Space == "storage") WritableBindings[g.Binding] = g.Writable;
        int maxWord = MetaWord.Matches(Source).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).DefaultIfEmpty(0).Max();
        foreach (var g in Module.Globals)
        {
            if (g.Space == "storage" && PushConstantWords > maxWord && g.Binding == last && g.Name == "md" && !g.Writable)
            {
                sb.Append($"layout(push_constant) uniform tp_PC {{ {TypeName(g.Type.Elem!)} {Name(g.Name)}[{PushConstantWords}]; }};\n");
                StorageBindings = last;
                UsesPushConstants = true;
            }
            else if (g.Space == "storage")
                sb.Append($"layout(std430, set = 0, binding = {g.Binding}) {(g.Writable ? "" : "readonly ")}buffer tp_B{g.Binding} {{ {TypeName(g.Type.Elem!)} {Name(g.Name)}[]; }};\n");
            else if (g.Type.IsArray)
                sb.Append($"shared {TypeName(g.Type.Elem!)} {Name(g.Name)}[{g.Type.Len}];\n");
            else
                sb.Append($"shared {TypeName(g.Type)} {Name(g.Name)};\n");
        }
    }

    protected override string Signature(FnDecl f) =>
        $"{TypeName(f.Ret)} {Name(f.Name)}({string.Join(", ", f.Params.Select(p => $"{TypeName(p.Type)} {Name(p.Name)}"))})";

    protected override void Entry(StringBuilder sb, FnDecl f)
    {
        sb.Append("void main() {\n");
        foreach (var p in f.Params)
        {
            string v = p.Builtin switch
            {
                "global_invocation_id" => "gl_GlobalInvocationID",
                "local_invocation_id" => "gl_LocalInvocationID",
                "workgroup_id" => "gl_WorkGroupID",
                "num_workgroups" => "gl_NumWorkGroups",
                "local_invocation_index" => "gl_LocalInvocationIndex",
                _ => throw WgslModule.Unsupported($"the built-in '{p.Builtin}'"),
            };
            sb.Append($"  {TypeName(p.Type)} {Name(p.Name)} = {v};\n");
        }
        foreach (var s in f.Body.Body) Statement(sb, s, 1);
        sb.Append("}\n");
    }

    public override string TypeName(Ty t) => t.Kind switch
    {
        "void" => "void",
        "scalar" => t.Concrete().Scalar switch { "f32" => "float", "i32" => "int", "u32" => "uint", "bool" => "bool", var s => throw WgslModule.Unsupported($"the type {s}") },
        "vec" => t.Concrete().Scalar switch { "f32" => "", "i32" => "i", "u32" => "u", "bool" => "b", _ => "?" } + $"vec{t.N}",
        _ => throw WgslModule.Unsupported($"the type {t} here"),
    };

    protected override string VecCtor(Ty t, IEnumerable<string> args) => $"{TypeName(t)}({string.Join(", ", args)})";
    protected override string FloatSuffix => "";
    protected override string Cast(Ty t, string x) => $"{TypeName(t)}({x})";

    protected override string Convert(string x, Ty from, Ty to)
    {
        if (from.IsFloat && to.IsInt && !to.IsVec) return to.IsSigned ? $"tp_f2i({x})" : $"tp_f2u({x})";
        return $"{TypeName(to)}({x})";
    }

    protected override string Bitcast(string x, Ty from, Ty to)
    {
        string fs = from.Scalar, ts = to.Scalar;
        if (ts == "f32") return fs == "u32" ? $"uintBitsToFloat({x})" : $"intBitsToFloat({x})";
        if (fs == "f32") return ts == "u32" ? $"floatBitsToUint({x})" : $"floatBitsToInt({x})";
        return $"{TypeName(to)}({x})";   // i32 ↔ u32 keep their bits in GLSL
    }

    protected override string? Builtin(CallExpr c, string[] a) => c.Name switch
    {
        "inverseSqrt" => $"inversesqrt({a[0]})",
        "round" => $"roundEven({a[0]})",
        "atan2" => $"atan({a[0]}, {a[1]})",
        "countOneBits" => $"bitCount({a[0]})",
        "unpack2x16float" => $"unpackHalf2x16({a[0]})",
        "subgroupShuffleXor" => $"subgroupShuffleXor({a[0]}, {a[1]})",
        "dot4I8Packed" => UsesIntegerDot ? $"tp_sdot({a[0]}, {a[1]}, 0)" : $"tp_dot4i8({a[0]}, {a[1]})",
        "pack2x16float" => $"packHalf2x16({a[0]})",
        "saturate" => $"clamp({a[0]}, 0.0, 1.0)",
        _ => null,
    };

    protected override string VectorSelect(string f, string t, string cond, Ty type) => $"mix({f}, {t}, {cond})";

    // NOTE: early returns in inlined helpers make SwiftShader's compile time exponential (see MergeReturns).
    protected override bool SingleReturn => true;

    protected override string Barrier(string wgsl) => wgsl == "workgroupBarrier" ? "memoryBarrierShared(); barrier();" : "memoryBarrierBuffer(); barrier();";

    protected override HashSet<string> Reserved { get; } =
    [
        "input", "output", "sample", "filter", "common", "partition", "active", "buffer", "shared", "coherent", "volatile", "restrict",
        "readonly", "writeonly", "layout", "centroid", "flat", "smooth", "patch", "subroutine", "precise", "invariant", "in", "out", "inout",
        "uniform", "attribute", "varying", "lowp", "mediump", "highp", "precision", "texture", "sampler", "image", "float", "int", "uint",
        "double", "half", "fixed", "long", "short", "unsigned", "vec2", "vec3", "vec4", "mat2", "mat3", "mat4", "class", "union", "enum",
        "typedef", "template", "this", "goto", "inline", "noinline", "public", "static", "extern", "external", "interface", "superp",
        "namespace", "using", "sizeof", "cast", "main", "discard", "dvec2", "ivec2", "uvec2", "bvec2", "resource", "noperspective",
        "mix", "step", "length", "dot", "sign", "fract", "mod", "distance", "normalize", "barrier", "not", "equal", "any", "all",
    ];
}
