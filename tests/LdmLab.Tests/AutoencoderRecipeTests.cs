using LdmLab.Autoencoders;
using LdmLab.Data;
using LdmLab.Metrics;
using LdmLab.Runtime;
using LdmLab.Training;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class AutoencoderRecipeTests
{
    static AutoencoderSpec TinySpec(bool vq, int steps) => new(vq ? "tiny VQ" : "tiny KL", vq,
        new AutoencoderKLConfig { InChannels = 3, OutChannels = 3, LatentChannels = 2, BlockOutChannels = [8, 8], NormNumGroups = 4, SampleSize = 16 },
        vq ? 8 : 0, new AutoencoderLossOptions(), new AutoencoderTrainerOptions { Steps = steps, BatchSize = 4, WarmupSteps = 1, DeadCodePatience = 2 });

    static Tensor Images(int n = 24)
    {
        TorchRuntime.Setup();
        using var g = new Generator(5);
        return (rand([n, 3, 16, 16], generator: g) * 2 - 1);
    }

    static T WithCache<T>(string dir, Func<T> f) => TestPaths.WithSettings(s => s with { CacheDir = dir }, f);

    [Fact]
    public void Photo_configs_have_the_asked_factor_and_channels()
    {
        foreach (var f in new[] { 4, 8, 16 })
        {
            var c = AutoencoderRecipes.PhotoConfig(f, 16);
            Assert.Equal(f, c.DownsamplingFactor);
            Assert.Equal(16, c.LatentChannels);
            var spec = AutoencoderRecipes.Photo(vq: true, f, codes: 512);
            Assert.Equal(3.0 * f * f / 4, spec.CompressionRatio);
            Assert.Equal(9.0 / (f * f), spec.BitsPerPixel, 12);
        }
        Assert.True(double.IsNaN(AutoencoderRecipes.Photo(false, 8).BitsPerPixel));
        Assert.Equal("L1 + perceptual + adversarial", AutoencoderRecipes.Photo(false, 8, perceptual: true, adversarial: true).Losses);
        Assert.Throws<ArgumentOutOfRangeException>(() => AutoencoderRecipes.PhotoConfig(6, 4));
        Assert.Equal(8, AutoencoderRecipes.RateDistortion().Count);
        Assert.Equal(AutoencoderRecipes.RateDistortion().Select(s => s.Name).Distinct().Count(), AutoencoderRecipes.RateDistortion().Count);
    }

    [Fact]
    public void Held_out_crops_come_only_from_each_photos_held_out_strip()
    {
        TorchRuntime.Setup();
        // three photos 300×70 whose red channel is the column (x) and whose blue channel tells the photo apart
        var dir = TestPaths.TempDir("photo-split");
        for (int i = 0; i < 3; i++)
        {
            using var img = new Image<Rgb24>(300, 70);
            for (int x = 0; x < 300; x++)
                for (int y = 0; y < 70; y++) img[x, y] = new Rgb24((byte)(x * 255 / 299), 100, (byte)(100 * i));
            img.SaveAsPng(Path.Combine(dir, $"p{i}.png"));
        }
        var folder = new ImageFolder(dir, shortSide: 70);
        int strip = ImageFolder.HeldOutWidth(300, 64);
        Assert.Equal(75, strip);                                    // a quarter of 300, wider than one crop
        var (train, held) = AutoencoderRecipes.PhotoCrops(folder, 40, 20, seed: 3);
        Assert.Equal([40L, 3, 64, 64], train.shape);
        Assert.Equal([20L, 3, 64, 64], held.shape);
        // the column of a crop's pixel from its red value in [-1, 1] (byte rounding: ±1.2 columns)
        double Column(Tensor value) => (value.item<float>() + 1) / 2 * 299;
        for (int i = 0; i < 40; i++)
            Assert.True(Column(train[i, 0, 0, 63]) < 300 - strip + 1.5, $"training crop {i} reaches into the strip");
        for (int i = 0; i < 20; i++)
            Assert.True(Column(held[i, 0, 0, 0]) > 300 - strip - 1.5, $"held-out crop {i} starts left of the strip");
        // every photo gives both kinds
        int Photo(Tensor crop) => (int)Math.Round((crop[2, 0, 0].item<float>() + 1) * 127.5 / 100);
        Assert.Equal(3, Enumerable.Range(0, 40).Select(i => Photo(train[i])).Distinct().Count());
        Assert.Equal(3, Enumerable.Range(0, 20).Select(i => Photo(held[i])).Distinct().Count());
        // deterministic per seed; fewer held-out crops are the first of more
        Assert.Equal(0, (AutoencoderRecipes.PhotoCrops(folder, 40, 20, seed: 3).train - train).abs().max().item<float>());
        var fewer = AutoencoderRecipes.PhotoCrops(folder, 10, 8, seed: 3).heldOut;
        Assert.Equal(0, (fewer - held.narrow(0, 0, 8)).abs().max().item<float>());
        Assert.Throws<ArgumentOutOfRangeException>(() => folder.RandomCrops(1, 16, new Random(0), [9]));
        // too narrow for a training crop left of the strip: a clear error naming the photo
        var narrow = new ImageFolder(dir, shortSide: 64);           // 274 wide: 274 − 68 − 64 ≥ 0 still fits
        Assert.Equal([1L, 3, 64, 64], narrow.RandomCrops(1, 64, new Random(0), region: CropRegion.Training).shape);
        var tiny = TestPaths.TempDir("photo-narrow");
        using (var img = new Image<Rgb24>(100, 70)) img.SaveAsPng(Path.Combine(tiny, "n.png"));
        var error = Assert.Throws<DatasetException>(() =>
            new ImageFolder(tiny, shortSide: 70).RandomCrops(1, 64, new Random(0), region: CropRegion.Training));
        Assert.Contains("n.png", error.Message);
    }

    [Fact]
    public void A_narrow_posterior_start_sets_only_the_log_variance_half()
    {
        TorchRuntime.Setup();
        var vae = new AutoencoderKL(AutoencoderRecipes.PhotoConfig(4, 4));
        var options = AutoencoderRecipes.PhotoOptions;
        Assert.Equal(-8, options.InitialLogVariance);
        var trainer = new AutoencoderTrainer(vae, new AutoencoderLossOptions(), options with { Steps = 1 });
        Assert.Equal(0, trainer.CompletedSteps);
        var bias = vae.named_parameters().First(kv => kv.name == "quant_conv.bias").parameter;
        Assert.All(bias.narrow(0, 4, 4).data<float>().ToArray(), b => Assert.Equal(-8f, b));
        Assert.True(bias.narrow(0, 0, 4).abs().max().item<float>() < 1f);
        using var _ = no_grad();
        var q = vae.Encode(zeros(2, 3, 64, 64));
        Assert.True(q.Std.mean().item<float>() < 0.1f, $"posterior σ {q.Std.mean().item<float>()} after a −8 start");
        // a null start leaves diffusers' initialisation and the recipe keys of other autoencoders unchanged
        var json = System.Text.Json.JsonSerializer.Serialize(new AutoencoderTrainerOptions());
        Assert.DoesNotContain("InitialLogVariance", json);
    }

    [Fact]
    public void A_trained_model_is_cached_and_an_interrupted_run_resumes_to_the_same_weights()
    {
        var x = Images();
        var spec = TinySpec(vq: false, steps: 8);
        var reference = WithCache(TestPaths.TempDir("ae-ref"), () => AutoencoderRecipes.LoadOrTrain(spec, x));
        Assert.NotNull(reference.TrainingTime);
        Assert.Equal(8, reference.Log.Count);

        var cache = TestPaths.TempDir("ae-cache");
        // interrupted after step 5 (checkpoints every 2 steps): the run stops with an exception, like a killed kernel
        var stop = new LdmLab.Viz.Progress("tiny", 8, p => { if (p.Step == 5) throw new OperationCanceledException("stopped"); }, TimeSpan.Zero);
        Assert.Throws<OperationCanceledException>(() => WithCache(cache, () => AutoencoderRecipes.LoadOrTrain(spec, x, stop)));
        var resumed = WithCache(cache, () => AutoencoderRecipes.LoadOrTrain(spec, x));
        Assert.NotNull(resumed.TrainingTime);
        Assert.Equal(reference.Log.Select(s => s.Reconstruction), resumed.Log.Select(s => s.Reconstruction));
        foreach (var ((name, a), (_, b)) in reference.Model.named_parameters().Zip(resumed.Model.named_parameters()))
            Assert.True((a - b).abs().max().item<float>() == 0, name);

        var cached = WithCache(cache, () => AutoencoderRecipes.LoadOrTrain(spec, x));
        Assert.Null(cached.TrainingTime);
        Assert.Equal(8, cached.Log.Count);
        // wrong input is named, not trained on
        var e = Assert.Throws<ArgumentException>(() => WithCache(cache, () => AutoencoderRecipes.LoadOrTrain(spec, x.narrow(1, 0, 1))));
        Assert.Contains("[N, 3, H, W]", e.Message);
        // a different setting never reuses that cache
        var other = WithCache(cache, () => AutoencoderRecipes.LoadOrTrain(spec with { Options = spec.Options with { LearningRate = 1e-4 } }, x));
        Assert.NotNull(other.TrainingTime);
    }

    [Fact]
    public void Evaluation_reports_the_metrics_of_the_reconstructions_and_vq_code_usage()
    {
        var x = Images(16);
        var ae = WithCache(TestPaths.TempDir("ae-eval"), () => AutoencoderRecipes.LoadOrTrain(TinySpec(vq: true, steps: 4), x));
        var resnet = new ResNet18Features(32);
        var report = AutoencoderRecipes.Evaluate(ae, x, resnet, batchSize: 5);
        var recon = ae.Reconstruct(x).clamp(-1, 1);
        Assert.Equal(ImageQuality.Psnr(recon, x).mean().item<float>(), report.Psnr, 4);
        Assert.Equal(ImageQuality.Ssim(recon, x).mean().item<float>(), report.Ssim, 4);
        using (no_grad()) Assert.Equal(resnet.PerceptualDistance(x, recon).mean().item<float>(), report.Perceptual, 3);
        // usage over these images: distinct nearest codes / K
        var vq = (VQModel)ae.Model;
        long distinct;
        using (no_grad()) distinct = vq.Quantize(vq.Encode(x)).Indices.unique().Item1.numel();
        Assert.Equal(distinct / 8.0, report.CodebookUsage!.Value, 12);
        Assert.True(report.Perplexity >= 1 && report.Perplexity <= distinct + 1e-9);
        // the Fréchet distance of the pooled ResNet features, computed here from the features themselves
        double fd = FrechetDistance.Compute(resnet.Extract(x), resnet.Extract(recon));
        Assert.True(Math.Abs(fd - report.FrechetResNet18) <= 1e-5 * fd, $"FD {report.FrechetResNet18} vs {fd} from the features");
        Assert.True(report.FrechetResNet18 > 0, "a 4-step autoencoder cannot reconstruct its inputs exactly");
        Assert.Null(report.AccuracyReconstructions);
        // a KL model reconstructs from the posterior mean: deterministic
        var kl = WithCache(TestPaths.TempDir("ae-eval-kl"), () => AutoencoderRecipes.LoadOrTrain(TinySpec(vq: false, steps: 2), x));
        Assert.Equal(0, (kl.Reconstruct(x) - kl.Reconstruct(x)).abs().max().item<float>());
        Assert.Equal([16L, 2, 8, 8], kl.Encode(x).shape);
    }

}

