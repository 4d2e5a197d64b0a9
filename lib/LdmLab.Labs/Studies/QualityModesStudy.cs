using System.Diagnostics;

namespace LdmLab.Labs;

/// <summary>One (f, steps) setting: the judge's verdict on its samples, wall time per image, the U-Net's
/// multiply-adds per evaluation and the autoencoder's own reconstruction PSNR.</summary>
public sealed record ModeRow(int F, int Steps, double Accuracy, double Frechet, double MsPerImage, double Flops,
    double Psnr);

/// <summary>A mode of the chapter's table (10.3.5) beside the lab's measurement of it.</summary>
/// <param name="SpeedUp">U-Net multiply-adds of the pixel-space U-Net at 50 steps over the mode's (f, steps).</param>
public sealed record ModeComparison(QualityModesRecipe.Mode Mode, ModeRow Lab, double SpeedUp, string ChapterF,
    string ChapterSpeedUp, string ChapterFid);

/// <summary>
/// Notebook 06c (section 10.3.5): draft, balanced and quality as (f, steps) pairs — one autoencoder and one
/// class-conditional denoiser per downsampling factor f — measured for cost, time and quality, and set beside the
/// chapter's table. Takeaways are computed from rows alone.
/// </summary>
public sealed class QualityModesStudy
{
    readonly FashionClassifier _judge;
    readonly FrechetReference _frechet;

    /// <summary>The chapter's table: f, speed-up over pixel space and FID for draft, balanced and quality.</summary>
    public static IReadOnlyList<(string F, string SpeedUp, string Fid)> Chapter { get; } =
        [("16", "150–200×", "~25"), ("8", "40–60×", "~10"), ("4", "10–15×", "~5")];

    public QualityModesStudy(FashionClassifier judge, Tensor referenceImages)
    {
        _judge = judge;
        _frechet = new FrechetReference(judge, referenceImages);
    }

    /// <summary>
    /// Each f at each of its step counts: <paramref name="samples"/> class-conditional samples (classes 0…9 in turn,
    /// DDIM, guidance w), judged on the 28×28 item inside the 32×32 canvas; the autoencoder's PSNR on
    /// <paramref name="testCanvases"/> (real, padded).
    /// </summary>
    public IReadOnlyList<ModeRow> Run(IReadOnlyDictionary<int, QualityModesRecipe.TrainedMode> models,
        Tensor testCanvases, int samples, Func<int, IReadOnlyList<int>> stepsFor, double guidance = 3, long seed = 5)
    {
        var labels = arange(samples, dtype: ScalarType.Int64) % 10;                            // [n]
        var rows = new List<ModeRow>();
        foreach (var (f, m) in models.OrderBy(kv => kv.Key))
        {
            double psnr;
            using (no_grad())
                psnr = ImageQuality.Psnr(m.Vae.Decode(m.Vae.Encode(testCanvases).Mean).clamp(-1, 1), testCanvases)
                    .mean().item<float>();
            double flops = UNetCost.Forward(m.Denoiser.Backbone, QualityModesRecipe.Size / f, 1).Flops;
            foreach (int steps in stepsFor(f))
            {
                var clock = Stopwatch.StartNew();
                var canvases = QualityModesRecipe.Sample(m, labels, steps, guidance, seed);      // [n, 1, 32, 32]
                clock.Stop();
                var items = QualityModesRecipe.Crop(canvases);                                 // [n, 1, 28, 28]
                var predicted = TextToImageStudies.Classify(_judge, items);
                double accuracy = predicted.Select((c, i) => c == i % 10 ? 1.0 : 0.0).Average();
                rows.Add(new ModeRow(f, steps, accuracy, _frechet.Of(items),
                    clock.Elapsed.TotalMilliseconds / samples, flops, psnr));
            }
        }
        return rows;
    }

    /// <summary>The chapter's modes beside the lab's rows at the same (f, steps); speed-up against a pixel-space
    /// U-Net costing <paramref name="pixelFlops"/> per evaluation, sampled for 50 steps.</summary>
    public static IReadOnlyList<ModeComparison> Compare(IReadOnlyList<ModeRow> rows, double pixelFlops) =>
        QualityModesRecipe.Modes.Select((mode, i) =>
        {
            var r = rows.First(x => x.F == mode.F && x.Steps == mode.Steps);
            return new ModeComparison(mode, r, pixelFlops * 50 / (r.Flops * mode.Steps), Chapter[i].F,
                Chapter[i].SpeedUp, Chapter[i].Fid);
        }).ToList();

