using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Nn;
using LdmLab.Training;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// The workloads `ldmlab bench` times (issue: CPU speed): each is built once, then <see cref="Run"/> is one
/// measured repetition inside its own dispose scope. Inputs are seeded; weights are the default init.
/// </summary>
public abstract class StepCase : IDisposable
{
    public abstract void Run();
    public virtual void Dispose() { }

    static readonly (string name, string description, Func<StepCase> create)[] All =
    [
        ("tiny-unet-train", "tiny-unet fixture config, batch 64, 4×8×8 + 7×32 context: forward + MSE + backward",
            () => new UNetTrainStep(batch: 64, size: 8, context: 7)),
        ("tiny-vae-train", "tiny-vae fixture config, batch 64, 3×32×32: forward + MSE + backward", () => new TinyVaeTrain()),
        ("latent-unet-train", "notebooks' class-conditional latent U-Net, batch 64, 4×7×7: loss, backward, clip, AdamW, EMA",
            () => new LatentUNetTrain()),
        ("ddim-50", "50 DDIM steps of the latent U-Net, batch 64, CFG 3 (128 rows per call)", () => new Ddim50()),
        ("vae-decode-64", "notebooks' Fashion-MNIST VAE, decode of 64 latents 4×7×7 → 1×28×28", () => new VaeDecode64()),
        ("t2i-unet-torch", T2I + "TorchSharp float32", () => new TextToImageTorchStep(int8Weights: false)),
        ("t2i-unet-torch-int8w", T2I + "TorchSharp, int8 weight-only Linear/Conv2d (dequantized per forward)",
            () => new TextToImageTorchStep(int8Weights: true)),
        ("t2i-unet-ort", T2I + "ONNX Runtime float32 on the project's export", () => new TextToImageOrtStep(null)),
        ("t2i-unet-ort-int8-dynamic", T2I + "ONNX Runtime int8, dynamic scales, MatMuls (convs float, the default)",
            () => new TextToImageOrtStep(Export.OnnxInt8Mode.Dynamic)),
        ("t2i-unet-ort-int8-dynamic-conv", T2I + "ONNX Runtime int8, dynamic scales, MatMuls and ConvInteger",
            () => new TextToImageOrtStep(Export.OnnxInt8Mode.Dynamic, convolutions: true)),
        ("t2i-unet-ort-int8-static", T2I + "ONNX Runtime int8, static scales from 8 captions × 8 DDIM steps (QDQ)",
            () => new TextToImageOrtStep(Export.OnnxInt8Mode.Static)),
    ];

    const string T2I = "shipped fashion-text2img U-Net, one CFG step (128 rows × 4×7×14 + caption states): ";

    /// <summary>Stable Diffusion 1.5 shapes, on <see cref="Runtime.Lab.Device"/>: run only when named (GPU checks).</summary>
    static readonly (string name, string description, Func<StepCase> create)[] GpuSized =
    [
        ("sd15-unet-train", "SD 1.5 U-Net (860M), batch 1, 4×64×64 + 77×768 context: forward, MSE, backward, AdamW step",
            () => new Sd15UNetTrain()),
        ("sd15-sample-50", "SD 1.5 U-Net, 50 DDIM steps at 4×64×64 with CFG 7.5 (uncond + cond in one batch of 2)",
            () => new Sd15Sample50()),
        ("sd15-unet-step", "SD 1.5 U-Net (860M, default-init weights), one guided step: batch 2 × 4×64×64 + 77×768 " +
                           "context, no gradients (scripts/pytorch_sd15_step.py times the same in PyTorch)",
            () => new Sd15UNetStep(channelsLast: false)),
        ("sd15-unet-step-channels-last", "the same step with the U-Net's convolution weights and activations stored " +
                                         "channels-last (MemoryFormat.ToChannelsLast)",
            () => new Sd15UNetStep(channelsLast: true)),
        ("sd15-unet-step-ort", "the same SD 1.5-shaped step in ONNX Runtime (CPU) on the project's own export " +
                               "of that U-Net (3.4 GB external data in a temp folder)", () => new Sd15UNetStepOrt()),
    ];

    /// <summary>The cases a plain `ldmlab bench --json` runs (the CPU-sized ones).</summary>
    public static string[] Names { get; } = All.Select(c => c.name).ToArray();

    /// <summary>Every case that can be named with --case.</summary>
    public static string[] AllNames { get; } = Named.Select(c => c.name).ToArray();

    /// <summary>Every case: these, then those of other files (named only).</summary>
    static IEnumerable<(string name, string description, Func<StepCase> create)> Named =>
        All.Concat(GpuSized).Concat(PrecisionCases.Cases).Concat(PrecisionCases.Large);

