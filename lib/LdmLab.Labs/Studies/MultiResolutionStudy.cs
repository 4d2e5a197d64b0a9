using System.Diagnostics;

namespace LdmLab.Labs;

/// <summary>
/// A canvas size of the study and what its prompts ask: items of <paramref name="ItemSize"/> pixels (28: Fashion's
/// own; 56: one large item filling a 56×56 canvas) in a grid of cells; a prompt asks a class per cell (−1: empty).
/// </summary>
public sealed record SizeCase(string Name, int Height, int Width, int ItemSize)
{
    public int Cells => Height / ItemSize * (Width / ItemSize);
}

/// <summary>A prompt and the class it asks of each cell of its size case (row-major; −1: no item asked).</summary>
public sealed record CanvasPrompt(string Text, int[] Cells);

/// <summary>One row of the fixed-size against multi-resolution table.</summary>
/// <param name="Model">"fixed 28×56", "multi-resolution", or "real scenes" (the judge on real canvases of the
/// size: the floor and ceiling of each measure).</param>
/// <param name="Seen">whether the model was trained on canvases of this size.</param>
/// <param name="Accuracy">share of canvases with every asked item judged as asked (a 56-pixel item is judged
/// shrunk to 28×28).</param>
/// <param name="ExtraItems">items per canvas beyond those asked (duplicated items): where 28-pixel items are asked,
/// 28×28 cells asked to stay empty that the judge calls an item with confidence ≥
/// <see cref="MultiResolutionStudy.Confident"/> and that hold ink (a third item in the middle of 28×84); where one
/// large item is asked, the separate pieces of ink beyond one (<see cref="MultiResolutionStudy.InkBlobs"/>: small
/// items side by side instead of one large; the judge cannot count here, as it calls a quarter of a large item an
/// item).</param>
/// <param name="OffCentre">share of asked items whose ink centroid lies more than a fifth of the item's size from
/// the centre of its cell: items cut by the canvas edge or straddling two slots.</param>
/// <param name="MsPerImage">sampling and decoding per image (0 for real scenes).</param>
public sealed record MultiResRow(string Model, int Height, int Width, bool Seen, int Images, double Accuracy,
    double ExtraItems, double OffCentre, double MsPerImage);

/// <summary>A point of a reduced-budget training curve: the steps and training seconds so far, and the denoising
/// loss on held-out 28×56 scenes (fixed t and noise, the raw weights).</summary>
public sealed record CurvePoint(string Schedule, int Step, double Seconds, double EvalLoss);

/// <summary>
/// Notebook 11's multi-resolution section (section 10.5.1, exercise 10.4): the shipped fixed-size text-to-image
/// model (28×56 canvases only) against <see cref="MultiResolutionRecipe"/>'s (28×28, 28×56, 56×56), both sampled at
/// 28×28, 28×56, 56×56 and the size neither saw, 28×84, judged by the lab's Fashion classifier cell by cell; and
/// progressive resolution (28×28 first, then 28×56) against direct 28×56 training at a reduced budget.
/// </summary>
public static class MultiResolutionStudy
{
    public const int Steps = 20;
    public const double Guidance = 5;
    public const double Confident = 0.9;
    /// <summary>A cell holds ink when at least this share of its pixels is brighter than −0.5.</summary>
    public const double InkShare = 0.1;
    public const double OffCentreShare = 0.2;
    const int F = 4, Slot = CaptionedScenes.Slot;

    public static readonly SizeCase Small = new("one item, 28×28", 28, 28, 28),
        Pair = new("two items, 28×56", 28, 56, 28),
        Large = new("one large item, 56×56", 56, 56, 56),
        Wide = new("two items, 28×84 (middle empty)", 28, 84, 28);

    /// <summary>The study's sizes: the three the multi-resolution model saw, then 28×84.</summary>
    public static IReadOnlyList<SizeCase> Cases { get; } = [Small, Pair, Large, Wide];