    /// <summary>
    /// Three points: time and multiply-adds between draft and quality; accuracy, Fréchet distance and autoencoder
    /// PSNR per mode (and whether the coarsest latent costs quality, as in the chapter); and what one fixed training
    /// budget does to the finest latent (<paramref name="finalLoss"/>: each f's final per-value ε-MSE).
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<ModeRow> rows,
        IReadOnlyDictionary<int, double> finalLoss, int trainingSteps)
    {
        ModeRow At(QualityModesRecipe.Mode m) => rows.First(r => r.F == m.F && r.Steps == m.Steps);
        var (draft, balanced, quality) = (At(QualityModesRecipe.Modes[0]), At(QualityModesRecipe.Modes[1]),
            At(QualityModesRecipe.Modes[2]));
        var bestAccuracy = rows.MaxBy(r => r.Accuracy)!;
        var bestFrechet = rows.MinBy(r => r.Frechet)!;
        static int Values(int f) => 4 * (QualityModesRecipe.Size / f) * (QualityModesRecipe.Size / f);
        bool qualityWorst = quality.Frechet >= Math.Max(draft.Frechet, balanced.Frechet);
        return
        [
            $"Modes: draft (f {draft.F}, {draft.Steps} steps) takes {draft.MsPerImage:F1} ms per image, balanced " +
            $"(f {balanced.F}, {balanced.Steps}) {balanced.MsPerImage:F1} ms, quality (f {quality.F}, " +
            $"{quality.Steps}) {quality.MsPerImage:F1} ms — {quality.MsPerImage / draft.MsPerImage:F0}× between the " +
            $"ends, where the U-Net's multiply-adds differ " +
            $"{quality.Flops * quality.Steps / (draft.Flops * draft.Steps):F0}× (CPU time on these tiny models also " +
            "pays fixed costs per call).",
            $"Quality: accuracy draft {draft.Accuracy:P0}, balanced {balanced.Accuracy:P0}, quality " +
            $"{quality.Accuracy:P0}; Fréchet {draft.Frechet:F2} / {balanced.Frechet:F2} / {quality.Frechet:F2}; the " +
            $"autoencoders alone reconstruct at {draft.Psnr:F1} / {balanced.Psnr:F1} / {quality.Psnr:F1} dB " +
            $"(f {draft.F} / {balanced.F} / {quality.F}). " +
            (draft.Frechet > quality.Frechet && draft.Frechet > balanced.Frechet
                ? "As in the chapter's table, the coarsest latent costs quality: its decoder cannot draw what " +
                  $"{Values(draft.F)} numbers do not hold."
                : "Unlike the chapter's table, the coarsest latent is not the worst here.") +
            $" Best accuracy of the {rows.Count} settings: f {bestAccuracy.F} with {bestAccuracy.Steps} steps " +
            $"({bestAccuracy.Accuracy:P0}); best Fréchet: f {bestFrechet.F} with {bestFrechet.Steps} " +
            $"({bestFrechet.Frechet:F2}).",
            $"Budget: every denoiser had the same {trainingSteps:N0} steps, but at f = {quality.F} it models " +
            $"{Values(quality.F):N0} numbers per image against {Values(draft.F)} at f = {draft.F}. Its final ε-MSE " +
            $"per value is {finalLoss[quality.F]:F3} against {finalLoss[balanced.F]:F3} (f {balanced.F}) and " +
            $"{finalLoss[draft.F]:F3} (f {draft.F}) — neighbouring values of a fine latent are redundant, so " +
            "per-value losses do not compare across f. " +
            (qualityWorst
                ? $"Yet its samples have the worst Fréchet distance of the three modes ({quality.Frechet:F2}): small " +
                  "errors in many more values decode to speckle. The chapter's quality mode assumes a denoiser " +
                  "trained long enough for its latent; at one fixed budget the sharpest autoencoder does not give " +
                  "the best sample set."
                : $"Its samples' Fréchet distance ({quality.Frechet:F2}) is not the worst of the three modes here, " +
                  "so the fixed budget does not visibly hold the fine latent back in this run."),
        ];
    }
}
