using System.Diagnostics;

namespace LdmLab.Labs;

/// <summary>How a two-item prompt is split into region prompts: each half gets its item with the side named
/// ("a sneaker on the left" | "a bag on the right"), its item alone ("a sneaker" | "a bag"), or its item on both
/// sides ("a sneaker on the left and a sneaker on the right" | "a bag on the left and a bag on the right": a
/// two-item caption, which this model draws as two items, with only one class in it to bind).</summary>
public enum RegionPromptForm { Sided, Bare, Doubled }

/// <summary>One row of the size × method table: what was generated, at which canvas, how it was judged.</summary>
/// <param name="Accuracy">Share of canvases the judge finds right: both items of a two-item prompt; for a
/// panorama every slot of the asked class.</param>
/// <param name="SlotAccuracy">Share of single 28×28 slots judged as asked.</param>
/// <param name="Seam">The gradient across the method's borders against the ordinary gradient.</param>
public sealed record ResolutionRow(string Method, int Height, int Width, int Images, double Accuracy,
    double SlotAccuracy, SeamReport Seam, double MsPerImage);

/// <summary>Tiled against untiled decoding of the same latents: the largest and the mean |difference|, and the seam
/// measure of the blended and the cut tiling (at their borders, against the untiled image's ordinary gradient) and
/// of the untiled image itself at the blended borders.</summary>
public sealed record TiledDecodeReport(int Height, int Width, double MaxDiff, double MeanDiff,
    SeamReport Blended, SeamReport Cut, SeamReport Untiled);

/// <summary>Decoding one latent of a size whole and tile by tile: the process's peak memory above what it held
/// before (null where the kernel does not say) and the time of each.</summary>
public sealed record DecodeCostRow(int Height, int Width, long? UntiledPeakBytes, long? TiledPeakBytes,
    double UntiledMs, double TiledMs);

/// <summary>
/// The measurements of notebook 11 (section 10.5.1) on the text-to-image lab's model (trained on 28×56 two-slot
/// scenes): region-prompt MultiDiffusion against the plain model on the two-item prompts, panoramas wider than the
/// model was trained on with and without blended windows, and tiled VAE decoding against untiled.
/// </summary>
public static class ResolutionStudy
{
    public const int Steps = 20;
    public const double Guidance = 5;
    const int F = 4;                                           // the Fashion VAE's downsampling factor
    const int LatentHeight = CaptionedScenes.Height / F, LatentWidth = CaptionedScenes.Width / F;   // 7 × 14

    /// <summary>The trained latent window of the lab's model: 7 × 14.</summary>
    public static (int Height, int Width) TrainedWindow => (LatentHeight, LatentWidth);

    /// <summary>The region prompts of a two-item prompt: (left half's, right half's).</summary>
    public static (string Left, string Right) RegionTexts(ScenePrompt prompt, RegionPromptForm form)
    {
        if (!prompt.IsPair) throw new ArgumentException($"'{prompt.Text}' is not a two-item prompt", nameof(prompt));
        string Item(int c) => $"{CaptionedFashion.Article(CaptionedFashion.Nouns[c])} {CaptionedFashion.Nouns[c]}";
        return form switch
        {
            RegionPromptForm.Sided => ($"{Item(prompt.Left)} on the left", $"{Item(prompt.Right)} on the right"),
            RegionPromptForm.Bare => (Item(prompt.Left), Item(prompt.Right)),
            _ => (CaptionedFashion.PairCaption(prompt.Left, prompt.Left, rightFirst: false),
                CaptionedFashion.PairCaption(prompt.Right, prompt.Right, rightFirst: false)),
        };
    }

    static LatentDiffusionPipeline Pipeline(TextConditionedUNet model, AutoencoderKL vae) =>
        new(model, vae, "DDIMScheduler", TextToImageRecipe.SchedulerConfig());

    /// <summary>The latents of an empty canvas (background −1 everywhere), scaled as the model sees them: [1, 4, 7,
    /// 14]; what region prompts are bootstrapped against.</summary>
    public static Tensor EmptyCanvasLatents(AutoencoderKL vae)
    {
        using var _ = no_grad();
        var device = vae.parameters().First().device;
        var empty = full(1, vae.Config.InChannels, CaptionedScenes.Height, CaptionedScenes.Width, -1f, device: device);
        return vae.Encode(empty).Mean * vae.Config.ScalingFactor;                              // [1, 4, 7, 14]
    }

