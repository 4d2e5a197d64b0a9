using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// Linear multistep (k-diffusion's sample_lms; diffusers' LMSDiscreteScheduler): the last k ODE slopes
/// d_j = (x_j − x̂_0,j)/σ_j are extrapolated by their Lagrange polynomial in σ and integrated over [σ_i, σ_{i+1}]:
///   x_{i+1} = x_i + Σ_m c_m d_{i−m},  c_m = ∫_{σ_i}^{σ_{i+1}} Π_{l≠m} (τ − σ_{i−l}) / (σ_{i−m} − σ_{i−l}) dτ,
/// with k = min(i + 1, order) (order 4 by default). diffusers integrates with scipy's quad; the integrand is a
/// polynomial of degree k − 1 ≤ 3, which 4-point Gauss–Legendre integrates exactly.
/// </summary>
public sealed class LmsScheduler(SchedulerConfig config) : SigmaScheduler(config)
{
    readonly List<Tensor> _derivatives = [];

    /// <summary>How many past slopes the step combines (diffusers' step(order=4)).</summary>
    public int LmsOrder { get; set; } = 4;

    public override void SetTimesteps(int n)
    {
        var (ts, sigmas) = SigmaTimesteps(n);
        UseSchedule(n, ts, sigmas);
        foreach (var d in _derivatives) d.Dispose();
        _derivatives.Clear();
    }

    static readonly double[] GaussNodes = [-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526];
    static readonly double[] GaussWeights = [0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538];

    /// <summary>c_m for step i with k slopes: the integral of the m-th Lagrange basis polynomial over [σ_i, σ_{i+1}].</summary>
    public double Coefficient(int k, int i, int m)
    {
        if (k is < 1 or > 4) throw new ArgumentOutOfRangeException(nameof(k), k, "LMS order must be 1–4");
        double Basis(double tau)
        {
            double prod = 1;
            for (int l = 0; l < k; l++)
                if (l != m) prod *= (tau - Sigmas[i - l]) / (Sigmas[i - m] - Sigmas[i - l]);
            return prod;
        }
        double a = Sigmas[i], b = Sigmas[i + 1], half = (b - a) / 2, mid = (a + b) / 2;
        return half * GaussNodes.Select((x, j) => GaussWeights[j] * Basis(mid + half * x)).Sum();
    }

    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null)
    {
        int i = CurrentIndex(timestep);
        double sigma = Sigmas[i];
        // 1. x̂_0 and the ODE slope d_i = (x − x̂_0)/σ, kept across steps (outside the caller's dispose scope)
        var x0 = PredictX0(modelOutput, sample, sigma);
        _derivatives.Add(((sample - x0) / sigma).detach().DetachFromDisposeScope());
        if (_derivatives.Count > LmsOrder) { _derivatives[0].Dispose(); _derivatives.RemoveAt(0); }
        // 2. coefficients of the newest k slopes, 3. x_{i+1} = x_i + Σ c_m d_{i−m}
        int k = Math.Min(i + 1, LmsOrder);
        var prev = sample;
        for (int m = 0; m < k; m++) prev = prev + Coefficient(k, i, m) * _derivatives[^(m + 1)];
        Advance();
        return new StepOutput(prev, x0);
    }
}
