namespace LdmLab.Labs;

/// <summary>One KL weight β: held-out PSNR and what β does to the latent — the KL per latent value, the std of the
/// posterior means (what a scale factor corrects), the mean posterior std and the KS distance of the standardised
/// means to N(0, 1).</summary>
public sealed record KlWeightRow(string Name, double Beta, double Psnr, double KlPerValue, double SigmaMeans,
    double PosteriorStd, double KsDistance);

/// <summary>An autoencoder of the photo sweep with its report on the held-out crops.</summary>
public sealed record SweepResult(AutoencoderSpec Spec, ReconstructionReport Report, long Parameters,
    double? FullProfilePsnr = null);

/// <summary>
/// Notebook 02 (section 10.2, exercises 10.1 and 10.2): measurements beyond <see cref="AutoencoderRecipes.Evaluate"/>
/// and the takeaways of its tables, computed from rows alone (unit-tested on hand-made tables).
/// </summary>
public static class AutoencoderStudy
{
    /// <summary>CompVis' reported PSNR of their first-stage models (Rombach et al. 2022, appendix table): ImageNet
    /// 256×256 validation images, their architectures, channel counts and codebooks, perceptual + adversarial
    /// training. For orientation only: different data, resolution, model size and training budget.</summary>
    public static IReadOnlyDictionary<string, double> CompVisPsnr { get; } = new Dictionary<string, double>
    {
        ["KL-f4"] = 27.53, ["KL-f8"] = 24.19, ["KL-f16"] = 24.08, ["VQ-f4"] = 27.43, ["VQ-f8"] = 23.07,
        ["VQ-f16"] = 20.83,
    };

    /// <summary>A KL autoencoder's row of the β sweep, measured on <paramref name="images"/> [N, C, H, W] in
    /// [−1, 1].</summary>
    public static KlWeightRow KlWeight(TrainedAutoencoder ae, Tensor images)
    {
        var vae = (AutoencoderKL)ae.Model;
        using var _ = no_grad();
        var posterior = vae.Encode(images);                                   // means and log-variances [N, c, h, w]
        double kl = (posterior.Kl() / posterior.Mean[0].numel()).mean().item<float>();
        double sigma = posterior.Mean.std().item<float>();
        double std = posterior.Std.mean().item<float>();
        var means = posterior.Mean.flatten().data<float>().Select(v => (double)v).ToArray();
        double mu = means.Average();
        int stride = Math.Max(1, means.Length / 5000);                        // ~5,000 values for the KS distance
        double ks = Moments.KsDistanceToNormal(means.Where((_, k) => k % stride == 0)
            .Select(v => (v - mu) / sigma).ToArray());
        double psnr = ImageQuality.Psnr(ae.Reconstruct(images).clamp(-1, 1), images).mean().item<float>();
        return new KlWeightRow(ae.Spec.Name, ae.Spec.Loss.KlWeight, psnr, kl, sigma, std, ks);
    }

