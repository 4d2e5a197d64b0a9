using System.Globalization;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Interop.Hub;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using Spectre.Console;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// <c>ldmlab sample</c>: one image from a prompt, with any model a user has — a diffusers folder, a hub repo id
/// (through huggingface_hub's cache), a one-file .safetensors checkpoint, or the lab's shipped text-to-image model —
/// and the options diffusers' pipelines take: negative prompt, steps, guidance, scheduler, seed, size, LoRA files,
/// img2img (--init, --strength) and inpainting (--mask). The PNG carries its generation parameters in A1111's
/// "parameters" text chunk. Every error names its argument and exits 2.
/// </summary>
public static class SampleCommand
{
    public const string Usage = """
        usage: ldmlab sample --model DIR|REPO_ID|FILE --prompt TEXT [options]
          --model            a diffusers pipeline folder, a hub repo id (owner/name; HF_HOME, HF_HUB_OFFLINE, HF_TOKEN
                             honoured), a one-file SD 1.x/2.x .safetensors checkpoint, or
                             data/checkpoints/fashion-text2img (the lab's own model)
          --variant NAME     weights variant of a folder or repo id, e.g. fp16 (*.fp16.safetensors)
          --prediction-type epsilon|v_prediction, --image-size PIXELS
                             what a one-file checkpoint cannot say (default: SD 2.x files 768 px v-prediction,
                             others 512 px epsilon, as diffusers assumes)
          --prompt TEXT      what to draw;  --negative TEXT  what to steer away from
          --steps N          denoising steps (default 25);  --guidance W  classifier-free guidance scale (default 7.5)
          --scheduler NAME   ddim, euler, euler-a, heun, lms, dpm++-2m, dpm++-2m-karras, pndm, unipc, ddpm, or a
                             diffusers class name (default: the model's own)
          --seed N           the initial noise's seed (default 0);  --width W --height H  in pixels
          --lora FILE[:S]    a LoRA file (diffusers, PEFT or kohya) at scale S (default 1); repeat for several
          --embedding FILE[:TOKEN]  a textual-inversion file (diffusers' learned_embeds or A1111/kohya
                             safetensors); its token (default: the file's) is then a word of --prompt; repeatable
          --init IMAGE       start from this image (img2img);  --strength S  how much to change it (default 0.75;
                             1 with --mask)
          --mask IMAGE       repaint where the mask is white (needs --init)
          --out PNG          where to write the image (default sample.png)
          --attention-maps DIR  one cross-attention overlay per prompt word (text to image only)
        """;

    /// <summary>The samplers by their short names (the chapter's names, lower-cased, spaces as dashes).</summary>
    static readonly IReadOnlyDictionary<string, SamplerSpec> Samplers = SamplerSpec.ByShortName;

    sealed record Arguments(string Model, string? Variant, string? PredictionType, int? ImageSize, string Prompt,
        string? Negative, int Steps, double Guidance,
        string? Scheduler, long Seed, int? Width, int? Height, IReadOnlyList<(string File, double Scale)> Loras,
        IReadOnlyList<(string File, string? Token)> Embeddings,
        string? Init, double Strength, string? Mask, string Out, string? AttentionMaps);

