using static TorchSharp.torch;

namespace LdmLab.Conditioning;

/// <summary>
/// Where a prompt itself says its words go: each target word's region from the side word of its own clause
/// ("a bag on the left and a sneaker on the right", or side first: "on the left a bag and on the right a sneaker").
/// No layout is handed in: the regions are read off the words, the layout-steered sampler's input
/// (<see cref="Pipelines.LayoutSteering"/>).
/// <code>
/// clauses  = the words split at "and" and ","
/// side(w)  = the first of left / right / top / bottom in w's clause (none: no region)
/// region   = that half of the h × w grid: column centre (c + ½) &lt; w/2 for left, &gt; w/2 for right; rows alike
/// </code>
/// </summary>
public static class SideWords
{
    /// <summary>The side words this reads, and the half each names.</summary>
    public static IReadOnlyList<string> Names { get; } = ["left", "right", "top", "bottom"];

    /// <summary>
    /// The side word of the clause that holds each target, or null: <paramref name="targets"/> are words (or runs of
    /// words) of <paramref name="words"/> (<see cref="CrossAttentionRecorder.Words"/>), found by their first token
    /// position.
    /// </summary>
    public static string?[] Sides(IReadOnlyList<PromptWord> words, IReadOnlyList<PromptWord> targets)
    {
        var clause = new int[words.Count];
        for (int i = 0, c = 0; i < words.Count; i++)
        {
            if (words[i].Text is "and" or ",") c++;
            clause[i] = c;
        }
        return targets.Select(target =>
        {
            int at = Array.FindIndex(words.ToArray(), w => w.TokenPositions.Contains(target.TokenPositions[0]));
            if (at < 0)
                throw new ArgumentException($"the target '{target.Text}' (token {target.TokenPositions[0]}) is not " +
                                            "one of the prompt's words", nameof(targets));
            return words.Where((w, i) => clause[i] == clause[at] && Names.Contains(w.Text))
                .Select(w => w.Text).FirstOrDefault();
        }).ToArray();
    }

    /// <summary>The half of an <paramref name="height"/> × <paramref name="width"/> grid a side word names, 1 inside,
    /// 0 outside: [height, width] float32.</summary>
    public static Tensor Region(string side, int height, int width)
    {
        if (height < 1 || width < 1)
            throw new ArgumentOutOfRangeException(nameof(height), $"a {height}×{width} grid has no cells");
        var columns = (arange(width, dtype: ScalarType.Float32) + 0.5f).reshape(1, width).expand(height, width);
        var rows = (arange(height, dtype: ScalarType.Float32) + 0.5f).reshape(height, 1).expand(height, width);
        var inside = side switch
        {
            "left" => columns.lt(width / 2.0),
            "right" => columns.gt(width / 2.0),
            "top" => rows.lt(height / 2.0),
            "bottom" => rows.gt(height / 2.0),
            _ => throw new ArgumentException($"'{side}' is no side word (expected one of " +
                                             $"{string.Join(", ", Names)})", nameof(side)),
        };
        return inside.to_type(ScalarType.Float32);
    }

    /// <summary>Each target's region on the grid (<see cref="Sides"/>, then <see cref="Region"/>), null where its
    /// clause names no side.</summary>
    public static Tensor?[] Regions(IReadOnlyList<PromptWord> words, IReadOnlyList<PromptWord> targets, int height,
        int width) =>
        Sides(words, targets).Select(s => s is null ? null : Region(s, height, width)).ToArray();
}
