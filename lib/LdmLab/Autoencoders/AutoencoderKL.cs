using System.Text.Json.Nodes;
using LdmLab.Interop;
using LdmLab.Nn;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Autoencoders;

/// <summary>
/// Single-head self-attention over all pixels with GroupNorm and a residual connection (the VAE mid-block attention;
/// diffusers' Attention with group_norm, bias, residual_connection, upcast_softmax).
/// </summary>
public sealed class SpatialSelfAttention : nn.Module<Tensor, Tensor>
{
    readonly GroupNorm group_norm;
    readonly Linear to_q, to_k, to_v;
    readonly ModuleList<nn.Module<Tensor, Tensor>> to_out;
    readonly double _scale;

    public SpatialSelfAttention(int channels, int groups, double eps) : base(nameof(SpatialSelfAttention))
    {
        group_norm = Layers.GroupNorm(groups, channels, eps);
        to_q = nn.Linear(channels, channels);
        to_k = nn.Linear(channels, channels);
        to_v = nn.Linear(channels, channels);
        to_out = nn.ModuleList<nn.Module<Tensor, Tensor>>(nn.Linear(channels, channels), nn.Dropout(0.0));
        _scale = 1.0 / Math.Sqrt(channels);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0], c = x.shape[1], h = x.shape[2], w = x.shape[3];
        var tokens = group_norm.call(x).reshape(b, c, h * w).transpose(1, 2);       // [B, HW, C]
        var q = to_q.call(tokens); var k = to_k.call(tokens); var v = to_v.call(tokens);
        // float32 inputs: the fused kernel is softmax(q kᵀ/√c) v in float32, as diffusers' upcast_softmax computes it;
        // given [B, 1, HW, C] (one head) it never forms the HW × HW matrix — given [B, HW, C] LibTorch's CPU falls
        // back to the explicit maths (measured: 146 MB against 3 MB for one 64² latent's attention)
        var attended = q.dtype == ScalarType.Float32 && Layers.FusedAttention
            ? nn.functional.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
            : softmax((q.bmm(k.transpose(1, 2)) * _scale).to_type(ScalarType.Float32), -1).to_type(v.dtype).bmm(v);
        var o = to_out[1].call(to_out[0].call(attended));
        return o.transpose(1, 2).reshape(b, c, h, w) + x;
    }
}

/// <summary>ResNet → (attention → ResNet) at the lowest resolution (UNetMidBlock2D without time embedding).</summary>
public sealed class VaeMidBlock : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<SpatialSelfAttention>? attentions;
    readonly ModuleList<ResnetBlock2D> resnets;

    public VaeMidBlock(int channels, int groups, bool addAttention) : base("UNetMidBlock2D")
    {
        if (addAttention) attentions = nn.ModuleList(new SpatialSelfAttention(channels, groups, 1e-6));
        resnets = nn.ModuleList(new ResnetBlock2D(channels, channels, null, groups, 1e-6), new ResnetBlock2D(channels, channels, null, groups, 1e-6));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        x = resnets[0].call(x, null);
        if (attentions is not null) x = attentions[0].call(x);
        return resnets[1].call(x, null);
    }
}

/// <summary>layers × ResNet, then an optional stride-2 conv (DownEncoderBlock2D; padding 0 + right/bottom pad).</summary>
public sealed class DownEncoderBlock2D : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<ResnetBlock2D> resnets;
    readonly ModuleList<Downsample2D>? downsamplers;

    public DownEncoderBlock2D(int inChannels, int outChannels, int layers, int groups, bool addDownsample) : base(nameof(DownEncoderBlock2D))
    {
        resnets = nn.ModuleList(Enumerable.Range(0, layers)
            .Select(j => new ResnetBlock2D(j == 0 ? inChannels : outChannels, outChannels, null, groups, 1e-6)).ToArray());
        if (addDownsample) downsamplers = nn.ModuleList(new Downsample2D(outChannels, outChannels, 0));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        foreach (var r in resnets) x = r.call(x, null);
        return downsamplers is null ? x : downsamplers[0].call(x);
    }
}

