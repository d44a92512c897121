namespace Tapml.Platforms.WebGpu.Dialects;

/// <summary>A helper function rewritten to leave through one return at its end, the way Tint's SPIR-V writer does it
/// for every WGSL function: a return becomes <c>tp_ret = value; tp_go = false;</c> (and a <c>break</c> inside a loop),
/// and what follows a statement that may have returned runs under <c>if (tp_go)</c> (after a loop inside a loop,
/// <c>if (!tp_go) { break; }</c>). So <c>if (c) { return a; } return b;</c> becomes
/// <c>if (c) { tp_ret = a; tp_go = false; } if (tp_go) { tp_ret = b; tp_go = false; } return tp_ret;</c>: guarded
/// blocks without else branches. A function with a return inside a switch is left as it is.</summary>
/// <remarks>NOTE: why GLSL needs it. glslc inlines every helper; an early return in an inlined call becomes a
/// single-case <c>OpSwitch</c> around the call, an if/else diamond inside it. SwiftShader's
/// <c>vkCreateComputePipelines</c> takes time exponential in the number of if/else diamonds inside one loop body (each
/// doubles it: 20 diamonds 0.58 s, 22 2.2 s, 24 8.7 s; ifs without else and diamonds outside loops stay linear), so the
/// decode matrix-vector unit loop with 64 guarded x loads (<c>xg</c>) never finished compiling. This form leaves
/// ifs without else (glslc even turns the guarded assignments into OpSelect): 0.5 s for that kernel.</remarks>
public static class MergeReturns
{
    /// <summary>The names of the result variable and of the flag "no return yet".</summary>
    public const string Result = "tp_ret", Go = "tp_go";

    /// <summary><paramref name="f"/>'s body with one return at its end, or its body unchanged where it has no early
    /// return or returns inside a switch.</summary>
    public static BlockStmt Apply(FnDecl f)
    {
        var body = f.Body.Body;
        bool early = body.Take(body.Count - 1).Any(ContainsReturn) || body.Count > 0 && body[^1] is not ReturnStmt && ContainsReturn(body[^1]);
        if (!early || Rewrite(body, f.Ret, false) is not { } merged) return f.Body;
        var go = new DeclStmt("var", Go, Ty.Bool, new Lit("true", false) { Type = Ty.Bool }) { Type = Ty.Bool };
        if (f.Ret.Kind == "void") return new BlockStmt([go, .. merged]);
        return new BlockStmt([new DeclStmt("var", Result, f.Ret, null) { Type = f.Ret }, go, .. merged, new ReturnStmt(Ref(Result, f.Ret))]);
    }

    static Ident Ref(string name, Ty t) => new(name) { Type = t };

    static AssignStmt Stop() => new(Ref(Go, Ty.Bool), "=", new Lit("false", false) { Type = Ty.Bool });

    /// <summary><paramref name="ss"/> with its returns rewritten; null where one sits in a switch.</summary>
    static List<Stmt>? Rewrite(List<Stmt> ss, Ty ret, bool inLoop)
    {
        var o = new List<Stmt>();
        for (int i = 0; i < ss.Count; i++)
        {
            var s = ss[i];
            if (s is ReturnStmt r)
            {
                if (r.Value is not null) o.Add(new AssignStmt(Ref(Result, ret), "=", r.Value));
                o.Add(Stop());
                if (inLoop) o.Add(new JumpStmt("break"));
                return o;    // what follows a return is unreachable
            }
            if (!ContainsReturn(s)) { o.Add(s); continue; }
            switch (s)
            {
                case IfStmt c:
                    {
                        var then = Rewrite(c.Then.Body, ret, inLoop);
                        List<Stmt>? els = c.Else is null ? [] : Rewrite(c.Else is BlockStmt b ? b.Body : [c.Else], ret, inLoop);
                        if (then is null || els is null) return null;
                        o.Add(new IfStmt(c.Cond, new BlockStmt(then), els.Count == 0 ? null : new BlockStmt(els)));
                        break;
                    }
                case BlockStmt b:
                    if (Rewrite(b.Body, ret, inLoop) is not { } inner) return null;
                    o.Add(new BlockStmt(inner));
                    break;
                case ForStmt f:
                    if (Rewrite(f.Body.Body, ret, true) is not { } fb) return null;
                    o.Add(new ForStmt(f.Init, f.Cond, f.Update, new BlockStmt(fb)));
                    break;
                case WhileStmt w:
                    if (Rewrite(w.Body.Body, ret, true) is not { } wb) return null;
                    o.Add(new WhileStmt(w.Cond, new BlockStmt(wb)));
                    break;
                case LoopStmt l:
                    if (Rewrite(l.Body.Body, ret, true) is not { } lb) return null;
                    o.Add(new LoopStmt(new BlockStmt(lb)));
                    break;
                default: return null;    // a switch: its break would not leave the loop
            }
            // NOTE: a loop that returned left through break; the loop around it must leave too.
            if (inLoop && s is ForStmt or WhileStmt or LoopStmt)
                o.Add(new IfStmt(new UnaryExpr("!", Ref(Go, Ty.Bool)) { Type = Ty.Bool }, new BlockStmt([new JumpStmt("break")]), null));
            if (i + 1 < ss.Count)
            {
                if (Rewrite(ss[(i + 1)..], ret, inLoop) is not { } rest) return null;
                o.Add(new IfStmt(Ref(Go, Ty.Bool), new BlockStmt(rest), null));
            }
            return o;
        }
        return o;
    }

    static bool ContainsReturn(Stmt s) => s switch
    {
        ReturnStmt => true,
        BlockStmt b => b.Body.Any(ContainsReturn),
        IfStmt c => c.Then.Body.Any(ContainsReturn) || c.Else is not null && ContainsReturn(c.Else),
        ForStmt f => f.Body.Body.Any(ContainsReturn),
        WhileStmt w => w.Body.Body.Any(ContainsReturn),
        LoopStmt l => l.Body.Body.Any(ContainsReturn),
        SwitchStmt sw => sw.Clauses.Any(c => c.Body.Body.Any(ContainsReturn)),
        _ => false,
    };
}
