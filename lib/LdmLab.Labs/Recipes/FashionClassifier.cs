using TorchSharp.Modules;

namespace LdmLab.Labs;

/// <summary>
/// A small CNN for 28×28 grey images: three stages at 28², 14², 7² of <c>convsPerStage</c> conv → GroupNorm → SiLU
/// blocks (the first of stages 2 and 3 strided), global average pool, linear head. Used by the tour as the first
/// training loop, and (shipped, 2 convs per stage) as the independent judge of generated images and its features
/// for Fréchet distances.
/// </summary>
public sealed class FashionClassifier : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<nn.Module<Tensor, Tensor>> blocks = new();
    readonly Linear head;

    public FashionClassifier(int width = 16, int classes = 10, int convsPerStage = 1) : base(nameof(FashionClassifier))
    {
        if (width < 8 || width % 4 != 0) throw new ArgumentOutOfRangeException(nameof(width), width, "width must be a multiple of 4, ≥ 8");
        if (convsPerStage < 1) throw new ArgumentOutOfRangeException(nameof(convsPerStage), convsPerStage, "must be ≥ 1");
        int inChannels = 1;
        for (int stage = 0; stage < 3; stage++)
        {
            int channels = width << stage;                                   // width, 2·width, 4·width
            for (int i = 0; i < convsPerStage; i++)
            {
                int stride = stage > 0 && i == 0 ? 2 : 1;                    // 28 → 14 → 7
                blocks.Add(nn.Sequential(nn.Conv2d(inChannels, channels, 3, stride: stride, padding: 1),
                    Layers.GroupNorm(stage == 0 ? 4 : 8, channels), nn.SiLU()));
                inChannels = channels;
            }
        }
        head = nn.Linear(4 * width, classes);
        RegisterComponents();
    }

    /// <summary>Pooled features [N, 4·width] (before the head).</summary>
    public Tensor Features(Tensor x)
    {
        foreach (var block in blocks) x = block.forward(x);                  // [N, 4·width, 7, 7]
        return x.mean([2, 3]);
    }

    public override Tensor forward(Tensor x) => head.forward(Features(x));
}

/// <summary>Per-step losses of a training run.</summary>
public sealed record TrainingLog(IReadOnlyList<double> Losses, TimeSpan Elapsed);

public static class ClassifierTraining
{
    /// <summary>Adam on cross-entropy for <paramref name="steps"/> random batches; each step in its own dispose scope.</summary>
    /// <remarks>With <paramref name="cosineDecay"/> the learning rate falls from lr to 0 along a half cosine over
    /// <paramref name="steps"/>; <paramref name="stopAfter"/> ends the run early on that same schedule (the first steps of
    /// a long run, as the shipped-checkpoint test replays them).</remarks>
    public static TrainingLog Train(FashionClassifier model, Data.FashionMnist data, int steps, int batchSize, double lr, Random rng,
        Viz.Progress? progress = null, Device? device = null, bool cosineDecay = false, int? stopAfter = null)
    {
        if (steps < 1 || batchSize < 1) throw new ArgumentOutOfRangeException(nameof(steps), "steps and batchSize must be ≥ 1");
        if (stopAfter is < 1) throw new ArgumentOutOfRangeException(nameof(stopAfter), stopAfter, "stopAfter must be ≥ 1");
        device ??= Runtime.Lab.Device;
        model.to(device).train();
        using var opt = optim.Adam(model.parameters(), lr);
        var losses = new List<double>(steps);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (int step = 1; step <= Math.Min(steps, stopAfter ?? steps); step++)
        {
            using var scope = NewDisposeScope();
            var (x, y) = data.Batch(batchSize, rng);
            if (cosineDecay)
                foreach (var group in opt.ParamGroups) group.LearningRate = LrSchedule.WarmupCosine(step - 1, 0, steps, lr);
            opt.zero_grad();
            var loss = nn.functional.cross_entropy(model.forward(x.to(device)), y.to(device));
            loss.backward();
            opt.step();
            double l = loss.item<float>();
            if (!double.IsFinite(l)) throw new InvalidOperationException($"loss became {l} at step {step}");
            losses.Add(l);
            progress?.Report(step, new Dictionary<string, double> { ["loss"] = losses.Skip(Math.Max(0, losses.Count - 20)).Average() });
        }
        return new TrainingLog(losses, sw.Elapsed);
    }

    /// <summary>Top-1 accuracy on (images, labels), evaluated in batches without gradients.</summary>
    public static double Accuracy(FashionClassifier model, Tensor images, Tensor labels, int batchSize = 500)
    {
        model.eval();
        using var _ = no_grad();
        var device = model.parameters().First().device;
        long correct = 0, n = images.shape[0];
        for (long i = 0; i < n; i += batchSize)
        {
            using var scope = NewDisposeScope();
            long len = Math.Min(batchSize, n - i);
            var pred = model.forward(images.narrow(0, i, len).to(device)).argmax(1).cpu();
            correct += pred.eq(labels.narrow(0, i, len)).sum().item<long>();
        }
        return (double)correct / n;
    }
}
