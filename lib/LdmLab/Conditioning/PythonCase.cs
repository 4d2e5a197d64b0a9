using System.Text;

namespace LdmLab.Conditioning;

/// <summary>
/// Python's <c>str.lower()</c>, which CLIP's tokenizers apply to every prompt. It differs from .NET's
/// <c>ToLowerInvariant</c> (one UTF-16 unit in, one out, .NET's own Unicode version) in three ways:
/// <list type="bullet">
/// <item>full case mapping: a character may lower to several ('İ' U+0130 → "i\u0307"), and astral letters
/// ('𐐀' U+10400) are lowered as code points;</item>
/// <item>the Final_Sigma rule: capital sigma U+03A3 lowers to final 'ς' U+03C2 when a cased character comes before it
/// and none comes after it, case-ignorable characters (apostrophes, combining marks, …) skipped on both sides, i.e.
/// <c>\p{cased}\p{case-ignorable}* Σ !(\p{case-ignorable}* \p{cased})</c>; to 'σ' U+03C3 otherwise ("ΟΔΟΣ" →
/// "οδος", "ΣΑΣ" → "σας");</item>
/// <item>Python's Unicode version (Python 3.11: Unicode 14.0.0), whatever .NET's is.</item>
/// </list>
/// The tables come from Python itself (scripts/make_unicode_lower.py writes python_lower.txt.gz, embedded in the
/// library): every code point whose lowering is not itself, and the case-ignorable and cased ranges the sigma rule
/// reads. Text is read by code point; a lone surrogate (which a Python str can hold too) is left as it is.
/// </summary>
public static class PythonCase
{
    const int CapitalSigma = 0x03A3, FinalSigma = 0x03C2, Sigma = 0x03C3;

    sealed record Tables(Dictionary<int, string> Lower, Ranges Ignorable, Ranges Cased, string Source);

    /// <summary>Sorted, disjoint inclusive code point ranges.</summary>
    sealed record Ranges(int[] Starts, int[] Ends)
    {
        public bool Contains(int c)
        {
            int i = Array.BinarySearch(Starts, c);
            if (i < 0) i = ~i - 1;
            return i >= 0 && c <= Ends[i];
        }
    }

    static readonly Lazy<Tables> Data = new(Load);

    /// <summary>The Python and Unicode versions the tables were made with (the data file's header).</summary>
    public static string Source => Data.Value.Source;

    /// <summary>Python's <c>text.lower()</c>.</summary>
    public static string Lower(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var tables = Data.Value;
        var cps = CodePoints(text);
        var sb = new StringBuilder(text.Length);
        for (int i = 0; i < cps.Length; i++)
        {
            int c = cps[i];
            if (c == CapitalSigma) AppendCodePoint(sb, IsFinalSigma(tables, cps, i) ? FinalSigma : Sigma);
            else if (tables.Lower.TryGetValue(c, out var lowered)) sb.Append(lowered);
            else AppendCodePoint(sb, c);
        }
        return sb.ToString();
    }

    /// <summary>CPython's handle_capital_sigma: skip case-ignorable characters backwards; the first other one must be
    /// cased. Then skip them forwards; the text must end there or the next other character must not be cased.</summary>
    static bool IsFinalSigma(Tables t, int[] cps, int i)
    {
        int j = i - 1;
        while (j >= 0 && t.Ignorable.Contains(cps[j])) j--;
        if (j < 0 || !t.Cased.Contains(cps[j])) return false;
        j = i + 1;
        while (j < cps.Length && t.Ignorable.Contains(cps[j])) j++;
        return j == cps.Length || !t.Cased.Contains(cps[j]);
    }

    /// <summary>The code points of a string as Python sees them: a surrogate pair is one, a lone surrogate is itself.
    /// </summary>
    internal static int[] CodePoints(string text)
    {
        var cps = new List<int>(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                cps.Add(char.ConvertToUtf32(text[i], text[i + 1]));
                i++;
            }
            else cps.Add(text[i]);
        }
        return [.. cps];
    }

    internal static void AppendCodePoint(StringBuilder sb, int c)
    {
        if (c >= 0x10000) sb.Append(char.ConvertFromUtf32(c));
        else sb.Append((char)c);   // a BMP character, or a lone surrogate passed through
    }

    static Tables Load()
    {
        var lower = new Dictionary<int, string>();
        var ranges = new Dictionary<string, (List<int> Starts, List<int> Ends)> { ["I"] = ([], []), ["C"] = ([], []) };
        var comments = new List<string>();
        foreach (var f in EmbeddedTable.Read("python_lower.txt.gz", comments))
        {
            if (f[0] == "L") lower[Convert.ToInt32(f[1], 16)] = EmbeddedTable.FromHex(f.Skip(2));
            else
            {
                var (starts, ends) = ranges[f[0]];
                starts.Add(Convert.ToInt32(f[1], 16));
                ends.Add(Convert.ToInt32(f[2], 16));
            }
        }
        Ranges Of(string kind) => new([.. ranges[kind].Starts], [.. ranges[kind].Ends]);
        return new Tables(lower, Of("I"), Of("C"), comments.LastOrDefault() ?? "");
    }
}
