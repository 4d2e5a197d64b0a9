using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.UNet;

namespace LdmLab.Pipelines;

/// <summary>A one-file checkpoint LdmLab cannot read or write: names the file, the key (where one is at fault) and
/// what was expected.</summary>
public sealed class SingleFileException(string? file, string? key, string message)
    : Exception($"{file ?? "single-file checkpoint"}{(key is null ? "" : $": key '{key}'")}: {message}")
{
    public string? File { get; } = file;
    public string? Key { get; } = key;
}

/// <summary>
/// What a one-file checkpoint cannot tell from its tensors, with diffusers' defaults: the image size the model was
/// trained at and its prediction type — unset, an SD 2.x text-to-image checkpoint (OpenCLIP text tower, 4 input
/// channels) is taken as the 768-pixel v-prediction model and everything else as 512-pixel ε-prediction, diffusers'
/// rule for files without a global step (give both for SD 2.x base-512 files) —, the VAE's latent scaling factor and
/// the scheduler. Group-norm groups and head counts are not stored either: they default to SD's rules (32 groups
/// where the channel counts allow it; 8 heads for SD 1.x, 64-channel heads for SD 2.x's 1024-d context; CLIP heads of
/// 64 channels) and can be given for models that break them.
/// </summary>
public sealed record SingleFileOptions
{
    /// <summary>Training resolution in pixels (SD 1.x and 2.x base: 512; SD 2.x 768-v: 768); null: the rule
    /// above.</summary>
    public int? ImageSize { get; init; }
    /// <summary>"epsilon" or "v_prediction"; null: the rule above.</summary>
    public string? PredictionType { get; init; }

    /// <summary>These options with the image size and prediction type filled in by diffusers' rule.</summary>
    public SingleFileOptions Resolved(bool openClip, int inChannels)
    {
        bool v768 = openClip && inChannels == 4;
        var prediction = PredictionType ?? (v768 ? "v_prediction" : "epsilon");
        if (prediction is not ("epsilon" or "v_prediction"))
            throw new ArgumentException($"prediction type '{prediction}': expected epsilon or v_prediction",
                nameof(PredictionType));
        return this with { ImageSize = ImageSize ?? (v768 ? 768 : 512), PredictionType = prediction };
    }
    public double ScalingFactor { get; init; } = 0.18215;
    public string SchedulerClass { get; init; } = "PNDMScheduler";
    public int? NormNumGroups { get; init; }
    public int? UNetHeads { get; init; }
    public int? TextEncoderHeads { get; init; }
}

/// <summary>The diffusers configs a one-file checkpoint's tensors imply (shapes in, configs out).</summary>
public static class SingleFileConfigs
{
    /// <summary>
    /// The U-Net's config from its tensors (keys without <see cref="SingleFileKeys.UNetPrefix"/>): the number of levels
    /// from the downsamplers, layers per block from the number of input blocks (L·(lpb+1) of them after conv_in),
    /// channel widths from each level's first resnet, attention where a level's first slot holds a transformer,
    /// in/out channels (9 in: an inpainting U-Net) from conv_in and out.2, the context width from attn2.to_k,
    /// linear or 1×1-conv projections from proj_in's rank.
    /// </summary>
    public static UNetConfig UNet(IReadOnlyDictionary<string, long[]> s, SingleFileOptions o, string file)
    {
        long[] Shape(string key) => s.TryGetValue(key, out var v) ? v
            : throw new SingleFileException(file, SingleFileKeys.UNetPrefix + key, "missing: not an SD 1.x/2.x U-Net");
        var inputs = s.Keys.Where(k => k.StartsWith("input_blocks.", StringComparison.Ordinal)).ToList();
        int levels = inputs.Count(k => k.EndsWith(".0.op.weight")) + 1;
        int maxInput = inputs.Max(k => int.Parse(k.Split('.')[1]));
        if ((maxInput + 1) % levels != 0)
            throw new SingleFileException(file, null,
                $"{maxInput + 1} U-Net input blocks do not split into {levels} levels");
        int lpb = (maxInput + 1) / levels - 1, n = lpb + 1;
        var range = Enumerable.Range(0, levels).ToList();
        var widths = range.Select(i => (int)Shape($"input_blocks.{n * i + 1}.0.out_layers.3.weight")[0]).ToArray();
        bool DownAttn(int i) => s.ContainsKey($"input_blocks.{n * i + 1}.1.proj_in.weight");
        bool UpAttn(int i) => s.ContainsKey($"output_blocks.{n * i}.1.proj_in.weight");
        var proj = s.Where(kv => kv.Key.EndsWith(".proj_in.weight")).Select(kv => kv.Value).FirstOrDefault()
            ?? throw new SingleFileException(file, null, "no attention (proj_in): not a text-conditioned SD U-Net");
        var toK = s.First(kv => kv.Key.EndsWith(".attn2.to_k.weight")).Value;            // [C, context]
        int context = (int)toK[1];
        var firstAttention = $"input_blocks.{n * range.First(DownAttn) + 1}.1.transformer_blocks.";
        int layers = inputs.Where(k => k.StartsWith(firstAttention, StringComparison.Ordinal))
            .Select(k => k.Split('.')[4]).Distinct().Count();
        // SD 2.x (OpenCLIP's 1024-d context) uses 64-channel heads; SD 1.x 8 heads at every level
        int[] heads = o.UNetHeads is { } h ? [h] : context == 1024 ? widths.Select(w => w / 64).ToArray() : [8];
        if (s.ContainsKey("label_emb.0.0.weight"))
            throw new SingleFileException(file, SingleFileKeys.UNetPrefix + "label_emb.0.0.weight",
                "a class-embedding U-Net (SDXL or unCLIP): LdmLab reads SD 1.x/2.x single files; convert it to a " +
                "diffusers folder with diffusers' from_single_file and load that");
        var convIn = Shape("input_blocks.0.0.weight");
        return new UNetConfig
        {
            SampleSize = (o.ImageSize ?? 512) / 8, InChannels = (int)convIn[1],
            OutChannels = (int)Shape("out.2.weight")[0],
            BlockOutChannels = widths, LayersPerBlock = lpb,
            DownBlockTypes = range.Select(i => DownAttn(i) ? "CrossAttnDownBlock2D" : "DownBlock2D").ToArray(),
            UpBlockTypes = range.Select(i => UpAttn(i) ? "CrossAttnUpBlock2D" : "UpBlock2D").ToArray(),
            MidBlockType = s.ContainsKey("middle_block.1.proj_in.weight") ? "UNetMidBlock2DCrossAttn"
                : throw new SingleFileException(file, SingleFileKeys.UNetPrefix + "middle_block.1.proj_in.weight",
                    "missing: SD U-Nets attend in the mid block"),
            CrossAttentionDim = context, AttentionHeadDim = heads, UseLinearProjection = proj.Length == 2,
            TransformerLayersPerBlock = [layers],
            NormNumGroups = o.NormNumGroups ?? Groups(s.Where(kv => kv.Key.Contains("in_layers.0.weight"))
                .Select(kv => kv.Value[0])),
        };
    }

