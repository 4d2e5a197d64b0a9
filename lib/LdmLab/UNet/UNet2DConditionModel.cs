using System.Text.Json.Nodes;
using LdmLab.Interop;
using LdmLab.Nn;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.UNet;

/// <summary>
/// The denoiser ε_θ(z_t, t, c) with the structure and state-dict names of diffusers' UNet2DConditionModel:
/// sinusoidal time features → MLP; conv_in; down blocks (ResNet + spatial transformer with self- and cross-attention);
/// mid block; up blocks with skip connections; GroupNorm → SiLU → conv_out. Any config in that format; any number
/// of latent channels. Loads and saves diffusers folders (config.json + diffusion_pytorch_model.safetensors).
/// </summary>
public sealed class UNet2DConditionModel : nn.Module
{
    // Field order = diffusers' registration order, so state_dict() lists keys in the same order.
    // Conv2d and Linear layers are declared nn.Module<Tensor, Tensor> so Compression can swap in int8 twins.
    readonly nn.Module<Tensor, Tensor> conv_in;
    readonly TimestepEmbedding time_embedding;
    readonly nn.Module<Tensor, Tensor>? class_embedding;   // labels (num_class_embeds) or vectors (projection)
    readonly TimestepEmbedding? add_embedding;   // SDXL's "text_time" conditioning
    readonly ModuleList<DownBlock> down_blocks;
    readonly ModuleList<UpBlock> up_blocks;
    readonly MidBlock mid_block;
    readonly GroupNorm conv_norm_out;
    readonly nn.Module<Tensor, Tensor> conv_out;

    public UNetConfig Config { get; }

    public UNet2DConditionModel(UNetConfig config) : base(nameof(UNet2DConditionModel))
    {
        config.Validate();
        Config = config;
        var ch = config.BlockOutChannels;
        conv_in = nn.Conv2d(config.InChannels, ch[0], config.ConvInKernel, padding: (config.ConvInKernel - 1) / 2);
        time_embedding = new TimestepEmbedding(ch[0], config.TimeEmbedDim);
        if (config.NumClassEmbeds is int k) class_embedding = nn.Embedding(k, config.TimeEmbedDim);
        if (config.ClassEmbedType == "projection")
            class_embedding = new TimestepEmbedding(config.ProjectionClassEmbeddingsInputDim!.Value,
                config.TimeEmbedDim);
        if (config.AdditionEmbedType == "text_time")
            add_embedding = new TimestepEmbedding(config.ProjectionClassEmbeddingsInputDim!.Value, config.TimeEmbedDim);

        var downs = new List<DownBlock>();
        int output = ch[0];
        for (int i = 0; i < ch.Length; i++)
        {
            int input = output;
            output = ch[i];
            downs.Add(new DownBlock(config, i, input, output, config.DownBlockTypes[i] == "CrossAttnDownBlock2D", i < ch.Length - 1));
        }
        down_blocks = nn.ModuleList(downs.ToArray());

        var ups = new List<UpBlock>();
        var rev = ch.Reverse().ToArray();
        output = rev[0];
        for (int i = 0; i < rev.Length; i++)
        {
            int prevOutput = output;
            output = rev[i];
            int input = rev[Math.Min(i + 1, rev.Length - 1)];
            ups.Add(new UpBlock(config, i, input, prevOutput, output, config.UpBlockTypes[i] == "CrossAttnUpBlock2D", i < rev.Length - 1));
        }
        up_blocks = nn.ModuleList(ups.ToArray());
        mid_block = new MidBlock(config, ch[^1], layers: config.MidBlockType == "UNetMidBlock2D" ? 0 : 1);
        conv_norm_out = Layers.GroupNorm(config.NormNumGroups, ch[0], config.NormEps);
        conv_out = nn.Conv2d(ch[0], config.OutChannels, config.ConvOutKernel, padding: (config.ConvOutKernel - 1) / 2);
        RegisterComponents();
        for (int i = 0; i < down_blocks.Count; i++) down_blocks[i].Name($"down_blocks.{i}");
        mid_block.Name("mid_block");
        for (int i = 0; i < up_blocks.Count; i++) up_blocks[i].Name($"up_blocks.{i}");
    }

