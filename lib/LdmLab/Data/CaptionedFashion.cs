using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Data;

/// <summary>Where an item sits on the two-slot canvas.</summary>
public enum Side { Left = 0, Right = 1 }

/// <summary>
/// Captioned Fashion-MNIST scenes on a 28×56 canvas (two 28×28 slots), for text-to-image training and for scoring
/// where words attend (section 10.4.5). Each scene holds one item (its caption names the class, sometimes its side,
/// sometimes only a superclass: "a shoe") or two items with a caption that names both and their sides ("a sneaker on
/// the left and a bag on the right", order varied). The masks of the items are known from the layout: the item's
/// non-background pixels in its slot.
/// </summary>
/// <param name="Images">[N, 1, 28, 56] in [−1, 1]; an empty slot is background (−1)</param>
/// <param name="Captions">one caption per scene</param>
/// <param name="LeftLabels">[N] int64: the class in the left slot, −1 when empty</param>
/// <param name="RightLabels">[N] int64: the class in the right slot, −1 when empty</param>
public sealed record CaptionedScenes(
    Tensor Images, IReadOnlyList<string> Captions, Tensor LeftLabels, Tensor RightLabels)
{
    public const int Height = 28, Width = 56, Slot = 28;

    public long Count => Images.shape[0];

    /// <summary>The class in a slot of scene <paramref name="index"/>, or −1.</summary>
    public long LabelAt(int index, Side side) => (side == Side.Left ? LeftLabels : RightLabels)[index].item<long>();

    /// <summary>
    /// Silhouettes [N, 2, 28, 56]: channel 0 the left item's pixels, channel 1 the right item's (pixels brighter than
    /// <paramref name="threshold"/> in [−1, 1] inside their slot).
    /// </summary>
    public Tensor Masks(double threshold = -0.8) => SlotMasks(Images, threshold);

    /// <summary>The two halves of the canvas as masks [2, 28, 56]: channel 0 is 1 on the left slot, channel 1 on the
    /// right one (what a caption's side names).</summary>
    public static Tensor HalfMasks()
    {
        var halves = zeros(2, Height, Width);                                          // [2, 28, 56]
        halves[0, .., ..Slot] = tensor(1f);
        halves[1, .., Slot..] = tensor(1f);
        return halves;
    }

    /// <summary>The masks of any canvases [N, 1, 28, 56] (generated ones too): [N, 2, 28, 56].</summary>
    public static Tensor SlotMasks(Tensor canvases, double threshold = -0.8)
    {
        var ink = canvases.gt(threshold).to(ScalarType.Float32);                      // [N, 1, 28, 56]
        var left = ink.clone();
        left[.., .., .., Slot..] = tensor(0f);
        var right = ink.clone();
        right[.., .., .., ..Slot] = tensor(0f);
        return cat([left, right], 1);                                                  // [N, 2, 28, 56]
    }

    /// <summary>The 28×28 slot of each canvas: [N, 1, 28, 56] → [N, 1, 28, 28] (what a Fashion classifier
    /// judges).</summary>
    public static Tensor SlotOf(Tensor canvases, Side side) => canvases.narrow(3, side == Side.Left ? 0 : Slot, Slot);
}