    /// <summary>
    /// Region-prompt MultiDiffusion on two-item prompts: the left half of the latent (columns 0–6) follows the left
    /// item's prompt, the right half the right item's, both denoising the whole 7 × 14 window (the trained size) with
    /// classifier-free guidance, averaged by the masks every step. For the first <paramref name="bootstrapSteps"/>
    /// steps each prompt sees the other half as an empty canvas noised to the step's level (MultiDiffusion's
    /// bootstrapping, <see cref="RegionBootstrap"/>). DDIM, the same noise per batch as <see
    /// cref="TextToImageStudies.Generate(ConditionalDenoiser, AutoencoderKL, IReadOnlyList{ScenePrompt}, int, double,
    /// long, int)"/> for the same seed. Canvases [N, 1, 28, 56] in [−1, 1].
    /// </summary>
    public static Tensor GenerateRegions(TextConditionedUNet model, AutoencoderKL vae,
        IReadOnlyList<ScenePrompt> prompts, RegionPromptForm form, int bootstrapSteps = 0, int steps = Steps,
        double guidance = Guidance, long seed = 0, int batchSize = 100)
    {
        using var _ = no_grad();
        var pipeline = Pipeline(model, vae);
        var masks = MultiDiffusion.ColumnMasks(LatentHeight, LatentWidth, 2);                     // [2, 7, 14]
        var bootstrap = bootstrapSteps > 0 ? new RegionBootstrap(EmptyCanvasLatents(vae), bootstrapSteps) : null;
        var texts = prompts.Select(p => RegionTexts(p, form)).ToList();
        var batches = new List<Tensor>();
        for (int start = 0; start < prompts.Count; start += batchSize)
        {
            int n = Math.Min(batchSize, prompts.Count - start);
            var part = texts.Skip(start).Take(n).ToList();
            RegionCondition Region(Func<(string Left, string Right), string> text, int side) =>
                new(model.Tokenize(part.Select(text)), masks[side]);
            batches.Add(pipeline.GenerateMultiDiffusion([Region(t => t.Left, 0), Region(t => t.Right, 1)],
                new WindowLayout(LatentHeight, LatentWidth, LatentWidth), new LatentGenerationOptions
                {
                    Steps = steps, GuidanceScale = guidance, Seed = seed + start,
                    LatentSize = [LatentHeight, LatentWidth],
                }, bootstrap).Images!.cpu());                                                // [n, 1, 28, 56]
        }
        return cat(batches.ToArray());
    }

    /// <summary>
    /// One prompt per canvas on a latent <paramref name="latentWidth"/> wide (28 px per 7 latents) through
    /// MultiDiffusion windows of the trained 7 × 14 every <paramref name="stride"/> latents (stride 14: abutting
    /// windows, nothing blended). Canvases [N, 1, 28, 4·latentWidth] in [−1, 1] and their latents [N, 4, 7,
    /// latentWidth] (scaled, as sampled).
    /// </summary>
    public static (Tensor canvases, Tensor latents) GeneratePanorama(TextConditionedUNet model, AutoencoderKL vae,
        IReadOnlyList<string> prompts, int latentWidth, int stride, int steps = Steps, double guidance = Guidance,
        long seed = 0, int batchSize = 50)
    {
        using var _ = no_grad();
        var pipeline = Pipeline(model, vae);
        var canvases = new List<Tensor>();
        var latents = new List<Tensor>();
        for (int start = 0; start < prompts.Count; start += batchSize)
        {
            int n = Math.Min(batchSize, prompts.Count - start);
            var output = pipeline.GenerateMultiDiffusion(model.Tokenize(prompts.Skip(start).Take(n)),
                new WindowLayout(LatentHeight, LatentWidth, stride), new LatentGenerationOptions
                {
                    Steps = steps, GuidanceScale = guidance, Seed = seed + start,
                    LatentSize = [LatentHeight, latentWidth],
                });
            canvases.Add(output.Images!.cpu());                                               // [n, 1, 28, 4w]
            latents.Add(output.Latents.cpu());                                                // [n, 4, 7, w]
        }
        return (cat(canvases.ToArray()), cat(latents.ToArray()));
    }

