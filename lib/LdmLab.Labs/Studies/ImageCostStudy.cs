using System.Diagnostics;

namespace LdmLab.Labs;

/// <summary>One timed part of a text-to-image call: its median seconds and how much its runs raised the process's
/// peak resident memory.</summary>
public sealed record PartTiming(string Part, double MedianSeconds, long? PeakIncreaseBytes);

/// <summary>
/// What one 512² Stable Diffusion 1.5 image costs on this machine, from measured parts: a guided U-Net step (batch 2 —
/// unconditional and conditional rows — on 4×64×64 latents with a 77×768 context), the text encoder on the two
/// prompts, and the VAE decoder. <c>steps × step + text + decode</c> is the image's time; the sampler's own
/// arithmetic is a few element-wise operations per step, nothing beside the U-Net.
/// </summary>
public sealed record ImageCost(PartTiming Step, PartTiming Text, PartTiming Decode, double DecodeScale)
{
    /// <summary>Seconds for one image at <paramref name="steps"/> denoising steps.</summary>
    public double Seconds(int steps) =>
        steps * Step.MedianSeconds + Text.MedianSeconds + Decode.MedianSeconds * DecodeScale;
}

/// <summary>The measurements behind <see cref="ImageCost"/> (notebook 07 §6).</summary>
public static class ImageCostStudy
{
    /// <summary>
    /// Times <paramref name="reps"/> runs of <paramref name="work"/> after one warm-up; the peak-memory increase is
    /// that of the first run (it allocates what the others reuse). Without <paramref name="warmUp"/> the first run is
    /// also the first timed one: a cold time (oneDNN primitive creation, first allocations included), at one run less.
    /// </summary>
    public static PartTiming Time(string part, Action work, int reps, bool warmUp = true)
    {
        if (reps < 1) throw new ArgumentOutOfRangeException(nameof(reps), reps, "at least one timed run");
        var times = new List<double>();
        var first = Stopwatch.StartNew();
        long? peak = ProcessMemory.PeakIncrease(work);
        if (!warmUp) times.Add(first.Elapsed.TotalSeconds);
        for (int i = times.Count; i < reps; i++)
        {
            var clock = Stopwatch.StartNew();
            work();
            times.Add(clock.Elapsed.TotalSeconds);
        }
        times.Sort();
        return new PartTiming(part, times[times.Count / 2], peak);
    }

    /// <summary>
    /// One guided step of SD 1.5's U-Net: a forward of batch 2 at 4×64×64 with a 77×768 context, no gradients.
    /// <paramref name="hollow"/>: the weights are zero-stride views of one zero (<see cref="Lab.Hollow"/>): the same
    /// kernels run at the same shapes without 3.4 GB of weights in memory; false builds the real float32 model.
    /// </summary>
    public static PartTiming UNetStep(bool hollow, int reps, bool warmUp = true)
    {
        manual_seed(0);
        using var unet = hollow ? Lab.Hollow(() => new UNet2DConditionModel(UNetConfig.StableDiffusion15))
            : new UNet2DConditionModel(UNetConfig.StableDiffusion15);
        unet.eval();
        var z = randn(2, 4, 64, 64);                                                   // [uncond; cond] latents
        var context = randn(2, 77, 768);                                               // [2, 77, 768]
        var t = tensor(500L);
        return Time(hollow ? "U-Net step (hollow weights)" : "U-Net step (float32 weights)", () =>
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            unet.Forward(z, t, context);
        }, reps, warmUp);
    }

    /// <summary>The CLIP ViT-L/14 text encoder on two 77-token prompts (the prompt and the negative one).</summary>
    public static PartTiming TextEncoder(ClipTextModel text, int reps, bool warmUp = true)
    {
        var ids = zeros(2, 77, dtype: ScalarType.Int64);                                // [2, 77]
        return Time("text encoder (2 prompts)", () =>
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            text.Forward(ids);
        }, reps, warmUp);
    }

    /// <summary>
    /// The VAE decoder on one latent of <paramref name="latentSize"/>², and the factor to a 64² latent (512² image,
    /// <see cref="DecodeScale"/>): the decoder's time follows its FLOPs, so a smaller measured decode stands for the
    /// 512² one (1 when measured at 64²).
    /// </summary>
    public static (PartTiming Timing, double Scale) Decode(AutoencoderKL vae, int latentSize, int reps,
        bool warmUp = true)
    {
        var z = randn(1, vae.Config.LatentChannels, latentSize, latentSize);
        var timing = Time($"VAE decode ({latentSize * vae.Config.DownsamplingFactor}² image)", () =>
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            vae.Decode(z);
        }, reps, warmUp);
        return (timing, DecodeScale(vae, latentSize, 64));
    }

    /// <summary>
    /// Decoder FLOPs at <paramref name="to"/>² over those at <paramref name="from"/>²: the layers counted at 4² and 8²
    /// and extrapolated per layer (exact: each grows as A⁰ or A¹), plus the mid-block attention's QKᵀ and weighted
    /// sum, 2·2·A²·C for A latent positions and C channels (one head), which the layer hooks do not see.
    /// </summary>
    public static double DecodeScale(AutoencoderKL vae, int from, int to)
    {
        var a = CountDecode(vae, 4);
        var b = CountDecode(vae, 8);
        double channels = vae.Config.BlockOutChannels[^1];
        double Flops(int size)
        {
            double area = (double)size * size;
            double attention = vae.Config.MidBlockAddAttention ? 4 * area * area * channels : 0;
            return ComputeCost.Extrapolate(a, 16, b, 64, area).Flops + attention;
        }
        return Flops(to) / Flops(from);
    }

    static CostProfile CountDecode(AutoencoderKL vae, int size)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var z = zeros(1, vae.Config.LatentChannels, size, size);
        return ComputeCost.Count(vae, () => vae.Decode(z));
    }

    /// <summary>What the measured parts say about one 512² image on this machine.</summary>
    public static string Takeaway(ImageCost cost, int cores)
    {
        double at50 = cost.Seconds(50), at25 = cost.Seconds(25);
        double unetShare = 50 * cost.Step.MedianSeconds / at50;
        return $"One guided SD 1.5 U-Net step (batch 2 at 64²) takes {cost.Step.MedianSeconds:F1} s on these {cores} " +
               $"cores, so a 512² image costs about {at50 / 60:F1} min at 50 steps and {at25 / 60:F1} min at 25; the " +
               $"U-Net is {unetShare:P0} of it (text encoder {cost.Text.MedianSeconds:F2} s, decoder " +
               $"{cost.Decode.MedianSeconds * cost.DecodeScale:F1} s once). Fewer steps (a better sampler, notebook " +
               "06b) or a GPU are what change this, not the text encoder or the VAE.";
    }
}
