using System.Diagnostics;
using System.Text.Json.Nodes;

namespace LdmLab.Labs;

/// <summary>One guidance scale: intended-class accuracy, Fréchet distance of the inked slots, seconds for the set.
/// </summary>
public sealed record GuidanceRow(double Scale, double Accuracy, double Frechet, double Seconds);

/// <summary>What the judge calls a set of "a shoe" images: the share of each shoe class (the rest is not a shoe).
/// </summary>
public sealed record ShoeShares(string Negative, double Sandal, double Sneaker, double AnkleBoot)
{
    public double NotAShoe => 1 - Sandal - Sneaker - AnkleBoot;

    /// <summary>The shares of Fashion-MNIST's shoe classes (5 sandal, 7 sneaker, 9 ankle boot) among
    /// <paramref name="classes"/>.</summary>
    public static ShoeShares Of(string negative, IReadOnlyList<long> classes)
    {
        double Share(int c) => classes.Count(x => x == c) / (double)classes.Count;
        return new ShoeShares(negative, Share(5), Share(7), Share(9));
    }
}

/// <summary>One img2img strength: the share judged the prompt's class, the share still the source's class, and the
/// PSNR of the result to the source canvas.</summary>
public sealed record EditRow(double Strength, double Target, double Source, double Psnr);

/// <summary>Inpainting the right slot of two-item scenes: the share of right slots judged the prompt's new class, the
/// share of left slots still judged their class, and the left slot's PSNR to the source — each beside the
/// autoencoder's own reconstruction (the best an untouched region can keep through the decoder).</summary>
public sealed record InpaintResult(double Target, double LeftKept, double LeftPsnr, double ReconstructionKept,
    double ReconstructionPsnr);

/// <summary>A sampler as diffusers names it: the scheduler class and the config fields it overrides.</summary>
public sealed record SamplerSpec(string Name, string SchedulerClass, JsonObject? Overrides = null)
{
    /// <summary>The chapter's samplers (10.4.7): DDIM, Euler, Euler ancestral, Heun, LMS, DPM-Solver++ 2M with and
    /// without Karras σ, PNDM and UniPC.</summary>
    public static IReadOnlyList<SamplerSpec> Chapter { get; } =
    [
        new("DDIM", "DDIMScheduler"), new("Euler", "EulerDiscreteScheduler"),
        new("Euler a", "EulerAncestralDiscreteScheduler"), new("Heun", "HeunDiscreteScheduler"),
        new("LMS", "LMSDiscreteScheduler"), new("DPM-Solver++ 2M", "DPMSolverMultistepScheduler"),
        new("DPM-Solver++ 2M Karras", "DPMSolverMultistepScheduler", new JsonObject { ["use_karras_sigmas"] = true }),
        new("PNDM (PLMS)", "PNDMScheduler"), new("UniPC", "UniPCMultistepScheduler"),
    ];

    /// <summary>The chapter's samplers and DDPM by short name — lower case, "dpm++" for "DPM-Solver++", dashes for
    /// spaces (ddim, euler, euler-a, heun, lms, dpm++-2m, dpm++-2m-karras, pndm, unipc, ddpm): the names
    /// <c>ldmlab sample --scheduler</c> and the server's "scheduler" field take.</summary>
    public static IReadOnlyDictionary<string, SamplerSpec> ByShortName { get; } = Chapter
        .Concat([new SamplerSpec("DDPM", "DDPMScheduler")])
        .ToDictionary(s => s.Name.ToLowerInvariant().Replace("dpm-solver++", "dpm++").Replace(" (plms)", "")
            .Replace(' ', '-'));
}

/// <summary>One sampler at one step count: accuracy, Fréchet distance and wall time per image.</summary>
public sealed record SamplerRow(string Sampler, int Steps, double Accuracy, double Frechet, double MsPerImage);

