using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace LdmLab.UNet;

/// <summary>The diffusers UNet2DConditionModel config (config.json), with diffusers' defaults.</summary>
public sealed record UNetConfig
{
    public int SampleSize { get; init; } = 64;
    public int InChannels { get; init; } = 4;
    public int OutChannels { get; init; } = 4;
    public bool CenterInputSample { get; init; }
    public bool FlipSinToCos { get; init; } = true;
    public int FreqShift { get; init; }
    public string[] DownBlockTypes { get; init; } = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"];
    /// <summary>"UNetMidBlock2DCrossAttn" (SD) or "UNetMidBlock2D" (one ResNet, no attention: models conditioned
    /// without cross-attention).</summary>
    public string MidBlockType { get; init; } = "UNetMidBlock2DCrossAttn";
    public string[] UpBlockTypes { get; init; } = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"];
    public bool[] OnlyCrossAttention { get; init; } = [false];
    public bool OnlyCross(int block) => OnlyCrossAttention.Length == 1 ? OnlyCrossAttention[0] : OnlyCrossAttention[block];
    public int[] BlockOutChannels { get; init; } = [320, 640, 1280, 1280];
    public int LayersPerBlock { get; init; } = 2;
    public int DownsamplePadding { get; init; } = 1;
    public double MidBlockScaleFactor { get; init; } = 1;
    public string ActFn { get; init; } = "silu";
    public int NormNumGroups { get; init; } = 32;
    public double NormEps { get; init; } = 1e-5;
    public int CrossAttentionDim { get; init; } = 1280;
    public int[] TransformerLayersPerBlock { get; init; } = [1];
    /// <summary>diffusers' historical naming: "attention_head_dim" is the number of heads unless num_attention_heads is set.</summary>
    public int[] AttentionHeadDim { get; init; } = [8];
    public int[]? NumAttentionHeads { get; init; }
    public bool UseLinearProjection { get; init; }
    public bool UpcastAttention { get; init; }
    public int? NumClassEmbeds { get; init; }
    /// <summary>null, or "projection": a float vector per sample (e.g. a pooled text embedding) through an MLP
    /// (projection_class_embeddings_input_dim → time_embed_dim), added to the time embedding. Left out of a recipe
    /// key's JSON while null, so the keys of models made before it existed stay what they were.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? ClassEmbedType { get; init; }
    public string ResnetTimeScaleShift { get; init; } = "default";
    public double ResnetOutScaleFactor { get; init; } = 1.0;
    public int ConvInKernel { get; init; } = 3;
    public int ConvOutKernel { get; init; } = 3;
    /// <summary>null, or "text_time" (SDXL: pooled text embedding + sinusoidal features of the 6 size/crop ids).</summary>
    public string? AdditionEmbedType { get; init; }
    public int? AdditionTimeEmbedDim { get; init; }
    public int? ProjectionClassEmbeddingsInputDim { get; init; }

    /// <summary>Stable Diffusion 1.5's U-Net (runwayml/stable-diffusion-v1-5, unet/config.json): the defaults with cross_attention_dim 768.</summary>
    public static UNetConfig StableDiffusion15 => new() { CrossAttentionDim = 768 };

    public int TimeEmbedDim => BlockOutChannels[0] * 4;
    public int Heads(int block) => Per(NumAttentionHeads ?? AttentionHeadDim, block);
    public int TransformerLayers(int block) => Per(TransformerLayersPerBlock, block);
    static int Per(int[] values, int block) => values.Length == 1 ? values[0] : values[block];

    static readonly HashSet<string> Understood =
    [
        "sample_size", "in_channels", "out_channels", "center_input_sample", "flip_sin_to_cos", "freq_shift", "down_block_types",
        "mid_block_type", "up_block_types", "only_cross_attention", "block_out_channels", "layers_per_block", "downsample_padding",
        "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim", "transformer_layers_per_block",
        "attention_head_dim", "num_attention_heads", "use_linear_projection", "upcast_attention", "num_class_embeds",
        "resnet_time_scale_shift", "resnet_out_scale_factor", "conv_in_kernel", "conv_out_kernel", "dropout",
    ];

