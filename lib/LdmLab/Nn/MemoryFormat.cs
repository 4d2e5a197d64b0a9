using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Nn;

/// <summary>
/// Channels-last storage of image tensors and convolution weights: PyTorch's
/// <c>model.to(memory_format=torch.channels_last)</c>, which diffusers recommends for speed. A tensor keeps its NCHW
/// shape; only the order in memory changes, to N·H·W·C, so the C values of one pixel are adjacent:
/// <code>
///   NCHW (contiguous):    stride = (C·H·W, H·W, W, 1)
///   channels-last (NHWC): stride = (H·W·C, 1, W·C, C)
/// </code>
/// oneDNN's convolutions read and write NHWC directly, where NCHW costs a reorder of every input and output into its
/// blocked layout; the transformer blocks' <c>[B, C, H, W] → [B, H·W, C]</c> becomes a view instead of a copy;
/// LibTorch's CPU GroupNorm, SiLU, adds, concatenations and nearest upsampling keep the layout. Measured on SD 1.5's
/// U-Net in docs/benchmarks.md ("Channels-last"). TorchSharp 0.107 has no <c>memory_format</c> argument: a permuted
/// copy made contiguous and permuted back has exactly PyTorch's channels-last strides, which LibTorch's kernels
/// recognise.
/// </summary>
public static class MemoryFormat
{
    /// <summary>Whether a 4-D NCHW tensor is stored channels-last (its channel stride is 1 and it has > 1 channel).
    /// </summary>
    public static bool IsChannelsLast(Tensor x) => x.dim() == 4 && x.shape[1] > 1 && x.stride(1) == 1;

    /// <summary>The same values stored channels-last; <paramref name="x"/> itself when it already is or is not 4-D.
    /// </summary>
    public static Tensor ToChannelsLast(Tensor x) =>
        x.dim() != 4 || IsChannelsLast(x) ? x : x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);

    /// <summary>
    /// Stores every 2-D convolution weight of <paramref name="module"/> channels-last (or back in NCHW order when
    /// <paramref name="channelsLast"/> is false), in place: same shapes, values and parameter names, so state dicts,
    /// safetensors and ONNX export (which write contiguous copies) see no difference. Models whose forward converts
    /// its input when <see cref="UsesChannelsLast"/> is true (the U-Net) then run channels-last end to end. For
    /// inference: an optimizer holding the old parameters would not see the new ones. Returns the module.
    /// </summary>
    public static T ToChannelsLast<T>(this T module, bool channelsLast = true) where T : nn.Module
    {
        using var _ = no_grad();
        foreach (var conv in module.modules().OfType<Conv2d>().Prepend(module as Conv2d).OfType<Conv2d>())
        {
            var w = conv.weight!;
            if (IsChannelsLast(w) == channelsLast) continue;
            var stored = channelsLast ? ToChannelsLast(w.detach()) : w.detach().contiguous();   // [O, I, kh, kw]
            conv.weight = new Parameter(stored.clone(), w.requires_grad);
            w.Dispose();
        }
        return module;
    }

    /// <summary>Whether <paramref name="conv"/>'s weight is stored channels-last.</summary>
    public static bool UsesChannelsLast(Conv2d conv) => IsChannelsLast(conv.weight!);
}
