using LdmLab.Interop;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Compression;

/// <summary>
/// A quantized state-dict file that cannot be used: names the file, the key, and what was expected.
/// </summary>
public sealed class QuantizedStateException(string file, string key, string message)
    : Exception($"{file}: {key}: {message}")
{
    public string File { get; } = file;
    public string Key { get; } = key;
}

/// <summary>What <see cref="Int8Weights.Quantize"/> did.</summary>
/// <param name="Quantized">Paths of the layers now int8.</param>
/// <param name="Kept">Linear/Conv2d paths left in float, with the reason.</param>
/// <param name="LayerBytesBefore">State-dict bytes of the quantized layers before (weights and biases).</param>
/// <param name="LayerBytesAfter">The same layers after: int8 weights, float32 scales, float biases.</param>
/// <param name="ModelBytesBefore">The whole state dict before.</param>
/// <param name="ModelBytesAfter">The whole state dict after.</param>
public sealed record QuantizationReport(IReadOnlyList<string> Quantized, IReadOnlyList<(string path, string why)> Kept,
    long LayerBytesBefore, long LayerBytesAfter, long ModelBytesBefore, long ModelBytesAfter)
{
    /// <summary>How many times smaller the quantized layers got (→ 4 for large layers: 1 byte instead of 4 per
    /// weight, plus one scale per output channel and the float bias).</summary>
    public double LayerCompression => (double)LayerBytesBefore / LayerBytesAfter;

    public override string ToString() =>
        $"{Quantized.Count} layers int8, {Kept.Count} kept float; quantized layers {LayerBytesBefore:N0} → " +
        $"{LayerBytesAfter:N0} bytes ({LayerCompression:F2}×); model {ModelBytesBefore:N0} → " +
        $"{ModelBytesAfter:N0} bytes";
}

/// <summary>
/// Weight-only int8 quantization of a module tree (chapter 10.5.3, "dynamic int8 on Linear and Conv2d"): every
/// Linear and Conv2d is replaced in place by <see cref="Int8Linear"/> / <see cref="Int8Conv2d"/> (per output
/// channel, symmetric: <see cref="Int8Quantizer"/>), except the layers a keep predicate names. PyTorch's dynamic
/// quantization also quantizes activations on the fly and runs int8 kernels; TorchSharp has no quantized kernels,
/// so here only the stored weights shrink (≈ 4×) and every forward computes in float with Ŵ = s·q.
/// </summary>
public static class Int8Weights
{
    /// <summary>
    /// The default "keep key layers in float" rule for a U-Net (diffusers' names): <c>conv_in</c> reads the raw
    /// latents and <c>conv_out</c> writes ε (or v) itself, so their rounding errors reach every sampler step
    /// unfiltered; the time (and class / added) embedding MLP produces the vector every ResNet block adds, so one
    /// error there shifts all of them. Together they are well under 1 % of an SD U-Net's weights.
    /// </summary>
    public static bool UNetKeyLayers(string path, nn.Module module) =>
        path is "conv_in" or "conv_out" || path.StartsWith("time_embedding.", StringComparison.Ordinal) ||
        path.StartsWith("class_embedding", StringComparison.Ordinal) ||
        path.StartsWith("add_embedding.", StringComparison.Ordinal);

    /// <summary>
    /// Replaces every Linear and Conv2d of <paramref name="model"/> that <paramref name="keepFloat"/> (default
    /// <see cref="UNetKeyLayers"/>) does not keep by its int8 twin, in place (the old layers are disposed).
    /// </summary>
    public static QuantizationReport Quantize(nn.Module model, Func<string, nn.Module, bool>? keepFloat = null)
    {
        keepFloat ??= UNetKeyLayers;
        long modelBefore = Bytes(model);
        var quantized = new List<string>();
        var kept = new List<(string, string)>();
        long layerBefore = 0, layerAfter = 0;
        foreach (var (path, module) in model.named_modules().ToList())
        {
            if (module is not (Linear or Conv2d)) continue;
            if (keepFloat(path, module)) { kept.Add((path, "kept by the predicate")); continue; }
            if (module is Conv2d c && !Int8Conv2d.Supports(c))
            {
                kept.Add((path, $"padding mode {c.padding_mode} is not supported"));
                continue;
            }
            using var scope = NewDisposeScope();
            nn.Module replacement = module switch
            {
                Linear l => Int8Linear.From(l),
                _ => Int8Conv2d.From((Conv2d)module),
            };
            layerBefore += Bytes(module);
            layerAfter += Bytes(replacement);
            ModuleSurgery.Replace(model, path, replacement).Dispose();
            quantized.Add(path);
        }
        return new QuantizationReport(quantized, kept, layerBefore, layerAfter, modelBefore, Bytes(model));
    }

