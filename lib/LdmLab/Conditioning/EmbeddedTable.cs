using System.IO.Compression;
using System.Text;

namespace LdmLab.Conditioning;

/// <summary>The gzip'd data tables embedded in the library (python_lower.txt.gz, html5_entities.txt.gz, written by
/// scripts/make_unicode_lower.py): lines of space-separated fields, code points in hex, '#' lines for comments.
/// </summary>
static class EmbeddedTable
{
    /// <summary>The table's rows; its comment lines are added to <paramref name="comments"/>.</summary>
    public static IEnumerable<string[]> Read(string name, List<string> comments)
    {
        var stream = typeof(EmbeddedTable).Assembly.GetManifestResourceStream("LdmLab.Conditioning." + name)
            ?? throw new InvalidOperationException($"the embedded table {name} is missing from LdmLab.dll");
        using var reader = new StreamReader(new GZipStream(stream, CompressionMode.Decompress), Encoding.UTF8);
        while (reader.ReadLine() is { } line)
        {
            if (line.StartsWith('#')) comments.Add(line[1..].Trim());
            else if (line.Length > 0) yield return line.Split(' ');
        }
    }

    /// <summary>Hex code points → the string they spell.</summary>
    public static string FromHex(IEnumerable<string> hexes)
    {
        var sb = new StringBuilder();
        foreach (var h in hexes) PythonCase.AppendCodePoint(sb, Convert.ToInt32(h, 16));
        return sb.ToString();
    }
}
