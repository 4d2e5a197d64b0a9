using System.Globalization;
using System.Text.Json.Nodes;
using LdmLab.Adapters;

namespace LdmLab.Labs;

/// <summary>How a fine-tuning run teaches (section 10.5.2).</summary>
public enum FineTuneKind { TextualInversion, Lora, DreamBooth }

/// <summary>
/// One fine-tuning method and its setting: textual inversion (one new token), LoRA of rank r on the U-Net's attention
/// projections (α = r, so the update is B·A at scale 1), or DreamBooth (the whole U-Net) with prior preservation of
/// weight w (0: none). Textual inversion may learn several vectors (tok, tok_1, …). With
/// <paramref name="TextEncoder"/> LoRA also adapts the text encoder's attention projections (kohya-ss's default) and
/// DreamBooth also trains the text encoder (diffusers' --train_text_encoder).
/// </summary>
public sealed record FineTuneSpec(FineTuneKind Kind, int Rank = 0, double PriorWeight = 0, int Vectors = 1,
    bool TextEncoder = false)
{
    /// <summary>As a file or folder name: textual-inversion, lora-r4, dreambooth, dreambooth-prior-0.5.</summary>
    public string Name => Kind switch
    {
        FineTuneKind.TextualInversion => Vectors == 1 ? "textual-inversion" : $"textual-inversion-v{Vectors}",
        FineTuneKind.Lora => $"lora-r{Rank}" + (PriorWeight > 0 ? $"-prior-{Weight}" : ""),
        _ => PriorWeight > 0 ? $"dreambooth-prior-{Weight}" : "dreambooth",
    } + (TextEncoder && Kind != FineTuneKind.TextualInversion ? "-te" : "");

    /// <summary>As a table row reads it: "LoRA r = 4", "DreamBooth + prior (w = 0.5)".</summary>
    public string Label => Kind switch
    {
        FineTuneKind.TextualInversion => Vectors == 1 ? "textual inversion (1 vector)"
            : $"textual inversion ({Vectors} vectors)",
        FineTuneKind.Lora => $"LoRA r = {Rank}" + (PriorWeight > 0 ? $" + prior (w = {Weight})" : ""),
        _ => PriorWeight > 0 ? $"DreamBooth + prior (w = {Weight})" : "DreamBooth, no prior",
    } + (TextEncoder && Kind != FineTuneKind.TextualInversion ? " + text encoder" : "");

    string Weight => PriorWeight.ToString("0.0##", CultureInfo.InvariantCulture);

    /// <summary>The file the run writes, as the ecosystem names it: learned_embeds.safetensors,
    /// pytorch_lora_weights.safetensors, or a U-Net folder's diffusion_pytorch_model.safetensors.</summary>
    public string WeightsFile => Kind switch
    {
        FineTuneKind.TextualInversion => TextualInversion.DiffusersFileName,
        FineTuneKind.Lora => LoraFiles.DiffusersFileName,
        _ => UNet2DConditionModel.WeightsName,
    };
}

/// <summary>What one run learned: the new token's vectors, the LoRA adapter (not fused), or for DreamBooth the
/// U-Net in place; the trainable parameter count and the losses.</summary>
public sealed record FineTuneResult(FineTuneSpec Spec, long Trainable, FineTuneLog Log, TextualInversion? Embedding,
    LoraAdapter? Lora);

/// <summary>
/// Fine-tuning a text-to-image model on a few examples — the training side of section 10.5.2 that the library's
/// pipelines leave out. One entry, <see cref="Run"/>, takes any <see cref="TextConditionedUNet"/> (the lab's model, or
/// a loaded Stable Diffusion pipeline's U-Net and text encoder), the examples' latents and captions, and trains only
/// what the method owns through <see cref="FineTuner"/>: the new token's rows (textual inversion, as diffusers'
/// textual_inversion.py), the LoRA factors (train_text_to_image_lora.py), or the U-Net with prior preservation
/// (train_dreambooth.py). <see cref="Save"/> and <see cref="Apply"/> write and read the result in the ecosystem's
/// files. <c>ldmlab train lora|textual-inversion|dreambooth</c> and notebook 08 (<see cref="FineTuneLab"/>) use it.
/// </summary>
public static class FineTuneRecipe
{
    public const string LogFile = "fine-tune-log.json";

