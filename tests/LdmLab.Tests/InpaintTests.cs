using LdmLab.Pipelines;
using LdmLab.Runtime;
using LdmLab.UNet;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Inpainting: blended latents for ordinary U-Nets, mask conditioning for 9-channel inpainting
/// U-Nets.</summary>
public class InpaintTests
{
    static readonly GenerationOptions Options = new()
    {
        Prompts = ["a red dress"], Steps = 6, GuidanceScale = 5, Height = 16, Width = 16, Seed = 11,
    };

    /// <summary>An image [1, 3, 16, 16] in [−1, 1] and a mask with the left half to repaint.</summary>
    static (Tensor image, Tensor mask) Case()
    {
        var image = rand(new long[] { 1, 3, 16, 16 }, generator: new Generator(5)) * 2 - 1;
        var mask = zeros(1, 1, 16, 16);
        mask[.., .., .., TensorIndex.Slice(0, 8)] = 1;
        return (image, mask);
    }

    /// <summary>The image's latents from the seed's generator, drawn as the pipeline draws them first.</summary>
    static Tensor Known(StableDiffusionPipeline pipe, Tensor image, long seed)
    {
        using var g = new Generator((ulong)seed);
        var posterior = pipe.Vae.Encode(image);
        return posterior.Sample(randn(posterior.Mean.shape, generator: g)) * pipe.Vae.Config.ScalingFactor;
    }

    [Theory]
    [InlineData("DDIMScheduler")]
    [InlineData("EulerDiscreteScheduler")]
    public void Blended_latents_keep_the_known_region_exactly_and_repaint_the_hole(string scheduler)
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var pipe = PipelineTests.Tiny();
        pipe.SetScheduler(scheduler);
        var (image, mask) = Case();
        var output = pipe.Inpaint(image, mask, Options);
        using var _ = no_grad();
        var known = Known(pipe, image, 11);                                                   // [1, c, 8, 8]
        var keep = output.Latents[.., .., .., TensorIndex.Slice(4, null)];
        var hole = output.Latents[.., .., .., TensorIndex.Slice(0, 4)];
        Assert.True(ParityChecks.Parity.MaxAbsDiff(keep, known[.., .., .., TensorIndex.Slice(4, null)]) < 1e-6);
        Assert.True((hole - known[.., .., .., TensorIndex.Slice(0, 4)]).abs().mean().item<float>() > 0.05,
            "the hole must be repainted, not copied");
    }

    [Fact]
    public void Inpainting_unet_sees_latents_mask_and_blanked_image_and_is_not_blended()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var tiny = PipelineTests.Tiny();
        manual_seed(2);
        var unet = new UNet2DConditionModel(tiny.Unet.Config with { InChannels = 9 });
        unet.eval();
        var pipe = new StableDiffusionPipeline(tiny.Tokenizer, tiny.TextEncoder, unet, tiny.Vae, "DDIMScheduler",
            tiny.SchedulerConfig);
        Assert.True(pipe.IsInpaintingUNet);
        Assert.Throws<InvalidOperationException>(() => pipe.Generate(Options));
        var (image, mask) = Case();
        var inputs = new List<Tensor>();
        var convIn = (nn.Module<Tensor, Tensor>)unet.named_modules().Single(m => m.name == "conv_in").module;
        Action unhook = convIn.register_forward_pre_hook((_, x) =>
        {
            inputs.Add(x.clone().DetachFromDisposeScope());
            return x;
        }).remove;
        PipelineOutput output;
        try { output = pipe.Inpaint(image, mask, Options); }
        finally { unhook(); }
        Assert.Equal(Options.Steps, inputs.Count);
        using var _ = no_grad();
        var first = inputs[0];                                                                // [2, 9, 8, 8] (CFG)
        Assert.Equal(new long[] { 2, 9, 8, 8 }, first.shape);
        var expectedMask = zeros(2, 1, 8, 8);
        expectedMask[.., .., .., TensorIndex.Slice(0, 4)] = 1;
        Assert.Equal(0, ParityChecks.Parity.MaxAbsDiff(first[.., TensorIndex.Slice(4, 5)], expectedMask));
        // channels 5…8: the latents of the image with the hole blanked, the seed's second draw (at strength 1 an
        // inpainting U-Net needs no image latents, so diffusers draws the noise first, then this sample)
        using var g = new Generator(11);
        var posterior = pipe.Vae.Encode(image);
        randn(posterior.Mean.shape, generator: g).Dispose();                                  // the noise
        var blankedPosterior = pipe.Vae.Encode(image * (1 - mask));
        var blanked = blankedPosterior.Sample(randn(posterior.Mean.shape, generator: g))
                      * pipe.Vae.Config.ScalingFactor;
        Assert.True(ParityChecks.Parity.MaxAbsDiff(first[0, TensorIndex.Slice(5, null)], blanked[0]) < 1e-5);
        // no blending: the known region is the model's own
        var known = Known(pipe, image, 11);
        var keep = TensorIndex.Slice(4, null);
        Assert.True(ParityChecks.Parity.MaxAbsDiff(output.Latents[.., .., .., keep], known[.., .., .., keep]) > 1e-3);
        foreach (var t in inputs) t.Dispose();
    }

    [Fact]
    public void Bad_masks_and_strengths_are_named()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var pipe = PipelineTests.Tiny();
        var (image, mask) = Case();
        var cropped = mask[.., .., TensorIndex.Slice(0, 8)];
        var e = Assert.Throws<ArgumentException>(() => pipe.Inpaint(image, cropped, Options));
        Assert.Equal("masks", e.ParamName);
        Assert.Contains("1 = repaint", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => pipe.Inpaint(image, mask, Options, strength: 0));
        Assert.Throws<ArgumentException>(() => pipe.Inpaint(image[.., TensorIndex.Slice(0, 1)], mask, Options));
    }
}