/// <summary>Caches keyed by content: the same shapes with other data, or other upstream latents, never hit.</summary>
public class CacheKeyTests
{
    static T WithCache<T>(string dir, Func<T> f) => TestPaths.WithSettings(s => s with { CacheDir = dir }, f);

    static Tensor Fashion(int n, int offset)
    {
        TorchRuntime.Setup();
        return FashionMnist.Load(Split.Test, limit: offset + n).Images.narrow(0, offset, n);
    }

    [Fact]
    public void Fashion_vae_is_keyed_by_its_images_checkpointed_and_saves_its_scaling_factor()
    {
        var cache = TestPaths.TempDir("cache-vae");
        var a = Fashion(96, 0);
        var b = Fashion(96, 96);                 // same count and shape, other images
        var (vaeA, trainedA, _) = WithCache(cache, () => FashionLatentRecipe.LoadOrTrainVae(a));
        Assert.True(trainedA);
        var (_, again, _) = WithCache(cache, () => FashionLatentRecipe.LoadOrTrainVae(a));
        Assert.False(again);
        var (_, trainedB, _) = WithCache(cache, () => FashionLatentRecipe.LoadOrTrainVae(b));
        Assert.True(trainedB, "images of the same shape but other content reused the cached VAE");

        // config.scaling_factor = 1/σ of the training latents, in the saved config.json as diffusers keeps it
        var folder = Directory.GetDirectories(cache, "fashion-vae-*").Single(d =>
            Interop.PyJson.ParseFile(Path.Combine(d, "config.json"))!["scaling_factor"]!.GetValue<double>() == vaeA.Config.ScalingFactor);
        double sigma = VaeTrainer.EncodeMeans(vaeA, a).std().item<float>();
        Assert.Equal(1 / sigma, vaeA.Config.ScalingFactor, 4);
        Assert.NotEqual(1.0, vaeA.Config.ScalingFactor);
        var (latents, scale) = FashionLatentRecipe.ScaledLatents(AutoencoderKL.FromPretrained(folder), a);
        Assert.Equal(vaeA.Config.ScalingFactor, scale, 12);
        Assert.Equal(1.0, latents.std().item<float>(), 3);
        // the run was checkpointed while it trained, in the trainer's checkpoint format
        Assert.Equal(FashionLatentRecipe.VaeOptions.Steps, Checkpoint.StepOf(Path.Combine(folder, AutoencoderTrainer.CheckpointFile)));
    }

