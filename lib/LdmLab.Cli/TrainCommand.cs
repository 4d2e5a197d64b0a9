using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Metrics;
using LdmLab.Runtime;
using LdmLab.Training;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// `ldmlab train fashion-vae|fashion-denoiser|fashion-classifier|fashion-vq|photo-autoencoders|fashion-text2img…
/// [--out DIR] [--only NAME] [--schedule S]` (fashion-text2img-bidirectional, -deep and -side-first are issue 28's
/// encoder variants, <see cref="EncoderVariantRecipe"/>):
/// trains a recipe with its full-profile settings on the full data set and writes a shipped checkpoint (model folder +
/// checkpoint.json, see <see cref="ShippedCheckpoint"/>), default data/checkpoints/NAME. The run checkpoints into
/// DIR.partial and resumes from it; DIR is replaced only at the end. fashion-vq, photo-autoencoders, fashion-modes,
/// fashion-kl-sweep and
/// fashion-denoiser (one per --schedule) write one folder
/// per model (<see cref="AutoencoderRecipes.ShippedName"/>) under DIR (default data/checkpoints), skip models already
/// shipped with the same recipe key, and train only NAME with --only.
/// </summary>
public static class TrainCommand
{
    const int FirstLossesKept = 5;

    const string FashionVq = "fashion-vq", PhotoAutoencoders = "photo-autoencoders", FashionModes = "fashion-modes",
        FashionKlSweep = "fashion-kl-sweep", FashionFineTunes = "fashion-fine-tunes";

    static readonly string[] Recipes =
        [FashionLatentRecipe.ShippedVae, FashionLatentRecipe.ShippedDenoiser, ClassifierRecipe.Shipped, FashionVq, PhotoAutoencoders,
         TextToImageRecipe.Shipped, MultiResolutionRecipe.Shipped, FashionModes, FashionKlSweep, FashionFineTunes,
         ..EncoderVariantRecipe.All.Where(v => v != EncoderVariant.Causal).Select(EncoderVariantRecipe.ShippedName)];

    public static int Run(string[] args)
    {
        if (args.Length > 0 && FineTuneCommand.Methods.Contains(args[0])) return FineTuneCommand.Run(args);
        if (args.Length == 0 || !Recipes.Contains(args[0]))
            throw new CliArgumentException($"usage: ldmlab train {string.Join("|", FineTuneCommand.Methods)} … " +
                "(ldmlab train lora --help)\n       " +
                $"ldmlab train {string.Join("|", Recipes)} [--out DIR] " +
                $"[--only NAME] [--method {string.Join("|", Methods)} (fashion-text2img)] [--without CLASS] " +
                "[--schedule scaled-linear|linear|cosine|snr-adaptive|zero-snr|all (fashion-denoiser)]");
        string? Option(string name)
        {
            int at = Array.IndexOf(args, name);
            if (at < 0) return null;
            return at + 1 < args.Length ? args[at + 1] : throw new CliArgumentException($"{name} needs a value");
        }
        bool perModel = args[0] is FashionVq or PhotoAutoencoders or FashionModes or FashionKlSweep
            or FashionLatentRecipe.ShippedDenoiser or FashionFineTunes;
        var method = Option("--method") is { } named
            ? Enum.GetValues<ConditioningMethod>().Where(m => Name(m) == named).Cast<ConditioningMethod?>()
                  .FirstOrDefault() ?? Unknown(named)
            : ConditioningMethod.CrossAttention;
        int? without = Option("--without") is { } held ? HeldOut(held, args[0], method) : null;
        var outDir = Path.GetFullPath(Option("--out")
            ?? Path.Combine(NotebookRunner.FindRepoRoot(Directory.GetCurrentDirectory())
                            ?? throw new CliArgumentException("not inside the LdmLab checkout: pass --out DIR"),
                "data", "checkpoints", perModel ? "" : without is { } w ? TextToImageRecipe.ShippedWithout(w)
                : args[0] == TextToImageRecipe.Shipped ? TextToImageRecipe.ShippedName(method) : args[0]));
        var schedules = args[0] == FashionLatentRecipe.ShippedDenoiser ? Schedules(Option("--schedule")) : [];
        Lab.Settings = Lab.Settings with { Profile = Profile.Full };  // the full recipe, whatever the caller's profile
        TorchRuntime.Setup();
        Lab.SetThreads();
        return args[0] switch
        {
            FashionLatentRecipe.ShippedVae => Vae(outDir),
            FashionLatentRecipe.ShippedDenoiser => Denoisers(outDir, schedules),
            ClassifierRecipe.Shipped => Classifier(outDir),
            TextToImageRecipe.Shipped => TextToImage(outDir, method, without),
            MultiResolutionRecipe.Shipped => MultiResolution(outDir),
            var name when EncoderVariantRecipe.Named(name) is { } variant => EncoderVariantModel(outDir, variant),
            FashionVq => FashionVqModel(outDir),
            FashionModes => Modes(outDir, Option("--only")),
            FashionKlSweep => KlSweep(outDir, Option("--only")),
            FashionFineTunes => FineTunes(outDir, Option("--only")),
            _ => Photo(outDir, Option("--only")),
        };
    }

