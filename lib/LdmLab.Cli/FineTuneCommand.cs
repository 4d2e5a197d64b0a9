using System.Globalization;
using LdmLab.Adapters;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using LdmLab.Training;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// <c>ldmlab train lora|textual-inversion|dreambooth</c>: teaches any model the library loads (a diffusers folder, a
/// hub repo id, a one-file checkpoint, the lab's shipped text-to-image models) a class of the lab's data or a folder
/// of images, through <see cref="FineTuneRecipe"/>, with progress, and writes the files the ecosystem reads:
/// pytorch_lora_weights.safetensors (diffusers, or kohya's dialect), learned_embeds.safetensors, or a whole diffusers
/// pipeline folder for DreamBooth; fine-tune-log.json beside them. Every error names its argument and exits 2.
/// </summary>
public static class FineTuneCommand
{
    public static readonly string[] Methods = ["lora", "textual-inversion", "dreambooth"];

    public const string Usage = """
        usage: ldmlab train lora|textual-inversion|dreambooth --model DIR|REPO_ID|FILE --out DIR
                 (--class NAME | --data FOLDER [--prompt TEXT]) [options]
          --model DIR|REPO_ID|FILE  the base model, as ldmlab sample takes it (e.g. the lab's
                             data/checkpoints/fashion-text2img-without-sneaker)
          --class NAME       (the lab's models) teach this Fashion-MNIST class from the first --images items of its
                             training split, captioned as the lab captions ("a photo of a sneaker on the left")
          --images N         how many items with --class (default 20)
          --data FOLDER      images (.png .jpg .webp .bmp) to learn from, resized to the model's size
          --prompt TEXT      the caption of every --data image (textual inversion: must hold --token)
          --steps N  --lr X  --batch N  --seed N   training settings (defaults: notebook 08's per method)
          lora:              --rank R (default 4)  --format diffusers|kohya (default diffusers)
          textual-inversion: --token TOKEN (default <NAME>)  --init WORD (one-token initializer; default the class's
                             superclass, e.g. shoe)  --vectors N (default 1)
          dreambooth:        --class-prompt TEXT (default with --class: "a photo of a SUPERCLASS")
                             --prior-weight W (default 1; 0: no prior preservation)  --class-images N (default 100)
          --out DIR          where the files go (created; files of the same name are replaced whole)
        """;

    sealed record Arguments(string Method, string Model, string Out, string? Class, int Images, string? Data,
        string? Prompt, int? Steps, double? Lr, int? Batch, long Seed, int Rank, string Format, string? Token,
        string? Init, int Vectors, string? ClassPrompt, double PriorWeight, int ClassImages);