    /// <summary>Whether a model trained on <paramref name="trained"/> saw canvases of this case's size.</summary>
    public static bool Seen(SizeCase size, IEnumerable<SizeBucket> trained) =>
        trained.Any(b => b.Height == size.Height && b.Width == size.Width);

    /// <summary>
    /// The prompts of a size: one-item cases "a sneaker", classes in turn; two-item cases the lab's two-item captions
    /// (<see cref="TextToImageStudies.PairPrompts"/>, seed 7), at 28×84 with the middle cell asked to stay empty.
    /// </summary>
    public static IReadOnlyList<CanvasPrompt> Prompts(SizeCase size, int count)
    {
        if (size.Cells == 1)
            return TextToImageStudies.SinglePrompts(count, "a {0}").Select(p => new CanvasPrompt(p.Text, [p.Item]))
                .ToList();
        return TextToImageStudies.PairPrompts(count, seed: 7).Select(p => new CanvasPrompt(p.Text,
            size.Cells == 2 ? [p.Left, p.Right] : [p.Left, .. Enumerable.Repeat(-1, size.Cells - 2), p.Right]))
            .ToList();
    }

    /// <summary>
    /// Real canvases of a size for its prompts, from <paramref name="data"/>'s items (the first of each asked
    /// class, then the next ones): each asked item in its cell, resized to the item size, the rest background.
    /// [N, 1, H, W] in [−1, 1].
    /// </summary>
    public static Tensor RealCanvases(SizeCase size, IReadOnlyList<CanvasPrompt> prompts, FashionMnist data)
    {
        var labels = data.Labels.data<long>().ToArray();
        var used = new int[CaptionedFashion.Nouns.Length];
        int Next(int c)
        {
            for (int i = 0, seen = 0; i < labels.Length; i++)
                if (labels[i] == c && seen++ == used[c]) { used[c]++; return i; }
            throw new ArgumentException($"the data holds too few items of class {c}", nameof(data));
        }
        int columns = size.Width / size.ItemSize;
        var canvases = full(prompts.Count, 1, size.Height, size.Width, -1f);                 // [N, 1, H, W]
        for (int n = 0; n < prompts.Count; n++)
            for (int k = 0; k < size.Cells; k++)
            {
                if (prompts[n].Cells[k] < 0) continue;
                var item = data.Images[Next(prompts[n].Cells[k])].unsqueeze(0);                // [1, 1, 28, 28]
                if (size.ItemSize != Slot)
                    item = nn.functional.interpolate(item, size: [size.ItemSize, size.ItemSize],
                        mode: InterpolationMode.Bilinear, align_corners: false);
                int top = k / columns * size.ItemSize, left = k % columns * size.ItemSize;
                canvases[n, .., top..(top + size.ItemSize), left..(left + size.ItemSize)] = item[0].clamp(-1, 1);
            }
        return canvases;
    }

    /// <summary>
    /// The model run directly at the case's size (one U-Net call per step over the whole latent, H/4 × W/4), DDIM,
    /// classifier-free guidance, the same noise per batch for the same seed. Canvases [N, 1, H, W] in [−1, 1].
    /// </summary>
    public static Tensor Generate(TextConditionedUNet model, AutoencoderKL vae, SizeCase size,
        IReadOnlyList<CanvasPrompt> prompts, int steps = Steps, double guidance = Guidance, long seed = 0,
        int batchSize = 50)
    {
        using var _ = no_grad();
        var pipeline = new LatentDiffusionPipeline(model, vae, "DDIMScheduler", TextToImageRecipe.SchedulerConfig());
        var canvases = new List<Tensor>();
        for (int start = 0; start < prompts.Count; start += batchSize)
        {
            using var scope = NewDisposeScope();
            int n = Math.Min(batchSize, prompts.Count - start);
            canvases.Add(pipeline.Generate(model.Tokenize(prompts.Skip(start).Take(n).Select(p => p.Text)),
                new LatentGenerationOptions
                {
                    Steps = steps, GuidanceScale = guidance, Seed = seed + start,
                    LatentSize = [size.Height / F, size.Width / F],
                }).Images!.cpu().MoveToOuterDisposeScope());                                // [n, 1, H, W]
        }
        return cat(canvases.ToArray());
    }

