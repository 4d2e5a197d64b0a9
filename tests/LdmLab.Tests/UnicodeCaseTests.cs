using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using LdmLab.Conditioning;

namespace LdmLab.Tests;

/// <summary>Python's str.lower() and html.unescape (PythonCase, PythonHtml) against Python 3.11's own output
/// (fixtures/unicode-lower, written by scripts/make_unicode_lower.py), and what they change in the CLIP text cleaner.
/// </summary>
public class UnicodeCaseTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", "unicode-lower", name);

    static List<(string Text, string Expected)> Cases(string file, string key)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Fixture(file)));
        return doc.RootElement.GetProperty("cases").EnumerateArray()
            .Select(c => (c.GetProperty("text").GetString()!, c.GetProperty(key).GetString()!)).ToList();
    }

    static string Escaped(string s) => string.Concat(s.EnumerateRunes().Select(r => r.Value is >= 0x20 and < 0x7F
        ? r.ToString() : $"\\u{{{r.Value:X}}}"));

    /// <summary>Every code point but the surrogates, lowered alone, block by block of 4096: the SHA-256 of each
    /// lowering followed by NUL equals Python's (blocks.tsv), so no code point's lowering differs.</summary>
    [Fact]
    public void Every_code_point_lowers_as_python_lowers_it()
    {
        var blocks = File.ReadLines(Fixture("blocks.tsv")).Select(l => l.Split('\t'))
            .ToDictionary(f => Convert.ToInt32(f[0], 16), f => f[1]);
        Assert.Equal(0x110, blocks.Count);
        var wrong = new List<string>();
        foreach (var (start, expected) in blocks)
        {
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            for (int c = start; c < start + 0x1000; c++)
            {
                if (c is >= 0xD800 and <= 0xDFFF) continue;
                sha.AppendData(Encoding.UTF8.GetBytes(PythonCase.Lower(char.ConvertFromUtf32(c)) + "\0"));
            }
            if (Convert.ToHexStringLower(sha.GetHashAndReset()) != expected) wrong.Add($"U+{start:X4}…");
        }
        Assert.True(wrong.Count == 0, "blocks lowered unlike Python: " + string.Join(", ", wrong));
    }

    /// <summary>Every lowered code point in runs, and capital sigma among cased, uncased and case-ignorable
    /// neighbours (Final_Sigma), as Python lowers the whole string.</summary>
    [Fact]
    public void Strings_lower_as_python_lowers_them()
    {
        var cases = Cases("strings.json", "lower");
        Assert.True(cases.Count > 1000);
        var wrong = cases.Where(c => PythonCase.Lower(c.Text) != c.Expected)
            .Select(c => $"{Escaped(c.Text)} → {Escaped(PythonCase.Lower(c.Text))}, Python {Escaped(c.Expected)}");
        var first = wrong.Take(10).ToList();
        Assert.True(first.Count == 0, string.Join("\n", first));
    }

    [Theory]
    [InlineData("İ", "i\u0307")]                   // U+0130 lowers to two code points
    [InlineData("ΟΔΟΣ", "οδος")]                   // final sigma: after a cased letter, before none
    [InlineData("ΣΑΣ ΟΔΟΣ.", "σας οδος.")]         // word-initial sigma is σ; '.' is not cased
    [InlineData("ΑΣ'Α", "ασ'α")]                   // the apostrophe is case-ignorable: a letter still follows
    [InlineData("Σ", "σ")]                         // nothing cased before it
    [InlineData("ǅ", "ǆ")]                         // titlecase digraph
    [InlineData("ẞ", "ß")]
    [InlineData("𐐀𐐁", "𐐨𐐩")]                    // Deseret, outside the BMP
    [InlineData("ABC def", "abc def")]
    public void Lower_follows_python(string text, string expected) => Assert.Equal(expected, PythonCase.Lower(text));

    [Fact]
    public void Lower_leaves_a_lone_surrogate_as_python_does() =>
        Assert.Equal("a\uD800b", PythonCase.Lower("A\uD800B"));

    /// <summary>Every HTML5 entity name (followed by more text), numeric references (remapped, invalid, dropped,
    /// astral, without ';') and malformed ones, as Python's html.unescape decodes them.</summary>
    [Fact]
    public void Html_unescape_follows_python()
    {
        var cases = Cases("unescape.json", "unescape");
        Assert.True(cases.Count > 2231);
        var wrong = cases.Where(c => PythonHtml.Unescape(c.Text) != c.Expected)
            .Select(c => $"{Escaped(c.Text)} → {Escaped(PythonHtml.Unescape(c.Text))}, Python {Escaped(c.Expected)}");
        var first = wrong.Take(10).ToList();
        Assert.True(first.Count == 0, string.Join("\n", first));
    }

    /// <summary>transformers' CLIPTokenizer: ftfy (which unescapes again until nothing changes, and not on or after
    /// a line with '&lt;'), whitespace, Python's lower(). Expected values from ftfy 6.1.1 under Python 3.11.</summary>
    [Theory]
    [InlineData("&amp;amp;", "&")]
    [InlineData("&amp;amp;amp; X", "& x")]
    [InlineData("&amp;lt;b&amp;gt;", "<b>")]                      // '<' made by unescaping does not stop it
    [InlineData("<b> &amp;", "<b> &amp;")]
    [InlineData("a &amp;\n<b> &amp;\nc &amp;", "a & <b> &amp; c &amp;")]   // line by line, and for good
    [InlineData("&NTILDE; &amp &notit; &#128; &#x110000; &#39", "ñ &amp &notit; € \uFFFD &#39")]
    [InlineData("ǅ İ ΟΔΟΣ", "dž i\u0307 οδος")]                    // ftfy splits the digraph first
    [InlineData("ŉ", "'n")]                                      // ŉ → ʼn, then ʼ uncurled in ftfy's next round
    public void Clean_follows_transformers(string text, string expected) =>
        Assert.Equal(expected, TextCleaner.Clean(text));

    /// <summary>OpenAI's SimpleTokenizer: the same, then html.unescape twice (from OpenAI CLIP + ftfy 6.1.1).</summary>
    [Theory]
    [InlineData("&amp;amp;", "&")]
    [InlineData("<b> &amp;amp;", "<b> &")]
    [InlineData("a &amp;\n<b> &amp;", "a & <b> &")]
    [InlineData("&NTILDE; &amp &notit; &#128; &#x110000; &#39", "ñ & ¬it; € \uFFFD '")]
    [InlineData("  ΟΔΟΣ &amp; ", "οδος &")]
    public void Clean_as_openai_unescapes_twice_more(string text, string expected) =>
        Assert.Equal(expected, TextCleaner.CleanAsOpenAi(text));

    [Fact]
    public void Tokenizer_cleans_entities_and_greek_as_python()
    {
        var t = ClipTokenizer.Default;
        Assert.Equal(t.EncodeIds("&"), t.EncodeIds("&amp;amp;"));
        Assert.Equal(t.EncodeIds("οδος"), t.EncodeIds("ΟΔΟΣ"));
        Assert.NotEqual(t.EncodeIds("οδοσ"), t.EncodeIds("ΟΔΟΣ"));
    }

    [Fact]
    public void Tables_say_which_python_made_them() =>
        Assert.Contains("unidata_version 14.0.0", PythonCase.Source);
}
