using System.Text.Json.Nodes;
using LdmLab.Interop;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>StableDiffusionPipeline: end-to-end parity with diffusers, folders, CFG rule, img2img, schedulers.</summary>
public class PipelineTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    internal static StableDiffusionPipeline Tiny()
    {
        var info = PyJson.ParseFile(Path.Combine(Fixture("tiny-pipeline"), "info.json"))!;
        var unet = LdmLab.UNet.UNet2DConditionModel.FromPretrained(Fixture("tiny-unet"));
        var vae = LdmLab.Autoencoders.AutoencoderKL.FromPretrained(Fixture("tiny-vae"));
        unet.eval(); vae.eval();
        return new StableDiffusionPipeline(LdmLab.Conditioning.ClipTokenizer.FromFolder(Fixture("clip-tokenizer")),
            LdmLab.Conditioning.ClipTextModel.FromPretrained(Fixture("tiny-clip-text")), unet, vae,
            "DDIMScheduler", info["scheduler"]!["config"]!.AsObject());
    }

    static readonly GenerationOptions Astronaut = new()
    {
        Prompts = ["an astronaut riding a horse"], NegativePrompts = [""], Steps = 10, GuidanceScale = 7.5, Height = 16, Width = 16,
    };

    [Fact]
    public void Tiny_pipeline_equals_diffusers_ids_embeddings_every_step_and_image()
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Fixture("tiny-pipeline"));
        foreach (var key in new[] { "prompt_input_ids", "prompt_embeds", "latents_per_step", "latents_final", "image" })
            Assert.Contains(checks, c => c.Name == $"tiny-pipeline/{key}");
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
    }

    /// <summary>
    /// Pipeline folders with other settings (fixtures/pipeline-more, scripts/make_text_and_pipeline_fixtures.py):
    /// Euler with a negative prompt, DPM-Solver++ with Karras σ on 8 latent channels at 16×24, UniPC with guidance 1
    /// (no unconditional pass) and a bfloat16 text encoder.
    /// </summary>
    [Theory]
    [InlineData("euler-negative", 8)]
    [InlineData("dpmpp-karras-c8-wide", 6)]
    [InlineData("unipc-no-cfg-bf16-text", 7)]
    public void Other_pipeline_settings_equal_diffusers(string name, int steps)
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Path.Combine(Fixture("pipeline-more"), name));
        foreach (var key in new[] { "prompt_input_ids", "negative_input_ids", "prompt_embeds", "negative_prompt_embeds",
                     "timesteps", "latents_per_step", "latents_final", "vae_decode", "image" })
            Assert.Contains(checks, c => c.Name == $"{name}/{key}");
        Assert.Contains($"{steps} steps", checks.Single(c => c.Name == $"{name}/latents_per_step").Note);
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
    }

    [Fact]
    public void A_folder_of_fixture_folders_checks_each()
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Fixture("pipeline-more"));
        foreach (var name in new[] { "euler-negative", "dpmpp-karras-c8-wide", "unipc-no-cfg-bf16-text" })
            Assert.Contains(checks, c => c.Name == $"{name}/image" && c.Passed);
    }

    /// <summary>A seed draws the same x_T as diffusers' CPU torch.Generator (the fixture used seed 42).</summary>
    [Fact]
    public void A_seed_reproduces_diffusers_initial_latents()
    {
        TorchRuntime.Setup();
        var r = SafeTensors.Load(Path.Combine(Fixture("tiny-pipeline"), "tensors.safetensors"));
        var pipe = Tiny();
        var fromSeed = pipe.Generate(Astronaut with { Seed = 42 });
        Assert.True(Parity.MaxAbsDiff(fromSeed.Latents, r["latents_final"]) < 1e-3);
        Assert.True(Parity.MaxAbsDiff(fromSeed.Images, r["image"]) < 1e-4);
    }

    [Fact]
    public void Guidance_at_most_one_skips_the_unconditional_pass()
    {
        TorchRuntime.Setup();
        var pipe = Tiny();
        var noise = randn(1, 4, 8, 8, generator: new Generator(3));
        var plain = pipe.Generate(Astronaut with { GuidanceScale = 1.0, Latents = noise });
        Assert.Null(plain.NegativePromptEmbeds);
        // w = 1 with an unconditional pass is the same function: ε̂(∅) + 1·(ε̂(c) − ε̂(∅)) = ε̂(c)
        var withPass = pipe.Generate(Astronaut with { GuidanceScale = 1.0 + 1e-9, Latents = noise });
        Assert.NotNull(withPass.NegativePromptEmbeds);
        Assert.True(Parity.MaxAbsDiff(plain.Latents, withPass.Latents) < 1e-4);
        var guided = pipe.Generate(Astronaut with { GuidanceScale = 7.5, Latents = noise });
        Assert.True(Parity.MaxAbsDiff(plain.Latents, guided.Latents) > 1e-2, "guidance changed nothing");
    }

    [Fact]
    public void Negative_prompts_change_the_result_and_batches_work()
    {
        TorchRuntime.Setup();
        var pipe = Tiny();
        var noise = randn(2, 4, 8, 8, generator: new Generator(5));
        var two = pipe.Generate(Astronaut with
        {
            Prompts = ["an astronaut riding a horse", "a photo of an ankle boot"],
            NegativePrompts = ["", ""],
            Latents = noise
        });
        Assert.Equal(new long[] { 2, 3, 16, 16 }, two.Images.shape);
        var one = pipe.Generate(Astronaut with { Latents = noise[..1] });
        Assert.True(Parity.MaxAbsDiff(one.Latents, two.Latents[..1]) < 1e-4, "a batch row differs from the same prompt alone");
        var negative = pipe.Generate(Astronaut with { NegativePrompts = ["a horse"], Latents = noise[..1] });
        Assert.True(Parity.MaxAbsDiff(one.Latents, negative.Latents) > 1e-3);
        Assert.Throws<ArgumentException>(() => pipe.Generate(Astronaut with { NegativePrompts = ["a", "b"] }));
        Assert.Throws<ArgumentException>(() => pipe.Generate(Astronaut with { Latents = randn(1, 4, 4, 4) }));
    }

    [Theory]
    [InlineData("EulerAncestralDiscreteScheduler")]
    [InlineData("DPMSolverMultistepScheduler")]
    [InlineData("UniPCMultistepScheduler")]
    [InlineData("HeunDiscreteScheduler")]
    public void Other_schedulers_run_and_call_back_every_step(string cls)
    {
        TorchRuntime.Setup();
        var pipe = Tiny();
        pipe.SetScheduler(cls);
        int calls = 0;
        var o = pipe.Generate(Astronaut with { Steps = 6, Seed = 1, Callback = s => calls++ });
        Assert.Equal(pipe.NewScheduler() is var s && s.Order == 2 ? 11 : 6, calls);
        Assert.True(o.Images.min().item<float>() >= 0 && o.Images.max().item<float>() <= 1);
        Assert.False(o.Latents.isnan().any().item<bool>());
    }

    [Fact]
    public void Image_to_image_starts_where_strength_says()
    {
        TorchRuntime.Setup();
        var pipe = Tiny();
        var image = rand(1, 3, 16, 16, generator: new Generator(9)) * 2 - 1;
        var steps = new List<double>();
        var half = pipe.ImageToImage(image, 0.5, Astronaut with { Seed = 2, Callback = s => steps.Add(s.Timestep) });
        // diffusers: t_start = 10 − int(10·0.5) = 5, so the last 5 of the 10 timesteps (901 … 1) run
        Assert.Equal(new double[] { 401, 301, 201, 101, 1 }, steps);
        Assert.Equal(new long[] { 1, 3, 16, 16 }, half.Images.shape);
        var none = pipe.ImageToImage(image, 0.0, Astronaut with { Seed = 2 });
        // strength 0: no denoising, the decoded posterior sample of the image
        Assert.True(Parity.MaxAbsDiff(none.Images, pipe.Decode(none.Latents)) < 1e-6);
        Assert.Throws<ArgumentOutOfRangeException>(() => pipe.ImageToImage(image, 1.5, Astronaut));
        Assert.Throws<ArgumentException>(() => pipe.ImageToImage(randn(1, 1, 16, 16), 0.5, Astronaut));
    }

    [Fact]
    public void Save_pretrained_writes_the_diffusers_layout_and_loads_back_equal()
    {
        TorchRuntime.Setup();
        var pipe = Tiny();
        var dir = TestPaths.TempDir("sd-pipeline");
        pipe.SavePretrained(dir);
        foreach (var f in new[] { "model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                     "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
                     "text_encoder/model.safetensors", "tokenizer/vocab.json", "tokenizer/merges.txt",
                     "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json", "scheduler/scheduler_config.json" })
            Assert.True(File.Exists(Path.Combine(dir, f)), $"{f} missing");
        var index = PyJson.ParseFile(Path.Combine(dir, "model_index.json"))!;
        Assert.Equal("StableDiffusionPipeline", (string)index["_class_name"]!);
        Assert.Equal("UNet2DConditionModel", (string)index["unet"]![1]!);
        Assert.Equal("CLIPTokenizer", (string)index["tokenizer"]![1]!);
        Assert.Equal("DDIMScheduler", (string)PyJson.ParseFile(Path.Combine(dir, "scheduler", "scheduler_config.json"))!["_class_name"]!);
        var keys = SafeTensors.ReadHeader(Path.Combine(dir, "text_encoder", "model.safetensors")).entries.Select(e => e.Name).ToList();
        Assert.Contains("text_model.encoder.layers.0.self_attn.q_proj.weight", keys);
        var again = StableDiffusionPipeline.FromPretrained(dir);
        var a = pipe.Generate(Astronaut with { Seed = 4 });
        var b = again.Generate(Astronaut with { Seed = 4 });
        Assert.Equal(0, Parity.MaxAbsDiff(a.Images, b.Images));
        // the saved tokenizer folder is the same tokenizer
        Assert.Equal(pipe.Tokenizer.Encode("a photo of an ankle boot").Ids, again.Tokenizer.Encode("a photo of an ankle boot").Ids);
    }

    [Fact]
    public void Bad_folders_name_what_is_wrong()
    {
        var empty = TestPaths.TempDir("no-pipeline");
        Assert.Contains("model_index.json", Assert.Throws<FileNotFoundException>(() => StableDiffusionPipeline.FromPretrained(empty)).Message);
        var dir = TestPaths.TempDir("bad-pipeline");
        File.WriteAllText(Path.Combine(dir, "model_index.json"), new JsonObject
        {
            ["unet"] = new JsonArray("diffusers", "UNet2DModel"),
        }.ToJsonString());
        Directory.CreateDirectory(Path.Combine(dir, "unet"));
        Assert.Contains("UNet2DModel", Assert.Throws<NotSupportedException>(() => StableDiffusionPipeline.FromPretrained(dir)).Message);
    }
}

