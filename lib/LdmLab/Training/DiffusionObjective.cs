using LdmLab.Diffusion;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Training;

public enum PredictionType { Epsilon, VPrediction }

/// <summary>
/// The denoising objective on latents: t ~ U{0…T−1}, ε ~ N(0, I), z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε,
/// L = E[w(t) ‖f_θ(z_t, t, c) − target‖²] with target ε (ε-prediction) or v = √ᾱ_t ε − √(1−ᾱ_t) z_0,
/// and optional min-SNR-γ weighting (Hang et al. 2023): w = min(SNR, γ)/SNR for ε, min(SNR, γ)/(SNR + 1) for v.
/// </summary>
public sealed class DiffusionObjective(NoiseSchedule schedule, PredictionType prediction = PredictionType.Epsilon, double? minSnrGamma = null)
{
    public NoiseSchedule Schedule { get; } = schedule;
    public PredictionType Prediction { get; } = prediction;
    public double? MinSnrGamma { get; } = minSnrGamma;
    readonly float[] _snr = schedule.AlphasCumprod.Select(a => (float)(a / (1.0 - a))).ToArray();

    /// <summary>Per-sample weights w(t) for int64 timesteps [B].</summary>
    public Tensor Weights(Tensor t)
    {
        if (MinSnrGamma is not double g) return ones(t.shape[0], device: t.device);
        var snr = tensor(_snr).to(t.device)[t];                                                    // SNR(t) per sample [B]
        var clipped = snr.clamp(max: g);
        return Prediction == PredictionType.Epsilon ? clipped / snr : clipped / (snr + 1);
    }

    /// <summary>
    /// The loss for one batch; <paramref name="model"/> maps (z_t, t) to the prediction. t and ε are drawn where the
    /// generator lives (a CPU generator: on the CPU, so a run draws the same numbers on any device), then moved to z_0's.
    /// </summary>
    public Tensor Loss(Func<Tensor, Tensor, Tensor> model, Tensor z0, Generator? generator = null)
    {
        long b = z0.shape[0];
        var drawOn = generator?.device ?? z0.device;
        var t = randint(0, Schedule.Length, [b], dtype: ScalarType.Int64, device: drawOn, generator: generator).to(z0.device);
        var noise = randn(z0.shape, dtype: z0.dtype, device: drawOn, generator: generator).to(z0.device);
        var zt = Schedule.AddNoise(z0, noise, t);
        var target = Prediction == PredictionType.Epsilon ? noise : Schedule.Velocity(z0, noise, t);
        var perSample = (model(zt, t) - target).pow(2).mean([1, 2, 3]);
        return (perSample * Weights(t)).mean();
    }

    /// <summary>
    /// DreamBooth's objective with prior preservation (Ruiz et al. 2023; diffusers' train_dreambooth.py): one forward
    /// of the batch [instance; class] — the few images of the subject with the identifier prompt, and images the base
    /// model drew from the class prompt — split in halves after the prediction,
    /// <code>L = ‖f(z_t, c_inst) − target‖²_inst + w · ‖f(z_t, c_class) − target‖²_class</code>
    /// each term a mean over its half; with min-SNR-γ the instance term is weighted per sample (diffusers weights the
    /// instance term only) and the prior term stays a plain mean. The prior term keeps the class as the base model
    /// drew it (against language drift and overfitting); w is 1 in diffusers, 0.5 in the chapter's sketch.
    /// <paramref name="model"/> maps
    /// (z_t, t, rows) for the concatenated batch; conditions are the instance rows then the class rows.
    /// </summary>
    public (Tensor Loss, Tensor Instance, Tensor Prior) PriorPreservationLoss(Func<Tensor, Tensor, Tensor> model,
        Tensor instance, Tensor prior, double priorWeight, Generator? generator = null)
    {
        if (instance.shape[0] < 1 || prior.shape[0] < 1)
            throw new ArgumentException($"{instance.shape[0]} instance and {prior.shape[0]} class examples: prior " +
                                        "preservation needs at least one of each", nameof(prior));
        if (!instance.shape.Skip(1).SequenceEqual(prior.shape.Skip(1)))
            throw new ArgumentException($"instance latents [{string.Join(", ", instance.shape)}] and class latents " +
                                        $"[{string.Join(", ", prior.shape)}] differ beyond the batch", nameof(prior));
        var z0 = cat([instance, prior]);                                                     // [Bi + Bp, c, h, w]
        long b = z0.shape[0];
        var drawOn = generator?.device ?? z0.device;
        var t = randint(0, Schedule.Length, [b], dtype: ScalarType.Int64, device: drawOn, generator: generator)
            .to(z0.device);
        var noise = randn(z0.shape, dtype: z0.dtype, device: drawOn, generator: generator).to(z0.device);
        var zt = Schedule.AddNoise(z0, noise, t);
        var target = Prediction == PredictionType.Epsilon ? noise : Schedule.Velocity(z0, noise, t);
        var squared = (model(zt, t) - target).pow(2);                                        // [B, c, h, w]
        long bi = instance.shape[0];
        var instanceTerm = (squared.narrow(0, 0, bi).mean([1, 2, 3]) * Weights(t.narrow(0, 0, bi))).mean();
        var priorTerm = squared.narrow(0, bi, b - bi).mean();
        return (instanceTerm + priorWeight * priorTerm, instanceTerm, priorTerm);
    }

    /// <summary>Classifier-free guidance training: replace each label by <paramref name="nullLabel"/> with probability p.</summary>
    public static Tensor DropLabels(Tensor labels, double p, long nullLabel, Generator? generator = null)
        => DropConditions(labels, p, tensor(nullLabel), generator);

    /// <summary>
    /// Condition dropout for any condition rows [N, …] (labels [N], token ids [N, L]): each row is replaced by
    /// <paramref name="nullRow"/> with probability p, from one uniform draw per row.
    /// </summary>
    public static Tensor DropConditions(Tensor conditions, double p, Tensor nullRow, Generator? generator = null)
    {
        if (p <= 0) return conditions;
        var drop = (rand([conditions.shape[0]], device: generator?.device ?? conditions.device, generator: generator) < p)
            .to(conditions.device);                                                  // [N]
        if (nullRow.dim() == 0)                                                      // class labels: fill with the null class
            return conditions.masked_fill(drop, conditions.is_floating_point()
                ? nullRow.to_type(ScalarType.Float64).item<double>() : nullRow.to_type(ScalarType.Int64).item<long>());
        var shape = new long[conditions.dim()];
        Array.Fill(shape, 1L);
        shape[0] = conditions.shape[0];
        return where(drop.reshape(shape), nullRow.to(conditions.device).to(conditions.dtype), conditions);  // [N, …]
    }
}