    static string[] Methods => Enum.GetValues<ConditioningMethod>().Select(Name).ToArray();

    /// <summary>A conditioning method as the command line names it: cross-attention, film, concatenation, …</summary>
    static string Name(ConditioningMethod method) =>
        method == ConditioningMethod.CrossAttention ? "cross-attention" : method.ToString().ToLowerInvariant();

    /// <summary>--without CLASS: a Fashion-MNIST class noun (hyphens for spaces), for the cross-attention model.
    /// </summary>
    static int HeldOut(string named, string recipe, ConditioningMethod method)
    {
        if (recipe != TextToImageRecipe.Shipped || method != ConditioningMethod.CrossAttention)
            throw new CliArgumentException("--without is an option of fashion-text2img with cross-attention");
        int label = Array.IndexOf(CaptionedFashion.Nouns, named.Replace('-', ' '));
        return label >= 0 ? label : throw new CliArgumentException(
            $"--without {named}: not one of " +
            string.Join(", ", CaptionedFashion.Nouns.Select(n => n.Replace(' ', '-'))));
    }

    static ConditioningMethod Unknown(string named) =>
        throw new CliArgumentException($"--method {named}: not one of {string.Join(", ", Methods)}");

    static string Machine() => $"{Runtime.OneDnn.CpuIsa()}, {Environment.ProcessorCount} cores, {get_num_threads()} threads";

    /// <summary>
    /// Ships a model as <paramref name="outDir"/> through <see cref="ArtifactStore.Ship"/> (staged, verified,
    /// replaced) with this machine and the first losses of its run recorded, and says so.
    /// </summary>
    static ShippedCheckpoint Ship(string outDir, string recipe, string key, int steps, long seed, string weightsFile,
        IEnumerable<double> losses, IReadOnlyDictionary<string, double> metrics, string trainedOn,
        Action<string> writeModel, string summary)
    {
        var shipped = ArtifactStore.Ship(Path.GetDirectoryName(outDir)!, Path.GetFileName(outDir),
            new ShipRecord(recipe, key, steps, seed, weightsFile, losses.Take(FirstLossesKept).ToList(), metrics,
                trainedOn, Machine()), writeModel);
        Console.WriteLine($"wrote {outDir}: {summary}, sha256 {shipped.WeightsSha256}");
        return shipped;
    }

    /// <summary>Whether NAME is already shipped under <paramref name="root"/> with this recipe key (then it is skipped).
    /// </summary>
    static bool AlreadyShipped(string root, string name, string key)
    {
        if (!ArtifactStore.IsShipped(name, key, root)) return false;
        Console.WriteLine($"{name}: already shipped with recipe key {key}, skipped");
        return true;
    }

