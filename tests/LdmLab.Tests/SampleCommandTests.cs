using LdmLab.Data;
using LdmLab.Labs;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary><c>ldmlab sample</c>: images from the shipped model, judged; the PNG's parameters chunk; img2img,
/// inpainting and LoRA from the command line; every argument error named with exit code 2.</summary>
public class SampleCommandTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);
    static string ShippedModel => Path.Combine(TestPaths.RepoRoot, "data", "checkpoints", TextToImageRecipe.Shipped);

    static int Run(out string stdout, out string stderr, params string[] args) =>
        CliCapture.Run(out stdout, out stderr, args);

    /// <summary>A written canvas back as [1, 1, 28, 56] in [−1, 1].</summary>
    static Tensor Canvas(string png)
    {
        using var image = Image.Load<Rgb24>(png);
        return ImageTensors.FromImage(image).mean([0], keepdim: true).unsqueeze(0);
    }

    static FashionClassifier Judge() =>
        ShippedCheckpoint.Find(ClassifierRecipe.Shipped)!.LoadInto(ClassifierRecipe.New());

    [SkippableFact]
    public void Shipped_model_draws_what_the_prompt_asks_and_the_png_says_how()
    {
        TorchRuntime.Setup();
        Skip.If(ShippedCheckpoint.Find(ClassifierRecipe.Shipped) is null, "no shipped checkpoints here");
        var dir = TestPaths.TempDir("sample-cli");
        var judge = Judge();
        int correct = 0;
        var classes = new List<long>();
        for (int seed = 0; seed < 4; seed++)
        {
            var png = Path.Combine(dir, $"bag-{seed}.png");
            int rc = Run(out var stdout, out var stderr, "sample", "--model", ShippedModel, "--prompt",
                "a photo of a bag on the left", "--guidance", "5", "--steps", "20", "--seed", $"{seed}", "--out", png);
            Assert.True(rc == 0, stderr);
            Assert.Contains("step 20/20", stdout);                                        // plain lines when redirected
            using var _ = no_grad();
            var slot = CaptionedScenes.SlotOf(Canvas(png), Side.Left);
            var predicted = judge.forward(slot).argmax(1).item<long>();
            classes.Add(predicted);
            if (predicted == 8) correct++;                                                // 8: bag
        }
        Assert.True(correct >= 3, $"{correct} of 4 judged a bag: {string.Join(", ", classes)}");

        var p = GenerationParameters.ReadPng(Path.Combine(dir, "bag-2.png"))!;
        Assert.Equal("a photo of a bag on the left", p.Prompt);
        Assert.Equal(("20", "DDIM", "5", "2", "56x28", TextToImageRecipe.Shipped),
            (p["Steps"], p["Sampler"], p["CFG scale"], p["Seed"], p["Size"], p["Model"]));
    }

    [SkippableFact]
    public void Img2img_inpainting_and_attention_maps_from_the_command_line()
    {
        TorchRuntime.Setup();
        Skip.If(ShippedCheckpoint.Find(ClassifierRecipe.Shipped) is null, "no shipped checkpoints here");
        var dir = TestPaths.TempDir("sample-cli-edit");
        var source = Path.Combine(dir, "source.png");
        Assert.Equal(0, Run(out _, out var err, "sample", "--model", ShippedModel, "--prompt",
            "a sneaker on the left and a shirt on the right", "--guidance", "5", "--seed", "1", "--out", source,
            "--attention-maps", Path.Combine(dir, "maps")));
        Assert.True(File.Exists(Path.Combine(dir, "maps", "01-sneaker.png")), err);
        var mask = Path.Combine(dir, "mask.png");
        using (var m = new Image<L8>(56, 28))
        {
            for (int y = 0; y < 28; y++)
                for (int x = 28; x < 56; x++) m[x, y] = new L8(255);                          // repaint the right slot
            m.SaveAsPng(mask);
        }
        var inpainted = Path.Combine(dir, "inpainted.png");
        Assert.Equal(0, Run(out _, out err, "sample", "--model", ShippedModel, "--prompt",
            "a sneaker on the left and a bag on the right", "--guidance", "5", "--init", source, "--mask", mask,
            "--strength", "1", "--out", inpainted));
        var before = Canvas(source);
        var after = Canvas(inpainted);
        Tensor Change(Side side) =>
            (CaptionedScenes.SlotOf(after, side) - CaptionedScenes.SlotOf(before, side)).abs().mean();
        var (left, right) = (Change(Side.Left), Change(Side.Right));
        Assert.True(left.item<float>() < 0.5 * right.item<float>(),
            $"left changed {left.item<float>():F3}, right {right.item<float>():F3}");
        var edited = Path.Combine(dir, "img2img.png");
        Assert.Equal(0, Run(out var stdout, out err, "sample", "--model", ShippedModel, "--prompt", "a bag on the left",
            "--init", source, "--strength", "0.4", "--out", edited));
        Assert.Contains("step 10/10", stdout);                                                // 25 steps × 0.4
        Assert.Equal("0.4", GenerationParameters.ReadPng(edited)!["Denoising strength"]);
    }

    [Fact]
    public void A_lora_file_changes_a_diffusers_folder_s_image()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("sample-cli-lora");
        PipelineTests.Tiny().SavePretrained(Path.Combine(dir, "tiny"));
        string[] common = ["sample", "--model", Path.Combine(dir, "tiny"), "--prompt", "a cat", "--steps", "4",
            "--width", "16", "--height", "16", "--scheduler", "euler-a"];
        Assert.Equal(0, Run(out _, out var err, [.. common, "--out", Path.Combine(dir, "plain.png")]));
        var lora = Path.Combine(Fixture("lora-tiny-unet"), Adapters.LoraFiles.DiffusersFileName);
        Assert.Equal(0, Run(out _, out err,
            [.. common, "--lora", lora + ":0.8", "--out", Path.Combine(dir, "lora.png")]));
        Assert.True(Canvas3(Path.Combine(dir, "plain.png")).sub(Canvas3(Path.Combine(dir, "lora.png"))).abs().max()
            .item<float>() > 0, err);
        var p = GenerationParameters.ReadPng(Path.Combine(dir, "lora.png"))!;
        Assert.Equal(("Euler a", "pytorch_lora_weights:0.8"), (p["Sampler"], p["Lora"]));
    }

    static Tensor Canvas3(string png)
    {
        using var image = Image.Load<Rgb24>(png);
        return ImageTensors.FromImage(image);
    }

    [Theory]
    [InlineData("--prompt", "--model X", "--model 'X'")]
    [InlineData("--model", "--steps 3", "--model is required")]
    [InlineData("--steps", "--steps many", "--steps 'many': expected a whole number")]
    [InlineData("--guidance", "--guidance -3", "--guidance '-3'")]
    [InlineData("--strength", "--strength 2", "--strength '2'")]
    [InlineData("--mask", "--mask m.png", "--mask needs --init")]
    [InlineData("--out", "--out x.jpg", "--out 'x.jpg'")]
    [InlineData("--colour", "--colour red", "--colour: not an option")]
    [InlineData("--scheduler", "--scheduler warp", "--scheduler 'warp'")]
    [InlineData("--width", "--width 15", "--width 15: must be a multiple of 2")]
    [InlineData("--lora", "--lora nowhere.safetensors", "--lora 'nowhere.safetensors'")]
    [InlineData("--init", "--init nowhere.png", "--init 'nowhere.png': file not found")]
    [InlineData("--prediction-type", "--prediction-type x0", "--prediction-type 'x0'")]
    public void Argument_errors_name_the_argument_and_exit_2(string argument, string given, string expected)
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("sample-cli-errors");
        PipelineTests.Tiny().SavePretrained(Path.Combine(dir, "tiny"));
        var args = new List<string> { "sample" };
        if (argument != "--model") args.AddRange(["--model", argument == "--prompt" ? "X" : Path.Combine(dir, "tiny")]);
        args.AddRange(["--prompt", "a cat"]);
        if (argument != "--prompt") args.AddRange(given.Split(' '));
        if (argument != "--out") args.AddRange(["--out", Path.Combine(dir, "x.png")]);
        Assert.Equal(2, Run(out _, out var stderr, [.. args]));
        Assert.Contains(expected, stderr);
        Assert.StartsWith("ldmlab: ", stderr);
    }

    [Fact]
    public void Fuzzed_parameters_text_parses_without_throwing_and_round_trips_what_it_wrote()
    {
        var rng = new Random(17);
        const string alphabet = "ab ,:\"\\\nNegative prompt: Steps: 1";
        for (int i = 0; i < 3000; i++)
        {
            var text = new string(Enumerable.Range(0, rng.Next(0, 60)).Select(_ => alphabet[rng.Next(alphabet.Length)])
                .ToArray());
            var parsed = GenerationParameters.Parse(text);                                  // never throws
            if (parsed.Settings.Count == 0) continue;              // a prompt alone: nothing to round-trip
            var again = GenerationParameters.Parse(parsed.ToString());
            Assert.Equal(parsed.Settings, again.Settings);
        }
    }

    [Fact]
    public void Parameters_text_round_trips_with_quoting()
    {
        var p = new GenerationParameters("a dress,\nred", "blurry, dark", [("Steps", "20"), ("Model", "a: b, c"),
            ("Quote", "say \"hi\"")]);
        var back = GenerationParameters.Parse(p.ToString());
        Assert.Equal(p.Prompt, back.Prompt);
        Assert.Equal(p.NegativePrompt, back.NegativePrompt);
        Assert.Equal(p.Settings, back.Settings);
        Assert.Contains("Model: \"a: b, c\"", p.ToString());
        // A1111's rules: trimmed, and a last line with fewer than three settings is still the prompt
        Assert.Equal("a cat", GenerationParameters.Parse("a cat\n").Prompt);
        var short_ = GenerationParameters.Parse("a cat\nStyle: ink");
        Assert.Equal(("a cat\nStyle: ink", 0), (short_.Prompt, short_.Settings.Count));
    }
}
