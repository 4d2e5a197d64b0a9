using System.Diagnostics;
using LdmLab.Compression;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Diffusion;
using LdmLab.Export;
using LdmLab.Pipelines;
using LdmLab.Training;

namespace LdmLab.Labs;

/// <summary>
/// One way of running the shipped text-to-image model (notebook 10): how it draws canvases for prompts
/// (<c>Generate(prompts, steps, w, seed)</c> → [N, 1, 28, 56] in [−1, 1]), how one guided denoiser call runs at a
/// batch of prompts (<c>Step(batch)</c>: 2·batch rows, the unconditional and conditional halves), and the bytes its
/// U-Net's weights take where they are stored.
/// </summary>
public sealed record CompressionVariant(string Name, string Runtime, long WeightBytes,
    Func<IReadOnlyList<ScenePrompt>, int, double, long, Tensor> Generate, Action<int> Step, string Note)
{
    /// <summary>Judge this variant on the first this-many prompts only (a slow variant in a quick run); the
    /// reference variant is then judged on the same prompts beside it. Null: all prompts.</summary>
    public int? JudgedPrompts { get; init; }
}

/// <summary>What a short fine-tune after pruning trains on: scaled latents, their captions, the trainer's options.
/// </summary>
public sealed record FineTuneData(Tensor Latents, IReadOnlyList<string> Captions, TrainerOptions Options);

/// <summary>A variant measured: weights, time and peak-memory increase of one guided U-Net call, judged
/// quality on <paramref name="Samples"/> prompts, and the reference (first) variant's accuracy and Fréchet distance
/// on those same prompts.</summary>
public sealed record CompressionRow(string Variant, string Runtime, double WeightMB, double MsPerStep,
    double? StepPeakMB, double Accuracy, double Frechet, string Note, int Samples = 0,
    double? ReferenceAccuracy = null, double? ReferenceFrechet = null);

/// <summary>
/// Section 10.5.3 on the lab's model: the float32 U-Net against int8 weights (stored int8 with a float scale per
/// output channel, dequantized in forward: memory, not speed, since TorchSharp has no integer kernels), magnitude
/// pruning (zeros in dense tensors), structured pruning that removes ResNet channels (smaller tensors, fewer FLOPs),
/// and the same U-Net exported to ONNX and run in ONNX Runtime. Each variant draws the same prompts from the same
/// noise and is judged by the lab's classifier (intended-class accuracy, Fréchet distance on its features).
/// </summary>
public static class CompressionStudy
{
    public const int Steps = 20;
    public const double Guidance = 5;

    /// <summary>The shipped cross-attention model as a fresh pipeline (each variant changes its own copy).</summary>
    public static StableDiffusionPipeline Shipped()
    {
        var name = TextToImageRecipe.ShippedName(ConditioningMethod.CrossAttention);
        var dir = ShippedCheckpoint.Find(name)?.Dir
                  ?? throw new DirectoryNotFoundException($"data/checkpoints/{name} is missing from this checkout");
        var pipeline = TextToImageRecipe.ShippedPipeline(dir)
                       ?? throw new InvalidDataException($"{dir}: not a shipped text-to-image checkpoint");
        pipeline.Unet.eval();
        pipeline.TextEncoder.eval();
        return pipeline;
    }

    /// <summary>
    /// A pipeline that shares <paramref name="p"/>'s tokenizer, text encoder and VAE and holds a copy of its U-Net,
    /// the part every variant changes: what a fresh <see cref="Shipped"/> gives, without reading and hash-checking
    /// the checkpoint again. The shared text encoder is only ever run (a fine-tune freezes it).
    /// </summary>
    public static StableDiffusionPipeline WithUNetCopy(StableDiffusionPipeline p)
    {
        var unet = new UNet.UNet2DConditionModel(p.Unet.Config);
        unet.load_state_dict(p.Unet.state_dict());
        unet.to(p.Device);
        unet.eval();
        return new StableDiffusionPipeline(p.Tokenizer, p.TextEncoder, unet, p.Vae, p.SchedulerClass,
            p.SchedulerConfig.DeepClone().AsObject());
    }

