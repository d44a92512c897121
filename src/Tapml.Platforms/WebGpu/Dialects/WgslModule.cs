using System.Globalization;
using System.Text;
using Tapml.Core;

namespace Tapml.Platforms.WebGpu.Dialects;

// A typed syntax tree of the WGSL subset tapml's kernel generators write (storage and workgroup variables, functions,
// one compute entry point; let/var, if, for, while, switch; scalar and vector arithmetic, built-in calls). The kernels
// are written once, as WGSL; the renderers (CStyleRenderer and its subclasses) print this tree in other dialects.

/// <summary>A WGSL type: a scalar (<c>f32 i32 u32 bool</c>, or an abstract literal type <c>int</c>/<c>float</c>), a
/// vector of N scalars, an array (Len 0: runtime-sized), or void.</summary>
public sealed record Ty(string Kind, string Scalar = "", int N = 0, Ty? Elem = null, int Len = 0)
{
    public static readonly Ty F32 = new("scalar", "f32"), I32 = new("scalar", "i32"), U32 = new("scalar", "u32"), Bool = new("scalar", "bool");
    public static readonly Ty AbsInt = new("scalar", "int"), AbsFloat = new("scalar", "float"), Void = new("void");
    public static Ty Scal(string s) => s switch { "f32" => F32, "i32" => I32, "u32" => U32, "bool" => Bool, "int" => AbsInt, "float" => AbsFloat, _ => new("scalar", s) };
    public static Ty Vec(int n, string s) => new("vec", s, n);
    public bool IsScalar => Kind == "scalar";
    public bool IsVec => Kind == "vec";
    public bool IsArray => Kind == "array";
    public bool IsAbstract => Scalar is "int" or "float" && Kind is "scalar" or "vec";
    public bool IsFloat => Scalar is "f32" or "float" && Kind is "scalar" or "vec";
    public bool IsInt => Scalar is "i32" or "u32" or "int" && Kind is "scalar" or "vec";
    public bool IsSigned => Scalar is "i32" or "int";
    /// <summary>The same shape with another scalar (vectors keep N).</summary>
    public Ty WithScalar(string s) => IsVec ? Vec(N, s) : Scal(s);
    /// <summary>An abstract type made concrete the way a WGSL declaration does (int → i32, float → f32).</summary>
    public Ty Concrete() => !IsAbstract ? this : WithScalar(Scalar == "int" ? "i32" : "f32");
    public override string ToString() => Kind switch
    {
        "scalar" => Scalar, "vec" => $"vec{N}<{Scalar}>", "array" => Len > 0 ? $"array<{Elem}, {Len}>" : $"array<{Elem}>", _ => Kind,
    };
}

public abstract class Expr { public Ty Type = Ty.Void; }
public sealed class Lit(string text, bool isFloat) : Expr { public string Text = text; public bool IsFloat = isFloat; }
public sealed class Ident(string name) : Expr { public string Name = name; }
public sealed class UnaryExpr(string op, Expr x) : Expr { public string Op = op; public Expr X = x; }
public sealed class BinaryExpr(string op, Expr l, Expr r) : Expr { public string Op = op; public Expr L = l; public Expr R = r; }
/// <summary>A call: a user function, a built-in, a type constructor (<c>f32(x)</c>, <c>vec4&lt;f32&gt;(…)</c>) or
/// <c>bitcast&lt;T&gt;(x)</c>; <see cref="Template"/> is the type written in angle brackets.</summary>
public sealed class CallExpr(string name, Ty? template, List<Expr> args) : Expr { public string Name = name; public Ty? Template = template; public List<Expr> Args = args; }
public sealed class IndexExpr(Expr x, Expr i) : Expr { public Expr X = x; public Expr I = i; }
public sealed class MemberExpr(Expr x, string name) : Expr { public Expr X = x; public string Name = name; }

