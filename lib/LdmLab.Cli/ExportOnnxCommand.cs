using System.Globalization;
using LdmLab.Data;
using LdmLab.Export;
using LdmLab.Interop.Hub;
using LdmLab.Interop.Onnx;
using LdmLab.Pipelines;
using LdmLab.Runtime;

namespace LdmLab.Cli;

/// <summary>
/// <c>ldmlab export-onnx</c>: a Stable Diffusion pipeline (a diffusers folder, a hub repo id or a one-file
/// checkpoint, or the lab's shipped text-to-image model) written as an ONNX Stable Diffusion folder
/// (<see cref="OnnxExport.SavePipeline"/>), its U-Net optionally as int8 (<see cref="OnnxInt8"/>). Every argument
/// error names its argument and exits 2.
/// </summary>
public static class ExportOnnxCommand
{
    public const string Usage = """
        usage: ldmlab export-onnx --model DIR|REPO_ID|FILE --out DIR [options]
          --model DIR|REPO_ID|FILE   a diffusers pipeline folder, a hub repo id, or a one-file SD .safetensors
          --out DIR                  the ONNX folder to write: unet/, vae_encoder/, vae_decoder/, text_encoder/
                                     (model.onnx each), tokenizer/, scheduler/, model_index.json
          --variant NAME             weights variant of a folder or repo id, e.g. fp16 (exported as float32)
          --external-data-threshold BYTES
                                     weights past this size go to a side file (default 2000000000; the U-Net's is
                                     unet/weights.pb)
          --int8 dynamic|static      the U-Net (the per-step cost) as int8 compute in ONNX Runtime: weights int8 per
                                     output channel; activations scaled per call (dynamic: MatMulInteger; its
                                     convolutions stay float, ORT's ConvInteger being slower than float) or from
                                     calibration (static: QDQ → QLinearConv, MatMulIntegerToFloat). conv_in,
                                     conv_out, the time embedding, normalisations and attention products stay float
          --calibration-prompts FILE static only, required: prompts (one a line) sampled with the float U-Net;
                                     the U-Net inputs met on the way give the activation ranges
          --calibration-steps N      static only: sampler steps per calibration run (default 8)
        """;

    sealed record Arguments(string Model, string Out, string? Variant, long Threshold, OnnxInt8Mode? Int8,
        string? CalibrationPrompts, int CalibrationSteps);

