using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Metrics;
using LdmLab.Runtime;
using LdmLab.Training;
using static LdmLab.Tests.ShippedReplay;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// The checkpoints shipped in data/checkpoints: each one's hash, that it loads and reaches the metrics its manifest
/// records, that the recipe in the code is still the one that made it (same key), and that the recipe's first steps
/// from the same seed reproduce the shipped run's first losses.
/// </summary>
[Collection("environment")]
[Trait("Category", "Slow")]
public class ShippedCheckpointTests
{
    static ShippedCheckpoint FashionVaeCheckpoint() => Require(FashionLatentRecipe.ShippedVae);

    [Fact]
    public void The_shipped_fashion_vae_is_the_recipes_and_reaches_its_recorded_metrics()
    {
        TorchRuntime.Setup();
        var shipped = FashionVaeCheckpoint();
        shipped.Verify();
        var train = FashionMnist.Load(Split.Train);
        // the recipe in the code (config, full-profile options, seed, the 60,000 images' content) made this checkpoint
        Assert.Equal(Full(() => FashionLatentRecipe.VaeKey(train.Images, shipped.Seed)), shipped.RecipeKey);
        Assert.Equal(Full(() => FashionLatentRecipe.VaeOptions.Steps), shipped.Steps);
        var vae = AutoencoderKL.FromPretrained(shipped.Dir);
        vae.eval();
        Assert.Equal(shipped.Metrics["scaling_factor"], vae.Config.ScalingFactor, 12);
        var test = FashionMnist.Load(Split.Test, limit: 1000);
        using var _ = no_grad();
        var recon = VaeTrainer.DecodeBatched(vae, VaeTrainer.EncodeMeans(vae, test.Images)).clamp(-1, 1);
        double psnr = ImageQuality.Psnr(recon, test.Images).mean().item<float>();
        Assert.Equal(shipped.Metrics["test_psnr_db_first_1000"], psnr, 2);
        Assert.True(psnr > 20, $"the shipped VAE reconstructs at {psnr:F1} dB");
    }

    /// <summary>
    /// Five steps of the full recipe from seed 0 give the shipped run's first five losses. Tolerance: relative 1e-4,
    /// which covers float32 reductions summed in another order on another CPU or ISA (oneDNN's AVX2 and AVX-512 kernels
    /// differ in the last bits, about 1e-6 relative per step); on the machine that trained it they are equal.
    /// </summary>
    [Fact]
    public void The_recipes_first_steps_reproduce_the_shipped_runs_first_losses()
    {
        TorchRuntime.Setup();
        var shipped = FashionVaeCheckpoint();
        var train = FashionMnist.Load(Split.Train);
        var options = Full(() => FashionLatentRecipe.VaeOptions) with { Steps = shipped.FirstLosses.Count, Seed = shipped.Seed };
        manual_seed(shipped.Seed);
        var vae = new AutoencoderKL(FashionLatentRecipe.VaeConfig);
        var log = VaeTrainer.Train(vae, train.Images, options);
        Assert.Equal(shipped.FirstLosses.Count, log.Reconstruction.Count);
        for (int i = 0; i < log.Reconstruction.Count; i++)
            Assert.True(Math.Abs(log.Reconstruction[i] - shipped.FirstLosses[i]) <= 1e-4 * Math.Abs(shipped.FirstLosses[i]),
                $"step {i + 1}: {log.Reconstruction[i]} vs the shipped run's {shipped.FirstLosses[i]}");
    }

