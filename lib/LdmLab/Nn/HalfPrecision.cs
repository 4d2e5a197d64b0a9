using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Nn;

/// <summary>
/// Half-precision weights and compute for inference (section 10.4.7; diffusers' <c>pipe.to(torch_dtype=…)</c>).
/// bfloat16 keeps float32's 8-bit exponent with a 7-bit mantissa (unit roundoff u = 2⁻⁸), float16 a 5-bit exponent
/// with a 10-bit mantissa (u = 2⁻¹¹, largest value 65,504). What stays float32, and why:
/// <list type="bullet">
/// <item>normalisation layers' γ and β (GroupNorm, LayerNorm): the chapter's "keep key layers fp32". LibTorch's CPU
/// kernels take a half input with float32 γ, β (its "mixed type" GroupNorm/LayerNorm), accumulate the mean and
/// variance in float32 and write the result in the input's type, which the next half layer would round to anyway;
/// </item>
/// <item>softmax: the fused attention kernel and LibTorch's CPU softmax accumulate half inputs in float32
/// ("opmath") already, so nothing is cast;</item>
/// <item>what the model hands out: <see cref="UNet.UNet2DConditionModel.Forward"/> and the VAE's encode/decode
/// cast their inputs to the weights' type and their outputs back to the input's, so schedulers, guidance and the
/// latents stay float32.</item>
/// </list>
/// Measured on CPU, not assumed (docs/benchmarks.md, "Half precision and memory tricks"): LibTorch runs both types
/// on any CPU, but only oneDNN's native kernels make them fast, and <see cref="FastOnCpu"/> says when those exist.
/// </summary>
public static class HalfPrecision
{
    /// <summary>
    /// Whether the CPU, with oneDNN as <see cref="Runtime.TorchRuntime.Setup"/> left it, has native convolution and
    /// matrix-product kernels for <paramref name="dtype"/>: bfloat16 needs oneDNN enabled and the ISA in force at
    /// AVX512_CORE_BF16 or above, float16 at AVX512_CORE_FP16 or above; float32 always. Setup's default cap, AVX2,
    /// rules both out: a 320-channel 3×3 convolution at 64² then took 26 s in either half type against 0.1 s in
    /// float32 (reference kernels); with the cap at AVX512_CORE_BF16 (ONEDNN_MAX_CPU_ISA) bfloat16 took 0.04 s.
    /// </summary>
    public static bool FastOnCpu(ScalarType dtype, Runtime.OneDnnDecision? oneDnn)
    {
        if (dtype == ScalarType.Float32) return true;
        if (oneDnn is not { Enabled: true } || oneDnn.EffectiveIsa == "unknown") return false;
        string needed = dtype switch
        {
            ScalarType.BFloat16 => "AVX512_CORE_BF16",
            ScalarType.Float16 => "AVX512_CORE_FP16",
            _ => throw new ArgumentException($"dtype must be Float32, BFloat16 or Float16, got {dtype}", nameof(dtype)),
        };
        return Runtime.OneDnn.Lower(oneDnn.EffectiveIsa.ToUpperInvariant(), needed) == needed;   // in force ≥ needed
    }

    /// <summary>True for the layers whose parameters <see cref="ToPrecision{T}"/> keeps in float32.</summary>
    public static bool KeepsFloat32(nn.Module module) => module is GroupNorm or LayerNorm;

    /// <summary>
    /// Casts every floating-point parameter and buffer of <paramref name="module"/> to <paramref name="dtype"/>,
    /// except those of normalisation layers (<see cref="KeepsFloat32"/>), which stay float32; integer buffers are
    /// left alone. <see cref="ScalarType.Float32"/> casts everything back. Returns the module.
    /// </summary>
    public static T ToPrecision<T>(this T module, ScalarType dtype) where T : nn.Module
    {
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"dtype must be Float32, BFloat16 or Float16, got {dtype}", nameof(dtype));
        module.to(dtype);
        if (dtype != ScalarType.Float32)
            foreach (var m in module.modules().Where(KeepsFloat32)) m.to(ScalarType.Float32);
        return module;
    }

    /// <summary>
    /// The type a model computes in (diffusers' <c>model.dtype</c>): that of its first floating-point parameter
    /// outside the normalisation layers; float32 for a model without one.
    /// </summary>
    public static ScalarType ComputeDtype(this nn.Module module)
    {
        foreach (var (name, p) in module.named_parameters())
            if (p.is_floating_point() && !IsNormParameter(module, name)) return p.dtype;
        return ScalarType.Float32;
    }

    /// <summary><paramref name="x"/> in <paramref name="dtype"/> when it is a floating-point tensor of another
    /// type; otherwise <paramref name="x"/> itself (integer labels and ids pass through).</summary>
    public static Tensor CastFloating(Tensor x, ScalarType dtype) =>
        x.is_floating_point() && x.dtype != dtype ? x.to_type(dtype) : x;

    /// <summary>The bytes of a module's parameters and buffers, as they are stored now.</summary>
    public static long WeightBytes(this nn.Module module) =>
        module.parameters().Concat(module.buffers()).Sum(t => t.numel() * t.ElementSize);

    static bool IsNormParameter(nn.Module root, string name)
    {
        int dot = name.LastIndexOf('.');
        if (dot < 0) return KeepsFloat32(root);
        return root.named_modules().FirstOrDefault(m => m.name == name[..dot]).module is { } owner
               && KeepsFloat32(owner);
    }
}
