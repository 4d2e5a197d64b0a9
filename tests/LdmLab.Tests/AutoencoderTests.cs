using LdmLab.Autoencoders;
using LdmLab.Interop;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class AutoencoderTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    [Fact]
    public void Tiny_vae_matches_diffusers_posterior_decode_and_intermediates()
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Fixture("tiny-vae"));
        Assert.Equal(18, checks.Count);
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
    }

    [Fact]
    public void Sd15_vae_from_its_config_has_the_manifest_state_dict()
    {
        TorchRuntime.Setup();
        var checks = ModelParity.CheckManifest(Path.Combine(Fixture("sd15-manifest"), "vae_manifest.json"));
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
        Assert.Contains(checks, c => c.Name == "vae_manifest/total_parameters" && c.Note!.StartsWith("83,653,863"));
    }

    [Fact]
    public void Saved_folder_reloads_with_identical_outputs_and_diffusers_config()
    {
        TorchRuntime.Setup();
        var vae = AutoencoderKL.FromPretrained(Fixture("tiny-vae"));
        var dir = TestPaths.TempDir("vae-save");
        vae.SavePretrained(dir);
        var again = AutoencoderKL.FromPretrained(dir);
        using var _ = no_grad();
        var x = rand(1, 3, 16, 16) * 2 - 1;
        Assert.Equal(0, Parity.MaxAbsDiff(vae.Forward(x), again.Forward(x)));
        var cfg = PyJson.ParseFile(Path.Combine(dir, "config.json"))!;
        Assert.Equal("AutoencoderKL", (string?)cfg["_class_name"]);
        Assert.Equal("DownEncoderBlock2D", (string?)cfg["down_block_types"]![1]);
        Assert.Equal(0.18215, (double)cfg["scaling_factor"]!, 6);
    }

    [Fact]
    public void Kl_of_the_prior_is_zero_and_shapes_follow_the_factor()
    {
        TorchRuntime.Setup();
        var q = new DiagonalGaussian(zeros(2, 8, 4, 4));
        Assert.Equal(0f, q.Kl().abs().max().item<float>());
        var q2 = new DiagonalGaussian(cat([ones(1, 4, 2, 2), zeros(1, 4, 2, 2)], 1));
        Assert.Equal(0.5f * 16, q2.Kl()[0].item<float>(), 5);   // ½ Σ μ² with μ = 1 over 16 elements
        var vae = new AutoencoderKL(new AutoencoderKLConfig { InChannels = 1, OutChannels = 1, LatentChannels = 2, BlockOutChannels = [8, 16, 16], NormNumGroups = 4 });
        Assert.Equal(4, vae.Config.DownsamplingFactor);
        using var _ = no_grad();
        var z = vae.Encode(randn(2, 1, 28, 28)).Mean;
        Assert.Equal([2L, 2, 7, 7], z.shape);
        Assert.Equal([2L, 1, 28, 28], vae.Decode(z).shape);
    }
}
