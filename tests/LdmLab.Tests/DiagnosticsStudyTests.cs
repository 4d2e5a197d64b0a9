using LdmLab.Metrics;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Notebook 09's diagnosis and takeaways on hand-made tables.</summary>
public class DiagnosticsStudyTests
{
    static Moments Std(double std) => new(100, 0, std, 0, 0, -3, 3);

    static List<ChannelStats> Channels(params double[] guided) =>
        guided.Select((g, c) => new ChannelStats(c, Std(1.0), Std(0.8), Std(g))).ToList();

    [Fact]
    public void The_diagnosis_names_the_channels_off_scale_and_what_guidance_did()
    {
        var fine = DiagnosticsStudy.Diagnosis(Channels(1.05, 0.9, 1.1, 0.95), guidance: 3, 0.6, 0.9);
        Assert.Contains("within 15 % of the real one (ratios 1.05, 0.90, 1.10, 0.95)", fine[0]);
        // guided over plain: (1.05 + 0.9 + 1.1 + 0.95) / 4 / 0.8 = 1.25
        Assert.Contains("by a factor 1.25 on average against w = 1 (and intended-class accuracy from 60 % to 90 %)",
            fine[1]);
        var off = DiagnosticsStudy.Diagnosis(Channels(1.4, 1.0, 0.7, 1.0), 3, 0.6, 0.9);
        Assert.Contains("channel(s) 0, 2 have a generated std 1.40, 0.70× the real one", off[0]);
    }

    [Fact]
    public void Takeaways_set_the_image_error_against_the_epsilon_error_and_rank_samplers()
    {
        long[] t = [0, 500, 999];
        double[] eps = [0.5, 0.2, 0.05], x0 = [1e-4, 0.2, 40];
        SamplerTrace Trace(string name, double accuracy) =>
            new(name, [(999, 1.0), (500, 0.9)], 100, accuracy, 100, zeros(1));
        var lines = DiagnosticsStudy.Takeaways(t, eps, x0, Channels(1, 1, 1, 1), 3,
            [Trace("DDIM", 0.9), Trace("Euler a", 0.7), Trace("Heun", 0.93)], samplerSteps: 12, accuracyGuided: 0.88,
            generationSteps: 25);
        Assert.Contains("worst at t = 999 (MSE(x̂₀) 40) and best at t = 0 (0.0001)", lines[0]);
        Assert.Contains("(0.500 at t = 0, 0.050 at t = 999) would suggest the reverse", lines[0]);
        Assert.Contains("from 70 % (Euler a) to 93 % (Heun) over 100 samples each (±5 points", lines[2]);
        Assert.Contains("88 % with DDIM at 25 steps", lines[2]);
    }
}
