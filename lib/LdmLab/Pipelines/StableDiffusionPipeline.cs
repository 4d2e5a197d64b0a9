using System.Text.Json;
using System.Text.Json.Nodes;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Interop;
using LdmLab.Nn;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Pipelines;

/// <summary>What the per-step callback sees: step index, timestep, latents after the step, predicted x̂₀ (if any).</summary>
public sealed record PipelineStep(int Index, double Timestep, Tensor Latents, Tensor? PredictedOriginal);

/// <summary>The images [B, 3, H, W] in [0, 1], the final latents, and the prompt embeddings the U-Net saw.</summary>
public sealed record PipelineOutput(Tensor Images, Tensor Latents, Tensor PromptEmbeds, Tensor? NegativePromptEmbeds)
{
    /// <summary>Every cross-attention layer's maps, when <see cref="GenerationOptions.RecordAttention"/> asked for
    /// them (the caller disposes it).</summary>
    public CrossAttentionRecorder? Attention { get; init; }

    /// <summary>Image i as an 8-bit RGB picture (save with ImageSharp's SaveAsPng).</summary>
    public SixLabors.ImageSharp.Image<SixLabors.ImageSharp.PixelFormats.Rgb24> Picture(int i) =>
        Viz.Images.ToImage(Images[i], lo: 0, hi: 1);
}

/// <summary>The options of one text-to-image (or image-to-image) call, with diffusers' defaults.</summary>
public sealed record GenerationOptions
{
    public string[] Prompts { get; init; } = [""];
    /// <summary>One per prompt, or null for "" (the unconditional embedding).</summary>
    public string[]? NegativePrompts { get; init; }
    public int Steps { get; init; } = 50;
    /// <summary>w in ε̂ = ε̂(∅) + w (ε̂(c) − ε̂(∅)); w ≤ 1 skips the unconditional pass (diffusers' rule).</summary>
    public double GuidanceScale { get; init; } = 7.5;
    public double Eta { get; init; }
    /// <summary>Default: the U-Net's sample_size × the VAE's scale factor.</summary>
    public int? Height { get; init; }
    public int? Width { get; init; }
    /// <summary>Seeds a CPU torch.Generator for the initial latents (the same draws as diffusers' CPU generator).</summary>
    public long? Seed { get; init; }
    public Generator? Generator { get; init; }
    /// <summary>x_T, before scaling by the scheduler's init_noise_sigma (as diffusers' latents argument).</summary>
    public Tensor? Latents { get; init; }
    public Tensor? PromptEmbeds { get; init; }
    public Tensor? NegativePromptEmbeds { get; init; }
    /// <summary>Opt-in A1111 emphasis "(word:1.3)" (see <see cref="PromptWeights"/>).</summary>
    public bool WeightedPrompts { get; init; }
    public Action<PipelineStep>? Callback { get; init; }
    /// <summary>Record the cross-attention maps while sampling (<see cref="PipelineOutput.Attention"/>).</summary>
    public bool RecordAttention { get; init; }
    /// <summary>A sampler-side step on the latents (<see cref="AttendAndExcite"/>, <see cref="LayoutSteering"/>);
    /// null: plain sampling.</summary>
    public AttentionSteering? Steering { get; init; }
}

/// <summary>
/// diffusers' StableDiffusionPipeline: tokenizer → CLIP text encoder → U-Net denoising in the VAE's latent space with
/// classifier-free guidance → VAE decoder. Folders in diffusers' layout load and save (model_index.json, unet/, vae/,
/// text_encoder/, tokenizer/, scheduler/). Every call builds a fresh scheduler from the stored config, so multistep
/// history never leaks between calls. Models run on the device their weights are on (<see cref="To"/>).
/// </summary>
public sealed partial class StableDiffusionPipeline
{
    public ClipTokenizer Tokenizer { get; private set; }
    public ClipTextModel TextEncoder { get; }
    public UNet2DConditionModel Unet { get; }
    public AutoencoderKL Vae { get; }
    public string SchedulerClass { get; private set; }
    public JsonObject SchedulerConfig { get; private set; }

