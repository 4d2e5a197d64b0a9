using LdmLab.Adapters;

namespace LdmLab.Labs;

/// <summary>
/// What a fine-tuning run teaches: a word and the few 28×28 items it names — a class the base model has never seen
/// ("sneaker"), or one particular item (a subject: "sks bag") — and the class word the method falls back on (textual
/// inversion's initializer, DreamBooth's class prompt: "shoe", "bag").
/// </summary>
/// <param name="Items">[n, 1, 28, 28] in [−1, 1]: the instance images</param>
public sealed record FineTuneTarget(string Name, Tensor Items, string Word, string ClassWord, int Label)
{
    /// <summary>Textual inversion's placeholder for the target: &lt;sneaker&gt;, &lt;subject-bag&gt;.</summary>
    public string Token => $"<{Name}>";

    /// <summary>The classes the class word covers ("shoe": sandal, sneaker, ankle boot; "bag": bag).</summary>
    public int[] ClassLabels => CaptionedFashion.Superclasses.TryGetValue(ClassWord, out var classes) ? classes
        : [Array.IndexOf(CaptionedFashion.Nouns, ClassWord)];
}

/// <summary>
/// Notebook 08's experiment (section 10.5.2): the text-to-image lab model trained without one class
/// (<see cref="TextToImageRecipe.ShippedWithout"/>) is taught that class from 20 images by textual inversion, LoRA at
/// ranks 1, 4, 16 and DreamBooth with and without prior preservation (w = 0.5 as the chapter, 1 as diffusers); and one
/// particular bag from one image and light augmentations. The quick profile loads the shipped results
/// (<c>ldmlab train fashion-fine-tunes</c>); full and gpu train them into the cache.
/// </summary>
public static class FineTuneLab
{
    public const int InstanceCount = 20, ClassImageCount = 100, SubjectLabel = 8;

    /// <summary>The seven arms of the new-class experiment.</summary>
    /// <remarks>LoRA adapts the U-Net's and the text encoder's attention projections, as kohya-ss does by default:
    /// the base model's row for the unseen word was never trained, and the text encoder must learn what to make of
    /// it.</remarks>
    public static IReadOnlyList<FineTuneSpec> Specs { get; } =
    [
        new(FineTuneKind.TextualInversion), new(FineTuneKind.Lora, Rank: 1, TextEncoder: true),
        new(FineTuneKind.Lora, Rank: 4, TextEncoder: true), new(FineTuneKind.Lora, Rank: 16, TextEncoder: true),
        new(FineTuneKind.DreamBooth), new(FineTuneKind.DreamBooth, PriorWeight: 0.5),
        new(FineTuneKind.DreamBooth, PriorWeight: 1.0),
    ];

    /// <summary>The rank-4 LoRA arm (the scale sweep and the mixing use it).</summary>
    public static FineTuneSpec LoraR4 => Specs[2];

    /// <summary>The subject case's arms: LoRA r = 4 (also mixed with the new-class adapter) and DreamBooth with the
    /// prior, as its paper runs it.</summary>
    public static IReadOnlyList<FineTuneSpec> SubjectSpecs { get; } =
        [new(FineTuneKind.Lora, Rank: 4, TextEncoder: true), new(FineTuneKind.DreamBooth, PriorWeight: 1.0)];

    /// <summary>The class the base model never saw, from its first <paramref name="count"/> items of the training
    /// split; the class word is its superclass ("shoe").</summary>
    public static FineTuneTarget NewClass(FashionMnist train, int label = TextToImageRecipe.HeldOutClass,
        int count = InstanceCount)
    {
        var noun = CaptionedFashion.Nouns[label];
        var superclass = CaptionedFashion.Superclasses.FirstOrDefault(kv => kv.Value.Contains(label)).Key ?? noun;
        return new FineTuneTarget(noun.Replace(' ', '-'), FirstOf(train, label, count), noun, superclass, label);
    }