    public static string Describe(string name) => Find(name).description;

    public static StepCase Create(string name) => Find(name).create();

    static (string name, string description, Func<StepCase> create) Find(string name) =>
        Named.FirstOrDefault(c => c.name == name) is { name: not null } c ? c
        : throw new CliArgumentException($"unknown bench case '{name}'; cases: {string.Join(", ", AllNames)}");

    /// <summary>SD 1.5's U-Net with seeded default-init weights, on <paramref name="device"/>, in eval mode.</summary>
    protected static UNet2DConditionModel Sd15Inference(Device device)
    {
        manual_seed(0);
        var unet = new UNet2DConditionModel(UNetConfig.StableDiffusion15);
        unet.to(device);
        unet.eval();
        return unet;
    }

    /// <summary>The tiny-unet fixture's config (diffusers v0.27.2: blocks 32-64, cross-attention dim 32, 8 heads).</summary>
    public static UNetConfig TinyUNetConfig => new()
    {
        SampleSize = 8, BlockOutChannels = [32, 64], LayersPerBlock = 1, CrossAttentionDim = 32, AttentionHeadDim = [8],
        NormNumGroups = 8, DownBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"],
        UpBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D"],
    };

    /// <summary>The tiny-vae fixture's config (blocks 32-64, one layer per block, 8 groups, 4 latent channels).</summary>
    public static AutoencoderKLConfig TinyVaeConfig => new()
    {
        InChannels = 3, OutChannels = 3, LatentChannels = 4, BlockOutChannels = [32, 64], LayersPerBlock = 1,
        NormNumGroups = 8, SampleSize = 32,
    };
}

/// <summary>A training step of the tiny-unet fixture config: batch × 4×size×size latents with a context×32 condition,
/// forward, MSE, backward; optionally with gradient checkpointing of every down, mid and up block.</summary>
sealed class UNetTrainStep : StepCase
{
    readonly UNet2DConditionModel _unet;
    readonly Tensor _z, _t, _c, _target;

    public UNetTrainStep(int batch, int size, int context, bool checkpointing = false)
    {
        manual_seed(0);
        _unet = new UNet2DConditionModel(TinyUNetConfig with { SampleSize = size });
        _unet.train();
        _unet.GradientCheckpointing = checkpointing;
        _z = randn(batch, 4, size, size);                                               // [B, 4, s, s]
        _t = randint(0, 1000, [batch], dtype: ScalarType.Int64);                        // [B]
        _c = randn(batch, context, 32);                                                 // [B, L, 32]
        _target = randn(batch, 4, size, size);
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        _unet.zero_grad();
        nn.functional.mse_loss(_unet.Forward(_z, _t, _c), _target).backward();
    }

    public override void Dispose() => _unet.Dispose();
}

/// <summary>Tiny VAE, batch 64 on 3×32×32: encode → decode of the posterior mean, MSE to the input, backward.</summary>
sealed class TinyVaeTrain : StepCase
{
    readonly AutoencoderKL _vae;
    readonly Tensor _x;

    public TinyVaeTrain()
    {
        manual_seed(0);
        _vae = new AutoencoderKL(TinyVaeConfig);
        _x = rand(64, 3, 32, 32) * 2 - 1;
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        _vae.zero_grad();
        nn.functional.mse_loss(_vae.Forward(_x), _x).backward();
    }
}

/// <summary>
/// The notebooks' latent denoiser training step (FashionLatentRecipe: class-conditional U-Net 32-64 on 4×7×7,
/// batch 64): ε-objective, backward, gradient clipping, AdamW, EMA — what LatentDiffusionTrainer does per step.
/// </summary>
sealed class LatentUNetTrain : StepCase
{
    readonly ClassConditionedUNet _model;
    readonly DiffusionObjective _objective = new(NoiseSchedule.Linear());
    readonly AdamW _optimizer;
    readonly Ema _ema;
    readonly Tensor _z0, _labels;

    public LatentUNetTrain()
    {
        manual_seed(0);
        _model = new ClassConditionedUNet(FashionLatentRecipe.DenoiserConfig, 10);
        _optimizer = new AdamW(_model.named_parameters().Select(kv => (kv.name, kv.parameter)), 1e-3);
        _ema = new Ema(_model, 0.999);
        _z0 = randn(64, 4, 7, 7); _labels = randint(0, 10, [64], dtype: ScalarType.Int64);
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        _optimizer.ZeroGrad();
        _objective.Loss((zt, t) => _model.Forward(zt, t, _labels), _z0).backward();
        nn.utils.clip_grad_norm_(_model.parameters(), 1.0);
        _optimizer.Step();
        _ema.Update(_model);
    }
}