    /// <summary>
    /// Trains <paramref name="model"/> in place on <paramref name="latents"/> [N, c, h, w] (scaled) and their
    /// <paramref name="captions"/>. Textual inversion adds <paramref name="word"/> to the model's tokenizer
    /// (initialised from <paramref name="initializer"/>, one BPE token) before tokenising the captions, which must use
    /// it; LoRA attaches a new adapter to the U-Net for the run and returns it detached; DreamBooth changes the U-Net
    /// and, with <see cref="FineTuneSpec.PriorWeight"/> &gt; 0, needs <paramref name="priorLatents"/> and their
    /// captions (the class images the base model drew from the class prompt).
    /// </summary>
    public static FineTuneResult Run(FineTuneSpec spec, TextConditionedUNet model, DiffusionObjective objective,
        Tensor latents, IReadOnlyList<string> captions, FineTuneOptions options, string? word = null,
        string? initializer = null, Tensor? priorLatents = null, IReadOnlyList<string>? priorCaptions = null,
        Viz.Progress? progress = null)
    {
        if (latents.shape[0] != captions.Count)
            throw new ArgumentException($"{latents.shape[0]} latents but {captions.Count} captions", nameof(captions));
        if (spec.PriorWeight > 0 && (priorLatents is null || priorCaptions is null))
            throw new ArgumentException("prior preservation needs the class images' latents and captions",
                nameof(priorLatents));
        options = options with { PriorWeight = spec.PriorWeight };
        switch (spec.Kind)
        {
            case FineTuneKind.TextualInversion:
            {
                if (word is null || initializer is null)
                    throw new ArgumentException("textual inversion needs the new token and an initializer word",
                        nameof(word));
                if (!captions.Any(c => c.Contains(word, StringComparison.Ordinal)))    // before the model grows
                    throw new ArgumentException($"no caption uses the new token '{word}'", nameof(captions));
                var (tokenizer, ids) = TextualInversion.Create(model.Tokenizer, model.TextEncoder, word, initializer,
                    spec.Vectors);
                model.UseTokenizer(tokenizer);
                using var rows = new TokenRowTraining(model.TextEncoder, ids);
                var log = new FineTuner(model, objective, [("token_embedding", rows.Parameter)], options,
                    rows.RestoreFrozenRows).Train(latents, model.Tokenize(captions), progress: progress);
                long width = model.TextEncoder.TokenEmbedding.shape[1];
                return new FineTuneResult(spec, ids.Length * width, log,
                    TextualInversion.FromEncoder(model.Tokenizer, model.TextEncoder, word), null);
            }
            case FineTuneKind.Lora:
            {
                var layers = LoraAdapter.Create(model.Backbone, "unet", spec.Rank, alpha: spec.Rank,
                    seed: options.Seed).Layers.ToList();
                if (spec.TextEncoder)
                    layers.AddRange(LoraAdapter.Create(model.TextEncoder, "text_encoder", spec.Rank, alpha: spec.Rank,
                        seed: options.Seed + 1).Layers);
                var adapter = new LoraAdapter(layers);
                adapter.to(model.Backbone.parameters().First().device);
                FineTuneLog log;
                using (Attach(adapter, model))
                    log = new FineTuner(model, objective, adapter.named_parameters().Select(p => (p.name, p.parameter)),
                        options).Train(latents, model.Tokenize(captions), spec.PriorWeight > 0 ? priorLatents : null,
                        spec.PriorWeight > 0 ? model.Tokenize(priorCaptions!) : null, progress);
                foreach (var p in adapter.parameters()) p.requires_grad = false;
                return new FineTuneResult(spec, adapter.parameters().Sum(p => p.numel()), log, null, adapter);
            }
            default:
            {
                var prior = spec.PriorWeight > 0;
                var trainable = model.Backbone.named_parameters().Select(p => ($"unet.{p.name}", p.parameter)).ToList();
                if (spec.TextEncoder)
                    trainable.AddRange(model.TextEncoder.named_parameters()
                        .Select(p => ($"text_encoder.{p.name}", p.parameter)));
                var log = new FineTuner(model, objective, trainable, options).Train(
                    latents, model.Tokenize(captions), prior ? priorLatents : null,
                    prior ? model.Tokenize(priorCaptions!) : null, progress);
                return new FineTuneResult(spec, trainable.Sum(p => p.Item2.numel()), log, null, null);
            }
        }
    }

    /// <summary>Attaches an adapter's U-Net and text-encoder layers to a model (unfused, scale
    /// <paramref name="scale"/>); disposing detaches both.</summary>
    public static IDisposable Attach(LoraAdapter adapter, TextConditionedUNet model, double scale = 1.0)
    {
        var unet = adapter.Attach(model.Backbone, "unet", scale);
        var text = adapter.Attach(model.TextEncoder, "text_encoder", scale);
        return new Both(unet, text);
    }

    sealed class Both(IDisposable a, IDisposable b) : IDisposable
    {
        public void Dispose() { a.Dispose(); b.Dispose(); }
    }

    /// <summary>Fuses an adapter's U-Net and text-encoder layers into a model's weights (scale 1).</summary>
    public static void Fuse(LoraAdapter adapter, TextConditionedUNet model)
    {
        adapter.Fuse(model.Backbone, "unet");
        if (adapter.Layers.Keys.Any(k => k.StartsWith("text_encoder.", StringComparison.Ordinal)))
            adapter.Fuse(model.TextEncoder, "text_encoder");
    }