    // Keys that must keep their default for this implementation (anything else is rejected with its name).
    static readonly Dictionary<string, string> MustBeDefault = new()
    {
        ["encoder_hid_dim"] = "null", ["encoder_hid_dim_type"] = "null",
        ["time_cond_proj_dim"] = "null", ["time_embedding_dim"] = "null", ["time_embedding_act_fn"] = "null", ["timestep_post_act"] = "null",
        ["dual_cross_attention"] = "false", ["class_embeddings_concat"] = "false", ["resnet_skip_time_act"] = "false",
        ["time_embedding_type"] = "\"positional\"", ["attention_type"] = "\"default\"", ["cross_attention_norm"] = "null",
        ["reverse_transformer_layers_per_block"] = "null", ["mid_block_only_cross_attention"] = "null",
    };

    public static UNetConfig FromJson(JsonObject o, string source = "config.json")
    {
        foreach (var (k, must) in MustBeDefault)
            if (o[k] is { } v && v.ToJsonString() != must && !(must == "null" && v.ToJsonString() == "null"))
                throw new NotSupportedException($"{source}: {k} = {v.ToJsonString()} is not supported (only {must})");
        int[] Ints(string key, int[] fallback) => o[key] switch
        {
            null => fallback,
            JsonArray a => a.Select(x => (int)x!).ToArray(),
            var v => [(int)v],
        };
        var c = new UNetConfig
        {
            SampleSize = (int?)o["sample_size"] ?? 64,
            InChannels = (int?)o["in_channels"] ?? 4,
            OutChannels = (int?)o["out_channels"] ?? 4,
            CenterInputSample = (bool?)o["center_input_sample"] ?? false,
            FlipSinToCos = (bool?)o["flip_sin_to_cos"] ?? true,
            FreqShift = (int?)o["freq_shift"] ?? 0,
            DownBlockTypes = o["down_block_types"]?.AsArray().Select(x => (string)x!).ToArray() ?? new UNetConfig().DownBlockTypes,
            UpBlockTypes = o["up_block_types"]?.AsArray().Select(x => (string)x!).ToArray() ?? new UNetConfig().UpBlockTypes,
            OnlyCrossAttention = o["only_cross_attention"] switch { null => [false], JsonArray a => a.Select(x => (bool)x!).ToArray(), var v => [(bool)v] },
            BlockOutChannels = Ints("block_out_channels", [320, 640, 1280, 1280]),
            LayersPerBlock = (int?)o["layers_per_block"] ?? 2,
            DownsamplePadding = (int?)o["downsample_padding"] ?? 1,
            MidBlockScaleFactor = (double?)o["mid_block_scale_factor"] ?? 1,
            ActFn = (string?)o["act_fn"] ?? "silu",
            NormNumGroups = (int?)o["norm_num_groups"] ?? 32,
            NormEps = (double?)o["norm_eps"] ?? 1e-5,
            CrossAttentionDim = (int?)o["cross_attention_dim"] ?? 1280,
            TransformerLayersPerBlock = Ints("transformer_layers_per_block", [1]),
            AttentionHeadDim = Ints("attention_head_dim", [8]),
            NumAttentionHeads = o["num_attention_heads"] is null ? null : Ints("num_attention_heads", [8]),
            UseLinearProjection = (bool?)o["use_linear_projection"] ?? false,
            UpcastAttention = (bool?)o["upcast_attention"] ?? false,
            NumClassEmbeds = (int?)o["num_class_embeds"],
            ClassEmbedType = (string?)o["class_embed_type"],
            MidBlockType = (string?)o["mid_block_type"] ?? "UNetMidBlock2DCrossAttn",
            ResnetTimeScaleShift = (string?)o["resnet_time_scale_shift"] ?? "default",
            ResnetOutScaleFactor = (double?)o["resnet_out_scale_factor"] ?? 1.0,
            ConvInKernel = (int?)o["conv_in_kernel"] ?? 3,
            ConvOutKernel = (int?)o["conv_out_kernel"] ?? 3,
            AdditionEmbedType = (string?)o["addition_embed_type"],
            AdditionTimeEmbedDim = (int?)o["addition_time_embed_dim"],
            ProjectionClassEmbeddingsInputDim = (int?)o["projection_class_embeddings_input_dim"],
        };
        c.Validate(source);
        return c;
    }