    /// <summary>
    /// The model run directly at a latent <paramref name="latentWidth"/> wide (one U-Net call per step over the whole
    /// canvas, no windows): what a convolutional U-Net does at a size it never saw. Canvases [N, 1, 28,
    /// 4·latentWidth] in [−1, 1], the same noise as <see cref="GeneratePanorama"/> for the same seed.
    /// </summary>
    public static Tensor GenerateDirect(TextConditionedUNet model, AutoencoderKL vae, IReadOnlyList<string> prompts,
        int latentWidth, int steps = Steps, double guidance = Guidance, long seed = 0, int batchSize = 50)
    {
        using var _ = no_grad();
        var pipeline = Pipeline(model, vae);
        var canvases = new List<Tensor>();
        for (int start = 0; start < prompts.Count; start += batchSize)
        {
            int n = Math.Min(batchSize, prompts.Count - start);
            canvases.Add(pipeline.Generate(model.Tokenize(prompts.Skip(start).Take(n)), new LatentGenerationOptions
            {
                Steps = steps, GuidanceScale = guidance, Seed = seed + start, LatentSize = [LatentHeight, latentWidth],
            }).Images!.cpu());                                                                // [n, 1, 28, 4w]
        }
        return cat(canvases.ToArray());
    }

    /// <summary>Panorama prompts: the same class on both sides ("a bag on the left and a bag on the right"), so
    /// every 28-pixel slot of a wide canvas is asked to hold it; classes in turn.</summary>
    public static IReadOnlyList<ScenePrompt> PanoramaPrompts(int count) =>
        Enumerable.Range(0, count).Select(i =>
        {
            int c = i % CaptionedFashion.Nouns.Length;
            return new ScenePrompt(CaptionedFashion.PairCaption(c, c, rightFirst: false), c, c);
        }).ToList();

    /// <summary>The pixel columns where the windows of a layout start or end inside a canvas (the seams an abutting
    /// layout leaves; for overlapping windows where one's influence begins or stops).</summary>
    public static IReadOnlyList<int> WindowBorders(WindowLayout layout, int latentWidth) =>
        layout.Place(LatentHeight, latentWidth).SelectMany(w => new[] { w.Left, w.Left + w.Width })
            .Where(x => x > 0 && x < latentWidth).Distinct().Order().Select(x => x * F).ToList();

    /// <summary>Per canvas [N, 1, 28, 28·k]: the judge's class of every 28-pixel slot, [N][k].</summary>
    public static long[][] SlotClasses(FashionClassifier judge, Tensor canvases)
    {
        int slots = (int)canvases.shape[3] / CaptionedScenes.Slot;
        var perSlot = Enumerable.Range(0, slots).Select(k => TextToImageStudies.Classify(judge,
            canvases.narrow(3, k * CaptionedScenes.Slot, CaptionedScenes.Slot))).ToArray();
        return Enumerable.Range(0, (int)canvases.shape[0]).Select(i => perSlot.Select(s => s[i]).ToArray()).ToArray();
    }

    /// <summary>
    /// A row of the table for canvases made from <paramref name="prompts"/>: accuracy (every slot as asked: a
    /// two-item prompt's left class in the left half…, a panorama prompt's one class in all slots), slot accuracy,
    /// the seam at <paramref name="borders"/> (pixel columns) and the time per image.
    /// </summary>
    public static ResolutionRow Judge(string method, FashionClassifier judge, Tensor canvases,
        IReadOnlyList<ScenePrompt> prompts, IReadOnlyList<int> borders, TimeSpan elapsed)
    {
        if (canvases.shape[0] != prompts.Count)
            throw new ArgumentException($"{canvases.shape[0]} canvases for {prompts.Count} prompts", nameof(prompts));
        var classes = SlotClasses(judge, canvases);
        int slots = classes.Length == 0 ? 0 : classes[0].Length;
        long Asked(ScenePrompt p, int k) => k < slots / 2 ? p.Left : p.Right;
        var slotRight = prompts.Select((p, i) => Enumerable.Range(0, slots).Select(k => classes[i][k] == Asked(p, k))
            .ToArray()).ToList();
        return new ResolutionRow(method, (int)canvases.shape[2], (int)canvases.shape[3], prompts.Count,
            slotRight.Average(s => s.All(x => x) ? 1.0 : 0.0), slotRight.Average(s => s.Average(x => x ? 1.0 : 0.0)),
            SeamMeasure.Of(canvases, borders), elapsed.TotalMilliseconds / prompts.Count);
    }

