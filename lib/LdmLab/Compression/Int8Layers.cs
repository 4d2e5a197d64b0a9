using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Compression;

/// <summary>
/// Symmetric per-output-channel int8 quantization of a weight W [out, …] (the scheme of PyTorch's dynamic
/// quantization of weights, <c>torch.quantize_per_channel</c> with zero point 0):
/// s_c = max_j |W_cj| / 127,  q_cj = clamp(round(W_cj / s_c), −127, 127),  Ŵ_cj = s_c · q_cj.
/// Since |W_cj / s_c| ≤ 127 the clamp never cuts, and rounding is the only error: |Ŵ_cj − W_cj| ≤ s_c / 2.
/// The range is symmetric (−127, not −128) so that −W quantizes to −q. A row of zeros gets s_c = 1 and q = 0.
/// </summary>
public static class Int8Quantizer
{
    public const int QMax = 127;

    /// <summary>(q int8 in W's shape, s float32 [out]) for a weight W [out, …].</summary>
    public static (Tensor q, Tensor scale) Quantize(Tensor weight)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        long outChannels = weight.shape[0];
        var w = weight.detach().to(ScalarType.Float32).reshape(outChannels, -1);      // [out, in·kh·kw]
        var maxAbs = w.abs().amax(1);                                                    // [out]  max_j |W_cj|
        var scale = where(maxAbs > 0, maxAbs / QMax, ones_like(maxAbs));                 // [out]  s_c
        var q = (w / scale.unsqueeze(1)).round().clamp(-QMax, QMax)                     // [out, in·kh·kw]
            .to(ScalarType.Int8).reshape(weight.shape);
        return (q.MoveToOuterDisposeScope(), scale.MoveToOuterDisposeScope());
    }

    /// <summary>Ŵ = s_c · q in <paramref name="scale"/>'s dtype, q's shape.</summary>
    public static Tensor Dequantize(Tensor q, Tensor scale)
    {
        var broadcast = new long[q.dim()];                                               // [out, 1, …]
        Array.Fill(broadcast, 1L);
        broadcast[0] = q.shape[0];
        return q.to(scale.dtype) * scale.reshape(broadcast);
    }
}

/// <summary>
/// A Linear layer with int8 weights (weight-only quantization): it stores q int8 [out, in], s float32 [out] and the
/// float bias, and computes y = x Ŵᵀ + b with Ŵ = s·q made in each forward (TorchSharp has no int8 kernels, so
/// memory shrinks, the arithmetic stays float). State-dict keys: <c>weight</c> (I8), <c>weight_scale</c>, <c>bias</c>.
/// For inference: it has no parameters, nothing to train.
/// </summary>
public sealed class Int8Linear : nn.Module<Tensor, Tensor>
{
    // Buffers, not readonly: TorchSharp's Module.to swaps a buffer through its field.
    Tensor weight;         // int8 [out, in]
    Tensor weight_scale;   // [out]
    Tensor? bias;          // [out]

    Int8Linear(Tensor q, Tensor scale, Tensor? bias) : base(nameof(Int8Linear))
    {
        weight = q.DetachFromDisposeScope();
        weight_scale = scale.DetachFromDisposeScope();
        this.bias = bias?.DetachFromDisposeScope();
        RegisterComponents();
    }

    /// <summary>The quantized twin of <paramref name="linear"/> (which is left as it was).</summary>
    public static Int8Linear From(Linear linear)
    {
        var (q, scale) = Int8Quantizer.Quantize(linear.weight);
        return new Int8Linear(q, scale, linear.bias?.detach().clone());
    }

    /// <summary>An empty one of the given shape (filled by loading a state dict).</summary>
    public static Int8Linear Empty(long inFeatures, long outFeatures, bool hasBias) =>
        new(zeros([outFeatures, inFeatures], ScalarType.Int8), ones(outFeatures), hasBias ? zeros(outFeatures) : null);

    public long InFeatures => weight.shape[1];
    public long OutFeatures => weight.shape[0];
    public Tensor QuantizedWeight => weight;
    public Tensor Scale => weight_scale;

    /// <summary>Ŵ = s·q [out, in].</summary>
    public Tensor Dequantize() => Int8Quantizer.Dequantize(weight, weight_scale);

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var w = Dequantize().to(x.dtype);                                                // [out, in]
        return nn.functional.linear(x, w, bias?.to(x.dtype)).MoveToOuterDisposeScope(); // [..., out]
    }
}

/// <summary>
/// A Conv2d layer with int8 weights: q int8 [out, in/groups, kh, kw], s float32 [out], the float bias and the
/// convolution's stride, padding, dilation and groups; y = conv2d(x, Ŵ) + b with Ŵ = s·q made in each forward.
/// Only zero padding given as numbers (what the lab's models use); <see cref="From"/> refuses others.
/// </summary>
public sealed class Int8Conv2d : nn.Module<Tensor, Tensor>
{
    Tensor weight;         // int8 [out, in/groups, kh, kw]
    Tensor weight_scale;   // [out]
    Tensor? bias;          // [out]
    readonly long[] _stride, _padding, _dilation;
    readonly long _groups;

    Int8Conv2d(Tensor q, Tensor scale, Tensor? bias, long[] stride, long[] padding, long[] dilation, long groups)
        : base(nameof(Int8Conv2d))
    {
        weight = q.DetachFromDisposeScope();
        weight_scale = scale.DetachFromDisposeScope();
        this.bias = bias?.DetachFromDisposeScope();
        (_stride, _padding, _dilation, _groups) = (stride, padding, dilation, groups);
        RegisterComponents();
    }

    /// <summary>Whether <paramref name="conv"/> can be quantized (zero padding given as numbers).</summary>
    public static bool Supports(Conv2d conv) =>
        conv.padding_mode == PaddingModes.Zeros && conv.padding_type is null && conv.padding is not null;

    public static Int8Conv2d From(Conv2d conv)
    {
        if (!Supports(conv))
            throw new ArgumentException($"{conv.GetName()}: only zero padding given as numbers is supported, not " +
                                        $"{conv.padding_mode} / {conv.padding_type}", nameof(conv));
        var (q, scale) = Int8Quantizer.Quantize(conv.weight);
        return new Int8Conv2d(q, scale, conv.bias?.detach().clone(), conv.stride, conv.padding!, conv.dilation,
            conv.groups);
    }

    /// <summary>An empty one with <paramref name="like"/>'s geometry (filled by loading a state dict).</summary>
    public static Int8Conv2d Empty(Conv2d like) =>
        new(zeros(like.weight.shape, ScalarType.Int8), ones(like.weight.shape[0]),
            like.bias is null ? null : zeros(like.weight.shape[0]), like.stride, like.padding!, like.dilation,
            like.groups);

    public long OutChannels => weight.shape[0];
    public Tensor QuantizedWeight => weight;
    public Tensor Scale => weight_scale;

    /// <summary>Ŵ = s·q [out, in/groups, kh, kw].</summary>
    public Tensor Dequantize() => Int8Quantizer.Dequantize(weight, weight_scale);

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var w = Dequantize().to(x.dtype);                                                // [out, in/g, kh, kw]
        return nn.functional.conv2d(x, w, bias?.to(x.dtype), strides: _stride, padding: _padding,
            dilation: _dilation, groups: _groups).MoveToOuterDisposeScope();             // [B, out, H', W']
    }
}
