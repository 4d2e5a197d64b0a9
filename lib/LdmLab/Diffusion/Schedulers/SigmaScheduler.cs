using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// The shared part of the σ-parameterised (k-diffusion) schedulers — Euler, Euler ancestral, Heun, LMS — as diffusers
/// defines it, written once:
/// 1. float timesteps by spacing, σ(t) by linear interpolation of the training table σ_t = √((1 − ᾱ_t)/ᾱ_t),
///    optionally Karras-spaced σ (then t = σ⁻¹(σ) by log-σ interpolation), and a final σ = 0;
/// 2. the model sees x / √(σ² + 1); x_T = noise · σ_max (√(σ_max² + 1) for "leading" spacing);
/// 3. the step index: found by looking the first timestep up (the second match if it repeats), then counted;
/// 4. x̂_0 from the model output for ε-, v- or x_0-prediction.
/// </summary>
public abstract class SigmaScheduler : Scheduler
{
    /// <summary>σ per step, ending in 0 (diffusers' scheduler.sigmas).</summary>
    public double[] Sigmas { get; protected set; } = [];
    int? _stepIndex;
    int? _beginIndex;

    protected SigmaScheduler(SchedulerConfig config, bool finiteFirstSigma = false) : base(config, finiteFirstSigma) { }

    /// <summary>The index of the step the next call to <see cref="Step"/> takes.</summary>
    protected int StepIndex => _stepIndex ?? throw new InvalidOperationException("no step taken yet");

    public override double InitNoiseSigma
    {
        get
        {
            double max = Sigmas.Length > 0 ? Sigmas.Max() : SigmaMath.Sigmas(Acp).Max();
            return Config.TimestepSpacing is "linspace" or "trailing" ? max : Math.Sqrt(max * max + 1);
        }
    }

    /// <summary>Step 1: (float timesteps, σ without the final 0) for n steps; Karras σ if configured and allowed.</summary>
    protected (double[] timesteps, double[] sigmas) SigmaTimesteps(int n, bool karrasSupported = true)
    {
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(n), n, "num_inference_steps must be ≥ 1");
        if (Config.UseKarrasSigmas && !karrasSupported)
            throw new NotSupportedException($"use_karras_sigmas is not offered by {GetType().Name} (diffusers v0.27.2)");
        int T = Config.NumTrainTimesteps;
        // diffusers builds these in float32 (np.linspace(…, dtype=np.float32) for "linspace")
        double[] ts = TimestepSpacing.Descending(Config.TimestepSpacing, T, n, Config.StepsOffset)
            .Select(t => (double)(float)t).ToArray();
        var table = SigmaMath.Sigmas(Acp);
        double[] sigmas = Config.InterpolationType switch
        {
            "linear" => ts.Select(t => SigmaMath.Interp(t, table)).ToArray(),
            "log_linear" => NoiseSchedule.Linspace(Math.Log(table[^1]), Math.Log(table[0]), n + 1).Select(v => Math.Exp(v)).ToArray(),
            var s => throw new NotSupportedException($"interpolation_type '{s}'"),
        };
        if (Config.UseKarrasSigmas)
        {
            var logSigmas = table.Select(s => MathF.Log(s)).ToArray();
            sigmas = SigmaMath.Karras(Config.SigmaMin ?? sigmas[^1], Config.SigmaMax ?? sigmas[0], n);
            ts = sigmas.Select(s => SigmaMath.SigmaToT(s, logSigmas)).ToArray();
        }
        return (ts, sigmas);
    }

    /// <summary>
    /// Installs a schedule: timesteps and σ in float32 (as diffusers' tensors), the final σ = 0 appended, the step
    /// counter cleared. Every σ-scheduler's SetTimesteps ends here.
    /// </summary>
    protected void UseSchedule(int n, double[] timesteps, double[] sigmas)
    {
        NumInferenceSteps = n;
        Sigmas = sigmas.Select(s => (double)(float)s).Append(0.0).ToArray();
        Timesteps = timesteps.Select(t => (double)(float)t).ToArray();
        _stepIndex = null;
        _beginIndex = null;
    }

    /// <summary>For img2img: start stepping at this index instead of looking the timestep up.</summary>
    public void SetBeginIndex(int index) => _beginIndex = index;

    /// <summary>The current step index (initialised from the timestep on first use).</summary>
    protected int CurrentIndex(double timestep)
    {
        if (NumInferenceSteps == 0) throw new InvalidOperationException("call SetTimesteps before ScaleModelInput or Step");
        return _stepIndex ??= _beginIndex ?? IndexOfTimestep(timestep);   // step 3
    }

    /// <summary>Advances the step counter (end of every Step).</summary>
    protected void Advance() => _stepIndex = StepIndex + 1;

    /// <summary>Step 2: c_in(σ) x = x / √(σ² + 1).</summary>
    public override Tensor ScaleModelInput(Tensor sample, double timestep)
    {
        double sigma = Sigmas[CurrentIndex(timestep)];
        return sample / Math.Sqrt(sigma * sigma + 1);
    }

    /// <summary>Step 4: x̂_0 in σ-space (<see cref="Predictions.DataFromSigmaSpace"/>).</summary>
    protected Tensor PredictX0(Tensor modelOutput, Tensor sample, double sigma, bool samplePredictionSupported = true) =>
        Config.PredictionType == "sample" && !samplePredictionSupported
            ? throw new NotSupportedException($"prediction_type 'sample' is not supported by {GetType().Name}")
            : Predictions.DataFromSigmaSpace(Config.PredictionType, modelOutput, sample, sigma);
}
