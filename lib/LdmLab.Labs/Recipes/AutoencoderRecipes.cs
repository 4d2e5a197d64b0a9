namespace LdmLab.Labs;

/// <summary>
/// One autoencoder of the chapter's experiments: KL or VQ, its architecture (f = 2^(blocks − 1), c latent channels),
/// codebook size for VQ, loss and training settings. <see cref="Name"/> labels it in tables.
/// </summary>
public sealed record AutoencoderSpec(string Name, bool Vq, AutoencoderKLConfig Config, int Codes, AutoencoderLossOptions Loss,
    AutoencoderTrainerOptions Options)
{
    public int F => Config.DownsamplingFactor;
    public int C => Config.LatentChannels;
    /// <summary>Image values per latent value: 3f²/c for RGB.</summary>
    public double CompressionRatio => (double)Config.InChannels * F * F / C;
    /// <summary>VQ: bits per pixel position, log₂K / f² (a KL latent is continuous: NaN).</summary>
    public double BitsPerPixel => Vq ? Math.Log2(Codes) / (F * F) : double.NaN;
    public string Losses => "L1" + (Loss.PerceptualWeight > 0 ? " + perceptual" : "") + (Loss.DiscriminatorWeight > 0 ? " + adversarial" : "");
}

/// <summary>A trained (or cached) autoencoder with its training log.</summary>
public sealed class TrainedAutoencoder(AutoencoderSpec spec, nn.Module model, IReadOnlyList<AutoencoderStep> log, TimeSpan? trainingTime,
    string? source = null)
{
    public AutoencoderSpec Spec { get; } = spec;
    public nn.Module Model { get; } = model;
    public IReadOnlyList<AutoencoderStep> Log { get; } = log;
    /// <summary>Null when loaded complete from the cache or shipped.</summary>
    public TimeSpan? TrainingTime { get; } = trainingTime;
    /// <summary>Where the model came from, as a notebook prints it ("trained …", "loaded from the cache", "loaded checkpoint …").</summary>
    public string Source { get; } = source ?? (trainingTime is TimeSpan t
        ? $"trained {spec.Options.Steps:N0} steps in {t.TotalSeconds:F0} s" : "loaded from the cache (trained earlier with the same settings)");

    /// <summary>x → z → x̂ without sampling: the posterior mean (KL) or the nearest codes (VQ); in batches, no gradients.</summary>
    public Tensor Reconstruct(Tensor images, int batchSize = 64) => Batched(images, batchSize, x => Decoded(Latent(x)));

    /// <summary>The latents the diffusion model would see: posterior means (KL) or quantised vectors (VQ).</summary>
    public Tensor Encode(Tensor images, int batchSize = 64) => Batched(images, batchSize, Latent);

    Tensor Latent(Tensor x) => Model switch
    {
        AutoencoderKL kl => kl.Encode(x).Mean,
        VQModel vq => vq.Quantize(vq.Encode(x)).Quantized,
        _ => throw new InvalidOperationException(),
    };

    Tensor Decoded(Tensor z) => Model switch
    {
        AutoencoderKL kl => kl.Decode(z),
        VQModel vq => vq.Decode(z),
        _ => throw new InvalidOperationException(),
    };

    Tensor Batched(Tensor input, int batchSize, Func<Tensor, Tensor> f)
    {
        Model.eval();
        return Nn.Batched.Map(Model, input, batchSize, f);
    }
}

/// <summary>How well an autoencoder reconstructs held-out images (means over images).</summary>
public sealed record ReconstructionReport(string Name, int Images, double Psnr, double Ssim, double Perceptual, double FrechetResNet18,
    double? FrechetClassifier = null, double? AccuracyOriginals = null, double? AccuracyReconstructions = null,
    double? CodebookUsage = null, double? Perplexity = null);

/// <summary>
/// The autoencoders of notebook 02: KL and VQ on 64×64 crops of real photographs at f = 4, 8, 16 and several
/// latent channel counts, the loss ablation, and Fashion-MNIST. Trained models are cached like
/// <see cref="FashionLatentRecipe"/>'s, checkpointed while they train (a stopped run resumes).
/// </summary>
public static partial class AutoencoderRecipes
{
    public const int PhotoSize = 64;

