using LdmLab.Training;
using LdmLab.Autoencoders;
using LdmLab.Data;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class AutoencoderTrainerTests
{
    static readonly AutoencoderKLConfig Tiny = new() { InChannels = 1, OutChannels = 1, LatentChannels = 2, BlockOutChannels = [8, 16], NormNumGroups = 4, SampleSize = 28 };

    static Tensor Images()
    {
        TorchRuntime.Setup();
        using var d = FashionMnist.Load(Split.Test, limit: 256);
        return d.Images.clone();
    }

    [Fact]
    public void Pixel_only_kl_training_lowers_the_reconstruction_loss()
    {
        var x = Images();
        manual_seed(0);
        var t = new AutoencoderTrainer(new AutoencoderKL(Tiny), new AutoencoderLossOptions(), new AutoencoderTrainerOptions { Steps = 40, BatchSize = 16, LearningRate = 3e-3, WarmupSteps = 5 });
        var log = t.Train(x);
        Assert.Equal(40, log.Count);
        Assert.True(log.TakeLast(5).Average(s => s.Reconstruction) < 0.8 * log.Take(5).Average(s => s.Reconstruction));
        Assert.All(log, s => Assert.Equal(0, s.Generator));
    }

    [Fact]
    public void Vq_with_perceptual_and_delayed_adversarial_terms()
    {
        var x = Images();
        manual_seed(1);
        var vq = new VQModel(Tiny, numCodes: 16);
        var t = new AutoencoderTrainer(vq, new AutoencoderLossOptions { PerceptualWeight = 1.0, PerceptualResolution = 32, DiscriminatorWeight = 0.5, DiscriminatorStart = 3, SpectralNorm = true, GradientPenalty = 1.0, DiscriminatorWidth = 8 },
            new AutoencoderTrainerOptions { Steps = 5, BatchSize = 4, DeadCodePatience = 2 });
        var log = t.Train(x);
        Assert.All(log.Take(2), s => { Assert.Equal(0, s.AdaptiveWeight); Assert.Equal(0, s.Discriminator); });
        Assert.All(log.Skip(2), s => { Assert.True(s.AdaptiveWeight > 0); Assert.NotEqual(0, s.Discriminator); });
        Assert.All(log, s => { Assert.True(s.Perceptual > 0); Assert.InRange(s.CodebookUsage, 1.0 / 16, 1.0); Assert.True(s.Perplexity >= 1); });
    }

    [Fact]
    public void Resume_with_a_discriminator_is_bit_exact()
    {
        var x = Images();
        var loss = new AutoencoderLossOptions { DiscriminatorWeight = 0.5, DiscriminatorStart = 1, DiscriminatorWidth = 8 };
        AutoencoderTrainerOptions Opts(int steps, string? dir) => new() { Steps = steps, BatchSize = 4, Seed = 3, CheckpointDir = dir };
        manual_seed(2);
        var a = new AutoencoderKL(Tiny);
        var init = a.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        manual_seed(5);
        var straight = new AutoencoderTrainer(a, loss, Opts(4, null));
        var discInit = straight.Discriminator!.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var logA = straight.Train(x);

        var dir = TestPaths.TempDir("ae-resume");
        var b = new AutoencoderKL(Tiny); b.load_state_dict(init);
        var first = new AutoencoderTrainer(b, loss, Opts(2, dir));
        first.Discriminator!.load_state_dict(discInit);
        first.Train(x);
        var c = new AutoencoderKL(Tiny);
        var logC = new AutoencoderTrainer(c, loss, Opts(4, dir)).Train(x);
        Assert.Equal(logA.Select(s => s.Reconstruction), logC.Select(s => s.Reconstruction));
        foreach (var (k, v) in a.state_dict()) Assert.True(v.equal(c.state_dict()[k]).all().item<bool>(), k);
    }
}

public class VaeTrainerTests
{
    [Fact]
    public void Pixel_plus_kl_training_reports_both_terms()
    {
        TorchRuntime.Setup();
        using var d = FashionMnist.Load(Split.Test, limit: 64);
        manual_seed(0);
        var vae = new AutoencoderKL(new AutoencoderKLConfig { InChannels = 1, OutChannels = 1, LatentChannels = 2, BlockOutChannels = [8, 16], NormNumGroups = 4 });
        var log = VaeTrainer.Train(vae, d.Images, new VaeTrainerOptions { Steps = 6, BatchSize = 8, WarmupSteps = 1 });
        Assert.Equal(6, log.Reconstruction.Count);
        Assert.All(log.Kl, k => Assert.True(k > 0));
        var z = VaeTrainer.EncodeMeans(vae, d.Images, batchSize: 20);
        Assert.Equal([64L, 2, 14, 14], z.shape);
        Assert.Equal([64L, 1, 28, 28], VaeTrainer.DecodeBatched(vae, z, batchSize: 20).shape);
    }
}
