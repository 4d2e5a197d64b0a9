using System.Text.Json;
using System.Text.Json.Nodes;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Nn;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// Bench cases of issue 26's half precision and memory tricks (sections 10.4.7, 10.5.4), run only when named
/// (`ldmlab bench --json --case …`); `bench --json` reports each case's peak resident memory beside its time.
/// Every pair differs in the one trick it measures.
/// </summary>
static class PrecisionCases
{
    /// <summary>The cases, CPU-sized.</summary>
    public static readonly (string name, string description, Func<StepCase> create)[] Cases =
    [
        .. Unet("t2i-unet-step", "the text-to-image lab's U-Net (notebooks 05/06), one guided step of 100 prompts: " +
                                 "batch 200 × 4×7×14 + 20×32 context, no gradients", () => new LabUNetStep()),
        ("attention-fused", "one SD-level-1 self-attention layer (320 wide, 8 heads of 40), 2 × 4096 tokens, " +
                            "no gradients: LibTorch's fused kernel", () => new AttentionLayer(AttentionKind.Fused)),
        ("attention-explicit", "the same layer, explicit softmax(QKᵀ/√d)V (what an observer or upcasting runs)",
            () => new AttentionLayer(AttentionKind.Explicit)),
        ("attention-sliced", "the same layer sliced over batch·heads, 4 of 16 rows at a time (diffusers' \"auto\")",
            () => new AttentionLayer(AttentionKind.Sliced)),
        ("attention-sliced-1", "the same layer sliced one batch·head row at a time (diffusers' \"max\")",
            () => new AttentionLayer(AttentionKind.SlicedOne)),
        ("unet-train-plain", "tiny-unet config, batch 16 × 4×32×32 + 77×32 context: forward, MSE, backward",
            () => new UNetTrainStep(batch: 16, size: 32, context: 77)),
        ("unet-train-checkpointed", "the same with gradient checkpointing of every down, mid and up block",
            () => new UNetTrainStep(batch: 16, size: 32, context: 77, checkpointing: true)),
        ("vae-decode-oneshot", "tiny-vae config, decode of 16 latents 4×64×64 → 3×128×128 in one call",
            () => new VaeDecode(null)),
        ("vae-decode-sliced", "the same, one latent per call (diffusers' enable_vae_slicing)", () => new VaeDecode(1)),
        ("t2i-sample-uncached", "the text-to-image model class (random weights) through LatentDiffusionPipeline: " +
                                "100 prompts, 10 DDIM steps, CFG 3; the text encoder runs every step",
            () => new TextSampling(false)),
        ("t2i-sample-cached", "the same with the LRU text-encoding cache: the text encoder runs at the first step only",
            () => new TextSampling(true)),
    ];

    /// <summary>Stable Diffusion 1.5 shapes: minutes per case on a CPU, named only.</summary>
    public static readonly (string name, string description, Func<StepCase> create)[] Large =
    [
        .. Unet("sd15-unet-step", "SD 1.5 U-Net (860M, default-init weights), one guided step: batch 2 × 4×64×64 + " +
                                  "77×768 context, no gradients", () => new Sd15Step()),
    ];

    /// <summary>float32, bfloat16 and float16 variants of one U-Net forward.</summary>
    static IEnumerable<(string, string, Func<StepCase>)> Unet(string name, string description,
        Func<UNetForward> create)
    {
        foreach (var (suffix, dtype) in new[] { ("f32", ScalarType.Float32), ("bf16", ScalarType.BFloat16),
                     ("f16", ScalarType.Float16) })
            yield return ($"{name}-{suffix}", $"{description}; {suffix} weights and compute (norms float32)",
                () => create().In(dtype));
    }
}

/// <summary>A U-Net forward without gradients, in a chosen precision.</summary>
abstract class UNetForward : StepCase
{
    protected UNet2DConditionModel Model = null!;
    protected Tensor Z = null!, T = null!, C = null!;

