using LdmLab.Autoencoders;
using LdmLab.Data;
using LdmLab.Metrics;
using LdmLab.Runtime;
using LdmLab.Training;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// The checkpoints shipped in data/checkpoints: each one's hash, that it loads and reaches the metrics its manifest
/// records, that the recipe in the code is still the one that made it (same key), and that the recipe's first steps
/// from the same seed reproduce the shipped run's first losses.
/// </summary>
[Collection("environment")]
public class ShippedCheckpointTests
{
    static ShippedCheckpoint FashionVae() =>
        ShippedCheckpoint.Find(FashionLatentRecipe.ShippedVae)
        ?? throw new InvalidOperationException("data/checkpoints/fashion-vae is missing from this checkout");

    static T Full<T>(Func<T> f) => TestPaths.WithEnvironment("LDMLAB_PROFILE", "full", f);

    [Fact]
    public void The_shipped_fashion_vae_is_the_recipes_and_reaches_its_recorded_metrics()
    {
        TorchRuntime.Setup();
        var shipped = FashionVae();
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
        var shipped = FashionVae();
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
        var shipped = FashionVae();
        var root = TestPaths.TempDir("shipped-tampered");
        var dir = Path.Combine(root, shipped.Name);
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(shipped.Dir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var weights = Path.Combine(dir, shipped.WeightsFile);
        var bytes = File.ReadAllBytes(weights);
        bytes[^3] ^= 0x40;
        File.WriteAllBytes(weights, bytes);
        var e = TestPaths.WithEnvironment("LDMLAB_CHECKPOINTS", root, () =>
            Assert.Throws<DatasetException>(() => FashionLatentRecipe.Vae(zeros(2, 1, 28, 28))));
        Assert.Contains(weights, e.Message);
        Assert.Contains("SHA-256", e.Message);
        Directory.Delete(root, true);
    }

    [Fact]
    public void The_quick_profile_uses_the_shipped_vae_and_says_so()
    {
        TorchRuntime.Setup();
        var used = TestPaths.WithEnvironment("LDMLAB_PROFILE", "quick", () => FashionLatentRecipe.Vae(zeros(2, 1, 28, 28)));
        Assert.Null(used.Log);
        Assert.StartsWith("loaded checkpoint data/checkpoints/fashion-vae, trained 3,000 steps", used.Source);
        Assert.Contains("LDMLAB_PROFILE=full retrains it", used.Source);
    }

    static ShippedCheckpoint FashionDenoiser() =>
        ShippedCheckpoint.Find(FashionLatentRecipe.ShippedDenoiser)
        ?? throw new InvalidOperationException("data/checkpoints/fashion-denoiser is missing from this checkout");

    /// <summary>
    /// The shipped denoiser: its hash, the recipe key over the shipped VAE's latents of the 60,000 training images, its
    /// loss log, and the recipe's first five steps from seed 0 reproducing the shipped run's first five losses
    /// (relative 1e-4, as for the VAE).
    /// </summary>
    [Fact]
    public void The_shipped_denoiser_is_the_recipes_and_its_first_steps_reproduce()
    {
        TorchRuntime.Setup();
        var shipped = FashionDenoiser();
        shipped.Verify();
        var vae = AutoencoderKL.FromPretrained(FashionVae().Dir);
        vae.eval();
        var train = FashionMnist.Load(Split.Train);
        var (latents, _) = FashionLatentRecipe.ScaledLatents(vae, train.Images);
        var schedule = Diffusion.NoiseSchedule.ScaledLinear();
        var options = Full(() => FashionLatentRecipe.DenoiserOptions);
        Assert.Equal(FashionLatentRecipe.DenoiserKey(latents, train.Labels, schedule, PredictionType.Epsilon, null, options, 0),
            shipped.RecipeKey);
        Assert.Equal(options.Steps, shipped.Steps);
        var used = TestPaths.WithEnvironment("LDMLAB_PROFILE", "quick", () => FashionLatentRecipe.Denoiser(latents, train.Labels, schedule));
        Assert.Equal(shipped.Steps, used.Log.Losses.Count);
        Assert.StartsWith("loaded checkpoint data/checkpoints/fashion-denoiser", used.Source);
        Assert.True(used.Log.Losses.TakeLast(100).Average() < 0.5 * used.Log.Losses.Take(10).Average(), "the shipped run's loss fell");

        manual_seed(0);
        var model = new Conditioning.ClassConditionedUNet(FashionLatentRecipe.DenoiserConfig, FashionMnist.ClassNames.Length);
        var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(schedule), options with { Steps = shipped.FirstLosses.Count });
        var log = trainer.Train(latents, train.Labels);
        for (int i = 0; i < log.Losses.Count; i++)
            Assert.True(Math.Abs(log.Losses[i] - shipped.FirstLosses[i]) <= 1e-4 * Math.Abs(shipped.FirstLosses[i]),
                $"step {i + 1}: {log.Losses[i]} vs the shipped run's {shipped.FirstLosses[i]}");
    }
}
