using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Diffusion;
using LdmLab.Runtime;
using LdmLab.Training;
using static LdmLab.Tests.ShippedReplay;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Multi-resolution training (section 10.5.1): the mixed-canvas scenes, the bucketed trainer, the study's
/// measures and takeaways.</summary>
[Collection("environment")]
public class MultiResolutionTests
{
    /// <summary>
    /// Three buckets of one size each (28×28 one item filling it, 28×56 the lab's scenes, 56×56 one large item),
    /// deterministic per seed; the small items are Fashion images unchanged; the large ones came from other sizes
    /// (recorded) and were cropped; one-item captions name no side; a 28×28 and a 56×56 image of the same aspect
    /// ratio go to different buckets.
    /// </summary>
    [Fact]
    public void Multi_size_scenes_fill_one_bucket_per_size_and_record_the_original_sizes()
    {
        TorchRuntime.Setup();
        var data = FashionMnist.Load(Split.Test, limit: 100);
        var scenes = MultiSizeFashion.Make(data, 40, seed: 1);
        var again = MultiSizeFashion.Make(data, 40, seed: 1);
        Assert.Equal(MultiSizeFashion.Buckets, scenes.Select(b => b.Size));
        Assert.Equal(new long[] { 10, 20, 10 }, scenes.Select(b => b.Count));
        for (int k = 0; k < scenes.Count; k++)
        {
            var b = scenes[k];
            Assert.Equal(new long[] { b.Count, 1, b.Size.Height, b.Size.Width }, b.Images.shape);
            Assert.Equal(b.Count, b.Captions.Count);
            Assert.Equal(b.Count, b.OriginalSizes.Length);
            Assert.True(b.Images.equal(again[k].Images).all().item<bool>());
            Assert.Equal(b.Captions, again[k].Captions);
            Assert.True(b.Images.min().item<float>() >= -1 && b.Images.max().item<float>() <= 1);
        }
        var (small, pair, large) = (scenes[0], scenes[1], scenes[2]);
        Assert.All(small.Captions.Concat(large.Captions), c => Assert.DoesNotContain(" on the ", c));
        for (int i = 0; i < small.Count; i++)                          // an unchanged Fashion item of its class
        {
            var same = (data.Images - small.Images[i]).abs().sum([1, 2, 3]).eq(0);                 // [100]
            Assert.True(same.any().item<bool>(), $"small scene {i} is not a Fashion image");
            Assert.Contains(data.Labels.masked_select(same).data<long>().ToArray(),
                l => l == small.SlotLabels[i, 0].item<long>());
        }
        Assert.Equal(new long[] { pair.Count, 2 }, pair.SlotLabels.shape);
        Assert.Contains(large.OriginalSizes, s => s != (56, 56));
        Assert.Contains(large.Crops, c => c != (0, 0));
        Assert.All(large.OriginalSizes, s => Assert.Equal(MultiSizeFashion.Large,
            SizeBuckets.Nearest(MultiSizeFashion.Buckets, s.Height, s.Width)));
        Assert.Equal(MultiSizeFashion.Small, SizeBuckets.Nearest(MultiSizeFashion.Buckets, 28, 28));
        Assert.Equal(MultiSizeFashion.Large, SizeBuckets.Nearest(MultiSizeFashion.Buckets, 60, 60));
    }

    /// <summary>Records the latent batch shapes a denoiser is trained on.</summary>
    sealed class Shapes : ConditionalDenoiser
    {
        readonly ClassConditionedUNet inner;
        public readonly List<long[]> Seen = [];

        public Shapes(ClassConditionedUNet inner) : base(nameof(Shapes))
        {
            this.inner = inner;
            RegisterComponents();
        }

        public override LdmLab.UNet.UNet2DConditionModel Backbone => inner.Backbone;
        public override Tensor NullCondition => inner.NullCondition;
        public override Tensor Forward(Tensor zt, Tensor t, Tensor c)
        {
            Seen.Add(zt.shape);
            return inner.Forward(zt, t, c);
        }
    }

