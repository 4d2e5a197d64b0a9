using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Autoencoders;

/// <summary>
/// The VQ autoencoder of latent diffusion (diffusers' VQModel layout: encoder, quant_conv, quantize, post_quant_conv,
/// decoder): x → E(x) → nearest codebook vectors → D. The same encoder/decoder blocks as <see cref="AutoencoderKL"/>.
/// </summary>
public sealed class VQModel : nn.Module
{
    readonly VaeEncoder encoder;
    readonly Conv2d quant_conv;
    readonly VectorQuantizer quantize;
    readonly Conv2d post_quant_conv;
    readonly VaeDecoder decoder;

    public AutoencoderKLConfig Config { get; }
    public VectorQuantizer Quantizer => quantize;

    public VQModel(AutoencoderKLConfig config, int numCodes, double beta = 0.25, bool useEma = true) : base(nameof(VQModel))
    {
        Config = config;
        encoder = new VaeEncoder(config, doubleZ: false);
        quant_conv = nn.Conv2d(config.LatentChannels, config.LatentChannels, 1);
        quantize = new VectorQuantizer(numCodes, config.LatentChannels, beta, useEma);
        post_quant_conv = nn.Conv2d(config.LatentChannels, config.LatentChannels, 1);
        decoder = new VaeDecoder(config);
        RegisterComponents();
    }

    /// <summary>The continuous encoder output before quantisation.</summary>
    public Tensor Encode(Tensor x) => quant_conv.call(encoder.call(x));

    public QuantizerOutput Quantize(Tensor h) => quantize.Forward(h);

    public Tensor Decode(Tensor quantized) => decoder.call(post_quant_conv.call(quantized));

    /// <summary>Reconstruction and the quantiser's losses and usage.</summary>
    public (Tensor reconstruction, QuantizerOutput q) Forward(Tensor x)
    {
        var q = quantize.Forward(Encode(x));
        return (Decode(q.Quantized), q);
    }
}