    /// <summary>
    /// One particular item — the first of class <paramref name="label"/> in the test split, which no model here
    /// trained on — as <paramref name="count"/> lightly augmented copies (shifts of up to 2 pixels, brightness ×0.85
    /// … 1.15, seeded), named "sks NOUN" as DreamBooth names a subject.
    /// </summary>
    public static FineTuneTarget Subject(FashionMnist test, int label = SubjectLabel, int count = InstanceCount,
        int seed = 0)
    {
        var item = FirstOf(test, label, 1);                                            // [1, 1, 28, 28]
        var rng = new Random(seed);
        var copies = Enumerable.Range(0, count).Select(i =>
        {
            if (i == 0) return item;
            var shifted = item.roll([rng.Next(-2, 3), rng.Next(-2, 3)], [2, 3]);     // background wraps: still −1
            double gain = 0.85 + 0.3 * rng.NextDouble();
            return ((shifted + 1) * gain - 1).clamp(-1, 1);
        }).ToArray();
        var noun = CaptionedFashion.Nouns[label];
        return new FineTuneTarget($"subject-{noun.Replace(' ', '-')}", cat(copies), $"sks {noun}", noun, label);
    }

    /// <summary>The subject item itself [1, 1, 28, 28] and the other items of its class in the test split
    /// [m, 1, 28, 28] (what fidelity compares against).</summary>
    public static (Tensor Subject, Tensor Others) SubjectAndOthers(FashionMnist test, int label = SubjectLabel,
        int others = 99)
    {
        var all = FirstOf(test, label, others + 1);
        return (all.narrow(0, 0, 1), all.narrow(0, 1, all.shape[0] - 1));
    }

    static Tensor FirstOf(FashionMnist data, int label, int count)
    {
        var index = data.Labels.data<long>().Select((l, i) => (l, i)).Where(x => x.l == label).Take(count)
            .Select(x => (long)x.i).ToArray();
        if (index.Length < count)
            throw new ArgumentException($"the {data.Split} split holds {index.Length} items of class {label}, " +
                                        $"not {count}", nameof(data));
        return data.Images.index_select(0, tensor(index));
    }

    /// <summary>The word a method's prompts use: textual inversion's placeholder token, else the target's word.
    /// </summary>
    public static string WordFor(FineTuneSpec spec, FineTuneTarget target) =>
        spec.Kind == FineTuneKind.TextualInversion ? target.Token : target.Word;

    /// <summary>
    /// The training examples: every item once on the left and once on the right of an empty 28×56 canvas, captioned in
    /// the lab's grammar with <paramref name="word"/> ("a photo of a sneaker on the left", "a &lt;sneaker&gt;"; the
    /// side named half of the time), seeded.
    /// </summary>
    public static CaptionedScenes InstanceScenes(FineTuneTarget target, string word, int seed = 0)
    {
        var rng = new Random(seed);
        long n = target.Items.shape[0];
        var canvases = full(2 * n, 1, CaptionedScenes.Height, CaptionedScenes.Width, -1f);      // [2n, 1, 28, 56]
        var captions = new List<string>();
        var (left, right) = (new long[2 * n], new long[2 * n]);
        for (int i = 0; i < 2 * n; i++)
        {
            var side = i % 2 == 0 ? Side.Left : Side.Right;
            int x = side == Side.Left ? 0 : CaptionedScenes.Slot;
            canvases[i, .., .., x..(x + CaptionedScenes.Slot)] = target.Items[i / 2];
            captions.Add(CaptionedFashion.SingleCaption(word, rng.Next(2) == 0 ? side : null, rng));
            (left[i], right[i]) = side == Side.Left ? ((long)target.Label, -1L) : (-1L, (long)target.Label);
        }
        return new CaptionedScenes(canvases, captions, tensor(left), tensor(right));
    }