    public static int Run(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help")
        {
            Console.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        var a = Parse(args);
        TorchRuntime.Setup();
        Lab.SetThreads();
        var (pipeline, modelName, size) = LoadModel(a.Model, a.Variant, a.PredictionType, a.ImageSize);
        if (pipeline.IsInpaintingUNet && a.Mask is null)
            throw new CliArgumentException($"--model '{a.Model}' is an inpainting model (its U-Net takes " +
                                           $"{pipeline.Unet.Config.InChannels} channels): give --init IMAGE and " +
                                           "--mask IMAGE");
        if (a.Scheduler is { } scheduler) SetScheduler(pipeline, scheduler);
        foreach (var (file, token) in a.Embeddings) LoadEmbedding(pipeline, file, token);
        var loras = a.Loras.Select(l => LoadLora(pipeline, l.File, l.Scale)).ToList();
        try
        {
            var settings = Settings(a, pipeline, modelName, size, out var options);
            PipelineOutput output = null!;
            Progress(a.Steps, a.Init is null ? a.Steps : Math.Max(1, (int)(a.Steps * a.Strength)), advance =>
            {
                var withProgress = options with { Callback = _ => advance() };
                output = a.Init is null ? pipeline.Generate(withProgress)
                    : a.Mask is null ? pipeline.ImageToImage(LoadImage(a.Init, "--init", pipeline, options), a.Strength,
                        withProgress)
                    : pipeline.Inpaint(LoadImage(a.Init, "--init", pipeline, options), LoadMask(a.Mask, options),
                        withProgress, a.Strength);
            });
            var parameters = new GenerationParameters(a.Prompt, a.Negative, settings);
            var outDir = Path.GetDirectoryName(Path.GetFullPath(a.Out))!;
            Directory.CreateDirectory(outDir);
            using (var picture = output.Picture(0)) parameters.SavePng(picture, a.Out);
            Console.WriteLine($"wrote {a.Out} ({output.Images.shape[3]}×{output.Images.shape[2]})");
            if (a.AttentionMaps is { } mapsDir)
                using (var recorder = output.Attention!)
                    foreach (var file in AttentionMaps(pipeline, recorder, output.Images, a.Prompt, mapsDir))
                        Console.WriteLine($"wrote {file}");
            return 0;
        }
        finally
        {
            foreach (var lora in loras) lora.Dispose();
        }
    }

    // ---- arguments ----

    static Arguments Parse(string[] args)
    {
        var values = new Dictionary<string, string>();
        var loras = new List<(string, double)>();
        var embeddings = new List<(string, string?)>();
        string[] known = ["--embedding", "--model", "--variant", "--prediction-type", "--image-size", "--prompt",
            "--negative",
            "--steps", "--guidance", "--scheduler",
            "--seed", "--width", "--height", "--lora", "--init", "--strength", "--mask", "--out", "--attention-maps"];
        for (int i = 0; i < args.Length; i++)
        {
            var name = args[i];
            if (!known.Contains(name))
                throw new CliArgumentException($"{name}: not an option of ldmlab sample\n\n{Usage}");
            bool text = name is "--prompt" or "--negative";                // a prompt may start with dashes
            if (i + 1 >= args.Length || (args[i + 1].StartsWith("--", StringComparison.Ordinal) && !text))
                throw new CliArgumentException($"{name} needs a value");
            var value = args[++i];
            if (name == "--lora") loras.Add(Lora(value));
            else if (name == "--embedding") embeddings.Add(Embedding(value));
            else if (!values.TryAdd(name, value)) throw new CliArgumentException($"{name} is given twice");
        }
        string Required(string name) => values.TryGetValue(name, out var v) && v.Trim().Length > 0 ? v
            : throw new CliArgumentException($"{name} is required\n\n{Usage}");
        int? Whole(string name, int min)
        {
            if (!values.TryGetValue(name, out var v)) return null;
            return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= min ? n
                : throw new CliArgumentException($"{name} '{v}': expected a whole number ≥ {min}");
        }
        double? Real(string name, double min, double max)
        {
            if (!values.TryGetValue(name, out var v)) return null;
            return double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var x)
                   && x >= min && x <= max
                ? x : throw new CliArgumentException($"{name} '{v}': expected a number in [{min}, {max}]");
        }
        long seed = values.TryGetValue("--seed", out var s)
            ? long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= 0 ? n
                : throw new CliArgumentException($"--seed '{s}': expected a whole number ≥ 0")
            : 0;
        var prediction = values.GetValueOrDefault("--prediction-type");
        if (prediction is not (null or "epsilon" or "v_prediction"))
            throw new CliArgumentException($"--prediction-type '{prediction}': expected epsilon or v_prediction");
        var a = new Arguments(Required("--model"), values.GetValueOrDefault("--variant"), prediction,
            Whole("--image-size", 64), Required("--prompt"),
            values.GetValueOrDefault("--negative"), Whole("--steps", 1) ?? 25, Real("--guidance", 0, 100) ?? 7.5,
            values.GetValueOrDefault("--scheduler"), seed,
            Whole("--width", 8), Whole("--height", 8), loras, embeddings, values.GetValueOrDefault("--init"),
            Real("--strength", 0, 1) ?? (values.ContainsKey("--mask") ? 1.0 : 0.75), values.GetValueOrDefault("--mask"),
            values.GetValueOrDefault("--out") ?? "sample.png", values.GetValueOrDefault("--attention-maps"));
        if (a.Mask is not null && a.Init is null)
            throw new CliArgumentException("--mask needs --init IMAGE (the image to repaint)");
        if (a.Init is not null && a.Strength == 0)
            throw new CliArgumentException("--strength 0 changes nothing: give a strength in (0, 1]");
        if (a.AttentionMaps is not null && a.Init is not null)
            throw new CliArgumentException("--attention-maps records text to image only (drop --init)");
        if (!a.Out.EndsWith(".png", StringComparison.OrdinalIgnoreCase))
            throw new CliArgumentException($"--out '{a.Out}': the image is written as PNG; give a .png path");
        foreach (var (name, path) in new[] { ("--init", a.Init), ("--mask", a.Mask) })
            if (path is not null && !File.Exists(path))
                throw new CliArgumentException($"{name} '{path}': file not found");
        return a;
    }