    static (Shapes model, LatentDiffusionTrainer trainer) Trainer(int steps)
    {
        TorchRuntime.Setup();
        manual_seed(4);
        var model = new Shapes(FashionLatentRecipe.NewDenoiser());
        var options = new TrainerOptions { Steps = steps, BatchSize = 99, WarmupSteps = 2, EmaDecay = 0.9, Seed = 3 };
        var objective = new DiffusionObjective(NoiseSchedule.ScaledLinear());
        return (model, new LatentDiffusionTrainer(model, objective, options));
    }

    static LatentBucket[] TwoSizes()
    {
        var gen = new Generator(11);
        return
        [
            new(randn([12, 4, 7, 7], generator: gen), randint(0, 10, [12], generator: gen), 4),
            new(randn([6, 4, 7, 14], generator: gen), randint(0, 10, [6], generator: gen), 2),
        ];
    }

    /// <summary>
    /// Every training batch is one bucket's size with that bucket's batch (never mixed), both buckets are drawn,
    /// the draw is the one <see cref="LatentDiffusionTrainer.DrawBatch"/> makes from the step's generator, and a
    /// run stopped at a step and continued gives the losses of an uninterrupted one.
    /// </summary>
    [Fact]
    public void Bucketed_training_batches_never_mix_sizes_and_a_continued_run_equals_one_run()
    {
        var (model, trainer) = Trainer(8);
        var buckets = TwoSizes();
        var whole = trainer.Train(buckets);
        Assert.Equal(8, model.Seen.Count);
        Assert.All(model.Seen, s => Assert.True(s.SequenceEqual(new long[] { 4, 4, 7, 7 }) ||
                                                s.SequenceEqual(new long[] { 2, 4, 7, 14 }),
            $"[{string.Join(", ", s)}] is not one bucket's batch"));
        Assert.Equal(2, model.Seen.Select(s => s[3]).Distinct().Count());
        var expected = Enumerable.Range(1, 8).Select(step =>
        {
            using var gen = TrainingLoop.StepGenerator(3, step);
            return LatentDiffusionTrainer.DrawBatch([12, 6], [4, 2], gen).bucket;
        });
        Assert.Equal(expected.Select(b => b == 0 ? 7L : 14L), model.Seen.Select(s => s[3]));
        Assert.All(whole.Losses, l => Assert.True(double.IsFinite(l)));

        var (_, stepwise) = Trainer(8);
        stepwise.Train(buckets, untilStep: 3);
        var continued = stepwise.Train(buckets);
        Assert.Equal(whole.Losses, continued.Losses);
        Assert.Throws<ArgumentOutOfRangeException>(() => stepwise.Train(buckets, untilStep: 9));
        Assert.Throws<ArgumentException>(() => Trainer(2).trainer.Train(
            [new LatentBucket(zeros(3, 4, 7, 7), zeros(2, dtype: ScalarType.Int64), 2)]));
    }

    /// <summary>DrawBatch picks buckets in proportion to their sizes and indices inside the picked bucket.</summary>
    [Fact]
    public void Draws_pick_buckets_in_proportion_to_their_counts()
    {
        TorchRuntime.Setup();
        var picked = new int[3];
        for (int s = 0; s < 2000; s++)
        {
            using var gen = new Generator((ulong)s);
            var (bucket, idx) = LatentDiffusionTrainer.DrawBatch([100, 300, 600], [8, 4, 2], gen);
            picked[bucket]++;
            Assert.Equal(new[] { 8L, 4, 2 }[bucket], idx.shape[0]);
            Assert.True(idx.max().item<long>() < new[] { 100L, 300, 600 }[bucket]);
        }
        Assert.InRange(picked[0], 150, 250);
        Assert.InRange(picked[1], 520, 680);
        Assert.InRange(picked[2], 1080, 1320);
    }

