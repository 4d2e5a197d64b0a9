using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace LdmLab.Conditioning;

/// <summary>
/// The text normalisation CLIP's tokenizers apply before BPE. transformers' CLIPTokenizer, which Stable Diffusion
/// uses: <c>whitespace_clean(ftfy.fix_text(text)).lower()</c> (<see cref="Clean"/>). OpenAI's SimpleTokenizer also
/// runs <c>html.unescape</c> twice after ftfy (<see cref="CleanAsOpenAi"/>); the two differ only where ftfy leaves an
/// entity alone (after a line holding '&lt;', or Python-only spellings such as "&amp;amp" without ';').
/// <see cref="FixText"/> is the part of ftfy 6.1.1's default pipeline that changes prompts, written out: HTML entities
/// unescaped unless the text contains '&lt;' (ftfy's "auto"), mojibake re-decoded (UTF-8 read as Windows-1252),
/// Latin ligatures and digraphs split, full- and half-width forms normalised, curly quotes straightened, control
/// characters removed, NFC. Lower-casing is Python's <c>str.lower()</c> (<see cref="PythonCase"/>). Checked against
/// ftfy 6.1.1 through the tokenizer fixtures.
/// </summary>
public static partial class TextCleaner
{
    /// <summary>transformers' CLIPTokenizer: ftfy.fix_text's effect on prompts, then whitespace runs → one space,
    /// trimmed, lower-cased as Python lower-cases.</summary>
    public static string Clean(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        RequireValidUnicode(text, nameof(text));
        return WhitespaceCleanLower(FixText(text));
    }

    /// <summary>OpenAI CLIP's SimpleTokenizer: <c>basic_clean</c> (ftfy.fix_text, then Python's html.unescape twice,
    /// stripped), then the same whitespace cleanup and lower-casing as <see cref="Clean"/>. It differs from
    /// <see cref="Clean"/> where ftfy leaves an entity alone: on and after a line holding '&lt;' ("&lt;b&gt; &amp;amp;"
    /// → "&lt;b&gt; &amp;"), and for spellings only html.unescape reads ("&amp;amp" without ';', "&amp;#39").</summary>
    public static string CleanAsOpenAi(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        RequireValidUnicode(text, nameof(text));
        return WhitespaceCleanLower(PythonHtml.Unescape(PythonHtml.Unescape(FixText(text))));
    }

    /// <summary>whitespace_clean (runs of whitespace → one space, stripped), then Python's str.lower().</summary>
    static string WhitespaceCleanLower(string text) => PythonCase.Lower(Whitespace().Replace(text, " ").Trim());

