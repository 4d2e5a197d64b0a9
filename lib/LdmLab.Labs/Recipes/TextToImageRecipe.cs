using System.Text.Json.Nodes;

namespace LdmLab.Labs;

/// <summary>
/// The text-to-image lab's model (notebooks 05 and 06): captioned Fashion-MNIST scenes on a 28×56 canvas
/// (<see cref="CaptionedFashion"/>) → the shipped Fashion VAE's latents (4×7×14) → a U-Net with cross-attention at
/// both resolutions, conditioned on a small CLIP text encoder trained with it from scratch (the real CLIP tokenizer),
/// 10 % of captions dropped to "" for classifier-free guidance, SD's scaled-linear schedule, ε-prediction, EMA
/// weights. The quick profile loads the shipped model (<c>ldmlab train fashion-text2img</c>, full recipe); full and
/// gpu train into the cache, checkpointed and resumable.
/// </summary>
public static class TextToImageRecipe
{
    public const string Shipped = "fashion-text2img";
    public const string WeightsFile = "text2img.safetensors";
    public const string LogFile = "training-log.safetensors";
    const string TokenEmbedding = "text_encoder.text_model.embeddings.token_embedding.weight";

    /// <summary>A CLIP text tower in small: 2 layers, 32 wide, 4 heads, 20 positions (the longest caption is 16
    /// tokens).</summary>
    public static ClipTextConfig TextConfig { get; } = new()
    {
        HiddenSize = 32, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, MaxPositionEmbeddings = 20,
        ProjectionDim = 32,
    };

