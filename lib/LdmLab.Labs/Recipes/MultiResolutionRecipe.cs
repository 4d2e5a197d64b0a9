namespace LdmLab.Labs;

/// <summary>
/// The multi-resolution text-to-image model (section 10.5.1, notebook 11): the cross-attention model of
/// <see cref="TextToImageRecipe"/> — the same U-Net and text encoder configs, options, step count and seed — trained on
/// <see cref="MultiSizeFashion"/>'s mixed canvases (28×28 one item, 28×56 two slots, 56×56 one large item) instead of
/// 28×56 alone. Each step draws one size bucket (∝ its scenes: ¼, ½, ¼) and a batch of it that keeps the pixels per
/// step at the fixed model's (64 at 28×56, 128 at 28×28, 32 at 56×56: <see cref="AdaptiveBatchSize"/>), so both
/// models see the same latent pixels for the same compute. The quick profile loads the shipped model (<c>ldmlab
/// train fashion-text2img-multires</c>); full and gpu train into the cache, checkpointed and resumable.
/// </summary>
public static class MultiResolutionRecipe
{
    public const string Shipped = "fashion-text2img-multires";

    /// <summary>The pixels per image the options' batch size is for: the fixed model's 28×56 canvas.</summary>
    public const int BasePixels = CaptionedScenes.Height * CaptionedScenes.Width;

    /// <summary>The fixed model's options (steps, batch at 28×56, learning rate, warm-up, EMA, caption dropout).
    /// </summary>
    public static TrainerOptions Options => TextToImageRecipe.Options;

    /// <summary>Training scenes per profile, over all buckets.</summary>
    public static int SceneCount => TextToImageRecipe.SceneCount;

    /// <summary>The training scenes of a profile: from the first images of the training split, seed 0.</summary>
    public static IReadOnlyList<SceneBucket> Scenes(FashionMnist train) =>
        MultiSizeFashion.Make(train, SceneCount, pairs: 0.5, seed: 0);

    /// <summary>A bucket's batch: the options' batch scaled to keep the pixels per step constant.</summary>
    public static int BatchFor(SizeBucket size, TrainerOptions options) =>
        AdaptiveBatchSize.ForPixels(options.BatchSize, size.Height, size.Width, BasePixels);

    /// <summary>Everything that determines the trained model: configs, options, seed, the VAE, and each bucket's
    /// size, batch, images and captions.</summary>
    public static string Key(AutoencoderKL vae, IReadOnlyList<SceneBucket> scenes, TrainerOptions options, long seed) =>
        FashionLatentRecipe.Key("text2img-multires", TextToImageRecipe.UNetConfig, TextToImageRecipe.TextConfig,
            options with { Steps = 0 }, seed, ContentHash.Of(vae), vae.Config.ScalingFactor,
            scenes.Select(b => $"{b.Size}|{BatchFor(b.Size, options)}|{ContentHash.Of(b.Images)}|" +
                               ContentHash.Of(b.Captions)).ToArray());

    /// <summary>Images [N, 1, H, W] → the VAE's posterior means times its scaling factor: [N, 4, H/4, W/4].</summary>
    public static Tensor ScaledLatents(AutoencoderKL vae, Tensor images) =>
        VaeTrainer.EncodeMeans(vae, images) * vae.Config.ScalingFactor;

    /// <summary>
    /// The training buckets: each bucket's scaled latents, token ids and batch. With <paramref name="onlyRows"/>,
    /// only those rows of each bucket are encoded (the others stay zero): what a replay of the first steps needs.
    /// </summary>
    public static IReadOnlyList<LatentBucket> Buckets(TextConditionedUNet model, AutoencoderKL vae,
        IReadOnlyList<SceneBucket> scenes, TrainerOptions options, IReadOnlyList<long[]>? onlyRows = null)
    {
        return scenes.Select((b, k) =>
        {
            Tensor latents;
            if (onlyRows is null) latents = ScaledLatents(vae, b.Images);                       // [N, 4, h, w]
            else
            {
                var rows = tensor(onlyRows[k]);
                var some = ScaledLatents(vae, b.Images.index_select(0, rows));                 // [n, 4, h, w]
                var shape = some.shape.ToArray();
                shape[0] = b.Count;
                latents = zeros(shape).index_copy_(0, rows, some);                             // [N, 4, h, w]
            }
            return new LatentBucket(latents, model.Tokenize(b.Captions), BatchFor(b.Size, options));
        }).ToList();
    }