/// <summary>(layers + 1) × ResNet, then an optional nearest ×2 upsample + conv (UpDecoderBlock2D).</summary>
public sealed class UpDecoderBlock2D : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<ResnetBlock2D> resnets;
    readonly ModuleList<Upsample2D>? upsamplers;

    public UpDecoderBlock2D(int inChannels, int outChannels, int layers, int groups, bool addUpsample) : base(nameof(UpDecoderBlock2D))
    {
        resnets = nn.ModuleList(Enumerable.Range(0, layers)
            .Select(j => new ResnetBlock2D(j == 0 ? inChannels : outChannels, outChannels, null, groups, 1e-6)).ToArray());
        if (addUpsample) upsamplers = nn.ModuleList(new Upsample2D(outChannels, outChannels));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        foreach (var r in resnets) x = r.call(x, null);
        return upsamplers is null ? x : upsamplers[0].call(x, null);
    }
}

/// <summary>x → conv_in → down blocks → mid block → GN → SiLU → conv_out (2·latent channels, μ and log σ², for the KL-VAE; latent channels for VQ).</summary>
public sealed class VaeEncoder : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv_in;
    readonly ModuleList<DownEncoderBlock2D> down_blocks;
    readonly VaeMidBlock mid_block;
    readonly GroupNorm conv_norm_out;
    readonly Conv2d conv_out;
    internal IDictionary<string, Tensor>? Record;

    public VaeEncoder(AutoencoderKLConfig c, bool doubleZ = true) : base("Encoder")
    {
        var ch = c.BlockOutChannels;
        conv_in = nn.Conv2d(c.InChannels, ch[0], 3, padding: 1);
        down_blocks = nn.ModuleList(Enumerable.Range(0, ch.Length).Select(i =>
            new DownEncoderBlock2D(i == 0 ? ch[0] : ch[i - 1], ch[i], c.LayersPerBlock, c.NormNumGroups, i < ch.Length - 1)).ToArray());
        mid_block = new VaeMidBlock(ch[^1], c.NormNumGroups, c.MidBlockAddAttention);
        conv_norm_out = Layers.GroupNorm(c.NormNumGroups, ch[^1], 1e-6);
        conv_out = nn.Conv2d(ch[^1], doubleZ ? 2 * c.LatentChannels : c.LatentChannels, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        x = conv_in.call(x); Record?.Add("encoder.conv_in", x);
        for (int i = 0; i < down_blocks.Count; i++) { x = down_blocks[i].call(x); Record?.Add($"encoder.down_blocks.{i}", x); }
        x = mid_block.call(x); Record?.Add("encoder.mid_block", x);
        x = conv_out.call(nn.functional.silu(conv_norm_out.call(x))); Record?.Add("encoder.conv_out", x);
        return x;
    }
}

/// <summary>z → conv_in → mid block → up blocks → GN → SiLU → conv_out.</summary>
public sealed class VaeDecoder : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv_in;
    readonly ModuleList<UpDecoderBlock2D> up_blocks;
    readonly VaeMidBlock mid_block;
    readonly GroupNorm conv_norm_out;
    readonly Conv2d conv_out;
    internal IDictionary<string, Tensor>? Record;

    public VaeDecoder(AutoencoderKLConfig c) : base("Decoder")
    {
        var rev = c.BlockOutChannels.Reverse().ToArray();
        conv_in = nn.Conv2d(c.LatentChannels, rev[0], 3, padding: 1);
        up_blocks = nn.ModuleList(Enumerable.Range(0, rev.Length).Select(i =>
            new UpDecoderBlock2D(i == 0 ? rev[0] : rev[i - 1], rev[i], c.LayersPerBlock + 1, c.NormNumGroups, i < rev.Length - 1)).ToArray());
        mid_block = new VaeMidBlock(rev[0], c.NormNumGroups, c.MidBlockAddAttention);
        conv_norm_out = Layers.GroupNorm(c.NormNumGroups, rev[^1], 1e-6);
        conv_out = nn.Conv2d(rev[^1], c.OutChannels, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor z)
    {
        z = conv_in.call(z); Record?.Add("decoder.conv_in", z);
        z = mid_block.call(z); Record?.Add("decoder.mid_block", z);
        for (int i = 0; i < up_blocks.Count; i++) { z = up_blocks[i].call(z); Record?.Add($"decoder.up_blocks.{i}", z); }
        z = conv_out.call(nn.functional.silu(conv_norm_out.call(z))); Record?.Add("decoder.conv_out", z);
        return z;
    }
}

