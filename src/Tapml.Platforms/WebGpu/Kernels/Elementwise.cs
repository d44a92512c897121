using System.Globalization;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.WebGpu.Kernels;

/// <summary>Unary, binary, variadic and ternary element-wise ops with numpy broadcasting, Cast and Clip: one
/// generator; each op is an expression over its loaded inputs <c>x0, x1, …</c>.</summary>
public static class Elementwise
{
    /// <summary>Expression of an op given its input expressions and their storages; returns WGSL of the output scalar.</summary>
    public delegate string Expr(string[] x, GpuStorage[] s, NodeContext ctx);

    /// <summary>Expressions of the ops whose kernel is one <see cref="Map"/> with the first input's type (the
    /// fused element-wise kernel composes them).</summary>
    static readonly Dictionary<string, Expr> Exprs = new();

    public static Expr? ExprOf(string op) => Exprs.GetValueOrDefault(op);

    /// <summary>Shared WGSL helpers of element-wise expressions (erf_, sincos_, pow_ …).</summary>
    public static string HelperFunctions => Helpers;

    static readonly string[] FloatOnly = ["Sqrt", "Exp", "Log", "Sin", "Cos", "Tan", "Tanh", "Sigmoid", "Reciprocal", "Floor", "Ceil", "Round", "Erf",
        "Softplus", "Softsign", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "LeakyRelu", "Elu", "Selu", "HardSigmoid",
        "ThresholdedRelu", "Celu", "HardSwish", "Mish", "Gelu", "IsNaN", "IsInf", "Shrink"];