    /// <summary>
    /// RGB autoencoder for 64×64 crops: blocks 8-16-32 then 32s, one more block per factor of 2 in f. GroupNorm has
    /// one group: with 8 groups of 8 channels (one channel a group, an instance norm) the norm before conv_out erases
    /// each crop's mean colour, and the models scored below a flat crop of that colour (15.8 dB against 21.2 dB with
    /// one group, KL-f8-c4 at 1,000 steps).
    /// </summary>
    public static AutoencoderKLConfig PhotoConfig(int f, int latentChannels)
    {
        if (f < 2 || (f & (f - 1)) != 0) throw new ArgumentOutOfRangeException(nameof(f), f, "f must be a power of two ≥ 2");
        int blocks = (int)Math.Log2(f) + 1;
        return new AutoencoderKLConfig
        {
            InChannels = 3, OutChannels = 3, LatentChannels = latentChannels, LayersPerBlock = 1, NormNumGroups = 1,
            SampleSize = PhotoSize,
            BlockOutChannels = Enumerable.Range(0, blocks).Select(i => Math.Min(8 << i, 32)).ToArray(), ScalingFactor = 1.0,
        };
    }

    /// <summary>
    /// The photo autoencoders' training: 2,000 steps of 8 crops in full. KL models start with a narrow posterior
    /// (log σ² = −8 rather than 0): Adam moves the log-variance by about the learning rate a step, so from σ = 1 the
    /// first thousand steps decode mostly noise (+1.4 dB at 1,000 steps measured).
    /// </summary>
    public static AutoencoderTrainerOptions PhotoOptions => new()
    {
        Steps = Lab.Pick(quick: 8, full: 2000), InitialLogVariance = -8, BatchSize = 8, LearningRate = 2e-3,
        DiscriminatorLearningRate = 2e-4,
        WarmupSteps = Lab.Pick(quick: 2, full: 100), DeadCodePatience = Lab.Pick(quick: 4, full: 100),
    };

    /// <summary>
    /// A photo autoencoder. The loss ablation adds the ResNet18 perceptual distance (weight 1) and then a PatchGAN
    /// (hinge, adaptive weight, switched on halfway through training).
    /// </summary>
    public static AutoencoderSpec Photo(bool vq, int f, int latentChannels = 4, bool perceptual = false, bool adversarial = false, int codes = 512)
    {
        var options = PhotoOptions;
        var loss = new AutoencoderLossOptions
        {
            PerceptualWeight = perceptual ? 1.0 : 0, DiscriminatorWeight = adversarial ? 0.5 : 0, DiscriminatorStart = options.Steps / 2,
            SpectralNorm = adversarial, PerceptualResolution = PhotoSize,
        };
        string name = $"{(vq ? "VQ" : "KL")}-f{f}-c{latentChannels}" + (perceptual ? " +perc" : "") + (adversarial ? " +adv" : "");
        return new AutoencoderSpec(name, vq, PhotoConfig(f, latentChannels), vq ? codes : 0, loss, options);
    }

    /// <summary>The rate–distortion sweep: KL at f = 4, 8, 16 (c = 4) and at f = 8 with c = 1, 16; VQ at f = 4, 8, 16.</summary>
    public static IReadOnlyList<AutoencoderSpec> RateDistortion() =>
    [
        Photo(false, 4), Photo(false, 8), Photo(false, 16), Photo(false, 8, latentChannels: 1), Photo(false, 8, latentChannels: 16),
        Photo(true, 4), Photo(true, 8), Photo(true, 16),
    ];

    /// <summary>The loss ablation at KL f = 8, c = 4: pixel only, + perceptual, + perceptual + adversarial.</summary>
    public static IReadOnlyList<AutoencoderSpec> LossAblation() =>
        [Photo(false, 8), Photo(false, 8, perceptual: true), Photo(false, 8, perceptual: true, adversarial: true)];

    /// <summary>
    /// The KL-weight sweep of section 10.2.3 on Fashion-MNIST: the recipe VAE (f = 4, c = 4) at KL weights 10⁻⁶ (the
    /// recipe's), 10⁻⁴, 10⁻² and 1, each trained for the same budget (quick 300 steps, full 3,000).
    /// </summary>
    public static IReadOnlyList<AutoencoderSpec> KlSweep() => new[] { 1e-6, 1e-4, 1e-2, 1.0 }.Select(weight =>
    {
        var spec = Fashion(vq: false);
        return spec with
        {
            Name = $"KL weight {weight:0e0}",
            Loss = spec.Loss with { KlWeight = weight },
            Options = spec.Options with { Steps = Lab.Pick(quick: 300, full: 3000) },
        };
    }).ToList();

