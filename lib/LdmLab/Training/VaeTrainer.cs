using LdmLab.Interop;
using LdmLab.Autoencoders;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Training;

public enum ReconstructionLoss { L1, L2 }

/// <summary>Settings of a (pixel-loss) KL-VAE run: L = ‖x − x̂‖ + β·KL, β small (1e-6 by default, as in LDM).</summary>
public sealed record VaeTrainerOptions
{
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 64;
    public double LearningRate { get; init; } = 1e-3;
    public int WarmupSteps { get; init; } = 50;
    public double KlWeight { get; init; } = 1e-6;
    public ReconstructionLoss Loss { get; init; } = ReconstructionLoss.L1;
    public double ClipGradNorm { get; init; } = 1.0;
    public long Seed { get; init; }
    /// <summary>Where the run checkpoints (every <see cref="CheckpointEvery"/> steps and at the end) and resumes from.</summary>
    public string? CheckpointDir { get; init; }
    public int CheckpointEvery { get; init; }

    /// <summary>The same run as <see cref="AutoencoderTrainer"/> settings: pixel loss + β·KL, no perceptual or adversarial term.</summary>
    public AutoencoderLossOptions ToLossOptions() => new() { Pixel = Loss, KlWeight = KlWeight };

    public AutoencoderTrainerOptions ToTrainerOptions() => new()
    {
        Steps = Steps, BatchSize = BatchSize, LearningRate = LearningRate, WarmupSteps = WarmupSteps, ClipGradNorm = ClipGradNorm, Seed = Seed,
        CheckpointDir = CheckpointDir, CheckpointEvery = CheckpointEvery,
    };
}

/// <summary>Trains an AutoencoderKL on images in [-1, 1] with a pixel loss and a KL term; per-step dispose scopes.</summary>
public static class VaeTrainer
{
    public sealed record Log(IReadOnlyList<double> Reconstruction, IReadOnlyList<double> Kl, TimeSpan Elapsed);

    /// <summary>Pixel loss + β·KL only: the <see cref="AutoencoderTrainer"/> with the perceptual and adversarial terms off.</summary>
    public static Log Train(AutoencoderKL vae, Tensor images, VaeTrainerOptions o, Viz.Progress? progress = null)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var trainer = new AutoencoderTrainer(vae, o.ToLossOptions(), o.ToTrainerOptions());
        var log = trainer.Train(images, progress);
        // the trainer logs β·KL/pixel; report the per-pixel KL itself
        return new Log(log.Select(s => s.Reconstruction).ToList(), log.Select(s => o.KlWeight > 0 ? s.Regulariser / o.KlWeight : 0).ToList(), sw.Elapsed);
    }

    /// <summary>Posterior means of <paramref name="images"/>, in batches, without gradients.</summary>
    public static Tensor EncodeMeans(AutoencoderKL vae, Tensor images, int batchSize = 256) => Nn.Batched.Map(vae, images, batchSize, x => vae.Encode(x).Mean);

    public static Tensor DecodeBatched(AutoencoderKL vae, Tensor latents, int batchSize = 256) => Nn.Batched.Map(vae, latents, batchSize, z => vae.Decode(z));
}
