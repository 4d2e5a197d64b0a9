using System.Diagnostics;
using LdmLab.Runtime;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Compression;

/// <summary>One training step of a U-Net measured with and without gradient checkpointing.</summary>
/// <param name="PlainSeconds">Median seconds of forward + ε-MSE + backward, activations stored.</param>
/// <param name="CheckpointedSeconds">The same with <see cref="UNet2DConditionModel.GradientCheckpointing"/> on.
/// </param>
/// <param name="PlainPeakBytes">Peak resident memory added by one plain step (Linux CPU; null elsewhere — TorchSharp
/// 0.107 exposes no CUDA allocator statistics).</param>
/// <param name="CheckpointedPeakBytes">The same with checkpointing on.</param>
public sealed record CheckpointingMeasurement(int Batch, int Size, double PlainSeconds, double CheckpointedSeconds,
    long? PlainPeakBytes, long? CheckpointedPeakBytes)
{
    public override string ToString() =>
        $"batch {Batch} at {Size}×{Size}: plain {PlainSeconds * 1e3:F1} ms, peak {Mb(PlainPeakBytes)}; " +
        $"checkpointed {CheckpointedSeconds * 1e3:F1} ms, peak {Mb(CheckpointedPeakBytes)}";

    static string Mb(long? bytes) => bytes is long b ? $"{b / 1048576.0:F1} MB" : "n/a";
}

/// <summary>What gradient checkpointing costs and saves on a training step (for benchmarks, not tests: times and
/// peaks depend on the machine).</summary>
public static class CheckpointingCost
{
    /// <summary>
    /// Measures <paramref name="model"/> (on its device, in training mode) on random latents [batch, C, size, size]
    /// and context [batch, tokens, d]: one warm-up step each way, the medians of <paramref name="reps"/> timed steps
    /// taken alternately, and the peak of one more step each way. The model's training mode and checkpointing switch
    /// are restored and its gradients cleared.
    /// </summary>
    public static CheckpointingMeasurement Measure(UNet2DConditionModel model, int batch, int size,
        int contextTokens = 77, int reps = 3, long seed = 0)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "must be ≥ 1");
        if (reps < 1) throw new ArgumentOutOfRangeException(nameof(reps), reps, "must be ≥ 1");
        var device = model.parameters().First().device;
        using var gen = new Generator((ulong)seed);
        var c = model.Config;
        var x = randn([batch, c.InChannels, size, size], generator: gen).to(device);          // [B, C, H, W]
        var noise = randn([batch, c.OutChannels, size, size], generator: gen).to(device);     // [B, C, H, W]
        var context = randn([batch, contextTokens, c.CrossAttentionDim], generator: gen).to(device);   // [B, L, d]
        var t = full([batch], 500L, device: device);
        bool wasTraining = model.training, wasOn = model.GradientCheckpointing;
        model.train();
        void Step()
        {
            using var scope = NewDisposeScope();
            model.zero_grad();
            (model.Forward(x, t, context) - noise).pow(2).mean().backward();
            if (device.type == DeviceType.CUDA) cuda.synchronize();
        }
        double Timed(bool checkpointing)
        {
            model.GradientCheckpointing = checkpointing;
            var sw = Stopwatch.StartNew();
            Step();
            return sw.Elapsed.TotalSeconds;
        }
        long? Peak(bool checkpointing)
        {
            model.GradientCheckpointing = checkpointing;
            return device.type == DeviceType.CPU ? ProcessMemory.PeakIncrease(Step) : null;
        }
        try
        {
            Timed(false);                                                    // warm-up, each way
            Timed(true);
            // alternating, so that a machine that speeds up or slows down during the run favours neither
            var plain = new List<double>();
            var checkpointed = new List<double>();
            for (int i = 0; i < reps; i++)
            {
                plain.Add(Timed(false));
                checkpointed.Add(Timed(true));
            }
            double Median(List<double> v) => v.Order().ElementAt(v.Count / 2);
            return new CheckpointingMeasurement(batch, size, Median(plain), Median(checkpointed), Peak(false),
                Peak(true));
        }
        finally
        {
            model.GradientCheckpointing = wasOn;
            model.train(wasTraining);
            model.zero_grad();
            foreach (var tensor in new[] { x, noise, context, t }) tensor.Dispose();
        }
    }
}
