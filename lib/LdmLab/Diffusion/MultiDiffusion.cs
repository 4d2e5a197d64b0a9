using LdmLab.Diffusion.Schedulers;
using static TorchSharp.torch;

namespace LdmLab.Diffusion;

/// <summary>A latent window: rows [Top, Top + Height), columns [Left, Left + Width).</summary>
public readonly record struct LatentWindow(int Top, int Left, int Height, int Width);

/// <summary>
/// Windows of the size a denoiser was trained on, every <see cref="Stride"/> latents (diffusers' panorama pipeline:
/// 64 × 64 every 8). A side no longer than the window is one window; otherwise windows start at 0, stride, 2·stride
/// … and one more flush with the far edge where the stride does not land on it (diffusers' get_views leaves those
/// last latents out), so every latent is in some window.
/// </summary>
public sealed record WindowLayout(int Height, int Width, int Stride)
{
    /// <summary>The windows over a latent canvas of <paramref name="height"/> × <paramref name="width"/>.</summary>
    public IReadOnlyList<LatentWindow> Place(int height, int width)
    {
        if (Height < 1 || Width < 1 || Stride < 1)
            throw new ArgumentException($"window {Height}×{Width} and stride {Stride} must be positive", "layout");
        if (height < 1 || width < 1)
            throw new ArgumentOutOfRangeException(nameof(height), $"{height}×{width}", "the canvas must be non-empty");
        int h = Math.Min(Height, height), w = Math.Min(Width, width);
        return Starts(height, h).SelectMany(top => Starts(width, w).Select(left => new LatentWindow(top, left, h, w)))
            .ToList();
    }

    List<int> Starts(int size, int window)
    {
        var starts = new List<int>();
        for (int s = 0; s + window <= size; s += Stride) starts.Add(s);
        if (starts[^1] + window < size) starts.Add(size - window);
        return starts;
    }

    /// <summary>Side-by-side windows with no overlap (stride = width): independent tiles, nothing blended.</summary>
    public static WindowLayout Abutting(int height, int width) => new(height, width, width);
}

/// <summary>A region prompt: the denoiser for its prompt (guidance included) and its weights over the latent
/// canvas, [h, w] or [B, 1, h, w] (1 inside, 0 outside; soft masks weight the average).</summary>
public sealed record DiffusionRegion(Denoiser Model, Tensor Mask);

/// <summary>
/// MultiDiffusion's bootstrapping (Bar-Tal et al. 2023, §4.2): for the first <see cref="Steps"/> steps each region's
/// denoiser sees the canvas outside its mask replaced by a background noised to the step's level,
/// <code>x̃_r = m_r ⊙ x_t + (1 − m_r) ⊙ q(background at t)</code>
/// so that its prompt must draw inside the region (the paper uses a random constant colour; here any background
/// latents x_0 [1 or B, c, h, w], e.g. an empty canvas encoded). The background is noised with the sampling's own
/// initial noise, as inpainting re-noises the known region.
/// </summary>
public sealed record RegionBootstrap(Tensor Background, int Steps);

/// <summary>
/// MultiDiffusion (Bar-Tal et al. 2023; diffusers' StableDiffusionPanoramaPipeline): a denoiser trained on one size
/// samples a larger canvas by denoising overlapping windows of its size and averaging them after every step,
/// <code>
/// x_{t−1} = Σ_{w,r} m_r[w] ⊙ step_{w,r}(x_t[w]) / Σ_{w,r} m_r[w]
/// </code>
/// where step_{w,r} is the one reverse step (<see cref="Sampling.Step"/>) of region r's denoiser on window w with
/// its own scheduler state (multistep history and σ index are per window and region, as diffusers keeps one
/// scheduler copy per view), and m_r the region's mask cropped to the window (all ones for a single prompt). With
/// region prompts (the paper's §4.2) each prompt draws where its mask is and the average makes them one image.
/// </summary>
public static class MultiDiffusion
{
    /// <summary>One prompt over a canvas wider or taller than the denoiser's size (a panorama).</summary>
    public static Tensor Sample(Func<Scheduler> newScheduler, Denoiser model, Tensor noise, int steps,
        IReadOnlyList<LatentWindow> windows, Action<SamplingStep>? callback = null) =>
        Sample(newScheduler, [new DiffusionRegion(model, ones(noise.shape[2], noise.shape[3]))], noise, steps,
            windows, callback);

