using LdmLab.Compression;
using LdmLab.Interop.Onnx;
using Onnx;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Export;

/// <summary>
/// The graph surgery behind <see cref="OnnxInt8"/>: plans which MatMul/Conv nodes become int8 (checking the graph
/// as it goes), then replaces each by its dynamic or QDQ pattern in place, so every value keeps its name and the rest
/// of the graph is untouched. New values are named after the replaced node's output (<c>{y}/x_q</c>, …), new weights
/// after the float ones (<c>{path}.weight_quantized</c>, <c>{path}.weight_scale</c>).
/// </summary>
internal sealed class Int8Rewrite
{
    /// <summary>A node to quantize: its weight [K, N] (MatMul) or [C, in/g, kh, kw] (Conv) and optional bias [C].
    /// </summary>
    internal sealed record Target(NodeProto Node, string Layer, bool IsConv, Tensor Weight, Tensor? Bias);

    static readonly HashSet<string> QuantizedOps =
    [
        "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "MatMulInteger", "ConvInteger",
        "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    ];

    readonly ModelProto _model;
    readonly Dictionary<string, Tensor> _init;
    readonly List<string> _order;
    readonly List<Target> _targets = [];
    readonly List<(string, string)> _kept = [];
    readonly long _bytesBefore;
    readonly bool _convolutions;

    Int8Rewrite(ModelProto model, List<(string Name, Tensor Value)> initializers, OnnxInt8Options options,
        OnnxInt8Mode mode)
    {
        _convolutions = options.Convolutions ?? mode == OnnxInt8Mode.Static;
        _model = model;
        _init = initializers.ToDictionary(i => i.Name, i => i.Value, StringComparer.Ordinal);
        _order = initializers.Select(i => i.Name).ToList();
        _bytesBefore = Bytes();
        Plan(options);
    }

    public static Int8Rewrite Load(string path, OnnxInt8Options options, OnnxInt8Mode mode)
    {
        var (skeleton, initializers) = OnnxModelReader.Read(path);
        return new Int8Rewrite(skeleton, initializers, options, mode);
    }

    public IReadOnlyList<Target> Targets => _targets;

    /// <summary>The layer a node belongs to: its name up to the last '/' (the exporter's scope).</summary>
    static string Scope(NodeProto n) => n.Name.LastIndexOf('/') is var k and > 0 ? n.Name[..k] : n.Name;

    /// <summary>The layer of a weight: its state-dict key without ".weight".</summary>
    static string LayerOf(string weight) => weight.EndsWith(".weight", StringComparison.Ordinal)
        ? weight[..^".weight".Length] : weight;

    void Plan(OnnxInt8Options options)
    {
        var known = new HashSet<string>(_init.Keys, StringComparer.Ordinal);
        foreach (var i in _model.Graph.Input) known.Add(i.Name);
        foreach (var node in _model.Graph.Node)
        {
            foreach (var input in node.Input.Where(i => i.Length > 0 && !known.Contains(i)))
                throw new OnnxQuantizationException(node.Name, Scope(node),
                    $"input '{input}' is made by no earlier node, graph input or initializer");
            foreach (var output in node.Output) known.Add(output);
            if (QuantizedOps.Contains(node.OpType))
                throw new OnnxQuantizationException(node.Name, Scope(node),
                    $"the graph is already quantized ({node.OpType}): quantize the float export");
            if (node.OpType == "Gemm")
            {
                _kept.Add((Scope(node), "Gemm is left in float (the exporters write MatMul + Add)"));
                continue;
            }
            if (node.OpType is not ("MatMul" or "Conv")) continue;
            bool conv = node.OpType == "Conv";
            if (!_init.TryGetValue(node.Input[1], out var w))
            {
                _kept.Add((Scope(node), "a product of two activations (attention scores or probabilities × values)"));
                continue;
            }
            var layer = LayerOf(node.Input[1]);
            Check(node, layer, w, conv ? "Conv weight [C, in/groups, k…]" : "MatMul weight [K, N]", conv ? -3 : 2);
            Tensor? bias = null;
            if (conv && node.Input.Count > 2 && node.Input[2].Length > 0)
            {
                if (!_init.TryGetValue(node.Input[2], out bias))
                    throw new OnnxQuantizationException(node.Name, layer,
                        $"Conv bias '{node.Input[2]}' is not an initializer");
                Check(node, layer, bias, $"Conv bias [{w.shape[0]}]", 1);
                if (bias.shape[0] != w.shape[0])
                    throw new OnnxQuantizationException(node.Name, layer,
                        $"Conv bias has {bias.shape[0]} values for {w.shape[0]} output channels");
            }
            if (options.KeepFloat(layer)) _kept.Add((layer, "key layer (first/last conv, time embedding)"));
            else if (w.numel() < options.MinWeightElements)
                _kept.Add((layer, $"{w.numel()} weights < {options.MinWeightElements}: too small to gain"));
            else if (conv && !_convolutions) _kept.Add((layer, "convolutions not requested"));
            else _targets.Add(new Target(node, layer, conv, w, bias));
        }
    }

    /// <summary>A weight must be a finite float32 initializer of the rank its operator reads (negative: at least).
    /// </summary>
    static void Check(NodeProto node, string layer, Tensor t, string what, int rank)
    {
        bool rankOk = rank > 0 ? t.dim() == rank : t.dim() >= -rank;
        if (t.dtype != ScalarType.Float32 || !rankOk)
            throw new OnnxQuantizationException(node.Name, layer,
                $"{what}: got {t.dtype} [{string.Join(", ", t.shape)}], expected a float32 initializer of rank " +
                (rank > 0 ? $"{rank}" : $"≥ {-rank}"));
        if (!t.isfinite().all().item<bool>())
            throw new OnnxQuantizationException(node.Name, layer, $"{what} holds NaN or ±∞");
    }

    /// <summary>What a static rewrite needs calibrated: each target's activation input, and each Conv's output
    /// (QLinearConv writes uint8).</summary>
    public IReadOnlyCollection<string> ObservedForStatic() =>
        _targets.SelectMany(t => t.IsConv ? new[] { t.Node.Input[0], t.Node.Output[0] } : [t.Node.Input[0]])
            .Distinct(StringComparer.Ordinal).ToList();

    // ---- the rewrites ---------------------------------------------------------------------------------------------

    readonly Dictionary<string, string> _staticInputs = new(StringComparer.Ordinal);

    public void Dynamic() => Replace(t => t.IsConv ? DynamicConv(t) : DynamicMatMul(t));

    public void Static(IReadOnlyDictionary<string, ActivationRange> ranges) =>
        Replace(t => t.IsConv ? StaticConv(t, ranges) : StaticMatMul(t, ranges));

    void Replace(Func<Target, List<NodeProto>> rewrite)
    {
        var byNode = new Dictionary<NodeProto, Target>(ReferenceEqualityComparer.Instance);
        foreach (var t in _targets) byNode[t.Node] = t;
        var nodes = new List<NodeProto>();
        foreach (var node in _model.Graph.Node)
            nodes.AddRange(byNode.TryGetValue(node, out var t) ? rewrite(t) : [node]);
        _model.Graph.Node.Clear();
        _model.Graph.Node.AddRange(nodes);
        var used = new HashSet<string>(nodes.SelectMany(n => n.Input), StringComparer.Ordinal);
        foreach (var name in _order.Where(n => !used.Contains(n)).ToList())
        {
            _init.Remove(name);
            _order.Remove(name);
        }
    }

    /// <summary>x → DynamicQuantizeLinear → MatMulInteger(x_q, W_q int8 [K, N], z_x) → Cast → × (s_x · s_w[N]).
    /// </summary>
    List<NodeProto> DynamicMatMul(Target t)
    {
        var (x, y) = (t.Node.Input[0], t.Node.Output[0]);
        var (q, scale) = Int8Quantizer.Quantize(t.Weight.t());                                 // [N, K], [N]
        var wq = Add($"{t.Node.Input[1]}_quantized", q.t().contiguous());                      // int8 [K, N]
        var ws = Add($"{t.Node.Input[1]}_scale", scale);                                       // [N]
        // zero, but written: ORT's AVX2 rewrite of s8 weights to u8 (no int16 saturation) needs it present
        var wz = Add($"{t.Node.Input[1]}_zero_point", zeros_like(scale, dtype: ScalarType.Int8));
        return
        [
            .. DynamicQuantize(t.Node, x, y),
            Node("MatMulInteger", t.Node.Name + "/MatMulInteger", [$"{y}/x_q", wq, $"{y}/x_zero_point", wz],
                [$"{y}/int32"]),
            Node("Cast", t.Node.Name + "/Cast", [$"{y}/int32"], [$"{y}/float"], Int("to", OnnxGraphBuilder.Float)),
            Node("Mul", t.Node.Name + "/Scale", [$"{y}/x_scale", ws], [$"{y}/scale"]),
            Node("Mul", t.Node.Name, [$"{y}/float", $"{y}/scale"], [y]),
        ];
    }

    /// <summary>x → DynamicQuantizeLinear → ConvInteger(x_q, q + 128 uint8, z_x, 128) → Cast → × (s_x · s_w[C, 1, 1])
    /// → + b[C, 1, 1].</summary>
    List<NodeProto> DynamicConv(Target t)
    {
        var (x, y) = (t.Node.Input[0], t.Node.Output[0]);
        var (q, scale) = Int8Quantizer.Quantize(t.Weight);                                     // [C, …], [C]
        var shifted = (q.to_type(ScalarType.Int16) + 128).to_type(ScalarType.Byte);            // uint8 1…255
        var wq = Add($"{t.Node.Input[1]}_quantized", shifted);
        var spatial = ChannelShape(t.Weight);                                                  // [C, 1, 1]
        var ws = Add($"{t.Node.Input[1]}_scale", scale.reshape(spatial));
        var zero = Add("int8_rewrite/uint8_128", tensor(new byte[] { 128 }, Array.Empty<long>()));
        string scaled = t.Bias is null ? y : $"{y}/scaled";
        var nodes = new List<NodeProto>(DynamicQuantize(t.Node, x, y))
        {
            Node("ConvInteger", t.Node.Name + "/ConvInteger", [$"{y}/x_q", wq, $"{y}/x_zero_point", zero],
                [$"{y}/int32"], ConvAttributes(t.Node)),
            Node("Cast", t.Node.Name + "/Cast", [$"{y}/int32"], [$"{y}/float"], Int("to", OnnxGraphBuilder.Float)),
            Node("Mul", t.Node.Name + "/Scale", [$"{y}/x_scale", ws], [$"{y}/scale"]),
            Node("Mul", t.Node.Name, [$"{y}/float", $"{y}/scale"], [scaled]),
        };
        if (t.Bias is not null)
            nodes.Add(Node("Add", t.Node.Name + "/Bias",
                [scaled, Add($"{t.Node.Input[2]}_channels", t.Bias.reshape(spatial))], [y]));
        return nodes;
    }

    /// <summary>One DynamicQuantizeLinear per replaced node (ORT fuses it into DynamicQuantizeMatMul only when its
    /// three outputs feed that one MatMulInteger).</summary>
    static IEnumerable<NodeProto> DynamicQuantize(NodeProto node, string x, string y) =>
    [
        Node("DynamicQuantizeLinear", node.Name + "/DynamicQuantizeLinear", [x],
            [$"{y}/x_q", $"{y}/x_scale", $"{y}/x_zero_point"]),
    ];

    /// <summary>DQ(Q(x)) → MatMul ← DQ(W_q int8 [K, N], s_w [N], axis 1): ORT's MatMulIntegerToFloat.</summary>
    List<NodeProto> StaticMatMul(Target t, IReadOnlyDictionary<string, ActivationRange> ranges)
    {
        var (x, y) = (t.Node.Input[0], t.Node.Output[0]);
        var (q, scale) = Int8Quantizer.Quantize(t.Weight.t());                                 // [N, K], [N]
        var nodes = new List<NodeProto>();
        var xd = StaticInput(t, x, ranges, nodes);
        var wd = WeightDq(t, q.t().contiguous(), scale, axis: 1, nodes);
        nodes.Add(Node("MatMul", t.Node.Name, [xd, wd], [y]));
        return nodes;
    }

    /// <summary>DQ(Q(x)) → Conv ← DQ(W_q, s_w [C], axis 0), DQ(b_q int32, s_x·s_w) → Q(y) → DQ: ORT's QLinearConv.
    /// </summary>
    List<NodeProto> StaticConv(Target t, IReadOnlyDictionary<string, ActivationRange> ranges)
    {
        var (x, y) = (t.Node.Input[0], t.Node.Output[0]);
        var (q, scale) = Int8Quantizer.Quantize(t.Weight);                                     // [C, …], [C]
        var nodes = new List<NodeProto>();
        var xd = StaticInput(t, x, ranges, nodes);
        var wd = WeightDq(t, q, scale, axis: 0, nodes);
        var inputs = new List<string> { xd, wd };
        if (t.Bias is not null)
        {
            var (sx, _) = Range(t, x, ranges).UInt8();
            var bs = scale * sx;                                                               // [C] s_x·s_w,c
            var bq = (t.Bias / bs).round().clamp(int.MinValue, int.MaxValue).to_type(ScalarType.Int32);
            var b = t.Node.Input[2];
            nodes.Add(Node("DequantizeLinear", t.Node.Name + "/DequantizeBias",
                [Add($"{b}_quantized", bq), Add($"{b}_scale", bs), Add($"{b}_zero_point", zeros_like(bq))],
                [$"{y}/bias"], Int("axis", 0)));
            inputs.Add($"{y}/bias");
        }
        var (sy, zy) = Range(t, y, ranges).UInt8();
        var ys = Add($"{y}/y_scale", tensor(sy));
        var yz = Add($"{y}/y_zero_point", tensor(new[] { zy }, Array.Empty<long>()));
        nodes.Add(Node("Conv", t.Node.Name, inputs.ToArray(), [$"{y}/float"], ConvAttributes(t.Node)));
        // the uint8 output is what later quantized consumers of y read too (same range, so the same s and z)
        _staticInputs[y] = $"{y}/q";
        nodes.Add(Node("QuantizeLinear", t.Node.Name + "/QuantizeOutput", [$"{y}/float", ys, yz], [$"{y}/q"]));
        nodes.Add(Node("DequantizeLinear", t.Node.Name + "/DequantizeOutput", [$"{y}/q", ys, yz], [y]));
        return nodes;
    }

    static ActivationRange Range(Target t, string value, IReadOnlyDictionary<string, ActivationRange> ranges) =>
        ranges.TryGetValue(value, out var r) ? r
            : throw new OnnxQuantizationException(t.Node.Name, t.Layer, $"no calibrated range for '{value}'");

    /// <summary>One QuantizeLinear per activation value (shared by its consumers), one DequantizeLinear per node.
    /// </summary>
    string StaticInput(Target t, string x, IReadOnlyDictionary<string, ActivationRange> ranges, List<NodeProto> nodes)
    {
        var (s, z) = Range(t, x, ranges).UInt8();
        var xs = Add($"{x}/x_scale", tensor(s));
        var xz = Add($"{x}/x_zero_point", tensor(new[] { z }, Array.Empty<long>()));
        if (!_staticInputs.TryGetValue(x, out var xq))
        {
            xq = _staticInputs[x] = $"{x}/q";
            nodes.Add(Node("QuantizeLinear", $"{x}/QuantizeLinear", [x, xs, xz], [xq]));
        }
        var y = t.Node.Output[0];
        nodes.Add(Node("DequantizeLinear", t.Node.Name + "/DequantizeInput", [xq, xs, xz], [$"{y}/x_dq"]));
        return $"{y}/x_dq";
    }

    string WeightDq(Target t, Tensor q, Tensor scale, long axis, List<NodeProto> nodes)
    {
        var w = t.Node.Input[1];
        var y = t.Node.Output[0];
        nodes.Add(Node("DequantizeLinear", t.Node.Name + "/DequantizeWeight",
            [Add($"{w}_quantized", q), Add($"{w}_scale", scale), Add($"{w}_zero_point", zeros_like(scale,
                dtype: ScalarType.Int8))], [$"{y}/w_dq"], Int("axis", axis)));
        return $"{y}/w_dq";
    }

    // ---- helpers --------------------------------------------------------------------------------------------------

    /// <summary>[C, 1, 1, …]: a per-channel value broadcast over a Conv output [B, C, H, W].</summary>
    static long[] ChannelShape(Tensor weight) =>
        [weight.shape[0], .. Enumerable.Repeat(1L, (int)weight.dim() - 2)];

    /// <summary>Adds an initializer (the same name again must be the same tensor, e.g. a weight shared by nodes).
    /// </summary>
    string Add(string name, Tensor value)
    {
        if (_init.ContainsKey(name)) return name;
        _init[name] = value.detach().contiguous();
        _order.Add(name);
        return name;
    }

    static AttributeProto[] ConvAttributes(NodeProto conv) =>
        conv.Attribute.Where(a => a.Name is "kernel_shape" or "strides" or "pads" or "dilations" or "group"
            or "auto_pad").Select(a => a.Clone()).ToArray();

    static AttributeProto Int(string name, long value) =>
        new() { Name = name, Type = AttributeProto.Types.AttributeType.Int, I = value };

    static NodeProto Node(string op, string name, string[] inputs, string[] outputs, params AttributeProto[] attrs)
    {
        var n = new NodeProto { OpType = op, Name = name };
        n.Input.AddRange(inputs);
        n.Output.AddRange(outputs);
        n.Attribute.AddRange(attrs);
        return n;
    }

    long Bytes() => _init.Values.Sum(t => t.numel() * t.ElementSize);

    public OnnxInt8Report Save(string path, OnnxInt8Mode mode, IReadOnlyDictionary<string, ActivationRange> ranges,
        OnnxSaveOptions? save)
    {
        var metadata = new Dictionary<string, string>(save?.Metadata ?? new Dictionary<string, string>())
        {
            ["ldmlab.quantization"] = mode == OnnxInt8Mode.Dynamic
                ? "int8 dynamic: weights int8 per output channel (symmetric), activations uint8 per call"
                : "int8 static (QDQ): weights int8 per output channel (symmetric), activations uint8 from calibration",
        };
        OnnxModelWriter.Save(_model, _order.Select(n => (n, _init[n])).ToList(), path,
            (save ?? new OnnxSaveOptions()) with { Metadata = metadata });
        return new OnnxInt8Report(mode, _targets.Select(t => t.Layer).ToList(), _kept.Distinct().ToList(), ranges,
            _bytesBefore, Bytes());
    }
}
