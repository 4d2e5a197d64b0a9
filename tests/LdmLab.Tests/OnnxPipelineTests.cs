using LdmLab.Export;
using LdmLab.Pipelines;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Sampling from an exported ONNX folder (OnnxStableDiffusionPipeline) against the TorchSharp pipeline, and
/// <c>ldmlab export-onnx</c>.</summary>
public class OnnxPipelineTests(ITestOutputHelper output)
{
    static readonly Lazy<string> Exported = new(() =>
    {
        var dir = TestPaths.TempDir("onnx-sd");
        OnnxExport.SavePipeline(StableDiffusionPipelineFixture.Value.Pipeline, dir);
        return dir;
    });

    static readonly GenerationOptions Astronaut = new()
    {
        Prompts = ["an astronaut riding a horse"], NegativePrompts = [""], Steps = 10, GuidanceScale = 7.5,
        Height = 16, Width = 16, Seed = 42,
    };

    void AssertClose(PipelineOutput expected, PipelineOutput got, string what)
    {
        double images = Parity.MaxAbsDiff(got.Images, expected.Images);
        double latents = Parity.MaxAbsDiff(got.Latents, expected.Latents);
        output.WriteLine($"{what}: max |Δ| image {images:E2}, latents {latents:E2}");
        Assert.True(images <= 1e-3, $"{what}: image differs by {images}");
        Assert.True(latents <= 1e-3, $"{what}: latents differ by {latents}");
    }

    [Fact]
    public void Onnx_pipeline_draws_the_torchsharp_pipelines_image()
    {
        var pipe = StableDiffusionPipelineFixture.Value.Pipeline;
        using var onnx = OnnxStableDiffusionPipeline.FromFolder(Exported.Value);
        Assert.Equal("DDIMScheduler", onnx.SchedulerClass);
        Assert.Equal(pipe.Vae.Config.ScalingFactor, onnx.ScalingFactor);
        Assert.Equal(pipe.VaeScaleFactor, onnx.VaeScaleFactor);
        AssertClose(pipe.Generate(Astronaut), onnx.Generate(Astronaut), "guided, seed 42");
        // two prompts with their own negatives at 16×24; then guidance 1 (no unconditional pass)
        var two = Astronaut with
        {
            Prompts = ["a red door", "a cat"],
            NegativePrompts = ["blurry", ""],
            Width = 24,
            Seed = 3,
        };
        AssertClose(pipe.Generate(two), onnx.Generate(two), "two prompts, 16×24");
        var plain = Astronaut with { GuidanceScale = 1.0, Seed = 5 };
        var withoutGuidance = onnx.Generate(plain);
        Assert.Null(withoutGuidance.NegativePromptEmbeds);
        AssertClose(pipe.Generate(plain), withoutGuidance, "guidance 1 (conditional pass alone)");
        Assert.True(Parity.MaxAbsDiff(onnx.EncodePrompts(["a cat"]), pipe.EncodePrompts(["a cat"])) <= 1e-4);
    }

    /// <summary>img2img through vae_encoder's latent_parameters: the same posterior draw and noise from the seed.
    /// </summary>
    [Fact]
    public void Onnx_image_to_image_matches_torchsharp()
    {
        var pipe = StableDiffusionPipelineFixture.Value.Pipeline;
        using var onnx = OnnxStableDiffusionPipeline.FromFolder(Exported.Value);
        Assert.NotNull(onnx.VaeEncoder);
        var image = rand(1, 3, 16, 16, generator: new Generator(12)) * 2 - 1;
        var options = Astronaut with { Seed = 7 };
        AssertClose(pipe.ImageToImage(image, 0.6, options), onnx.ImageToImage(image, 0.6, options), "img2img 0.6");
    }

    [Fact]
    public void A_folder_without_its_parts_is_named()
    {
        var e = Assert.Throws<DirectoryNotFoundException>(() =>
            OnnxStableDiffusionPipeline.FromFolder(Path.Combine(TestPaths.TempDir("onnx-none"), "missing")));
        Assert.Contains("missing", e.Message);
        var empty = TestPaths.TempDir("onnx-empty");
        var d = Assert.Throws<Data.DatasetException>(() => OnnxStableDiffusionPipeline.FromFolder(empty));
        Assert.EndsWith("model_index.json", d.FilePath);
    }

    [Fact]
    public void An_inpainting_unet_is_refused_by_name()
    {
        var dir = TestPaths.TempDir("onnx-inpaint");
        foreach (var file in Directory.GetFiles(Exported.Value, "*", SearchOption.AllDirectories))
        {
            var target = Path.Combine(dir, Path.GetRelativePath(Exported.Value, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target);
        }
        var config = Path.Combine(dir, "unet", "config.json");
        File.WriteAllText(config, File.ReadAllText(config).Replace("\"in_channels\": 4", "\"in_channels\": 9"));
        using var onnx = OnnxStableDiffusionPipeline.FromFolder(dir);
        Assert.Equal(9, onnx.UNetInChannels);
        var e = Assert.Throws<NotSupportedException>(() => onnx.Generate(Astronaut));
        Assert.Contains("9 channels", e.Message);
    }

    static int Run(out string stdout, out string stderr, params string[] args) =>
        CliCapture.Run(out stdout, out stderr, args);

    [Fact]
    public void Export_onnx_command_writes_the_folder_and_names_bad_arguments()
    {
        var model = TestPaths.TempDir("onnx-cli-model");
        StableDiffusionPipelineFixture.Value.Pipeline.SavePretrained(model);
        var outDir = Path.Combine(TestPaths.TempDir("onnx-cli"), "sd-onnx");
        int rc = Run(out var stdout, out var stderr, "export-onnx", "--model", model, "--out", outDir,
            "--external-data-threshold", "1000");
        Assert.True(rc == 0, stderr);
        Assert.Contains("unet/weights.pb", stdout);
        Assert.Contains("model_index.json", stdout);
        using (var onnx = OnnxStableDiffusionPipeline.FromFolder(outDir))
            Assert.Equal(4, onnx.LatentChannels);

        (string[] args, string named)[] bad =
        [
            (["export-onnx", "--model", model], "--out is required"),
            (["export-onnx", "--out", outDir], "--model is required"),
            (["export-onnx", "--model", model, "--out", outDir, "--external-data-threshold", "lots"],
                "--external-data-threshold 'lots'"),
            (["export-onnx", "--model", model, "--out", outDir, "--fp16", "yes"], "--fp16: not an option"),
            (["export-onnx", "--model", Path.Combine(model, "nothing-here"), "--out", outDir], "--model '"),
            (["export-onnx", "--model", model, "--out", Path.Combine(model, "model_index.json")], "--out '"),
            (["export-onnx", "--model"], "--model needs a value"),
        ];
        foreach (var (args, named) in bad)
        {
            Assert.Equal(2, Run(out _, out var error, args));
            Assert.Contains(named, error);
        }
    }
}