    /// <summary>
    /// The latent denoisers of notebook 04's schedule study (<see cref="FashionLatentRecipe.StudySchedules"/>), each on
    /// the shipped VAE's latents of all 60,000 training images with <see cref="FashionLatentRecipe.PredictionFor"/> its
    /// schedule, trained in a private cache folder; the EMA weights (float16) and the loss log are shipped.
    /// --schedule NAME|all picks them (default: SD's scaled-linear, <c>fashion-denoiser</c>); a model already shipped
    /// with the same recipe key is skipped.
    /// </summary>
    static int Denoisers(string root, IReadOnlyList<(string Name, Diffusion.NoiseSchedule Schedule)> chosen)
    {
        var vaeCheckpoint = ShippedCheckpoint.Find(FashionLatentRecipe.ShippedVae)
            ?? throw new CliArgumentException("train fashion-vae first: the denoiser learns the shipped VAE's latents");
        vaeCheckpoint.Verify();
        var vae = AutoencoderKL.FromPretrained(vaeCheckpoint.Dir);
        vae.eval();
        var train = FashionMnist.Load(Split.Train);
        var (latents, scale) = FashionLatentRecipe.ScaledLatents(vae, train.Images);
        var options = FashionLatentRecipe.DenoiserOptions;
        foreach (var (name, noise) in chosen)
        {
            var outDir = Path.Combine(root, name);
            var prediction = FashionLatentRecipe.PredictionFor(noise);
            var key = FashionLatentRecipe.DenoiserKey(latents, train.Labels, noise, prediction, null, options, 0);
            if (AlreadyShipped(root, name, key)) continue;
            Console.WriteLine($"training {name} ({noise.Name}, {prediction}): {options.Steps} steps, batch " +
                              $"{options.BatchSize}, {latents.shape[0]:N0} latents (scale {scale:F4}) → {outDir}");
            var (model, log) = (Lab.Settings with { CacheDir = ArtifactStore.PartialDir(root, name) }).Apply(() =>
                FashionLatentRecipe.LoadOrTrainDenoiser(latents, train.Labels, noise, prediction,
                    progress: new Viz.Progress(name, options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(60))));
            ShipDenoiser(outDir, model, log, scale, $"FashionLatentRecipe.Denoiser {noise.Name} (full profile)", key,
                $"the shipped VAE's latents of Fashion-MNIST train (60,000), VAE sha256 " +
                $"{vaeCheckpoint.WeightsSha256[..12]}; {prediction} target");
        }
        return 0;
    }

    /// <summary>The judge of generated images: trained on all 60,000 training images, measured on all 10,000 test images.</summary>
    static int Classifier(string outDir)
    {
        var train = FashionMnist.Load(Split.Train);
        var test = FashionMnist.Load(Split.Test);
        int steps = ClassifierRecipe.Steps;
        Console.WriteLine($"training {ClassifierRecipe.Shipped}: {steps} steps, batch {ClassifierRecipe.BatchSize} → {outDir}");
        var (model, log) = ClassifierRecipe.Train(train, steps,
            new Viz.Progress(ClassifierRecipe.Shipped, steps, Viz.Progress.Console, TimeSpan.FromSeconds(30)));
        double accuracy = ClassifierTraining.Accuracy(model, test.Images, test.Labels);
        var metrics = new Dictionary<string, double>
        {
            ["test_accuracy_10000"] = Math.Round(accuracy, 5),
            ["train_loss_last_100_steps"] = Math.Round(log.Losses.TakeLast(100).Average(), 5),
        };
        Ship(outDir, "ClassifierRecipe (full profile)", ClassifierRecipe.Key(train, steps), steps, ClassifierRecipe.Seed,
            ClassifierRecipe.WeightsFile, log.Losses, metrics, "Fashion-MNIST train (60,000 images)",
            dir => Interop.StateDicts.Save(model, Path.Combine(dir, ClassifierRecipe.WeightsFile)),
            $"test accuracy {accuracy:P2}");
        return 0;
    }

    /// <summary>
    /// The text-to-image model of notebooks 05/06 (or one of its conditioning variants, same budget) on the shipped
    /// VAE's latents of 60,000 captioned scenes (half of them two items), trained in a private cache folder
    /// (resumable); the EMA weights and the loss log are shipped.
    /// </summary>
    static int TextToImage(string outDir, ConditioningMethod method, int? without)
    {
        var vaeCheckpoint = ShippedCheckpoint.Find(FashionLatentRecipe.ShippedVae)
            ?? throw new CliArgumentException("train fashion-vae first: the text-to-image model learns the shipped VAE's latents");
        vaeCheckpoint.Verify();
        var vae = Autoencoders.AutoencoderKL.FromPretrained(vaeCheckpoint.Dir);
        vae.eval();
        var train = FashionMnist.Load(Split.Train);
        var scenes = without is { } held ? TextToImageRecipe.ScenesWithout(train, held)
            : TextToImageRecipe.Scenes(train);
        var (latents, scale) = FashionLatentRecipe.ScaledLatents(vae, scenes.Images);
        var options = TextToImageRecipe.Options;
        var name = without is { } w ? TextToImageRecipe.ShippedWithout(w) : TextToImageRecipe.ShippedName(method);
        Console.WriteLine($"training {name} ({Name(method)}): {options.Steps} steps, batch {options.BatchSize}, " +
                          $"{latents.shape[0]:N0} scenes, latents {string.Join("×", latents.shape.Skip(1))} → {outDir}");
        var run = options with
        {
            CheckpointDir = ArtifactStore.PartialDir(outDir),
            CheckpointEvery = 250,
            Seed = 0,
        };
        var (model, log) = TextToImageRecipe.Train(method, latents, scenes.Captions, run,
            new Viz.Progress(name, options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(60)));
        var metrics = DenoiserMetrics(log, scale, model);
        var heldOut = without is { } h ? $" without {CaptionedFashion.Nouns[h]}" : "";
        Ship(outDir, $"TextToImageRecipe {Name(method)}{heldOut} (full profile)",
            TextToImageRecipe.Key(latents, scenes.Captions, options, 0, method), options.Steps, 0,
            TextToImageRecipe.WeightsFile, log.Losses, metrics,
            $"the shipped VAE's latents of {scenes.Count:N0} captioned 28×56 scenes from Fashion-MNIST " +
            $"train{heldOut}, " +
            "VAE sha256 " +
            vaeCheckpoint.WeightsSha256[..12], dir => TextToImageRecipe.SaveShipped(model, log, dir),
            $"final loss {metrics["train_loss_last_100_steps"]}");
        return 0;
    }

