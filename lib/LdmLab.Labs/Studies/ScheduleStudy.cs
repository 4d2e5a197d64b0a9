namespace LdmLab.Labs;

/// <summary>One row of notebook 04's convergence table: a schedule's model after some training steps, judged.</summary>
/// <param name="Target">"ε" or "v": what the model regresses.</param>
/// <param name="Loss">Its training loss on its own target over the last 10 % of its steps.</param>
/// <param name="EpsilonMse">MSE(ε̂, ε) on held-out latents, with v̂ converted to ε̂: comparable across targets.</param>
public sealed record ScheduleRow(string Schedule, string Target, int Steps, string Profile, double Loss,
    double EpsilonMse, double Accuracy, double Frechet);

/// <summary>
/// Exercise 10.3.2's convergence comparison (notebook 04): judges class-conditional latent denoisers trained with
/// different noise schedules on the same footing — samples through <see cref="LatentDiffusionPipeline"/> (DDIM,
/// classifier-free guidance) judged by the Fashion classifier (intended-class accuracy, Fréchet distance of its
/// features to a real reference set), and the held-out ε-MSE — and draws the takeaway from the resulting table.
/// </summary>
public sealed class ScheduleStudy
{
    readonly AutoencoderKL _vae;
    readonly FashionClassifier _judge;
    readonly FrechetReference _reference;
    readonly Tensor _heldOut, _heldOutLabels, _heldOutNoise;
    readonly Tensor _sampleLabels;

    public int Samples { get; }
    public int SamplerSteps { get; }
    public double GuidanceScale { get; }

    /// <param name="vae">The autoencoder the denoisers' latents come from (its config holds their scale).</param>
    /// <param name="judge">The independent classifier, trained on real images only.</param>
    /// <param name="reference">Real images [N, 1, 28, 28] whose judge features are the Fréchet reference.</param>
    /// <param name="heldOutLatents">Scaled latents of held-out images [M, 4, 7, 7], with their labels.</param>
    /// <param name="samples">Samples per judged model: labels 0…9 cycled.</param>
    public ScheduleStudy(AutoencoderKL vae, FashionClassifier judge, Tensor reference, Tensor heldOutLatents,
        Tensor heldOutLabels, int samples, int samplerSteps = 25, double guidanceScale = 3.0)
    {
        _vae = vae;
        _judge = judge;
        _reference = new FrechetReference(judge, reference);
        _heldOut = heldOutLatents;
        _heldOutLabels = heldOutLabels;
        using var g = new Generator(11);
        _heldOutNoise = randn(heldOutLatents.shape, generator: g);                         // the same ε for every model
        _sampleLabels = tensor(Enumerable.Range(0, samples).Select(i => (long)(i % 10)).ToArray());
        Samples = samples;
        SamplerSteps = samplerSteps;
        GuidanceScale = guidanceScale;
    }

    /// <summary>The Fréchet distance of real <paramref name="images"/> to the reference: the floor a perfect model
    /// reaches with as many samples.</summary>
    public double Floor(Tensor images) => _reference.Of(images);

    /// <summary>
    /// The sampler for a schedule: DDIM over its β's; at zero terminal SNR (ᾱ_T = 0) with v-prediction and
    /// "trailing" timesteps, as Lin et al. (2023) require, else ε-prediction with SD's "leading" spacing.
    /// </summary>
    public static DdimScheduler SamplerFor(NoiseSchedule schedule)
    {
        bool zeroSnr = VTarget(schedule);                  // the recipe regresses v exactly when ᾱ_T = 0
        return new DdimScheduler(new SchedulerConfig
        {
            TrainedBetas = schedule.Betas, PredictionType = PredictionTypeName(schedule),
            TimestepSpacing = zeroSnr ? "trailing" : "leading", StepsOffset = zeroSnr ? 0 : 1, SetAlphaToOne = false,
        });
    }

    /// <summary>Whether the recipe's denoiser for this schedule regresses v
    /// (<see cref="FashionLatentRecipe.PredictionFor"/>).</summary>
    static bool VTarget(NoiseSchedule schedule) =>
        FashionLatentRecipe.PredictionFor(schedule) == PredictionType.VPrediction;

    /// <summary>diffusers' prediction_type of that target.</summary>
    static string PredictionTypeName(NoiseSchedule schedule) => VTarget(schedule) ? "v_prediction" : "epsilon";

