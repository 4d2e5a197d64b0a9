using MathNet.Numerics.Distributions;
using MathNet.Numerics.Statistics;

namespace LdmLab.Metrics;

/// <summary>Sample moments of a set of values (MathNet): mean, standard deviation, skewness, excess kurtosis.</summary>
public sealed record Moments(long Count, double Mean, double Std, double Skewness, double ExcessKurtosis, double Min, double Max)
{
    public static Moments Of(IReadOnlyList<double> values)
    {
        if (values.Count < 4) throw new ArgumentException("need at least 4 values for moments", nameof(values));
        var s = new DescriptiveStatistics(values);
        return new Moments(s.Count, s.Mean, s.StandardDeviation, s.Skewness, s.Kurtosis, s.Minimum, s.Maximum);
    }

    /// <summary>
    /// Jarque–Bera normality test: JB = n/6 (S² + K²/4) with S the skewness and K the excess kurtosis;
    /// under normality JB ~ χ²(2). Returns (JB, p-value).
    /// </summary>
    public (double statistic, double pValue) JarqueBera()
    {
        double jb = Count / 6.0 * (Skewness * Skewness + ExcessKurtosis * ExcessKurtosis / 4);
        return (jb, 1 - ChiSquared.CDF(2, jb));
    }

    /// <summary>Kolmogorov–Smirnov distance sup|F_n − Φ| of the standardised values to N(0, 1).</summary>
    public static double KsDistanceToNormal(IReadOnlyList<double> values)
    {
        var m = Of(values);
        var sorted = values.Select(v => (v - m.Mean) / m.Std).Order().ToArray();
        double d = 0;
        for (int i = 0; i < sorted.Length; i++)
        {
            double cdf = Normal.CDF(0, 1, sorted[i]);
            d = Math.Max(d, Math.Max((i + 1.0) / sorted.Length - cdf, cdf - (double)i / sorted.Length));
        }
        return d;
    }

    /// <summary>An empirical density on <paramref name="bins"/> equal bins over [lo, hi]: (bin centres, density).</summary>
    public static (double[] x, double[] density) Density(IReadOnlyList<double> values, int bins, double lo, double hi)
    {
        var counts = new double[bins];
        double w = (hi - lo) / bins;
        foreach (var v in values)
        {
            int b = (int)Math.Floor((v - lo) / w);
            if (b >= 0 && b < bins) counts[b]++;
        }
        return (Enumerable.Range(0, bins).Select(i => lo + (i + 0.5) * w).ToArray(), counts.Select(c => c / (values.Count * w)).ToArray());
    }
}
