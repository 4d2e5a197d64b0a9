namespace LdmLab.Labs;

/// <summary>A prompt with what it asks for: the class per slot (−1: any or none), and the side a one-item prompt
/// names (null: none).</summary>
public sealed record ScenePrompt(string Text, int Left, int Right, Side? NamedSide = null)
{
    public bool IsPair => Left >= 0 && Right >= 0;
    /// <summary>The single item's class (the slot that is asked for), for one-item prompts.</summary>
    public int Item => Left >= 0 ? Left : Right;
}

/// <summary>Localisation of two-item prompts' nouns: pointing game and IoU per prompt, and per layer, evaluation,
/// head.</summary>
public sealed record LocalisationReport(
    int Prompts, double Pointing, double Iou, double Tau,
    IReadOnlyDictionary<string, double> PointingByLayer, IReadOnlyList<double> PointingByEvaluation,
    IReadOnlyDictionary<(string layer, int head), double> PointingByHead, double SideWordPointing)
{
    /// <summary>The side words' pointing per layer (all steps, all heads).</summary>
    public IReadOnlyDictionary<string, double> SidePointingByLayer { get; init; } = new Dictionary<string, double>();
    /// <summary>The side words' pointing per layer and head (all steps).</summary>
    public IReadOnlyDictionary<(string layer, int head), double> SidePointingByHead { get; init; } =
        new Dictionary<(string, int), double>();
    /// <summary>Seconds spent in the pipeline's generation calls (sampling, any steering, decoding), not in
    /// scoring.</summary>
    public double GenerationSeconds { get; init; }
}

/// <summary>
/// The measurements of the text-to-image lab (notebooks 05 and 06): prompts with known content, generation in
/// batches through <see cref="StableDiffusionPipeline"/>, and judging generated canvases with the independent
/// Fashion-MNIST classifier (one slot at a time) and cross-attention maps against the items' silhouettes.
/// </summary>
public static class TextToImageStudies
{
    /// <summary>One prompt per class in turn ("a photo of a sneaker", …), <paramref name="count"/> in all.</summary>
    public static IReadOnlyList<ScenePrompt> SinglePrompts(int count, string template = "a photo of a {0}") =>
        Enumerable.Range(0, count).Select(i =>
        {
            int c = i % CaptionedFashion.Nouns.Length;
            return new ScenePrompt(CaptionedFashion.WithArticle(template, CaptionedFashion.Nouns[c]), c, -1);
        }).ToList();

    /// <summary>One-item prompts that name a side ("a photo of a sneaker on the left"), classes in turn, sides
    /// alternating every ten.</summary>
    public static IReadOnlyList<ScenePrompt> SidedPrompts(int count, string template = "a photo of a {0}") =>
        Enumerable.Range(0, count).Select(i =>
        {
            int c = i % CaptionedFashion.Nouns.Length;
            var side = (i / CaptionedFashion.Nouns.Length) % 2 == 0 ? Side.Left : Side.Right;
            var text = CaptionedFashion.WithArticle(template, CaptionedFashion.Nouns[c]) +
                       (side == Side.Left ? " on the left" : " on the right");
            return side == Side.Left ? new ScenePrompt(text, c, -1, side) : new ScenePrompt(text, -1, c, side);
        }).ToList();

