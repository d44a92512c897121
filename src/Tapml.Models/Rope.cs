using Tapml.Core;

namespace Tapml.Models;

/// <summary>RoPE inverse frequencies (radians per position, one per rotated pair), computed in float32 step by
/// step the way transformers computes them so the graph's cos/sin tables match HF's to the last bit or two.</summary>
public static class Rope
{
    /// <summary><c>inv_freq[i] = 1 / theta^(2i / dim)</c>, then adjusted for the config's scaling type
    /// (default, linear, llama3). Other types are refused with the config file named.</summary>
    public static float[] InverseFrequencies(HfConfig config, int rotaryDim)
    {
        var r = config.Rope;
        if (r.PartialRotaryFactor != 1)
            throw config.Error("partial_rotary_factor", $"is {r.PartialRotaryFactor}; only full rotary embeddings are supported for {config.ModelType}");
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
                return Llama3(config, inv);
            default:
                throw config.Error("rope_type", $"'{r.Type}' is not supported (supported: default, linear, llama3)");
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
