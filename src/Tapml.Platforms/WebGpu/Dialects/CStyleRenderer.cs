using System.Globalization;
using System.Text;

namespace Tapml.Platforms.WebGpu.Dialects;

/// <summary>Prints a typed WGSL kernel (<see cref="WgslModule"/>) in a C-style shading language. Statements, operators
/// and most built-ins print the same in every C-style dialect; a subclass per language (<see cref="GlslRenderer"/>,
/// <see cref="OpenClRenderer"/>) names the types, literals, conversions, bindings and the entry point — the way
/// tinygrad renders one kernel through a C-style base with a small class per language. WGSL semantics that C
/// leaves undefined are kept: float→int conversion saturates, integer division by zero gives the dividend,
/// <c>%</c> truncates. A construct outside the subset throws <see cref="UnsupportedException"/>.</summary>
public abstract class CStyleRenderer
{
    /// <summary>Dialect name for messages and cache keys ("glsl", "opencl").</summary>
    public abstract string Dialect { get; }

    /// <summary>The kernel in this dialect. Storage bindings keep their WGSL numbers (the metadata words last).</summary>
    public string Render(string wgsl)
    {
        var m = WgslModule.Parse(wgsl);
        var sb = new StringBuilder();
        Module = m;
        Source = wgsl;
        Header(sb);
        sb.Append(Helpers);
        Globals(sb);
        foreach (var f in m.Functions.Where(f => !f.IsEntry)) sb.Append(Signature(f)).Append(";\n");
        foreach (var f in m.Functions.Where(f => !f.IsEntry))
        {
            Fn = f;
            sb.Append(Signature(f)).Append(' ');
            Block(sb, SingleReturn ? MergeReturns.Apply(f) : f.Body, 0);
            sb.Append('\n');
        }
        Fn = m.Entry;
        Entry(sb, m.Entry);
        return sb.ToString();
    }

    protected WgslModule Module { get; private set; } = null!;
    /// <summary>The WGSL text being rendered.</summary>
    protected string Source { get; private set; } = "";
    /// <summary>The function being printed.</summary>
    protected FnDecl Fn { get; private set; } = null!;

    // ---- what a dialect says ------------------------------------------------------------------------------------------

    protected abstract void Header(StringBuilder sb);
    /// <summary>Helper functions every kernel of the dialect gets (unused ones cost nothing).</summary>
    protected abstract string Helpers { get; }
    /// <summary>Module-scope declarations (buffers, shared memory).</summary>
    protected abstract void Globals(StringBuilder sb);
    protected abstract string Signature(FnDecl f);
    protected abstract void Entry(StringBuilder sb, FnDecl f);
    public abstract string TypeName(Ty t);
    /// <summary>A vector constructor of type <paramref name="t"/> from printed arguments.</summary>
    protected abstract string VecCtor(Ty t, IEnumerable<string> args);
    protected abstract string FloatSuffix { get; }
    /// <summary>A C-style cast of a scalar to <paramref name="t"/>.</summary>
    protected abstract string Cast(Ty t, string x);
    /// <summary>A scalar or vector value converted (numerically) to type <paramref name="to"/>.</summary>
    protected abstract string Convert(string x, Ty from, Ty to);
    protected abstract string Bitcast(string x, Ty from, Ty to);
    /// <summary>A built-in call, or null to print it under its WGSL name.</summary>
    protected abstract string? Builtin(CallExpr c, string[] a);
    /// <summary>Arguments a call of user function <paramref name="f"/> passes after its own (OpenCL passes buffers).</summary>
    protected virtual IEnumerable<string> ExtraArgs(FnDecl f) => [];
    protected virtual string IdentRef(string name) => Name(name);
    protected virtual string Swizzle(string member) => member;
    protected virtual string VectorIndex(string v, Ty vt, Expr index, string i) => $"{v}[{i}]";
    protected abstract HashSet<string> Reserved { get; }
    /// <summary>Print helper functions with one return at their end (<see cref="MergeReturns"/>).</summary>
    protected virtual bool SingleReturn => false;

    /// <summary>A WGSL name as printed: names the dialect reserves get a trailing underscore.</summary>
    protected string Name(string n) => Reserved.Contains(n) ? n + "_x" : n;

    // ---- statements -----------------------------------------------------------------------------------------------

    protected void Block(StringBuilder sb, BlockStmt b, int depth)
    {
        sb.Append("{\n");
        foreach (var s in b.Body) Statement(sb, s, depth + 1);
        sb.Append(' ', depth * 2).Append('}');
    }

