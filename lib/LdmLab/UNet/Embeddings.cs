using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.UNet;

/// <summary>
/// Sinusoidal timestep features (Vaswani et al.; diffusers' get_timestep_embedding):
/// ω_i = exp(−ln(10000)·i/(d/2 − shift)), emb = [sin(tω), cos(tω)] (cos first when flip_sin_to_cos).
/// </summary>
public static class TimestepFeatures
{
    public static Tensor Embed(Tensor timesteps, int dim, bool flipSinToCos, double freqShift, double maxPeriod = 10000)
    {
        int half = dim / 2;
        var exponent = arange(0, half, dtype: ScalarType.Float32, device: timesteps.device) * (float)(-Math.Log(maxPeriod));
        var freqs = (exponent / (float)(half - freqShift)).exp();
        var args = timesteps.to_type(ScalarType.Float32).unsqueeze(1) * freqs.unsqueeze(0);
        var emb = cat([args.sin(), args.cos()], -1);
        if (flipSinToCos) emb = cat([emb[.., half..], emb[.., ..half]], -1);
        if (dim % 2 == 1) emb = nn.functional.pad(emb, [0, 1, 0, 0]);
        return emb;
    }
}

/// <summary>MLP on the timestep features: linear_1 → SiLU → linear_2 (diffusers' TimestepEmbedding).</summary>
public sealed class TimestepEmbedding : nn.Module<Tensor, Tensor>
{
    readonly nn.Module<Tensor, Tensor> linear_1, linear_2;   // Linear (or what Compression swaps in)

    public TimestepEmbedding(int inChannels, int timeEmbedDim) : base(nameof(TimestepEmbedding))
    {
        linear_1 = nn.Linear(inChannels, timeEmbedDim);
        linear_2 = nn.Linear(timeEmbedDim, timeEmbedDim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => linear_2.call(nn.functional.silu(linear_1.call(x)));
}
