using System.Text;

namespace Tapml.Platforms.WebGpu.Dialects;

/// <summary>OpenCL C 1.2 kernels. OpenCL has no module-scope buffers: the kernel <c>tapml_main</c> takes each storage
/// binding as a pointer plus a byte offset (in WGSL's binding order, the metadata words last), declares workgroup
/// memory <c>__local</c> itself, and a helper function that reads a buffer or workgroup memory gets it as an extra
/// parameter.</summary>
public sealed class OpenClRenderer : CStyleRenderer
{
    public override string Dialect => "opencl";
    public const string EntryName = "tapml_main";

    Dictionary<string, List<GlobalVar>> _uses = new();

    protected override void Header(StringBuilder sb)
    {
        _uses = Uses(Module);
        sb.Append("// OpenCL C 1.2, rendered from WGSL by tapml\n");
    }

    protected override string Helpers { get; } = CHelpers("float", "int", "uint", "f", "(int)(x)", "(uint)(x)", "(-2147483647 - 1)") + """
float2 tp_unpack2x16float(uint v) { return (float2)(vload_half(0, (const __private half*)&v), vload_half(1, (const __private half*)&v)); }
int tp_dot4i8(uint a, uint b) { char4 x = as_char4(a), y = as_char4(b); return (int)x.s0 * y.s0 + (int)x.s1 * y.s1 + (int)x.s2 * y.s2 + (int)x.s3 * y.s3; }
uint tp_pack2x16float(float2 v) { uint r; vstore_half_rte(v.x, 0, (__private half*)&r); vstore_half_rte(v.y, 1, (__private half*)&r); return r; }
float tp_vget2f(float2 v, uint i) { return i == 0u ? v.x : v.y; }
float tp_vget4f(float4 v, uint i) { return i == 0u ? v.x : i == 1u ? v.y : i == 2u ? v.z : v.w; }
uint tp_vget2u(uint2 v, uint i) { return i == 0u ? v.x : v.y; }
uint tp_vget4u(uint4 v, uint i) { return i == 0u ? v.x : i == 1u ? v.y : i == 2u ? v.z : v.w; }
int tp_vget2i(int2 v, uint i) { return i == 0u ? v.x : v.y; }
int tp_vget4i(int4 v, uint i) { return i == 0u ? v.x : i == 1u ? v.y : i == 2u ? v.z : v.w; }

""";

    protected override void Globals(StringBuilder sb) { }

    /// <summary>Module variables each function reads or writes, directly or through the functions it calls.</summary>
    static Dictionary<string, List<GlobalVar>> Uses(WgslModule m)
    {
        var direct = new Dictionary<string, (HashSet<string> Names, HashSet<string> Calls)>();
        foreach (var f in m.Functions)
        {
            var names = new HashSet<string>();
            var calls = new HashSet<string>();
            Walk(f.Body, names, calls);
            direct[f.Name] = (names, calls);
        }
        var all = m.Functions.ToDictionary(f => f.Name, f => new HashSet<string>(direct[f.Name].Names));
        for (bool changed = true; changed;)
        {
            changed = false;
            foreach (var f in m.Functions)
                foreach (var c in direct[f.Name].Calls)
                    if (all.TryGetValue(c, out var used))
                        foreach (var n in used) changed |= all[f.Name].Add(n);
        }
        var locals = m.Functions.ToDictionary(f => f.Name, f => f.Params.Select(p => p.Name).ToHashSet());
        return m.Functions.ToDictionary(f => f.Name, f => m.Globals.Where(g => all[f.Name].Contains(g.Name)).ToList());
    }

    static void Walk(Stmt s, HashSet<string> names, HashSet<string> calls)
    {
        switch (s)
        {
            case BlockStmt b: foreach (var x in b.Body) Walk(x, names, calls); break;
            case DeclStmt d: if (d.Init is not null) Walk(d.Init, names, calls); break;
            case AssignStmt a: Walk(a.Lhs, names, calls); if (a.Rhs is not null) Walk(a.Rhs, names, calls); break;
            case ExprStmt e: Walk(e.E, names, calls); break;
            case IfStmt i: Walk(i.Cond, names, calls); Walk(i.Then, names, calls); if (i.Else is not null) Walk(i.Else, names, calls); break;
            case ForStmt f:
                if (f.Init is not null) Walk(f.Init, names, calls);
                if (f.Cond is not null) Walk(f.Cond, names, calls);
                if (f.Update is not null) Walk(f.Update, names, calls);
                Walk(f.Body, names, calls);
                break;
            case WhileStmt w: Walk(w.Cond, names, calls); Walk(w.Body, names, calls); break;
            case LoopStmt l: Walk(l.Body, names, calls); break;
            case SwitchStmt sw:
                Walk(sw.Sel, names, calls);
                foreach (var (sels, body) in sw.Clauses) Walk(body, names, calls);
                break;
            case ReturnStmt r: if (r.Value is not null) Walk(r.Value, names, calls); break;
        }
    }

