using LdmLab.Nn;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Training;

/// <summary>
/// A small CNN for 28×28 grey images: 3 conv blocks (conv → GroupNorm → SiLU), global average pool, linear head.
/// Used by the tour as the first training loop, and later as an independent feature extractor for metrics.
/// </summary>
public sealed class FashionClassifier : nn.Module<Tensor, Tensor>
{
    readonly Conv2d conv1, conv2, conv3;
    readonly GroupNorm norm1, norm2, norm3;
    readonly Linear head;

    public FashionClassifier(int width = 16, int classes = 10) : base(nameof(FashionClassifier))
    {
        conv1 = nn.Conv2d(1, width, 3, padding: 1);
        norm1 = Layers.GroupNorm(4, width);
        conv2 = nn.Conv2d(width, 2 * width, 3, stride: 2, padding: 1);    // 28 → 14
        norm2 = Layers.GroupNorm(8, 2 * width);
        conv3 = nn.Conv2d(2 * width, 4 * width, 3, stride: 2, padding: 1); // 14 → 7
        norm3 = Layers.GroupNorm(8, 4 * width);
        head = nn.Linear(4 * width, classes);
        RegisterComponents();
    }

    /// <summary>Pooled features [N, 4·width] (before the head).</summary>
    public Tensor Features(Tensor x)
    {
        x = nn.functional.silu(norm1.forward(conv1.forward(x)));
        x = nn.functional.silu(norm2.forward(conv2.forward(x)));
        x = nn.functional.silu(norm3.forward(conv3.forward(x)));
        return x.mean([2, 3]);
    }

    public override Tensor forward(Tensor x) => head.forward(Features(x));
}

/// <summary>Per-step losses of a training run.</summary>
public sealed record TrainingLog(IReadOnlyList<double> Losses, TimeSpan Elapsed);

public static class ClassifierTraining
{
    /// <summary>Adam on cross-entropy for <paramref name="steps"/> random batches; each step in its own dispose scope.</summary>
    public static TrainingLog Train(FashionClassifier model, Data.FashionMnist data, int steps, int batchSize, double lr, Random rng,
        Viz.Progress? progress = null, Device? device = null)
    {
        if (steps < 1 || batchSize < 1) throw new ArgumentOutOfRangeException(nameof(steps), "steps and batchSize must be ≥ 1");
        device ??= Runtime.Lab.Device;
        model.to(device).train();
        using var opt = optim.Adam(model.parameters(), lr);
        var losses = new List<double>(steps);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (int step = 1; step <= steps; step++)
        {
            using var scope = NewDisposeScope();
            var (x, y) = data.Batch(batchSize, rng);
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
