using System.Text.Json.Nodes;
using Tapml.Core;

namespace Tapml.Models;

/// <summary>RoPE inverse frequencies (radians per position, one per rotated pair), computed in float32 step by
/// step the way transformers computes them so the graph's cos/sin tables match HF's to the last bit or two.</summary>
public static class Rope
{
    /// <summary>What the graph's rotary tables need: the inverse frequencies, for longrope also the long ones
    /// (used once a position reaches <see cref="Original"/>), and the factor applied to cos/sin.</summary>
    public sealed record RotaryTables(float[] Short, float[]? Long, long Original, float AttentionFactor);

    /// <summary>Inverse frequencies and attention factor for every supported scaling type (default, linear,
    /// llama3, longrope/su) over the first <paramref name="rotaryDim"/> channels of a head.</summary>
    public static RotaryTables Tables(HfConfig config, int rotaryDim, RopeConfig? rope = null)
    {
        if (rope is not null && rope.Type == "longrope") throw config.Error("rope_type", "longrope is supported for the main RoPE only");
        if ((rope ?? config.Rope).Type != "longrope") return new(InverseFrequencies(config, rotaryDim, rope), null, 0, 1f);
        return LongRope(config, rotaryDim);
    }

    /// <summary>LongRoPE (Phi-3): <c>inv_freq[i] = 1 / (ext[i] · theta^(2i/dim))</c> with the short factors, or the
    /// long ones when <c>max(position_ids) + 1 &gt; original_max_position_embeddings</c>; cos/sin are scaled by
    /// <c>attention_factor</c>, by default <c>sqrt(1 + ln(factor) / ln(original))</c> where factor (when not
    /// given) is <c>max_position_embeddings / original</c>, and 1 when factor ≤ 1.</summary>
    static RotaryTables LongRope(HfConfig config, int rotaryDim)
    {
        var r = config.Rope;
        long original = r.OriginalMaxPositions ?? throw config.Error("original_max_position_embeddings", "is missing (longrope RoPE scaling needs it)");
        var block = config.Raw["rope_parameters"] as JsonObject ?? config.Raw["rope_scaling"] as JsonObject;
        double factor = block?["factor"] is JsonValue ? r.Factor : (double)config.MaxPositions / original;
        double attention = r.AttentionFactor ?? (factor <= 1 ? 1 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(original)));
        float[] Ext(double[]? f, string key)
        {
            if (f is null) throw config.Error(key, "is missing (longrope RoPE scaling needs it)");
            if (f.Length != rotaryDim / 2) throw config.Error(key, $"has {f.Length} entries; rotary dimension {rotaryDim} needs {rotaryDim / 2}");
            var inv = new float[rotaryDim / 2];
            for (int i = 0; i < inv.Length; i++)
                inv[i] = 1f / ((float)f[i] * MathF.Pow((float)r.Theta, (float)(2 * i) / rotaryDim));
            return inv;
        }
        return new(Ext(r.ShortFactor, "short_factor"), Ext(r.LongFactor, "long_factor"), original, (float)attention);
    }

    /// <summary><c>inv_freq[i] = 1 / theta^(2i / dim)</c>, then adjusted for the config's scaling type
    /// (default, linear, llama3). Other types are refused with the config file named.</summary>
    public static float[] InverseFrequencies(HfConfig config, int rotaryDim, RopeConfig? rope = null)
    {
        var r = rope ?? config.Rope;
        var inv = new float[rotaryDim / 2];
        float theta = (float)r.Theta;
        for (int i = 0; i < inv.Length; i++)
            inv[i] = 1f / MathF.Pow(theta, (float)(2 * i) / rotaryDim);
        switch (r.Type)
        {
            case "default":
                return inv;
            case "linear":
                // Positions are divided by the factor, i.e. every frequency is.
                for (int i = 0; i < inv.Length; i++) inv[i] /= (float)r.Factor;
                return inv;
            case "llama3":
                if (rope is not null) throw config.Error("rope_type", "llama3 scaling is supported for the main RoPE only");
                return Llama3(config, inv);
            default:
                throw config.Error("rope_type", $"'{r.Type}' is not supported (supported: default, linear, llama3, longrope)");
        }
    }

    /// <summary>Llama 3 scaling: wavelengths longer than <c>original / low_freq_factor</c> are slowed by
    /// <c>factor</c>, shorter than <c>original / high_freq_factor</c> are kept, and the band between blends the
    /// two linearly in <c>original / wavelength</c>.</summary>
    static float[] Llama3(HfConfig config, float[] inv)
    {
        var r = config.Rope;
        double original = r.OriginalMaxPositions ?? throw config.Error("original_max_position_embeddings", "is missing (llama3 RoPE scaling needs it)");
        if (r.HighFreqFactor == r.LowFreqFactor) throw config.Error("high_freq_factor", "must differ from low_freq_factor");
        float factor = (float)r.Factor, low = (float)r.LowFreqFactor, high = (float)r.HighFreqFactor;
        double lowFreqWavelen = original / r.LowFreqFactor;
        double highFreqWavelen = original / r.HighFreqFactor;
        var result = new float[inv.Length];
        for (int i = 0; i < inv.Length; i++)
        {
            float wavelen = (float)(2 * Math.PI) / inv[i];
            float scaled = wavelen > lowFreqWavelen ? inv[i] / factor : inv[i];
            bool medium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
            if (medium)
            {
                float smooth = ((float)original / wavelen - low) / (high - low);
                scaled = (1 - smooth) * scaled / factor + smooth * scaled;
            }
            result[i] = scaled;
        }
        return result;
    }
}
