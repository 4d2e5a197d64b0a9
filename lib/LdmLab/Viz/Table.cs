using System.Globalization;
using System.Net;
using System.Text;

namespace LdmLab.Viz;

/// <summary>A small HTML table for notebook output (numbers formatted with <see cref="Format"/>).</summary>
[TypeFormatterSource(typeof(HtmlFormatterSource), PreferredMimeTypes = ["text/html"])]
public sealed class Table(string title, IReadOnlyList<string> headers, IReadOnlyList<IReadOnlyList<object?>> rows, string format = "G4") : IHtmlContent
{
    public string Title { get; } = title;
    public IReadOnlyList<string> Headers { get; } = headers;
    public IReadOnlyList<IReadOnlyList<object?>> Rows { get; } = rows;
    public string Format { get; } = format;

    string Cell(object? v) => v switch
    {
        null => "",
        double d => d.ToString(Format, CultureInfo.InvariantCulture),
        float f => f.ToString(Format, CultureInfo.InvariantCulture),
        _ => v.ToString() ?? "",
    };

    public string ToHtml()
    {
        var sb = new StringBuilder($"<table style=\"border-collapse:collapse;font-family:monospace\"><caption style=\"text-align:left;font-weight:bold\">{WebUtility.HtmlEncode(Title)}</caption><tr>");
        foreach (var h in Headers) sb.Append($"<th style=\"border-bottom:1px solid #888;padding:2px 8px\">{WebUtility.HtmlEncode(h)}</th>");
        sb.Append("</tr>");
        foreach (var r in Rows)
        {
            sb.Append("<tr>");
            foreach (var c in r) sb.Append($"<td style=\"padding:2px 8px;text-align:right\">{WebUtility.HtmlEncode(Cell(c))}</td>");
            sb.Append("</tr>");
        }
        return sb.Append("</table>").ToString();
    }

    public override string ToString()
    {
        var cells = Rows.Select(r => r.Select(Cell).ToArray()).ToList();
        var widths = Headers.Select((h, i) => Math.Max(h.Length, cells.Select(c => i < c.Length ? c[i].Length : 0).DefaultIfEmpty(0).Max())).ToArray();
        var sb = new StringBuilder(Title).AppendLine();
        sb.AppendLine(string.Join("  ", Headers.Select((h, i) => h.PadLeft(widths[i]))));
        foreach (var c in cells) sb.AppendLine(string.Join("  ", c.Select((v, i) => v.PadLeft(widths[i]))));
        return sb.ToString();
    }
}
