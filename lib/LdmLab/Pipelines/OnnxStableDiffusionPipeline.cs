using System.Text.Json.Nodes;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Interop;
using LdmLab.Interop.Onnx;
using static TorchSharp.torch;

namespace LdmLab.Pipelines;

/// <summary>
/// diffusers' OnnxStableDiffusionPipeline: text to image (and image to image, with vae_encoder) from an ONNX Stable
/// Diffusion folder (unet/, vae_encoder/, vae_decoder/, text_encoder/ with model.onnx; tokenizer/; scheduler/;
/// model_index.json — what Export.OnnxExport.SavePipeline writes), the networks in ONNX Runtime and everything else
/// LdmLab's own: the tokenizer, the schedulers (<see cref="Scheduler.Create"/>), the sampling loops
/// (<see cref="Sampling"/>) and classifier-free guidance (<see cref="Guidance.Apply"/>: one U-Net call on [∅; c]), so
/// that for the same options and seed it computes what <see cref="StableDiffusionPipeline.Generate"/> and
/// <see cref="StableDiffusionPipeline.ImageToImage"/> compute. The latent scale is vae_decoder/config.json's
/// scaling_factor (0.18215, diffusers' ONNX pipeline's constant, when the folder has none).
/// </summary>
public sealed class OnnxStableDiffusionPipeline : IDisposable
{
    public ClipTokenizer Tokenizer { get; }
    public OnnxSession TextEncoder { get; }
    public OnnxSession Unet { get; }
    public OnnxSession VaeDecoder { get; }
    /// <summary>vae_encoder/model.onnx when the folder has it (image to image needs it).</summary>
    public OnnxSession? VaeEncoder { get; }
    public string SchedulerClass { get; }
    public JsonObject SchedulerConfig { get; }
    public double ScalingFactor { get; }
    /// <summary>2^(levels − 1) of the VAE (8 when vae_decoder/config.json is absent).</summary>
    public int VaeScaleFactor { get; }
    public int LatentChannels { get; }
    /// <summary>The U-Net's in_channels: the latent channels, or 2c + 1 for an inpainting U-Net.</summary>
    public int UNetInChannels { get; }
    /// <summary>The U-Net's sample_size: the default latent grid (64 when unet/config.json is absent).</summary>
    public int SampleSize { get; }

    OnnxStableDiffusionPipeline(string dir, int? threads)
    {
        var index = Path.Combine(dir, "model_index.json");
        var m = ConfigFile.Read(index, json => json);
        foreach (var component in new[] { "unet", "vae_decoder", "text_encoder", "tokenizer", "scheduler" })
            if (m[component] is not JsonArray { Count: 2 })
                throw new DatasetException(index, $"no '{component}' component (an ONNX Stable Diffusion folder " +
                                                  "names unet, vae_decoder, text_encoder, tokenizer, scheduler)");
        SchedulerClass = m["scheduler"]![1]?.ToString()
                         ?? throw new DatasetException(index, "the scheduler component names no class");
        var schedulerPath = Path.Combine(dir, "scheduler", "scheduler_config.json");
        var schedulerClass = SchedulerClass;
        SchedulerConfig = ConfigFile.Read(schedulerPath, json =>
        {
            Scheduler.Create(schedulerClass, json);       // read once here, so a bad config is named against its file
            return json;
        });
        Tokenizer = ClipTokenizer.FromFolder(Path.Combine(dir, "tokenizer"));
        var vae = Optional(Path.Combine(dir, "vae_decoder", "config.json"));
        var unet = Optional(Path.Combine(dir, "unet", "config.json"));
        ScalingFactor = (double?)vae?["scaling_factor"] ?? 0.18215;
        VaeScaleFactor = vae?["block_out_channels"] is JsonArray levels ? 1 << (levels.Count - 1) : 8;
        LatentChannels = (int?)vae?["latent_channels"] ?? (int?)unet?["in_channels"] ?? 4;
        SampleSize = (int?)unet?["sample_size"] ?? 64;
        UNetInChannels = (int?)unet?["in_channels"] ?? LatentChannels;
        TextEncoder = new OnnxSession(Path.Combine(dir, "text_encoder", "model.onnx"), threads);
        Unet = new OnnxSession(Path.Combine(dir, "unet", "model.onnx"), threads);
        VaeDecoder = new OnnxSession(Path.Combine(dir, "vae_decoder", "model.onnx"), threads);
        var encoder = Path.Combine(dir, "vae_encoder", "model.onnx");
        if (File.Exists(encoder)) VaeEncoder = new OnnxSession(encoder, threads);
    }