    /// <summary>The rows of each bucket that steps 1…<paramref name="steps"/> of a run seeded
    /// <paramref name="seed"/> draw (<see cref="LatentDiffusionTrainer.DrawBatch"/>).</summary>
    public static IReadOnlyList<long[]> RowsDrawn(IReadOnlyList<SceneBucket> scenes, TrainerOptions options,
        int steps, long seed)
    {
        var counts = scenes.Select(b => b.Count).ToArray();
        var sizes = scenes.Select(b => BatchFor(b.Size, options)).ToArray();
        var rows = scenes.Select(_ => new SortedSet<long>()).ToArray();
        for (int s = 1; s <= steps; s++)
        {
            using var scope = NewDisposeScope();
            using var gen = TrainingLoop.StepGenerator(seed, s);
            var (bucket, idx) = LatentDiffusionTrainer.DrawBatch(counts, sizes, gen);
            rows[bucket].UnionWith(idx.data<long>().ToArray());
        }
        return rows.Select(r => r.ToArray()).ToList();
    }

    /// <summary>One training run (seeded by the options): a new model of <see cref="TextToImageRecipe.New"/> on
    /// the scenes' buckets; returns the EMA weights in eval mode.</summary>
    public static (TextConditionedUNet model, DiffusionTrainingLog log) Train(AutoencoderKL vae,
        IReadOnlyList<SceneBucket> scenes, TrainerOptions options, Viz.Progress? progress = null,
        IReadOnlyList<long[]>? onlyRows = null)
    {
        var model = TextToImageRecipe.New(options.Seed);
        var buckets = Buckets(model, vae, scenes, options, onlyRows);
        var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(NoiseSchedule.ScaledLinear()), options);
        var log = trainer.Train(buckets, progress);
        trainer.Ema.CopyTo(model);
        model.eval();
        return (model, log);
    }

    /// <summary>
    /// The multi-resolution model: quick profile the shipped one (hash-checked; no scenes made or encoded);
    /// otherwise the cache, or a run of <see cref="Options"/> on <see cref="Scenes"/> of <paramref name="train"/>
    /// encoded by <paramref name="vae"/>, checkpointed every 500 steps and resumed when stopped.
    /// </summary>
    public static TextToImageRecipe.Trained Load(FashionMnist train, AutoencoderKL vae, Viz.Progress? progress = null,
        long seed = 0) =>
        ArtifactStore.Current.Resolve(Shipped, seed,
            shipped => new TextToImageRecipe.Trained(shipped.LoadInto(TextToImageRecipe.New()),
                DiffusionTrainingLog.Load(Path.Combine(shipped.Dir, TextToImageRecipe.LogFile)), shipped.Describe()),
            () =>
            {
                var scenes = Scenes(train);
                var options = Options;
                var dir = ArtifactStore.Current.CacheEntry("text2img-multires", Key(vae, scenes, options, seed),
                    $"steps-{options.Steps}");
                var (model, run) = Train(vae, scenes, options with
                {
                    CheckpointDir = dir,
                    CheckpointEvery = 500,
                    Seed = seed,
                }, progress);
                return new TextToImageRecipe.Trained(model, run, run.ResumedFromStep >= run.Losses.Count
                    ? "loaded from the cache (trained earlier with the same settings and scenes)"
                    : $"trained {run.Losses.Count - run.ResumedFromStep:N0} steps " +
                      $"({Lab.Profile.ToString().ToLowerInvariant()} profile) in {run.Elapsed.TotalSeconds:F0} s");
            });
}
