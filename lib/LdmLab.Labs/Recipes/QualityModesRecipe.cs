namespace LdmLab.Labs;

/// <summary>
/// Section 10.3.5, quality against efficiency: the same class-conditional latent diffusion recipe on Fashion-MNIST
/// padded to 32×32, once per downsampling factor f = 2, 4, 8 (a KL autoencoder with 1, 2 or 3 downsamplings →
/// latents 4×16×16, 4×8×8, 4×4×4; then the notebooks' denoiser U-Net on them, the same budget for each), so that
/// the chapter's modes can be measured as (f, steps) pairs: draft = f 8 with 10 steps, balanced = f 4 with 25,
/// quality = f 2 with 50. The quick profile loads the shipped models (<c>ldmlab train fashion-modes</c>, full recipe).
/// </summary>
public static class QualityModesRecipe
{
    /// <summary>Canvas side: Fashion-MNIST's 28 padded by 2 background pixels on each side (so that f = 8 divides
    /// it).</summary>
    public const int Size = 32;
    public static readonly int[] Factors = [2, 4, 8];

    /// <summary>A mode of the chapter's table: a name, the model's f and the sampler's step count.</summary>
    public sealed record Mode(string Name, int F, int Steps, string Use);

    /// <summary>The chapter's modes: draft = 16× model, 10 steps; balanced = 8×, 25; quality = 4×, 50 — here at
    /// f = 8, 4, 2, the factors a 32×32 canvas allows (f = 16 would leave a 2×2 latent).</summary>
    public static IReadOnlyList<Mode> Modes { get; } =
    [
        new("draft", 8, 10, "fast preview"), new("balanced", 4, 25, "balanced"), new("quality", 2, 50, "high quality"),
    ];

    /// <summary>[N, 1, 28, 28] → [N, 1, 32, 32] with background (−1) around.</summary>
    public static Tensor Pad(Tensor images) => nn.functional.pad(images, [2, 2, 2, 2], value: -1);

    /// <summary>The 28×28 item inside a 32×32 canvas (what the Fashion classifier judges).</summary>
    public static Tensor Crop(Tensor canvases) => canvases[.., .., 2..30, 2..30];

    /// <summary>
    /// The KL autoencoder at factor f: the Fashion VAE's blocks (8, 16, 32), one fewer for f = 2, one more (32) for
    /// f = 8; 4 latent channels; the Fashion VAE's losses and options (3,000 steps, batch 32 in full).
    /// </summary>
    public static AutoencoderSpec Autoencoder(int f)
    {
        int[] blocks = f switch
        {
            2 => [8, 16],
            4 => [8, 16, 32],
            8 => [8, 16, 32, 32],
            _ => throw new ArgumentOutOfRangeException(nameof(f), f, "f is 2, 4 or 8 on a 32×32 canvas"),
        };
        var fashion = AutoencoderRecipes.Fashion(vq: false);
        return fashion with
        {
            Name = $"KL-f{f}-c4 (Fashion 32×32)",
            Config = fashion.Config with { BlockOutChannels = blocks, SampleSize = Size },
        };
    }

    /// <summary>The denoiser at factor f: the notebooks' class-conditional U-Net on a (32/f)² latent grid.</summary>
    public static UNetConfig DenoiserConfig(int f) => FashionLatentRecipe.DenoiserConfig with { SampleSize = Size / f };

    /// <summary>The same options for every f (those of <see cref="FashionLatentRecipe.DenoiserOptions"/>: 1,000 steps,
    /// batch 64 in full).</summary>
    public static TrainerOptions DenoiserOptions => FashionLatentRecipe.DenoiserOptions;

    public static string ShippedDenoiser(int f) => $"fashion-denoiser-f{f}-32";

    /// <summary>The denoiser at factor f, untrained (seeded), on <see cref="Lab.Device"/>.</summary>
    public static ClassConditionedUNet NewDenoiser(int f, long seed = 0)
    {
        manual_seed(seed);
        return new ClassConditionedUNet(DenoiserConfig(f), FashionMnist.ClassNames.Length).OnLabDevice();
    }

    /// <summary>Everything that determines a denoiser: f, config, options, seed, its latents' origin, the
    /// labels.</summary>
    public static string DenoiserKey(int f, Tensor latents, Tensor labels, TrainerOptions options, long seed) =>
        FashionLatentRecipe.Key("modes-denoiser", f, DenoiserConfig(f), options with { Steps = 0 }, seed,
            FashionLatentRecipe.LatentIdentity(latents), ContentHash.Of(labels));

