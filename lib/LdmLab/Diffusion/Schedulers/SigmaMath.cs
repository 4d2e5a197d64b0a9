namespace LdmLab.Diffusion.Schedulers;

/// <summary>σ-space helpers shared by the σ-parameterised schedulers (Euler, DPM-Solver), as diffusers defines them.</summary>
public static class SigmaMath
{
    /// <summary>σ_t = √((1 − ᾱ_t)/ᾱ_t), in float32 like diffusers' table.</summary>
    public static float[] Sigmas(float[] acp) => acp.Select(a => (float)Math.Sqrt((1f - a) / a)).ToArray();

    /// <summary>numpy.interp(x, [0, 1, …], table): piecewise-linear lookup at fractional indices.</summary>
    public static double Interp(double x, float[] table)
    {
        if (x <= 0) return table[0];
        if (x >= table.Length - 1) return table[^1];
        int i = (int)Math.Floor(x);
        double w = x - i;
        return table[i] + (table[i + 1] - (double)table[i]) * w;
    }

    /// <summary>Karras et al. 2022: σ_i = (σ_max^{1/ρ} + i/(n−1)(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7.</summary>
    public static double[] Karras(double sigmaMin, double sigmaMax, int n, double rho = 7.0)
    {
        double minInv = Math.Pow(sigmaMin, 1 / rho), maxInv = Math.Pow(sigmaMax, 1 / rho);
        return Enumerable.Range(0, n).Select(i => Math.Pow(maxInv + (n == 1 ? 0 : (double)i / (n - 1)) * (minInv - maxInv), rho)).ToArray();
    }

    /// <summary>The fractional timestep whose log σ interpolates to log σ (diffusers' _sigma_to_t).</summary>
    public static double SigmaToT(double sigma, float[] logSigmas)
    {
        double logSigma = Math.Log(Math.Max(sigma, 1e-10));
        // low = (number of log σ_i ≤ log σ) − 1, via cumsum(dists ≥ 0).argmax, clipped to len − 2
        int count = 0, lowIdx = 0;
        int best = -1;
        for (int i = 0; i < logSigmas.Length; i++)
        {
            if (logSigma - logSigmas[i] >= 0) count++;
            if (count > best) { best = count; lowIdx = i; }
        }
        lowIdx = Math.Min(lowIdx, logSigmas.Length - 2);
        int highIdx = lowIdx + 1;
        double low = logSigmas[lowIdx], high = logSigmas[highIdx];
        double w = Math.Clamp((low - logSigma) / (low - high), 0, 1);
        return (1 - w) * lowIdx + w * highIdx;
    }

    /// <summary>
    /// Integer timesteps and their σ for the multistep solvers (DPM-Solver, UniPC), as diffusers spaces them:
    /// n + 1 points over [0, last − 1] minus the final one ("linspace", "leading"), or "trailing"; with Karras σ the
    /// timesteps are σ⁻¹(σ_Karras) rounded. The σ list has no final entry (each scheduler appends its own).
    /// </summary>
    public static (long[] timesteps, double[] sigmas) MultistepTimesteps(SchedulerConfig config, float[] acp, int n, int last)
    {
        int T = config.NumTrainTimesteps;
        // n + 1 points over [0, last) with the final one dropped, except "trailing", which steps T/n down from last
        long[] ts = config.TimestepSpacing == "trailing"
            ? TimestepSpacing.DescendingIntegers("trailing", T, n, config.StepsOffset, trailingFrom: last)
            : TimestepSpacing.DescendingIntegers(config.TimestepSpacing, last, n + 1, config.StepsOffset)[..n];
        var table = Sigmas(acp);
        if (!config.UseKarrasSigmas) return (ts, ts.Select(t => Interp(t, table)).ToArray());
        var logSigmas = table.Select(s => MathF.Log(s)).ToArray();
        var sigmas = Karras(table[0], table[^1], n);
        return (sigmas.Select(s => (long)Math.Round(SigmaToT(s, logSigmas), MidpointRounding.ToEven)).ToArray(), sigmas);
    }

    /// <summary>numpy.arange(start, stop, step) for a negative step.</summary>
    internal static IEnumerable<double> Arange(double start, double stop, double step)
    {
        int count = (int)Math.Ceiling((stop - start) / step);
        for (int i = 0; i < count; i++) yield return start + i * step;
    }

    /// <summary>VP coefficients of x_t = α_t x_0 + σ_t ε from the VE σ: α_t = 1/√(σ² + 1), σ_t = σ α_t.</summary>
    public static (double alpha, double sigma) AlphaSigma(double sigma)
    {
        double a = 1 / Math.Sqrt(sigma * sigma + 1);
        return (a, sigma * a);
    }

    /// <summary>Half log-SNR λ = log α_t − log σ_t.</summary>
    public static double Lambda(double sigma)
    {
        var (a, s) = AlphaSigma(sigma);
        return Math.Log(a) - Math.Log(s);
    }
}