public abstract class Stmt;
public sealed class BlockStmt(List<Stmt> body) : Stmt { public List<Stmt> Body = body; }
public sealed class DeclStmt(string kind, string name, Ty? declared, Expr? init) : Stmt
{ public string Kind = kind; public string Name = name; public Ty? Declared = declared; public Expr? Init = init; public Ty Type = Ty.Void; }
public sealed class AssignStmt(Expr lhs, string op, Expr? rhs) : Stmt { public Expr Lhs = lhs; public string Op = op; public Expr? Rhs = rhs; }
public sealed class ExprStmt(Expr e) : Stmt { public Expr E = e; }
public sealed class IfStmt(Expr cond, BlockStmt then, Stmt? els) : Stmt { public Expr Cond = cond; public BlockStmt Then = then; public Stmt? Else = els; }
public sealed class ForStmt(Stmt? init, Expr? cond, Stmt? update, BlockStmt body) : Stmt { public Stmt? Init = init; public Expr? Cond = cond; public Stmt? Update = update; public BlockStmt Body = body; }
public sealed class WhileStmt(Expr cond, BlockStmt body) : Stmt { public Expr Cond = cond; public BlockStmt Body = body; }
public sealed class LoopStmt(BlockStmt body) : Stmt { public BlockStmt Body = body; }
/// <summary>A switch; a clause's selectors hold null for <c>default</c>.</summary>
public sealed class SwitchStmt(Expr sel, List<(List<Expr?> Selectors, BlockStmt Body)> clauses) : Stmt { public Expr Sel = sel; public List<(List<Expr?> Selectors, BlockStmt Body)> Clauses = clauses; }
public sealed class ReturnStmt(Expr? value) : Stmt { public Expr? Value = value; }
public sealed class JumpStmt(string word) : Stmt { public string Word = word; }

/// <summary>A module-scope variable: a storage buffer (<see cref="Binding"/> ≥ 0) or workgroup memory.</summary>
public sealed record GlobalVar(string Name, string Space, bool Writable, Ty Type, int Binding);

public sealed class FnDecl(string name, List<(string Name, Ty Type, string? Builtin)> ps, Ty ret, BlockStmt body)
{
    public string Name = name;
    public List<(string Name, Ty Type, string? Builtin)> Params = ps;
    public Ty Ret = ret;
    public BlockStmt Body = body;
    public int[]? WorkgroupSize;
    public bool IsEntry => WorkgroupSize is not null;
}

/// <summary>A parsed and typed WGSL compute module.</summary>
public sealed class WgslModule
{
    public readonly List<GlobalVar> Globals = new();
    public readonly List<FnDecl> Functions = new();
    /// <summary>The module's <c>enable</c> directives (extensions it uses: <c>subgroups</c>).</summary>
    public readonly List<string> Enables = new();
    public FnDecl Entry => Functions.Single(f => f.IsEntry);

    /// <summary>Parses and types <paramref name="source"/>; a construct outside the subset throws
    /// <see cref="UnsupportedException"/> naming it.</summary>
    public static WgslModule Parse(string source)
    {
        var m = new Parser(Lexer.Tokens(source)).Module();
        new Typer(m).Run();
        return m;
    }

    // ---- lexer ------------------------------------------------------------------------------------------------------

    sealed record Tok(char Kind, string Text);   // Kind: 'i' identifier, 'n' number, 'p' punctuation, 'e' end

    static class Lexer
    {
        static readonly string[] Puncts = ["<<=", ">>=", "->", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "++", "--"];

        public static List<Tok> Tokens(string s)
        {
            var r = new List<Tok>();
            int i = 0;
            while (i < s.Length)
            {
                char c = s[i];
                if (char.IsWhiteSpace(c)) { i++; continue; }
                if (c == '/' && i + 1 < s.Length && s[i + 1] == '/') { while (i < s.Length && s[i] != '\n') i++; continue; }
                if (c == '/' && i + 1 < s.Length && s[i + 1] == '*') { int e = s.IndexOf("*/", i + 2, StringComparison.Ordinal); i = e < 0 ? s.Length : e + 2; continue; }
                if (char.IsLetter(c) || c == '_')
                {
                    int j = i;
                    while (j < s.Length && (char.IsLetterOrDigit(s[j]) || s[j] == '_')) j++;
                    r.Add(new Tok('i', s[i..j])); i = j; continue;
                }
                if (char.IsDigit(c) || (c == '.' && i + 1 < s.Length && char.IsDigit(s[i + 1])))
                {
                    int j = i;
                    if (c == '0' && i + 1 < s.Length && (s[i + 1] is 'x' or 'X'))
                    {
                        j += 2;
                        while (j < s.Length && (Uri.IsHexDigit(s[j]))) j++;
                    }
                    else
                    {
                        while (j < s.Length && (char.IsDigit(s[j]) || s[j] == '.')) j++;
                        if (j < s.Length && s[j] is 'e' or 'E')
                        {
                            j++;
                            if (j < s.Length && s[j] is '+' or '-') j++;
                            while (j < s.Length && char.IsDigit(s[j])) j++;
                        }
                    }
                    if (j < s.Length && s[j] is 'u' or 'i' or 'f' or 'h') j++;
                    r.Add(new Tok('n', s[i..j])); i = j; continue;
                }
                string? p = null;
                foreach (var q in Puncts) if (string.CompareOrdinal(s, i, q, 0, q.Length) == 0) { p = q; break; }
                p ??= c.ToString();
                r.Add(new Tok('p', p)); i += p.Length;
            }
            r.Add(new Tok('e', ""));
            return r;
        }
    }