/// <summary>SD 2.1 and SDXL architectures built from their configs equal diffusers' state dicts.</summary>
public class SdFamilyTests
{
    [Fact]
    public void Sd21_and_sdxl_unets_and_the_sdxl_vae_equal_their_manifests()
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Path.Combine(AppContext.BaseDirectory, "fixtures", "sd-family-manifest"));
        Assert.Equal(16, checks.Count);   // 4 manifests × keys, order, shapes, parameter count
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
        Assert.Contains(checks, c => c.Name == "sdxl_base_unet_manifest/total_parameters");
    }

    /// <summary>SDXL's text_time conditioning: a small config runs, and the size/crop ids change the output.</summary>
    [Fact]
    public void Text_time_conditioning_takes_pooled_text_and_size_ids()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var config = new LdmLab.UNet.UNetConfig
        {
            SampleSize = 8, BlockOutChannels = [32, 64], LayersPerBlock = 1, CrossAttentionDim = 16, AttentionHeadDim = [2, 4],
            NormNumGroups = 8, DownBlockTypes = ["DownBlock2D", "CrossAttnDownBlock2D"], UpBlockTypes = ["CrossAttnUpBlock2D", "UpBlock2D"],
            TransformerLayersPerBlock = [1, 2], UseLinearProjection = true,
            AdditionEmbedType = "text_time", AdditionTimeEmbedDim = 8, ProjectionClassEmbeddingsInputDim = 12 + 6 * 8,
        };
        var unet = new LdmLab.UNet.UNet2DConditionModel(config);
        Assert.Contains("add_embedding.linear_1.weight", unet.state_dict().Keys);
        var (z, c, pooled) = (randn(2, 4, 8, 8), randn(2, 5, 16), randn(2, 12));
        var ids = tensor(new float[,] { { 64, 64, 0, 0, 64, 64 }, { 64, 64, 0, 0, 64, 64 } });
        using var _ = no_grad();
        var a = unet.Forward(z, tensor(10L), c, textEmbeds: pooled, timeIds: ids);
        var b = unet.Forward(z, tensor(10L), c, textEmbeds: pooled, timeIds: ids + 16);
        Assert.Equal(z.shape, a.shape);
        Assert.True(Parity.MaxAbsDiff(a, b) > 1e-4, "the size ids had no effect");
        Assert.Contains("textEmbeds", Assert.Throws<ArgumentException>(() => unet.Forward(z, tensor(10L), c)).Message);
        var roundTrip = LdmLab.UNet.UNetConfig.FromJson(config.ToJson());
        Assert.Equal("text_time", roundTrip.AdditionEmbedType);
        Assert.Equal(60, roundTrip.ProjectionClassEmbeddingsInputDim);
    }
}