/// <summary>Captions and scenes for <see cref="CaptionedScenes"/>.</summary>
public static class CaptionedFashion
{
    /// <summary>The caption noun of each Fashion-MNIST class (index = label).</summary>
    public static readonly string[] Nouns =
        ["t-shirt", "pair of trousers", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"];

    /// <summary>Superclasses a caption may name instead of the class: "a top", "a shoe".</summary>
    public static readonly IReadOnlyDictionary<string, int[]> Superclasses = new Dictionary<string, int[]>
    {
        ["top"] = [0, 2, 6], ["shoe"] = [5, 7, 9],
    };

    static readonly string[] SingleTemplates =
        ["a {0}", "a photo of a {0}", "a picture of a {0}", "{0}", "a small {0}"];

    /// <summary>"a" or "an" before a noun phrase.</summary>
    public static string Article(string noun) => "aeiou".Contains(noun[0]) ? "an" : "a";

    /// <summary>The template filled with the noun, "a" corrected to "an" before a vowel: "a photo of an ankle boot".</summary>
    public static string WithArticle(string template, string noun) =>
        string.Format(template, noun).Replace($"a {noun}", $"{Article(noun)} {noun}");

    /// <summary>A single-object caption: class noun in one of the templates (side named or not).</summary>
    public static string SingleCaption(int label, Side? side, Random rng) => SingleCaption(Nouns[label], side, rng);

    /// <summary>A single-object caption for any noun phrase (a new word: "sneaker", "&lt;sneaker&gt;", "sks bag").
    /// </summary>
    public static string SingleCaption(string noun, Side? side, Random rng)
    {
        var caption = WithArticle(SingleTemplates[rng.Next(SingleTemplates.Length)], noun);
        return side is { } s ? $"{caption} on the {Name(s)}" : caption;
    }

    /// <summary>A two-object caption naming both items and their sides, in either order.</summary>
    public static string PairCaption(int left, int right, bool rightFirst)
    {
        string l = $"{Article(Nouns[left])} {Nouns[left]} on the left";
        string r = $"{Article(Nouns[right])} {Nouns[right]} on the right";
        return rightFirst ? $"{r} and {l}" : $"{l} and {r}";
    }

    static string Name(Side side) => side == Side.Left ? "left" : "right";

    /// <summary>
    /// The side-first form of a caption of this grammar: each clause that names its side says it before the noun
    /// ("a sneaker on the left and a bag on the right" → "on the left a sneaker and on the right a bag"; "a shoe on
    /// the right" → "on the right a shoe"); clauses without a side and the empty caption stay as they are. A causal
    /// text encoder then reads the side before the noun (issue 28); <see cref="Layout"/> parses both forms.
    /// </summary>
    public static string SideFirst(string caption) =>
        string.Join(" and ", caption.Split(" and ").Select(clause =>
            clause.EndsWith(" on the left", StringComparison.Ordinal) ? $"on the left {clause[..^12]}"
            : clause.EndsWith(" on the right", StringComparison.Ordinal) ? $"on the right {clause[..^13]}"
            : clause));

    /// <summary>
    /// Scenes from a Fashion-MNIST split, deterministic per seed: a fraction <paramref name="pairs"/> of two-item
    /// scenes, the rest single items on a random side (their caption names the side half of the time, and a
    /// superclass instead of the class one time in ten).
    /// </summary>
    public static CaptionedScenes Make(FashionMnist data, int count, double pairs = 0.5, int seed = 0)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(count), count, "count must be ≥ 1");
        if (pairs is < 0 or > 1)
            throw new ArgumentOutOfRangeException(nameof(pairs), pairs, "pairs is a fraction in [0, 1]");
        var rng = new Random(seed);
        var labels = data.Labels.data<long>().ToArray();
        var canvases = full(count, 1, CaptionedScenes.Height, CaptionedScenes.Width, -1f);       // [N, 1, 28, 56]
        var captions = new string[count];
        var leftLabels = new long[count];
        var rightLabels = new long[count];
        for (int i = 0; i < count; i++)
        {
            int a = rng.Next((int)data.Count);
            if (rng.NextDouble() < pairs)
            {
                int b = rng.Next((int)data.Count);
                Place(canvases, i, data.Images[a], Side.Left);
                Place(canvases, i, data.Images[b], Side.Right);
                (leftLabels[i], rightLabels[i]) = (labels[a], labels[b]);
                captions[i] = PairCaption((int)labels[a], (int)labels[b], rightFirst: rng.Next(2) == 1);
                continue;
            }
            var side = rng.Next(2) == 0 ? Side.Left : Side.Right;
            Place(canvases, i, data.Images[a], side);
            (leftLabels[i], rightLabels[i]) = side == Side.Left ? (labels[a], -1L) : (-1L, labels[a]);
            var superclass = Superclasses.FirstOrDefault(kv => kv.Value.Contains((int)labels[a])).Key;
            captions[i] = superclass is not null && rng.Next(10) == 0
                ? WithArticle("a {0}", superclass) + (rng.Next(2) == 0 ? $" on the {Name(side)}" : "")
                : SingleCaption((int)labels[a], rng.Next(2) == 0 ? side : null, rng);
        }
        return new CaptionedScenes(canvases, captions, tensor(leftLabels), tensor(rightLabels));
    }

    /// <summary>
    /// The layout a caption of this grammar (or its <see cref="SideFirst"/> form) describes, as class weights per
    /// slot [2, 10] (row 0 the left slot): a named class on a named side puts weight 1 there; without a side, ½ on
    /// each side; a superclass ("a shoe") spreads its weight over its classes; the empty caption is all zeros. What
    /// spatial conditioning needs and a caption does not give directly (section 10.3.3): here a parser of the known
    /// grammar stands in for a user's sketch or a layout model.
    /// </summary>
    public static float[,] Layout(string caption)
    {
        var layout = new float[2, Nouns.Length];
        foreach (var clause in caption.ToLowerInvariant().Split(" and ", StringSplitOptions.TrimEntries))
        {
            if (clause.Length == 0) continue;
            Side? side = clause.EndsWith("on the left") || clause.StartsWith("on the left ") ? Side.Left
                : clause.EndsWith("on the right") || clause.StartsWith("on the right ") ? Side.Right : null;
            int[] classes = ClassesNamed(clause)
                ?? throw new ArgumentException($"caption '{caption}': '{clause}' names no Fashion-MNIST class or " +
                                               $"superclass ({string.Join(", ", Nouns)}; top, shoe)", nameof(caption));
            foreach (var s in side is { } named ? [named] : new[] { Side.Left, Side.Right })
                foreach (int c in classes)
                    layout[(int)s, c] += 1f / classes.Length / (side is null ? 2 : 1);
        }
        return layout;
    }

    /// <summary>The layouts of many captions: [N, 2, 10] float32.</summary>
    public static Tensor Layouts(IReadOnlyList<string> captions)
    {
        var values = new float[captions.Count * 2 * Nouns.Length];
        for (int i = 0; i < captions.Count; i++)
        {
            var layout = Layout(captions[i]);
            Buffer.BlockCopy(layout, 0, values, i * layout.Length * sizeof(float), layout.Length * sizeof(float));
        }
        return tensor(values, [captions.Count, 2, Nouns.Length]);
    }

    // The longest noun the clause names as a whole word ("t-shirt" before "shirt"), else a superclass.
    static int[]? ClassesNamed(string clause)
    {
        var words = $" {clause} ".Replace(" on the left ", " ").Replace(" on the right ", " ");
        var noun = Nouns.Select((n, c) => (n, c)).OrderByDescending(x => x.n.Length)
            .FirstOrDefault(x => words.Contains($" {x.n} "));
        if (noun.n is not null) return [noun.c];
        return Superclasses.FirstOrDefault(kv => words.Contains($" {kv.Key} ")).Value;
    }

    static void Place(Tensor canvases, int index, Tensor item, Side side)
    {
        int x = side == Side.Left ? 0 : CaptionedScenes.Slot;
        canvases[index, .., .., x..(x + CaptionedScenes.Slot)] = item;                    // item [1, 28, 28]
    }
}
