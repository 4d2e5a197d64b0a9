using LdmLab.Interop.Onnx;
using LdmLab.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Metrics;

/// <summary>
/// ImageNet-pretrained ResNet18 (the ONNX files of NuGet Microsoft.ML.DnnImageFeaturizer.ResNet18 0.23.1) as a
/// differentiable TorchSharp module. Input: RGB images in [-1, 1] (grey images are repeated to 3 channels), resized
/// to <see cref="Resolution"/>. The package's preprocessing (RGB → BGR, subtract the ImageNet mean image at 0–255)
/// runs first. Features: the stem and the residual-block outputs (ReLUs after each residual Add; 9 in this graph) for
/// perceptual distances, and the 512-d pooled
/// vector (for Fréchet distances).
/// </summary>
public sealed class ResNet18Features : nn.Module<Tensor, Tensor>
{
    public const string PackageId = "microsoft.ml.dnnimagefeaturizer.resnet18", PackageVersion = "0.23.1";
    readonly OnnxGraph preprocess, resnet;
    readonly string[] _taps;
    public int Resolution { get; }

    public ResNet18Features(int resolution = 224, string? modelsDir = null) : base(nameof(ResNet18Features))
    {
        modelsDir ??= FindModelsDirectory();
        preprocess = new OnnxGraph(OnnxModel.Load(Path.Combine(modelsDir, "ResNetPrepOnnx", "ResNetPreprocess.onnx")), "preprocess");
        resnet = new OnnxGraph(OnnxModel.Load(Path.Combine(modelsDir, "ResNet18Onnx", "ResNet18.onnx")), "resnet18");
        // taps: the first ReLU (stem) and every ReLU that follows a residual Add (block outputs)
        var nodes = resnet.Model.Nodes;
        var addOutputs = nodes.Where(n => n.OpType == "Add").Select(n => n.Outputs[0]).ToHashSet();
        _taps = nodes.Where((n, i) => n.OpType == "Relu" && (i == nodes.ToList().FindIndex(m => m.OpType == "Relu") || addOutputs.Contains(n.Inputs[0])))
            .Select(n => n.Outputs[0]).ToArray();
        foreach (var t in _taps) resnet.Taps.Add(t);
        Resolution = resolution;
        RegisterComponents();
        foreach (var p in parameters()) p.requires_grad_(false);
        eval();
    }

    /// <summary>The ImageNet mean image is 224×224; other resolutions resample it bilinearly.</summary>
    Tensor Prepare(Tensor images)
    {
        if (images.shape[1] == 1) images = images.expand(-1, 3, -1, -1);
        var x = (images.clamp(-1, 1) + 1) * 127.5;
        if (x.shape[2] != 224 || x.shape[3] != 224) x = nn.functional.interpolate(x, size: [224, 224], mode: InterpolationMode.Bilinear, align_corners: false);
        x = preprocess.forward(x);
        if (Resolution != 224) x = nn.functional.interpolate(x, size: [Resolution, Resolution], mode: InterpolationMode.Bilinear, align_corners: false);
        return x;
    }

    /// <summary>The 512-d pooled features [N, 512].</summary>
    public override Tensor forward(Tensor images) => resnet.forward(Prepare(images)).flatten(1);

    /// <summary>Pooled features of many images, in batches, without gradients: [N, 512].</summary>
    public Tensor Extract(Tensor images, int batchSize = 64)
    {
        using var _ = no_grad();
        var parts = new List<Tensor>();
        for (long i = 0; i < images.shape[0]; i += batchSize)
        {
            using var scope = NewDisposeScope();
            parts.Add(forward(images.narrow(0, i, Math.Min(batchSize, images.shape[0] - i))).MoveToOuterDisposeScope());
        }
        return cat(parts);
    }

    /// <summary>Pooled features and the tapped activations (stem + block outputs), in network order.</summary>
    public (Tensor pooled, Tensor[] layers) ForwardWithLayers(Tensor images)
    {
        var pooled = forward(images);
        return (pooled, _taps.Select(t => resnet.Tapped[t]).ToArray());
    }

    /// <summary>
    /// Perceptual distance (LPIPS-style, without learned weights): per layer, unit-normalise each position's channel
    /// vector, then average the squared difference over positions and channels; sum over layers. Per image [N].
    /// </summary>
    public Tensor PerceptualDistance(Tensor a, Tensor b) => LayerDistance(ForwardWithLayers(a).layers, ForwardWithLayers(b).layers);

    /// <summary>The perceptual distance between two sets of tapped activations (from <see cref="ForwardWithLayers"/>).</summary>
    public static Tensor LayerDistance(Tensor[] fa, Tensor[] fb)
    {
        Tensor total = zeros(fa[0].shape[0], device: fa[0].device);
        for (int l = 0; l < fa.Length; l++)
        {
            var na = fa[l] / (fa[l].pow(2).sum(1, keepdim: true).sqrt() + 1e-10);
            var nb = fb[l] / (fb[l].pow(2).sum(1, keepdim: true).sqrt() + 1e-10);
            total = total + (na - nb).pow(2).sum(1).mean([1, 2]);
        }
        return total;
    }

    public static string FindModelsDirectory()
    {
        var candidates = new List<string>
        {
            Path.Combine(Path.GetDirectoryName(typeof(ResNet18Features).Assembly.Location)!, "DnnImageModels"),
            Path.Combine(AppContext.BaseDirectory, "DnnImageModels"),
        };
        if (Lab.Settings.ResNet18Dir is { Length: > 0 } d) candidates.Insert(0, d);          // LDMLAB_RESNET18_DIR
        candidates.AddRange(TorchRuntime.NuGetPackageRoots()
            .Select(r => Path.Combine(r, PackageId, PackageVersion, "tools", "DnnImageModels")));
        return candidates.FirstOrDefault(c => File.Exists(Path.Combine(c, "ResNet18Onnx", "ResNet18.onnx")))
            ?? throw new FileNotFoundException($"ResNet18.onnx not found (looked in {string.Join(", ", candidates)}). " +
                $"Restore the NuGet package {PackageId} {PackageVersion} (dotnet build does) or set LDMLAB_RESNET18_DIR.");
    }
}
