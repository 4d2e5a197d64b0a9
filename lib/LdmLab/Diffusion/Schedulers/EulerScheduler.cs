using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// Euler's method on the probability-flow ODE in σ-space (Karras et al. 2022, k-diffusion's sample_euler):
/// x̂_0 = x − σ ε̂,  d = (x − x̂_0)/σ,  x_{next} = x + d (σ_next − σ). The model sees x/√(σ² + 1).
/// Timesteps are fractional (linear interpolation of σ in t); optional Karras σ spacing.
/// </summary>
public sealed class EulerScheduler : Scheduler
{
    public double[] Sigmas { get; private set; } = [];
    int? _stepIndex;
    int? _beginIndex;

    public EulerScheduler(SchedulerConfig config) : base(config)
    {
        if (config.RescaleBetasZeroSnr) Acp[^1] = MathF.Pow(2, -24);   // so that the first σ is finite
    }

    public override double InitNoiseSigma
    {
        get
        {
            double max = Sigmas.Length > 0 ? Sigmas.Max() : SigmaMath.Sigmas(Acp).Max();
            return Config.TimestepSpacing is "linspace" or "trailing" ? max : Math.Sqrt(max * max + 1);
        }
    }

    public override void SetTimesteps(int n)
    {
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(n), n, "num_inference_steps must be ≥ 1");
        NumInferenceSteps = n;
        int T = Config.NumTrainTimesteps;
        double[] ts = Config.TimestepSpacing switch
        {
            "linspace" => Enumerable.Range(0, n).Select(i => (double)(float)(n == 1 ? 0 : i * (T - 1.0) / (n - 1))).Reverse().ToArray(),
            "leading" => Enumerable.Range(0, n).Select(i => (double)(i * (T / n) + Config.StepsOffset)).Reverse().ToArray(),
            "trailing" => Arange(T, 0, -(double)T / n).Select(v => Math.Round(v, MidpointRounding.ToEven) - 1).ToArray(),
            var s => throw new NotSupportedException($"timestep_spacing '{s}'"),
        };
        var table = SigmaMath.Sigmas(Acp);
        var logSigmas = table.Select(s => MathF.Log(s)).ToArray();
        double[] sigmas = Config.InterpolationType switch
        {
            "linear" => ts.Select(t => SigmaMath.Interp(t, table)).ToArray(),
            "log_linear" => NoiseSchedule.Linspace(Math.Log(table[^1]), Math.Log(table[0]), n + 1).Select(v => Math.Exp(v)).ToArray(),
            var s => throw new NotSupportedException($"interpolation_type '{s}'"),
        };
        if (Config.UseKarrasSigmas)
        {
            sigmas = SigmaMath.Karras(Config.SigmaMin ?? sigmas[^1], Config.SigmaMax ?? sigmas[0], n);
            ts = sigmas.Select(s => SigmaMath.SigmaToT(s, logSigmas)).ToArray();
        }
        if (Config.TimestepType == "continuous" && Config.PredictionType == "v_prediction")
            ts = sigmas.Select(s => 0.25 * Math.Log(s)).ToArray();
        Sigmas = sigmas.Select(s => (double)(float)s).Append(0.0).ToArray();
        Timesteps = ts.Select(t => (double)(float)t).ToArray();
        _stepIndex = null;
        _beginIndex = null;
    }

    /// <summary>For img2img: start stepping at this index instead of looking the timestep up.</summary>
    public void SetBeginIndex(int index) => _beginIndex = index;

    int IndexFor(double timestep)
    {
        var matches = Enumerable.Range(0, Timesteps.Length).Where(i => Timesteps[i] == timestep).ToList();
        if (matches.Count == 0) throw new ArgumentException($"timestep {timestep} is not one of this scheduler's timesteps", nameof(timestep));
        return matches.Count > 1 ? matches[1] : matches[0];
    }

    int CurrentIndex(double timestep) => _stepIndex ??= _beginIndex ?? IndexFor(timestep);

    public override Tensor ScaleModelInput(Tensor sample, double timestep)
    {
        double sigma = Sigmas[CurrentIndex(timestep)];
        return sample / Math.Sqrt(sigma * sigma + 1);
    }

    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null) =>
        Step(modelOutput, timestep, sample, noise, sChurn: 0);

    /// <summary>The stochastic variant (s_churn &gt; 0) adds noise to raise σ to σ̂ = σ(1 + γ) first.</summary>
    public StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise, double sChurn, double sTmin = 0, double sTmax = double.PositiveInfinity, double sNoise = 1)
    {
        if (NumInferenceSteps == 0) throw new InvalidOperationException("call SetTimesteps before Step");
        int i = CurrentIndex(timestep);
        double sigma = Sigmas[i];
        double gamma = sTmin <= sigma && sigma <= sTmax ? Math.Min(sChurn / (Sigmas.Length - 1), Math.Sqrt(2) - 1) : 0;
        double sigmaHat = sigma * (gamma + 1);
        if (gamma > 0) sample = sample + (noise ?? randn_like(modelOutput)) * sNoise * Math.Sqrt(sigmaHat * sigmaHat - sigma * sigma);
        var x0 = Config.PredictionType switch
        {
            "epsilon" => sample - sigmaHat * modelOutput,
            "v_prediction" => modelOutput * (-sigma / Math.Sqrt(sigma * sigma + 1)) + sample / (sigma * sigma + 1),
            "sample" => modelOutput,
            var p => throw new NotSupportedException($"prediction_type '{p}'"),
        };
        var derivative = (sample - x0) / sigmaHat;
        var prev = sample + derivative * (Sigmas[i + 1] - sigmaHat);
        _stepIndex = i + 1;
        return new StepOutput(prev, x0);
    }
}