    /// <summary>
    /// A text-encoder variant of the cross-attention model (issue 28, <see cref="EncoderVariantRecipe"/>): the same
    /// scenes, budget and seed as fashion-text2img, trained in a private folder (resumable); the EMA weights and the
    /// loss log are shipped.
    /// </summary>
    static int EncoderVariantModel(string outDir, EncoderVariant variant)
    {
        var vaeCheckpoint = ShippedCheckpoint.Find(FashionLatentRecipe.ShippedVae)
            ?? throw new CliArgumentException("train fashion-vae first: the model learns the shipped VAE's latents");
        vaeCheckpoint.Verify();
        var vae = AutoencoderKL.FromPretrained(vaeCheckpoint.Dir);
        vae.eval();
        var scenes = TextToImageRecipe.Scenes(FashionMnist.Load(Split.Train));
        var (latents, scale) = FashionLatentRecipe.ScaledLatents(vae, scenes.Images);
        var options = TextToImageRecipe.Options;
        var name = EncoderVariantRecipe.ShippedName(variant);
        var captions = EncoderVariantRecipe.Captions(variant, scenes.Captions);
        Console.WriteLine($"training {name}: {options.Steps} steps, batch {options.BatchSize}, " +
                          $"{latents.shape[0]:N0} scenes (\"{captions[0]}\", …) → {outDir}");
        var (model, log) = EncoderVariantRecipe.Train(variant, latents, scenes.Captions, options with
        {
            CheckpointDir = ArtifactStore.PartialDir(outDir),
            CheckpointEvery = 250,
            Seed = 0,
        }, new Viz.Progress(name, options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(60)));
        var metrics = DenoiserMetrics(log, scale, model);
        Ship(outDir, $"EncoderVariantRecipe {EncoderVariantRecipe.Label(variant)} (full profile)",
            EncoderVariantRecipe.Key(variant, latents, captions, options, 0), options.Steps, 0,
            TextToImageRecipe.WeightsFile, log.Losses, metrics,
            $"the shipped VAE's latents of {scenes.Count:N0} captioned 28×56 scenes from Fashion-MNIST train" +
            (variant == EncoderVariant.SideFirst ? ", captions side first" : "") +
            $", VAE sha256 {vaeCheckpoint.WeightsSha256[..12]}",
            dir => TextToImageRecipe.SaveShipped(model, log, dir),
            $"final loss {metrics["train_loss_last_100_steps"]}");
        return 0;
    }

