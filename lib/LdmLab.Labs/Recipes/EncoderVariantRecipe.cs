namespace LdmLab.Labs;

/// <summary>Which text encoder the cross-attention model reads its captions with (issue 28, "Words to
/// places").</summary>
public enum EncoderVariant
{
    /// <summary>The shipped model: 2 causal layers × 32 wide (<see cref="TextToImageRecipe.TextConfig"/>).</summary>
    Causal,

    /// <summary>The same encoder without the causal mask: a noun also sees the side word after it.</summary>
    Bidirectional,

    /// <summary>A wider and deeper causal encoder, 4 layers × 64 wide; the U-Net's cross-attention follows.</summary>
    Deep,

    /// <summary>The causal model on <see cref="CaptionedFashion.SideFirst"/> captions: the side before the
    /// noun.</summary>
    SideFirst,
}

/// <summary>
/// The text-encoder comparison of issue 28: the cross-attention model of <see cref="TextToImageRecipe"/> — the same
/// scenes, options, step count and seed — with its encoder changed one way at a time. The shipped causal encoder
/// reads left to right, so in "a sneaker on the left" the noun's hidden state cannot know its side; a bidirectional
/// encoder, a deeper one, or captions that put the side first each give the noun's state a way to carry it. The
/// quick profile loads each shipped model (<c>ldmlab train fashion-text2img-bidirectional</c>, <c>-deep</c>,
/// <c>-side-first</c>); full and gpu train into the cache, checkpointed and resumable.
/// </summary>
public static class EncoderVariantRecipe
{
    /// <summary>The variants in the order tables list them (the shipped causal model first).</summary>
    public static IReadOnlyList<EncoderVariant> All { get; } =
        [EncoderVariant.Causal, EncoderVariant.Bidirectional, EncoderVariant.Deep, EncoderVariant.SideFirst];

    /// <summary>The shipped folder: fashion-text2img (causal), fashion-text2img-bidirectional, -deep,
    /// -side-first.</summary>
    public static string ShippedName(EncoderVariant variant) => variant switch
    {
        EncoderVariant.Causal => TextToImageRecipe.Shipped,
        EncoderVariant.Bidirectional => TextToImageRecipe.Shipped + "-bidirectional",
        EncoderVariant.Deep => TextToImageRecipe.Shipped + "-deep",
        EncoderVariant.SideFirst => TextToImageRecipe.Shipped + "-side-first",
        _ => throw new ArgumentOutOfRangeException(nameof(variant), variant, "not an encoder variant"),
    };

    /// <summary>The variant a shipped folder name stands for, or null.</summary>
    public static EncoderVariant? Named(string name) =>
        All.Where(v => ShippedName(v) == name).Cast<EncoderVariant?>().FirstOrDefault();

    /// <summary>A short label for tables: causal, bidirectional, deep, side-first.</summary>
    public static string Label(EncoderVariant variant) => variant switch
    {
        EncoderVariant.SideFirst => "side-first",
        _ => variant.ToString().ToLowerInvariant(),
    };

    /// <summary>The wider, deeper encoder: 4 layers × 64 wide, 4 heads of 16, MLP 256.</summary>
    public static ClipTextConfig DeepTextConfig { get; } = TextToImageRecipe.TextConfig with
    {
        HiddenSize = 64,
        IntermediateSize = 256,
        NumHiddenLayers = 4,
        ProjectionDim = 64,
    };

    /// <summary>The variant's text encoder.</summary>
    public static ClipTextConfig TextConfig(EncoderVariant variant) => variant switch
    {
        EncoderVariant.Bidirectional => TextToImageRecipe.TextConfig with { Bidirectional = true },
        EncoderVariant.Deep => DeepTextConfig,
        _ => TextToImageRecipe.TextConfig,
    };

    /// <summary>The variant's U-Net: the recipe's, its cross-attention as wide as the encoder.</summary>
    public static UNetConfig UNetConfig(EncoderVariant variant) =>
        TextToImageRecipe.UNetConfig with { CrossAttentionDim = TextConfig(variant).HiddenSize };

    /// <summary>A caption as the variant is trained and prompted with (side-first for <see
    /// cref="EncoderVariant.SideFirst"/>, unchanged otherwise).</summary>
    public static string Caption(EncoderVariant variant, string caption) =>
        variant == EncoderVariant.SideFirst ? CaptionedFashion.SideFirst(caption) : caption;

    /// <summary>Many captions as the variant reads them.</summary>
    public static IReadOnlyList<string> Captions(EncoderVariant variant, IReadOnlyList<string> captions) =>
        variant == EncoderVariant.SideFirst ? captions.Select(CaptionedFashion.SideFirst).ToList() : captions;

