using LdmLab.Interop.Onnx;
using static TorchSharp.torch;

namespace LdmLab.Export;

/// <summary>
/// A graph the int8 rewrite cannot quantize: the node's name, the layer it belongs to (the state-dict path of its
/// weight, or the node's scope) and what is wrong (a weight that is not a float32 initializer of the right rank,
/// non-finite weights or activations, an input nothing produces, a graph that is already quantized).
/// </summary>
public sealed class OnnxQuantizationException(string nodeName, string layerPath, string message)
    : Exception($"node {nodeName} (layer {layerPath}): {message}")
{
    public string NodeName { get; } = nodeName;
    public string LayerPath { get; } = layerPath;
}

/// <summary>How activations get their scales: per call from the tensor itself, or fixed from calibration.</summary>
public enum OnnxInt8Mode { Dynamic, Static }

/// <summary>Which layers <see cref="OnnxInt8"/> quantizes.</summary>
public sealed record OnnxInt8Options
{
    /// <summary>Layer paths (state-dict prefixes) kept in float whatever their size; default
    /// <see cref="OnnxInt8.KeyLayer"/>.</summary>
    public Func<string, bool> KeepFloat { get; init; } = OnnxInt8.KeyLayer;

    /// <summary>Layers with fewer weights stay float (default 1024, a 32×32 Linear): their product is too small
    /// for an integer kernel to repay the quantize pass and the three extra nodes around it.</summary>
    public long MinWeightElements { get; init; } = 1024;

    /// <summary>Whether convolutions are quantized too, not only MatMuls. Null (default): yes for static
    /// (QLinearConv), no for dynamic: ORT 1.31's ConvInteger is an im2col + u8u8 GEMM per call, and measured on the
    /// lab's text-to-image U-Net step it made the step 3× slower than float ORT (docs/benchmarks.md).</summary>
    public bool? Convolutions { get; init; }
}

/// <summary>A MatMul or Conv node the rewrite turns int8: its name, its layer (the weight's state-dict path), its
/// weight initializer, its activation input and its output.</summary>
public sealed record OnnxInt8Target(string NodeName, string Layer, string OpType, string Weight, string Input,
    string Output)
{
    public bool IsConv => OpType == "Conv";
}

/// <summary>What a quantization did: the layers now int8, the layers left in float with the reason (attention
/// products by node scope), the calibrated activation ranges (static only), and the initializer bytes before and
/// after.</summary>
public sealed record OnnxInt8Report(OnnxInt8Mode Mode, IReadOnlyList<string> Quantized,
    IReadOnlyList<(string Layer, string Why)> Kept, IReadOnlyDictionary<string, ActivationRange> Ranges,
    long BytesBefore, long BytesAfter)
{
    public override string ToString() =>
        $"int8 {Mode.ToString().ToLowerInvariant()}: {Quantized.Count} layers quantized, {Kept.Count} kept float; " +
        $"weights {BytesBefore:N0} → {BytesAfter:N0} bytes";
}

