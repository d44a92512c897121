using Tapml.Core;

namespace Tapml.Ir;

/// <summary>Checks that a graph is well formed before anything runs: every node input is defined (graph
/// input, initializer, an earlier node's output or an enclosing scope), and the nodes can be ordered
/// topologically (they are re-sorted when a file lists them out of order; a cycle is an error).</summary>
public static class GraphValidator
{
    public static void Validate(Model model) => Validate(model.Graph, new HashSet<string>(), model.Path ?? "model");

    static void Validate(Graph g, HashSet<string> outer, string origin)
    {
        var defined = new HashSet<string>(outer);
        defined.UnionWith(g.Inputs.Select(i => i.Name));
        defined.UnionWith(g.Initializers.Keys);
        TopoSort(g, defined, origin);
        var producer = new Dictionary<string, Node>();
        var local = new HashSet<string>(g.Inputs.Select(i => i.Name));
        local.UnionWith(g.Initializers.Keys);
        foreach (var n in g.Nodes)
        {
            foreach (var sub in n.Subgraphs) Validate(sub, defined, origin);
            foreach (var o in n.Outputs)
            {
                if (o.Length == 0) continue;
                if (producer.TryGetValue(o, out var first))
                    throw new TapmlException($"{origin}: tensor '{o}' is written by two nodes, '{first.Name}' ({first.OpType}) and '{n.Name}' ({n.OpType})");
                if (local.Contains(o))
                    throw new TapmlException($"{origin}: node '{n.Name}' ({n.OpType}) writes '{o}', which is already a graph input or initializer");
                producer[o] = n;
                defined.Add(o);
            }
        }
        foreach (var o in g.Outputs)
            if (!defined.Contains(o.Name))
                throw new TapmlException($"{origin}: graph output '{o.Name}' of graph '{g.Name}' is not produced by any node");
    }

    static void TopoSort(Graph g, HashSet<string> available, string origin)
    {
        var have = new HashSet<string>(available);
        bool Ready(Node n) => n.Inputs.All(i => i.Length == 0 || have.Contains(i))
            && n.Subgraphs.All(s => s.OuterReferences().All(have.Contains));
        // Fast path: already in order (the common case).
        bool ordered = true;
        foreach (var n in g.Nodes)
        {
            if (!Ready(n)) { ordered = false; break; }
            foreach (var o in n.Outputs) if (o.Length > 0) have.Add(o);
        }
        if (ordered) return;
        have = new HashSet<string>(available);
        var pending = new List<Node>(g.Nodes);
        var sorted = new List<Node>(g.Nodes.Count);
        while (pending.Count > 0)
        {
            int before = sorted.Count;
            for (int i = 0; i < pending.Count; i++)
            {
                if (!Ready(pending[i])) continue;
                sorted.Add(pending[i]);
                foreach (var o in pending[i].Outputs) if (o.Length > 0) have.Add(o);
                pending.RemoveAt(i--);
            }
            if (sorted.Count == before)
            {
                var n = pending[0];
                string missing = n.Inputs.FirstOrDefault(i => i.Length > 0 && !have.Contains(i))
                    ?? n.Subgraphs.SelectMany(s => s.OuterReferences()).First(r => !have.Contains(r));
                bool producedLater = pending.Any(p => p.Outputs.Contains(missing));
                throw new TapmlException(producedLater
                    ? $"{origin}: node '{n.Name}' ({n.OpType}) is part of a cycle through tensor '{missing}'"
                    : $"{origin}: node '{n.Name}' ({n.OpType}) reads tensor '{missing}', which no graph input, initializer or node defines");
            }
        }
        g.Nodes.Clear();
        g.Nodes.AddRange(sorted);
    }
}
