using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// "Euler a" (k-diffusion's sample_euler_ancestral; diffusers' EulerAncestralDiscreteScheduler): each step goes
/// deterministically down to σ_down and adds fresh noise of size σ_up, so that σ_down² + σ_up² = σ_next²:
///   σ_up = √(σ_next² (σ² − σ_next²) / σ²),  σ_down = √(σ_next² − σ_up²),
///   d = (x − x̂_0)/σ,  x_next = x + d (σ_down − σ) + σ_up z,  z ~ N(0, I).
/// </summary>
public sealed class EulerAncestralScheduler(SchedulerConfig config) : SigmaScheduler(config, finiteFirstSigma: true)
{
    public override void SetTimesteps(int n)
    {
        var (ts, sigmas) = SigmaTimesteps(n, karrasSupported: false);
        UseSchedule(n, ts, sigmas);
    }

    /// <param name="noise">z of this step (drawn from torch's RNG when null); the fixtures record it as step_noise.</param>
    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null)
    {
        int i = CurrentIndex(timestep);
        // 1. x̂_0 from the model output (diffusers has no x_0-prediction here)
        float sigma = (float)Sigmas[i], sigmaNext = (float)Sigmas[i + 1];
        var x0 = PredictX0(modelOutput, sample, sigma, samplePredictionSupported: false);
        // 2. split σ_next into the deterministic σ_down and the injected σ_up (float32, as diffusers' tensors)
        float sigmaUp = MathF.Sqrt(sigmaNext * sigmaNext * (sigma * sigma - sigmaNext * sigmaNext) / (sigma * sigma));
        float sigmaDown = MathF.Sqrt(sigmaNext * sigmaNext - sigmaUp * sigmaUp);
        // 3. Euler step to σ_down, then fresh noise
        var derivative = (sample - x0) / sigma;
        var prev = sample + derivative * (sigmaDown - sigma) + (noise ?? randn_like(modelOutput)) * sigmaUp;
        Advance();
        return new StepOutput(prev, x0);
    }
}
