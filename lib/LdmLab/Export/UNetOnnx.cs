using LdmLab.Interop.Onnx;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static LdmLab.Export.ModuleTree;
using static TorchSharp.torch;

namespace LdmLab.Export;

/// <summary>
/// The graph of a <see cref="UNet2DConditionModel"/> with the inputs and output diffusers' ONNX export names:
/// <c>sample</c> [batch, in_channels, height, width], <c>timestep</c> (float; a scalar, [1] or [batch]: it
/// broadcasts, as diffusers' ONNX pipeline feeds one timestep for the doubled guidance batch),
/// <c>encoder_hidden_states</c> [batch, sequence, cross_attention_dim] → <c>out_sample</c>. Walks the model as
/// <see cref="UNet2DConditionModel.Forward"/> runs it: time features → MLP; conv_in; down blocks (ResNet [→ spatial
/// transformer]) keeping every skip; mid block; up blocks concatenating the skips; GN → SiLU → conv_out.
/// </summary>
internal sealed class UNetOnnx(OnnxLayers nn, UNetConfig config)
{
    OnnxGraphBuilder g => nn.Graph;

    public static void Emit(OnnxGraphBuilder g, UNet2DConditionModel unet)
    {
        var c = unet.Config;
        CheckAll(unet);
        if (TryChild<torch.nn.Module>(unet, "", "class_embedding") is { } classes)
            throw new OnnxExportException("class_embedding", TypeName(classes),
                "class-conditioned U-Nets (num_class_embeds, class_embed_type) are not exported");
        if (TryChild<torch.nn.Module>(unet, "", "add_embedding") is { } added)
            throw new OnnxExportException("add_embedding", TypeName(added),
                "SDXL's text_time conditioning (addition_embed_type) is not exported");
        if (c.BlockOutChannels[0] % 2 == 1)
            throw new OnnxExportException("time_proj", "Timesteps",
                $"odd timestep feature width {c.BlockOutChannels[0]} is not exported");

        var sample = g.Input("sample", OnnxGraphBuilder.Float, ["batch", c.InChannels, "height", "width"]);
        var timestep = g.Input("timestep", OnnxGraphBuilder.Float, null);
        var context = g.Input("encoder_hidden_states", OnnxGraphBuilder.Float,
            ["batch", "sequence", c.CrossAttentionDim]);
        var output = new UNetOnnx(new OnnxLayers(g), c).Forward(unet, sample, timestep, context);
        g.Output(output, "out_sample", OnnxGraphBuilder.Float, ["batch", c.OutChannels, "height", "width"]);
    }

    string Forward(UNet2DConditionModel unet, string sample, string timestep, string context)
    {
        if (config.CenterInputSample) sample = nn.Sub(nn.Mul(sample, 2f), g.Scalar(1f));      // 2x − 1
        var temb = TimeEmbedding(unet, timestep);                                                // [1 or B, 4·C₀]

        var h = nn.Conv("conv_in", Child<Conv2d>(unet, "", "conv_in"), sample);                  // [B, C₀, H, W]
        var skips = new List<string> { h };
        var downs = Items<DownBlock>(unet, "", "down_blocks");
        for (int i = 0; i < downs.Count; i++)
            h = Down($"down_blocks.{i}", downs[i], i, h, temb, context, skips);                 // [B, Cᵢ, H/2ⁱ, W/2ⁱ]
        h = Mid("mid_block", Child<MidBlock>(unet, "", "mid_block"), h, temb, context);
        var ups = Items<UpBlock>(unet, "", "up_blocks");
        for (int i = 0; i < ups.Count; i++)
            h = Up($"up_blocks.{i}", ups[i], config.BlockOutChannels.Length - 1 - i, h, temb, context, skips);
        h = nn.GroupNorm("conv_norm_out", Child<GroupNorm>(unet, "", "conv_norm_out"), h);        // [B, C₀, H, W]
        return nn.Conv("conv_out", Child<Conv2d>(unet, "", "conv_out"), nn.Silu(h));             // [B, out, H, W]
    }