    // ---- parser -----------------------------------------------------------------------------------------------------

    sealed class Parser(List<Tok> toks)
    {
        int _at;
        Tok Peek(int k = 0) => toks[Math.Min(_at + k, toks.Count - 1)];
        Tok Next() => toks[_at++];
        bool Is(string t) => Peek().Kind != 'e' && Peek().Text == t;
        bool Accept(string t) { if (!Is(t)) return false; _at++; return true; }
        void Expect(string t)
        {
            if (Accept(t)) return;
            // NOTE: '>>' closes two template lists (array<vec4<f32>>).
            if (t == ">" && Is(">>")) { toks[_at] = new Tok('p', ">"); return; }
            throw Unsupported($"expected '{t}' near '{Context()}'");
        }
        string Ident() => Peek().Kind == 'i' ? Next().Text : throw Unsupported($"expected a name near '{Context()}'");
        string Context() => string.Join(" ", toks.Skip(Math.Max(0, _at - 4)).Take(8).Select(t => t.Text));

        public WgslModule Module()
        {
            var m = new WgslModule();
            while (Peek().Kind != 'e')
            {
                if (Accept("enable"))
                {
                    do m.Enables.Add(Ident()); while (Accept(","));
                    Expect(";");
                    continue;
                }
                var attrs = Attributes();
                if (Accept("var")) m.Globals.Add(Global(attrs));
                else if (Accept("fn")) m.Functions.Add(Function(attrs));
                else throw Unsupported($"module-scope '{Peek().Text}' (only var and fn are rendered)");
            }
            return m;
        }

        Dictionary<string, List<Expr>> Attributes()
        {
            var a = new Dictionary<string, List<Expr>>();
            while (Accept("@"))
            {
                string name = Ident();
                var args = new List<Expr>();
                if (Accept("("))
                {
                    while (!Accept(")")) { args.Add(Expression()); Accept(","); }
                }
                a[name] = args;
            }
            return a;
        }

        GlobalVar Global(Dictionary<string, List<Expr>> attrs)
        {
            string space = "private";
            bool writable = true;
            if (Accept("<"))
            {
                space = Ident();
                writable = space != "storage";
                if (Accept(",")) writable = Ident() == "read_write";
                Expect(">");
            }
            string name = Ident();
            Expect(":");
            var ty = Type();
            if (Is("=")) throw Unsupported($"an initialized module-scope var '{name}'");
            Expect(";");
            if (space is not ("storage" or "workgroup")) throw Unsupported($"var<{space}> '{name}'");
            int binding = attrs.TryGetValue("binding", out var b) ? int.Parse(((Lit)b[0]).Text.TrimEnd('u', 'i'), CultureInfo.InvariantCulture) : -1;
            return new GlobalVar(name, space, writable, ty, binding);
        }

        FnDecl Function(Dictionary<string, List<Expr>> attrs)
        {
            string name = Ident();
            Expect("(");
            var ps = new List<(string, Ty, string?)>();
            while (!Accept(")"))
            {
                var pa = Attributes();
                string pn = Ident();
                Expect(":");
                var pt = Type();
                ps.Add((pn, pt, pa.TryGetValue("builtin", out var bi) ? ((Ident)bi[0]).Name : null));
                Accept(",");
            }
            var ret = Accept("->") ? Type() : Ty.Void;
            var f = new FnDecl(name, ps, ret, Block());
            if (attrs.ContainsKey("compute"))
            {
                var ws = attrs.TryGetValue("workgroup_size", out var w) ? w : throw Unsupported("a compute entry without @workgroup_size");
                f.WorkgroupSize = [.. ws.Select(e => e is Lit l ? int.Parse(l.Text.TrimEnd('u', 'i'), CultureInfo.InvariantCulture) : throw Unsupported("a workgroup size that is not a literal")), 1, 1];
                f.WorkgroupSize = f.WorkgroupSize[..3];
            }
            return f;
        }

