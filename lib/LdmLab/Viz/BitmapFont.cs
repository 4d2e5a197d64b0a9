using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace LdmLab.Viz;

/// <summary>
/// The fixed-cell grey-level font LdmLab draws labels with (DejaVu Sans Mono 11 px, rasterised by
/// scripts/make_bitmap_font.py): ImageSharp 2.1 cannot draw text without ImageSharp.Drawing. Covers printable ASCII
/// and the Greek letters and symbols the notebooks' labels use; a combining mark (x̂) is drawn over the previous cell;
/// any other character is drawn as '?'.
/// </summary>
public static partial class BitmapFont
{
    static bool IsCombining(char c) => char.GetUnicodeCategory(c) == System.Globalization.UnicodeCategory.NonSpacingMark;

    /// <summary>Width in pixels of <paramref name="text"/> on one line.</summary>
    public static int Measure(string text) => text.Count(c => !IsCombining(c)) * CellWidth;

    /// <summary>Draws <paramref name="text"/> with its top-left corner at (x, y), blending <paramref name="ink"/> over
    /// the image by each pixel's coverage; pixels outside the image are skipped.</summary>
    public static void Draw(Image<Rgb24> image, int x, int y, string text, Rgb24 ink)
    {
        int cell = -1;
        foreach (var ch in text)
        {
            if (!IsCombining(ch)) cell++;
            var glyph = Glyphs.TryGetValue(ch, out var g) ? g : Glyphs['?'];
            int ox = x + Math.Max(cell, 0) * CellWidth;
            for (int row = 0; row < CellHeight; row++)
                for (int col = 0; col < CellWidth; col++)
                {
                    double alpha = Coverage(glyph[row * CellWidth + col]) / 15.0;
                    int px = ox + col, py = y + row;
                    if (alpha == 0 || px < 0 || py < 0 || px >= image.Width || py >= image.Height) continue;
                    var bg = image[px, py];
                    image[px, py] = new Rgb24(Blend(bg.R, ink.R, alpha), Blend(bg.G, ink.G, alpha), Blend(bg.B, ink.B, alpha));
                }
        }
    }

    static int Coverage(char hex) => hex <= '9' ? hex - '0' : hex - 'a' + 10;

    static byte Blend(byte background, byte ink, double alpha) => (byte)Math.Round(background + (ink - background) * alpha);
}
