namespace LdmLab.Interop.Onnx;

/// <summary>An ONNX tensor (initializer or attribute value): name, dims and float32 or int64 data.</summary>
public sealed record OnnxTensor(string Name, long[] Dims, int DataType, float[]? Floats, long[]? Int64s);

public sealed record OnnxAttribute(string Name, long? Int, float? Float, string? Str, long[] Ints, float[] Floats, OnnxTensor? Tensor);

public sealed record OnnxNode(string Name, string OpType, string[] Inputs, string[] Outputs, IReadOnlyDictionary<string, OnnxAttribute> Attributes)
{
    public long Int(string name, long fallback) => Attributes.TryGetValue(name, out var a) && a.Int is long v ? v : fallback;
    public float Float(string name, float fallback) => Attributes.TryGetValue(name, out var a) && a.Float is float v ? v : fallback;
    public long[] Ints(string name, long[] fallback) => Attributes.TryGetValue(name, out var a) && a.Ints.Length > 0 ? a.Ints : fallback;
}

/// <summary>The parts of an ONNX ModelProto that LdmLab executes: nodes in order, initializers, graph inputs/outputs.</summary>
public sealed record OnnxModel(IReadOnlyList<OnnxNode> Nodes, IReadOnlyDictionary<string, OnnxTensor> Initializers,
    IReadOnlyList<string> Inputs, IReadOnlyList<string> Outputs, long OpsetVersion)
{
    const int Float = 1, Int64 = 7;

    public static OnnxModel Load(string path)
    {
        if (!File.Exists(path)) throw new Data.DatasetException(path, "ONNX model not found");
        var bytes = File.ReadAllBytes(path);
        try { return Parse(bytes); }
        catch (Exception e) when (e is InvalidDataException or ArgumentOutOfRangeException or IndexOutOfRangeException or OverflowException)
        {
            throw new Data.DatasetException(path, "not a readable ONNX model: " + e.Message, e);
        }
    }

    public static OnnxModel Parse(ReadOnlySpan<byte> bytes)
    {
        var r = new ProtoReader(bytes);
        OnnxModel? graph = null;
        long opset = 0;
        while (!r.End)
        {
            var (f, w) = r.Tag();
            if (f == 7 && w == 2) graph = ParseGraph(r.Bytes());
            else if (f == 8 && w == 2)
            {
                var o = new ProtoReader(r.Bytes());
                string domain = ""; long version = 0;
                while (!o.End) { var (of, ow) = o.Tag(); if (of == 1) domain = o.String(); else if (of == 2) version = (long)o.Varint(); else o.Skip(ow); }
                if (domain is "" or "ai.onnx") opset = version;
            }
            else r.Skip(w);
        }
        return (graph ?? throw new InvalidDataException("no graph in the ONNX model")) with { OpsetVersion = opset };
    }

    static OnnxModel ParseGraph(ReadOnlySpan<byte> bytes)
    {
        var r = new ProtoReader(bytes);
        var nodes = new List<OnnxNode>();
        var inits = new Dictionary<string, OnnxTensor>();
        var inputs = new List<string>(); var outputs = new List<string>();
        while (!r.End)
        {
            var (f, w) = r.Tag();
            switch (f)
            {
                case 1 when w == 2: nodes.Add(ParseNode(r.Bytes())); break;
                case 5 when w == 2: { var t = ParseTensor(r.Bytes()); inits[t.Name] = t; break; }
                case 11 when w == 2: inputs.Add(ValueInfoName(r.Bytes())); break;
                case 12 when w == 2: outputs.Add(ValueInfoName(r.Bytes())); break;
                default: r.Skip(w); break;
            }
        }
        return new OnnxModel(nodes, inits, inputs.Where(i => !inits.ContainsKey(i)).ToList(), outputs, 0);
    }

    static string ValueInfoName(ReadOnlySpan<byte> bytes)
    {
        var r = new ProtoReader(bytes);
        while (!r.End) { var (f, w) = r.Tag(); if (f == 1 && w == 2) return r.String(); r.Skip(w); }
        return "";
    }

    static OnnxNode ParseNode(ReadOnlySpan<byte> bytes)
    {
        var r = new ProtoReader(bytes);
        var ins = new List<string>(); var outs = new List<string>(); string name = "", op = "";
        var attrs = new Dictionary<string, OnnxAttribute>();
        while (!r.End)
        {
            var (f, w) = r.Tag();
            switch (f)
            {
                case 1: ins.Add(r.String()); break;
                case 2: outs.Add(r.String()); break;
                case 3: name = r.String(); break;
                case 4: op = r.String(); break;
                case 5: { var a = ParseAttribute(r.Bytes()); attrs[a.Name] = a; break; }
                default: r.Skip(w); break;
            }
        }
        return new OnnxNode(name, op, ins.ToArray(), outs.ToArray(), attrs);
    }

    static OnnxAttribute ParseAttribute(ReadOnlySpan<byte> bytes)
    {
        var r = new ProtoReader(bytes);
        string name = ""; long? i = null; float? fl = null; string? s = null; OnnxTensor? t = null;
        var ints = new List<long>(); var floats = new List<float>();
        while (!r.End)
        {
            var (f, w) = r.Tag();
            switch (f)
            {
                case 1: name = r.String(); break;
                case 2 when w == 5: fl = r.Fixed32Float(); break;
                case 3 when w == 0: i = (long)r.Varint(); break;
                case 4: s = r.String(); break;
                case 5: t = ParseTensor(r.Bytes()); break;
                case 7: ProtoReader.ReadFloats(ref r, w, floats); break;
                case 8: ProtoReader.ReadInt64s(ref r, w, ints); break;
                default: r.Skip(w); break;
            }
        }
        return new OnnxAttribute(name, i, fl, s, ints.ToArray(), floats.ToArray(), t);
    }

    static OnnxTensor ParseTensor(ReadOnlySpan<byte> bytes)
    {
        var r = new ProtoReader(bytes);
        var dims = new List<long>(); int type = 0; string name = "";
        var floats = new List<float>(); var longs = new List<long>();
        byte[]? raw = null;
        while (!r.End)
        {
            var (f, w) = r.Tag();
            switch (f)
            {
                case 1: ProtoReader.ReadInt64s(ref r, w, dims); break;
                case 2: type = (int)r.Varint(); break;
                case 4: ProtoReader.ReadFloats(ref r, w, floats); break;
                case 7: ProtoReader.ReadInt64s(ref r, w, longs); break;
                case 8: name = r.String(); break;
                case 9: raw = r.Bytes().ToArray(); break;
                default: r.Skip(w); break;
            }
        }
        if (raw is not null)
        {
            if (type == Float) floats = Enumerable.Range(0, raw.Length / 4).Select(k => BitConverter.ToSingle(raw, 4 * k)).ToList();
            else if (type == Int64) longs = Enumerable.Range(0, raw.Length / 8).Select(k => BitConverter.ToInt64(raw, 8 * k)).ToList();
            else throw new NotSupportedException($"ONNX tensor '{name}': data type {type} is not supported");
        }
        return new OnnxTensor(name, dims.ToArray(), type, type == Float ? floats.ToArray() : null, type == Int64 ? longs.ToArray() : null);
    }
}
