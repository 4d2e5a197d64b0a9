using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using SixLabors.ImageSharp.Processing;
using LdmLab.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Data;

/// <summary>Where in a photo <see cref="ImageFolder.RandomCrops"/> may cut.</summary>
public enum CropRegion
{
    /// <summary>Anywhere.</summary>
    Whole,
    /// <summary>Wholly left of the held-out strip.</summary>
    Training,
    /// <summary>Inside the held-out strip (the rightmost quarter).</summary>
    HeldOut,
}

/// <summary>
/// Real photographs from a folder (default: Debian's mate-backgrounds), as N×N RGB crops in [-1, 1].
/// Each photo is first scaled so that its shorter side is <see cref="ShortSide"/> pixels, then cropped.
/// </summary>
public sealed class ImageFolder
{
    public static readonly string[] DebianPhotoDirectories = ["/usr/share/backgrounds/mate/nature", "/usr/share/backgrounds"];
    public static readonly string[] Extensions = [".jpg", ".jpeg", ".png", ".webp", ".bmp"];

    public IReadOnlyList<string> Files { get; }
    public int ShortSide { get; }
    readonly Dictionary<string, Image<Rgb24>> _cache = new();

    /// <summary>The photo folder of the run: <see cref="RunSettings.PhotoDir"/> (LDMLAB_PHOTOS), else the first
    /// Debian one that exists; null when none does.</summary>
    public static string? DefaultDirectory() =>
        Lab.Settings.PhotoDir is { Length: > 0 } d ? d : DebianPhotoDirectories.FirstOrDefault(Directory.Exists);

    public ImageFolder(string? directory = null, int shortSide = 256)
    {
        directory ??= DefaultDirectory()
            ?? throw new DirectoryNotFoundException("No photo folder given and none of the Debian ones exists (apt-get install mate-backgrounds).");
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"{directory}: photo folder not found.");
        if (shortSide < 8) throw new ArgumentOutOfRangeException(nameof(shortSide), shortSide, "shortSide must be ≥ 8");
        Files = Directory.EnumerateFiles(directory, "*", SearchOption.AllDirectories)
            .Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant())).Order(StringComparer.Ordinal).ToList();
        if (Files.Count == 0) throw new DatasetException(directory, "no images (.jpg/.png/.webp/.bmp) in this folder");
        ShortSide = shortSide;
    }

    /// <summary>The largest image decoded (width × height): bounds the memory a corrupt or hostile header can claim.</summary>
    public const long MaxPixels = 64_000_000;

    /// <summary>The photo scaled to the short side (cached); a file that is not an image gives a DatasetException.</summary>
    public Image<Rgb24> Photo(int index)
    {
        var path = Files[index];
        if (_cache.TryGetValue(path, out var img)) return img;
        try
        {
            // the header alone first: a file that claims a huge canvas is refused before any pixel buffer exists
            var info = Image.Identify(path) ?? throw new UnknownImageFormatException("unknown image format");
            if (info.Width < 1 || info.Height < 1) throw new DatasetException(path, $"{info.Width}×{info.Height} pixels: an empty image");
            if ((long)info.Width * info.Height > MaxPixels)
                throw new DatasetException(path, $"{info.Width}×{info.Height} pixels is more than the {MaxPixels / 1_000_000} megapixels " +
                                                 "LdmLab decodes");
            img = Image.Load<Rgb24>(path);
        }
        catch (Exception e) when (e is ImageFormatException or NotSupportedException
                                      or SixLabors.ImageSharp.Memory.InvalidMemoryOperationException)
        {
            throw new DatasetException(path, "not a readable image: " + e.Message, e);
        }
        catch (Exception e) when (e is NullReferenceException or ArgumentException or IndexOutOfRangeException
                                      or InvalidOperationException or OverflowException or ArithmeticException)
        {
            // ImageSharp 2.1's decoders answer some corrupt files with these instead of an image-format error
            throw new DatasetException(path, $"not a readable image (the decoder failed: {e.GetType().Name}: {e.Message})", e);
        }
        double s = (double)ShortSide / Math.Min(img.Width, img.Height);
        img.Mutate(c => c.Resize(Math.Max(1, (int)Math.Round(img.Width * s)), Math.Max(1, (int)Math.Round(img.Height * s))));
        return _cache[path] = img;
    }

    /// <summary>
    /// <paramref name="count"/> random size×size crops from random photos (all, or only those in
    /// <paramref name="photos"/>), from the whole photo or from one side of its held-out split (see
    /// <see cref="HeldOutWidth"/>): [count,3,size,size].
    /// </summary>
    public Tensor RandomCrops(int count, int size, Random rng, IReadOnlyList<int>? photos = null,
        CropRegion region = CropRegion.Whole)
    {
        photos ??= Enumerable.Range(0, Files.Count).ToList();
        if (photos.Count == 0 || photos.Any(p => p < 0 || p >= Files.Count))
            throw new ArgumentOutOfRangeException(nameof(photos), $"photo indices must be in 0..{Files.Count - 1}");
        if (size > ShortSide) throw new ArgumentOutOfRangeException(nameof(size), size, $"crop larger than the scaled short side {ShortSide}");
        var crops = new List<Tensor>();
        using var scope = NewDisposeScope();
        for (int i = 0; i < count; i++)
        {
            int photo = photos[rng.Next(photos.Count)];
            var img = Photo(photo);
            // the columns a crop may start at: all, left of the held-out strip, or inside it
            int strip = HeldOutWidth(img.Width, size);
            var (first, last) = region switch
            {
                CropRegion.Training => (0, img.Width - strip - size),
                CropRegion.HeldOut => (img.Width - strip, img.Width - size),
                _ => (0, img.Width - size),
            };
            if (last < first)
                throw new DatasetException(Files[photo], $"{img.Width}×{img.Height} after scaling is too narrow for " +
                    $"{size}-pixel crops on both sides of a {strip}-pixel held-out strip");
            int x = first + rng.Next(last - first + 1), y = rng.Next(img.Height - size + 1);
            using var crop = img.Clone(c => c.Crop(new Rectangle(x, y, size, size)));
            crops.Add(ImageTensors.FromImage(crop));
        }
        return stack(crops).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The held-out strip of a photo for crops of <paramref name="size"/>: its rightmost quarter, at least one crop
    /// wide. Training crops lie wholly left of it, so no held-out pixel is ever trained on.
    /// </summary>
    public static int HeldOutWidth(int width, int size) => Math.Max(size, width / 4);

    /// <summary>The centre size×size crop of every photo: [Files.Count,3,size,size].</summary>
    public Tensor CenterCrops(int size)
    {
        using var scope = NewDisposeScope();
        var crops = Enumerable.Range(0, Files.Count).Select(i =>
        {
            var img = Photo(i);
            using var crop = img.Clone(c => c.Crop(new Rectangle((img.Width - size) / 2, (img.Height - size) / 2, size, size)));
            return ImageTensors.FromImage(crop);
        }).ToList();
        return stack(crops).MoveToOuterDisposeScope();
    }
}