    public static int Run(string[] args)
    {
        if (args.Length < 2 || args[1] is "-h" or "--help")
        {
            Console.WriteLine(Usage);
            return args.Length < 2 ? 2 : 0;
        }
        var a = Parse(args);
        TorchRuntime.Setup();
        Lab.SetThreads();
        var (pipeline, modelName, size) = SampleCommand.LoadModel(a.Model, null);
        var model = new TextConditionedUNet(pipeline.Unet, pipeline.TextEncoder, pipeline.Tokenizer);
        var spec = a.Method switch
        {
            "lora" => new FineTuneSpec(FineTuneKind.Lora, Rank: a.Rank),
            "textual-inversion" => new FineTuneSpec(FineTuneKind.TextualInversion, Vectors: a.Vectors),
            _ => new FineTuneSpec(FineTuneKind.DreamBooth, PriorWeight: a.PriorWeight),
        };
        var (height, width) = size ?? (pipeline.Unet.Config.SampleSize * pipeline.VaeScaleFactor,
            pipeline.Unet.Config.SampleSize * pipeline.VaeScaleFactor);
        var (images, captions, word, classWord) = Examples(a, spec, size is not null, pipeline, height, width);
        var defaults = FineTuneLab.Options(spec);
        var options = defaults with
        {
            Steps = a.Steps ?? defaults.Steps,
            LearningRate = a.Lr ?? defaults.LearningRate,
            BatchSize = a.Batch ?? defaults.BatchSize,
            Seed = a.Seed,
        };
        Tensor latents;
        using (no_grad())
            latents = VaeTrainer.EncodeMeans(pipeline.Vae, images) * pipeline.Vae.Config.ScalingFactor;
        Console.WriteLine($"{spec.Label} on {modelName}: {images.shape[0]} examples {width}×{height} → latents " +
                          $"{string.Join("×", latents.shape.Skip(1))}, {options.Steps} steps, " +
                          $"batch {options.BatchSize}" +
                          $", lr {options.LearningRate.ToString(CultureInfo.InvariantCulture)}");
        Tensor? priorLatents = null;
        IReadOnlyList<string>? priorCaptions = null;
        if (spec.Kind == FineTuneKind.DreamBooth && spec.PriorWeight > 0)
        {
            var classPrompt = a.ClassPrompt ?? (classWord is { } c ? $"a photo of a {c}"
                : throw new CliArgumentException("dreambooth with prior preservation needs --class-prompt TEXT " +
                                                 "(or --prior-weight 0)"));
            (priorLatents, priorCaptions) = ClassImages(pipeline, classPrompt, a.ClassImages, height, width, a.Seed,
                size is not null);
        }
        var objective = FineTuneRecipe.Objective(pipeline.SchedulerConfig);
        var result = FineTuneRecipe.Run(spec, model, objective, latents, captions, options, word, a.Init ?? classWord,
            priorLatents, priorCaptions,
            new Viz.Progress(spec.Name, options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(10)));
        Write(a, result, model, pipeline);
        return 0;
    }

    /// <summary>The training images [N, C, H, W] in [−1, 1], their captions, the word they teach (the token for
    /// textual inversion) and the class word (initializer, class prompt) where one is known.</summary>
    static (Tensor Images, IReadOnlyList<string> Captions, string? Word, string? ClassWord) Examples(Arguments a,
        FineTuneSpec spec, bool labModel, StableDiffusionPipeline pipeline, int height, int width)
    {
        if (a.Class is { } name)
        {
            if (!labModel)
                throw new CliArgumentException($"--class {name}: classes are the lab's Fashion-MNIST data, for the " +
                                               "lab's text-to-image models; give --data FOLDER for this model");
            int label = Array.IndexOf(CaptionedFashion.Nouns, name.Replace('-', ' '));
            if (label < 0)
                throw new CliArgumentException($"--class {name}: not one of " +
                                               string.Join(", ",
                                                   CaptionedFashion.Nouns.Select(n => n.Replace(' ', '-'))));
            FineTuneTarget target;
            try { target = FineTuneLab.NewClass(FashionMnist.Load(Split.Train), label, a.Images); }
            catch (ArgumentException e) { throw new CliArgumentException($"--images {a.Images}: {e.Message}"); }
            var word = spec.Kind == FineTuneKind.TextualInversion ? a.Token ?? target.Token : target.Word;
            var scenes = FineTuneLab.InstanceScenes(target, word, (int)a.Seed);
            return (scenes.Images, scenes.Captions, word, target.ClassWord);
        }
        var files = Directory.EnumerateFiles(a.Data!).Where(f => ImageFolder.Extensions.Contains(
            Path.GetExtension(f).ToLowerInvariant())).Order(StringComparer.Ordinal).ToList();
        if (files.Count == 0)
            throw new CliArgumentException(
                $"--data '{a.Data}': no images ({string.Join(" ", ImageFolder.Extensions)})");
        var token = a.Token ?? "<concept>";
        var prompt = a.Prompt ?? (spec.Kind == FineTuneKind.TextualInversion ? $"a photo of {token}"
            : throw new CliArgumentException("--data needs --prompt TEXT (the caption of every image)"));
        if (spec.Kind == FineTuneKind.TextualInversion && !prompt.Contains(token, StringComparison.Ordinal))
            throw new CliArgumentException(
                $"--prompt '{prompt}': textual inversion learns {token}; use it in the prompt");
        if (spec.Kind == FineTuneKind.TextualInversion && a.Init is null)
            throw new CliArgumentException("textual-inversion with --data needs --init WORD (a one-token word " +
                                           "close to " +
                                           "the concept, e.g. toy, dog)");
        var images = stack(files.Select(f => LoadImage(f, pipeline.Vae.Config.InChannels, width, height)).ToArray());
        return (images, Enumerable.Repeat(prompt, files.Count).ToList(),
            spec.Kind == FineTuneKind.TextualInversion ? token : null, null);
    }