/// <summary>
/// The KL-regularised autoencoder of latent diffusion (diffusers' AutoencoderKL, same structure and state-dict
/// names): x ∈ ℝ^{C×H×W} → q(z|x) = N(μ, σ²) with z ∈ ℝ^{c×H/f×W/f}, f = 2^(blocks−1); decode(z) → x̂.
/// The diffusion model sees z·scaling_factor (≈ unit variance).
/// </summary>
public sealed class AutoencoderKL : nn.Module
{
    readonly VaeEncoder encoder;
    readonly VaeDecoder decoder;
    readonly Conv2d quant_conv, post_quant_conv;

    public AutoencoderKLConfig Config { get; private set; }
    public const string WeightsName = DiffusersFolder.WeightsName;

    public AutoencoderKL(AutoencoderKLConfig config) : base(nameof(AutoencoderKL))
    {
        Config = config;
        encoder = new VaeEncoder(config);
        decoder = new VaeDecoder(config);
        quant_conv = nn.Conv2d(2 * config.LatentChannels, 2 * config.LatentChannels, 1);
        post_quant_conv = nn.Conv2d(config.LatentChannels, config.LatentChannels, 1);
        RegisterComponents();
    }

    /// <summary>
    /// Sets config.scaling_factor (diffusers' name: the diffusion model sees z·scaling_factor), e.g. the 1/σ measured
    /// on a trained VAE's latents; it is saved in config.json with the weights.
    /// </summary>
    public void UseScalingFactor(double scalingFactor)
    {
        if (!(scalingFactor > 0) || double.IsInfinity(scalingFactor))
            throw new ArgumentOutOfRangeException(nameof(scalingFactor), scalingFactor, "scaling_factor must be a positive number");
        Config = Config with { ScalingFactor = scalingFactor };
    }

    /// <summary>
    /// Starts the posterior at log σ² ≈ <paramref name="logVariance"/>: fills the log-variance half of quant_conv's
    /// bias (channels c … 2c − 1 of the moments, as <see cref="DiagonalGaussian"/> splits them). A training choice,
    /// not diffusers' initialisation (0).
    /// </summary>
    public void SetPosteriorLogVarianceBias(double logVariance)
    {
        using var _ = no_grad();
        quant_conv.bias!.narrow(0, Config.LatentChannels, Config.LatentChannels).fill_(logVariance);
    }

    public DiagonalGaussian Encode(Tensor x, IDictionary<string, Tensor>? record = null)
    {
        encoder.Record = record;
        try
        {
            // half-precision weights (HalfPrecision.ToPrecision): compute in their type, hand out the caller's
            var moments = quant_conv.call(encoder.call(HalfPrecision.CastFloating(x, this.ComputeDtype())));
            record?.Add("quant_conv", moments);
            return new DiagonalGaussian(HalfPrecision.CastFloating(moments, x.dtype));
        }
        finally { encoder.Record = null; }
    }

    public Tensor Decode(Tensor z, IDictionary<string, Tensor>? record = null)
    {
        decoder.Record = record;
        try
        {
            var h = post_quant_conv.call(HalfPrecision.CastFloating(z, this.ComputeDtype()));
            record?.Add("post_quant_conv", h);
            return HalfPrecision.CastFloating(decoder.call(h), z.dtype);
        }
        finally { decoder.Record = null; }
    }

    /// <summary>Reconstruction through the posterior mean (or a sample).</summary>
    public Tensor Forward(Tensor x, bool samplePosterior = false)
    {
        var q = Encode(x);
        return Decode(samplePosterior ? q.Sample() : q.Mode());
    }

    public long ParameterCount => parameters().Sum(p => p.numel());

    /// <summary>Loads a diffusers folder: config.json + diffusion_pytorch_model.safetensors; with a
    /// <paramref name="variant"/> diffusion_pytorch_model.{variant}.safetensors where present.</summary>
    public static AutoencoderKL FromPretrained(string dir, string? variant = null) =>
        DiffusersFolder.Load(dir, AutoencoderKLConfig.FromJson, c => new AutoencoderKL(c), variant);

    public void SavePretrained(string dir) => DiffusersFolder.Save(this, Config.ToJson(), dir);
}