    static JsonObject? Optional(string path) => File.Exists(path) ? ConfigFile.Read(path, json => json) : null;

    /// <summary>Opens the folder; names the file and what was expected when something is missing.</summary>
    public static OnnxStableDiffusionPipeline FromFolder(string dir, int? threads = null)
    {
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{dir}: no such folder");
        return new OnnxStableDiffusionPipeline(dir, threads);
    }

    /// <summary>Prompt embeddings [B, 77, d]: text_encoder's last_hidden_state (clip_skip none).</summary>
    public Tensor EncodePrompts(IReadOnlyList<string> prompts)
    {
        var ids = stack(prompts.Select(p => tensor(Tokenizer.Encode(p).Ids)).ToArray());           // [B, 77]
        return TextEncoder.Run(new Dictionary<string, Tensor> { ["input_ids"] = ids }, "last_hidden_state")
            ["last_hidden_state"];                                                                  // [B, 77, d]
    }

    /// <summary>Text to image with <see cref="StableDiffusionPipeline"/>'s options and defaults (prompt weights and
    /// attention recording are TorchSharp-only).</summary>
    public PipelineOutput Generate(GenerationOptions o)
    {
        using var _ = no_grad();
        var (cond, uncond) = Embeddings(o);                                                         // [B, 77, d]
        int height = o.Height ?? SampleSize * VaeScaleFactor, width = o.Width ?? SampleSize * VaeScaleFactor;
        if (height % VaeScaleFactor != 0 || width % VaeScaleFactor != 0)
            throw new ArgumentException(
                $"height and width must be multiples of {VaeScaleFactor} (got {height}×{width})", nameof(o));
        long[] shape = [cond.shape[0], LatentChannels, height / VaeScaleFactor, width / VaeScaleFactor];
        Tensor noise;
        if (o.Latents is { } latentsGiven)
        {
            if (!latentsGiven.shape.SequenceEqual(shape))
                throw new ArgumentException($"latents must be [{string.Join(", ", shape)}], got " +
                                            $"[{string.Join(", ", latentsGiven.shape)}]", nameof(o));
            noise = latentsGiven;
        }
        else
        {
            using var seeded = Seeded(o);
            noise = randn(shape, generator: o.Generator ?? seeded);                                // x_T [B, c, h, w]
        }
        var latents = Sampling.Sample(NewScheduler(o), Guided(cond, uncond, o), noise, o.Steps, Callback(o));
        return new PipelineOutput(Decode(latents), latents, cond, uncond);
    }

    /// <summary>
    /// Image to image as <see cref="StableDiffusionPipeline.ImageToImage"/> computes it, with vae_encoder: the
    /// images [B, 3, H, W] in [−1, 1] → latent_parameters → a posterior sample × scaling_factor, noised to the
    /// timestep that <paramref name="strength"/> selects and denoised from there; the posterior draw and then the
    /// noise come from the seed's generator, in diffusers' order.
    /// </summary>
    public PipelineOutput ImageToImage(Tensor images, double strength, GenerationOptions o)
    {
        if (strength is < 0 or > 1)
            throw new ArgumentOutOfRangeException(nameof(strength), strength, "strength must lie in [0, 1]");
        var encoder = VaeEncoder ?? throw new InvalidOperationException(
            "this ONNX folder has no vae_encoder/model.onnx to encode the image with");
        using var _ = no_grad();
        var (cond, uncond) = Embeddings(o);
        if (images.dim() != 4 || images.shape[0] != cond.shape[0])
            throw new ArgumentException($"image must be [{cond.shape[0]}, C, H, W] in [-1, 1], got " +
                                        $"[{string.Join(", ", images.shape)}]", nameof(images));
        var moments = encoder.Run(new Dictionary<string, Tensor> { ["sample"] = images }, "latent_parameters")
            ["latent_parameters"];                                                                  // [B, 2c, h, w]
        var posterior = new Autoencoders.DiagonalGaussian(moments);
        using var seeded = Seeded(o);
        var generator = o.Generator ?? seeded;
        var x0 = posterior.Sample(randn(posterior.Mean.shape, generator: generator)) * ScalingFactor;
        var noise = randn(x0.shape, generator: generator);                                         // [B, c, h, w]
        var latents = Sampling.Img2Img(NewScheduler(o), Guided(cond, uncond, o), x0, noise, o.Steps, strength,
            Callback(o));
        return new PipelineOutput(Decode(latents), latents, cond, uncond);
    }

