using System.Globalization;
using System.Text;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Png;
using SixLabors.ImageSharp.PixelFormats;

namespace LdmLab.Pipelines;

/// <summary>
/// How an image was made, in AUTOMATIC1111's "parameters" text (what A1111, ComfyUI's loaders, InvokeAI and image
/// viewers read from a PNG's tEXt chunk of that name):
/// <code>
/// a red dress on the left
/// Negative prompt: blurry
/// Steps: 25, Sampler: DDIM, CFG scale: 5, Seed: 1, Size: 56x28, Model: fashion-text2img
/// </code>
/// The first lines are the prompt (it may span lines), then the negative prompt, then one line of "Key: value"
/// pairs; a value holding a comma or a colon is quoted, as A1111 quotes it.
/// </summary>
public sealed record GenerationParameters(string Prompt, string? NegativePrompt,
    IReadOnlyList<(string Key, string Value)> Settings)
{
    public const string ChunkKeyword = "parameters";

    /// <summary>The A1111 text.</summary>
    public override string ToString()
    {
        var text = new StringBuilder(Prompt);
        if (!string.IsNullOrEmpty(NegativePrompt)) text.Append("\nNegative prompt: ").Append(NegativePrompt);
        if (Settings.Count > 0)
            text.Append('\n').Append(string.Join(", ", Settings.Select(s => $"{s.Key}: {Quote(s.Value)}")));
        return text.ToString();
    }

    /// <summary>A value with a comma, colon or quote is written as a JSON-style quoted string (A1111's rule).</summary>
    static string Quote(string value) =>
        value.IndexOfAny([',', ':', '"', '\n']) < 0 ? value
            : "\"" + value.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n") + "\"";

    /// <summary>The value of one setting, or null.</summary>
    public string? this[string key] => Settings.FirstOrDefault(s => s.Key == key).Value;

    /// <summary>Reads the A1111 text back as A1111 does: trimmed; the last line is the settings when it holds at least
    /// three "Key: value" pairs (otherwise it belongs to the prompt); a "Negative prompt:" line starts the negative
    /// prompt.</summary>
    public static GenerationParameters Parse(string text)
    {
        var lines = text.Replace("\r\n", "\n").Trim().Split('\n').ToList();
        var settings = ParseSettings(lines[^1]);
        if (settings.Count >= 3) lines.RemoveAt(lines.Count - 1);
        else settings = [];
        int negative = lines.FindIndex(l => l.StartsWith("Negative prompt: ", StringComparison.Ordinal));
        string prompt = string.Join("\n", negative < 0 ? lines : lines.Take(negative));
        string? negativePrompt = negative < 0 ? null
            : string.Join("\n", lines.Skip(negative))["Negative prompt: ".Length..];
        return new GenerationParameters(prompt, negativePrompt, settings);
    }

    static List<(string, string)> ParseSettings(string line)
    {
        var result = new List<(string, string)>();
        int i = 0;
        while (i < line.Length)
        {
            int colon = line.IndexOf(": ", i, StringComparison.Ordinal);
            if (colon < 0) break;
            string key = line[i..colon].Trim();
            i = colon + 2;
            string value;
            if (i < line.Length && line[i] == '"')
            {
                var sb = new StringBuilder();
                for (i++; i < line.Length && line[i] != '"'; i++)
                {
                    if (line[i] == '\\' && i + 1 < line.Length) { i++; sb.Append(line[i] == 'n' ? '\n' : line[i]); }
                    else sb.Append(line[i]);
                }
                value = sb.ToString();
                i = Math.Min(line.Length, i + 1);
                int comma = line.IndexOf(", ", i, StringComparison.Ordinal);
                i = comma < 0 ? line.Length : comma + 2;
            }
            else
            {
                int comma = line.IndexOf(", ", i, StringComparison.Ordinal);
                value = comma < 0 ? line[i..] : line[i..comma];
                i = comma < 0 ? line.Length : comma + 2;
            }
            result.Add((key, value));
        }
        return result;
    }

    /// <summary>Writes the picture as a PNG carrying this text in its "parameters" tEXt chunk (temp file, then
    /// rename: a crash leaves no half-written image).</summary>
    public void SavePng(Image<Rgb24> picture, string path)
    {
        var png = picture.Metadata.GetPngMetadata();
        png.TextData.Clear();
        png.TextData.Add(new PngTextData(ChunkKeyword, ToString(), "", ""));
        using var bytes = new MemoryStream();
        picture.SaveAsPng(bytes);
        Data.AtomicFile.WriteAllBytes(path, bytes.ToArray());
    }

    /// <summary>The parameters a PNG carries, or null when it has none.</summary>
    public static GenerationParameters? ReadPng(string path)
    {
        var info = Image.Identify(path);
        var text = info.Metadata.GetPngMetadata().TextData.FirstOrDefault(t => t.Keyword == ChunkKeyword);
        return text.Value is { } value ? Parse(value) : null;
    }

    /// <summary>A number as A1111 writes it (invariant culture, no trailing zeros).</summary>
    public static string Number(double value) => value.ToString("0.###", CultureInfo.InvariantCulture);
}