    public JsonObject ToJson() => new()
    {
        ["_class_name"] = "UNet2DConditionModel",
        ["_diffusers_version"] = "0.27.2",
        ["sample_size"] = SampleSize, ["in_channels"] = InChannels, ["out_channels"] = OutChannels,
        ["center_input_sample"] = CenterInputSample, ["flip_sin_to_cos"] = FlipSinToCos, ["freq_shift"] = FreqShift,
        ["down_block_types"] = new JsonArray(DownBlockTypes.Select(s => (JsonNode)s).ToArray()),
        ["mid_block_type"] = MidBlockType,
        ["up_block_types"] = new JsonArray(UpBlockTypes.Select(s => (JsonNode)s).ToArray()),
        ["only_cross_attention"] = OnlyCrossAttention.Length == 1 ? OnlyCrossAttention[0] : new JsonArray(OnlyCrossAttention.Select(s => (JsonNode)s).ToArray()),
        ["block_out_channels"] = new JsonArray(BlockOutChannels.Select(s => (JsonNode)s).ToArray()),
        ["layers_per_block"] = LayersPerBlock, ["downsample_padding"] = DownsamplePadding, ["mid_block_scale_factor"] = MidBlockScaleFactor,
        ["act_fn"] = ActFn, ["norm_num_groups"] = NormNumGroups, ["norm_eps"] = NormEps, ["cross_attention_dim"] = CrossAttentionDim,
        ["transformer_layers_per_block"] = TransformerLayersPerBlock.Length == 1 ? TransformerLayersPerBlock[0] : new JsonArray(TransformerLayersPerBlock.Select(s => (JsonNode)s).ToArray()),
        ["attention_head_dim"] = AttentionHeadDim.Length == 1 ? AttentionHeadDim[0] : new JsonArray(AttentionHeadDim.Select(s => (JsonNode)s).ToArray()),
        ["num_attention_heads"] = NumAttentionHeads is null ? null : NumAttentionHeads.Length == 1 ? NumAttentionHeads[0] : new JsonArray(NumAttentionHeads.Select(s => (JsonNode)s).ToArray()),
        ["use_linear_projection"] = UseLinearProjection, ["upcast_attention"] = UpcastAttention,
        ["num_class_embeds"] = NumClassEmbeds, ["class_embed_type"] = ClassEmbedType,
        ["resnet_time_scale_shift"] = ResnetTimeScaleShift, ["resnet_out_scale_factor"] = ResnetOutScaleFactor,
        ["conv_in_kernel"] = ConvInKernel, ["conv_out_kernel"] = ConvOutKernel, ["time_embedding_type"] = "positional",
        ["dropout"] = 0.0, ["addition_embed_type"] = AdditionEmbedType, ["addition_time_embed_dim"] = AdditionTimeEmbedDim,
        ["projection_class_embeddings_input_dim"] = ProjectionClassEmbeddingsInputDim,
    };

