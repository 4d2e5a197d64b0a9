namespace LdmLab.Tests;

/// <summary>Notebook 02's takeaways on a hand-made sweep (no training: the specs are the recipes', the reports made
/// up).</summary>
public class AutoencoderStudyTests
{
    static ReconstructionReport Report(string name, double psnr, double perceptual = 0.5, double? usage = null,
        double? originals = null, double? reconstructions = null) =>
        new(name, 64, psnr, 0.8, perceptual, 10, AccuracyOriginals: originals,
            AccuracyReconstructions: reconstructions, CodebookUsage: usage);

    [Fact]
    public void Takeaways_read_the_sweep_the_baseline_the_ablation_and_the_kl_weight()
    {
        // PSNR by spec: KL-f4 26, KL-f8 23, KL-f16 20, KL-f8-c1 21, KL-f8-c16 25, VQ-f4 25, VQ-f8 21, VQ-f16 17
        double[] psnr = [26, 23, 20, 21, 25, 25, 21, 17];
        var sweep = AutoencoderRecipes.RateDistortion().Select((spec, i) => new SweepResult(spec,
            Report(spec.Name, psnr[i], usage: spec.Vq ? 0.5 : null), Parameters: 123_456,
            FullProfilePsnr: psnr[i] + (i == 2 ? 0.3 : 0.1))).ToList();
        var ablation = new[] { Report("L1", 23, 0.6), Report("+perc", 22.5, 0.4), Report("+adv", 22, 0.35) };
        var kl = new[]
        {
            new KlWeightRow("β 1e-6", 1e-6, 24, 3.2, 2.5, 0.01, 0.08),
            new KlWeightRow("β 1", 1, 14, 0.01, 0.3, 0.95, 0.02),
        };
        var fashion = new[]
        {
            Report("KL", 25, originals: 0.93, reconstructions: 0.9), Report("VQ", 23, reconstructions: 0.85),
        };
        var lines = AutoencoderStudy.Takeaways(sweep, flatPsnr: 18, ablation, kl, klSteps: 3000, fashion, quick: true);
        string all = string.Join("\n", lines);
        Assert.Contains("PSNR 26.0 dB (f = 4) → 23.0 dB (f = 8) → 20.0 dB (f = 16): 3.0 dB lost per doubling", all);
        Assert.Contains("f = 8: VQ -2.0 dB against KL (CompVis: -1.12 dB); VQ uses 50 % of its codes", all);
        Assert.Contains("KL-f8-c16 25.0 dB vs KL-f4-c4 26.0 dB", all);
        Assert.Contains("differs from the full profile's (same models, 256 crops) by at most 0.30 dB over 8", all);
        // 17 dB (VQ-f16) does not beat 18 dB: 7 of 8
        Assert.Contains("(18.0 dB): 7 of 8 models beat it; the best, KL-f4-c4, by +8.0 dB", all);
        Assert.Contains("the weakest, VQ-f16-c4, by -1.0 dB", all);
        Assert.Contains("perceptual distance 0.600 (L1) → 0.400 (+ perceptual) → 0.350 (+ adversarial)", all);
        Assert.Contains("KL weight 10⁻⁶ → 1: PSNR 24.0 → 14.0 dB", all);
        Assert.Contains("93.0 % on originals, 90.0 % on KL and 85.0 % on VQ reconstructions", all);
        Assert.DoesNotContain(AutoencoderStudy.Takeaways(sweep, 18, ablation, kl, 3000, fashion, quick: false),
            l => l.Contains("full profile's"));
    }
}
