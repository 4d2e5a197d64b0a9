using System.Diagnostics;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using static TorchSharp.torch;

namespace LdmLab.Pipelines;

/// <summary>The options of one <see cref="LatentDiffusionPipeline"/> call; diffusers' names and defaults.</summary>
public sealed record LatentGenerationOptions
{
    public int Steps { get; init; } = 50;
    /// <summary>w in ε̂ = ε̂(∅) + w (ε̂(c) − ε̂(∅)) (<see cref="Guidance"/>); w ≤ 1 runs the conditional pass
    /// alone.</summary>
    public double GuidanceScale { get; init; } = 7.5;
    /// <summary>∅ rows [B, …] (negative prompts or conditions); null: the denoiser's null condition.</summary>
    public Tensor? Negative { get; init; }
    /// <summary>Seeds a CPU torch.Generator for x_T (diffusers' CPU draws: the same noise on every device); null with
    /// no <see cref="Generator"/>: torch's global generator, as diffusers without a generator.</summary>
    public long? Seed { get; init; }
    /// <summary>Draws x_T from this generator instead of <see cref="Seed"/> (the caller owns it).</summary>
    public Generator? Generator { get; init; }
    /// <summary>x_T, before scaling by the scheduler's init_noise_sigma (diffusers' latents argument).</summary>
    public Tensor? Latents { get; init; }
    /// <summary>The latent grid [h, w]; default the denoiser's sample size (square).</summary>
    public long[]? LatentSize { get; init; }
    /// <summary>DDIM's η (0: deterministic); other schedulers ignore it.</summary>
    public double Eta { get; init; }
    /// <summary>Sees every step (its tensors are disposed after it returns: copy what you keep).</summary>
    public Action<SamplingStep>? Callback { get; init; }
    /// <summary>Decode at most this many latents per VAE call (null: all at once).</summary>
    public int? DecodeBatchSize { get; init; }
    /// <summary>Decode tile by tile (<see cref="TiledAutoencoder"/>; null: in one piece).</summary>
    public VaeTiling? Tiling { get; init; }
    /// <summary>Record every cross-attention layer's maps while sampling
    /// (<see cref="LatentGenerationOutput.Attention"/>).</summary>
    public bool RecordAttention { get; init; }
    /// <summary>A sampler-side step on the latents before every denoising step (<see cref="AttendAndExcite"/>,
    /// <see cref="LayoutSteering"/>; one steering prompt per condition row); null: plain sampling.</summary>
    public AttentionSteering? Steering { get; init; }
    /// <summary>Other condition rows from a step on (prompt-to-prompt's swap: which step decides the
    /// picture?); null: the same rows throughout.</summary>
    public ConditionSwitch? Switch { get; init; }
}

/// <summary>From step <paramref name="AtStep"/> (0-based, of the sampler's steps) on, the denoiser sees
/// <paramref name="Conditions"/> [B, …] instead of the call's rows (AtStep ≥ steps: never; 0: from the start).
/// </summary>
public sealed record ConditionSwitch(int AtStep, Tensor Conditions);

/// <summary>
/// The decoded images [B, C, H, W] in [−1, 1] (null when the pipeline has no autoencoder), the final latents
/// [B, c, h, w], the attention recording when asked for (the caller disposes it) and where the time went.
/// </summary>
public sealed record LatentGenerationOutput(Tensor? Images, Tensor Latents, CrossAttentionRecorder? Attention,
    TimeSpan SamplingTime, TimeSpan DecodingTime);

/// <summary>
/// Latent diffusion inference for any <see cref="ConditionalDenoiser"/> (class labels, prompts, layouts, prompt
/// embeddings), any autoencoder and any scheduler — the one generation loop of LdmLab:
/// <code>
/// z_T ~ N(0, I)                     drawn on the CPU from the seed, moved to the denoiser's device
/// for t in scheduler.timesteps:     ε̂ = guided denoiser(z_t, t, c)         (classifier-free guidance)
///     z_{t−1} = scheduler.step(ε̂, t, z_t)
/// x = decoder(z_0 / scaling_factor)  the scale lives in the autoencoder's config, as in diffusers
/// </code>
/// Every call builds a fresh scheduler, so multistep history never leaks between calls.
/// <see cref="StableDiffusionPipeline"/> is its text-conditioned form.
/// </summary>
public sealed partial class LatentDiffusionPipeline
{
    readonly Func<Scheduler> _newScheduler;

