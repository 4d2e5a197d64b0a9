using System.Text.Json.Nodes;
using LdmLab.Adapters;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Export;
using LdmLab.Interop;
using LdmLab.Interop.Onnx;
using LdmLab.Runtime;
using LdmLab.UNet;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// ONNX export (issue #26): each exported graph run in ONNX Runtime against the TorchSharp module on the same
/// inputs at two batch sizes and two spatial sizes (two sequence lengths for the text encoder), max |Δ| ≤ 1e-4;
/// external data; typed refusals naming the layer; the ONNX Stable Diffusion folder layout.
/// </summary>
public class OnnxExportTests(ITestOutputHelper output)
{
    static StableDiffusionPipelineFixture Tiny => StableDiffusionPipelineFixture.Value;

    void AssertPass(IEnumerable<ParityCheck> checks)
    {
        var list = checks.ToList();
        foreach (var c in list) output.WriteLine(c.ToString());
        Assert.NotEmpty(list);
        Assert.All(list, c => Assert.True(c.Passed, c.ToString()));
    }

    static global::Onnx.ModelProto Parse(string path) =>
        global::Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));

    [Fact]
    public void Unet_in_onnx_runtime_matches_torchsharp_at_two_batches_and_two_sizes()
    {
        var unet = Tiny.Pipeline.Unet;
        var path = Path.Combine(TestPaths.TempDir("onnx-unet"), "model.onnx");
        OnnxExport.ExportUNet(unet, path);
        using var session = new OnnxSession(path);
        var g = new Generator(7);
        Tensor Context(long b, long l) => randn(b, l, 32, generator: g);
        AssertPass(OnnxCheck.UNet(unet, session, randn(1, 4, 8, 8, generator: g), tensor(new float[] { 981 }),
            Context(1, 77)));
        // odd sizes round-trip: 9 → 5 → upsampled back to the skip's 9
        AssertPass(OnnxCheck.UNet(unet, session, randn(3, 4, 9, 12, generator: g),
            tensor(new float[] { 1, 500, 999 }), Context(3, 5)));
        // one scalar timestep for the whole batch, as diffusers' ONNX pipeline feeds it
        AssertPass(OnnxCheck.UNet(unet, session, randn(2, 4, 16, 8, generator: g), tensor(250f), Context(2, 7)));

        var model = Parse(path);
        Assert.Equal(OnnxGraphBuilder.Opset, model.OpsetImport.Single().Version);
        var sample = model.Graph.Input.Single(i => i.Name == "sample").Type.TensorType.Shape.Dim;
        Assert.Equal(new[] { "batch", "", "height", "width" }, sample.Select(d => d.DimParam));
        Assert.Equal(new[] { "out_sample" }, model.Graph.Output.Select(o => o.Name));
        Assert.Contains(model.Graph.Initializer, i => i.Name == "down_blocks.0.attentions.0.transformer_blocks.0" +
                                                               ".attn2.to_k.weight");
    }

    /// <summary>The settings the fixture leaves at their defaults: linear projections, scale-shift time
    /// conditioning, an output scale, sin-first features with a shift, centred input, cross-attention only.</summary>
    [Fact]
    public void Unet_variants_of_the_config_match_too()
    {
        manual_seed(3);
        var config = Tiny.Pipeline.Unet.Config with
        {
            UseLinearProjection = true,
            ResnetTimeScaleShift = "scale_shift",
            ResnetOutScaleFactor = 2.0,
            MidBlockScaleFactor = 1.5,
            FlipSinToCos = false,
            FreqShift = 1,
            CenterInputSample = true,
            OnlyCrossAttention = [true],
        };
        var unet = new UNet2DConditionModel(config);
        unet.eval();
        var path = Path.Combine(TestPaths.TempDir("onnx-unet-variant"), "model.onnx");
        OnnxExport.ExportUNet(unet, path);
        using var session = new OnnxSession(path);
        var g = new Generator(8);
        AssertPass(OnnxCheck.UNet(unet, session, randn(2, 4, 8, 8, generator: g), tensor(new float[] { 10, 700 }),
            randn(2, 6, 32, generator: g)));
        AssertPass(OnnxCheck.UNet(unet, session, randn(1, 4, 12, 16, generator: g), tensor(new float[] { 3 }),
            randn(1, 77, 32, generator: g)));
    }

    [Fact]
    public void Vae_encoder_and_decoder_in_onnx_runtime_match_torchsharp()
    {
        var vae = Tiny.Pipeline.Vae;
        var dir = TestPaths.TempDir("onnx-vae");
        OnnxExport.ExportVaeEncoder(vae, Path.Combine(dir, "encoder.onnx"));
        OnnxExport.ExportVaeDecoder(vae, Path.Combine(dir, "decoder.onnx"));
        var g = new Generator(11);
        using (var encoder = new OnnxSession(Path.Combine(dir, "encoder.onnx")))
        {
            AssertPass(OnnxCheck.VaeEncoder(vae, encoder, rand(1, 3, 32, 32, generator: g) * 2 - 1));
            AssertPass(OnnxCheck.VaeEncoder(vae, encoder, rand(2, 3, 24, 40, generator: g) * 2 - 1));
        }
        using var decoder = new OnnxSession(Path.Combine(dir, "decoder.onnx"));
        AssertPass(OnnxCheck.VaeDecoder(vae, decoder, randn(1, 4, 4, 4, generator: g)));
        AssertPass(OnnxCheck.VaeDecoder(vae, decoder, randn(2, 4, 5, 6, generator: g)));
    }

    [Fact]
    public void Text_encoder_in_onnx_runtime_matches_torchsharp_at_two_lengths()
    {
        var pipe = Tiny.Pipeline;
        var dir = TestPaths.TempDir("onnx-text");
        OnnxExport.ExportTextEncoder(pipe.TextEncoder, Path.Combine(dir, "int64.onnx"));
        var prompt = tensor(pipe.Tokenizer.Encode("an astronaut riding a horse").Ids).unsqueeze(0);   // [1, 77]
        var g = new Generator(5);
        var shortIds = randint(3, 49406, new long[] { 2, 7 }, dtype: ScalarType.Int64, generator: g);
        shortIds[0, 4] = tensor(49407L);                                                             // EOS mid-row
        using (var session = new OnnxSession(Path.Combine(dir, "int64.onnx")))
        {
            AssertPass(OnnxCheck.TextEncoder(pipe.TextEncoder, session, prompt));
            AssertPass(OnnxCheck.TextEncoder(pipe.TextEncoder, session, shortIds));
        }
        // int32 ids, as diffusers' ONNX pipeline feeds them (the session converts the int64 tensor)
        OnnxExport.ExportTextEncoder(pipe.TextEncoder, Path.Combine(dir, "int32.onnx"), ScalarType.Int32);
        using (var session = new OnnxSession(Path.Combine(dir, "int32.onnx")))
        {
            Assert.Equal(6, session.InputElementType("input_ids"));
            AssertPass(OnnxCheck.TextEncoder(pipe.TextEncoder, session, shortIds));
        }
    }

    /// <summary>The EOS-by-id pooling (eos_token_id ≠ 2), exact GELU and the bidirectional ablation.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Text_encoder_variants_match_too(bool bidirectional)
    {
        manual_seed(4);
        var model = new ClipTextModel(Tiny.Pipeline.TextEncoder.Config with
        {
            EosTokenId = 49407,
            HiddenAct = "gelu",
            Bidirectional = bidirectional,
        });
        model.eval();
        var path = Path.Combine(TestPaths.TempDir("onnx-text-variant"), "model.onnx");
        OnnxExport.ExportTextEncoder(model, path);
        using var session = new OnnxSession(path);
        var g = new Generator(6);
        var ids = randint(3, 49406, new long[] { 3, 12 }, dtype: ScalarType.Int64, generator: g);
        ids[0, 5] = tensor(49407L); ids[1, 11] = tensor(49407L); ids[2, 2] = tensor(49407L); ids[2, 9] = tensor(49407L);
        AssertPass(OnnxCheck.TextEncoder(model, session, ids));
        AssertPass(OnnxCheck.TextEncoder(model, session, ids[..1, ..4]));
    }

    [Fact]
    public void Weights_past_the_threshold_go_to_external_data_and_still_run()
    {
        var unet = Tiny.Pipeline.Unet;
        var dir = TestPaths.TempDir("onnx-external");
        var path = Path.Combine(dir, "model.onnx");
        OnnxExport.ExportUNet(unet, path, new OnnxSaveOptions { ExternalDataThreshold = 1000 });
        var data = Path.Combine(dir, "model.onnx_data");
        Assert.True(File.Exists(data));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));

        // every tensor of ≥ 1024 bytes is external (location, offset, length inside the side file), the rest inline
        var model = Parse(path);
        long dataLength = new FileInfo(data).Length, externalBytes = 0;
        foreach (var t in model.Graph.Initializer)
        {
            long bytes = t.Dims.Aggregate(t.DataType == OnnxGraphBuilder.Float ? 4L : 8L, (a, d) => a * d);
            bool isExternal = t.DataLocation == global::Onnx.TensorProto.Types.DataLocation.External;
            Assert.True(isExternal == bytes >= 1024, $"{t.Name}: {bytes} bytes, external {isExternal}");
            if (!isExternal) { Assert.Equal(bytes, t.RawData.Length); continue; }
            var entries = t.ExternalData.ToDictionary(e => e.Key, e => e.Value);
            Assert.Equal("model.onnx_data", entries["location"]);
            Assert.True(t.RawData.IsEmpty);
            long length = long.Parse(entries["length"]), offset = long.Parse(entries["offset"]);
            Assert.Equal(bytes, length);
            Assert.True(offset + length <= dataLength, $"{t.Name} runs past the side file");
            externalBytes += length;
        }
        Assert.True(externalBytes > unet.parameters().Sum(p => p.numel()) * 4 / 2, $"{externalBytes} bytes external");
        Assert.True(new FileInfo(path).Length < externalBytes, "the model file holds the big tensors inline");

        using var session = new OnnxSession(path);
        var g = new Generator(9);
        AssertPass(OnnxCheck.UNet(unet, session, randn(2, 4, 8, 8, generator: g), tensor(new float[] { 5, 900 }),
            randn(2, 77, 32, generator: g)));

        // written again under the threshold: inline, and the stale side file goes
        OnnxExport.ExportUNet(unet, path);
        Assert.False(File.Exists(data));
        Assert.DoesNotContain(Parse(path).Graph.Initializer,
            t => t.DataLocation == global::Onnx.TensorProto.Types.DataLocation.External);
    }

    [Fact]
    public void A_module_the_exporter_does_not_know_is_named_with_its_path_and_type()
    {
        TorchRuntime.Setup();
        var unet = UNet2DConditionModel.FromPretrained(StableDiffusionPipelineFixture.Path("tiny-unet"));
        var attention = unet.named_modules().Single(m => m.name == "mid_block.attentions.0").module;
        attention.register_module("gate", nn.Tanh());
        var path = Path.Combine(TestPaths.TempDir("onnx-unknown"), "model.onnx");
        var e = Assert.Throws<OnnxExportException>(() => OnnxExport.ExportUNet(unet, path));
        Assert.Equal("mid_block.attentions.0.gate", e.LayerPath);
        Assert.Equal("Tanh", e.LayerType);
        Assert.Contains("mid_block.attentions.0.gate (Tanh)", e.Message);
        Assert.False(File.Exists(path));

        var root = Assert.Throws<OnnxExportException>(() => OnnxExport.Export(nn.Linear(2, 3), path));
        Assert.Equal("", root.LayerPath);
        Assert.Equal("Linear", root.LayerType);

        var classes = new UNet2DConditionModel(Tiny.Pipeline.Unet.Config with { NumClassEmbeds = 10 });
        var c = Assert.Throws<OnnxExportException>(() => OnnxExport.ExportUNet(classes, path));
        Assert.Equal(("class_embedding", "Embedding"), (c.LayerPath, c.LayerType));
    }

    /// <summary>An attached (unfused) LoRA adds its branch through forward hooks, which a graph built from the module
    /// tree would silently leave out: refused, naming the first hooked layer.</summary>
    [Fact]
    public void A_hooked_layer_such_as_an_attached_lora_is_refused()
    {
        TorchRuntime.Setup();
        var unet = UNet2DConditionModel.FromPretrained(StableDiffusionPipelineFixture.Path("tiny-unet"));
        var adapter = LoraAdapter.Create(unet, "unet", rank: 2, seed: 1);
        var path = Path.Combine(TestPaths.TempDir("onnx-hooked"), "model.onnx");
        using (adapter.Attach(unet))
        {
            var e = Assert.Throws<OnnxExportException>(() => OnnxExport.ExportUNet(unet, path));
            Assert.Equal("Linear", e.LayerType);
            Assert.Matches(@"\.attn[12]\.to_(q|k|v|out\.0)$", e.LayerPath);
            Assert.Contains("LoraAdapter.Fuse", e.Message);
        }
        OnnxExport.ExportUNet(unet, path);                                      // detached: exports
        Assert.True(File.Exists(path));
    }

    [Fact]
    public void Save_pipeline_writes_the_onnx_stable_diffusion_layout()
    {
        var pipe = Tiny.Pipeline;
        var dir = TestPaths.TempDir("onnx-pipeline");
        OnnxExport.SavePipeline(pipe, dir);
        foreach (var component in new[] { "unet", "vae_encoder", "vae_decoder", "text_encoder" })
        {
            Assert.True(File.Exists(Path.Combine(dir, component, "model.onnx")), component);
            Assert.True(File.Exists(Path.Combine(dir, component, "config.json")), component);
        }
        Assert.False(File.Exists(Path.Combine(dir, "unet", "weights.pb")));      // 0.3 MB: inline
        Assert.Empty(Directory.GetFiles(dir, "*.tmp", SearchOption.AllDirectories));
        var index = PyJson.ParseFile(Path.Combine(dir, "model_index.json"))!.AsObject();
        Assert.Equal("OnnxStableDiffusionPipeline", (string?)index["_class_name"]);
        foreach (var component in new[] { "unet", "vae_encoder", "vae_decoder", "text_encoder" })
            Assert.Equal("OnnxRuntimeModel", (string?)index[component]![1]);
        Assert.Equal("DDIMScheduler", (string?)index["scheduler"]![1]);
        Assert.Equal("CLIPTokenizer", (string?)index["tokenizer"]![1]);
        var tokenizer = ClipTokenizer.FromFolder(Path.Combine(dir, "tokenizer"));
        Assert.Equal(pipe.Tokenizer.Encode("a red door").Ids, tokenizer.Encode("a red door").Ids);
        var scheduler = PyJson.ParseFile(Path.Combine(dir, "scheduler", "scheduler_config.json"))!.AsObject();
        Assert.Equal("DDIMScheduler", (string?)scheduler["_class_name"]);
        Assert.NotNull(Scheduler.Create("DDIMScheduler", scheduler));
        using var text = new OnnxSession(Path.Combine(dir, "text_encoder", "model.onnx"));
        Assert.Equal(6, text.InputElementType("input_ids"));                    // int32, as the ONNX pipeline feeds

        // the U-Net's side file is weights.pb, as diffusers' conversion names it
        var big = TestPaths.TempDir("onnx-pipeline-external");
        OnnxExport.SavePipeline(pipe, big, new OnnxSaveOptions { ExternalDataThreshold = 1000 });
        Assert.True(File.Exists(Path.Combine(big, "unet", "weights.pb")));
        using var unet = new OnnxSession(Path.Combine(big, "unet", "model.onnx"));
        var g = new Generator(2);
        AssertPass(OnnxCheck.UNet(pipe.Unet, unet, randn(1, 4, 8, 8, generator: g), tensor(new float[] { 1 }),
            randn(1, 77, 32, generator: g)));
    }
}

