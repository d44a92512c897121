using QRCoder;

namespace Tapml.Browser;

/// <summary>A URL as a QR code in terminal characters (two modules per character row), for a phone to scan.</summary>
static class QrCode
{
    public static IEnumerable<string> Render(string text)
    {
        using var gen = new QRCodeGenerator();
        using var data = gen.CreateQrCode(text, QRCodeGenerator.ECCLevel.L);
        var m = data.ModuleMatrix;
        int n = m.Count;
        // NOTE: dark modules as spaces on a light block background scan best on dark terminals too: invert explicitly.
        for (int y = 0; y < n; y += 2)
        {
            var row = new char[n];
            for (int x = 0; x < n; x++)
            {
                bool top = m[y][x], bottom = y + 1 < n && m[y + 1][x];
                row[x] = (top, bottom) switch { (false, false) => '█', (true, false) => '▄', (false, true) => '▀', _ => ' ' };
            }
            yield return new string(row);
        }
    }
}
