using LdmLab.Interop.Onnx;
using LdmLab.UNet;
using TorchSharp.Modules;
using static LdmLab.Export.ModuleTree;

namespace LdmLab.Export;

/// <summary>
/// ONNX nodes for the layers every model here is made of, each equal to its TorchSharp forward: Linear, Conv2d,
/// GroupNorm, LayerNorm, SiLU, GELU, multi-head attention, and diffusers' ResnetBlock2D, Downsample2D and
/// Upsample2D. Values are graph value names; each layer's nodes are named after its state-dict path, and its weights
/// become initializers under their state-dict keys.
/// </summary>
internal sealed class OnnxLayers(OnnxGraphBuilder g)
{
    public OnnxGraphBuilder Graph => g;

    // ---- elementwise and shape ops -------------------------------------------------------------------------------

    public string Add(string a, string b) => g.Op("Add", [a, b]);
    public string Sub(string a, string b) => g.Op("Sub", [a, b]);
    public string Mul(string a, string b) => g.Op("Mul", [a, b]);
    public string Div(string a, string b) => g.Op("Div", [a, b]);
    public string MatMul(string a, string b) => g.Op("MatMul", [a, b]);
    public string Mul(string a, float b) => Mul(a, g.Scalar(b));
    public string Sigmoid(string x) => g.Op("Sigmoid", [x]);

    /// <summary>SiLU(x) = x·σ(x) (ONNX has no SiLU op).</summary>
    public string Silu(string x) => Mul(x, Sigmoid(x));

    /// <summary>GELU, exact: x·½(1 + erf(x/√2)) (opset 20 adds a Gelu op; this is what it computes).</summary>
    public string Gelu(string x) =>
        Mul(Mul(x, 0.5f), Add(g.Scalar(1f), g.Op("Erf", [Mul(x, (float)(1 / Math.Sqrt(2)))])));

    /// <summary>Reshape to a constant shape (0 copies that axis of the input, −1 takes the rest).</summary>
    public string Reshape(string x, params long[] shape) => g.Op("Reshape", [x, g.Ints(shape)]);
    public string ReshapeTo(string x, string shape) => g.Op("Reshape", [x, shape]);
    public string Transpose(string x, params long[] perm) => g.Op("Transpose", [x], OnnxAttr.Of("perm", perm));

    /// <summary>Part of a value's shape, dims [start, end) (Shape-15's start/end), as a 1-D int64 value.</summary>
    public string Shape(string x, long start, long end) =>
        g.Op("Shape", [x], OnnxAttr.Of("start", start), OnnxAttr.Of("end", end));
    public string Shape(string x) => g.Op("Shape", [x]);
    public string Concat(long axis, params string[] xs) => g.Op("Concat", xs, OnnxAttr.Of("axis", axis));
    public string Unsqueeze(string x, params long[] axes) => g.Op("Unsqueeze", [x, g.Ints(axes)]);

    /// <summary>Equal halves along <paramref name="axis"/> (torch's chunk(2)).</summary>
    public (string, string) Halves(string x, long axis)
    {
        var parts = g.Op("Split", 2, [x], OnnxAttr.Of("axis", axis));
        return (parts[0], parts[1]);
    }

    // ---- layers ---------------------------------------------------------------------------------------------------

    /// <summary>y = x Wᵀ + b. The weight is written as Wᵀ [in, out] (MatMul's layout) under its state-dict key.
    /// </summary>
    public string Linear(string path, Linear m, string x)
    {
        using var _ = g.Scope(path);
        var w = g.Weight($"{path}.weight", m.weight.t());                                        // [in, out]
        var y = MatMul(x, w);                                                                    // [..., out]
        return m.bias is null ? y : Add(y, g.Weight($"{path}.bias", m.bias));
    }

