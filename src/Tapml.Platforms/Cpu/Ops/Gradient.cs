using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.Cpu.Ops;

/// <summary>ai.onnx.preview.training.Gradient: the derivatives of the graph value <c>y</c> with respect to the
/// values <c>xs</c> (seeded with ones, i.e. the gradient of sum(y)), by reverse-mode differentiation of the
/// nodes of the enclosing graph that lie between them. The forward values are recomputed from the node's
/// inputs (the graph's intermediates may already be freed); derivatives are exact, computed in double and
/// rounded once. Differentiable ops: Add, Sub, Mul, Div, Neg, Identity, Relu, Sigmoid, Tanh, Exp, Log, MatMul (2-D).</summary>
public sealed class GradientOps : ICpuOpFamily
{
    const string Domain = "ai.onnx.preview.training";

    public void Register(CpuOpRegistry r) => r.Add("Gradient", Gradient, domain: Domain);

    static Value?[] Gradient(NodeContext ctx, Value?[] inputs)
    {
        var graph = ctx.Owner ?? throw ctx.Unsupported("Gradient needs the enclosing graph");
        string[] xs = ctx.Strings("xs") ?? throw ctx.Error("attribute 'xs' is missing");
        string y = ctx.String("y", "");
        if (ctx.Has("zs")) throw ctx.Unsupported("Gradient with 'zs' is not implemented");
        if (inputs.Length != xs.Length) throw ctx.Error($"{inputs.Length} inputs for {xs.Length} names in 'xs'");
        // Nodes between xs and y, in graph order: those y depends on that depend on some x.
        var needed = new HashSet<string> { y };
        var path = new List<Node>();
        foreach (var n in graph.Nodes.TakeWhile(n => n != ctx.Node).Reverse())
        {
            if (!n.Outputs.Any(needed.Contains)) continue;
            path.Add(n);
            foreach (var i in n.Inputs) if (i.Length > 0 && !xs.Contains(i)) needed.Add(i);
        }
        path.Reverse();
        if (!xs.Contains(y) && path.Count == 0) throw ctx.Error($"'{y}' is not computed by any node before {ctx.Node.Name}");
        // Recompute the forward values on this path from the given xs (other inputs resolve in the outer scope).
        var fwd = new Graph { Name = ctx.Node.Name + "/forward" };
        foreach (var x in xs) fwd.Inputs.Add(new ValueInfo(x, null));
        fwd.Nodes.AddRange(path);
        var produced = path.SelectMany(n => n.Outputs).Where(o => o.Length > 0).Distinct().ToList();
        foreach (var o in produced) fwd.Outputs.Add(new ValueInfo(o, null));
        var values = new Dictionary<string, Tensor>();
        for (int i = 0; i < xs.Length; i++) values[xs[i]] = inputs.T(i, ctx);
        var outs = ctx.Subgraph(fwd, inputs);
        for (int i = 0; i < produced.Count; i++) values[produced[i]] = outs[i] as Tensor ?? throw ctx.Error($"'{produced[i]}' is not a tensor");
        Tensor Get(string name) => values.TryGetValue(name, out var t) ? t
            : throw ctx.Unsupported($"Gradient reads '{name}', which is neither in 'xs' nor computed on the path (constant inputs from outside are not supported)");

        var grads = new Dictionary<string, double[]>();
        var yT = Get(y);
        grads[y] = Enumerable.Repeat(1.0, (int)yT.Length).ToArray();
        void Accumulate(string name, double[] g)
        {
            if (!grads.TryGetValue(name, out var acc)) { grads[name] = g; return; }
            for (int i = 0; i < acc.Length; i++) acc[i] += g[i];
        }
        for (int k = path.Count - 1; k >= 0; k--)
        {
            var n = path[k];
            if (n.Outputs.Length != 1 || !grads.TryGetValue(n.Outputs[0], out var g)) continue;
            var outShape = Get(n.Outputs[0]).Shape;
            Tensor A() => Get(n.Inputs[0]);
            Tensor B() => Get(n.Inputs[1]);
            double[] Ex(Tensor t) => Expand(t.ToDoubleArray(), t.Shape, outShape);
            switch (n.OpType)
            {
                case "Identity": Accumulate(n.Inputs[0], g); break;
                case "Neg": Accumulate(n.Inputs[0], g.Select(v => -v).ToArray()); break;
                case "Add":
                    Accumulate(n.Inputs[0], Reduce(g, outShape, A().Shape));
                    Accumulate(n.Inputs[1], Reduce(g, outShape, B().Shape));
                    break;
                case "Sub":
                    Accumulate(n.Inputs[0], Reduce(g, outShape, A().Shape));
                    Accumulate(n.Inputs[1], Reduce(g.Select(v => -v).ToArray(), outShape, B().Shape));
                    break;
                case "Mul":
                {
                    var a = Ex(A()); var b = Ex(B());
                    Accumulate(n.Inputs[0], Reduce(Zip(g, b, (u, v) => u * v), outShape, A().Shape));
                    Accumulate(n.Inputs[1], Reduce(Zip(g, a, (u, v) => u * v), outShape, B().Shape));
                    break;
                }
                case "Div":
                {
                    var a = Ex(A()); var b = Ex(B());
                    Accumulate(n.Inputs[0], Reduce(Zip(g, b, (u, v) => u / v), outShape, A().Shape));
                    var gb = new double[g.Length];
                    for (int i = 0; i < g.Length; i++) gb[i] = -g[i] * a[i] / (b[i] * b[i]);
                    Accumulate(n.Inputs[1], Reduce(gb, outShape, B().Shape));
                    break;
                }
                case "Relu": { var a = A().ToDoubleArray(); Accumulate(n.Inputs[0], Zip(g, a, (u, v) => v > 0 ? u : 0)); break; }
                case "Exp": { var o = Get(n.Outputs[0]).ToDoubleArray(); Accumulate(n.Inputs[0], Zip(g, o, (u, v) => u * v)); break; }
                case "Log": { var a = A().ToDoubleArray(); Accumulate(n.Inputs[0], Zip(g, a, (u, v) => u / v)); break; }
                case "Tanh": { var o = Get(n.Outputs[0]).ToDoubleArray(); Accumulate(n.Inputs[0], Zip(g, o, (u, v) => u * (1 - v * v))); break; }
                case "Sigmoid": { var o = Get(n.Outputs[0]).ToDoubleArray(); Accumulate(n.Inputs[0], Zip(g, o, (u, v) => u * v * (1 - v))); break; }
                case "MatMul" when A().Rank == 2 && B().Rank == 2:
                {
                    int m = (int)A().Shape[0], kk = (int)A().Shape[1], nn = (int)B().Shape[1];
                    var a = A().ToDoubleArray(); var b = B().ToDoubleArray();
                    var ga = new double[m * kk]; var gb = new double[kk * nn];
                    for (int i = 0; i < m; i++)
                        for (int j = 0; j < nn; j++)
                            for (int p = 0; p < kk; p++) { ga[i * kk + p] += g[i * nn + j] * b[p * nn + j]; gb[p * nn + j] += a[i * kk + p] * g[i * nn + j]; }
                    Accumulate(n.Inputs[0], ga);
                    Accumulate(n.Inputs[1], gb);
                    break;
                }
                default: throw ctx.Unsupported($"Gradient through {n.OpType} is not implemented");
            }
        }
        var result = new Value?[xs.Length];
        for (int i = 0; i < xs.Length; i++)
        {
            var x = values[xs[i]];
            var gx = grads.GetValueOrDefault(xs[i]) ?? new double[x.Length];
            var t = Tensor.Zeros(x.DType, x.Shape);
            for (int e = 0; e < gx.Length; e++) t.SetDouble(e, gx[e]);
            result[i] = t;
        }
        return result;
    }

