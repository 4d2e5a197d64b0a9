using LdmLab.Diffusion.Schedulers;
using static TorchSharp.torch;

namespace LdmLab.Diffusion;

/// <summary>What the per-step callback sees: step index, timestep, x_t before the step, x_{t−1} after, predicted x_0.</summary>
public sealed record SamplingStep(int Index, double Timestep, Tensor Sample, Tensor PrevSample, Tensor? PredOriginalSample);

/// <summary>A denoiser: (scaled model input, timestep) → model output (ε, v or x_0, as the scheduler is configured).</summary>
public delegate Tensor Denoiser(Tensor modelInput, double timestep);

public static class Sampling
{
    /// <summary>
    /// Runs the reverse process from x_T = noise · InitNoiseSigma (or from <paramref name="startIndex"/> for img2img).
    /// Each step runs in its own dispose scope; the callback sees every step (the notebooks plot through it).
    /// The callback's tensors are disposed after it returns: copy what you keep.
    /// </summary>
    public static Tensor Sample(Scheduler scheduler, Denoiser model, Tensor noise, int steps, Action<SamplingStep>? callback = null,
        Func<int, Tensor>? stepNoise = null)
    {
        scheduler.SetTimesteps(steps);
        var x = (noise * scheduler.InitNoiseSigma).DetachFromDisposeScope();
        return Run(scheduler, model, x, 0, callback, stepNoise);
    }

    /// <summary>img2img: noise x_0 to the timestep that <paramref name="strength"/> selects, then denoise from there.</summary>
    public static Tensor Img2Img(Scheduler scheduler, Denoiser model, Tensor x0, Tensor noise, int steps, double strength,
        Action<SamplingStep>? callback = null)
    {
        scheduler.SetTimesteps(steps);
        int start = scheduler.StartIndexForStrength(strength);
        if (start >= scheduler.Timesteps.Length) return x0.clone();
        Tensor x;
        if (scheduler is SigmaScheduler sigma)
        {
            sigma.SetBeginIndex(start);
            x = x0 + noise * sigma.Sigmas[start];                       // σ-space: x = x_0 + σ ε
        }
        else
        {
            var t = full(x0.shape[0], (long)scheduler.Timesteps[start], dtype: ScalarType.Int64);
            x = scheduler.Schedule.AddNoise(x0, noise, t);                 // x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε
        }
        return Run(scheduler, model, x.DetachFromDisposeScope(), start, callback, null);
    }

    static Tensor Run(Scheduler scheduler, Denoiser model, Tensor x, int start, Action<SamplingStep>? callback, Func<int, Tensor>? stepNoise)
    {
        using var _ = no_grad();
        for (int i = start; i < scheduler.Timesteps.Length; i++)
        {
            using var scope = NewDisposeScope();
            double t = scheduler.Timesteps[i];
            var output = model(scheduler.ScaleModelInput(x, t), t);
            var step = scheduler.Step(output, t, x, stepNoise?.Invoke(i));
            callback?.Invoke(new SamplingStep(i, t, x, step.PrevSample, step.PredOriginalSample));
            var next = step.PrevSample.MoveToOuterDisposeScope();
            x.Dispose();
            x = next;
        }
        Runtime.ProcessMemory.Release();   // glibc keeps the freed step buffers otherwise (RSS at its high-water mark)
        return x;
    }
}
