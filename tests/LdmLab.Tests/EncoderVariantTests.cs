using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Runtime;
using LdmLab.Training;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Issue 28's text-encoder variants: the side-first caption grammar, the variants' configs and the
/// comparison study's takeaways.</summary>
[Collection("environment")]
public class EncoderVariantTests
{
    /// <summary>
    /// Side-first captions say the side before the noun in every clause that names one ("on the left a sneaker and
    /// on the right a bag"), leave side-less clauses alone, and parse back to the same layout as the original, for
    /// every caption of a scene set (pairs in both orders, sided and unsided single items, superclasses).
    /// </summary>
    [Fact]
    public void Side_first_captions_put_the_side_first_and_parse_back_to_the_same_layouts()
    {
        Assert.Equal("on the left a sneaker and on the right a bag",
            CaptionedFashion.SideFirst(CaptionedFashion.PairCaption(7, 8, rightFirst: false)));
        Assert.Equal("on the right an ankle boot and on the left a t-shirt",
            CaptionedFashion.SideFirst(CaptionedFashion.PairCaption(0, 9, rightFirst: true)));
        Assert.Equal("on the left a photo of a pair of trousers",
            CaptionedFashion.SideFirst("a photo of a pair of trousers on the left"));
        Assert.Equal("a small coat", CaptionedFashion.SideFirst("a small coat"));
        Assert.Equal("", CaptionedFashion.SideFirst(""));

        var scenes = CaptionedFashion.Make(FashionMnist.Load(Split.Test, limit: 100), 400, seed: 5);
        var original = CaptionedFashion.Layouts(scenes.Captions);                               // [N, 2, 10]
        var sideFirst = EncoderVariantRecipe.Captions(EncoderVariant.SideFirst, scenes.Captions);
        Assert.Equal(original.data<float>().ToArray(), CaptionedFashion.Layouts(sideFirst).data<float>().ToArray());
        int sided = 0;
        foreach (var (caption, moved) in scenes.Captions.Zip(sideFirst))
        {
            Assert.Equal(caption.Split(' ').Order(), moved.Split(' ').Order());               // the same words
            Assert.DoesNotContain(moved.Split(" and "), c => c.EndsWith("on the left") || c.EndsWith("on the right"));
            if (caption.Contains(" on the ")) { sided++; Assert.StartsWith("on the ", moved); }
            else Assert.Equal(caption, moved);
        }
        Assert.InRange(sided, 100, 399);
        // the other variants read the captions as they are
        Assert.Same(scenes.Captions, EncoderVariantRecipe.Captions(EncoderVariant.Bidirectional, scenes.Captions));
    }

    /// <summary>
    /// The variants change one thing each: the bidirectional encoder drops the causal mask (a token's state then
    /// depends on the tokens after it, which the causal one's does not); the deep one is 4 × 64 with the U-Net's
    /// cross-attention following; the others keep the recipe's configs; the keys differ, and the causal key is the
    /// shipped model's recipe.
    /// </summary>
    [Fact]
    public void Each_variant_changes_its_one_thing_and_has_its_own_key()
    {
        TorchRuntime.Setup();
        Assert.True(EncoderVariantRecipe.TextConfig(EncoderVariant.Bidirectional).Bidirectional);
        Assert.False(EncoderVariantRecipe.TextConfig(EncoderVariant.SideFirst).Bidirectional);
        Assert.Equal(TextToImageRecipe.TextConfig, EncoderVariantRecipe.TextConfig(EncoderVariant.SideFirst));
        var deep = EncoderVariantRecipe.TextConfig(EncoderVariant.Deep);
        Assert.Equal((4, 64), (deep.NumHiddenLayers, deep.HiddenSize));
        Assert.Equal(64, EncoderVariantRecipe.UNetConfig(EncoderVariant.Deep).CrossAttentionDim);
        Assert.Equal(TextToImageRecipe.UNetConfig, EncoderVariantRecipe.UNetConfig(EncoderVariant.Bidirectional));
        Assert.Equal(EncoderVariant.Deep, EncoderVariantRecipe.Named("fashion-text2img-deep"));
        Assert.Null(EncoderVariantRecipe.Named("fashion-text2img-film"));

        // the first token's state: the causal encoder cannot see what follows it, the bidirectional one does
        using var _ = no_grad();
        var a = new[] { "a sneaker on the left" };
        var b = new[] { "a sneaker on the right" };
        float FirstWordChange(EncoderVariant v)
        {
            var model = EncoderVariantRecipe.New(v, seed: 1);
            model.eval();
            var states = (Tensor ids) => model.TextEncoder.Forward(ids).LastHiddenState;         // [1, 20, 32]
            return (states(model.Tokenize(a)) - states(model.Tokenize(b)))[0, 1].abs().max().item<float>();
        }
        Assert.Equal(0f, FirstWordChange(EncoderVariant.Causal));
        Assert.True(FirstWordChange(EncoderVariant.Bidirectional) > 1e-4f);

        var latents = randn(8, 4, 7, 14);
        var captions = Enumerable.Repeat("a bag on the left", 8).ToList();
        var options = TextToImageRecipe.Options;
        var keys = EncoderVariantRecipe.All.Select(v => EncoderVariantRecipe.Key(v, latents, captions, options, 0))
            .ToList();
        Assert.Equal(keys.Count, keys.Distinct().Count());
        Assert.Equal(TextToImageRecipe.Key(latents, captions, options, 0), keys[0]);
    }