    /// <summary>
    /// The baseline an autoencoder must beat: each crop [N, C, H, W] replaced by a flat crop of its own mean colour
    /// (C numbers per crop); the mean PSNR of those against the crops, in dB. A model below it has not learned
    /// colour yet.
    /// </summary>
    public static double FlatColourPsnr(Tensor crops)
    {
        using var _ = no_grad();
        var flat = crops.mean([2, 3], keepdim: true).expand_as(crops);                        // [N, C, H, W]
        return ImageQuality.Psnr(flat, crops).mean().item<float>();
    }

    /// <summary>
    /// Random 64×64 training crops and held-out crops from every photo: training crops lie wholly left of each photo's
    /// held-out strip (its rightmost quarter, <see cref="Data.ImageFolder.HeldOutWidth"/>), held-out crops inside it;
    /// deterministic per seed; the first k held-out crops do not depend on how many are drawn. (Holding out whole
    /// photos instead left 9 training photos: the models memorised their colours and scored below a flat crop of the
    /// mean colour on the other three.)
    /// </summary>
    public static (Tensor train, Tensor heldOut) PhotoCrops(Data.ImageFolder folder, int trainCount, int heldOutCount, long seed = 0)
    {
        // the held-out crops draw from their own stream, so a smaller set (quick) is the start of a larger one (full)
        return (folder.RandomCrops(trainCount, PhotoSize, new Random((int)seed), region: Data.CropRegion.Training),
            folder.RandomCrops(heldOutCount, PhotoSize, new Random((int)seed + 1), region: Data.CropRegion.HeldOut));
    }

    /// <summary>Fashion-MNIST: the recipe VAE's architecture (8-16-32, f = 4, 4×7×7), as KL or VQ (256 codes).</summary>
    public static AutoencoderSpec Fashion(bool vq)
    {
        var o = FashionLatentRecipe.VaeOptions;
        return new AutoencoderSpec(vq ? "VQ-f4-c4 (Fashion)" : "KL-f4-c4 (Fashion)", vq, FashionLatentRecipe.VaeConfig, vq ? 256 : 0,
            o.ToLossOptions(), o.ToTrainerOptions() with { DeadCodePatience = Lab.Pick(quick: 10, full: 100) });
    }

    /// <summary>
    /// Quick profile: the shipped checkpoint of this spec's architecture and losses when the checkout has one (trained by
    /// the full recipe, see <see cref="ShippedName"/>). Otherwise loads the model from its cache folder (keyed by
    /// everything that determines it) or trains it there with checkpoints every quarter of the run; a run that was
    /// stopped resumes from its last checkpoint.
    /// </summary>
    public static TrainedAutoencoder LoadOrTrain(AutoencoderSpec spec, Tensor images, Viz.Progress? progress = null,
        ResNet18Features? perceptual = null, long seed = 0)
    {
        if (images.dim() != 4 || images.shape[1] != spec.Config.InChannels || images.shape[2] % spec.F != 0 || images.shape[3] % spec.F != 0)
            throw new ArgumentException($"{spec.Name}: expected images [N, {spec.Config.InChannels}, H, W] with H and W " +
                $"multiples of f = {spec.F}, got [{string.Join(", ", images.shape)}]", nameof(images));
        return ArtifactStore.Current.Resolve(ShippedName(spec), seed, shipped => LoadShipped(spec, shipped), () =>
        {
            var dir = ArtifactStore.Current.CacheEntry("ae", Key(spec, images, seed));
            Directory.CreateDirectory(dir);
            manual_seed(seed);
            var model = NewModel(spec);
            model.to(Lab.Device);
            var options = spec.Options with
            {
                CheckpointDir = dir,
                CheckpointEvery = Math.Max(1, spec.Options.Steps / 4),
                Seed = seed,
            };
            var trainer = new AutoencoderTrainer(model, spec.Loss, options, perceptual);
            var sw = System.Diagnostics.Stopwatch.StartNew();
            bool complete = Checkpoint.StepOf(Path.Combine(dir, AutoencoderTrainer.CheckpointFile)) >= spec.Options.Steps;
            var log = trainer.Train(images, progress);
            model.eval();
            return new TrainedAutoencoder(spec, model, log, complete ? null : sw.Elapsed);
        });
    }

