using LdmLab.Diffusion;

namespace LdmLab.Viz;

/// <summary>The chapter's standard figures for noise schedules and samplers.</summary>
public static class DiffusionPlots
{
    static double[] T(int n) => Enumerable.Range(0, n).Select(i => (double)i).ToArray();

    /// <summary>ᾱ_t against t for each schedule.</summary>
    public static ChartHtml AlphaBar(IEnumerable<NoiseSchedule> schedules) =>
        Charts.Lines("Signal fraction ᾱ_t", schedules.Select(s => new Series(s.Name, T(s.Length), s.AlphasCumprod.Select(a => (double)a).ToArray())),
            "timestep t", "ᾱ_t");

    /// <summary>SNR(t) in dB for each schedule (optionally for latents of std σ_z), with the target line (e.g. −20 dB).</summary>
    public static ChartHtml SnrDb(IEnumerable<NoiseSchedule> schedules, double signalStd = 1, double? targetDb = -20) =>
        Charts.Lines(signalStd == 1 ? "SNR(t) = ᾱ_t / (1 − ᾱ_t)" : $"Effective SNR(t) for latents with σ_z = {signalStd:G3}",
            schedules.Select(s => new Series(s.Name, T(s.Length), s.SnrDbCurve(signalStd).Select(v => double.IsFinite(v) ? v : -100).ToArray())),
            "timestep t", "SNR (dB)", hlines: targetDb is double d ? [new HLine(d, $"target {d} dB")] : null);

    /// <summary>‖x_t‖ (RMS) per sampler step, one line per sampler: how each method walks from noise to data.</summary>
    public static ChartHtml TrajectoryNorms(IReadOnlyDictionary<string, IReadOnlyList<(double t, double rms)>> runs) =>
        Charts.Lines("Sampler trajectories: RMS of x_t per step",
            runs.Select(r => new Series(r.Key, Enumerable.Range(0, r.Value.Count).Select(i => (double)i).ToArray(), r.Value.Select(v => v.rms).ToArray(),
                r.Value.Select(v => $"t = {v.t:G4}").ToArray())), "step", "RMS(x_t)", mode: "lines+markers");
}
