using System.Diagnostics;

namespace LdmLab.Labs;

/// <summary>The training-free fixes of notebook 12 (issue #28), each sampled with the same sampler, steps and
/// guidance as plain sampling.</summary>
public enum PlacementMethod { Plain, AttendAndExcite, LayoutSteered }

/// <summary>One method on the two-item prompts: both items judged right, the nouns' and side words' pointing into
/// their half, the nouns' IoU with the drawn item, seconds per image (generation only), and steering passes (one
/// U-Net forward and backward each) per image.</summary>
public sealed record PlacementRow(PlacementMethod Method, int Prompts, double BothRight, double NounPointing,
    double SidePointing, double Iou, double SecondsPerImage, double PassesPerImage);

/// <summary>Prompt-to-prompt's swap at step k: the share of slots whose judged class is the first prompt's (A) and
/// the swapped prompt's (B), when B replaces A from step <paramref name="Step"/> on (Step = steps: A throughout).
/// </summary>
public sealed record SwapPoint(int Step, double FollowsFirst, double FollowsSwapped);

/// <summary>The share of one layer's cross-attention mass (mean over positions, heads, steps, prompts) that goes to
/// each kind of token; the six sum to 1.</summary>
public sealed record TokenShareRow(string Layer, double Start, double Nouns, double Sides, double OtherWords,
    double End, double Padding)
{
    public double Sum => Start + Nouns + Sides + OtherWords + End + Padding;
}

/// <summary>Pointing of the nouns and of the side words for one layer (Head null: all heads) or one head.</summary>
public sealed record PointingRow(string Layer, int? Head, double Nouns, double Sides);

/// <summary>
/// Notebook 12's measurements (issue #28: why the text model binds items to sides only about half of the time, and
/// what fixes it without training): plain sampling against Attend-and-Excite and layout-steered sampling (regions
/// from the prompt's own side words) on the same prompts and noise, the attention analysis of exercise 10.4 (pointing
/// per layer and head, the swap-at-step-k curve, the tokens' shares of attention) and takeaways computed from the
/// rows alone (unit-tested on hand-made rows).
/// </summary>
public static class WordsToPlacesStudy
{
    /// <summary>The goal of issue #28: both items right at least this often…</summary>
    public const double BothRightGoal = 0.8;
    /// <summary>…with the nouns' maps pointing into their half at least this often, without being handed a
    /// layout.</summary>
    public const double PointingGoal = 0.9;

    /// <summary>Each two-item prompt's nouns as steering targets, with the half its own side word names on the
    /// latent grid (7 × 14 for the 28 × 56 canvases).</summary>
    public static IReadOnlyList<SteeringPrompt> SteeringPrompts(ClipTokenizer tokenizer,
        IReadOnlyList<ScenePrompt> prompts, int height = CaptionedScenes.Height / 4,
        int width = CaptionedScenes.Width / 4) =>
        prompts.Select(p => SteeringPrompt.FromWords(tokenizer, p.Text, TextToImageStudies.NounTokens(tokenizer, p),
            height, width)).ToList();

    /// <summary>The steering of a method for a batch of prompts (null for plain sampling), with the settings this
    /// study measured: A&amp;E's schedule (refinements at 0, 20 and 40 % of the steps, updates in the first half),
    /// step-size scale <paramref name="scaleFactor"/>.</summary>
    public static AttentionSteering? Steering(PlacementMethod method, ClipTokenizer tokenizer,
        IReadOnlyList<ScenePrompt> prompts, double? scaleFactor = null, int maxRefinementSteps = 5) => method switch
        {
            PlacementMethod.Plain => null,
            PlacementMethod.AttendAndExcite => new AttendAndExcite(SteeringPrompts(tokenizer, prompts))
            {
                ScaleFactor = scaleFactor ?? DefaultScale(method), MaxRefinementSteps = maxRefinementSteps,
            },
            PlacementMethod.LayoutSteered => new LayoutSteering(SteeringPrompts(tokenizer, prompts))
            {
                ScaleFactor = scaleFactor ?? DefaultScale(method), MaxRefinementSteps = maxRefinementSteps,
            },
            _ => throw new ArgumentOutOfRangeException(nameof(method), method, "no such placement method"),
        };

