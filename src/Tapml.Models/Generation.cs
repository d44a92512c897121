using System.Diagnostics;
using System.Numerics;
using Tapml.Core;
using Tapml.Ir;
using Tapml.Platforms;
using Tapml.Platforms.Execution;

namespace Tapml.Models;

/// <summary>What one <see cref="Generation.Greedy"/> call produced.</summary>
/// <param name="Tokens">The new token ids only (not the prompt), at most the requested count; generation stops
/// after an end-of-sequence id, which is included.</param>
/// <param name="PrefillLogits">Logits of the prompt run, f32 [1, prompt_len, vocab]; [1, 0, vocab] when the run was
/// asked not to keep them and took its first token's argmax on the device (<c>keepPromptLogits: false</c>).</param>
/// <param name="PrefillMs">Wall time of the prompt run, milliseconds.</param>
/// <param name="DecodeMs">Wall time of all single-token runs, milliseconds.</param>
/// <param name="DecodeSteps">Number of single-token runs (new tokens − 1 when the limit is reached).</param>
public sealed record GenerationResult(long[] Tokens, Tensor PrefillLogits, int PromptTokens, double PrefillMs, double DecodeMs, int DecodeSteps)
{
    /// <summary>Prompt tokens processed per second of prefill.</summary>
    public double PrefillTokensPerSecond => PrefillMs > 0 ? PromptTokens / (PrefillMs / 1000) : 0;

    /// <summary>Tokens produced per second of decode (single-token runs); 0 when no decode step ran.</summary>
    public double DecodeTokensPerSecond => DecodeMs > 0 ? DecodeSteps / (DecodeMs / 1000) : 0;
}

/// <summary>Prefill + decode over one causal-LM graph with the KV cache as graph inputs and outputs
/// (<c>past_key_values.{i}.key|value</c> in, <c>present.{i}.key|value</c> out, the ONNX Runtime GenAI
/// convention): the prompt runs once with zero-length pasts, then each new token runs alone with the previous
/// presents fed back as pasts. Works for any graph with that interface, on any platform the Executor drives.</summary>
public static class Generation
{
    const string PastPrefix = "past_key_values.";

    /// <summary>Greedy decoding (argmax, first index on ties, as torch) of up to <paramref name="maxNewTokens"/>
    /// tokens after <paramref name="prompt"/>, batch 1. Stops after any id in <paramref name="eosTokenIds"/>.</summary>
    /// <param name="keepPromptLogits">Read the prompt run's logits back (all positions) as
    /// <see cref="GenerationResult.PrefillLogits"/>; false: the first token's argmax runs on the device (where the
    /// platform has one) and one index per prompt position crosses the bus instead of prompt_len × vocab logits.</param>
    public static GenerationResult Greedy(Executor executor, Model model, ReadOnlySpan<long> prompt, int maxNewTokens, IReadOnlyCollection<int>? eosTokenIds = null,
        bool keepPromptLogits = true) =>
        Run(executor, model, prompt, maxNewTokens, SamplingOptions.Greedy, eosTokenIds, keepPromptLogits: keepPromptLogits);