    static EncoderRow Row(string model, double bothRight, double pointing, double sidePointing = 0.6,
        long parameters = 1000) =>
        new(model, parameters, 0.06, 0.95, 0.97, bothRight, pointing, sidePointing, 0.3,
            new Dictionary<string, double> { ["down.0"] = pointing - 0.05, ["up.1"] = pointing + 0.02 });

    /// <summary>
    /// Takeaways from hand-made rows: a variant 2 σ better than causal is named as binding best; one within the
    /// noise is not; side words out-pointing the nouns are reported; side-first's word-order bullet; the goals met
    /// or not; no causal row or no variant is an error.
    /// </summary>
    [Fact]
    public void Takeaways_compare_each_encoder_against_the_causal_one_in_standard_errors()
    {
        const int n = 500;                                       // σ of a difference of two shares: √2·√(¼/500) ≈ 3.2 %
        var rows = new List<EncoderRow>
        {
            Row("causal", 0.46, 0.64, sidePointing: 0.80),
            Row("bidirectional", 0.70, 0.85),
            Row("deep", 0.48, 0.66),
            Row("side-first", 0.56, 0.75),
            new("real scenes (judge)", 0, double.NaN, 0.9, 1, 0.82, double.NaN, double.NaN, 0.4,
                new Dictionary<string, double>()),
            new("chance", 0, double.NaN, 0.1, 0.5, 0.01, 0.5, 0.5, double.NaN, new Dictionary<string, double>()),
        };
        var bullets = EncoderComparisonStudy.Takeaways(rows, n);
        Assert.Contains("More than 2 σ better than causal: bidirectional, side-first — bidirectional binds best",
            bullets[0]);
        Assert.DoesNotContain("deep,", bullets[0]);
        Assert.Contains("real scenes 82.0 %", bullets[0]);
        Assert.Contains("bidirectional 70.0 % (+24.0 points, +7.6 σ)", bullets[0]);
        Assert.Contains("bidirectional's best layer is up.1 (87.0 %)", bullets[1]);
        Assert.Contains("side words out-point the nouns (by > 2 σ) in causal:", bullets[2]);
        Assert.Contains("moves its map into that half", bullets[3]);
        Assert.Contains("met by no encoder", bullets[^1]);

        var flat = rows.Select(r => r.IsReference ? r : r with
        {
            BothRight = 0.47,
            NounPointing = 0.65,
            SideWordPointing = 0.65
        }).ToList();
        flat[1] = flat[1] with { BothRight = 0.47 + 0.06 };            // 0.06 < 2 · 3.2 %: within the noise
        var noisy = EncoderComparisonStudy.Takeaways(flat, n);
        Assert.Contains("No variant is more than 2 σ better", noisy[0]);
        Assert.Contains("In no model do the side words out-point", noisy[2]);
        Assert.Contains("does not by itself move", noisy[3]);
        var met = EncoderComparisonStudy.Takeaways(
            rows.Select(r => r.Model == "bidirectional" ? r with { BothRight = 0.85, NounPointing = 0.92 } : r)
                .ToList(), n);
        Assert.Contains("met by bidirectional.", met[^1]);

        Assert.Throws<ArgumentException>(() => EncoderComparisonStudy.Takeaways(rows.Skip(1).ToList(), n));
        Assert.Throws<ArgumentException>(() => EncoderComparisonStudy.Takeaways(rows.Take(1).ToList(), n));
    }
}