    static void Walk(Expr e, HashSet<string> names, HashSet<string> calls)
    {
        switch (e)
        {
            // NOTE: a local that shadows a module variable is counted as a use too; passing the buffer is harmless.
            case Ident i: names.Add(i.Name); break;
            case UnaryExpr u: Walk(u.X, names, calls); break;
            case BinaryExpr b: Walk(b.L, names, calls); Walk(b.R, names, calls); break;
            case IndexExpr ix: Walk(ix.X, names, calls); Walk(ix.I, names, calls); break;
            case MemberExpr me: Walk(me.X, names, calls); break;
            case CallExpr c: calls.Add(c.Name); foreach (var a in c.Args) Walk(a, names, calls); break;
        }
    }

    string Pointer(GlobalVar g) => g.Space == "storage"
        ? $"__global {(g.Writable ? "" : "const ")}{TypeName(g.Type.Elem!)}*"
        : $"__local {TypeName(g.Type.IsArray ? g.Type.Elem! : g.Type)}*";

    protected override string Signature(FnDecl f) =>
        $"{TypeName(f.Ret)} {Name(f.Name)}({string.Join(", ", f.Params.Select(p => $"{TypeName(p.Type)} {Name(p.Name)}").Concat(_uses[f.Name].Select(g => $"{Pointer(g)} {Name(g.Name)}")))})";

    protected override IEnumerable<string> ExtraArgs(FnDecl f) =>
        _uses[f.Name].Select(g => Fn.IsEntry && g.Space == "workgroup" && !g.Type.IsArray ? $"&{Name(g.Name)}" : Name(g.Name));

    protected override string IdentRef(string name)
    {
        if (!Fn.IsEntry && Fn.Params.All(p => p.Name != name) && Module.Globals.FirstOrDefault(g => g.Name == name) is { Space: "workgroup" } g && !g.Type.IsArray)
            return $"(*{Name(name)})";
        return Name(name);
    }

    protected override void Entry(StringBuilder sb, FnDecl f)
    {
        var ws = f.WorkgroupSize!;
        var storage = Module.Globals.Where(g => g.Space == "storage").OrderBy(g => g.Binding).ToList();
        sb.Append($"__kernel __attribute__((reqd_work_group_size({ws[0]}, {ws[1]}, {ws[2]}))) void {EntryName}(");
        sb.Append(string.Join(", ", storage.Select(g => $"__global {(g.Writable ? "" : "const ")}uchar* tp_p{g.Binding}, uint tp_o{g.Binding}")));
        sb.Append(") {\n");
        foreach (var g in storage)
            sb.Append($"  {Pointer(g)} {Name(g.Name)} = ({Pointer(g)})(tp_p{g.Binding} + tp_o{g.Binding});\n");
        foreach (var g in Module.Globals.Where(g => g.Space == "workgroup"))
            sb.Append(g.Type.IsArray ? $"  __local {TypeName(g.Type.Elem!)} {Name(g.Name)}[{g.Type.Len}];\n" : $"  __local {TypeName(g.Type)} {Name(g.Name)};\n");
        foreach (var p in f.Params)
        {
            string fn = p.Builtin switch
            {
                "global_invocation_id" => "get_global_id",
                "local_invocation_id" => "get_local_id",
                "workgroup_id" => "get_group_id",
                "num_workgroups" => "get_num_groups",
                "local_invocation_index" => null,
                _ => throw WgslModule.Unsupported($"the built-in '{p.Builtin}'"),
            } ?? "";
            sb.Append(fn.Length == 0
                ? $"  uint {Name(p.Name)} = (uint)(get_local_id(0) + get_local_size(0) * (get_local_id(1) + get_local_size(1) * get_local_id(2)));\n"
                : $"  uint3 {Name(p.Name)} = (uint3)((uint){fn}(0), (uint){fn}(1), (uint){fn}(2));\n");
        }
        foreach (var s in f.Body.Body) Statement(sb, s, 1);
        sb.Append("}\n");
    }