    /// <summary>Generation with <paramref name="sampling"/> (greedy by default); stops after an id in
    /// <paramref name="eosTokenIds"/> or in the options' stop tokens.</summary>
    /// <param name="onToken">Called with each new token as soon as it is chosen (streaming).</param>
    /// <param name="argmaxOnDevice">Greedy decode steps take the argmax on the device that made the logits (false: the
    /// logits are read back and the host picks, as for sampling).</param>
    /// <param name="keepPromptLogits">Read the prompt run's logits back as <see cref="GenerationResult.PrefillLogits"/>
    /// (false: greedy runs with <paramref name="argmaxOnDevice"/> take the first token's argmax on the device and leave
    /// PrefillLogits [1, 0, vocab]; their prompt logits are then not checked for NaN, as decode steps' are not).</param>
    public static GenerationResult Run(Executor executor, Model model, ReadOnlySpan<long> prompt, int maxNewTokens, SamplingOptions sampling, IReadOnlyCollection<int>? eosTokenIds = null, Action<long>? onToken = null,
        bool argmaxOnDevice = true, bool keepPromptLogits = true)
    {
        sampling.Validate();
        var sampler = new Sampler(sampling);
        var stops = new HashSet<int>(sampling.StopTokens);
        if (eosTokenIds != null) stops.UnionWith(eosTokenIds);
        if (prompt.Length == 0) throw new TapmlException("generation needs at least one prompt token");
        if (maxNewTokens < 1) throw new TapmlException($"max new tokens must be at least 1, got {maxNewTokens}");
        var feeds = PrefillFeeds(model, prompt);
        var ids = prompt.ToArray();
        // Greedy steps leave their logits where they were made: on a GPU the argmax runs there and one index crosses the
        // bus per position instead of the vocabulary's logits.
        var argmax = sampler.IsGreedy && argmaxOnDevice ? new DeviceArgmax() : null;
        bool promptOnDevice = argmax is not null && !keepPromptLogits;
        long t0 = Stopwatch.GetTimestamp();
        var outs = executor.Run(model, feeds, promptOnDevice ? name => KeepOnDevice(name) || name == "logits" : KeepOnDevice);
        long? firstToken = null;
        Tensor prefillLogits;
        if (promptOnDevice && argmax!.Run(outs["logits"]) is { } promptTokens)
        {
            // One argmax per prompt position ([1, prompt_len] int64); the last is the first new token.
            var picked = ToHost(promptTokens);
            FreeDevice(promptTokens);
            firstToken = picked.Span<long>()[^1];
            prefillLogits = Tensor.Zeros(DType.Float32, 1, 0, ((IDeviceValue)outs["logits"]).Shape[^1]);
            FreeDevice(outs["logits"]);
        }
        else
        {
            prefillLogits = ToHost(outs["logits"]);
            FreeDevice(outs["logits"]);
            CheckFinite(prefillLogits, "the prompt run");
        }
        outs.Remove("logits");
        double prefillMs = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;

        var seen = new List<long>(ids);
        var tokens = new List<long>();
        void Add(long t) { tokens.Add(t); seen.Add(t); onToken?.Invoke(t); }
        Add(firstToken ?? sampler.Next(LastRow(prefillLogits), seen));
        double decodeMs = 0;
        int steps = 0;
        long position = ids.Length;
        if (argmax is not null && tokens.Count < maxNewTokens && !stops.Contains((int)tokens[^1]))
            outs = PipelinedGreedy(executor, model, outs, argmax, tokens[^1], ref position, maxNewTokens, stops, Add, tokens, ref decodeMs, ref steps);
        while (tokens.Count < maxNewTokens && !stops.Contains((int)tokens[^1]))
        {
            feeds = NextFeeds(model, outs, Tensor.FromArray(new[] { tokens[^1] }, 1, 1), position++, HostInputsOf(outs));
            t0 = Stopwatch.GetTimestamp();
            outs = executor.Run(model, feeds, KeepOnDevice);
            FreeDeviceFeeds(feeds);
            var logits = (Tensor)outs["logits"];
            CheckFinite(logits, $"decode step {steps + 1}", position - 1);
            long next = sampler.Next(LastRow(logits), seen);
            decodeMs += Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            steps++;
            Add(next);
        }
        foreach (var (name, v) in outs) if (KeepOnDevice(name)) FreeDevice(v);
        return new GenerationResult(tokens.ToArray(), prefillLogits, ids.Length, prefillMs, decodeMs, steps);
    }

    /// <summary>Steps a pipelined greedy decode records ahead of the token it waits for: 2, so the host's recording of a
    /// step and the wake-up after a readback together may take up to two steps of GPU time before the GPU idles (with
    /// one step ahead, recording plus wake-up had to fit in one: on H100 hosts a 4-bit step of the 8B shape records in
    /// 55–80 % of its GPU time, docs/benchmarks.md). <c>TAPML_DECODE_AHEAD=N</c> (1–8) overrides it, for measuring.</summary>
    public static readonly int PipelineDepth = int.TryParse(Environment.GetEnvironmentVariable("TAPML_DECODE_AHEAD"), out int d) && d is >= 1 and <= 8 ? d : 2;