    sealed record Reference(ResNet18Features Features, int BatchSize, Tensor Pooled, List<Tensor[]> Taps);
    static readonly System.Runtime.CompilerServices.ConditionalWeakTable<Tensor, Reference> References = new();

    static Reference ReferenceFor(Tensor images, ResNet18Features features, int batchSize)
    {
        if (References.TryGetValue(images, out var r) && ReferenceEquals(r.Features, features) && r.BatchSize == batchSize) return r;
        using var _ = no_grad();
        var pooled = new List<Tensor>();
        var taps = new List<Tensor[]>();
        for (long i = 0; i < images.shape[0]; i += batchSize)
        {
            using var scope = NewDisposeScope();
            var (p, layers) = features.ForwardWithLayers(images.narrow(0, i, Math.Min(batchSize, images.shape[0] - i)));
            pooled.Add(p.MoveToOuterDisposeScope());
            taps.Add(layers.Select(l => l.clone().MoveToOuterDisposeScope()).ToArray());
        }
        r = new Reference(features, batchSize, cat(pooled), taps);
        References.AddOrUpdate(images, r);
        return r;
    }

    /// <summary>
    /// PSNR, SSIM, perceptual distance and Fréchet distance on ResNet18 features between <paramref name="images"/>
    /// and their reconstructions; with a classifier also its accuracy on both and the Fréchet distance on its
    /// features (semantic retention); for VQ the fraction of codes used and the perplexity over these images.
    /// </summary>
    public static ReconstructionReport Evaluate(TrainedAutoencoder ae, Tensor images, ResNet18Features features,
        FashionClassifier? classifier = null, Tensor? labels = null, int batchSize = 64)
    {
        if (ae.Model is VQModel vqm) vqm.Quantizer.ResetUsage();
        var recon = ae.Reconstruct(images, batchSize).clamp(-1, 1);
        double? usage = null, perplexity = null;
        if (ae.Model is VQModel vq) (usage, perplexity) = vq.Quantizer.UsageStatistics();
        using var _ = no_grad();
        double psnr = ImageQuality.Psnr(recon, images).mean().item<float>();
        double ssim = ImageQuality.Ssim(recon, images).mean().item<float>();
        // ResNet passes: the originals' taps and pooled features once per image set (kept while the images live),
        // the reconstructions' once; each pass gives both the perceptual taps and the pooled features for the FD
        var reference = ReferenceFor(images, features, batchSize);
        double perc = 0;
        var pooled = new List<Tensor>();
        for (int b = 0; b < reference.Taps.Count; b++)
        {
            using var scope = NewDisposeScope();
            long i = (long)b * batchSize, n = Math.Min(batchSize, images.shape[0] - i);
            var (pb, lb) = features.ForwardWithLayers(recon.narrow(0, i, n));
            perc += ResNet18Features.LayerDistance(reference.Taps[b], lb).sum().item<float>();
            pooled.Add(pb.MoveToOuterDisposeScope());
        }
        perc /= images.shape[0];
        double fd = FrechetDistance.Compute(reference.Pooled, cat(pooled));
        if (classifier is null || labels is null)
            return new ReconstructionReport(ae.Spec.Name, (int)images.shape[0], psnr, ssim, perc, fd, CodebookUsage: usage, Perplexity: perplexity);
        classifier.eval();
        Tensor Features(Tensor x) => cat(Enumerable.Range(0, (int)((x.shape[0] + 499) / 500)).Select(i =>
        {
            using var scope = NewDisposeScope();
            return classifier.Features(x.narrow(0, i * 500L, Math.Min(500, x.shape[0] - i * 500L))).MoveToOuterDisposeScope();
        }).ToList());
        double fdc = FrechetDistance.Compute(Features(images), Features(recon));
        return new ReconstructionReport(ae.Spec.Name, (int)images.shape[0], psnr, ssim, perc, fd, fdc,
            ClassifierTraining.Accuracy(classifier, images, labels), ClassifierTraining.Accuracy(classifier, recon, labels), usage, perplexity);
    }
}
