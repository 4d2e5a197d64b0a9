using LdmLab.Compression;

namespace LdmLab.Labs;

/// <summary>How a sweep point was pruned: unstructured magnitude masks, or ResNet channels removed (L1).</summary>
public enum PruningMethod { Magnitude, Structured }

/// <summary>
/// One point of the pruning sweep: the amount asked, the sparsity reached (magnitude: the share of zeroed Linear and
/// Conv2d weights; structured: the share of the ResNet blocks' hidden channels removed), the U-Net's parameters and
/// stored MB, one guided call's time, judged accuracy and Fréchet distance on <paramref name="Samples"/> prompts.
/// </summary>
public sealed record PruningSweepRow(PruningMethod Method, double Amount, bool FineTuned, double Sparsity,
    long Parameters, double WeightMB, double MsPerCall, double Accuracy, double Frechet, int Samples)
{
    /// <summary>"magnitude", "structured L1", with " + fine-tune".</summary>
    public string Curve => (Method == PruningMethod.Magnitude ? "magnitude" : "structured L1") +
                           (FineTuned ? " + fine-tune" : "");
}

/// <summary>
/// Section 10.5.3's pruning at 0.1 … 0.5 on the shipped text-to-image model: magnitude (unstructured, masks; the
/// zeros stay in dense tensors) and structured L1 (ResNet channels really removed), each with and without a short
/// fine-tune, against the unpruned float32 model. Every point starts from a fresh copy, is timed and judged by
/// <see cref="CompressionStudy.Measure"/> (the same prompts, noise and judge as notebook 10's variant table).
/// </summary>
public static class PruningSweep
{
    /// <summary>The amounts the chapter's range covers.</summary>
    public static readonly double[] Amounts = [0.1, 0.2, 0.3, 0.4, 0.5];

    /// <summary>
    /// The float32 model (<see cref="Reference"/>) and every method × amount × (no fine-tune, then
    /// <paramref name="fineTune"/> when given), each from <paramref name="fresh"/>() and measured together: the
    /// first row is the reference (amount 0).
    /// </summary>
    public static IReadOnlyList<PruningSweepRow> Run(Func<StableDiffusionPipeline> fresh,
        IReadOnlyList<double> amounts, FineTuneData? fineTune, IReadOnlyList<ScenePrompt> prompts,
        FashionClassifier judge, FrechetReference reference, int steps, int batch, int rounds)
    {
        if (amounts.Count == 0) throw new ArgumentException("no amounts to sweep", nameof(amounts));
        var points = new List<(PruningMethod Method, double Amount, bool Tuned, double Sparsity, long Params)>();
        var variants = new List<CompressionVariant>();
        var p0 = fresh();
        variants.Add(CompressionStudy.Float32(p0));
        points.Add((PruningMethod.Magnitude, 0, false, 0, Count(p0)));
        foreach (var method in new[] { PruningMethod.Magnitude, PruningMethod.Structured })
            foreach (var tune in fineTune is null ? [null] : new[] { null, fineTune })
                foreach (double amount in amounts)
                {
                    var p = fresh();
                    var (variant, sparsity) = Prune(p, method, amount, tune);
                    variants.Add(variant);
                    points.Add((method, amount, tune is not null, sparsity, Count(p)));
                }
        var rows = CompressionStudy.Measure(variants, prompts, judge, reference, batch, rounds, steps: steps);
        return rows.Select((r, i) => new PruningSweepRow(points[i].Method, points[i].Amount, points[i].Tuned,
            points[i].Sparsity, points[i].Params, r.WeightMB, r.MsPerStep, r.Accuracy, r.Frechet, r.Samples)).ToList();
    }

    /// <summary>Prunes <paramref name="p"/>'s U-Net in place by <paramref name="method"/> at
    /// <paramref name="amount"/>, fine-tunes when asked; the variant and the sparsity reached.</summary>
    public static (CompressionVariant Variant, double Sparsity) Prune(StableDiffusionPipeline p, PruningMethod method,
        double amount, FineTuneData? fineTune)
    {
        if (method == PruningMethod.Magnitude) return CompressionStudy.MagnitudePruned(p, amount, fineTune);
        var (variant, report) = CompressionStudy.StructuredPrunedWithReport(p, amount, fineTune);
        return (variant, ChannelsRemoved(report));
    }

