using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Interop.Onnx;

/// <summary>
/// Runs an ONNX graph with TorchSharp ops, so gradients flow through it (ONNX Runtime gives no gradients). The
/// weights become frozen buffers. Supported ops: Conv, BatchNormalization (inference), Relu, MaxPool, AveragePool,
/// GlobalAveragePool, Add, Sub, Mul, Split, Concat, Flatten, Gemm — what the ImageNet CNNs used here need; any other
/// op is a clear error naming it.
/// </summary>
public sealed class OnnxGraph : nn.Module<Tensor, Tensor>
{
    static readonly HashSet<string> Supported = ["Conv", "BatchNormalization", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Sub", "Mul", "Split", "Concat", "Flatten", "Gemm"];
    readonly OnnxModel _model;
    readonly Dictionary<string, Tensor> _consts = new();

    /// <summary>Values (by ONNX name) to keep from the last forward pass, e.g. intermediate activations.</summary>
    public HashSet<string> Taps { get; } = new();
    public Dictionary<string, Tensor> Tapped { get; } = new();
    public OnnxModel Model => _model;

    public OnnxGraph(OnnxModel model, string name = "onnx") : base(name)
    {
        var unsupported = model.Nodes.Select(n => n.OpType).Where(op => !Supported.Contains(op)).Distinct().ToList();
        if (unsupported.Count > 0) throw new NotSupportedException($"ONNX ops not supported: {string.Join(", ", unsupported)}");
        _model = model;
        int k = 0;
        foreach (var (n, t) in model.Initializers)
        {
            var value = t.Floats is not null ? tensor(t.Floats, t.Dims.Length == 0 ? [] : t.Dims) : tensor(t.Int64s!, t.Dims.Length == 0 ? [] : t.Dims);
            _consts[n] = value;
            register_buffer($"c{k++}", value);
        }
    }

    public override Tensor forward(Tensor input)
    {
        var env = new Dictionary<string, Tensor>(_consts.Where(kv => true).Select(kv => KeyValuePair.Create(kv.Key, kv.Value.to(input.device))))
        {
            [_model.Inputs[0]] = input,
        };
        Tapped.Clear();
        foreach (var node in _model.Nodes)
        {
            var x = node.Inputs.Select(i => i.Length == 0 ? null : env[i]).ToArray();
            var outs = Run(node, x!);
            for (int i = 0; i < node.Outputs.Length; i++)
            {
                env[node.Outputs[i]] = outs[i];
                if (Taps.Contains(node.Outputs[i])) Tapped[node.Outputs[i]] = outs[i];
            }
        }
        return env[_model.Outputs[0]];
    }

    static Tensor PadAsymmetric(Tensor x, long[] pads, double value)
    {
        // ONNX pads: [h_begin, w_begin, h_end, w_end]; torch pad: (w_begin, w_end, h_begin, h_end)
        if (pads.All(p => p == 0)) return x;
        return nn.functional.pad(x, [pads[1], pads[3], pads[0], pads[2]], value: value);
    }

    static Tensor[] Run(OnnxNode n, Tensor[] x)
    {
        switch (n.OpType)
        {
            case "Conv":
            {
                var strides = n.Ints("strides", [1, 1]); var dil = n.Ints("dilations", [1, 1]); var pads = n.Ints("pads", [0, 0, 0, 0]);
                var input = PadAsymmetric(x[0], pads, 0);
                return [nn.functional.conv2d(input, x[1], x.Length > 2 ? x[2] : null, strides: strides, padding: [0, 0], dilation: dil, groups: n.Int("group", 1))];
            }
            case "BatchNormalization":
            {
                double eps = n.Float("epsilon", 1e-5f);
                Tensor C(Tensor t) => t.reshape(1, -1, 1, 1);
                return [(x[0] - C(x[3])) / (C(x[4]) + eps).sqrt() * C(x[1]) + C(x[2])];
            }
            case "Relu": return [nn.functional.relu(x[0])];
            case "MaxPool":
            {
                var k = n.Ints("kernel_shape", [1, 1]); var s = n.Ints("strides", [1, 1]); var pads = n.Ints("pads", [0, 0, 0, 0]);
                return [nn.functional.max_pool2d(PadAsymmetric(x[0], pads, double.NegativeInfinity), k, s)];
            }
            case "AveragePool":
            {
                var k = n.Ints("kernel_shape", [1, 1]); var s = n.Ints("strides", [1, 1]); var pads = n.Ints("pads", [0, 0, 0, 0]);
                if (pads.Any(p => p != 0)) throw new NotSupportedException("padded AveragePool");
                // A pool window larger than the input (a CNN run below its training resolution) averages globally.
                if (k[0] >= x[0].shape[2] && k[1] >= x[0].shape[3]) return [x[0].mean([2, 3], keepdim: true)];
                return [nn.functional.avg_pool2d(x[0], k, s)];
            }
            case "GlobalAveragePool": return [x[0].mean([2, 3], keepdim: true)];
            case "Add": return [x[0] + x[1]];
            case "Sub": return [x[0] - x[1]];
            case "Mul": return [x[0] * x[1]];
            case "Split":
            {
                long axis = n.Int("axis", 0);
                var sizes = n.Ints("split", []);
                if (sizes.Length == 0) sizes = Enumerable.Repeat(x[0].shape[axis] / n.Outputs.Length, n.Outputs.Length).ToArray();
                return x[0].split(sizes, axis);
            }
            case "Concat": return [cat(x, n.Int("axis", 0))];
            case "Flatten": { long axis = n.Int("axis", 1); return [x[0].flatten(0, axis - 1).flatten(1)]; }
            case "Gemm":
            {
                var a = n.Int("transA", 0) == 1 ? x[0].T : x[0];
                var b = n.Int("transB", 0) == 1 ? x[1].T : x[1];
                var y = n.Float("alpha", 1f) * a.matmul(b);
                return [x.Length > 2 ? y + n.Float("beta", 1f) * x[2] : y];
            }
            default: throw new NotSupportedException($"ONNX op {n.OpType}");
        }
    }
}