    public ConditionalDenoiser Denoiser { get; }
    /// <summary>The decoder of the latents; null for a pipeline that only samples latents.</summary>
    public AutoencoderKL? Vae { get; }

    /// <param name="newScheduler">A fresh scheduler per call: <c>() =&gt; Scheduler.Create(cls, config)</c>.</param>
    public LatentDiffusionPipeline(ConditionalDenoiser denoiser, AutoencoderKL? vae, Func<Scheduler> newScheduler)
    {
        Denoiser = denoiser;
        Vae = vae;
        _newScheduler = newScheduler;
    }

    public LatentDiffusionPipeline(ConditionalDenoiser denoiser, AutoencoderKL? vae, string schedulerClass,
        System.Text.Json.Nodes.JsonObject schedulerConfig)
        : this(denoiser, vae, () => Scheduler.Create(schedulerClass, schedulerConfig))
    {
        _ = _newScheduler();                      // fail now on an unsupported scheduler, not at the first call
    }

    public Device Device => Denoiser.parameters().First().device;

    /// <summary>Conditions [B, …] → latents, then images; see <see cref="LatentGenerationOptions"/>.</summary>
    public LatentGenerationOutput Generate(Tensor conditions, LatentGenerationOptions o)
    {
        using var _ = no_grad();
        var device = Device;
        var rows = conditions.to(device);
        var noise = InitialNoise(rows.shape[0], o).to(device);                                   // [B, c, h, w]
        var recorder = o.RecordAttention
            ? new CrossAttentionRecorder(Denoiser, (int)noise.shape[2], (int)noise.shape[3],
                guidanceBatch: Guidance.Enabled(o.GuidanceScale))
            : null;
        var scheduler = NewScheduler(o);
        if (o.Steering is null && o.Switch is null)
            return Timed(() => Sampling.Sample(scheduler, GuidedDenoiser(rows, o), noise, o.Steps, o.Callback),
                recorder, o.DecodeBatchSize, o.Tiling);
        var switched = o.Switch?.Conditions.to(device);
        if (switched is not null && !switched.shape.SequenceEqual(rows.shape))
            throw new ArgumentException($"the switch's conditions must be shaped as the call's " +
                                        $"[{string.Join(", ", rows.shape)}], got [{string.Join(", ", switched.shape)}]",
                nameof(o));
        int current = 0;                                                  // the step the sampler is at
        bool Switched() => switched is not null && current >= o.Switch!.AtStep;
        Tensor Rows() => Switched() ? switched! : rows;
        var plain = GuidedDenoiser(rows, o);
        var other = switched is null ? plain : GuidedDenoiser(switched, o);
        Diffusion.Denoiser denoiser = (z, t) => (Switched() ? other : plain)(z, t);
        Tensor BeforeStep(int i, Tensor x)
        {
            current = i;
            return o.Steering is null ? x : o.Steering.Step(Denoiser, scheduler, x, i, Rows(), recorder);
        }
        return Timed(() => Sampling.Sample(scheduler, denoiser, noise, o.Steps, o.Callback, beforeStep: BeforeStep),
            recorder, o.DecodeBatchSize, o.Tiling);
    }

    /// <summary>
    /// Image to image (SDEdit; diffusers' img2img): the images [B, C, H, W] in [−1, 1] are encoded (a posterior
    /// sample × scaling_factor), noised to the timestep that <paramref name="strength"/> selects (the first
    /// int(steps·strength) of the steps are skipped from the end) and denoised from there. The posterior sample and
    /// then the noise are drawn from one generator (the seed's), as diffusers draws them.
    /// </summary>
    public LatentGenerationOutput ImageToImage(Tensor conditions, Tensor images, double strength,
        LatentGenerationOptions o)
    {
        if (strength is < 0 or > 1)
            throw new ArgumentOutOfRangeException(nameof(strength), strength, "strength must lie in [0, 1]");
        var vae = Vae ?? throw new InvalidOperationException("image to image needs an autoencoder to encode with");
        using var _ = no_grad();
        var device = Device;
        var rows = conditions.to(device);
        if (images.dim() != 4 || images.shape[1] != vae.Config.InChannels || images.shape[0] != rows.shape[0])
            throw new ArgumentException($"image must be [{rows.shape[0]}, {vae.Config.InChannels}, H, W] in [-1, 1], " +
                                        $"got [{string.Join(", ", images.shape)}]", nameof(images));
        var posterior = vae.Encode(images.to(device));
        using var seeded = SeededGenerator(o);
        var generator = o.Generator ?? seeded;
        var x0 = posterior.Sample(randn(posterior.Mean.shape, generator: generator).to(device))
                 * vae.Config.ScalingFactor;                                                     // [B, c, h, w]
        var noise = randn(x0.shape, generator: generator).to(device);
        var scheduler = NewScheduler(o);
        return Timed(() => Sampling.Img2Img(scheduler, GuidedDenoiser(rows, o), x0, noise, o.Steps, strength,
            o.Callback), null, o.DecodeBatchSize);
    }