    public UNetForward In(ScalarType dtype)
    {
        Model.ToPrecision(dtype);
        return this;
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Model.Forward(Z, T, C);
    }

    public override void Dispose() => Model.Dispose();
}

sealed class LabUNetStep : UNetForward
{
    public LabUNetStep()
    {
        manual_seed(0);
        Model = new UNet2DConditionModel(Labs.TextToImageRecipe.UNetConfig);
        Model.eval();
        Z = randn(200, 4, 7, 14); T = full([200], 500L); C = randn(200, 20, 32);                 // [uncond; cond]
    }
}

sealed class Sd15Step : UNetForward
{
    public Sd15Step()
    {
        Model = Sd15Inference(Lab.Device);
        Z = randn(2, 4, 64, 64); T = full([2], 500L); C = randn(2, 77, 768);
    }
}

enum AttentionKind { Fused, Explicit, Sliced, SlicedOne }

/// <summary>SD 1.5's first-level self-attention (attn1 of down_blocks.0) on a 64×64 latent grid, batch 2.</summary>
sealed class AttentionLayer : StepCase
{
    readonly Attention _layer;
    readonly Tensor _x;
    readonly AttentionKind _kind;

    public AttentionLayer(AttentionKind kind)
    {
        manual_seed(0);
        _layer = new Attention(320, null, heads: 8, dimHead: 40);
        _layer.eval();
        _kind = kind;
        _layer.SliceSize = kind switch { AttentionKind.Sliced => 4, AttentionKind.SlicedOne => 1, _ => null };
        _x = randn(2, 4096, 320);                                                                 // [B, HW, C]
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        bool fused = Layers.FusedAttention;
        Layers.FusedAttention = _kind != AttentionKind.Explicit;
        try { _layer.call(_x, null); }
        finally { Layers.FusedAttention = fused; }
    }

    public override void Dispose() => _layer.Dispose();
}

/// <summary>Decoding 16 latents with the tiny-vae config, all at once or in slices.</summary>
sealed class VaeDecode : StepCase
{
    readonly LatentDiffusionPipeline _pipeline;
    readonly Tensor _z;
    readonly int? _slice;

    public VaeDecode(int? slice)
    {
        manual_seed(0);
        var vae = new AutoencoderKL(TinyVaeConfig);
        vae.eval();
        // the denoiser is never called: only the pipeline's Decode is timed
        _pipeline = new LatentDiffusionPipeline(FashionLatentRecipe.NewDenoiser(), vae,
            () => throw new InvalidOperationException("decode only"));
        _z = randn(16, 4, 64, 64);
        _slice = slice;
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        _pipeline.Decode(_z, _slice);
    }

    public override void Dispose() => _pipeline.Vae!.Dispose();
}

/// <summary>10 guided DDIM steps of 100 prompts through the generic pipeline, with or without the text-encoding
/// cache.</summary>
sealed class TextSampling : StepCase
{
    readonly TextConditionedUNet _model;
    readonly LatentDiffusionPipeline _pipeline;
    readonly Tensor _ids;
    readonly bool _cached;

    public TextSampling(bool cached)
    {
        manual_seed(0);
        _model = Labs.TextToImageRecipe.New();
        _model.eval();
        _cached = cached;
        _pipeline = new LatentDiffusionPipeline(_model, null, "DDIMScheduler",
            Labs.TextToImageRecipe.SchedulerConfig());
        _ids = _model.Tokenize(Labs.TextToImageStudies.SinglePrompts(100).Select(p => p.Text));   // [100, 20]
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        // a fresh cache per run: each run pays its first step's misses, as one sampling call does
        using var cache = _cached ? new TextEncodingCache(256) : null;
        _model.TextEncodingCache = cache;
        _pipeline.Generate(_ids, new LatentGenerationOptions
        {
            Steps = 10, GuidanceScale = 3, Seed = 0, LatentSize = [7, 14],
        });
        _model.TextEncodingCache = null;
    }

