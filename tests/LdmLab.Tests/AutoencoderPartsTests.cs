using LdmLab.Autoencoders;
using LdmLab.Metrics;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class ImageQualityTests
{
    [Fact]
    public void Psnr_of_known_cases()
    {
        TorchRuntime.Setup();
        var x = zeros(2, 1, 16, 16);
        var y = full(2, 1, 16, 16, 0.2f);                           // MSE 0.04, L = 2 → 10·log10(4/0.04) = 20 dB
        Assert.Equal(20.0, ImageQuality.Psnr(x, y)[0].item<float>(), 3);
        Assert.True(float.IsPositiveInfinity(ImageQuality.Psnr(x, x)[0].item<float>()));
        Assert.Throws<ArgumentException>(() => ImageQuality.Psnr(x, zeros(2, 1, 8, 8)));
    }

    [Fact]
    public void Ssim_is_one_for_identical_and_drops_with_noise_and_structure_loss()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var x = (rand(2, 3, 32, 32) * 2 - 1);
        Assert.Equal(1.0, ImageQuality.Ssim(x, x)[0].item<float>(), 4);
        var mild = ImageQuality.Ssim(x, (x + 0.05 * randn_like(x)).clamp(-1, 1)).mean().item<float>();
        var strong = ImageQuality.Ssim(x, (x + 0.5 * randn_like(x)).clamp(-1, 1)).mean().item<float>();
        Assert.True(1 > mild && mild > strong, $"{mild} {strong}");
        // a constant image against a textured one: luminance may match, structure cannot
        var flat = full_like(x, x.mean().item<float>());
        Assert.True(ImageQuality.Ssim(x, flat).mean().item<float>() < 0.1);
    }
}

public class VectorQuantizerTests
{
    [Fact]
    public void Nearest_code_straight_through_and_losses()
    {
        TorchRuntime.Setup();
        var vq = new VectorQuantizer(4, 2, beta: 0.25, useEma: false);
        using (no_grad()) vq.Codebook.copy_(tensor(new float[] { 0, 0, 1, 0, 0, 1, 1, 1 }, [4, 2]));
        var z = tensor(new float[] { 0.9f, 0.1f, 0.2f, 0.8f }, [1, 2, 2, 1]).requires_grad_(true);   // two vectors: (0.9, 0.2), (0.1, 0.8)
        var q = vq.Forward(z);
        Assert.Equal(new long[] { 1, 2 }, q.Indices.flatten().data<long>().ToArray());
        // straight-through: dz of sum(z_q) is 1 everywhere
        q.Quantized.sum().backward();
        Assert.True(z.grad!.eq(1).all().item<bool>());
        // commitment = β·mean((z − e)²) = 0.25·(0.01 + 0.04 + 0.01 + 0.04)/4
        Assert.Equal(0.25 * 0.1 / 4, q.CommitmentLoss.item<float>(), 5);
        Assert.Equal(2.0, q.Perplexity, 3);
        Assert.Equal(0.5, q.Usage, 6);
    }

    [Fact]
    public void Ema_moves_codes_to_their_cluster_means_and_dead_codes_restart()
    {
        TorchRuntime.Setup();
        manual_seed(1);
        var vq = new VectorQuantizer(3, 2, useEma: true, emaDecay: 0.5);
        vq.train();
        using (no_grad()) vq.Codebook.copy_(tensor(new float[] { -1, 0, 1, 0, 50, 50 }, [3, 2]));
        var pts = tensor(new float[] { -2, 0.5f, 3, 0.5f }, [2, 2]);       // one point near each of the first two codes
        var z = pts.reshape(2, 2, 1, 1).permute(1, 0, 2, 3).contiguous().reshape(1, 2, 2, 1);
        for (int i = 0; i < 30; i++) vq.Forward(z);
        var cb = vq.Codebook.data<float>().ToArray();
        Assert.Equal(-2, cb[0], 2); Assert.Equal(0.5, cb[1], 2);
        Assert.Equal(3, cb[2], 2); Assert.Equal(0.5, cb[3], 2);
        var (usage, perplexity) = vq.UsageStatistics();
        Assert.Equal(2.0 / 3, usage, 6);
        Assert.Equal(2.0, perplexity, 3);
        Assert.Equal(1, vq.RestartDeadCodes(z, patience: 10, new Random(0)));   // code 2 was never used
        var restarted = vq.Codebook[2].data<float>().ToArray();
        Assert.Contains(restarted[0], new[] { -2f, 3f });
    }

