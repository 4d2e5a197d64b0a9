namespace LdmLab.Labs;

/// <summary>
/// One model of the encoder comparison judged on the same prompts (issue 28), or a reference row (real scenes,
/// chance: <see cref="EncoderComparisonStudy.References"/>). Shares are in [0, 1]; NaN where a row has no value.
/// </summary>
/// <param name="Model">The variant's label, or the reference's.</param>
/// <param name="Parameters">Text encoder + U-Net (0 for references).</param>
/// <param name="FinalLoss">Mean training loss over the last 100 steps (NaN for references).</param>
/// <param name="ClassRight">One-item prompts: the inked slot's class is the named one.</param>
/// <param name="InNamedHalf">One-item prompts with a side: the item lands in that half.</param>
/// <param name="BothRight">Two-item prompts: both classes right, each in its half.</param>
/// <param name="NounPointing">Two-item prompts: the nouns' maps peak in their named half.</param>
/// <param name="SideWordPointing">The side words' ("left", "right") maps peak in their half.</param>
/// <param name="Iou">The nouns' maps thresholded at τ against the drawn item's silhouette.</param>
/// <param name="PointingByLayer">Noun pointing per cross-attention layer (empty for references).</param>
public sealed record EncoderRow(string Model, long Parameters, double FinalLoss, double ClassRight,
    double InNamedHalf, double BothRight, double NounPointing, double SideWordPointing, double Iou,
    IReadOnlyDictionary<string, double> PointingByLayer)
{
    public bool IsReference => Parameters == 0;
}

/// <summary>
/// Issue 28's encoder comparison: the shipped causal model and its variants (<see cref="EncoderVariantRecipe"/>:
/// bidirectional, deeper, side-first captions), each trained on the same scenes with the same budget, judged on the
/// same prompts with the measures of notebook 05 — one-item class (<see cref="TextToImageStudies.Accuracy"/>),
/// named side, both items right, and the localisation of <see cref="TextToImageStudies.Localise"/> (noun and
/// side-word pointing, IoU, per layer) — beside a real-scenes and a chance row; and the takeaways computed from the
/// rows alone (unit-tested on hand-made rows).
/// </summary>
public static class EncoderComparisonStudy
{
    /// <summary>The prompts a variant reads: <see cref="EncoderVariantRecipe.Caption"/> of each text, the layout
    /// (classes, side) unchanged.</summary>
    public static IReadOnlyList<ScenePrompt> For(EncoderVariant variant, IReadOnlyList<ScenePrompt> prompts) =>
        prompts.Select(p => p with { Text = EncoderVariantRecipe.Caption(variant, p.Text) }).ToList();

    /// <summary>
    /// One model on <paramref name="count"/> one-item, sided and two-item prompts (seeds 0, 100,000 and the
    /// localisation's 0 over <see cref="TextToImageStudies.PairPrompts"/> seed 7, as notebook 05), DDIM
    /// <paramref name="steps"/> steps at guidance <paramref name="guidance"/>, in the variant's caption form.
    /// </summary>
    public static EncoderRow Measure(EncoderVariant variant, TextToImageRecipe.Trained trained, AutoencoderKL vae,
        FashionClassifier judge, int count, int steps, double guidance)
    {
        var model = trained.Model;
        var singles = For(variant, TextToImageStudies.SinglePrompts(count));
        var sided = For(variant, TextToImageStudies.SidedPrompts(count));
        var pairs = For(variant, TextToImageStudies.PairPrompts(count, seed: 7));
        var single = TextToImageStudies.Generate(model, vae, singles, steps, guidance, seed: 0);
        var sidedImages = TextToImageStudies.Generate(model, vae, sided, steps, guidance, seed: 100_000);
        var pipeline = TextToImageRecipe.Pipeline(model, vae);
        var (paired, loc) = TextToImageStudies.Localise(pipeline, model, pairs, steps, guidance);
        return new EncoderRow(EncoderVariantRecipe.Label(variant), model.parameters().Sum(p => p.numel()),
            trained.Log.Losses.TakeLast(100).Average(),
            TextToImageStudies.Accuracy(judge, single, singles),
            TextToImageStudies.InkedSides(sidedImages).Zip(sided).Average(x => x.First == x.Second.NamedSide ? 1.0 : 0),
            TextToImageStudies.Accuracy(judge, paired, pairs), loc.Pointing, loc.SideWordPointing, loc.Iou,
            loc.PointingByLayer);
    }