    static Tensor LoadImage(string path, long channels, int width, int height)
    {
        try
        {
            using var image = Image.Load<Rgb24>(path);
            image.Mutate(x => x.Resize(new ResizeOptions
            {
                Size = new SixLabors.ImageSharp.Size(width, height), Mode = ResizeMode.Crop,
            }));
            var rgb = ImageTensors.FromImage(image);                                          // [3, H, W] in [0, 1]
            return (channels == 1 ? rgb.mean([0], keepdim: true) : rgb) * 2 - 1;              // [C, H, W] in [−1, 1]
        }
        catch (Exception e) when (e is UnknownImageFormatException or InvalidImageContentException or IOException)
        {
            throw new CliArgumentException($"--data: '{path}' is not an image ({e.Message})");
        }
    }

    /// <summary>DreamBooth's class images: the base model's own drawings of the class prompt (DDIM-free: the
    /// model's scheduler, 25 steps, w = 5 for the lab's models and 7.5 otherwise), as latents.</summary>
    static (Tensor, IReadOnlyList<string>) ClassImages(StableDiffusionPipeline pipeline, string prompt, int count,
        int height, int width, long seed, bool labModel)
    {
        Console.WriteLine($"drawing {count} class images of \"{prompt}\" with the base model");
        var latents = new List<Tensor>();
        for (int start = 0; start < count; start += 25)
        {
            int n = Math.Min(25, count - start);
            var output = pipeline.Generate(new GenerationOptions
            {
                Prompts = Enumerable.Repeat(prompt, n).ToArray(), Steps = 25, GuidanceScale = labModel ? 5 : 7.5,
                Height = height, Width = width, Seed = 10_000 + seed + start,
            });
            latents.Add(output.Latents.cpu());                                                 // [n, c, h, w]
        }
        return (cat(latents.ToArray()), Enumerable.Repeat(prompt, count).ToList());
    }

    static void Write(Arguments a, FineTuneResult result, TextConditionedUNet model, StableDiffusionPipeline pipeline)
    {
        Directory.CreateDirectory(a.Out);
        string written;
        switch (result.Spec.Kind)
        {
            case FineTuneKind.Lora when a.Format == "kohya":
                written = Path.Combine(a.Out, "lora.safetensors");
                LoraFiles.SaveKohya(result.Lora!, written);
                FineTuneRecipe.SaveLog(result, a.Out);
                break;
            case FineTuneKind.Lora or FineTuneKind.TextualInversion:
                FineTuneRecipe.Save(result, model, a.Out);
                written = Path.Combine(a.Out, result.Spec.WeightsFile);
                break;
            default:
                var staging = Path.GetFullPath(a.Out).TrimEnd('/') + ".tmp";
                if (Directory.Exists(staging)) Directory.Delete(staging, true);
                pipeline.SavePretrained(staging);
                FineTuneRecipe.SaveLog(result, staging);
                foreach (var entry in Directory.EnumerateFileSystemEntries(staging))
                {
                    var target = Path.Combine(a.Out, Path.GetFileName(entry));
                    if (Directory.Exists(target)) Directory.Delete(target, true);
                    if (Directory.Exists(entry)) Directory.Move(entry, target);
                    else File.Move(entry, target, overwrite: true);
                }
                Directory.Delete(staging, true);
                written = a.Out + " (a diffusers pipeline folder: ldmlab sample --model " + a.Out + ")";
                break;
        }
        var log = result.Log;
        Console.WriteLine($"wrote {written}: {result.Trainable:N0} trainable parameters, " +
                          $"{log.Elapsed.TotalSeconds:F0} s, " +
                          $"loss {log.Losses.Take(10).Average():F4} (first 10 steps) → " +
                          $"{log.Losses.TakeLast(10).Average():F4} (last 10)");
    }

