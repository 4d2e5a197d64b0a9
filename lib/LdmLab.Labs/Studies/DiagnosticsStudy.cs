using System.Diagnostics;

namespace LdmLab.Labs;

/// <summary>One latent channel: moments of real latents and of latents generated without (w = 1) and with guidance.
/// </summary>
public sealed record ChannelStats(int Channel, Moments Real, Moments Plain, Moments Guided)
{
    /// <summary>Generated (guided) std over real std: 1 when the model and sampler reproduce the latents' scale.
    /// </summary>
    public double StdRatio => Guided.Std / Real.Std;
}

/// <summary>One sampler's run: the RMS of x_t after every model call, wall time, the judge's accuracy over
/// <paramref name="Samples"/> images and the first of them.</summary>
public sealed record SamplerTrace(string Sampler, IReadOnlyList<(double T, double Rms)> Trajectory, double TotalMs,
    double Accuracy, int Samples, Tensor Shown)
{
    public int Calls => Trajectory.Count;
    public double MsPerCall => TotalMs / Calls;
    public double FinalRms => Trajectory[^1].Rms;
}

/// <summary>
/// Notebook 09 (section 10.3.6): the checks that show where a latent diffusion model goes wrong — the noise-prediction
/// error per timestep and the image error it implies, generated against real latent statistics, and samplers' paths
/// and costs. Measurements return rows; diagnoses and takeaways are computed from rows alone.
/// </summary>
public static class DiagnosticsStudy
{
    /// <summary>
    /// MSE(ε̂, ε) on <paramref name="latents"/> at each timestep (fresh noise from torch's generator per t), and the
    /// image estimate's error it implies: x̂₀ = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, so MSE(x̂₀, z₀) = MSE(ε̂, ε)·(1−ᾱ_t)/ᾱ_t.
    /// </summary>
    public static (double[] Epsilon, double[] X0) ErrorPerTimestep(ConditionalDenoiser model, NoiseSchedule schedule,
        Tensor latents, Tensor labels, IReadOnlyList<long> timesteps)
    {
        long n = latents.shape[0];
        var mse = new double[timesteps.Count];
        using (no_grad())
            for (int i = 0; i < timesteps.Count; i++)
            {
                using var scope = NewDisposeScope();   // free each evaluation's activations now, not at the next GC
                var t = full(n, timesteps[i], ScalarType.Int64);                               // [n]
                var e = randn_like(latents);                                                    // [n, 4, h, w]
                mse[i] = (model.Forward(schedule.AddNoise(latents, e, t), t, labels) - e).pow(2).mean().item<float>();
            }
        var x0 = timesteps.Select((t, i) => mse[i] * (1 - schedule.AlphasCumprod[t]) / schedule.AlphasCumprod[t])
            .ToArray();
        return (mse, x0);
    }

    /// <summary>Per-channel moments of real latents and of generated ones without and with guidance ([N, C, h, w]
    /// each).</summary>
    public static IReadOnlyList<ChannelStats> Channels(Tensor real, Tensor plain, Tensor guided)
    {
        static Moments M(Tensor z, int c) =>
            Moments.Of(z.select(1, c).flatten().data<float>().Select(v => (double)v).ToArray());
        return Enumerable.Range(0, (int)real.shape[1])
            .Select(c => new ChannelStats(c, M(real, c), M(plain, c), M(guided, c))).ToList();
    }

    /// <summary>
    /// The diagnosis of the channel table: channels whose generated std is off the real one by more than
    /// <paramref name="tolerance"/> (and the usual causes), then what guidance did to the spread and to accuracy.
    /// </summary>
    public static IReadOnlyList<string> Diagnosis(IReadOnlyList<ChannelStats> rows, double guidance,
        double accuracyPlain, double accuracyGuided, double tolerance = 0.15)
    {
        var off = rows.Where(s => Math.Abs(s.StdRatio - 1) > tolerance).ToList();
        static string Ratios(IEnumerable<ChannelStats> rs) =>
            string.Join(", ", rs.Select(s => s.StdRatio.ToString("F2")));
        double widen = rows.Average(s => s.Guided.Std / s.Plain.Std);
        return
        [
            off.Count == 0
                ? $"Diagnosis: every channel's generated std is within {tolerance:P0} of the real one (ratios " +
                  $"{Ratios(rows)}): the model and sampler reproduce the latent statistics; what remains wrong is in " +
                  "the shapes, not the scale."
                : $"Diagnosis: channel(s) {string.Join(", ", off.Select(s => s.Channel))} have a generated std " +
                  $"{Ratios(off)}× the real one. Usual causes: an under-trained model, too few sampler steps, too " +
                  "strong guidance, or a wrong scale factor.",
            $"Guidance w = {guidance} changes the generated std by a factor {widen:F2} on average against w = 1 (and " +
            $"intended-class accuracy from {accuracyPlain:P0} to {accuracyGuided:P0}): CFG extrapolates away from " +
            "the unconditional prediction, which sharpens the class at the price of the latents' spread.",
        ];
    }

