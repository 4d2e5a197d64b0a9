using LdmLab.Data;
using Microsoft.ML.OnnxRuntime;
using TensorElementType = Microsoft.ML.OnnxRuntime.Tensors.TensorElementType;
using static TorchSharp.torch;

namespace LdmLab.Interop.Onnx;

/// <summary>
/// An ONNX model in ONNX Runtime (CPU; the application supplies the native runtime, see <see cref="NewOptions"/>),
/// fed and read as TorchSharp tensors: float32, int64 and int32 values are copied in and out. Each input is
/// converted to the element type the model declares for it (diffusers' ONNX pipeline does the same with the
/// timestep and the token ids), so callers need not know whether a text encoder was exported with int32 or int64
/// ids.
/// </summary>
public sealed class OnnxSession : IDisposable
{
    readonly InferenceSession _session;

    public string ModelPath { get; }

    /// <param name="threads">ONNX Runtime's intra-op threads; null: its default (one per core).</param>
    /// <param name="optimizedModelPath">Where ONNX Runtime writes the graph it runs after its graph optimizations
    /// (fusions such as DynamicQuantizeLinear + MatMulInteger → DynamicQuantizeMatMul): what it really executes.
    /// </param>
    public OnnxSession(string modelPath, int? threads = null, string? optimizedModelPath = null)
    {
        if (!File.Exists(modelPath)) throw new DatasetException(modelPath, "ONNX model not found");
        ModelPath = modelPath;
        using var options = NewOptions();
        if (threads is int n) options.IntraOpNumThreads = n;
        // no busy-waiting between runs: the ONNX pipelines interleave ORT calls with TorchSharp's scheduler steps,
        // and spinning ORT threads would take the cores those need (measured: the next TorchSharp U-Net call ran
        // ~2× slower right after an ORT one)
        options.AddSessionConfigEntry("session.intra_op.allow_spinning", "0");
        if (optimizedModelPath is not null) options.OptimizedModelFilePath = optimizedModelPath;
        try { _session = new InferenceSession(modelPath, options); }
        catch (OnnxRuntimeException e)
        {
            throw new DatasetException(modelPath, "ONNX Runtime cannot load this model: " + e.Message, e);
        }
    }

    /// <summary>The first call into ONNX Runtime loads its native library, which LdmLab does not carry (only the
    /// managed API): an application that runs ONNX graphs references the Microsoft.ML.OnnxRuntime package.</summary>
    static SessionOptions NewOptions()
    {
        try { return new SessionOptions(); }
        catch (Exception e)
            when (e is DllNotFoundException or TypeInitializationException or EntryPointNotFoundException)
        {
            throw new InvalidOperationException("ONNX Runtime's native library was not found: add the " +
                "Microsoft.ML.OnnxRuntime package (1.31.1) to the application that runs ONNX models", e);
        }
    }

    public IReadOnlyList<string> InputNames => _session.InputNames;
    public IReadOnlyList<string> OutputNames => _session.OutputNames;

    /// <summary>The declared element type of an input (onnx.proto TensorProto.DataType: 1 float, 6 int32, 7 int64).
    /// </summary>
    public int InputElementType(string name) => _session.InputMetadata.TryGetValue(name, out var m)
        ? (int)m.ElementDataType
        : throw new ArgumentException($"{ModelPath}: no input '{name}' (inputs: {string.Join(", ", InputNames)})",
            nameof(name));

    /// <summary>Runs the model; returns the named outputs (default: all) as CPU tensors.</summary>
    public Dictionary<string, Tensor> Run(IReadOnlyDictionary<string, Tensor> inputs, params string[] outputs)
    {
        foreach (var name in inputs.Keys) InputElementType(name);
        var wanted = outputs.Length == 0 ? OutputNames : outputs;
        var values = new Dictionary<string, OrtValue>(StringComparer.Ordinal);
        try
        {
            foreach (var (name, t) in inputs) values[name] = ToOrt(t, InputElementType(name));
            using var runOptions = new RunOptions();
            using var results = _session.Run(runOptions, values, wanted.ToArray());
            var map = new Dictionary<string, Tensor>(StringComparer.Ordinal);
            int k = 0;
            foreach (var r in results) map[wanted[k++]] = FromOrt(r);
            return map;
        }
        catch (OnnxRuntimeException e)
        {
            throw new InvalidOperationException($"{ModelPath}: ONNX Runtime failed: {e.Message}", e);
        }
        finally
        {
            foreach (var v in values.Values) v.Dispose();
        }
    }

    static OrtValue ToOrt(Tensor t, int elementType)
    {
        var c = t.detach().cpu().contiguous();
        long[] shape = c.shape;
        return elementType switch
        {
            (int)TensorElementType.Float =>
                OrtValue.CreateTensorValueFromMemory(c.to_type(ScalarType.Float32).data<float>().ToArray(), shape),
            (int)TensorElementType.Int64 =>
                OrtValue.CreateTensorValueFromMemory(c.to_type(ScalarType.Int64).data<long>().ToArray(), shape),
            (int)TensorElementType.Int32 =>
                OrtValue.CreateTensorValueFromMemory(c.to_type(ScalarType.Int32).data<int>().ToArray(), shape),
            _ => throw new NotSupportedException($"ONNX element type {elementType} (float, int32 and int64 only)"),
        };
    }

    static Tensor FromOrt(OrtValue v)
    {
        var info = v.GetTensorTypeAndShape();
        long[] shape = info.Shape;
        return info.ElementDataType switch
        {
            TensorElementType.Float => tensor(v.GetTensorDataAsSpan<float>().ToArray(), shape),
            TensorElementType.Int64 => tensor(v.GetTensorDataAsSpan<long>().ToArray(), shape),
            TensorElementType.Int32 => tensor(v.GetTensorDataAsSpan<int>().ToArray(), shape),
            var other => throw new NotSupportedException($"ONNX output of type {other} (float, int32, int64 only)"),
        };
    }

    public void Dispose() => _session.Dispose();
}
