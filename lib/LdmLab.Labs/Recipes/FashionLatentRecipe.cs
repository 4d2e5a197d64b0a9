using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace LdmLab.Labs;

/// <summary>
/// The chapter's running example: Fashion-MNIST → KL-VAE (f = 4, 4 latent channels: 28×28 → 4×7×7) → a
/// class-conditional latent U-Net. Trained models are cached (keyed by their settings) under
/// LDMLAB_CACHE or ~/.cache/ldmlab, so notebooks that need them train once per profile and reuse them.
/// </summary>
public static class FashionLatentRecipe
{
    public static AutoencoderKLConfig VaeConfig { get; } = new()
    {
        InChannels = 1, OutChannels = 1, LatentChannels = 4, BlockOutChannels = [8, 16, 32], LayersPerBlock = 1,
        NormNumGroups = 8, SampleSize = 28, ScalingFactor = 1.0,
    };

    public static VaeTrainerOptions VaeOptions => new()
    {
        Steps = Lab.Pick(quick: 60, full: 3000), BatchSize = Lab.Pick(quick: 32, full: 32, gpu: 128), LearningRate = 2e-3,
        WarmupSteps = Lab.Pick(quick: 10, full: 100), KlWeight = 1e-6,
    };

    public static UNetConfig DenoiserConfig { get; } = new()
    {
        InChannels = 4, OutChannels = 4, BlockOutChannels = [32, 64], LayersPerBlock = 1, NormNumGroups = 16,
        CrossAttentionDim = 64, AttentionHeadDim = [4], DownBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"],
        UpBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D"], SampleSize = 7,
    };

    public static TrainerOptions DenoiserOptions => new()
    {
        Steps = Lab.Pick(quick: 40, full: 1000, gpu: 2000), BatchSize = Lab.Pick(quick: 64, full: 64, gpu: 256), LearningRate = 1e-3,
        WarmupSteps = Lab.Pick(quick: 10, full: 200),
        EmaDecay = Lab.Pick(quick: 0.9, full: 0.999), ConditionDropout = 0.1,
    };

    /// <summary>Where trained models are cached (<see cref="ArtifactStore.CacheRoot"/> of the settings in
    /// force).</summary>
    public static string CacheRoot => ArtifactStore.Current.CacheRoot;

