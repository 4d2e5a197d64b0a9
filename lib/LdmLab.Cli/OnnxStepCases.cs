using LdmLab.Compression;
using LdmLab.Data;
using LdmLab.Export;
using LdmLab.Interop.Onnx;
using LdmLab.Pipelines;
using LdmLab.UNet;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// One classifier-free-guided U-Net step of the lab's shipped text-to-image model (data/checkpoints/fashion-text2img,
/// <see cref="TextToImageRecipe"/>) as notebooks 05/06 sample it: 64 captions with guidance, so 128 rows of 4×7×14
/// latents at t = 500 with their caption encodings, no gradients. Every variant gets the same inputs; the ONNX
/// Runtime ones run the project's own export (<see cref="OnnxExport"/>) with as many intra-op threads as
/// TorchSharp has, and each timed call includes copying the inputs in and the output back, as a pipeline does.
/// </summary>
abstract class TextToImageStep : StepCase
{
    protected readonly StableDiffusionPipeline Pipe;
    protected readonly Tensor Sample, Timestep, Context;
    readonly string? _dir;

    protected TextToImageStep(bool needsDir = false)
    {
        var root = ArtifactStore.Current.CheckpointsRoot
                   ?? throw new CliArgumentException("no data/checkpoints folder found for the text-to-image cases");
        var dir = Path.Combine(root, TextToImageRecipe.Shipped);
        Pipe = TextToImageRecipe.ShippedPipeline(dir)
               ?? throw new CliArgumentException($"{dir}: the shipped text-to-image model is not there");
        using var noGrad = no_grad();
        var captions = Enumerable.Range(0, 64).Select(i => CaptionedFashion.WithArticle("a {0} on the left",
            CaptionedFashion.Nouns[i % CaptionedFashion.Nouns.Length])).ToArray();
        var cond = Pipe.EncodePrompts(captions);                                          // [64, L, 32]
        var uncond = Pipe.EncodePrompts(captions.Select(_ => "").ToArray());
        Context = cat([uncond, cond]).DetachFromDisposeScope();                           // [128, L, 32]
        var z = randn(new long[] { 64, 4, CaptionedScenes.Height / Pipe.VaeScaleFactor,
                CaptionedScenes.Width / Pipe.VaeScaleFactor },
            generator: new Generator(0));
        Sample = cat([z, z]).DetachFromDisposeScope();                                    // [128, 4, 7, 14]
        Timestep = tensor(500f);
        if (needsDir) _dir = Directory.CreateTempSubdirectory("ldmlab-bench-onnx-").FullName;
    }

    protected string Dir => _dir!;

    protected Dictionary<string, Tensor> Feed => new()
    {
        ["sample"] = Sample, ["timestep"] = Timestep, ["encoder_hidden_states"] = Context,
    };

    /// <summary>The float graph of the shipped U-Net, exported into <see cref="Dir"/>.</summary>
    protected string ExportFloat()
    {
        var path = Path.Combine(Dir, "unet.onnx");
        OnnxExport.ExportUNet(Pipe.Unet, path);
        return path;
    }

    public override void Dispose()
    {
        if (_dir is not null && Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }
}

/// <summary>TorchSharp float32, or with int8 weight-only layers (<see cref="Int8Weights"/>: dequantized in each
/// forward, float compute).</summary>
sealed class TextToImageTorchStep : TextToImageStep
{
    public TextToImageTorchStep(bool int8Weights)
    {
        if (int8Weights) Int8Weights.Quantize(Pipe.Unet);
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Pipe.Unet.Forward(Sample, Timestep, Context);
    }
}

/// <summary>ONNX Runtime (CPU) on the exported graph: float32, int8 dynamic (convolutions as
/// the constructor says, default float) or int8 static (calibrated on 8
/// captions × 8 DDIM steps sampled by the float U-Net, <see cref="UNetCalibration"/>).</summary>
sealed class TextToImageOrtStep : TextToImageStep
{
    readonly OnnxSession _session;

    public TextToImageOrtStep(OnnxInt8Mode? int8, bool? convolutions = null) : base(needsDir: true)
    {
        var model = ExportFloat();
        if (int8 is OnnxInt8Mode.Dynamic)
        {
            var q = Path.Combine(Dir, "unet.int8.onnx");
            Console.Error.WriteLine(OnnxInt8.QuantizeDynamic(model, q,
                new OnnxInt8Options { Convolutions = convolutions }));
            model = q;
        }
        else if (int8 is OnnxInt8Mode.Static)
        {
            var q = Path.Combine(Dir, "unet.int8.onnx");
            using var scope = NewDisposeScope();
            var captions = CaptionedFashion.Nouns.Take(8).Select(n => CaptionedFashion.WithArticle("a {0}", n))
                .ToArray();
            var feeds = UNetCalibration.Sample(Pipe.Unet, Pipe.NewScheduler(), Pipe.EncodePrompts(captions),
                Pipe.EncodePrompts(captions.Select(_ => "").ToArray()),
                [Sample.shape[2], Sample.shape[3]], steps: 8, guidance: 5, seed: 1);
            Console.Error.WriteLine(OnnxInt8.QuantizeStatic(model, q, feeds, threads: get_num_threads()));
            model = q;
        }
        _session = new OnnxSession(model, threads: get_num_threads());
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        _session.Run(Feed);
    }

    public override void Dispose()
    {
        _session.Dispose();
        base.Dispose();
    }
}

/// <summary>The SD 1.5-shaped U-Net step (<c>sd15-unet-step</c>'s inputs and default-init weights) in ONNX Runtime
/// on the project's own export (3.4 GB of weights as external data in a temp folder): the same graph both runtimes
/// run.</summary>
sealed class Sd15UNetStepOrt : StepCase
{
    readonly OnnxSession _session;
    readonly Dictionary<string, Tensor> _feed;
    readonly string _dir = Directory.CreateTempSubdirectory("ldmlab-bench-sd15-onnx-").FullName;

    public Sd15UNetStepOrt()
    {
        var path = Path.Combine(_dir, "model.onnx");
        using (var unet = Sd15Inference(CPU)) OnnxExport.ExportUNet(unet, path);
        _session = new OnnxSession(path, threads: get_num_threads());
        _feed = new()
        {
            ["sample"] = randn(2, 4, 64, 64).DetachFromDisposeScope(),                     // [uncond; cond] latents
            ["timestep"] = tensor(500f).DetachFromDisposeScope(),
            ["encoder_hidden_states"] = randn(2, 77, 768).DetachFromDisposeScope(),         // [2, 77, 768]
        };
    }

    public override void Run()
    {
        using var scope = NewDisposeScope();
        _session.Run(_feed);
    }

    public override void Dispose()
    {
        _session.Dispose();
        if (Directory.Exists(_dir)) Directory.Delete(_dir, recursive: true);
    }
}