    /// <summary>Σ numel · element size over the state dict (parameters and buffers).</summary>
    public static long Bytes(nn.Module module) => module.state_dict().Values.Sum(t => t.numel() * t.ElementSize);

    const string Format = "ldmlab-int8";

    /// <summary>
    /// Writes the state dict of a (partly) quantized model as safetensors: int8 layers as <c>{path}.weight</c> (I8)
    /// and <c>{path}.weight_scale</c> (F32 [out]) beside their float <c>bias</c>; every other tensor as it is.
    /// Metadata: <c>format = ldmlab-int8</c>.
    /// </summary>
    public static void Save(nn.Module model, string path) =>
        SafeTensors.Save(path, model.state_dict(), new Dictionary<string, string>
        {
            ["format"] = Format,
            ["quantization"] = "int8 weight-only, per output channel, symmetric (scale = max|W_c| / 127)",
        });

    /// <summary>
    /// Loads a file written by <see cref="Save"/> into <paramref name="model"/>: a float model of the same
    /// architecture (the layers the file stores as int8 are replaced first) or an already quantized one. Every key
    /// must match in name, dtype and shape, both ways; scales must be positive and finite. Errors are
    /// <see cref="QuantizedStateException"/> naming the key.
    /// </summary>
    public static void Load(nn.Module model, string file)
    {
        var (entries, metadata) = SafeTensors.ReadHeader(file);
        if (metadata.TryGetValue("format", out var format) && format != Format)
            throw new QuantizedStateException(file, "__metadata__.format", $"'{format}', expected '{Format}'");
        var byName = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);

        // 1. Structure: a layer whose weight the file stores as I8 becomes an int8 layer.
        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
        foreach (var e in entries.Where(e => e.DType == "I8"))
        {
            if (!e.Name.EndsWith(".weight", StringComparison.Ordinal))
                throw new QuantizedStateException(file, e.Name, "an I8 tensor that is not a layer's weight");
            string layer = e.Name[..^".weight".Length];
            if (!byName.ContainsKey(layer + ".weight_scale"))
                throw new QuantizedStateException(file, layer + ".weight_scale",
                    "missing: an I8 weight needs its per-channel scales");
            if (!modules.TryGetValue(layer, out var module))
                throw new QuantizedStateException(file, e.Name, $"the model has no layer '{layer}'");
            nn.Module? empty = module switch
            {
                Linear l => Int8Linear.Empty(l.in_features, l.out_features, l.bias is not null),
                Conv2d c when Int8Conv2d.Supports(c) => Int8Conv2d.Empty(c),
                Int8Linear or Int8Conv2d => null,
                _ => throw new QuantizedStateException(file, e.Name,
                    $"'{layer}' is a {module.GetType().Name}; int8 weights fit Linear and Conv2d layers"),
            };
            if (empty is not null) ModuleSurgery.Replace(model, layer, empty).Dispose();
        }

        // 2. Values: both key sets equal, each tensor's dtype and shape as the model has it.
        var state = model.state_dict();
        foreach (var key in state.Keys.Where(k => !byName.ContainsKey(k)))
            throw new QuantizedStateException(file, key, "missing from the file");
        foreach (var key in byName.Keys.Where(k => !state.ContainsKey(k)))
            throw new QuantizedStateException(file, key, "the model has no such tensor");
        var tensors = SafeTensors.Load(file);
        using var _ = no_grad();
        foreach (var (key, target) in state)
        {
            using var scope = NewDisposeScope();
            var t = tensors[key];
            if (t.dtype != target.dtype || !t.shape.SequenceEqual(target.shape))
                throw new QuantizedStateException(file, key,
                    $"{t.dtype} [{string.Join(", ", t.shape)}], expected {target.dtype} " +
                    $"[{string.Join(", ", target.shape)}]");
            if (key.EndsWith(".weight_scale", StringComparison.Ordinal) &&
                !(t > 0).logical_and(t.isfinite()).all().item<bool>())
                throw new QuantizedStateException(file, key, "scales must be positive and finite");
            target.copy_(t);
        }
        foreach (var t in tensors.Values) t.Dispose();
    }
}
