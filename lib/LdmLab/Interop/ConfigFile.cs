using System.Text.Json;
using System.Text.Json.Nodes;
using LdmLab.Data;

namespace LdmLab.Interop;

/// <summary>
/// Reading a config.json-style file (diffusers and transformers configs, scheduler_config.json, model_index.json):
/// whatever is wrong with it — not JSON, not an object, a field of the wrong type, an unsupported or impossible value —
/// is one <see cref="DatasetException"/> that names the file and says what was expected.
/// </summary>
public static class ConfigFile
{
    public static T Read<T>(string path, Func<JsonObject, T> parse)
    {
        if (!File.Exists(path)) throw new DatasetException(path, "file not found");
        try
        {
            var json = PyJson.Parse(File.ReadAllText(path), path) as JsonObject
                       ?? throw new FormatException("not a JSON object");
            return parse(json);
        }
        catch (Exception e) when (e is FormatException or InvalidOperationException or ArgumentException or NotSupportedException
                                      or OverflowException or KeyNotFoundException or InvalidCastException or JsonException
                                      or NullReferenceException)
        {
            var message = e.Message.StartsWith(path, StringComparison.Ordinal) ? e.Message[path.Length..].TrimStart(':', ' ') : e.Message;
            throw new DatasetException(path, message, e);
        }
    }

    /// <summary>Every named value must be ≥ 1 (channels, layers, heads, groups, sizes).</summary>
    public static void RequirePositive(string source, params (string name, long value)[] values)
    {
        foreach (var (name, value) in values)
            if (value < 1) throw new ArgumentException($"{source}: {name} = {value} must be ≥ 1");
    }
}