    /// <summary>
    /// Samples x_T = noise · init_noise_sigma [B, c, h, w] down to x_0 with region prompts over windows. The masks
    /// must cover the canvas (every latent of some window under some region with positive weight): an uncovered
    /// latent would have nothing to average, and the error names how many.
    /// </summary>
    /// <param name="newScheduler">A fresh scheduler of the kind to use; called once per window and region.</param>
    /// <param name="bootstrap">Regions drawn against a background for the first steps (null: none).</param>
    public static Tensor Sample(Func<Scheduler> newScheduler, IReadOnlyList<DiffusionRegion> regions, Tensor noise,
        int steps, IReadOnlyList<LatentWindow> windows, Action<SamplingStep>? callback = null,
        RegionBootstrap? bootstrap = null)
    {
        if (regions.Count == 0) throw new ArgumentException("give at least one region", nameof(regions));
        if (windows.Count == 0) throw new ArgumentException("give at least one window", nameof(windows));
        int h = (int)noise.shape[2], w = (int)noise.shape[3];
        foreach (var window in windows)
            if (window.Top < 0 || window.Left < 0 || window.Top + window.Height > h || window.Left + window.Width > w
                || window.Height < 1 || window.Width < 1)
                throw new ArgumentException($"window {window} does not lie inside the {h}×{w} latent", nameof(windows));
        using var _ = no_grad();
        var masks = regions.Select((r, i) => Mask(r.Mask, noise, i)).ToList();         // [1 or B, 1, h, w] each
        long maskBatch = masks.Max(m => m.shape[0]);
        // Σ m over windows and regions does not change with the step: computed once, checked once
        var count = zeros(new long[] { maskBatch, 1, h, w }, dtype: noise.dtype, device: noise.device);
        var pairs = new List<(LatentWindow window, int region, Tensor mask)>();
        foreach (var window in windows)
            for (int r = 0; r < regions.Count; r++)
            {
                var m = Crop(masks[r], window);                                        // [1 or B, 1, wh, ww]
                if (m.sum().item<float>() <= 0) continue;                              // nothing of r in this window
                Crop(count, window).add_(m);
                pairs.Add((window, r, m));
            }
        long uncovered = count.le(0).sum().item<long>();
        if (uncovered > 0)
            throw new ArgumentException($"the region masks and windows leave {uncovered} of {maskBatch * h * w} " +
                                        "latents with no weight: the masks must cover the canvas", nameof(regions));
        var background = bootstrap is null ? null : Background(bootstrap.Background, noise);
        var schedulers = pairs.Select(_ => newScheduler()).ToList();
        foreach (var s in schedulers) s.SetTimesteps(steps);
        var timesteps = schedulers[0].Timesteps;
        var x = (noise * schedulers[0].InitNoiseSigma).DetachFromDisposeScope();
        for (int i = 0; i < timesteps.Length; i++)
        {
            using var scope = NewDisposeScope();
            var value = zeros_like(x);                                                 // [B, c, h, w]
            for (int p = 0; p < pairs.Count; p++)
            {
                var (window, r, m) = pairs[p];
                var input = Crop(x, window);                                           // [B, c, wh, ww]
                if (background is not null && i < bootstrap!.Steps)
                {
                    var behind = Crop(Sampling.NoisedTo(schedulers[p], background, noise, i), window);
                    input = m * input + (1 - m) * behind;                              // x̃_r
                }
                var step = Sampling.Step(schedulers[p], regions[r].Model, input, i);
                Crop(value, window).add_(m * step.PrevSample);
            }
            var next = value / count;                                                  // [B, c, h, w]
            callback?.Invoke(new SamplingStep(i, timesteps[i], x, next, null));
            var kept = next.MoveToOuterDisposeScope();
            x.Dispose();
            x = kept;
        }
        Runtime.ProcessMemory.Release();
        return x;
    }

    /// <summary>A region's mask as [1 or B, 1, h, w] in the noise's dtype and device; its shape is checked.</summary>
    static Tensor Mask(Tensor mask, Tensor noise, int index)
    {
        long b = noise.shape[0], h = noise.shape[2], w = noise.shape[3];
        var m = mask.dim() == 2 ? mask.reshape(1, 1, mask.shape[0], mask.shape[1]) : mask;
        if (m.dim() != 4 || m.shape[1] != 1 || m.shape[2] != h || m.shape[3] != w
            || (m.shape[0] != 1 && m.shape[0] != b))
            throw new ArgumentException($"region {index}'s mask must be [{h}, {w}] or [1 or {b}, 1, {h}, {w}] (the " +
                                        $"latent canvas), got [{string.Join(", ", mask.shape)}]", "regions");
        if (m.lt(0).any().item<bool>())
            throw new ArgumentException($"region {index}'s mask has negative weights", "regions");
        return m.to(noise.dtype).to(noise.device);
    }

    /// <summary>The background latents as [1 or B, c, h, w] like the noise; the shape is checked.</summary>
    static Tensor Background(Tensor background, Tensor noise)
    {
        long b = noise.shape[0];
        if (background.dim() != 4 || !background.shape.Skip(1).SequenceEqual(noise.shape.Skip(1))
            || (background.shape[0] != 1 && background.shape[0] != b))
            throw new ArgumentException($"the bootstrap background must be [1 or {b}, {noise.shape[1]}, " +
                                        $"{noise.shape[2]}, {noise.shape[3]}], got " +
                                        $"[{string.Join(", ", background.shape)}]", "bootstrap");
        return background.to(noise.dtype).to(noise.device).expand(noise.shape);
    }

    static Tensor Crop(Tensor x, LatentWindow window) =>
        x.narrow(2, window.Top, window.Height).narrow(3, window.Left, window.Width);

    /// <summary>
    /// Masks [n, h, w] for a layout of <paramref name="columns"/> side-by-side regions of equal width (left half,
    /// right half for two): region k is 1 on its columns. Columns that do not divide evenly go to the last regions.
    /// </summary>
    public static Tensor ColumnMasks(int height, int width, int columns)
    {
        if (columns < 1 || columns > width)
            throw new ArgumentOutOfRangeException(nameof(columns), columns, $"need 1 … {width} regions");
        var masks = zeros(columns, height, width);                                     // [n, h, w]
        for (int k = 0; k < columns; k++)
        {
            int from = k * width / columns, to = (k + 1) * width / columns;
            masks[k].narrow(1, from, to - from).fill_(1);
        }
        return masks;
    }
}
