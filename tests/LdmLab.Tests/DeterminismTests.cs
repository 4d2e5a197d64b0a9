using LdmLab.Data;
using LdmLab.Runtime;
using LdmLab.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class DeterminismTests
{
    static (double[] losses, float[] weights, float[] noise) RunOnce(long seed)
    {
        var rng = Lab.Seed(seed);
        using var data = FashionMnist.Load(Split.Test, limit: 512);
        var model = new FashionClassifier(width: 8);
        var log = ClassifierTraining.Train(model, data, steps: 5, batchSize: 32, lr: 1e-2, rng);
        var weights = model.parameters().SelectMany(p => p.detach().cpu().data<float>().ToArray()).ToArray();
        var noise = randn(64).data<float>().ToArray();
        return (log.Losses.ToArray(), weights, noise);
    }

    [Fact]
    public void Same_seed_gives_bitwise_identical_training()
    {
        var a = RunOnce(1234);
        var b = RunOnce(1234);
        Assert.Equal(a.losses, b.losses);                    // exact, not approximate
        Assert.Equal(a.weights, b.weights);
        Assert.Equal(a.noise, b.noise);
        var c = RunOnce(99);
        Assert.NotEqual(a.weights, c.weights);
    }
}
