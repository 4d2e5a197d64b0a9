using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using LdmLab.Training;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>The text-to-image lab's parts: captioned scenes, condition dropout on prompt rows, the text-conditioned
/// model.</summary>
[Collection("environment")]
public class TextToImageTests
{
    /// <summary>
    /// Scenes are deterministic per seed; each slot holds exactly the source item or background; captions name the
    /// classes (or a superclass) and, for two items, both sides; the masks are the items' pixels inside their slots.
    /// </summary>
    [Fact]
    public void Captioned_scenes_place_and_name_their_items()
    {
        TorchRuntime.Setup();
        var data = FashionMnist.Load(Split.Test, limit: 200);
        var scenes = CaptionedFashion.Make(data, 300, pairs: 0.5, seed: 1);
        var again = CaptionedFashion.Make(data, 300, pairs: 0.5, seed: 1);
        Assert.Equal(scenes.Captions, again.Captions);
        Assert.True(scenes.Images.equal(again.Images).all().item<bool>());
        Assert.Equal(new long[] { 300, 1, 28, 56 }, scenes.Images.shape);
        int pairs = 0;
        for (int i = 0; i < 300; i++)
        {
            long left = scenes.LabelAt(i, Side.Left), right = scenes.LabelAt(i, Side.Right);
            var caption = scenes.Captions[i];
            Assert.True(left >= 0 || right >= 0, $"scene {i} is empty");
            if (left >= 0 && right >= 0)
            {
                pairs++;
                Assert.Contains($"{CaptionedFashion.Nouns[left]} on the left", caption);
                Assert.Contains($"{CaptionedFashion.Nouns[right]} on the right", caption);
                continue;
            }
            long label = Math.Max(left, right);
            var side = left >= 0 ? Side.Left : Side.Right;
            var superclass = CaptionedFashion.Superclasses.FirstOrDefault(kv => kv.Value.Contains((int)label)).Key;
            Assert.True(caption.Contains(CaptionedFashion.Nouns[label])
                        || (superclass is not null && caption.Contains(superclass)),
                $"scene {i}: '{caption}' names neither {CaptionedFashion.Nouns[label]} nor its superclass");
            Assert.DoesNotContain(side == Side.Left ? "right" : "left", caption);
            // the empty slot is background
            var other = side == Side.Left ? Side.Right : Side.Left;
            Assert.Equal(-1f, CaptionedScenes.SlotOf(scenes.Images[i].unsqueeze(0), other).max().item<float>());
        }
        Assert.InRange(pairs, 120, 180);
        Assert.Contains(scenes.Captions, c => c.StartsWith("an ankle boot") || c.Contains(" an ankle boot"));
        Assert.DoesNotContain(scenes.Captions, c => c.Contains(" a ankle") || c.StartsWith("a ankle"));
        var masks = scenes.Masks();                                                             // [N, 2, 28, 56]
        Assert.Equal(0f, masks[.., 0, .., 28..].sum().item<float>());
        Assert.Equal(0f, masks[.., 1, .., ..28].sum().item<float>());
        int first = Enumerable.Range(0, 300).First(i => scenes.LabelAt(i, Side.Left) >= 0);
        var ink = scenes.Images[first, 0, .., ..28].gt(-0.8);
        Assert.True(masks[first, 0, .., ..28].to(ScalarType.Bool).equal(ink).all().item<bool>());
    }

    /// <summary>Condition dropout replaces whole rows of prompt ids by the null row, and only those.</summary>
    [Fact]
    public void Condition_dropout_replaces_whole_rows()
    {
        var ids = arange(8 * 5).reshape(8, 5);
        var nullRow = full(5, -1L);
        using var gen = new TorchSharp.torch.Generator(3);
        var dropped = DiffusionObjective.DropConditions(ids, 0.5, nullRow, gen);
        int replaced = 0;
        for (int i = 0; i < 8; i++)
        {
            var row = dropped[i];
            if (row.equal(nullRow).all().item<bool>()) replaced++;
            else Assert.True(row.equal(ids[i]).all().item<bool>(), $"row {i} was changed but not replaced");
        }
        Assert.InRange(replaced, 1, 7);
        Assert.True(DiffusionObjective.DropConditions(ids, 0, nullRow).equal(ids).all().item<bool>());
        // labels draw the same uniforms as before: DropLabels is DropConditions on [N]
        using var g1 = new TorchSharp.torch.Generator(9);
        using var g2 = new TorchSharp.torch.Generator(9);
        var labels = arange(100L) % 10;
        var byLabels = DiffusionObjective.DropLabels(labels, 0.3, 10, g1);
        var expected = labels.masked_fill(rand([100], generator: g2) < 0.3, 10);
        Assert.True(byLabels.equal(expected).all().item<bool>());
    }

