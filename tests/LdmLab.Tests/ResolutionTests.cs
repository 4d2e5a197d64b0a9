using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Metrics;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Section 10.5.1: tiled VAE, the seam measure, MultiDiffusion with region prompts, AdaptiveInference and
/// size-bucketed batches.</summary>
public class ResolutionTests
{
    static AutoencoderKL Vae()
    {
        TorchRuntime.Setup();
        manual_seed(5);
        var vae = new AutoencoderKL(FashionLatentRecipe.VaeConfig);                     // f = 4, tiles of 28 px
        vae.eval();
        return vae;
    }

    static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.equal(b).all().item<bool>();

    [Fact]
    public void Tiled_decoding_equals_untiled_where_one_tile_covers_the_latent()
    {
        var vae = Vae();
        using var _ = no_grad();
        foreach (var (h, w) in new[] { (7, 7), (5, 6) })
        {
            var z = randn(2, 4, h, w);
            Assert.True(Same(vae.TiledDecode(z), vae.Decode(z)), $"{h}×{w}: tiled ≠ untiled");
            var x = rand(2, 1, 4 * h, 4 * w) * 2 - 1;
            Assert.True(Same(vae.TiledEncode(x).Mean, vae.Encode(x).Mean), $"{h}×{w}: tiled encoding ≠ untiled");
        }
        // the tiling loop itself with one tile (no short cut): the map's output unchanged
        var one = randn(1, 4, 6, 6);
        Assert.True(Same(TiledAutoencoder.Tiled(one, 8, 6, 32, 24, true, t => vae.Decode(t)), vae.Decode(one)));
    }

    [Fact]
    public void Tiled_decoding_has_f_times_the_latent_for_sizes_not_a_multiple_of_the_tile()
    {
        var vae = Vae();
        using var _ = no_grad();
        var z = randn(1, 4, 9, 13);                                        // tiles of 7, stride 5: 2 × 3 tiles
        Assert.Equal(new long[] { 1, 1, 36, 52 }, vae.TiledDecode(z).shape);
        Assert.Equal(new long[] { 1, 1, 36, 52 }, vae.TiledDecode(z, VaeTiling.For(vae.Config) with
        {
            Blend = false,
        }).shape);
        var posterior = vae.TiledEncode(rand(1, 1, 36, 52));
        Assert.Equal(new long[] { 1, 4, 9, 13 }, posterior.Mean.shape);
        Assert.Throws<ArgumentException>(() => vae.TiledDecode(z, new VaeTiling { TileSampleSize = 30 }));
    }