    public void Validate(string source = "config")
    {
        int n = BlockOutChannels.Length;
        Interop.ConfigFile.RequirePositive(source, ("number of blocks", n), ("sample_size", SampleSize), ("in_channels", InChannels),
            ("out_channels", OutChannels), ("layers_per_block", LayersPerBlock), ("norm_num_groups", NormNumGroups),
            ("cross_attention_dim", CrossAttentionDim), ("conv_in_kernel", ConvInKernel), ("conv_out_kernel", ConvOutKernel));
        Interop.ConfigFile.RequirePositive(source, BlockOutChannels.Select(c => ("block_out_channels", (long)c))
            .Concat(AttentionHeadDim.Select(h => ("attention_head_dim", (long)h)))
            .Concat((NumAttentionHeads ?? []).Select(h => ("num_attention_heads", (long)h)))
            .Concat(TransformerLayersPerBlock.Select(l => ("transformer_layers_per_block", (long)l))).ToArray());
        if (DownBlockTypes.Length != n || UpBlockTypes.Length != n)
            throw new ArgumentException($"{source}: {DownBlockTypes.Length} down and {UpBlockTypes.Length} up block types for {n} block_out_channels");
        foreach (var t in DownBlockTypes)
            if (t is not ("DownBlock2D" or "CrossAttnDownBlock2D")) throw new NotSupportedException($"{source}: down block type '{t}'");
        foreach (var t in UpBlockTypes)
            if (t is not ("UpBlock2D" or "CrossAttnUpBlock2D")) throw new NotSupportedException($"{source}: up block type '{t}'");
        if (AdditionEmbedType is not (null or "text_time"))
            throw new NotSupportedException($"{source}: addition_embed_type '{AdditionEmbedType}' (supported: null, text_time)");
        if (AdditionEmbedType == "text_time" && (AdditionTimeEmbedDim is null || ProjectionClassEmbeddingsInputDim is null))
            throw new ArgumentException($"{source}: addition_embed_type text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim");
        if (MidBlockType is not ("UNetMidBlock2DCrossAttn" or "UNetMidBlock2D"))
            throw new NotSupportedException($"{source}: mid_block_type '{MidBlockType}' " +
                                            "(supported: UNetMidBlock2DCrossAttn, UNetMidBlock2D)");
        if (ClassEmbedType is not (null or "projection"))
            throw new NotSupportedException(
                $"{source}: class_embed_type '{ClassEmbedType}' (supported: null, projection)");
        if (ClassEmbedType == "projection" && (ProjectionClassEmbeddingsInputDim is null || NumClassEmbeds is not null))
            throw new ArgumentException($"{source}: class_embed_type projection needs " +
                                        "projection_class_embeddings_input_dim and no num_class_embeds");
        if (ActFn is not ("silu" or "swish")) throw new NotSupportedException($"{source}: act_fn '{ActFn}'");
        if (ResnetTimeScaleShift is not ("default" or "scale_shift")) throw new NotSupportedException($"{source}: resnet_time_scale_shift '{ResnetTimeScaleShift}'");
        foreach (var ch in BlockOutChannels)
            if (ch % NormNumGroups != 0) throw new ArgumentException($"{source}: block_out_channels {ch} is not divisible by norm_num_groups {NormNumGroups}");
        foreach (var (name, values) in new[] { ("attention_head_dim", (Array)AttentionHeadDim), ("num_attention_heads", (Array?)NumAttentionHeads ?? Array.Empty<int>()),
                     ("transformer_layers_per_block", TransformerLayersPerBlock), ("only_cross_attention", OnlyCrossAttention) })
            if (values.Length is not (0 or 1) && values.Length != n) throw new ArgumentException($"{source}: {name} has {values.Length} entries for {n} blocks");
        for (int i = 0; i < n; i++)
            if ((DownBlockTypes[i] == "CrossAttnDownBlock2D" || UpBlockTypes[n - 1 - i] == "CrossAttnUpBlock2D"
                 || (i == n - 1 && MidBlockType == "UNetMidBlock2DCrossAttn")) && BlockOutChannels[i] % Heads(i) != 0)
                throw new ArgumentException($"{source}: {BlockOutChannels[i]} channels cannot be split into {Heads(i)} heads");
    }
}