    public StableDiffusionPipeline(ClipTokenizer tokenizer, ClipTextModel textEncoder, UNet2DConditionModel unet,
        AutoencoderKL vae, string schedulerClass, JsonObject schedulerConfig)
    {
        if (textEncoder.Config.HiddenSize != unet.Config.CrossAttentionDim)
            throw new ArgumentException($"the text encoder's hidden size {textEncoder.Config.HiddenSize} is not the U-Net's " +
                                        $"cross_attention_dim {unet.Config.CrossAttentionDim}");
        int latent = vae.Config.LatentChannels;
        if (unet.Config.InChannels != latent && unet.Config.InChannels != 2 * latent + 1)
            throw new ArgumentException($"the VAE has {latent} latent channels, the U-Net takes " +
                                        $"{unet.Config.InChannels} (expected {latent}, or {2 * latent + 1} for an " +
                                        "inpainting U-Net)");
        Tokenizer = tokenizer; TextEncoder = textEncoder; Unet = unet; Vae = vae;
        SchedulerClass = schedulerClass; SchedulerConfig = schedulerConfig;
        _ = NewScheduler();   // fail now on an unsupported scheduler, not at the first call
    }

    /// <summary>2^(levels − 1): how much the VAE downsamples.</summary>
    public int VaeScaleFactor => 1 << (Vae.Config.BlockOutChannels.Length - 1);

    public Device Device => Unet.parameters().First().device;

    /// <summary>Moves every model to a device (e.g. <c>Lab.Device</c>); returns this pipeline.</summary>
    public StableDiffusionPipeline To(Device device)
    {
        TextEncoder.to(device); Unet.to(device); Vae.to(device);
        return this;
    }

    /// <summary>
    /// Half precision for sampling (diffusers' <c>pipe.to(torch_dtype=torch.bfloat16)</c>): the text encoder, the
    /// U-Net and — unless <paramref name="vaeInFloat32"/> — the VAE get <paramref name="dtype"/> weights and compute
    /// (<see cref="Nn.HalfPrecision.ToPrecision{T}"/>: normalisation layers stay float32); latents, the scheduler and
    /// the images stay float32. <see cref="ScalarType.Float32"/> undoes it. Returns this pipeline.
    /// </summary>
    public StableDiffusionPipeline To(ScalarType dtype, bool vaeInFloat32 = false)
    {
        TextEncoder.ToPrecision(dtype); Unet.ToPrecision(dtype);
        Vae.ToPrecision(vaeInFloat32 ? ScalarType.Float32 : dtype);
        TextEncodingCache?.Clear();                                     // the cached embeddings came from the old weights
        return this;
    }

    /// <summary>Another scheduler from <see cref="Scheduler.ClassNames"/>, keeping the training-schedule settings.</summary>
    public void SetScheduler(string className, JsonObject? overrides = null)
    {
        var config = (JsonObject)SchedulerConfig.DeepClone();
        foreach (var (k, v) in overrides ?? []) config[k] = v?.DeepClone();
        _ = Scheduler.Create(className, config);
        SchedulerClass = className; SchedulerConfig = config;
    }

    public Scheduler NewScheduler() => Scheduler.Create(SchedulerClass, SchedulerConfig);

    /// <summary>
    /// Prompt → embeddings, least recently used evicted (section 10.5.4): repeated prompts — the empty negative
    /// prompt of every call, a sweep over guidance scales or seeds — skip the text encoder. Null (the default): every
    /// prompt is encoded. The pipeline clears it when it changes its own tokenizer or text encoder (textual
    /// inversion, LoRA, <see cref="To(ScalarType, bool)"/>); clear it after changing their weights any other way.
    /// </summary>
    public TextEncodingCache? TextEncodingCache { get; set; }

    /// <summary>Turns the <see cref="TextEncodingCache"/> on with room for <paramref name="capacity"/> prompts.
    /// </summary>
    public TextEncodingCache EnableTextEncodingCache(int capacity = 256)
    {
        TextEncodingCache?.Dispose();
        return TextEncodingCache = new TextEncodingCache(capacity);
    }

    /// <summary>Prompt embeddings [B, 77·chunks, d]: last_hidden_state of the text encoder (as diffusers, clip_skip none).
    /// With weights, each token's state is scaled and the prompt's mean restored (A1111 "emphasis: original").
    /// Each prompt comes from the <see cref="TextEncodingCache"/> when it is on and holds it.</summary>
    public Tensor EncodePrompts(IReadOnlyList<string> prompts, bool weighted = false)
    {
        using var _ = no_grad();
        var rows = new List<Tensor>();
        foreach (var prompt in prompts)
            rows.Add(TextEncodingCache is { } cache
                ? cache.GetOrAdd((weighted ? "weighted\u0000" : "plain\u0000") + prompt,
                    () => EncodePrompt(prompt, weighted))
                : EncodePrompt(prompt, weighted));
        int width = (int)rows.Max(r => r.shape[1]);
        if (rows.Any(r => r.shape[1] != width))
            throw new ArgumentException("weighted prompts of different chunk counts cannot be batched: pass them one by one");
        return cat(rows.ToArray(), 0);
    }

