using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Nn;

/// <summary>Inference over many inputs: <c>f</c> on batches of the first dimension, without gradients, each batch in its own dispose scope.</summary>
public static class Batched
{
    /// <summary>f(batch) on <paramref name="model"/>'s device for every batch of <paramref name="input"/>; results on the CPU, concatenated.</summary>
    public static Tensor Map(nn.Module model, Tensor input, int batchSize, Func<Tensor, Tensor> f)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "batch size must be ≥ 1");
        using var _ = no_grad();
        var device = model.parameters().First().device;
        var parts = new List<Tensor>();
        for (long i = 0; i < input.shape[0]; i += batchSize)
        {
            using var scope = NewDisposeScope();
            parts.Add(f(input.narrow(0, i, Math.Min(batchSize, input.shape[0] - i)).to(device)).cpu().MoveToOuterDisposeScope());
        }
        return cat(parts);
    }
}
