using System.Security.Cryptography;
using LdmLab.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Data;

public enum Split { Train, Test }

/// <summary>Fashion-MNIST: 28×28 grey images in [-1, 1] as [N,1,28,28] float32, labels as int64.</summary>
public sealed class FashionMnist : IDisposable
{
    public static readonly string[] ClassNames =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>Debian's dataset-fashion-mnist package.</summary>
    public const string DebianDirectory = "/usr/share/datasets/fashion-mnist";

    /// <summary>The official source (the Zalando Research project's file host).</summary>
    public static readonly Uri OfficialSource = new("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/");

    /// <summary>
    /// SHA-256 of each file's decompressed IDX bytes. The .gz bytes differ between the official host and Debian
    /// (recompressed), the IDX content does not, so the check is on the content.
    /// </summary>
    public static readonly IReadOnlyDictionary<string, string> ContentSha256 = new Dictionary<string, string>
    {
        ["train-images-idx3-ubyte.gz"] = "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        ["train-labels-idx1-ubyte.gz"] = "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        ["t10k-images-idx3-ubyte.gz"] = "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        ["t10k-labels-idx1-ubyte.gz"] = "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    };

    public Tensor Images { get; }
    public Tensor Labels { get; }
    public Split Split { get; }
    public long Count => Images.shape[0];

    FashionMnist(Tensor images, Tensor labels, Split split) { Images = images; Labels = labels; Split = split; }