/// <summary>A 50-step DDIM sampling loop of the notebooks' latent denoiser, batch 64 with classifier-free guidance.</summary>
sealed class Ddim50 : StepCase
{
    readonly ClassConditionedUNet _model;
    readonly Scheduler _scheduler = Scheduler.Create("DDIMScheduler", new System.Text.Json.Nodes.JsonObject());
    readonly Tensor _labels;

    public Ddim50()
    {
        manual_seed(0);
        _model = new ClassConditionedUNet(FashionLatentRecipe.DenoiserConfig, 10);
        _model.eval();
        _labels = randint(0, 10, [64], dtype: ScalarType.Int64);
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        FashionLatentRecipe.SampleLatents(_model, _scheduler, _labels, 50, guidance: 3.0);
    }
}

/// <summary>Decoding 64 latents (4×7×7) with the notebooks' Fashion-MNIST KL-VAE (blocks 8-16-32).</summary>
sealed class VaeDecode64 : StepCase
{
    readonly AutoencoderKL _vae;
    readonly Tensor _z;

    public VaeDecode64()
    {
        manual_seed(0);
        _vae = new AutoencoderKL(FashionLatentRecipe.VaeConfig);
        _vae.eval();
        _z = randn(64, 4, 7, 7);
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        _vae.Decode(_z);
    }
}

/// <summary>One SD 1.5 U-Net training step on the lab device (a GPU check: 860M parameters).</summary>
sealed class Sd15UNetTrain : StepCase
{
    readonly UNet2DConditionModel _unet;
    readonly AdamW _optimizer;
    readonly Tensor _z, _t, _c, _target;

    public Sd15UNetTrain()
    {
        manual_seed(0);
        var device = Runtime.Lab.Device;
        _unet = new UNet2DConditionModel(UNetConfig.StableDiffusion15);
        _unet.to(device);
        _optimizer = new AdamW(_unet.named_parameters().Select(kv => (kv.name, kv.parameter)), 1e-5);
        _z = randn(1, 4, 64, 64).to(device);                                             // [1, 4, 64, 64]
        _t = randint(0, 1000, [1], dtype: ScalarType.Int64).to(device);
        _c = randn(1, 77, 768).to(device);                                                // [1, 77, 768]
        _target = randn(1, 4, 64, 64).to(device);
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        _optimizer.ZeroGrad();
        nn.functional.mse_loss(_unet.Forward(_z, _t, _c), _target).backward();
        _optimizer.Step();
        Runtime.Lab.Synchronize();
    }
}

/// <summary>A 50-step DDIM run of the SD 1.5 U-Net with classifier-free guidance, on the lab device.</summary>
sealed class Sd15Sample50 : StepCase
{
    readonly UNet2DConditionModel _unet;
    readonly Tensor _noise, _context;

    public Sd15Sample50()
    {
        var device = Runtime.Lab.Device;
        _unet = Sd15Inference(device);
        _noise = randn(1, 4, 64, 64).to(device);
        _context = randn(2, 77, 768).to(device);                                          // [uncond; cond]
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var scheduler = Scheduler.Create("DDIMScheduler", new System.Text.Json.Nodes.JsonObject
        {
            ["beta_schedule"] = "scaled_linear", ["beta_start"] = 0.00085, ["beta_end"] = 0.012, ["clip_sample"] = false,
            ["set_alpha_to_one"] = false, ["steps_offset"] = 1,
        });
        Sampling.Sample(scheduler, (z, t) =>
        {
            var both = _unet.Forward(cat([z, z]), tensor((long)t, device: z.device), _context).chunk(2);
            return both[0] + 7.5 * (both[1] - both[0]);
        }, _noise, 50);
        Runtime.Lab.Synchronize();
    }
}

/// <summary>One classifier-free-guided step of the SD 1.5 U-Net at a 512² image's latents: a forward of batch 2.
/// </summary>
sealed class Sd15UNetStep : StepCase
{
    readonly UNet2DConditionModel _unet;
    readonly Tensor _z, _c;

    public Sd15UNetStep(bool channelsLast)
    {
        var device = Runtime.Lab.Device;
        _unet = Sd15Inference(device);
        if (channelsLast) _unet.ToChannelsLast();
        _z = randn(2, 4, 64, 64).to(device);                                              // [uncond; cond] latents
        _c = randn(2, 77, 768).to(device);                                                // [2, 77, 768]
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        _unet.Forward(_z, tensor(500L, device: _z.device), _c);
        Runtime.Lab.Synchronize();
    }

    public override void Dispose() => _unet.Dispose();
}
