using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using LdmLab.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Interop;

/// <summary>
/// The safetensors format: 8-byte little-endian header length, a JSON header
/// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then raw little-endian row-major data.
/// Never pickle: this is the only weight format LdmLab reads or writes.
/// </summary>
public static class SafeTensors
{
    static readonly Dictionary<string, (ScalarType type, int size)> DTypes = new()
    {
        ["F64"] = (ScalarType.Float64, 8), ["F32"] = (ScalarType.Float32, 4), ["F16"] = (ScalarType.Float16, 2),
        ["BF16"] = (ScalarType.BFloat16, 2), ["I64"] = (ScalarType.Int64, 8), ["I32"] = (ScalarType.Int32, 4),
        ["I16"] = (ScalarType.Int16, 2), ["I8"] = (ScalarType.Int8, 1), ["U8"] = (ScalarType.Byte, 1), ["BOOL"] = (ScalarType.Bool, 1),
    };

    public sealed record Entry(string Name, string DType, long[] Shape, long Begin, long End);

    /// <summary>The header entries (name, dtype, shape, byte range) and the metadata, without reading the data.</summary>
    public static (IReadOnlyList<Entry> entries, IReadOnlyDictionary<string, string> metadata) ReadHeader(string path)
    {
        using var fs = OpenOrThrow(path);
        var (entries, meta, _) = ParseHeader(fs, path);
        return (entries, meta);
    }

    /// <summary>Loads every tensor (CPU, stored dtype), in file order; with <paramref name="which"/>, only the
    /// tensors it selects by name (the rest is never read: a 7 GB checkpoint's EMA copy costs no memory).</summary>
    public static Dictionary<string, Tensor> Load(string path, Func<string, bool>? which = null)
    {
        using var fs = OpenOrThrow(path);
        var (entries, _, dataStart) = ParseHeader(fs, path);
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var e in entries)
        {
            if (which is not null && !which(e.Name)) continue;
            var (type, size) = DTypes[e.DType];
            var bytes = new byte[e.End - e.Begin];
            fs.Position = dataStart + e.Begin;
            fs.ReadExactly(bytes);
            var t = empty(e.Shape, type);
            if (bytes.Length > 0)
            {
                if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("big-endian hosts are not supported");
                t.bytes = bytes;
            }
            result[e.Name] = t;
        }
        return result;
    }

    /// <summary>Writes tensors (sorted by name, as diffusers does) with optional metadata, atomically.</summary>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var items = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var m = new JsonObject();
            foreach (var (k, v) in metadata) m[k] = v;
            header["__metadata__"] = m;
        }
        long offset = 0;
        var blobs = new List<byte[]>();
        foreach (var (name, t) in items)
        {
            var dtype = DTypes.FirstOrDefault(d => d.Value.type == t.dtype).Key
                ?? throw new ArgumentException($"{name}: dtype {t.dtype} has no safetensors code");
            var bytes = t.detach().cpu().contiguous().bytes.ToArray();
            header[name] = new JsonObject
            {
                ["dtype"] = dtype,
                ["shape"] = new JsonArray(t.shape.Select(s => (JsonNode)s).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + bytes.Length),
            };
            offset += bytes.Length;
            blobs.Add(bytes);
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int pad = (8 - json.Length % 8) % 8;   // align the data start to 8 bytes (spaces are valid JSON padding)
        var headerBytes = json.Concat(Enumerable.Repeat((byte)' ', pad)).ToArray();
        AtomicFile.Write(path, s =>
        {
            Span<byte> len = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)headerBytes.Length);
            s.Write(len);
            s.Write(headerBytes);
            foreach (var b in blobs) s.Write(b);
        });
    }

    static Entry ParseEntry(string path, string name, JsonNode? node, long dataLen)
    {
        var dtype = (string?)node?["dtype"] ?? throw new DatasetException(path, $"{name}: header entry has no dtype");
        if (!DTypes.TryGetValue(dtype, out var dt)) throw new DatasetException(path, $"{name}: unsupported dtype {dtype}");
        var shape = (node!["shape"] ?? throw new DatasetException(path, $"{name}: header entry has no shape"))
            .AsArray().Select(x => (long)x!).ToArray();
        var offs = (node["data_offsets"] ?? throw new DatasetException(path, $"{name}: header entry has no data_offsets"))
            .AsArray().Select(x => (long)x!).ToArray();
        if (shape.Any(d => d < 0)) throw new DatasetException(path, $"{name}: negative dimension in shape [{string.Join(",", shape)}]");
        long count = shape.Aggregate(1L, (a, b) => checked(a * b));
        if (offs.Length != 2 || offs[0] < 0 || offs[1] < offs[0] || offs[1] > dataLen)
            throw new DatasetException(path, $"{name}: data_offsets [{string.Join(",", offs)}] outside the {dataLen}-byte data section (truncated file?)");
        if (offs[1] - offs[0] != checked(count * dt.size))
            throw new DatasetException(path, $"{name}: {offs[1] - offs[0]} bytes for shape [{string.Join(",", shape)}] of {dtype}");
        return new Entry(name, dtype, shape, offs[0], offs[1]);
    }

    static FileStream OpenOrThrow(string path) =>
        File.Exists(path) ? File.OpenRead(path) : throw new DatasetException(path, "safetensors file not found");

    static (List<Entry>, Dictionary<string, string>, long) ParseHeader(FileStream fs, string path)
    {
        if (fs.Length < 8) throw new DatasetException(path, "not a safetensors file (shorter than its 8-byte header length)");
        Span<byte> len = stackalloc byte[8];
        fs.ReadExactly(len);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(len);
        if (n == 0 || n > 100_000_000 || (long)n > fs.Length - 8)
            throw new DatasetException(path, $"not a safetensors file (header length {n} for a {fs.Length}-byte file)");
        var json = new byte[n];
        fs.ReadExactly(json);
        long dataStart = 8 + (long)n, dataLen = fs.Length - dataStart;
        var entries = new List<Entry>();
        var meta = new Dictionary<string, string>();
        string? current = null;
        try
        {
            // strict UTF-8 (a bad byte is an error, not a replacement character); JsonObject materialises lazily,
            // so every access below may still find a malformed header
            var text = new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(json);
            var root = JsonNode.Parse(text, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false })
                ?.AsObject() ?? throw new JsonException("empty header");
            foreach (var (name, node) in root)
            {
                current = name;
                if (name == "__metadata__")
                {
                    foreach (var (k, v) in node!.AsObject()) meta[k] = v?.ToString() ?? "";
                    continue;
                }
                entries.Add(ParseEntry(path, name, node, dataLen));
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or ArgumentException or FormatException
                                      or OverflowException or NullReferenceException or InvalidCastException)
        {
            string what = e switch
            {
                DecoderFallbackException => "header is not valid UTF-8",
                _ when e.Message.Contains("same key") || e.Message.Contains("uplicate") => "duplicate tensor name in header",
                _ => "corrupt safetensors header",
            };
            throw new DatasetException(path, $"{what}{(current is null ? "" : $" (at entry '{current}')")}: {e.Message}", e);
        }
        return (entries.OrderBy(e => e.Begin).ToList(), meta, dataStart);
    }
}