    public long ParameterCount => parameters().Sum(p => p.numel());

    /// <summary>
    /// Gradient checkpointing (diffusers' <c>enable_gradient_checkpointing</c>): while training with gradients on,
    /// each down, mid and up block runs as one <see cref="GradientCheckpoint"/> segment — its activations are
    /// recomputed in backward instead of stored. Same loss and gradients, less memory, about a third more compute.
    /// </summary>
    public bool GradientCheckpointing { get; set; }

    public void EnableGradientCheckpointing() => GradientCheckpointing = true;
    public void DisableGradientCheckpointing() => GradientCheckpointing = false;

    /// <summary>
    /// Model output for latents [B,C,H,W], timesteps ([B] or a scalar, int or float) and context [B, L, cross_attention_dim].
    /// <paramref name="record"/> receives the outputs of the top-level modules by name (for parity checks and diagnostics).
    /// </summary>
    /// <param name="textEmbeds">SDXL (addition_embed_type text_time): the pooled text embedding [B, d_pooled].</param>
    /// <param name="timeIds">SDXL: [B, 6] original size, crop top-left and target size (h, w each).</param>
    /// <param name="classLabels">num_class_embeds: labels [B]; class_embed_type projection: vectors [B, d].</param>
    /// <param name="adaptDownBlocks">(block index, its last hidden state) → the state that continues: spatial
    /// conditions added to or gating each level (T2I-Adapter's place); null: none.</param>
    public Tensor Forward(Tensor sample, Tensor timesteps, Tensor? encoderHiddenStates, Tensor? classLabels = null,
        IDictionary<string, Tensor>? record = null, Tensor? textEmbeds = null, Tensor? timeIds = null,
        Func<int, Tensor, Tensor>? adaptDownBlocks = null)
    {
        long b = sample.shape[0];
        // half-precision weights (HalfPrecision.ToPrecision): compute in their type, hand out the caller's
        var outputDtype = sample.dtype;
        var dtype = this.ComputeDtype();
        sample = HalfPrecision.CastFloating(sample, dtype);
        if (encoderHiddenStates is not null)
            encoderHiddenStates = HalfPrecision.CastFloating(encoderHiddenStates, dtype);
        if (classLabels is not null) classLabels = HalfPrecision.CastFloating(classLabels, dtype);
        if (textEmbeds is not null) textEmbeds = HalfPrecision.CastFloating(textEmbeds, dtype);
        if (timesteps.dim() == 0) timesteps = timesteps.expand(b);
        if (Config.CenterInputSample) sample = 2 * sample - 1.0;
        var tFeat = TimestepFeatures.Embed(timesteps.to(sample.device), Config.BlockOutChannels[0], Config.FlipSinToCos, Config.FreqShift).to_type(sample.dtype);
        record?.Add("time_proj", tFeat);
        var emb = time_embedding.call(tFeat);
        if (class_embedding is not null)
        {
            if (classLabels is null)
                throw new ArgumentException("this U-Net has num_class_embeds or class_embed_type projection: pass " +
                                            "class labels (or the vectors to project)", nameof(classLabels));
            emb = emb + class_embedding.call(classLabels.to(sample.device)).to_type(emb.dtype);
        }
        if (add_embedding is not null)
        {
            if (textEmbeds is null || timeIds is null)
                throw new ArgumentException("this U-Net has addition_embed_type text_time (SDXL): pass textEmbeds and timeIds");
            // c_add = MLP([pooled text; sinusoid(each of the 6 ids)]), added to the time embedding
            var idFeatures = TimestepFeatures.Embed(timeIds.flatten().to(sample.device), Config.AdditionTimeEmbedDim!.Value,
                Config.FlipSinToCos, Config.FreqShift).reshape(b, -1);                            // [B, 6·256]
            emb = emb + add_embedding.call(cat([textEmbeds.to(sample.device), idFeatures], -1).to_type(emb.dtype));
        }
        record?.Add("time_embedding", emb);

        // channels-last weights (MemoryFormat.ToChannelsLast): the activations follow in NHWC order, same shapes
        bool channelsLast = conv_in is Conv2d c && MemoryFormat.UsesChannelsLast(c);
        if (channelsLast) sample = MemoryFormat.ToChannelsLast(sample);
        var h = conv_in.call(sample);
        record?.Add("conv_in", h);
        var skips = new List<Tensor> { h };
        bool recompute = GradientCheckpointing && training && is_grad_enabled();
        if (recompute && adaptDownBlocks is not null)
            throw new ArgumentException("gradient checkpointing cannot recompute adaptDownBlocks (its gradients " +
                                        "would be lost): disable one of them", nameof(adaptDownBlocks));
        for (int i = 0; i < down_blocks.Count; i++)
        {
            int block = i;
            var down = down_blocks[i];
            var (o, s) = recompute
                ? Checkpointed(down, x => down.Forward(x[0]!, x[1]!, x[2]).skips, h, emb, encoderHiddenStates)
                : down.Forward(h, emb, encoderHiddenStates,
                    adaptDownBlocks is null ? null : x => adaptDownBlocks(block, x));
            h = o;
            skips.AddRange(s);
            record?.Add($"down_blocks.{i}", h);
        }
        h = recompute
            ? Checkpointed(mid_block, x => [mid_block.Forward(x[0]!, x[1]!, x[2])], h, emb, encoderHiddenStates).output
            : mid_block.Forward(h, emb, encoderHiddenStates);
        record?.Add("mid_block", h);
        for (int i = 0; i < up_blocks.Count; i++)
        {
            var up = up_blocks[i];
            int n = up.Layers;
            var mine = skips.GetRange(skips.Count - n, n);
            skips.RemoveRange(skips.Count - n, n);
            long[]? size = skips.Count > 0 ? skips[^1].shape[2..] : null;
            h = recompute
                ? Checkpointed(up, x => [up.Forward(x[0]!, x[3..]!, x[1]!, x[2], size)],
                    [h, emb, encoderHiddenStates, .. mine]).output
                : up.Forward(h, mine, emb, encoderHiddenStates, size);
            record?.Add($"up_blocks.{i}", h);
        }
        h = conv_norm_out.call(h);
        record?.Add("conv_norm_out", h);
        h = conv_out.call(nn.functional.silu(h));
        record?.Add("conv_out", h);
        if (channelsLast) h = h.contiguous();                                          // hand out NCHW order
        return HalfPrecision.CastFloating(h, outputDtype);
    }

    /// <summary>One block as a checkpoint segment: (its last output, all its outputs — a down block's skips).</summary>
    static (Tensor output, List<Tensor> skips) Checkpointed(nn.Module block, Func<Tensor?[], IEnumerable<Tensor>> f,
        params Tensor?[] inputs)
    {
        var outputs = GradientCheckpoint.Run(block, x => f(x).ToArray(), inputs);
        return (outputs[^1], outputs.ToList());
    }

    public const string WeightsName = DiffusersFolder.WeightsName;

    /// <summary>Loads a diffusers folder: config.json + diffusion_pytorch_model.safetensors (every key must match);
    /// with a <paramref name="variant"/> diffusion_pytorch_model.{variant}.safetensors where present.</summary>
    public static UNet2DConditionModel FromPretrained(string dir, string? variant = null) =>
        DiffusersFolder.Load(dir, UNetConfig.FromJson, c => new UNet2DConditionModel(c), variant);

    /// <summary>Writes config.json and the safetensors weights (diffusers names) atomically.</summary>
    public void SavePretrained(string dir) => DiffusersFolder.Save(this, Config.ToJson(), dir);
}