    /// <summary>
    /// The reference rows: "real scenes" — the judge on <paramref name="real"/>'s one-item and two-item scenes (what a
    /// perfect generator would score with this judge; every real item sits in its named half), with the bare named
    /// half's IoU (<see cref="ConditioningStudy.HalfIou"/>, what a map that only knew the side reaches); and "chance"
    /// — a class in ten, a half in two, a two-item prompt's ordered pair in 100, a map's peak in its half one time in
    /// two.
    /// </summary>
    public static IReadOnlyList<EncoderRow> References(CaptionedScenes real, FashionClassifier judge, double tau = 0.4)
    {
        var prompts = Enumerable.Range(0, (int)real.Count).Select(i =>
            new ScenePrompt(real.Captions[i], (int)real.LabelAt(i, Side.Left), (int)real.LabelAt(i, Side.Right)))
            .ToList();
        var correct = TextToImageStudies.Correct(judge, real.Images, prompts);
        double Share(bool pair) => prompts.Select((p, i) => (p, i)).Where(x => x.p.IsPair == pair)
            .Select(x => correct[x.i] ? 1.0 : 0.0).DefaultIfEmpty(double.NaN).Average();
        var pairsOnly = tensor(prompts.Select((p, i) => (p, i)).Where(x => x.p.IsPair).Select(x => (long)x.i)
            .ToArray());
        double halfIou = pairsOnly.numel() == 0 ? double.NaN
            : ConditioningStudy.HalfIou(real.Images.index_select(0, pairsOnly), tau);
        var none = new Dictionary<string, double>();
        return
        [
            new EncoderRow("real scenes (judge)", 0, double.NaN, Share(pair: false), 1.0, Share(pair: true),
                double.NaN, double.NaN, halfIou, none),
            new EncoderRow("chance", 0, double.NaN, 0.1, 0.5, 0.01, 0.5, 0.5, double.NaN, none),
        ];
    }

    /// <summary>The table's columns (<see cref="Cells"/> fills them).</summary>
    public static IReadOnlyList<string> Headers { get; } =
    [
        "encoder", "parameters", "final loss", "one item: class right", "named side: item in that half",
        "two items: both right", "noun pointing", "side-word pointing", "IoU (τ = 0.4)", "best layer (pointing)",
    ];

    /// <summary>A row as the table shows it: shares in %, "—" where a row has no value.</summary>
    public static IReadOnlyList<string> Cells(EncoderRow row)
    {
        string P(double v) => double.IsNaN(v) ? "—" : $"{100 * v:F1} %";
        var best = row.PointingByLayer.Count > 0 ? row.PointingByLayer.MaxBy(kv => kv.Value) : default;
        return
        [
            row.Model, row.IsReference ? "—" : $"{row.Parameters:N0}",
            double.IsNaN(row.FinalLoss) ? "—" : $"{row.FinalLoss:F4}", P(row.ClassRight), P(row.InNamedHalf),
            P(row.BothRight), P(row.NounPointing), P(row.SideWordPointing),
            double.IsNaN(row.Iou) ? "—" : $"{row.Iou:F3}",
            best.Key is null ? "—" : $"{ShortLayer(best.Key)} ({P(best.Value)})",
        ];
    }

    /// <summary>A cross-attention layer's name cut short: "down_blocks.1.attentions.0.transformer_blocks.0.attn2" →
    /// "down_blocks.1.a0".</summary>
    public static string ShortLayer(string layer) =>
        layer.Replace(".attentions.", ".a").Replace(".transformer_blocks.0.attn2", "");

    /// <summary>The rows as a Markdown table (for docs and logs).</summary>
    public static string Markdown(IReadOnlyList<EncoderRow> rows) =>
        string.Join("\n", new[] { Headers, Headers.Select(_ => "---").ToList() }.Concat(rows.Select(Cells))
            .Select(cells => $"| {string.Join(" | ", cells)} |"));

    /// <summary>Standard error of a share near ½ over <paramref name="n"/> trials: √(¼ / n).</summary>
    public static double Sigma(int n) => Math.Sqrt(0.25 / n);

