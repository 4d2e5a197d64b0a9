using Google.Protobuf;
using LdmLab.Interop.Onnx;
using Onnx;
using static TorchSharp.torch;

namespace LdmLab.Export;

/// <summary>
/// The range [min, max] a value took over the calibration feeds, and its uint8 affine quantization (ONNX
/// QuantizeLinear: q = clamp(round(x/s) + z, 0, 255)): the range is widened to hold 0, s = (max − min)/255 and
/// z = round(−min/s), so zero padding and ReLU/SiLU zeros are exact; a value that was always 0 gets s = 1.
/// </summary>
public sealed record ActivationRange(float Min, float Max)
{
    public (float Scale, byte ZeroPoint) UInt8()
    {
        double lo = Math.Min(Min, 0), hi = Math.Max(Max, 0);
        double s = hi > lo ? (hi - lo) / 255 : 1;
        return ((float)s, (byte)Math.Clamp(Math.Round(-lo / s), 0, 255));
    }
}

/// <summary>
/// Min/max calibration in ONNX Runtime (ORT's MinMaxCalibrater): a copy of the float model declares the observed
/// values as extra graph outputs (a graph input through an Identity), each feed runs once, and every value's range
/// is the min and max over all feeds. The copy is written beside the model (so that external data still resolves)
/// and removed after.
/// </summary>
public static class OnnxCalibration
{
    public static Dictionary<string, ActivationRange> Collect(string modelPath, IReadOnlyCollection<string> values,
        IEnumerable<IReadOnlyDictionary<string, Tensor>> feeds, int? threads = null)
    {
        if (!File.Exists(modelPath)) throw new Data.DatasetException(modelPath, "ONNX model not found");
        var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(modelPath));
        var producers = model.Graph.Node.SelectMany(n => n.Output.Select(o => (o, n))).ToDictionary(p => p.o,
            p => p.n, StringComparer.Ordinal);
        var inputs = model.Graph.Input.Select(i => i.Name).Where(n => model.Graph.Initializer.All(t => t.Name != n))
            .ToHashSet(StringComparer.Ordinal);
        var outputs = new Dictionary<string, string>(StringComparer.Ordinal);                  // value → output name
        foreach (var v in values)
        {
            string output = v;
            if (inputs.Contains(v))
            {
                output = $"{v}/calibration";
                model.Graph.Node.Add(new NodeProto
                {
                    OpType = "Identity", Name = output, Input = { v }, Output = { output },
                });
            }
            else if (!producers.ContainsKey(v))
                throw new OnnxQuantizationException(v, "", $"{modelPath}: no node makes the value '{v}'");
            if (model.Graph.Output.All(o => o.Name != output))
                model.Graph.Output.Add(new ValueInfoProto
                {
                    Name = output,
                    Type = new TypeProto
                    {
                        TensorType = new TypeProto.Types.Tensor { ElemType = OnnxGraphBuilder.Float },
                    },
                });
            outputs[v] = output;
        }

        var copy = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(modelPath))!,
            $".{Path.GetFileName(modelPath)}.calibration-{Guid.NewGuid():N}.onnx");
        var ranges = new Dictionary<string, (float Min, float Max)>(StringComparer.Ordinal);
        try
        {
            File.WriteAllBytes(copy, model.ToByteArray());
            using var session = new OnnxSession(copy, threads);
            int k = 0;
            foreach (var feed in feeds)
            {
                foreach (var name in inputs.Where(n => !feed.ContainsKey(n)))
                    throw new ArgumentException($"calibration feed {k} has no value for the graph input '{name}' " +
                                                $"(it has {string.Join(", ", feed.Keys)})", nameof(feeds));
                using var scope = NewDisposeScope();
                var got = session.Run(feed, outputs.Values.Distinct().ToArray());
                foreach (var (v, output) in outputs)
                {
                    var t = got[output];
                    if (!t.isfinite().all().item<bool>())
                    {
                        var node = producers.TryGetValue(v, out var p) ? p.Name : v;
                        throw new OnnxQuantizationException(node, node.Contains('/') ? node[..node.LastIndexOf('/')]
                            : node, $"calibration feed {k} made non-finite values in '{v}'");
                    }
                    float lo = t.min().item<float>(), hi = t.max().item<float>();
                    ranges[v] = ranges.TryGetValue(v, out var r)
                        ? (Math.Min(r.Min, lo), Math.Max(r.Max, hi)) : (lo, hi);
                }
                k++;
            }
            if (k == 0) throw new ArgumentException("no calibration feeds", nameof(feeds));
        }
        finally
        {
            if (File.Exists(copy)) File.Delete(copy);
        }
        return ranges.ToDictionary(kv => kv.Key, kv => new ActivationRange(kv.Value.Min, kv.Value.Max),
            StringComparer.Ordinal);
    }
}