    /// <summary>The judge's class and confidence for items [N, 1, 28, 28], in batches without gradients.</summary>
    static (long[] classes, float[] confidence) Judge(FashionClassifier judge, Tensor items)
    {
        var probabilities = Nn.Batched.Map(judge, items, 500, judge.forward).softmax(1);      // [N, 10]
        var (top, index) = probabilities.max(1);
        return (index.data<long>().ToArray(), top.data<float>().ToArray());
    }

    /// <summary>
    /// A row for canvases [N, 1, H, W] made for <paramref name="prompts"/> (see <see cref="MultiResRow"/> for each
    /// measure).
    /// </summary>
    public static MultiResRow Measure(string model, bool seen, FashionClassifier judge, SizeCase size,
        Tensor canvases, IReadOnlyList<CanvasPrompt> prompts, TimeSpan elapsed)
    {
        if (canvases.shape[0] != prompts.Count)
            throw new ArgumentException($"{canvases.shape[0]} canvases for {prompts.Count} prompts", nameof(prompts));
        if (canvases.shape[2] != size.Height || canvases.shape[3] != size.Width)
            throw new ArgumentException($"canvases are {canvases.shape[2]}×{canvases.shape[3]}, the case " +
                                        $"{size.Height}×{size.Width}", nameof(canvases));
        if (prompts.Any(p => p.Cells.Length != size.Cells))
            throw new ArgumentException($"every prompt must ask {size.Cells} cells", nameof(prompts));
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        int n = prompts.Count, columns = size.Width / size.ItemSize;
        Tensor Cell(int k, int side, int columnsOf) =>
            canvases.narrow(2, k / columnsOf * side, side).narrow(3, k % columnsOf * side, side);   // [N, 1, s, s]
        // accuracy and centring at the item size
        var right = Enumerable.Repeat(true, n).ToArray();
        int asked = 0, offCentre = 0;
        for (int k = 0; k < size.Cells; k++)
        {
            var cell = Cell(k, size.ItemSize, columns);
            var items = size.ItemSize == Slot ? cell
                : nn.functional.adaptive_avg_pool2d(cell, [Slot, Slot]);                     // [N, 1, 28, 28]
            var (classes, _) = Judge(judge, items);
            var offsets = CentroidOffsets(cell);
            for (int i = 0; i < n; i++)
            {
                if (prompts[i].Cells[k] < 0) continue;
                right[i] &= classes[i] == prompts[i].Cells[k];
                asked++;
                if (offsets[i] > OffCentreShare) offCentre++;
            }
        }
        // extra items: one large item asked → ink blobs beyond one; else 28-pixel cells not asked to hold an item,
        // yet holding a confident, inked one
        int gridColumns = size.Width / Slot, gridCells = size.ItemSize == Slot ? size.Height / Slot * gridColumns : 0;
        double extra = size.ItemSize == Slot ? 0 : Enumerable.Range(0, n).Sum(i =>
            Math.Max(0, InkBlobs(canvases[i], size.ItemSize) - prompts[i].Cells.Count(c => c >= 0)));
        for (int k = 0; k < gridCells; k++)
        {
            var cell = Cell(k, Slot, gridColumns);                                             // [N, 1, 28, 28]
            var (_, confidence) = Judge(judge, cell);
            var ink = cell.gt(-0.5).to(ScalarType.Float32).mean([1, 2, 3]).data<float>().ToArray();
            for (int i = 0; i < n; i++)
            {
                bool askedHere = size.ItemSize == Slot && prompts[i].Cells[k] >= 0;
                if (!askedHere && confidence[i] >= Confident && ink[i] >= InkShare) extra++;
            }
        }
        return new MultiResRow(model, size.Height, size.Width, seen, n, right.Average(r => r ? 1.0 : 0.0),
            extra / n, asked == 0 ? 0 : (double)offCentre / asked, elapsed.TotalMilliseconds / n);
    }

