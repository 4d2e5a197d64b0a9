using LdmLab.Data;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Notebooks 06, 06b and 06c: their takeaways on hand-made tables, and (slow) their claims on the shipped
/// models, where they are computed.</summary>
public class SamplingStudyTests
{
    [Fact]
    public void Guidance_takeaway_names_the_best_scale_and_the_small_sample_bias()
    {
        var rows = new[]
        {
            new GuidanceRow(1, 0.62, 3.1, 1), new GuidanceRow(3, 0.93, 1.2, 2), new GuidanceRow(5, 0.97, 1.4, 2),
            new GuidanceRow(10, 0.95, 2.5, 2),
        };
        var line = SamplingStudy.GuidanceTakeaway(rows, floor: 0.6, samples: 100, featureDims: 128);
        Assert.Contains("62 % at w = 1 → 97 % at w = 5 (best)", line);
        Assert.Contains("lowest at w = 3 (1.20, 2.0× the real-vs-real floor 0.60) and 2.50 at w = 10", line);
        Assert.Contains("small-sample bias", line);
        Assert.DoesNotContain("bias", SamplingStudy.GuidanceTakeaway(rows, 0.6, samples: 1000, featureDims: 128));
    }

    [Fact]
    public void Shoe_shares_and_the_negative_prompt_takeaway()
    {
        var plain = ShoeShares.Of("none", [7, 7, 7, 5, 9, 0, 7, 5, 9, 9]);
        Assert.Equal((0.2, 0.4, 0.3), (plain.Sandal, plain.Sneaker, plain.AnkleBoot));
        Assert.Equal(0.1, plain.NotAShoe, 12);
        var without = ShoeShares.Of("\"a sneaker\"", [5, 5, 9, 5, 9, 9, 7, 5, 9, 9]);
        var line = SamplingStudy.NegativeTakeaway(plain, without);
        Assert.Contains("sneakers 40 % → 10 %, sandals 20 % → 40 %, ankle boots 30 % → 50 %", line);
        Assert.Contains("pushes away", line);
        Assert.Contains("did not halve", SamplingStudy.NegativeTakeaway(plain, plain));
    }

    [Fact]
    public void Edit_takeaway_finds_the_strength_of_half_the_effect()
    {
        var rows = new[]
        {
            new EditRow(0.2, 0.0, 0.9, 30), new EditRow(0.4, 0.1, 0.7, 22), new EditRow(0.6, 0.5, 0.3, 15),
            new EditRow(0.8, 0.8, 0.1, 12), new EditRow(1.0, 0.9, 0.0, 10),
        };
        var line = SamplingStudy.EditTakeaway(rows, "sneaker → bag");
        Assert.Contains("0 % at strength 0.2 and 90 % at 1", line);
        Assert.Contains("falls from 30.0 to 10.0 dB", line);
        Assert.Contains("half of the full effect is reached at strength 0.6", line);   // 0.5 ≥ 0.45, 0.1 is not
    }

    [Fact]
    public void Inpaint_takeaway_says_whether_the_known_region_stayed_at_the_decoder_s_bound()
    {
        var kept = SamplingStudy.InpaintTakeaway(new InpaintResult(0.92, 0.84, 22.2, 0.86, 23.1), "a bag");
        Assert.Contains("judged a bag in 92 %", kept);
        Assert.Contains("84 % (the autoencoder's own reconstruction: 86 %)", kept);
        Assert.Contains("as well as the decoder can", kept);
        var lost = SamplingStudy.InpaintTakeaway(new InpaintResult(0.92, 0.5, 15.0, 0.86, 23.1), "a bag");
        Assert.Contains("8.1 dB below it", lost);
    }

    static List<SamplerRow> SamplerTable() =>
    [
        new("DDIM", 5, 0.80, 2, 10), new("DDIM", 10, 0.90, 1.5, 20), new("DDIM", 20, 0.92, 1.2, 40),
        new("Euler", 5, 0.60, 3, 10), new("Euler", 10, 0.85, 2, 20), new("Euler", 20, 0.93, 1.1, 40),
        new("Heun", 5, 0.85, 2, 18), new("Heun", 10, 0.91, 1.4, 38), new("Heun", 20, 0.92, 1.1, 80),
    ];