    /// <summary>
    /// The comparison read out from the rows alone: which variant binds both items best and by how much against the
    /// causal baseline (in standard errors of a share over <paramref name="count"/> prompts), whether the nouns'
    /// maps then point into their half (and which layer does it best), whether the side words still out-point the
    /// nouns (the causal encoder's signature), and whether any variant meets the lab's goals (pointing ≥ 90 %, both
    /// right ≥ 80 %). <paramref name="rows"/> holds the causal row (label "causal") and may hold references.
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<EncoderRow> rows, int count)
    {
        var models = rows.Where(r => !r.IsReference).ToList();
        var causal = models.FirstOrDefault(r => r.Model == EncoderVariantRecipe.Label(EncoderVariant.Causal))
                     ?? throw new ArgumentException("the rows hold no causal (baseline) row", nameof(rows));
        var variants = models.Where(r => r != causal).ToList();
        if (variants.Count == 0) throw new ArgumentException("the rows hold no variant besides the causal one",
            nameof(rows));
        // a difference of two shares over count prompts each: √2 · σ; pointing counts two maps per prompt
        double pairSe = Math.Sqrt(2) * Sigma(count), pointSe = Math.Sqrt(2) * Sigma(2 * count);
        string Gain(double d, double se) => $"{100 * d:+0.0;−0.0} points, {d / se:+0.0;−0.0} σ";
        var best = variants.MaxBy(r => r.BothRight)!;
        var bestPointing = variants.MaxBy(r => r.NounPointing)!;
        var real = rows.FirstOrDefault(r => r.IsReference && !double.IsNaN(r.BothRight) && r.BothRight > 0.05);
        var significant = variants.Where(r => r.BothRight - causal.BothRight > 2 * pairSe).ToList();
        var sideFirst = variants.FirstOrDefault(r => r.Model == EncoderVariantRecipe.Label(EncoderVariant.SideFirst));
        var bestLayer = bestPointing.PointingByLayer.Count > 0 ? bestPointing.PointingByLayer.MaxBy(kv => kv.Value)
            : (KeyValuePair<string, double>?)null;
        var goals = models.Where(r => r.NounPointing >= 0.9 && r.BothRight >= 0.8).ToList();
        var lines = new List<string>
        {
            $"Both items right: causal {causal.BothRight:P1}; " +
            string.Join("; ", variants.Select(r => $"{r.Model} {r.BothRight:P1} " +
                                                   $"({Gain(r.BothRight - causal.BothRight, pairSe)})")) +
            (real is not null ? $" (real scenes {real.BothRight:P1} with this judge)" : "") + ". " +
            (significant.Count > 0
                ? $"More than 2 σ better than causal: {string.Join(", ", significant.Select(r => r.Model))} — " +
                  $"{best.Model} binds best."
                : "No variant is more than 2 σ better than the causal encoder: at this budget the encoder is not " +
                  "what limits binding."),
            $"Noun pointing: causal {causal.NounPointing:P1}; " +
            string.Join("; ", variants.Select(r => $"{r.Model} {r.NounPointing:P1} " +
                                                   $"({Gain(r.NounPointing - causal.NounPointing, pointSe)})")) +
            $". IoU with the drawn item: {string.Join(", ", models.Select(r => $"{r.Model} {r.Iou:F3}"))}." +
            (bestLayer is { } layer
                ? $" {bestPointing.Model}'s best layer is {ShortLayer(layer.Key)} ({layer.Value:P1})." : ""),
        };
        var sideLed = models.Where(r => r.SideWordPointing > r.NounPointing + 2 * Sigma(2 * count)).ToList();
        lines.Add($"Side words vs nouns: {string.Join(", ", models.Select(r =>
                $"{r.Model} {r.SideWordPointing:P0} vs {r.NounPointing:P0}"))}. " +
            (sideLed.Count > 0
                ? "The side words out-point the nouns (by > 2 σ) in " +
                  $"{string.Join(", ", sideLed.Select(r => r.Model))}: " +
                  "there the place rides on the side tokens rather than on the noun's state."
                : "In no model do the side words out-point the nouns by more than 2 σ."));
        if (sideFirst is not null)
            lines.Add($"Word order alone (side-first captions, the causal encoder unchanged): both right " +
                      $"{sideFirst.BothRight:P1} vs {causal.BothRight:P1}, noun pointing {sideFirst.NounPointing:P1} " +
                      $"vs {causal.NounPointing:P1} — " +
                      (sideFirst.NounPointing - causal.NounPointing > 2 * pointSe
                          ? "letting the noun see its side word moves its map into that half."
                          : "letting the noun see its side word does not by itself move its map into that half."));
        lines.Add($"Cost: parameters {string.Join(", ", models.Select(r => $"{r.Model} {r.Parameters:N0}"))}; one " +
                  $"item's class stays {models.Min(r => r.ClassRight):P0}–{models.Max(r => r.ClassRight):P0} right " +
                  $"and a named side is followed {models.Min(r => r.InNamedHalf):P0}–" +
                  $"{models.Max(r => r.InNamedHalf):P0} of the time in every model.");
        lines.Add($"The lab's goals (pointing ≥ 90 %, both items right ≥ 80 %): " +
                  (goals.Count > 0 ? $"met by {string.Join(", ", goals.Select(r => r.Model))}."
                      : "met by no encoder here — what the words say must reach the places by another route " +
                        "(training-free steering, layout conditioning)."));
        return lines;
    }
}
