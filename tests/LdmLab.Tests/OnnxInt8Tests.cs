using LdmLab.Export;
using LdmLab.Interop.Onnx;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// int8 compute in ONNX Runtime (issue #26): the dynamic and static (QDQ) rewrites of the tiny fixture U-Net's
/// export load in ORT, hold integer operators, are fused by ORT into its integer kernels (read from the graph ORT
/// saves after optimising), and stay within a derived bound of the float graph; weights round-trip per channel
/// within s/2; calibration returns the ranges the values took; bad graphs are refused naming node and layer.
/// </summary>
public class OnnxInt8Tests(ITestOutputHelper output)
{
    static StableDiffusionPipelineFixture Tiny => StableDiffusionPipelineFixture.Value;

    static Onnx.ModelProto Parse(string path) => Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));

    static HashSet<string> Ops(string path) => Parse(path).Graph.Node.Select(n => n.OpType).ToHashSet();

    /// <summary>The tiny U-Net's float export, once per test (0.3 MB).</summary>
    static string ExportFloat(string name)
    {
        var path = Path.Combine(TestPaths.TempDir(name), "model.onnx");
        OnnxExport.ExportUNet(Tiny.Pipeline.Unet, path);
        return path;
    }

    static Dictionary<string, Tensor> Feed(long batch, long seed)
    {
        var g = new Generator((ulong)seed);
        return new()
        {
            ["sample"] = randn(batch, 4, 8, 8, generator: g),
            ["timestep"] = tensor(new float[] { 400 }),
            ["encoder_hidden_states"] = randn(batch, 7, 32, generator: g),
        };
    }

    static double RelativeError(Tensor got, Tensor expected) =>
        (got - expected).norm().item<float>() / expected.norm().item<float>();

    /// <summary>
    /// The bound on ‖ŷ − y‖ / ‖y‖, derived rather than tuned. One quantized product y = x·W has two rounding
    /// errors, uniform within half a step: weights (step s_w,c = max|W_c|/127) and activations (step
    /// s_x = (max x − min x)/255). Their relative RMS sizes are ρ_w = max|W_c| / (127·√12·RMS(W_c)), computed here
    /// from the float weights (worst layer), and ρ_x = κ / (255·√12) with κ = (max − min)/RMS(x) ≤ 8 for activations
    /// within ±4σ; the product's relative error is √(ρ_w² + ρ_x²). Independent errors of L layers add in quadrature
    /// (residual paths and normalisations keep the gain per layer near 1), so the output's is √L times that; a
    /// static graph also rounds each Conv's output (one more ρ_x per Conv). The bound allows 3× that estimate.
    /// </summary>
    static double Bound(string floatModel, IReadOnlyList<OnnxInt8Target> targets, int extraRoundings,
        ITestOutputHelper log)
    {
        var (_, inits) = OnnxModelReader.Read(floatModel);
        var weights = inits.ToDictionary(i => i.Name, i => i.Value);
        double rhoW = targets.Max(t =>
        {
            var w = t.IsConv ? weights[t.Weight].flatten(1) : weights[t.Weight].t();   // [out, in·…]
            var ratio = w.abs().amax(1) / w.pow(2).mean([1]).sqrt();
            return ratio.max().item<float>() / (127 * Math.Sqrt(12));
        });
        double rhoX = 8 / (255 * Math.Sqrt(12));
        int layers = targets.Count + extraRoundings;
        double bound = 3 * Math.Sqrt(layers) * Math.Sqrt(rhoW * rhoW + rhoX * rhoX);
        log.WriteLine($"ρ_w {rhoW:E2}, ρ_x {rhoX:E2}, L = {layers} roundings → bound {bound:F4}");
        return bound;
    }

    static readonly OnnxInt8Options WithConvolutions = new() { Convolutions = true };

    static IReadOnlyList<OnnxInt8Target> Plan(string floatModel, OnnxInt8Mode mode = OnnxInt8Mode.Dynamic) =>
        OnnxInt8.Plan(floatModel, mode, WithConvolutions);

    [Fact]
    public void Dynamic_int8_unet_runs_ort_integer_kernels_within_the_derived_bound()
    {
        var floatModel = ExportFloat("int8-dynamic");
        var int8Model = Path.Combine(Path.GetDirectoryName(floatModel)!, "model.int8.onnx");
        var report = OnnxInt8.QuantizeDynamic(floatModel, int8Model, WithConvolutions);
        output.WriteLine(report.ToString());
        foreach (var (layer, why) in report.Kept) output.WriteLine($"  kept {layer}: {why}");

        // the key layers stay float, the rest of the convolutions and projections are int8
        Assert.Contains(report.Kept, k => k.Layer == "conv_in");
        Assert.Contains(report.Kept, k => k.Layer == "conv_out");
        Assert.Contains(report.Kept, k => k.Layer == "time_embedding.linear_1");
        Assert.Contains("down_blocks.0.resnets.0.conv1", report.Quantized);
        Assert.Contains("mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", report.Quantized);
        Assert.True(report.BytesAfter < report.BytesBefore * 0.5, report.ToString());
        // by default dynamic leaves convolutions float (ORT's ConvInteger is slower than its float Conv), static not
        Assert.DoesNotContain(OnnxInt8.Plan(floatModel, OnnxInt8Mode.Dynamic), t => t.IsConv);
        Assert.Contains(OnnxInt8.Plan(floatModel, OnnxInt8Mode.Static), t => t.IsConv);

        var ops = Ops(int8Model);
        Assert.Superset(new HashSet<string> { "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "Cast" }, ops);
        var model = Parse(int8Model);
        var q = model.Graph.Initializer.Single(i => i.Name == "down_blocks.0.resnets.0.conv1.weight_quantized");
        Assert.Equal(OnnxGraphBuilder.UInt8, q.DataType);                                // ConvInteger: u8 weights
        var m = model.Graph.Initializer.Single(i =>
            i.Name == "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight_quantized");
        Assert.Equal(OnnxGraphBuilder.Int8, m.DataType);                                 // MatMulInteger: u8 × s8
        Assert.DoesNotContain(model.Graph.Initializer, i => i.Name == "down_blocks.0.resnets.0.conv1.weight");

        // what ORT runs after its fusions: integer kernels
        var optimized = Path.Combine(Path.GetDirectoryName(floatModel)!, "optimized.onnx");
        using var int8 = new OnnxSession(int8Model, optimizedModelPath: optimized);
        var ran = Ops(optimized);
        output.WriteLine("ORT runs: " + string.Join(", ", ran.Order()));
        Assert.Contains("DynamicQuantizeMatMul", ran);
        Assert.Contains("ConvInteger", ran);

        using var fp32 = new OnnxSession(floatModel);
        double bound = Bound(floatModel, Plan(floatModel), 0, output);
        foreach (var batch in new long[] { 1, 3 })
        {
            var feed = Feed(batch, batch);
            var y = fp32.Run(feed)["out_sample"];
            var yq = int8.Run(feed)["out_sample"];
            double rel = RelativeError(yq, y);
            output.WriteLine($"batch {batch}: relative error {rel:F4} (bound {bound:F4})");
            Assert.True(rel > 1e-4, $"int8 output equals float ({rel}): nothing was quantized");
            Assert.True(rel <= bound, $"relative error {rel:F4} > {bound:F4}");
        }
    }

    [Fact]
    public void Static_int8_unet_is_fused_by_ort_into_qlinear_kernels_within_the_derived_bound()
    {
        var floatModel = ExportFloat("int8-static");
        var int8Model = Path.Combine(Path.GetDirectoryName(floatModel)!, "model.int8.onnx");
        var pipe = Tiny.Pipeline;
        var g = new Generator(3);
        var feeds = UNetCalibration.Sample(pipe.Unet, pipe.NewScheduler(), randn(2, 7, 32, generator: g),
            randn(2, 7, 32, generator: g), [8, 8], steps: 4, guidance: 5, seed: 1);
        Assert.Equal(4, feeds.Count);
        Assert.Equal(new long[] { 4, 4, 8, 8 }, feeds[0]["sample"].shape);
        var report = OnnxInt8.QuantizeStatic(floatModel, int8Model, feeds);
        output.WriteLine(report.ToString());

        var ops = Ops(int8Model);
        Assert.Contains("QuantizeLinear", ops);
        Assert.Contains("DequantizeLinear", ops);
        Assert.DoesNotContain("DynamicQuantizeLinear", ops);
        var optimized = Path.Combine(Path.GetDirectoryName(floatModel)!, "optimized.onnx");
        using var int8 = new OnnxSession(int8Model, optimizedModelPath: optimized);
        var ran = Ops(optimized);
        output.WriteLine("ORT runs: " + string.Join(", ", ran.Order()));
        Assert.Contains("QLinearConv", ran);
        Assert.Contains("MatMulIntegerToFloat", ran);

        // every quantized node's input (and each Conv's output) has its calibrated range
        var targets = Plan(floatModel, OnnxInt8Mode.Static);
        Assert.All(targets, t => Assert.Contains(t.Input, report.Ranges.Keys));
        Assert.All(targets.Where(t => t.IsConv), t => Assert.Contains(t.Output, report.Ranges.Keys));

        using var fp32 = new OnnxSession(floatModel);
        double bound = Bound(floatModel, targets, targets.Count(t => t.IsConv), output);
        foreach (var feed in new[] { feeds[0], feeds[^1] })
        {
            var y = fp32.Run(feed)["out_sample"];
            double rel = RelativeError(int8.Run(feed)["out_sample"], y);
            output.WriteLine($"relative error {rel:F4} (bound {bound:F4})");
            Assert.True(rel > 1e-4, $"int8 output equals float ({rel})");
            Assert.True(rel <= bound, $"relative error {rel:F4} > {bound:F4}");
        }
    }

    /// <summary>|Ŵ − W| ≤ s_c/2 per output channel, codes within ±127 with 127 reached in every channel (the scale
    /// is max|W_c|/127), for MatMul weights [K, N] (channels are columns) and the shifted uint8 Conv weights.</summary>
    [Fact]
    public void Quantized_weights_round_trip_per_channel_within_half_a_scale()
    {
        var floatModel = ExportFloat("int8-weights");
        var int8Model = Path.Combine(Path.GetDirectoryName(floatModel)!, "model.int8.onnx");
        var report = OnnxInt8.QuantizeDynamic(floatModel, int8Model, WithConvolutions);
        var floats = OnnxModelReader.Read(floatModel).Initializers.ToDictionary(i => i.Name, i => i.Value);
        var ints = OnnxModelReader.Read(int8Model).Initializers.ToDictionary(i => i.Name, i => i.Value);
        int checkedLayers = 0;
        foreach (var layer in report.Quantized)
        {
            var w = floats[$"{layer}.weight"];
            var q = ints[$"{layer}.weight_quantized"];
            var s = ints[$"{layer}.weight_scale"];
            Tensor codes, weight;
            if (q.dtype == ScalarType.Byte)                                                 // Conv [C, in, kh, kw]
            {
                codes = (q.to_type(ScalarType.Int32) - 128).flatten(1);
                weight = w.flatten(1);
            }
            else                                                                            // MatMul [K, N]
            {
                codes = q.to_type(ScalarType.Int32).t();
                weight = w.t();
            }
            var scale = s.flatten();                                                        // [C]
            var error = (codes.to_type(ScalarType.Float32) * scale.unsqueeze(1) - weight).abs().amax(1);
            Assert.True((error <= scale / 2 + 1e-7).all().item<bool>(), $"{layer}: error past s/2");
            Assert.True((codes.abs().amax(1) == 127).all().item<bool>(), $"{layer}: a channel does not reach 127");
            checkedLayers++;
        }
        Assert.True(checkedLayers > 10, $"{checkedLayers} layers");
    }

    [Fact]
    public void Calibration_returns_the_min_and_max_each_value_took()
    {
        var floatModel = ExportFloat("int8-calibration");
        var convIn = Parse(floatModel).Graph.Node
            .Single(n => n.Name.StartsWith("conv_in/Conv", StringComparison.Ordinal)).Output[0];
        var feeds = new[] { Feed(1, 1), Feed(2, 2), Feed(1, 3) };
        var ranges = OnnxCalibration.Collect(floatModel, [convIn, "sample"], feeds);
        var convModule = (nn.Module<Tensor, Tensor>)Tiny.Pipeline.Unet.named_children().Single(c => c.name == "conv_in")
            .module;
        using var _ = no_grad();
        var conv = cat(feeds.Select(f => convModule.forward(f["sample"]).flatten()).ToArray());
        var samples = cat(feeds.Select(f => f["sample"].flatten()).ToArray());
        Assert.Equal(samples.min().item<float>(), ranges["sample"].Min);
        Assert.Equal(samples.max().item<float>(), ranges["sample"].Max);
        Assert.Equal(conv.min().item<float>(), ranges[convIn].Min, 4);
        Assert.Equal(conv.max().item<float>(), ranges[convIn].Max, 4);
        var (scale, zero) = ranges[convIn].UInt8();
        Assert.Equal((ranges[convIn].Max - ranges[convIn].Min) / 255, scale, 6);
        Assert.Equal(Math.Round(-ranges[convIn].Min / scale), zero);
    }

    [Fact]
    public void Malformed_or_already_quantized_graphs_are_refused_naming_the_node_and_layer()
    {
        var floatModel = ExportFloat("int8-malformed");
        var dir = Path.GetDirectoryName(floatModel)!;

        // a Conv weight of rank 2
        var model = Parse(floatModel);
        var w = model.Graph.Initializer.Single(i => i.Name == "down_blocks.0.resnets.0.conv1.weight");
        var dims = w.Dims.ToArray();
        w.Dims.Clear();
        w.Dims.AddRange([dims[0], dims[1] * dims[2] * dims[3]]);
        var flat = Path.Combine(dir, "flat.onnx");
        File.WriteAllBytes(flat, Google.Protobuf.MessageExtensions.ToByteArray(model));
        var e = Assert.Throws<OnnxQuantizationException>(() =>
            OnnxInt8.QuantizeDynamic(flat, Path.Combine(dir, "out.onnx"), WithConvolutions));
        Assert.Equal("down_blocks.0.resnets.0.conv1", e.LayerPath);
        Assert.StartsWith("down_blocks.0.resnets.0.conv1/Conv", e.NodeName);
        Assert.Contains("rank", e.Message);
        Assert.False(File.Exists(Path.Combine(dir, "out.onnx")));

        // an input that nothing makes
        model = Parse(floatModel);
        var node = model.Graph.Node.First(n => n.OpType == "MatMul" && n.Name.Contains(".attn2."));
        node.Input[0] = "nowhere";
        var dangling = Path.Combine(dir, "dangling.onnx");
        File.WriteAllBytes(dangling, Google.Protobuf.MessageExtensions.ToByteArray(model));
        e = Assert.Throws<OnnxQuantizationException>(() =>
            OnnxInt8.QuantizeDynamic(dangling, Path.Combine(dir, "out.onnx")));
        Assert.Equal(node.Name, e.NodeName);
        Assert.Contains("'nowhere'", e.Message);

        // quantizing twice
        var int8Model = Path.Combine(dir, "model.int8.onnx");
        OnnxInt8.QuantizeDynamic(floatModel, int8Model);
        e = Assert.Throws<OnnxQuantizationException>(() =>
            OnnxInt8.QuantizeDynamic(int8Model, Path.Combine(dir, "twice.onnx")));
        Assert.Contains("already quantized", e.Message);
        Assert.Contains("/DynamicQuantizeLinear", e.NodeName);

        // a calibration feed without the timestep
        var feed = Feed(1, 1);
        feed.Remove("timestep");
        var a = Assert.Throws<ArgumentException>(() =>
            OnnxInt8.QuantizeStatic(floatModel, Path.Combine(dir, "static.onnx"), [feed]));
        Assert.Contains("'timestep'", a.Message);
    }

    [Fact]
    public void Export_onnx_int8_writes_an_int8_unet_that_the_onnx_pipeline_samples_with()
    {
        var model = TestPaths.TempDir("int8-cli-model");
        Tiny.Pipeline.SavePretrained(model);
        var prompts = Path.Combine(model, "prompts.txt");
        File.WriteAllLines(prompts, ["a red door", "", "an astronaut riding a horse"]);
        foreach (var mode in new[] { "dynamic", "static" })
        {
            var outDir = Path.Combine(TestPaths.TempDir("int8-cli"), "sd");
            string[] args = ["export-onnx", "--model", model, "--out", outDir, "--int8", mode];
            if (mode == "static") args = [.. args, "--calibration-prompts", prompts, "--calibration-steps", "2"];
            int rc = CliCapture.Run(out var stdout, out var stderr, args);
            Assert.True(rc == 0, stderr);
            Assert.Contains($"int8 {mode}:", stdout);
            var ops = Ops(Path.Combine(outDir, "unet", "model.onnx"));
            Assert.Contains(mode == "dynamic" ? "MatMulInteger" : "QuantizeLinear", ops);
            Assert.DoesNotContain("MatMulInteger", Ops(Path.Combine(outDir, "text_encoder", "model.onnx")));
            Assert.False(Directory.Exists(Path.Combine(outDir, ".unet-int8")));
            using var onnx = Pipelines.OnnxStableDiffusionPipeline.FromFolder(outDir);
            var options = new Pipelines.GenerationOptions { Prompts = ["a red door"], Steps = 2, Seed = 1 };
            var images = onnx.Generate(options).Images;
            Assert.True(images.isfinite().all().item<bool>());
        }

        var dir = Path.Combine(TestPaths.TempDir("int8-cli-bad"), "sd");
        (string[] args, string named)[] bad =
        [
            (["--int8", "maybe"], "--int8 'maybe'"),
            (["--int8", "static"], "--calibration-prompts"),
            (["--int8", "dynamic", "--calibration-steps", "2"], "go with --int8 static"),
            (["--int8", "static", "--calibration-prompts", prompts, "--calibration-steps", "0"],
                "--calibration-steps '0'"),
            (["--int8", "static", "--calibration-prompts", Path.Combine(model, "none.txt")], "no such file"),
        ];
        foreach (var (args, named) in bad)
        {
            string[] all = ["export-onnx", "--model", model, "--out", dir, .. args];
            Assert.Equal(2, CliCapture.Run(out _, out var error, all));
            Assert.Contains(named, error);
        }
    }

    /// <summary>The rewrite is generic over the exporters' graphs: the tiny VAE decoder, dynamic int8 in ORT.
    /// </summary>
    [Fact]
    public void Vae_decoder_int8_runs_in_ort_within_the_derived_bound()
    {
        var vae = Tiny.Pipeline.Vae;
        var dir = TestPaths.TempDir("int8-vae");
        var floatModel = Path.Combine(dir, "decoder.onnx");
        OnnxExport.ExportVaeDecoder(vae, floatModel);
        var int8Model = Path.Combine(dir, "decoder.int8.onnx");
        var report = OnnxInt8.QuantizeDynamic(floatModel, int8Model, WithConvolutions);
        output.WriteLine(report.ToString());
        Assert.Contains(report.Kept, k => k.Layer == "decoder.conv_in");
        Assert.Contains(report.Kept, k => k.Layer == "decoder.conv_out");
        Assert.Contains("ConvInteger", Ops(int8Model));
        using var fp32 = new OnnxSession(floatModel);
        using var int8 = new OnnxSession(int8Model);
        var z = new Dictionary<string, Tensor> { ["latent_sample"] = randn(2, 4, 4, 4, generator: new Generator(4)) };
        double rel = RelativeError(int8.Run(z)["sample"], fp32.Run(z)["sample"]);
        double bound = Bound(floatModel, Plan(floatModel), 0, output);
        output.WriteLine($"relative error {rel:F4} (bound {bound:F4})");
        Assert.InRange(rel, 1e-4, bound);
    }
}

/// <summary>The study's closing bullets, on hand-made rows.</summary>
public class OnnxInt8StudyTests
{
    [Fact]
    public void Takeaways_give_the_points_each_int8_variant_loses_against_the_goal()
    {
        var rows = new[]
        {
            new Labs.OnnxInt8Row(Labs.OnnxInt8Study.Float32, 0.80, 200, 0.1),
            new Labs.OnnxInt8Row(Labs.OnnxInt8Study.Dynamic, 0.79, 200, 0.05),
            new Labs.OnnxInt8Row(Labs.OnnxInt8Study.Static, 0.75, 200, 0.04),
        };
        var points = Labs.OnnxInt8Study.Takeaways(rows);
        Assert.Equal(2, points.Count);
        Assert.Contains("−1.0 points, within the 2-point goal", points[0]);
        Assert.StartsWith(Labs.OnnxInt8Study.Dynamic, points[0]);
        Assert.Contains("−5.0 points, past the 2-point goal", points[1]);
        Assert.Throws<ArgumentException>(() => Labs.OnnxInt8Study.Takeaways(rows[1..]));
    }
}
