using static TorchSharp.torch;

namespace LdmLab.Data;

/// <summary>
/// The scenes of one size bucket: images [N, 1, H, W] in [−1, 1], one caption each, the class asked per 28-pixel
/// item slot [N, k] (−1: empty; a square canvas has one slot, the whole canvas, whatever its size), and each image's
/// size before it was fitted to the bucket and where the crop began.
/// </summary>
public sealed record SceneBucket(SizeBucket Size, Tensor Images, IReadOnlyList<string> Captions, Tensor SlotLabels,
    (int Height, int Width)[] OriginalSizes, (int Top, int Left)[] Crops)
{
    public long Count => Images.shape[0];
}

/// <summary>
/// Captioned Fashion-MNIST scenes on mixed canvases (section 10.5.1's multi-resolution data set) for the
/// multi-resolution text-to-image model:
/// <list type="bullet">
/// <item>28×28: one item filling the canvas, its caption without a side ("a sneaker", "a photo of a bag");</item>
/// <item>28×56: the two-slot scenes of <see cref="CaptionedFashion.Make"/> (one item on a side, or two);</item>
/// <item>56×56: one large item: the 28×28 item stretched to a canvas of a random size near 56 (height 48–64, the
///   width within ±13 % of it, so its aspect ratio is off), then fitted back by the chapter's pipeline — resized
///   keeping the aspect ratio until it covers 56×56, centre-cropped, the original size recorded.</item>
/// </list>
/// Every scene goes through <see cref="SizeBuckets"/> (nearest aspect ratio, then nearest area), so a bucket holds
/// one size only. The captions follow the lab's grammar, so the fixed-size model reads them too.
/// </summary>
public static class MultiSizeFashion
{
    public static readonly SizeBucket Small = new(28, 28), Pair = new(CaptionedScenes.Height, CaptionedScenes.Width),
        Large = new(56, 56);

    /// <summary>The buckets of the training set: 28×28, 28×56, 56×56.</summary>
    public static IReadOnlyList<SizeBucket> Buckets { get; } = [Small, Pair, Large];

    /// <summary>
    /// <paramref name="count"/> scenes from a split, deterministic per seed: a quarter one small item, half two-slot
    /// scenes (<see cref="CaptionedFashion.Make"/> with <paramref name="pairs"/>, seed <paramref name="seed"/>), a
    /// quarter one large item. Buckets in the order of <see cref="Buckets"/>.
    /// </summary>
    public static IReadOnlyList<SceneBucket> Make(FashionMnist data, int count, double pairs = 0.5, int seed = 0)
    {
        if (count < 4) throw new ArgumentOutOfRangeException(nameof(count), count, "count must be ≥ 4");
        int small = count / 4, large = count / 4, wide = count - small - large;
        var rng = new Random(seed);
        var labels = data.Labels.data<long>().ToArray();
        var natives = new List<Tensor>();
        var captions = new List<string>();
        var classes = new List<long>();
        for (int i = 0; i < small + large; i++)
        {
            int a = rng.Next((int)data.Count);
            var item = data.Images[a];                                                    // [1, 28, 28]
            if (i >= small)
            {
                int h = rng.Next(48, 65), w = (int)Math.Round(h * (0.87 + 0.26 * rng.NextDouble()));
                item = nn.functional.interpolate(item.unsqueeze(0), size: [h, w], mode: InterpolationMode.Bilinear,
                    align_corners: false)[0];                                             // [1, h, w]
            }
            natives.Add(item);
            var superclass = CaptionedFashion.Superclasses.FirstOrDefault(kv => kv.Value.Contains((int)labels[a])).Key;
            captions.Add(superclass is not null && rng.Next(10) == 0 ? CaptionedFashion.WithArticle("a {0}", superclass)
                : CaptionedFashion.SingleCaption((int)labels[a], null, rng));
            classes.Add(labels[a]);
        }
        var scenes = CaptionedFashion.Make(data, wide, pairs, seed);
        var buckets = new List<SceneBucket>();
        foreach (var bucket in Buckets)
        {
            if (bucket == Pair)
            {
                buckets.Add(new SceneBucket(bucket, scenes.Images, scenes.Captions,
                    stack([scenes.LeftLabels, scenes.RightLabels], 1),                     // [N, 2]
                    Enumerable.Repeat((bucket.Height, bucket.Width), wide).ToArray(), new (int, int)[wide]));
                continue;
            }
            var members = Enumerable.Range(0, natives.Count).Where(i =>
                SizeBuckets.Nearest(Buckets, (int)natives[i].shape[1], (int)natives[i].shape[2]) == bucket).ToArray();
            var fitted = members.Select(i => SizeBuckets.ResizeAndCrop(natives[i], bucket)).ToArray();
            buckets.Add(new SceneBucket(bucket,
                stack(fitted.Select(f => f.image).ToArray()).clamp(-1, 1),                 // [n, 1, H, W]
                members.Select(i => captions[i]).ToList(),
                tensor(members.Select(i => classes[i]).ToArray()).unsqueeze(1),             // [n, 1]
                members.Select(i => ((int)natives[i].shape[1], (int)natives[i].shape[2])).ToArray(),
                fitted.Select(f => (f.top, f.left)).ToArray()));
        }
        return buckets;
    }
}
