using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Metrics;

/// <summary>Reconstruction metrics on images in [-1, 1] (data range L = 2), per image.</summary>
public static class ImageQuality
{
    /// <summary>PSNR = 10·log10(L² / MSE) in dB, per image [N] (∞ for identical images).</summary>
    public static Tensor Psnr(Tensor x, Tensor y, double dataRange = 2.0)
    {
        CheckShapes(x, y);
        var mse = (x - y).pow(2).flatten(1).mean([1]);
        return 10 * (dataRange * dataRange / mse).log10();
    }

    /// <summary>
    /// SSIM (Wang et al. 2004) with an 11×11 Gaussian window (σ = 1.5), K₁ = 0.01, K₂ = 0.03:
    /// SSIM = (2μₓμᵧ + C₁)(2σₓᵧ + C₂) / ((μₓ² + μᵧ² + C₁)(σₓ² + σᵧ² + C₂)), averaged over valid positions and channels; per image [N].
    /// </summary>
    public static Tensor Ssim(Tensor x, Tensor y, double dataRange = 2.0, int window = 11, double sigma = 1.5)
    {
        CheckShapes(x, y);
        if (x.shape[2] < window || x.shape[3] < window) window = (int)Math.Min(x.shape[2], x.shape[3]) | 1;
        long c = x.shape[1];
        var g = arange(window, dtype: ScalarType.Float32, device: x.device) - (window - 1) / 2.0;
        g = (-(g * g) / (2 * sigma * sigma)).exp();
        g = g / g.sum();
        var kernel = g.unsqueeze(1).matmul(g.unsqueeze(0)).expand(c, 1, window, window).contiguous().to_type(x.dtype);
        Tensor Blur(Tensor t) => nn.functional.conv2d(t, kernel, groups: c);
        double c1 = Math.Pow(0.01 * dataRange, 2), c2 = Math.Pow(0.03 * dataRange, 2);
        var mx = Blur(x); var my = Blur(y);
        var sxx = Blur(x * x) - mx * mx; var syy = Blur(y * y) - my * my; var sxy = Blur(x * y) - mx * my;
        var map = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx * mx + my * my + c1) * (sxx + syy + c2));
        return map.flatten(1).mean([1]);
    }

    static void CheckShapes(Tensor x, Tensor y)
    {
        if (!x.shape.SequenceEqual(y.shape) || x.dim() != 4)
            throw new ArgumentException($"expected two [N,C,H,W] batches of equal shape, got [{string.Join(",", x.shape)}] and [{string.Join(",", y.shape)}]");
    }
}