    /// <summary>
    /// The takeaways of notebook 02: PSNR per doubling of f (KL, c = 4); VQ against KL at each f beside CompVis'
    /// gap; where the latent values sit (f 8, c 16 against f 4, c 4); the quick evaluation against the full one; the
    /// flat mean-colour baseline; the loss ablation; the KL weight; and semantic retention on Fashion-MNIST.
    /// </summary>
    /// <param name="sweep">The rate–distortion sweep on held-out photo crops.</param>
    /// <param name="flatPsnr">PSNR of each held-out crop replaced by its mean colour.</param>
    /// <param name="ablation">L1, + perceptual, + adversarial, in that order.</param>
    /// <param name="kl">The β sweep, smallest β first.</param>
    /// <param name="fashion">The Fashion-MNIST KL and VQ models, in that order.</param>
    /// <param name="quick">The quick profile (its PSNR is then compared with the full profile's recorded one).</param>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<SweepResult> sweep, double flatPsnr,
        IReadOnlyList<ReconstructionReport> ablation, IReadOnlyList<KlWeightRow> kl, int klSteps,
        IReadOnlyList<ReconstructionReport> fashion, bool quick)
    {
        var lines = new List<string>();
        var kl4 = sweep.Where(r => !r.Spec.Vq && r.Spec.C == 4).OrderBy(r => r.Spec.F).ToList();
        double doublings = Math.Log2((double)kl4[^1].Spec.F / kl4[0].Spec.F);
        double perDoubling = (kl4[0].Report.Psnr - kl4[^1].Report.Psnr) / doublings;
        lines.Add("KL, c = 4: PSNR " + string.Join(" → ", kl4.Select(r => $"{r.Report.Psnr:F1} dB (f = {r.Spec.F})")) +
                  $": {perDoubling:F1} dB lost per doubling of f.");
        foreach (var f in new[] { 4, 8, 16 })
        {
            var k = sweep.FirstOrDefault(r => !r.Spec.Vq && r.Spec.C == 4 && r.Spec.F == f);
            var v = sweep.FirstOrDefault(r => r.Spec.Vq && r.Spec.F == f);
            if (k is null || v is null) continue;
            lines.Add($"f = {f}: VQ {v.Report.Psnr - k.Report.Psnr:+0.0;-0.0} dB against KL (CompVis: " +
                      $"{CompVisPsnr[$"VQ-f{f}"] - CompVisPsnr[$"KL-f{f}"]:+0.00;-0.00} dB); VQ uses " +
                      $"{v.Report.CodebookUsage:P0} of its codes.");
        }
        var c16 = sweep.FirstOrDefault(r => !r.Spec.Vq && r.Spec.F == 8 && r.Spec.C == 16);
        var f4 = kl4.FirstOrDefault(r => r.Spec.F == 4);
        if (c16 is not null && f4 is not null)
            lines.Add("Same number of latent values, placed differently: KL-f8-c16 " +
                      $"{c16.Report.Psnr:F1} dB vs KL-f4-c4 {f4.Report.Psnr:F1} dB.");
        var full = sweep.Where(r => r.FullProfilePsnr is not null).ToList();
        if (quick && full.Count > 0)
            lines.Add("This run's PSNR differs from the full profile's (same models, 256 crops) by at most " +
                      $"{full.Max(r => Math.Abs(r.Report.Psnr - r.FullProfilePsnr!.Value)):F2} dB over {full.Count} " +
                      "models: the small evaluation set is the only difference.");
        var best = sweep.MaxBy(r => r.Report.Psnr)!;
        var worst = sweep.MinBy(r => r.Report.Psnr)!;
        var f8 = kl4.FirstOrDefault(r => r.Spec.F == 8) ?? kl4[0];
        int beatFlat = sweep.Count(r => r.Report.Psnr > flatPsnr);
        lines.Add($"Against the flat mean-colour crop ({flatPsnr:F1} dB): {beatFlat} " +
              $"of {sweep.Count} models beat it; the best, {best.Spec.Name}, by " +
              $"{best.Report.Psnr - flatPsnr:+0.0;-0.0} dB ({best.Spec.CompressionRatio:N0}× compression), the " +
              $"weakest, {worst.Spec.Name}, by {worst.Report.Psnr - flatPsnr:+0.0;-0.0} dB " +
              $"({worst.Spec.CompressionRatio:N0}×). These photo models are small ({f8.Parameters:N0} parameters " +
              $"at f = {f8.Spec.F}, against 83.7 M in Stable Diffusion's VAE) and trained " +
              $"{kl4[0].Spec.Options.Steps:N0} steps at batch {kl4[0].Spec.Options.BatchSize}: the ordering of " +
              "the rows is the result, not their absolute level.");
        lines.Add($"Loss ablation: perceptual distance {ablation[0].Perceptual:F3} (L1) → " +
                      $"{ablation[1].Perceptual:F3} " +
                  $"(+ perceptual) → {ablation[2].Perceptual:F3} (+ adversarial), PSNR {ablation[0].Psnr:F1} → " +
                  $"{ablation[1].Psnr:F1} → {ablation[2].Psnr:F1} dB.");
        lines.Add($"KL weight {PowerOfTen(kl[0].Beta)} → {PowerOfTen(kl[^1].Beta)}: PSNR {kl[0].Psnr:F1} → " +
                  $"{kl[^1].Psnr:F1} dB, KL per value {kl[0].KlPerValue:F3} → {kl[^1].KlPerValue:F3} nats, " +
                  $"σ of the means {kl[0].SigmaMeans:F2} → " +
                  $"{kl[^1].SigmaMeans:F2}, KS distance {kl[0].KsDistance:F3} → {kl[^1].KsDistance:F3} " +
                  $"({klSteps:N0} steps each).");
        lines.Add($"Semantic retention (Fashion): the classifier scores {fashion[0].AccuracyOriginals:P1} on " +
                  $"originals, {fashion[0].AccuracyReconstructions:P1} on KL and " +
                  $"{fashion[1].AccuracyReconstructions:P1} on VQ reconstructions.");
        return lines;
    }

    /// <summary>10⁻⁶ for 1e-6, 1 for 1, 0.3 for what is not a power of ten.</summary>
    static string PowerOfTen(double x)
    {
        double k = Math.Round(Math.Log10(x));
        if (Math.Abs(x - Math.Pow(10, k)) > 1e-9 * x) return x.ToString("G3");
        if (k == 0) return "1";
        const string digits = "⁰¹²³⁴⁵⁶⁷⁸⁹";
        return "10" + (k < 0 ? "⁻" : "") + string.Concat(((int)Math.Abs(k)).ToString().Select(d => digits[d - '0']));
    }
}