    /// <summary>
    /// The multi-resolution text-to-image model of notebook 11 (<see cref="MultiResolutionRecipe"/>): the
    /// cross-attention model's configs, budget and seed on the shipped VAE's latents of 60,000 scenes on 28×28,
    /// 28×56 and 56×56 canvases, trained in a private cache folder (resumable); the EMA weights and the loss log are
    /// shipped.
    /// </summary>
    static int MultiResolution(string outDir)
    {
        var vaeCheckpoint = ShippedCheckpoint.Find(FashionLatentRecipe.ShippedVae)
            ?? throw new CliArgumentException("train fashion-vae first: the model learns the shipped VAE's latents");
        vaeCheckpoint.Verify();
        var vae = AutoencoderKL.FromPretrained(vaeCheckpoint.Dir);
        vae.eval();
        var scenes = MultiResolutionRecipe.Scenes(FashionMnist.Load(Split.Train));
        var options = MultiResolutionRecipe.Options;
        var name = MultiResolutionRecipe.Shipped;
        var buckets = string.Join(", ", scenes.Select(b =>
            $"{b.Size} {b.Count:N0} scenes batch {MultiResolutionRecipe.BatchFor(b.Size, options)}"));
        Console.WriteLine($"training {name}: {options.Steps} steps, {buckets} → {outDir}");
        var (model, log) = MultiResolutionRecipe.Train(vae, scenes, options with
        {
            CheckpointDir = ArtifactStore.PartialDir(outDir),
            CheckpointEvery = 250,
            Seed = 0,
        }, new Viz.Progress(name, options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(60)));
        var metrics = DenoiserMetrics(log, vae.Config.ScalingFactor, model);
        Ship(outDir, "MultiResolutionRecipe (full profile)", MultiResolutionRecipe.Key(vae, scenes, options, 0),
            options.Steps, 0, TextToImageRecipe.WeightsFile, log.Losses, metrics,
            $"the shipped VAE's latents of {scenes.Sum(b => b.Count):N0} captioned scenes from Fashion-MNIST train " +
            $"({buckets}), VAE sha256 {vaeCheckpoint.WeightsSha256[..12]}",
            dir => TextToImageRecipe.SaveShipped(model, log, dir),
            $"final loss {metrics["train_loss_last_100_steps"]}, {metrics["training_seconds"]} s");
        return 0;
    }

    /// <summary>
    /// The quality modes of notebook 06c (section 10.3.5): per f = 2, 4, 8 a KL autoencoder on all 60,000 training
    /// images padded to 32×32 (<c>ae-kl-fF-c4-fashion32</c>) and the class-conditional denoiser on its latents
    /// (<c>fashion-denoiser-fF-32</c>, weights in float16); --only F trains one factor. Pairs already shipped with
    /// the same recipe keys are skipped.
    /// </summary>
    static int Modes(string root, string? only)
    {
        var factors = only is null ? QualityModesRecipe.Factors
            : QualityModesRecipe.Factors.Where(f => f.ToString() == only).ToArray() is { Length: 1 } one ? one
            : throw new CliArgumentException($"--only {only}: one of {string.Join(", ", QualityModesRecipe.Factors)}");
        var train = FashionMnist.Load(Split.Train);
        var images = QualityModesRecipe.Pad(train.Images);                                    // [60000, 1, 32, 32]
        var test = QualityModesRecipe.Pad(FashionMnist.Load(Split.Test, limit: 1000).Images);
        var resnet = new ResNet18Features(AutoencoderRecipes.PhotoSize);
        var readBack = Lab.Settings with { CheckpointsDir = root, Profile = Profile.Quick };  // the ones just shipped
        foreach (int f in factors)
        {
            var spec = QualityModesRecipe.Autoencoder(f);
            ShipAutoencoder(root, spec, images, test, resnet, "Fashion-MNIST train (60,000 images) padded to 32×32",
                "first_1000_test");
            var vae = (AutoencoderKL)readBack.Apply(() => AutoencoderRecipes.LoadOrTrain(spec, images)).Model;
            var (latents, scale) = QualityModesRecipe.Latents(vae, images);
            var options = QualityModesRecipe.DenoiserOptions;
            var name = QualityModesRecipe.ShippedDenoiser(f);
            var outDir = Path.Combine(root, name);
            var key = QualityModesRecipe.DenoiserKey(f, latents, train.Labels, options, 0);
            if (AlreadyShipped(root, name, key)) continue;
            Console.WriteLine($"training {name}: {options.Steps} steps, batch {options.BatchSize}, latents " +
                              $"{string.Join("×", latents.shape.Skip(1))} (scale {scale:F4}) → {outDir}");
            var (model, log) = QualityModesRecipe.TrainDenoiser(f, latents, train.Labels,
                options with { CheckpointDir = ArtifactStore.PartialDir(root, name), CheckpointEvery = 250, Seed = 0 },
                new Viz.Progress(name, options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(60)));
            ShipDenoiser(outDir, model, log, scale, $"QualityModesRecipe f = {f} (full profile)", key,
                $"the latents of {AutoencoderRecipes.ShippedName(spec)} of Fashion-MNIST train padded to 32×32 (60,000)");
        }
        return 0;
    }

