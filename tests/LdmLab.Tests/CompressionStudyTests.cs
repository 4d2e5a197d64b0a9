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

    [Fact]
    public void Takeaways_compare_a_variant_judged_on_fewer_prompts_with_the_reference_on_those_prompts()
    {
        var rows = new[]
        {
            new CompressionRow("float32", "TorchSharp", 4.0, 100, 10, 0.90, 1.0, "", 100),
            new CompressionRow("bfloat16", "TorchSharp", 2.1, 900, 10, 0.50, 1.5, "", 10, 0.80, 1.2),
        };
        var points = CompressionStudy.Takeaways(rows, samples: 100);
        Assert.Contains("50 % vs 80 % on the first 10 prompts (-30 points)", points[0]);
        Assert.Contains("0.11× the float32 speed", points[0]);
    }

    [Fact]
    public void Measure_judges_a_slow_variant_on_its_prompts_and_the_reference_on_the_same()
    {
        manual_seed(0);
        var judge = new FashionClassifier(width: 8);
        var reference = new FrechetReference(judge, rand(40, 1, 28, 28) * 2 - 1);
        var asked = new List<(string Variant, int Prompts)>();
        CompressionVariant Fake(string name, int? judged) => new(name, "TorchSharp", 100, (prompts, _, _, _) =>
        {
            asked.Add((name, prompts.Count));
            return rand(prompts.Count, 1, CaptionedScenes.Height, CaptionedScenes.Width) * 2 - 1;
        }, _ => { }, "")
        { JudgedPrompts = judged };
        var prompts = LdmLab.Labs.TextToImageStudies.SinglePrompts(6);
        var rows = CompressionStudy.Measure([Fake("ref", null), Fake("slow", 2), Fake("all", null)], prompts, judge,
            reference, batch: 1, rounds: 1, steps: 2);
        Assert.Equal(new[] { 6, 2, 6 }, rows.Select(r => r.Samples));
        Assert.Equal(new[] { ("ref", 6), ("slow", 2), ("ref", 2), ("all", 6) }, asked);
        Assert.Equal(rows[0].Accuracy, rows[2].ReferenceAccuracy);
        Assert.NotNull(rows[1].ReferenceAccuracy);
    }

    [Fact]
    public void BFloat16_variant_on_a_unet_copy_casts_it_but_keeps_norms_float32_and_runs()
    {
        TorchRuntime.Setup();
        var original = PipelineTests.Tiny();
        var f32 = CompressionStudy.Float32(original);
        var p = CompressionStudy.WithUNetCopy(original);
        Assert.Same(original.TextEncoder, p.TextEncoder);
        Assert.NotSame(original.Unet, p.Unet);
        var before = original.Unet.parameters().First().clone();
        Assert.Equal(0.0, Parity.MaxAbsDiff(before, p.Unet.parameters().First()));
        var bf16 = CompressionStudy.BFloat16(p);
        // the copy changed, the original did not
        Assert.Equal(ScalarType.Float32, original.Unet.parameters().First().dtype);
        Assert.Equal(0.0, Parity.MaxAbsDiff(before, original.Unet.parameters().First()));
        Assert.True(bf16.WeightBytes < 0.6 * f32.WeightBytes, $"bf16 {bf16.WeightBytes} vs {f32.WeightBytes}");
        foreach (var (name, w) in p.Unet.named_parameters())
            Assert.Equal(name.Contains("norm") ? ScalarType.Float32 : ScalarType.BFloat16, w.dtype);
        Assert.Equal(ScalarType.Float32, p.TextEncoder.parameters().First().dtype);
        bf16.Step(1);
        var canvases = bf16.Generate(Prompts, 2, 5, 3);
        Assert.Equal(ScalarType.Float32, canvases.dtype);
        Assert.False(canvases.isnan().any().item<bool>());
    }

    [Fact]
    public void Magnitude_sweep_sparsity_equals_the_request_and_zeros_are_in_the_weights()
    {
        TorchRuntime.Setup();
        foreach (double amount in PruningSweep.Amounts)
        {
            var p = PipelineTests.Tiny();
            var layers = p.Unet.modules().Where(m => m is TorchSharp.Modules.Linear or TorchSharp.Modules.Conv2d)
                .Select(m => m is TorchSharp.Modules.Linear l ? l.weight! : ((TorchSharp.Modules.Conv2d)m).weight!)
                .ToList();
            long total = layers.Sum(w => w.numel());
            // per layer k = round(amount · n): the overall share is off by at most half a weight per layer
            long expected = layers.Sum(w => (long)Math.Round(amount * w.numel(), MidpointRounding.ToEven));
            var (variant, sparsity) = PruningSweep.Prune(p, PruningMethod.Magnitude, amount, null);
            Assert.Equal((double)expected / total, sparsity, 12);
            Assert.InRange(sparsity, amount - 0.5 * layers.Count / total, amount + 0.5 * layers.Count / total);
            long zeros = p.Unet.modules().Where(m => m is TorchSharp.Modules.Linear or TorchSharp.Modules.Conv2d)
                .Sum(m => (m is TorchSharp.Modules.Linear l ? l.weight! : ((TorchSharp.Modules.Conv2d)m).weight!)
                    .eq(0).sum().item<long>());
            Assert.True(zeros >= expected, $"{zeros} zeros for {expected} pruned at {amount}");
            Assert.Contains("magnitude pruned", variant.Name);
        }
    }

    [Fact]
    public void Structured_sweep_keeps_the_output_shape_and_removes_more_at_each_amount()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var z = randn(2, 4, 8, 8);
        var context = randn(2, 7, 32);
        long previous = long.MaxValue;
        double previousShare = 0;
        foreach (double amount in PruningSweep.Amounts)
        {
            var p = PipelineTests.Tiny();
            long before = p.Unet.parameters().Sum(t => t.numel());
            var (_, share) = PruningSweep.Prune(p, PruningMethod.Structured, amount, null);
            long after = p.Unet.parameters().Sum(t => t.numel());
            using var _ = no_grad();
            Assert.Equal(z.shape, p.Unet.Forward(z, tensor(10f), context).shape);
            Assert.True(after < before && after <= previous, $"{amount}: {before} → {after} (previous {previous})");
            Assert.True(share > 0 && share >= previousShare && Math.Abs(share - amount) <= 0.13,
                $"{amount}: {share:P1} of the channels removed");
            previous = after;
            previousShare = share;
        }
    }

    static PruningSweepRow Point(PruningMethod m, double amount, bool tuned, double acc, long parameters, double ms) =>
        new(m, amount, tuned, amount, parameters, parameters * 4e-6, ms, acc, 1 + amount, 100);

    [Fact]
    public void Sweep_takeaways_name_where_each_curve_leaves_the_noise_and_what_fine_tuning_recovered()
    {
        var rows = new List<PruningSweepRow> { Point(PruningMethod.Magnitude, 0, false, 0.90, 1000, 100) };
        foreach (var (m, tuned) in new[] { (PruningMethod.Magnitude, false), (PruningMethod.Magnitude, true),
                     (PruningMethod.Structured, false), (PruningMethod.Structured, true) })
            foreach (double a in PruningSweep.Amounts)
            {
                // magnitude holds to 0.3 then drops 5 points per 0.1; structured drops from the start
                double acc = m == PruningMethod.Magnitude ? (a <= 0.3 ? 0.90 : 0.90 - (a - 0.3) * 0.5)
                    : 0.80 - a * 0.2;
                if (tuned) acc += 0.05;
                long parameters = m == PruningMethod.Magnitude ? 1000 : (long)(1000 * (1 - a / 2));
                rows.Add(Point(m, a, tuned, acc, parameters, m == PruningMethod.Magnitude ? 101 : 100 * (1 - a / 2)));
            }
        var points = PruningSweep.Takeaways(rows);
        Assert.StartsWith("magnitude: within the noise (±2 % on 100 prompts) of float32's 90 % up to 30 %", points[0]);
        Assert.Contains("magnitude + fine-tune: within the noise", points[1]);
        Assert.StartsWith("structured L1: already 12 points below float32 at 10 %", points[2]);
        Assert.Contains("750 parameters (75 % of float32's), 75 ms per guided call (1.33× float32's speed)",
            points[2]);
        Assert.Contains("Fine-tuning after magnitude at 50 %: 80 % → 85 % (+5 points)", points[4]);
        Assert.Contains("Fine-tuning after structured L1 at 50 %: 70 % → 75 % (+5 points)", points[5]);
        Assert.Contains("kept all 1,000 parameters", points[6]);
        Assert.Throws<ArgumentException>(() => PruningSweep.Takeaways(rows.Skip(1).ToList()));
        var curves = PruningSweep.Curves(rows, r => r.Accuracy).ToList();
        Assert.Equal(4, curves.Count);
        Assert.All(curves, c => Assert.Equal(PruningSweep.Amounts, c.Amounts));
    }

    [Fact]
    public void Sd15_shaped_configs_divide_every_width_and_the_divisor_follows_the_byte_budget()
    {
        var tenth = Sd15DeploymentStudy.Config(10);
        Assert.Equal(new[] { 32, 64, 128, 128 }, tenth.BlockOutChannels);
        Assert.Equal(LdmLab.UNet.UNetConfig.StableDiffusion15.DownBlockTypes, tenth.DownBlockTypes);
        Assert.Equal(768, tenth.CrossAttentionDim);
        Assert.Equal(859_520_964, Sd15DeploymentStudy.Parameters(Sd15DeploymentStudy.Config(1)));
        long fifth = Sd15DeploymentStudy.Parameters(Sd15DeploymentStudy.Config(5));
        Assert.Equal(5, Sd15DeploymentStudy.DivisorFor(4 * fifth));
        Assert.Equal(10, Sd15DeploymentStudy.DivisorFor(4 * fifth - 1));
        Assert.Equal(1, Sd15DeploymentStudy.DivisorFor(4L << 30));
        Assert.Throws<ArgumentOutOfRangeException>(() => Sd15DeploymentStudy.Config(3));
        Assert.Contains("1/10 width (32-64-128-128)", Sd15DeploymentStudy.Describe(tenth));
    }

    [Fact]
    public void Sd15_takeaway_gives_torchsharp_time_over_ort_time()
    {
        var rows = new[]
        {
            new Sd15StepRow("TorchSharp float32", "shape", 100, 400, 1200, 400, 80, 900),
            new Sd15StepRow("ONNX Runtime float32 (project's export)", "shape", 100, 401, 1000, 420, 60, 900),
        };
        var point = Assert.Single(Sd15DeploymentStudy.Takeaways(rows));
        Assert.Contains("TorchSharp takes 1.20× ORT's time (ONNX Runtime is faster here", point);
        Assert.Contains("80 MB (TorchSharp) and 60 MB (ONNX Runtime)", point);
        Assert.Throws<ArgumentException>(() => Sd15DeploymentStudy.Takeaways(rows.Take(1).ToList()));
    }
}
