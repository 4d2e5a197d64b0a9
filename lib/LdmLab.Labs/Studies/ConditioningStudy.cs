using System.Diagnostics;

namespace LdmLab.Labs;

/// <summary>One conditioning method judged on one-item, sided and two-item prompts (notebook 05 §5).</summary>
/// <param name="InNamedHalf">One-item prompts with a named side: the share whose item lands in that half.</param>
/// <param name="SidedRight">The same prompts: the share with the right class in the named half.</param>
/// <param name="BothRight">Two-item prompts: the share with both classes right, each in its half.</param>
public sealed record MethodRow(ConditioningMethod Method, string Enters, long Parameters, double FinalLoss,
    double ClassRight, double InNamedHalf, double SidedRight, double BothRight, double MsPerImage);

/// <summary>
/// Notebook 05's measurements beyond the maps themselves: the five ways a condition enters the denoiser, judged on
/// the same prompts, and the takeaways of the localisation score and of the methods, computed from their results
/// alone (unit-tested on hand-made reports and rows).
/// </summary>
public static class ConditioningStudy
{
    /// <summary>Where each method's condition enters, in <see cref="ConditioningMethod"/> order.</summary>
    public static IReadOnlyList<string> Enters { get; } =
    [
        "token states → every position", "pooled text → γ, β per channel", "layout map → conv_in",
        "layout map → + per level", "layout map → ⊙ gate per level",
    ];

    /// <summary>
    /// Every method on <paramref name="count"/> one-item, sided and two-item prompts (seeds 0, 100,000 and 200,000;
    /// DDIM, guidance w), judged by <paramref name="judge"/>; time per image is measured on the one-item set.
    /// </summary>
    public static IReadOnlyList<MethodRow> Methods(
        IReadOnlyDictionary<ConditioningMethod, TextToImageRecipe.TrainedMethod> byMethod, AutoencoderKL vae,
        FashionClassifier judge, int count, int steps, double guidance)
    {
        var singles = TextToImageStudies.SinglePrompts(count);
        var sidedPrompts = TextToImageStudies.SidedPrompts(count);
        var pairs = TextToImageStudies.PairPrompts(count, seed: 11);
        var rows = new List<MethodRow>();
        foreach (var (method, trained) in byMethod.OrderBy(kv => kv.Key))
        {
            var m = trained.Model;
            var clock = Stopwatch.StartNew();
            var single = TextToImageStudies.Generate(m, vae, singles, steps, guidance, seed: 0);
            double ms = clock.Elapsed.TotalMilliseconds / count;
            var sided = TextToImageStudies.Generate(m, vae, sidedPrompts, steps, guidance, seed: 100_000);
            var paired = TextToImageStudies.Generate(m, vae, pairs, steps, guidance, seed: 200_000);
            rows.Add(new MethodRow(method, Enters[(int)method], m.parameters().Sum(p => p.numel()),
                trained.Log.Losses.TakeLast(100).Average(),
                TextToImageStudies.Accuracy(judge, single, singles),
                TextToImageStudies.InkedSides(sided).Zip(sidedPrompts)
                    .Average(x => x.First == x.Second.NamedSide ? 1.0 : 0.0),
                TextToImageStudies.PlacedAsNamed(judge, sided, sidedPrompts).Average(c => c ? 1.0 : 0.0),
                TextToImageStudies.Accuracy(judge, paired, pairs), ms));
        }
        return rows;
    }

    /// <summary>
    /// The reference for a map's IoU: the whole named half thresholded like a map (what a map that only knew the side
    /// would reach) against the silhouettes of what was drawn in each half of <paramref name="canvases"/>
    /// [N, 1, 28, 56], averaged over both halves.
    /// </summary>
    public static double HalfIou(Tensor canvases, double tau)
    {
        const int h = CaptionedScenes.Height, w = CaptionedScenes.Width;
        long n = canvases.shape[0];
        var silhouettes = CaptionedScenes.SlotMasks(canvases);                            // [N, 2, 28, 56]
        var halves = CaptionedScenes.HalfMasks();                                          // [2, 28, 56]
        return new[] { 0, 1 }.Average(side => CrossAttentionRecorder.Iou(halves[side].expand(n, h, w),
            silhouettes.select(1, side), tau).mean().item<float>());
    }

