using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using LdmLab.Training;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>The conditioning methods of section 10.3.3 (notebook 05): layouts from captions, the U-Net options they
/// need (projection class embedding, attention-free mid block, per-level adapters), and each method's model.</summary>
[Collection("environment")]
public class ConditioningVariantsTests
{
    [Fact]
    public void A_caption_gives_the_layout_it_describes()
    {
        var pair = CaptionedFashion.Layout("a sneaker on the left and a bag on the right");
        Assert.Equal(1f, pair[0, 7]);
        Assert.Equal(1f, pair[1, 8]);
        Assert.Equal(2f, Sum(pair));
        var unsided = CaptionedFashion.Layout("a photo of a t-shirt");                   // not "shirt"
        Assert.Equal(0.5f, unsided[0, 0]);
        Assert.Equal(0.5f, unsided[1, 0]);
        Assert.Equal(0f, unsided[0, 6]);
        var shoe = CaptionedFashion.Layout("a shoe on the right");
        foreach (int c in new[] { 5, 7, 9 }) Assert.Equal(1f / 3, shoe[1, c], 6);
        Assert.Equal(0f, shoe[0, 5]);
        var trousers = CaptionedFashion.Layout("an ankle boot on the right and a pair of trousers on the left");
        Assert.Equal(1f, trousers[0, 1]);
        Assert.Equal(0f, Sum(CaptionedFashion.Layout("")));
        var error = Assert.Throws<ArgumentException>(() => CaptionedFashion.Layout("a dog on the left"));
        Assert.Contains("a dog on the left", error.Message);

        // every caption the data makes: the slot that holds the item has weight on its class, the other slot has
        // weight only when the caption names no side
        TorchRuntime.Setup();
        var scenes = CaptionedFashion.Make(FashionMnist.Load(Split.Test, limit: 200), 300, seed: 2);
        var layouts = CaptionedFashion.Layouts(scenes.Captions);                               // [300, 2, 10]
        Assert.Equal(new long[] { 300, 2, 10 }, layouts.shape);
        for (int i = 0; i < 300; i++)
            foreach (var side in new[] { Side.Left, Side.Right })
            {
                long label = scenes.LabelAt(i, side);
                float weight = layouts[i, (int)side].sum().item<float>();
                if (label >= 0) Assert.True(layouts[i, (int)side, label].item<float>() > 0, scenes.Captions[i]);
                else if (scenes.Captions[i].Contains(" on the ")) Assert.Equal(0f, weight);
            }
    }

    static float Sum(float[,] values) => values.Cast<float>().Sum();

    [Fact]
    public void A_layout_map_puts_each_slot_in_its_half()
    {
        var slots = zeros(1, 2, 10);
        slots[0, 0, 3] = tensor(1f);
        slots[0, 1, 8] = tensor(1f);
        var map = LayoutConditionedUNet.Rasterise(slots, 7, 14);                               // [1, 10, 7, 14]
        Assert.Equal(new long[] { 1, 10, 7, 14 }, map.shape);
        Assert.Equal(49f, map[0, 3, .., ..7].sum().item<float>());
        Assert.Equal(0f, map[0, 3, .., 7..].sum().item<float>());
        Assert.Equal(49f, map[0, 8, .., 7..].sum().item<float>());
        Assert.Equal(98f, map.sum().item<float>());
        var coarse = LayoutConditionedUNet.Rasterise(slots, 4, 7);                            // odd width: 3 | 4
        Assert.Equal(12f, coarse[0, 3].sum().item<float>());
        Assert.Equal(16f, coarse[0, 8].sum().item<float>());
    }

