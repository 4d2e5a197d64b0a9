using static TorchSharp.torch;

namespace LdmLab.Diffusion;

/// <summary>
/// Classifier-free guidance (Ho &amp; Salimans 2022), the one place its formula is written. The model sees the
/// unconditional and the conditional rows in one batched call, [∅; c], and the two outputs are extrapolated:
/// <code>ε̂ = ε̂(z_t, ∅) + w · (ε̂(z_t, c) − ε̂(z_t, ∅))</code>
/// w = 1 is the conditional model, w = 0 the unconditional one; w &gt; 1 pushes samples towards what tells c apart.
/// As in diffusers, w ≤ 1 runs the conditional pass alone (no unconditional half is computed).
/// </summary>
public static class Guidance
{
    /// <summary>Whether a scale needs the unconditional pass (diffusers' do_classifier_free_guidance).</summary>
    public static bool Enabled(double scale) => scale > 1.0;

    /// <summary>
    /// The guided output for latents [B, …], a timestep (a scalar or [B]) and condition rows [B, …];
    /// <paramref name="unconditional"/> holds the ∅ rows [B, …] (the null condition or negative prompts).
    /// </summary>
    /// <param name="model">(latents, timesteps, conditions) → output, called once on the doubled batch.</param>
    public static Tensor Apply(Func<Tensor, Tensor, Tensor, Tensor> model, Tensor zt, Tensor t, Tensor conditions,
        Tensor unconditional, double scale)
    {
        if (!Enabled(scale)) return model(zt, t, conditions);
        long b = zt.shape[0];
        var both = model(cat([zt, zt]), t.dim() == 0 ? t : cat([t, t]), cat([unconditional, conditions]));
        var parts = both.split(b);                                                       // [ε̂(∅); ε̂(c)]
        return parts[0] + scale * (parts[1] - parts[0]);
    }
}
