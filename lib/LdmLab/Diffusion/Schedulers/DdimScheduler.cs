using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// DDIM (Song et al. 2021). With x̂_0 and ε̂ from the model:
/// x_{t−1} = √ᾱ_{t−1} x̂_0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z,  σ_t = η √((1−ᾱ_{t−1})/(1−ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1}).
/// η = 0 is deterministic.
/// </summary>
public sealed class DdimScheduler(SchedulerConfig config) : Scheduler(config)
{
    public double Eta { get; set; }

    /// <summary>
    /// diffusers' use_clipped_model_output (default false): recompute ε̂ from the clipped x̂_0,
    /// ε̂ = (x_t − √ᾱ_t x̂_0)/√(1 − ᾱ_t). Without it a clipped x̂_0 is paired with the model's own ε̂.
    /// </summary>
    public bool UseClippedModelOutput { get; set; }
    double FinalAlphaCumprod => Config.SetAlphaToOne ? 1.0 : Acp[0];

    public override void SetTimesteps(int numInferenceSteps)
    {
        NumInferenceSteps = numInferenceSteps;
        Timesteps = SpacedTimesteps(numInferenceSteps).Select(t => (double)t).ToArray();
    }

    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null)
    {
        if (NumInferenceSteps == 0) throw new InvalidOperationException("call SetTimesteps before Step");
        int t = (int)timestep, prev = t - Config.NumTrainTimesteps / NumInferenceSteps;
        double at = Acp[t], aPrev = prev >= 0 ? Acp[prev] : FinalAlphaCumprod;
        var (x0, eps) = Predict(modelOutput, sample, at);
        x0 = MaybeClip(x0);                                                       // 1. x̂_0 (clipped if configured)
        if (UseClippedModelOutput) eps = Predictions.Noise("sample", x0, sample, Math.Sqrt(at), Math.Sqrt(1 - at));
        double variance = (1 - aPrev) / (1 - at) * (1 - at / aPrev);
        double std = Eta * Math.Sqrt(variance);
        var prevSample = Math.Sqrt(aPrev) * x0 + Math.Sqrt(1 - aPrev - std * std) * eps;
        if (Eta > 0) prevSample = prevSample + std * (noise ?? randn_like(modelOutput));
        return new StepOutput(prevSample, x0);
    }
}