    /// <summary>
    /// The study's measures on real canvases the judge knows: every real 28×84 pair right and no extra item; the
    /// same canvases with the left item copied into the empty middle count about one extra item each; 28×28 items
    /// moved 18 pixels sideways (cut by the edge) are off-centre, the real ones not; on 56×56 canvases a large item
    /// counts no extra item, two small ones in its place one.
    /// </summary>
    [Fact]
    public void The_study_counts_duplicated_and_cut_items_on_hand_made_canvases()
    {
        TorchRuntime.Setup();
        var judge = ClassifierRecipe.Load(FashionMnist.Load(Split.Train, limit: 100)).Model;
        var test = FashionMnist.Load(Split.Test, limit: 1000);
        var wide = MultiResolutionStudy.Wide;
        var prompts = MultiResolutionStudy.Prompts(wide, 20);
        Assert.All(prompts, p => Assert.Equal(-1, p.Cells[1]));
        var real = MultiResolutionStudy.RealCanvases(wide, prompts, test);
        var realRow = MultiResolutionStudy.Measure("real scenes", false, judge, wide, real, prompts, TimeSpan.Zero);
        Assert.True(realRow.Accuracy >= 0.8, $"{realRow.Accuracy}");
        Assert.Equal(0, realRow.ExtraItems);
        var doubled = real.clone();
        doubled[.., .., .., 28..56] = real[.., .., .., 0..28];
        var doubledRow = MultiResolutionStudy.Measure("dup", false, judge, wide, doubled, prompts, TimeSpan.Zero);
        Assert.True(doubledRow.ExtraItems >= 0.7, $"{doubledRow.ExtraItems}");
        Assert.Equal(realRow.Accuracy, doubledRow.Accuracy);

        var small = MultiResolutionStudy.Small;
        var singles = MultiResolutionStudy.Prompts(small, 20);
        var items = MultiResolutionStudy.RealCanvases(small, singles, test);
        var cut = full_like(items, -1f);
        cut[.., .., .., 18..] = items[.., .., .., ..10];                          // cut by the edge
        var realSmall = MultiResolutionStudy.Measure("real", false, judge, small, items, singles, TimeSpan.Zero);
        var cutSmall = MultiResolutionStudy.Measure("cut", false, judge, small, cut, singles, TimeSpan.Zero);
        Assert.True(realSmall.OffCentre <= 0.1, $"{realSmall.OffCentre}");
        Assert.True(cutSmall.OffCentre >= 0.9, $"{cutSmall.OffCentre}");
        Assert.Throws<ArgumentException>(() =>
            MultiResolutionStudy.Measure("x", false, judge, wide, items, singles, TimeSpan.Zero));

        var large = MultiResolutionStudy.Large;                       // one large item, or two small ones instead
        var bigs = MultiResolutionStudy.RealCanvases(large, singles, test);
        var twoSmall = full_like(bigs, -1f);
        twoSmall[.., .., ..28, ..28] = items;
        twoSmall[.., .., 28.., 28..] = items;
        var realLarge = MultiResolutionStudy.Measure("real", false, judge, large, bigs, singles, TimeSpan.Zero);
        var smallPair = MultiResolutionStudy.Measure("two", false, judge, large, twoSmall, singles, TimeSpan.Zero);
        Assert.True(realLarge.ExtraItems <= 0.1, $"{realLarge.ExtraItems}");
        Assert.True(smallPair.ExtraItems >= 0.7, $"{smallPair.ExtraItems}");
        Assert.True(realLarge.Accuracy >= 0.8, $"{realLarge.Accuracy}");
    }