    /// <summary>The step-size scale s of each steered method (chosen on a separate prompt set, seed 5).</summary>
    public static double DefaultScale(PlacementMethod method) => method switch
    {
        PlacementMethod.AttendAndExcite => 20,
        PlacementMethod.LayoutSteered => 20,
        _ => 0,
    };

    /// <summary>
    /// One method on the prompts: generated in batches (the same noise per batch index for every method) with the
    /// attention recorded, judged by <paramref name="judge"/> on each half, localised as notebook 05 does; returns the
    /// row, the canvases [N, 1, 28, 56] and the localisation report (per layer and head, nouns and side words).
    /// </summary>
    public static (PlacementRow row, Tensor canvases, LocalisationReport report) Measure(PlacementMethod method,
        StableDiffusionPipeline pipeline, TextConditionedUNet model, FashionClassifier judge,
        IReadOnlyList<ScenePrompt> prompts, int steps, double guidance, long seed = 0, int batchSize = 50,
        double? scaleFactor = null, Action<CrossAttentionRecorder, IReadOnlyList<ScenePrompt>>? inspect = null)
    {
        long passes = 0;                                      // per image: each pass runs every row of its batch
        AttentionSteering? last = null;
        AttentionSteering? Steer(IReadOnlyList<ScenePrompt> batch)
        {
            passes += (long)(last?.Passes ?? 0) * (last?.Prompts.Count ?? 0);
            return last = Steering(method, model.Tokenizer, batch, scaleFactor);
        }
        var (canvases, report) = TextToImageStudies.Localise(pipeline, model, prompts, steps, guidance, seed: seed,
            batchSize: batchSize, steering: Steer, inspect: inspect);
        passes += (long)(last?.Passes ?? 0) * (last?.Prompts.Count ?? 0);
        double both = TextToImageStudies.Accuracy(judge, canvases, prompts);
        var row = new PlacementRow(method, prompts.Count, both, report.Pointing, report.SideWordPointing, report.Iou,
            report.GenerationSeconds / prompts.Count, passes / (double)prompts.Count);
        return (row, canvases, report);
    }

    /// <summary>Rows per layer (all heads) and per head from a localisation report: nouns' and side words'
    /// pointing.</summary>
    public static IReadOnlyList<PointingRow> PointingRows(LocalisationReport report) =>
        report.PointingByLayer.Select(kv => new PointingRow(kv.Key, null, kv.Value,
                report.SidePointingByLayer.GetValueOrDefault(kv.Key, double.NaN)))
            .Concat(report.PointingByHead.OrderBy(kv => kv.Key.layer, StringComparer.Ordinal)
                .ThenBy(kv => kv.Key.head).Select(kv => new PointingRow(kv.Key.layer, kv.Key.head, kv.Value,
                    report.SidePointingByHead.GetValueOrDefault(kv.Key, double.NaN))))
            .ToList();

    /// <summary>The pair prompt with its two items swapped and the words otherwise the same ("a bag on the left and a
    /// sneaker on the right" → "a sneaker on the left and a bag on the right").</summary>
    public static ScenePrompt Swapped(ScenePrompt prompt)
    {
        if (!prompt.IsPair) throw new ArgumentException($"'{prompt.Text}' is not a two-item prompt", nameof(prompt));
        bool rightFirst = prompt.Text == CaptionedFashion.PairCaption(prompt.Left, prompt.Right, rightFirst: true);
        return new ScenePrompt(CaptionedFashion.PairCaption(prompt.Right, prompt.Left, rightFirst), prompt.Right,
            prompt.Left);
    }

