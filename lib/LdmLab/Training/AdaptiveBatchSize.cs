namespace LdmLab.Training;

/// <summary>
/// Section 10.5.4's adaptive batch size: activation memory grows with the pixels per image, so the batch shrinks in
/// proportion to keep it about constant across resolutions —
/// <c>batch(h, w) = max(1, ⌊batch₀ · (h₀·w₀) / (h·w)⌋)</c> from a base batch at a base size (the chapter's 512²).
/// </summary>
public static class AdaptiveBatchSize
{
    /// <summary>The chapter's base: 512 × 512 pixels.</summary>
    public const long BasePixels = 512 * 512;

    /// <summary>
    /// The batch for <paramref name="height"/> × <paramref name="width"/> images, given <paramref name="baseBatch"/>
    /// fits at <paramref name="basePixels"/> pixels per image; never below 1. Bigger images than the base get
    /// smaller batches, smaller ones bigger batches, up to <paramref name="maxBatch"/> when given.
    /// </summary>
    public static int ForPixels(int baseBatch, int height, int width, long basePixels = BasePixels,
        int? maxBatch = null)
    {
        if (baseBatch < 1) throw new ArgumentOutOfRangeException(nameof(baseBatch), baseBatch, "must be ≥ 1");
        if (height < 1) throw new ArgumentOutOfRangeException(nameof(height), height, "must be ≥ 1");
        if (width < 1) throw new ArgumentOutOfRangeException(nameof(width), width, "must be ≥ 1");
        if (basePixels < 1) throw new ArgumentOutOfRangeException(nameof(basePixels), basePixels, "must be ≥ 1");
        if (maxBatch is < 1) throw new ArgumentOutOfRangeException(nameof(maxBatch), maxBatch, "must be ≥ 1");
        long pixels = (long)height * width;
        // integer arithmetic: ⌊batch₀ · P₀ / P⌋ without rounding a product of two large numbers through a double
        long batch = Math.Max(1, (long)baseBatch * basePixels / pixels);
        return (int)Math.Min(batch, maxBatch ?? int.MaxValue);
    }
}