    /// <summary>The share of the ResNet blocks' hidden channels that structured pruning removed.</summary>
    public static double ChannelsRemoved(StructuredPruningReport report) =>
        1 - (double)report.Blocks.Sum(b => b.ChannelsAfter) / report.Blocks.Sum(b => b.ChannelsBefore);

    static long Count(StableDiffusionPipeline p) => p.Unet.parameters().Sum(t => t.numel());

    /// <summary>The four curves of the sweep (magnitude, structured L1, each ± fine-tune): amounts and a column.
    /// </summary>
    public static IEnumerable<(string Curve, double[] Amounts, double[] Values)> Curves(
        IReadOnlyList<PruningSweepRow> rows, Func<PruningSweepRow, double> value) =>
        rows.Where(r => r.Amount > 0).GroupBy(r => r.Curve)
            .Select(g => (g.Key, g.Select(r => r.Amount).ToArray(), g.Select(value).ToArray()));

    /// <summary>
    /// What the sweep says, from its rows (the first is the float32 reference): per curve, the largest amount whose
    /// judged accuracy stays within the sampling noise (±2/n) of float32's, and the accuracy at the largest amount;
    /// what structured pruning saves in parameters and time at the largest amount; what fine-tuning recovered there.
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<PruningSweepRow> rows)
    {
        if (rows.Count < 2 || rows[0].Amount != 0)
            throw new ArgumentException("the first row must be the unpruned reference (amount 0)", nameof(rows));
        var b = rows[0];
        double noise = 2.0 / b.Samples;
        var points = new List<string>();
        foreach (var curve in rows.Skip(1).GroupBy(r => r.Curve))
        {
            var ordered = curve.OrderBy(r => r.Amount).ToList();
            var kept = ordered.TakeWhile(r => b.Accuracy - r.Accuracy <= noise).LastOrDefault();
            var last = ordered[^1];
            points.Add($"{curve.Key}: " + (kept is null
                ? $"already {100 * (b.Accuracy - ordered[0].Accuracy):F0} points below float32 at " +
                  $"{ordered[0].Amount:P0}"
                : $"within the noise (±{noise:P0} on {b.Samples} prompts) of float32's {b.Accuracy:P0} up to " +
                  $"{kept.Amount:P0}") +
                $"; at {last.Amount:P0}: {last.Accuracy:P0} (Fréchet {last.Frechet:F2} vs {b.Frechet:F2}), " +
                $"{last.Parameters:N0} parameters ({(double)last.Parameters / b.Parameters:P0} of float32's), " +
                $"{last.MsPerCall:F0} ms per guided call ({b.MsPerCall / last.MsPerCall:F2}× float32's speed).");
        }
        foreach (var method in new[] { PruningMethod.Magnitude, PruningMethod.Structured })
        {
            double top = rows.Where(r => r.Method == method && r.Amount > 0).Select(r => r.Amount).DefaultIfEmpty()
                .Max();
            var plain = rows.FirstOrDefault(r => r.Method == method && r.Amount == top && !r.FineTuned);
            var tuned = rows.FirstOrDefault(r => r.Method == method && r.Amount == top && r.FineTuned);
            if (plain is null || tuned is null) continue;
            double gained = 100 * (tuned.Accuracy - plain.Accuracy);
            points.Add($"Fine-tuning after {plain.Curve} at {top:P0}: {plain.Accuracy:P0} → {tuned.Accuracy:P0} " +
                       (Math.Abs(gained) <= 100 * noise
                           ? "(within the noise)."
                           : $"({gained:+0;-0} points), Fréchet {plain.Frechet:F2} → {tuned.Frechet:F2}."));
        }
        var magnitude = rows.Where(r => r.Method == PruningMethod.Magnitude && r.Amount > 0).ToList();
        if (magnitude.Count > 0 && magnitude.All(r => r.Parameters == b.Parameters))
            points.Add($"Magnitude pruning kept all {b.Parameters:N0} parameters stored ({b.WeightMB:F2} MB, zeros " +
                       $"in dense tensors) and ran {magnitude.Min(r => r.MsPerCall):F0}–" +
                       $"{magnitude.Max(r => r.MsPerCall):F0} ms per call against float32's {b.MsPerCall:F0}: " +
                       "without sparse kernels the zeros are " +
                       "multiplied like any other weight.");
        return points;
    }
}
