using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.UNet;
using static TorchSharp.torch;

namespace LdmLab.Export;

/// <summary>
/// Calibration feeds for a U-Net graph (<see cref="OnnxInt8.QuantizeStatic"/>): the inputs the U-Net really meets
/// while sampling. Latents from seeded noise are denoised by the float TorchSharp U-Net with classifier-free
/// guidance for a few scheduler steps, and every call's (sample [2B, c, h, w], timestep, encoder_hidden_states
/// [2B, L, d]) is kept: early steps show near-Gaussian latents at large t, later ones structured latents at small
/// t, so the observed ranges cover the whole trajectory.
/// </summary>
public static class UNetCalibration
{
    /// <param name="conditions">prompt embeddings [B, L, d]; <paramref name="unconditional"/> the ∅ rows [B, L, d].
    /// </param>
    /// <param name="latentSize">[h, w] of the latents.</param>
    public static List<IReadOnlyDictionary<string, Tensor>> Sample(UNet2DConditionModel unet, Scheduler scheduler,
        Tensor conditions, Tensor unconditional, long[] latentSize, int steps, double guidance, long seed = 0)
    {
        if (steps < 1) throw new ArgumentOutOfRangeException(nameof(steps), steps, "at least one step");
        if (latentSize.Length != 2)
            throw new ArgumentException($"latentSize is [h, w], got {latentSize.Length} values", nameof(latentSize));
        if (!conditions.shape.SequenceEqual(unconditional.shape))
            throw new ArgumentException($"unconditional [{string.Join(", ", unconditional.shape)}] must match " +
                                        $"conditions [{string.Join(", ", conditions.shape)}]", nameof(unconditional));
        using var _ = no_grad();
        var feeds = new List<IReadOnlyDictionary<string, Tensor>>();
        long b = conditions.shape[0];
        var noise = randn(new long[] { b, unet.Config.InChannels, latentSize[0], latentSize[1] },
            generator: new Generator((ulong)seed));                                                  // [B, c, h, w]
        var context = cat([unconditional, conditions]).cpu().DetachFromDisposeScope();             // [2B, L, d]
        Tensor Denoise(Tensor z, double t)
        {
            var timestep = tensor((float)t);
            feeds.Add(new Dictionary<string, Tensor>
            {
                ["sample"] = cat([z, z]).cpu().DetachFromDisposeScope(),                           // [2B, c, h, w]
                ["timestep"] = timestep.DetachFromDisposeScope(), ["encoder_hidden_states"] = context,
            });
            return Guidance.Apply((zz, tt, cc) => unet.Forward(zz, tt, cc), z, timestep, conditions, unconditional,
                guidance);
        }
        using (NewDisposeScope()) Sampling.Sample(scheduler, Denoise, noise, steps);
        return feeds;
    }
}