    public static void Register(Action<GpuOp> add)
    {
        void Unary(string op, Func<string, string> f, int since = 1)
        {
            Exprs[op] = (x, s, c) => f(x[0]);
            add(new GpuOp("", op, since, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx)], ins[0]!.DType, (x, s, c) => f(x[0])), FloatSupport(op)));
        }
        void UnaryAttr(string op, Func<string, NodeContext, string> f)
        {
            Exprs[op] = (x, s, c) => f(x[0], c);
            add(new GpuOp("", op, 1, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx)], ins[0]!.DType, (x, s, c) => f(x[0], c)), FloatSupport(op)));
        }

        Unary("Neg", x => $"-{x}");
        Unary("Abs", x => $"abs({x})");
        Unary("Sign", x => $"sign({x})");
        Unary("Relu", x => $"max({x}, {Zero(x)})");
        Unary("Sqrt", x => $"sqrt({x})");
        Unary("Exp", x => $"exp({x})");
        Unary("Log", x => $"log({x})");
        // NOTE: own sin/cos: Vulkan only promises 2^-11 absolute error for the built-ins (SwiftShader shows 2e-4).
        Unary("Sin", x => $"sincos_({x}, 0u)");
        Unary("Cos", x => $"sincos_({x}, 1u)");
        Unary("Tan", x => $"tan({x})");
        // NOTE: clamped: some drivers compute tanh through exp and overflow to NaN for large |x|.
        Unary("Tanh", x => $"tanh(clamp({x}, -20.0, 20.0))");
        Unary("Sigmoid", x => $"(1.0 / (1.0 + exp(-{x})))");
        Unary("Reciprocal", x => $"(1.0 / {x})");
        Unary("Floor", x => $"floor({x})");
        Unary("Ceil", x => $"ceil({x})");
        Unary("Round", x => $"round({x})");
        Unary("Erf", x => $"erf_({x})");
        Unary("Softplus", x => $"select(log(1.0 + exp({x})), {x}, {x} > 30.0)");
        Unary("Softsign", x => $"({x} / (1.0 + abs({x})))");
        Unary("Asin", x => $"asin({x})");
        Unary("Acos", x => $"acos({x})");
        Unary("Atan", x => $"atan({x})");
        Unary("Sinh", x => $"sinh({x})");
        Unary("Cosh", x => $"cosh({x})");
        Unary("Asinh", x => $"asinh({x})");
        Unary("Acosh", x => $"acosh({x})");
        Unary("Atanh", x => $"atanh({x})");
        Unary("HardSwish", x => $"({x} * max(0.0, min(1.0, {x} / 6.0 + 0.5)))", 14);
        Unary("Mish", x => $"({x} * tanh(clamp(select(log(1.0 + exp({x})), {x}, {x} > 30.0), -20.0, 20.0)))", 18);
        add(new GpuOp("", "Not", 1, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx)], DType.Bool, (x, s, c) => $"(1u - {x[0]})")));
        add(new GpuOp("", "IsNaN", 9, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx)], DType.Bool, (x, s, c) => $"select(0u, 1u, isnan_({x[0]}))"), FloatSupport("IsNaN")));
        add(new GpuOp("", "IsInf", 10, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx)], DType.Bool, (x, s, c) =>
        {
            string pos = c.Int("detect_positive", 1) != 0 ? $"(bitcast<u32>({x[0]}) == 0x7f800000u)" : "false";
            string neg = c.Int("detect_negative", 1) != 0 ? $"(bitcast<u32>({x[0]}) == 0xff800000u)" : "false";
            return $"select(0u, 1u, {pos} || {neg})";
        }), FloatSupport("IsInf")));
        UnaryAttr("LeakyRelu", (x, c) => $"select({x} * {F(c.Float("alpha", 0.01f))}, {x}, {x} >= 0.0)");
        UnaryAttr("Elu", (x, c) => $"select({F(c.Float("alpha", 1f))} * (exp({x}) - 1.0), {x}, {x} >= 0.0)");
        UnaryAttr("Selu", (x, c) => $"({F(c.Float("gamma", 1.05070102f))} * select({F(c.Float("alpha", 1.67326319f))} * (exp({x}) - 1.0), {x}, {x} > 0.0))");
        UnaryAttr("HardSigmoid", (x, c) => $"max(0.0, min(1.0, {F(c.Float("alpha", 0.2f))} * {x} + {F(c.Float("beta", 0.5f))}))");
        UnaryAttr("ThresholdedRelu", (x, c) => $"select(0.0, {x}, {x} > {F(c.Float("alpha", 1f))})");
        UnaryAttr("Celu", (x, c) => $"(max(0.0, {x}) + min(0.0, {F(c.Float("alpha", 1f))} * (exp({x} / {F(c.Float("alpha", 1f))}) - 1.0)))");
        // ONNX Shrink: x + bias below -lambd, x - bias above lambd, 0 between.
        UnaryAttr("Shrink", (x, c) => $"select(select(0.0, {x} - {F(c.Float("bias", 0f))}, {x} > {F(c.Float("lambd", 0.5f))}), {x} + {F(c.Float("bias", 0f))}, {x} < -{F(c.Float("lambd", 0.5f))})");
        add(new GpuOp("", "Gelu", 20, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx)], ins[0]!.DType, (x, s, c) => c.String("approximate", "none") == "tanh"
            ? $"(0.5 * {x[0]} * (1.0 + tanh(clamp(0.7978845608 * ({x[0]} + 0.044715 * {x[0]} * {x[0]} * {x[0]}), -20.0, 20.0))))"
            : $"(0.5 * {x[0]} * (1.0 + erf_({x[0]} * 0.70710678118654752)))"), FloatSupport("Gelu")));

        void Binary(string op, Func<string, string, GpuStorage, string> f, Func<NodeContext, IReadOnlyList<TypeRef?>, string?>? support = null)
        {
            Exprs[op] = (x, s, c) => f(x[0], x[1], s[0]);
            add(new GpuOp("", op, 1, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx)], ins[0]!.DType, (x, s, c) => f(x[0], x[1], s[0])), support));
        }
        Binary("Add", (a, b, s) => $"({a} + {b})");
        Binary("Sub", (a, b, s) => $"({a} - {b})");
        Binary("Mul", (a, b, s) => $"({a} * {b})");
        Binary("Div", (a, b, s) => s == GpuStorage.F32 || s == GpuStorage.F16x2 ? $"({a} / {b})" : $"div_{Wgsl.Scalar(s)}({a}, {b})");
        Exprs["Pow"] = (x, s, c) => IsFloat(s[0]) ? $"pow_({x[0]}, f32({x[1]}))" : $"{Wgsl.Scalar(s[0])}(pow_(f32({x[0]}), f32({x[1]})))";
        add(new GpuOp("", "Pow", 1, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx)], ins[0]!.DType, Exprs["Pow"]), FloatSupport("Pow")));
        add(new GpuOp("", "PRelu", 1, (g, ctx, ins) =>
        {
            var slope = Spatial.PReluSlope(g, ctx, GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx));
            try { return Map(g, ctx, [GpuOps.In(ins, 0, ctx), slope], ins[0]!.DType, (x, s, c) => $"select({x[0]} * {x[1]}, {x[0]}, {x[0]} >= {Zero(x[0], s[0])})"); }
            finally { if (!ReferenceEquals(slope, ins[1])) g.Free(slope); }
        }));
        add(new GpuOp("", "Mod", 10, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx)], ins[0]!.DType, (x, s, c) =>
            c.Int("fmod", 0) != 0 || IsFloat(s[0]) ? $"({x[0]} % {x[1]})" : $"mod_{Wgsl.Scalar(s[0])}({x[0]}, {x[1]})"),
            (ctx, t) => t[0] is { } a && IsFloatType(a.ElemType) && ctx.Int("fmod", 0) == 0 ? "Mod on floats needs fmod=1" : null));
        // Shifts of 32 or more bits give 0 (WGSL would take the amount modulo 32); narrower types are masked on store.
        add(new GpuOp("", "BitShift", 11, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx)], ins[0]!.DType, (x, s, c) =>
            $"select(0u, {x[0]} {(c.String("direction", "") == "LEFT" ? "<<" : ">>")} {x[1]}, {x[1]} < 32u)"),
            (ctx, t) => ctx.String("direction", "") is "LEFT" or "RIGHT" ? t[0] is { } a && Wgsl.StorageOf(a.ElemType) != GpuStorage.U32 ? $"BitShift on {DTypes.Name(a.ElemType)}: unsigned integers only" : null
                : $"BitShift direction '{ctx.String("direction", "")}' must be LEFT or RIGHT"));
        void Compare(string op, string cmp) =>
            add(new GpuOp("", op, 1, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx)], DType.Bool, (x, s, c) => $"select(0u, 1u, {x[0]} {cmp} {x[1]})")));
        Compare("Equal", "==");
        Compare("Less", "<");
        Compare("LessOrEqual", "<=");
        Compare("Greater", ">");
        Compare("GreaterOrEqual", ">=");
        Binary("And", (a, b, s) => $"({a} & {b})");
        Binary("Or", (a, b, s) => $"({a} | {b})");
        Binary("Xor", (a, b, s) => $"({a} ^ {b})");
        Exprs["Where"] = (x, s, c) => $"select({x[2]}, {x[1]}, {x[0]} != 0u)";
        add(new GpuOp("", "Where", 9, (g, ctx, ins) => Map(g, ctx, [GpuOps.In(ins, 0, ctx), GpuOps.In(ins, 1, ctx), GpuOps.In(ins, 2, ctx)], ins[1]!.DType, Exprs["Where"])));

        void Variadic(string op, Func<string, string, string> fold, Func<string, int, string>? finish = null) =>
            add(new GpuOp("", op, 1, (g, ctx, ins) =>
            {
                var xs = ins.Where(t => t is not null).Select(t => t!).ToArray();
                if (xs.Length == 0) throw ctx.Error("needs at least one input");
                if (xs.Length > 8) throw new UnsupportedException($"{op} with {xs.Length} inputs: webgpu binds at most 8 inputs per kernel");
                return Map(g, ctx, xs, xs[0].DType, (x, s, c) =>
                {
                    string acc = x[0];
                    for (int k = 1; k < x.Length; k++) acc = fold(acc, x[k]);
                    return finish?.Invoke(acc, x.Length) ?? acc;
                });
            }));
        Variadic("Sum", (a, b) => $"({a} + {b})");
        Variadic("Mean", (a, b) => $"({a} + {b})", (acc, n) => $"({acc} / {n}.0)");
        Variadic("Max", (a, b) => $"max_({a}, {b})");
        Variadic("Min", (a, b) => $"min_({a}, {b})");

        Exprs["Cast"] = (e, s, c) => CastExpr(e[0], s[0], (DType)c.Int("to"), c);
        add(new GpuOp("", "Cast", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            var to = (DType)ctx.Int("to");
            if (to == DType.Float32 && g.HalfWeightAsF32(x) is { } widened) return [widened];
            return x.DType == to ? [g.Alias(x, x.Shape)] : Map(g, ctx, [x], to, (e, s, c) => CastExpr(e[0], s[0], to, c));
        }, (ctx, t) => Wgsl.StorageOf((DType)ctx.Int("to", 0)) is null ? $"Cast to {DTypes.Name((DType)ctx.Int("to", 0))}: no WGSL type" : null));
        add(new GpuOp("", "CastLike", 15, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            var to = GpuOps.In(ins, 1, ctx).DType;
            return x.DType == to ? [g.Alias(x, x.Shape)] : Map(g, ctx, [x], to, (e, s, c) => CastExpr(e[0], s[0], to, c));
        }));
        add(new GpuOp("", "Clip", 1, (g, ctx, ins) =>
        {
            var x = GpuOps.In(ins, 0, ctx);
            if (ctx.Opset < 11)
                return Map(g, ctx, [x], x.DType, (e, s, c) => $"clamp({e[0]}, {F(c.Float("min", float.MinValue))}, {F(c.Float("max", float.MaxValue))})");
            var args = new List<GpuTensor> { x };
            GpuTensor? lo = ins.Length > 1 ? ins[1] : null, hi = ins.Length > 2 ? ins[2] : null;
            if (lo is not null) args.Add(lo);
            if (hi is not null) args.Add(hi);
            return Map(g, ctx, args.ToArray(), x.DType, (e, s, c) =>
            {
                string r = e[0];
                int k = 1;
                if (lo is not null) r = $"max_({r}, {e[k++]})";
                if (hi is not null) r = $"min_({r}, {e[k]})";
                return r;
            });
        }));
    }

    static Func<NodeContext, IReadOnlyList<TypeRef?>, string?> FloatSupport(string op) => (ctx, t) =>
        FloatOnly.Contains(op) && t.Count > 0 && t[0] is { } a && !IsFloatType(a.ElemType) ? $"{op} on {DTypes.Name(a.ElemType)} is not implemented on webgpu (floats only)" : null;

    static bool IsFloat(GpuStorage s) => s is GpuStorage.F32 or GpuStorage.F16x2;
    static bool IsFloatType(DType t) => t is DType.Float32 or DType.Float16 or DType.BFloat16;
    static string Zero(string x, GpuStorage s = GpuStorage.F32) => IsFloat(s) ? "0.0" : Wgsl.Scalar(s) + "(0)";

    /// <summary>An exact f32 literal.</summary>
    public static string F(float v) => float.IsFinite(v)
        ? $"bitcast<f32>({BitConverter.SingleToUInt32Bits(v)}u)"
        : $"bits_({BitConverter.SingleToUInt32Bits(v)}u)";

    /// <summary>Cast: as <see cref="Convert"/>, but float → bfloat16 before opset 19 truncates (as the cpu reference
    /// and ONNX's test data of that era do).</summary>
    static string CastExpr(string x, GpuStorage from, DType to, NodeContext ctx) =>
        to == DType.BFloat16 && IsFloat(from) && ctx.Opset < 19 ? $"bitcast<f32>(bitcast<u32>({x}) & 0xffff0000u)" : Convert(x, from, to);

    /// <summary>Converts a loaded value of storage <paramref name="from"/> to the storage of <paramref name="to"/>.</summary>
    public static string Convert(string x, GpuStorage from, DType to)
    {
        var target = Wgsl.StorageOf(to)!.Value;
        if (to == DType.Bool) return IsFloat(from) ? $"select(0u, 1u, {x} != 0.0)" : $"select(0u, 1u, {x} != {Wgsl.Scalar(from)}(0))";
        string ts = Wgsl.Scalar(target), fs = Wgsl.Scalar(from);
        if (ts == fs) return x;
        if (IsFloat(from) && ts != "f32")
            // NOTE: float→int truncates toward zero; NaN and out-of-range values have no defined result in ONNX either.
            return $"{ts}(trunc({x}))";
        return $"{ts}({x})";
    }

    /// <summary>Shared WGSL helpers (emitted into every element-wise kernel; unused ones cost nothing).</summary>
    const string Helpers = """
fn erf_(x: f32) -> f32 {
  // Abramowitz & Stegun 7.1.26 refined: |error| < 1.2e-7 via the erfc rational approximation (Numerical Recipes erfcc).
  let z = abs(x);
  let t = 1.0 / (1.0 + 0.5 * z);
  let r = t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
  return select(r - 1.0, 1.0 - r, x >= 0.0);
}
fn sincos_(x: f32, shift: u32) -> f32 {
  // Cody–Waite reduction by π/2 in three parts (cephes sinf constants ×2), then minimax polynomials on [-π/4, π/4].
  if (isnan_(x) || abs(x) > 1.0e7) { return select(sin(x), cos(x), shift == 1u); }
  let q = round(x * 0.63661977236758134);
  var r = x - q * 1.5703125;
  r = r - q * 4.837512969970703125e-4;
  r = r - q * 7.54978995489188216e-8;
  let quadrant = (bitcast<u32>(i32(q)) + shift) & 3u;
  let r2 = r * r;
  let s = r + r * r2 * (-1.6666654611e-1 + r2 * (8.3321608736e-3 + r2 * -1.9515295891e-4));
  let c = 1.0 - 0.5 * r2 + r2 * r2 * (4.166664568298827e-2 + r2 * (-1.388731625493765e-3 + r2 * 2.443315711809948e-5));
  switch quadrant {
    case 0u: { return s; }
    case 1u: { return c; }
    case 2u: { return -s; }
    default: { return -c; }
  }
}
fn isnan_(x: f32) -> bool { return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u; }
fn pow_(x: f32, y: f32) -> f32 {
  if (y == 0.0) { return 1.0; }
  if (y == 1.0) { return x; }
  if (y == 2.0) { return x * x; }
  if (y == 0.5) { return sqrt(x); }
  if (isnan_(x) || isnan_(y)) { return x + y; }
  if (x < 0.0) {
    // ONNX (numpy) Pow: a negative base has a real power only for integer exponents; NaN otherwise (WGSL's pow is
    // undefined for x < 0 and differs by driver).
    if (y != floor(y)) { return bits_(0x7fc00000u); }
    let r = pow(-x, y);
    return select(r, -r, abs(y) < 16777216.0 && (i32(y) & 1) == 1);
  }
  if (x == 0.0) { return select(0.0, bits_(0x7f800000u), y < 0.0); }
  return pow(x, y);
}
fn max_f32(a: f32, b: f32) -> f32 { return select(max(a, b), a + b, isnan_(a) || isnan_(b)); }
fn min_f32(a: f32, b: f32) -> f32 { return select(min(a, b), a + b, isnan_(a) || isnan_(b)); }
fn div_i32(a: i32, b: i32) -> i32 { return select(a / b, 0, b == 0); }
fn div_u32(a: u32, b: u32) -> u32 { return select(a / b, 0u, b == 0u); }
fn mod_i32(a: i32, b: i32) -> i32 { if (b == 0) { return 0; } let r = a % b; return select(r, r + b, r != 0 && ((r < 0) != (b < 0))); }
fn mod_u32(a: u32, b: u32) -> u32 { return select(a % b, 0u, b == 0u); }
""";

    /// <summary>Runs <paramref name="expr"/> over the broadcast of <paramref name="inputs"/> into a new tensor of
    /// <paramref name="outType"/>.</summary>
    /// <summary>Metadata of a broadcast kernel over inputs <c>x0, x1, …</c>: element count, output shape, each
    /// input's broadcast strides (offset targets for <see cref="Wgsl.Offsets"/>); flat when no input broadcasts.</summary>
    public static (Meta Meta, int ShapeAt, (string, int, int)[] Targets, bool Flat, int Rank) Layout(GpuTensor[] inputs, long[] outShape, long length)
    {
        var meta = new Meta();
        meta.Add(length);
        int shapeAt = meta.AddAll(outShape);
        var targets = new (string, int, int)[inputs.Length];
        for (int k = 0; k < inputs.Length; k++) targets[k] = ($"x{k}", meta.AddAll(ShapeUtil.BroadcastStrides(inputs[k].Shape, outShape)), -1);
        return (meta, shapeAt, targets, inputs.All(t => ShapeUtil.SameShape(t.Shape, outShape)), outShape.Length);
    }

    static Value?[] Map(WebGpuPlatform g, NodeContext ctx, GpuTensor[] inputs, DType outType, Expr expr)
    {
        var outShape = ShapeUtil.Broadcast(inputs.Select(t => t.Shape).ToArray());
        var storages = inputs.Select(t => t.Storage).ToArray();
        foreach (var t in inputs) if (t.Storage == GpuStorage.I32) GpuOps.CheckNotSaturated(t, ctx);
        var y = g.Empty(outType, outShape);
        if (y.Length == 0) return [y];
        var (meta, shapeAt, targets, flat, rank) = Kernels.Elementwise.Layout(inputs, outShape, y.Length);
        var key = new WebGpuPlatform.KernelKey("map", $"{Wgsl.Letters(storages)}|{rank}|{flat}|{(int)outType}", ctx.Node);
        g.Launch(key, () =>
        {
            var w = new Wgsl(g.Workgroup);
            for (int k = 0; k < inputs.Length; k++) w.In($"in{k}", storages[k]);
            w.Out("y", outType);
            string scalarOut = Wgsl.Scalar(Wgsl.StorageOf(outType)!.Value);
            // Helpers typed max_/min_ resolve by the input scalar.
            string ins = string.Join("", Enumerable.Range(0, inputs.Length).Select(k => $"  let x{k} = in{k}({(flat ? "i" : $"u32(o_x{k})")});\n"));
            string body = (flat ? "" : Wgsl.Offsets("i", rank, shapeAt, targets)) + ins +
                $"  y_st(i, {scalarOut}({expr(Enumerable.Range(0, inputs.Length).Select(k => $"x{k}").ToArray(), storages, ctx)}));";
            string s0 = Wgsl.Scalar(storages[0]);
            w.Decl(Helpers);
            if (s0 != "f32") w.Decl($"fn max_{s0}(a: {s0}, b: {s0}) -> {s0} {{ return max(a, b); }}\nfn min_{s0}(a: {s0}, b: {s0}) -> {s0} {{ return min(a, b); }}");
            return w.Build(body.Replace("max_(", $"max_{s0}(").Replace("min_(", $"min_{s0}("));
        }, $"{ctx.Node.OpType}_r{rank}{(flat ? "_flat" : "")}", [.. inputs, y], meta, y.Length);
        return [y];
    }
}
