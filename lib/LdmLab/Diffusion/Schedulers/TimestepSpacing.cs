namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// diffusers' timestep spacing rules (Table 2 of Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
/// are Flawed"), written once for every scheduler. For T training steps and n inference steps, descending:
/// <list type="bullet">
/// <item>linspace: t_i = i·(T − 1)/(n − 1), unrounded (the σ-schedulers keep the fractions; the others round to even);</item>
/// <item>leading: t_i = i·⌊T/n⌋ + steps_offset;</item>
/// <item>trailing: t_i = round(T − i·T/n) − 1, i = 0 … n − 1 (the last step lands on t = 0 only for this rule).</item>
/// </list>
/// </summary>
public static class TimestepSpacing
{
    public static readonly string[] Names = ["linspace", "leading", "trailing"];

    /// <param name="trailingFrom">"trailing" starts at this value instead of T (DPM-Solver's λ-clipped last timestep).</param>
    public static double[] Descending(string spacing, int trainSteps, int count, int stepsOffset, int? trailingFrom = null)
    {
        if (count < 1 || count > trainSteps)
            throw new ArgumentOutOfRangeException(nameof(count), count, $"num_inference_steps must be in 1..{trainSteps}");
        int T = trainSteps, n = count;
        return spacing switch
        {
            "linspace" => Enumerable.Range(0, n).Select(i => n == 1 ? 0 : i * (T - 1.0) / (n - 1)).Reverse().ToArray(),
            "leading" => Enumerable.Range(0, n).Select(i => (double)(i * (T / n) + stepsOffset)).Reverse().ToArray(),
            "trailing" => SigmaMath.Arange(trailingFrom ?? T, 0, -(double)T / n)
                .Select(v => Math.Round(v, MidpointRounding.ToEven) - 1).ToArray(),
            var s => throw new NotSupportedException(
                $"timestep_spacing '{s}' is not one of {string.Join(", ", Names)}"),
        };
    }

    /// <summary>The same, rounded half to even to integers (numpy's round, as the integer-timestep schedulers use).</summary>
    public static long[] DescendingIntegers(string spacing, int trainSteps, int count, int stepsOffset, int? trailingFrom = null) =>
        Descending(spacing, trainSteps, count, stepsOffset, trailingFrom)
            .Select(t => (long)Math.Round(t, MidpointRounding.ToEven)).ToArray();
}
