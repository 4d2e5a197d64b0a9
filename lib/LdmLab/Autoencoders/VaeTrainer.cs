using LdmLab.Interop;
using LdmLab.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Autoencoders;

public enum ReconstructionLoss { L1, L2 }

/// <summary>Settings of a (pixel-loss) KL-VAE run: L = ‖x − x̂‖ + β·KL, β small (1e-6 by default, as in LDM).</summary>
public sealed record VaeTrainerOptions
{
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 64;
    public double LearningRate { get; init; } = 1e-3;
    public int WarmupSteps { get; init; } = 50;
    public double KlWeight { get; init; } = 1e-6;
    public ReconstructionLoss Loss { get; init; } = ReconstructionLoss.L1;
    public double ClipGradNorm { get; init; } = 1.0;
    public long Seed { get; init; }
}

/// <summary>Trains an AutoencoderKL on images in [-1, 1] with a pixel loss and a KL term; per-step dispose scopes.</summary>
public static class VaeTrainer
{
    public sealed record Log(IReadOnlyList<double> Reconstruction, IReadOnlyList<double> Kl, TimeSpan Elapsed);

    public static Log Train(AutoencoderKL vae, Tensor images, VaeTrainerOptions o, Viz.Progress? progress = null)
    {
        var device = vae.parameters().First().device;
        var opt = new AdamW(vae.named_parameters().Select(kv => (kv.name, kv.parameter)), o.LearningRate);
        var rec = new List<double>(); var kls = new List<double>();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        vae.train();
        for (int step = 1; step <= o.Steps; step++)
        {
            using var scope = NewDisposeScope();
            using var gen = new Generator((ulong)(o.Seed * 1_000_003 + step));
            var x = images.index_select(0, randint(0, images.shape[0], [o.BatchSize], dtype: ScalarType.Int64, generator: gen)).to(device);
            var q = vae.Encode(x);
            var z = q.Mean + q.Std * randn(q.Mean.shape, generator: gen).to(device);
            var xr = vae.Decode(z);
            var recLoss = o.Loss == ReconstructionLoss.L1 ? (xr - x).abs().mean() : (xr - x).pow(2).mean();
            var kl = q.Kl().mean() / x[0].numel();   // per-pixel KL so that β is comparable across image sizes
            var loss = recLoss + o.KlWeight * kl;
            double lv = loss.item<float>();
            if (!double.IsFinite(lv)) throw new NonFiniteLossException(step, lv);
            opt.ZeroGrad();
            loss.backward();
            if (o.ClipGradNorm > 0) nn.utils.clip_grad_norm_(vae.parameters(), o.ClipGradNorm);
            opt.LearningRate = LrSchedule.WarmupConstant(step, o.WarmupSteps, o.LearningRate);
            opt.Step();
            rec.Add(recLoss.item<float>()); kls.Add(kl.item<float>());
            progress?.Report(step, new Dictionary<string, double> { ["rec"] = rec.Skip(Math.Max(0, rec.Count - 50)).Average(), ["kl"] = kls[^1] });
        }
        vae.eval();
        return new Log(rec, kls, sw.Elapsed);
    }

    /// <summary>Posterior means of <paramref name="images"/>, in batches, without gradients.</summary>
    public static Tensor EncodeMeans(AutoencoderKL vae, Tensor images, int batchSize = 256) => Batched(x => vae.Encode(x).Mean, vae, images, batchSize);

    public static Tensor DecodeBatched(AutoencoderKL vae, Tensor latents, int batchSize = 256) => Batched(z => vae.Decode(z), vae, latents, batchSize);

    static Tensor Batched(Func<Tensor, Tensor> f, AutoencoderKL vae, Tensor input, int batchSize)
    {
        using var _ = no_grad();
        var device = vae.parameters().First().device;
        var parts = new List<Tensor>();
        for (long i = 0; i < input.shape[0]; i += batchSize)
        {
            using var scope = NewDisposeScope();
            parts.Add(f(input.narrow(0, i, Math.Min(batchSize, input.shape[0] - i)).to(device)).cpu().MoveToOuterDisposeScope());
        }
        return cat(parts);
    }
}
