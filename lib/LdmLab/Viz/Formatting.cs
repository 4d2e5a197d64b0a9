namespace LdmLab.Viz;

// .NET Interactive's convention-based formatting: the kernel finds an attribute *named* TypeFormatterSourceAttribute
// with a FormatterSourceType property, and formatters with MimeType + Format(object, TextWriter). No reference to the
// (deprecated) kernel packages is needed, and the same types work in console apps.
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
internal sealed class TypeFormatterSourceAttribute(Type formatterSourceType) : Attribute
{
    public Type FormatterSourceType { get; } = formatterSourceType;
    public string[] PreferredMimeTypes { get; set; } = [];
}

internal sealed class HtmlFormatterSource
{
    public IEnumerable<object> CreateTypeFormatters()
    {
        yield return new Formatter("text/html", o => (o as IHtmlContent)?.ToHtml());
        yield return new Formatter("image/png", o => (o as IPngContent)?.ToPngBase64());
        yield return new Formatter("text/plain", o => o?.ToString());
    }

    sealed class Formatter(string mimeType, Func<object?, string?> format)
    {
        public string MimeType => mimeType;
        public bool Format(object instance, TextWriter writer)
        {
            var s = format(instance);
            if (s is null) return false;
            writer.Write(s);
            return true;
        }
    }
}

/// <summary>Something that renders itself as an HTML fragment (charts, image grids, progress bars).</summary>
public interface IHtmlContent { string ToHtml(); }

/// <summary>Something that is a PNG image (base64 for notebook outputs).</summary>
public interface IPngContent { byte[] ToPng(); string ToPngBase64() => Convert.ToBase64String(ToPng()); }