    /// <summary>
    /// Sinusoidal features of the timesteps (diffusers' get_timestep_embedding) → time_embedding MLP:
    /// ω_i = exp(−ln(10000)·i/(d/2 − shift)) computed here by the same TorchSharp ops as
    /// <see cref="TimestepFeatures.Embed"/> (so the constants are bit-equal), args = t·ω, [cos, sin] when
    /// flip_sin_to_cos else [sin, cos].
    /// </summary>
    string TimeEmbedding(UNet2DConditionModel unet, string timestep)
    {
        int dim = config.BlockOutChannels[0], half = dim / 2;
        float[] freqs;
        using (NewDisposeScope())
        {
            var exponent = arange(0, half, dtype: ScalarType.Float32) * (float)(-Math.Log(10000));
            freqs = (exponent / (float)(half - config.FreqShift)).exp().data<float>().ToArray();  // [d/2]
        }
        string emb;
        using (g.Scope("time_proj"))
        {
            var t = nn.Reshape(timestep, -1, 1);                                                 // [N, 1], N = 1 or B
            var args = nn.Mul(t, g.Const(freqs, 1, half));                                       // [N, d/2]
            var (sin, cos) = (g.Op("Sin", [args]), g.Op("Cos", [args]));
            emb = config.FlipSinToCos ? nn.Concat(-1, cos, sin) : nn.Concat(-1, sin, cos);      // [N, d]
        }
        var mlp = Child<TimestepEmbedding>(unet, "", "time_embedding");
        using var _ = g.Scope("time_embedding");
        var hidden = nn.Linear("time_embedding.linear_1", Child<Linear>(mlp, "time_embedding", "linear_1"), emb);
        return nn.Linear("time_embedding.linear_2", Child<Linear>(mlp, "time_embedding", "linear_2"),
            nn.Silu(hidden));                                                                    // [N, 4·d]
    }

    /// <summary>layers × (ResNet [→ transformer]) then a stride-2 conv; every output becomes a skip.</summary>
    string Down(string path, DownBlock block, int index, string h, string temb, string context, List<string> skips)
    {
        var resnets = Items<ResnetBlock2D>(block, path, "resnets");
        var attentions = Items<Transformer2DModel>(block, path, "attentions");
        for (int j = 0; j < resnets.Count; j++)
        {
            h = nn.Resnet($"{path}.resnets.{j}", resnets[j], h, temb, config.ResnetOutScaleFactor);
            if (attentions.Count > 0)
                h = Transformer($"{path}.attentions.{j}", attentions[j], h, context, config.OnlyCross(index));
            skips.Add(h);
        }
        foreach (var (down, j) in Items<Downsample2D>(block, path, "downsamplers").Select((d, j) => (d, j)))
        {
            h = nn.Downsample($"{path}.downsamplers.{j}", down, h);                             // [B, C, H/2, W/2]
            skips.Add(h);
        }
        return h;
    }

    /// <summary>ResNet, then layers × (transformer → ResNet) (UNetMidBlock2DCrossAttn; none: UNetMidBlock2D).</summary>
    string Mid(string path, MidBlock block, string h, string temb, string context)
    {
        var resnets = Items<ResnetBlock2D>(block, path, "resnets");
        var attentions = Items<Transformer2DModel>(block, path, "attentions");
        h = nn.Resnet($"{path}.resnets.0", resnets[0], h, temb, config.MidBlockScaleFactor);
        for (int i = 0; i < attentions.Count; i++)
        {
            h = Transformer($"{path}.attentions.{i}", attentions[i], h, context, onlyCross: false);
            h = nn.Resnet($"{path}.resnets.{i + 1}", resnets[i + 1], h, temb, config.MidBlockScaleFactor);
        }
        return h;
    }

    /// <summary>(layers + 1) × (concat the last skip → ResNet [→ transformer]) then nearest ×2 (to the next skip's
    /// size) and a conv.</summary>
    string Up(string path, UpBlock block, int index, string h, string temb, string context, List<string> skips)
    {
        var resnets = Items<ResnetBlock2D>(block, path, "resnets");
        var attentions = Items<Transformer2DModel>(block, path, "attentions");
        for (int j = 0; j < resnets.Count; j++)
        {
            var skip = skips[^1];
            skips.RemoveAt(skips.Count - 1);
            using (g.Scope(path)) h = nn.Concat(1, h, skip);                                    // [B, C + C_skip, H, W]
            h = nn.Resnet($"{path}.resnets.{j}", resnets[j], h, temb, config.ResnetOutScaleFactor);
            if (attentions.Count > 0)
                h = Transformer($"{path}.attentions.{j}", attentions[j], h, context, config.OnlyCross(index));
        }
        foreach (var (up, j) in Items<Upsample2D>(block, path, "upsamplers").Select((u, j) => (u, j)))
            h = nn.Upsample($"{path}.upsamplers.{j}", up, h, skips.Count > 0 ? skips[^1] : null);   // [B, C, 2H, 2W]
        return h;
    }

