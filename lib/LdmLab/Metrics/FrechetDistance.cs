using MathNet.Numerics.LinearAlgebra;

namespace LdmLab.Metrics;

/// <summary>
/// Fréchet distance between Gaussians fitted to two feature sets (the FID formula):
/// d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^{½} Σ₂ Σ₁^{½})^{½}), computed with symmetric eigendecompositions (MathNet).
/// </summary>
public static class FrechetDistance
{
    public static double Compute(double[,] features1, double[,] features2)
    {
        var (m1, s1) = MeanCov(features1);
        var (m2, s2) = MeanCov(features2);
        return FromStatistics(m1, s1, m2, s2);
    }

    /// <summary>The same for feature tensors [N, D] (e.g. ResNet18 or classifier features).</summary>
    public static double Compute(TorchSharp.torch.Tensor features1, TorchSharp.torch.Tensor features2) => Compute(ToArray(features1), ToArray(features2));

    public static double[,] ToArray(TorchSharp.torch.Tensor f)
    {
        if (f.dim() != 2) throw new ArgumentException($"features must be [N, D], got [{string.Join(",", f.shape)}]");
        var data = f.detach().cpu().to_type(TorchSharp.torch.ScalarType.Float64).contiguous().data<double>().ToArray();
        var a = new double[f.shape[0], f.shape[1]];
        Buffer.BlockCopy(data, 0, a, 0, data.Length * sizeof(double));
        return a;
    }

    public static double FromStatistics(Vector<double> mu1, Matrix<double> sigma1, Vector<double> mu2, Matrix<double> sigma2)
    {
        var sqrt1 = SqrtPsd(sigma1);
        var inner = SqrtPsd(Symmetrise(sqrt1 * sigma2 * sqrt1));
        var diff = mu1 - mu2;
        return Math.Max(0, diff.DotProduct(diff) + sigma1.Trace() + sigma2.Trace() - 2 * inner.Trace());
    }

    public static (Vector<double> mean, Matrix<double> cov) MeanCov(double[,] x)
    {
        int n = x.GetLength(0), d = x.GetLength(1);
        if (n < 2) throw new ArgumentException("need at least 2 samples", nameof(x));
        var m = Matrix<double>.Build.DenseOfArray(x);
        var mean = m.ColumnSums() / n;
        var centered = m - Matrix<double>.Build.Dense(n, d, (i, j) => mean[j]);
        return (mean, centered.TransposeThisAndMultiply(centered) / (n - 1));
    }

    static Matrix<double> Symmetrise(Matrix<double> a) => (a + a.Transpose()) / 2;

    /// <summary>The PSD square root V diag(√max(λ, 0)) Vᵀ.</summary>
    static Matrix<double> SqrtPsd(Matrix<double> a)
    {
        var evd = Symmetrise(a).Evd(Symmetricity.Symmetric);
        var d = Matrix<double>.Build.DiagonalOfDiagonalVector(evd.EigenValues.Map(c => Math.Sqrt(Math.Max(c.Real, 0))));
        return evd.EigenVectors * d * evd.EigenVectors.Transpose();
    }
}
