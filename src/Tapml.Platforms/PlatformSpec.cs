using Tapml.Core;

namespace Tapml.Platforms;

/// <summary>Parses platform specs of the form <c>kind[:inner][?key=value&amp;…]</c>.</summary>
public static class PlatformSpec
{
    /// <summary>The query part as key → value (keys lower-case); a bare key (<c>browser?connect</c>) is a flag, value "".</summary>
    public static Dictionary<string, string> Query(string spec)
    {
        var r = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        int q = spec.LastIndexOf('?');
        if (q < 0) return r;
        foreach (var part in spec[(q + 1)..].Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = part.IndexOf('=');
            if (eq == 0) throw new TapmlException($"platform '{spec}': '{part}' is not key=value");
            if (eq < 0) r[part] = "";
            else r[part[..eq]] = Uri.UnescapeDataString(part[(eq + 1)..]);
        }
        return r;
    }

    public static int Int(string spec, string key, string value) =>
        int.TryParse(value, out int v) && v >= 0 ? v : throw new TapmlException($"platform '{spec}': {key}={value} is not a non-negative integer");
}
