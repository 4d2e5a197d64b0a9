using LdmLab.Conditioning;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Metrics;
using LdmLab.Runtime;
using LdmLab.Training;
using LdmLab.UNet;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// Native memory stays flat in the library's loops: 500 training steps and 250 sampler steps may not grow the
/// resident set by more than 5 % over what it was after a warm-up run of the same loop. A leak that matters — an
/// activation or a gradient kept per step — shows within these counts (they were twice as large until 2026-12-06:
/// 30 s more of the suite for a test that catches leaks per step, not their size).
/// </summary>
[Trait("Category", "Slow")]
public class MemoryTests(ITestOutputHelper output)
{
    static readonly UNetConfig Small = new()
    {
        SampleSize = 4, InChannels = 4, OutChannels = 4, BlockOutChannels = [8, 16], LayersPerBlock = 1, NormNumGroups = 4,
        CrossAttentionDim = 8, AttentionHeadDim = [2], DownBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"],
        UpBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D"],
    };

    [SkippableFact]
    public void Training_and_sampling_loops_keep_resident_memory_flat()
    {
        TorchRuntime.Setup();
        Skip.If(ProcessMemory.ResidentBytes is null, "no /proc: nothing to measure");
        manual_seed(0);
        var model = new ClassConditionedUNet(Small, 10);
        var latents = randn(256, 4, 4, 4);
        var labels = randint(0, 10, [256], dtype: ScalarType.Int64);
        var objective = new DiffusionObjective(NoiseSchedule.Linear());
        void Train(int steps) => new LatentDiffusionTrainer(model, objective,
            new TrainerOptions { Steps = steps, BatchSize = 8, WarmupSteps = 10, LearningRate = 1e-3 }).Train(latents, labels);

        Train(100);                                    // warm-up: allocator pools, autograd caches, JIT
        long warm = ProcessMemory.ResidentBytes!.Value;
        Train(500);
        long after = ProcessMemory.ResidentBytes!.Value;
        output.WriteLine($"training: RSS after warm-up {warm / 1e6:F1} MB, after 500 steps {after / 1e6:F1} MB " +
                         $"({(after - warm) * 100.0 / warm:+0.0;-0.0} %)");
        Assert.True(after <= warm * 1.05, $"RSS grew from {warm / 1e6:F1} MB to {after / 1e6:F1} MB over 500 training steps");

        var scheduler = Scheduler.Create("DDIMScheduler", new System.Text.Json.Nodes.JsonObject());
        var noise = randn(16, 4, 4, 4);
        var y = randint(0, 10, [16], dtype: ScalarType.Int64);
        Tensor Sample(int steps) => Sampling.Sample(scheduler, (z, t) => model.Guided(z, tensor((float)t), y, 3.0), noise, steps);
        Sample(250).Dispose();                         // warm-up: the same loop once
        long warmSampling = ProcessMemory.ResidentBytes!.Value;
        Sample(250).Dispose();
        long afterSampling = ProcessMemory.ResidentBytes!.Value;
        output.WriteLine($"sampling: RSS after warm-up {warmSampling / 1e6:F1} MB, after 250 steps {afterSampling / 1e6:F1} MB " +
                         $"({(afterSampling - warmSampling) * 100.0 / warmSampling:+0.0;-0.0} %)");
        Assert.True(afterSampling <= warmSampling * 1.05,
            $"RSS grew from {warmSampling / 1e6:F1} MB to {afterSampling / 1e6:F1} MB over 250 sampler steps");
    }
}
