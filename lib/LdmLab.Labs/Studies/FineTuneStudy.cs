using LdmLab.Adapters;

namespace LdmLab.Labs;

/// <summary>
/// What a fine-tuned model draws, judged by the lab's classifier: for the target's prompt the share judged the
/// target's class; for the nine other classes' prompts the accuracy (what the model knew before); for the class word's
/// prompt ("a shoe") the share judged one of its classes and the share judged the target's class — language drift
/// shows as the known accuracy falling or the class word turning into the target.
/// </summary>
/// <param name="Canvases">[3·perSet, 1, 28, 56]: the target's prompts, then the known classes', then the class
/// word's</param>
public sealed record FineTuneScore(int PerSet, double Target, double Known, double ClassWord, double ClassWordAsTarget,
    Tensor Canvases)
{
    /// <summary>The first <paramref name="n"/> canvases of set 0 (target), 1 (known) or 2 (class word).</summary>
    public Tensor Set(int set, int n) => Canvases.narrow(0, set * PerSet, Math.Min(n, PerSet));
}

/// <summary>How close generated items are to one subject: cosine similarity of the judge's features to the subject
/// and, on average, to the other items of its class; and how often the subject is the nearest of them all (chance:
/// one in 1 + others).</summary>
public sealed record SubjectFidelity(double ToSubject, double ToOthers, double NearestIsSubject, int Others);

/// <summary>One row of notebook 08's table: a method (or the base model before any), its counts and its score.
/// </summary>
public sealed record FineTuneRow(string Method, FineTuneSpec? Spec, long Trainable, long FileBytes,
    double TrainSeconds, FineTuneScore Score)
{
    /// <summary>The base model's row.</summary>
    public static FineTuneRow Before(FineTuneScore score) => new("base model (before)", null, 0, 0, 0, score);

    /// <summary>A fine-tuned model's row (its recorded training time).</summary>
    public static FineTuneRow Of(FineTuneLab.Tuned tuned, FineTuneScore score) => new(tuned.Spec.Label, tuned.Spec,
        tuned.Trainable, tuned.FileBytes, tuned.Log.Elapsed.TotalSeconds, score);

    /// <summary>Bytes as a person reads them: 12.3 KB, 4.02 MB.</summary>
    public static string Size(long bytes) => bytes < 1 << 20 ? $"{bytes / 1024.0:F1} KB" : $"{bytes / 1048576.0:F2} MB";
}

/// <summary>The measurements of notebook 08 (section 10.5.2).</summary>
public static class FineTuneStudy
{
    public const int Steps = 20;
    public const double Guidance = 5;

    /// <summary>
    /// Generates <paramref name="perSet"/> canvases for each of the three prompt sets ("a photo of a WORD", the nine
    /// other classes in turn, "a photo of a CLASSWORD"; DDIM <see cref="Steps"/> steps, w = <see cref="Guidance"/>,
    /// seeded) and judges them.
    /// </summary>
    public static FineTuneScore Score(TextConditionedUNet model, AutoencoderKL vae, FashionClassifier judge,
        FineTuneTarget target, string word, int perSet, long seed = 0)
    {
        const string template = "a photo of a {0}";
        var known = Enumerable.Range(0, CaptionedFashion.Nouns.Length).Where(c => c != target.Label).ToArray();
        var prompts = Enumerable.Range(0, perSet)
            .Select(_ => new ScenePrompt(CaptionedFashion.WithArticle(template, word), target.Label, -1))
            .Concat(Enumerable.Range(0, perSet).Select(i => known[i % known.Length])
                .Select(c => new ScenePrompt(CaptionedFashion.WithArticle(template, CaptionedFashion.Nouns[c]), c, -1)))
            .Concat(Enumerable.Range(0, perSet)
                .Select(_ => new ScenePrompt(CaptionedFashion.WithArticle(template, target.ClassWord), -1, -1)))
            .ToList();
        var canvases = TextToImageStudies.Generate(model, vae, prompts, Steps, Guidance, seed);
        var judged = TextToImageStudies.Classify(judge, ItemSlot(canvases));
        double Share(int set, Func<long, int, bool> right) =>
            Enumerable.Range(set * perSet, perSet).Average(i => right(judged[i], i) ? 1.0 : 0.0);
        return new FineTuneScore(perSet,
            Share(0, (c, _) => c == target.Label),
            Share(1, (c, i) => c == prompts[i].Item),
            Share(2, (c, _) => target.ClassLabels.Contains((int)c)),
            Share(2, (c, _) => c == target.Label), canvases);
    }

