using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// Euler's method on the probability-flow ODE in σ-space (Karras et al. 2022, k-diffusion's sample_euler):
/// x̂_0 = x − σ ε̂,  d = (x − x̂_0)/σ,  x_{next} = x + d (σ_next − σ). The model sees x/√(σ² + 1).
/// Timesteps are fractional (linear interpolation of σ in t); optional Karras σ spacing.
/// </summary>
public sealed class EulerScheduler : SigmaScheduler
{
    public EulerScheduler(SchedulerConfig config) : base(config, finiteFirstSigma: true) { }

    public override void SetTimesteps(int n)
    {
        var (ts, sigmas) = SigmaTimesteps(n);
        if (Config.TimestepType == "continuous" && Config.PredictionType == "v_prediction")
            ts = sigmas.Select(s => 0.25 * Math.Log(s)).ToArray();
        UseSchedule(n, ts, sigmas);
    }

    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null) =>
        Step(modelOutput, timestep, sample, noise, sChurn: 0);

    /// <summary>The stochastic variant (s_churn &gt; 0) adds noise to raise σ to σ̂ = σ(1 + γ) first.</summary>
    public StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise, double sChurn, double sTmin = 0, double sTmax = double.PositiveInfinity, double sNoise = 1)
    {
        int i = CurrentIndex(timestep);
        double sigma = Sigmas[i];
        double gamma = sTmin <= sigma && sigma <= sTmax ? Math.Min(sChurn / (Sigmas.Length - 1), Math.Sqrt(2) - 1) : 0;
        double sigmaHat = sigma * (gamma + 1);
        if (gamma > 0) sample = sample + (noise ?? randn_like(modelOutput)) * sNoise * Math.Sqrt(sigmaHat * sigmaHat - sigma * sigma);
        // diffusers: the v-prediction conversion uses σ, the ε one σ̂
        var x0 = PredictX0(modelOutput, sample, Config.PredictionType == "v_prediction" ? sigma : sigmaHat);
        var derivative = (sample - x0) / sigmaHat;
        var prev = sample + derivative * (Sigmas[i + 1] - sigmaHat);
        Advance();
        return new StepOutput(prev, x0);
    }
}
