using System.Globalization;
using System.Runtime.InteropServices;
using Onnx;
using static TorchSharp.torch;

namespace LdmLab.Interop.Onnx;

/// <summary>
/// Reads an ONNX model file back into the two parts <see cref="OnnxModelWriter"/> writes: the ModelProto with an
/// empty initializer list (the skeleton: nodes, inputs, outputs, opsets, metadata) and the initializers as CPU
/// tensors in their own element types (float32, int64, int32, int8, uint8), whether stored as raw_data, in the typed
/// fields, or as external data beside the model (onnx.proto's location / offset / length, relative to the model's
/// folder). A graph rewrite edits the skeleton and writes both parts back with the writer's storage rules.
/// </summary>
public static class OnnxModelReader
{
    public static (ModelProto Skeleton, List<(string Name, Tensor Value)> Initializers) Read(string path)
    {
        if (!File.Exists(path)) throw new Data.DatasetException(path, "ONNX model not found");
        ModelProto model;
        try { model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(path)); }
        catch (Google.Protobuf.InvalidProtocolBufferException e)
        {
            throw new Data.DatasetException(path, "not a readable ONNX model: " + e.Message, e);
        }
        if (model.Graph is null) throw new Data.DatasetException(path, "the ONNX model has no graph");
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        var tensors = model.Graph.Initializer.Select(t => (t.Name, ToTensor(t, dir, path))).ToList();
        model.Graph.Initializer.Clear();
        return (model, tensors);
    }

    static Tensor ToTensor(TensorProto t, string dir, string modelPath)
    {
        long[] dims = t.Dims.ToArray();
        byte[]? raw = t.DataLocation == TensorProto.Types.DataLocation.External ? External(t, dir, modelPath)
            : t.RawData.IsEmpty ? null : t.RawData.ToByteArray();
        T[] Raw<T>() where T : unmanaged => MemoryMarshal.Cast<byte, T>(raw!).ToArray();
        return t.DataType switch
        {
            OnnxGraphBuilder.Float => tensor(raw is null ? t.FloatData.ToArray() : Raw<float>(), dims),
            OnnxGraphBuilder.Int64 => tensor(raw is null ? t.Int64Data.ToArray() : Raw<long>(), dims),
            OnnxGraphBuilder.Int32 => tensor(raw is null ? t.Int32Data.ToArray() : Raw<int>(), dims),
            OnnxGraphBuilder.Int8 => tensor(raw is null ? t.Int32Data.Select(v => (sbyte)v).ToArray() : Raw<sbyte>(),
                dims),
            OnnxGraphBuilder.UInt8 => tensor(raw is null ? t.Int32Data.Select(v => (byte)v).ToArray() : raw, dims),
            _ => throw new Data.DatasetException(modelPath,
                $"initializer '{t.Name}': element type {t.DataType} is not read (float32, int64, int32, int8, uint8)"),
        };
    }

    static byte[] External(TensorProto t, string dir, string modelPath)
    {
        var entries = t.ExternalData.ToDictionary(e => e.Key, e => e.Value);
        if (!entries.TryGetValue("location", out var location) || Path.IsPathRooted(location))
            throw new Data.DatasetException(modelPath,
                $"initializer '{t.Name}': external data without a relative location");
        long offset = entries.TryGetValue("offset", out var o) ? long.Parse(o, CultureInfo.InvariantCulture) : 0;
        var file = Path.Combine(dir, location);
        if (!File.Exists(file)) throw new Data.DatasetException(file, $"external data of '{t.Name}' not found");
        using var s = File.OpenRead(file);
        long length = entries.TryGetValue("length", out var l) ? long.Parse(l, CultureInfo.InvariantCulture)
            : s.Length - offset;
        if (offset < 0 || length < 0 || offset + length > s.Length)
            throw new Data.DatasetException(file, $"'{t.Name}' runs past the end of the external data");
        var bytes = new byte[length];
        s.Seek(offset, SeekOrigin.Begin);
        s.ReadExactly(bytes);
        return bytes;
    }
}
