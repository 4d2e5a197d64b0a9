using LdmLab.Metrics;
using LdmLab.Runtime;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class ResNetTests(ITestOutputHelper output)
{
    static readonly Lazy<ResNet18Features> Net = new(() => { TorchRuntime.Setup(); return new ResNet18Features(); });

    /// <summary>The TorchSharp conversion against ONNX Runtime on the same input (preprocess + ResNet18).</summary>
    [Fact]
    public void Converted_resnet18_matches_onnx_runtime()
    {
        var dir = ResNet18Features.FindModelsDirectory();
        manual_seed(0);
        var rgb255 = rand(2, 3, 224, 224) * 255;
        var ours = Net.Value.forward(rgb255 / 127.5 - 1).data<float>().ToArray();

        using var prep = new InferenceSession(Path.Combine(dir, "ResNetPrepOnnx", "ResNetPreprocess.onnx"));
        using var net = new InferenceSession(Path.Combine(dir, "ResNet18Onnx", "ResNet18.onnx"));
        var reference = new List<float>();
        for (int b = 0; b < 2; b++)
        {
            var input = new DenseTensor<float>(rgb255[b].data<float>().ToArray(), [1, 3, 224, 224]);
            using var p = prep.Run([NamedOnnxValue.CreateFromTensor(prep.InputMetadata.Keys.First(), input)]);
            var pre = p.First().AsTensor<float>();
            using var r = net.Run([NamedOnnxValue.CreateFromTensor(net.InputMetadata.Keys.First(), pre.ToDenseTensor())]);
            reference.AddRange(r.First().AsEnumerable<float>());
        }
        Assert.Equal(reference.Count, ours.Length);
        double maxDiff = ours.Zip(reference).Max(p => Math.Abs(p.First - p.Second));
        double maxRef = reference.Max(Math.Abs);
        output.WriteLine($"ResNet18 (TorchSharp) vs ONNX Runtime: max |diff| = {maxDiff:E2} over {ours.Length} features (max |feature| {maxRef:F2})");
        Assert.True(maxDiff < 1e-4 * Math.Max(1, maxRef), $"max diff {maxDiff}");
    }

    [Fact]
    public void Perceptual_distance_is_zero_for_equal_images_grows_with_noise_and_has_gradients()
    {
        var net = new ResNet18Features(resolution: 64);
        manual_seed(1);
        var a = rand(2, 3, 64, 64) * 2 - 1;
        Assert.True(net.PerceptualDistance(a, a).abs().max().item<float>() < 1e-6);
        var small = net.PerceptualDistance(a, (a + 0.05 * randn_like(a)).clamp(-1, 1)).mean().item<float>();
        var large = net.PerceptualDistance(a, (a + 0.5 * randn_like(a)).clamp(-1, 1)).mean().item<float>();
        Assert.True(0 < small && small < large, $"{small} vs {large}");
        var x = a.clone().requires_grad_(true);
        net.PerceptualDistance(x, zeros_like(a)).sum().backward();
        Assert.True(x.grad!.abs().sum().item<float>() > 0);
        Assert.All(net.parameters(), p => Assert.False(p.requires_grad));
        var (pooled, layers) = net.ForwardWithLayers(a);
        Assert.Equal([2L, 512], pooled.shape);
        Assert.Equal(10, layers.Length);   // the stem ReLU and the ReLU after each of the graph's 9 residual Adds
        Assert.Equal(64L, layers[0].shape[1]); Assert.Equal(512L, layers[^1].shape[1]);
    }

    [Fact]
    public void Unreadable_onnx_is_a_clear_error()
    {
        var path = Path.Combine(TestPaths.TempDir("onnx"), "bad.onnx");
        File.WriteAllBytes(path, [0x0a, 0xff, 0xff, 0xff]);
        var e = Assert.Throws<Data.DatasetException>(() => Interop.Onnx.OnnxModel.Load(path));
        Assert.Equal(path, e.FilePath);
    }
}

public class FrechetTests
{
    [Fact]
    public void Frechet_distance_of_gaussians_matches_the_closed_form()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        // N(0, I) vs N(m, 4I) in 3-D: d² = |m|² + Tr(I + 4I − 2·2I) = |m|² + 3
        var a = randn(20000, 3); var b = randn(20000, 3) * 2 + tensor(new float[] { 1, 0, 0 });
        Assert.InRange(Metrics.FrechetDistance.Compute(a, b), 3.85, 4.15);   // sampling error of 20 000 draws
        Assert.Equal(0.0, Metrics.FrechetDistance.Compute(a, a), 6);
        Assert.Throws<ArgumentException>(() => Metrics.FrechetDistance.Compute(randn(3), randn(3)));
    }
}
