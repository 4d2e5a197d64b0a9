using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// DDPM ancestral sampling (Ho et al. 2020) on a strided schedule:
/// μ = √ᾱ_{t'} β̃ / (1−ᾱ_t) · x̂_0 + √α̃ (1−ᾱ_{t'}) / (1−ᾱ_t) · x_t with α̃ = ᾱ_t/ᾱ_{t'}, β̃ = 1 − α̃ (t' the previous step),
/// x_{t'} = μ + σ z, σ² = (1−ᾱ_{t'})/(1−ᾱ_t) β̃ (fixed_small) or β̃ (fixed_large). Pass the noise to reproduce a run.
/// </summary>
public sealed class DdpmScheduler(SchedulerConfig config) : Scheduler(config)
{
    public override void SetTimesteps(int numInferenceSteps)
    {
        NumInferenceSteps = numInferenceSteps;
        Timesteps = SpacedTimesteps(numInferenceSteps).Select(t => (double)t).ToArray();
    }

    int Previous(int t) => t - Config.NumTrainTimesteps / (NumInferenceSteps == 0 ? Config.NumTrainTimesteps : NumInferenceSteps);

    /// <summary>σ_t² of the step from t (clamped at 1e-20), for the configured variance type.</summary>
    public double Variance(int t)
    {
        int prev = Previous(t);
        double at = Acp[t], aPrev = prev >= 0 ? Acp[prev] : 1.0, betaT = 1 - at / aPrev;
        double small = Math.Max((1 - aPrev) / (1 - at) * betaT, 1e-20);
        return Config.VarianceType switch
        {
            "fixed_small" or "fixed_small_log" => small,
            "fixed_large" or "fixed_large_log" => betaT,
            var v => throw new NotSupportedException($"variance_type '{v}' (learned variances need a model that predicts them)"),
        };
    }

    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null)
    {
        int t = (int)timestep, prev = Previous(t);
        double at = Acp[t], aPrev = prev >= 0 ? Acp[prev] : 1.0;
        double alphaT = at / aPrev, betaT = 1 - alphaT;
        var (x0, _) = Predict(modelOutput, sample, at);
        x0 = MaybeClip(x0);
        var mean = Math.Sqrt(aPrev) * betaT / (1 - at) * x0 + Math.Sqrt(alphaT) * (1 - aPrev) / (1 - at) * sample;
        if (t > 0) mean = mean + Math.Sqrt(Variance(t)) * (noise ?? randn_like(modelOutput));
        return new StepOutput(mean, x0);
    }
}