    /// <summary>
    /// A .NET string can hold a lone UTF-16 surrogate, which is no Unicode character: CLIP's byte-level BPE cannot
    /// encode it (Python raises UnicodeEncodeError), so neither does this tokenizer — the error says where it is.
    /// </summary>
    public static void RequireValidUnicode(string text, string argument)
    {
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { i++; continue; }
            if (char.IsSurrogate(text[i]))
                throw new ArgumentException($"the prompt has a lone UTF-16 surrogate U+{(int)text[i]:X4} at index {i}: not " +
                                            "Unicode text (remove it, or decode the text's bytes as UTF-8 again)", argument);
        }
    }

    /// <summary>
    /// Unicode normalisation as Python's unicodedata does it. .NET refuses the noncharacter U+FFFE ("invalid code
    /// points") where Python leaves it as it is; it never composes, so the text around it is normalised piece by piece.
    /// </summary>
    static string Normalized(string text, NormalizationForm form) =>
        text.Contains('\uFFFE') ? string.Join('\uFFFE', text.Split('\uFFFE').Select(p => p.Normalize(form))) : text.Normalize(form);

    /// <summary>
    /// The ftfy steps alone (no whitespace collapsing, no lower-casing). As ftfy.fix_text does, the text is fixed line
    /// by line (each segment ends after its '\n'), and HTML unescaping stops for good at the first line that holds a
    /// '&lt;' (ftfy's "auto": such text is probably HTML, where entities are meant). Each line goes through every
    /// step, again and again until nothing changes (ftfy's fix_and_explain loop), so "&amp;amp;amp;" → "&amp;".
    /// </summary>
    public static string FixText(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var sb = new StringBuilder(text.Length);
        bool unescape = true;
        for (int pos = 0; pos < text.Length;)
        {
            int end = text.IndexOf('\n', pos) + 1;
            if (end == 0) end = text.Length;
            var segment = text[pos..end];
            if (segment.Contains('<')) unescape = false;
            sb.Append(FixSegment(segment, unescape));
            pos = end;
        }
        return sb.ToString();
    }

    /// <summary>ftfy's fix_and_explain: the steps in order, repeated until the text stops changing. ftfy has no limit;
    /// the steps only ever fix, so a cycle would be a bug here, and a bounded loop stops rather than hangs.</summary>
    static string FixSegment(string text, bool unescape)
    {
        for (int round = 0; round < 64; round++)
        {
            var before = text;
            if (unescape) text = UnescapeHtml(text);
            text = FixCharacters(FixMojibake(text));
            if (text == before) break;
        }
        return text;
    }

    /// <summary>
    /// ftfy's unescape_html: only <c>&amp;#?[0-9A-Za-z]{1,24};</c> is looked at, so "this&amp;not that" stays. A name
    /// decodes if it is an HTML5 name with ';', or one of ftfy's upper-case spellings ("&amp;NTILDE;" → "Ñ"); a
    /// numeric reference decodes as Python's html.unescape decodes it (&amp;#128; → €), unless that leaves a ';'
    /// behind (it did not read the whole reference).
    /// </summary>
    static string UnescapeHtml(string text) => !text.Contains('&') ? text : FtfyEntity().Replace(text, m =>
    {
        var name = m.Value[1..];
        if (PythonHtml.Named.TryGetValue(name, out var named) || PythonHtml.FtfyUpperCase.TryGetValue(name, out named))
            return named;
        if (!name.StartsWith('#')) return m.Value;
        var decoded = PythonHtml.Unescape(m.Value);
        return decoded.Contains(';') ? m.Value : decoded;
    });

    /// <summary>ftfy's per-character fixes, then NFC.</summary>
    static string FixCharacters(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (var rune in text.EnumerateRunes())
        {
            int c = rune.Value;
            switch (c)
            {
                case var l when Ligatures.TryGetValue(l, out var plain): sb.Append(plain); break;
                case 0x3000: sb.Append(' '); break;                                     // ideographic space
                case >= 0xFF01 and <= 0xFFEF:                                           // full- and half-width forms
                    sb.Append(Normalized(rune.ToString(), NormalizationForm.FormKC)); break;
                case 0x02BC or (>= 0x2018 and <= 0x201B): sb.Append('\''); break;       // ‘ ’ ‚ ‛ ʼ
                case >= 0x201C and <= 0x201F: sb.Append('"'); break;                    // “ ” „ ‟
                case '\r': sb.Append('\n'); break;
                default:
                    // ftfy removes C0/C1 controls (but tab, newline, form feed) and a few format characters
                    if (IsRemovedControl(c)) break;
                    sb.Append(rune.ToString()); break;
            }
        }
        return Normalized(sb.ToString(), NormalizationForm.FormC);
    }

    /// <summary>ftfy's fix_latin_ligatures table: Dutch and Afrikaans ligatures, Serbo-Croatian digraphs, Latin
    /// typographic ligatures (ﬅ becomes ſt, not NFKC's st).</summary>
    static readonly Dictionary<int, string> Ligatures = new()
    {
        ['Ĳ'] = "IJ", ['ĳ'] = "ij", ['ŉ'] = "ʼn", ['Ǳ'] = "DZ", ['ǲ'] = "Dz", ['ǳ'] = "dz", ['Ǆ'] = "DŽ", ['ǅ'] = "Dž",
        ['ǆ'] = "dž", ['Ǉ'] = "LJ", ['ǈ'] = "Lj", ['ǉ'] = "lj", ['Ǌ'] = "NJ", ['ǋ'] = "Nj", ['ǌ'] = "nj", ['ﬀ'] = "ff",
        ['ﬁ'] = "fi", ['ﬂ'] = "fl", ['ﬃ'] = "ffi", ['ﬄ'] = "ffl", ['ﬅ'] = "ſt", ['ﬆ'] = "st",
    };

    static bool IsRemovedControl(int c) =>
        (c < 0x20 && c is not ('\t' or '\n' or '\f')) || c == 0x7F || (c >= 0x80 && c <= 0x9F)
        || c is 0xFEFF or (>= 0xFFF9 and <= 0xFFFC) or (>= 0x206A and <= 0x206F);

    /// <summary>
    /// UTF-8 text that was decoded as Windows-1252 ("cafÃ©", "donâ€™t") comes back ("café", "don’t"): every complete
    /// UTF-8 sequence spelled in Windows-1252 characters (a lead byte C2–F4 followed by the right number of
    /// continuation bytes 80–BF) is replaced by the character it encodes. Bytes Windows-1252 leaves undefined (81, 8D,
    /// 8F, 90, 9D) are read as the C1 characters Latin-1 gives them, as ftfy's "sloppy" codec does. An incomplete
    /// sequence ("â€" whose last byte was lost) stays as it is; correct text has no such sequences (a lone é is E9,
    /// not followed by two continuation bytes).
    /// </summary>
    static string FixMojibake(string text)
    {
        var sb = new StringBuilder(text.Length);
        int i = 0;
        while (i < text.Length)
        {
            int lead = SloppyByte(text[i]);
            int length = lead switch { >= 0xC2 and <= 0xDF => 2, >= 0xE0 and <= 0xEF => 3, >= 0xF0 and <= 0xF4 => 4, _ => 0 };
            if (length > 0 && i + length <= text.Length)
            {
                var bytes = new byte[length];
                bytes[0] = (byte)lead;
                bool ok = true;
                for (int k = 1; k < length && ok; k++)
                {
                    int b = SloppyByte(text[i + k]);
                    ok = b is >= 0x80 and <= 0xBF;
                    bytes[k] = (byte)b;
                }
                if (ok && TryUtf8(bytes) is { } decoded)
                {
                    sb.Append(decoded);
                    i += length;
                    continue;
                }
            }
            sb.Append(text[i++]);
        }
        return sb.ToString();
    }

    static readonly Encoding Cp1252 = Windows1252();

    static Encoding Windows1252()
    {
        Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);   // .NET ships only UTF and Latin-1 by default
        return Encoding.GetEncoding(1252, EncoderFallback.ExceptionFallback, DecoderFallback.ExceptionFallback);
    }
    static readonly UTF8Encoding StrictUtf8 = new(false, throwOnInvalidBytes: true);

    /// <summary>The byte a character has in sloppy Windows-1252 (−1 if none).</summary>
    static int SloppyByte(char c)
    {
        if (c < 0x80) return c;
        if (c is '\u0081' or '\u008D' or '\u008F' or '\u0090' or '\u009D') return c;
        if (char.IsSurrogate(c)) return -1;
        try
        {
            var b = Cp1252.GetBytes([c]);
            return b.Length == 1 ? b[0] : -1;
        }
        catch (EncoderFallbackException) { return -1; }
    }

    static string? TryUtf8(byte[] bytes)
    {
        try { return StrictUtf8.GetString(bytes); }
        catch (DecoderFallbackException) { return null; }
    }

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();

    [GeneratedRegex("&#?[0-9A-Za-z]{1,24};")]
    private static partial Regex FtfyEntity();
}
