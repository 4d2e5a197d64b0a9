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
    /// The callback's tensors are disposed after it returns: copy what you keep. <paramref name="beforeStep"/>, if
    /// given, maps x_t to the latents step i starts from (a sampler-side guidance step such as Attend-and-Excite's
    /// update; it sees the step index first, so it can also switch conditions at a step); null leaves the loop as it
    /// is.
    /// </summary>
    public static Tensor Sample(Scheduler scheduler, Denoiser model, Tensor noise, int steps, Action<SamplingStep>? callback = null,
        Func<int, Tensor>? stepNoise = null, Func<int, Tensor, Tensor>? beforeStep = null)
    {
        scheduler.SetTimesteps(steps);
        var x = (noise * scheduler.InitNoiseSigma).DetachFromDisposeScope();
        return Run(scheduler, model, x, 0, callback, stepNoise, beforeStep: beforeStep);
    }

    /// <summary>img2img: noise x_0 to the timestep that <paramref name="strength"/> selects, then denoise from there.</summary>
    public static Tensor Img2Img(Scheduler scheduler, Denoiser model, Tensor x0, Tensor noise, int steps, double strength,
        Action<SamplingStep>? callback = null)
    {
        scheduler.SetTimesteps(steps);
        int start = scheduler.StartIndexForStrength(strength);
        if (start >= scheduler.Timesteps.Length) return x0.clone();
        if (scheduler is SigmaScheduler sigma) sigma.SetBeginIndex(start);
        var x = NoisedTo(scheduler, x0, noise, start).DetachFromDisposeScope();
        return Run(scheduler, model, x, start, callback, null);
    }

    /// <summary>
    /// Inpainting with an ordinary U-Net (blended latent diffusion; diffusers' inpaint pipeline with a 4-channel
    /// U-Net):
    /// after every step the known region is put back, noised to the level of the next step,
    /// <code>z_{t−1} ← m · z_{t−1} + (1 − m) · q(x_0^known at t_{i+1})</code>
    /// with m = 1 where the latent is to be repainted; after the last step the known latents enter noise-free.
    /// <paramref name="strength"/> 1 starts from pure noise; below 1 from the known latents noised as in img2img.
    /// </summary>
    /// <param name="known">x_0 of the image [B, c, h, w] (its latents × scaling factor).</param>
    /// <param name="mask">[B, 1, h, w] or [B, c, h, w]: 1 = repaint, 0 = keep; null: no blending (an inpainting
    /// U-Net that sees the mask and the masked image itself).</param>
    public static Tensor Inpaint(Scheduler scheduler, Denoiser model, Tensor known, Tensor? mask, Tensor noise,
        int steps, double strength = 1.0, Action<SamplingStep>? callback = null)
    {
        scheduler.SetTimesteps(steps);
        int start = scheduler.StartIndexForStrength(strength);
        if (start >= scheduler.Timesteps.Length)
            throw new ArgumentOutOfRangeException(nameof(strength), strength,
                $"strength {strength} leaves none of the {steps} steps to run; raise the strength or the steps");
        if (scheduler is SigmaScheduler sigma) sigma.SetBeginIndex(start);
        var x = strength >= 1 ? noise * scheduler.InitNoiseSigma : NoisedTo(scheduler, known, noise, start);
        Tensor Blend(int i, Tensor next)
        {
            var keep = i + 1 < scheduler.Timesteps.Length ? NoisedTo(scheduler, known, noise, i + 1) : known;
            return mask * next + (1 - mask) * keep;                                           // [B, c, h, w]
        }
        return Run(scheduler, model, x.DetachFromDisposeScope(), start, callback, null, mask is null ? null : Blend);
    }

    /// <summary>x_0 noised to step <paramref name="index"/>'s level: x_0 + σ_i ε for σ-space schedulers,
    /// √ᾱ_t x_0 + √(1−ᾱ_t) ε otherwise (diffusers' add_noise).</summary>
    public static Tensor NoisedTo(Scheduler scheduler, Tensor x0, Tensor noise, int index)
    {
        if (scheduler is SigmaScheduler sigma) return x0 + noise * sigma.Sigmas[index];
        var t = full(x0.shape[0], (long)scheduler.Timesteps[index], dtype: ScalarType.Int64);
        return scheduler.Schedule.AddNoise(x0, noise, t);
    }

    /// <summary>
    /// One reverse step, the rule every sampler here shares (plain, img2img, inpainting, MultiDiffusion's windows):
    /// <code>ε̂ = model(scale_model_input(x_t, t), t);   x_{t−1} = scheduler.step(ε̂, t, x_t)</code>
    /// at t = Timesteps[<paramref name="index"/>]; the scheduler keeps any multistep history.
    /// </summary>
    public static StepOutput Step(Scheduler scheduler, Denoiser model, Tensor x, int index, Tensor? noise = null)
    {
        double t = scheduler.Timesteps[index];
        var output = model(scheduler.ScaleModelInput(x, t), t);
        return scheduler.Step(output, t, x, noise);
    }

    static Tensor Run(Scheduler scheduler, Denoiser model, Tensor x, int start, Action<SamplingStep>? callback,
        Func<int, Tensor>? stepNoise, Func<int, Tensor, Tensor>? afterStep = null,
        Func<int, Tensor, Tensor>? beforeStep = null)
    {
        using var _ = no_grad();
        for (int i = start; i < scheduler.Timesteps.Length; i++)
        {
            using var scope = NewDisposeScope();
            double t = scheduler.Timesteps[i];
            var xi = beforeStep is null ? x : beforeStep(i, x);
            var step = Step(scheduler, model, xi, i, stepNoise?.Invoke(i));
            var prev = afterStep is null ? step.PrevSample : afterStep(i, step.PrevSample);
            callback?.Invoke(new SamplingStep(i, t, xi, prev, step.PredOriginalSample));
            var next = prev.MoveToOuterDisposeScope();
            x.Dispose();
            x = next;
        }
        Runtime.ProcessMemory.Release();   // glibc keeps the freed step buffers otherwise (RSS at its high-water mark)
        return x;
    }
}