    public static int Run(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help")
        {
            Console.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        var a = Parse(args);
        TorchRuntime.Setup();
        Lab.SetThreads();
        var (pipeline, size) = Load(a);
        var save = new OnnxSaveOptions { ExternalDataThreshold = a.Threshold };
        try
        {
            OnnxExport.SavePipeline(pipeline, a.Out, save);
            if (a.Int8 is { } mode) Console.WriteLine(QuantizeUNet(a, mode, pipeline, size, save));
        }
        catch (Exception e) when (e is OnnxExportException or OnnxQuantizationException)
        {
            throw new CliArgumentException($"--model '{a.Model}' cannot be exported to ONNX: {e.Message}");
        }
        foreach (var file in Directory.GetFiles(a.Out, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
            Console.WriteLine($"{Path.GetRelativePath(a.Out, file),-40} {new FileInfo(file).Length,14:N0} bytes");
        return 0;
    }

    /// <summary>unet/model.onnx rewritten as int8 (<see cref="OnnxInt8.QuantizeFolderUNet"/>); static calibration
    /// samples the prompts with the float U-Net at the pipeline's image size.</summary>
    static OnnxInt8Report QuantizeUNet(Arguments a, OnnxInt8Mode mode, StableDiffusionPipeline pipe,
        (int H, int W)? size, OnnxSaveOptions save)
    {
        if (mode == OnnxInt8Mode.Dynamic) return OnnxInt8.QuantizeFolderUNet(a.Out, mode, save: save);
        var prompts = File.ReadAllLines(a.CalibrationPrompts!).Where(l => l.Trim().Length > 0).ToArray();
        if (prompts.Length == 0)
            throw new CliArgumentException($"--calibration-prompts '{a.CalibrationPrompts}': no prompts in it");
        int f = pipe.VaeScaleFactor, native = pipe.Unet.Config.SampleSize * f;
        var (h, w) = size ?? (native, native);
        using var scope = TorchSharp.torch.NewDisposeScope();
        var feeds = UNetCalibration.Sample(pipe.Unet, pipe.NewScheduler(), pipe.EncodePrompts(prompts),
            pipe.EncodePrompts(prompts.Select(_ => "").ToArray()), [h / f, w / f], a.CalibrationSteps, guidance: 7.5);
        return OnnxInt8.QuantizeFolderUNet(a.Out, mode, feeds, save);
    }

    static Arguments Parse(string[] args)
    {
        var values = new Dictionary<string, string>();
        string[] known = ["--model", "--out", "--variant", "--external-data-threshold", "--int8",
            "--calibration-prompts", "--calibration-steps"];
        for (int i = 0; i < args.Length; i++)
        {
            var name = args[i];
            if (!known.Contains(name))
                throw new CliArgumentException($"{name}: not an option of ldmlab export-onnx\n\n{Usage}");
            if (i + 1 >= args.Length || args[i + 1].StartsWith("--", StringComparison.Ordinal))
                throw new CliArgumentException($"{name} needs a value");
            if (!values.TryAdd(name, args[++i])) throw new CliArgumentException($"{name} is given twice");
        }
        string Required(string name) => values.TryGetValue(name, out var v) && v.Trim().Length > 0 ? v
            : throw new CliArgumentException($"{name} is required\n\n{Usage}");
        long threshold = OnnxSaveOptions.DefaultExternalDataThreshold;
        if (values.TryGetValue("--external-data-threshold", out var t)
            && !(long.TryParse(t, NumberStyles.Integer, CultureInfo.InvariantCulture, out threshold) && threshold >= 0))
            throw new CliArgumentException($"--external-data-threshold '{t}': expected a whole number of bytes ≥ 0");
        OnnxInt8Mode? int8 = values.GetValueOrDefault("--int8") switch
        {
            null => null,
            "dynamic" => OnnxInt8Mode.Dynamic,
            "static" => OnnxInt8Mode.Static,
            var other => throw new CliArgumentException($"--int8 '{other}': expected dynamic or static"),
        };
        var prompts = values.GetValueOrDefault("--calibration-prompts");
        int steps = 8;
        if (values.TryGetValue("--calibration-steps", out var st)
            && !(int.TryParse(st, NumberStyles.Integer, CultureInfo.InvariantCulture, out steps) && steps >= 1))
            throw new CliArgumentException($"--calibration-steps '{st}': expected a whole number ≥ 1");
        if (int8 == OnnxInt8Mode.Static && prompts is null)
            throw new CliArgumentException("--int8 static needs --calibration-prompts FILE (prompts, one a line)");
        if (int8 != OnnxInt8Mode.Static && (prompts is not null || values.ContainsKey("--calibration-steps")))
            throw new CliArgumentException("--calibration-prompts and --calibration-steps go with --int8 static");
        if (prompts is not null && !File.Exists(prompts))
            throw new CliArgumentException($"--calibration-prompts '{prompts}': no such file");
        var a = new Arguments(Required("--model"), Required("--out"), values.GetValueOrDefault("--variant"),
            threshold, int8, prompts, steps);
        if (File.Exists(a.Out)) throw new CliArgumentException($"--out '{a.Out}': a file, expected a folder");
        return a;
    }

    /// <summary>The pipeline, and the image size it draws at when not square-native (the lab's shipped
    /// text-to-image model: 28×56 canvases).</summary>
    static (StableDiffusionPipeline, (int H, int W)?) Load(Arguments a)
    {
        try
        {
            if (File.Exists(a.Model)) return (StableDiffusionPipeline.FromSingleFile(a.Model), null);
            if (Directory.Exists(a.Model) && TextToImageRecipe.ShippedPipeline(a.Model) is { } shipped)
                return (shipped, (CaptionedScenes.Height, CaptionedScenes.Width));
            var hub = a.Variant is null ? null : HubOptions.FromEnvironment() with { Variant = a.Variant };
            return (StableDiffusionPipeline.FromPretrained(a.Model, hub), null);
        }
        catch (Exception e) when (e is SingleFileException or HubException or DatasetException or FileNotFoundException
                                      or DirectoryNotFoundException or ArgumentException or FormatException
                                      or NotSupportedException or InvalidDataException)
        {
            throw new CliArgumentException($"--model '{a.Model}': {e.Message}");
        }
    }
}
