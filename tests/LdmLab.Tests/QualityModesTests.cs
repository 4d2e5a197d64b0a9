using LdmLab.Data;
using LdmLab.Runtime;
using LdmLab.Training;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>The quality modes of section 10.3.5: one recipe per downsampling factor on 32×32 canvases.</summary>
[Collection("environment")]
public class QualityModesTests
{
    [Fact]
    public void Each_factor_has_its_own_autoencoder_latent_grid_and_shipped_names()
    {
        TorchRuntime.Setup();
        var images = QualityModesRecipe.Pad(FashionMnist.Load(Split.Test, limit: 4).Images);
        Assert.Equal(new long[] { 4, 1, 32, 32 }, images.shape);
        Assert.Equal(-1f, images[.., .., ..2].max().item<float>());                   // the border is background
        var original = FashionMnist.Load(Split.Test, limit: 4).Images;
        Assert.True(QualityModesRecipe.Crop(images).equal(original).all().item<bool>());
        var names = new HashSet<string> { AutoencoderRecipes.ShippedName(AutoencoderRecipes.Fashion(vq: false)) };
        foreach (int f in QualityModesRecipe.Factors)
        {
            var spec = QualityModesRecipe.Autoencoder(f);
            Assert.Equal(f, spec.F);
            var vae = (Autoencoders.AutoencoderKL)AutoencoderRecipes.NewModel(spec);
            using (no_grad())
                Assert.Equal(new long[] { 4, 4, 32 / f, 32 / f }, vae.Encode(images).Mean.shape);
            Assert.Equal(32 / f, QualityModesRecipe.DenoiserConfig(f).SampleSize);
            Assert.True(names.Add(AutoencoderRecipes.ShippedName(spec)), AutoencoderRecipes.ShippedName(spec));
        }
        Assert.Equal("ae-kl-f8-c4-fashion32", AutoencoderRecipes.ShippedName(QualityModesRecipe.Autoencoder(8)));
        Assert.Throws<ArgumentOutOfRangeException>(() => QualityModesRecipe.Autoencoder(16));
        Assert.Equal(new[] { ("draft", 8, 10), ("balanced", 4, 25), ("quality", 2, 50) },
            QualityModesRecipe.Modes.Select(m => (m.Name, m.F, m.Steps)));
    }

    /// <summary>A denoiser at f = 8 trains on its 4×4 latents, refuses latents of another grid, and samples 32×32
    /// canvases through its autoencoder.</summary>
    [Fact]
    public void A_mode_trains_and_samples_canvases()
    {
        TorchRuntime.Setup();
        var data = FashionMnist.Load(Split.Test, limit: 64);
        var images = QualityModesRecipe.Pad(data.Images);
        var vae = (Autoencoders.AutoencoderKL)AutoencoderRecipes.NewModel(QualityModesRecipe.Autoencoder(8));
        vae.eval();
        var (latents, scale) = QualityModesRecipe.Latents(vae, images);
        Assert.Equal(new long[] { 64, 4, 4, 4 }, latents.shape);
        Assert.Equal(1.0, latents.std().item<float>(), 2);                              // 1/σ scaling
        Assert.Equal(scale, vae.Config.ScalingFactor);                        // kept where every decoder reads it
        var options = new TrainerOptions { Steps = 20, BatchSize = 16, WarmupSteps = 2, LearningRate = 1e-3 };
        var (model, log) = QualityModesRecipe.TrainDenoiser(8, latents, data.Labels, options);
        Assert.Equal(20, log.Losses.Count);
        Assert.All(log.Losses, l => Assert.True(double.IsFinite(l)));
        var error = Assert.Throws<ArgumentException>(() => QualityModesRecipe.TrainDenoiser(4, latents, data.Labels, options));
        Assert.Contains("8×8", error.Message);
        var mode = new QualityModesRecipe.TrainedMode(8, vae, model, log, "test");
        var canvases = QualityModesRecipe.Sample(mode, tensor(new long[] { 0, 7, 9 }), steps: 3, guidance: 2);
        Assert.Equal(new long[] { 3, 1, 32, 32 }, canvases.shape);
        Assert.True(canvases.abs().max().item<float>() <= 1);
    }
}
