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
/// checkpoint) written as an ONNX Stable Diffusion folder (<see cref="OnnxExport.SavePipeline"/>). Every argument
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
        """;

    sealed record Arguments(string Model, string Out, string? Variant, long Threshold);

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
        var pipeline = Load(a);
        try
        {
            OnnxExport.SavePipeline(pipeline, a.Out, new OnnxSaveOptions { ExternalDataThreshold = a.Threshold });
        }
        catch (OnnxExportException e)
        {
            throw new CliArgumentException($"--model '{a.Model}' cannot be exported to ONNX: {e.Message}");
        }
        foreach (var file in Directory.GetFiles(a.Out, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
            Console.WriteLine($"{Path.GetRelativePath(a.Out, file),-40} {new FileInfo(file).Length,14:N0} bytes");
        return 0;
    }

    static Arguments Parse(string[] args)
    {
        var values = new Dictionary<string, string>();
        string[] known = ["--model", "--out", "--variant", "--external-data-threshold"];
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
        var a = new Arguments(Required("--model"), Required("--out"), values.GetValueOrDefault("--variant"),
            threshold);
        if (File.Exists(a.Out)) throw new CliArgumentException($"--out '{a.Out}': a file, expected a folder");
        return a;
    }

    static StableDiffusionPipeline Load(Arguments a)
    {
        try
        {
            if (File.Exists(a.Model)) return StableDiffusionPipeline.FromSingleFile(a.Model);
            var hub = a.Variant is null ? null : HubOptions.FromEnvironment() with { Variant = a.Variant };
            return StableDiffusionPipeline.FromPretrained(a.Model, hub);
        }
        catch (Exception e) when (e is SingleFileException or HubException or DatasetException or FileNotFoundException
                                      or DirectoryNotFoundException or ArgumentException or FormatException
                                      or NotSupportedException or InvalidDataException)
        {
            throw new CliArgumentException($"--model '{a.Model}': {e.Message}");
        }
    }
}