    [Fact]
    public void Vq_model_reconstructs_with_the_right_shapes_and_names()
    {
        TorchRuntime.Setup();
        var m = new VQModel(new AutoencoderKLConfig { InChannels = 1, OutChannels = 1, LatentChannels = 3, BlockOutChannels = [8, 16], NormNumGroups = 4 }, numCodes: 16);
        var keys = m.state_dict().Keys.ToList();
        Assert.Contains("quantize.embedding.weight", keys);
        Assert.Equal([3L, 16, 3, 3], m.state_dict()["encoder.conv_out.weight"].shape);   // latent channels, not 2× (no variance)
        Assert.Equal([16L, 3], m.state_dict()["quantize.embedding.weight"].shape);
        Assert.True(keys.IndexOf("encoder.conv_in.weight") < keys.IndexOf("quant_conv.weight") && keys.IndexOf("quant_conv.weight") < keys.IndexOf("quantize.embedding.weight")
            && keys.IndexOf("quantize.embedding.weight") < keys.IndexOf("post_quant_conv.weight") && keys.IndexOf("post_quant_conv.weight") < keys.IndexOf("decoder.conv_in.weight"));
        var (rec, q) = m.Forward(randn(2, 1, 16, 16));
        Assert.Equal([2L, 1, 16, 16], rec.shape);
        Assert.Equal([2L, 8, 8], q.Indices.shape);
    }
}

public class AdversarialTests
{
    [Fact]
    public void Patchgan_maps_and_spectral_norm()
    {
        TorchRuntime.Setup();
        var d = new PatchGan(inChannels: 1, width: 8, layers: 2);
        Assert.Equal(4, d.forward(randn(2, 1, 32, 32)).dim());
        var sn = new SpectralNormConv2d(4, 6, 3, 1, 1);
        // Power iteration converges like (σ₂/σ₁)^2k: a random init may have σ₂ ≈ σ₁ and need thousands of steps
        // (CI once saw 0.657 vs 0.672 after 50). Give the weight a known spectrum with a gap: σ = 3, 1.5, 1, ….
        using (no_grad())
        {
            var g = new Generator(7);
            var (u, _, vh) = linalg.svd(randn([6, 36], generator: g), fullMatrices: false);   // [6,6], [6,36]
            var spectrum = tensor(new[] { 3f, 1.5f, 1f, 0.8f, 0.5f, 0.2f });
            sn.parameters().First().copy_(u.matmul(diag(spectrum)).matmul(vh).reshape(6, 4, 3, 3));
        }
        double sigma = 0;
        for (int i = 0; i < 50; i++) sigma = sn.Sigma().item<float>();
        var w = sn.parameters().First().reshape(6, -1);
        var trueSigma = linalg.svdvals(w)[0].item<float>();
        Assert.Equal(3.0, trueSigma, 4);
        Assert.Equal(trueSigma, sigma, 4);
        var dsn = new PatchGan(inChannels: 1, width: 8, layers: 2, spectralNorm: true);
        Assert.Equal(1L, dsn.forward(randn(1, 1, 32, 32)).shape[1]);
    }

    [Fact]
    public void Hinge_losses_adaptive_weight_and_gradient_penalty()
    {
        TorchRuntime.Setup();
        Assert.Equal(0.0, AdversarialLoss.DiscriminatorHinge(full(4, 2f), full(4, -2f)).item<float>(), 6);     // confident and right
        Assert.Equal(1.0, AdversarialLoss.DiscriminatorHinge(zeros(4), zeros(4)).item<float>(), 6);
        Assert.Equal(-3.0, AdversarialLoss.GeneratorHinge(full(4, 3f)).item<float>(), 6);
        Assert.Equal(0.0, AdversarialLoss.DiscriminatorFactor(99, 100));
        Assert.Equal(1.0, AdversarialLoss.DiscriminatorFactor(100, 100));

        var last = randn(3, 3).requires_grad_(true);
        var rec = (last * 2).sum();         // ∇ = 2 everywhere → ‖·‖ = 6
        var gen = (last * 0.5).sum();       // ∇ = 0.5 → ‖·‖ = 1.5
        Assert.Equal(6 / (1.5 + 1e-4), AdversarialLoss.AdaptiveWeight(rec, gen, last), 4);

        var d = new PatchGan(inChannels: 1, width: 8, layers: 1);
        var gp = AdversarialLoss.GradientPenalty(d, randn(2, 1, 16, 16));
        Assert.True(gp.item<float>() > 0);
        gp.backward();
        Assert.Contains(d.parameters(), p => p.grad is not null && p.grad.abs().sum().item<float>() > 0);
    }
}
