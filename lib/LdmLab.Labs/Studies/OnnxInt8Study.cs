using LdmLab.Export;
using LdmLab.Interop.Onnx;

namespace LdmLab.Labs;

/// <summary>One sampled variant of the text-to-image model: judged accuracy of its canvases and sampling time.
/// </summary>
public sealed record OnnxInt8Row(string Variant, double Accuracy, int Samples, double SecondsPerImage);

/// <summary>
/// What int8 compute in ONNX Runtime costs the lab's text-to-image model in quality (issue #26: ≤ 2 points of
/// judged accuracy): the shipped pipeline exported as ONNX folders whose U-Net is float32, int8 dynamic or int8
/// static (<see cref="OnnxInt8"/>), each sampled from the same prompts and seeds by
/// <see cref="OnnxStableDiffusionPipeline"/> and judged by the independent classifier
/// (<see cref="TextToImageStudies.Accuracy"/>). The text encoder and VAE decoder stay float32 in every variant, so the
/// differences are the U-Net's.
/// </summary>
public static class OnnxInt8Study
{
    public const string Float32 = "ORT float32", Dynamic = "ORT int8 dynamic", Static = "ORT int8 static";

    /// <summary>The three folders under <paramref name="dir"/>; static calibration samples
    /// <paramref name="calibrationPrompts"/> with the float U-Net for <paramref name="calibrationSteps"/> DDIM steps.
    /// </summary>
    public static IReadOnlyDictionary<string, string> Export(StableDiffusionPipeline pipe, string dir,
        IReadOnlyList<string> calibrationPrompts, int calibrationSteps = 8, double guidance = 5)
    {
        var folders = new Dictionary<string, string>
        {
            [Float32] = Path.Combine(dir, "fp32"), [Dynamic] = Path.Combine(dir, "int8-dynamic"),
            [Static] = Path.Combine(dir, "int8-static"),
        };
        foreach (var folder in folders.Values) OnnxExport.SavePipeline(pipe, folder);
        OnnxInt8.QuantizeFolderUNet(folders[Dynamic], OnnxInt8Mode.Dynamic);
        using var scope = NewDisposeScope();
        OnnxInt8.QuantizeFolderUNet(folders[Static], OnnxInt8Mode.Static,
            CalibrationFeeds(pipe, calibrationPrompts, calibrationSteps, guidance));
        return folders;
    }

    /// <summary>The U-Net's inputs while the float pipeline samples <paramref name="prompts"/> on 28×56 canvases
    /// for <paramref name="steps"/> steps with guidance (seed 1): the calibration set of static int8.</summary>
    public static List<IReadOnlyDictionary<string, Tensor>> CalibrationFeeds(StableDiffusionPipeline pipe,
        IReadOnlyList<string> prompts, int steps, double guidance)
    {
        int f = pipe.VaeScaleFactor;
        return UNetCalibration.Sample(pipe.Unet, pipe.NewScheduler(), pipe.EncodePrompts(prompts),
            pipe.EncodePrompts(prompts.Select(_ => "").ToArray()),
            [CaptionedScenes.Height / f, CaptionedScenes.Width / f], steps, guidance, seed: 1);
    }

    /// <summary>Canvases [N, 1, 28, 56] in [−1, 1] as <see cref="TextToImageStudies.Generate(StableDiffusionPipeline,
    /// IReadOnlyList{ScenePrompt}, int, double, long, int, IReadOnlyList{string}?, Action{int}?)"/> draws them: the
    /// same batches and seeds.</summary>
    public static Tensor Generate(OnnxStableDiffusionPipeline pipe, IReadOnlyList<ScenePrompt> prompts, int steps,
        double guidance, long seed = 0, int batchSize = 100)
    {
        var batches = new List<Tensor>();
        for (int start = 0; start < prompts.Count; start += batchSize)
        {
            int n = Math.Min(batchSize, prompts.Count - start);
            var output = pipe.Generate(new GenerationOptions
            {
                Prompts = prompts.Skip(start).Take(n).Select(p => p.Text).ToArray(), Steps = steps,
                GuidanceScale = guidance, Height = CaptionedScenes.Height, Width = CaptionedScenes.Width,
                Seed = seed + start,
            });
            batches.Add(output.Images * 2 - 1);                                               // [0, 1] → [−1, 1]
        }
        return cat(batches.ToArray());
    }

    /// <summary>Samples and judges every folder of <see cref="Export"/>.</summary>
    public static List<OnnxInt8Row> Judge(FashionClassifier judge, IReadOnlyDictionary<string, string> folders,
        IReadOnlyList<ScenePrompt> prompts, int steps, double guidance, int? threads = null)
    {
        var rows = new List<OnnxInt8Row>();
        foreach (var (variant, folder) in folders)
        {
            using var scope = NewDisposeScope();
            using var pipe = OnnxStableDiffusionPipeline.FromFolder(folder, threads);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var canvases = Generate(pipe, prompts, steps, guidance);
            double seconds = clock.Elapsed.TotalSeconds;
            rows.Add(new OnnxInt8Row(variant, TextToImageStudies.Accuracy(judge, canvases, prompts), prompts.Count,
                seconds / prompts.Count));
        }
        return rows;
    }

    /// <summary>One bullet per int8 variant: points lost against the float32 row, beside the ≤ 2-point goal.
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<OnnxInt8Row> rows, double goalPoints = 2)
    {
        var baseline = rows.FirstOrDefault(r => r.Variant == Float32)
                       ?? throw new ArgumentException($"no '{Float32}' row to compare with", nameof(rows));
        return rows.Where(r => r != baseline).Select(r =>
        {
            double lost = 100 * (baseline.Accuracy - r.Accuracy);
            string verdict = lost <= goalPoints ? "within" : "past";
            return $"{r.Variant}: judged accuracy {100 * r.Accuracy:F1} % against {100 * baseline.Accuracy:F1} % " +
                   $"in float32 ({(lost >= 0 ? "−" : "+")}{Math.Abs(lost):F1} points, {verdict} the " +
                   $"{goalPoints:F0}-point goal) over {r.Samples} prompts.";
        }).ToList();
    }
}
