using System.Diagnostics;

namespace LdmLab.Labs;

/// <summary>
/// One precision's run of the same prompts, noise and sampler: judged accuracy, seconds, the images' distance from
/// the float32 run's (max and mean |Δ| in [−1, 1] pixels) and the share of canvases whose judged class differs from
/// the float32 run's.
/// </summary>
public sealed record PrecisionRun(string Precision, int Samples, double Accuracy, double Seconds, double MaxAbsDiff,
    double MeanAbsDiff, double ChangedVerdicts);

/// <summary>
/// Half precision on the lab's text-to-image model (sections 10.4.7, 10.4.10; issue goal: bf16 loses ≤ 1 point of
/// judged accuracy): the same prompts and seeds sampled in float32 and in each half type, judged by the
/// independent classifier.
/// </summary>
public static class HalfPrecisionStudy
{
    /// <summary>
    /// Samples <paramref name="prompts"/> with <paramref name="pipeline"/> in float32 and then in each of
    /// <paramref name="variants"/> (<see cref="StableDiffusionPipeline.To(ScalarType, bool)"/>: a type, and whether
    /// the VAE stays float32), seed 0 per batch as <see cref="TextToImageStudies.Generate(StableDiffusionPipeline,
    /// IReadOnlyList{ScenePrompt}, int, double, long, int, IReadOnlyList{string}?, Action{int}?)"/>; the pipeline is
    /// float32 again afterwards. The first row is float32's.
    /// </summary>
    public static IReadOnlyList<PrecisionRun> Compare(StableDiffusionPipeline pipeline, FashionClassifier judge,
        IReadOnlyList<ScenePrompt> prompts, int steps, double guidance,
        IReadOnlyList<(ScalarType Dtype, bool VaeInFloat32)> variants, int batchSize = 100)
    {
        if (prompts.Count == 0) throw new ArgumentException("no prompts to compare on", nameof(prompts));
        var runs = new List<PrecisionRun>();
        Tensor? reference = null;
        long[]? referenceClasses = null;
        try
        {
            foreach (var (dtype, vaeInFloat32) in new[] { (ScalarType.Float32, false) }.Concat(variants))
            {
                using var scope = NewDisposeScope();
                pipeline.To(dtype, vaeInFloat32);
                var clock = Stopwatch.StartNew();
                var canvases = TextToImageStudies.Generate(pipeline, prompts, steps, guidance, batchSize: batchSize);
                double seconds = clock.Elapsed.TotalSeconds;
                var classes = TextToImageStudies.ItemClasses(judge, canvases);
                double accuracy = TextToImageStudies.Accuracy(judge, canvases, prompts);
                if (reference is null)
                {
                    reference = canvases.DetachFromDisposeScope();
                    referenceClasses = classes;
                    runs.Add(new PrecisionRun(Name(dtype), prompts.Count, accuracy, seconds, 0, 0, 0));
                    continue;
                }
                var diff = (canvases - reference).abs();
                runs.Add(new PrecisionRun(Name(dtype, vaeInFloat32), prompts.Count, accuracy, seconds,
                    diff.max().item<float>(), diff.mean().item<float>(),
                    classes.Zip(referenceClasses!).Average(p => p.First == p.Second ? 0.0 : 1.0)));
            }
        }
        finally
        {
            pipeline.To(ScalarType.Float32);
            reference?.Dispose();
        }
        return runs;
    }

    /// <summary>"float32", "bfloat16", "float16", with " (VAE float32)" where it applies.</summary>
    public static string Name(ScalarType dtype, bool vaeInFloat32 = false) => dtype switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => dtype.ToString(),
    } + (vaeInFloat32 && dtype != ScalarType.Float32 ? " (VAE float32)" : "");

    /// <summary>
    /// One bullet per half-precision run: points of judged accuracy lost against the first (float32) run, whether
    /// that meets <paramref name="allowedLossPoints"/>, its speed ratio and how far its images moved.
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<PrecisionRun> runs, double allowedLossPoints = 1.0)
    {
        if (runs.Count == 0 || runs[0].Precision != "float32")
            throw new ArgumentException("the first run must be float32's (Compare's order)", nameof(runs));
        var baseline = runs[0];
        return runs.Skip(1).Select(r =>
        {
            double lost = (baseline.Accuracy - r.Accuracy) * 100;
            string verdict = lost <= allowedLossPoints ? "meets" : "misses";
            return $"{r.Precision}: judged accuracy {r.Accuracy:P1} against float32's {baseline.Accuracy:P1} " +
                   $"({(lost >= 0 ? $"{lost:F1} points lost" : $"{-lost:F1} points gained")}, {verdict} the " +
                   $"≤ {allowedLossPoints:F0}-point goal) on {r.Samples} samples; {baseline.Seconds / r.Seconds:F2}× " +
                   $"float32's speed; images moved by {r.MeanAbsDiff:F4} on average (max {r.MaxAbsDiff:F3}) and " +
                   $"{r.ChangedVerdicts:P1} of the judge's verdicts changed.";
        }).ToList();
    }
}