    /// <summary>One prompt's embeddings [1, 77·chunks, d].</summary>
    Tensor EncodePrompt(string prompt, bool weighted)
    {
        var chunks = weighted ? Tokenizer.EncodeChunks(prompt, weighted: true) : [Tokenizer.Encode(prompt)];
        var states = chunks.Select(c =>
        {
            var ids = tensor(c.Ids, device: Device).unsqueeze(0);                              // [1, 77]
            var h = TextEncoder.Forward(ids).LastHiddenState;                                  // [1, 77, d]
            if (!weighted) return h;
            var w = tensor(c.Weights, device: Device).reshape(1, -1, 1);
            var meanBefore = h.mean();
            var scaled = h * w;
            return scaled * (meanBefore / scaled.mean());
        });
        return cat(states.ToArray(), 1);
    }

    /// <summary>Text to image: prompt embeddings → <see cref="LatentDiffusionPipeline.Generate"/> → images in [0, 1].</summary>
    public PipelineOutput Generate(GenerationOptions o)
    {
        if (IsInpaintingUNet)
            throw new InvalidOperationException($"this U-Net takes {Unet.Config.InChannels} channels (an inpainting " +
                                                "U-Net): call Inpaint with an image and a mask");
        using var _ = no_grad();
        var (cond, uncond) = Embeddings(o);
        int height = o.Height ?? Unet.Config.SampleSize * VaeScaleFactor, width = o.Width ?? Unet.Config.SampleSize * VaeScaleFactor;
        if (height % VaeScaleFactor != 0 || width % VaeScaleFactor != 0)
            throw new ArgumentException($"height and width must be multiples of {VaeScaleFactor} (got {height}×{width})");
        var output = Core().Generate(cond, CoreOptions(o, uncond) with
        {
            LatentSize = [height / VaeScaleFactor, width / VaeScaleFactor],
            Latents = o.Latents,
            RecordAttention = o.RecordAttention,
            Steering = o.Steering,
        });
        return new PipelineOutput(ToUnitRange(output.Images!), output.Latents, cond, uncond)
        {
            Attention = output.Attention,
        };
    }

    /// <summary>
    /// Image to image (diffusers' StableDiffusionImg2ImgPipeline) through
    /// <see cref="LatentDiffusionPipeline.ImageToImage"/>: the image [B, 3, H, W] in [−1, 1] is encoded, noised to
    /// the timestep that <paramref name="strength"/> selects and denoised from there.
    /// </summary>
    public PipelineOutput ImageToImage(Tensor image, double strength, GenerationOptions o)
    {
        using var _ = no_grad();
        var (cond, uncond) = Embeddings(o);
        var output = Core().ImageToImage(cond, image, strength, CoreOptions(o, uncond));
        return new PipelineOutput(ToUnitRange(output.Images!), output.Latents, cond, uncond);
    }

    /// <summary>
    /// Inpainting through <see cref="LatentDiffusionPipeline.Inpaint"/>: <paramref name="image"/> [B, 3, H, W] in
    /// [−1, 1], <paramref name="mask"/> [B, 1, H, W] with 1 where the prompt is to be painted (diffusers' white).
    /// Ordinary U-Nets use blended latents, 9-channel inpainting U-Nets their mask conditioning.
    /// </summary>
    public PipelineOutput Inpaint(Tensor image, Tensor mask, GenerationOptions o, double strength = 1.0)
    {
        using var _ = no_grad();
        var (cond, uncond) = Embeddings(o);
        var output = Core().Inpaint(cond, image, mask, CoreOptions(o, uncond), strength);
        return new PipelineOutput(ToUnitRange(output.Images!), output.Latents, cond, uncond);
    }

    /// <summary>True for a U-Net that takes [z, mask, masked-image latents] (2c + 1 channels).</summary>
    public bool IsInpaintingUNet => Unet.Config.InChannels == 2 * Vae.Config.LatentChannels + 1;

    (Tensor cond, Tensor? uncond) Embeddings(GenerationOptions o)
    {
        var cond = o.PromptEmbeds?.to(Device) ?? EncodePrompts(o.Prompts, o.WeightedPrompts);
        if (!Guidance.Enabled(o.GuidanceScale)) return (cond, null);
        if (o.NegativePromptEmbeds is { } given) return (cond, given.to(Device));
        var negatives = o.NegativePrompts ?? Enumerable.Repeat("", (int)cond.shape[0]).ToArray();
        if (negatives.Length != cond.shape[0])
            throw new ArgumentException($"{negatives.Length} negative prompts for {cond.shape[0]} prompts (give one each, or none)");
        return (cond, EncodePrompts(negatives, o.WeightedPrompts));
    }

