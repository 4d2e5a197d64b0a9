using MathNet.Numerics.LinearAlgebra;

namespace LdmLab.Viz;

/// <summary>2-D embeddings of feature vectors for scatter plots: PCA and exact t-SNE.</summary>
public static class Embedding2D
{
    /// <summary>Projection on the two leading principal components (SVD of the centred data). Returns [n, 2] and the explained variance ratios.</summary>
    public static (double[,] points, double[] explained) Pca(double[,] x)
    {
        int n = x.GetLength(0), d = x.GetLength(1);
        var m = Matrix<double>.Build.DenseOfArray(x);
        var mean = m.ColumnSums() / n;
        var c = m - Matrix<double>.Build.Dense(n, d, (i, j) => mean[j]);
        var svd = c.Svd(computeVectors: true);
        var total = svd.S.Sum(s => s * s);
        var proj = c * svd.VT.Transpose().SubMatrix(0, d, 0, 2);
        return (proj.ToArray(), [svd.S[0] * svd.S[0] / total, svd.S[1] * svd.S[1] / total]);
    }

    /// <summary>
    /// Exact t-SNE (van der Maaten &amp; Hinton 2008): Gaussian affinities with per-point bandwidth found by bisection to
    /// the target perplexity, Student-t affinities in 2-D, gradient descent on KL(P‖Q) with momentum and early
    /// exaggeration. O(n²): meant for up to a few thousand points.
    /// </summary>
    public static double[,] TSne(double[,] x, double perplexity = 30, int iterations = 500, int seed = 0)
    {
        int n = x.GetLength(0), d = x.GetLength(1);
        var dist = new double[n, n];
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
            {
                double s = 0;
                for (int k = 0; k < d; k++) { double t = x[i, k] - x[j, k]; s += t * t; }
                dist[i, j] = dist[j, i] = s;
            }
        // P_{j|i} with H(P_i) = log(perplexity)
        var p = new double[n, n];
        double logU = Math.Log(perplexity);
        for (int i = 0; i < n; i++)
        {
            double beta = 1, lo = 0, hi = double.PositiveInfinity;
            for (int iter = 0; iter < 60; iter++)
            {
                double sum = 0, h = 0;
                for (int j = 0; j < n; j++) if (j != i) { p[i, j] = Math.Exp(-dist[i, j] * beta); sum += p[i, j]; }
                sum = Math.Max(sum, 1e-300);
                for (int j = 0; j < n; j++) if (j != i) { p[i, j] /= sum; h -= p[i, j] > 1e-300 ? p[i, j] * Math.Log(p[i, j]) : 0; }
                if (Math.Abs(h - logU) < 1e-5) break;
                if (h > logU) { lo = beta; beta = double.IsInfinity(hi) ? beta * 2 : (beta + hi) / 2; }
                else { hi = beta; beta = (beta + lo) / 2; }
            }
        }
        // symmetrise: p_ij = (p_{j|i} + p_{i|j}) / 2n
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++) { double v = Math.Max((p[i, j] + p[j, i]) / (2.0 * n), 1e-12); p[i, j] = p[j, i] = v; }

        var rng = new Random(seed);
        var y = new double[n, 2]; var vel = new double[n, 2]; var grad = new double[n, 2];
        for (int i = 0; i < n; i++) { y[i, 0] = 1e-4 * Gauss(rng); y[i, 1] = 1e-4 * Gauss(rng); }
        var num = new double[n, n];
        for (int it = 0; it < iterations; it++)
        {
            double exaggeration = it < 100 ? 12 : 1, momentum = it < 250 ? 0.5 : 0.8, eta = 200;
            double qsum = 0;
            for (int i = 0; i < n; i++)
                for (int j = i + 1; j < n; j++)
                {
                    double dx = y[i, 0] - y[j, 0], dy = y[i, 1] - y[j, 1];
                    double v = 1 / (1 + dx * dx + dy * dy);
                    num[i, j] = num[j, i] = v;
                    qsum += 2 * v;
                }
            Array.Clear(grad);
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                {
                    if (i == j) continue;
                    double q = Math.Max(num[i, j] / qsum, 1e-12);
                    double f = 4 * (exaggeration * p[i, j] - q) * num[i, j];
                    grad[i, 0] += f * (y[i, 0] - y[j, 0]);
                    grad[i, 1] += f * (y[i, 1] - y[j, 1]);
                }
            for (int i = 0; i < n; i++)
                for (int k = 0; k < 2; k++) { vel[i, k] = momentum * vel[i, k] - eta * grad[i, k]; y[i, k] += vel[i, k]; }
        }
        return y;
    }

    static double Gauss(Random r) => Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble());
}
