using Google.Protobuf;
using Onnx;
using static TorchSharp.torch;

namespace LdmLab.Interop.Onnx;

/// <summary>How <see cref="OnnxModelWriter"/> stores the weights.</summary>
public sealed record OnnxSaveOptions
{
    /// <summary>
    /// Past this many bytes of initializers the weights go to a side file (ONNX's external data): a protobuf message
    /// cannot exceed 2 GiB, so a model file holding SD 1.5's 3.4 GB U-Net inline could not be written at all.
    /// </summary>
    public long ExternalDataThreshold { get; init; } = DefaultExternalDataThreshold;

    public const long DefaultExternalDataThreshold = 2_000_000_000;

    /// <summary>The side file's name, beside the model (its <c>location</c>, relative to the model's folder).
    /// diffusers' ONNX conversion names the U-Net's "weights.pb"; torch.onnx and optimum use "model.onnx_data".
    /// </summary>
    public string ExternalDataFile { get; init; } = "model.onnx_data";

    /// <summary>With external data, tensors smaller than this stay inline (onnx's size_threshold, 1024 bytes).
    /// </summary>
    public long ExternalMinTensorBytes { get; init; } = 1024;

    /// <summary>Key/value pairs for the model's metadata_props (e.g. what was exported, from which config).</summary>
    public IReadOnlyDictionary<string, string>? Metadata { get; init; }
}

/// <summary>
/// Writes an <see cref="OnnxGraphBuilder"/>'s graph as an ONNX ModelProto file. Initializers are raw little-endian
/// float32 / int64 / int32 / int8 / uint8 (TensorProto.raw_data). When their total passes
/// <see cref="OnnxSaveOptions.ExternalDataThreshold"/>, the tensors of at least
/// <see cref="OnnxSaveOptions.ExternalMinTensorBytes"/> go to one side file as onnx.proto describes external data:
/// data_location = EXTERNAL and external_data entries <c>location</c> (relative path), <c>offset</c> and
/// <c>length</c> in bytes; tensors of 1 MiB or more start on a 64 KiB boundary (onnx's save_model aligns them so
/// that a reader may map them). The side file is written first, then the model, each to a temp name renamed over
/// the target, so a reader never sees a model pointing at half-written data.
/// </summary>
public static class OnnxModelWriter
{
    const long AlignThreshold = 1 << 20, Alignment = 1 << 16;
    static readonly System.Globalization.CultureInfo Invariant = System.Globalization.CultureInfo.InvariantCulture;

    /// <summary>Writes the model; returns whether the weights went to the side file.</summary>
    public static bool Save(OnnxGraphBuilder graph, string path, OnnxSaveOptions? options = null) =>
        Save(graph.Skeleton(options?.Metadata), graph.Initializers, path,
            (options ?? new OnnxSaveOptions()) with { Metadata = null });

    /// <summary>
    /// Writes <paramref name="skeleton"/> (a ModelProto whose graph holds no initializers) with
    /// <paramref name="initializers"/> (float32, int64, int32, int8 or uint8 tensors on the CPU) as its weights, inline
    /// or in the side file as above; <see cref="OnnxSaveOptions.Metadata"/> is added to its metadata_props. A graph
    /// rewrite (<see cref="OnnxModelReader.Read"/> → edit → here) keeps the exporter's storage rules.
    /// </summary>
    public static bool Save(ModelProto skeleton, IReadOnlyList<(string Name, Tensor Value)> initializers, string path,
        OnnxSaveOptions? options = null)
    {
        options ??= new OnnxSaveOptions();
        if (string.IsNullOrWhiteSpace(options.ExternalDataFile) || Path.GetFileName(options.ExternalDataFile)
            != options.ExternalDataFile)
            throw new ArgumentException($"ExternalDataFile must be a plain file name, got '{options.ExternalDataFile}'",
                nameof(options));
        if (skeleton.Graph.Initializer.Count > 0)
            throw new ArgumentException("the skeleton's graph must hold no initializers (pass them separately)",
                nameof(skeleton));
        var model = skeleton.Clone();
        foreach (var (k, v) in options.Metadata ?? new Dictionary<string, string>())
        {
            var existing = model.MetadataProps.FirstOrDefault(e => e.Key == k);
            if (existing is not null) existing.Value = v;
            else model.MetadataProps.Add(Entry(k, v));
        }
        var tensors = initializers.Select(i => (i.Name, Value: i.Value.contiguous())).ToList();
        long total = tensors.Sum(i => i.Value.NumberOfElements * i.Value.ElementSize);
        bool external = total > options.ExternalDataThreshold;
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var dataPath = Path.Combine(dir, options.ExternalDataFile);
        var protos = tensors.Select(i => Header(i.Name, i.Value)).ToList();
        if (external)
        {
            Data.AtomicFile.Write(dataPath, s =>
            {
                long offset = 0;
                for (int k = 0; k < protos.Count; k++)
                {
                    var t = tensors[k].Value;
                    long length = t.NumberOfElements * t.ElementSize;
                    if (length < options.ExternalMinTensorBytes) continue;
                    long start = length >= AlignThreshold ? (offset + Alignment - 1) / Alignment * Alignment : offset;
                    for (; offset < start; offset++) s.WriteByte(0);
                    s.Write(t.bytes);
                    offset += length;
                    protos[k].DataLocation = TensorProto.Types.DataLocation.External;
                    protos[k].ExternalData.Add(Entry("location", options.ExternalDataFile));
                    protos[k].ExternalData.Add(Entry("offset", start.ToString(Invariant)));
                    protos[k].ExternalData.Add(Entry("length", length.ToString(Invariant)));
                }
            });
        }
        for (int k = 0; k < protos.Count; k++)
            if (protos[k].DataLocation != TensorProto.Types.DataLocation.External)
                protos[k].RawData = ByteString.CopyFrom(tensors[k].Value.bytes);
        model.Graph.Initializer.AddRange(protos);
        Data.AtomicFile.Write(path, s => model.WriteTo(s));
        // an inline model leaves no stale side file of an earlier, larger export behind
        if (!external && File.Exists(dataPath)) File.Delete(dataPath);
        return external;
    }

    static TensorProto Header(string name, Tensor t)
    {
        var proto = new TensorProto
        {
            Name = name,
            DataType = t.dtype switch
            {
                ScalarType.Float32 => OnnxGraphBuilder.Float,
                ScalarType.Int64 => OnnxGraphBuilder.Int64,
                ScalarType.Int32 => OnnxGraphBuilder.Int32,
                ScalarType.Int8 => OnnxGraphBuilder.Int8,
                ScalarType.Byte => OnnxGraphBuilder.UInt8,
                _ => throw new NotSupportedException(
                    $"initializer '{name}': {t.dtype} (float32, int64, int32, int8 and uint8 only)"),
            },
        };
        proto.Dims.AddRange(t.shape);
        return proto;
    }

    static StringStringEntryProto Entry(string key, string value) => new() { Key = key, Value = value };
}