    /// <summary>The U-Net options the methods use: diffusers' state-dict names, a config that round-trips, and
    /// errors that name what is unsupported.</summary>
    [Fact]
    public void The_unet_takes_a_projected_vector_and_an_attention_free_mid_block()
    {
        TorchRuntime.Setup();
        var config = TextToImageRecipe.UNetConfigFor(ConditioningMethod.Film);
        var unet = new UNet2DConditionModel(config);
        var keys = unet.state_dict().Keys.ToList();
        Assert.Contains("class_embedding.linear_1.weight", keys);
        Assert.Contains("mid_block.resnets.0.conv1.weight", keys);
        Assert.DoesNotContain(keys, k => k.Contains("attentions") || k.StartsWith("mid_block.resnets.1"));
        Assert.Equal(128, unet.state_dict()["down_blocks.0.resnets.0.time_emb_proj.weight"].shape[1]);
        Assert.Equal(64, unet.state_dict()["down_blocks.0.resnets.0.time_emb_proj.weight"].shape[0]);  // γ and β
        var json = config.ToJson();
        Assert.Equal("projection", json["class_embed_type"]!.ToString());
        Assert.Equal(config.ToJson().ToJsonString(), UNetConfig.FromJson(json).ToJson().ToJsonString());
        json["class_embed_type"] = "timestep";
        Assert.Contains("class_embed_type",
            Assert.Throws<NotSupportedException>(() => UNetConfig.FromJson(json)).Message);
        json["class_embed_type"] = "projection";
        json["mid_block_type"] = "UNetMidBlock2DSimpleCrossAttn";
        Assert.Contains("mid_block_type",
            Assert.Throws<NotSupportedException>(() => UNetConfig.FromJson(json)).Message);
        var noVector = Assert.Throws<ArgumentException>(() => unet.Forward(zeros(1, 4, 7, 14), tensor(10), null));
        Assert.Contains("class labels", noVector.Message);
    }

    /// <summary>
    /// Each method's model maps [B, 4, 7, 14] to [B, 4, 7, 14] and its output depends on the condition — except the
    /// adapters of addition and gating, which start at zero (the unconditional model) and depend on it once trained.
    /// </summary>
    [Fact]
    public void Each_method_reads_its_condition()
    {
        TorchRuntime.Setup();
        string[] captions =
            ["a sneaker on the left and a bag on the right", "a dress on the left and a coat on the right"];
        var zt = randn(2, 4, 7, 14);
        var t = tensor(500);
        foreach (var method in Enum.GetValues<ConditioningMethod>())
        {
            var model = TextToImageRecipe.New(method);
            var conditions = TextToImageRecipe.Conditions(model, captions);
            using var _ = no_grad();
            var a = model.Forward(zt, t, conditions);
            var b = model.Forward(zt, t, conditions.flip(0));
            Assert.Equal(new long[] { 2, 4, 7, 14 }, a.shape);
            double change = (a - b).abs().max().item<float>();                  // same z_t, other captions
            if (method is ConditioningMethod.Addition or ConditioningMethod.Gating)
            {
                Assert.True(change == 0, $"{method}: zero-initialised adapters already read the layout ({change})");
                foreach (var (name, p) in model.named_parameters().Where(p => p.name.StartsWith("layout_adapters")))
                    p.normal_(0, 0.1);
                change = (model.Forward(zt, t, conditions) - model.Forward(zt, t, conditions.flip(0)))
                    .abs().max().item<float>();
            }
            Assert.True(change > 1e-4, $"{method}: the output ignores the condition ({change})");
            // classifier-free guidance with the method's null condition runs and is the conditional output at w = 1
            var guided = model.Guided(zt, t, conditions, 1.0);
            Assert.True(guided.allclose(model.Forward(zt, t, conditions)));
            Assert.Equal(new long[] { 2, 4, 7, 14 }, model.Guided(zt, t, conditions, 5.0).shape);
        }
    }