/// <summary>
/// Notebooks 06 and 06b: what the text-to-image pipeline's knobs do, judged by the independent Fashion-MNIST
/// classifier — intended-class accuracy (the class the prompt asked for, on the slot the item was drawn in) and the
/// Fréchet distance between the judge's features of generated items and of a fixed set of real images. Each study
/// returns its rows; the takeaways are computed from rows alone, so they are unit-tested on hand-made tables.
/// </summary>
public sealed class SamplingStudy
{
    readonly FashionClassifier _judge;
    readonly FrechetReference _reference;

    /// <param name="judge">The classifier, trained on real images only.</param>
    /// <param name="referenceImages">Real items [N, 1, 28, 28] in [−1, 1]: the Fréchet reference set.</param>
    public SamplingStudy(FashionClassifier judge, Tensor referenceImages)
    {
        _judge = judge;
        _reference = new FrechetReference(judge, referenceImages);
    }

    /// <summary>D, the judge's feature dimension (<see cref="FrechetReference.FeatureDims"/>).</summary>
    public int FeatureDims => _reference.FeatureDims;

    /// <summary>Fréchet distance of <paramref name="items"/> [n, 1, 28, 28] to the reference set.</summary>
    public double Frechet(Tensor items) => _reference.Of(items);

    /// <summary>The floor: real images scored like generated ones.</summary>
    public double Floor(Tensor realItems) => Frechet(realItems);

    /// <summary>Classes the judge sees in the inked slot of each canvas.</summary>
    public long[] Classes(Tensor canvases) => TextToImageStudies.ItemClasses(_judge, canvases);

    /// <summary>
    /// The guidance sweep: the same prompts and seed at each scale w (ε̂ = ε̂(∅) + w·(ε̂(c) − ε̂(∅)); w = 1 is the
    /// conditional model alone). Returns one row per scale and the first <paramref name="shown"/> canvases of each.
    /// </summary>
    public (IReadOnlyList<GuidanceRow> Rows, Tensor Shown) Guidance(StableDiffusionPipeline pipeline,
        IReadOnlyList<ScenePrompt> prompts, IReadOnlyList<double> scales, int steps, long seed, int shown = 10)
    {
        var rows = new List<GuidanceRow>();
        var grid = new List<Tensor>();
        foreach (var w in scales)
        {
            var clock = Stopwatch.StartNew();
            var images = TextToImageStudies.Generate(pipeline, prompts, steps, guidance: w, seed: seed);
            clock.Stop();
            rows.Add(new GuidanceRow(w, TextToImageStudies.Accuracy(_judge, images, prompts),
                Frechet(TextToImageStudies.InkedSlot(images)), clock.Elapsed.TotalSeconds));
            grid.Add(images.narrow(0, 0, Math.Min(shown, prompts.Count)));
        }
        return (rows, cat(grid.ToArray()));
    }

    /// <summary>
    /// A negative prompt in place of the empty one: ε̂ = ε̂(neg) + w·(ε̂(c) − ε̂(neg)). <paramref name="count"/> images
    /// of "a shoe" without and with <paramref name="negative"/>, the same seed; what the judge sees in each set, and
    /// both sets of canvases.
    /// </summary>
    public (ShoeShares Plain, ShoeShares Negative, Tensor PlainImages, Tensor NegativeImages) NegativePrompt(
        StableDiffusionPipeline pipeline, int count, string negative, int steps, double guidance, long seed)
    {
        var shoe = Enumerable.Range(0, count).Select(_ => new ScenePrompt("a shoe", -1, -1)).ToList();
        var plain = TextToImageStudies.Generate(pipeline, shoe, steps, guidance, seed);
        var without = TextToImageStudies.Generate(pipeline, shoe, steps, guidance, seed,
            negativePrompts: Enumerable.Repeat(negative, count).ToList());
        return (ShoeShares.Of("none", Classes(plain)), ShoeShares.Of($"\"{negative}\"", Classes(without)), plain,
            without);
    }

