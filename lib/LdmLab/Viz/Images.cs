using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Viz;

/// <summary>
/// A PNG image (e.g. a grid of samples). Notebooks get it as text/html — the image with its caption under it, so the
/// caption is kept in the saved notebook and in the report — and as image/png for tools that want the picture alone.
/// </summary>
[TypeFormatterSource(typeof(HtmlFormatterSource), PreferredMimeTypes = ["text/html", "image/png"])]
public sealed class PngImage(byte[] png, int width, int height, string? caption = null) : IPngContent, IHtmlContent
{
    public int Width { get; } = width;
    public int Height { get; } = height;
    public string? Caption { get; } = caption;
    public byte[] ToPng() => png;
    public string ToHtml() =>
        $"<figure style=\"margin:0\"><img src=\"data:image/png;base64,{Convert.ToBase64String(png)}\" width=\"{Width}\" height=\"{Height}\" style=\"image-rendering:pixelated\"/>" +
        (Caption is null ? "" : $"<figcaption>{System.Net.WebUtility.HtmlEncode(Caption)}</figcaption>") + "</figure>";

    /// <summary>Writes the PNG atomically (temp file, then rename).</summary>
    public void Save(string path) => Data.AtomicFile.WriteAllBytes(path, png);
    public override string ToString() => $"[png {Width}×{Height}{(Caption is null ? "" : ": " + Caption)}]";
}

/// <summary>Tensor ⇄ image helpers. Tensors are NCHW / CHW with values in [lo, hi] (default [-1, 1]).</summary>
public static class Images
{
    /// <summary>
    /// Tiles a batch [N,C,H,W] (C = 1 or 3) into one PNG, <paramref name="nrow"/> images per row. Row labels are drawn
    /// left of each row, column labels above each column (cut with '…' where wider than the column), so the figure
    /// reads without the code that made it.
    /// </summary>
    public static PngImage Grid(Tensor batch, int nrow = 8, int padding = 2, int scale = 1, double lo = -1, double hi = 1, string? caption = null,
        IReadOnlyList<string>? rowLabels = null, IReadOnlyList<string>? columnLabels = null)
    {
        if (batch.dim() == 3) batch = batch.unsqueeze(0);
        if (batch.dim() != 4 || (batch.shape[1] != 1 && batch.shape[1] != 3))
            throw new ArgumentException($"Grid expects [N,1|3,H,W], got [{string.Join(",", batch.shape)}].", nameof(batch));
        if (nrow < 1 || scale < 1 || padding < 0) throw new ArgumentOutOfRangeException(nameof(nrow), "nrow and scale must be ≥ 1, padding ≥ 0");
        using var scope = NewDisposeScope();
        var x = ((batch.detach().to(CPU).to_type(ScalarType.Float32) - lo) / (hi - lo)).clamp(0, 1);
        if (x.shape[1] == 1) x = x.expand(-1, 3, -1, -1);
        if (scale > 1) x = nn.functional.interpolate(x, scale_factor: [scale, scale], mode: InterpolationMode.Nearest);
        int n = (int)x.shape[0], h = (int)x.shape[2], w = (int)x.shape[3];
        int cols = Math.Min(nrow, n), rows = (n + cols - 1) / cols;
        if (rowLabels is not null && rowLabels.Count != rows)
            throw new ArgumentException($"{rowLabels.Count} row labels for {rows} rows", nameof(rowLabels));
        if (columnLabels is not null && columnLabels.Count != cols)
            throw new ArgumentException($"{columnLabels.Count} column labels for {cols} columns", nameof(columnLabels));
        const int labelGap = 4;
        int left = rowLabels is null ? 0 : rowLabels.Max(BitmapFont.Measure) + labelGap;
        int top = columnLabels is null ? 0 : BitmapFont.CellHeight + labelGap / 2;
        int gw = left + cols * w + (cols + 1) * padding, gh = top + rows * h + (rows + 1) * padding;
        var bytes = (x * 255).round().to_type(ScalarType.Byte).permute(0, 2, 3, 1).contiguous().data<byte>().ToArray(); // N,H,W,3
        using var img = new Image<Rgb24>(gw, gh, new Rgb24(255, 255, 255));
        for (int i = 0; i < n; i++)
        {
            int ox = left + padding + (i % cols) * (w + padding), oy = top + padding + (i / cols) * (h + padding);
            for (int yy = 0; yy < h; yy++)
                for (int xx = 0; xx < w; xx++)
                {
                    int o = ((i * h + yy) * w + xx) * 3;
                    img[ox + xx, oy + yy] = new Rgb24(bytes[o], bytes[o + 1], bytes[o + 2]);
                }
        }
        var ink = new Rgb24(32, 32, 32);
        for (int r = 0; rowLabels is not null && r < rows; r++)
            BitmapFont.Draw(img, left - labelGap - BitmapFont.Measure(rowLabels[r]),
                top + padding + r * (h + padding) + (h - BitmapFont.CellHeight) / 2, rowLabels[r], ink);
        for (int c = 0; columnLabels is not null && c < cols; c++)
        {
            var label = Fit(columnLabels[c], w + padding);
            BitmapFont.Draw(img, left + padding + c * (w + padding) + (w - BitmapFont.Measure(label)) / 2, 1, label, ink);
        }
        using var ms = new MemoryStream();
        img.SaveAsPng(ms);
        return new PngImage(ms.ToArray(), gw, gh, caption);
    }