    /// <summary>The pipeline as it is, float32 weights and compute.</summary>
    public static CompressionVariant Float32(StableDiffusionPipeline p) =>
        Torch("float32", p, "the reference");

    /// <summary>
    /// Linear and convolution weights to int8 + one float32 scale per output channel (w ≈ q·s, s = max|w_row|/127),
    /// except <see cref="Int8Weights.UNetKeyLayers"/> (the first and last convolutions, the time embedding), which
    /// stay float32 as the chapter's "keep key layers fp32" says. Changes <paramref name="p"/>'s U-Net in place.
    /// </summary>
    public static CompressionVariant Int8WeightOnly(StableDiffusionPipeline p)
    {
        var report = Int8Weights.Quantize(p.Unet, Int8Weights.UNetKeyLayers);
        return Torch("int8 weights (dequantized in forward)", p,
            $"{report.Quantized.Count} layers int8, {report.Kept.Count} kept float32");
    }

    /// <summary>Unstructured L1 pruning of every Linear and Conv2d weight at <paramref name="amount"/> (masks applied:
    /// the zeros stay in dense tensors, so neither the file nor the time changes).</summary>
    public static CompressionVariant MagnitudePruned(StableDiffusionPipeline p, double amount) =>
        MagnitudePruned(p, amount, null).Variant;

    /// <summary><see cref="MagnitudePruned(StableDiffusionPipeline, double)"/>, optionally fine-tuned with the masks
    /// held (<see cref="PruningMasks"/> re-applies them before every forward); then the zeros are baked in and the
    /// hooks removed (prune.remove), so the timed calls are those of a dense model. Also the sparsity reached.
    /// </summary>
    public static (CompressionVariant Variant, double Sparsity) MagnitudePruned(StableDiffusionPipeline p,
        double amount, FineTuneData? fineTune)
    {
        using var masks = Pruning.Magnitude(p.Unet, amount,
            select: (_, m) => m is TorchSharp.Modules.Linear or TorchSharp.Modules.Conv2d);
        masks.Apply();
        double sparsity = masks.Sparsity;
        string note = $"sparsity {sparsity:P1} of every Linear and Conv2d weight, stored dense" + FineTune(p, fineTune);
        masks.Remove();
        return (Torch($"magnitude pruned {amount:P0}{(fineTune is null ? "" : " + fine-tune")}", p, note), sparsity);
    }