    [Fact]
    public void Sampler_takeaways_spread_noise_time_and_convergence()
    {
        var lines = SamplingStudy.SamplerTakeaways(SamplerTable(), samples: 100);
        string all = string.Join("\n", lines);
        Assert.Contains("At 5 steps the samplers range from 60 % (Euler) to 85 % (Heun); at 20 steps from 92 % to 93 %",
            all);
        Assert.Contains("±5 points", all);
        Assert.Contains("Heun costs 2.0× DDIM's time per image at 20 steps", all);
        // within 5 points of its own best: Heun and DDIM by 10 steps (0.91, 0.90 vs 0.92), Euler only at 20
        Assert.Contains("by 10 steps: DDIM, Heun; by 20 steps: Euler", all);
    }

    static List<ModeRow> ModeTable() =>
    [
        new(8, 10, 0.85, 3.0, 2, 1e6, 18), new(4, 25, 0.90, 1.5, 6, 4e6, 24), new(2, 50, 0.88, 3.5, 30, 16e6, 30),
    ];

    [Fact]
    public void Quality_mode_takeaways_and_the_chapter_comparison()
    {
        var finalLoss = new Dictionary<int, double> { [2] = 0.1, [4] = 0.2, [8] = 0.3 };
        var lines = QualityModesStudy.Takeaways(ModeTable(), finalLoss, trainingSteps: 1000);
        string all = string.Join("\n", lines);
        Assert.Contains("— 15× between the ends, where the U-Net's multiply-adds differ 80×", all);
        Assert.Contains("Unlike the chapter's table", all);                        // f 8's 3.0 is not the worst
        Assert.Contains("Yet its samples have the worst Fréchet distance of the three modes (3.50)", all);
        var compared = QualityModesStudy.Compare(ModeTable(), pixelFlops: 64e6);
        Assert.Equal(["draft", "balanced", "quality"], compared.Select(c => c.Mode.Name));
        Assert.Equal(64e6 * 50 / (1e6 * 10), compared[0].SpeedUp, 9);
        Assert.Equal("16", compared[0].ChapterF);
    }
}

/// <summary>The text-to-image world of notebooks 05 and 06 as the quick profile loads it: 4,000 training images, the
/// shipped VAE, their captioned scenes and latents, the shipped text-to-image model and the judge.</summary>
static class ShippedTextToImage
{
    internal sealed record World(FashionMnist Train, LdmLab.Autoencoders.AutoencoderKL Vae, CaptionedScenes Scenes,
        Tensor Latents, LdmLab.Conditioning.TextConditionedUNet Model, FashionClassifier Judge);

    internal static World Load() => TestPaths.WithSettings(s => s with { Profile = Profile.Quick }, () =>
    {
        var train = FashionMnist.Load(Split.Train, limit: 4000);
        var vae = FashionLatentRecipe.Vae(train.Images).Vae;
        var scenes = TextToImageRecipe.Scenes(train);
        var (latents, _) = FashionLatentRecipe.ScaledLatents(vae, scenes.Images);
        return new World(train, vae, scenes, latents, TextToImageRecipe.Load(latents, scenes.Captions).Model,
            ClassifierRecipe.Load(train).Model);
    });
}

/// <summary>The claims notebooks 06 and 06c rest on, measured on the shipped models (quick profile).</summary>
[Trait("Category", "Slow")]
public class ShippedSamplingClaimsTests
{
    static T Quick<T>(Func<T> f) => TestPaths.WithSettings(s => s with { Profile = Profile.Quick }, f);

    static (SamplingStudy study, StableDiffusionPipeline pipeline) Load()
    {
        var w = ShippedTextToImage.Load();
        return (new SamplingStudy(w.Judge, w.Train.Images.narrow(0, 0, 2000)),
            TextToImageRecipe.Pipeline(w.Model, w.Vae));
    }

    /// <summary>Guided one-item prompts draw the asked class (≥ 90 % of 100 at w = 5, above w = 1); the negative
    /// prompt "a sneaker" at least halves the sneakers among 100 images of "a shoe".</summary>
    [SkippableFact]
    public void Guidance_draws_the_asked_class_and_a_negative_prompt_removes_what_it_names()
    {
        TorchRuntime.Setup();
        Skip.If(ShippedCheckpoint.Find(ClassifierRecipe.Shipped) is null, "no shipped checkpoints here");
        var (study, pipeline) = Load();
        var (rows, _) = study.Guidance(pipeline, TextToImageStudies.SinglePrompts(100), [1.0, 5.0], steps: 20, seed: 0);
        Assert.True(rows[1].Accuracy >= 0.9 && rows[1].Accuracy > rows[0].Accuracy,
            $"w = 1: {rows[0].Accuracy:P1}, w = 5: {rows[1].Accuracy:P1}");
        var (plain, negative, _, _) = study.NegativePrompt(pipeline, 100, "a sneaker", steps: 20, guidance: 5, seed: 5);
        Assert.True(negative.Sneaker < 0.5 * plain.Sneaker, $"sneakers {plain.Sneaker:P0} → {negative.Sneaker:P0}");
    }

