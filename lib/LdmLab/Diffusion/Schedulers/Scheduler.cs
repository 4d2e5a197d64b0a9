using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>What one reverse step produced: x_{t−1} and, where the method defines it, the predicted x_0.</summary>
public sealed record StepOutput(Tensor PrevSample, Tensor? PredOriginalSample);

/// <summary>
/// A diffusers-style scheduler: <see cref="SetTimesteps"/> picks the inference timesteps, <see cref="ScaleModelInput"/>
/// prepares the model input, <see cref="Step"/> maps (model output, t, x_t) to x_{t−1}. Models stay separate.
/// Multistep methods (DPM-Solver, PNDM) keep their history here, exactly as diffusers does; call SetTimesteps to reset.
/// </summary>
public abstract class Scheduler
{
    public SchedulerConfig Config { get; }
    public NoiseSchedule Schedule { get; }
    protected float[] Acp => Schedule.AlphasCumprod;

    /// <summary>The timesteps the model is called at, in order (integers, except Euler's interpolated ones).</summary>
    public double[] Timesteps { get; protected set; } = [];
    public int NumInferenceSteps { get; protected set; }

    /// <summary>Standard deviation of the initial noise: x_T = noise · InitNoiseSigma.</summary>
    public virtual double InitNoiseSigma => 1.0;

    /// <summary>How many model calls one logical step takes (for img2img start indices).</summary>
    public virtual int Order => 1;

    /// <param name="finiteFirstSigma">
    /// With rescale_betas_zero_snr the last ᾱ is 0 and σ_T = √((1 − ᾱ)/ᾱ) infinite; the σ-space schedulers
    /// (diffusers' Euler, Euler ancestral, DPM-Solver) then set ᾱ_T = 2⁻²⁴, the others keep it.
    /// </param>
    protected Scheduler(SchedulerConfig config, bool finiteFirstSigma = false)
    {
        Config = config;
        Schedule = config.Schedule();
        if (finiteFirstSigma && config.RescaleBetasZeroSnr) Schedule.AlphasCumprod[^1] = MathF.Pow(2, -24);
    }

    public abstract void SetTimesteps(int numInferenceSteps);
    public virtual Tensor ScaleModelInput(Tensor sample, double timestep) => sample;

    /// <param name="noise">The noise a stochastic step adds (DDPM, DDIM with η &gt; 0); drawn from torch's RNG when null.</param>
    public abstract StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null);

    /// <summary>img2img: the index into <see cref="Timesteps"/> to start from for a strength in [0, 1].</summary>
    public int StartIndexForStrength(double strength)
    {
        if (strength is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(strength), strength, "strength must lie in [0, 1]");
        int initTimestep = Math.Min((int)(NumInferenceSteps * strength), NumInferenceSteps);
        return Math.Max(NumInferenceSteps - initTimestep, 0) * Order;
    }

    /// <summary>Integer timesteps, descending, by the configured spacing (<see cref="TimestepSpacing"/>).</summary>
    protected long[] SpacedTimesteps(int n) =>
        TimestepSpacing.DescendingIntegers(Config.TimestepSpacing, Config.NumTrainTimesteps, n, Config.StepsOffset);

    /// <summary>
    /// The index of a timestep in <see cref="Timesteps"/>, as diffusers' index_for_timestep: a repeated timestep (Heun,
    /// img2img restarts) maps to its second occurrence; one that is not in the list is an error naming it, or, for the
    /// multistep solvers that diffusers lets fall back, the last index (<paramref name="lastIfMissing"/>).
    /// </summary>
    protected int IndexOfTimestep(double timestep, bool lastIfMissing = false)
    {
        var matches = Enumerable.Range(0, Timesteps.Length).Where(i => Timesteps[i] == timestep).Take(2).ToList();
        if (matches.Count == 0)
            return lastIfMissing ? Timesteps.Length - 1
                : throw new ArgumentException($"timestep {timestep} is not one of this scheduler's timesteps " +
                                              "(call SetTimesteps, and pass the values of Timesteps)", nameof(timestep));
        return matches[^1];
    }

    /// <summary>x̂_0 and ε̂ from the model output, for the configured prediction type (<see cref="Predictions"/>).</summary>
    protected (Tensor x0, Tensor eps) Predict(Tensor modelOutput, Tensor sample, double alphaProd)
    {
        double alpha = Math.Sqrt(alphaProd), sigma = Math.Sqrt(1 - alphaProd);
        return (Predictions.Data(Config.PredictionType, modelOutput, sample, alpha, sigma),
                Predictions.Noise(Config.PredictionType, modelOutput, sample, alpha, sigma));
    }

    protected Tensor MaybeClip(Tensor x0) => Config.ClipSample ? x0.clamp(-Config.ClipSampleRange, Config.ClipSampleRange) : x0;

    /// <summary>The diffusers scheduler classes <see cref="Create"/> builds.</summary>
    public static readonly string[] ClassNames =
    [
        "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
        "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler",
    ];

    /// <summary>
    /// diffusers' class defaults (v0.27.2 signatures), where they differ from <see cref="SchedulerConfig"/>'s: DDIM and
    /// DDPM clip x̂_0; PNDM keeps ᾱ_prev = ᾱ_0 at the end; the σ-space and multistep solvers space by "linspace"; Heun
    /// starts from SD's β range with a linear schedule; UniPC's solver is bh2.
    /// </summary>
    public static SchedulerConfig ClassDefaults(string className) => className switch
    {
        "DDIMScheduler" or "DDPMScheduler" => new() { ClipSample = true },
        "PNDMScheduler" => new() { SetAlphaToOne = false },
        "EulerDiscreteScheduler" or "EulerAncestralDiscreteScheduler" or "LMSDiscreteScheduler"
            or "DPMSolverMultistepScheduler" => new() { TimestepSpacing = "linspace" },
        "HeunDiscreteScheduler" => new() { TimestepSpacing = "linspace", BetaStart = 0.00085, BetaEnd = 0.012 },
        "UniPCMultistepScheduler" => new() { TimestepSpacing = "linspace", SolverType = "bh2" },
        _ => throw UnknownClass(className),
    };

    static NotSupportedException UnknownClass(string className) =>
        new($"scheduler class '{className}' is not one of {string.Join(", ", ClassNames)}");

    /// <summary>Builds a scheduler from a diffusers class name and config (as in scheduler_config.json).</summary>
    public static Scheduler Create(string className, JsonObject config)
    {
        var c = SchedulerConfig.FromJson(config, ClassDefaults(className));
        // PNDM, Heun, LMS and UniPC have no rescale_betas_zero_snr in diffusers v0.27.2: the key is ignored there
        var withoutZeroSnr = c with { RescaleBetasZeroSnr = false };
        return className switch
        {
            "DDIMScheduler" => new DdimScheduler(c),
            "DDPMScheduler" => new DdpmScheduler(c),
            "PNDMScheduler" => new PndmScheduler(withoutZeroSnr),
            "EulerDiscreteScheduler" => new EulerScheduler(c),
            "DPMSolverMultistepScheduler" => new DpmSolverMultistepScheduler(c),
            "EulerAncestralDiscreteScheduler" => new EulerAncestralScheduler(c),
            "HeunDiscreteScheduler" => new HeunScheduler(withoutZeroSnr),
            "LMSDiscreteScheduler" => new LmsScheduler(withoutZeroSnr),
            "UniPCMultistepScheduler" => new UniPcMultistepScheduler(withoutZeroSnr),
            _ => throw UnknownClass(className),
        };
    }
}
