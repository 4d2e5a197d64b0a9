using LdmLab.Autoencoders;
using LdmLab.Interop.Onnx;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static LdmLab.Export.ModuleTree;

namespace LdmLab.Export;

/// <summary>
/// The two graphs of an <see cref="AutoencoderKL"/>, as diffusers' ONNX Stable Diffusion folders hold them:
/// <list type="bullet">
/// <item>vae_encoder: <c>sample</c> [batch, in_channels, height, width] → <c>latent_sample</c>, the posterior mean μ
/// [batch, c, height/f, width/f] (DiagonalGaussian's mode: deterministic, where diffusers' conversion script traces
/// a random draw), and <c>latent_parameters</c>, the moments [μ, log σ²] [batch, 2c, …] as quant_conv gives them
/// (optimum's output; sample z = μ + exp(½ clamp(log σ², −30, 20))·ε from them).</item>
/// <item>vae_decoder: <c>latent_sample</c> [batch, c, h, w] → <c>sample</c> [batch, out_channels, h·f, w·f]
/// (post_quant_conv, then the decoder; latents are divided by scaling_factor before, as diffusers does).</item>
/// </list>
/// </summary>
internal sealed class VaeOnnx(OnnxLayers nn)
{
    OnnxGraphBuilder g => nn.Graph;

    public static void EmitEncoder(OnnxGraphBuilder g, AutoencoderKL vae)
    {
        CheckAll(vae);
        var c = vae.Config;
        var x = g.Input("sample", OnnxGraphBuilder.Float, ["batch", c.InChannels, "height", "width"]);
        var layers = new OnnxLayers(g);
        var moments = new VaeOnnx(layers).Encoder(Child<VaeEncoder>(vae, "", "encoder"), x);    // [B, 2c, h, w]
        moments = layers.Conv("quant_conv", Child<Conv2d>(vae, "", "quant_conv"), moments);      // [μ, log σ²]
        var (mean, _) = layers.Halves(moments, 1);                                               // μ [B, c, h, w]
        g.Output(mean, "latent_sample", OnnxGraphBuilder.Float,
            ["batch", c.LatentChannels, "latent_height", "latent_width"]);
        g.Output(moments, "latent_parameters", OnnxGraphBuilder.Float,
            ["batch", 2 * c.LatentChannels, "latent_height", "latent_width"]);
    }

    public static void EmitDecoder(OnnxGraphBuilder g, AutoencoderKL vae)
    {
        CheckAll(vae);
        var c = vae.Config;
        var z = g.Input("latent_sample", OnnxGraphBuilder.Float, ["batch", c.LatentChannels, "height", "width"]);
        var layers = new OnnxLayers(g);
        var h = layers.Conv("post_quant_conv", Child<Conv2d>(vae, "", "post_quant_conv"), z);   // [B, c, h, w]
        var image = new VaeOnnx(layers).Decoder(Child<VaeDecoder>(vae, "", "decoder"), h);      // [B, C, H, W]
        g.Output(image, "sample", OnnxGraphBuilder.Float,
            ["batch", c.OutChannels, "image_height", "image_width"]);
    }

    /// <summary>x → conv_in → down blocks (ResNets, stride-2 conv padded at the bottom/right) → mid block →
    /// GN → SiLU → conv_out.</summary>
    string Encoder(VaeEncoder m, string x)
    {
        const string path = "encoder";
        var h = nn.Conv($"{path}.conv_in", Child<Conv2d>(m, path, "conv_in"), x);                // [B, C₀, H, W]
        var downs = Items<DownEncoderBlock2D>(m, path, "down_blocks");
        for (int i = 0; i < downs.Count; i++)
        {
            var block = $"{path}.down_blocks.{i}";
            var resnets = Items<ResnetBlock2D>(downs[i], block, "resnets");
            for (int j = 0; j < resnets.Count; j++) h = nn.Resnet($"{block}.resnets.{j}", resnets[j], h, null);
            foreach (var down in Items<Downsample2D>(downs[i], block, "downsamplers"))
                h = nn.Downsample($"{block}.downsamplers.0", down, h);                           // [B, Cᵢ, H/2, W/2]
        }
        h = Mid($"{path}.mid_block", Child<VaeMidBlock>(m, path, "mid_block"), h);
        h = nn.GroupNorm($"{path}.conv_norm_out", Child<GroupNorm>(m, path, "conv_norm_out"), h);
        return nn.Conv($"{path}.conv_out", Child<Conv2d>(m, path, "conv_out"), nn.Silu(h));     // [B, 2c, h, w]
    }