    [Fact]
    public void Photo_autoencoders_and_denoisers_are_keyed_by_content()
    {
        TorchRuntime.Setup();
        var cache = TestPaths.TempDir("cache-content");
        var spec = new AutoencoderSpec("tiny KL", false,
            new AutoencoderKLConfig { InChannels = 3, OutChannels = 3, LatentChannels = 2, BlockOutChannels = [8, 8], NormNumGroups = 4, SampleSize = 16 },
            0, new AutoencoderLossOptions(), new AutoencoderTrainerOptions { Steps = 2, BatchSize = 4, WarmupSteps = 1 });
        manual_seed(1);
        var x = rand(8, 3, 16, 16) * 2 - 1;
        var y = rand(8, 3, 16, 16) * 2 - 1;
        Assert.NotNull(WithCache(cache, () => AutoencoderRecipes.LoadOrTrain(spec, x)).TrainingTime);
        Assert.Null(WithCache(cache, () => AutoencoderRecipes.LoadOrTrain(spec, x)).TrainingTime);
        Assert.NotNull(WithCache(cache, () => AutoencoderRecipes.LoadOrTrain(spec, y)).TrainingTime);

        var options = FashionLatentRecipe.DenoiserOptions with { Steps = 2, BatchSize = 4, WarmupSteps = 1 };
        var labels = arange(8L) % 10;
        var schedule = Diffusion.NoiseSchedule.ScaledLinear();
        var za = randn(8, 4, 7, 7);
        var zb = randn(8, 4, 7, 7);          // latents of another VAE: same shape, other content
        var first = WithCache(cache, () => FashionLatentRecipe.LoadOrTrainDenoiser(za, labels, schedule, options: options)).log;
        var cached = WithCache(cache, () => FashionLatentRecipe.LoadOrTrainDenoiser(za, labels, schedule, options: options)).log;
        var other = WithCache(cache, () => FashionLatentRecipe.LoadOrTrainDenoiser(zb, labels, schedule, options: options)).log;
        Assert.Equal(0, first.ResumedFromStep);
        Assert.Equal(2, cached.ResumedFromStep);
        Assert.Equal(0, other.ResumedFromStep);
        var relabelled = WithCache(cache, () => FashionLatentRecipe.LoadOrTrainDenoiser(za, (labels + 1) % 10, schedule, options: options)).log;
        Assert.Equal(0, relabelled.ResumedFromStep);
    }