        Ty Type()
        {
            string n = Ident();
            switch (n)
            {
                case "f32" or "i32" or "u32" or "bool": return Ty.Scal(n);
                case "vec2" or "vec3" or "vec4":
                    {
                        Expect("<"); var s = Type(); Expect(">");
                        return Ty.Vec(n[3] - '0', s.Scalar);
                    }
                case "vec2f" or "vec3f" or "vec4f": return Ty.Vec(n[3] - '0', "f32");
                case "vec2u" or "vec3u" or "vec4u": return Ty.Vec(n[3] - '0', "u32");
                case "vec2i" or "vec3i" or "vec4i": return Ty.Vec(n[3] - '0', "i32");
                case "array":
                    {
                        Expect("<");
                        var e = Type();
                        int len = 0;
                        if (Accept(",")) len = int.Parse(((Lit)Primary()).Text.TrimEnd('u', 'i'), CultureInfo.InvariantCulture);
                        Expect(">");
                        return new Ty("array", "", 0, e, len);
                    }
                default: throw Unsupported($"the type '{n}'");
            }
        }

        BlockStmt Block()
        {
            Expect("{");
            var body = new List<Stmt>();
            while (!Accept("}")) body.Add(Statement());
            return new BlockStmt(body);
        }

        Stmt Statement()
        {
            if (Is("{")) return Block();
            if (Accept(";")) return new BlockStmt([]);
            if (Accept("return"))
            {
                var v = Is(";") ? null : Expression();
                Expect(";");
                return new ReturnStmt(v);
            }
            if (Accept("break")) { if (Is("if")) throw Unsupported("break if"); Expect(";"); return new JumpStmt("break"); }
            if (Accept("continue")) { Expect(";"); return new JumpStmt("continue"); }
            if (Accept("if")) return If();
            if (Accept("for"))
            {
                Expect("(");
                var init = Is(";") ? null : Simple();
                Expect(";");
                var cond = Is(";") ? null : Expression();
                Expect(";");
                var upd = Is(")") ? null : Simple();
                Expect(")");
                return new ForStmt(init, cond, upd, Block());
            }
            if (Accept("while")) return new WhileStmt(Expression(), Block());
            if (Accept("loop"))
            {
                return new LoopStmt(Block());
            }
            if (Accept("switch"))
            {
                var sel = Expression();
                Expect("{");
                var clauses = new List<(List<Expr?>, BlockStmt)>();
                while (!Accept("}"))
                {
                    var sels = new List<Expr?>();
                    if (Accept("default")) sels.Add(null);
                    else
                    {
                        Expect("case");
                        do { if (Accept("default")) sels.Add(null); else sels.Add(Expression()); } while (Accept(",") && !Is(":") && !Is("{"));
                    }
                    Accept(":");
                    clauses.Add((sels, Block()));
                }
                return new SwitchStmt(sel, clauses);
            }
            if (Is("continuing")) throw Unsupported("a loop with a continuing block");
            var s = Simple();
            Expect(";");
            return s;
        }

        Stmt If()
        {
            var cond = Expression();
            var then = Block();
            Stmt? els = null;
            if (Accept("else")) els = Accept("if") ? If() : Block();
            return new IfStmt(cond, then, els);
        }

