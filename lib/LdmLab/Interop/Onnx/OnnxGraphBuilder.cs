using System.Globalization;
using Google.Protobuf;
using Onnx;
using static TorchSharp.torch;

namespace LdmLab.Interop.Onnx;

/// <summary>One dimension of a graph input or output: a fixed size or a named dynamic axis ("batch", "height").
/// </summary>
public readonly record struct OnnxDim(long? Size, string? Name)
{
    public static implicit operator OnnxDim(long size) => new(size, null);
    public static implicit operator OnnxDim(int size) => new(size, null);
    public static implicit operator OnnxDim(string name) => new(null, name);
    public override string ToString() => Name ?? Size!.Value.ToString(CultureInfo.InvariantCulture);
}

/// <summary>A node attribute (onnx.proto AttributeProto): an int, a float, a string or a list of ints.</summary>
public sealed record OnnxAttr(string Name, long? Int = null, float? Float = null, string? Str = null,
    long[]? Ints = null)
{
    public static OnnxAttr Of(string name, long value) => new(name, Int: value);
    public static OnnxAttr Of(string name, float value) => new(name, Float: value);
    public static OnnxAttr Of(string name, string value) => new(name, Str: value);
    public static OnnxAttr Of(string name, params long[] values) => new(name, Ints: values);

    internal AttributeProto ToProto()
    {
        var a = new AttributeProto { Name = Name };
        if (Int is long i) { a.Type = AttributeProto.Types.AttributeType.Int; a.I = i; }
        else if (Float is float f) { a.Type = AttributeProto.Types.AttributeType.Float; a.F = f; }
        else if (Str is string s)
        {
            a.Type = AttributeProto.Types.AttributeType.String;
            a.S = ByteString.CopyFromUtf8(s);
        }
        else { a.Type = AttributeProto.Types.AttributeType.Ints; a.Ints.AddRange(Ints ?? []); }
        return a;
    }
}

/// <summary>
/// Builds an ONNX graph (onnx.proto's GraphProto inside a ModelProto) one node at a time, in the order a forward
/// pass runs: typed inputs and outputs with named dynamic axes, weights as initializers, small constants shared by
/// value, and value names that say which layer made them (<c>down_blocks.0.resnets.0/Conv_12</c>). Opset 17 of
/// the default domain (LayerNormalization is opset 17; GroupNorm is written as InstanceNormalization + Reshape,
/// which every opset ≥ 6 and ONNX Runtime's CPU provider run exactly). Weights stay TorchSharp tensors until
/// <see cref="OnnxModelWriter"/> writes them, inline or as external data.
/// </summary>
public sealed class OnnxGraphBuilder(string graphName)
{
    public const int Opset = 17;
    /// <summary>IR version 8 (ONNX 1.10+): the first that opset 17 may use.</summary>
    public const int IrVersion = 8;

    readonly List<NodeProto> _nodes = [];
    readonly List<ValueInfoProto> _inputs = [], _outputs = [];
    readonly List<(string Name, Tensor Value)> _initializers = [];
    readonly Dictionary<string, string> _constants = new(StringComparer.Ordinal);
    readonly HashSet<string> _names = new(StringComparer.Ordinal);
    readonly Dictionary<string, int> _counters = new(StringComparer.Ordinal);
    string _scope = "";

    public string GraphName { get; } = graphName;
    public IReadOnlyList<NodeProto> Nodes => _nodes;
    public IReadOnlyList<(string Name, Tensor Value)> Initializers => _initializers;
    public IReadOnlyList<ValueInfoProto> Inputs => _inputs;
    public IReadOnlyList<ValueInfoProto> Outputs => _outputs;

    /// <summary>Element types (onnx.proto TensorProto.DataType) the exporter uses.</summary>
    public const int Float = 1, UInt8 = 2, Int8 = 3, Int32 = 6, Int64 = 7, Bool = 9;

    /// <summary>Names the nodes made until the handle is disposed after <paramref name="layerPath"/> (a module's
    /// state-dict prefix), so that a node or value in the graph can be traced back to the layer.</summary>
    public IDisposable Scope(string layerPath)
    {
        var outer = _scope;
        _scope = layerPath;
        return new Restore(() => _scope = outer);
    }

    public string CurrentScope => _scope;

    sealed class Restore(Action restore) : IDisposable
    {
        public void Dispose() => restore();
    }

    /// <summary>A graph input; <paramref name="dims"/> null leaves the rank open (e.g. a timestep that is a scalar
    /// or [B]).</summary>
    public string Input(string name, int elementType, OnnxDim[]? dims)
    {
        Claim(name);
        _inputs.Add(ValueInfo(name, elementType, dims));
        return name;
    }

