using System.IO.Compression;
using System.Net;
using LdmLab.Data;
using LdmLab.Runtime;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace LdmLab.Tests;

public class FashionMnistTests
{
    static string Debian => FashionMnist.DebianDirectory;

    [Fact]
    public void Loads_the_debian_package_with_verified_content()
    {
        TorchRuntime.Setup();
        Assert.True(File.Exists(Path.Combine(Debian, "t10k-images-idx3-ubyte.gz")), "install dataset-fashion-mnist (./lab setup does)");
        using var test = FashionMnist.Load(Split.Test, Debian, verify: true);
        Assert.Equal([10000L, 1, 28, 28], test.Images.shape);
        Assert.Equal(-1f, test.Images.min().item<float>());
        Assert.Equal(1f, test.Images.max().item<float>());
        // the test split is balanced: 1000 images per class
        for (int c = 0; c < 10; c++) Assert.Equal(1000L, test.Labels.eq(c).sum().item<long>());
    }

    static string CopyTestSplit(string dir)
    {
        foreach (var f in new[] { "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz" })
            File.Copy(Path.Combine(Debian, f), Path.Combine(dir, f));
        return dir;
    }

    [Fact]
    public void Truncated_gzip_is_rejected_naming_the_file()
    {
        var dir = CopyTestSplit(TestPaths.TempDir("trunc"));
        var path = Path.Combine(dir, "t10k-images-idx3-ubyte.gz");
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        var e = Assert.ThrowsAny<DatasetException>(() => FashionMnist.Load(Split.Test, dir));
        Assert.Equal(path, e.FilePath);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Corrupt_gzip_is_rejected_naming_the_file()
    {
        var dir = CopyTestSplit(TestPaths.TempDir("corrupt"));
        var path = Path.Combine(dir, "t10k-labels-idx1-ubyte.gz");
        var bytes = File.ReadAllBytes(path);
        for (int i = 20; i < bytes.Length - 8; i += 7) bytes[i] ^= 0x5a;
        File.WriteAllBytes(path, bytes);
        var e = Assert.ThrowsAny<DatasetException>(() => FashionMnist.Load(Split.Test, dir));
        Assert.Equal(path, e.FilePath);
    }

    [Fact]
    public void Wrong_magic_and_short_payload_are_rejected()
    {
        var dir = TestPaths.TempDir("magic");
        var path = Path.Combine(dir, "x.idx");
        File.WriteAllBytes(path, [0x50, 0x4b, 0x03, 0x04, 0, 0, 0, 0]);
        Assert.Contains("wrong magic", Assert.Throws<DatasetException>(() => Idx.Read(path, 1)).Message);
        File.WriteAllBytes(path, [0, 0, 0x08, 1, 0, 0, 0, 5, 1, 2, 3]);
        Assert.Contains("truncated", Assert.Throws<DatasetException>(() => Idx.Read(path, 1)).Message);
        File.WriteAllBytes(path, [0, 0, 0x0D, 1, 0, 0, 0, 1, 1]);
        Assert.Contains("not unsigned byte", Assert.Throws<DatasetException>(() => Idx.Read(path, 1)).Message);
        Assert.Contains("expected 3", Assert.Throws<DatasetException>(() => Idx.Parse([0, 0, 8, 1, 0, 0, 0, 1, 9], 3, path)).Message);
        Assert.Contains("not found", Assert.Throws<DatasetException>(() => FashionMnist.Load(Split.Test, dir)).Message);
    }

    [Fact]
    public void Valid_gzip_of_other_content_fails_the_checksum()
    {
        var dir = CopyTestSplit(TestPaths.TempDir("sha"));
        var path = Path.Combine(dir, "t10k-labels-idx1-ubyte.gz");
        var raw = Gunzip(File.ReadAllBytes(path));
        raw[^1] = (byte)((raw[^1] + 1) % 10);  // still a valid IDX with labels 0..9
        File.WriteAllBytes(path, Gzip(raw));
        using (FashionMnist.Load(Split.Test, dir)) { }  // format is fine ...
        var e = Assert.Throws<ChecksumMismatchException>(() => FashionMnist.Load(Split.Test, dir, verify: true)); // ... content is not
        Assert.Equal(path, e.FilePath);
    }

    internal static byte[] Gunzip(byte[] gz)
    {
        using var s = new GZipStream(new MemoryStream(gz), CompressionMode.Decompress);
        using var ms = new MemoryStream();
        s.CopyTo(ms);
        return ms.ToArray();
    }

    internal static byte[] Gzip(byte[] raw)
    {
        using var ms = new MemoryStream();
        using (var s = new GZipStream(ms, CompressionLevel.Fastest)) s.Write(raw);
        return ms.ToArray();
    }
}

/// <summary>The download path against a local HTTP server on 127.0.0.1 serving good, truncated and corrupted files.</summary>
public class FashionMnistDownloadTests
{
    sealed class LocalServer : IDisposable
    {
        readonly HttpListener _listener;
        readonly Dictionary<string, byte[]> _files;
        readonly Func<string, byte[], byte[]> _mangle;
        public Uri Base { get; }