    /// <summary>Every method trains with condition dropout on its own rows (ids or layouts), and recipe keys keep
    /// the methods apart; the cross-attention key is the one it had before the methods existed (the shipped
    /// model's test checks that value).</summary>
    [Fact]
    public void Every_method_trains_and_has_its_own_key()
    {
        TorchRuntime.Setup();
        var scenes = CaptionedFashion.Make(FashionMnist.Load(Split.Test, limit: 64), 64, seed: 3);
        var latents = randn(64, 4, 7, 14);
        var options = new TrainerOptions { Steps = 30, BatchSize = 16, LearningRate = 1e-3, WarmupSteps = 2 };
        var keys = new HashSet<string>();
        foreach (var method in Enum.GetValues<ConditioningMethod>())
        {
            var (model, log) = TextToImageRecipe.Train(method, latents, scenes.Captions, options);
            Assert.Equal(30, log.Losses.Count);
            Assert.All(log.Losses, l => Assert.True(double.IsFinite(l)));
            Assert.False(model.training);
            keys.Add(TextToImageRecipe.Key(latents, scenes.Captions, options, 0, method));
        }
        Assert.Equal(5, keys.Count);
        Assert.Equal("fashion-text2img-concatenation", TextToImageRecipe.ShippedName(ConditioningMethod.Concatenation));
    }

    /// <summary>The generic generation path draws, for the cross-attention model, what the pipeline draws for the
    /// same seed; placement is judged by where the ink is.</summary>
    [Fact]
    public void Generation_through_guided_equals_the_pipeline()
    {
        TorchRuntime.Setup();
        var model = TextToImageRecipe.New();
        var vae = new Autoencoders.AutoencoderKL(FashionLatentRecipe.VaeConfig);
        vae.eval();
        var prompts = TextToImageStudies.SidedPrompts(4);
        var generic = TextToImageStudies.Generate(model, vae, prompts, steps: 3, guidance: 3, seed: 5, batchSize: 2);
        var piped = TextToImageStudies.Generate(TextToImageRecipe.Pipeline(model, vae), prompts, steps: 3, guidance: 3,
            seed: 5, batchSize: 2);
        Assert.Equal(new long[] { 4, 1, 28, 56 }, generic.shape);
        Assert.True((generic - piped).abs().max().item<float>() < 1e-4);
        Assert.Equal([Side.Left, Side.Left, Side.Left, Side.Left], prompts.Select(p => p.NamedSide!.Value));
        Assert.Contains("on the left", prompts[0].Text);
        var canvases = full(2, 1, 28, 56, -1f);
        canvases[0, .., .., 30..40] = tensor(1f);
        canvases[1, .., .., 2..5] = tensor(1f);
        Assert.Equal([Side.Right, Side.Left], TextToImageStudies.InkedSides(canvases));
    }

    /// <summary>CLIP's encoder is causal: a noun's state cannot see "on the left" after it. The bidirectional
    /// ablation can; the flag round-trips through config.json and stays out of the JSON (and recipe keys) when
    /// off.</summary>
    [Fact]
    public void A_bidirectional_text_encoder_lets_a_noun_see_the_words_after_it()
    {
        TorchRuntime.Setup();
        var tokenizer = ClipTokenizer.Default.With(maxLength: 20);
        var ids = tokenizer.EncodeBatch(["a sneaker on the left", "a sneaker on the right"]);   // [2, 20]
        foreach (bool bidirectional in new[] { false, true })
        {
            manual_seed(1);
            var encoder = new ClipTextModel(TextToImageRecipe.TextConfig with { Bidirectional = bidirectional });
            using var _ = no_grad();
            var states = encoder.Forward(ids).LastHiddenState;                                // [2, 20, 32]
            double noun = (states[0, 2] - states[1, 2]).abs().max().item<float>();           // "sneaker"
            if (bidirectional) Assert.True(noun > 1e-4, $"the noun's state ignores the side ({noun})");
            else Assert.Equal(0.0, noun, 6);
        }
        var json = (TextToImageRecipe.TextConfig with { Bidirectional = true }).ToJson();
        Assert.True((bool)json["ldmlab_bidirectional"]!);
        Assert.True(ClipTextConfig.FromJson(json).Bidirectional);
        Assert.Null(TextToImageRecipe.TextConfig.ToJson()["ldmlab_bidirectional"]);
        Assert.DoesNotContain("Bidirectional", System.Text.Json.JsonSerializer.Serialize(TextToImageRecipe.TextConfig));
    }
}
