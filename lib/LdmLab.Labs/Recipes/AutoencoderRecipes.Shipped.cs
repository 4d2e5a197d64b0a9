namespace LdmLab.Labs;

/// <summary>
/// The autoencoders of notebook 02 as shipped checkpoints: each one trained once by its full-profile recipe
/// (<c>ldmlab train photo-autoencoders</c>, <c>ldmlab train fashion-vq</c>) and stored under
/// <c>data/checkpoints/ae-…/</c> with its weights (diffusers names), its step log and the metrics the full profile
/// measures. The quick profile loads them; full retrains into the cache.
/// </summary>
public static partial class AutoencoderRecipes
{
    public const string ShippedWeightsFile = "autoencoder.safetensors";
    public const string ShippedLogFile = "training-log.safetensors";

    /// <summary>The photographs of the rate–distortion experiments, resized to a short side of 256: the run's
    /// <see cref="RunSettings.PhotoDir"/> (LDMLAB_PHOTOS), else Debian's mate-backgrounds (what the shipped models were
    /// trained on; their recipe keys hash the photos, so other photos retrain rather than reuse them).</summary>
    public static string PhotoFolder => Lab.Settings.PhotoDir is { Length: > 0 } d ? d
        : ImageFolder.DebianPhotoDirectories[0];
    public const int PhotoShortSide = 256;
    /// <summary>
    /// Training crops and held-out crops per profile (quick's 64 held-out crops are the first 64 of full's 256).
    /// </summary>
    public static int PhotoTrainCrops => Lab.Pick(quick: 256, full: 4096);
    public static int PhotoHeldOutCrops => Lab.Pick(quick: 64, full: 256);

    /// <summary>
    /// The shipped folder of a spec, from what determines the model — kind, f, c, codebook, KL weight (when not the default 10⁻⁶), losses and data (RGB photos
    /// or Fashion-MNIST) — not its display name or step count: e.g. <c>ae-kl-f8-c4-photo</c>, <c>ae-vq-f4-c4-k256-fashion</c>.
    /// </summary>
    public static string ShippedName(AutoencoderSpec spec) =>
        $"ae-{(spec.Vq ? "vq" : "kl")}-f{spec.F}-c{spec.C}" + (spec.Vq ? $"-k{spec.Codes}" : "") +
        (spec.Vq || spec.Loss.KlWeight == new AutoencoderLossOptions().KlWeight ? "" : $"-klw{spec.Loss.KlWeight:0e0}") +
        (spec.Loss.PerceptualWeight > 0 ? "-perc" : "") + (spec.Loss.DiscriminatorWeight > 0 ? "-adv" : "") +
        (spec.Config.InChannels != 1 ? "-photo"
            : spec.Config.SampleSize == 28 ? "-fashion" : $"-fashion{spec.Config.SampleSize}");

    /// <summary>Everything that determines a trained autoencoder: spec (without its name), images' content, seed.</summary>
    public static string Key(AutoencoderSpec spec, Tensor images, long seed) =>
        FashionLatentRecipe.Key(spec.Vq, spec.Config, spec.Codes, spec.Loss, spec.Options, ContentHash.Of(images), seed);

    /// <summary>The spec's model, untrained, on the CPU.</summary>
    public static nn.Module NewModel(AutoencoderSpec spec) =>
        spec.Vq ? new VQModel(spec.Config, spec.Codes) : new AutoencoderKL(spec.Config);

    /// <summary>A full-profile metric the shipped checkpoint of <paramref name="spec"/> recorded, or null.</summary>
    public static double? ShippedMetric(AutoencoderSpec spec, string metric) =>
        ShippedCheckpoint.Find(ShippedName(spec)) is { } c && c.Metrics.TryGetValue(metric, out var v) ? v : null;

    static TrainedAutoencoder LoadShipped(AutoencoderSpec spec, ShippedCheckpoint shipped)
    {
        var model = shipped.LoadInto(NewModel(spec));
        model.to(Lab.Device);
        var logFile = Path.Combine(shipped.Dir, ShippedLogFile);
        var log = AutoencoderTrainer.LogFromTensor(Interop.SafeTensors.Load(logFile).TryGetValue("log", out var t)
            && t.dim() == 2 && t.shape[1] == AutoencoderTrainer.LogColumns
            ? t : throw new Data.DatasetException(logFile, $"expected a 'log' tensor [steps, {AutoencoderTrainer.LogColumns}]"));
        // the spec as the full recipe ran it: its step count, the discriminator starting at the same fraction of the run
        int start = (int)((long)spec.Loss.DiscriminatorStart * shipped.Steps / Math.Max(1, spec.Options.Steps));
        var asTrained = spec with
        {
            Options = spec.Options with { Steps = shipped.Steps },
            Loss = spec.Loss with { DiscriminatorStart = start },
        };
        return new TrainedAutoencoder(asTrained, model, log, null, shipped.Describe());
    }

    /// <summary>Writes a trained autoencoder's weights and step log into a shipped-checkpoint folder.</summary>
    public static void WriteShipped(TrainedAutoencoder ae, string dir)
    {
        Directory.CreateDirectory(dir);
        Interop.StateDicts.Save(ae.Model, Path.Combine(dir, ShippedWeightsFile));
        Interop.SafeTensors.Save(Path.Combine(dir, ShippedLogFile),
            new Dictionary<string, Tensor> { ["log"] = AutoencoderTrainer.LogToTensor(ae.Log) });
    }
}
