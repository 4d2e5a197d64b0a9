using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static TorchSharp.torch;

namespace LdmLab.Data;

/// <summary>Pictures as the models see them.</summary>
public static class ImageTensors
{
    /// <summary>An RGB image as a [3, H, W] float tensor in [−1, 1]: x = byte / 127.5 − 1.</summary>
    public static Tensor FromImage(Image<Rgb24> image)
    {
        int w = image.Width, h = image.Height;
        var buf = new byte[w * h * 3];
        image.CopyPixelDataTo(buf);
        return tensor(buf, [h, w, 3], ScalarType.Byte).permute(2, 0, 1)                       // [3, H, W]
            .to_type(ScalarType.Float32).div_(127.5).sub_(1.0);
    }
}