    /// <summary>
    /// img2img at each strength s: the sources are encoded, noised to the timestep s selects and denoised from there
    /// with <paramref name="prompt"/>. Rows count the judge's <paramref name="targetClass"/> and
    /// <paramref name="sourceClass"/>; the second value is the first <paramref name="shown"/> results per strength.
    /// </summary>
    public (IReadOnlyList<EditRow> Rows, Tensor Shown) ImageToImage(StableDiffusionPipeline pipeline, Tensor sources,
        string prompt, int targetClass, int sourceClass, IReadOnlyList<double> strengths, int steps, double guidance,
        long seed, int shown = 8)
    {
        long n = sources.shape[0];
        var rows = new List<EditRow>();
        var grid = new List<Tensor> { sources.narrow(0, 0, Math.Min(shown, n)) };
        foreach (var s in strengths)
        {
            var output = pipeline.ImageToImage(sources, s, new GenerationOptions
            {
                Prompts = Enumerable.Repeat(prompt, (int)n).ToArray(), Steps = steps, GuidanceScale = guidance,
                Seed = seed,
            });
            var edited = (output.Images * 2 - 1).cpu();                               // [0, 1] → [−1, 1]
            var classes = Classes(edited);
            rows.Add(new EditRow(s, classes.Count(c => c == targetClass) / (double)n,
                classes.Count(c => c == sourceClass) / (double)n,
                ImageQuality.Psnr(edited, sources).mean().item<float>()));
            grid.Add(edited.narrow(0, 0, Math.Min(shown, n)));
        }
        return (rows, cat(grid.ToArray()));
    }

    /// <summary>The first <paramref name="count"/> two-item scenes whose right item is not
    /// <paramref name="newClass"/> ([count, 1, 28, 56]), and their left items' classes.</summary>
    public static (Tensor Sources, long[] Lefts) InpaintSources(CaptionedScenes scenes, int newClass, int count)
    {
        var picked = Enumerable.Range(0, (int)scenes.Count)
            .Where(i => scenes.LabelAt(i, Side.Left) >= 0 && scenes.LabelAt(i, Side.Right) is >= 0 and var r
                        && r != newClass)
            .Take(count).ToArray();
        if (picked.Length < count)
            throw new ArgumentException(
                $"only {picked.Length} two-item scenes without a right {newClass}; need {count}", nameof(scenes));
        return (scenes.Images.index_select(0, tensor(picked.Select(i => (long)i).ToArray())),
            picked.Select(i => scenes.LabelAt(i, Side.Left)).ToArray());
    }

    /// <summary>
    /// Inpainting (10.4.6): the right slot of each source canvas is masked and repainted with the pair caption that
    /// keeps the left item and names <paramref name="newClass"/> on the right. Returns the judged shares, the left
    /// slot's PSNR against the reconstruction's, and [sources; results] for the first <paramref name="shown"/>.
    /// </summary>
    public (InpaintResult Result, Tensor Shown) Inpaint(StableDiffusionPipeline pipeline, Tensor sources,
        IReadOnlyList<long> leftClasses, int newClass, int steps, double guidance, long seed, int shown = 8)
    {
        long n = sources.shape[0];
        var mask = CaptionedScenes.HalfMasks()[1].expand(n, 1, -1, -1);                  // [n, 1, 28, 56]: right
        var prompts = leftClasses.Select(l => CaptionedFashion.PairCaption((int)l, newClass, rightFirst: false))
            .ToArray();
        var output = pipeline.Inpaint(sources, mask, new GenerationOptions
        {
            Prompts = prompts, Steps = steps, GuidanceScale = guidance, Seed = seed,
        });
        var result = (output.Images * 2 - 1).cpu();                                       // [0, 1] → [−1, 1]
        Tensor reconstruction;
        using (no_grad())
            reconstruction = pipeline.Vae.Decode(pipeline.Vae.Encode(sources.to(pipeline.Device)).Mean)
                .clamp(-1, 1).cpu();
        var right = TextToImageStudies.Classify(_judge, CaptionedScenes.SlotOf(result, Side.Right));
        var left = TextToImageStudies.Classify(_judge, CaptionedScenes.SlotOf(result, Side.Left));
        var sourceLeft = CaptionedScenes.SlotOf(sources, Side.Left);
        double Psnr(Tensor x) =>
            ImageQuality.Psnr(CaptionedScenes.SlotOf(x, Side.Left), sourceLeft).mean().item<float>();
        double Kept(long[] classes) => classes.Zip(leftClasses).Count(p => p.First == p.Second) / (double)n;
        var reconstructed = TextToImageStudies.Classify(_judge, CaptionedScenes.SlotOf(reconstruction, Side.Left));
        var inpaint = new InpaintResult(right.Count(c => c == newClass) / (double)n, Kept(left), Psnr(result),
            Kept(reconstructed), Psnr(reconstruction));
        int k = (int)Math.Min(shown, n);
        return (inpaint, cat([sources.narrow(0, 0, k), result.narrow(0, 0, k)]));
    }

