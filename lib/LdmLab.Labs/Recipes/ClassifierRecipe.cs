namespace LdmLab.Labs;

/// <summary>
/// The independent judge of generated Fashion-MNIST images: a <see cref="FashionClassifier"/> (width 32, two convs
/// per stage) trained on real training images only, with Adam and a cosine learning-rate decay. Its accuracy on
/// generated images is "intended-class accuracy", its pooled features are where Fréchet distances are measured.
/// The quick profile uses the shipped one (data/checkpoints/fashion-classifier, trained by the full recipe on all
/// 60,000 images); otherwise it is trained into the cache, keyed by its settings and the images' content.
/// </summary>
public static class ClassifierRecipe
{
    public const string Shipped = "fashion-classifier";
    public const string WeightsFile = "classifier.safetensors";
    public const int Width = 32, ConvsPerStage = 2, BatchSize = 128;
    public const double LearningRate = 3e-3;
    public const long Seed = 0;

    public static int Steps => Lab.Pick(quick: 300, full: 3000);

    /// <summary>The recipe's classifier, untrained, on <see cref="Lab.Device"/>.</summary>
    public static FashionClassifier New() => new FashionClassifier(Width, convsPerStage: ConvsPerStage).OnLabDevice();

    /// <summary>Everything that determines the trained classifier: settings, steps, seed and the data's content.</summary>
    public static string Key(FashionMnist train, int steps) =>
        FashionLatentRecipe.Key("classifier", Width, ConvsPerStage, BatchSize, LearningRate, steps, Seed,
            ContentHash.Of(train.Images), ContentHash.Of(train.Labels));

    /// <summary>The classifier a notebook uses and the sentence that says where it came from.</summary>
    public sealed record Judge(FashionClassifier Model, string Source);

    /// <summary>
    /// Quick profile: the shipped classifier (hash-checked). Otherwise the cache, or a run of <see cref="Steps"/>
    /// steps on <paramref name="train"/> that is then cached.
    /// </summary>
    public static Judge Load(FashionMnist train, Viz.Progress? progress = null)
    {
        return ArtifactStore.Current.Resolve(Shipped, seed: 0, shipped => new Judge(shipped.LoadInto(New()),
            shipped.Describe()), () =>
        {
            var path = Path.Combine(ArtifactStore.Current.CacheEntry("fashion-classifier", Key(train, Steps)),
                WeightsFile);
            if (File.Exists(path))
            {
                var cached = New();
                Interop.StateDicts.Load(cached, path);
                cached.eval();
                return new Judge(cached, "loaded from the cache (trained earlier with the same settings and images)");
            }
            var (trained, log) = Train(train, Steps, progress);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            Interop.StateDicts.Save(trained, path);
            return new Judge(trained, $"trained {Steps:N0} steps ({Lab.Profile.ToString().ToLowerInvariant()} " +
                                      $"profile) on {train.Images.shape[0]:N0} images in {log.Elapsed.TotalSeconds:F0} s");
        });
    }

    /// <summary>A training run of the recipe (seeded), in eval mode at the end; <paramref name="stopAfter"/> stops it early.</summary>
    public static (FashionClassifier model, TrainingLog log) Train(FashionMnist train, int steps, Viz.Progress? progress = null,
        int? stopAfter = null)
    {
        manual_seed(Seed);
        var model = New();
        var log = ClassifierTraining.Train(model, train, steps, BatchSize, LearningRate, new Random((int)Seed), progress,
            cosineDecay: true, stopAfter: stopAfter);
        model.eval();
        return (model, log);
    }

    /// <summary>Pooled features of <paramref name="images"/> in batches, without gradients, on the CPU: [N, 4·width].</summary>
    public static Tensor Features(FashionClassifier model, Tensor images, int batchSize = 500)
    {
        model.eval();
        return Nn.Batched.Map(model, images, batchSize, model.Features);
    }

    /// <summary>The judge's features of <paramref name="images"/> as the rows of a matrix [N, 4·width], the form
    /// <see cref="FrechetDistance.Compute"/> takes.</summary>
    public static double[,] FeatureMatrix(FashionClassifier model, Tensor images) =>
        FrechetDistance.ToArray(Features(model, images));
}