    /// <summary>z → conv_in → mid block → up blocks (ResNets, nearest ×2 + conv) → GN → SiLU → conv_out.</summary>
    string Decoder(VaeDecoder m, string z)
    {
        const string path = "decoder";
        var h = nn.Conv($"{path}.conv_in", Child<Conv2d>(m, path, "conv_in"), z);                // [B, C, h, w]
        h = Mid($"{path}.mid_block", Child<VaeMidBlock>(m, path, "mid_block"), h);
        var ups = Items<UpDecoderBlock2D>(m, path, "up_blocks");
        for (int i = 0; i < ups.Count; i++)
        {
            var block = $"{path}.up_blocks.{i}";
            var resnets = Items<ResnetBlock2D>(ups[i], block, "resnets");
            for (int j = 0; j < resnets.Count; j++) h = nn.Resnet($"{block}.resnets.{j}", resnets[j], h, null);
            foreach (var up in Items<Upsample2D>(ups[i], block, "upsamplers"))
                h = nn.Upsample($"{block}.upsamplers.0", up, h);                                 // [B, Cᵢ, 2h, 2w]
        }
        h = nn.GroupNorm($"{path}.conv_norm_out", Child<GroupNorm>(m, path, "conv_norm_out"), h);
        return nn.Conv($"{path}.conv_out", Child<Conv2d>(m, path, "conv_out"), nn.Silu(h));     // [B, C, H, W]
    }

    /// <summary>ResNet → (self-attention over all pixels →) ResNet, without time embedding.</summary>
    string Mid(string path, VaeMidBlock m, string h)
    {
        var resnets = Items<ResnetBlock2D>(m, path, "resnets");
        var attentions = Items<SpatialSelfAttention>(m, path, "attentions");
        h = nn.Resnet($"{path}.resnets.0", resnets[0], h, null);
        if (attentions.Count > 0) h = SelfAttention($"{path}.attentions.0", attentions[0], h);
        return nn.Resnet($"{path}.resnets.1", resnets[1], h, null);
    }

    /// <summary>One head over the H·W pixels: tokens = GN(x) as [B, H·W, C]; softmax(QKᵀ/√C)V → to_out.0 →
    /// back to [B, C, H, W] → + x.</summary>
    string SelfAttention(string path, SpatialSelfAttention m, string x)
    {
        using var _ = g.Scope(path);
        long channels = Child<Linear>(m, path, "to_q").weight.shape[0];
        var n = nn.GroupNorm($"{path}.group_norm", Child<GroupNorm>(m, path, "group_norm"), x);  // [B, C, H, W]
        var tokens = nn.Transpose(nn.Reshape(n, 0, 0, -1), 0, 2, 1);                             // [B, H·W, C]
        var q = nn.Linear($"{path}.to_q", Child<Linear>(m, path, "to_q"), tokens);
        var k = nn.Linear($"{path}.to_k", Child<Linear>(m, path, "to_k"), tokens);
        var v = nn.Linear($"{path}.to_v", Child<Linear>(m, path, "to_v"), tokens);
        var o = nn.Attend(q, k, v, 1, channels, 1 / Math.Sqrt(channels));                        // [B, H·W, C]
        var outs = Items<torch.nn.Module>(m, path, "to_out");
        if (outs.Count != 2 || outs[0] is not Linear outProj || outs[1] is not Dropout)
            throw new OnnxExportException($"{path}.to_out", "ModuleList", "expected [Linear, Dropout]");
        o = nn.Linear($"{path}.to_out.0", outProj, o);
        return nn.Add(nn.ReshapeTo(nn.Transpose(o, 0, 2, 1), nn.Shape(x)), x);                   // [B, C, H, W]
    }
}