    static double[] Zip(double[] a, double[] b, Func<double, double, double> f)
    {
        var r = new double[a.Length];
        for (int i = 0; i < r.Length; i++) r[i] = f(a[i], b[i]);
        return r;
    }

    /// <summary>Values of a tensor of <paramref name="shape"/> broadcast to <paramref name="outShape"/>.</summary>
    static double[] Expand(double[] v, long[] shape, long[] outShape)
    {
        var st = ShapeUtil.BroadcastStrides(shape, outShape);
        var r = new double[ShapeUtil.Size(outShape)];
        var idx = new long[outShape.Length];
        for (long i = 0; i < r.Length; i++)
        {
            long off = 0;
            for (int d = 0; d < idx.Length; d++) off += idx[d] * st[d];
            r[i] = v[off];
            for (int d = idx.Length - 1; d >= 0 && ++idx[d] == outShape[d]; d--) idx[d] = 0;
        }
        return r;
    }

    /// <summary>Sums a gradient of the broadcast shape back to an input's shape (the adjoint of broadcasting).</summary>
    static double[] Reduce(double[] g, long[] outShape, long[] shape)
    {
        if (outShape.AsSpan().SequenceEqual(shape)) return (double[])g.Clone();
        var st = ShapeUtil.BroadcastStrides(shape, outShape);
        var r = new double[ShapeUtil.Size(shape)];
        var idx = new long[outShape.Length];
        for (long i = 0; i < g.Length; i++)
        {
            long off = 0;
            for (int d = 0; d < idx.Length; d++) off += idx[d] * st[d];
            r[off] += g[i];
            for (int d = idx.Length - 1; d >= 0 && ++idx[d] == outShape[d]; d--) idx[d] = 0;
        }
        return r;
    }
}
