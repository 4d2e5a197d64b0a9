using System.Buffers.Binary;
using System.IO.Compression;

namespace LdmLab.Data;

/// <summary>An IDX array (the MNIST format): unsigned bytes with their dimensions.</summary>
public sealed record IdxArray(int[] Shape, byte[] Data)
{
    public int Count => Shape[0];
}

/// <summary>
/// Reads IDX files, gzipped or raw. Layout: magic 0x00 0x00 type(0x08 = u8) ndim, then ndim big-endian int32
/// sizes, then the data. Anything else gives a <see cref="DatasetException"/> naming the file.
/// </summary>
public static class Idx
{
    public static IdxArray Read(string path, int expectedDims)
    {
        if (!File.Exists(path)) throw new DatasetException(path, "file not found");
        byte[] raw;
        try
        {
            raw = ReadMaybeGzip(path);
        }
        catch (InvalidDataException e) { throw new DatasetException(path, "corrupt gzip stream: " + e.Message, e); }
        catch (EndOfStreamException e) { throw new DatasetException(path, "truncated gzip stream", e); }
        return Parse(raw, expectedDims, path);
    }

    public static IdxArray Parse(byte[] raw, int expectedDims, string path)
    {
        if (raw.Length < 4) throw new DatasetException(path, $"truncated: {raw.Length} bytes, no IDX header");
        if (raw[0] != 0 || raw[1] != 0)
            throw new DatasetException(path, $"wrong magic 0x{raw[0]:x2}{raw[1]:x2}{raw[2]:x2}{raw[3]:x2}: not an IDX file");
        if (raw[2] != 0x08) throw new DatasetException(path, $"IDX element type 0x{raw[2]:x2} is not unsigned byte (0x08)");
        int dims = raw[3];
        if (dims != expectedDims) throw new DatasetException(path, $"IDX has {dims} dimensions, expected {expectedDims}");
        int header = 4 + 4 * dims;
        if (raw.Length < header) throw new DatasetException(path, "truncated IDX header");
        var shape = new int[dims];
        long count = 1;
        for (int i = 0; i < dims; i++)
        {
            shape[i] = BinaryPrimitives.ReadInt32BigEndian(raw.AsSpan(4 + 4 * i));
            if (shape[i] <= 0) throw new DatasetException(path, $"IDX dimension {i} is {shape[i]}");
            count *= shape[i];
        }
        if (raw.Length - header != count)
            throw new DatasetException(path, $"{(raw.Length - header < count ? "truncated" : "trailing bytes")}: header promises {count} values ({string.Join("×", shape)}), file holds {raw.Length - header}");
        return new IdxArray(shape, raw.AsSpan(header).ToArray());
    }

    /// <summary>The most an IDX file may hold uncompressed (Fashion-MNIST's largest is 47 MB): bounds a gzip bomb.</summary>
    public const long MaxBytes = 256L << 20;

    static byte[] ReadMaybeGzip(string path)
    {
        if (new FileInfo(path).Length > MaxBytes) throw new DatasetException(path, $"larger than {MaxBytes >> 20} MiB: not an IDX file");
        var bytes = File.ReadAllBytes(path);
        if (bytes.Length < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b) return bytes;
        using var gz = new GZipStream(new MemoryStream(bytes), CompressionMode.Decompress);
        using var ms = new MemoryStream();
        var buffer = new byte[1 << 16];
        for (int n; (n = gz.Read(buffer)) > 0;)
        {
            if (ms.Length + n > MaxBytes)
                throw new DatasetException(path, $"decompresses to more than {MaxBytes >> 20} MiB: not an IDX file");
            ms.Write(buffer, 0, n);
        }
        return ms.ToArray();
    }
}