    /// <summary>
    /// MSE(ε̂, ε) on the held-out latents at t = 50, 150, …, 950 with one fixed noise draw; a v-model's output is
    /// converted first (ε̂ = √ᾱ v̂ + √(1−ᾱ) z_t), so ε- and v-models compare.
    /// </summary>
    public double HeldOutEpsilonMse(ClassConditionedUNet model, NoiseSchedule schedule)
    {
        using var _ = no_grad();
        var target = PredictionTypeName(schedule);
        var errors = new List<double>();
        foreach (long t in Enumerable.Range(0, 10).Select(i => 50L + i * 100))
        {
            using var scope = NewDisposeScope();
            double alpha = Math.Sqrt(schedule.AlphasCumprod[t]), sigma = Math.Sqrt(1 - schedule.AlphasCumprod[t]);
            var tt = full((int)_heldOut.shape[0], t, ScalarType.Int64);
            var zt = schedule.AddNoise(_heldOut, _heldOutNoise, tt);                      // √ᾱ z₀ + √(1−ᾱ) ε
            var epsHat = Predictions.Noise(target, model.Forward(zt, tt, _heldOutLabels), zt, alpha, sigma);
            errors.Add((epsHat - _heldOutNoise).pow(2).mean().item<float>());
        }
        return errors.Average();
    }

    /// <summary>Samples the study's labels (seed 0) and judges them: accuracy, Fréchet distance, the images.</summary>
    public (double Accuracy, double Frechet, Tensor Images) Judge(ClassConditionedUNet model, NoiseSchedule schedule)
    {
        var pipeline = new LatentDiffusionPipeline(model, _vae, () => SamplerFor(schedule));
        var images = pipeline.Generate(_sampleLabels, new LatentGenerationOptions
        {
            Steps = SamplerSteps, GuidanceScale = GuidanceScale, Seed = 0, DecodeBatchSize = 256,
        }).Images!;                                                                         // [N, 1, 28, 28]
        return (ClassifierTraining.Accuracy(_judge, images, _sampleLabels), _reference.Of(images), images);
    }

    /// <summary>A table row for a model: judged on its samples and on held-out ε (training loss over its last 10 %).
    /// </summary>
    public (ScheduleRow Row, Tensor Images) Row(ClassConditionedUNet model, NoiseSchedule schedule,
        IReadOnlyList<double> losses, string profile)
    {
        var (accuracy, frechet, images) = Judge(model, schedule);
        return (new ScheduleRow(schedule.Name, VTarget(schedule) ? "v" : "ε", losses.Count, profile,
            losses.TakeLast(Math.Max(1, losses.Count / 10)).Average(), HeldOutEpsilonMse(model, schedule), accuracy,
            frechet), images);
    }

    /// <summary>The share of the training timesteps at which z_t is nearly pure noise: SNR = ᾱ/(1−ᾱ) below −10 dB.
    /// </summary>
    public static double NoisyShare(NoiseSchedule schedule) =>
        schedule.AlphasCumprod.Count(a => 10 * Math.Log10(a / (1 - a)) < -10) / (double)schedule.AlphasCumprod.Length;