    /// <summary>The prompt embeddings c and, when guidance is on, the ∅ rows (negative prompts or "").</summary>
    (Tensor cond, Tensor? uncond) Embeddings(GenerationOptions o)
    {
        if (o.WeightedPrompts || o.RecordAttention)
            throw new NotSupportedException("the ONNX pipeline has no prompt weights or attention recording");
        if (UNetInChannels != LatentChannels)
            throw new NotSupportedException($"this U-Net takes {UNetInChannels} channels (an inpainting U-Net); " +
                                            "the ONNX pipeline draws text to image and image to image only");
        var cond = o.PromptEmbeds ?? EncodePrompts(o.Prompts);                                     // [B, 77, d]
        if (!Guidance.Enabled(o.GuidanceScale)) return (cond, null);
        if (o.NegativePromptEmbeds is { } given) return (cond, given);
        long b = cond.shape[0];
        var negatives = o.NegativePrompts ?? Enumerable.Repeat("", (int)b).ToArray();
        if (negatives.Length != b)
            throw new ArgumentException($"{negatives.Length} negative prompts for {b} prompts (one each, or none)",
                nameof(o));
        return (cond, EncodePrompts(negatives));
    }

    /// <summary>The sampler's denoiser: ε̂(z, t, c) alone, or guided on [∅; c] in one U-Net call.</summary>
    Diffusion.Denoiser Guided(Tensor cond, Tensor? uncond, GenerationOptions o) => (z, t) => uncond is null
        ? PredictNoise(z, tensor((float)t), cond)
        : Guidance.Apply(PredictNoise, z, tensor((float)t), cond, uncond, o.GuidanceScale);

    /// <summary>A fresh scheduler per call (no multistep history leaks), with DDIM's η.</summary>
    Scheduler NewScheduler(GenerationOptions o)
    {
        var scheduler = Scheduler.Create(SchedulerClass, SchedulerConfig);
        if (scheduler is DdimScheduler ddim) ddim.Eta = o.Eta;
        return scheduler;
    }

    static Generator? Seeded(GenerationOptions o) =>
        o.Generator is null && o.Seed is long seed ? new Generator((ulong)seed) : null;

    static Action<SamplingStep>? Callback(GenerationOptions o) => o.Callback is null ? null
        : s => o.Callback(new PipelineStep(s.Index, s.Timestep, s.PrevSample, s.PredOriginalSample));

    /// <summary>ε̂ for latents [N, c, h, w], a scalar timestep and context [N, L, d].</summary>
    Tensor PredictNoise(Tensor latents, Tensor timestep, Tensor context) =>
        Unet.Run(new Dictionary<string, Tensor>
        {
            ["sample"] = latents, ["timestep"] = timestep, ["encoder_hidden_states"] = context,
        }, "out_sample")["out_sample"];

    /// <summary>Latents → images in [0, 1]: decode(z / scaling_factor) clamped to [−1, 1], then x/2 + ½.</summary>
    public Tensor Decode(Tensor latents)
    {
        var images = VaeDecoder.Run(new Dictionary<string, Tensor> { ["latent_sample"] = latents / ScalingFactor },
            "sample")["sample"];                                                                    // [B, 3, H, W]
        return (images.clamp(-1, 1) / 2 + 0.5).clamp(0, 1);
    }

    public void Dispose()
    {
        TextEncoder.Dispose();
        Unet.Dispose();
        VaeDecoder.Dispose();
        VaeEncoder?.Dispose();
    }
}