    /// <summary>FILE or FILE:TOKEN (a token is the text after the last colon when FILE names no file as a whole).
    /// </summary>
    static (string, string?) Embedding(string value)
    {
        int colon = value.LastIndexOf(':');
        return colon > 0 && !File.Exists(value) ? (value[..colon], value[(colon + 1)..]) : (value, null);
    }

    static void LoadEmbedding(StableDiffusionPipeline pipeline, string file, string? token)
    {
        try
        {
            var inversion = pipeline.LoadTextualInversion(file, token);
            Console.WriteLine($"textual inversion {inversion.Token} ({inversion.Vectors} vector" +
                              $"{(inversion.Vectors == 1 ? "" : "s")}) from {file}");
        }
        catch (Exception e) when (e is Adapters.AdapterFormatException or DatasetException or FileNotFoundException
                                      or ArgumentException)
        {
            throw new CliArgumentException($"--embedding '{file}': {e.Message}");
        }
    }

    /// <summary>FILE or FILE:SCALE (a scale is the text after the last colon when it parses as a number).</summary>
    static (string, double) Lora(string value)
    {
        int colon = value.LastIndexOf(':');
        if (colon > 0 && double.TryParse(value[(colon + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture,
                out var scale))
            return (value[..colon], scale);
        return (value, 1.0);
    }

    // ---- the model ----

    /// <summary>The pipeline, a name for the PNG's parameters, and the model's own image size when it has
    /// one.</summary>
    internal static (StableDiffusionPipeline, string, (int H, int W)?) LoadModel(string model, string? variant,
        string? predictionType = null, int? imageSize = null)
    {
        try
        {
            if (File.Exists(model))
                return (StableDiffusionPipeline.FromSingleFile(model, new SingleFileOptions
                {
                    PredictionType = predictionType, ImageSize = imageSize,
                }), Path.GetFileNameWithoutExtension(model), null);
            if (Directory.Exists(model) && TextToImageRecipe.ShippedPipeline(model) is { } shipped)
                return (shipped, Path.GetFileName(Path.GetFullPath(model).TrimEnd('/')),
                    (CaptionedScenes.Height, CaptionedScenes.Width));
            var name = Directory.Exists(model) ? Path.GetFileName(Path.GetFullPath(model).TrimEnd('/')) : model;
            var hub = variant is null ? null : HubOptions.FromEnvironment() with { Variant = variant };
            return (StableDiffusionPipeline.FromPretrained(model, hub), name, null);
        }
        catch (Exception e) when (e is SingleFileException or HubException or DatasetException or FileNotFoundException
                                      or DirectoryNotFoundException or ArgumentException or FormatException
                                      or NotSupportedException or InvalidDataException)
        {
            throw new CliArgumentException($"--model '{model}': {e.Message}");
        }
    }

    static void SetScheduler(StableDiffusionPipeline pipeline, string name)
    {
        var key = name.ToLowerInvariant();
        if (Samplers.TryGetValue(key, out var spec)) pipeline.SetScheduler(spec.SchedulerClass, spec.Overrides);
        else if (Diffusion.Schedulers.Scheduler.ClassNames.Contains(name)) pipeline.SetScheduler(name);
        else
            throw new CliArgumentException($"--scheduler '{name}': not one of {string.Join(", ", Samplers.Keys)} " +
                                           $"or {string.Join(", ", Diffusion.Schedulers.Scheduler.ClassNames)}");
    }

    static LoadedLora LoadLora(StableDiffusionPipeline pipeline, string file, double scale)
    {
        try
        {
            var lora = pipeline.LoadLoraWeights(file, scale);
            if (lora.Load.Unmatched.Count > 0)
                Console.Error.WriteLine($"ldmlab: --lora {file}: {lora.Load.Unmatched.Count} key(s) match no module " +
                                        $"(e.g. {lora.Load.Unmatched[0]}); the rest is applied");
            return lora;
        }
        catch (Exception e) when (e is Adapters.AdapterFormatException or DatasetException or FileNotFoundException
                                      or ArgumentException)
        {
            throw new CliArgumentException($"--lora '{file}': {e.Message}");
        }
    }

    /// <summary>The A1111 settings line, and the generation options it describes.</summary>
    static List<(string, string)> Settings(Arguments a, StableDiffusionPipeline pipeline, string model,
        (int H, int W)? size, out GenerationOptions options)
    {
        int factor = pipeline.VaeScaleFactor, native = pipeline.Unet.Config.SampleSize * factor;
        int height = a.Height ?? size?.H ?? native, width = a.Width ?? size?.W ?? native;
        foreach (var (name, value) in new[] { ("--height", height), ("--width", width) })
            if (value % factor != 0)
                throw new CliArgumentException($"{name} {value}: must be a multiple of {factor} (the VAE's " +
                                               "downsampling)");
        options = new GenerationOptions
        {
            Prompts = [a.Prompt], NegativePrompts = a.Negative is null ? null : [a.Negative], Steps = a.Steps,
            GuidanceScale = a.Guidance, Seed = a.Seed, Height = height, Width = width,
            RecordAttention = a.AttentionMaps is not null,
        };
        var sampler = Samplers.Values.FirstOrDefault(s => s.SchedulerClass == pipeline.SchedulerClass
                                                          && s.Overrides is null)?.Name ?? pipeline.SchedulerClass;
        if (a.Scheduler is { } named && Samplers.TryGetValue(named.ToLowerInvariant(), out var spec))
            sampler = spec.Name;
        // A1111's own names, so its "send to txt2img" finds the sampler
        sampler = sampler.Replace("DPM-Solver++", "DPM++").Replace("PNDM (PLMS)", "PLMS");
        var settings = new List<(string, string)>
        {
            ("Steps", a.Steps.ToString(CultureInfo.InvariantCulture)), ("Sampler", sampler),
            ("CFG scale", GenerationParameters.Number(a.Guidance)),
            ("Seed", a.Seed.ToString(CultureInfo.InvariantCulture)),
            ("Size", $"{width}x{height}"), ("Model", model),
        };
        if (a.Init is not null) settings.Add(("Denoising strength", GenerationParameters.Number(a.Strength)));
        if (a.Mask is not null) settings.Add(("Mask", Path.GetFileName(a.Mask)));
        foreach (var (file, scale) in a.Loras)
            settings.Add(("Lora", $"{Path.GetFileNameWithoutExtension(file)}:{GenerationParameters.Number(scale)}"));
        settings.Add(("Version", "LdmLab"));
        return settings;
    }

    // ---- images ----

    /// <summary>An image file as [1, C, H, W] in [−1, 1] at the requested size (grey for a one-channel VAE).</summary>
    static Tensor LoadImage(string path, string argument, StableDiffusionPipeline pipeline, GenerationOptions o)
    {
        try
        {
            using var image = Image.Load<Rgb24>(path);
            image.Mutate(x => x.Resize(o.Width!.Value, o.Height!.Value));
            var rgb = ImageTensors.FromImage(image);                                          // [3, H, W]
            var pixels = pipeline.Vae.Config.InChannels == 1 ? rgb.mean([0], keepdim: true) : rgb;
            return pixels.unsqueeze(0);                                                       // [1, C, H, W]
        }
        catch (Exception e) when (e is UnknownImageFormatException or InvalidImageContentException or IOException)
        {
            throw new CliArgumentException($"{argument} '{path}': not an image ({e.Message})");
        }
    }

    /// <summary>A mask file as [1, 1, H, W] in [0, 1] (white = repaint), at the image's size.</summary>
    static Tensor LoadMask(string path, GenerationOptions o)
    {
        try
        {
            using var image = Image.Load<L8>(path);
            image.Mutate(x => x.Resize(o.Width!.Value, o.Height!.Value));
            var bytes = new byte[image.Width * image.Height];
            image.CopyPixelDataTo(bytes);
            return tensor(bytes, [1, 1, image.Height, image.Width], ScalarType.Byte).to_type(ScalarType.Float32) / 255;
        }
        catch (Exception e) when (e is UnknownImageFormatException or InvalidImageContentException or IOException)
        {
            throw new CliArgumentException($"--mask '{path}': not an image ({e.Message})");
        }
    }

    /// <summary>One overlay per prompt word: the word's aggregated cross-attention over the image.</summary>
    static IEnumerable<string> AttentionMaps(StableDiffusionPipeline pipeline, CrossAttentionRecorder recorder,
        Tensor images, string prompt, string dir)
    {
        Directory.CreateDirectory(dir);
        int height = (int)images.shape[2], width = (int)images.shape[3];
        var aggregated = recorder.Aggregate(height, width);                                  // [1, tokens, H, W]
        var grey = (images[..1].mean([1], keepdim: true) * 2 - 1).cpu();                     // [1, 1, H, W]
        var words = CrossAttentionRecorder.Words(pipeline.Tokenizer, prompt);
        for (int i = 0; i < words.Count; i++)
        {
            var map = CrossAttentionRecorder.WordMap(aggregated, words[i]).cpu();             // [1, H, W]
            var overlay = Viz.Images.Overlay(grey, map)[0];                                   // [3, H, W]
            var safe = new string(words[i].Text.Select(c => char.IsLetterOrDigit(c) ? c : '_').ToArray());
            var file = Path.Combine(dir, $"{i:00}-{safe}.png");
            using var picture = Viz.Images.ToImage(overlay);
            new GenerationParameters(prompt, null, [("Word", words[i].Text)]).SavePng(picture, file);
            yield return file;
        }
    }

    // ---- progress ----

    /// <summary>A progress bar on a terminal, plain "step i/n" lines otherwise (logs, CI, pipes).</summary>
    static void Progress(int steps, int expected, Action<Action> run)
    {
        if (Console.IsOutputRedirected || !AnsiConsole.Profile.Capabilities.Interactive)
        {
            int done = 0;
            run(() => Console.WriteLine($"step {++done}/{expected}"));
            return;
        }
        AnsiConsole.Progress().AutoClear(true).Start(ctx =>
        {
            var task = ctx.AddTask($"sampling ({steps} steps)", maxValue: expected);
            run(() => task.Increment(1));
        });
    }
}