    /// <summary>
    /// Writes a run's result into <paramref name="dir"/> in the ecosystem's format — diffusers'
    /// learned_embeds.safetensors, pytorch_lora_weights.safetensors (<c>unet.</c> prefix, {"format": "pt"}), or the
    /// fine-tuned U-Net as a diffusers folder (config.json + weights) — and the losses beside it
    /// (<see cref="LogFile"/>). Files are written whole or not at all.
    /// </summary>
    public static void Save(FineTuneResult result, TextConditionedUNet model, string dir)
    {
        Directory.CreateDirectory(dir);
        var path = Path.Combine(dir, result.Spec.WeightsFile);
        switch (result.Spec.Kind)
        {
            case FineTuneKind.TextualInversion: result.Embedding!.SaveDiffusers(path); break;
            case FineTuneKind.Lora: LoraFiles.SaveDiffusers(result.Lora!, path); break;
            default:
                model.Backbone.SavePretrained(dir);
                if (result.Spec.TextEncoder) model.TextEncoder.SavePretrained(Path.Combine(dir, "text_encoder"));
                break;
        }
        SaveLog(result, dir);
    }

    /// <summary>Writes the run's losses, time and trainable count as <see cref="LogFile"/> in
    /// <paramref name="dir"/>.</summary>
    public static void SaveLog(FineTuneResult result, string dir)
    {
        var log = result.Log;
        var json = new JsonObject
        {
            ["method"] = result.Spec.Name, ["trainable_parameters"] = result.Trainable,
            ["training_seconds"] = Math.Round(log.Elapsed.TotalSeconds, 2),
            ["losses"] = Numbers(log.Losses), ["instance_losses"] = Numbers(log.InstanceLosses),
            ["prior_losses"] = Numbers(log.PriorLosses),
        };
        AtomicFile.WriteAllText(Path.Combine(dir, LogFile), json.ToJsonString());
    }

    static JsonArray Numbers(IEnumerable<double> values) =>
        new(values.Select(v => double.IsFinite(v) ? JsonValue.Create(Math.Round(v, 6)) : null).ToArray<JsonNode?>());

    /// <summary>Reads the losses and counts <see cref="Save"/> wrote (an error naming the file when unreadable).
    /// </summary>
    public static (FineTuneLog Log, long Trainable) ReadLog(string dir) =>
        ConfigFile.Read(Path.Combine(dir, LogFile), j =>
        {
            IReadOnlyList<double> List(string key) =>
                j[key]?.AsArray().Select(v => v is null ? double.NaN : (double)v).ToList()
                ?? throw new FormatException($"no '{key}'");
            return (new FineTuneLog(List("losses"), List("instance_losses"), List("prior_losses"),
                    TimeSpan.FromSeconds((double?)j["training_seconds"]
                                         ?? throw new FormatException("no 'training_seconds'"))),
                (long?)j["trainable_parameters"] ?? throw new FormatException("no 'trainable_parameters'"));
        });

    /// <summary>
    /// Applies a saved result to <paramref name="model"/> (a copy of the base it was trained from): textual inversion
    /// adds the token and its rows, LoRA is read (any dialect <see cref="LoraFiles"/> reads) and returned unfused with
    /// nothing left unmatched, DreamBooth's U-Net weights replace the model's.
    /// </summary>
    public static LoraAdapter? Apply(FineTuneSpec spec, string dir, TextConditionedUNet model)
    {
        var path = Path.Combine(dir, spec.WeightsFile);
        switch (spec.Kind)
        {
            case FineTuneKind.TextualInversion:
                var embedding = TextualInversion.Read(path);
                model.UseTokenizer(embedding.AddTo(model.Tokenizer, model.TextEncoder, path));
                return null;
            case FineTuneKind.Lora:
                var read = LoraFiles.Read(path, model.Backbone, model.TextEncoder);
                if (read.Unmatched.Count > 0)
                    throw new AdapterFormatException(path, read.Unmatched[0],
                        $"{read.Unmatched.Count} keys match no module of this model (an adapter for another model)");
                return read.Adapter;
            default:
                StateDicts.Load(model.Backbone, path);
                if (spec.TextEncoder)
                    StateDicts.Load(model.TextEncoder, Path.Combine(dir, "text_encoder", "model.safetensors"));
                model.eval();
                return null;
        }
    }

    /// <summary>The size in bytes of what a user downloads for this result (the weights file).</summary>
    public static long FileBytes(FineTuneSpec spec, string dir) =>
        new FileInfo(Path.Combine(dir, spec.WeightsFile)).Length;

    /// <summary>The objective a pipeline's scheduler config describes (betas, ε or v), as its model was trained.
    /// </summary>
    public static DiffusionObjective Objective(JsonObject schedulerConfig)
    {
        var config = Diffusion.SchedulerConfig.FromJson(schedulerConfig);
        return new DiffusionObjective(config.Schedule(), config.PredictionType switch
        {
            "epsilon" => PredictionType.Epsilon,
            "v_prediction" => PredictionType.VPrediction,
            var other => throw new ArgumentException($"scheduler prediction_type '{other}': fine-tuning trains " +
                                                     "epsilon or v_prediction models", nameof(schedulerConfig)),
        });
    }
}