    /// <summary>Folder used when none is given: the run's <see cref="RunSettings.FashionMnistDir"/>
    /// (LDMLAB_FASHION_MNIST), else Debian's, else ~/.cache/ldmlab/fashion-mnist.</summary>
    public static string DefaultDirectory() =>
        Lab.Settings.FashionMnistDir is { Length: > 0 } d ? d
        : File.Exists(Path.Combine(DebianDirectory, "t10k-labels-idx1-ubyte.gz")) ? DebianDirectory
        : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "ldmlab", "fashion-mnist");

    static (string images, string labels) FileNames(Split split) => split == Split.Train
        ? ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
        : ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz");

    /// <summary>Loads a split (optionally only the first <paramref name="limit"/> items) from <paramref name="directory"/>.</summary>
    public static FashionMnist Load(Split split, string? directory = null, int? limit = null, bool verify = false)
    {
        directory ??= DefaultDirectory();
        var (imgName, lblName) = FileNames(split);
        string imgPath = Path.Combine(directory, imgName), lblPath = Path.Combine(directory, lblName);
        if (!File.Exists(imgPath) || !File.Exists(lblPath))
            throw new DatasetException(!File.Exists(imgPath) ? imgPath : lblPath,
                "Fashion-MNIST file not found. Install the Debian package dataset-fashion-mnist, pass a folder, or call FashionMnist.Download(folder).");
        var img = Idx.Read(imgPath, 3);
        var lbl = Idx.Read(lblPath, 1);
        if (verify) { VerifyContent(imgPath, img); VerifyContent(lblPath, lbl); }
        if (img.Shape[1] != 28 || img.Shape[2] != 28) throw new DatasetException(imgPath, $"images are {img.Shape[1]}×{img.Shape[2]}, expected 28×28");
        if (img.Count != lbl.Count) throw new DatasetException(lblPath, $"{lbl.Count} labels for {img.Count} images");
        if (lbl.Data.Any(b => b > 9)) throw new DatasetException(lblPath, "label outside 0..9");
        int n = Math.Min(img.Count, limit ?? int.MaxValue);
        var images = tensor(img.Data.AsSpan(0, n * 784).ToArray(), [n, 1, 28, 28], ScalarType.Byte).to_type(ScalarType.Float32).div_(127.5).sub_(1.0);
        var labels = tensor(lbl.Data.AsSpan(0, n).ToArray(), [n], ScalarType.Byte).to_type(ScalarType.Int64);
        return new FashionMnist(images, labels, split);
    }

    static void VerifyContent(string path, IdxArray arr)
    {
        var expected = ContentSha256[Path.GetFileName(path)];
        var actual = Convert.ToHexString(SHA256.HashData(RawContent(path))).ToLowerInvariant();
        if (actual != expected) throw new ChecksumMismatchException(path, expected, actual);
    }

    static byte[] RawContent(string path)
    {
        using var gz = new System.IO.Compression.GZipStream(File.OpenRead(path), System.IO.Compression.CompressionMode.Decompress);
        using var ms = new MemoryStream();
        gz.CopyTo(ms);
        return ms.ToArray();
    }

    /// <summary>
    /// Downloads the four files into <paramref name="directory"/> (skipping ones already there and valid), checking
    /// each one's SHA-256 before it is moved into place. A bad file never lands under its final name.
    /// </summary>
    public static async Task<IReadOnlyList<string>> DownloadAsync(string directory, Uri? source = null, HttpClient? http = null, CancellationToken ct = default)
    {
        source ??= OfficialSource;
        var ownClient = http is null;
        http ??= new HttpClient { Timeout = TimeSpan.FromMinutes(10) };
        Directory.CreateDirectory(directory);
        var written = new List<string>();
        try
        {
            foreach (var (name, sha) in ContentSha256)
            {
                var target = Path.Combine(directory, name);
                if (File.Exists(target) && ContentHashOrNull(target) == sha) continue;
                var url = new Uri(source, name);
                byte[] body;
                try
                {
                    using var resp = await http.GetAsync(url, HttpCompletionOption.ResponseHeadersRead, ct);
                    if (!resp.IsSuccessStatusCode) throw new DatasetException(url.ToString(), $"download failed: HTTP {(int)resp.StatusCode} {resp.ReasonPhrase}");
                    body = await resp.Content.ReadAsByteArrayAsync(ct);
                    if (resp.Content.Headers.ContentLength is long len && len != body.Length)
                        throw new DatasetException(url.ToString(), $"truncated download: {body.Length} of {len} bytes");
                }
                catch (HttpRequestException e) { throw new DatasetException(url.ToString(), "download failed: " + e.Message, e); }

                var tmp = target + ".download";
                await File.WriteAllBytesAsync(tmp, body, ct);
                try
                {
                    var actual = ContentHashOrNull(tmp);
                    if (actual is null) throw new DatasetException(url.ToString(), "not a valid gzip file (truncated or corrupt download)");
                    if (actual != sha) throw new ChecksumMismatchException(url.ToString(), sha, actual);
                    File.Move(tmp, target, overwrite: true);
                    written.Add(target);
                }
                finally { if (File.Exists(tmp)) File.Delete(tmp); }
            }
        }
        finally { if (ownClient) http.Dispose(); }
        return written;
    }

    static string? ContentHashOrNull(string path)
    {
        try { return Convert.ToHexString(SHA256.HashData(RawContent(path))).ToLowerInvariant(); }
        catch (Exception e) when (e is InvalidDataException or EndOfStreamException) { return null; }
    }

    /// <summary>A random batch (images, labels) drawn with <paramref name="rng"/>.</summary>
    public (Tensor images, Tensor labels) Batch(int size, Random rng)
    {
        var idx = Enumerable.Range(0, size).Select(_ => (long)rng.Next((int)Count)).ToArray();
        var t = tensor(idx);
        return (Images.index_select(0, t), Labels.index_select(0, t));
    }

    /// <summary>The same split without the items of <paramref name="labels"/> (order kept): the data a model that has
    /// never seen those classes learns from.</summary>
    public FashionMnist Without(params int[] labels)
    {
        foreach (int label in labels)
            if (label is < 0 or > 9)
                throw new ArgumentOutOfRangeException(nameof(labels), label, "a Fashion-MNIST label is 0…9");
        var keep = Labels.data<long>().Select((l, i) => (l, i)).Where(x => !labels.Contains((int)x.l))
            .Select(x => (long)x.i).ToArray();
        var index = tensor(keep);
        return new FashionMnist(Images.index_select(0, index), Labels.index_select(0, index), Split);
    }

    public void Dispose() { Images.Dispose(); Labels.Dispose(); }
}