    /// <summary>
    /// Every sampler on the same labels, noise seed and step count, guidance w: the RMS of x_t after each model call,
    /// wall time, and the judge's intended-class accuracy on the decoded images. One untimed DDIM run of the same
    /// length comes first (measured: whichever sampler was timed first took about twice as long per call as every
    /// later one; a 2-step warm-up was not enough). torch's generator is seeded with <paramref name="seed"/> before
    /// each sampler, for the ancestral samplers' step noise.
    /// </summary>
    public static IReadOnlyList<SamplerTrace> Samplers(ConditionalDenoiser model, AutoencoderKL vae, double scale,
        FashionClassifier judge, IReadOnlyDictionary<string, Scheduler> samplers, Scheduler warmUp, Tensor labels,
        int steps, double guidance, long seed, int shown = 10)
    {
        FashionLatentRecipe.SampleLatents(model, warmUp, labels, steps, guidance,
            st => st.PrevSample.pow(2).mean().item<float>(), seed: seed);
        var traces = new List<SamplerTrace>();
        foreach (var (name, scheduler) in samplers)
        {
            var points = new List<(double, double)>();
            manual_seed(seed);                                  // Euler a draws its step noise from torch's generator
            var clock = Stopwatch.StartNew();
            var z = FashionLatentRecipe.SampleLatents(model, scheduler, labels, steps, guidance,
                st => points.Add((st.Timestep, st.PrevSample.pow(2).mean().sqrt().item<float>())), seed: seed);
            clock.Stop();
            var images = VaeTrainer.DecodeBatched(vae, z / scale).clamp(-1, 1);            // [n, 1, 28, 28]
            traces.Add(new SamplerTrace(name, points, clock.Elapsed.TotalMilliseconds,
                ClassifierTraining.Accuracy(judge, images, labels), (int)labels.shape[0], images.narrow(0, 0, shown)));
        }
        return traces;
    }

    /// <summary>Where the image estimate is worst and best (against what the ε-error alone suggests), the generated
    /// against real spread, and the samplers' accuracy range beside the sampling noise of 100 samples.</summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<long> timesteps, double[] epsilonMse, double[] x0Mse,
        IReadOnlyList<ChannelStats> channels, double guidance, IReadOnlyList<SamplerTrace> traces, int samplerSteps,
        double accuracyGuided, int generationSteps)
    {
        int weakest = Enumerable.Range(0, timesteps.Count).MaxBy(i => x0Mse[i]);
        var best = traces.MaxBy(r => r.Accuracy)!;
        var worst = traces.MinBy(r => r.Accuracy)!;
        int n = traces[0].Samples;
        return
        [
            $"The model's image estimate is worst at t = {timesteps[weakest]} (MSE(x̂₀) {x0Mse[weakest]:G3}) and " +
            $"best at t = {timesteps[0]} ({x0Mse[0]:G3}); the ε-error alone ({epsilonMse[0]:F3} at t = " +
            $"{timesteps[0]}, {epsilonMse[^1]:F3} at t = {timesteps[^1]}) would suggest the reverse.",
            $"Generated latents (w = {guidance}) have per-channel std " +
            $"{string.Join(", ", channels.Select(s => s.Guided.Std.ToString("F2")))} against " +
            $"{string.Join(", ", channels.Select(s => s.Real.Std.ToString("F2")))} for real ones.",
            $"At {samplerSteps} steps, intended-class accuracy ranges from {worst.Accuracy:P0} ({worst.Sampler}) to " +
            $"{best.Accuracy:P0} ({best.Sampler}) over {n} samples each (±{100 * Math.Sqrt(0.25 / n):F0} points of " +
            $"sampling noise); the judge scores {accuracyGuided:P0} with DDIM at {generationSteps} steps.",
        ];
    }
}
