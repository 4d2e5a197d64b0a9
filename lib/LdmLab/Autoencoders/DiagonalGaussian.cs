using static TorchSharp.torch;

namespace LdmLab.Autoencoders;

/// <summary>
/// The KL-VAE posterior q(z|x) = N(μ, diag σ²) from the encoder's moments [μ, log σ²] (log σ² clamped to [−30, 20]).
/// KL(q ‖ N(0, I)) = ½ Σ (μ² + σ² − 1 − log σ²) per sample.
/// </summary>
public sealed class DiagonalGaussian
{
    public Tensor Mean { get; }
    public Tensor LogVar { get; }
    public Tensor Std { get; }

    public DiagonalGaussian(Tensor moments)
    {
        var parts = moments.chunk(2, 1);
        Mean = parts[0];
        LogVar = parts[1].clamp(-30.0, 20.0);
        Std = (0.5 * LogVar).exp();
    }

    /// <summary>z = μ + σ ε; pass ε to reproduce a draw.</summary>
    public Tensor Sample(Tensor? noise = null) => Mean + Std * (noise ?? randn_like(Mean));
    public Tensor Mode() => Mean;
    public Tensor Kl() => 0.5 * (Mean.pow(2) + LogVar.exp() - 1.0 - LogVar).sum([1, 2, 3]);
}