/// <summary>
/// int8 compute in ONNX Runtime for a float graph that <see cref="OnnxExport"/> wrote, as a rewrite of the model
/// file (the chapter's 10.5.3, ORT's <c>quantize_dynamic</c> and <c>quantize_static</c>). Weights of MatMul and
/// Conv become int8 initializers, symmetric per output channel (<see cref="Compression.Int8Quantizer"/>:
/// s_c = max|W_c|/127, |Ŵ − W| ≤ s_c/2); activations become uint8, asymmetric per tensor, s = (max − min)/255 with
/// 0 exactly representable.
/// <para><b>Dynamic</b> (MatMuls only by default, see <see cref="OnnxInt8Options.Convolutions"/>): x →
/// DynamicQuantizeLinear (scale from this call's min/max) → MatMulInteger (A uint8, B
/// int8: ORT CPU's u8s8 GEMM) → Cast → × (s_x·s_w) [→ + bias], the pattern ORT fuses into
/// DynamicQuantizeMatMul; convolutions → ConvInteger, whose CPU kernel takes uint8 weights only with one zero point
/// per tensor (ORT 1.31: "Non per-tensor quantization is not supported"), so the int8 codes are stored shifted
/// (q + 128, zero point 128) and the per-channel scales are applied after the Cast: y = s_x·s_w,c · Σ(x_q −
/// z_x)(w_q − 128) + b_c — exact, since the shift is undone inside the integer sum.</para>
/// <para><b>Static</b> (QDQ): scales from calibration ranges (<see cref="OnnxCalibration"/>), QuantizeLinear →
/// DequantizeLinear pairs on the activations and DequantizeLinear on the int8 weights (per-channel axis) and int32
/// biases (scale s_x·s_w,c); ORT's QDQ transformer turns DQ → MatMul into MatMulIntegerToFloat and DQ → Conv → Q
/// into QLinearConv. A Conv's output is quantized too (QLinearConv writes uint8), so the calibration also observes it.
/// </para>
/// <para><b>Kept in float</b> (the chapter's "keep key layers fp32"): (1) <c>conv_in</c> and <c>conv_out</c> of
/// every model (the U-Net's, the VAE encoder's and decoder's): the first reads raw latents or pixels, the last
/// writes ε or the image, so their rounding reaches every sampler step or pixel unfiltered; (2) the time-embedding
/// MLP (and class/added embeddings): one vector that every ResNet block adds, so one error shifts them all;
/// (3) normalisations (GroupNorm as InstanceNormalization, LayerNormalization), Softmax, GELU/SiLU and the
/// residual adds are not MatMul/Conv and stay float: their means, variances and exponentials need the float range,
/// and they are cheap; (4) the attention products QKᵀ and softmax·V (MatMuls of two activations): probabilities
/// below s = 1/255 would round to zero, and both sides would need a per-call scale; (5) layers with fewer than
/// <see cref="OnnxInt8Options.MinWeightElements"/> weights (the VAE's 1×1 quant convs); (6) Gemm (the exporters
/// write MatMul + Add). Together (1), (2), (5) hold well under 1 % of an SD-sized U-Net's weights.</para>
/// <para>On x86 CPUs without VNNI, u8s8 products are summed in pairs into saturating int16 (vpmaddubsw); ORT
/// itself rewrites the int8 weights of DynamicQuantizeMatMul and MatMulIntegerToFloat to uint8 on such CPUs (its
/// Avx2WeightS8ToU8Transformer), which needs the weights' zero points as inputs: the rewrite always writes them
/// (zeros). QLinearConv is not covered by that; measured here only on an AVX512-VNNI CPU.</para>
/// </summary>
public static class OnnxInt8
{
    /// <summary>The default "keep in float" rule on layer paths: conv_in / conv_out at any depth (U-Net,
    /// encoder., decoder.), the time embedding, class and added embeddings (as
    /// <see cref="Compression.Int8Weights.UNetKeyLayers"/> keeps them in TorchSharp).</summary>
    public static bool KeyLayer(string layerPath)
    {
        var last = layerPath[(layerPath.LastIndexOf('.') + 1)..];
        return last is "conv_in" or "conv_out" ||
               layerPath.StartsWith("time_embedding", StringComparison.Ordinal) ||
               layerPath.StartsWith("class_embedding", StringComparison.Ordinal) ||
               layerPath.StartsWith("add_embedding", StringComparison.Ordinal);
    }

    /// <summary>The nodes a rewrite with <paramref name="options"/> would quantize (the graph is checked as for a
    /// rewrite).</summary>
    public static IReadOnlyList<OnnxInt8Target> Plan(string floatModel, OnnxInt8Mode mode,
        OnnxInt8Options? options = null)
    {
        using var scope = NewDisposeScope();
        return Int8Rewrite.Load(floatModel, options ?? new OnnxInt8Options(), mode).Targets
            .Select(t => new OnnxInt8Target(t.Node.Name, t.Layer, t.Node.OpType, t.Node.Input[1], t.Node.Input[0],
                t.Node.Output[0]))
            .ToList();
    }