    [Fact]
    public void A_changed_weights_file_is_refused_naming_it()
    {
        TorchRuntime.Setup();
        var shipped = FashionVaeCheckpoint();
        var root = TestPaths.TempDir("shipped-tampered");
        var dir = Path.Combine(root, shipped.Name);
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(shipped.Dir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var weights = Path.Combine(dir, shipped.WeightsFile);
        var bytes = File.ReadAllBytes(weights);
        bytes[^3] ^= 0x40;
        File.WriteAllBytes(weights, bytes);
        var e = TestPaths.WithSettings(s => s with { CheckpointsDir = root }, () =>
            Assert.Throws<DatasetException>(() => FashionLatentRecipe.Vae(zeros(2, 1, 28, 28))));
        Assert.Contains(weights, e.Message);
        Assert.Contains("SHA-256", e.Message);
        Directory.Delete(root, true);
    }

    [Fact]
    public void The_quick_profile_uses_the_shipped_vae_and_says_so()
    {
        TorchRuntime.Setup();
        var used = Quick(() => FashionLatentRecipe.Vae(zeros(2, 1, 28, 28)));
        Assert.Null(used.Log);
        Assert.StartsWith("loaded checkpoint data/checkpoints/fashion-vae, trained 3,000 steps", used.Source);
        Assert.Contains("LDMLAB_PROFILE=full retrains it", used.Source);
    }

    /// <summary>
    /// The shipped denoisers of the schedule study (fashion-denoiser: SD's scaled-linear; -linear, -cosine,
    /// -snr-adaptive, -zero-snr): each one's hash, the recipe key over the shipped VAE's latents of the 60,000 training
    /// images with its schedule and target (v at zero terminal SNR), the quick profile loading it with its loss log,
    /// and the recipe's first five steps from seed 0 reproducing the shipped run's first five losses (relative 1e-4,
    /// as for the VAE) — with only the latents those steps draw encoded.
    /// </summary>
    [Fact]
    public void The_shipped_denoisers_are_the_recipes_and_their_first_steps_reproduce()
    {
        TorchRuntime.Setup();
        var vae = FashionVae();
        var train = FashionMnist.Load(Split.Train);
        var options = Full(() => FashionLatentRecipe.DenoiserOptions);
        Assert.Equal(5, FashionLatentRecipe.StudySchedules.Select(s => s.Name).Distinct().Count());
        Tensor? latents = null;
        foreach (var (name, schedule) in FashionLatentRecipe.StudySchedules)
        {
            var shipped = Require(name);
            shipped.Verify();
            latents ??= FirstStepsLatents(vae, train.Images, options, shipped.FirstLosses.Count);   // [60000, 4, 7, 7]
            Assert.Equal(name, FashionLatentRecipe.ShippedDenoiserName(schedule));
            var prediction = FashionLatentRecipe.PredictionFor(schedule);
            Assert.Equal(schedule.AlphasCumprod[^1] == 0 ? PredictionType.VPrediction : PredictionType.Epsilon,
                prediction);
            Assert.Equal(FashionLatentRecipe.DenoiserKey(latents, train.Labels, schedule, prediction, null, options, 0),
                shipped.RecipeKey);
            Assert.Equal(options.Steps, shipped.Steps);
            var used = Quick(() => FashionLatentRecipe.Denoiser(latents, train.Labels, schedule));
            Assert.True(used.Shipped, name);
            Assert.Equal(shipped.Steps, used.Log.Losses.Count);
            Assert.StartsWith($"loaded checkpoint data/checkpoints/{name},", used.Source);
            AssertLossFell(used.Log.Losses, name);

            manual_seed(0);
            var model = new ClassConditionedUNet(FashionLatentRecipe.DenoiserConfig, FashionMnist.ClassNames.Length);
            var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(schedule, prediction),
                options with { Steps = shipped.FirstLosses.Count });
            var log = trainer.Train(latents, train.Labels);
            AssertFirstLosses(shipped.FirstLosses, log.Losses, name);
        }
        // a schedule outside the study has no shipped model: the quick profile trains it (here: names none)
        Assert.Null(FashionLatentRecipe.ShippedDenoiserName(Diffusion.NoiseSchedule.Linear(betaEnd: 0.03)));
    }
}