    /// <summary>Times <paramref name="generate"/> and judges what it made (<see cref="Judge"/>).</summary>
    public static (ResolutionRow row, Tensor canvases) Measure(string method, FashionClassifier judge,
        IReadOnlyList<ScenePrompt> prompts, IReadOnlyList<int> borders, Func<Tensor> generate)
    {
        var clock = Stopwatch.StartNew();
        var canvases = generate();
        clock.Stop();
        return (Judge(method, judge, canvases, prompts, borders, clock.Elapsed), canvases);
    }

    /// <summary>
    /// Decodes latents [N, 4, h, w] (scaled, as sampled) whole and tile by tile (the VAE's 28-pixel tiles, overlap
    /// 0.25), blended and cut. This VAE's mid-block attention sees the whole latent when untiled and one tile when
    /// tiled, so the two differ everywhere a little, not only at the seams.
    /// </summary>
    public static TiledDecodeReport CompareTiledDecode(AutoencoderKL vae, Tensor latents, VaeTiling? tiling = null)
    {
        using var _ = no_grad();
        var t = tiling ?? VaeTiling.For(vae.Config);
        var z = latents / vae.Config.ScalingFactor;                                          // [N, 4, h, w]
        var whole = vae.Decode(z).clamp(-1, 1);                                             // [N, 1, H, W]
        var blended = vae.TiledDecode(z, t with { Blend = true }).clamp(-1, 1);
        var cut = vae.TiledDecode(z, t with { Blend = false }).clamp(-1, 1);
        int height = (int)whole.shape[2], width = (int)whole.shape[3];
        var cutTiling = t with { Blend = false };
        var diff = (blended - whole).abs();                                                 // [N, 1, H, W]
        // the seams: cuts and ramp ends when blended, the cuts alone when cut
        return new TiledDecodeReport(height, width, diff.max().item<float>(), diff.mean().item<float>(),
            SeamMeasure.Of(blended, t.Borders(width, F), t.Borders(height, F), whole),
            SeamMeasure.Of(cut, cutTiling.Borders(width, F), cutTiling.Borders(height, F), whole),
            SeamMeasure.Of(whole, t.Borders(width, F), t.Borders(height, F)));
    }

