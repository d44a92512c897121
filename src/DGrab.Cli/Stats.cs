namespace DGrab.Cli;

/// <summary>Mean and population standard deviation (as the reference notebooks plot them).</summary>
public static class Stats
{
    public static (double Mean, double Std) MeanStd(IReadOnlyList<double> xs)
    {
        double mean = 0;
        foreach (var x in xs) mean += x;
        mean /= xs.Count;
        double v = 0;
        foreach (var x in xs) v += (x - mean) * (x - mean);
        return (mean, Math.Sqrt(v / xs.Count));
    }
}