/// <summary>The judge and the autoencoders of notebook 02 as shipped checkpoints (same checks as above).</summary>
[Collection("environment")]
[Trait("Category", "Slow")]
public class ShippedJudgeAndAutoencoderTests
{
    /// <summary>
    /// The classifier that judges generated images: its hash; the recipe key (settings, 3,000 steps, seed, the 60,000
    /// training images' and labels' content); the quick profile loading it; its recorded accuracy on all 10,000 test
    /// images (≥ 90 %, reproduced to within 3 images: argmax ties may fall differently on another ISA); and the recipe's
    /// first five steps, on the same cosine schedule, reproducing the shipped run's first five losses (relative 1e-4).
    /// </summary>
    [Fact]
    public void The_shipped_classifier_is_the_recipes_and_reaches_its_recorded_accuracy()
    {
        TorchRuntime.Setup();
        var shipped = Require(ClassifierRecipe.Shipped);
        shipped.Verify();
        var train = FashionMnist.Load(Split.Train);
        Assert.Equal(Full(() => ClassifierRecipe.Key(train, ClassifierRecipe.Steps)), shipped.RecipeKey);
        Assert.Equal(Full(() => ClassifierRecipe.Steps), shipped.Steps);
        var judge = Quick(() => ClassifierRecipe.Load(train));
        Assert.StartsWith("loaded checkpoint data/checkpoints/fashion-classifier, trained 3,000 steps", judge.Source);
        var test = FashionMnist.Load(Split.Test);
        double accuracy = ClassifierTraining.Accuracy(judge.Model, test.Images, test.Labels);
        Assert.True(Math.Abs(accuracy - shipped.Metrics["test_accuracy_10000"]) <= 3e-4,
            $"accuracy {accuracy:P2} vs the recorded {shipped.Metrics["test_accuracy_10000"]:P2}");
        Assert.True(accuracy >= 0.9, $"the judge reaches {accuracy:P2} on the real test set (the issue asks ≥ 90 %)");
        var (_, log) = ClassifierRecipe.Train(train, shipped.Steps, stopAfter: shipped.FirstLosses.Count);
        AssertFirstLosses(shipped.FirstLosses, log.Losses);
    }

    /// <summary>Every autoencoder of notebook 02 that has a shipped folder, with the images its recipe trains on.</summary>
    static IEnumerable<(AutoencoderSpec spec, Func<Tensor> train, Func<Tensor> heldOut, string metric)> ShippedAutoencoders()
    {
        var photoSpecs = Full(() => AutoencoderRecipes.RateDistortion().Concat(AutoencoderRecipes.LossAblation())
            .DistinctBy(AutoencoderRecipes.ShippedName).ToList());
        Tensor? photoTrain = null, photoHeldOut = null;
        void Crops()
        {
            if (photoTrain is not null) return;
            var photos = new ImageFolder(AutoencoderRecipes.PhotoFolder, AutoencoderRecipes.PhotoShortSide);
            (photoTrain, photoHeldOut) = Full(() => AutoencoderRecipes.PhotoCrops(photos, AutoencoderRecipes.PhotoTrainCrops,
                AutoencoderRecipes.PhotoHeldOutCrops));
        }
        foreach (var spec in photoSpecs)
            yield return (spec, () => { Crops(); return photoTrain!; }, () => { Crops(); return photoHeldOut!; }, "psnr_db_256_held_out_crops");
        yield return (Full(() => AutoencoderRecipes.Fashion(vq: true)), () => FashionMnist.Load(Split.Train).Images,
            () => FashionMnist.Load(Split.Test, limit: 1000).Images, "psnr_db_first_1000_test");
        foreach (var spec in Full(AutoencoderRecipes.KlSweep))                    // notebook 02's KL weights
            yield return (spec, () => FashionMnist.Load(Split.Train).Images,
                () => FashionMnist.Load(Split.Test, limit: 1000).Images, "psnr_db_first_1000_test");
        foreach (int f in QualityModesRecipe.Factors)
            yield return (Full(() => QualityModesRecipe.Autoencoder(f)),
                () => QualityModesRecipe.Pad(FashionMnist.Load(Split.Train).Images),
                () => QualityModesRecipe.Pad(FashionMnist.Load(Split.Test, limit: 1000).Images), "psnr_db_first_1000_test");
    }