    /// <summary>
    /// Latents made by ScaledLatents are keyed by their origin (VAE weights, images, scale), not their bits: another
    /// CPU's kernels encode the same images a few ulps apart, and the shipped denoiser must keep its key there. Another
    /// VAE, other images or other bits without an origin still give another key.
    /// </summary>
    [Fact]
    public void Latents_are_keyed_by_the_vae_and_images_they_came_from()
    {
        TorchRuntime.Setup();
        var images = Fashion(16, 0);
        manual_seed(3);
        var vae = FashionLatentRecipe.NewVae();
        vae.eval();
        manual_seed(4);
        var otherVae = FashionLatentRecipe.NewVae();
        otherVae.eval();
        var schedule = Diffusion.NoiseSchedule.ScaledLinear();
        var options = FashionLatentRecipe.DenoiserOptions;
        var labels = arange(16L) % 10;
        string KeyOf(Tensor z) => FashionLatentRecipe.DenoiserKey(z, labels, schedule, PredictionType.Epsilon, null, options, 0);
        var (z1, _) = FashionLatentRecipe.ScaledLatents(vae, images);
        var (z2, _) = FashionLatentRecipe.ScaledLatents(vae, images.clone());
        Assert.Equal(KeyOf(z1), KeyOf(z2));                              // same origin, computed anew: same key
        // another CPU's latents are the same origin a few ulps away; only a bare tensor is keyed by its bits
        var nudged = z1 * (1 + 1e-7);
        Assert.NotEqual(ContentHash.Of(z1), ContentHash.Of(nudged));
        Assert.Equal(ContentHash.Of(nudged), FashionLatentRecipe.LatentIdentity(nudged));
        Assert.NotEqual(KeyOf(z1), KeyOf(nudged));
        Assert.NotEqual(KeyOf(z1), KeyOf(FashionLatentRecipe.ScaledLatents(otherVae, images).latents));
        Assert.NotEqual(KeyOf(z1), KeyOf(FashionLatentRecipe.ScaledLatents(vae, Fashion(16, 16)).latents));
    }