    protected void Statement(StringBuilder sb, Stmt s, int depth)
    {
        if (s is BlockStmt blk) { sb.Append(' ', depth * 2); Block(sb, blk, depth); sb.Append('\n'); return; }
        sb.Append(' ', depth * 2);
        switch (s)
        {
            case IfStmt i:
                If(sb, i, depth);
                sb.Append('\n');
                break;
            case ForStmt f:
                sb.Append("for (").Append(f.Init is null ? "" : Simple(f.Init)).Append("; ").Append(f.Cond is null ? "" : Expr(f.Cond))
                  .Append("; ").Append(f.Update is null ? "" : Simple(f.Update)).Append(") ");
                Block(sb, f.Body, depth);
                sb.Append('\n');
                break;
            case WhileStmt w:
                sb.Append("while (").Append(Expr(w.Cond)).Append(") ");
                Block(sb, w.Body, depth);
                sb.Append('\n');
                break;
            case LoopStmt l:
                sb.Append("for (;;) ");
                Block(sb, l.Body, depth);
                sb.Append('\n');
                break;
            case SwitchStmt sw:
                sb.Append("switch (").Append(Expr(sw.Sel)).Append(") {\n");
                foreach (var (sels, body) in sw.Clauses)
                {
                    sb.Append(' ', depth * 2 + 2);
                    foreach (var e in sels) sb.Append(e is null ? "default: " : $"case {Expr(e)}: ");
                    Block(sb, body, depth + 1);
                    // NOTE: WGSL clauses never fall through.
                    sb.Append(" break;\n");
                }
                sb.Append(' ', depth * 2).Append("}\n");
                break;
            case ReturnStmt r:
                sb.Append(r.Value is null ? "return;\n" : $"return {Expr(r.Value)};\n");
                break;
            case JumpStmt j: sb.Append(j.Word).Append(";\n"); break;
            case ExprStmt e when e.E is CallExpr { Name: "workgroupBarrier" or "storageBarrier" } c:
                sb.Append(Barrier(c.Name)).Append('\n');
                break;
            default: sb.Append(Simple(s)).Append(";\n"); break;
        }
    }

    protected abstract string Barrier(string wgsl);

    void If(StringBuilder sb, IfStmt i, int depth)
    {
        sb.Append("if (").Append(Expr(i.Cond)).Append(") ");
        Block(sb, i.Then, depth);
        if (i.Else is IfStmt ei) { sb.Append(" else "); If(sb, ei, depth); }
        else if (i.Else is BlockStmt eb) { sb.Append(" else "); Block(sb, eb, depth); }
    }

    /// <summary>A declaration, assignment or call without its ';'.</summary>
    protected string Simple(Stmt s)
    {
        switch (s)
        {
            case DeclStmt d:
                if (d.Type.IsArray)
                {
                    if (d.Init is not null) throw WgslModule.Unsupported($"an initialized array variable '{d.Name}'");
                    // NOTE: WGSL zero-initializes a var; so does this loop.
                    return $"{TypeName(d.Type.Elem!)} {Name(d.Name)}[{d.Type.Len}]; for (int {Name(d.Name)}_z = 0; {Name(d.Name)}_z < {d.Type.Len}; {Name(d.Name)}_z++) {Name(d.Name)}[{Name(d.Name)}_z] = {Zero(d.Type.Elem!)}";
                }
                return $"{TypeName(d.Type)} {Name(d.Name)} = {(d.Init is null ? Zero(d.Type) : Expr(d.Init))}";
            case AssignStmt a:
                {
                    string l = Expr(a.Lhs);
                    if (a.Rhs is null) return $"{l}{a.Op}";
                    if (a.Op is "/=" or "%=")
                    {
                        // Integer division and float remainder go through the WGSL-semantics helpers.
                        string op = a.Op[..1];
                        return $"{l} = {BinaryText(op, l, a.Lhs.Type, Expr(a.Rhs), a.Rhs)}";
                    }
                    return $"{l} {a.Op} {Expr(a.Rhs)}";
                }
            case ExprStmt e: return Expr(e.E);
            default: throw WgslModule.Unsupported($"a {s.GetType().Name} here");
        }
    }

    protected string Zero(Ty t) => t.IsVec ? VecCtor(t, [Zero(Ty.Scal(t.Scalar))]) : t.Scalar switch
    {
        "f32" => "0.0" + FloatSuffix, "u32" => "0u", "bool" => "false", _ => "0",
    };

    // ---- expressions --------------------------------------------------------------------------------------------

    public string Expr(Expr e)
    {
        switch (e)
        {
            case Lit l: return Literal(l);
            case Ident i: return IdentRef(i.Name);
            case UnaryExpr u: return $"({u.Op}{Expr(u.X)})";
            case BinaryExpr b: return BinaryText(b.Op, Expr(b.L), b.L.Type, Expr(b.R), b.R);
            case IndexExpr ix:
                {
                    string i = Expr(ix.I);
                    return ix.X.Type.IsVec ? VectorIndex(Expr(ix.X), ix.X.Type, ix.I, i) : $"{Expr(ix.X)}[{i}]";
                }
            case MemberExpr me: return $"{Expr(me.X)}.{Swizzle(me.Name)}";
            case CallExpr c: return Call(c);
            default: throw WgslModule.Unsupported(e.GetType().Name);
        }
    }

    string BinaryText(string op, string l, Ty lt, string r, Expr re)
    {
        bool literalDivisor = re is Lit lit && lit.Text.TrimEnd('u', 'i') is var v && v != "0" && !v.StartsWith('-');
        if (op == "%" && lt.IsFloat) return $"tp_fmod({l}, {r})";
        if (op == "/" && lt.IsInt && !lt.IsVec && !literalDivisor) return lt.IsSigned ? $"tp_idiv({l}, {r})" : $"tp_udiv({l}, {r})";
        if (op == "%" && lt.IsInt && !lt.IsVec && (!literalDivisor || lt.IsSigned)) return lt.IsSigned ? $"tp_irem({l}, {r})" : $"tp_urem({l}, {r})";
        return $"({l} {op} {r})";
    }