    /// <summary>
    /// The text-conditioned model: the null condition is the empty prompt's ids; the prompt changes the output;
    /// a few training steps on prompt rows run and lower nothing to NaN; the pipeline over the same modules makes
    /// [B, 1, 28, 56] images, and recording its cross-attention keeps one map per word token.
    /// </summary>
    [Fact]
    public void Text_conditioned_model_trains_on_prompts_and_samples_through_the_pipeline()
    {
        TorchRuntime.Setup();
        var model = TextToImageRecipe.New(seed: 1);
        Assert.True(model.NullCondition.equal(model.Tokenize([""])[0]).all().item<bool>());
        var ids = model.Tokenize(["a sneaker on the left", "a bag on the right"]);               // [2, 20]
        Assert.Equal(new long[] { 2, 20 }, ids.shape);
        manual_seed(2);
        var z = randn(2, 4, 7, 14);
        using (no_grad())
        {
            var a = model.Forward(z, tensor(500L), ids);
            var b = model.Forward(z, tensor(500L), model.Tokenize(["a coat", "a dress"]));
            Assert.Equal(z.shape, a.shape);
            Assert.False(a.allclose(b), "the prompt does not reach the U-Net");
        }
        var captions = Enumerable.Range(0, 16)
            .Select(i => CaptionedFashion.PairCaption(i % 10, (i + 3) % 10, i % 2 == 0)).ToList();
        var (trained, log) = TextToImageRecipe.Train(randn(16, 4, 7, 14), captions,
            TextToImageRecipe.Options with { Steps = 3, BatchSize = 4, WarmupSteps = 1, Seed = 4 });
        Assert.Equal(3, log.Losses.Count);
        Assert.All(log.Losses, l => Assert.True(double.IsFinite(l) && l > 0));

        var vae = FashionLatentRecipe.NewVae();
        vae.eval();
        var pipeline = TextToImageRecipe.Pipeline(trained, vae);
        using var recorder = new CrossAttentionRecorder(trained, 7, 14, guidanceBatch: true);
        var output = pipeline.Generate(new Pipelines.GenerationOptions
        {
            Prompts = ["a sneaker on the left and a bag on the right"], Steps = 3, GuidanceScale = 3,
            Height = 28, Width = 56, Seed = 0,
        });
        Assert.Equal(new long[] { 1, 1, 28, 56 }, output.Images.shape);
        Assert.Equal(3, recorder.Evaluations);
        var maps = recorder.Aggregate(28, 56);                                                 // [1, 20, 28, 56]
        Assert.Equal(new long[] { 1, 20, 28, 56 }, maps.shape);
        var words = CrossAttentionRecorder.Words(trained.Tokenizer, "a sneaker on the left and a bag on the right");
        Assert.Equal(11, words.Count);
        Assert.Equal(new long[] { 1, 28, 56 }, CrossAttentionRecorder.WordMap(maps, words[1]).shape);
    }

    /// <summary>
    /// Trained from scratch in about a minute, the text path learns what the words mean: the recipe's model (text
    /// encoder and U-Net from seed 0) on the shipped VAE's latents of 4,000 single items captioned "a photo of a …",
    /// 600 steps; then 100 prompts, ten per class, judged by the shipped classifier, must reach 50 % intended-class
    /// accuracy (chance: 10 %) at guidance 5.
    /// </summary>
    [Fact]
    [Trait("Category", "Slow")]
    public void A_model_trained_from_scratch_draws_the_items_its_prompts_name()
    {
        TorchRuntime.Setup();
        var train = FashionMnist.Load(Split.Train, limit: 4000);
        var vae = AutoencoderKL.FromPretrained(ShippedCheckpoint.Find(FashionLatentRecipe.ShippedVae)!.Dir);
        vae.eval();
        var (latents, _) = FashionLatentRecipe.ScaledLatents(vae, train.Images);                 // [4000, 4, 7, 7]
        var classPrompts = TextToImageStudies.SinglePrompts(10);
        var captions = train.Labels.data<long>().Select(l => classPrompts[(int)l].Text).ToList();
        var (model, log) = TextToImageRecipe.Train(latents, captions, TextToImageRecipe.Options with
        {
            Steps = 600,
            BatchSize = 32,
            WarmupSteps = 50,
            EmaDecay = 0.99,
            Seed = 0,
        });
        Assert.True(log.Losses.TakeLast(50).Average() < 0.6 * log.Losses.Take(10).Average(), "the loss did not fall");
        var pipeline = TextToImageRecipe.Pipeline(model, vae);
        var prompts = TextToImageStudies.SinglePrompts(100);
        var output = pipeline.Generate(new Pipelines.GenerationOptions
        {
            Prompts = prompts.Select(p => p.Text).ToArray(), Steps = 20, GuidanceScale = 5,
            Height = 28, Width = 28, Seed = 0,
        });
        var judge = TestPaths.WithSettings(s => s with { Profile = Profile.Quick }, () => ClassifierRecipe.Load(train)).Model;
        var asked = tensor(prompts.Select(p => (long)p.Item).ToArray());
        double accuracy = ClassifierTraining.Accuracy(judge, output.Images * 2 - 1, asked);
        Assert.True(accuracy >= 0.5, $"intended-class accuracy {accuracy:P0} after 600 steps from scratch");
    }
}
