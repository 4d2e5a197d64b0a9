using System.Globalization;
using System.Text;

namespace LdmLab.Conditioning;

/// <summary>
/// Prompt emphasis in AUTOMATIC1111's syntax (section 10.4.10), the convention most prompts in the wild use:
/// <c>(words)</c> multiplies the weight by 1.1, <c>[words]</c> divides it by 1.1, <c>(words:1.3)</c> sets the factor
/// to 1.3; brackets nest and multiply; <c>\(</c> <c>\)</c> <c>\[</c> <c>\]</c> are literal; an unclosed bracket
/// applies to the end of the prompt. The text encoder then scales each token's hidden state by its weight and
/// restores the prompt's original mean (A1111's "emphasis: original"; see the pipeline).
/// </summary>
public static class PromptWeights
{
    public const double Bracket = 1.1;

    /// <summary>(text, weight) segments in prompt order; adjacent segments of equal weight are merged.</summary>
    public static IReadOnlyList<(string text, double weight)> Parse(string prompt)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        var segments = new List<(string text, double weight)>();
        var stack = new Stack<(char close, int segmentStart)>();
        var text = new StringBuilder();

        void Flush()
        {
            if (text.Length == 0) return;
            segments.Add((text.ToString(), 1.0));
            text.Clear();
        }

        void Scale(int from, double factor)
        {
            for (int k = from; k < segments.Count; k++) segments[k] = (segments[k].text, segments[k].weight * factor);
        }

        for (int i = 0; i < prompt.Length; i++)
        {
            char c = prompt[i];
            if (c == '\\' && i + 1 < prompt.Length && prompt[i + 1] is '(' or ')' or '[' or ']' or '\\')
            {
                text.Append(prompt[++i]);
                continue;
            }
            switch (c)
            {
                case '(' or '[':
                    Flush();
                    stack.Push((c == '(' ? ')' : ']', segments.Count));
                    break;
                case ')' when stack.Count > 0 && stack.Peek().close == ')':
                {
                    // "(text:1.3)": the number after the last ':' in this group's own text
                    double factor = Bracket;
                    var own = text.ToString();
                    int colon = own.LastIndexOf(':');
                    if (colon >= 0 && double.TryParse(own[(colon + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var w))
                    {
                        factor = w;
                        text.Length = colon;
                    }
                    Flush();
                    Scale(stack.Pop().segmentStart, factor);
                    break;
                }
                case ']' when stack.Count > 0 && stack.Peek().close == ']':
                    Flush();
                    Scale(stack.Pop().segmentStart, 1 / Bracket);
                    break;
                default:
                    text.Append(c);
                    break;
            }
        }
        Flush();
        while (stack.Count > 0)
        {
            var (close, start) = stack.Pop();
            Scale(start, close == ')' ? Bracket : 1 / Bracket);
        }
        // merge neighbours of equal weight
        var merged = new List<(string text, double weight)>();
        foreach (var s in segments)
            if (merged.Count > 0 && Math.Abs(merged[^1].weight - s.weight) < 1e-12) merged[^1] = (merged[^1].text + s.text, s.weight);
            else merged.Add(s);
        return merged;
    }
}
