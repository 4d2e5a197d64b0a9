using LdmLab.Autoencoders;
using LdmLab.Diffusion;
using static TorchSharp.torch;

namespace LdmLab.Pipelines;

/// <summary>Which way <see cref="AdaptiveInference"/> generates a size.</summary>
public enum InferencePath
{
    /// <summary>The whole latent in one denoiser call per step, decoded in one piece.</summary>
    Direct,
    /// <summary>MultiDiffusion windows of the trained size, decoded tile by tile.</summary>
    Tiled,
}

/// <summary>What <see cref="AdaptiveInference.Generate"/> did: the path, the batch size it used, the images
/// [N, C, H, W] in [−1, 1] (null without an autoencoder), the latents and the time spent.</summary>
public sealed record AdaptiveOutput(InferencePath Path, int BatchSize, Tensor? Images, Tensor Latents,
    TimeSpan SamplingTime, TimeSpan DecodingTime);

/// <summary>
/// The chapter's AdaptiveInference (sections 10.5.1 and 10.5.4) in one call: a canvas no larger than the trained
/// window is generated directly; a larger one with MultiDiffusion windows of the trained size (latent patch and
/// overlap as the chapter's 64 / 8, here every <see cref="Stride"/> latents) and tiled VAE decoding. The batch size
/// shrinks with the pixel count, <c>batch = max(1, ⌊base · window pixels / pixels⌋)</c> (the chapter scales from a
/// base at 512²; here from the trained window).
/// </summary>
/// <param name="WindowHeight">The latent height the denoiser was trained on.</param>
/// <param name="WindowWidth">The latent width the denoiser was trained on.</param>
public sealed record AdaptiveInference(int WindowHeight, int WindowWidth)
{
    /// <summary>Window stride in latents; null: an eighth of the smaller window side (diffusers' 8 of 64), ≥ 1.
    /// </summary>
    public int? Stride { get; init; }
    /// <summary>How the tiled path decodes; null: the VAE's own tiles (<see cref="VaeTiling.For"/>).</summary>
    public VaeTiling? Tiling { get; init; }
    /// <summary>The batch that fits at the trained window.</summary>
    public int BaseBatchSize { get; init; } = 16;

    /// <summary>Direct up to the trained window on both sides, tiled above it.</summary>
    public InferencePath PathFor(long latentHeight, long latentWidth)
    {
        if (latentHeight < 1 || latentWidth < 1)
            throw new ArgumentOutOfRangeException(nameof(latentHeight), $"{latentHeight}×{latentWidth}",
                "the latent size must be positive");
        return latentHeight <= WindowHeight && latentWidth <= WindowWidth ? InferencePath.Direct : InferencePath.Tiled;
    }

    /// <summary>max(1, ⌊base · (window h · w) / (h · w)⌋).</summary>
    public int BatchSizeFor(long latentHeight, long latentWidth)
    {
        _ = PathFor(latentHeight, latentWidth);
        return (int)Math.Max(1, BaseBatchSize * (long)WindowHeight * WindowWidth / (latentHeight * latentWidth));
    }

    /// <summary>The window layout of the tiled path.</summary>
    public WindowLayout Layout => new(WindowHeight, WindowWidth,
        Stride ?? Math.Max(1, Math.Min(WindowHeight, WindowWidth) / 8));

    /// <summary>
    /// Generates one image per condition row [N, …] at <see cref="LatentGenerationOptions.LatentSize"/> (default the
    /// trained window), in batches of <see cref="BatchSizeFor"/>; batch k starting at row s draws its noise from
    /// seed + s when a seed is given.
    /// </summary>
    public AdaptiveOutput Generate(LatentDiffusionPipeline pipeline, Tensor conditions, LatentGenerationOptions o)
    {
        long[] grid = o.LatentSize ?? [WindowHeight, WindowWidth];
        if (grid.Length != 2) throw new ArgumentException("LatentSize is [height, width]", nameof(o));
        var path = PathFor(grid[0], grid[1]);
        int batch = BatchSizeFor(grid[0], grid[1]);
        int n = (int)conditions.shape[0];
        var images = new List<Tensor>();
        var latents = new List<Tensor>();
        TimeSpan sampling = TimeSpan.Zero, decoding = TimeSpan.Zero;
        for (int start = 0; start < n; start += batch)
        {
            int size = Math.Min(batch, n - start);
            var options = o with
            {
                LatentSize = grid,
                Seed = o.Seed is long seed ? seed + start : null,
                Latents = o.Latents?.narrow(0, start, size),
                Negative = o.Negative?.narrow(0, start, size),
                Tiling = path == InferencePath.Tiled && pipeline.Vae is { } vae
                    ? o.Tiling ?? this.Tiling ?? VaeTiling.For(vae.Config) : o.Tiling,
            };
            var rows = conditions.narrow(0, start, size);
            var output = path == InferencePath.Direct
                ? pipeline.Generate(rows, options)
                : pipeline.GenerateMultiDiffusion(rows, Layout, options);
            if (output.Images is not null) images.Add(output.Images);
            latents.Add(output.Latents);
            sampling += output.SamplingTime;
            decoding += output.DecodingTime;
        }
        return new AdaptiveOutput(path, batch, images.Count == 0 ? null : cat(images.ToArray()),
            cat(latents.ToArray()), sampling, decoding);
    }
}