    /// <summary>
    /// Each shipped autoencoder: hash, recipe key (spec, full-profile options, seed, the training crops' or images'
    /// content), the quick profile loading it with its whole step log, its recorded held-out PSNR (to 0.01 dB), and
    /// the recipe's first five steps from seed 0 reproducing the shipped run's first five L1 losses (relative 1e-4).
    /// </summary>
    [Fact]
    public void The_shipped_autoencoders_are_their_recipes_and_reach_their_recorded_psnr()
    {
        TorchRuntime.Setup();
        var found = ShippedAutoencoders().Where(a => ShippedCheckpoint.Find(AutoencoderRecipes.ShippedName(a.spec)) is not null).ToList();
        Assert.NotEmpty(found);
        var cache = TestPaths.TempDir("shipped-ae-replay");
        ResNet18Features? resnet = null;
        Tensor? photoCrops = null;
        double bestPhoto = double.NegativeInfinity;
        foreach (var (spec, trainImages, heldOutImages, metric) in found)
        {
            var name = AutoencoderRecipes.ShippedName(spec);
            var shipped = Require(name);
            shipped.Verify();
            var train = trainImages();
            Assert.Equal(AutoencoderRecipes.Key(spec, train, 0), shipped.RecipeKey);
            Assert.Equal(spec.Options.Steps, shipped.Steps);
            var quickSpec = Quick(() => spec with { Options = spec.Options with { Steps = 8 } });
            var loaded = Quick(() => AutoencoderRecipes.LoadOrTrain(quickSpec, train));
            Assert.StartsWith($"loaded checkpoint data/checkpoints/{name}", loaded.Source);
            Assert.Equal(shipped.Steps, loaded.Log.Count);
            Assert.Equal(shipped.Steps, loaded.Spec.Options.Steps);
            var heldOut = heldOutImages();
            double psnr;
            using (no_grad())
                psnr = ImageQuality.Psnr(loaded.Reconstruct(heldOut).clamp(-1, 1), heldOut).mean().item<float>();
            Assert.True(Math.Abs(psnr - shipped.Metrics[metric]) <= 0.01, $"{name}: PSNR {psnr:F3} vs the recorded {shipped.Metrics[metric]:F3}");
            if (metric == "psnr_db_256_held_out_crops")
            {
                // notebook 02's quick table evaluates the first 64 of these crops: within 2 dB of the full profile's
                double quick;
                using (no_grad())
                    quick = ImageQuality.Psnr(loaded.Reconstruct(heldOut.narrow(0, 0, 64)).clamp(-1, 1),
                        heldOut.narrow(0, 0, 64)).mean().item<float>();
                Assert.True(Math.Abs(quick - psnr) <= 2, $"{name}: {quick:F2} dB on 64 crops vs {psnr:F2} on 256");
                photoCrops = heldOut;
                bestPhoto = Math.Max(bestPhoto, psnr);
            }

            if (spec.Loss.PerceptualWeight > 0) resnet ??= new ResNet18Features(AutoencoderRecipes.PhotoSize);
            var replay = TestPaths.WithSettings(s => s with { CacheDir = cache }, () => Full(() => AutoencoderRecipes.LoadOrTrain(
                spec with { Options = spec.Options with { Steps = shipped.FirstLosses.Count } }, train, perceptual: resnet)));
            // the perceptual loss backpropagates through ResNet18, whose CPU kernels outside oneDNN's ISA cap differ
            // between AVX2 and AVX-512 machines: measured 1.7e-4 relative at step 5 of ae-kl-f8-c4-perc-photo on an
            // AVX-512 EPYC against the AVX2 run that shipped it (steps 1-4 equal); every other replay matches to 1e-4
            AssertFirstLosses(shipped.FirstLosses, replay.Log.Select(s => s.Reconstruction).ToList(), name,
                spec.Loss.PerceptualWeight > 0 ? 1e-3 : 1e-4);
        }
        // the best photo model reconstructs more than each crop's mean colour: by at least 2 dB over a flat crop
        if (photoCrops is not null)
            Assert.True(bestPhoto - AutoencoderRecipes.FlatColourPsnr(photoCrops) >= 2,
                $"best {bestPhoto:F2} dB, flat crops {AutoencoderRecipes.FlatColourPsnr(photoCrops):F2} dB");
        Directory.Delete(cache, true);
    }
}