    /// <summary>
    /// 2-D convolution with zero padding; <paramref name="padEnd"/> adds rows/columns at the bottom/right only
    /// (diffusers' Downsample2D with padding 0 pads (0, 1, 0, 1) first). ONNX pads are [h_begin, w_begin, h_end,
    /// w_end].
    /// </summary>
    public string Conv(string path, Conv2d m, string x, long padEnd = 0)
    {
        if (m.padding_mode != TorchSharp.PaddingModes.Zeros || m.padding is not { Length: 2 } p)
            throw new OnnxExportException(path, "Conv2d",
                $"padding mode {m.padding_mode} / padding '{m.padding_type}' is not exported (zero padding only)");
        using var _ = g.Scope(path);
        var w = m.weight;                                                                        // [out, in/g, kh, kw]
        string[] inputs = m.bias is null
            ? [x, g.Weight($"{path}.weight", w)]
            : [x, g.Weight($"{path}.weight", w), g.Weight($"{path}.bias", m.bias)];
        return g.Op("Conv", inputs,
            OnnxAttr.Of("kernel_shape", w.shape[2], w.shape[3]), OnnxAttr.Of("strides", m.stride),
            OnnxAttr.Of("pads", p[0], p[1], p[0] + padEnd, p[1] + padEnd), OnnxAttr.Of("dilations", m.dilation),
            OnnxAttr.Of("group", m.groups));                                                     // [B, out, H', W']
    }

    /// <summary>
    /// GroupNorm(G) over [B, C, H, W] as torch.onnx writes it below opset 18: InstanceNormalization of the view
    /// [B, G, C/G·H·W] (mean and variance per sample and group, biased variance, ε inside the square root), back to
    /// [B, C, H, W], then the per-channel affine γ·x̂ + β.
    /// </summary>
    public string GroupNorm(string path, GroupNorm m, string x)
    {
        using var _ = g.Scope(path);
        long groups = m.num_groups;
        var grouped = Reshape(x, 0, groups, -1);                                                 // [B, G, C/G·H·W]
        var normed = g.Op("InstanceNormalization",
            [grouped, g.Const(Enumerable.Repeat(1f, (int)groups).ToArray(), groups),
             g.Const(new float[groups], groups)], OnnxAttr.Of("epsilon", (float)m.eps));
        var y = ReshapeTo(normed, Shape(x));                                                     // [B, C, H, W]
        if (m.weight is null) return y;
        long c = m.weight.shape[0];
        y = Mul(y, g.Weight($"{path}.weight", m.weight.reshape(c, 1, 1)));                        // γ [C, 1, 1]
        return m.bias is null ? y : Add(y, g.Weight($"{path}.bias", m.bias.reshape(c, 1, 1)));   // β [C, 1, 1]
    }

    /// <summary>LayerNorm over the last axis: LayerNormalization (opset 17), γ and β [D].</summary>
    public string LayerNorm(string path, LayerNorm m, string x)
    {
        if (m.normalized_shape.Length != 1)
            throw new OnnxExportException(path, "LayerNorm", "only LayerNorm over the last axis is exported");
        using var _ = g.Scope(path);
        long d = m.normalized_shape[0];
        var scale = m.weight is null ? g.Const(Enumerable.Repeat(1f, (int)d).ToArray(), d)
            : g.Weight($"{path}.weight", m.weight);
        var bias = m.bias is null ? g.Const(new float[d], d) : g.Weight($"{path}.bias", m.bias);
        return g.Op("LayerNormalization", [x, scale, bias],
            OnnxAttr.Of("axis", -1L), OnnxAttr.Of("epsilon", (float)m.eps));
    }

    /// <summary>
    /// Multi-head scaled dot-product attention softmax(Q Kᵀ · scale + mask) V for Q [B, N, h·d] and K, V
    /// [B, M, h·d]; <paramref name="mask"/> (added before the softmax, e.g. CLIP's causal mask) broadcasts to
    /// [B, h, N, M]. Returns [B, N, h·d].
    /// </summary>
    public string Attend(string q, string k, string v, long heads, long headDim, double scale, string? mask = null)
    {
        var qh = Transpose(Reshape(q, 0, 0, heads, headDim), 0, 2, 1, 3);                        // [B, h, N, d]
        var kt = Transpose(Reshape(k, 0, 0, heads, headDim), 0, 2, 3, 1);                        // [B, h, d, M]
        var vh = Transpose(Reshape(v, 0, 0, heads, headDim), 0, 2, 1, 3);                        // [B, h, M, d]
        var scores = Mul(MatMul(qh, kt), (float)scale);                                          // [B, h, N, M]
        if (mask is not null) scores = Add(scores, mask);
        var probs = g.Op("Softmax", [scores], OnnxAttr.Of("axis", -1L));
        var o = MatMul(probs, vh);                                                               // [B, h, N, d]
        return Reshape(Transpose(o, 0, 2, 1, 3), 0, 0, heads * headDim);                         // [B, N, h·d]
    }