    /// <summary>Greedy decode with the token staying on the device: step k+1's input_ids is step k's ArgMax output,
    /// so the host records steps up to <see cref="PipelineDepth"/> ahead (and the GPU queues them) before it waits for
    /// step k's token. The wait then overlaps the GPU's work instead of leaving the GPU idle while the host records.
    /// Steps recorded after the end-of-sequence token they could not yet see are discarded (their work is wasted, their
    /// time counted). Tokens are those of the one-step-at-a-time loop: the same kernels run on the same inputs.</summary>
    static Dictionary<string, Value> PipelinedGreedy(Executor executor, Model model, Dictionary<string, Value> outs, DeviceArgmax argmax, long first,
        ref long position, int maxNewTokens, HashSet<int> stops, Action<long> add, List<long> tokens, ref double decodeMs, ref int steps)
    {
        Value input = Tensor.FromArray(new[] { first }, 1, 1);
        var pending = new Queue<(IPendingDownload Read, Value? Token)>();
        Func<string, bool> keep = name => KeepOnDevice(name) || name == "logits";
        while (true)
        {
            bool more = tokens.Count + pending.Count < maxNewTokens;
            long t0 = Stopwatch.GetTimestamp();
            if (more)
            {
                var feeds = NextFeeds(model, outs, input, position++, HostInputsOf(outs));
                outs = executor.Run(model, feeds, keep);
                FreeDeviceFeeds(feeds);
                FreeDevice(input);
                var logits = outs["logits"];
                var token = argmax.Run(logits);
                IPendingDownload read = token is null ? new CompletedDownload(Tensor.FromArray(new[] { ArgmaxLast(CheckFinite(ToHost(logits), $"decode step {steps + 1}", position - 1)) }, 1, 1))
                    : ((IDeviceValue)token).Owner is IAsyncDownload a ? a.BeginDownload(token) : new CompletedDownload(ToHost(token));
                FreeDevice(logits);
                outs.Remove("logits");
                steps++;
                pending.Enqueue((read, token));
                // The next step's input: this token on the device, else its value on the host (the read is then done).
                input = token ?? read.Wait();
            }
            bool stopped = false;
            if (pending.Count > 0 && (!more || pending.Count > PipelineDepth || pending.Peek().Token is null))
            {
                long t = ((Tensor)pending.Dequeue().Read.Wait()).Span<long>()[0];
                add(t);
                if (stops.Contains((int)t))
                {
                    // The steps recorded after the end token: wait for them (their staging buffers) and drop them.
                    while (pending.TryDequeue(out var later))
                    {
                        later.Read.Wait();
                        steps--;
                    }
                    stopped = true;
                }
            }
            decodeMs += Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
            if (stopped || !more && pending.Count == 0)
            {
                FreeDevice(input);
                return outs;
            }
        }
    }

    static Tensor ToHost(Value v) => v is IDeviceValue d ? (Tensor)d.Owner.Download(v) : (Tensor)v;

    /// <summary>ArgMax (last axis, first index on ties) of a [1, seq, vocab] logits value on the device platform that made
    /// it; null (the caller samples on the host) for host values, other shapes, or a platform without ArgMax. A NaN
    /// logit is the argmax there (ONNX/numpy order), where the host sampler skips it: tokens differ only for NaN logits.</summary>
    sealed class DeviceArgmax
    {
        static readonly Node Node = new()
        {
            Name = "greedy_argmax", OpType = "ArgMax", Inputs = ["logits"], Outputs = ["token"],
            Attributes = { ["axis"] = Attr.Of(-1L), ["keepdims"] = Attr.Of(0L) },
        };
        IPlatform? _platform;
        long[] _shape = [];
        IKernel? _kernel;
        readonly NodeContext _ctx = new(Node, 13);

        /// <summary>The argmax of each position as a [1, seq] int64 value on the logits' device (for one position, the
        /// next step's input_ids), or null.</summary>
        public Value? Run(Value logits)
        {
            if (logits is not IDeviceValue d || d.Shape is not [1, > 0, > 0] || d.DType is not (DType.Float32 or DType.Float16 or DType.BFloat16)) return null;
            if (!ReferenceEquals(_platform, d.Owner) || !d.Shape.AsSpan().SequenceEqual(_shape))
            {
                _platform = d.Owner;
                _shape = d.Shape.ToArray();
                var types = new[] { TypeRef.TensorOf(d.DType, d.Shape) };
                _kernel = d.Owner.Supports(Node, _ctx, types).IsSupported ? d.Owner.Prepare(Node, _ctx, types) : null;
            }
            return _kernel is null ? null : d.Owner.Run(_kernel, _ctx, [logits])[0];
        }
    }

    /// <summary>The KV cache (present.*) stays on the platform that made it and is fed back as the next pasts:
    /// on a GPU it never crosses the bus (host platforms return host tensors either way).</summary>
    static bool KeepOnDevice(string output) => output.StartsWith("present.", StringComparison.Ordinal);

    /// <summary>Frees a decode step's device feeds the step made: the pasts (the last step's presents) and the position.</summary>
    static void FreeDeviceFeeds(Dictionary<string, Value> feeds)
    {
        foreach (var (name, v) in feeds) if (name.StartsWith(PastPrefix, StringComparison.Ordinal) || name == "position_ids") FreeDevice(v);
    }

    /// <summary>The platform holding a step's KV cache, where it takes host inputs (<see cref="IHostInputs"/>).</summary>
    static IHostInputs? HostInputsOf(IReadOnlyDictionary<string, Value> outs) =>
        outs.Values.OfType<IDeviceValue>().FirstOrDefault()?.Owner as IHostInputs;

    static void FreeDevice(Value v)
    {
        if (v is IDeviceValue d) d.Owner.Free(v);
    }