    /// <summary>
    /// Inpainting (diffusers' StableDiffusionInpaintPipeline): <paramref name="masks"/> [B, 1, H, W] marks with 1 what
    /// to repaint (binarised at 0.5) in <paramref name="images"/> [B, C, H, W] in [−1, 1]. An ordinary U-Net
    /// (c latent channels in) samples with blended latents (<see cref="Sampling.Inpaint"/>): the known region is
    /// re-noised and put back after every step, so it ends as the image's own latents. An inpainting U-Net
    /// (2c + 1 channels in) sees [z_t, mask, latents of the image with the hole blanked] at every step instead.
    /// Draws from the seed's generator in diffusers' order: the image's posterior sample (unless an inpainting U-Net
    /// starts from pure noise, which needs no image latents), the noise, the masked image's sample (always drawn, as
    /// diffusers does, so that the same seed gives the same noise either way).
    /// </summary>
    public LatentGenerationOutput Inpaint(Tensor conditions, Tensor images, Tensor masks, LatentGenerationOptions o,
        double strength = 1.0)
    {
        if (strength is <= 0 or > 1)
            throw new ArgumentOutOfRangeException(nameof(strength), strength, "strength must lie in (0, 1]");
        var vae = Vae ?? throw new InvalidOperationException("inpainting needs an autoencoder to encode with");
        using var _ = no_grad();
        var device = Device;
        var rows = conditions.to(device);
        long b = rows.shape[0];
        if (images.dim() != 4 || images.shape[1] != vae.Config.InChannels || images.shape[0] != b)
            throw new ArgumentException($"image must be [{b}, {vae.Config.InChannels}, H, W] in [-1, 1], " +
                                        $"got [{string.Join(", ", images.shape)}]", nameof(images));
        if (masks.dim() != 4 || masks.shape[1] != 1 || masks.shape[0] != b || masks.shape[2] != images.shape[2]
            || masks.shape[3] != images.shape[3])
            throw new ArgumentException($"mask must be [{b}, 1, {images.shape[2]}, {images.shape[3]}] in [0, 1] " +
                                        $"(1 = repaint), got [{string.Join(", ", masks.shape)}]", nameof(masks));
        int latent = vae.Config.LatentChannels, inChannels = Denoiser.Backbone.Config.InChannels;
        if (inChannels != latent && inChannels != 2 * latent + 1)
            throw new InvalidOperationException($"the U-Net takes {inChannels} channels: neither the VAE's {latent} " +
                                                $"latents nor an inpainting U-Net's {2 * latent + 1}");
        var pixels = images.to(device);
        var hole = (masks.to(device) >= 0.5).to_type(pixels.dtype);                              // [B, 1, H, W]
        using var seeded = SeededGenerator(o);
        var generator = o.Generator ?? seeded;
        Tensor Latents(Tensor x)
        {
            var posterior = vae.Encode(x);
            return posterior.Sample(randn(posterior.Mean.shape, generator: generator).to(device))
                   * vae.Config.ScalingFactor;                                                   // [B, c, h, w]
        }
        int f = vae.Config.DownsamplingFactor;
        long[] shape = [b, latent, pixels.shape[2] / f, pixels.shape[3] / f];                   // [B, c, h, w]
        var known = inChannels == latent || strength < 1 ? Latents(pixels) : zeros(shape, device: device);
        var noise = randn(shape, generator: generator).to(device);
        var blanked = Latents(pixels * (1 - hole));                                              // [B, c, h, w]
        var small = nn.functional.interpolate(hole, size: [shape[2], shape[3]]);                // nearest, [B, 1, h, w]
        var guided = GuidedDenoiser(rows, o);
        var scheduler = NewScheduler(o);
        if (inChannels == latent)
            return Timed(() => Sampling.Inpaint(scheduler, guided, known, small, noise, o.Steps, strength, o.Callback),
                null, o.DecodeBatchSize);
        Diffusion.Denoiser withMask = (z, t) => guided(cat([z, small, blanked], 1), t);         // [B, 2c + 1, h, w]
        return Timed(() => Sampling.Inpaint(scheduler, withMask, known, null, noise, o.Steps, strength, o.Callback),
            null, o.DecodeBatchSize);
    }