    /// <summary>
    /// The class images of prior preservation: what the base model draws for the prompts it knows — the class word
    /// ("a shoe", "a photo of a bag on the left", …) every third image, and between them each class it was trained
    /// on in turn (DDIM 25 steps, w = 5), <paramref name="count"/> in all, as latents with their captions. DreamBooth's
    /// paper draws the class word only; a new class of this small world belongs to the class "fashion item", whose
    /// prompts are the known classes, and those are what fine-tuning must not overwrite.
    /// </summary>
    public static (Tensor Latents, IReadOnlyList<string> Captions) ClassExamples(TextConditionedUNet baseModel,
        AutoencoderKL vae, FineTuneTarget target, int count = ClassImageCount, long seed = 0)
    {
        var rng = new Random((int)seed + 1);
        bool unseen = target.Word == CaptionedFashion.Nouns[target.Label];           // a new class, not a subject
        var known = Enumerable.Range(0, CaptionedFashion.Nouns.Length).Where(c => !unseen || c != target.Label)
            .ToArray();
        var captions = Enumerable.Range(0, count).Select(i =>
        {
            Side? side = rng.Next(2) == 0 ? (i % 2 == 0 ? Side.Left : Side.Right) : null;
            return i % 3 == 0 ? CaptionedFashion.SingleCaption(target.ClassWord, side, rng)
                : CaptionedFashion.SingleCaption(CaptionedFashion.Nouns[known[i % known.Length]], side, rng);
        }).ToList();
        var canvases = TextToImageStudies.Generate(baseModel, vae,
            captions.Select(c => new ScenePrompt(c, -1, -1)).ToList(), steps: 25, guidance: 5, seed: 10_000 + seed);
        return (FashionLatentRecipe.ScaledLatents(vae, canvases).latents, captions);
    }

    /// <summary>The settings per method (batch 16 instance examples, and 16 class examples with the prior).</summary>
    public static FineTuneOptions Options(FineTuneSpec spec) => spec.Kind switch
    {
        FineTuneKind.TextualInversion => new()
        { Steps = Lab.Pick(quick: 40, full: 500), BatchSize = 16, LearningRate = 2e-2, WarmupSteps = 20 },
        FineTuneKind.Lora => new()
        { Steps = Lab.Pick(quick: 40, full: 300), BatchSize = 16, LearningRate = 1e-2, WarmupSteps = 20 },
        _ => new() { Steps = Lab.Pick(quick: 40, full: 400), BatchSize = 16, LearningRate = 1e-3, WarmupSteps = 20 },
    };

    /// <summary>The objective the base model was trained with (SD's scaled-linear schedule, ε).</summary>
    public static DiffusionObjective Objective => new(NoiseSchedule.ScaledLinear());

    /// <summary>The shipped folder of one run: fashion-finetune-sneaker-lora-r4-te, fashion-finetune-subject-bag-….
    /// </summary>
    public static string ShippedName(FineTuneTarget target, FineTuneSpec spec) =>
        $"fashion-finetune-{target.Name}-{spec.Name}";

    /// <summary>Everything that determines a run: method, options, seed, the base weights, the instance images, the
    /// class images' recipe.</summary>
    public static string Key(FineTuneTarget target, FineTuneSpec spec, TextConditionedUNet baseModel,
        FineTuneOptions options, long seed) =>
        FashionLatentRecipe.Key("finetune", spec, options with { Seed = seed }, ContentHash.Of(baseModel),
            ContentHash.Of(target.Items), target.Word, target.ClassWord, spec.PriorWeight > 0 ? ClassImageCount : 0);

    /// <summary>A fine-tuned model ready to sample (LoRA fused at scale 1), the adapter itself for scale sweeps and
    /// mixing, the counts, the losses and where it came from.</summary>
    public sealed record Tuned(FineTuneSpec Spec, FineTuneTarget Target, TextConditionedUNet Model, LoraAdapter? Lora,
        long Trainable, long FileBytes, FineTuneLog Log, string Source)
    {
        /// <summary>The word this model's prompts use for the target.</summary>
        public string Word => WordFor(Spec, Target);
    }