    /// <summary>
    /// diffusers' ResnetBlock2D: h = conv1(SiLU(GN₁ x)) + proj(SiLU(temb)); h = conv2(SiLU(GN₂ h)) (with
    /// scale_shift: GN₂(h)·(1 + scale) + shift instead of the addition); out = (shortcut(x) + h) / s.
    /// <paramref name="outScale"/> is s, the block's output_scale_factor from the model's config.
    /// </summary>
    public string Resnet(string path, ResnetBlock2D m, string x, string? temb, double outScale = 1.0)
    {
        var norm1 = Child<GroupNorm>(m, path, "norm1");
        var conv1 = Child<Conv2d>(m, path, "conv1");
        var timeProj = TryChild<Linear>(m, path, "time_emb_proj");
        var norm2 = Child<GroupNorm>(m, path, "norm2");
        var conv2 = Child<Conv2d>(m, path, "conv2");
        var shortcut = TryChild<Conv2d>(m, path, "conv_shortcut");

        using var _ = g.Scope(path);
        var h = Silu(GroupNorm(Join(path, "norm1"), norm1, x));
        h = Conv(Join(path, "conv1"), conv1, h);                                                 // [B, C', H, W]
        string? t = null;
        bool scaleShift = false;
        if (timeProj is not null && temb is not null)
        {
            t = Linear(Join(path, "time_emb_proj"), timeProj, Silu(temb));                       // [B, C' or 2C']
            t = Unsqueeze(t, 2, 3);                                                              // [B, C' or 2C', 1, 1]
            scaleShift = timeProj.weight.shape[0] == 2 * conv1.weight.shape[0];
        }
        if (t is not null && !scaleShift) h = Add(h, t);
        h = GroupNorm(Join(path, "norm2"), norm2, h);
        if (t is not null && scaleShift)
        {
            var (scale, shift) = Halves(t, 1);                                                   // [B, C', 1, 1] each
            h = Add(Mul(h, Add(g.Scalar(1f), scale)), shift);
        }
        h = Conv(Join(path, "conv2"), conv2, Silu(h));                                           // [B, C', H, W]
        var skip = shortcut is null ? x : Conv(Join(path, "conv_shortcut"), shortcut, x);
        var sum = Add(skip, h);
        return outScale == 1.0 ? sum : Div(sum, g.Scalar((float)outScale));
    }

    /// <summary>Downsample2D: a stride-2 3×3 conv; with padding 0 the input is padded by one at the bottom/right.
    /// </summary>
    public string Downsample(string path, Downsample2D m, string x)
    {
        var conv = Child<Conv2d>(m, path, "conv");
        bool padEnd = conv.padding is { } p && p.All(v => v == 0);
        return Conv(Join(path, "conv"), conv, x, padEnd ? 1 : 0);                          // [B, C, ⌈H/2⌉, ⌈W/2⌉]
    }

    /// <summary>
    /// Upsample2D: nearest-neighbour resize (×2, or to the spatial size of <paramref name="sizeLike"/> so odd sizes
    /// round-trip as in the U-Net), then a 3×3 conv. Resize's asymmetric coordinates with floor rounding are torch's
    /// nearest mode: source index ⌊i · in/out⌋.
    /// </summary>
    public string Upsample(string path, Upsample2D m, string x, string? sizeLike = null)
    {
        var conv = Child<Conv2d>(m, path, "conv");
        string resized;
        using (g.Scope(path))
        {
            var nearest = new[]
            {
                OnnxAttr.Of("mode", "nearest"), OnnxAttr.Of("coordinate_transformation_mode", "asymmetric"),
                OnnxAttr.Of("nearest_mode", "floor"),
            };
            resized = sizeLike is null
                ? g.Op("Resize", [x, "", g.Const([1f, 1f, 2f, 2f], 4)], nearest)                  // [B, C, 2H, 2W]
                : g.Op("Resize", [x, "", "", Concat(0, Shape(x, 0, 2), Shape(sizeLike, 2, 4))], nearest);
        }
        return Conv(Join(path, "conv"), conv, resized);
    }
}
