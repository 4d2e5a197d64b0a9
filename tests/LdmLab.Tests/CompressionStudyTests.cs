using LdmLab.Data;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Notebook 10's study (LdmLab.Labs.CompressionStudy) on the tiny pipeline and on hand-made rows.</summary>
public class CompressionStudyTests
{
    static readonly ScenePrompt[] Prompts = [new("a photo of a bag", 8, -1)];

    [Fact]
    public void Variants_shrink_what_they_say_and_draw_the_same_canvases_shape()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var f32 = CompressionStudy.Float32(PipelineTests.Tiny());
        var int8 = CompressionStudy.Int8WeightOnly(PipelineTests.Tiny());
        var pruned = CompressionStudy.StructuredPruned(PipelineTests.Tiny(), 0.5);
        var onnx = CompressionStudy.Onnx(PipelineTests.Tiny(), TestPaths.TempDir("compression-onnx"));
        Assert.True(int8.WeightBytes < 0.5 * f32.WeightBytes, $"int8 {int8.WeightBytes} vs float32 {f32.WeightBytes}");
        Assert.True(pruned.WeightBytes < f32.WeightBytes, $"pruned {pruned.WeightBytes} vs float32 {f32.WeightBytes}");
        Assert.Contains("ResNet blocks", pruned.Note);
        var reference = f32.Generate(Prompts, 4, 5, 3);
        Assert.Equal(new long[] { 1, 3, CaptionedScenes.Height, CaptionedScenes.Width }, reference.shape);
        // the ONNX Runtime export draws what TorchSharp draws from the same seed; int8 weights stay close
        Assert.True(Parity.MaxAbsDiff(onnx.Generate(Prompts, 4, 5, 3), reference) <= 2e-3);
        Assert.True(Parity.MaxAbsDiff(int8.Generate(Prompts, 4, 5, 3), reference) <= 0.2);
        var dynamic = CompressionStudy.OnnxInt8Variant(PipelineTests.Tiny(), TestPaths.TempDir("compression-int8"),
            LdmLab.Export.OnnxInt8Mode.Dynamic);
        Assert.Equal("ONNX Runtime", dynamic.Runtime);
        Assert.Equal(reference.shape, dynamic.Generate(Prompts, 4, 5, 3).shape);
        Assert.Throws<ArgumentException>(() => CompressionStudy.OnnxInt8Variant(PipelineTests.Tiny(),
            TestPaths.TempDir("compression-int8s"), LdmLab.Export.OnnxInt8Mode.Static));   // no calibration prompts
        foreach (var v in new[] { f32, int8, pruned, onnx, dynamic }) v.Step(2);    // one guided call at 2 prompts
    }

    [Fact]
    public void Takeaways_compare_each_variant_with_float32_and_name_the_noise()
    {
        var rows = new[]
        {
            new CompressionRow("float32", "TorchSharp", 4.0, 100, 10, 0.90, 1.0, ""),
            new CompressionRow("int8 weights", "TorchSharp", 1.0, 110, 5, 0.89, 1.1, ""),
            new CompressionRow("ONNX float32", "ONNX Runtime", 4.0, 50, 20, 0.70, 2.0, ""),
        };
        var points = CompressionStudy.Takeaways(rows, samples: 100);
        Assert.Equal(3, points.Count);
        Assert.Contains("4.0× smaller", points[0]);
        Assert.Contains("within ±2 %", points[0]);
        Assert.Contains("2.00× the float32 speed", points[1]);
        Assert.Contains("-20 points", points[1]);
        Assert.Contains("Fastest here: ONNX float32", points[2]);
        Assert.Throws<ArgumentException>(() => CompressionStudy.Takeaways(rows.Take(1).ToList(), 100));
    }
}
