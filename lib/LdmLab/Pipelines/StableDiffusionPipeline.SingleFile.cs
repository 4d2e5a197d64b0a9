using System.Text.Json.Nodes;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Interop;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Pipelines;

/// <summary>One-file checkpoints in the original Stable Diffusion key names (<see cref="SingleFileKeys"/>).</summary>
public sealed partial class StableDiffusionPipeline
{
    /// <summary>
    /// Reads an SD 1.x/2.x one-file <c>.safetensors</c> checkpoint (U-Net, VAE and text encoder under
    /// <c>model.diffusion_model.</c>, <c>first_stage_model.</c>, <c>cond_stage_model.</c>): the configs are inferred
    /// from the tensors' shapes, what they cannot tell comes from <paramref name="options"/>; float16/bfloat16 weights
    /// are widened to float32; keys outside the three components (<c>model_ema.*</c>, the schedule buffers) are
    /// ignored, unknown keys inside them are an error. Pickled <c>.ckpt</c> files are refused, never opened.
    /// </summary>
    public static StableDiffusionPipeline FromSingleFile(string path, SingleFileOptions? options = null)
    {
        options ??= new SingleFileOptions();
        RefusePickle(path);
        IReadOnlyList<SafeTensors.Entry> entries;
        try { entries = SafeTensors.ReadHeader(path).entries; }
        catch (Exception e) when (e is Data.DatasetException or InvalidDataException or FormatException
                                      or System.Text.Json.JsonException or EndOfStreamException)
        {
            throw new SingleFileException(path, null, "not a safetensors file: " + e.Message);
        }
        if (entries.Any(e => e.Name.StartsWith("conditioner.embedders.", StringComparison.Ordinal)))
            throw new SingleFileException(path, null, "an SDXL checkpoint (conditioner.embedders.*): LdmLab reads " +
                                                      "SD 1.x/2.x single files; load SDXL from a diffusers folder");
        Dictionary<string, long[]> Shapes(string prefix) => entries
            .Where(e => e.Name.StartsWith(prefix, StringComparison.Ordinal))
            .ToDictionary(e => e.Name[prefix.Length..], e => e.Shape);
        var unetShapes = Shapes(SingleFileKeys.UNetPrefix);
        var vaeShapes = Shapes(SingleFileKeys.VaePrefix);
        bool openClip = entries.Any(e => e.Name.StartsWith(SingleFileKeys.OpenClipPrefix, StringComparison.Ordinal));
        int inChannels = unetShapes.TryGetValue("input_blocks.0.0.weight", out var convIn) ? (int)convIn[1] : 4;
        options = options.Resolved(openClip, inChannels);
        foreach (var (shapes, what) in new[]
                 {
                     (unetShapes, "U-Net (model.diffusion_model.*)"), (vaeShapes, "VAE (first_stage_model.*)"),
                 })
            if (shapes.Count == 0)
                throw new SingleFileException(path, null, $"no {what} tensors: not a Stable Diffusion checkpoint");
        var unetConfig = SingleFileConfigs.UNet(unetShapes, options, path);
        var vaeConfig = SingleFileConfigs.Vae(vaeShapes, options, path);

        // only the three components are read: EMA copies and schedule buffers never reach memory
        var file = SafeTensors.Load(path, k => k.StartsWith("model.diffusion_model.", StringComparison.Ordinal)
                                              || k.StartsWith(SingleFileKeys.VaePrefix, StringComparison.Ordinal)
                                              || k.StartsWith("cond_stage_model.", StringComparison.Ordinal));
        var built = new List<nn.Module>();
        T Build<T>(T module) where T : nn.Module { built.Add(module); return module; }
        try
        {
            var used = new HashSet<string>();
            var unet = Build(new UNet2DConditionModel(unetConfig));
            // each copy in its own scope: reshaped views and widened float16 temporaries are freed at once
            using (NewDisposeScope())
                LoadComponent(unet, k => SingleFileKeys.UNetPrefix + SingleFileKeys.UNet(k, unetConfig), file, path,
                    used);
            var vae = Build(new AutoencoderKL(vaeConfig));
            int levels = vaeConfig.BlockOutChannels.Length;
            using (NewDisposeScope())
                LoadComponent(vae, k => SingleFileKeys.VaePrefix + SingleFileKeys.Vae(k, levels),
                    file, path, used);
            ClipTextConfig clipConfig;
            using (NewDisposeScope())                                  // shapes only: the views are freed here
                clipConfig = SingleFileConfigs.Clip(TextTensors(file, openClip, path, used)
                    .ToDictionary(kv => kv.Key, kv => kv.Value.shape), openClip, options, path);
            var textEncoder = Build(new ClipTextModel(clipConfig));
            using (NewDisposeScope())
            {
                var text = TextTensors(file, openClip, path, used);
                // SD 2 uses the penultimate layer: the last one's tensors are read past, not loaded
                bool Dropped(string k) => k.StartsWith("text_model.encoder.layers.", StringComparison.Ordinal)
                                          && int.Parse(k.Split('.')[3]) >= clipConfig.NumHiddenLayers;
                foreach (var k in text.Keys.Where(Dropped).ToList()) text.Remove(k);
                var unknown = text.Keys.Where(k => k.StartsWith("unknown.", StringComparison.Ordinal)).ToList();
                if (unknown.Count > 0)
                    throw new SingleFileException(path, unknown[0]["unknown.".Length..], "not a text-encoder key");
                StateDicts.CopyInto(textEncoder, text, path, optional: ["text_model.embeddings.position_ids"],
                    keyPrefix: openClip ? SingleFileKeys.OpenClipPrefix + "(converted) " : SingleFileKeys.ClipPrefix);
            }
            bool Component(string k) => k.StartsWith(SingleFileKeys.UNetPrefix, StringComparison.Ordinal)
                                        || k.StartsWith(SingleFileKeys.VaePrefix, StringComparison.Ordinal);
            var stray = file.Keys.Where(k => !used.Contains(k) && Component(k)).ToList();
            if (stray.Count > 0)
                throw new SingleFileException(path, stray[0], $"{stray.Count} U-Net/VAE key(s) match no module " +
                                                             "of the inferred architecture: " +
                                                             string.Join(", ", stray.Take(5)));
            unet.eval(); vae.eval(); textEncoder.eval();
            // SD 2 pads with "!" (id 0), SD 1 with the end token
            var tokenizer = openClip ? ClipTokenizer.Default.With(padId: 0) : ClipTokenizer.Default;
            return new StableDiffusionPipeline(tokenizer, textEncoder, unet, vae, options.SchedulerClass,
                StableDiffusionSchedule(options.PredictionType!));
        }
        catch
        {
            foreach (var module in built) module.Dispose();       // nothing half-built outlives a refused file
            throw;
        }
        finally
        {
            foreach (var t in file.Values) t.Dispose();
        }
    }

