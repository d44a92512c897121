using System.Runtime.CompilerServices;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Ir.Onnx;
using Tensor = Tapml.Core.Tensor;

namespace Tapml.Platforms.OnnxRuntime;

/// <summary>ONNX Runtime (CPU execution provider) as an independent oracle: whole graphs through one session,
/// single nodes through a one-node model built from the node. Graph optimizations are off by default so
/// intermediate names survive. Spec: <c>onnxruntime[?threads=N&amp;opt=all]</c>.</summary>
public sealed class OrtPlatform : HostPlatform, IGraphPlatform
{
    readonly int _threads;
    readonly bool _optimize;
    readonly ConditionalWeakTable<Model, InferenceSession> _graphSessions = new();
    readonly Dictionary<(Node, string), InferenceSession> _nodeSessions = new();

    public OrtPlatform(string spec = "onnxruntime")
    {
        var q = PlatformSpec.Query(spec);
        _threads = q.TryGetValue("threads", out var t) ? PlatformSpec.Int(spec, "threads", t) : 0;
        _optimize = q.TryGetValue("opt", out var o) && o is "all" or "1" or "true";
        Name = spec;
    }

    public override string Name { get; }
    public override string Description => $"ONNX Runtime {OrtEnv.Instance().GetVersionString()} (CPU EP, optimizations {(_optimize ? "on" : "off")}, threads {(_threads == 0 ? "default" : _threads)})";

    SessionOptions Options()
    {
        var so = new SessionOptions
        {
            GraphOptimizationLevel = _optimize ? GraphOptimizationLevel.ORT_ENABLE_ALL : GraphOptimizationLevel.ORT_DISABLE_ALL,
            LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
        };
        if (_threads > 0) { so.IntraOpNumThreads = _threads; so.InterOpNumThreads = 1; }
        return so;
    }

    public Dictionary<string, Value> RunGraph(Model model, IReadOnlyDictionary<string, Value> feeds)
    {
        if (!_graphSessions.TryGetValue(model, out var session))
        {
            session = Create(() => model.Path is { } p && File.Exists(p)
                ? new InferenceSession(p, Options())
                : new InferenceSession(OnnxExporter.ToProto(model).ToByteArray(), Options()), model.Path ?? "model");
            _graphSessions.AddOrUpdate(model, session);
        }
        var outNames = model.Graph.Outputs.Select(o => o.Name).ToArray();
        var outs = Run(session, feeds, outNames, model.Path ?? "model");
        return outNames.Select((n, i) => (n, outs[i])).Where(x => x.Item2 != null).ToDictionary(x => x.n, x => x.Item2!);
    }

    public override Support Supports(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        foreach (var g in node.Subgraphs)
            if (g.OuterReferences().Count > 0)
                return Support.No($"{node.OpType} with a subgraph that reads outer-scope values cannot run as a single ONNX Runtime node");
        return Support.Yes;
    }

    public override IKernel Prepare(Node node, NodeContext ctx, IReadOnlyList<TypeRef?> inputTypes)
    {
        var s = Supports(node, ctx, inputTypes);
        if (!s.IsSupported) throw new UnsupportedException(s.Reason!);
        string sig = string.Join(";", inputTypes.Select(t => t?.ToString() ?? "-"));
        if (!_nodeSessions.TryGetValue((node, sig), out var session))
        {
            var g = new Ir.Graph { Name = "node" };
            var n = new Node { Name = node.Name, OpType = node.OpType, Domain = node.Domain, Attributes = node.Attributes, Inputs = node.Inputs.Select((x, i) => x.Length == 0 ? "" : $"in{i}").ToArray(), Outputs = node.Outputs.Select((x, i) => x.Length == 0 ? "" : $"out{i}").ToArray() };
            for (int i = 0; i < n.Inputs.Length; i++) if (n.Inputs[i].Length > 0) g.Inputs.Add(new ValueInfo(n.Inputs[i], inputTypes[i]));
            for (int i = 0; i < n.Outputs.Length; i++) if (n.Outputs[i].Length > 0) g.Outputs.Add(new ValueInfo(n.Outputs[i], null));
            g.Nodes.Add(n);
            var opsets = new Dictionary<string, int> { [""] = node.Domain == "" ? ctx.Opset : 21 };
            if (node.Domain != "") opsets[node.Domain] = ctx.Opset;
            var m = new Model { Graph = g, Opsets = opsets };
            session = Create(() => new InferenceSession(OnnxExporter.ToProto(m).ToByteArray(), Options()), $"node '{node.Name}'");
            _nodeSessions[(node, sig)] = session;
        }
        return new OrtKernel(node, session);
    }

    public override Value?[] Run(IKernel kernel, NodeContext ctx, Value?[] inputs)
    {
        var k = (OrtKernel)kernel;
        var feeds = new Dictionary<string, Value>();
        for (int i = 0; i < inputs.Length; i++) if (inputs[i] is { } v) feeds[$"in{i}"] = v;
        var names = k.Node.Outputs.Select((x, i) => x.Length == 0 ? null : $"out{i}").ToArray();
        var present = names.Where(x => x != null).Select(x => x!).ToArray();
        var outs = Run(k.Session, feeds, present, $"node '{k.Node.Name}'");
        var r = new Value?[names.Length];
        for (int i = 0, j = 0; i < names.Length; i++) if (names[i] != null) r[i] = outs[j++];
        return r;
    }

    static InferenceSession Create(Func<InferenceSession> make, string what)
    {
        try { return make(); }
        catch (OnnxRuntimeException e) { throw Translate(e, what); }
    }

    static Value?[] Run(InferenceSession session, IReadOnlyDictionary<string, Value> feeds, string[] outputNames, string what)
    {
        var inNames = new List<string>();
        var inValues = new List<OrtValue>();
        try
        {
            foreach (var (name, v) in feeds)
            {
                if (!session.InputMetadata.ContainsKey(name)) continue; // initializer listed as input
                inNames.Add(name);
                inValues.Add(OrtValues.From(v));
            }
            using var runOptions = new RunOptions();
            using var outs = session.Run(runOptions, inNames, inValues, outputNames);
            return outs.Select(OrtValues.To).ToArray();
        }
        catch (OnnxRuntimeException e) { throw Translate(e, what); }
        finally { foreach (var v in inValues) v.Dispose(); }
    }

    /// <summary>ORT's NOT_IMPLEMENTED becomes a skip verdict; everything else an error naming what ran.</summary>
    static TapmlException Translate(OnnxRuntimeException e, string what)
    {
        string msg = e.Message.Replace('\n', ' ');
        if (msg.Contains("NOT_IMPLEMENTED") || msg.Contains("NotImplemented") || msg.Contains("Could not find an implementation"))
            return new UnsupportedException($"onnxruntime: {msg}");
        return new TapmlException($"onnxruntime ({what}): {msg}", e);
    }

    public override void Dispose()
    {
        foreach (var s in _nodeSessions.Values) s.Dispose();
        _nodeSessions.Clear();
        foreach (var (_, s) in _graphSessions) s.Dispose();
        _graphSessions.Clear();
    }

    sealed record OrtKernel(Node Node, InferenceSession Session) : IKernel;
}
