using System.Text;

namespace LdmLab.Interop.Onnx;

/// <summary>
/// A minimal protocol-buffers wire-format reader (varints, 64/32-bit fixed, length-delimited fields): enough to
/// read ONNX models without generated code. Field numbers follow onnx.proto.
/// </summary>
internal ref struct ProtoReader(ReadOnlySpan<byte> data)
{
    readonly ReadOnlySpan<byte> _data = data;
    int _pos = 0;

    public bool End => _pos >= _data.Length;

    public ulong Varint()
    {
        ulong result = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            if (_pos >= _data.Length) throw new InvalidDataException("truncated protobuf varint");
            byte b = _data[_pos++];
            result |= (ulong)(b & 0x7f) << shift;
            if ((b & 0x80) == 0) return result;
        }
        throw new InvalidDataException("protobuf varint too long");
    }

    public (int field, int wire) Tag()
    {
        ulong t = Varint();
        return ((int)(t >> 3), (int)(t & 7));
    }

    public ReadOnlySpan<byte> Bytes()
    {
        int len = checked((int)Varint());
        if (len < 0 || _pos + len > _data.Length) throw new InvalidDataException($"protobuf field of {len} bytes runs past the end");
        var s = _data.Slice(_pos, len);
        _pos += len;
        return s;
    }

    public string String() => Encoding.UTF8.GetString(Bytes());
    public float Fixed32Float() { var v = BitConverter.ToSingle(_data.Slice(_pos, 4)); _pos += 4; return v; }

    public void Skip(int wire)
    {
        switch (wire)
        {
            case 0: Varint(); break;
            case 1: _pos += 8; break;
            case 2: Bytes(); break;
            case 5: _pos += 4; break;
            default: throw new InvalidDataException($"unsupported protobuf wire type {wire}");
        }
    }

    /// <summary>A repeated int64 field, packed (wire 2) or not (wire 0).</summary>
    public static void ReadInt64s(ref ProtoReader r, int wire, List<long> into)
    {
        if (wire == 0) { into.Add((long)r.Varint()); return; }
        var sub = new ProtoReader(r.Bytes());
        while (!sub.End) into.Add((long)sub.Varint());
    }

    public static void ReadFloats(ref ProtoReader r, int wire, List<float> into)
    {
        if (wire == 5) { into.Add(r.Fixed32Float()); return; }
        var bytes = r.Bytes();
        for (int i = 0; i + 4 <= bytes.Length; i += 4) into.Add(BitConverter.ToSingle(bytes.Slice(i, 4)));
    }
}