    /// <summary>
    /// Writes the pipeline as one <c>.safetensors</c> file in the original key names (what A1111 and ComfyUI load),
    /// optionally in float16; atomically. SD 1.x-style text encoders only: SD 2's OpenCLIP layout would need the
    /// final layer that diffusers' SD 2 text encoder no longer has.
    /// </summary>
    public void SaveSingleFile(string path, ScalarType? dtype = null)
    {
        if (TextEncoder.Config.HiddenAct != "quick_gelu")
            throw new NotSupportedException("only SD 1.x-style (CLIP ViT-L, quick_gelu) text encoders are written as " +
                                            "single files; save this pipeline with SavePretrained");
        int levels = Vae.Config.BlockOutChannels.Length;
        var tensors = new List<KeyValuePair<string, Tensor>>();
        using var scope = NewDisposeScope();
        Tensor As(Tensor t) => dtype is { } d && t.is_floating_point() ? t.to_type(d) : t;
        foreach (var (k, t) in Unet.state_dict())
            tensors.Add(new(SingleFileKeys.UNetPrefix + SingleFileKeys.UNet(k, Unet.Config), As(t)));
        foreach (var (k, t) in Vae.state_dict())
        {
            var name = SingleFileKeys.Vae(k, levels);
            // the mid-block attention's linear weights are 1×1 convolutions in the original
            bool conv = name.Contains(".mid.attn_1.") && k.EndsWith(".weight") && t.dim() == 2;
            tensors.Add(new(SingleFileKeys.VaePrefix + name, As(conv ? t.reshape(t.shape[0], t.shape[1], 1, 1) : t)));
        }
        foreach (var (k, t) in TextEncoder.state_dict())
            tensors.Add(new(SingleFileKeys.ClipPrefix + k, As(t)));
        SafeTensors.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>The scheduler config Stable Diffusion 1.x/2.x ship (scaled-linear β from 0.00085 to 0.012 over 1000
    /// steps, "leading" spacing with offset 1).</summary>
    public static JsonObject StableDiffusionSchedule(string predictionType) => new()
    {
        ["num_train_timesteps"] = 1000, ["beta_start"] = 0.00085, ["beta_end"] = 0.012,
        ["beta_schedule"] = "scaled_linear",
        ["steps_offset"] = 1, ["skip_prk_steps"] = true, ["set_alpha_to_one"] = false, ["clip_sample"] = false,
        ["prediction_type"] = predictionType, ["timestep_spacing"] = "leading",
    };

    /// <summary>Refuses pickled checkpoints by name and by their first bytes (a zip archive, a pickle
    /// stream).</summary>
    static void RefusePickle(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: checkpoint file not found", path);
        var ext = Path.GetExtension(path).ToLowerInvariant();
        Span<byte> head = stackalloc byte[4];
        int read;
        using (var f = File.OpenRead(path)) read = f.ReadAtLeast(head, 4, throwOnEndOfStream: false);
        bool zip = read >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4;
        bool pickle = read >= 1 && head[0] == 0x80;
        if (ext is ".ckpt" or ".pt" or ".pth" or ".bin" || zip || pickle)
            throw new SingleFileException(path, null, "a pickled PyTorch checkpoint: LdmLab never unpickles " +
                                                      "(loading a pickle runs code stored in the file). Download the " +
                                                      "model's .safetensors file instead, or convert this one once " +
                                                      "in a sandbox");
    }

    /// <summary>Copies a component's tensors from the file by the original names <paramref name="original"/> gives,
    /// reshaping where only unit dimensions differ (the VAE's 1×1-conv attention weights).</summary>
    static void LoadComponent(nn.Module module, Func<string, string> original, IReadOnlyDictionary<string, Tensor> file,
        string path, HashSet<string> used)
    {
        var sd = module.state_dict();
        var mapped = new Dictionary<string, Tensor>();
        var missing = new List<string>();
        foreach (var (k, t) in sd)
        {
            var name = original(k);
            if (!file.TryGetValue(name, out var f)) { missing.Add(name); continue; }
            used.Add(name);
            bool unitDims = f.numel() == t.numel()
                            && f.shape.Where(s => s != 1).SequenceEqual(t.shape.Where(s => s != 1));
            if (!f.shape.SequenceEqual(t.shape) && !unitDims)
                throw new SingleFileException(path, name, $"shape [{string.Join(", ", f.shape)}], the inferred " +
                                                          $"architecture needs [{string.Join(", ", t.shape)}]");
            mapped[k] = unitDims ? f.reshape(t.shape) : f;
        }
        if (missing.Count > 0)
            throw new SingleFileException(path, missing[0], $"missing ({missing.Count} in all: " +
                                                            $"{string.Join(", ", missing.Take(5))})");
        StateDicts.CopyInto(module, mapped, path);
    }

    /// <summary>The text encoder's tensors in transformers' names (<c>text_model.…</c>), from either layout.</summary>
    static Dictionary<string, Tensor> TextTensors(IReadOnlyDictionary<string, Tensor> file, bool openClip, string path,
        HashSet<string> used)
    {
        string prefix = openClip ? SingleFileKeys.OpenClipPrefix : SingleFileKeys.ClipPrefix;
        var tower = file.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value);
        if (tower.Count == 0)
            throw new SingleFileException(path, null,
                "no text encoder (cond_stage_model.transformer.* or cond_stage_model.model.*)");
        foreach (var k in tower.Keys) used.Add(prefix + k);
        if (!openClip)
            // older files store the CLIP text model without transformers' text_model. level
            return tower.ToDictionary(
                kv => kv.Key.StartsWith("text_model.", StringComparison.Ordinal) ? kv.Key : "text_model." + kv.Key,
                kv => kv.Value);
        return SingleFileKeys.FromOpenClip(tower);               // q, k, v views of the caller's scope
    }
}