    /// <summary>
    /// Heat maps over grey images, for attention maps: each map [N, H, W] is scaled to [0, 1] by its own range and
    /// drawn in a black → red → yellow ramp, blended half and half with the image [N, 1, H, W] in [−1, 1]. Returns
    /// [N, 3, H, W] in [−1, 1] for <see cref="Grid"/>. With no images, the heat maps alone.
    /// </summary>
    public static Tensor Overlay(Tensor? greyImages, Tensor maps, double mix = 0.5)
    {
        if (maps.dim() != 3) throw new ArgumentException($"maps must be [N, H, W], got [{string.Join(",", maps.shape)}]", nameof(maps));
        var flat = maps.detach().to(CPU).to_type(ScalarType.Float32).flatten(1);
        var low = flat.min(1, keepdim: true).values;
        var high = flat.max(1, keepdim: true).values;
        var heat = ((flat - low) / (high - low).clamp_min(1e-12)).reshape(maps.shape).unsqueeze(1);   // [N, 1, H, W]
        var ramp = cat([(heat * 2).clamp(0, 1), (heat * 2 - 1).clamp(0, 1), zeros_like(heat)], 1);    // red, then yellow
        if (greyImages is null) return ramp * 2 - 1;
        var grey = ((greyImages.detach().to(CPU).to_type(ScalarType.Float32) + 1) / 2).expand(-1, 3, -1, -1);
        return ((1 - mix) * grey + mix * ramp) * 2 - 1;
    }

    /// <summary><paramref name="label"/>, cut to fit <paramref name="width"/> pixels with a trailing '…'.</summary>
    static string Fit(string label, int width)
    {
        if (BitmapFont.Measure(label) <= width) return label;
        int keep = Math.Max(0, width / BitmapFont.CellWidth - 1);
        return label[..Math.Min(keep, label.Length)] + "…";
    }

    /// <summary>An RGB image as a [3,H,W] float tensor in [-1, 1] (<see cref="Data.ImageTensors.FromImage"/>).</summary>
    public static Tensor ToTensor(Image<Rgb24> image) => Data.ImageTensors.FromImage(image);

    /// <summary>A [3,H,W] or [1,H,W] tensor in [lo, hi] as an RGB image.</summary>
    public static Image<Rgb24> ToImage(Tensor chw, double lo = -1, double hi = 1)
    {
        if (chw.dim() != 3 || (chw.shape[0] != 1 && chw.shape[0] != 3))
            throw new ArgumentException($"ToImage expects [1|3,H,W], got [{string.Join(",", chw.shape)}].", nameof(chw));
        using var scope = NewDisposeScope();
        var x = ((chw.detach().to(CPU).to_type(ScalarType.Float32) - lo) / (hi - lo)).clamp(0, 1);
        if (x.shape[0] == 1) x = x.expand(3, -1, -1);
        var bytes = (x * 255).round().to_type(ScalarType.Byte).permute(1, 2, 0).contiguous().data<byte>().ToArray();
        return Image.LoadPixelData<Rgb24>(bytes, (int)chw.shape[2], (int)chw.shape[1]);
    }
}