    /// <summary>Inpainting the right slot of 100 two-item scenes with "a bag" there: ≥ 80 % judged a bag, the left
    /// items kept within 5 points of the VAE reconstruction's own rate, and the left slot within 1 dB of the
    /// reconstruction's PSNR (the blended latents keep the known region as the decoder can).</summary>
    [SkippableFact]
    public void Inpainting_replaces_the_masked_item_and_keeps_the_other()
    {
        TorchRuntime.Setup();
        Skip.If(ShippedCheckpoint.Find(ClassifierRecipe.Shipped) is null, "no shipped checkpoints here");
        var (study, pipeline) = Load();
        var w = ShippedTextToImage.Load();
        var (sources, lefts) = SamplingStudy.InpaintSources(w.Scenes, newClass: 8, count: 100);
        var (r, _) = study.Inpaint(pipeline, sources, lefts, newClass: 8, steps: 20, guidance: 5, seed: 4);
        var measured = $"bag {r.Target:P1}, left kept {r.LeftKept:P1} (reconstruction {r.ReconstructionKept:P1}), " +
                       $"left PSNR {r.LeftPsnr:F2} dB vs " +
                       $"reconstruction {r.ReconstructionPsnr:F2} dB";
        Assert.True(r.Target >= 0.8, measured);
        Assert.True(r.LeftKept >= r.ReconstructionKept - 0.05, measured);
        Assert.True(r.LeftPsnr >= r.ReconstructionPsnr - 1, measured);
    }

    /// <summary>The draft mode (f 8, 10 steps) draws recognisable items (≥ 80 % of 100 judged as asked), and the
    /// modes' U-Net cost against pixel space falls from draft to quality.</summary>
    [SkippableFact]
    public void The_draft_mode_is_recognisable_and_the_modes_cost_in_order()
    {
        TorchRuntime.Setup();
        Skip.If(ShippedCheckpoint.Find(QualityModesRecipe.ShippedDenoiser(8)) is null, "no shipped checkpoints here");
        var (draft, costs, pixelFlops) = Quick(() =>
        {
            var train = FashionMnist.Load(Split.Train, limit: 4000);
            var test = FashionMnist.Load(Split.Test, limit: 100);
            var padded = QualityModesRecipe.Pad(train.Images);
            var models = QualityModesRecipe.Factors.ToDictionary(f => f,
                f => QualityModesRecipe.Load(f, padded, train.Labels));
            var judge = ClassifierRecipe.Load(train).Model;
            var modes = new QualityModesStudy(judge, train.Images.narrow(0, 0, 2000));
            var draft = modes.Run(new Dictionary<int, QualityModesRecipe.TrainedMode> { [8] = models[8] },
                QualityModesRecipe.Pad(test.Images), 100, _ => [10]);
            var costs = QualityModesRecipe.Modes.Select(m => new ModeRow(m.F, m.Steps, 0, 0, 0,
                UNetCost.Forward(models[m.F].Denoiser.Backbone, QualityModesRecipe.Size / m.F, 1).Flops, 0)).ToList();
            var pixel = new LdmLab.UNet.UNet2DConditionModel(FashionLatentRecipe.DenoiserConfig with
            { InChannels = 1, OutChannels = 1, SampleSize = QualityModesRecipe.Size });
            return (draft, costs, UNetCost.Forward(pixel, QualityModesRecipe.Size, 1).Flops);
        });
        Assert.True(draft[0].Accuracy >= 0.8, $"draft accuracy {draft[0].Accuracy:P1}");
        var compared = QualityModesStudy.Compare(costs, pixelFlops);
        Assert.True(compared[0].SpeedUp > compared[1].SpeedUp && compared[1].SpeedUp > compared[2].SpeedUp,
            string.Join(", ", compared.Select(c => $"{c.Mode.Name} {c.SpeedUp:F1}×")));
        Assert.True(compared[2].SpeedUp > 1, "even the quality mode costs less than pixel space at 50 steps");
    }
}
