using LdmLab.Autoencoders;
using LdmLab.Runtime;
using LdmLab.Training;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// What the shipped-checkpoint tests share: the profiles they switch to, finding a shipped folder, the shipped
/// Fashion VAE, the latents a replay of a run's first steps draws (encoded alone: a few hundred of 60,000 images,
/// seconds instead of a minute), and the comparison of a replay's losses with the shipped run's first ones.
/// </summary>
static class ShippedReplay
{
    public static T Full<T>(Func<T> f) => TestPaths.WithSettings(s => s with { Profile = Profile.Full }, f);

    public static T Quick<T>(Func<T> f) => TestPaths.WithSettings(s => s with { Profile = Profile.Quick }, f);

    /// <summary>A shipped checkpoint by folder name; a missing one fails the test naming it.</summary>
    public static ShippedCheckpoint Require(string name) => ShippedCheckpoint.Find(name)
        ?? throw new InvalidOperationException($"data/checkpoints/{name} is missing from this checkout");

    /// <summary>The shipped Fashion VAE (data/checkpoints/fashion-vae) in eval mode.</summary>
    public static AutoencoderKL FashionVae()
    {
        var vae = AutoencoderKL.FromPretrained(Require(FashionLatentRecipe.ShippedVae).Dir);
        vae.eval();
        return vae;
    }

    /// <summary>
    /// The scaled latents of <paramref name="images"/> as the first <paramref name="steps"/> steps of a single-size
    /// run with <paramref name="options"/> see them: the rows those steps draw (<see
    /// cref="LatentDiffusionTrainer.RowsDrawn"/>) encoded, the others zero, keyed as the whole encoding is
    /// (<see cref="FashionLatentRecipe.ReplayLatents"/>). A wrong draw would train on zeros and miss the shipped
    /// losses, so the replay checks the draw too.
    /// </summary>
    public static Tensor FirstStepsLatents(AutoencoderKL vae, Tensor images, TrainerOptions options, int steps,
        double? scale = null)
    {
        var rows = LatentDiffusionTrainer.RowsDrawn(images.shape[0], options, steps);
        Assert.InRange(rows.Length, 1, steps * options.BatchSize);
        return FashionLatentRecipe.ReplayLatents(vae, images, rows, scale ?? vae.Config.ScalingFactor);
    }

    /// <summary>
    /// A replay's losses against the shipped run's first ones: the same count, each within
    /// <paramref name="relativeTolerance"/> (1e-4 covers float32 sums in another order on another CPU or ISA: oneDNN's
    /// AVX2 and AVX-512 kernels differ in the last bits, about 1e-6 relative per step).
    /// </summary>
    public static void AssertFirstLosses(IReadOnlyList<double> expected, IReadOnlyList<double> actual,
        string? name = null, double relativeTolerance = 1e-4)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (int i = 0; i < actual.Count; i++)
            Assert.True(Math.Abs(actual[i] - expected[i]) <= relativeTolerance * Math.Abs(expected[i]),
                $"{name} step {i + 1}: {actual[i]} vs the shipped run's {expected[i]}".TrimStart());
    }

    /// <summary>The shipped run's whole loss log fell: its last 100 losses average under half its first 10.</summary>
    public static void AssertLossFell(IReadOnlyList<double> losses, string name) =>
        Assert.True(losses.TakeLast(100).Average() < 0.5 * losses.Take(10).Average(),
            $"{name}: the shipped run's loss fell");
}
