using Tapml.Core;

namespace Tapml.Models;

/// <summary>How the next token is chosen. Defaults are greedy decoding (temperature 0). As in transformers'
/// logits processors, in this order: repetition penalty (a seen token's logit is divided by the penalty when
/// positive, multiplied when negative), temperature, top-k, top-p (the smallest set of most likely tokens whose
/// probability reaches p, the first always kept), then a draw from the softmax with a seeded generator.</summary>
public sealed record SamplingOptions
{
    public double Temperature { get; init; }
    public int TopK { get; init; }
    public double TopP { get; init; } = 1;
    public double RepetitionPenalty { get; init; } = 1;
    public int Seed { get; init; }
    /// <summary>Ids that end generation (included in the output), besides the model's end-of-sequence ids.</summary>
    public IReadOnlyCollection<int> StopTokens { get; init; } = [];

    public static readonly SamplingOptions Greedy = new();

    public void Validate()
    {
        if (!(Temperature >= 0)) throw new TapmlException($"temperature must be ≥ 0, got {Temperature}");
        if (TopK < 0) throw new TapmlException($"top-k must be ≥ 0, got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new TapmlException($"top-p must be in (0, 1], got {TopP}");
        if (!(RepetitionPenalty > 0)) throw new TapmlException($"repetition penalty must be > 0, got {RepetitionPenalty}");
    }
}

/// <summary>Picks tokens from logits rows per <see cref="SamplingOptions"/>; one instance per generation (it
/// owns the seeded random generator, so a seed reproduces the whole sequence).</summary>
public sealed class Sampler(SamplingOptions o)
{
    readonly Random _rng = new(o.Seed);

    /// <summary>Plain argmax: no penalty, no temperature, no top-k/top-p (the token depends on the logits alone).</summary>
    public bool IsGreedy => o.RepetitionPenalty == 1 && o.Temperature == 0 && o.TopK == 0 && o.TopP >= 1;

    /// <summary>The next token from one row of logits, given every token so far (prompt and generated).</summary>
    public long Next(ReadOnlySpan<float> logits, IReadOnlyCollection<long> seen)
    {
        // Greedy: the first largest logit, straight from the row (no copy: a 32000-entry double row is a
        // large-object allocation per token, which cost more than the argmax).
        if (IsGreedy)
        {
            int best = 0;
            for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
            return best;
        }
        var l = new double[logits.Length];
        for (int i = 0; i < l.Length; i++) l[i] = logits[i];
        if (o.RepetitionPenalty != 1)
            foreach (var t in seen.Distinct())
                if (t >= 0 && t < l.Length) l[t] = l[t] > 0 ? l[t] / o.RepetitionPenalty : l[t] * o.RepetitionPenalty;
        if (o.Temperature == 0 && o.TopK == 0 && o.TopP >= 1) return Argmax(l);
        double temperature = o.Temperature == 0 ? 1 : o.Temperature;
        var order = Enumerable.Range(0, l.Length).OrderByDescending(i => l[i]).ThenBy(i => i).ToArray();
        int keep = o.TopK > 0 ? Math.Min(o.TopK, order.Length) : order.Length;
        double max = l[order[0]];
        var p = new double[keep];
        double sum = 0;
        for (int i = 0; i < keep; i++) { p[i] = Math.Exp((l[order[i]] - max) / temperature); sum += p[i]; }
        if (o.TopP < 1)
        {
            double acc = 0;
            int cut = keep;
            for (int i = 0; i < keep; i++) { acc += p[i] / sum; if (acc >= o.TopP) { cut = i + 1; break; } }
            keep = cut;
            sum = p.Take(keep).Sum();
        }
        double u = _rng.NextDouble() * sum;
        for (int i = 0; i < keep; i++) { u -= p[i]; if (u <= 0) return order[i]; }
        return order[keep - 1];
    }

    static long Argmax(double[] l)
    {
        int best = 0;
        for (int i = 1; i < l.Length; i++) if (l[i] > l[best]) best = i;
        return best;
    }
}
