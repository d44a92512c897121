namespace DGrab.Tests;

/// <summary>
/// Brute-force references written straight from the paper (arXiv 2302.00845, Alg. 1–2) with the literal sign rule
/// ‖s + v‖₂ ≤ ‖s − v‖₂ and whole-epoch vectors in memory: slow and obvious, the oracle for the online policies.
/// Vectors are indexed by example: vecs[worker][example].
/// </summary>
public static class ReferenceOrders
{
    static bool Plus(float[] s, float[] v)
    {
        double plus = 0, minus = 0;
        for (int k = 0; k < s.Length; k++) { plus += (double)(s[k] + v[k]) * (s[k] + v[k]); minus += (double)(s[k] - v[k]) * (s[k] - v[k]); }
        return Math.Sqrt(plus) <= Math.Sqrt(minus);
    }

    static float[] Diff(float[] a, float[] b) => a.Select((x, k) => x - b[k]).ToArray();
    static void AddTo(float[] s, float[] v, int sign) { for (int k = 0; k < s.Length; k++) s[k] += sign * v[k]; }

    /// <summary>PairBalance on one worker: the next order from the current one.</summary>
    public static int[] PairBalance(int[] order, float[][] vecs)
    {
        int n = order.Length, d = vecs[0].Length;
        var next = new int[n];
        var s = new float[d];
        for (int k = 0; k < n / 2; k++)
        {
            var diff = Diff(vecs[order[2 * k]], vecs[order[2 * k + 1]]);
            bool plus = Plus(s, diff);
            next[plus ? k : n - 1 - k] = order[2 * k];
            next[plus ? n - 1 - k : k] = order[2 * k + 1];
            AddTo(s, diff, plus ? 1 : -1);
        }
        return next;
    }

    /// <summary>CD-GraB: pair index outer, worker inner, one running sum for all workers.</summary>
    public static int[][] CdGrab(int[][] orders, float[][][] vecs)
    {
        int m = orders.Length, n = orders[0].Length, d = vecs[0][0].Length;
        var next = orders.Select(o => new int[n]).ToArray();
        var s = new float[d];
        for (int k = 0; k < n / 2; k++)
            for (int j = 0; j < m; j++)
            {
                var diff = Diff(vecs[j][orders[j][2 * k]], vecs[j][orders[j][2 * k + 1]]);
                bool plus = Plus(s, diff);
                next[j][plus ? k : n - 1 - k] = orders[j][2 * k];
                next[j][plus ? n - 1 - k : k] = orders[j][2 * k + 1];
                AddTo(s, diff, plus ? 1 : -1);
            }
        return next;
    }

    /// <summary>GraB's Balance with a stale mean: signs of (z − mean) against the running sum; + to the front, − to
    /// the back (in reverse visiting order).</summary>
    public static int[] Balance(int[] order, float[][] vecs, float[] mean)
    {
        int n = order.Length;
        var plus = new List<int>();
        var minus = new List<int>();
        var s = new float[mean.Length];
        foreach (int i in order)
        {
            var c = Diff(vecs[i], mean);
            bool p = Plus(s, c);
            (p ? plus : minus).Add(i);
            AddTo(s, c, p ? 1 : -1);
        }
        minus.Reverse();
        return [.. plus, .. minus];
    }
}