    /// <summary>
    /// Fidelity of generated one-item canvases [N, 1, 28, 56] to <paramref name="subject"/> [1, 1, 28, 28] against
    /// <paramref name="others"/> [m, 1, 28, 28] of its class, in the judge's feature space (L2-normalised).
    /// </summary>
    public static SubjectFidelity Fidelity(FashionClassifier judge, Tensor canvases, Tensor subject, Tensor others) =>
        ItemFidelity(judge, ItemSlot(canvases), subject, others);

    /// <summary>
    /// The slot of each one-item canvas [N, 1, 28, 56] that holds the item: the one with more bright pixels (above
    /// mid-grey, 0 in [−1, 1]) — not the one with more total ink, which a faint haze over an empty half can win
    /// against a thin bright item, as fine-tuned models draw it. [N, 1, 28, 28].
    /// </summary>
    public static Tensor ItemSlot(Tensor canvases)
    {
        Tensor Bright(Side side) => CaptionedScenes.SlotOf(canvases, side).gt(0).sum([1, 2, 3]);   // [N]
        var left = Bright(Side.Left).ge(Bright(Side.Right)).reshape(-1, 1, 1, 1);
        return where(left, CaptionedScenes.SlotOf(canvases, Side.Left), CaptionedScenes.SlotOf(canvases, Side.Right));
    }

    /// <summary><see cref="Fidelity"/> of 28×28 items [N, 1, 28, 28] (a chosen slot of two-item canvases).</summary>
    public static SubjectFidelity ItemFidelity(FashionClassifier judge, Tensor items, Tensor subject, Tensor others)
    {
        using var _ = no_grad();
        Tensor Features(Tensor x) => nn.functional.normalize(ClassifierRecipe.Features(judge, x), dim: 1);
        var generated = Features(items);                                                    // [N, d]
        var toSubject = generated.matmul(Features(subject).t()).squeeze(1);                  // [N]
        var toOthers = generated.matmul(Features(others).t());                               // [N, m]
        return new SubjectFidelity(toSubject.mean().item<float>(), toOthers.mean().item<float>(),
            toSubject.gt(toOthers.amax([1])).to_type(ScalarType.Float32).mean().item<float>(), (int)others.shape[0]);
    }

    /// <summary>
    /// The LoRA scale sweep: the adapter attached unfused to <paramref name="baseModel"/> at each scale s
    /// (W + s·(α/r)·B·A), scored as <see cref="Score"/>; the adapter is detached after each.
    /// </summary>
    public static IReadOnlyList<(double Scale, FineTuneScore Score)> ScaleSweep(TextConditionedUNet baseModel,
        LoraAdapter adapter, AutoencoderKL vae, FashionClassifier judge, FineTuneTarget target,
        IReadOnlyList<double> scales, int perSet, long seed = 0)
    {
        var sweep = new List<(double, FineTuneScore)>();
        foreach (var s in scales)
            using (FineTuneRecipe.Attach(adapter, baseModel, s))
                sweep.Add((s, Score(baseModel, vae, judge, target, target.Word, perSet, seed)));
        return sweep;
    }

    /// <summary>
    /// Generates <paramref name="prompts"/> with several adapters attached at once to <paramref name="baseModel"/>,
    /// each at its own scale; canvases [N, 1, 28, 56].
    /// </summary>
    public static Tensor WithAdapters(TextConditionedUNet baseModel, IReadOnlyList<(LoraAdapter Adapter, double Scale)>
        adapters, AutoencoderKL vae, IReadOnlyList<ScenePrompt> prompts, long seed = 0)
    {
        var handles = adapters.Select(a => FineTuneRecipe.Attach(a.Adapter, baseModel, a.Scale)).ToList();
        try { return TextToImageStudies.Generate(baseModel, vae, prompts, Steps, Guidance, seed); }
        finally { foreach (var h in handles) h.Dispose(); }
    }