    /// <summary>
    /// The takeaway of the table, one sentence per point, computed from it: the best schedule at the last stage of
    /// <paramref name="profile"/>, each schedule's trajectory, and — over the converged rows (those of
    /// <paramref name="convergedProfile"/>, or the last stage when that is absent) — the ranking by Fréchet distance,
    /// which schedules sampling noise does not separate (within twice the gap between two real floors), whether
    /// accuracy orders them differently, and whether held-out ε-MSE ranks sample quality. When the table holds only
    /// converged rows (<paramref name="profile"/> = <paramref name="convergedProfile"/>) the trajectories are left out.
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<ScheduleRow> rows,
        IReadOnlyList<NoiseSchedule> schedules, string profile, string? convergedProfile, double floor,
        double secondFloor, int samples)
    {
        var lines = new List<string>();
        int lastStage = rows.Where(r => r.Profile == profile).Max(r => r.Steps);
        var finalRows = rows.Where(r => r.Steps == lastStage && r.Profile == profile).ToList();
        var bestFd = finalRows.MinBy(r => r.Frechet)!;
        var bestEps = finalRows.MinBy(r => r.EpsilonMse)!;
        bool onlyConverged = convergedProfile == profile;     // one converged row per schedule: no trajectories
        if (!onlyConverged)
            lines.Add($"After {lastStage:N0} steps ({profile} profile), the lowest Fréchet distance is " +
                      $"{bestFd.Schedule}'s ({bestFd.Frechet:F2}, floor {floor:F2}) and the lowest held-out ε-MSE " +
                      $"{bestEps.Schedule}'s ({bestEps.EpsilonMse:F3}).");
        foreach (var s in schedules.Where(_ => !onlyConverged))
        {
            var mine = rows.Where(r => r.Schedule == s.Name && r.Profile == profile).OrderBy(r => r.Steps).ToList();
            lines.Add($"{s.Name}: Fréchet distance {string.Join(" → ", mine.Select(r => r.Frechet.ToString("F2")))}, " +
                      $"accuracy {string.Join(" → ", mine.Select(r => r.Accuracy.ToString("P0")))} over " +
                      $"{string.Join(" / ", mine.Select(r => r.Steps))} steps.");
        }
        var converged = (convergedProfile is null ? finalRows : rows.Where(r => r.Profile == convergedProfile))
            .OrderBy(r => r.Frechet).ToList();
        if (converged.Count == 0) return lines;
        double Noisy(string name) => NoisyShare(schedules.First(s => s.Name == name));
        lines.Add($"Trained by the full recipe ({converged[0].Steps:N0} steps each, judged here on {samples} " +
                  "samples), " +
                  "the schedules rank by Fréchet distance: " +
                  $"{string.Join(" < ", converged.Select(r => $"{r.Schedule} {r.Frechet:F2}"))} (floor {floor:F2}); " +
                  $"intended-class accuracy {converged.Min(r => r.Accuracy):P1} to " +
                  $"{converged.Max(r => r.Accuracy):P1}.");
        foreach (var r in converged)
            lines.Add($"{r.Schedule} ({r.Target}-prediction), trained by the full recipe, reaches {r.Accuracy:P1} " +
                      $"intended-class accuracy and held-out ε-MSE {r.EpsilonMse:F3}; {Noisy(r.Schedule):P0} of its " +
                      "training timesteps have SNR below −10 dB.");
        double gap = Math.Abs(floor - secondFloor);
        var tied = converged.Where(r => r.Frechet - converged[0].Frechet <= 2 * gap).Select(r => r.Schedule).ToList();
        var worse = converged.Where(r => !tied.Contains(r.Schedule))
            .Select(r => $"{r.Schedule} (+{r.Frechet - converged[0].Frechet:F2})").ToList();
        lines.Add($"Two disjoint sets of {samples} real images score {floor:F2} and {secondFloor:F2}: a gap of " +
                  $"{gap:F2}, a rough yardstick for sampling noise. Within twice that of the best: " +
                  string.Join(", ", tied) + (tied.Count > 1 ? " — this run does not separate them" : "") +
                  (worse.Count > 0 ? $"; further behind at the same budget: {string.Join(", ", worse)}." : "."));
        var byAccuracy = converged.OrderByDescending(r => r.Accuracy).ToList();
        if (!byAccuracy.Select(r => r.Schedule).SequenceEqual(converged.Select(r => r.Schedule)))
            lines.Add("Intended-class accuracy orders them differently: " +
                      $"{string.Join(" > ", byAccuracy.Select(r => $"{r.Schedule} {r.Accuracy:P1}"))}. Accuracy asks " +
                      "whether each sample shows its class; the Fréchet distance whether the whole set of features " +
                      "matches real images (variety and detail included).");
        var lowestMse = converged.MinBy(r => r.EpsilonMse)!;
        var noisiest = converged.Where(r => r.Target == "ε").MaxBy(r => Noisy(r.Schedule));
        if (lowestMse.Schedule != converged[0].Schedule)
            lines.Add("Held-out ε-MSE (averaged over t = 50, 150, …, 950) does not rank sample quality: " +
                      $"{lowestMse.Schedule} has the lowest ({lowestMse.EpsilonMse:F3}) but Fréchet distance " +
                      $"{lowestMse.Frechet:F2}, rank {converged.IndexOf(lowestMse) + 1} of {converged.Count}" +
                      (lowestMse.Schedule == noisiest?.Schedule
                          ? ", and it is the ε-schedule with the most near-pure-noise timesteps " +
                            $"({Noisy(lowestMse.Schedule):P0}). There z_t ≈ ε, so ε is easy to predict: such " +
                            "timesteps lower the average without teaching the model anything about z₀."
                          : "."));
        if (convergedProfile is not null && !onlyConverged && finalRows.Count > 0)
        {
            var quickOrder = finalRows.OrderBy(r => r.Frechet).Select(r => r.Schedule).ToList();
            lines.Add($"After {lastStage} {profile} steps the best schedule by Fréchet distance is {quickOrder[0]}; " +
                      $"after {converged[0].Steps:N0} it is {converged[0].Schedule}. The {profile} ranking " +
                      (quickOrder.SequenceEqual(converged.Select(r => r.Schedule))
                          ? "matches the converged one here, " : "differs from the converged one, ") +
                      $"but only the full-recipe rows are converged: {profile} accuracies reach at most " +
                      $"{finalRows.Max(r => r.Accuracy):P0}.");
        }
        return lines;
    }
}
