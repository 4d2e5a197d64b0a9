using System.Text.Json.Nodes;
using LdmLab.Interop;
using LdmLab.Runtime;
using LdmLab.UNet;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class UNetTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    static UNetConfig TinyConfig(Action<JsonObject>? edit = null)
    {
        var o = PyJson.ParseFile(Path.Combine(Fixture("tiny-unet"), "config.json"))!.AsObject();
        edit?.Invoke(o);
        return UNetConfig.FromJson(o);
    }

    [Fact]
    public void Tiny_unet_matches_diffusers_output_and_every_intermediate()
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Fixture("tiny-unet"));
        Assert.Equal(12, checks.Count);
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
    }

    [Fact]
    public void Sd15_unet_from_its_config_has_the_manifest_state_dict()
    {
        TorchRuntime.Setup();
        var checks = ModelParity.CheckManifest(Path.Combine(Fixture("sd15-manifest"), "unet_manifest.json"));
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
        Assert.Contains(checks, c => c.Name == "unet_manifest/total_parameters" && c.Note!.StartsWith("859,520,964"));
    }

    [Fact]
    public void Save_then_load_round_trips_and_reloads_in_the_diffusers_layout()
    {
        TorchRuntime.Setup();
        var model = UNet2DConditionModel.FromPretrained(Fixture("tiny-unet"));
        var dir = TestPaths.TempDir("unet-save");
        model.SavePretrained(dir);
        var (entries, _) = SafeTensors.ReadHeader(Path.Combine(dir, UNet2DConditionModel.WeightsName));
        var original = SafeTensors.ReadHeader(Path.Combine(Fixture("tiny-unet"), UNet2DConditionModel.WeightsName)).entries;
        Assert.Equal(original.Select(e => (e.Name, string.Join(",", e.Shape))).Order(), entries.Select(e => (e.Name, string.Join(",", e.Shape))).Order());
        var reloaded = UNet2DConditionModel.FromPretrained(dir);
        manual_seed(1);
        var x = randn(1, 4, 8, 8); var c = randn(1, 3, 32);
        using var _ = no_grad();
        Assert.Equal(0, Parity.MaxAbsDiff(model.Forward(x, tensor(10L), c), reloaded.Forward(x, tensor(10L), c)));
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        Assert.Equal("UNet2DConditionModel", (string?)cfg["_class_name"]);
        Assert.Equal(8, (int)cfg["attention_head_dim"]!);
    }

    [Fact]
    public void Wrong_weights_are_rejected_with_the_keys_named()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("unet-bad");
        File.Copy(Path.Combine(Fixture("tiny-unet"), "config.json"), Path.Combine(dir, "config.json"));
        var w = SafeTensors.Load(Path.Combine(Fixture("tiny-unet"), UNet2DConditionModel.WeightsName));
        w.Remove("conv_in.bias");
        w["extra.weight"] = zeros(2);
        SafeTensors.Save(Path.Combine(dir, UNet2DConditionModel.WeightsName), w);
        var e = Assert.Throws<Data.DatasetException>(() => UNet2DConditionModel.FromPretrained(dir));
        Assert.Contains("missing (1): conv_in.bias", e.Message);
        Assert.Contains("unexpected (1): extra.weight", e.Message);
    }

    [Theory]
    [InlineData(true, 1, 4, 8)]    // linear projections
    [InlineData(false, 2, 1, 7)]   // two transformer layers, 1 latent channel, odd spatial size
    [InlineData(false, 1, 3, 12)]
    public void Other_configs_build_and_run(bool linear, int transformerLayers, int channels, int size)
    {
        TorchRuntime.Setup();
        var cfg = TinyConfig(o =>
        {
            o["use_linear_projection"] = linear;
            o["transformer_layers_per_block"] = transformerLayers;
            o["in_channels"] = channels;
            o["out_channels"] = channels;
        });
        var model = new UNet2DConditionModel(cfg);
        var sd = model.state_dict();
        Assert.Equal(linear ? 2 : 4, sd["down_blocks.0.attentions.0.proj_in.weight"].dim());
        Assert.Equal(transformerLayers == 2, sd.ContainsKey("down_blocks.0.attentions.0.transformer_blocks.1.attn2.to_k.weight"));
        using var _ = no_grad();
        var y = model.Forward(randn(2, channels, size, size), tensor(new long[] { 1, 999 }), randn(2, 5, 32));
        Assert.Equal([2L, channels, size, size], y.shape);
        Assert.True(y.isfinite().all().item<bool>());
    }

    [Fact]
    public void Class_embeddings_condition_the_output()
    {
        TorchRuntime.Setup();
        var model = new UNet2DConditionModel(TinyConfig(o => o["num_class_embeds"] = 10));
        Assert.Equal([10L, 128], model.state_dict()["class_embedding.weight"].shape);
        using var _ = no_grad();
        var x = randn(1, 4, 8, 8);
        var a = model.Forward(x, tensor(5L), randn(1, 1, 32), tensor(new long[] { 1 }));
        var b = model.Forward(x, tensor(5L), randn(1, 1, 32), tensor(new long[] { 2 }));
        Assert.True(Parity.MaxAbsDiff(a, b) > 1e-4);
        Assert.Throws<ArgumentException>(() => model.Forward(x, tensor(5L), null));
    }

    [Fact]
    public void Unsupported_configs_name_the_key()
    {
        var e = Assert.Throws<NotSupportedException>(() => TinyConfig(o => o["addition_embed_type"] = "text_image"));
        Assert.Contains("addition_embed_type", e.Message);
        Assert.Throws<NotSupportedException>(() => TinyConfig(o => o["down_block_types"] = new JsonArray("SimpleCrossAttnDownBlock2D", "DownBlock2D")));
        Assert.Throws<ArgumentException>(() => TinyConfig(o => o["norm_num_groups"] = 5));
        Assert.Contains("addition_time_embed_dim", Assert.Throws<ArgumentException>(() => TinyConfig(o => o["addition_embed_type"] = "text_time")).Message);
    }

    [Fact]
    public void Attention_maps_can_be_observed()
    {
        TorchRuntime.Setup();
        var model = UNet2DConditionModel.FromPretrained(Fixture("tiny-unet"));
        var seen = new List<(string, long[])>();
        manual_seed(5);
        var (z, c) = (randn(1, 4, 8, 8), randn(1, 7, 32));
        using var _ = no_grad();
        var fused = model.Forward(z, tensor(10L), c);   // no observer: the fused attention kernel
        Tensor observed;
        using (model.ObserveAttention((layer, p) => seen.Add((layer, p.shape))))
            observed = model.Forward(z, tensor(10L), c);
        Assert.All(model.AttentionLayers(), layer => Assert.Null(layer.Observer));   // disposing restored every layer
        // observing switches to the explicit softmax(QKᵀ/√d)V path: the same function
        Assert.True(fused.allclose(observed, rtol: 1e-5, atol: 1e-6), $"max |diff| {(fused - observed).abs().max().item<float>()}");
        var cross = seen.Where(s => s.Item1.EndsWith("attn2")).ToList();
        Assert.Contains(cross, s => s.Item1 == "down_blocks.0.attentions.0.transformer_blocks.0.attn2" && s.Item2.SequenceEqual(new long[] { 1, 8, 64, 7 }));
        Assert.Contains(seen, s => s.Item1 == "mid_block.attentions.0.transformer_blocks.0.attn1" && s.Item2.SequenceEqual(new long[] { 1, 8, 16, 16 }));
    }
}
