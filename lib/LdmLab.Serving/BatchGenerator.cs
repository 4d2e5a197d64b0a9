using System.Text.Json.Nodes;
using LdmLab.Adapters;
using LdmLab.Conditioning;
using LdmLab.Labs;
using LdmLab.Pipelines;
using static TorchSharp.torch;

namespace LdmLab.Serving;

/// <summary>One denoising step of a batch: its number (1-based) of <see cref="Steps"/>, and the decoded prediction
/// of x₀ for every row, computed only when asked for ([B, 3, H, W] in [0, 1]; disposed after the callback).</summary>
public sealed record BatchStep(int Step, int Steps, Func<Tensor> Previews);

/// <summary>One prompt word's cross-attention map: [H, W] at the image's size, scaled to [0, 1].</summary>
public sealed record WordAttention(string Word, Tensor Map);

/// <summary>The images [B, 3, H, W] in [0, 1] and the final latents [B, c, h, w] of one batch; with
/// <see cref="ImageRequest.AttentionMaps"/>, each row's word maps.</summary>
public sealed record BatchImages(Tensor Images, Tensor Latents,
    IReadOnlyList<IReadOnlyList<WordAttention>>? Attention = null);

/// <summary>
/// What the worker drives: requests of one shape (<see cref="ImageRequest.ShapeKey"/>) → images, in one denoiser
/// call per step. The step callback may throw <see cref="OperationCanceledException"/> to stop the compute.
/// </summary>
public interface IBatchGenerator
{
    ModelInfo Model { get; }
    /// <summary>The text-encoding cache's hits and misses so far (the metrics count the differences).</summary>
    (long Hits, long Misses) TextCacheCounts { get; }
    BatchImages Generate(IReadOnlyList<ImageRequest> batch, Action<BatchStep> onStep);
}

/// <summary>
/// <see cref="IBatchGenerator"/> over a <see cref="StableDiffusionPipeline"/>: prompts and negative prompts become
/// the rows of one call (the conditional and unconditional halves of classifier-free guidance in one U-Net batch),
/// and each row's x_T is drawn from its own seed's CPU generator — the very draws a call with that seed alone makes
/// — so a batched image is the image the request gets alone. The pipeline's text-encoding cache is turned on.
/// LoRA adapters (<see cref="ServeOptions.Adapters"/>) are read and matched against the model once, here; a batch
/// (one set of adapters and scales: <see cref="ImageRequest.ShapeKey"/>) attaches its adapters to the U-Net and the
/// text encoder and detaches them when it ends, so the next batch runs on the base model.
/// </summary>
public sealed class PipelineBatchGenerator : IBatchGenerator
{
    readonly StableDiffusionPipeline _pipeline;
    readonly string _defaultClass;
    readonly JsonObject _defaultConfig;

    readonly Dictionary<string, LoraAdapter> _adapters = new(StringComparer.Ordinal);

    /// <param name="adapters">Adapter name → .safetensors LoRA file (diffusers, PEFT or kohya keys); a file that
    /// does not fit the model is an <see cref="ArgumentException"/> naming it.</param>
    public PipelineBatchGenerator(StableDiffusionPipeline pipeline, string modelName, int textCacheCapacity = 256,
        (int Height, int Width)? nativeSize = null, IReadOnlyDictionary<string, string>? adapters = null)
    {
        if (pipeline.IsInpaintingUNet)
            throw new ArgumentException($"the U-Net takes {pipeline.Unet.Config.InChannels} channels (an inpainting " +
                                        "U-Net): the server makes text-to-image requests only", nameof(pipeline));
        _pipeline = pipeline;
        _defaultClass = pipeline.SchedulerClass;
        _defaultConfig = (JsonObject)pipeline.SchedulerConfig.DeepClone();
        pipeline.EnableTextEncodingCache(textCacheCapacity);
        int f = pipeline.VaeScaleFactor, native = pipeline.Unet.Config.SampleSize * f;
        foreach (var (name, path) in adapters ?? new Dictionary<string, string>())
            _adapters[name] = ReadAdapter(name, path, pipeline);
        Model = new ModelInfo(modelName, nativeSize?.Width ?? native, nativeSize?.Height ?? native, f, _defaultClass)
        {
            Adapters = _adapters.Keys.ToList(),
        };
    }