    // ---- arguments ----

    static Arguments Parse(string[] args)
    {
        var values = new Dictionary<string, string>();
        string[] known = ["--model", "--out", "--class", "--images", "--data", "--prompt", "--steps", "--lr", "--batch",
            "--seed", "--rank", "--format", "--token", "--init", "--vectors", "--class-prompt", "--prior-weight",
            "--class-images"];
        for (int i = 1; i < args.Length; i++)
        {
            var name = args[i];
            if (!known.Contains(name))
                throw new CliArgumentException($"{name}: not an option of ldmlab train {args[0]}\n\n{Usage}");
            bool text = name is "--prompt" or "--class-prompt";
            if (i + 1 >= args.Length || (args[i + 1].StartsWith("--", StringComparison.Ordinal) && !text))
                throw new CliArgumentException($"{name} needs a value");
            if (!values.TryAdd(name, args[++i])) throw new CliArgumentException($"{name} is given twice");
        }
        string Required(string name) => values.TryGetValue(name, out var v) && v.Trim().Length > 0 ? v
            : throw new CliArgumentException($"{name} is required\n\n{Usage}");
        int? Whole(string name, int min, int max = int.MaxValue)
        {
            if (!values.TryGetValue(name, out var v)) return null;
            return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n)
                   && n >= min && n <= max
                ? n : throw new CliArgumentException($"{name} '{v}': expected a whole number in [{min}, {max}]");
        }
        double? Real(string name, double min, double max)
        {
            if (!values.TryGetValue(name, out var v)) return null;
            return double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var x)
                   && x >= min && x <= max
                ? x : throw new CliArgumentException($"{name} '{v}': expected a number in [{min}, {max}]");
        }
        void Only(string option, string method)
        {
            if (values.ContainsKey(option) && args[0] != method)
                throw new CliArgumentException($"{option} is an option of ldmlab train {method}, not {args[0]}");
        }
        Only("--rank", "lora");
        Only("--format", "lora");
        foreach (var o in new[] { "--token", "--init", "--vectors" }) Only(o, "textual-inversion");
        foreach (var o in new[] { "--class-prompt", "--prior-weight", "--class-images" }) Only(o, "dreambooth");
        var (cls, data) = (values.GetValueOrDefault("--class"), values.GetValueOrDefault("--data"));
        if ((cls is null) == (data is null))
            throw new CliArgumentException("give one of --class NAME (the lab's data) or --data FOLDER (your images)");
        if (data is not null && !Directory.Exists(data))
            throw new CliArgumentException($"--data '{data}': folder not found");
        var format = values.GetValueOrDefault("--format") ?? "diffusers";
        if (format is not ("diffusers" or "kohya"))
            throw new CliArgumentException($"--format '{format}': expected diffusers or kohya");
        var output = Required("--out");
        if (File.Exists(output)) throw new CliArgumentException($"--out '{output}': a file; give a folder");
        return new Arguments(args[0], Required("--model"), output, cls, Whole("--images", 1, 6000) ?? 20, data,
            values.GetValueOrDefault("--prompt"), Whole("--steps", 1, 1_000_000), Real("--lr", 1e-8, 1),
            Whole("--batch", 1, 4096), Whole("--seed", 0) ?? 0, Whole("--rank", 1, 1024) ?? 4, format,
            values.GetValueOrDefault("--token"), values.GetValueOrDefault("--init"), Whole("--vectors", 1, 64) ?? 1,
            values.GetValueOrDefault("--class-prompt"), Real("--prior-weight", 0, 100) ?? 1.0,
            Whole("--class-images", 1, 10_000) ?? 100);
    }
}