    /// <summary>
    /// Peak memory and time of decoding one random latent [1, 4, s, s] whole and tile by tile, for each side s in
    /// <paramref name="latentSides"/>: the VAE's mid-block attention holds an (s²)² matrix when untiled, one
    /// tile's when tiled (<see cref="ProcessMemory.PeakIncrease"/>).
    /// </summary>
    public static IReadOnlyList<DecodeCostRow> DecodeCost(AutoencoderKL vae, IReadOnlyList<int> latentSides,
        VaeTiling? tiling = null)
    {
        var t = tiling ?? VaeTiling.For(vae.Config);
        var device = vae.parameters().First().device;
        var rows = new List<DecodeCostRow>();
        foreach (int side in latentSides)
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var z = randn(new long[] { 1, vae.Config.LatentChannels, side, side }, generator: new Generator(0))
                .to(device);                                                                  // [1, 4, s, s]
            (long? bytes, double ms) Cost(Func<Tensor> decode)
            {
                var clock = Stopwatch.StartNew();
                long? peak = ProcessMemory.PeakIncrease(() => decode().Dispose());
                return (peak, clock.Elapsed.TotalMilliseconds);
            }
            var whole = Cost(() => vae.Decode(z));
            var tiled = Cost(() => vae.TiledDecode(z, t));
            rows.Add(new DecodeCostRow(F * side, F * side, whole.bytes, tiled.bytes, whole.ms, tiled.ms));
        }
        return rows;
    }

    /// <summary>
    /// The closing bullets from the rows: region prompts against the plain model on both items right (the issue's
    /// goal 80 %) and the seam at the regions' border; blended against abutting panorama windows; tiled decoding's
    /// seam against the untiled image's gradient (goal: within 10 %).
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<ResolutionRow> rows, TiledDecodeReport? tiled = null,
        string plainMethod = "plain caption", string regionMethod = "region prompts",
        string blendedMethod = "panorama, blended windows", string abuttingMethod = "panorama, abutting windows",
        IReadOnlyList<DecodeCostRow>? decodeCost = null)
    {
        static string P(double x) => $"{100 * x:F0} %";
        var bullets = new List<string>();
        var plain = rows.FirstOrDefault(r => r.Method == plainMethod);
        var regions = rows.Where(r => r.Method.StartsWith(regionMethod, StringComparison.Ordinal))
            .OrderByDescending(r => r.Accuracy).FirstOrDefault();
        if (plain is not null && regions is not null)
        {
            string verdict = regions.Accuracy >= 0.8 ? "meets" : "falls short of";
            bullets.Add($"{regions.Method}: both items right in {P(regions.Accuracy)} of {regions.Images} " +
                        $"two-item prompts against {P(plain.Accuracy)} for the plain model on the full caption " +
                        $"({(regions.Accuracy - plain.Accuracy) * 100:+0;−0} points); this {verdict} the 80 % goal.");
            string seam = regions.Seam.Ratio <= 1.1 ? "no seam" : "a seam";
            bullets.Add($"At the regions' border the gradient is {regions.Seam.Ratio:F2}× the image's ordinary " +
                        $"gradient ({plain.Seam.Ratio:F2}× at the same column for the plain model): {seam} by the " +
                        "10 % rule.");
        }
        var blended = rows.FirstOrDefault(r => r.Method.StartsWith(blendedMethod, StringComparison.Ordinal));
        var abutting = rows.FirstOrDefault(r => r.Method.StartsWith(abuttingMethod, StringComparison.Ordinal));
        if (blended is not null && abutting is not null)
        {
            string better = blended.SlotAccuracy > abutting.SlotAccuracy ? "more" : "no more";
            bullets.Add($"A {blended.Width}-pixel-wide panorama from a model trained at {CaptionedScenes.Width}: " +
                        $"blended windows draw {better} slots as asked ({P(blended.SlotAccuracy)} against " +
                        $"{P(abutting.SlotAccuracy)} abutting), seam {blended.Seam.Ratio:F2}× against " +
                        $"{abutting.Seam.Ratio:F2}×, at {blended.MsPerImage / abutting.MsPerImage:F1}× the time.");
        }
        if (tiled is not null)
        {
            string literal = tiled.Blended.Ratio <= 1.1 ? "within" : "beyond";
            double added = tiled.Blended.Border / tiled.Untiled.Border;
            string verdict = added <= 1.1 ? "the blend adds no seam" : "the blend leaves a seam";
            bullets.Add($"Tiled VAE decoding at {tiled.Height}×{tiled.Width}: across tile borders the gradient is " +
                        $"{tiled.Blended.Ratio:F2}× the untiled image's ordinary gradient with the blend ({literal} " +
                        $"the 10 % goal; {tiled.Cut.Ratio:F2}× with the overlaps cut) and {added:F2}× what the " +
                        $"untiled image has at the same borders: {verdict}. Tiled and untiled differ by " +
                        $"{tiled.MeanDiff:F3} on average (at most {tiled.MaxDiff:F2}, images in [−1, 1]).");
        }
        if (decodeCost is { Count: > 1 } cost && cost.All(c => c.UntiledPeakBytes is not null && c.TiledPeakBytes
                is not null))
        {
            static string Mb(long? bytes) => $"{bytes!.Value / 1048576.0:F0} MB";
            var (small, large) = (cost[0], cost[^1]);
            bullets.Add($"Decoding from {small.Height}×{small.Width} to {large.Height}×{large.Width} pixels, the " +
                        $"peak memory grows from {Mb(small.UntiledPeakBytes)} to {Mb(large.UntiledPeakBytes)} " +
                        $"untiled and from {Mb(small.TiledPeakBytes)} to {Mb(large.TiledPeakBytes)} tiled " +
                        $"({large.TiledMs / large.UntiledMs:F1}× the untiled time at the largest size).");
        }
        return bullets;
    }
}