    /// <summary>
    /// Prompt-to-prompt's swap as a probe of when binding is decided: for each k in <paramref name="switchSteps"/>,
    /// every prompt A is sampled with A for steps 0 … k − 1 and with its swapped form B from step k on (same noise),
    /// and each half is judged: which prompt's item is there. k = 0 is B throughout, k = steps A throughout.
    /// </summary>
    public static IReadOnlyList<SwapPoint> SwapCurve(TextConditionedUNet model, AutoencoderKL vae,
        FashionClassifier judge, IReadOnlyList<ScenePrompt> prompts, int steps, double guidance,
        IReadOnlyList<int> switchSteps, long seed = 0, int batchSize = 100)
    {
        using var _ = no_grad();
        var pipeline = new LatentDiffusionPipeline(model, vae, "DDIMScheduler", TextToImageRecipe.SchedulerConfig());
        var swapped = prompts.Select(Swapped).ToList();
        var first = model.Tokenize(prompts.Select(p => p.Text));                                      // [N, 20]
        var second = model.Tokenize(swapped.Select(p => p.Text));
        var points = new List<SwapPoint>();
        foreach (int k in switchSteps)
        {
            var canvases = new List<Tensor>();
            for (int start = 0; start < prompts.Count; start += batchSize)
            {
                using var scope = NewDisposeScope();
                int n = Math.Min(batchSize, prompts.Count - start);
                canvases.Add(pipeline.Generate(first.narrow(0, start, n), new LatentGenerationOptions
                {
                    Steps = steps, GuidanceScale = guidance, Seed = seed + start,
                    LatentSize = [CaptionedScenes.Height / 4, CaptionedScenes.Width / 4],
                    Switch = new ConditionSwitch(k, second.narrow(0, start, n)),
                }).Images!.cpu().MoveToOuterDisposeScope());                                        // [n, 1, 28, 56]
            }
            var all = cat(canvases.ToArray());
            var left = TextToImageStudies.Classify(judge, CaptionedScenes.SlotOf(all, Side.Left));
            var right = TextToImageStudies.Classify(judge, CaptionedScenes.SlotOf(all, Side.Right));
            double a = 0, b = 0;
            for (int i = 0; i < prompts.Count; i++)
            {
                a += (left[i] == prompts[i].Left ? 1 : 0) + (right[i] == prompts[i].Right ? 1 : 0);
                b += (left[i] == swapped[i].Left ? 1 : 0) + (right[i] == swapped[i].Right ? 1 : 0);
            }
            points.Add(new SwapPoint(k, a / (2.0 * prompts.Count), b / (2.0 * prompts.Count)));
        }
        return points;
    }

    /// <summary>
    /// The share of each layer's attention mass per kind of token, over a recording of two-item prompts: the start
    /// token, the nouns, the side words ("left", "right"), the other words, the end token and the padding after it
    /// (CLIP pads with the end token's id; a causal encoder lets the padding see the whole prompt). Each record's
    /// maps are averaged over positions and heads ([B, tokens]); the six shares of a row sum to 1.
    /// </summary>
    public static IReadOnlyList<TokenShareRow> TokenShares(IEnumerable<AttentionRecord> records,
        ClipTokenizer tokenizer, IReadOnlyList<ScenePrompt> prompts)
    {
        var kinds = prompts.Select(p => TokenKinds(tokenizer, p)).ToList();
        var sums = new Dictionary<string, double[]>();
        var order = new List<string>();
        foreach (var r in records)
        {
            if (r.Maps.shape[0] != prompts.Count)
                throw new ArgumentException($"a record holds {r.Maps.shape[0]} rows for {prompts.Count} prompts",
                    nameof(prompts));
            using var scope = NewDisposeScope();
            var perToken = r.Maps.mean([1, 2, 3]).data<float>().ToArray();                     // [B · tokens]
            int tokens = (int)r.Maps.shape[4];
            if (!sums.TryGetValue(r.Layer, out var s)) { sums[r.Layer] = s = new double[6]; order.Add(r.Layer); }
            for (int b = 0; b < prompts.Count; b++)
                for (int j = 0; j < tokens; j++)
                    s[kinds[b](j)] += perToken[b * tokens + j];
        }
        return order.Select(layer =>
        {
            var s = sums[layer];
            double total = s.Sum();
            return new TokenShareRow(layer, s[0] / total, s[1] / total, s[2] / total, s[3] / total, s[4] / total,
                s[5] / total);
        }).ToList();
    }

