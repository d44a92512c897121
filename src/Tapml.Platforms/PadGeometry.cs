using Tapml.Core;

namespace Tapml.Platforms;

/// <summary>A Pad node's pads read against its data's shape: per axis how much is added before and after (negative
/// pads crop first, so these are ≥ 0), the cropped extent of the data, the element offset where the crop starts, and
/// the output shape. Shared by every platform's Pad.</summary>
public sealed record PadGeometry(long[] Begin, long[] End, long[] Crop, long CropOffset, long[] OutShape)
{
    /// <param name="raw">The pads input or attribute: all begins, then all ends.</param>
    /// <param name="axes">Opset 18's axes input (null: every axis).</param>
    public static PadGeometry Of(NodeContext ctx, long[] raw, long[]? axes, long[] shape, string describe)
    {
        int r = shape.Length;
        var begin = new long[r]; var end = new long[r];
        if (axes is null)
        {
            if (raw.Length != 2 * r) throw ctx.Error($"pads {ShapeUtil.Format(raw)} must have {2 * r} values for rank {r}");
            for (int i = 0; i < r; i++) { begin[i] = raw[i]; end[i] = raw[i + r]; }
        }
        else
        {
            int k = axes.Length;
            if (raw.Length != 2 * k) throw ctx.Error($"pads {ShapeUtil.Format(raw)} must have {2 * k} values for {k} axes");
            for (int i = 0; i < k; i++)
            {
                long a = axes[i] < 0 ? axes[i] + r : axes[i];
                if (a < 0 || a >= r) throw ctx.Error($"axis {axes[i]} is out of range for rank {r}");
                begin[a] = raw[i]; end[a] = raw[i + k];
            }
        }
        var st = ShapeUtil.Strides(shape);
        var crop = new long[r];
        var outShape = new long[r];
        long cropOff = 0;
        for (int i = 0; i < r; i++)
        {
            long cb = Math.Max(-begin[i], 0), ce = Math.Max(-end[i], 0);
            crop[i] = shape[i] - cb - ce;
            if (crop[i] < 0) throw ctx.Error($"pads {ShapeUtil.Format(raw)} remove more than axis {i} of {describe} holds");
            cropOff += cb * st[i];
            begin[i] = Math.Max(begin[i], 0); end[i] = Math.Max(end[i], 0);
            outShape[i] = crop[i] + begin[i] + end[i];
        }
        return new PadGeometry(begin, end, crop, cropOff, outShape);
    }
}