    public override string TypeName(Ty t) => t.Kind switch
    {
        "void" => "void",
        "scalar" => t.Concrete().Scalar switch { "f32" => "float", "i32" => "int", "u32" => "uint", "bool" => "bool", var s => throw WgslModule.Unsupported($"the type {s}") },
        "vec" when t.Scalar != "bool" => TypeName(Ty.Scal(t.Scalar)) + t.N,
        _ => throw WgslModule.Unsupported($"the type {t} here"),
    };

    protected override string VecCtor(Ty t, IEnumerable<string> args) => $"(({TypeName(t)})({string.Join(", ", args)}))";
    protected override string FloatSuffix => "f";
    protected override string Cast(Ty t, string x) => $"(({TypeName(t)})({x}))";

    protected override string Convert(string x, Ty from, Ty to)
    {
        if (to.IsVec) return $"convert_{TypeName(to)}({x})";
        if (from.IsFloat && to.IsInt) return to.IsSigned ? $"tp_f2i({x})" : $"tp_f2u({x})";
        return Cast(to, x);
    }

    protected override string Bitcast(string x, Ty from, Ty to) => $"as_{TypeName(to)}({x})";

    protected override string? Builtin(CallExpr c, string[] a)
    {
        var t = c.Type.Concrete();
        return c.Name switch
        {
            "abs" when t.IsFloat => $"fabs({a[0]})",
            "abs" when t.IsSigned => $"(({TypeName(t)})abs({a[0]}))",
            "abs" => a[0],
            "min" when t.IsFloat => $"fmin({a[0]}, {a[1]})",
            "max" when t.IsFloat => $"fmax({a[0]}, {a[1]})",
            "inverseSqrt" => $"rsqrt({a[0]})",
            "round" => $"rint({a[0]})",
            "countOneBits" => $"popcount({a[0]})",
            "unpack2x16float" => $"tp_unpack2x16float({a[0]})",
            "dot4I8Packed" => $"tp_dot4i8({a[0]}, {a[1]})",
            "subgroupShuffleXor" => throw WgslModule.Unsupported("subgroup shuffles (an opencl device offers no subgroups to tapml's kernels)"),
            "pack2x16float" => $"tp_pack2x16float({a[0]})",
            "fract" => $"({a[0]} - floor({a[0]}))",
            "saturate" => $"clamp({a[0]}, 0.0f, 1.0f)",
            "sign" when !t.IsFloat => throw WgslModule.Unsupported("sign() of an integer"),
            _ => null,
        };
    }

    protected override string Swizzle(string member) => member.Replace('r', 'x').Replace('g', 'y').Replace('b', 'z').Replace('a', 'w');

    protected override string VectorIndex(string v, Ty vt, Expr index, string i)
    {
        if (index is Lit l && int.TryParse(l.Text.TrimEnd('u', 'i'), out int k)) return $"{v}.s{k}";
        if (vt.N is not (2 or 4)) throw WgslModule.Unsupported($"a dynamic index into a {vt}");
        return $"tp_vget{vt.N}{vt.Scalar[0]}({v}, (uint)({i}))";
    }

    protected override string Barrier(string wgsl) => wgsl == "workgroupBarrier" ? "barrier(CLK_LOCAL_MEM_FENCE);" : "barrier(CLK_GLOBAL_MEM_FENCE);";

    protected override HashSet<string> Reserved { get; } =
    [
        "global", "local", "constant", "private", "kernel", "read_only", "write_only", "read_write", "half", "double", "char", "short", "long",
        "uchar", "ushort", "ulong", "size_t", "ptrdiff_t", "intptr_t", "uintptr_t", "auto", "register", "restrict", "signed", "unsigned",
        "static", "struct", "typedef", "union", "volatile", "goto", "inline", "extern", "enum", "const", "sizeof", "int", "uint", "float",
        "bool", "void", "char2", "float2", "float3", "float4", "int2", "int4", "uint2", "uint4", "select", "fmin", "fmax", "fabs", "rint",
        "rsqrt", "popcount", "barrier", "isnan", "trunc", "floor", "mix", "step", "sign", "dot", "clamp", "length", "fmod", "main", "complex",
        "imaginary", "image2d_t", "sampler_t", "event_t", "NULL", "true", "false", "default", "case", "switch", "while", "do", "for", "if", "else",
        "return", "break", "continue", "asm", "new", "delete", "this", "class", "template", "typename", "operator", "quad", "vector",
    ];
}
