using LdmLab.Autoencoders;
using LdmLab.Data;
using LdmLab.Metrics;
using LdmLab.Runtime;
using LdmLab.Training;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// `ldmlab train fashion-vae|fashion-denoiser [--out DIR]`: trains a recipe with its full-profile settings on the full data set and
/// writes a shipped checkpoint (model folder + checkpoint.json, see <see cref="ShippedCheckpoint"/>), default
/// data/checkpoints/NAME. The run checkpoints into DIR.partial and resumes from it; DIR is replaced only at the end.
/// </summary>
public static class TrainCommand
{
    const int FirstLossesKept = 5;

    static readonly string[] Recipes = [FashionLatentRecipe.ShippedVae, FashionLatentRecipe.ShippedDenoiser];

    public static int Run(string[] args)
    {
        if (args.Length == 0 || !Recipes.Contains(args[0]))
            throw new CliArgumentException($"usage: ldmlab train {string.Join("|", Recipes)} [--out DIR]");
        int outAt = Array.IndexOf(args, "--out");
        var outDir = Path.GetFullPath(outAt >= 0 && outAt + 1 < args.Length ? args[outAt + 1]
            : Path.Combine(NotebookRunner.FindRepoRoot(Directory.GetCurrentDirectory())
                           ?? throw new CliArgumentException("not inside the LdmLab checkout: pass --out DIR"),
                "data", "checkpoints", args[0]));
        Environment.SetEnvironmentVariable("LDMLAB_PROFILE", "full");   // the full recipe, whatever the caller's profile
        TorchRuntime.Setup();
        Lab.SetThreads();
        return args[0] == FashionLatentRecipe.ShippedVae ? Vae(outDir) : Denoiser(outDir);
    }

    static string Machine() => $"{Runtime.OneDnn.CpuIsa()}, {Environment.ProcessorCount} cores, {get_num_threads()} threads";

    /// <summary>The model folder is written beside the target and moved over it at the end.</summary>
    static void Replace(string staging, string outDir)
    {
        if (Directory.Exists(outDir)) Directory.Delete(outDir, true);
        Directory.Move(staging, outDir);
    }

    /// <summary>
    /// The latent denoiser on the shipped VAE's latents of all 60,000 training images (SD's scaled-linear schedule,
    /// ε-prediction), trained in a private cache folder; the EMA weights and the loss log are shipped.
    /// </summary>
    static int Denoiser(string outDir)
    {
        var vaeCheckpoint = ShippedCheckpoint.Find(FashionLatentRecipe.ShippedVae)
            ?? throw new CliArgumentException("train fashion-vae first: the denoiser learns the shipped VAE's latents");
        vaeCheckpoint.Verify();
        var vae = Autoencoders.AutoencoderKL.FromPretrained(vaeCheckpoint.Dir);
        vae.eval();
        var train = FashionMnist.Load(Split.Train);
        var (latents, scale) = FashionLatentRecipe.ScaledLatents(vae, train.Images);
        var schedule = Diffusion.NoiseSchedule.ScaledLinear();
        var options = FashionLatentRecipe.DenoiserOptions;
        Console.WriteLine($"training {FashionLatentRecipe.ShippedDenoiser}: {options.Steps} steps, batch {options.BatchSize}, " +
                          $"{latents.shape[0]:N0} latents (scale {scale:F4}) → {outDir}");
        var cache = outDir + ".partial";
        Environment.SetEnvironmentVariable("LDMLAB_CACHE", cache);
        var (model, log) = FashionLatentRecipe.LoadOrTrainDenoiser(latents, train.Labels, schedule,
            progress: new Viz.Progress(FashionLatentRecipe.ShippedDenoiser, options.Steps, Viz.Progress.Console, TimeSpan.FromSeconds(30)));
        var staging = outDir + ".new";
        if (Directory.Exists(staging)) Directory.Delete(staging, true);
        Directory.CreateDirectory(staging);
        const string weights = "denoiser.safetensors";
        Interop.StateDicts.Save(model, Path.Combine(staging, weights));
        Interop.SafeTensors.Save(Path.Combine(staging, FashionLatentRecipe.DenoiserLogFile), new Dictionary<string, Tensor>
        {
            ["losses"] = tensor(log.Losses.ToArray()), ["learning_rates"] = tensor(log.LearningRates.ToArray()),
        });
        var key = FashionLatentRecipe.DenoiserKey(latents, train.Labels, schedule, Training.PredictionType.Epsilon, null, options, 0);
        var metrics = new Dictionary<string, double>
        {
            ["train_loss_last_100_steps"] = Math.Round(log.Losses.TakeLast(100).Average(), 5),
            ["latent_scale"] = scale,
        };
        var shipped = ShippedCheckpoint.Write(staging, "FashionLatentRecipe.Denoiser (full profile)", key, options.Steps, 0, weights,
            log.Losses.Take(FirstLossesKept).ToList(), metrics,
            $"the shipped VAE's latents of Fashion-MNIST train (60,000), VAE sha256 {vaeCheckpoint.WeightsSha256[..12]}", Machine());
        Replace(staging, outDir);
        Directory.Delete(cache, true);
        Console.WriteLine($"wrote {outDir}: final loss {metrics["train_loss_last_100_steps"]}, sha256 {shipped.WeightsSha256}");
        return 0;
    }

    static int Vae(string outDir)
    {
        var train = FashionMnist.Load(Split.Train);
        var test = FashionMnist.Load(Split.Test, limit: 1000);
        const long seed = 0;
        var partial = outDir + ".partial";
        var options = FashionLatentRecipe.VaeOptions with
        {
            Seed = seed, CheckpointDir = partial, CheckpointEvery = 250,
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
        var staging = outDir + ".new";
        if (Directory.Exists(staging)) Directory.Delete(staging, true);
        vae.SavePretrained(staging);
        var metrics = new Dictionary<string, double>
        {
            ["test_psnr_db_first_1000"] = Math.Round(psnr, 3),
            ["train_reconstruction_l1_last_100_steps"] = Math.Round(log.Reconstruction.TakeLast(100).Average(), 5),
            ["scaling_factor"] = vae.Config.ScalingFactor,
        };
        var shipped = ShippedCheckpoint.Write(staging, "FashionLatentRecipe.Vae (full profile)",
            FashionLatentRecipe.VaeKey(train.Images, seed), options.Steps, seed, AutoencoderKL.WeightsName,
            log.Reconstruction.Take(FirstLossesKept).ToList(), metrics, "Fashion-MNIST train (60,000 images)", Machine());
        Replace(staging, outDir);
        Directory.Delete(partial, true);
        Console.WriteLine($"wrote {outDir}: test PSNR {psnr:F2} dB, scaling_factor {vae.Config.ScalingFactor:F4}, sha256 {shipped.WeightsSha256}");
        return 0;
    }
}
