using System.CommandLine;
using Spectre.Console;
using Tapml.Ir;
using Tapml.Platforms;

namespace Tapml.Cli;

/// <summary><c>tapml inspect --model M [--platform P]</c>: inputs, outputs, opsets, operator histogram, and which
/// operators the platform supports (like test-backend-ops' support mode, per model).</summary>
static class InspectVerb
{
    public static Command Create()
    {
        var model = new Option<string>("--model", "-m") { Description = "model spec", Required = true };
        var platform = Cli.PlatformOption();
        var cmd = new Command("inspect", "summarize a model: inputs, outputs, opsets, operators and their support on a platform") { model, platform };
        cmd.Action(pr =>
        {
            string spec = pr.GetValue(model)!;
            using var p = PlatformRegistry.Create(pr.GetValue(platform)!);
            if (Directory.Exists(spec) && !File.Exists(Path.Combine(spec, "model.onnx"))) return Suite(spec, p);
            var m = ModelSpec.Load(spec);
            Console.WriteLine($"model {m.Path ?? m.Graph.Name}: {m.Graph.Nodes.Count} nodes, {m.Graph.Initializers.Count} initializers " +
                $"({Format.Bytes(m.Graph.Initializers.Values.Sum(t => t.ByteSize))}), opsets {string.Join(", ", m.Opsets.Select(o => $"{(o.Key == "" ? "ai.onnx" : o.Key)}={o.Value}"))}");
            foreach (var i in m.Graph.RequiredInputs) Console.WriteLine($"  input  {i.Name}: {i.Type}");
            var inferred = ShapeInference.Infer(m);
            foreach (var o in m.Graph.Outputs)
                Console.WriteLine($"  output {o.Name}: {o.Type}" + (inferred.Types.TryGetValue(o.Name, out var it) ? $" (inferred {it})" : ""));
            int known = m.Graph.Nodes.SelectMany(n => n.Outputs).Count(v => inferred.Types.TryGetValue(v, out var t) && t.Shape is { } s && s.All(d => d.Value is not null || d.Param is not null));
            Console.WriteLine($"  shape inference: {known} of {m.Graph.Nodes.Sum(n => n.Outputs.Length)} node outputs with known shapes");
            foreach (var mm in inferred.Mismatches) Console.WriteLine($"  declared type mismatch: {mm}");
            var table = new Table().AddColumns("op", "count", $"on {Markup.Escape(p.Name)}");
            foreach (var g in AllNodes(m.Graph).GroupBy(n => n.Domain == "" ? n.OpType : $"{n.Domain}.{n.OpType}").OrderByDescending(g => g.Count()))
            {
                var n = g.First();
                var s = p.Supports(n, new NodeContext(n, m.Opset(n.Domain)), n.Inputs.Select(_ => (TypeRef?)null).ToArray());
                table.AddRow(Markup.Escape(g.Key), g.Count().ToString(), s.IsSupported ? "[green]yes[/]" : $"[red]no[/]: {Markup.Escape(s.Reason ?? "")}");
            }
            AnsiConsole.Write(table);
            return 0;
        });
        return cmd;
    }

    /// <summary>Support matrix over a folder of cases: each operator, how many models use it, supported or why not.</summary>
    static int Suite(string dir, IPlatform p)
    {
        var uses = new Dictionary<string, (int Models, Node Node, int Opset)>();
        var cases = Testing.Conformance.OnnxCase.Discover([dir]);
        foreach (var c in cases)
        {
            Model m;
            try { m = Ir.Onnx.OnnxImporter.Load(c.ModelPath); }
            catch (Core.TapmlException e) { Console.WriteLine($"  {c.Name}: {e.Message}"); continue; }
            foreach (var n in AllNodes(m.Graph).DistinctBy(n => (n.Domain, n.OpType)))
            {
                string key = n.Domain == "" ? n.OpType : $"{n.Domain}.{n.OpType}";
                uses[key] = uses.TryGetValue(key, out var u) ? (u.Models + 1, u.Node, u.Opset) : (1, n, m.Opset(n.Domain));
            }
        }
        var table = new Table().AddColumns("op", "models", $"on {Markup.Escape(p.Name)}");
        foreach (var (op, u) in uses.OrderBy(x => x.Key))
        {
            var s = p.Supports(u.Node, new NodeContext(u.Node, u.Opset), u.Node.Inputs.Select(_ => (TypeRef?)null).ToArray());
            table.AddRow(Markup.Escape(op), u.Models.ToString(), s.IsSupported ? "[green]yes[/]" : $"[red]no[/]: {Markup.Escape(s.Reason ?? "")}");
        }
        Console.WriteLine($"{cases.Count} models, {uses.Count} operators");
        AnsiConsole.Write(table);
        return 0;
    }

    static IEnumerable<Node> AllNodes(Graph g) => g.Nodes.Concat(g.Nodes.SelectMany(n => n.Subgraphs.SelectMany(AllNodes)));
}