    /// <summary>A token position's kind for one prompt: 0 start, 1 noun, 2 side word, 3 other word, 4 end,
    /// 5 padding.</summary>
    static Func<int, int> TokenKinds(ClipTokenizer tokenizer, ScenePrompt prompt)
    {
        var words = CrossAttentionRecorder.Words(tokenizer, prompt.Text);
        int end = words[^1].TokenPositions[^1] + 1;
        var nouns = TextToImageStudies.NounTokens(tokenizer, prompt).SelectMany(n => n.TokenPositions).ToHashSet();
        var sides = words.Where(w => SideWords.Names.Contains(w.Text)).SelectMany(w => w.TokenPositions).ToHashSet();
        return j => j == 0 ? 0 : nouns.Contains(j) ? 1 : sides.Contains(j) ? 2 : j < end ? 3 : j == end ? 4 : 5;
    }

    /// <summary>Seconds of a call (for cost columns measured outside <see cref="Measure"/>).</summary>
    public static double Seconds(Action run)
    {
        var clock = Stopwatch.StartNew();
        run();
        return clock.Elapsed.TotalSeconds;
    }

    /// <summary>
    /// What the numbers say, from the rows alone: the baseline's binding failure, each fix against plain sampling
    /// (both right, pointing, cost), the goal met or not, which layers and heads carry nouns and sides, when the swap
    /// stops changing the picture, and where the attention mass goes.
    /// </summary>
    /// <param name="shortName">A short label for a layer name.</param>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<PlacementRow> rows, IReadOnlyList<PointingRow> pointing,
        IReadOnlyList<SwapPoint> swap, IReadOnlyList<TokenShareRow> shares, int steps, Func<string, string> shortName)
    {
        var plain = rows.First(r => r.Method == PlacementMethod.Plain);
        var fixes = rows.Where(r => r.Method != PlacementMethod.Plain).ToList();
        double sigma = Math.Sqrt(0.25 / plain.Prompts);
        var points = new List<string>
        {
            $"Plain sampling over {plain.Prompts} two-item prompts: both items right {plain.BothRight:P1}, the " +
            "nouns' " +
            $"maps point into their half {plain.NounPointing:P1} and the side words {plain.SidePointing:P1} " +
            $"(chance 50 %, ± {100 * sigma:F1} points for one standard error).",
        };
        foreach (var f in fixes)
        {
            double gain = f.BothRight - plain.BothRight;
            string se = $"{Math.Abs(gain) / Math.Sqrt((f.BothRight * (1 - f.BothRight) + plain.BothRight *
                (1 - plain.BothRight)) / plain.Prompts + 1e-12):F1} standard errors";
            points.Add($"{Name(f.Method)}: both right {f.BothRight:P1} ({(gain >= 0 ? "+" : "−")}" +
                       $"{100 * Math.Abs(gain):F1} points, {se}), noun pointing {f.NounPointing:P1} " +
                       $"({(f.NounPointing >= plain.NounPointing ? "+" : "−")}" +
                       $"{100 * Math.Abs(f.NounPointing - plain.NounPointing):F1}), IoU {f.Iou:F3} against " +
                       $"{plain.Iou:F3}; {f.SecondsPerImage:F3} s per image, " +
                       $"{f.SecondsPerImage / plain.SecondsPerImage:F1}× " +
                       $"plain ({f.PassesPerImage:F1} extra forward-and-backward passes per image).");
        }
        var met = rows.Where(r => r.BothRight >= BothRightGoal && r.NounPointing >= PointingGoal).ToList();
        var best = rows.MaxBy(r => r.BothRight)!;
        points.Add(met.Count > 0
            ? $"Goal (both right ≥ {BothRightGoal:P0} and noun pointing ≥ {PointingGoal:P0}, no layout handed " +
              "in): met " +
              $"by {string.Join(", ", met.Select(r => Name(r.Method)))}."
            : $"Goal (both right ≥ {BothRightGoal:P0} and noun pointing ≥ {PointingGoal:P0}, no layout handed in): " +
              $"not met; the best is {Name(best.Method)} with {best.BothRight:P1} both right and " +
              $"{best.NounPointing:P1} pointing.");
        var layers = pointing.Where(p => p.Head is null).ToList();
        var heads = pointing.Where(p => p.Head is not null).ToList();
        if (layers.Count > 0)
        {
            var nounLayer = layers.MaxBy(p => p.Nouns)!;
            var sideLayer = layers.MaxBy(p => p.Sides)!;
            var nounHead = heads.MaxBy(p => p.Nouns);
            var sideHead = heads.MaxBy(p => p.Sides);
            points.Add($"Layers: the nouns point best in {shortName(nounLayer.Layer)} ({nounLayer.Nouns:P1}), the " +
                       $"side words in {shortName(sideLayer.Layer)} ({sideLayer.Sides:P1})" +
                       (nounHead is null || sideHead is null ? "." :
                           $"; the best single heads: nouns {shortName(nounHead.Layer)} head {nounHead.Head} " +
                           $"({nounHead.Nouns:P1}), sides {shortName(sideHead.Layer)} head {sideHead.Head} " +
                           $"({sideHead.Sides:P1}); {heads.Count(h => h.Nouns >= PointingGoal)} of {heads.Count} " +
                           $"heads reach {PointingGoal:P0} for the nouns."));
        }
        if (swap.Count >= 2)
        {
            var ordered = swap.OrderBy(s => s.Step).ToList();
            double lo = ordered[0].FollowsFirst, hi = ordered[^1].FollowsFirst, mid = (lo + hi) / 2;
            var decided = ordered.FirstOrDefault(s => s.FollowsFirst >= mid);
            points.Add(hi - lo < 2 * Math.Sqrt(0.25 / (2.0 * plain.Prompts))
                ? $"Swap at step k: the halves follow the first prompt {lo:P0} when it is swapped out from the start " +
                  $"and {hi:P0} when it is kept throughout — too close to say when binding is decided."
                : $"Swap at step k: the halves follow the first prompt {lo:P0} when it is swapped from the start and " +
                  $"{hi:P0} when kept; half of that change is in place when the swap comes at step " +
                  $"{decided?.Step ?? ordered[^1].Step} of {steps}: the layout is decided in the first " +
                  $"{100.0 * (decided?.Step ?? ordered[^1].Step) / steps:F0} % of the steps.");
        }
        if (shares.Count > 0)
        {
            double Mean(Func<TokenShareRow, double> f) => shares.Average(f);
            var mostEnd = shares.MaxBy(s => s.End + s.Padding)!;
            points.Add($"Where the attention goes (mean over layers): start token {Mean(s => s.Start):P1}, nouns " +
                       $"{Mean(s => s.Nouns):P1}, side words {Mean(s => s.Sides):P1}, other words " +
                       $"{Mean(s => s.OtherWords):P1}, <end> {Mean(s => s.End):P1}, padding " +
                       $"{Mean(s => s.Padding):P1}; " +
                       $"<end> and padding together are largest in {shortName(mostEnd.Layer)} " +
                       $"({mostEnd.End + mostEnd.Padding:P1}). Under a causal encoder those are the only tokens that " +
                       "have read the whole caption.");
        }
        return points;
    }

    /// <summary>A method's name for tables and takeaways.</summary>
    public static string Name(PlacementMethod method) => method switch
    {
        PlacementMethod.Plain => "plain",
        PlacementMethod.AttendAndExcite => "Attend-and-Excite",
        PlacementMethod.LayoutSteered => "layout-steered (side words → halves)",
        _ => method.ToString(),
    };
}