    /// <summary>
    /// diffusers' Transformer2DModel (continuous input): GN → proj_in (1×1 conv, or linear after flattening) →
    /// tokens [B, H·W, C] → BasicTransformerBlocks → proj_out → back to [B, C, H, W] → + x.
    /// </summary>
    string Transformer(string path, Transformer2DModel m, string x, string context, bool onlyCross)
    {
        var norm = Child<GroupNorm>(m, path, "norm");
        var projIn = Child<torch.nn.Module>(m, path, "proj_in");
        var projOut = Child<torch.nn.Module>(m, path, "proj_out");
        using var _ = g.Scope(path);
        var t = nn.GroupNorm($"{path}.norm", norm, x);                                           // [B, C, H, W]
        if (projIn is Conv2d convIn) t = nn.Conv($"{path}.proj_in", convIn, t);                 // [B, C', H, W]
        long inner = projIn switch
        {
            Conv2d conv => conv.weight.shape[0],
            Linear linear => linear.weight.shape[1],
            _ => throw new OnnxExportException($"{path}.proj_in", TypeName(projIn), "expected a Conv2d or Linear"),
        };
        t = nn.Reshape(nn.Transpose(t, 0, 2, 3, 1), 0, -1, inner);                              // [B, H·W, C']
        if (projIn is Linear linearIn) t = nn.Linear($"{path}.proj_in", linearIn, t);           // [B, H·W, C']
        var blocks = Items<BasicTransformerBlock>(m, path, "transformer_blocks");
        for (int i = 0; i < blocks.Count; i++)
            t = Block($"{path}.transformer_blocks.{i}", blocks[i], t, context, onlyCross);
        if (projOut is Linear linearOut) t = nn.Linear($"{path}.proj_out", linearOut, t);       // [B, H·W, C]
        var shape = nn.Concat(0, nn.Shape(x, 0, 1), g.Ints(-1), nn.Shape(x, 2, 4));
        t = nn.ReshapeTo(nn.Transpose(t, 0, 2, 1), shape);                                       // [B, C, H, W]
        if (projOut is Conv2d convOut) t = nn.Conv($"{path}.proj_out", convOut, t);
        else if (projOut is not Linear)
            throw new OnnxExportException($"{path}.proj_out", TypeName(projOut), "expected a Conv2d or Linear");
        return nn.Add(t, x);
    }

    /// <summary>Pre-norm block: x += attn1(LN₁ x); x += attn2(LN₂ x, context); x += ff(LN₃ x), with
    /// ff = Linear(GEGLU(x)) and GEGLU(x) = a·GELU(b) for [a, b] = x W.</summary>
    string Block(string path, BasicTransformerBlock m, string x, string context, bool onlyCross)
    {
        using var _ = g.Scope(path);
        var n1 = nn.LayerNorm($"{path}.norm1", Child<LayerNorm>(m, path, "norm1"), x);
        x = nn.Add(Attention($"{path}.attn1", Child<Attention>(m, path, "attn1"), n1, onlyCross ? context : n1), x);
        var n2 = nn.LayerNorm($"{path}.norm2", Child<LayerNorm>(m, path, "norm2"), x);
        x = nn.Add(Attention($"{path}.attn2", Child<Attention>(m, path, "attn2"), n2, context), x);
        var n3 = nn.LayerNorm($"{path}.norm3", Child<LayerNorm>(m, path, "norm3"), x);

        var ffPath = $"{path}.ff";
        var net = Items<torch.nn.Module>(Child<FeedForward>(m, path, "ff"), ffPath, "net");
        if (net.Count != 3 || net[0] is not GEGLU geglu || net[1] is not Dropout || net[2] is not Linear down)
            throw new OnnxExportException($"{ffPath}.net", "ModuleList", "expected [GEGLU, Dropout, Linear]");
        var proj = nn.Linear($"{ffPath}.net.0.proj", Child<Linear>(geglu, $"{ffPath}.net.0", "proj"), n3);
        var (a, b) = nn.Halves(proj, -1);                                                        // [B, N, 4·C] each
        var ff = nn.Linear($"{ffPath}.net.2", down, nn.Mul(a, nn.Gelu(b)));                      // [B, N, C]
        return nn.Add(ff, x);
    }

    /// <summary>diffusers' Attention: to_q(x), to_k(c), to_v(c) → softmax(QKᵀ/√d)V per head → to_out.0.</summary>
    string Attention(string path, Attention m, string x, string context)
    {
        using var _ = g.Scope(path);
        var q = nn.Linear($"{path}.to_q", Child<Linear>(m, path, "to_q"), x);                   // [B, N, h·d]
        var k = nn.Linear($"{path}.to_k", Child<Linear>(m, path, "to_k"), context);             // [B, M, h·d]
        var v = nn.Linear($"{path}.to_v", Child<Linear>(m, path, "to_v"), context);             // [B, M, h·d]
        var o = nn.Attend(q, k, v, m.Heads, m.HeadDim, 1 / Math.Sqrt(m.HeadDim));               // [B, N, h·d]
        var outs = Items<torch.nn.Module>(m, path, "to_out");
        if (outs.Count != 2 || outs[0] is not Linear outProj || outs[1] is not Dropout)
            throw new OnnxExportException($"{path}.to_out", "ModuleList", "expected [Linear, Dropout]");
        return nn.Linear($"{path}.to_out.0", outProj, o);                                        // [B, N, C]
    }
}