    /// <summary>A LoRA file read against this pipeline's U-Net and text encoder: every key must name a layer of
    /// the model with a fitting shape (an adapter trained for another base is refused here, before serving).
    /// </summary>
    static LoraAdapter ReadAdapter(string name, string path, StableDiffusionPipeline pipeline)
    {
        LoraLoad load;
        try { load = LoraFiles.Read(path, pipeline.Unet, pipeline.TextEncoder); }
        catch (Exception e) when (e is IOException or AdapterFormatException or Data.DatasetException)
        {
            throw new ArgumentException($"adapter '{name}' ({path}): {e.Message}", "adapters", e);
        }
        if (load.Unmatched.Count > 0)
            throw new ArgumentException($"adapter '{name}' ({path}): {load.Unmatched.Count} keys name no layer of " +
                                        $"the served model (e.g. {load.Unmatched[0]}): an adapter for another " +
                                        "model?", "adapters");
        if (load.Adapter.Layers.Count == 0)
            throw new ArgumentException($"adapter '{name}' ({path}): no LoRA layers in the file", "adapters");
        return load.Adapter;
    }

    public ModelInfo Model { get; }

    public (long Hits, long Misses) TextCacheCounts =>
        _pipeline.TextEncodingCache is { } c ? (c.Hits, c.Misses) : (0, 0);

    public BatchImages Generate(IReadOnlyList<ImageRequest> batch, Action<BatchStep> onStep)
    {
        var first = batch[0];
        var pipeline = Pipeline(first.Scheduler);
        if (first.Adapters.Count == 0) return Run(pipeline, batch, onStep);
        // the batch's adapters (one set for the whole batch: ShapeKey), attached for this call only
        var attached = new List<IDisposable>();
        var textCache = pipeline.TextEncodingCache;
        try
        {
            foreach (var use in first.Adapters)
            {
                var adapter = _adapters[use.Name];
                attached.Add(adapter.Attach(pipeline.Unet, "unet", use.Scale));
                if (adapter.Layers.Keys.Any(k => k.StartsWith("text_encoder.", StringComparison.Ordinal)))
                {
                    attached.Add(adapter.Attach(pipeline.TextEncoder, "text_encoder", use.Scale));
                    pipeline.TextEncodingCache = null;          // the cache holds the base encoder's encodings
                }
            }
            return Run(pipeline, batch, onStep);
        }
        finally
        {
            for (int i = attached.Count - 1; i >= 0; i--) attached[i].Dispose();
            pipeline.TextEncodingCache = textCache;
        }
    }

    BatchImages Run(StableDiffusionPipeline pipeline, IReadOnlyList<ImageRequest> batch, Action<BatchStep> onStep)
    {
        var first = batch[0];
        int f = pipeline.VaeScaleFactor, channels = pipeline.Vae.Config.LatentChannels;
        long[] one = [1, channels, first.Height / f, first.Width / f];
        // x_T row by row from each request's seed: what GenerationOptions.Seed draws for a batch of one
        var noise = cat(batch.Select(r =>
        {
            using var generator = new Generator((ulong)r.Seed);
            return randn(one, generator: generator);
        }).ToArray(), 0);                                                                  // [B, c, h, w]
        if (Model.IsStochastic(first.Scheduler)) manual_seed(first.Seed);  // the steps' own noise (batches of one)
        var options = new GenerationOptions
        {
            Prompts = batch.Select(r => r.Prompt).ToArray(),
            NegativePrompts = batch.Select(r => r.NegativePrompt).ToArray(),
            Steps = first.Steps, GuidanceScale = first.Guidance, Height = first.Height, Width = first.Width,
            Latents = noise, RecordAttention = first.AttentionMaps,
            Callback = s => onStep(new BatchStep(s.Index + 1, first.Steps,
                () => pipeline.Decode(s.PredictedOriginal ?? s.Latents))),
        };
        if (first.InitImage is { } init)                   // alone (ShapeKey): image to image or inpainting
        {
            var image = Load(init, first, grey: false) * 2 - 1;                            // [1, 3, H, W] in [−1, 1]
            var seeded = options with { Latents = null, Seed = first.Seed };
            var edited = first.Mask is { } mask
                ? pipeline.Inpaint(image, Load(mask, first, grey: true), seeded, first.Strength)
                : pipeline.ImageToImage(image, first.Strength, seeded);
            return new BatchImages(edited.Images, edited.Latents);
        }
        var output = pipeline.Generate(options);
        if (output.Attention is not { } recorder) return new BatchImages(output.Images, output.Latents);
        using (recorder) return new BatchImages(output.Images, output.Latents, WordMaps(pipeline, recorder, batch));
    }