/// <summary>Issue 28's encoder variants as shipped checkpoints.</summary>
[Collection("environment")]
[Trait("Category", "Slow")]
public class ShippedEncoderVariantTests
{
    static T Full<T>(Func<T> f) => TestPaths.WithSettings(s => s with { Profile = Profile.Full }, f);

    /// <summary>
    /// For each variant: hash; recipe key (variant, configs, full-profile options, seed, the shipped VAE's latents of
    /// the 60,000 scenes, the variant's captions); the quick profile loading it with its whole loss log (the loss
    /// fell); and the recipe's first five steps from seed 0 reproducing the shipped run's first five losses
    /// (relative 1e-4) — with only the latents those steps draw encoded (≤ 320 of the 60,000), the rest zero.
    /// </summary>
    [Fact]
    public void The_shipped_encoder_variants_are_their_recipes_and_their_first_steps_reproduce()
    {
        TorchRuntime.Setup();
        var vae = AutoencoderKL.FromPretrained(ShippedCheckpoint.Find(FashionLatentRecipe.ShippedVae)!.Dir);
        vae.eval();
        var train = FashionMnist.Load(Split.Train);
        var scenes = Full(() => TextToImageRecipe.Scenes(train));
        Assert.Equal(60000, scenes.Count);
        var options = Full(() => TextToImageRecipe.Options);
        var origin = FashionLatentRecipe.LatentOrigin(vae, scenes.Images, vae.Config.ScalingFactor);
        int steps = 5;
        var rows = LatentDiffusionTrainer.RowsDrawn(scenes.Count, options with { Seed = 0 }, steps);
        Assert.InRange(rows.Length, 1, steps * options.BatchSize);
        var some = FashionLatentRecipe.ScaledLatents(vae, scenes.Images.index_select(0, tensor(rows))).latents;
        var latents = zeros(scenes.Count, 4, 7, 14).index_copy_(0, tensor(rows), some);       // [60000, 4, 7, 14]
        foreach (var variant in EncoderVariantRecipe.All.Where(v => v != EncoderVariant.Causal))
        {
            var name = EncoderVariantRecipe.ShippedName(variant);
            var shipped = ShippedCheckpoint.Find(name)
                ?? throw new InvalidOperationException($"data/checkpoints/{name} is missing from this checkout");
            shipped.Verify();
            var captions = EncoderVariantRecipe.Captions(variant, scenes.Captions);
            Assert.Equal(EncoderVariantRecipe.Key(variant, origin, captions, options, 0), shipped.RecipeKey);
            Assert.Equal(options.Steps, shipped.Steps);
            var used = TestPaths.WithSettings(s => s with { Profile = Profile.Quick },
                () => EncoderVariantRecipe.Load(variant, train, vae));
            Assert.StartsWith($"loaded checkpoint data/checkpoints/{name}", used.Source);
            Assert.Equal(EncoderVariantRecipe.TextConfig(variant), used.Model.TextEncoder.Config);
            Assert.Equal(shipped.Steps, used.Log.Losses.Count);
            Assert.True(used.Log.Losses.TakeLast(100).Average() < 0.5 * used.Log.Losses.Take(10).Average(),
                $"{name}: the shipped run's loss fell");

            Assert.Equal(steps, shipped.FirstLosses.Count);
            var (_, log) = EncoderVariantRecipe.Train(variant, latents, scenes.Captions,
                options with { Steps = steps, Seed = 0 });
            ShippedReplay.AssertFirstLosses(shipped.FirstLosses, log.Losses, name);
        }
    }
}
