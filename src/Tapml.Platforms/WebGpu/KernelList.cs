using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using Tapml.Core;
using Tapml.Ir;

namespace Tapml.Platforms.WebGpu;

/// <summary>The kernels one workload (a model on one adapter with one set of platform options) compiled, kept on disk
/// so that the next run of it starts compiling all of them in parallel at its first step instead of one at a time at
/// each kernel's first dispatch. In <c>CACHE/webgpu-kernels/</c> (CACHE: <c>$TAPML_HOME</c>, <c>$XDG_CACHE_HOME/tapml</c>
/// or <c>~/.cache/tapml</c>): <c>HASH.wgsl</c> per kernel text (SHA-256 of the text, written whole then renamed) and
/// <c>lists/KEY.txt</c> per workload, one <c>HASH label</c> line per kernel in the order they were first compiled.
/// Bounded: <see cref="MaxKernels"/> a list, <see cref="MaxTexts"/> texts a folder. A cache, not a source of truth: a missing, truncated or foreign file is skipped, an I/O error turns the list off,
/// and a kernel that fails to compile ahead is compiled again where it is used (its error reported there).</summary>
public sealed class KernelList
{
    /// <summary>Kernels a list keeps at most (a workload's shapes vary: prompt lengths, context sizes).</summary>
    public const int MaxKernels = 4096;
    /// <summary>Largest kernel text read back (a generated kernel is a few KiB).</summary>
    const long MaxCodeBytes = 1 << 20;
    /// <summary>Kernel texts a cache folder holds at most (all lists together): new ones are not kept past it.</summary>
    public const int MaxTexts = 65536;
    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, StrongBox<int>> Texts = new();

    public static string Root => Path.Combine(NpmPackages.CacheRoot(), "webgpu-kernels");

    readonly string _dir, _list;
    readonly HashSet<string> _known = new(StringComparer.Ordinal);
    bool _off;

    /// <param name="workload">Everything the kernels depend on besides the model (adapter, runtime, options).</param>
    public KernelList(string workload, Model model, string? root = null)
    {
        _dir = root ?? Root;
        _list = Path.Combine(_dir, "lists", Sha(workload + "\n" + Fingerprint(model)) + ".txt");
    }

    /// <summary>The kernels the list holds, texts read back and checked against their hashes.</summary>
    public List<(string Code, string Label)> Load()
    {
        var found = new List<(string, string)>();
        if (_off || !File.Exists(_list)) return found;
        try
        {
            foreach (var line in File.ReadLines(_list))
            {
                if (found.Count >= MaxKernels) break;
                int sp = line.IndexOf(' ');
                string hash = sp < 0 ? line : line[..sp];
                if (hash.Length != 64 || !_known.Add(hash)) continue;
                var file = Path.Combine(_dir, hash + ".wgsl");
                if (!File.Exists(file) || new FileInfo(file).Length > MaxCodeBytes) { _known.Remove(hash); continue; }
                string code = File.ReadAllText(file);
                if (Sha(code) != hash) { _known.Remove(hash); continue; }
                found.Add((code, sp < 0 ? "kernel" : line[(sp + 1)..]));
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { _off = true; }
        return found;
    }

    /// <summary>Records a kernel the workload compiled (nothing when it is known or the list is full).</summary>
    public void Add(string code, string label)
    {
        if (_off || _known.Count >= MaxKernels) return;
        string hash = Sha(code);
        if (!_known.Add(hash)) return;
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(_list)!);
            var file = Path.Combine(_dir, hash + ".wgsl");
            if (!File.Exists(file))
            {
                var count = Texts.GetOrAdd(_dir, d => new StrongBox<int>(Directory.Exists(d) ? Directory.EnumerateFiles(d, "*.wgsl").Count() : 0));
                if (Interlocked.Increment(ref count.Value) > MaxTexts) { _off = true; return; }
                var tmp = $"{file}.{Environment.ProcessId}.{Environment.CurrentManagedThreadId}.tmp";
                File.WriteAllText(tmp, code);
                File.Move(tmp, file, overwrite: true);
            }
            // NOTE: one short line per append (O_APPEND): processes sharing a list interleave whole lines.
            File.AppendAllText(_list, $"{hash} {label.ReplaceLineEndings(" ")}\n");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { _off = true; }
    }

    /// <summary>What the kernels of a model depend on, without its weights' values: its nodes (op, domain, attributes,
    /// arity), its inputs' types and its initializers' types and shapes.</summary>
    public static string Fingerprint(Model model)
    {
        var sb = new StringBuilder();
        var g = model.Graph;
        foreach (var i in g.Inputs) sb.Append(i.Name).Append(':').Append(i.Type?.ToString()).Append(';');
        foreach (var (name, v) in g.Initializers.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            sb.Append(name).Append('=').Append(v is Tensor t ? $"{t.DType}{ShapeUtil.Format(t.Shape)}" : v.GetType().Name).Append(';');
        foreach (var n in g.Nodes)
        {
            sb.Append(n.Domain).Append('.').Append(n.OpType).Append('/').Append(n.Inputs.Length).Append('/').Append(n.Outputs.Length);
            foreach (var (k, a) in n.Attributes.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sb.Append(' ').Append(k).Append('=').Append(AttrText(a));
            sb.Append('\n');
        }
        return Sha(sb.ToString());
    }

    static string AttrText(Attr a) => $"{a.Type}:{a.I}:{a.F}:{a.Str}:{string.Join(',', a.Ints)}:{string.Join(',', a.Floats)}" +
        (a.T is { } t ? $":{t.DType}{ShapeUtil.Format(t.Shape)}" : "") + (a.G is { } g ? $":g{g.Nodes.Count}" : "") + (a.Graphs.Length > 0 ? $":gs{a.Graphs.Length}" : "");

    static string Sha(string s) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(s)));
}