    [Fact]
    public void Takeaways_compare_the_models_per_size_and_time_progressive_against_direct_training()
    {
        MultiResRow Row(string model, bool seen, double accuracy, double extra, double off, double ms) =>
            new(model, 28, 84, seen, 50, accuracy, extra, off, ms);
        var rows = new[]
        {
            Row("real scenes", true, 0.96, 0, 0.02, 0), Row("fixed 28×56", false, 0.20, 0.9, 0.4, 30),
            Row("multi-resolution", false, 0.50, 0.1, 0.1, 31),
            new MultiResRow("multi-resolution", 28, 28, true, 50, 0.9, 0, 0, 10),
        };
        CurvePoint P(string s, int step, double sec, double loss) => new(s, step, sec, loss);
        var curves = new[]
        {
            P("direct", 0, 0, 1.0), P("direct", 100, 10, 0.5), P("direct", 200, 20, 0.3),
            P("progressive", 0, 0, 1.0), P("progressive", 100, 5, 0.6), P("progressive", 200, 15, 0.3),
        };
        var bullets = MultiResolutionStudy.Takeaways(rows, curves);
        Assert.Equal(3, bullets.Count);
        Assert.Contains("28×84 (unseen by the fixed model, unseen by the multi-resolution one)", bullets[0]);
        Assert.Contains("more canvases right (50 % against 20 %)", bullets[0]);
        Assert.Contains("extra items per canvas 0.10 against 0.90", bullets[0]);
        Assert.Contains("off-centre items 10 % against 40 %", bullets[0]);
        Assert.Contains("real canvases: 96 %, 0.00, 2 %", bullets[0]);
        Assert.Contains("from 10 ms at 28×28 to 31 ms at 28×84: 3.1× for 3× the pixels", bullets[1]);
        Assert.Contains("held-out loss 0.3000 after 20 s; progressive reaches it after 15 s against 20 s direct " +
                        "(0.75× the time)", bullets[2]);
        var slow = curves.Take(3).Concat([P("progressive", 0, 0, 1.0), P("progressive", 200, 12, 0.4)]).ToArray();
        Assert.Contains("progressive does not reach it within its 12 s (final loss 0.4000)",
            MultiResolutionStudy.Takeaways(rows, slow)[2]);
        Assert.Equal(15, MultiResolutionStudy.SecondsTo(curves.Skip(3).ToList(), 0.3)!.Value, 9);
        Assert.Equal(2.5, MultiResolutionStudy.SecondsTo(curves.Skip(3).ToList(), 0.8)!.Value, 9);
        Assert.Empty(MultiResolutionStudy.Takeaways([rows[1]]));
    }
}

/// <summary>The multi-resolution text-to-image model of notebook 11 as a shipped checkpoint.</summary>
[Collection("environment")]
[Trait("Category", "Slow")]
public class ShippedMultiResolutionTests
{
    /// <summary>
    /// Hash; recipe key (configs, full-profile options, seed, the shipped VAE, each bucket's size, batch, images and
    /// captions); the quick profile loading it with its whole loss log (the loss fell); and the recipe's first five
    /// steps from seed 0 reproducing the shipped run's first five losses (relative 1e-4) — with only the latents
    /// those steps draw encoded (a few hundred of the 60,000), so the replay costs seconds.
    /// </summary>
    [Fact]
    public void The_shipped_multi_resolution_model_is_the_recipes_and_its_first_steps_reproduce()
    {
        TorchRuntime.Setup();
        var vae = FashionVae();
        var train = FashionMnist.Load(Split.Train);
        var scenes = Full(() => MultiResolutionRecipe.Scenes(train));
        Assert.Equal(60000, scenes.Sum(b => b.Count));
        var options = Full(() => MultiResolutionRecipe.Options);
        var shipped = Require(MultiResolutionRecipe.Shipped);
        shipped.Verify();
        Assert.Equal(MultiResolutionRecipe.Key(vae, scenes, options, 0), shipped.RecipeKey);
        Assert.Equal(options.Steps, shipped.Steps);
        var used = Quick(() => MultiResolutionRecipe.Load(train, vae));
        Assert.StartsWith($"loaded checkpoint data/checkpoints/{MultiResolutionRecipe.Shipped}", used.Source);
        Assert.Equal(shipped.Steps, used.Log.Losses.Count);
        AssertLossFell(used.Log.Losses, shipped.Name);

        int n = shipped.FirstLosses.Count;
        var rows = MultiResolutionRecipe.RowsDrawn(scenes, options, n, 0);
        Assert.InRange(rows.Sum(r => r.Length), 1, n * 128);
        var (_, log) = MultiResolutionRecipe.Train(vae, scenes, options with { Steps = n, Seed = 0 },
            onlyRows: rows);
        AssertFirstLosses(shipped.FirstLosses, log.Losses, shipped.Name);
    }
}