    /// <summary>A fresh copy of the lab's text-to-image model (weights and tokenizer), so that runs never share
    /// weights.</summary>
    public static TextConditionedUNet Copy(TextConditionedUNet model)
    {
        var copy = TextToImageRecipe.New();
        using (no_grad())
            copy.load_state_dict(model.state_dict());
        copy.eval();
        return copy;
    }

    /// <summary>
    /// Quick profile: the shipped run (hash-checked). Otherwise the cache entry, or a run of
    /// <see cref="Options"/>' steps on a copy of <paramref name="baseModel"/>, saved into the cache.
    /// </summary>
    public static Tuned LoadOrTrain(FineTuneSpec spec, FineTuneTarget target, TextConditionedUNet baseModel,
        AutoencoderKL vae, Viz.Progress? progress = null, long seed = 0) =>
        ArtifactStore.Current.Resolve(ShippedName(target, spec), seed,
            shipped => Open(spec, target, baseModel, shipped.Dir, shipped.Describe()),
            () =>
            {
                var options = Options(spec);
                var dir = ArtifactStore.Current.CacheEntry("finetune", Key(target, spec, baseModel, options, seed));
                if (File.Exists(Path.Combine(dir, FineTuneRecipe.LogFile)))
                    return Open(spec, target, baseModel, dir, "loaded from the cache (trained earlier with the same " +
                                                             "settings)");
                var (tuned, _) = Train(spec, target, baseModel, vae, options with { Seed = seed }, dir, progress);
                return tuned;
            });

    /// <summary>Reads a saved run onto a copy of the base model.</summary>
    public static Tuned Open(FineTuneSpec spec, FineTuneTarget target, TextConditionedUNet baseModel, string dir,
        string source)
    {
        var model = Copy(baseModel);
        var lora = FineTuneRecipe.Apply(spec, dir, model);
        if (lora is not null) FineTuneRecipe.Fuse(lora, model);
        var (log, trainable) = FineTuneRecipe.ReadLog(dir);
        return new Tuned(spec, target, model, lora, trainable, FineTuneRecipe.FileBytes(spec, dir), log, source);
    }

    /// <summary>One run on a copy of the base model, written into <paramref name="dir"/> (a temporary folder first,
    /// renamed when whole); returns the tuned model and the raw result.</summary>
    public static (Tuned Tuned, FineTuneResult Result) Train(FineTuneSpec spec, FineTuneTarget target,
        TextConditionedUNet baseModel, AutoencoderKL vae, FineTuneOptions options, string dir,
        Viz.Progress? progress = null)
    {
        var model = Copy(baseModel);
        var word = WordFor(spec, target);
        var scenes = InstanceScenes(target, word, (int)options.Seed);
        var (latents, _) = FashionLatentRecipe.ScaledLatents(vae, scenes.Images);
        var (priorLatents, priorCaptions) = spec.PriorWeight > 0
            ? ClassExamples(baseModel, vae, target, ClassImageCount, options.Seed)
            : (null, null);
        var result = FineTuneRecipe.Run(spec, model, Objective, latents, scenes.Captions, options, word,
            target.ClassWord, priorLatents, priorCaptions, progress);
        var staging = dir + ".tmp";
        if (Directory.Exists(staging)) Directory.Delete(staging, true);
        FineTuneRecipe.Save(result, model, staging);
        if (Directory.Exists(dir)) Directory.Delete(dir, true);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(dir))!);
        Directory.Move(staging, dir);
        if (result.Lora is not null) FineTuneRecipe.Fuse(result.Lora, model);
        return (new Tuned(spec, target, model, result.Lora, result.Trainable, FineTuneRecipe.FileBytes(spec, dir),
            result.Log, $"trained {options.Steps:N0} steps ({Lab.Profile.ToString().ToLowerInvariant()} profile) in " +
                        $"{result.Log.Elapsed.TotalSeconds:F0} s"), result);
    }
}