    protected virtual string Literal(Lit l)
    {
        var t = l.Type;
        if (t.Scalar == "bool") return l.Text;
        bool hex = l.Text.StartsWith("0x", StringComparison.OrdinalIgnoreCase);
        string text = hex ? l.Text.TrimEnd('u', 'i') : l.Text.TrimEnd('u', 'i', 'f');
        if (text.StartsWith("0x", StringComparison.OrdinalIgnoreCase) && t.IsFloat)
            text = ((double)ulong.Parse(text[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture)).ToString("R", CultureInfo.InvariantCulture);
        switch (t.Concrete().Scalar)
        {
            case "f32":
                if (!text.Contains('.') && !text.Contains('e') && !text.Contains('E')) text += ".0";
                return text + FloatSuffix;
            case "u32":
                if (l.IsFloat) throw WgslModule.Unsupported($"the float literal {l.Text} as u32");
                return text + "u";
            default:
                if (l.IsFloat) throw WgslModule.Unsupported($"the float literal {l.Text} as i32");
                // NOTE: a hex literal over 0x7fffffff is unsigned in C; keep the i32 bits.
                return text.StartsWith("0x", StringComparison.OrdinalIgnoreCase) && ulong.Parse(text[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture) > int.MaxValue
                    ? Cast(Ty.I32, text + "u") : text;
        }
    }

    string Call(CallExpr c)
    {
        var a = c.Args.Select(Expr).ToArray();
        var user = Module.Functions.FirstOrDefault(f => f.Name == c.Name && !f.IsEntry);
        if (user is not null) return $"{Name(c.Name)}({string.Join(", ", a.Concat(ExtraArgs(user)))})";
        switch (c.Name)
        {
            case "f32" or "i32" or "u32" or "bool":
                {
                    var from = c.Args[0].Type.Concrete();
                    var to = Ty.Scal(c.Name);
                    if (from == to) return a[0];
                    if (from.Scalar == "bool") return $"({a[0]} ? {Literal(new Lit("1", false) { Type = to })} : {Zero(to)})";
                    if (to.Scalar == "bool") return $"({a[0]} != {Zero(from)})";
                    return Convert(a[0], from, to);
                }
            case "vec2" or "vec3" or "vec4":
                {
                    var t = c.Template!;
                    if (c.Args.Count == 1 && c.Args[0].Type.IsVec && c.Args[0].Type.Scalar != t.Scalar) return Convert(a[0], c.Args[0].Type, t);
                    return VecCtor(t, a);
                }
            case "bitcast":
                {
                    var from = c.Args[0].Type.Concrete();
                    return from == c.Template ? a[0] : Bitcast(a[0], from, c.Template!);
                }
            case "select":
                if (c.Args[2].Type.IsVec) return VectorSelect(a[0], a[1], a[2], c.Type);
                return $"({a[2]} ? {a[1]} : {a[0]})";
        }
        return Builtin(c, a) ?? $"{c.Name}({string.Join(", ", a)})";
    }

    protected virtual string VectorSelect(string f, string t, string cond, Ty type) => throw WgslModule.Unsupported("select with a vector condition");

    /// <summary>The integer and float helpers with WGSL semantics, in C syntax (<paramref name="f"/>/<paramref name="i"/>
    /// /<paramref name="u"/> are the dialect's float/int/uint type names).</summary>
    protected static string CHelpers(string f, string i, string u, string fsuf, string toInt, string toUint, string intMin) => $$"""
{{i}} tp_idiv({{i}} a, {{i}} b) { bool z = b == 0 || (a == {{intMin}} && b == -1); {{i}} q = a / (z ? 1 : b); return z ? a : q; }
{{u}} tp_udiv({{u}} a, {{u}} b) { {{u}} q = a / max(b, 1u); return b == 0u ? a : q; }
{{i}} tp_irem({{i}} a, {{i}} b) { bool z = b == 0 || (a == {{intMin}} && b == -1); {{i}} q = a / (z ? 1 : b); return z ? 0 : a - b * q; }
{{u}} tp_urem({{u}} a, {{u}} b) { {{u}} r = a % max(b, 1u); return b == 0u ? 0u : r; }
{{f}} tp_fmod({{f}} a, {{f}} b) { return a - b * trunc(a / b); }
{{i}} tp_f2i({{f}} x) { return isnan(x) ? 0 : x <= -2147483648.0{{fsuf}} ? {{intMin}} : x >= 2147483520.0{{fsuf}} ? 2147483647 : {{toInt}}; }
{{u}} tp_f2u({{f}} x) { return isnan(x) ? 0u : x <= 0.0{{fsuf}} ? 0u : x >= 4294967040.0{{fsuf}} ? 4294967295u : {{toUint}}; }

""";
}