    [Fact]
    public void Blending_weights_sum_to_one_and_agreeing_tiles_give_the_untiled_result()
    {
        TorchRuntime.Setup();
        // every tile the same constant: any blend of weights summing to one returns it (corners blended twice too)
        var input = randn(2, 3, 17, 23);
        var constant = TiledAutoencoder.Tiled(input, 7, 5, 28, 20, true,
            t => full(t.shape[0], 1, 4 * t.shape[2], 4 * t.shape[3], 3f));
        Assert.Equal(new long[] { 2, 1, 68, 92 }, constant.shape);
        Assert.True((constant - 3).abs().max().item<float>() < 1e-5, "the blend weights do not sum to one");
        var w = TiledAutoencoder.RampWeights(8);
        Assert.True(Same((1 - w) + w, ones(8)));
        Assert.Equal(0f, w[0].item<float>());
        // a map that depends on each latent alone (nearest ×4): overlapping tiles agree, so tiling changes nothing
        Tensor Up(Tensor t) => nn.functional.interpolate(t, scale_factor: [4, 4]);
        var tiled = TiledAutoencoder.Tiled(input, 7, 5, 28, 20, true, Up);
        Assert.True(tiled.allclose(Up(input), rtol: 0, atol: 1e-5), "tiles are misplaced or cut wrongly");
        var x = randn(1, 2, 32, 20);                                       // encode direction: ÷4
        var down = TiledAutoencoder.Tiled(x, 12, 8, 3, 2, true, t => nn.functional.avg_pool2d(t, 4));
        Assert.True(down.allclose(nn.functional.avg_pool2d(x, 4), rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void Seam_measure_sees_a_step_at_a_border_and_none_in_a_smooth_image()
    {
        TorchRuntime.Setup();
        var ramp = arange(20f).reshape(1, 1, 1, 20).expand(1, 1, 8, 20).contiguous() * 0.1f;   // constant slope
        var smooth = SeamMeasure.Of(ramp, [10]);
        Assert.True(Math.Abs(smooth.Border - 0.1) < 1e-6, $"border gradient {smooth.Border}");
        Assert.True(Math.Abs(smooth.Ratio - 1) < 1e-5, $"a smooth slope reads {smooth.Ratio}");
        var stepped = ramp.clone();
        stepped.narrow(3, 10, 10).add_(2f);                                 // a jump of 2 between columns 9 and 10
        var seam = SeamMeasure.Of(stepped, [10], reference: ramp);
        Assert.True(seam.Ratio > 5, $"a step of 2 on a slope of 0.1 reads {seam.Ratio}");
        Assert.Throws<ArgumentOutOfRangeException>(() => SeamMeasure.Of(ramp, [20]));
    }

    static ClassConditionedUNet Denoiser()
    {
        TorchRuntime.Setup();
        manual_seed(3);
        var model = FashionLatentRecipe.NewDenoiser();                                   // 4 × 7 × 7 latents
        model.eval();
        return model;
    }

    static SchedulerConfig Config => new() { BetaSchedule = "scaled_linear" };

    [Fact]
    public void One_window_and_one_full_region_equal_plain_sampling_for_every_kind_of_scheduler()
    {
        var model = Denoiser();
        var labels = tensor(new long[] { 1, 8 });
        Denoiser guided = (z, t) => model.Guided(z, tensor((float)t), labels, 3);
        Func<Scheduler>[] kinds =
        [
            () => new DdimScheduler(Config), () => new EulerScheduler(Config with { TimestepSpacing = "linspace" }),
            () => new DpmSolverMultistepScheduler(Config with { TimestepSpacing = "linspace" }),
        ];
        foreach (var kind in kinds)
        {
            var noise = randn(2, 4, 7, 7, generator: new Generator(4));
            var plain = Sampling.Sample(kind(), guided, noise, 4);
            var window = new WindowLayout(7, 7, 1).Place(7, 7);
            Assert.Single(window);
            var multi = MultiDiffusion.Sample(kind, guided, noise, 4, window);
            Assert.True(multi.allclose(plain, rtol: 0, atol: 1e-6), $"{kind().GetType().Name}: differs from plain");
            // two complementary regions with the same prompt are the same image again
            var halves = MultiDiffusion.ColumnMasks(7, 7, 2);
            var split = MultiDiffusion.Sample(kind, [new(guided, halves[0]), new(guided, halves[1])], noise, 4, window);
            Assert.True(split.allclose(plain, rtol: 0, atol: 1e-6), "mask-weighted averaging is off");
        }
    }

    [Fact]
    public void Overlapping_windows_of_a_pixelwise_denoiser_equal_the_whole_canvas_and_regions_draw_their_own()
    {
        TorchRuntime.Setup();
        Denoiser pixelwise = (z, _) => z * 0.3;                      // no neighbours: every window agrees
        var noise = randn(1, 4, 7, 20, generator: new Generator(2));
        var whole = Sampling.Sample(new DdimScheduler(Config), pixelwise, noise, 5);
        var windows = new WindowLayout(7, 7, 3).Place(7, 20);
        var multi = MultiDiffusion.Sample(() => new DdimScheduler(Config), pixelwise, noise, 5, windows);
        Assert.True(multi.allclose(whole, rtol: 0, atol: 1e-5));
        // region prompts: a denoiser that pulls towards +1 on the left region, one towards −1 on the right
        Denoiser Towards(float target) => (z, t) => z - target * 0.5;        // ε̂ that makes x̂_0 drift to target
        var masks = MultiDiffusion.ColumnMasks(7, 20, 2);
        var drawn = MultiDiffusion.Sample(() => new DdimScheduler(Config),
            [new(Towards(1), masks[0]), new(Towards(-1), masks[1])], noise, 5, windows);
        var left = MultiDiffusion.Sample(() => new DdimScheduler(Config), Towards(1), noise, 5, windows);
        var right = MultiDiffusion.Sample(() => new DdimScheduler(Config), Towards(-1), noise, 5, windows);
        Assert.True(drawn.narrow(3, 0, 10).allclose(left.narrow(3, 0, 10), rtol: 0, atol: 1e-5));
        Assert.True(drawn.narrow(3, 10, 10).allclose(right.narrow(3, 10, 10), rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void Bootstrapping_shows_each_region_the_noised_background_outside_its_mask_for_its_steps()
    {
        TorchRuntime.Setup();
        var seen = new List<Tensor>();
        Denoiser recording = (z, _) =>
        {
            seen.Add(z.clone().DetachFromDisposeScope());
            return z * 0.1;
        };
        Denoiser other = (z, _) => z * 0.1;
        var noise = randn(1, 4, 7, 14, generator: new Generator(6));
        var background = full(1, 4, 7, 14, 0.7f);
        var masks = MultiDiffusion.ColumnMasks(7, 14, 2);
        var windows = new WindowLayout(7, 14, 14).Place(7, 14);
        MultiDiffusion.Sample(() => new DdimScheduler(Config), [new(recording, masks[0]), new(other, masks[1])],
            noise, 3, windows, bootstrap: new RegionBootstrap(background, 1));
        Assert.Equal(3, seen.Count);
        var reference = new DdimScheduler(Config);
        reference.SetTimesteps(3);
        var behind = Sampling.NoisedTo(reference, background, noise, 0);
        Assert.True(seen[0].narrow(3, 7, 7).allclose(behind.narrow(3, 7, 7), rtol: 0, atol: 1e-6),
            "step 0: the right half is not the noised background");
        Assert.True(seen[0].narrow(3, 0, 7).allclose(noise.narrow(3, 0, 7), rtol: 0, atol: 1e-6),
            "step 0: the region's own half is not x_T");
        var later = Sampling.NoisedTo(reference, background, noise, 1);
        Assert.False(seen[1].narrow(3, 7, 7).allclose(later.narrow(3, 7, 7), rtol: 0, atol: 1e-3),
            "after the bootstrap steps the region should see the canvas itself");
        Assert.Throws<ArgumentException>(() => MultiDiffusion.Sample(() => new DdimScheduler(Config),
            [new(other, masks[0]), new(other, masks[1])], noise, 3, windows,
            bootstrap: new RegionBootstrap(zeros(1, 4, 7, 7), 1)));
    }

    [Fact]
    public void Region_masks_that_leave_latents_uncovered_are_refused_naming_the_regions()
    {
        TorchRuntime.Setup();
        Denoiser model = (z, _) => z;
        var noise = randn(1, 4, 7, 14);
        var windows = new WindowLayout(7, 14, 14).Place(7, 14);
        var left = MultiDiffusion.ColumnMasks(7, 14, 2)[0];
        var e = Assert.Throws<ArgumentException>(() =>
            MultiDiffusion.Sample(() => new DdimScheduler(Config), [new(model, left)], noise, 2, windows));
        Assert.Equal("regions", e.ParamName);
        Assert.Contains("49 of 98", e.Message);
        var wrongShape = Assert.Throws<ArgumentException>(() =>
            MultiDiffusion.Sample(() => new DdimScheduler(Config), [new(model, ones(7, 7))], noise, 2, windows));
        Assert.Equal("regions", wrongShape.ParamName);
        var masks = MultiDiffusion.ColumnMasks(7, 15, 3);
        Assert.True(Same(masks.sum([0]), ones(7, 15)), "column masks do not tile the canvas");
    }

    [Theory]
    [InlineData(7, 14, 7, 14, 2)]
    [InlineData(7, 28, 7, 14, 7)]
    [InlineData(7, 31, 7, 14, 4)]
    [InlineData(20, 33, 8, 8, 3)]
    [InlineData(5, 5, 8, 8, 1)]
    public void Window_placement_covers_every_latent(int height, int width, int wh, int ww, int stride)
    {
        var windows = new WindowLayout(wh, ww, stride).Place(height, width);
        var covered = new int[height, width];
        foreach (var w in windows)
        {
            Assert.True(w.Top >= 0 && w.Left >= 0 && w.Top + w.Height <= height && w.Left + w.Width <= width);
            Assert.Equal(Math.Min(wh, height), w.Height);
            Assert.Equal(Math.Min(ww, width), w.Width);
            for (int y = w.Top; y < w.Top + w.Height; y++)
                for (int x = w.Left; x < w.Left + w.Width; x++) covered[y, x]++;
        }
        Assert.DoesNotContain(0, covered.Cast<int>());
        Assert.Equal(windows.Count, windows.Distinct().Count());
    }

    [Fact]
    public void The_pipeline_with_one_window_samples_what_Generate_samples()
    {
        var model = Denoiser();
        var pipeline = new LatentDiffusionPipeline(model, null, () => new DdimScheduler(Config));
        var labels = tensor(new long[] { 2, 5 });
        var o = new LatentGenerationOptions { Steps = 3, GuidanceScale = 2, Seed = 9 };
        var plain = pipeline.Generate(labels, o).Latents;
        var multi = pipeline.GenerateMultiDiffusion(labels, new WindowLayout(7, 7, 2), o).Latents;
        Assert.True(multi.allclose(plain, rtol: 0, atol: 1e-6));
    }

    /// <summary>Counts the latent sizes the U-Net is called at.</summary>
    sealed class Sizes : ConditionalDenoiser
    {
        readonly ClassConditionedUNet inner;
        public readonly List<(long h, long w)> Seen = [];

        public Sizes(ClassConditionedUNet inner) : base(nameof(Sizes))
        {
            this.inner = inner;
            RegisterComponents();
        }

        public override LdmLab.UNet.UNet2DConditionModel Backbone => inner.Backbone;
        public override Tensor NullCondition => inner.NullCondition;
        public override Tensor Forward(Tensor zt, Tensor t, Tensor c)
        {
            Seen.Add((zt.shape[2], zt.shape[3]));
            return inner.Forward(zt, t, c);
        }
    }

    [Fact]
    public void Adaptive_inference_goes_direct_up_to_the_window_and_tiles_above_it()
    {
        var inner = Denoiser();
        var model = new Sizes(inner);
        var vae = Vae();
        var pipeline = new LatentDiffusionPipeline(model, vae, () => new DdimScheduler(Config));
        var adaptive = new AdaptiveInference(7, 7) { Stride = 3, BaseBatchSize = 4 };
        Assert.Equal(InferencePath.Direct, adaptive.PathFor(7, 7));
        Assert.Equal(InferencePath.Direct, adaptive.PathFor(5, 7));
        Assert.Equal(InferencePath.Tiled, adaptive.PathFor(7, 8));
        Assert.Equal(4, adaptive.BatchSizeFor(7, 7));
        Assert.Equal(2, adaptive.BatchSizeFor(7, 14));
        Assert.Equal(1, adaptive.BatchSizeFor(70, 70));
        var labels = tensor(new long[] { 1, 2, 3 });
        var o = new LatentGenerationOptions { Steps = 2, GuidanceScale = 1, Seed = 1 };
        var direct = adaptive.Generate(pipeline, labels, o);
        Assert.Equal(InferencePath.Direct, direct.Path);
        Assert.All(model.Seen, s => Assert.Equal((7L, 7L), s));
        var plain = pipeline.Generate(labels.narrow(0, 0, 3), o);
        Assert.True(direct.Latents.allclose(plain.Latents, rtol: 0, atol: 1e-6));
        model.Seen.Clear();
        var wide = adaptive.Generate(pipeline, labels, o with { LatentSize = [7, 13] });
        Assert.Equal(InferencePath.Tiled, wide.Path);
        Assert.Equal(2, wide.BatchSize);
        Assert.Equal(new long[] { 3, 1, 28, 52 }, wide.Images!.shape);
        Assert.NotEmpty(model.Seen);
        Assert.All(model.Seen, s => Assert.Equal((7L, 7L), s));                  // every call at the trained window
    }

    [Fact]
    public void Bucketed_batches_never_mix_sizes_and_record_the_original_size()
    {
        TorchRuntime.Setup();
        var rng = new Random(1);
        var images = Enumerable.Range(0, 40).Select(_ => rand(1, rng.Next(10, 60), rng.Next(10, 60))).ToList();
        SizeBucket[] buckets = [new(28, 28), new(28, 56), new(56, 28), new(28, 84)];
        var batches = SizeBuckets.Batches(images, buckets, batchSize: 3, seed: 2);
        var seen = new List<int>();
        foreach (var batch in batches)
        {
            Assert.Equal(new long[] { batch.Indices.Length, 1, batch.Size.Height, batch.Size.Width },
                batch.Images.shape);
            Assert.InRange(batch.Indices.Length, 1, 3);
            for (int k = 0; k < batch.Indices.Length; k++)
            {
                var source = images[batch.Indices[k]];
                Assert.Equal(batch.Size, SizeBuckets.Nearest(buckets, (int)source.shape[1], (int)source.shape[2]));
                Assert.Equal(((int)source.shape[1], (int)source.shape[2]), batch.OriginalSizes[k]);
            }
            seen.AddRange(batch.Indices);
        }
        Assert.Equal(Enumerable.Range(0, 40), seen.Order());
        Assert.True(batches.Select(b => b.Size).Distinct().Count() > 1, "the fixture should span several buckets");
        // aspect ratio kept: 10 × 30 scaled by 0.8 to 8 × 24, the middle 16 columns kept
        var wide = arange(30f).reshape(1, 1, 30).expand(1, 10, 30).contiguous();
        var (fitted, top, left) = SizeBuckets.ResizeAndCrop(wide, new SizeBucket(8, 16));
        Assert.Equal(new long[] { 1, 8, 16 }, fitted.shape);
        Assert.Equal((0, 4), (top, left));
        var expected = nn.functional.interpolate(wide.unsqueeze(0), size: [8, 24], mode: InterpolationMode.Bilinear,
            align_corners: false)[0].narrow(2, 4, 16);
        Assert.True(fitted.allclose(expected));
    }

    [Fact]
    public void Region_texts_name_each_item_for_its_half()
    {
        var prompt = new ScenePrompt("a bag on the right and an ankle boot on the left", 9, 8);
        Assert.Equal(("an ankle boot on the left", "a bag on the right"),
            ResolutionStudy.RegionTexts(prompt, RegionPromptForm.Sided));
        Assert.Equal(("an ankle boot", "a bag"), ResolutionStudy.RegionTexts(prompt, RegionPromptForm.Bare));
        Assert.Equal(("an ankle boot on the left and an ankle boot on the right",
            "a bag on the left and a bag on the right"), ResolutionStudy.RegionTexts(prompt, RegionPromptForm.Doubled));
        Assert.Throws<ArgumentException>(() => ResolutionStudy.RegionTexts(new ScenePrompt("a bag", 8, -1),
            RegionPromptForm.Sided));
    }

    [Fact]
    public void Takeaways_are_computed_from_the_rows()
    {
        var rows = new[]
        {
            new ResolutionRow("plain caption", 28, 56, 100, 0.46, 0.7, new SeamReport(0.02, 0.1), 10),
            new ResolutionRow("region prompts (sided)", 28, 56, 100, 0.83, 0.9, new SeamReport(0.05, 0.1), 20),
            new ResolutionRow("region prompts (bare)", 28, 56, 100, 0.60, 0.8, new SeamReport(0.3, 0.1), 20),
            new ResolutionRow("panorama, blended windows (stride 7)", 28, 112, 20, 0.4, 0.75,
                new SeamReport(0.04, 0.1), 60),
            new ResolutionRow("panorama, abutting windows", 28, 112, 20, 0.3, 0.7, new SeamReport(0.08, 0.1), 20),
        };
        var tiled = new TiledDecodeReport(28, 112, 0.01, 0.005, new SeamReport(0.105, 0.1),
            new SeamReport(0.3, 0.1), new SeamReport(0.1, 0.1));
        var bullets = ResolutionStudy.Takeaways(rows, tiled);
        Assert.Equal(4, bullets.Count);
        Assert.StartsWith("region prompts (sided): both items right in 83 %", bullets[0]);
        Assert.Contains("46 %", bullets[0]);
        Assert.Contains("meets the 80 %", bullets[0]);
        Assert.Contains("0.50×", bullets[1]);
        Assert.Contains("no seam", bullets[1]);
        Assert.Contains("more slots as asked (75 % against 70 %", bullets[2]);
        Assert.Contains("3.0× the time", bullets[2]);
        Assert.Contains("1.05×", bullets[3]);
        Assert.Contains("within the 10 %", bullets[3]);
        Assert.Contains("3.00× with the overlaps cut", bullets[3]);
        Assert.Contains("1.05× what the untiled image has at the same borders: the blend adds no seam", bullets[3]);
        var seamy = ResolutionStudy.Takeaways([], tiled with { Blended = new SeamReport(0.2, 0.1) });
        Assert.Contains("beyond the 10 %", seamy[0]);
        Assert.Contains("the blend leaves a seam", seamy[0]);
        var cost = ResolutionStudy.Takeaways([], decodeCost:
        [
            new DecodeCostRow(112, 112, 10 << 20, 8 << 20, 50, 60),
            new DecodeCostRow(448, 448, 900 << 20, 30 << 20, 900, 1800),
        ]);
        Assert.Equal("Decoding from 112×112 to 448×448 pixels, the peak memory grows from 10 MB to 900 MB untiled " +
                     "and from 8 MB to 30 MB tiled (2.0× the untiled time at the largest size).", Assert.Single(cost));
        var worse = ResolutionStudy.Takeaways([rows[0], rows[2] with { Accuracy = 0.5 }]);
        Assert.Contains("falls short of the 80 %", worse[0]);
        Assert.Contains("a seam", worse[1]);
    }
}

/// <summary>The claim notebook 11 rests on, measured on the shipped text-to-image model (quick profile).</summary>
[Trait("Category", "Slow")]
public class ShippedResolutionClaimsTests
{
    /// <summary>
    /// Over 40 two-item prompts (DDIM 20, w = 5, the same noise): region prompts with each item on both sides of its
    /// half's prompt get both items right in ≥ 80 % and ≥ 25 points above the plain caption (200 prompts measured
    /// 95 % against 48 %), with no seam at the regions' border (≤ 1.1× the ordinary gradient).
    /// </summary>
    [SkippableFact]
    public void Region_prompts_place_both_items_where_the_plain_caption_does_not()
    {
        TorchRuntime.Setup();
        Skip.If(ShippedCheckpoint.Find(TextToImageRecipe.Shipped) is null, "no shipped checkpoints here");
        var (plain, regions) = TestPaths.WithSettings(s => s with { Profile = Profile.Quick }, () =>
        {
            var train = FashionMnist.Load(Split.Train, limit: 4000);
            var vae = FashionLatentRecipe.Vae(train.Images).Vae;
            var judge = ClassifierRecipe.Load(train).Model;
            var model = TextToImageRecipe.Load(train, vae).Model;
            var prompts = TextToImageStudies.PairPrompts(40, seed: 7);
            int[] border = [CaptionedScenes.Slot];
            return (ResolutionStudy.Measure("plain caption", judge, prompts, border,
                    () => TextToImageStudies.Generate(model, vae, prompts, ResolutionStudy.Steps,
                        ResolutionStudy.Guidance)).row,
                ResolutionStudy.Measure("region prompts", judge, prompts, border,
                    () => ResolutionStudy.GenerateRegions(model, vae, prompts, RegionPromptForm.Doubled)).row);
        });
        Assert.True(regions.Accuracy >= 0.8 && regions.Accuracy >= plain.Accuracy + 0.25,
            $"region prompts {regions.Accuracy:P1}, plain {plain.Accuracy:P1}");
        Assert.True(regions.Seam.Ratio <= 1.1, $"seam {regions.Seam.Ratio:F2}× the ordinary gradient");
    }
}