    /// <summary>Declares <paramref name="value"/> a graph output named <paramref name="name"/> (an Identity node
    /// renames it when the names differ).</summary>
    public void Output(string value, string name, int elementType, OnnxDim[]? dims)
    {
        if (value != name)
        {
            Claim(name);
            _nodes.Add(Node("Identity", [value], [name], []));
        }
        _outputs.Add(ValueInfo(name, elementType, dims));
    }

    /// <summary>A weight as an initializer named after its state-dict key (float32, contiguous, on the CPU).
    /// </summary>
    public string Weight(string name, Tensor value)
    {
        Claim(name);
        var t = value.detach().to(CPU).to_type(ScalarType.Float32).contiguous();
        _initializers.Add((name, t));
        return name;
    }

    /// <summary>A constant float tensor, shared with any earlier constant of the same values and shape.</summary>
    public string Const(float[] values, params long[] dims) =>
        Shared("f", string.Join(",", values.Select(v => BitConverter.SingleToInt32Bits(v))), dims,
            () => tensor(values, dims));

    /// <summary>A constant int64 tensor (shapes, axes, indices), shared by value.</summary>
    public string Const(long[] values, params long[] dims) =>
        Shared("i", string.Join(",", values), dims, () => tensor(values, dims));

    /// <summary>A float scalar (rank 0), shared by value.</summary>
    public string Scalar(float value) => Const([value]);

    /// <summary>A 1-D int64 constant: a shape, axes or starts/ends.</summary>
    public string Ints(params long[] values) => Const(values, values.Length);

    string Shared(string kind, string key, long[] dims, Func<Tensor> make)
    {
        var fullKey = $"{kind}[{string.Join(",", dims)}]{key}";
        if (_constants.TryGetValue(fullKey, out var name)) return name;
        name = Fresh("const");
        Claim(name);
        _initializers.Add((name, make().contiguous()));
        _constants[fullKey] = name;
        return name;
    }

    /// <summary>One node with one output; "" stands for an omitted optional input.</summary>
    public string Op(string opType, string[] inputs, params OnnxAttr[] attributes) =>
        Op(opType, 1, inputs, attributes)[0];

    /// <summary>One node with <paramref name="outputs"/> outputs (e.g. Split).</summary>
    public string[] Op(string opType, int outputs, string[] inputs, params OnnxAttr[] attributes)
    {
        var names = Enumerable.Range(0, outputs).Select(_ => Fresh(opType)).ToArray();
        foreach (var n in names) Claim(n);
        _nodes.Add(Node(opType, inputs, names, attributes));
        return names;
    }

    NodeProto Node(string opType, string[] inputs, string[] outputs, OnnxAttr[] attributes)
    {
        var node = new NodeProto { OpType = opType, Name = outputs[0] };
        node.Input.AddRange(inputs);
        node.Output.AddRange(outputs);
        node.Attribute.AddRange(attributes.Select(a => a.ToProto()));
        return node;
    }

    /// <summary>A value name no other value has: {scope}/{what}_{n}.</summary>
    string Fresh(string what)
    {
        var prefix = _scope.Length == 0 ? what : $"{_scope}/{what}";
        int n = _counters.GetValueOrDefault(prefix);
        _counters[prefix] = n + 1;
        return $"{prefix}_{n}";
    }

    void Claim(string name)
    {
        if (!_names.Add(name))
            throw new InvalidOperationException($"ONNX graph {GraphName}: the value name '{name}' is used twice");
    }

    static ValueInfoProto ValueInfo(string name, int elementType, OnnxDim[]? dims)
    {
        var tensorType = new TypeProto.Types.Tensor { ElemType = elementType };
        if (dims is not null)
        {
            tensorType.Shape = new TensorShapeProto();
            foreach (var d in dims)
                tensorType.Shape.Dim.Add(d.Name is string p
                    ? new TensorShapeProto.Types.Dimension { DimParam = p }
                    : new TensorShapeProto.Types.Dimension { DimValue = d.Size!.Value });
        }
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tensorType } };
    }

    /// <summary>The ModelProto without initializer data; <see cref="OnnxModelWriter"/> fills that in.</summary>
    internal ModelProto Skeleton(IReadOnlyDictionary<string, string>? metadata)
    {
        var graph = new GraphProto { Name = GraphName };
        graph.Node.AddRange(_nodes);
        graph.Input.AddRange(_inputs);
        graph.Output.AddRange(_outputs);
        var model = new ModelProto
        {
            IrVersion = IrVersion, ProducerName = "LdmLab", ProducerVersion = "1", Graph = graph,
        };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
        foreach (var (k, v) in metadata ?? new Dictionary<string, string>())
            model.MetadataProps.Add(new StringStringEntryProto { Key = k, Value = v });
        return model;
    }
}