/// <summary>The tiny reference pipeline (PipelineTests.Tiny), loaded once for these tests.</summary>
sealed class StableDiffusionPipelineFixture
{
    public static readonly StableDiffusionPipelineFixture Value = new();
    public Pipelines.StableDiffusionPipeline Pipeline { get; }

    StableDiffusionPipelineFixture()
    {
        TorchRuntime.Setup();
        Pipeline = PipelineTests.Tiny();
    }

    public static string Path(string name) => System.IO.Path.Combine(AppContext.BaseDirectory, "fixtures", name);
}

/// <summary>Where the exporter sits: LdmLab.Export uses the models and pipelines, nothing in the library uses it.
/// </summary>
public class OnnxExportArchitectureTests
{
    [Fact]
    public void Onnx_export_sits_above_the_models_and_pipelines_without_a_cycle()
    {
        var graph = NamespaceGraph.Build(typeof(OnnxExport).Assembly, 2);
        Assert.Superset(new HashSet<string> { "LdmLab.UNet", "LdmLab.Autoencoders", "LdmLab.Conditioning",
            "LdmLab.Pipelines", "LdmLab.Interop" }, graph["LdmLab.Export"]);
        Assert.DoesNotContain(graph, kv => kv.Value.Contains("LdmLab.Export"));
        Assert.Empty(NamespaceGraph.Cycles(graph));
    }
}
