using LdmLab.Nn;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.UNet;

/// <summary>
/// Residual block with time conditioning (diffusers' ResnetBlock2D):
/// h = conv1(SiLU(GN(x))) + W·SiLU(temb);  h = conv2(SiLU(GN(h)));  out = (shortcut(x) + h) / s.
/// With scale_shift: GN(h)·(1 + scale) + shift from W·SiLU(temb) instead of the addition.
/// </summary>
public sealed class ResnetBlock2D : nn.Module<Tensor, Tensor?, Tensor>
{
    // declared in diffusers' registration order (state_dict order follows it); convolutions and the projection as
    // nn.Module<Tensor, Tensor> so Compression can swap them (int8 twins, pruned widths)
    readonly GroupNorm norm1;
    readonly nn.Module<Tensor, Tensor> conv1;
    readonly nn.Module<Tensor, Tensor>? time_emb_proj;
    readonly GroupNorm norm2;
    readonly nn.Module<Tensor, Tensor> conv2;
    readonly nn.Module<Tensor, Tensor>? conv_shortcut;
    readonly bool _scaleShift;
    readonly double _outScale;

    public ResnetBlock2D(int inChannels, int outChannels, int? tembChannels, int groups, double eps,
        bool scaleShift = false, double outputScaleFactor = 1.0, int? groupsOut = null) : base(nameof(ResnetBlock2D))
    {
        norm1 = Layers.GroupNorm(groups, inChannels, eps);
        conv1 = nn.Conv2d(inChannels, outChannels, 3, padding: 1);
        if (tembChannels is int t) time_emb_proj = nn.Linear(t, scaleShift ? 2 * outChannels : outChannels);
        norm2 = Layers.GroupNorm(groupsOut ?? groups, outChannels, eps);
        conv2 = nn.Conv2d(outChannels, outChannels, 3, padding: 1);
        if (inChannels != outChannels) conv_shortcut = nn.Conv2d(inChannels, outChannels, 1);
        _scaleShift = scaleShift;
        _outScale = outputScaleFactor;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor? temb)
    {
        var h = conv1.call(nn.functional.silu(norm1.call(x)));
        Tensor? t = null;
        if (time_emb_proj is not null && temb is not null) t = time_emb_proj.call(nn.functional.silu(temb))[.., .., TensorIndex.None, TensorIndex.None];
        if (t is not null && !_scaleShift) h = h + t;
        h = norm2.call(h);
        if (t is not null && _scaleShift)
        {
            var parts = t.chunk(2, 1);
            h = h * (1 + parts[0]) + parts[1];
        }
        h = conv2.call(nn.functional.silu(h));
        var shortcut = conv_shortcut is null ? x : conv_shortcut.call(x);
        var sum = shortcut + h;
        return _outScale == 1.0 ? sum : sum / _outScale;
    }
}

/// <summary>Strided 3×3 convolution that halves H and W (padding 0 pads right/bottom by one first, as diffusers does).</summary>
public sealed class Downsample2D : nn.Module<Tensor, Tensor>
{
    readonly nn.Module<Tensor, Tensor> conv;   // a Conv2d (or what Compression swaps in)
    readonly int _padding;

    public Downsample2D(int channels, int outChannels, int padding) : base(nameof(Downsample2D))
    {
        conv = nn.Conv2d(channels, outChannels, 3, stride: 2, padding: padding);
        _padding = padding;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => conv.call(_padding == 0 ? nn.functional.pad(x, [0, 1, 0, 1]) : x);
}

/// <summary>Nearest-neighbour upsampling (×2, or to a given size) followed by a 3×3 convolution.</summary>
public sealed class Upsample2D : nn.Module<Tensor, long[]?, Tensor>
{
    readonly nn.Module<Tensor, Tensor> conv;   // a Conv2d (or what Compression swaps in)

    public Upsample2D(int channels, int outChannels) : base(nameof(Upsample2D))
    {
        conv = nn.Conv2d(channels, outChannels, 3, padding: 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, long[]? size) =>
        conv.call(size is null
            ? nn.functional.interpolate(x, scale_factor: [2.0, 2.0], mode: InterpolationMode.Nearest)
            : nn.functional.interpolate(x, size: size, mode: InterpolationMode.Nearest));
}