    /// <summary>The U-Net: 32 → 64 channels, cross-attention on the 7×14 and 4×7 grids (down, mid and up).</summary>
    public static UNetConfig UNetConfig { get; } = new()
    {
        InChannels = 4, OutChannels = 4, BlockOutChannels = [32, 64], LayersPerBlock = 1, NormNumGroups = 16,
        CrossAttentionDim = 32, AttentionHeadDim = [4],
        DownBlockTypes = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        UpBlockTypes = ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], SampleSize = 7,
    };

    public static TrainerOptions Options => new()
    {
        Steps = Lab.Pick(quick: 150, full: 4000, gpu: 8000), BatchSize = Lab.Pick(quick: 64, full: 64, gpu: 256),
        LearningRate = 1e-3, WarmupSteps = Lab.Pick(quick: 20, full: 200), EmaDecay = Lab.Pick(quick: 0.9, full: 0.999),
        ConditionDropout = 0.1,
    };

    /// <summary>Training scenes per profile (half of them two-item scenes).</summary>
    public static int SceneCount => Lab.Pick(quick: 4000, full: 60000);

    /// <summary>The training scenes of a profile: from the first images of the training split, seed 0.</summary>
    public static CaptionedScenes Scenes(FashionMnist train) =>
        CaptionedFashion.Make(train, SceneCount, pairs: 0.5, seed: 0);

    /// <summary>The class fine-tuning teaches (section 10.5.2, notebook 08): the base model never sees it.</summary>
    public const int HeldOutClass = 7;

    /// <summary>The shipped folder of the model trained without one class: fashion-text2img-without-sneaker.</summary>
    public static string ShippedWithout(int heldOut) =>
        $"{Shipped}-without-{CaptionedFashion.Nouns[heldOut].Replace(' ', '-')}";

    /// <summary>The training scenes of a profile with no item of class <paramref name="heldOut"/> in them (its word
    /// never appears in a caption; "a shoe" then means the other shoes): the same count, pairs and seed.</summary>
    public static CaptionedScenes ScenesWithout(FashionMnist train, int heldOut) => Scenes(train.Without(heldOut));

    /// <summary>The recipe's model, untrained (seeded), on <see cref="Lab.Device"/>.</summary>
    public static TextConditionedUNet New(long seed = 0) =>
        (TextConditionedUNet)New(ConditioningMethod.CrossAttention, seed);

    /// <summary>
    /// The U-Net of each conditioning method: the same channels and levels; cross-attention keeps its transformers,
    /// the others are ResNet-only (DownBlock2D/UpBlock2D, UNetMidBlock2D) so that nothing but their own path carries
    /// the condition. FiLM projects the pooled text state into the time embedding and scales/shifts every block;
    /// concatenation widens conv_in by the layout's 10 channels.
    /// </summary>
    public static UNetConfig UNetConfigFor(ConditioningMethod method)
    {
        var plain = UNetConfig with
        {
            DownBlockTypes = ["DownBlock2D", "DownBlock2D"],
            UpBlockTypes = ["UpBlock2D", "UpBlock2D"],
            MidBlockType = "UNetMidBlock2D",
        };
        return method switch
        {
            ConditioningMethod.CrossAttention => UNetConfig,
            ConditioningMethod.Film => plain with
            {
                ClassEmbedType = "projection",
                ProjectionClassEmbeddingsInputDim = TextConfig.HiddenSize,
                ResnetTimeScaleShift = "scale_shift",
            },
            ConditioningMethod.Concatenation => plain with
            {
                InChannels = UNetConfig.InChannels + LayoutConditionedUNet.LayoutChannels,
            },
            _ => plain,
        };
    }

    /// <summary>A conditioning method's model, untrained (seeded), on <see cref="Lab.Device"/>.</summary>
    public static ConditionalDenoiser New(ConditioningMethod method, long seed = 0)
    {
        manual_seed(seed);
        ConditionalDenoiser model = method switch
        {
            ConditioningMethod.CrossAttention => new TextConditionedUNet(UNetConfig, TextConfig),
            ConditioningMethod.Film => new FilmConditionedUNet(UNetConfigFor(method), TextConfig),
            _ => new LayoutConditionedUNet(UNetConfigFor(method), method),
        };
        return model.OnLabDevice();
    }

    /// <summary>A model's condition rows for captions: token ids [N, 20] for the text encoders, slot layouts
    /// [N, 2, 10] for the spatial methods.</summary>
    public static Tensor Conditions(ConditionalDenoiser model, IReadOnlyList<string> captions) => model switch
    {
        TextConditionedUNet text => text.Tokenize(captions),
        FilmConditionedUNet film => film.Tokenize(captions),
        LayoutConditionedUNet => CaptionedFashion.Layouts(captions),
        _ => throw new ArgumentException($"{model.GetType().Name} is not a text-to-image lab model", nameof(model)),
    };

    /// <summary>The shipped folder of a method's model: fashion-text2img, fashion-text2img-film, …</summary>
    public static string ShippedName(ConditioningMethod method) => method == ConditioningMethod.CrossAttention
        ? Shipped : $"{Shipped}-{method.ToString().ToLowerInvariant()}";

    /// <summary>SD 1.5's scheduler_config.json (scaled-linear β 0.00085…0.012, offset 1, PLMS without Runge–Kutta
    /// warm-up),
    /// for any sampler class (spacing: each class's default, as diffusers).</summary>
    public static JsonObject SchedulerConfig() => new()
    {
        ["num_train_timesteps"] = 1000, ["beta_schedule"] = "scaled_linear",
        ["beta_start"] = 0.00085, ["beta_end"] = 0.012,
        ["steps_offset"] = 1, ["set_alpha_to_one"] = false, ["clip_sample"] = false, ["skip_prk_steps"] = true,
        ["prediction_type"] = "epsilon",
    };

    /// <summary>Everything that determines the trained model: method, configs, options, seed, latents' origin and
    /// captions (the cross-attention model's key is what it was before the other methods existed).</summary>
    public static string Key(Tensor latents, IReadOnlyList<string> captions, TrainerOptions options, long seed,
        ConditioningMethod method = ConditioningMethod.CrossAttention)
    {
        var origin = FashionLatentRecipe.LatentIdentity(latents);
        return method == ConditioningMethod.CrossAttention
            ? FashionLatentRecipe.Key("text2img", UNetConfig, TextConfig, options with { Steps = 0 }, seed, origin,
                ContentHash.Of(captions))
            : FashionLatentRecipe.Key("text2img", method.ToString(), UNetConfigFor(method),
                method == ConditioningMethod.Film ? TextConfig : "no text encoder", options with { Steps = 0 }, seed,
                origin, ContentHash.Of(captions));
    }

    /// <summary>The model a notebook uses, its training log, and the sentence that says where it came from.</summary>
    public sealed record Trained(TextConditionedUNet Model, DiffusionTrainingLog Log, string Source);

    /// <summary>A conditioning method's model, its training log, and where it came from.</summary>
    public sealed record TrainedMethod(ConditioningMethod Method, ConditionalDenoiser Model, DiffusionTrainingLog Log,
        string Source);

    /// <summary>The cross-attention model (see <see cref="Load(ConditioningMethod, Tensor, IReadOnlyList{string},
    /// Viz.Progress?, long)"/>).</summary>
    public static Trained Load(Tensor latents, IReadOnlyList<string> captions, Viz.Progress? progress = null,
        long seed = 0)
    {
        var trained = Load(ConditioningMethod.CrossAttention, latents, captions, progress, seed);
        return new Trained((TextConditionedUNet)trained.Model, trained.Log, trained.Source);
    }

    /// <summary>
    /// Quick profile: the method's shipped model (hash-checked). Otherwise the cache, or a run of
    /// <see cref="Options"/>'s steps (the same budget for every method) on <paramref name="latents"/> (the scenes'
    /// scaled latents) and <paramref name="captions"/>, checkpointed every 500 steps and resumed when stopped.
    /// </summary>
    public static TrainedMethod Load(ConditioningMethod method, Tensor latents, IReadOnlyList<string> captions,
        Viz.Progress? progress = null, long seed = 0) =>
        LoadAs(ShippedName(method), method, latents, captions, progress, seed);

    /// <summary>
    /// The cross-attention model from the training split alone: quick profile the shipped model (no scenes are made
    /// or encoded); otherwise the scenes of <paramref name="train"/> encoded by <paramref name="vae"/>, then the cache
    /// or a training run, as <see cref="Load(Tensor, IReadOnlyList{string}, Viz.Progress?, long)"/>.
    /// </summary>
    public static Trained Load(FashionMnist train, AutoencoderKL vae, Viz.Progress? progress = null, long seed = 0)
    {
        var trained = ArtifactStore.Current.Resolve(Shipped, seed,
            shipped => new TrainedMethod(ConditioningMethod.CrossAttention, shipped.LoadInto(New()),
                DiffusionTrainingLog.Load(Path.Combine(shipped.Dir, LogFile)), shipped.Describe()),
            () =>
            {
                var scenes = Scenes(train);
                var (latents, _) = FashionLatentRecipe.ScaledLatents(vae, scenes.Images);
                return LoadAs(null, ConditioningMethod.CrossAttention, latents, scenes.Captions, progress, seed);
            });
        return new Trained((TextConditionedUNet)trained.Model, trained.Log, trained.Source);
    }

    /// <summary>
    /// The cross-attention model trained without class <paramref name="heldOut"/> (notebook 08's base): quick profile
    /// the shipped <see cref="ShippedWithout"/>; otherwise the cache or a run of the same recipe on
    /// <see cref="ScenesWithout"/> of <paramref name="train"/> encoded by <paramref name="vae"/>.
    /// </summary>
    public static Trained LoadWithout(int heldOut, FashionMnist train, AutoencoderKL vae,
        Viz.Progress? progress = null, long seed = 0)
    {
        var trained = ArtifactStore.Current.Resolve(ShippedWithout(heldOut), seed,
            shipped => new TrainedMethod(ConditioningMethod.CrossAttention, shipped.LoadInto(New()),
                DiffusionTrainingLog.Load(Path.Combine(shipped.Dir, LogFile)), shipped.Describe()),
            () =>
            {
                var scenes = ScenesWithout(train, heldOut);
                var (latents, _) = FashionLatentRecipe.ScaledLatents(vae, scenes.Images);
                return LoadAs(null, ConditioningMethod.CrossAttention, latents, scenes.Captions, progress, seed);
            });
        return new Trained((TextConditionedUNet)trained.Model, trained.Log, trained.Source);
    }

    static TrainedMethod LoadAs(string? shippedName, ConditioningMethod method, Tensor latents,
        IReadOnlyList<string> captions, Viz.Progress? progress, long seed)
    {
        return ArtifactStore.Current.Resolve(shippedName, seed,
            shipped => new TrainedMethod(method, shipped.LoadInto(New(method)),
                DiffusionTrainingLog.Load(Path.Combine(shipped.Dir, LogFile)), shipped.Describe()),
            () =>
            {
                var options = Options;
                var dir = ArtifactStore.Current.CacheEntry("text2img", Key(latents, captions, options, seed, method),
                    $"steps-{options.Steps}");
                var settings = options with { CheckpointDir = dir, CheckpointEvery = 500, Seed = seed };
                var (trained, run) = Train(method, latents, captions, settings, progress);
                return new TrainedMethod(method, trained, run, run.ResumedFromStep >= run.Losses.Count
                    ? "loaded from the cache (trained earlier with the same settings and scenes)"
                    : $"trained {run.Losses.Count - run.ResumedFromStep:N0} steps " +
                      $"({Lab.Profile.ToString().ToLowerInvariant()} profile) in {run.Elapsed.TotalSeconds:F0} s");
            });
    }

    /// <summary>One training run of the cross-attention model (seeded by the options); EMA weights, eval
    /// mode.</summary>
    public static (TextConditionedUNet model, DiffusionTrainingLog log) Train(Tensor latents,
        IReadOnlyList<string> captions, TrainerOptions options, Viz.Progress? progress = null)
    {
        var (model, log) = Train(ConditioningMethod.CrossAttention, latents, captions, options, progress);
        return ((TextConditionedUNet)model, log);
    }

    /// <summary>One training run of a method's model (seeded by the options); returns the EMA weights in eval
    /// mode.</summary>
    public static (ConditionalDenoiser model, DiffusionTrainingLog log) Train(ConditioningMethod method,
        Tensor latents, IReadOnlyList<string> captions, TrainerOptions options, Viz.Progress? progress = null)
    {
        if (latents.shape[0] != captions.Count)
            throw new ArgumentException($"{latents.shape[0]} latents but {captions.Count} captions", nameof(captions));
        var model = New(method, options.Seed);
        var conditions = Conditions(model, captions);                                 // [N, 20] or [N, 2, 10]
        var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(NoiseSchedule.ScaledLinear()), options);
        var log = trainer.Train(latents, conditions, progress);
        trainer.Ema.CopyTo(model);
        model.eval();
        return (model, log);
    }

    /// <summary>
    /// The weights as shipped: every tensor in float32 except a text encoder's 49,408-row token embedding in float16
    /// (3.2 MB instead of 6.3; loading converts it back, and the few rows the captions use lose nothing measurable).
    /// </summary>
    public static void SaveShipped(ConditionalDenoiser model, DiffusionTrainingLog log, string dir)
    {
        Directory.CreateDirectory(dir);
        var tensors = model.state_dict().ToDictionary(kv => kv.Key,
            kv => kv.Key == TokenEmbedding ? kv.Value.to_type(ScalarType.Float16) : kv.Value);
        Interop.SafeTensors.Save(Path.Combine(dir, WeightsFile), tensors);
        log.Save(Path.Combine(dir, LogFile));
    }

    /// <summary>
    /// The shipped model in <paramref name="dir"/> (a data/checkpoints/fashion-text2img folder, hash-checked) with the
    /// shipped Fashion VAE beside it, as a pipeline; what the lab's model draws on: 28×56 canvases (<see
    /// cref="CaptionedScenes"/>). Null when <paramref name="dir"/> holds no shipped text-to-image checkpoint.
    /// </summary>
    public static StableDiffusionPipeline? ShippedPipeline(string dir)
    {
        var checkpoint = ShippedCheckpoint.Read(dir);
        if (checkpoint is null || !checkpoint.Recipe.StartsWith(nameof(TextToImageRecipe), StringComparison.Ordinal)
                               || checkpoint.WeightsFile != WeightsFile)
            return null;
        var vaeDir = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar))!,
            FashionLatentRecipe.ShippedVae);
        var vaeCheckpoint = ShippedCheckpoint.Read(vaeDir)
                            ?? throw new DatasetException(vaeDir, "the shipped Fashion VAE the text-to-image model " +
                                                                  "was trained on is not beside it");
        vaeCheckpoint.Verify();
        var vae = AutoencoderKL.FromPretrained(vaeDir);
        vae.eval();
        return Pipeline(checkpoint.LoadInto(New()), vae);
    }

    /// <summary>A <see cref="StableDiffusionPipeline"/> over the trained model and the VAE (DDIM by default).</summary>
    public static StableDiffusionPipeline Pipeline(TextConditionedUNet model, AutoencoderKL vae,
        string scheduler = "DDIMScheduler") =>
        model.ToPipeline(vae, scheduler, SchedulerConfig());
}