    /// <summary>The generic pipeline over this one's U-Net (prompt embeddings as conditions), VAE and scheduler.</summary>
    LatentDiffusionPipeline Core() =>
        _core ??= new(new EmbeddingConditionedUNet(Unet, () => EncodePrompts([""])[0]), Vae, NewScheduler);

    LatentDiffusionPipeline? _core;

    LatentGenerationOptions CoreOptions(GenerationOptions o, Tensor? uncond) => new()
    {
        Steps = o.Steps, GuidanceScale = o.GuidanceScale, Negative = uncond, Seed = o.Seed, Generator = o.Generator,
        Eta = o.Eta, DecodeBatchSize = VaeDecodeBatchSize, Callback = o.Callback is null ? null
            : s => o.Callback(new PipelineStep(s.Index, s.Timestep, s.PrevSample, s.PredOriginalSample)),
    };

    /// <summary>[−1, 1] → [0, 1], as diffusers' image processor postprocesses.</summary>
    static Tensor ToUnitRange(Tensor images) => (images / 2 + 0.5).clamp(0, 1);

    /// <summary>Latents → images in [0, 1]: decode(z / scaling_factor), then (x/2 + 0.5) clamped.</summary>
    public Tensor Decode(Tensor latents) => ToUnitRange(Core().Decode(latents, VaeDecodeBatchSize));

    /// <summary>
    /// Decode at most this many latents per VAE call (diffusers' VAE slicing); null (the default): all at once. The
    /// images are the same either way (each is decoded on its own; GroupNorm normalises per image).
    /// </summary>
    public int? VaeDecodeBatchSize
    {
        get => _vaeDecodeBatchSize;
        set => _vaeDecodeBatchSize = value is < 1
            ? throw new ArgumentOutOfRangeException(nameof(value), value, "a decode batch size must be ≥ 1")
            : value;
    }

    int? _vaeDecodeBatchSize;

    /// <summary>diffusers' <c>enable_vae_slicing</c>: decode one image at a time.</summary>
    public void EnableVaeSlicing() => VaeDecodeBatchSize = 1;

    /// <summary>diffusers' <c>disable_vae_slicing</c>: decode the whole batch in one call.</summary>
    public void DisableVaeSlicing() => VaeDecodeBatchSize = null;

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>
    /// Reads a diffusers StableDiffusionPipeline from a folder or a hub repo id ("owner/name", fetched into or found in
    /// huggingface_hub's cache: <see cref="Interop.Hub.PretrainedSource"/>); names the file and what was expected on
    /// bad input. <paramref name="hub"/>: revision, variant (e.g. "fp16" weights, widened to float32), token, offline;
    /// null reads huggingface_hub's environment variables (HF_HOME, HF_HUB_OFFLINE, HF_TOKEN…) as diffusers does.
    /// </summary>
    public static StableDiffusionPipeline FromPretrained(string dirOrRepoId, Interop.Hub.HubOptions? hub = null)
    {
        var dir = Interop.Hub.PretrainedSource.Resolve(dirOrRepoId, hub);
        var variant = hub?.Variant;                           // a local folder's variant files too, as in diffusers
        var index = Path.Combine(dir, "model_index.json");
        if (!File.Exists(index)) throw new FileNotFoundException($"{index}: not a diffusers pipeline folder (no model_index.json)", index);
        var m = ConfigFile.Read(index, json => json);
        string Component(string name, string expected)
        {
            var cls = (m[name] as JsonArray)?[1]?.ToString();
            if (cls is null) throw new FormatException($"{index}: no '{name}' component");
            if (expected != "*" && cls != expected)
                throw new NotSupportedException($"{index}: {name} is a {cls}; LdmLab reads {expected}");
            var sub = Path.Combine(dir, name);
            if (!Directory.Exists(sub)) throw new DirectoryNotFoundException($"{sub}: the {name} folder named in {index} is missing");
            return cls;
        }
        Component("unet", "UNet2DConditionModel");
        Component("vae", "AutoencoderKL");
        Component("text_encoder", "CLIPTextModel");
        Component("tokenizer", "*");
        var schedulerClass = Component("scheduler", "*");
        var schedulerPath = Path.Combine(dir, "scheduler", "scheduler_config.json");
        // built once here so that a config LdmLab cannot use is reported against its file
        var schedulerConfig = ConfigFile.Read(schedulerPath, json => { Scheduler.Create(schedulerClass, json); return json; });
        return new StableDiffusionPipeline(ClipTokenizer.FromFolder(Path.Combine(dir, "tokenizer")),
            ClipTextModel.FromPretrained(Path.Combine(dir, "text_encoder"), variant),
            UNet2DConditionModel.FromPretrained(Path.Combine(dir, "unet"), variant),
            AutoencoderKL.FromPretrained(Path.Combine(dir, "vae"), variant),
            schedulerClass, schedulerConfig);
    }

