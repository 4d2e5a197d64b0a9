using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Training;

/// <summary>The settings every training loop has.</summary>
public sealed record LoopSettings(int Steps, double LearningRate, int WarmupSteps, double ClipGradNorm, int CheckpointEvery,
    string? CheckpointDir, long Seed);

/// <summary>
/// The loop both trainers (autoencoders, latent denoisers) run, written once:
/// 1. resume: steps CompletedSteps + 1 … Steps (a checkpoint beyond Steps is refused when loaded);
/// 2. each step inside its own dispose scope (native memory is freed step by step) with its own generator seeded
///    from (seed, step), so a resumed run draws exactly what an uninterrupted one would;
/// 3. the step itself (the trainer's), a NaN/Inf guard on its loss before any weight changes;
/// 4. gradient clipping, linear warm-up of the learning rate, the optimizer step (<see cref="Optimize"/>);
/// 5. an atomic checkpoint every CheckpointEvery steps and at the end (when this call ran a step);
/// 6. the allocator's free pages back to the OS.
/// </summary>
public static class TrainingLoop
{
    /// <summary>Step 2's generator: the same (seed, step) always gives the same draws.</summary>
    public static Generator StepGenerator(long seed, int step) => new((ulong)(seed * 1_000_003 + step));

    /// <summary>Runs steps after <paramref name="completedSteps"/>; returns the number of steps completed.</summary>
    /// <param name="step">one training step (2–4 happen around it): given the step number and its generator.</param>
    /// <param name="save">writes the trainer's checkpoint into the checkpoint folder.</param>
    public static int Run(LoopSettings settings, int completedSteps, Action<int, Generator> step, Action<string> save)
    {
        if (completedSteps > settings.Steps)
            throw new InvalidOperationException($"already at step {completedSteps}, beyond the requested {settings.Steps}");
        bool savedLast = true;
        for (int s = completedSteps + 1; s <= settings.Steps; s++)
        {
            using (var scope = NewDisposeScope())
            using (var generator = StepGenerator(settings.Seed, s))
                step(s, generator);
            completedSteps = s;
            savedLast = false;
            if (settings.CheckpointDir is { } dir && settings.CheckpointEvery > 0 && s % settings.CheckpointEvery == 0)
            {
                save(dir);
                savedLast = true;
            }
        }
        if (settings.CheckpointDir is { } final && !savedLast) save(final);
        Runtime.ProcessMemory.Release();
        return completedSteps;
    }

    /// <summary>Step 3: the loss value, or <see cref="NonFiniteLossException"/> before any weight is updated.</summary>
    public static double CheckedValue(Tensor loss, int step, double scale = 1)
    {
        double value = loss.item<float>() * scale;
        return double.IsFinite(value) ? value : throw new NonFiniteLossException(step, value);
    }

    /// <summary>Step 4: clip the gradient's global L2 norm (0 = off), warm the learning rate up, take the step.</summary>
    public static void Optimize(AdamW optimizer, IEnumerable<TorchSharp.Modules.Parameter> parameters, LoopSettings settings, int step)
    {
        if (settings.ClipGradNorm > 0) nn.utils.clip_grad_norm_(parameters, settings.ClipGradNorm);
        optimizer.LearningRate = LrSchedule.WarmupConstant(step, settings.WarmupSteps, settings.LearningRate);
        optimizer.Step();
    }
}