        public LocalServer(Dictionary<string, byte[]> files, Func<string, byte[], byte[]> mangle)
        {
            _files = files; _mangle = mangle;
            (_listener, Base) = Loopback.Listen();
            _ = Task.Run(Serve);
        }

        async Task Serve()
        {
            while (_listener.IsListening)
            {
                HttpListenerContext ctx;
                try { ctx = await _listener.GetContextAsync(); } catch { return; }
                var name = ctx.Request.Url!.AbsolutePath.TrimStart('/');
                if (!_files.TryGetValue(name, out var body)) { ctx.Response.StatusCode = 404; ctx.Response.Close(); continue; }
                var sent = _mangle(name, body);
                ctx.Response.ContentLength64 = sent.Length;
                await ctx.Response.OutputStream.WriteAsync(sent);
                ctx.Response.Close();
            }
        }

        public void Dispose() { _listener.Stop(); _listener.Close(); }
    }

    static Dictionary<string, byte[]> OfficialFiles() =>
        FashionMnist.ContentSha256.Keys.ToDictionary(k => k, k => File.ReadAllBytes(Path.Combine(FashionMnist.DebianDirectory, k)));

    [Fact]
    public async Task Good_files_download_and_load()
    {
        using var server = new LocalServer(OfficialFiles(), (_, b) => b);
        var dir = TestPaths.TempDir("dl-good");
        var written = await FashionMnist.DownloadAsync(dir, server.Base);
        Assert.Equal(4, written.Count);
        TorchRuntime.Setup();
        using var test = FashionMnist.Load(Split.Test, dir, verify: true);
        Assert.Equal(10000L, test.Count);
        Assert.Empty(await FashionMnist.DownloadAsync(dir, server.Base));  // already there and valid: nothing fetched
        Assert.Empty(Directory.GetFiles(dir, "*.download"));
    }

    [Fact]
    public async Task Truncated_download_is_rejected_and_not_kept()
    {
        using var server = new LocalServer(OfficialFiles(), (name, b) => name.StartsWith("t10k-images") ? b[..(b.Length / 3)] : b);
        var dir = TestPaths.TempDir("dl-trunc");
        var e = await Assert.ThrowsAnyAsync<DatasetException>(() => FashionMnist.DownloadAsync(dir, server.Base));
        Assert.Contains("t10k-images-idx3-ubyte.gz", e.FilePath);
        Assert.False(File.Exists(Path.Combine(dir, "t10k-images-idx3-ubyte.gz")));
        Assert.Empty(Directory.GetFiles(dir, "*.download"));
    }

    [Fact]
    public async Task Corrupted_download_fails_its_checksum_and_is_not_kept()
    {
        using var server = new LocalServer(OfficialFiles(), (name, b) =>
        {
            if (!name.StartsWith("t10k-labels")) return b;
            var raw = FashionMnistTests.Gunzip(b);
            raw[100] = (byte)((raw[100] + 3) % 10);
            return FashionMnistTests.Gzip(raw);
        });
        var dir = TestPaths.TempDir("dl-bad");
        var e = await Assert.ThrowsAsync<ChecksumMismatchException>(() => FashionMnist.DownloadAsync(dir, server.Base));
        Assert.Contains("t10k-labels-idx1-ubyte.gz", e.FilePath);
        Assert.False(File.Exists(Path.Combine(dir, "t10k-labels-idx1-ubyte.gz")));
    }
}

public class ImageTests
{
    static string MakePhotos(int count)
    {
        var dir = TestPaths.TempDir("photos");
        for (int i = 0; i < count; i++)
        {
            using var img = new Image<Rgb24>(120 + 10 * i, 90);
            for (int y = 0; y < img.Height; y++)
                for (int x = 0; x < img.Width; x++)
                    img[x, y] = new Rgb24((byte)(x * 2), (byte)(y * 2), (byte)(40 * i));
            img.SaveAsPng(Path.Combine(dir, $"p{i}.png"));
        }
        return dir;
    }

    [Fact]
    public void Random_and_center_crops_are_rgb_in_range()
    {
        TorchRuntime.Setup();
        var folder = new Data.ImageFolder(MakePhotos(3), shortSide: 64);
        var crops = folder.RandomCrops(5, 32, new Random(1));
        Assert.Equal([5L, 3, 32, 32], crops.shape);
        Assert.True(crops.min().item<float>() >= -1f && crops.max().item<float>() <= 1f);
        Assert.Equal([3L, 3, 64, 64], folder.CenterCrops(64).shape);
    }

