using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Diffusion;

/// <summary>
/// A discrete variance-preserving noise schedule: β_t, α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s (t = 0 … T−1).
/// Values are kept as float32, computed the way diffusers computes them (float32 betas, float32 cumprod), so that
/// schedulers built on top reproduce diffusers' trajectories.
/// </summary>
public sealed class NoiseSchedule
{
    public float[] Betas { get; }
    public float[] AlphasCumprod { get; }
    public int Length => Betas.Length;
    public string Name { get; }

    public NoiseSchedule(float[] betas, string name = "custom", bool zeroTerminalSnr = false)
    {
        if (betas.Length < 2) throw new ArgumentException("a schedule needs at least 2 steps", nameof(betas));
        if (betas.Any(b => !(b > 0 && b <= 1))) throw new ArgumentException("every β must lie in (0, 1]", nameof(betas));
        Betas = zeroTerminalSnr ? RescaleZeroTerminalSnr(betas) : betas;
        Name = zeroTerminalSnr ? name + "+zero-snr" : name;
        AlphasCumprod = CumprodOneMinus(Betas);
    }

    /// <summary>β linear in t from β_start to β_end (DDPM: 1e-4 → 0.02).</summary>
    public static NoiseSchedule Linear(int steps = 1000, double betaStart = 1e-4, double betaEnd = 0.02, bool zeroTerminalSnr = false) =>
        new(Linspace(betaStart, betaEnd, steps), "linear", zeroTerminalSnr);

    /// <summary>√β linear in t (Stable Diffusion: 0.00085 → 0.012).</summary>
    public static NoiseSchedule ScaledLinear(int steps = 1000, double betaStart = 0.00085, double betaEnd = 0.012, bool zeroTerminalSnr = false) =>
        new(Linspace(Math.Sqrt(betaStart), Math.Sqrt(betaEnd), steps).Select(v => v * v).ToArray(), "scaled_linear", zeroTerminalSnr);

    /// <summary>Cosine (Nichol &amp; Dhariwal): ᾱ(t) = cos²((t/T + s)/(1 + s)·π/2), β_i = min(1 − ᾱ(i+1)/ᾱ(i), 0.999), s = 0.008.</summary>
    public static NoiseSchedule Cosine(int steps = 1000, double maxBeta = 0.999, bool zeroTerminalSnr = false)
    {
        static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
        var betas = new float[steps];
        for (int i = 0; i < steps; i++)
            betas[i] = (float)Math.Min(1 - AlphaBar((i + 1.0) / steps) / AlphaBar((double)i / steps), maxBeta);
        return new NoiseSchedule(betas, "squaredcos_cap_v2", zeroTerminalSnr);
    }

    /// <summary>A schedule by its diffusers name: linear, scaled_linear, squaredcos_cap_v2.</summary>
    public static NoiseSchedule FromName(string name, int steps = 1000, double betaStart = 1e-4, double betaEnd = 0.02, bool zeroTerminalSnr = false, float[]? trainedBetas = null) =>
        trainedBetas is not null ? new NoiseSchedule(trainedBetas, "trained", zeroTerminalSnr) : name switch
        {
            "linear" => Linear(steps, betaStart, betaEnd, zeroTerminalSnr),
            "scaled_linear" => ScaledLinear(steps, betaStart, betaEnd, zeroTerminalSnr),
            "squaredcos_cap_v2" => Cosine(steps, zeroTerminalSnr: zeroTerminalSnr),
            _ => throw new ArgumentException($"beta_schedule '{name}' is not one of linear, scaled_linear, squaredcos_cap_v2", nameof(name)),
        };

