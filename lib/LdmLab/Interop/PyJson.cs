using System.Text;
using System.Text.Json.Nodes;

namespace LdmLab.Interop;

/// <summary>
/// Parses JSON written by Python's json module, which may contain the non-standard tokens NaN, Infinity and
/// -Infinity (e.g. diffusers' lambda_min_clipped = -inf). They become the strings "nan", "inf", "-inf".
/// </summary>
public static class PyJson
{
    public static JsonNode? Parse(string text, string nameForErrors = "<json>")
    {
        var sb = new StringBuilder(text.Length);
        bool inString = false;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (inString)
            {
                sb.Append(c);
                if (c == '\\' && i + 1 < text.Length) sb.Append(text[++i]);
                else if (c == '"') inString = false;
                continue;
            }
            if (c == '"') { inString = true; sb.Append(c); continue; }
            string? token = Match(text, i, "-Infinity") ? "-Infinity" : Match(text, i, "Infinity") ? "Infinity" : Match(text, i, "NaN") ? "NaN" : null;
            if (token is null) { sb.Append(c); continue; }
            sb.Append(token switch { "-Infinity" => "\"-inf\"", "Infinity" => "\"inf\"", _ => "\"nan\"" });
            i += token.Length - 1;
        }
        // a repeated key is an error (Python keeps the last one silently; a config that says two things is not trusted)
        try { return JsonNode.Parse(sb.ToString(), documentOptions: new() { AllowDuplicateProperties = false }); }
        catch (System.Text.Json.JsonException e) { throw new FormatException($"{nameForErrors}: not valid JSON: {e.Message}", e); }
    }

    public static JsonNode? ParseFile(string path) =>
        File.Exists(path) ? Parse(File.ReadAllText(path), path) : throw new FileNotFoundException($"{path}: not found", path);

    static bool Match(string s, int i, string token) => string.CompareOrdinal(s, i, token, 0, token.Length) == 0;
}