    /// <summary>The int8 model with per-call activation scales (ORT's quantize_dynamic): MatMulInteger and
    /// ConvInteger. Needs no ONNX Runtime to write.</summary>
    public static OnnxInt8Report QuantizeDynamic(string floatModel, string int8Model, OnnxInt8Options? options = null,
        OnnxSaveOptions? save = null)
    {
        using var scope = NewDisposeScope();
        var rewrite = Int8Rewrite.Load(floatModel, options ?? new OnnxInt8Options(), OnnxInt8Mode.Dynamic);
        rewrite.Dynamic();
        return rewrite.Save(int8Model, OnnxInt8Mode.Dynamic, new Dictionary<string, ActivationRange>(), save);
    }

    /// <summary>
    /// The int8 model with fixed activation scales from <paramref name="calibration"/> (feeds of the float model's
    /// inputs, e.g. U-Net inputs met while sampling: <see cref="UNetCalibration"/>), as QDQ pairs ORT fuses into
    /// integer kernels (ORT's quantize_static, QDQ format, min/max calibration). Runs the float model in ONNX Runtime.
    /// </summary>
    public static OnnxInt8Report QuantizeStatic(string floatModel, string int8Model,
        IEnumerable<IReadOnlyDictionary<string, Tensor>> calibration, OnnxInt8Options? options = null,
        int? threads = null, OnnxSaveOptions? save = null)
    {
        using var scope = NewDisposeScope();
        var rewrite = Int8Rewrite.Load(floatModel, options ?? new OnnxInt8Options(), OnnxInt8Mode.Static);
        var ranges = OnnxCalibration.Collect(floatModel, rewrite.ObservedForStatic(), calibration, threads);
        rewrite.Static(ranges);
        return rewrite.Save(int8Model, OnnxInt8Mode.Static, ranges, save);
    }

    /// <summary>
    /// The U-Net of an ONNX Stable Diffusion folder (<see cref="OnnxExport.SavePipeline"/>) rewritten as int8 in
    /// place, so that any reader of the folder samples with it: the int8 graph (weights in unet/weights.pb past the
    /// threshold) is written to a staging folder first, since static calibration reads the float one, then moved
    /// over unet/model.onnx and its side file. Static needs <paramref name="calibration"/>
    /// (<see cref="UNetCalibration.Sample"/>).
    /// </summary>
    public static OnnxInt8Report QuantizeFolderUNet(string dir, OnnxInt8Mode mode,
        IEnumerable<IReadOnlyDictionary<string, Tensor>>? calibration = null, OnnxSaveOptions? save = null,
        int? threads = null, OnnxInt8Options? options = null)
    {
        var unetDir = Path.Combine(dir, "unet");
        var floatModel = Path.Combine(unetDir, "model.onnx");
        if (!File.Exists(floatModel)) throw new Data.DatasetException(floatModel, "no U-Net in the ONNX folder");
        if (mode == OnnxInt8Mode.Static && calibration is null)
            throw new ArgumentNullException(nameof(calibration), "static int8 needs calibration feeds");
        var staging = Path.Combine(dir, ".unet-int8");
        if (Directory.Exists(staging)) Directory.Delete(staging, recursive: true);
        Directory.CreateDirectory(staging);
        var staged = Path.Combine(staging, "model.onnx");
        save = (save ?? new OnnxSaveOptions()) with { ExternalDataFile = "weights.pb" };
        var report = mode == OnnxInt8Mode.Dynamic
            ? QuantizeDynamic(floatModel, staged, options, save)
            : QuantizeStatic(floatModel, staged, calibration!, options, threads, save);
        var side = Path.Combine(unetDir, "weights.pb");
        if (File.Exists(side)) File.Delete(side);
        foreach (var file in Directory.GetFiles(staging))
            File.Move(file, Path.Combine(unetDir, Path.GetFileName(file)), overwrite: true);
        Directory.Delete(staging);
        return report;
    }
}