    /// <summary>
    /// A replay of a run's first steps on <see cref="FashionLatentRecipe.ReplayLatents"/> (only the rows those steps
    /// draw encoded, the rest zero) has the key and the losses of the run on the whole encoding; a later step draws
    /// rows it lacks, so its losses part; gradient accumulation, whose later draws cannot be told, is refused.
    /// </summary>
    [Fact]
    public void Replay_latents_encode_only_the_drawn_rows_and_give_the_whole_runs_first_losses()
    {
        TorchRuntime.Setup();
        var images = Fashion(48, 0);
        var labels = arange(48L) % 10;
        manual_seed(3);
        var vae = FashionLatentRecipe.NewVae();
        vae.eval();
        var schedule = Diffusion.NoiseSchedule.ScaledLinear();
        var options = new TrainerOptions { Steps = 6, BatchSize = 4, WarmupSteps = 1, Seed = 2 };
        var (whole, scale) = FashionLatentRecipe.ScaledLatents(vae, images);
        var rows = LatentDiffusionTrainer.RowsDrawn(48, options, 3);
        Assert.InRange(rows.Length, 4, 12);
        Assert.True(rows.SequenceEqual(rows.Order()), "rows are sorted");
        var replay = FashionLatentRecipe.ReplayLatents(vae, images, rows, scale);
        Assert.True(replay.index_select(0, tensor(rows)).allclose(whole.index_select(0, tensor(rows)), rtol: 1e-5,
            atol: 1e-6));
        var others = Enumerable.Range(0, 48).Select(i => (long)i).Except(rows).ToArray();
        Assert.Equal(0f, replay.index_select(0, tensor(others)).abs().max().item<float>());
        Assert.Equal(FashionLatentRecipe.LatentIdentity(whole), FashionLatentRecipe.LatentIdentity(replay));
        IReadOnlyList<double> Losses(Tensor z, int steps)
        {
            manual_seed(0);
            var model = FashionLatentRecipe.NewDenoiser();
            var objective = new DiffusionObjective(schedule);
            return new LatentDiffusionTrainer(model, objective, options with { Steps = steps }).Train(z, labels).Losses;
        }
        var first = Losses(whole, 6);
        var replayed = Losses(replay, 6);
        for (int i = 0; i < 3; i++)
            Assert.True(Math.Abs(first[i] - replayed[i]) <= 1e-5 * Math.Abs(first[i]), $"step {i + 1}");
        Assert.False(first.Skip(3).SequenceEqual(replayed.Skip(3)), "later steps draw rows the replay lacks");
        Assert.Throws<ArgumentException>(() =>
            LatentDiffusionTrainer.RowsDrawn(48, options with { GradAccumulation = 2 }, 3));
    }
}