/// <summary>The text-to-image model of notebooks 05/06 as a shipped checkpoint.</summary>
[Collection("environment")]
[Trait("Category", "Slow")]
public class ShippedTextToImageTests
{
    /// <summary>
    /// For the cross-attention model and each other conditioning method's: hash; recipe key (method, configs,
    /// full-profile options, seed, the shipped VAE's latents of the full profile's 60,000 scenes and their captions);
    /// the quick profile loading it with its whole loss log (the loss fell); and the recipe's first five steps from
    /// seed 0 reproducing the shipped run's first five losses (relative 1e-4) — with only the latents those steps
    /// draw encoded.
    /// </summary>
    [Fact]
    public void The_shipped_text_to_image_models_are_the_recipes_and_their_first_steps_reproduce()
    {
        TorchRuntime.Setup();
        var vae = FashionVae();
        var scenes = Full(() => TextToImageRecipe.Scenes(FashionMnist.Load(Split.Train)));
        Assert.Equal(60000, scenes.Count);
        var options = Full(() => TextToImageRecipe.Options) with { Seed = 0 };
        Tensor? latents = null;
        foreach (var method in Enum.GetValues<ConditioningMethod>())
        {
            var name = TextToImageRecipe.ShippedName(method);
            var shipped = Require(name);
            shipped.Verify();
            latents ??= FirstStepsLatents(vae, scenes.Images, options, shipped.FirstLosses.Count); // [60000, 4, 7, 14]
            Assert.Equal(TextToImageRecipe.Key(latents, scenes.Captions, options, 0, method), shipped.RecipeKey);
            Assert.Equal(options.Steps, shipped.Steps);
            var used = Quick(() => TextToImageRecipe.Load(method, latents, scenes.Captions));
            Assert.StartsWith($"loaded checkpoint data/checkpoints/{name}", used.Source);
            Assert.Equal(shipped.Steps, used.Log.Losses.Count);
            AssertLossFell(used.Log.Losses, name);

            var (_, log) = TextToImageRecipe.Train(method, latents, scenes.Captions,
                options with { Steps = shipped.FirstLosses.Count });
            AssertFirstLosses(shipped.FirstLosses, log.Losses, name);
        }
    }

    /// <summary>
    /// Notebook 08's base — the cross-attention model trained without sneakers — and the fine-tuning runs shipped
    /// on it: hashes; recipe keys (the base's: its 60,000 scenes without the class; each run's: method, options, seed,
    /// the shipped base's weights, the instance images); the quick profile loading them (the run's file applied: a
    /// LoRA matching every module, the token added); and the first five steps of each recipe reproducing the
    /// shipped runs' first losses (relative 1e-4; the base's with only the latents its first steps draw encoded).
    /// </summary>
    [Fact]
    public void The_fine_tuning_base_and_runs_are_their_recipes_and_their_first_steps_reproduce()
    {
        TorchRuntime.Setup();
        var vae = FashionVae();
        var train = FashionMnist.Load(Split.Train);
        int held = TextToImageRecipe.HeldOutClass;
        var scenes = Full(() => TextToImageRecipe.ScenesWithout(train, held));
        Assert.Equal(60000, scenes.Count);
        var options = Full(() => TextToImageRecipe.Options) with { Seed = 0 };
        var name = TextToImageRecipe.ShippedWithout(held);
        var shipped = Require(name);
        var latents = FirstStepsLatents(vae, scenes.Images, options, shipped.FirstLosses.Count);   // [60000, 4, 7, 14]
        Assert.Equal(TextToImageRecipe.Key(latents, scenes.Captions, options, 0), shipped.RecipeKey);
        var trained = Quick(() => TextToImageRecipe.LoadWithout(held, train, vae));
        Assert.StartsWith($"loaded checkpoint data/checkpoints/{name}", trained.Source);
        var (_, log) = TextToImageRecipe.Train(latents, scenes.Captions,
            options with { Steps = shipped.FirstLosses.Count });
        AssertFirstLosses(shipped.FirstLosses, log.Losses, name);

        var newClass = FineTuneLab.NewClass(train);
        var subject = FineTuneLab.Subject(FashionMnist.Load(Split.Test));
        var runs = FineTuneLab.Specs.Select(s => (newClass, s))
            .Concat(FineTuneLab.SubjectSpecs.Select(s => (subject, s)));
        foreach (var (target, spec) in runs)
        {
            var runName = FineTuneLab.ShippedName(target, spec);
            var run = Require(runName);
            run.Verify();
            var runOptions = Full(() => FineTuneLab.Options(spec)) with { Seed = 0 };
            Assert.Equal(FineTuneLab.Key(target, spec, trained.Model, runOptions, 0), run.RecipeKey);
            Assert.Equal(runOptions.Steps, run.Steps);
            var tuned = Quick(() => FineTuneLab.LoadOrTrain(spec, target, trained.Model, vae));
            Assert.StartsWith($"loaded checkpoint data/checkpoints/{runName}", tuned.Source);
            Assert.Equal(runOptions.Steps, tuned.Log.Losses.Count);
            Assert.Equal(run.Metrics["trainable_parameters"], tuned.Trainable);
            var replay = FineTuneLab.Train(spec, target, trained.Model, vae,
                runOptions with { Steps = run.FirstLosses.Count }, TestPaths.TempDir("ft-replay-" + runName));
            AssertFirstLosses(run.FirstLosses, replay.Result.Log.Losses, runName);
        }
    }