    /// <summary>The variant's model, untrained (seeded), on <see cref="Lab.Device"/>.</summary>
    public static TextConditionedUNet New(EncoderVariant variant, long seed = 0)
    {
        manual_seed(seed);
        return new TextConditionedUNet(UNetConfig(variant), TextConfig(variant)).OnLabDevice();
    }

    /// <summary>Everything that determines the trained model; the causal variant's is
    /// <see cref="TextToImageRecipe.Key"/> (the shipped model's, unchanged). <paramref name="captions"/> are the
    /// variant's own (<see cref="Captions"/>).</summary>
    public static string Key(EncoderVariant variant, Tensor latents, IReadOnlyList<string> captions,
        TrainerOptions options, long seed) =>
        variant == EncoderVariant.Causal
            ? TextToImageRecipe.Key(latents, captions, options, seed)
            : Key(variant, FashionLatentRecipe.LatentIdentity(latents), captions, options, seed);

    /// <summary>The key of a variant other than the causal one from the latents' identity
    /// (<see cref="FashionLatentRecipe.LatentOrigin"/>): what a replay that encodes only a few rows checks.</summary>
    public static string Key(EncoderVariant variant, string latentIdentity, IReadOnlyList<string> captions,
        TrainerOptions options, long seed)
    {
        if (variant == EncoderVariant.Causal)
            throw new ArgumentException("the causal model's key is TextToImageRecipe.Key", nameof(variant));
        return FashionLatentRecipe.Key("text2img-encoder", variant.ToString(), UNetConfig(variant),
            TextConfig(variant), options with { Steps = 0 }, seed, latentIdentity, ContentHash.Of(captions));
    }

    /// <summary>One training run (seeded by the options) on the variant's captions (<see cref="Captions"/> of
    /// <paramref name="captions"/>); returns the EMA weights in eval mode.</summary>
    public static (TextConditionedUNet model, DiffusionTrainingLog log) Train(EncoderVariant variant, Tensor latents,
        IReadOnlyList<string> captions, TrainerOptions options, Viz.Progress? progress = null)
    {
        if (latents.shape[0] != captions.Count)
            throw new ArgumentException($"{latents.shape[0]} latents but {captions.Count} captions", nameof(captions));
        var model = New(variant, options.Seed);
        var ids = model.Tokenize(Captions(variant, captions));                          // [N, 20]
        var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(NoiseSchedule.ScaledLinear()), options);
        var log = trainer.Train(latents, ids, progress);
        trainer.Ema.CopyTo(model);
        model.eval();
        return (model, log);
    }

    /// <summary>
    /// The variant's model: quick profile the shipped one (hash-checked; no scenes made or encoded); otherwise the
    /// cache, or a run of <see cref="TextToImageRecipe.Options"/> on <see cref="TextToImageRecipe.Scenes"/> of
    /// <paramref name="train"/> encoded by <paramref name="vae"/>, checkpointed every 500 steps and resumed when
    /// stopped. The causal variant is <see cref="TextToImageRecipe.Load(FashionMnist, AutoencoderKL,
    /// Viz.Progress?, long)"/>.
    /// </summary>
    public static TextToImageRecipe.Trained Load(EncoderVariant variant, FashionMnist train, AutoencoderKL vae,
        Viz.Progress? progress = null, long seed = 0)
    {
        if (variant == EncoderVariant.Causal) return TextToImageRecipe.Load(train, vae, progress, seed);
        return ArtifactStore.Current.Resolve(ShippedName(variant), seed,
            shipped => new TextToImageRecipe.Trained(shipped.LoadInto(New(variant)),
                DiffusionTrainingLog.Load(Path.Combine(shipped.Dir, TextToImageRecipe.LogFile)), shipped.Describe()),
            () =>
            {
                var scenes = TextToImageRecipe.Scenes(train);
                var (latents, _) = FashionLatentRecipe.ScaledLatents(vae, scenes.Images);
                var options = TextToImageRecipe.Options;
                var captions = Captions(variant, scenes.Captions);
                var dir = ArtifactStore.Current.CacheEntry("text2img-encoder",
                    Key(variant, latents, captions, options, seed), $"steps-{options.Steps}");
                var (model, run) = Train(variant, latents, scenes.Captions,
                    options with { CheckpointDir = dir, CheckpointEvery = 500, Seed = seed }, progress);
                return new TextToImageRecipe.Trained(model, run, run.ResumedFromStep >= run.Losses.Count
                    ? "loaded from the cache (trained earlier with the same settings and scenes)"
                    : $"trained {run.Losses.Count - run.ResumedFromStep:N0} steps " +
                      $"({Lab.Profile.ToString().ToLowerInvariant()} profile) in {run.Elapsed.TotalSeconds:F0} s");
            });
    }
}