    /// <summary>Two-item prompts with two different classes, order of mention varied; deterministic per seed.</summary>
    public static IReadOnlyList<ScenePrompt> PairPrompts(int count, int seed = 0)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
        {
            int left = rng.Next(10), right = (left + 1 + rng.Next(9)) % 10;
            var caption = CaptionedFashion.PairCaption(left, right, rightFirst: rng.Next(2) == 1);
            return new ScenePrompt(caption, left, right);
        }).ToList();
    }

    /// <summary>Generates the prompts in batches: canvases [N, 1, 28, 56] in [−1, 1], the same seed per batch
    /// index.</summary>
    public static Tensor Generate(StableDiffusionPipeline pipeline, IReadOnlyList<ScenePrompt> prompts, int steps,
        double guidance, long seed = 0, int batchSize = 100, IReadOnlyList<string>? negativePrompts = null,
        Action<int>? afterBatch = null)
    {
        var batches = new List<Tensor>();
        for (int start = 0; start < prompts.Count; start += batchSize)
        {
            int n = Math.Min(batchSize, prompts.Count - start);
            var output = pipeline.Generate(new GenerationOptions
            {
                Prompts = prompts.Skip(start).Take(n).Select(p => p.Text).ToArray(),
                NegativePrompts = negativePrompts?.Skip(start).Take(n).ToArray(),
                Steps = steps, GuidanceScale = guidance, Height = CaptionedScenes.Height, Width = CaptionedScenes.Width,
                Seed = seed + start,
            });
            batches.Add((output.Images * 2 - 1).cpu());                                       // [0, 1] → [−1, 1]
            afterBatch?.Invoke(start + n);
        }
        return cat(batches.ToArray());
    }

    /// <summary>
    /// Generates with any conditioning method (<see cref="TextToImageRecipe.Conditions"/>): classifier-free guidance
    /// through <see cref="ConditionalDenoiser.Guided"/>, DDIM, batched VAE decoding; canvases [N, 1, 28, 56] in
    /// [−1, 1]. The noise per batch is the pipeline's for the same seed, so a cross-attention model draws what
    /// <see cref="Generate(StableDiffusionPipeline, IReadOnlyList{ScenePrompt}, int, double, long, int,
    /// IReadOnlyList{string}?, Action{int}?)"/> draws.
    /// </summary>
    public static Tensor Generate(ConditionalDenoiser model, AutoencoderKL vae, IReadOnlyList<ScenePrompt> prompts,
        int steps, double guidance, long seed = 0, int batchSize = 100)
    {
        using var _ = no_grad();
        var conditions = TextToImageRecipe.Conditions(model, prompts.Select(p => p.Text).ToList());
        var pipeline = new LatentDiffusionPipeline(model, vae, "DDIMScheduler", TextToImageRecipe.SchedulerConfig());
        int f = 1 << (vae.Config.BlockOutChannels.Length - 1);                      // the VAE's downsampling factor
        var batches = new List<Tensor>();
        for (int start = 0; start < prompts.Count; start += batchSize)
        {
            int n = Math.Min(batchSize, prompts.Count - start);
            batches.Add(pipeline.Generate(conditions.narrow(0, start, n), new LatentGenerationOptions
            {
                Steps = steps, GuidanceScale = guidance, Seed = seed + start,
                LatentSize = [CaptionedScenes.Height / f, CaptionedScenes.Width / f],                // [7, 14]
            }).Images!.cpu());                                                                 // [n, 1, 28, 56]
        }
        return cat(batches.ToArray());
    }

    /// <summary>The side of each canvas that holds more ink (where a one-item prompt's item was drawn).</summary>
    public static Side[] InkedSides(Tensor canvases) =>
        LeftHoldsMoreInk(canvases).data<bool>().Select(l => l ? Side.Left : Side.Right).ToArray();

    /// <summary>[N] bool: the left slot holds at least as much ink as the right one.</summary>
    static Tensor LeftHoldsMoreInk(Tensor canvases) =>
        (CaptionedScenes.SlotOf(canvases, Side.Left) + 1).sum([1, 2, 3])
            .ge((CaptionedScenes.SlotOf(canvases, Side.Right) + 1).sum([1, 2, 3]));

    /// <summary>Per one-item prompt that names a side: is the item drawn in that half, and is it the named
    /// class?</summary>
    public static bool[] PlacedAsNamed(FashionClassifier judge, Tensor canvases, IReadOnlyList<ScenePrompt> prompts)
    {
        if (prompts.Any(p => p.NamedSide is null))
            throw new ArgumentException("every prompt must name a side (SidedPrompts)", nameof(prompts));
        var sides = InkedSides(canvases);
        var classes = ItemClasses(judge, canvases);
        return prompts.Select((p, i) => sides[i] == p.NamedSide && classes[i] == p.Item).ToArray();
    }

    /// <summary>The slot of each canvas that holds more ink (where a one-item prompt's item was drawn): [N, 1, 28,
    /// 28].</summary>
    public static Tensor InkedSlot(Tensor canvases)
    {
        return where(LeftHoldsMoreInk(canvases).reshape(-1, 1, 1, 1), CaptionedScenes.SlotOf(canvases, Side.Left),
            CaptionedScenes.SlotOf(canvases, Side.Right));
    }

    /// <summary>
    /// Fraction of canvases whose item the judge names as asked: one-item prompts judge the inked slot; two-item
    /// prompts count only when both slots are right.
    /// </summary>
    public static double Accuracy(FashionClassifier judge, Tensor canvases, IReadOnlyList<ScenePrompt> prompts)
    {
        if (canvases.shape[0] != prompts.Count)
            throw new ArgumentException($"{canvases.shape[0]} canvases for {prompts.Count} prompts", nameof(prompts));
        return Correct(judge, canvases, prompts).Average(c => c ? 1.0 : 0.0);
    }

    /// <summary>The judge's class for 28×28 items [N, 1, 28, 28], in batches without gradients.</summary>
    public static long[] Classify(FashionClassifier judge, Tensor items) =>
        Nn.Batched.Map(judge, items, 500, judge.forward).argmax(1).data<long>().ToArray();

    /// <summary>The judge's class for the item of each one-item canvas (its inked slot).</summary>
    public static long[] ItemClasses(FashionClassifier judge, Tensor canvases) => Classify(judge, InkedSlot(canvases));

    /// <summary>Per canvas: did the judge find what the prompt asked for?</summary>
    public static bool[] Correct(FashionClassifier judge, Tensor canvases, IReadOnlyList<ScenePrompt> prompts)
    {
        long[] Classify(Tensor slots) => TextToImageStudies.Classify(judge, slots);
        var inked = Classify(InkedSlot(canvases));
        var left = Classify(CaptionedScenes.SlotOf(canvases, Side.Left));
        var right = Classify(CaptionedScenes.SlotOf(canvases, Side.Right));
        return prompts.Select((p, i) => p.IsPair ? left[i] == p.Left && right[i] == p.Right : inked[i] == p.Item)
            .ToArray();
    }

    /// <summary>
    /// Generates two-item prompts while recording cross-attention, and scores each noun's DAAM map against the half
    /// its caption names: pointing (the map's peak inside that half) and IoU of the map thresholded at
    /// <paramref name="tau"/> with the generated item's silhouette in that half. Also pointing per layer, per
    /// evaluation (when in the trajectory words bind) and per head (which heads localise), and the pointing of the side
    /// words themselves ("left" into the left half, "right" into the right one).
    /// </summary>
    /// <param name="steering">the sampler-side step for a batch of prompts (null, or returning null: plain
    /// sampling)</param>
    /// <param name="inspect">sees each batch's recording and prompts before it is freed</param>
    public static (Tensor canvases, LocalisationReport report) Localise(StableDiffusionPipeline pipeline,
        TextConditionedUNet model, IReadOnlyList<ScenePrompt> prompts, int steps, double guidance, double tau = 0.4,
        long seed = 0, int batchSize = 50, Func<IReadOnlyList<ScenePrompt>, AttentionSteering?>? steering = null,
        Action<CrossAttentionRecorder, IReadOnlyList<ScenePrompt>>? inspect = null)
    {
        const int h = CaptionedScenes.Height, w = CaptionedScenes.Width;
        var halves = CaptionedScenes.HalfMasks();                                          // [2, 28, 56]
        var allCanvases = new List<Tensor>();
        var pointing = new List<double>();
        var sidePointing = new List<double>();
        var ious = new List<double>();
        var byLayer = new Dictionary<string, List<double>>();
        var byEvaluation = new Dictionary<int, List<double>>();
        var byHead = new Dictionary<(string, int), List<double>>();
        var sideByLayer = new Dictionary<string, List<double>>();
        var sideByHead = new Dictionary<(string, int), List<double>>();
        var generating = new System.Diagnostics.Stopwatch();
        for (int start = 0; start < prompts.Count; start += batchSize)
        {
            var batch = prompts.Skip(start).Take(batchSize).ToList();
            // every map aggregated below ([B, tokens, h, w] per layer, step and head) is freed with the batch: without
            // the scope they waited for the GC and notebook 05's kernel peaked at 12.2 GB resident
            using var scope = NewDisposeScope();
            generating.Start();
            var output = pipeline.Generate(new GenerationOptions
            {
                Prompts = batch.Select(p => p.Text).ToArray(), Steps = steps, GuidanceScale = guidance,
                Height = h, Width = w, Seed = seed + start, RecordAttention = true, Steering = steering?.Invoke(batch),
            });
            generating.Stop();
            using var recorder = output.Attention!;
            var canvases = (output.Images * 2 - 1).cpu().MoveToOuterDisposeScope();
            allCanvases.Add(canvases);
            var silhouettes = CaptionedScenes.SlotMasks(canvases);                                // [B, 2, h, w]
            // the token positions of each prompt's two nouns: (position list, side)
            var nouns = batch.Select(p => NounTokens(model.Tokenizer, p)).ToList();
            Tensor NounMaps(Tensor aggregated, int side) => stack(nouns.Select((n, i) =>
                CrossAttentionRecorder.WordMap(aggregated.narrow(0, i, 1), n[side])[0]).ToArray());   // [B, h, w]
            void Score(Tensor aggregated, List<double> into)
            {
                for (int side = 0; side < 2; side++)
                    into.AddRange(CrossAttentionRecorder.PointingHits(NounMaps(aggregated, side),
                        halves[side].expand(batch.Count, h, w)).data<float>().Select(v => (double)v));
            }
            var all = recorder.Aggregate(h, w);                                                 // [B, tokens, h, w]
            Score(all, pointing);
            // the side words: "left" should point into the left half, "right" into the right one
            var sides = batch.Select(p => CrossAttentionRecorder.Words(model.Tokenizer, p.Text)).Select(ws =>
                new[] { ws.First(x => x.Text == "left"), ws.First(x => x.Text == "right") }).ToList();
            void ScoreSides(Tensor aggregated, List<double> into)
            {
                for (int side = 0; side < 2; side++)
                {
                    var sideMaps = stack(sides.Select((words, i) =>
                        CrossAttentionRecorder.WordMap(aggregated.narrow(0, i, 1), words[side])[0]).ToArray());
                    into.AddRange(CrossAttentionRecorder.PointingHits(sideMaps,
                        halves[side].expand(batch.Count, h, w)).data<float>().Select(v => (double)v));  // [B, h, w]
                }
            }
            ScoreSides(all, sidePointing);
            for (int side = 0; side < 2; side++)
                ious.AddRange(CrossAttentionRecorder.Iou(NounMaps(all, side), silhouettes.select(1, side), tau)
                    .data<float>().Select(v => (double)v));
            foreach (var layer in recorder.Layers)
            {
                var perLayer = recorder.Aggregate(h, w, r => r.Layer == layer);
                Score(perLayer, byLayer.TryGetValue(layer, out var l) ? l : byLayer[layer] = []);
                ScoreSides(perLayer, sideByLayer.TryGetValue(layer, out var sl) ? sl : sideByLayer[layer] = []);
            }
            for (int e = 0; e < recorder.Evaluations; e++)
                Score(recorder.Aggregate(h, w, r => r.Evaluation == e),
                    byEvaluation.TryGetValue(e, out var l) ? l : byEvaluation[e] = []);
            foreach (var record in recorder.Records.Where(r => r.Evaluation == 0))
                for (int head = 0; head < record.Heads; head++)
                {
                    var (layer, index) = (record.Layer, head);
                    var perHead = CrossAttentionRecorder.AggregateRecords(recorder.Records.Where(r => r.Layer == layer)
                        .Select(r => r with { Maps = r.Maps.narrow(1, index, 1) }), h, w);
                    Score(perHead, byHead.TryGetValue((layer, head), out var l) ? l : byHead[(layer, head)] = []);
                    ScoreSides(perHead,
                        sideByHead.TryGetValue((layer, head), out var sl) ? sl : sideByHead[(layer, head)] = []);
                }
            inspect?.Invoke(recorder, batch);
        }
        var report = new LocalisationReport(prompts.Count, pointing.Average(), ious.Average(), tau,
            byLayer.ToDictionary(kv => kv.Key, kv => kv.Value.Average()),
            byEvaluation.OrderBy(kv => kv.Key).Select(kv => kv.Value.Average()).ToList(),
            byHead.ToDictionary(kv => kv.Key, kv => kv.Value.Average()), sidePointing.Average())
        {
            SidePointingByLayer = sideByLayer.ToDictionary(kv => kv.Key, kv => kv.Value.Average()),
            SidePointingByHead = sideByHead.ToDictionary(kv => kv.Key, kv => kv.Value.Average()),
            GenerationSeconds = generating.Elapsed.TotalSeconds,
        };
        return (cat(allCanvases.ToArray()), report);
    }

    /// <summary>The token positions of a pair prompt's left noun [0] and right noun [1] (multi-word nouns
    /// merged).</summary>
    public static PromptWord[] NounTokens(ClipTokenizer tokenizer, ScenePrompt prompt)
    {
        if (!prompt.IsPair) throw new ArgumentException($"'{prompt.Text}' is not a two-item prompt", nameof(prompt));
        var words = CrossAttentionRecorder.Words(tokenizer, prompt.Text);
        // CLIP's pre-tokenizer splits "t-shirt" into t, -, shirt: a noun is the run of words that spells it
        PromptWord Noun(int label)
        {
            var noun = CaptionedFashion.Nouns[label];
            var spelled = noun.Replace(" ", "");
            for (int i = 0; i < words.Count; i++)
            {
                var text = "";
                for (int j = i; j < words.Count && text.Length < spelled.Length; j++)
                {
                    text += words[j].Text;
                    if (text == spelled)
                        return new PromptWord(noun,
                            words.Skip(i).Take(j - i + 1).SelectMany(x => x.TokenPositions).ToArray());
                }
            }
            throw new ArgumentException($"'{prompt.Text}' does not name {noun}");
        }
        return [Noun(prompt.Left), Noun(prompt.Right)];
    }
}
