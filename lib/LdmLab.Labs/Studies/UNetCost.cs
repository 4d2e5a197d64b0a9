namespace LdmLab.Labs;

/// <summary>One measured training step of a U-Net on [batch, channels, size, size] inputs.</summary>
public sealed record StepMeasurement(string Label, int Channels, int Size, int Batch, double MedianSeconds, long? PeakBytes, CostProfile Forward)
{
    public long InputValues => (long)Channels * Size * Size;
}

/// <summary>
/// What a denoising step costs in pixel space and in latent space (chapter 10.1): the same U-Net on 3×H×W pixels or
/// c×(H/f)×(W/f) latents. Time and peak memory are measured; FLOPs and activation elements are counted by
/// <see cref="ComputeCost"/>, and extrapolated exactly to sizes too large to run.
/// </summary>
public static class UNetCost
{
    /// <summary>
    /// Times <paramref name="reps"/> training steps (forward, ε-MSE, backward, AdamW) after one warm-up step and
    /// measures the peak memory of one; counts the forward pass. The config's in/out channels are replaced by
    /// <paramref name="channels"/>.
    /// </summary>
    public static StepMeasurement TrainingStep(UNetConfig config, string label, int channels, int size, int batch, int contextTokens, int reps = 3, long seed = 0)
    {
        if (size % (1 << (config.BlockOutChannels.Length - 1)) != 0)
            throw new ArgumentException($"size {size} is not divisible by the U-Net's downsampling 2^{config.BlockOutChannels.Length - 1}", nameof(size));
        manual_seed(seed);
        using var model = new UNet2DConditionModel(config with { InChannels = channels, OutChannels = channels });
        var opt = new AdamW(model.named_parameters().Select(kv => (kv.name, kv.parameter)), 1e-4);
        using var gen = new Generator((ulong)seed);
        var x = randn([batch, channels, size, size], generator: gen);
        var noise = randn([batch, channels, size, size], generator: gen);
        var context = randn([batch, contextTokens, config.CrossAttentionDim], generator: gen);
        var t = full([batch], 500L);
        void Step()
        {
            using var scope = NewDisposeScope();
            opt.ZeroGrad();
            var loss = (model.Forward(x, t, context) - noise).pow(2).mean();
            loss.backward();
            opt.Step();
        }
        Step();
        var times = new List<double>();
        for (int i = 0; i < reps; i++)
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            Step();
            times.Add(sw.Elapsed.TotalSeconds);
        }
        long? peak = ProcessMemory.PeakIncrease(Step);
        CostProfile forward;
        using (no_grad()) using (NewDisposeScope()) forward = ComputeCost.Count(model, () => model.Forward(x, t, context));
        times.Sort();
        return new StepMeasurement(label, channels, size, batch, times[times.Count / 2], peak, forward);
    }

    /// <summary>The forward cost of <paramref name="model"/> at batch 1 on a size×size input (no gradients), in the
    /// weights' dtype (counts do not depend on it: a bfloat16 model counts like its float32 twin in half the memory).
    /// </summary>
    public static CostProfile Forward(UNet2DConditionModel model, int size, int contextTokens)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var dtype = model.parameters().First().dtype;
        var x = zeros(1, model.Config.InChannels, size, size, dtype: dtype);                  // [1, C, size, size]
        var context = zeros(1, contextTokens, model.Config.CrossAttentionDim, dtype: dtype);  // [1, tokens, d]
        return ComputeCost.Count(model, () => model.Forward(x, tensor(500L), context));
    }

    /// <summary>
    /// The forward cost at any size, also sizes too large to run: counted at the two smallest valid sizes and
    /// extrapolated per layer (<see cref="ComputeCost.Extrapolate"/>). Sizes must be multiples of the U-Net's downsampling.
    /// </summary>
    public static Func<int, CostProfile> ForwardScaling(UNet2DConditionModel model, int contextTokens)
    {
        int m = 1 << (model.Config.BlockOutChannels.Length - 1);
        var a = Forward(model, m, contextTokens);
        var b = Forward(model, 2 * m, contextTokens);
        return size => size % m == 0 && size > 0
            ? ComputeCost.Extrapolate(a, (double)m * m, b, 4.0 * m * m, (double)size * size)
            : throw new ArgumentException($"size {size} is not a positive multiple of the U-Net's downsampling {m}", nameof(size));
    }
}