    /// <summary>scheduler_config.json in <paramref name="dir"/>: the config with its _class_name, as diffusers
    /// writes a pipeline's scheduler/ folder.</summary>
    public void SaveSchedulerConfig(string dir)
    {
        Directory.CreateDirectory(dir);
        var scheduler = (JsonObject)SchedulerConfig.DeepClone();
        scheduler["_class_name"] = SchedulerClass;
        scheduler["_diffusers_version"] = "0.27.2";
        Data.AtomicFile.WriteAllText(Path.Combine(dir, "scheduler_config.json"), scheduler.ToJsonString(Indented));
    }

    /// <summary>Writes the folder as diffusers writes it (model_index.json last, so a half-written folder has none).</summary>
    public void SavePretrained(string dir)
    {
        Directory.CreateDirectory(dir);
        Unet.SavePretrained(Path.Combine(dir, "unet"));
        Vae.SavePretrained(Path.Combine(dir, "vae"));
        TextEncoder.SavePretrained(Path.Combine(dir, "text_encoder"));
        Tokenizer.SavePretrained(Path.Combine(dir, "tokenizer"));
        SaveSchedulerConfig(Path.Combine(dir, "scheduler"));
        var index = new JsonObject
        {
            ["_class_name"] = "StableDiffusionPipeline", ["_diffusers_version"] = "0.27.2",
            ["feature_extractor"] = new JsonArray(null, null), ["image_encoder"] = new JsonArray(null, null),
            ["requires_safety_checker"] = false, ["safety_checker"] = new JsonArray(null, null),
            ["scheduler"] = new JsonArray("diffusers", SchedulerClass), ["text_encoder"] = new JsonArray("transformers", "CLIPTextModel"),
            ["tokenizer"] = new JsonArray("transformers", "CLIPTokenizer"), ["unet"] = new JsonArray("diffusers", "UNet2DConditionModel"),
            ["vae"] = new JsonArray("diffusers", "AutoencoderKL"),
        };
        Data.AtomicFile.WriteAllText(Path.Combine(dir, "model_index.json"), index.ToJsonString(Indented));
    }
}

/// <summary>
/// A U-Net conditioned on prompt embeddings [B, L, d] as a <see cref="ConditionalDenoiser"/>, so that Stable
/// Diffusion samples through <see cref="LatentDiffusionPipeline"/>; the null condition is the empty prompt's
/// embedding (<paramref name="nullEmbedding"/>, computed when first asked for).
/// </summary>
public sealed class EmbeddingConditionedUNet : ConditionalDenoiser
{
    readonly UNet2DConditionModel unet;
    readonly Lazy<Tensor> _null;

    public EmbeddingConditionedUNet(UNet2DConditionModel unet, Func<Tensor> nullEmbedding)
        : base(nameof(EmbeddingConditionedUNet))
    {
        this.unet = unet;
        _null = new Lazy<Tensor>(nullEmbedding);
        RegisterComponents();
    }

    public override UNet2DConditionModel Backbone => unet;

    public override Tensor Forward(Tensor zt, Tensor t, Tensor embeddings) => unet.Forward(zt, t, embeddings);

    public override Tensor NullCondition => _null.Value;
}

/// <summary>The lab's text-conditioned models as diffusers pipelines.</summary>
public static class TextConditionedPipelines
{
    /// <summary>
    /// A diffusers-layout pipeline over this model's text encoder and U-Net (the same modules, not copies), with the
    /// given VAE and scheduler: prompts, negative prompts, any sampler, img2img.
    /// </summary>
    public static StableDiffusionPipeline ToPipeline(this TextConditionedUNet model, AutoencoderKL vae,
        string schedulerClass, JsonObject schedulerConfig) =>
        new(model.Tokenizer, model.TextEncoder, model.Backbone, vae, schedulerClass, schedulerConfig);
}
