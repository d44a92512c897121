namespace Tapml.Core;

/// <summary>Shape arithmetic: sizes, strides, broadcasting, axis normalization.</summary>
public static class ShapeUtil
{
    public static long Size(ReadOnlySpan<long> shape)
    {
        long n = 1;
        foreach (long d in shape)
        {
            if (d < 0) throw new TapmlException($"negative dimension {d} in shape {Format(shape)}");
            if (d != 0 && n > long.MaxValue / d) throw new TapmlException($"shape {Format(shape)} has more elements than a 64-bit count holds");
            n *= d;
        }
        return n;
    }

    public static long[] Strides(ReadOnlySpan<long> shape)
    {
        var s = new long[shape.Length];
        long acc = 1;
        for (int i = shape.Length - 1; i >= 0; i--) { s[i] = acc; acc *= shape[i]; }
        return s;
    }

    /// <summary><c>[2,3,4]</c>; shapes of more than 16 dimensions show the first 16 and how many more (shapes read
    /// from files can be long, and end up in messages).</summary>
    public static string Format(ReadOnlySpan<long> shape) => shape.Length <= 16
        ? "[" + string.Join(",", shape.ToArray()) + "]"
        : "[" + string.Join(",", shape[..16].ToArray()) + $",… {shape.Length - 16} more]";

    /// <summary>Normalizes a possibly negative axis into [0, rank); throws naming the op when out of range.</summary>
    public static int Axis(long axis, int rank, string what = "axis")
    {
        long a = axis < 0 ? axis + rank : axis;
        if (a < 0 || a >= Math.Max(rank, 1) && !(rank == 0 && a == 0))
            throw new TapmlException($"{what} {axis} is out of range for rank {rank}");
        return (int)a;
    }

    /// <summary>Multidirectional (numpy) broadcast of shapes.</summary>
    public static long[] Broadcast(params long[][] shapes)
    {
        int rank = shapes.Max(s => s.Length);
        var r = new long[rank];
        for (int i = 0; i < rank; i++)
        {
            long d = 1;
            foreach (var s in shapes)
            {
                int j = i - (rank - s.Length);
                if (j < 0) continue;
                long e = s[j];
                if (e == d || e == 1) continue;
                if (d == 1) { d = e; continue; }
                throw new TapmlException($"shapes {string.Join(" and ", shapes.Select(x => Format(x)))} cannot be broadcast");
            }
            r[i] = d;
        }
        return r;
    }

    /// <summary>Strides of <paramref name="shape"/> viewed inside the broadcast shape <paramref name="outShape"/>
    /// (0 where the dimension is broadcast).</summary>
    public static long[] BroadcastStrides(ReadOnlySpan<long> shape, ReadOnlySpan<long> outShape)
    {
        var st = Strides(shape);
        var r = new long[outShape.Length];
        int off = outShape.Length - shape.Length;
        for (int i = 0; i < shape.Length; i++) r[off + i] = shape[i] == 1 && outShape[off + i] != 1 ? 0 : st[i];
        return r;
    }

    public static bool SameShape(ReadOnlySpan<long> a, ReadOnlySpan<long> b) => a.SequenceEqual(b);
}