    /// <summary>Runs the sampling, stops the recorder, decodes (when there is an autoencoder), timing each part.
    /// </summary>
    LatentGenerationOutput Timed(Func<Tensor> sample, CrossAttentionRecorder? recorder, int? decodeBatchSize,
        VaeTiling? tiling = null)
    {
        var clock = Stopwatch.StartNew();
        var latents = sample();
        Runtime.Lab.Synchronize();
        var sampling = clock.Elapsed;
        recorder?.Stop();
        clock.Restart();
        var images = Vae is null ? null : Decode(latents, decodeBatchSize, tiling);
        Runtime.Lab.Synchronize();
        return new LatentGenerationOutput(images, latents, recorder, sampling, clock.Elapsed);
    }

    /// <summary>A CPU generator for <see cref="LatentGenerationOptions.Seed"/> when no generator was passed (the caller
    /// disposes it); null otherwise: then x_T comes from the given generator or torch's global one.</summary>
    static Generator? SeededGenerator(LatentGenerationOptions o) =>
        o.Generator is null && o.Seed is long seed ? new Generator((ulong)seed) : null;

    /// <summary>Latents [B, c, h, w] → images in [−1, 1]: decode(z / scaling_factor), clamped; tile by tile with
    /// <paramref name="tiling"/>.</summary>
    public Tensor Decode(Tensor latents, int? batchSize = null, VaeTiling? tiling = null)
    {
        var vae = Vae ?? throw new InvalidOperationException("this pipeline has no autoencoder to decode with");
        using var _ = no_grad();
        int n = (int)latents.shape[0], batch = Math.Max(1, batchSize ?? n);
        var parts = new List<Tensor>();
        for (int start = 0; start < n; start += batch)
        {
            // each slice's activations are freed before the next one starts (what slicing is for)
            using var scope = NewDisposeScope();
            var z = latents.narrow(0, start, Math.Min(batch, n - start)) / vae.Config.ScalingFactor;  // [b, c, h, w]
            parts.Add((tiling is null ? vae.Decode(z) : vae.TiledDecode(z, tiling)).clamp(-1, 1)
                .MoveToOuterDisposeScope());                                                          // [b, C, H, W]
        }
        return parts.Count == 1 ? parts[0] : cat(parts.ToArray());
    }

    /// <summary>The scheduler for one call: fresh, with DDIM's η from the options.</summary>
    Scheduler NewScheduler(LatentGenerationOptions o)
    {
        var scheduler = _newScheduler();
        if (scheduler is DdimScheduler ddim) ddim.Eta = o.Eta;
        return scheduler;
    }

    /// <summary>The sampler's view of the denoiser: guided by the options' scale and ∅ rows, on the rows'
    /// device.</summary>
    Diffusion.Denoiser GuidedDenoiser(Tensor rows, LatentGenerationOptions o)
    {
        var negative = o.Negative?.to(rows.device);
        if (negative is not null && negative.shape[0] != rows.shape[0])
            throw new ArgumentException($"{negative.shape[0]} negative rows for {rows.shape[0]} conditions " +
                                        "(give one each, or none)", nameof(o));
        return (z, t) => Denoiser.Guided(z, tensor((float)t, device: z.device), rows, o.GuidanceScale, negative);
    }

    /// <summary>x_T [B, c, h, w] on the CPU: the given latents, or N(0, I) from the seed or the generator.</summary>
    Tensor InitialNoise(long batch, LatentGenerationOptions o)
    {
        var config = Denoiser.LatentShape;
        long[] grid = o.LatentSize ?? [config.SampleSize, config.SampleSize];
        if (grid.Length != 2) throw new ArgumentException("LatentSize is [height, width]", nameof(o));
        long[] shape = [batch, config.Channels, .. grid];
        if (o.Latents is { } given)
        {
            if (!given.shape.SequenceEqual(shape))
                throw new ArgumentException($"latents must be [{string.Join(", ", shape)}], got " +
                                            $"[{string.Join(", ", given.shape)}]", nameof(o));
            return given;
        }
        using var seeded = SeededGenerator(o);
        return randn(shape, generator: o.Generator ?? seeded);
    }
}