    /// <summary>
    /// Every sampler at every step count on the same prompts and seed. One untimed run at the most steps comes first:
    /// the first runs at a new batch shape pay one-off costs that would otherwise land on the first sampler (measured:
    /// after a 5-step warm-up DDIM's first 5-step run still took 35 ms per image against Euler's 19).
    /// </summary>
    public IReadOnlyList<SamplerRow> Samplers(Func<SamplerSpec, StableDiffusionPipeline> pipelineFor,
        IReadOnlyList<SamplerSpec> samplers, IReadOnlyList<int> stepCounts, IReadOnlyList<ScenePrompt> prompts,
        double guidance, long seed)
    {
        TextToImageStudies.Generate(pipelineFor(samplers[0]), prompts, stepCounts.Max(), guidance, seed);  // warm-up
        var rows = new List<SamplerRow>();
        foreach (var spec in samplers)
        {
            var pipeline = pipelineFor(spec);
            foreach (var steps in stepCounts)
            {
                var clock = Stopwatch.StartNew();
                var images = TextToImageStudies.Generate(pipeline, prompts, steps, guidance, seed);
                clock.Stop();
                rows.Add(new SamplerRow(spec.Name, steps, TextToImageStudies.Accuracy(_judge, images, prompts),
                    Frechet(TextToImageStudies.InkedSlot(images)), clock.Elapsed.TotalMilliseconds / prompts.Count));
            }
        }
        return rows;
    }

    // ---- takeaways: computed from rows alone ----

    /// <summary>Accuracy from w = 1 to the best w; where the Fréchet distance is lowest, against the floor; and, for
    /// sets smaller than 2·D, why the ratio to the floor understates the gap.</summary>
    public static string GuidanceTakeaway(IReadOnlyList<GuidanceRow> rows, double floor, int samples,
        int featureDims)
    {
        var best = rows.MaxBy(r => r.Accuracy)!;
        var bestFd = rows.MinBy(r => r.Frechet)!;
        return $"Guidance: intended-class accuracy {rows[0].Accuracy:P0} at w = {rows[0].Scale} → " +
               $"{best.Accuracy:P0} at w = {best.Scale} (best); the Fréchet distance is lowest at w = {bestFd.Scale} " +
               $"({bestFd.Frechet:F2}, {bestFd.Frechet / floor:F1}× the real-vs-real floor {floor:F2}) and " +
               $"{rows[^1].Frechet:F2} at w = {rows[^1].Scale}" +
               (samples < 2 * featureDims
                   ? $"; with {samples} samples in {featureDims} feature dimensions both distances carry a large " +
                     "small-sample bias, which shrinks the ratio: the full profile's larger sets measure the gap " +
                     "with less bias."
                   : ".");
    }

    /// <summary>How the shoe classes move when the negative prompt names one of them.</summary>
    public static string NegativeTakeaway(ShoeShares plain, ShoeShares negative) =>
        $"Negative prompt {negative.Negative} on \"a shoe\": sneakers {plain.Sneaker:P0} → {negative.Sneaker:P0}, " +
        $"sandals {plain.Sandal:P0} → {negative.Sandal:P0}, ankle boots {plain.AnkleBoot:P0} → " +
        $"{negative.AnkleBoot:P0}" +
        (negative.Sneaker < 0.5 * plain.Sneaker
            ? ": the guidance pushes away from what the negative prompt names."
            : ": the negative prompt did not halve what it names in this run.");

