using LdmLab.Conditioning;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>The one generation path: its noise, guidance rule, decoding, recording and errors.</summary>
public class LatentDiffusionPipelineTests
{
    /// <summary>A class-conditional denoiser that counts the rows it is called on.</summary>
    sealed class Counting : ConditionalDenoiser
    {
        readonly ClassConditionedUNet inner;
        public readonly List<long> Batches = [];

        public Counting(ClassConditionedUNet inner) : base(nameof(Counting))
        {
            this.inner = inner;
            RegisterComponents();
        }

        public override LdmLab.UNet.UNet2DConditionModel Backbone => inner.Backbone;
        public override Tensor NullCondition => inner.NullCondition;
        public override Tensor Forward(Tensor zt, Tensor t, Tensor c)
        {
            Batches.Add(zt.shape[0]);
            return inner.Forward(zt, t, c);
        }
    }

    static (ClassConditionedUNet model, LdmLab.Autoencoders.AutoencoderKL vae) Models()
    {
        TorchRuntime.Setup();
        manual_seed(3);
        var model = FashionLatentRecipe.NewDenoiser();
        var vae = FashionLatentRecipe.NewVae();
        model.eval(); vae.eval();
        vae.UseScalingFactor(0.5);
        return (model, vae);
    }

    static Scheduler Ddim() => new DdimScheduler(new SchedulerConfig { BetaSchedule = "scaled_linear" });

    [Fact]
    public void Samples_equal_the_loop_written_out_and_decode_by_the_configs_scale()
    {
        var (model, vae) = Models();
        var labels = tensor(new long[] { 1, 7, 9 });
        var output = new LatentDiffusionPipeline(model, vae, Ddim).Generate(labels, new LatentGenerationOptions
        {
            Steps = 4, GuidanceScale = 3, Seed = 11,
        });
        // the same by hand: N(0, I) from a CPU generator seeded 11, DDIM, ε̂(∅) + 3 (ε̂(c) − ε̂(∅)), decode(z / s)
        using var g = new Generator(11);
        var noise = randn([3, 4, 7, 7], generator: g);
        var byHand = Sampling.Sample(Ddim(), (z, t) => model.Guided(z, tensor((float)t), labels, 3), noise, 4);
        Assert.True(output.Latents.allclose(byHand, rtol: 0, atol: 1e-6),
            "the pipeline's latents differ from the loop");
        using (no_grad())
        {
            var decoded = vae.Decode(byHand / 0.5).clamp(-1, 1);
            Assert.True(output.Images!.allclose(decoded, rtol: 0, atol: 1e-6),
                "decoding ignores config.scaling_factor");
        }
        Assert.True(output.SamplingTime > TimeSpan.Zero);
        // batched decoding decodes the same images
        var batched = new LatentDiffusionPipeline(model, vae, Ddim).Decode(output.Latents, batchSize: 2);
        Assert.True(batched.allclose(output.Images!, rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void Guidance_doubles_the_batch_only_above_one_and_takes_negative_rows()
    {
        var (inner, _) = Models();
        var model = new Counting(inner);
        var pipeline = new LatentDiffusionPipeline(model, null, Ddim);
        var labels = tensor(new long[] { 2, 3 });
        var plain = pipeline.Generate(labels, new() { Steps = 3, GuidanceScale = 1, Seed = 1 });
        Assert.Equal(new long[] { 2, 2, 2 }, model.Batches);
        Assert.Null(plain.Images);
        model.Batches.Clear();
        var guided = pipeline.Generate(labels, new() { Steps = 3, GuidanceScale = 5, Seed = 1 });
        Assert.Equal(new long[] { 4, 4, 4 }, model.Batches);
        var negative = pipeline.Generate(labels,
            new() { Steps = 3, GuidanceScale = 5, Seed = 1, Negative = tensor(new long[] { 3, 2 }) });
        Assert.False(negative.Latents.allclose(guided.Latents), "negative rows did not replace the null condition");
        var e = Assert.Throws<ArgumentException>(() =>
            pipeline.Generate(labels, new() { Steps = 2, GuidanceScale = 5, Negative = tensor(new long[] { 3 }) }));
        Assert.Contains("1 negative rows for 2 conditions", e.Message);
    }

    [Fact]
    public void Latent_size_callback_and_attention_recording()
    {
        var (model, vae) = Models();
        var pipeline = new LatentDiffusionPipeline(model, vae, Ddim);
        var steps = new List<double>();
        var output = pipeline.Generate(tensor(new long[] { 4 }), new()
        {
            Steps = 5, GuidanceScale = 2, Seed = 0, LatentSize = [7, 14], RecordAttention = true,
            Callback = s => steps.Add(s.Timestep),
        });
        Assert.Equal(new long[] { 1, 4, 7, 14 }, output.Latents.shape);
        Assert.Equal(new long[] { 1, 1, 28, 56 }, output.Images!.shape);
        Assert.Equal(5, steps.Count);
        using var recorder = output.Attention!;
        Assert.Equal(5, recorder.Evaluations);
        Assert.NotEmpty(recorder.Records);
        int recorded = recorder.Records.Count;
        pipeline.Generate(tensor(new long[] { 4 }), new() { Steps = 2, Seed = 0, LatentSize = [7, 14] });
        Assert.Equal(recorded, recorder.Records.Count);                         // recording stopped with the call
        var e = Assert.Throws<ArgumentException>(() =>
            pipeline.Generate(tensor(new long[] { 4 }), new() { Steps = 2, Latents = zeros(1, 4, 5, 5) }));
        Assert.Contains("latents must be [1, 4, 7, 7]", e.Message);
    }

    [Fact]
    public void Image_to_image_keeps_the_image_at_strength_zero_and_checks_its_shape()
    {
        var (model, vae) = Models();
        var pipeline = new LatentDiffusionPipeline(model, vae, Ddim);
        manual_seed(5);
        var images = rand(2, 1, 28, 28) * 2 - 1;
        var labels = tensor(new long[] { 0, 1 });
        var kept = pipeline.ImageToImage(labels, images, 0, new() { Steps = 4, Seed = 2 });
        using (no_grad())
        {
            using var g = new Generator(2);
            var posterior = vae.Encode(images);
            var x0 = posterior.Sample(randn(posterior.Mean.shape, generator: g)) * 0.5;
            Assert.True(kept.Latents.allclose(x0, rtol: 0, atol: 1e-6), "strength 0 must return the encoded image");
        }
        var changed = pipeline.ImageToImage(labels, images, 0.75, new() { Steps = 4, Seed = 2 });
        Assert.False(changed.Latents.allclose(kept.Latents));
        Assert.Throws<ArgumentOutOfRangeException>(() => pipeline.ImageToImage(labels, images, 1.5, new()));
        var e = Assert.Throws<ArgumentException>(() =>
            pipeline.ImageToImage(labels, images.narrow(0, 0, 1), 0.5, new()));
        Assert.Contains("image must be [2, 1, H, W]", e.Message);
    }
}