    [Fact]
    public void Debian_photos_give_crops()
    {
        TorchRuntime.Setup();
        var folder = new Data.ImageFolder(shortSide: 128);
        Assert.True(folder.Files.Count >= 5, "install mate-backgrounds (./lab setup does)");
        Assert.Equal([4L, 3, 64, 64], folder.RandomCrops(4, 64, new Random(2)).shape);
    }

    [Fact]
    public void Bad_image_and_empty_folder_are_clear_errors()
    {
        var dir = TestPaths.TempDir("badphoto");
        Assert.Throws<DatasetException>(() => new Data.ImageFolder(dir));
        var bad = Path.Combine(dir, "broken.jpg");
        File.WriteAllText(bad, "this is not a jpeg");
        var folder = new Data.ImageFolder(dir, shortSide: 32);
        var e = Assert.Throws<DatasetException>(() => folder.Photo(0));
        Assert.Equal(bad, e.FilePath);
        Assert.Throws<DirectoryNotFoundException>(() => new Data.ImageFolder(Path.Combine(dir, "nope")));
    }

    [Fact]
    public void Grid_png_holds_the_tensor_pixels()
    {
        TorchRuntime.Setup();
        var batch = TorchSharp.torch.stack([TorchSharp.torch.full(1, 4, 4, -1f), TorchSharp.torch.full(1, 4, 4, 1f)]); // black, white
        var png = Viz.Images.Grid(batch, nrow: 2, padding: 1, scale: 2);
        using var img = Image.Load<Rgb24>(png.ToPng());
        Assert.Equal((2 * 8 + 3, 8 + 2), (img.Width, img.Height));
        Assert.Equal(new Rgb24(0, 0, 0), img[1, 1]);
        Assert.Equal(new Rgb24(255, 255, 255), img[1 + 8 + 1, 1]);
        Assert.Equal(new Rgb24(255, 255, 255), img[0, 0]); // padding

        var path = Path.Combine(TestPaths.TempDir("png"), "g.png");
        png.Save(path);
        Assert.Equal(png.ToPng(), File.ReadAllBytes(path));
        var back = Viz.Images.ToTensor(Viz.Images.ToImage(batch[1]));
        Assert.True(back.eq(1f).all().item<bool>());
    }

    [Fact]
    public void Grid_draws_row_and_column_labels_beside_the_images()
    {
        TorchRuntime.Setup();
        var batch = TorchSharp.torch.full(4, 1, 16, 16, -1f);                 // four black 16×16 tiles, 2×2
        var png = Viz.Images.Grid(batch, nrow: 2, padding: 2, rowLabels: ["DDIM", "Euler a"], columnLabels: ["t=1", "t=2"]);
        using var img = Image.Load<Rgb24>(png.ToPng());
        int left = Viz.BitmapFont.Measure("Euler a") + 4, top = Viz.BitmapFont.CellHeight + 2;
        Assert.Equal((left + 2 * 16 + 3 * 2, top + 2 * 16 + 3 * 2), (img.Width, img.Height));
        Assert.Equal(new Rgb24(0, 0, 0), img[left + 2, top + 2]);               // the first tile moved by the margins
        Assert.Equal(new Rgb24(255, 255, 255), img[left + 1, top + 1]);         // its padding
        // ink in the row-label margin beside each row and in the column-label band above each column
        int Ink(int x0, int y0, int x1, int y1)
        {
            int count = 0;
            for (int y = y0; y < y1; y++) for (int x = x0; x < x1; x++) if (img[x, y].R < 128) count++;
            return count;
        }
        Assert.True(Ink(0, top, left, top + 18) > 10);
        Assert.True(Ink(0, top + 18, left, top + 36) > 10);
        Assert.True(Ink(left, 0, left + 18, top) > 5);
        Assert.True(Ink(left + 18, 0, left + 36, top) > 5);
        // "Euler a" is wider than "DDIM": right-aligned labels start further left
        Assert.True(Ink(0, top + 18, 8, top + 36) > Ink(0, top, 8, top + 18));
        Assert.Throws<ArgumentException>(() => Viz.Images.Grid(batch, nrow: 2, rowLabels: ["one"]));
        Assert.Throws<ArgumentException>(() => Viz.Images.Grid(batch, nrow: 2, columnLabels: ["a", "b", "c"]));
        Assert.Equal(Viz.BitmapFont.Measure("x"), Viz.BitmapFont.Measure("x\u0302"));   // a combining mark takes no cell
    }
}