    /// <summary>
    /// The localisation score read out: pointing and IoU against chance and the bare half, the best and worst layer
    /// and head, when along the trajectory the nouns bind, whether the side words (which a causal text encoder lets
    /// see the noun) point better than the nouns, the standard error of pointing, and both items right.
    /// </summary>
    /// <param name="timesteps">The sampler's timesteps, one per evaluation.</param>
    /// <param name="shortName">A short label for a layer name.</param>
    public static IReadOnlyList<string> LocalisationTakeaways(LocalisationReport loc, double halfIou,
        double pairAccuracy, IReadOnlyList<double> timesteps, Func<string, string> shortName)
    {
        var bestLayer = loc.PointingByLayer.MaxBy(kv => kv.Value);
        var worstLayer = loc.PointingByLayer.MinBy(kv => kv.Value);
        var bestHead = loc.PointingByHead.MaxBy(kv => kv.Value);
        var byStep = loc.PointingByEvaluation;
        double final = byStep[^1], rise = final - byStep[0];
        int binds = Enumerable.Range(0, byStep.Count).First(e => byStep[e] >= 0.9 * final);
        double sigma = Math.Sqrt(0.25 / (2 * loc.Prompts));                 // two noun maps per prompt
        return
        [
            $"Over {loc.Prompts} two-item prompts the nouns' maps point into the half their caption names " +
            $"{loc.Pointing:P1} of the time (chance 50 %); thresholded at τ = {loc.Tau} they cover the drawn item " +
            $"with IoU {loc.Iou:F3} against {halfIou:F3} for the bare half.",
            $"Layers: {shortName(bestLayer.Key)} localises best ({bestLayer.Value:P1}), {shortName(worstLayer.Key)} " +
            $"least ({worstLayer.Value:P1}); the best single head ({shortName(bestHead.Key.layer)}, head " +
            $"{bestHead.Key.head}) reaches {bestHead.Value:P1}.",
            Math.Abs(rise) < 0.05
                ? $"Time: pointing stays between {byStep.Min():P0} and {byStep.Max():P0} over the {byStep.Count} " +
                  $"steps (first {byStep[0]:P0}, last {final:P0}): whatever this model binds, it binds from the " +
                  "first, noisiest step on; the maps do not sharpen along the trajectory."
                : $"Time: pointing is {byStep[0]:P0} at the first step (t = {timesteps[0]:F0}) and reaches 90 % of " +
                  $"its final {final:P0} at step {binds + 1} of {byStep.Count} (t = {timesteps[binds]:F0}).",
            $"The side words themselves point into their half {loc.SideWordPointing:P1} of the time, the nouns " +
            $"{loc.Pointing:P1}. CLIP's text encoder is causal: a noun's state cannot see the \"on the left\" that " +
            "follows it, so only the later tokens " +
            (loc.SideWordPointing > loc.Pointing + 2 * sigma
                ? "can carry where it goes — and here they localise better than the nouns."
                : "can carry where it goes; here they do not localise better than the nouns."),
            $"Against chance: {2 * loc.Prompts} noun maps, so 50 % ± {100 * sigma:F1} points; {loc.Pointing:P1} is " +
            $"{(loc.Pointing - 0.5) / sigma:F1} standard errors above it. The goals for this lab are pointing ≥ 90 % " +
            "and both items right ≥ 80 %: " +
            $"{(loc.Pointing >= 0.9 && pairAccuracy >= 0.8 ? "met" : "not met by this model")}.",
            $"Both items right in {pairAccuracy:P1} of the two-item images (independent classifier on each half).",
        ];
    }

    /// <summary>What every method carries (the class), which follow a named side (3σ above chance, and ≥ 90 %),
    /// whether being handed the layout beats learning it from words, and the cost per image.</summary>
    public static IReadOnlyList<string> MethodTakeaways(IReadOnlyList<MethodRow> rows, int count)
    {
        double sideSigma = Math.Sqrt(0.25 / count);
        string Names(IEnumerable<MethodRow> rs) => rs.Any() ? string.Join(", ", rs.Select(r => r.Method)) : "none";
        var cross = rows.First(r => r.Method == ConditioningMethod.CrossAttention);
        var spatial = rows.Where(r => r.Method >= ConditioningMethod.Concatenation).ToList();
        var fastest = rows.MinBy(r => r.MsPerImage)!;
        return
        [
            $"Five ways in, same budget: the one-item class is right {rows.Min(r => r.ClassRight):P0}–" +
            $"{rows.Max(r => r.ClassRight):P0} of the time for every method — any of them carries *what*. *Where* is " +
            "another matter: a one-item prompt's item lands in the named half " +
            $"{string.Join(", ", rows.Select(r => $"{r.Method} {r.InNamedHalf:P0}"))} (chance 50 % ± " +
            $"{100 * sideSigma:F0}). Above chance by 3 σ: " +
            $"{Names(rows.Where(r => r.InNamedHalf - 0.5 > 3 * sideSigma))}; " +
            $"at ≥ 90 %: {Names(rows.Where(r => r.InNamedHalf >= 0.9))}.",
            $"Two items both right: {string.Join(", ", rows.Select(r => $"{r.Method} {r.BothRight:P0}"))}. " +
            (spatial.Count > 0 && spatial.Min(r => r.BothRight) > cross.BothRight
                ? "Given the layout, the spatial methods bind each class to its half better than cross-attention " +
                  "learns to from the words; the price is the map itself, which a caption does not contain."
                : "The spatial methods do not beat cross-attention here even though they are handed the layout."),
            $"Cost: cross-attention takes {cross.MsPerImage:F1} ms per image, {fastest.Method} " +
            $"{fastest.MsPerImage:F1} ms (its attention layers are the difference); the layout methods need no text " +
            "encoder at all.",
        ];
    }
}
