namespace LdmLab.Training;

/// <summary>Learning-rate schedules as functions of the optimizer step (1-based).</summary>
public static class LrSchedule
{
    /// <summary>Linear warm-up from 0 to <paramref name="baseLr"/> over <paramref name="warmup"/> steps, then constant.</summary>
    public static double WarmupConstant(long step, long warmup, double baseLr) =>
        warmup <= 0 ? baseLr : baseLr * Math.Min(1.0, (double)step / warmup);

    /// <summary>Linear warm-up, then cosine decay to <paramref name="minLr"/> at <paramref name="total"/>.</summary>
    public static double WarmupCosine(long step, long warmup, long total, double baseLr, double minLr = 0)
    {
        if (step < warmup) return WarmupConstant(step, warmup, baseLr);
        double progress = Math.Clamp((double)(step - warmup) / Math.Max(1, total - warmup), 0, 1);
        return minLr + 0.5 * (baseLr - minLr) * (1 + Math.Cos(Math.PI * progress));
    }
}