    public override void Dispose() => _model.Dispose();
}

/// <summary>
/// `ldmlab bench --half-accuracy [--samples N] [--steps S] [--dtypes bf16,bf16-vae32,f16,f16-vae32]`: the shipped
/// text-to-image model sampled in float32 and in each half variant (default bf16 and bf16 with the VAE in float32)
/// on the same prompts and seeds, judged by the shipped classifier (<see cref="Labs.HalfPrecisionStudy"/>); prints
/// JSON and the takeaways.
/// </summary>
static class HalfAccuracyCommand
{
    public static int Run(string[] args)
    {
        int Arg(string name, int fallback)
        {
            int i = Array.IndexOf(args, name);
            if (i < 0) return fallback;
            if (i + 1 >= args.Length || !int.TryParse(args[i + 1], out int v) || v < 1)
                throw new CliArgumentException($"{name} needs a positive whole number");
            return v;
        }
        int samples = Arg("--samples", 500), steps = Arg("--steps", 25);
        int d = Array.IndexOf(args, "--dtypes");
        var names = d >= 0 && d + 1 < args.Length ? args[d + 1].Split(',') : ["bf16", "bf16-vae32"];
        var variants = names.Select(n => n switch
        {
            "bf16" => (ScalarType.BFloat16, false),
            "bf16-vae32" => (ScalarType.BFloat16, true),
            "f16" => (ScalarType.Float16, false),
            "f16-vae32" => (ScalarType.Float16, true),
            _ => throw new CliArgumentException($"--dtypes: unknown '{n}'; expected bf16, bf16-vae32, f16, f16-vae32"),
        }).ToList();
        var runtime = TorchRuntime.Setup();
        var root = Labs.ShippedCheckpoint.Root
                   ?? throw new CliArgumentException("no data/checkpoints folder: run inside the LdmLab checkout");
        var pipeline = Labs.TextToImageRecipe.ShippedPipeline(Path.Combine(root, Labs.TextToImageRecipe.Shipped))
                       ?? throw new CliArgumentException($"no shipped {Labs.TextToImageRecipe.Shipped} in {root}");
        var judgeCheckpoint = Labs.ShippedCheckpoint.Read(Path.Combine(root, Labs.ClassifierRecipe.Shipped))
                              ?? throw new CliArgumentException(
                                  $"no shipped {Labs.ClassifierRecipe.Shipped} in {root}");
        judgeCheckpoint.Verify();
        var judge = judgeCheckpoint.LoadInto(Labs.ClassifierRecipe.New());
        judge.eval();
        var prompts = Labs.TextToImageStudies.SinglePrompts(samples);
        var rows = Labs.HalfPrecisionStudy.Compare(pipeline, judge, prompts, steps, guidance: 3, variants);
        var doc = new JsonObject
        {
            ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd"),
            ["threads"] = get_num_threads(),
            ["onednn"] = runtime.OneDnn?.ToString(),
            ["samples"] = samples, ["steps"] = steps, ["guidance"] = 3, ["sampler"] = "DDIMScheduler",
            ["runs"] = new JsonArray(rows.Select(r => (JsonNode)new JsonObject
            {
                ["precision"] = r.Precision, ["accuracy"] = Math.Round(r.Accuracy, 4),
                ["seconds"] = Math.Round(r.Seconds, 1), ["max_abs_diff"] = Math.Round(r.MaxAbsDiff, 4),
                ["mean_abs_diff"] = Math.Round(r.MeanAbsDiff, 5),
                ["changed_verdicts"] = Math.Round(r.ChangedVerdicts, 4),
            }).ToArray()),
            ["takeaways"] = new JsonArray(Labs.HalfPrecisionStudy.Takeaways(rows)
                .Select(t => (JsonNode)JsonValue.Create(t)!).ToArray()),
        };
        Console.WriteLine(doc.ToJsonString(new JsonSerializerOptions
        {
            WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        }));
        return 0;
    }
}