    /// <summary>
    /// The items a canvas [1, H, W] holds as separate pieces of ink: 8-connected components of pixels brighter than
    /// −0.5 covering at least 5 % of an <paramref name="itemSize"/>² item (specks and thin gaps ignored).
    /// </summary>
    public static int InkBlobs(Tensor canvas, int itemSize)
    {
        int h = (int)canvas.shape[1], w = (int)canvas.shape[2];
        var ink = canvas.gt(-0.5).reshape(-1).data<bool>().ToArray();
        var seen = new bool[ink.Length];
        int blobs = 0, minArea = (int)Math.Ceiling(0.05 * itemSize * itemSize);
        var stack = new Stack<int>();
        for (int start = 0; start < ink.Length; start++)
        {
            if (!ink[start] || seen[start]) continue;
            int area = 0;
            seen[start] = true;
            stack.Push(start);
            while (stack.Count > 0)
            {
                int p = stack.Pop(), y = p / w, x = p % w;
                area++;
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++)
                    {
                        int yy = y + dy, xx = x + dx, q = yy * w + xx;
                        if (yy < 0 || yy >= h || xx < 0 || xx >= w || !ink[q] || seen[q]) continue;
                        seen[q] = true;
                        stack.Push(q);
                    }
            }
            if (area >= minArea) blobs++;
        }
        return blobs;
    }

    /// <summary>Per cell [N, 1, s, s]: the distance of its ink's centroid (weights: brightness above −1) from the
    /// cell's centre, as a share of s (0 for an empty cell).</summary>
    public static double[] CentroidOffsets(Tensor cells)
    {
        long s = cells.shape[2];
        var weight = (cells + 1).clamp_min(0)[.., 0];                                          // [N, s, s]
        var total = weight.sum([1, 2]).clamp_min(1e-6);                                       // [N]
        var coordinate = arange(s, dtype: ScalarType.Float32) + 0.5f - s / 2f;                 // [s]
        var y = (weight.sum(2) * coordinate).sum(1) / total;                                   // [N]
        var x = (weight.sum(1) * coordinate).sum(1) / total;
        return ((y.square() + x.square()).sqrt() / s).data<float>().Select(v => (double)v).ToArray();
    }

    /// <summary>Times the generation and measures what it made.</summary>
    public static (MultiResRow row, Tensor canvases) Run(string model, bool seen, FashionClassifier judge,
        SizeCase size, IReadOnlyList<CanvasPrompt> prompts, Func<Tensor> generate)
    {
        var clock = Stopwatch.StartNew();
        var canvases = generate();
        clock.Stop();
        return (Measure(model, seen, judge, size, canvases, prompts, clock.Elapsed), canvases);
    }

    /// <summary>
    /// Progressive resolution against direct training at a reduced budget: two fresh models of the text-to-image
    /// recipe (same seed), <paramref name="steps"/> steps of batch <paramref name="batchSize"/> each; "direct" on
    /// 28×56 scenes throughout, "progressive" on 28×28 one-item scenes for the first
    /// <paramref name="lowResSteps"/> (the same batch: half the pixels per step), then on the 28×56 scenes. Every
    /// <paramref name="evalEvery"/> steps the raw weights' denoising loss on <paramref name="heldOut"/> (28×56
    /// latents and captions, fixed t and noise) is recorded with the training seconds so far (evaluation not
    /// counted).
    /// </summary>
    public static IReadOnlyList<CurvePoint> ProgressiveCurves(IReadOnlyList<SceneBucket> scenes, AutoencoderKL vae,
        (Tensor latents, IReadOnlyList<string> captions) heldOut, int steps, int lowResSteps, int batchSize,
        int evalEvery, long seed = 0)
    {
        if (steps < 1) throw new ArgumentOutOfRangeException(nameof(steps), steps, "must be ≥ 1");
        if (lowResSteps < 0 || lowResSteps >= steps)
            throw new ArgumentOutOfRangeException(nameof(lowResSteps), lowResSteps, $"must lie in [0, {steps})");
        if (evalEvery < 1) throw new ArgumentOutOfRangeException(nameof(evalEvery), evalEvery, "must be ≥ 1");
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "must be ≥ 1");
        var small = scenes.Single(b => b.Size == MultiSizeFashion.Small);
        var pair = scenes.Single(b => b.Size == MultiSizeFashion.Pair);
        var options = TextToImageRecipe.Options with
        {
            Steps = steps,
            BatchSize = batchSize,
            WarmupSteps = Math.Min(TextToImageRecipe.Options.WarmupSteps,
                steps / 10),
            Seed = seed,
        };
        var (smallLatents, pairLatents) = (MultiResolutionRecipe.ScaledLatents(vae, small.Images),
            MultiResolutionRecipe.ScaledLatents(vae, pair.Images));                // [n, 4, 7, 7], [m, 4, 7, 14]
        var points = new List<CurvePoint>();
        foreach (var (schedule, lowRes) in new[] { ("direct", 0), ("progressive", lowResSteps) })
        {
            var model = TextToImageRecipe.New(seed);
            var smallBucket = new LatentBucket(smallLatents, model.Tokenize(small.Captions), batchSize);
            var pairBucket = new LatentBucket(pairLatents, model.Tokenize(pair.Captions), batchSize);
            var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(NoiseSchedule.ScaledLinear()),
                options);
            var tokens = model.Tokenize(heldOut.captions);
            double seconds = 0;
            points.Add(new CurvePoint(schedule, 0, 0, EvalLoss(model, heldOut.latents, tokens, seed)));
            for (int done = 0; done < steps;)
            {
                int until = Math.Min(steps, done + evalEvery);
                if (done < lowRes) until = Math.Min(until, lowRes);
                var clock = Stopwatch.StartNew();
                trainer.Train([done < lowRes ? smallBucket : pairBucket], untilStep: until);
                seconds += clock.Elapsed.TotalSeconds;
                done = until;
                points.Add(new CurvePoint(schedule, done, seconds, EvalLoss(model, heldOut.latents, tokens, seed)));
            }
        }
        return points;
    }

    /// <summary>The ε-prediction loss of <paramref name="model"/> on latents [N, 4, h, w] with their token rows, at
    /// t and noise drawn from a generator seeded <paramref name="seed"/> (the same draw for every call).</summary>
    public static double EvalLoss(ConditionalDenoiser model, Tensor latents, Tensor tokens, long seed = 0)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        bool training = model.training;
        model.eval();
        var objective = new DiffusionObjective(NoiseSchedule.ScaledLinear());
        using var gen = new Generator((ulong)(seed + 12345));
        double loss = objective.Loss((zt, t) => model.Forward(zt, t, tokens), latents, gen).item<float>();
        if (training) model.train();
        return loss;
    }

    /// <summary>The training seconds at which a curve first reaches <paramref name="target"/> (linear between its
    /// points), or null when it never does.</summary>
    public static double? SecondsTo(IReadOnlyList<CurvePoint> curve, double target)
    {
        for (int i = 0; i < curve.Count; i++)
        {
            if (curve[i].EvalLoss > target) continue;
            if (i == 0) return curve[0].Seconds;
            var (a, b) = (curve[i - 1], curve[i]);
            double share = (a.EvalLoss - target) / Math.Max(a.EvalLoss - b.EvalLoss, 1e-12);
            return a.Seconds + share * (b.Seconds - a.Seconds);
        }
        return null;
    }

    /// <summary>
    /// The closing bullets from the rows: per size, the multi-resolution model against the fixed one on accuracy,
    /// extra items and off-centre items (beside real canvases where given); the time per image against pixels; and
    /// progressive against direct training: the seconds each took to reach the direct run's final held-out loss.
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<MultiResRow> rows,
        IReadOnlyList<CurvePoint>? curves = null, string fixedModel = "fixed 28×56",
        string multiModel = "multi-resolution", string realModel = "real scenes")
    {
        static string P(double x) => $"{100 * x:F0} %";
        static string SeenBy(MultiResRow r) => r.Seen ? "seen" : "unseen";
        var bullets = new List<string>();
        foreach (var group in rows.GroupBy(r => (r.Height, r.Width)))
        {
            var fixedRow = group.FirstOrDefault(r => r.Model == fixedModel);
            var multi = group.FirstOrDefault(r => r.Model == multiModel);
            if (fixedRow is null || multi is null) continue;
            var real = group.FirstOrDefault(r => r.Model == realModel);
            string better = multi.Accuracy > fixedRow.Accuracy ? "more" : multi.Accuracy < fixedRow.Accuracy
                ? "fewer" : "as many";
            string reference = real is null ? "" : $"; real canvases: {P(real.Accuracy)}, {real.ExtraItems:F2}, " +
                                                   $"{P(real.OffCentre)}";
            bullets.Add($"{group.Key.Height}×{group.Key.Width} ({SeenBy(fixedRow)} by the fixed model, " +
                        $"{SeenBy(multi)} by the multi-resolution one): the multi-resolution model gets {better} " +
                        $"canvases right ({P(multi.Accuracy)} against {P(fixedRow.Accuracy)}), extra items per " +
                        $"canvas {multi.ExtraItems:F2} against {fixedRow.ExtraItems:F2}, off-centre items " +
                        $"{P(multi.OffCentre)} against {P(fixedRow.OffCentre)}{reference}.");
        }
        var timed = rows.Where(r => r.Model == multiModel && r.MsPerImage > 0).OrderBy(r => r.Height * r.Width)
            .ToList();
        if (timed.Count > 1)
        {
            var (first, last) = (timed[0], timed[^1]);
            double pixels = (double)(last.Height * last.Width) / (first.Height * first.Width);
            double slower = last.MsPerImage / first.MsPerImage;
            bullets.Add($"Time per image grows from {first.MsPerImage:F0} ms at {first.Height}×{first.Width} to " +
                        $"{last.MsPerImage:F0} ms at {last.Height}×{last.Width}: {slower:F1}× for {pixels:F0}× the " +
                        "pixels (same model, same steps).");
        }
        if (curves is not null)
        {
            var direct = curves.Where(c => c.Schedule == "direct").OrderBy(c => c.Step).ToList();
            var progressive = curves.Where(c => c.Schedule == "progressive").OrderBy(c => c.Step).ToList();
            if (direct.Count > 1 && progressive.Count > 1)
            {
                double target = direct[^1].EvalLoss;
                double? mine = SecondsTo(progressive, target);
                double? theirs = SecondsTo(direct, target);
                string verdict = mine is { } m && theirs is { } d
                    ? $"progressive reaches it after {m:F0} s against {d:F0} s direct ({m / d:F2}× the time)"
                    : $"progressive does not reach it within its {progressive[^1].Seconds:F0} s (final loss " +
                      $"{progressive[^1].EvalLoss:F4})";
                bullets.Add($"Progressive resolution at a reduced budget ({direct[^1].Step} steps each): direct " +
                            $"28×56 training ends at held-out loss {target:F4} after {direct[^1].Seconds:F0} s; " +
                            $"{verdict}.");
            }
        }
        return bullets;
    }
}