    /// <summary>The edit's effect at the weakest and strongest setting, the PSNR it costs, and the strength that
    /// reaches half of the full effect.</summary>
    public static string EditTakeaway(IReadOnlyList<EditRow> rows, string edit)
    {
        var half = rows.First(r => r.Target >= 0.5 * rows[^1].Target);
        return $"img2img {edit}: judged the target {rows[0].Target:P0} at strength {rows[0].Strength} and " +
               $"{rows[^1].Target:P0} at {rows[^1].Strength}; PSNR to the source falls from {rows[0].Psnr:F1} to " +
               $"{rows[^1].Psnr:F1} dB; half of the full effect is reached at strength {half.Strength}.";
    }

    /// <summary>What inpainting did: the new item drawn, the kept item kept, and what the kept region lost beyond the
    /// autoencoder's own reconstruction.</summary>
    public static string InpaintTakeaway(InpaintResult r, string newItem) =>
        $"Inpainting the right slot with \"{newItem}\": judged {newItem} in {r.Target:P0} of the results; the left " +
        $"item is still judged its class in {r.LeftKept:P0} (the autoencoder's own reconstruction: " +
        $"{r.ReconstructionKept:P0}), at {r.LeftPsnr:F1} dB PSNR to the source against {r.ReconstructionPsnr:F1} dB " +
        "for the reconstruction" +
        (r.LeftPsnr >= r.ReconstructionPsnr - 1
            ? ": the blended latents keep the known region as well as the decoder can."
            : $": {r.ReconstructionPsnr - r.LeftPsnr:F1} dB below it, the decoder mixing the new slot into the old.");

    /// <summary>
    /// Three points: the spread of accuracy across samplers at the fewest and the most steps, beside the sampling
    /// noise of a proportion at n (±√(0.25/n), the worst case); the slowest sampler's time against DDIM's; and by
    /// which step count each sampler comes within that noise of its own best accuracy.
    /// </summary>
    public static IReadOnlyList<string> SamplerTakeaways(IReadOnlyList<SamplerRow> rows, int samples)
    {
        int fewest = rows.Min(r => r.Steps), most = rows.Max(r => r.Steps);
        double noise = Math.Sqrt(0.25 / samples);
        var low = rows.Where(r => r.Steps == fewest).OrderByDescending(r => r.Accuracy).ToList();
        var high = rows.Where(r => r.Steps == most).ToList();
        var lines = new List<string>
        {
            $"At {fewest} steps the samplers range from {low[^1].Accuracy:P0} ({low[^1].Sampler}) to " +
            $"{low[0].Accuracy:P0} ({low[0].Sampler}); at {most} steps from {high.Min(r => r.Accuracy):P0} to " +
            $"{high.Max(r => r.Accuracy):P0} (±{100 * noise:F0} points of sampling noise at n = {samples}).",
        };
        var ddim = high.FirstOrDefault(r => r.Sampler == "DDIM");
        if (ddim is not null)
        {
            var slowest = high.MaxBy(r => r.MsPerImage)!;
            lines.Add($"{slowest.Sampler} costs {slowest.MsPerImage / ddim.MsPerImage:F1}× DDIM's time per image at " +
                      $"{most} steps ({slowest.MsPerImage:F1} against {ddim.MsPerImage:F1} ms); time grows with the " +
                      "number of model calls, not with the sampler's arithmetic.");
        }
        var reached = rows.GroupBy(r => r.Sampler).Select(g =>
        {
            double best = g.Max(r => r.Accuracy);
            return (sampler: g.Key, steps: g.OrderBy(r => r.Steps).First(r => r.Accuracy >= best - noise).Steps);
        }).GroupBy(x => x.steps).OrderBy(g => g.Key);
        lines.Add($"Within sampling noise ({100 * noise:F0} points) of their own best accuracy: " +
                  string.Join("; ", reached.Select(g =>
                      $"by {g.Key} steps: {string.Join(", ", g.Select(x => x.sampler))}")) +
                  ".");
        return lines;
    }
}