    /// <summary>
    /// The chapter's SNR-adaptive schedule. For latents with standard deviation σ_z the forward process
    /// z_t = √ᾱ_t z_0 + √(1−ᾱ_t) ε has SNR_eff(t) = ᾱ_t σ_z² / (1 − ᾱ_t). Keeping SD's scaled-linear shape and β_start,
    /// β_end is chosen (by bisection) so that SNR_eff at the last step equals the target (default −20 dB):
    /// ᾱ_T = s / (σ_z² + s) with s = 10^(dB/10). Larger σ_z needs more noise to reach the same SNR.
    /// </summary>
    public static NoiseSchedule SnrAdaptive(double latentStd, double targetFinalSnrDb = -20, int steps = 1000, double betaStart = 0.00085)
    {
        if (!(latentStd > 0)) throw new ArgumentOutOfRangeException(nameof(latentStd), latentStd, "σ_z must be positive");
        double s = Math.Pow(10, targetFinalSnrDb / 10), target = s / (latentStd * latentStd + s);
        double FinalAlphaBar(double betaEnd) => ScaledLinear(steps, betaStart, betaEnd).AlphasCumprod[^1];
        double lo = betaStart * 1.0001, hi = 0.999;
        if (FinalAlphaBar(hi) > target) throw new ArgumentException($"no β_end ≤ 0.999 reaches {targetFinalSnrDb} dB for σ_z = {latentStd}");
        if (FinalAlphaBar(lo) < target) hi = lo;  // even a flat schedule is noisy enough
        for (int i = 0; i < 100 && hi - lo > 1e-12; i++)
        {
            double mid = 0.5 * (lo + hi);
            if (FinalAlphaBar(mid) > target) lo = mid; else hi = mid;
        }
        var result = ScaledLinear(steps, betaStart, hi);
        return new NoiseSchedule(result.Betas, $"snr_adaptive(σz={latentStd:G3}, {targetFinalSnrDb} dB)");
    }

    /// <summary>Lin et al. 2023: shift and scale √ᾱ so that ᾱ_T = 0 (zero terminal SNR) and ᾱ_0 is unchanged.</summary>
    public static float[] RescaleZeroTerminalSnr(float[] betas)
    {
        var sqrtAb = CumprodOneMinus(betas).Select(a => MathF.Sqrt(a)).ToArray();
        float a0 = sqrtAb[0], aT = sqrtAb[^1];
        var ab = sqrtAb.Select(v => { var r = (v - aT) * (a0 / (a0 - aT)); return r * r; }).ToArray();
        var outBetas = new float[betas.Length];
        outBetas[0] = 1 - ab[0];
        for (int i = 1; i < ab.Length; i++) outBetas[i] = 1 - ab[i] / ab[i - 1];
        return outBetas;
    }

    /// <summary>SNR(t) = ᾱ_t / (1 − ᾱ_t), optionally for latents of standard deviation σ_z (× σ_z²).</summary>
    public double Snr(int t, double signalStd = 1) => AlphasCumprod[t] * signalStd * signalStd / (1.0 - AlphasCumprod[t]);

    /// <summary>SNR(t) in decibels: 10·log10 SNR(t).</summary>
    public double SnrDb(int t, double signalStd = 1) => 10 * Math.Log10(Snr(t, signalStd));

    public double[] SnrDbCurve(double signalStd = 1) => Enumerable.Range(0, Length).Select(t => SnrDb(t, signalStd)).ToArray();

    /// <summary>q(z_t | z_0): z_t = √ᾱ_t z_0 + √(1 − ᾱ_t) ε, per batch element t (int64 tensor [N]).</summary>
    public Tensor AddNoise(Tensor z0, Tensor noise, Tensor t)
    {
        var ab = tensor(AlphasCumprod).to(z0.device)[t.to(z0.device).to_type(ScalarType.Int64)];   // ᾱ_t per sample [B]
        var shape = new long[z0.dim()];
        Array.Fill(shape, 1L);
        shape[0] = -1;
        ab = ab.reshape(shape).to_type(z0.dtype);
        return ab.sqrt() * z0 + (1 - ab).sqrt() * noise;
    }

    /// <summary>The velocity target v = √ᾱ_t ε − √(1 − ᾱ_t) z_0 (Salimans &amp; Ho).</summary>
    public Tensor Velocity(Tensor z0, Tensor noise, Tensor t)
    {
        var ab = tensor(AlphasCumprod).to(z0.device)[t.to(z0.device).to_type(ScalarType.Int64)];   // ᾱ_t per sample [B]
        var shape = Enumerable.Repeat(1L, (int)z0.dim()).ToArray();
        shape[0] = -1;
        ab = ab.reshape(shape).to_type(z0.dtype);
        return ab.sqrt() * noise - (1 - ab).sqrt() * z0;
    }

    // torch.linspace(start, end, n, dtype=float32): start + i·step, the second half computed from the end.
    internal static float[] Linspace(double start, double end, int n)
    {
        TorchSharp.torch.InitializeDeviceType(DeviceType.CPU);
        using var t = linspace(start, end, n, ScalarType.Float32);
        return t.data<float>().ToArray();
    }

    // ᾱ = cumprod(1 − β) in float32, sequentially as torch.cumprod does on CPU.
    static float[] CumprodOneMinus(float[] betas)
    {
        var r = new float[betas.Length];
        float acc = 1f;
        for (int i = 0; i < betas.Length; i++) { acc *= 1f - betas[i]; r[i] = acc; }
        return r;
    }
}