    /// <summary>The VAE's config from its tensors (keys without <see cref="SingleFileKeys.VaePrefix"/>).</summary>
    public static AutoencoderKLConfig Vae(IReadOnlyDictionary<string, long[]> s, SingleFileOptions o, string file)
    {
        long[] Shape(string key) => s.TryGetValue(key, out var v) ? v
            : throw new SingleFileException(file, SingleFileKeys.VaePrefix + key, "missing: not an SD KL autoencoder");
        int levels = s.Keys.Count(k => k.StartsWith("encoder.down.", StringComparison.Ordinal)
                                       && k.EndsWith(".block.0.conv1.weight"));
        int lpb = s.Keys.Count(k => k.StartsWith("encoder.down.0.block.", StringComparison.Ordinal)
                                    && k.EndsWith(".conv1.weight"));
        if (levels == 0) Shape("encoder.down.0.block.0.conv1.weight");
        return new AutoencoderKLConfig
        {
            InChannels = (int)Shape("encoder.conv_in.weight")[1],
            OutChannels = (int)Shape("decoder.conv_out.weight")[0],
            LatentChannels = (int)Shape("post_quant_conv.weight")[0],
            BlockOutChannels = Enumerable.Range(0, levels)
                .Select(i => (int)Shape($"encoder.down.{i}.block.0.conv1.weight")[0]).ToArray(),
            LayersPerBlock = lpb, SampleSize = o.ImageSize ?? 512, ScalingFactor = o.ScalingFactor,
            MidBlockAddAttention = s.ContainsKey("encoder.mid.attn_1.q.weight"),
            NormNumGroups = o.NormNumGroups
                            ?? Groups(s.Where(kv => kv.Key.EndsWith(".norm1.weight")).Select(kv => kv.Value[0])),
        };
    }

    /// <summary>The CLIP text encoder's config from its tensors, in transformers' names (keys after
    /// <c>text_model.</c>); <paramref name="openClip"/>: SD 2.x's tower (GELU, used to its penultimate
    /// layer).</summary>
    public static ClipTextConfig Clip(IReadOnlyDictionary<string, long[]> s, bool openClip, SingleFileOptions o,
        string file)
    {
        long[] Shape(string key) => s.TryGetValue("text_model." + key, out var v) ? v
            : throw new SingleFileException(file, key, "missing from the text encoder");
        var token = Shape("embeddings.token_embedding.weight");                               // [vocab, d]
        int d = (int)token[1];
        int layers = s.Keys.Where(k => k.StartsWith("text_model.encoder.layers.", StringComparison.Ordinal))
            .Select(k => int.Parse(k.Split('.')[3])).Distinct().Count();
        int heads = o.TextEncoderHeads ?? (d % 64 == 0 ? d / 64
            : throw new SingleFileException(file, null, $"the text encoder's width {d} is not a multiple of 64: " +
                                                        "give its head count (SingleFileOptions.TextEncoderHeads)"));
        var basis = openClip ? ClipTextConfig.OpenClipVitH : ClipTextConfig.VitL14;
        return basis with
        {
            VocabSize = (int)token[0],
            HiddenSize = d,
            MaxPositionEmbeddings = (int)Shape("embeddings.position_embedding.weight")[0],
            IntermediateSize = (int)Shape("encoder.layers.0.mlp.fc1.weight")[0],
            NumAttentionHeads = heads,
            NumHiddenLayers = openClip ? layers - 1 : layers,           // SD 2 conditions on the penultimate layer
            ProjectionDim = d,
        };
    }

    /// <summary>SD's group-norm rule, 32 groups, where every normalised width allows it; otherwise the largest
    /// power of two ≤ 32 dividing them all (tiny test models).</summary>
    static int Groups(IEnumerable<long> widths)
    {
        var all = widths.ToList();
        for (int g = 32; g > 1; g /= 2)
            if (all.All(w => w % g == 0)) return g;
        return 1;
    }
}
