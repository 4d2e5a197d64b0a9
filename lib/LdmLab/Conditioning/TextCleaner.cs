using System.Globalization;
using System.Net;
using System.Text;
using System.Text.RegularExpressions;

namespace LdmLab.Conditioning;

/// <summary>
/// The text normalisation CLIP's tokenizers apply before BPE (transformers' CLIPTokenizer and OpenAI's
/// SimpleTokenizer both call ftfy.fix_text, then collapse whitespace and lower-case). This is the part of ftfy 6.1.1's
/// default pipeline that changes prompts, written out: HTML entities unescaped unless the text contains '&lt;'
/// (ftfy's "auto"), mojibake re-decoded (UTF-8 read as Windows-1252), Latin ligatures split, full-width characters
/// narrowed, curly quotes straightened, control characters removed, NFC.
/// </summary>
public static partial class TextCleaner
{
    static TextCleaner() => Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);

    /// <summary>ftfy.fix_text's effect on prompts, then whitespace runs → one space, trimmed, lower-cased.</summary>
    public static string Clean(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var fixedText = FixText(text);
        return Whitespace().Replace(fixedText, " ").Trim().ToLowerInvariant();
    }

    /// <summary>The ftfy steps alone (no whitespace collapsing, no lower-casing).</summary>
    public static string FixText(string text)
    {
        if (!text.Contains('<')) text = WebUtility.HtmlDecode(text);
        text = FixMojibake(text);
        var sb = new StringBuilder(text.Length);
        foreach (var rune in text.EnumerateRunes())
        {
            int c = rune.Value;
            switch (c)
            {
                case >= 0xFB00 and <= 0xFB06:                            // ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ
                    sb.Append(rune.ToString().Normalize(NormalizationForm.FormKC)); break;
                case >= 0xFF01 and <= 0xFF5E: sb.Append((char)(c - 0xFEE0)); break;   // full-width ASCII
                case 0x3000: sb.Append(' '); break;                                     // ideographic space
                case 0x02BC or (>= 0x2018 and <= 0x201B): sb.Append('\''); break;       // ‘ ’ ‚ ‛ ʼ
                case >= 0x201C and <= 0x201F: sb.Append('"'); break;                    // “ ” „ ‟
                case '\r': sb.Append('\n'); break;
                default:
                    // ftfy removes C0/C1 controls (but tab, newline, form feed) and a few format characters
                    if (IsRemovedControl(c)) break;
                    sb.Append(rune.ToString()); break;
            }
        }
        return sb.ToString().Normalize(NormalizationForm.FormC);
    }

    static bool IsRemovedControl(int c) =>
        (c < 0x20 && c is not ('\t' or '\n' or '\f')) || c == 0x7F || (c >= 0x80 && c <= 0x9F)
        || c is 0xFEFF or (>= 0xFFF9 and <= 0xFFFC) or (>= 0x206A and <= 0x206F);

    /// <summary>
    /// UTF-8 text that was decoded as Windows-1252 ("cafÃ©") comes back ("café"): every maximal run of characters
    /// that Windows-1252 can encode is re-encoded, and replaced when its bytes are valid UTF-8 with non-ASCII content.
    /// Correct text never decodes that way (a lone é is 0xE9, not valid UTF-8), so it is left alone.
    /// </summary>
    static string FixMojibake(string text)
    {
        var cp1252 = Encoding.GetEncoding(1252, EncoderFallback.ExceptionFallback, DecoderFallback.ExceptionFallback);
        var utf8 = new UTF8Encoding(false, throwOnInvalidBytes: true);
        var sb = new StringBuilder(text.Length);
        int i = 0;
        while (i < text.Length)
        {
            int j = i;
            while (j < text.Length && Encodable(cp1252, text[j])) j++;
            if (j > i)
            {
                var run = text[i..j];
                sb.Append(run.Any(ch => ch > 0x7F) && TryRedecode(run, cp1252, utf8) is { } fixedRun ? fixedRun : run);
                i = j;
            }
            else sb.Append(text[i++]);
        }
        return sb.ToString();
    }

    static bool Encodable(Encoding cp1252, char c)
    {
        if (c < 0x80) return true;
        if (char.IsSurrogate(c)) return false;
        try { cp1252.GetByteCount([c]); return true; }
        catch (EncoderFallbackException) { return false; }
    }

    static string? TryRedecode(string run, Encoding cp1252, Encoding utf8)
    {
        try
        {
            var redecoded = utf8.GetString(cp1252.GetBytes(run));
            return redecoded != run ? redecoded : null;
        }
        catch (Exception e) when (e is DecoderFallbackException or EncoderFallbackException or ArgumentException) { return null; }
    }

    [GeneratedRegex(@"\s+")]
    private static partial Regex Whitespace();
}