    /// <summary>A validated PNG → [1, 3|1, H, W] in [0, 1] at the request's size (bilinear resize).</summary>
    static Tensor Load(byte[] png, ImageRequest r, bool grey)
    {
        using var picture = SixLabors.ImageSharp.Image.Load<SixLabors.ImageSharp.PixelFormats.Rgb24>(png);
        var pixels = new byte[picture.Width * picture.Height * 3];
        picture.CopyPixelDataTo(pixels);
        var x = tensor(pixels, [1, picture.Height, picture.Width, 3], ScalarType.Byte).permute(0, 3, 1, 2)
            .to_type(ScalarType.Float32) / 255;                                           // [1, 3, h, w]
        if (grey) x = x.mean([1], keepdim: true);                                          // [1, 1, h, w]
        return nn.functional.interpolate(x, [r.Height, r.Width], mode: InterpolationMode.Bilinear,
            align_corners: false).clamp(0, 1);                                             // [1, c, H, W]
    }

    /// <summary>
    /// DAAM per word (<see cref="CrossAttentionRecorder"/>): each token's attention summed over heads, layers and
    /// steps, upsampled (bilinear) to the image, a word's tokens averaged, each map scaled to [0, 1] by its own
    /// minimum and maximum. Only the conditional half of classifier-free guidance is recorded.
    /// </summary>
    static IReadOnlyList<IReadOnlyList<WordAttention>> WordMaps(StableDiffusionPipeline pipeline,
        CrossAttentionRecorder recorder, IReadOnlyList<ImageRequest> batch)
    {
        var first = batch[0];
        var aggregated = recorder.Aggregate(first.Height, first.Width);                    // [B, tokens, H, W]
        return batch.Select((r, i) =>
        {
            var row = aggregated.narrow(0, i, 1);                                          // [1, tokens, H, W]
            return (IReadOnlyList<WordAttention>)CrossAttentionRecorder.Words(pipeline.Tokenizer, r.Prompt)
                .Select(w => new WordAttention(w.Text,
                    CrossAttentionRecorder.Normalise(CrossAttentionRecorder.WordMap(row, w))[0]))   // [H, W]
                .ToList();
        }).ToList();
    }

    /// <summary>The pipeline with this scheduler: one per scheduler name, sharing the models and the text-encoding
    /// cache (only the scheduler config differs), so no request's scheduler leaks into the next.</summary>
    StableDiffusionPipeline Pipeline(string name)
    {
        if (name == "default") return _pipeline;
        if (_bySchedulerName.TryGetValue(name, out var known)) return known;
        var p = _pipeline;
        var pipeline = new StableDiffusionPipeline(p.Tokenizer, p.TextEncoder, p.Unet, p.Vae, _defaultClass,
            (JsonObject)_defaultConfig.DeepClone())
        {
            TextEncodingCache = p.TextEncodingCache, VaeDecodeBatchSize = p.VaeDecodeBatchSize,
        };
        var spec = SamplerSpec.ByShortName[name];
        pipeline.SetScheduler(spec.SchedulerClass, spec.Overrides);
        return _bySchedulerName[name] = pipeline;
    }

    readonly Dictionary<string, StableDiffusionPipeline> _bySchedulerName = [];
}