    /// <summary>A shipped denoiser's metrics: the mean of the last 100 losses, the latent scale, the training
    /// seconds and, given the model, its parameter count.</summary>
    static Dictionary<string, double> DenoiserMetrics(DiffusionTrainingLog log, double scale,
        nn.Module? model = null)
    {
        var metrics = new Dictionary<string, double>
        {
            ["train_loss_last_100_steps"] = Math.Round(log.Losses.TakeLast(100).Average(), 5),
            ["latent_scale"] = scale,
            ["training_seconds"] = Math.Round(log.Elapsed.TotalSeconds),
        };
        if (model is not null) metrics["parameters"] = model.parameters().Sum(p => p.numel());
        return metrics;
    }

    /// <summary>
    /// Ships a trained class-conditional denoiser: its EMA weights in float16, its loss log, its loss over the last 100
    /// steps, latent scale and training time, staged beside <paramref name="outDir"/> and moved over it at the end.
    /// </summary>
    static void ShipDenoiser(string outDir, ClassConditionedUNet model, DiffusionTrainingLog log, double scale,
        string recipe, string key, string trainedOn)
    {
        var metrics = DenoiserMetrics(log, scale);
        Ship(outDir, recipe, key, log.Losses.Count, 0, FashionLatentRecipe.DenoiserWeightsFile, log.Losses, metrics,
            trainedOn + "; weights stored in float16", dir =>
            {
                Interop.SafeTensors.Save(Path.Combine(dir, FashionLatentRecipe.DenoiserWeightsFile),
                    model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.to_type(ScalarType.Float16)));
                log.Save(Path.Combine(dir, FashionLatentRecipe.DenoiserLogFile));
            }, $"final loss {metrics["train_loss_last_100_steps"]}");
    }

    /// <summary>
    /// Notebook 08's fine-tuning runs (<see cref="FineTuneLab"/>): the new class taught to the shipped model trained
    /// without it by each of <see cref="FineTuneLab.Specs"/>, and the subject runs; each trained in a private folder
    /// and shipped with its file, its losses, its training time and trainable count. --only NAME (a shipped folder's
    /// name) trains one; runs already shipped with the same recipe key are skipped.
    /// </summary>
    static int FineTunes(string root, string? only)
    {
        var readBack = Lab.Settings with { CheckpointsDir = root, Profile = Profile.Quick };   // the shipped base
        var vaeCheckpoint = ShippedCheckpoint.Find(FashionLatentRecipe.ShippedVae)
            ?? throw new CliArgumentException("train fashion-vae first");
        var vae = AutoencoderKL.FromPretrained(vaeCheckpoint.Dir);
        vae.eval();
        var train = FashionMnist.Load(Split.Train);
        var baseName = TextToImageRecipe.ShippedWithout(TextToImageRecipe.HeldOutClass);
        if (ShippedCheckpoint.Read(Path.Combine(root, baseName)) is null)
            throw new CliArgumentException($"train the base first: ldmlab train fashion-text2img --without " +
                                           CaptionedFashion.Nouns[TextToImageRecipe.HeldOutClass]);
        var baseModel = readBack.Apply(() => TextToImageRecipe.LoadWithout(TextToImageRecipe.HeldOutClass, train, vae))
            .Model;
        var newClass = FineTuneLab.NewClass(train);
        var subject = FineTuneLab.Subject(FashionMnist.Load(Split.Test));
        var runs = FineTuneLab.Specs.Select(s => (target: newClass, spec: s))
            .Concat(FineTuneLab.SubjectSpecs.Select(s => (target: subject, spec: s))).ToList();
        var names = runs.Select(r => FineTuneLab.ShippedName(r.target, r.spec)).ToList();
        if (only is not null && !names.Contains(only))
            throw new CliArgumentException($"--only {only}: not one of {string.Join(", ", names)}");
        foreach (var (target, spec) in runs)
        {
            var name = FineTuneLab.ShippedName(target, spec);
            if (only is not null && name != only) continue;
            var options = FineTuneLab.Options(spec) with { Seed = 0 };
            var key = FineTuneLab.Key(target, spec, baseModel, options, 0);
            if (AlreadyShipped(root, name, key)) continue;
            Console.WriteLine($"training {name} ({spec.Label}): {options.Steps} steps, batch {options.BatchSize}");
            var partial = ArtifactStore.PartialDir(root, name);
            var (tuned, result) = FineTuneLab.Train(spec, target, baseModel, vae, options, partial,
                new Viz.Progress(name, options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(30)));
            var metrics = new Dictionary<string, double>
            {
                ["training_seconds"] = Math.Round(result.Log.Elapsed.TotalSeconds, 1),
                ["trainable_parameters"] = result.Trainable,
                ["file_bytes"] = tuned.FileBytes,
                ["loss_last_50_steps"] = Math.Round(result.Log.Losses.TakeLast(50).Average(), 5),
            };
            Ship(Path.Combine(root, name), $"FineTuneLab {spec.Label} (full profile)", key, options.Steps, 0,
                spec.WeightsFile, result.Log.Losses, metrics,
                $"{target.Items.shape[0]} images of '{target.Word}' (Fashion-MNIST), base {baseName}",
                dir =>
                {
                    foreach (var file in Directory.EnumerateFiles(partial))
                        File.Copy(file, Path.Combine(dir, Path.GetFileName(file)));
                }, $"{result.Trainable:N0} trainable parameters, {result.Log.Elapsed.TotalSeconds:F0} s");
        }
        return 0;
    }

    /// <summary>The study schedules --schedule names (default: SD's scaled-linear; all: the five).</summary>
    public static IReadOnlyList<(string Name, Diffusion.NoiseSchedule Schedule)> Schedules(string? schedule)
    {
        var all = FashionLatentRecipe.StudySchedules;
        string Short(string name) => name == FashionLatentRecipe.ShippedDenoiser ? "scaled-linear"
            : name[(FashionLatentRecipe.ShippedDenoiser.Length + 1)..];
        return schedule is null ? all.Where(s => s.Name == FashionLatentRecipe.ShippedDenoiser).ToList()
            : schedule == "all" ? all
            : all.Where(s => Short(s.Name) == schedule).ToList() is { Count: 1 } one ? one
            : throw new CliArgumentException($"--schedule {schedule}: not one of all, " +
                                             string.Join(", ", all.Select(s => Short(s.Name))));
    }

    /// <summary>
    /// The KL-weight sweep of notebook 02 (section 10.2.3): the Fashion VAE's architecture at β = 10⁻⁶ … 1, each by the
    /// full recipe on all 60,000 training images, measured on the first 1,000 test images; --only NAME trains one.
    /// </summary>
    static int KlSweep(string root, string? only)
    {
        var chosen = Only(AutoencoderRecipes.KlSweep(), only);
        var train = FashionMnist.Load(Split.Train);
        var test = FashionMnist.Load(Split.Test, limit: 1000);
        var resnet = new ResNet18Features(AutoencoderRecipes.PhotoSize);
        foreach (var spec in chosen)
            ShipAutoencoder(root, spec, train.Images, test.Images, resnet, "Fashion-MNIST train (60,000 images)",
                "first_1000_test");
        return 0;
    }

    /// <summary>The VQ twin of the Fashion VAE (notebook 02), on all 60,000 training images.</summary>
    static int FashionVqModel(string root)
    {
        var train = FashionMnist.Load(Split.Train);
        var test = FashionMnist.Load(Split.Test, limit: 1000);
        var resnet = new ResNet18Features(AutoencoderRecipes.PhotoSize);
        ShipAutoencoder(root, AutoencoderRecipes.Fashion(vq: true), train.Images, test.Images, resnet,
            "Fashion-MNIST train (60,000 images)", "first_1000_test");
        return 0;
    }

    /// <summary>
    /// The rate–distortion sweep and the loss ablation of notebook 02 on 4,096 training crops; metrics on the 256
    /// held-out crops the full profile evaluates.
    /// </summary>
    static int Photo(string root, string? only)
    {
        var photos = new ImageFolder(AutoencoderRecipes.PhotoFolder, AutoencoderRecipes.PhotoShortSide);
        var (train, heldOut) = AutoencoderRecipes.PhotoCrops(photos, AutoencoderRecipes.PhotoTrainCrops, AutoencoderRecipes.PhotoHeldOutCrops);
        var chosen = Only(AutoencoderRecipes.RateDistortion().Concat(AutoencoderRecipes.LossAblation())
            .DistinctBy(AutoencoderRecipes.ShippedName).ToList(), only);
        var resnet = new ResNet18Features(AutoencoderRecipes.PhotoSize);
        foreach (var spec in chosen)
            ShipAutoencoder(root, spec, train, heldOut, resnet,
                $"{train.shape[0]:N0} random 64×64 crops of {photos.Files.Count} mate-backgrounds photos (short side " +
                $"{AutoencoderRecipes.PhotoShortSide}), left of each photo's held-out right quarter",
                $"{heldOut.shape[0]}_held_out_crops");
        return 0;
    }

    /// <summary>The specs --only NAME picks (all without it); an unknown NAME is an error listing the names.</summary>
    static IReadOnlyList<AutoencoderSpec> Only(IReadOnlyList<AutoencoderSpec> specs, string? only) =>
        only is null ? specs
        : specs.Where(s => AutoencoderRecipes.ShippedName(s) == only).ToList() is { Count: > 0 } picked ? picked
        : throw new CliArgumentException($"--only {only}: not one of " +
                                         string.Join(", ", specs.Select(AutoencoderRecipes.ShippedName)));

    static void ShipAutoencoder(string root, AutoencoderSpec spec, Tensor train, Tensor heldOut, ResNet18Features resnet,
        string trainedOn, string evaluatedOn)
    {
        var name = AutoencoderRecipes.ShippedName(spec);
        var outDir = Path.Combine(root, name);
        var key = AutoencoderRecipes.Key(spec, train, 0);
        if (AlreadyShipped(root, name, key)) return;
        Console.WriteLine($"training {name} ({spec.Name}, {spec.Losses}): {spec.Options.Steps} steps, batch {spec.Options.BatchSize} → {outDir}");
        var ae = (Lab.Settings with { CacheDir = ArtifactStore.PartialDir(root, name) }).Apply(() =>
            AutoencoderRecipes.LoadOrTrain(spec, train,
                new Viz.Progress(name, spec.Options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(60)), resnet));
        var report = AutoencoderRecipes.Evaluate(ae, heldOut, resnet);
        var metrics = new Dictionary<string, double>
        {
            [$"psnr_db_{evaluatedOn}"] = Math.Round(report.Psnr, 3),
            [$"ssim_{evaluatedOn}"] = Math.Round(report.Ssim, 4),
            [$"perceptual_{evaluatedOn}"] = Math.Round(report.Perceptual, 4),
            [$"frechet_resnet18_{evaluatedOn}"] = Math.Round(report.FrechetResNet18, 3),
            ["train_l1_last_50_steps"] = Math.Round(ae.Log.TakeLast(50).Average(s => s.Reconstruction), 5),
        };
        if (report.CodebookUsage is double usage) metrics[$"codebook_usage_{evaluatedOn}"] = Math.Round(usage, 4);
        Ship(outDir, $"AutoencoderRecipes {spec.Name} (full profile)", key, spec.Options.Steps, 0,
            AutoencoderRecipes.ShippedWeightsFile, ae.Log.Select(s => s.Reconstruction), metrics, trainedOn,
            dir => AutoencoderRecipes.WriteShipped(ae, dir), $"PSNR {report.Psnr:F2} dB on {heldOut.shape[0]} images");
    }

    static int Vae(string outDir)
    {
        var train = FashionMnist.Load(Split.Train);
        var test = FashionMnist.Load(Split.Test, limit: 1000);
        const long seed = 0;
        var partial = ArtifactStore.PartialDir(outDir);
        var options = FashionLatentRecipe.VaeOptions with
        {
            Seed = seed,
            CheckpointDir = partial,
            CheckpointEvery = 250,
        };
        Console.WriteLine($"training {FashionLatentRecipe.ShippedVae}: {options.Steps} steps, batch {options.BatchSize}, " +
                          $"{train.Images.shape[0]:N0} images → {outDir}");
        manual_seed(seed);
        var vae = FashionLatentRecipe.NewVae();
        var log = VaeTrainer.Train(vae, train.Images, options,
            new Viz.Progress(FashionLatentRecipe.ShippedVae, options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(30)));
        vae.eval();
        vae.UseScalingFactor(FashionLatentRecipe.MeasureScalingFactor(vae, train.Images));
        double psnr;
        using (no_grad())
        {
            var recon = VaeTrainer.DecodeBatched(vae, VaeTrainer.EncodeMeans(vae, test.Images)).clamp(-1, 1);
            psnr = ImageQuality.Psnr(recon, test.Images).mean().item<float>();
        }
        var metrics = new Dictionary<string, double>
        {
            ["test_psnr_db_first_1000"] = Math.Round(psnr, 3),
            ["train_reconstruction_l1_last_100_steps"] = Math.Round(log.Reconstruction.TakeLast(100).Average(), 5),
            ["scaling_factor"] = vae.Config.ScalingFactor,
        };
        Ship(outDir, "FashionLatentRecipe.Vae (full profile)", FashionLatentRecipe.VaeKey(train.Images, seed),
            options.Steps, seed, AutoencoderKL.WeightsName, log.Reconstruction, metrics,
            "Fashion-MNIST train (60,000 images)", vae.SavePretrained,
            $"test PSNR {psnr:F2} dB, scaling_factor {vae.Config.ScalingFactor:F4}");
        return 0;
    }
}