    /// <summary>
    /// A short hash of everything that determines a trained model — settings, and the content hashes of the data and
    /// upstream weights it was made from (<see cref="ContentHash"/>) — so that nothing changed can reuse a stale cache.
    /// </summary>
    public static string Key(params object[] parts)
    {
        var json = string.Join("|", parts.Select(p => JsonSerializer.Serialize(p)));
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes("v2|" + json)))[..12].ToLowerInvariant();
    }

    /// <summary>
    /// The Fashion-MNIST KL-VAE: loaded from the cache, or trained on <paramref name="images"/> (checkpointed every
    /// quarter of the run, so a stopped run resumes) and cached. Its config.scaling_factor is 1/σ of the posterior
    /// means of <paramref name="images"/>, measured after training and saved in config.json, as diffusers keeps it.
    /// </summary>
    public static (AutoencoderKL vae, bool trained, VaeTrainer.Log? log) LoadOrTrainVae(Tensor images, Viz.Progress? progress = null, long seed = 0)
    {
        var dir = ArtifactStore.Current.CacheEntry("fashion-vae", VaeKey(images, seed));
        var options = VaeOptions with { Seed = seed, CheckpointDir = dir, CheckpointEvery = Math.Max(1, VaeOptions.Steps / 4) };
        if (File.Exists(Path.Combine(dir, AutoencoderKL.WeightsName)))
            return (AutoencoderKL.FromPretrained(dir).eval_().OnLabDevice(), false, null);
        manual_seed(seed);
        var vae = NewVae();
        var log = VaeTrainer.Train(vae, images, options, progress);
        vae.eval();
        vae.UseScalingFactor(MeasureScalingFactor(vae, images));
        vae.SavePretrained(dir);
        return (vae, true, log);
    }

    /// <summary>The cache key of the VAE recipe in the current profile: its config, options, seed and images.</summary>
    public static string VaeKey(Tensor images, long seed) => Key(VaeConfig, VaeOptions with { Seed = seed }, ContentHash.Of(images));

    /// <summary>The name of the shipped Fashion VAE under data/checkpoints (see <see cref="ShippedCheckpoint"/>).</summary>
    public const string ShippedVae = "fashion-vae";

    /// <summary>The VAE a notebook uses, and a sentence that says where it came from.</summary>
    public sealed record TrainedVae(AutoencoderKL Vae, string Source, VaeTrainer.Log? Log);

    /// <summary>
    /// The Fashion VAE for a notebook. Quick profile: the shipped checkpoint trained by the full-profile recipe on all
    /// 60,000 training images (hash-checked), when this checkout has it. Otherwise <see cref="LoadOrTrainVae"/>: the
    /// cache, or a training run on <paramref name="images"/> with this profile's settings (full: 3,000 steps).
    /// </summary>
    public static TrainedVae Vae(Tensor images, Viz.Progress? progress = null, long seed = 0) =>
        ArtifactStore.Current.Resolve(ShippedVae, seed,
            shipped => new TrainedVae(AutoencoderKL.FromPretrained(shipped.Dir).eval_().OnLabDevice(), shipped.Describe(),
                null),
            () =>
            {
                var (vae, trained, log) = LoadOrTrainVae(images, progress, seed);
                return new TrainedVae(vae, trained
                    ? $"trained {VaeOptions.Steps:N0} steps ({Lab.Profile.ToString().ToLowerInvariant()} profile) on " +
                      $"{images.shape[0]:N0} images in {log!.Elapsed.TotalSeconds:F0} s"
                    : "loaded from the cache (trained earlier with the same settings and images)", log);
            });

    /// <summary>The recipe's VAE, untrained, on <see cref="Lab.Device"/>.</summary>
    public static AutoencoderKL NewVae() => new AutoencoderKL(VaeConfig).OnLabDevice();

    /// <summary>The recipe's class-conditional denoiser, untrained, on <see cref="Lab.Device"/>.</summary>
    public static ClassConditionedUNet NewDenoiser() =>
        new ClassConditionedUNet(DenoiserConfig, FashionMnist.ClassNames.Length).OnLabDevice();

    /// <summary>1/σ of the posterior means of <paramref name="images"/>: the factor that gives the latents unit variance.</summary>
    public static double MeasureScalingFactor(AutoencoderKL vae, Tensor images) =>
        1.0 / VaeTrainer.EncodeMeans(vae, images).std().item<float>();

    /// <summary>
    /// The class-conditional latent denoiser for a schedule: resumed from its checkpoint (or loaded when complete),
    /// else trained; EMA weights are what it returns.
    /// </summary>
    public static (ClassConditionedUNet model, DiffusionTrainingLog log) LoadOrTrainDenoiser(Tensor latents, Tensor labels, NoiseSchedule schedule,
        PredictionType prediction = PredictionType.Epsilon, double? minSnrGamma = null, TrainerOptions? options = null,
        Viz.Progress? progress = null, long seed = 0)
    {
        options ??= DenoiserOptions;
        // One folder per step count inside a folder per setting: a longer run starts from the longest shorter run's
        // checkpoint (staged evaluation), and a shorter request never gets a model trained further than asked.
        var family = ArtifactStore.Current.CacheEntry("fashion-ldm",
            DenoiserKey(latents, labels, schedule, prediction, minSnrGamma, options, seed));
        var dir = Path.Combine(family, $"steps-{options.Steps}");
        if (!File.Exists(Path.Combine(dir, LatentDiffusionTrainer.CheckpointFile)) && Directory.Exists(family))
        {
            var shorter = Directory.GetDirectories(family, "steps-*")
                .Select(d => (d, n: int.TryParse(Path.GetFileName(d)[6..], out var n) ? n : -1))
                .Where(x => x.n > 0 && x.n < options.Steps && File.Exists(Path.Combine(x.d, LatentDiffusionTrainer.CheckpointFile)))
                .OrderByDescending(x => x.n).FirstOrDefault();
            if (shorter.d is not null)
            {
                Directory.CreateDirectory(dir);
                File.Copy(Path.Combine(shorter.d, LatentDiffusionTrainer.CheckpointFile),
                    Path.Combine(dir, LatentDiffusionTrainer.CheckpointFile + ".tmp"), true);
                File.Move(Path.Combine(dir, LatentDiffusionTrainer.CheckpointFile + ".tmp"), Path.Combine(dir, LatentDiffusionTrainer.CheckpointFile), true);
            }
        }
        manual_seed(seed);
        var model = NewDenoiser();
        var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(schedule, prediction, minSnrGamma),
            options with { CheckpointDir = dir, CheckpointEvery = 500, Seed = seed });
        var log = trainer.Train(latents, labels, progress);
        trainer.Ema.CopyTo(model);
        model.eval();
        return (model, log);
    }

    /// <summary>
    /// The key of a denoiser run (any step count): config, options, schedule, prediction, weighting, seed, the latents'
    /// identity (<see cref="LatentIdentity"/>: the VAE's weights and the images, so another VAE gives another key) and
    /// the labels' content.
    /// </summary>
    public static string DenoiserKey(Tensor latents, Tensor labels, NoiseSchedule schedule, PredictionType prediction,
        double? minSnrGamma, TrainerOptions options, long seed) =>
        Key(DenoiserConfig, options with { Steps = 0 }, schedule.Name, ContentHash.Of(schedule.Betas), prediction, minSnrGamma ?? -1,
            LatentIdentity(latents), ContentHash.Of(labels), seed);

    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Tensor, string> LatentOrigins = new();

    /// <summary>
    /// What identifies a latent tensor in a cache key: for latents made by <see cref="ScaledLatents"/>, their origin —
    /// the VAE's weights, the images' content and the scale — rather than their bits, which differ in the last place
    /// from one CPU's kernels to another's (AVX2 vs AVX-512 encode the same images to latents a few ulps apart, and a
    /// key over those bits would name the shipped denoiser's training data differently on every kind of CPU). Any
    /// other tensor (a slice, hand-made latents) is identified by its content.
    /// </summary>
    public static string LatentIdentity(Tensor latents) =>
        LatentOrigins.TryGetValue(latents, out var origin) ? origin : ContentHash.Of(latents);

    /// <summary>The name of the shipped latent denoiser (SD's scaled-linear schedule) under data/checkpoints.</summary>
    public const string ShippedDenoiser = "fashion-denoiser";

    /// <summary>
    /// The five schedules of notebook 04's convergence study (exercise 10.3.2), by the name of their shipped
    /// denoiser: DDPM's linear, the cosine of Nichol &amp; Dhariwal, SD's scaled-linear, the chapter's SNR-adaptive one
    /// for unit-variance latents (−20 dB at t = T) and scaled-linear rescaled to zero terminal SNR (Lin et al. 2023).
    /// </summary>
    public static IReadOnlyList<(string Name, NoiseSchedule Schedule)> StudySchedules =>
    [
        (ShippedDenoiser + "-linear", NoiseSchedule.Linear()), (ShippedDenoiser + "-cosine", NoiseSchedule.Cosine()),
        (ShippedDenoiser, NoiseSchedule.ScaledLinear()),
        (ShippedDenoiser + "-snr-adaptive", NoiseSchedule.SnrAdaptive(1.0)),
        (ShippedDenoiser + "-zero-snr", NoiseSchedule.ScaledLinear(zeroTerminalSnr: true)),
    ];

    /// <summary>The shipped denoiser's name for a schedule of the study (matched by its β's), else null.</summary>
    public static string? ShippedDenoiserName(NoiseSchedule schedule)
    {
        var betas = ContentHash.Of(schedule.Betas);
        return StudySchedules.FirstOrDefault(s => ContentHash.Of(s.Schedule.Betas) == betas).Name;
    }

    /// <summary>
    /// What the recipe's denoiser regresses under a schedule: v = √ᾱ ε − √(1−ᾱ) z₀ when ᾱ_T = 0 (at zero terminal SNR
    /// z_T is pure noise, so ε-prediction carries no information about z₀ there; Lin et al. 2023), else ε.
    /// </summary>
    public static PredictionType PredictionFor(NoiseSchedule schedule) =>
        schedule.AlphasCumprod[^1] == 0 ? PredictionType.VPrediction : PredictionType.Epsilon;

    /// <summary>The denoiser a notebook uses, its training log, and a sentence that says where it came from.</summary>
    /// <param name="Shipped">Loaded from data/checkpoints (the full recipe), not trained or cached in this
    /// profile.</param>
    public sealed record TrainedDenoiser(ClassConditionedUNet Model, DiffusionTrainingLog Log, string Source,
        bool Shipped = false);

    /// <summary>
    /// The class-conditional denoiser for a notebook, trained with <see cref="PredictionFor"/> the schedule. Quick
    /// profile, seed 0 and a schedule of <see cref="StudySchedules"/>: its shipped checkpoint, trained by the
    /// full-profile recipe on the shipped VAE's latents of all 60,000 training images (EMA weights, hash-checked, with
    /// its loss log). Otherwise <see cref="LoadOrTrainDenoiser"/>.
    /// </summary>
    public static TrainedDenoiser Denoiser(Tensor latents, Tensor labels, NoiseSchedule schedule,
        Viz.Progress? progress = null, long seed = 0) =>
        ArtifactStore.Current.Resolve(ShippedDenoiserName(schedule), seed,
            shipped => new TrainedDenoiser(shipped.LoadInto(NewDenoiser()),
                DiffusionTrainingLog.Load(Path.Combine(shipped.Dir, DenoiserLogFile)), shipped.Describe(), Shipped: true),
            () =>
            {
                var (trained, run) = LoadOrTrainDenoiser(latents, labels, schedule, PredictionFor(schedule),
                    progress: progress, seed: seed);
                return new TrainedDenoiser(trained, run, run.ResumedFromStep >= run.Losses.Count
                    ? "loaded from the cache (trained earlier with the same settings and latents)"
                    : $"trained {run.Losses.Count - run.ResumedFromStep:N0} steps " +
                      $"({Lab.Profile.ToString().ToLowerInvariant()} profile) in {run.Elapsed.TotalSeconds:F0} s");
            });

    /// <summary>The shipped denoisers' weights file (float16 from the schedule study on; fashion-denoiser's is
    /// float32).</summary>
    public const string DenoiserWeightsFile = "denoiser.safetensors";

    /// <summary>The shipped denoiser's loss and learning-rate log, beside its weights.</summary>
    public const string DenoiserLogFile = "training-log.safetensors";

    /// <summary>
    /// Training latents as diffusers scales them: posterior means of <paramref name="images"/> times the VAE's
    /// config.scaling_factor (1/σ for the recipe VAE, like SD's 0.18215), so that the diffusion model sees unit
    /// variance. Returns the scaled latents and the factor. With <paramref name="unitVariance"/> the factor is
    /// measured on these means instead (1/σ, what <see cref="MeasureScalingFactor"/> gives), from one encoding, and
    /// written into the VAE's config.scaling_factor, where every decoder reads it.
    /// </summary>
    public static (Tensor latents, double scale) ScaledLatents(AutoencoderKL vae, Tensor images,
        bool unitVariance = false)
    {
        var means = VaeTrainer.EncodeMeans(vae, images);                          // [N, 4, h, w]
        if (unitVariance) vae.UseScalingFactor(1.0 / means.std().item<float>());  // the scale lives in the config
        double scale = vae.Config.ScalingFactor;
        var latents = means * scale;
        LatentOrigins.AddOrUpdate(latents, LatentOrigin(vae, images, scale));
        return (latents, scale);
    }

    /// <summary>The <see cref="LatentIdentity"/> of <see cref="ScaledLatents"/>'s latents of
    /// <paramref name="images"/>, without encoding them (a replay that encodes only the rows its steps draw still keys
    /// the run as the whole data set's).</summary>
    public static string LatentOrigin(AutoencoderKL vae, Tensor images, double scale) =>
        Key("latents", ContentHash.Of(vae), ContentHash.Of(images), scale);

    /// <summary>
    /// <see cref="ScaledLatents"/> for replaying a run's first steps: only <paramref name="rows"/> of
    /// <paramref name="images"/> encoded, times the run's <paramref name="scale"/>, every other row zero — a few
    /// hundred encodings instead of 60,000. Keyed as the whole encoding at that scale is
    /// (<see cref="LatentIdentity"/>): steps that draw only these rows (<see cref="LatentDiffusionTrainer.RowsDrawn"/>)
    /// cannot tell the two apart. Any other step would train on the zeros under the whole run's key: use it for those
    /// steps alone, never to train.
    /// </summary>
    public static Tensor ReplayLatents(AutoencoderKL vae, Tensor images, IReadOnlyList<long> rows, double scale)
    {
        var idx = tensor(rows.ToArray());                                                        // [n]
        var some = VaeTrainer.EncodeMeans(vae, images.index_select(0, idx)) * scale;             // [n, 4, h, w]
        var shape = some.shape.ToArray();
        shape[0] = images.shape[0];
        var latents = zeros(shape).index_copy_(0, idx, some);                                    // [N, 4, h, w]
        LatentOrigins.AddOrUpdate(latents, LatentOrigin(vae, images, scale));
        return latents;
    }

    /// <summary>
    /// Samples latents for the given conditions (class labels, prompt rows, layouts) with classifier-free guidance
    /// through <see cref="LatentDiffusionPipeline"/>; the callback sees every step. The noise is drawn on the CPU from
    /// <paramref name="seed"/> (the same samples on any device, and the same as
    /// <see cref="StableDiffusionPipeline"/>'s for that seed).
    /// </summary>
    /// <param name="latentSize">The latent grid [h, w] (default: the denoiser's sample size, 7×7 here).</param>
    public static Tensor SampleLatents(ConditionalDenoiser model, Scheduler scheduler,
        Tensor conditions, int steps, double guidance, Action<SamplingStep>? callback = null, long seed = 0,
        long[]? latentSize = null) =>
        new LatentDiffusionPipeline(model, null, () => scheduler).Generate(conditions, new LatentGenerationOptions
        {
            Steps = steps, GuidanceScale = guidance, Callback = callback, Seed = seed, LatentSize = latentSize,
        }).Latents;

    static AutoencoderKL eval_(this AutoencoderKL vae) { vae.eval(); return vae; }

    /// <summary>Moves a model to <see cref="Lab.Device"/> (CUDA when present); returns it.</summary>
    public static T OnLabDevice<T>(this T model) where T : nn.Module
    {
        model.to(Lab.Device);
        return model;
    }
}