        /// <summary>A declaration, an assignment, an increment or a call (no trailing ';').</summary>
        Stmt Simple()
        {
            if (Is("let") || Is("var") || Is("const"))
            {
                string kind = Next().Text;
                if (kind == "var" && Accept("<")) { Ident(); Expect(">"); }
                string name = Ident();
                Ty? ty = Accept(":") ? Type() : null;
                Expr? init = Accept("=") ? Expression() : null;
                return new DeclStmt(kind, name, ty, init);
            }
            if (Accept("_")) { Expect("="); return new ExprStmt(Expression()); }
            var lhs = Unary();
            if (Accept("++")) return new AssignStmt(lhs, "++", null);
            if (Accept("--")) return new AssignStmt(lhs, "--", null);
            foreach (var op in new[] { "=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "<<=", ">>=" })
                if (Accept(op)) return new AssignStmt(lhs, op, Expression());
            if (lhs is CallExpr) return new ExprStmt(lhs);
            throw Unsupported($"the statement near '{Context()}'");
        }

        static readonly string[][] Levels =
        [
            ["||"], ["&&"], ["|"], ["^"], ["&"], ["==", "!="], ["<", ">", "<=", ">="], ["<<", ">>"], ["+", "-"], ["*", "/", "%"],
        ];

        public Expr Expression() => Binary(0);

        Expr Binary(int level)
        {
            if (level == Levels.Length) return Unary();
            var l = Binary(level + 1);
            while (Peek().Kind == 'p' && Levels[level].Contains(Peek().Text))
            {
                string op = Next().Text;
                l = new BinaryExpr(op, l, Binary(level + 1));
            }
            return l;
        }

        Expr Unary()
        {
            if (Peek().Kind == 'p' && Peek().Text is "-" or "!" or "~")
            {
                string op = Next().Text;
                return new UnaryExpr(op, Unary());
            }
            if (Is("&") || Is("*")) throw Unsupported("pointers");
            return Postfix(Primary());
        }

        Expr Postfix(Expr e)
        {
            while (true)
            {
                if (Accept("[")) { var i = Expression(); Expect("]"); e = new IndexExpr(e, i); }
                else if (Accept(".")) e = new MemberExpr(e, Ident());
                else return e;
            }
        }

        Expr Primary()
        {
            var t = Peek();
            if (t.Kind == 'n')
            {
                _at++;
                bool isFloat = t.Text.EndsWith('f') || t.Text.EndsWith('h') ||
                    (!t.Text.StartsWith("0x", StringComparison.OrdinalIgnoreCase) && (t.Text.Contains('.') || t.Text.Contains('e') || t.Text.Contains('E')));
                return new Lit(t.Text, isFloat);
            }
            if (Accept("(")) { var e = Expression(); Expect(")"); return e; }
            if (t.Kind != 'i') throw Unsupported($"the expression near '{Context()}'");
            _at++;
            if (t.Text is "true" or "false") return new Lit(t.Text, false) { Type = Ty.Bool };
            Ty? template = null;
            string name = t.Text;
            if (name is "vec2" or "vec3" or "vec4" or "array" && Is("<"))
            {
                _at--;
                template = Type();
            }
            else if (name == "bitcast")
            {
                Expect("<"); template = Type(); Expect(">");
            }
            if (Accept("("))
            {
                var args = new List<Expr>();
                while (!Accept(")")) { args.Add(Expression()); Accept(","); }
                return new CallExpr(name, template, args);
            }
            if (template is not null) throw Unsupported($"the type {template} used as a value");
            return new Ident(name);
        }
    }

    internal static UnsupportedException Unsupported(string what) => new($"the kernel uses {what}, which this dialect renderer does not translate");

    // ---- types ------------------------------------------------------------------------------------------------------

    /// <summary>Gives every expression its type and makes abstract literals concrete where their context fixes the type.</summary>
    sealed class Typer(WgslModule m)
    {
        readonly List<Dictionary<string, Ty>> _scopes = new();
        readonly Dictionary<string, FnDecl> _fns = new();
        FnDecl? _fn;

        static readonly HashSet<string> SameAsArgs =
        [
            "abs", "min", "max", "clamp", "sign", "floor", "ceil", "round", "trunc", "fract", "sqrt", "inverseSqrt", "exp", "exp2", "log", "log2",
            "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "pow", "fma", "mix", "step",
            "smoothstep", "saturate", "countOneBits", "reverseBits", "degrees", "radians",
        ];

        public void Run()
        {
            foreach (var f in m.Functions) _fns[f.Name] = f;
            foreach (var f in m.Functions)
            {
                _fn = f;
                _scopes.Clear();
                var top = new Dictionary<string, Ty>();
                foreach (var g in m.Globals) top[g.Name] = g.Type;
                _scopes.Add(top);
                var ps = new Dictionary<string, Ty>();
                foreach (var p in f.Params) ps[p.Name] = p.Type;
                _scopes.Add(ps);
                Block(f.Body);
            }
        }

        Ty Lookup(string name)
        {
            for (int i = _scopes.Count - 1; i >= 0; i--) if (_scopes[i].TryGetValue(name, out var t)) return t;
            throw Unsupported($"the name '{name}' before it is declared");
        }

        void Block(BlockStmt b)
        {
            _scopes.Add(new());
            foreach (var s in b.Body) Statement(s);
            _scopes.RemoveAt(_scopes.Count - 1);
        }

        void Statement(Stmt s)
        {
            switch (s)
            {
                case BlockStmt b: Block(b); break;
                case DeclStmt d:
                    {
                        Ty t;
                        if (d.Init is not null)
                        {
                            var it = Type(d.Init);
                            t = d.Declared ?? it.Concrete();
                            Fix(d.Init, t);
                        }
                        else t = d.Declared ?? throw Unsupported($"'{d.Name}' without a type or value");
                        d.Type = t;
                        _scopes[^1][d.Name] = t;
                        break;
                    }
                case AssignStmt a:
                    {
                        var lt = Type(a.Lhs);
                        if (a.Rhs is not null)
                        {
                            Type(a.Rhs);
                            Fix(a.Rhs, a.Op is "<<=" or ">>=" ? Ty.U32 : lt.IsVec && a.Rhs.Type.IsScalar ? Ty.Scal(lt.Scalar) : lt);
                        }
                        break;
                    }
                case ExprStmt e: Type(e.E); break;
                case IfStmt i: Type(i.Cond); Block(i.Then); if (i.Else is not null) Statement(i.Else); break;
                case ForStmt f:
                    _scopes.Add(new());
                    if (f.Init is not null) Statement(f.Init);
                    if (f.Cond is not null) Type(f.Cond);
                    if (f.Update is not null) Statement(f.Update);
                    Block(f.Body);
                    _scopes.RemoveAt(_scopes.Count - 1);
                    break;
                case WhileStmt w: Type(w.Cond); Block(w.Body); break;
                case LoopStmt l: Block(l.Body); break;
                case SwitchStmt sw:
                    {
                        var st = Type(sw.Sel).Concrete();
                        Fix(sw.Sel, st);
                        foreach (var (sels, body) in sw.Clauses)
                        {
                            foreach (var e in sels) if (e is not null) { Type(e); Fix(e, st); }
                            Block(body);
                        }
                        break;
                    }
                case ReturnStmt r:
                    if (r.Value is not null) { Type(r.Value); Fix(r.Value, _fn!.Ret); }
                    break;
                case JumpStmt: break;
                default: throw Unsupported(s.GetType().Name);
            }
        }

        /// <summary>Makes an abstract expression concrete as <paramref name="t"/> (a literal then prints as that type).</summary>
        public static void Fix(Expr e, Ty t)
        {
            if (!e.Type.IsAbstract || t.Kind is not ("scalar" or "vec") || t.IsAbstract) return;
            var target = e.Type.IsVec ? Ty.Vec(e.Type.N, t.Scalar) : Ty.Scal(t.Scalar);
            e.Type = target;
            switch (e)
            {
                case UnaryExpr u: Fix(u.X, target); break;
                case BinaryExpr b when b.Op is "<<" or ">>": Fix(b.L, target); break;
                case BinaryExpr b when b.Op is not ("==" or "!=" or "<" or ">" or "<=" or ">=" or "&&" or "||"): Fix(b.L, target); Fix(b.R, target); break;
                case CallExpr c: foreach (var a in c.Args) Fix(a, Ty.Scal(t.Scalar)); break;
            }
        }

        /// <summary>The common type of operands: the concrete one wins over an abstract one; abstract float over int.</summary>
        static Ty Common(Ty a, Ty b)
        {
            var sa = a.IsAbstract ? (b.IsAbstract ? (a.Scalar == "float" || b.Scalar == "float" ? "float" : "int") : b.Scalar) : a.Scalar;
            return a.IsVec ? Ty.Vec(a.N, sa) : b.IsVec ? Ty.Vec(b.N, sa) : Ty.Scal(sa);
        }

        Ty Type(Expr e) => e.Type = TypeOf(e);

        Ty TypeOf(Expr e)
        {
            switch (e)
            {
                case Lit l: return l.Text is "true" or "false" ? Ty.Bool : LitType(l.Text, l.IsFloat);
                case Ident i: return Lookup(i.Name);
                case UnaryExpr u:
                    {
                        var t = Type(u.X);
                        return u.Op == "!" ? t : t;
                    }
                case BinaryExpr b:
                    {
                        var l = Type(b.L); var r = Type(b.R);
                        switch (b.Op)
                        {
                            case "&&" or "||": return Ty.Bool;
                            case "<<" or ">>": Fix(b.R, Ty.U32); return l;
                            case "==" or "!=" or "<" or ">" or "<=" or ">=":
                                {
                                    var c = Common(l, r).Concrete();
                                    Fix(b.L, c); Fix(b.R, c);
                                    return c.IsVec ? Ty.Vec(c.N, "bool") : Ty.Bool;
                                }
                            default:
                                {
                                    var c = Common(l, r);
                                    if (!c.IsAbstract) { Fix(b.L, Ty.Scal(c.Scalar)); Fix(b.R, Ty.Scal(c.Scalar)); }
                                    return c;
                                }
                        }
                    }
                case IndexExpr ix:
                    {
                        var t = Type(ix.X);
                        Type(ix.I); Fix(ix.I, ix.I.Type.Concrete());
                        return t.IsArray ? t.Elem! : t.IsVec ? Ty.Scal(t.Scalar) : throw Unsupported($"indexing a {t}");
                    }
                case MemberExpr me:
                    {
                        var t = Type(me.X);
                        if (!t.IsVec) throw Unsupported($"member '.{me.Name}' of a {t}");
                        return me.Name.Length == 1 ? Ty.Scal(t.Scalar) : Ty.Vec(me.Name.Length, t.Scalar);
                    }
                case CallExpr c: return Call(c);
                default: throw Unsupported(e.GetType().Name);
            }
        }

        static Ty LitType(string text, bool isFloat)
        {
            if (text.EndsWith('u')) return Ty.U32;
            if (text.EndsWith('i')) return Ty.I32;
            if (text.EndsWith('f')) return Ty.F32;
            if (text.EndsWith('h')) throw Unsupported("f16 literals");
            return isFloat ? Ty.AbsFloat : Ty.AbsInt;
        }

        Ty Call(CallExpr c)
        {
            foreach (var a in c.Args) Type(a);
            if (_fns.TryGetValue(c.Name, out var f))
            {
                if (f.Params.Count != c.Args.Count) throw Unsupported($"a call of '{c.Name}' with {c.Args.Count} arguments");
                for (int i = 0; i < c.Args.Count; i++) Fix(c.Args[i], f.Params[i].Type);
                return f.Ret;
            }
            var args = c.Args;
            switch (c.Name)
            {
                case "f32" or "i32" or "u32" or "bool":
                    if (args.Count != 1) throw Unsupported($"{c.Name}() with {args.Count} arguments");
                    Fix(args[0], Ty.Scal(c.Name == "bool" ? args[0].Type.Concrete().Scalar : c.Name));
                    return Ty.Scal(c.Name);
                case "vec2" or "vec3" or "vec4":
                    {
                        var t = c.Template ?? Ty.Vec(c.Name[3] - '0', args.Select(a => a.Type).Aggregate(Common).Concrete().Scalar);
                        c.Template = t;
                        foreach (var a in args) Fix(a, Ty.Scal(t.Scalar));
                        return t;
                    }
                case "array":
                    {
                        var t = c.Template ?? throw Unsupported("array() without a type");
                        foreach (var a in args) Fix(a, t.Elem!);
                        return t;
                    }
                case "bitcast":
                    Fix(args[0], args[0].Type.Concrete());
                    return c.Template!;
                case "select":
                    {
                        var t = Common(args[0].Type, args[1].Type).Concrete();
                        Fix(args[0], t); Fix(args[1], t);
                        return t;
                    }
                case "dot": { var t = Common(args[0].Type, args[1].Type).Concrete(); Fix(args[0], t); Fix(args[1], t); return Ty.Scal(t.Scalar); }
                case "length" or "distance": return Ty.F32;
                case "unpack2x16float": Fix(args[0], Ty.U32); return Ty.Vec(2, "f32");
                case "pack2x16float": return Ty.U32;
                case "dot4I8Packed": Fix(args[0], Ty.U32); Fix(args[1], Ty.U32); return Ty.Scal("i32");
                case "subgroupShuffleXor": { var t = args[0].Type.Concrete(); Fix(args[0], t); Fix(args[1], Ty.U32); return t; }
                case "any" or "all": return Ty.Bool;
                case "workgroupBarrier" or "storageBarrier": return Ty.Void;
                default:
                    if (!SameAsArgs.Contains(c.Name)) throw Unsupported($"the function '{c.Name}'");
                    {
                        var t = args.Select(a => a.Type).Aggregate(Common);
                        if (!t.IsAbstract) foreach (var a in args) Fix(a, Ty.Scal(t.Scalar));
                        return t;
                    }
            }
        }
    }
}