    /// <summary>Feeds of the prefill run: the prompt as input_ids [1, n], positions 0..n-1, empty KV cache.</summary>
    public static Dictionary<string, Value> PrefillFeeds(Model model, ReadOnlySpan<long> prompt)
    {
        var feeds = new Dictionary<string, Value>();
        foreach (var p in model.Graph.Inputs.Where(i => i.Name.StartsWith(PastPrefix, StringComparison.Ordinal))) feeds[p.Name] = EmptyPast(p);
        var ids = prompt.ToArray();
        feeds["input_ids"] = Tensor.FromArray(ids, 1, ids.Length);
        feeds["position_ids"] = Tensor.FromArray(Enumerable.Range(0, ids.Length).Select(i => (long)i).ToArray(), 1, ids.Length);
        return feeds;
    }

    /// <summary>Feeds of the decode step after a run with outputs <paramref name="outs"/>: the chosen
    /// <paramref name="token"/> at <paramref name="position"/>, the KV cache from the present.* outputs.</summary>
    public static Dictionary<string, Value> NextFeeds(Model model, IReadOnlyDictionary<string, Value> outs, long token, long position) =>
        NextFeeds(model, outs, Tensor.FromArray(new[] { token }, 1, 1), position);

    /// <summary>Feeds of the next decode step with the token as a [1, 1] int64 value (a device value: the previous
    /// step's argmax, never read back to feed it). With <paramref name="host"/>, the position is a host input of that
    /// platform: the step's rotary tables are computed on the host and uploaded, no dispatch.</summary>
    public static Dictionary<string, Value> NextFeeds(Model model, IReadOnlyDictionary<string, Value> outs, Value token, long position, IHostInputs? host = null)
    {
        var feeds = new Dictionary<string, Value>();
        foreach (var p in model.Graph.Inputs.Where(i => i.Name.StartsWith(PastPrefix, StringComparison.Ordinal)))
            feeds[p.Name] = outs.TryGetValue("present." + p.Name[PastPrefix.Length..], out var v) ? v
                : throw new TapmlException($"the model has input '{p.Name}' but no output 'present.{p.Name[PastPrefix.Length..]}'");
        feeds["input_ids"] = token;
        var pos = Tensor.FromArray(new[] { position }, 1, 1);
        feeds["position_ids"] = host is null ? pos : host.HostInput(pos);
        return feeds;
    }

    /// <summary>Checks that float32 <paramref name="logits"/> [.., seq, vocab] are all finite: NaN or ±Inf means the
    /// model computes nonsense (a config value or weight out of range) and is an error of the run naming
    /// <paramref name="step"/> and the position, never tokens. Greedy steps whose argmax runs on a GPU are not
    /// checked (their logits stay there).</summary>
    /// <param name="firstPosition">Sequence position of the first row (decode steps: the token's position).</param>
    public static Tensor CheckFinite(Tensor logits, string step, long firstPosition = 0)
    {
        if (logits.DType != DType.Float32 || logits.Shape.Length == 0) return logits;
        var x = logits.Span<float>();
        int bad = FirstNonFinite(x);
        if (bad < 0) return logits;
        long vocab = Math.Max(1, logits.Shape[^1]);
        throw new TapmlException($"the model's logits are {x[bad]} in {step} at position {firstPosition + bad / vocab} (token id {bad % vocab}): " +
                                 "the model computes non-finite values (check the config's rms_norm_eps, rope_theta and the weights)");
    }

    static int FirstNonFinite(ReadOnlySpan<float> x)
    {
        int i = 0;
        // NOTE: v - v is 0 for finite lanes and NaN for NaN or ±Inf ones.
        for (; i + Vector<float>.Count <= x.Length; i += Vector<float>.Count)
        {
            var v = new Vector<float>(x[i..]);
            if (!Vector.EqualsAll(v - v, Vector<float>.Zero)) break;
        }
        for (; i < x.Length; i++) if (!float.IsFinite(x[i])) return i;
        return -1;
    }

    /// <summary>Greedy choice (argmax of the last position's logits, first index on ties).</summary>
    public static long ArgmaxLast(Tensor logits)
    {
        var row = LastRow(logits);
        int best = 0;
        for (int i = 1; i < row.Length; i++) if (row[i] > row[best]) best = i;
        return best;
    }

    /// <summary>A [1, kv_heads, 0, head_dim] tensor for a past input declared [batch, kv_heads, past_seq, head_dim].</summary>
    static Tensor EmptyPast(ValueInfo input)
    {
        var shape = input.Type?.Shape;
        if (shape is not { Length: 4 } || shape[1].Value is not long heads || shape[3].Value is not long dim)
            throw new TapmlException($"graph input '{input.Name}' must be declared [batch, kv_heads, past_seq, head_dim] with fixed heads and head_dim, got {input.Type}");
        return Tensor.Zeros(input.Type!.ElemType, 1, heads, 0, dim);
    }

    /// <summary>The logits row of the last position of logits [1, seq, vocab].</summary>
    static ReadOnlySpan<float> LastRow(Tensor logits)
    {
        int vocab = (int)logits.Shape[^1];
        return logits.Span<float>()[^vocab..];
    }
}
