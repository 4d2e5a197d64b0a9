using LdmLab.Diffusion;
using static TorchSharp.torch;

namespace LdmLab.Pipelines;

/// <summary>A region prompt for <see cref="LatentDiffusionPipeline.GenerateMultiDiffusion"/>: condition rows
/// [B, …] and the region's mask over the latent canvas, [h, w] or [1 or B, 1, h, w].</summary>
public sealed record RegionCondition(Tensor Conditions, Tensor Mask);

public sealed partial class LatentDiffusionPipeline
{
    /// <summary>
    /// MultiDiffusion (<see cref="MultiDiffusion"/>): the canvas of <see cref="LatentGenerationOptions.LatentSize"/>
    /// sampled in windows of <paramref name="layout"/>, each region's guided denoiser (the options' scale and ∅
    /// rows) averaged by its mask every step, then decoded (tile by tile with the options' tiling). The noise is
    /// drawn as <see cref="Generate"/> draws it, so one window over the whole canvas and one full mask give
    /// <see cref="Generate"/>'s latents.
    /// </summary>
    /// <param name="bootstrap">Region prompts drawn against this background for its first steps (null: none).</param>
    public LatentGenerationOutput GenerateMultiDiffusion(IReadOnlyList<RegionCondition> regions, WindowLayout layout,
        LatentGenerationOptions o, RegionBootstrap? bootstrap = null)
    {
        if (regions.Count == 0) throw new ArgumentException("give at least one region", nameof(regions));
        long b = regions[0].Conditions.shape[0];
        if (regions.Any(r => r.Conditions.shape[0] != b))
            throw new ArgumentException($"every region needs the same number of condition rows ({b} in region 0): " +
                                        string.Join(", ", regions.Select(r => r.Conditions.shape[0])),
                nameof(regions));
        using var _ = no_grad();
        var device = Device;
        var noise = InitialNoise(b, o).to(device);                                            // [B, c, h, w]
        var windows = layout.Place((int)noise.shape[2], (int)noise.shape[3]);
        var denoisers = regions.Select(r => new DiffusionRegion(GuidedDenoiser(r.Conditions.to(device), o), r.Mask))
            .ToList();
        var background = bootstrap is null ? null : bootstrap with { Background = bootstrap.Background.to(device) };
        return Timed(() => MultiDiffusion.Sample(() => NewScheduler(o), denoisers, noise, o.Steps, windows,
            o.Callback, background), null, o.DecodeBatchSize, o.Tiling);
    }

    /// <summary>One prompt per row over the whole canvas in windows (a panorama): <see
    /// cref="GenerateMultiDiffusion(IReadOnlyList{RegionCondition}, WindowLayout, LatentGenerationOptions)"/> with a
    /// single full mask.</summary>
    public LatentGenerationOutput GenerateMultiDiffusion(Tensor conditions, WindowLayout layout,
        LatentGenerationOptions o)
    {
        var grid = o.LatentSize ?? [Denoiser.LatentShape.SampleSize, Denoiser.LatentShape.SampleSize];
        if (grid.Length != 2) throw new ArgumentException("LatentSize is [height, width]", nameof(o));
        return GenerateMultiDiffusion([new RegionCondition(conditions, ones(grid[0], grid[1]))], layout, o);
    }
}