    /// <summary>One f's trained pair: the autoencoder (its config.scaling_factor is the latent scale), the denoiser
    /// and where they came from.</summary>
    public sealed record TrainedMode(int F, AutoencoderKL Vae, ClassConditionedUNet Denoiser, DiffusionTrainingLog Log,
        string Source);

    /// <summary>
    /// The autoencoder and the denoiser at factor f. Quick profile: the shipped pair (hash-checked). Otherwise the
    /// cache, or training runs on <paramref name="images"/> (32×32 canvases, <see cref="Pad"/>) and their labels;
    /// the latents are scaled to unit variance (config.scaling_factor = 1/σ, as the Fashion VAE).
    /// </summary>
    public static TrainedMode Load(int f, Tensor images, Tensor labels, Viz.Progress? progress = null, long seed = 0)
    {
        var ae = AutoencoderRecipes.LoadOrTrain(Autoencoder(f), images, progress, seed: seed);
        var vae = (AutoencoderKL)ae.Model;
        return ArtifactStore.Current.Resolve(ShippedDenoiser(f), seed,
            shipped =>
            {
                vae.UseScalingFactor(shipped.Metrics["latent_scale"]);       // the scale lives in the config
                return new TrainedMode(f, vae, shipped.LoadInto(NewDenoiser(f)),
                    DiffusionTrainingLog.Load(Path.Combine(shipped.Dir, FashionLatentRecipe.DenoiserLogFile)),
                    $"autoencoder: {ae.Source}; denoiser: {shipped.Describe()}");
            },
            () =>
            {
                var (latents, _) = Latents(vae, images);
                var options = DenoiserOptions;
                var dir = ArtifactStore.Current.CacheEntry("modes", DenoiserKey(f, latents, labels, options, seed),
                    $"steps-{options.Steps}");
                var (model, log) = TrainDenoiser(f, latents, labels, options with
                {
                    CheckpointDir = dir,
                    CheckpointEvery = 500,
                    Seed = seed,
                }, progress);
                return new TrainedMode(f, vae, model, log, $"autoencoder: {ae.Source}; denoiser: " +
                    (log.ResumedFromStep >= log.Losses.Count ? "loaded from the cache"
                        : $"trained {log.Losses.Count - log.ResumedFromStep:N0} steps in {log.Elapsed.TotalSeconds:F0} s"));
            });
    }

    /// <summary>The autoencoder's scaled latents of the canvases, and the scale: 1/σ of the posterior means (what
    /// diffusers keeps as scaling_factor; the shipped denoiser records it as its latent_scale).</summary>
    public static (Tensor latents, double scale) Latents(AutoencoderKL vae, Tensor images) =>
        FashionLatentRecipe.ScaledLatents(vae, images, unitVariance: true);

    /// <summary>One training run of the denoiser at factor f on scaled latents; the EMA weights in eval mode.</summary>
    public static (ClassConditionedUNet model, DiffusionTrainingLog log) TrainDenoiser(int f, Tensor latents,
        Tensor labels, TrainerOptions options, Viz.Progress? progress = null)
    {
        if (latents.shape[2] != Size / f)
            throw new ArgumentException($"f = {f} needs latents of {Size / f}×{Size / f}, got " +
                                        $"{latents.shape[2]}×{latents.shape[3]}", nameof(latents));
        var model = NewDenoiser(f, options.Seed);
        var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(NoiseSchedule.ScaledLinear()), options);
        var log = trainer.Train(latents, labels, progress);
        trainer.Ema.CopyTo(model);
        model.eval();
        return (model, log);
    }

    /// <summary>
    /// Samples the given labels with a trained pair: DDIM with <paramref name="steps"/> steps, classifier-free
    /// guidance w, then batched decoding; 32×32 canvases in [−1, 1]. The same noise per seed for every f's grid.
    /// </summary>
    public static Tensor Sample(TrainedMode mode, Tensor labels, int steps, double guidance, long seed = 0,
        int batchSize = 200)
    {
        var pipeline = new LatentDiffusionPipeline(mode.Denoiser, mode.Vae, "DDIMScheduler",
            TextToImageRecipe.SchedulerConfig());
        var batches = new List<Tensor>();
        for (long start = 0; start < labels.shape[0]; start += batchSize)
        {
            long n = Math.Min(batchSize, labels.shape[0] - start);
            batches.Add(pipeline.Generate(labels.narrow(0, start, n), new LatentGenerationOptions
            {
                Steps = steps, GuidanceScale = guidance, Seed = seed + start, LatentSize = [Size / mode.F, Size / mode.F],
            }).Images!.cpu());                                                                 // [n, 1, 32, 32]
        }
        return cat(batches.ToArray());
    }
}
