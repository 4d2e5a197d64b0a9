using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.UNet;

/// <summary>
/// Encoder stage: layers × (ResnetBlock2D [→ Transformer2DModel]) then an optional 2× downsample.
/// Returns the output and every intermediate the decoder's skip connections take.
/// (DownBlock2D without attention, CrossAttnDownBlock2D with.)
/// </summary>
public sealed class DownBlock : nn.Module
{
    readonly ModuleList<Transformer2DModel>? attentions;
    readonly ModuleList<ResnetBlock2D> resnets;
    readonly ModuleList<Downsample2D>? downsamplers;

    public DownBlock(UNetConfig c, int block, int inChannels, int outChannels, bool crossAttention, bool addDownsample) : base(crossAttention ? "CrossAttnDownBlock2D" : "DownBlock2D")
    {
        int layers = c.LayersPerBlock, heads = c.Heads(block);
        if (crossAttention)
            attentions = nn.ModuleList(Enumerable.Range(0, layers).Select(_ => new Transformer2DModel(heads, outChannels / heads, outChannels,
                c.TransformerLayers(block), c.CrossAttentionDim, c.NormNumGroups, c.UseLinearProjection, c.OnlyCross(block), c.UpcastAttention)).ToArray());
        resnets = nn.ModuleList(Enumerable.Range(0, layers).Select(j => new ResnetBlock2D(j == 0 ? inChannels : outChannels, outChannels,
            c.TimeEmbedDim, c.NormNumGroups, c.NormEps, c.ResnetTimeScaleShift == "scale_shift", c.ResnetOutScaleFactor)).ToArray());
        if (addDownsample) downsamplers = nn.ModuleList(new Downsample2D(outChannels, outChannels, c.DownsamplePadding));
        RegisterComponents();
    }

    internal void Name(string prefix)
    {
        if (attentions is null) return;
        for (int i = 0; i < attentions.Count; i++) attentions[i].Name($"{prefix}.attentions.{i}");
    }

    /// <param name="adapt">Applied to the last layer's output before it becomes a skip and is downsampled
    /// (diffusers' down_intrablock_additional_residuals place, T2I-Adapter style); null: none.</param>
    public (Tensor output, List<Tensor> skips) Forward(Tensor h, Tensor temb, Tensor? context,
        Func<Tensor, Tensor>? adapt = null)
    {
        var skips = new List<Tensor>();
        for (int i = 0; i < resnets.Count; i++)
        {
            var x = h;
            h = Nn.Layers.Scoped(() => resnets[i].call(x, temb));
            if (attentions is not null) { var r = h; h = Nn.Layers.Scoped(() => attentions[i].call(r, context)); }
            if (adapt is not null && i == resnets.Count - 1) h = adapt(h);
            skips.Add(h);
        }
        if (downsamplers is not null)
        {
            h = downsamplers[0].call(h);
            skips.Add(h);
        }
        return (h, skips);
    }
}

/// <summary>Bottleneck: ResnetBlock2D, then layers × (Transformer2DModel → ResnetBlock2D) (UNetMidBlock2DCrossAttn);
/// with no layers a single ResnetBlock2D (diffusers' UNetMidBlock2D as UNet2DConditionModel builds it).</summary>
public sealed class MidBlock : nn.Module
{
    readonly ModuleList<Transformer2DModel> attentions;
    readonly ModuleList<ResnetBlock2D> resnets;

    public MidBlock(UNetConfig c, int channels, int layers = 1)
        : base(layers == 0 ? "UNetMidBlock2D" : "UNetMidBlock2DCrossAttn")
    {
        int last = c.BlockOutChannels.Length - 1, heads = c.Heads(last);
        attentions = nn.ModuleList(Enumerable.Range(0, layers).Select(_ => new Transformer2DModel(heads, channels / heads, channels,
            c.TransformerLayers(last), c.CrossAttentionDim, c.NormNumGroups, c.UseLinearProjection, false, c.UpcastAttention)).ToArray());
        resnets = nn.ModuleList(Enumerable.Range(0, layers + 1).Select(_ => new ResnetBlock2D(channels, channels, c.TimeEmbedDim,
            c.NormNumGroups, c.NormEps, c.ResnetTimeScaleShift == "scale_shift", c.MidBlockScaleFactor)).ToArray());
        RegisterComponents();
    }