    /// <summary>
    /// What the table says, computed from its rows (the first without a spec is the base model): whether and how
    /// cheaply the new class was taught (the goal: LoRA of rank ≤ 8 at ≥ 90 %), what textual inversion reached, what
    /// DreamBooth cost the known classes with and without prior preservation (the goal: ≤ 3 points lost with it), and
    /// where language drift shows.
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<FineTuneRow> rows, string word, string classWord)
    {
        var before = rows.First(r => r.Spec is null);
        var tuned = rows.Where(r => r.Spec is not null).ToList();
        if (tuned.Count == 0) throw new ArgumentException("no fine-tuned rows", nameof(rows));
        static string P(double x) => $"{100 * x:F0} %";
        static string Points(double d) => $"{(d >= 0 ? "+" : "−")}{Math.Abs(100 * d):F0} points";
        var points = new List<string>
        {
            $"Before: the base model's \"a photo of a {word}\" is judged a {word} {P(before.Score.Target)} of the " +
            "time " +
            $"(it never saw one); its nine known classes come out right {P(before.Score.Known)}, and \"a photo of a " +
            $"{classWord}\" is a {classWord} {P(before.Score.ClassWord)}.",
        };
        var teaching = tuned.Where(r => r.Score.Target >= 0.9).OrderBy(r => r.FileBytes).ToList();
        var best = tuned.MaxBy(r => r.Score.Target)!;
        points.Add(teaching.Count > 0
            ? $"{teaching.Count} of {tuned.Count} methods teach it (≥ 90 % of samples judged a {word}); the smallest " +
              $"file that does is {teaching[0].Method}'s: {FineTuneRow.Size(teaching[0].FileBytes)}, " +
              $"{teaching[0].Trainable:N0} trained numbers, {P(teaching[0].Score.Target)}."
            : $"No method reaches 90 % {word}s; the best is {best.Method} with {P(best.Score.Target)}.");
        var loras = tuned.Where(r => r.Spec!.Kind == FineTuneKind.Lora).OrderBy(r => r.Spec!.Rank).ToList();
        if (loras.Count > 0)
            points.Add("LoRA by rank: " + string.Join(", ", loras.Select(r =>
                           $"r = {r.Spec!.Rank} {P(r.Score.Target)} ({FineTuneRow.Size(r.FileBytes)})")) +
                       ". The goal of rank ≤ 8 reaching ≥ 90 % is " +
                       (loras.Any(r => r.Spec!.Rank <= 8 && r.Score.Target >= 0.9) ? "met." : "not met.") +
                       " Known classes under LoRA: " +
                       $"{string.Join(", ", loras.Select(r => Points(r.Score.Known - before.Score.Known)))}.");
        if (tuned.FirstOrDefault(r => r.Spec!.Kind == FineTuneKind.TextualInversion) is { } ti)
        {
            double bestOther = tuned.Where(r => r != ti).Select(r => r.Score.Target).DefaultIfEmpty(0).Max();
            points.Add($"Textual inversion trains {ti.Trainable:N0} numbers and reaches {P(ti.Score.Target)}" +
                       (ti.Score.Target <= bestOther - 0.2
                           ? $", far below the methods that change the U-Net ({P(bestOther)}): a new word can only " +
                             "point " +
                             "the frozen U-Net at what it already draws, and this one never drew the class"
                           : ", as far as the methods that change the U-Net: the frozen model could already draw " +
                             "close enough to it") +
                       $"; the known classes move {Points(ti.Score.Known - before.Score.Known)} " +
                       "(nothing else changed).");
        }
        var dreambooth = tuned.Where(r => r.Spec!.Kind == FineTuneKind.DreamBooth).OrderBy(r => r.Spec!.PriorWeight)
            .ToList();
        foreach (var r in dreambooth)
            points.Add($"{r.Method}: {P(r.Score.Target)} {word}s; known classes " +
                       $"{Points(r.Score.Known - before.Score.Known)}; " +
                       $"\"a {classWord}\" drawn as a {word} {P(r.Score.ClassWordAsTarget)} (before " +
                       $"{P(before.Score.ClassWordAsTarget)}), as a {classWord} {P(r.Score.ClassWord)}.");
        var withPrior = dreambooth.Where(r => r.Spec!.PriorWeight > 0).ToList();
        if (withPrior.Count > 0)
        {
            var worst = withPrior.MinBy(r => r.Score.Known)!;
            points.Add("With prior preservation the known classes lose at most " +
                       $"{Math.Max(0, 100 * (before.Score.Known - worst.Score.Known)):F0} points ({worst.Method}); " +
                       "the goal of ≤ 3 points is " +
                       (before.Score.Known - worst.Score.Known <= 0.03 ? "met." : "not met."));
        }
        var drift = tuned.MinBy(r => r.Score.Known)!;
        var classDrift = tuned.MaxBy(r => r.Score.ClassWordAsTarget)!;
        points.Add($"Language drift shows most in {drift.Method} (known classes " +
                   $"{Points(drift.Score.Known - before.Score.Known)}); the class word turns into the new class most " +
                   $"under {classDrift.Method} (\"a {classWord}\" → {word} {P(classDrift.Score.ClassWordAsTarget)}).");
        return points;
    }
}
