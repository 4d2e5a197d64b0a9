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

    protected Scheduler(SchedulerConfig config)
    {
        Config = config;
        Schedule = config.Schedule();
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

    /// <summary>Integer timesteps by diffusers' spacing rules (Table 2 of Lin et al. 2023).</summary>
    protected long[] SpacedTimesteps(int n)
    {
        if (n < 1 || n > Config.NumTrainTimesteps)
            throw new ArgumentOutOfRangeException(nameof(n), n, $"num_inference_steps must be in 1..{Config.NumTrainTimesteps}");
        int T = Config.NumTrainTimesteps;
        return Config.TimestepSpacing switch
        {
            "linspace" => Enumerable.Range(0, n).Select(i => (long)Math.Round(n == 1 ? 0 : i * (T - 1.0) / (n - 1), MidpointRounding.ToEven)).Reverse().ToArray(),
            "leading" => Enumerable.Range(0, n).Select(i => (long)i * (T / n) + Config.StepsOffset).Reverse().ToArray(),
            "trailing" => Arange(T, 0, -(double)T / n).Select(v => (long)Math.Round(v, MidpointRounding.ToEven) - 1).ToArray(),
            var s => throw new NotSupportedException($"timestep_spacing '{s}'"),
        };
    }

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

    /// <summary>numpy.arange(start, stop, step) for a negative step.</summary>
    protected static IEnumerable<double> Arange(double start, double stop, double step) => SigmaMath.Arange(start, stop, step);

    /// <summary>x̂_0 and ε̂ from the model output, for the configured prediction type.</summary>
    protected (Tensor x0, Tensor eps) Predict(Tensor modelOutput, Tensor sample, double alphaProd)
    {
        double a = Math.Sqrt(alphaProd), b = Math.Sqrt(1 - alphaProd);
        return Config.PredictionType switch
        {
            "epsilon" => ((sample - b * modelOutput) / a, modelOutput),
            "sample" => (modelOutput, (sample - a * modelOutput) / b),
            "v_prediction" => (a * sample - b * modelOutput, a * modelOutput + b * sample),
            var p => throw new NotSupportedException($"prediction_type '{p}'"),
        };
    }

    protected Tensor MaybeClip(Tensor x0) => Config.ClipSample ? x0.clamp(-Config.ClipSampleRange, Config.ClipSampleRange) : x0;

    /// <summary>The diffusers scheduler classes <see cref="Create"/> builds.</summary>
    public static readonly string[] ClassNames =
    [
        "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
        "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler", "UniPCMultistepScheduler",
    ];

    /// <summary>Builds a scheduler from a diffusers class name and config (as in scheduler_config.json).</summary>
    public static Scheduler Create(string className, JsonObject config) => className switch
    {
        // diffusers' class defaults: DDIM and DDPM clip x̂_0 unless told otherwise; Euler and DPM-Solver use linspace spacing
        "DDIMScheduler" => new DdimScheduler(SchedulerConfig.FromJson(config, defaultClipSample: true)),
        "DDPMScheduler" => new DdpmScheduler(SchedulerConfig.FromJson(config, defaultClipSample: true)),
        "PNDMScheduler" => new PndmScheduler(SchedulerConfig.FromJson(config)),
        "EulerDiscreteScheduler" => new EulerScheduler(SchedulerConfig.FromJson(config, "linspace")),
        "DPMSolverMultistepScheduler" => new DpmSolverMultistepScheduler(SchedulerConfig.FromJson(config, "linspace")),
        "EulerAncestralDiscreteScheduler" => new EulerAncestralScheduler(SchedulerConfig.FromJson(config, "linspace")),
        "HeunDiscreteScheduler" => new HeunScheduler(SchedulerConfig.FromJson(config, "linspace")),
        "LMSDiscreteScheduler" => new LmsScheduler(SchedulerConfig.FromJson(config, "linspace")),
        "UniPCMultistepScheduler" => new UniPcMultistepScheduler(SchedulerConfig.FromJson(config, "linspace")),
        _ => throw new NotSupportedException($"scheduler class '{className}' is not one of {string.Join(", ", ClassNames)}"),
    };
}