    /// <summary>A short fine-tune of the U-Net alone (text encoder frozen) on scaled latents and their captions;
    /// returns a note ("" for none).</summary>
    static string FineTune(StableDiffusionPipeline p, FineTuneData? fineTune)
    {
        if (fineTune is not { } ft) return "";
        var model = new TextConditionedUNet(p.Unet, p.TextEncoder, p.Tokenizer);
        foreach (var (_, w) in p.TextEncoder.named_parameters()) w.requires_grad_(false);
        var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(NoiseSchedule.ScaledLinear()),
            ft.Options);
        var log = trainer.Train(ft.Latents, TextToImageRecipe.Conditions(model, ft.Captions));
        model.eval();
        return $"; fine-tuned {log.Losses.Count} steps (loss {log.Losses.TakeLast(20).Average():F4})";
    }

    /// <summary>
    /// Structured L1 pruning of <paramref name="amount"/> of each ResNet block's inner channels (the next
    /// convolution shrinks with them), optionally followed by a short fine-tune of the U-Net alone (text encoder
    /// frozen) on <paramref name="fineTune"/>'s scaled latents and captions.
    /// </summary>
    public static CompressionVariant StructuredPruned(StableDiffusionPipeline p, double amount,
        FineTuneData? fineTune = null) => StructuredPrunedWithReport(p, amount, fineTune).Variant;

    /// <summary><see cref="StructuredPruned"/> and what the pruning removed.</summary>
    public static (CompressionVariant Variant, StructuredPruningReport Report) StructuredPrunedWithReport(
        StableDiffusionPipeline p, double amount, FineTuneData? fineTune = null)
    {
        var report = Pruning.Structured(p.Unet, amount);
        string note = $"{report.Blocks.Count} ResNet blocks, parameters {report.ParametersBefore:N0} → " +
                      $"{report.ParametersAfter:N0}" + FineTune(p, fineTune);
        return (Torch($"structured pruned {amount:P0}{(fineTune is null ? "" : " + fine-tune")}", p, note), report);
    }

    /// <summary>
    /// The U-Net's weights and compute in bfloat16 (<see cref="HalfPrecision.ToPrecision{T}"/>: GroupNorm and
    /// LayerNorm stay float32; the U-Net casts its inputs to bfloat16 and its output back, so scheduler, guidance,
    /// text encoder and VAE stay float32). Whether it is fast depends on oneDNN's ISA in force
    /// (<see cref="HalfPrecision.FastOnCpu"/>): under the default AVX2 cap LibTorch falls back to reference kernels.
    /// </summary>
    public static CompressionVariant BFloat16(StableDiffusionPipeline p, Runtime.OneDnnDecision? oneDnn = null)
    {
        p.Unet.ToPrecision(ScalarType.BFloat16);
        string fast = HalfPrecision.FastOnCpu(ScalarType.BFloat16, oneDnn)
            ? "native bf16 kernels in force"
            : $"no native bf16 kernels (oneDNN ISA {oneDnn?.EffectiveIsa ?? "unknown"}): reference code";
        return Torch("bfloat16", p, $"weights and compute bf16, norms float32; {fast}");
    }

    /// <summary>
    /// The pipeline exported to ONNX (<see cref="OnnxExport.SavePipeline"/>, into <paramref name="dir"/>) and run by
    /// ONNX Runtime on the CPU (<paramref name="threads"/> intra-op threads; null: ORT's default).
    /// </summary>
    public static CompressionVariant Onnx(StableDiffusionPipeline p, string dir, int? threads = null)
    {
        OnnxExport.SavePipeline(p, dir);
        return OnnxFolder("ONNX float32", p, dir, threads, "the project's own export (opset 17)");
    }

    /// <summary>
    /// The export with its U-Net rewritten to int8 compute in ONNX Runtime (<see cref="OnnxInt8"/>): dynamic
    /// activation scales (DynamicQuantizeLinear → MatMulInteger, as onnxruntime's <c>quantize_dynamic</c>), or
    /// static scales calibrated on the float U-Net's inputs while it samples <paramref name="calibrationPrompts"/>
    /// (QDQ pairs ORT fuses into integer kernels). Key layers stay float (<see cref="OnnxInt8.KeyLayer"/>).
    /// </summary>
    public static CompressionVariant OnnxInt8Variant(StableDiffusionPipeline p, string dir, OnnxInt8Mode mode,
        IReadOnlyList<string>? calibrationPrompts = null, int? threads = null)
    {
        OnnxExport.SavePipeline(p, dir);
        OnnxInt8Report report;
        if (mode == OnnxInt8Mode.Static)
        {
            if (calibrationPrompts is not { Count: > 0 })
                throw new ArgumentException("static int8 needs calibration prompts", nameof(calibrationPrompts));
            using var scope = NewDisposeScope();
            report = OnnxInt8.QuantizeFolderUNet(dir, mode,
                OnnxInt8Study.CalibrationFeeds(p, calibrationPrompts, steps: 8, Guidance));
        }
        else report = OnnxInt8.QuantizeFolderUNet(dir, mode);
        string how = mode == OnnxInt8Mode.Static
            ? $"static scales from {calibrationPrompts!.Count} prompts × 8 steps" : "dynamic activation scales";
        return OnnxFolder($"ONNX int8 {mode.ToString().ToLowerInvariant()}", p, dir, threads,
            $"{report.Quantized.Count} nodes int8, {how}");
    }

    static CompressionVariant OnnxFolder(string name, StableDiffusionPipeline p, string dir, int? threads,
        string note)
    {
        var ort = OnnxStableDiffusionPipeline.FromFolder(dir, threads);
        long bytes = Directory.GetFiles(Path.Combine(dir, "unet")).Sum(f => new FileInfo(f).Length);
        var inputs = InputsFor(p);
        void Step(int batch)
        {
            var (z, t, context) = inputs(batch);
            using var scope = NewDisposeScope();
            ort.Unet.Run(new Dictionary<string, Tensor>
            {
                ["sample"] = z, ["timestep"] = t, ["encoder_hidden_states"] = context,
            }, "out_sample");
        }
        return new CompressionVariant(name, "ONNX Runtime", bytes,
            (prompts, steps, w, seed) => OnnxInt8Study.Generate(ort, prompts, steps, w, seed), Step, note);
    }

    static CompressionVariant Torch(string name, StableDiffusionPipeline p, string note)
    {
        long bytes = Int8Weights.Bytes(p.Unet);
        var inputs = InputsFor(p);
        void Step(int batch)
        {
            var (z, t, context) = inputs(batch);
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            p.Unet.Forward(z, t, context);
        }
        return new CompressionVariant(name, "TorchSharp", bytes,
            (prompts, steps, w, seed) => TextToImageStudies.Generate(p, prompts, steps, w, seed), Step, note);
    }

    /// <summary>One guided call's inputs per batch size, made once (outside the timed calls) and kept.</summary>
    static Func<int, (Tensor z, Tensor t, Tensor context)> InputsFor(StableDiffusionPipeline p)
    {
        var made = new Dictionary<int, (Tensor z, Tensor t, Tensor context)>();
        return batch => made.TryGetValue(batch, out var v) ? v : made[batch] = StepInputs(p, batch);
    }

    /// <summary>One guided call's inputs at <paramref name="batch"/> prompts: latents [2·batch, c, 7, 14], a
    /// timestep, the text context [2·batch, L, D] of an empty and a real prompt (outside any dispose scope).</summary>
    static (Tensor z, Tensor t, Tensor context) StepInputs(StableDiffusionPipeline p, int batch)
    {
        using var outer = NewDisposeScope();
        using var _ = no_grad();
        int f = p.VaeScaleFactor;
        var z = randn(2 * batch, p.Vae.Config.LatentChannels, CaptionedScenes.Height / f, CaptionedScenes.Width / f);
        var prompts = Enumerable.Repeat("", batch).Concat(Enumerable.Repeat("a photo of a bag", batch)).ToList();
        var context = p.EncodePrompts(prompts);                                         // [2·batch, L, D]
        return (z.DetachFromDisposeScope(), tensor(500f).DetachFromDisposeScope(), context.DetachFromDisposeScope());
    }

    /// <summary>
    /// Measures the variants: the peak-memory increase of each one's first guided call at <paramref name="batch"/>
    /// prompts (a warm-up), then <paramref name="rounds"/> rounds that time one call of every variant in turn (the
    /// median per variant; taking turns keeps a machine that speeds up or slows down during the run from favouring
    /// any), then each variant draws the prompts from the same seed and is judged: intended-class accuracy and
    /// Fréchet distance of the drawn items to <paramref name="reference"/>.
    /// </summary>
    public static IReadOnlyList<CompressionRow> Measure(IReadOnlyList<CompressionVariant> variants,
        IReadOnlyList<ScenePrompt> prompts, FashionClassifier judge, FrechetReference reference, int batch = 50,
        int rounds = 3, long seed = 0, int steps = Steps)
    {
        if (variants.Count == 0) throw new ArgumentException("no variants to measure", nameof(variants));
        if (rounds < 1) throw new ArgumentOutOfRangeException(nameof(rounds), rounds, "at least one timed round");
        var peaks = variants.Select(v => Runtime.ProcessMemory.PeakIncrease(() => v.Step(batch))).ToList();
        var times = variants.Select(_ => new List<double>()).ToList();
        for (int r = 0; r < rounds; r++)
            for (int i = 0; i < variants.Count; i++)
            {
                var clock = Stopwatch.StartNew();
                variants[i].Step(batch);
                times[i].Add(clock.Elapsed.TotalMilliseconds);
            }
        var judged = new Dictionary<int, (double Accuracy, double Frechet)>();   // the reference, per prompt count
        (double Accuracy, double Frechet) Judge(CompressionVariant v, int count)
        {
            using var scope = NewDisposeScope();
            var subset = prompts.Take(count).ToList();
            var canvases = v.Generate(subset, steps, Guidance, seed);
            return (TextToImageStudies.Accuracy(judge, canvases, subset),
                reference.Of(TextToImageStudies.InkedSlot(canvases)));
        }
        return variants.Select((v, i) =>
        {
            int count = Math.Min(v.JudgedPrompts ?? prompts.Count, prompts.Count);
            if (count < 1) throw new ArgumentException($"{v.Name}: judged on {count} prompts", nameof(variants));
            var (accuracy, frechet) = Judge(v, count);
            if (i == 0) judged[count] = (accuracy, frechet);
            else if (!judged.ContainsKey(count)) judged[count] = Judge(variants[0], count);
            double median = times[i].Order().ElementAt(rounds / 2);
            return new CompressionRow(v.Name, v.Runtime, v.WeightBytes / 1e6, median,
                peaks[i] is long b ? b / 1e6 : null, accuracy, frechet, v.Note, count, judged[count].Accuracy,
                judged[count].Frechet);
        }).ToList();
    }

    /// <summary>What the rows say, against the first (float32) row: size, speed and judged quality of each.</summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<CompressionRow> rows, int samples)
    {
        if (rows.Count < 2) throw new ArgumentException("need the float32 row and at least one variant", nameof(rows));
        var b = rows[0];
        var points = new List<string>();
        foreach (var r in rows.Skip(1))
        {
            // one count in n moves accuracy by 1/n: differences within ±2/n are the sampling noise of this table
            int n = r.Samples > 0 ? r.Samples : samples;
            double noise = 2.0 / n, baseline = r.ReferenceAccuracy ?? b.Accuracy;
            double dAcc = r.Accuracy - baseline;
            string on = n == samples ? "" : $" on the first {n} prompts";
            string quality = Math.Abs(dAcc) <= noise
                ? $"judged accuracy {r.Accuracy:P0} vs {baseline:P0}{on} (within ±{noise:P0}, the noise of {n} " +
                  "samples)"
                : $"judged accuracy {r.Accuracy:P0} vs {baseline:P0}{on} ({dAcc * 100:+0;-0} points)";
            points.Add($"{r.Variant} ({r.Runtime}): weights {r.WeightMB:F2} MB ({b.WeightMB / r.WeightMB:F1}× smaller" +
                       $" than float32), one guided call {r.MsPerStep:F0} ms ({b.MsPerStep / r.MsPerStep:F2}× the " +
                       $"float32 speed); {quality}.");
        }
        var fastest = rows.MinBy(r => r.MsPerStep)!;
        var smallest = rows.MinBy(r => r.WeightMB)!;
        points.Add($"Fastest here: {fastest.Variant} ({fastest.Runtime}); smallest: {smallest.Variant}. Weight-only " +
                   "int8 and unstructured pruning save storage (or nothing, when stored dense), not time: without " +
                   "integer kernels or sparse storage the arithmetic is the float32 model's.");
        return points;
    }
}