    /// <summary>
    /// The quality modes' denoisers (f = 2, 4, 8 on 32×32 canvases): hash; recipe key (f, config, full-profile
    /// options, seed, the shipped autoencoder's latents of the 60,000 padded training images at the recorded latent
    /// scale, the labels); the quick profile loading the pair at that scale; and the recipe's first five steps
    /// reproducing the shipped run's first five losses (relative 1e-4) — with only the latents those steps draw
    /// encoded. The key holds the scale, so the recorded scale is the one the run trained with (1/σ of all 60,000
    /// images' means, measured by the recipe when it ran); the few hundred encoded here have σ within 10 % of 1 at it.
    /// </summary>
    [Fact]
    public void The_shipped_quality_mode_denoisers_are_the_recipes_and_their_first_steps_reproduce()
    {
        TorchRuntime.Setup();
        var train = FashionMnist.Load(Split.Train);
        var images = QualityModesRecipe.Pad(train.Images);
        var options = Full(() => QualityModesRecipe.DenoiserOptions) with { Seed = 0 };
        foreach (int f in QualityModesRecipe.Factors)
        {
            var name = QualityModesRecipe.ShippedDenoiser(f);
            var shipped = Require(name);
            shipped.Verify();
            var mode = Quick(() => QualityModesRecipe.Load(f, images, train.Labels));
            Assert.Contains($"loaded checkpoint data/checkpoints/{name}", mode.Source);
            Assert.Contains($"loaded checkpoint data/checkpoints/ae-kl-f{f}-c4-fashion32", mode.Source);
            double scale = shipped.Metrics["latent_scale"];
            Assert.Equal(scale, mode.Vae.Config.ScalingFactor);
            int n = shipped.FirstLosses.Count;
            var latents = FirstStepsLatents(mode.Vae, images, options, n, scale);              // [60000, 4, 32/f, 32/f]
            Assert.Equal(new long[] { 60000, 4, 32 / f, 32 / f }, latents.shape);
            var drawn = latents.index_select(0, tensor(LatentDiffusionTrainer.RowsDrawn(60000, options, n)));
            double sigma = drawn.std().item<float>();
            Assert.True(Math.Abs(sigma - 1) < 0.1, $"{name}: the drawn latents' σ is {sigma:F3} at the recorded scale");
            Assert.Equal(QualityModesRecipe.DenoiserKey(f, latents, train.Labels, options, 0), shipped.RecipeKey);
            Assert.Equal(options.Steps, mode.Log.Losses.Count);
            var (_, log) = QualityModesRecipe.TrainDenoiser(f, latents, train.Labels, options with { Steps = n });
            AssertFirstLosses(shipped.FirstLosses, log.Losses, name);
        }
    }
}