    internal void Name(string prefix) { for (int i = 0; i < attentions.Count; i++) attentions[i].Name($"{prefix}.attentions.{i}"); }

    public Tensor Forward(Tensor h, Tensor temb, Tensor? context)
    {
        var x = h;
        h = Nn.Layers.Scoped(() => resnets[0].call(x, temb));
        for (int i = 0; i < attentions.Count; i++)
        {
            var r = h;
            h = Nn.Layers.Scoped(() => resnets[i + 1].call(attentions[i].call(r, context), temb));
        }
        return h;
    }
}

/// <summary>
/// Decoder stage: (layers + 1) × (concat skip → ResnetBlock2D [→ Transformer2DModel]) then an optional upsample.
/// (UpBlock2D without attention, CrossAttnUpBlock2D with.)
/// </summary>
public sealed class UpBlock : nn.Module
{
    readonly ModuleList<Transformer2DModel>? attentions;
    readonly ModuleList<ResnetBlock2D> resnets;
    readonly ModuleList<Upsample2D>? upsamplers;

    public UpBlock(UNetConfig c, int reversedBlock, int inChannels, int prevOutputChannels, int outChannels, bool crossAttention, bool addUpsample)
        : base(crossAttention ? "CrossAttnUpBlock2D" : "UpBlock2D")
    {
        int layers = c.LayersPerBlock + 1;
        int block = c.BlockOutChannels.Length - 1 - reversedBlock, heads = c.Heads(block);
        if (crossAttention)
            attentions = nn.ModuleList(Enumerable.Range(0, layers).Select(_ => new Transformer2DModel(heads, outChannels / heads, outChannels,
                c.TransformerLayers(block), c.CrossAttentionDim, c.NormNumGroups, c.UseLinearProjection, c.OnlyCross(block), c.UpcastAttention)).ToArray());
        resnets = nn.ModuleList(Enumerable.Range(0, layers).Select(j =>
        {
            int skip = j == layers - 1 ? inChannels : outChannels;
            int resIn = j == 0 ? prevOutputChannels : outChannels;
            return new ResnetBlock2D(resIn + skip, outChannels, c.TimeEmbedDim, c.NormNumGroups, c.NormEps,
                c.ResnetTimeScaleShift == "scale_shift", c.ResnetOutScaleFactor);
        }).ToArray());
        if (addUpsample) upsamplers = nn.ModuleList(new Upsample2D(outChannels, outChannels));
        RegisterComponents();
    }

    public int Layers => resnets.Count;

    internal void Name(string prefix)
    {
        if (attentions is null) return;
        for (int i = 0; i < attentions.Count; i++) attentions[i].Name($"{prefix}.attentions.{i}");
    }

    /// <param name="skips">The skip tensors for this block, deepest last (consumed from the end).</param>
    /// <param name="upsampleSize">Spatial size to upsample to (the next skip's), so odd sizes round-trip.</param>
    public Tensor Forward(Tensor h, IReadOnlyList<Tensor> skips, Tensor temb, Tensor? context, long[]? upsampleSize)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            var (x, skip) = (h, skips[skips.Count - 1 - i]);
            h = Nn.Layers.Scoped(() => resnets[i].call(cat([x, skip], 1), temb));
            if (attentions is not null) { var r = h; h = Nn.Layers.Scoped(() => attentions[i].call(r, context)); }
        }
        return upsamplers is null ? h : upsamplers[0].call(h, upsampleSize);
    }
}
