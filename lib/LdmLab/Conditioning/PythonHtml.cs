using System.Text;

namespace LdmLab.Conditioning;

/// <summary>
/// Python's <c>html.unescape</c> (3.11), which OpenAI CLIP's tokenizer applies twice after ftfy. It is not .NET's
/// <c>WebUtility.HtmlDecode</c>: it knows HTML5's 2,231 entity names, decodes the legacy ones without a semicolon
/// ("&amp;amp", "&amp;copy2024" → "©2024", "&amp;notit;" → "¬it;": the longest known prefix of the name), and decodes
/// numeric references as browsers do. Python's rule, per match of
/// <c>&amp;(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f &lt;&amp;#;]{1,32};?)</c>:
/// <list type="bullet">
/// <item>a number in the windows-1252 remap table (&amp;#128; → €, &amp;#0; → U+FFFD, &amp;#13; → CR) becomes its
/// entry; a surrogate or a number above U+10FFFF becomes U+FFFD; the C0/C1 controls and noncharacters Python lists
/// (&amp;#1;, &amp;#xFFFE; …) become nothing; any other number is its character;</item>
/// <item>a name is looked up whole (with its ';' if it has one); failing that, its longest prefix of at least two
/// characters that is a name, followed by the rest; failing that, it stays as written.</item>
/// </list>
/// The tables come from Python (scripts/make_unicode_lower.py writes html5_entities.txt.gz, embedded in the library).
/// Python 3.11 raises on a numeric reference of more than 4,300 digits; this gives U+FFFD.
/// </summary>
public static class PythonHtml
{
    sealed record Tables(
        Dictionary<string, string> Named, Dictionary<int, string> Remapped, List<(int First, int Last)> Dropped,
        Dictionary<string, string> FtfyUpperCase);

    static readonly Lazy<Tables> Data = new(Load);

    /// <summary>html.entities.html5: name (with its ';', or without for the legacy names) → text.</summary>
    internal static IReadOnlyDictionary<string, string> Named => Data.Value.Named;

    /// <summary>The upper-case spellings ftfy 6.1.1 decodes as well ("NTILDE;" → "Ñ"; see
    /// <see cref="TextCleaner"/>).</summary>
    internal static IReadOnlyDictionary<string, string> FtfyUpperCase => Data.Value.FtfyUpperCase;

    /// <summary>Python's <c>html.unescape(text)</c>.</summary>
    public static string Unescape(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!text.Contains('&')) return text;
        var cps = PythonCase.CodePoints(text);
        var sb = new StringBuilder(text.Length);
        int i = 0;
        while (i < cps.Length)
        {
            if (cps[i] == '&' && Reference(cps, i + 1) is ({ } replacement, int end))
            {
                sb.Append(replacement);
                i = end;
            }
            else PythonCase.AppendCodePoint(sb, cps[i++]);
        }
        return sb.ToString();
    }

    /// <summary>The reference starting after an '&amp;' at <paramref name="k"/>: what replaces it and where it ends,
    /// or (null, k) where Python's pattern does not match (the '&amp;' stays).</summary>
    static (string?, int) Reference(int[] cps, int k)
    {
        if (k >= cps.Length) return (null, k);
        if (cps[k] == '#')
        {
            bool hex = k + 1 < cps.Length && cps[k + 1] is 'x' or 'X';
            int first = hex ? k + 2 : k + 1, end = first;
            long value = 0;
            while (end < cps.Length && DigitValue(cps[end], hex) is >= 0 and var d)
            {
                value = Math.Min(value * (hex ? 16 : 10) + d, 0x110000);   // anything past U+10FFFF is as bad
                end++;
            }
            if (end == first) return (null, k);                       // "&#", "&#x" with no digits: no match
            if (end < cps.Length && cps[end] == ';') end++;
            return (Numeric((int)value), end);
        }
        int nameEnd = k;
        while (nameEnd < cps.Length && nameEnd - k < 32 && cps[nameEnd] is not ('\t' or '\n' or '\f' or ' ' or '<'
                   or '&' or '#' or ';'))
            nameEnd++;
        if (nameEnd == k) return (null, k);
        if (nameEnd < cps.Length && cps[nameEnd] == ';') nameEnd++;
        var name = cps[k..nameEnd];
        var named = Data.Value.Named;
        if (named.TryGetValue(Text(name), out var whole)) return (whole, nameEnd);
        for (int x = name.Length - 1; x >= 2; x--)                      // the longest known prefix, then the rest
            if (named.TryGetValue(Text(name[..x]), out var prefix)) return (prefix + Text(name[x..]), nameEnd);
        return ("&" + Text(name), nameEnd);
    }

    static int DigitValue(int c, bool hex) => c switch
    {
        >= '0' and <= '9' => c - '0',
        >= 'a' and <= 'f' when hex => c - 'a' + 10,
        >= 'A' and <= 'F' when hex => c - 'A' + 10,
        _ => -1,
    };

    static string Numeric(int value)
    {
        var t = Data.Value;
        if (t.Remapped.TryGetValue(value, out var remapped)) return remapped;
        if (value is >= 0xD800 and <= 0xDFFF or > 0x10FFFF) return "\uFFFD";
        if (t.Dropped.Any(r => value >= r.First && value <= r.Last)) return "";
        return char.ConvertFromUtf32(value);
    }

    static string Text(int[] cps)
    {
        var sb = new StringBuilder(cps.Length);
        foreach (var c in cps) PythonCase.AppendCodePoint(sb, c);
        return sb.ToString();
    }

    static Tables Load()
    {
        var t = new Tables([], [], [], []);
        foreach (var f in EmbeddedTable.Read("html5_entities.txt.gz", []))
        {
            switch (f[0])
            {
                case "E": t.Named[f[1]] = EmbeddedTable.FromHex(f.Skip(2)); break;
                case "R": t.Remapped[Convert.ToInt32(f[1], 16)] = EmbeddedTable.FromHex(f.Skip(2)); break;
                case "X": t.Dropped.Add((Convert.ToInt32(f[1], 16), Convert.ToInt32(f[2], 16))); break;
                case "U": t.FtfyUpperCase[f[1]] = EmbeddedTable.FromHex(f.Skip(2)); break;
            }
        }
        return t;
    }
}
