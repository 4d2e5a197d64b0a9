using static TorchSharp.torch;

namespace LdmLab.Data;

/// <summary>A training size (pixels): every image in a batch of this bucket is exactly Height × Width.</summary>
public sealed record SizeBucket(int Height, int Width)
{
    public double AspectRatio => (double)Width / Height;
    public override string ToString() => $"{Height}×{Width}";
}

/// <summary>
/// One batch of one bucket: images [B, C, Height, Width], which inputs they are, and each one's original size and
/// crop offset (SDXL's original_size and crops_coords_top_left conditioning; the model may be told what the image
/// was before it was fitted to the bucket).
/// </summary>
public sealed record SizedBatch(SizeBucket Size, Tensor Images, int[] Indices, (int Height, int Width)[] OriginalSizes,
    (int Top, int Left)[] Crops);

/// <summary>
/// Multi-resolution training data (section 10.5.1; NovelAI's and SDXL's aspect-ratio buckets): each image goes to
/// the bucket whose aspect ratio is nearest its own (|log(w/h) − log(W/H)|), is resized keeping its aspect ratio
/// until it covers the bucket, and centre-cropped to it; batches are drawn within one bucket, so a batch never
/// mixes sizes, and the original size is recorded.
/// </summary>
public static class SizeBuckets
{
    /// <summary>
    /// The bucket nearest an image's aspect ratio; among buckets of the same ratio (28×28 and 56×56), the one nearest
    /// its area (|log(h·w) − log(H·W)|), so that a multi-resolution set keeps small and large images apart (ties:
    /// the first listed).
    /// </summary>
    public static SizeBucket Nearest(IReadOnlyList<SizeBucket> buckets, int height, int width)
    {
        if (buckets.Count == 0) throw new ArgumentException("give at least one bucket", nameof(buckets));
        if (height < 1 || width < 1)
            throw new ArgumentOutOfRangeException(nameof(height), $"{height}×{width}", "image sides must be positive");
        double ratio = Math.Log((double)width / height), area = Math.Log((double)width * height);
        double RatioGap(SizeBucket b) => Math.Abs(Math.Log(b.AspectRatio) - ratio);
        double best = buckets.Min(RatioGap);
        return buckets.Where(b => RatioGap(b) <= best + 1e-12)
            .MinBy(b => Math.Abs(Math.Log((double)b.Height * b.Width) - area))!;
    }

    /// <summary>
    /// An image [C, H, W] fitted to a bucket: scaled by s = max(Hb/H, Wb/W) (bilinear, aspect ratio kept, the
    /// bucket covered), then the centre Hb × Wb cut out. Returns the crop and its top-left offset in the scaled
    /// image.
    /// </summary>
    public static (Tensor image, int top, int left) ResizeAndCrop(Tensor image, SizeBucket bucket)
    {
        if (image.dim() != 3)
            throw new ArgumentException($"image must be [C, H, W], got [{string.Join(", ", image.shape)}]",
                nameof(image));
        if (bucket.Height < 1 || bucket.Width < 1)
            throw new ArgumentException($"bucket {bucket} must have positive sides", nameof(bucket));
        long h = image.shape[1], w = image.shape[2];
        double scale = Math.Max((double)bucket.Height / h, (double)bucket.Width / w);
        long sh = Math.Max(bucket.Height, (long)Math.Round(h * scale)),
            sw = Math.Max(bucket.Width, (long)Math.Round(w * scale));
        using var _ = no_grad();
        var scaled = sh == h && sw == w ? image
            : nn.functional.interpolate(image.unsqueeze(0), size: [sh, sw], mode: InterpolationMode.Bilinear,
                align_corners: false)[0];                                                    // [C, sh, sw]
        int top = (int)(sh - bucket.Height) / 2, left = (int)(sw - bucket.Width) / 2;
        return (scaled.narrow(1, top, bucket.Height).narrow(2, left, bucket.Width), top, left);
    }

    /// <summary>
    /// Images of any sizes ([C, H, W] each) → batches of at most <paramref name="batchSize"/>, each from one bucket:
    /// images are assigned to their nearest bucket, shuffled within it (seeded), cut into batches, and the batches
    /// shuffled (seeded) so that training sees the sizes interleaved. With <paramref name="dropLast"/> a bucket's
    /// short last batch is left out.
    /// </summary>
    public static IReadOnlyList<SizedBatch> Batches(IReadOnlyList<Tensor> images, IReadOnlyList<SizeBucket> buckets,
        int batchSize, int seed = 0, bool dropLast = false)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "must be ≥ 1");
        var rng = new Random(seed);
        var members = images.Select((image, i) =>
        {
            if (image.dim() != 3)
                throw new ArgumentException($"image {i} must be [C, H, W], got [{string.Join(", ", image.shape)}]",
                    nameof(images));
            return (i, bucket: Nearest(buckets, (int)image.shape[1], (int)image.shape[2]));
        }).GroupBy(m => m.bucket);
        var batches = new List<SizedBatch>();
        foreach (var group in members)
        {
            var indices = group.Select(m => m.i).OrderBy(_ => rng.Next()).ToArray();
            for (int start = 0; start < indices.Length; start += batchSize)
            {
                var chunk = indices.Skip(start).Take(batchSize).ToArray();
                if (dropLast && chunk.Length < batchSize) break;
                var fitted = chunk.Select(i => ResizeAndCrop(images[i], group.Key)).ToArray();
                batches.Add(new SizedBatch(group.Key, stack(fitted.Select(f => f.image).ToArray()), chunk,
                    chunk.Select(i => ((int)images[i].shape[1], (int)images[i].shape[2])).ToArray(),
                    fitted.Select(f => (f.top, f.left)).ToArray()));                  // images [B, C, Hb, Wb]
            }
        }
        return batches.OrderBy(_ => rng.Next()).ToList();
    }
}
