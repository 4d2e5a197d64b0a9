using System.Text.Json.Nodes;
using LdmLab.Interop;
using LdmLab.Metrics;
using LdmLab.Runtime;
using LdmLab.UNet;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class CostTests
{
    static UNetConfig Tiny() =>
        UNetConfig.FromJson(PyJson.ParseFile(Path.Combine(AppContext.BaseDirectory, "fixtures", "tiny-unet", "config.json"))!.AsObject());

    [Fact]
    public void Extrapolated_cost_equals_a_direct_count_layer_by_layer()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var model = new UNet2DConditionModel(Tiny());
        var scaling = UNetCost.ForwardScaling(model, contextTokens: 5);
        var direct = UNetCost.Forward(model, 16, 5);
        var extrapolated = scaling(16);
        Assert.Equal(direct.Layers.Count, extrapolated.Layers.Count);
        foreach (var (d, e) in direct.Layers.Zip(extrapolated.Layers))
        {
            Assert.Equal(d.Name, e.Name);
            Assert.Equal(d.Flops, e.Flops, 6);
            Assert.Equal(d.OutputElements, e.OutputElements, 6);
        }
        Assert.Contains(direct.Layers, l => l.Kind == "attention");
        Assert.Contains(direct.Layers, l => l.Kind == "conv");
        Assert.Throws<ArgumentException>(() => scaling(12 + 1));
    }

    /// <summary>A hollow model (Lab.Hollow: no weight storage) counts every layer as the real one does, with every
    /// parameter a zero-stride view, and the sizes, keys and parameter count of the real model.</summary>
    [Fact]
    public void A_hollow_model_counts_like_the_real_one_without_weight_storage()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var real = new UNet2DConditionModel(Tiny());
        var hollow = Lab.Hollow(() => new UNet2DConditionModel(Tiny()));
        Assert.Equal(real.ParameterCount, hollow.ParameterCount);
        Assert.Equal(real.state_dict().Keys, hollow.state_dict().Keys);
        Assert.All(hollow.parameters(), p =>
        {
            Assert.Equal(TorchSharp.DeviceType.CPU, p.device_type);
            Assert.All(p.stride().Zip(p.shape).Where(d => d.Second > 1), d => Assert.Equal(0L, d.First));  // 1 value
        });
        var (a, b) = (UNetCost.Forward(real, 16, 5), UNetCost.Forward(hollow, 16, 5));
        Assert.Equal(a.Layers.Select(l => (l.Name, l.Flops, l.OutputElements)),
            b.Layers.Select(l => (l.Name, l.Flops, l.OutputElements)));
        Assert.True(a.Flops > 0);
        // a module with a buffer is refused, naming it: its values would be lost
        var ex = Assert.Throws<NotSupportedException>(() => Lab.Hollow(() => nn.BatchNorm2d(4)));
        Assert.Contains("running_mean", ex.Message);
    }

    [Fact]
    public void Counted_flops_follow_the_layer_formulas()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var config = Tiny();
        var model = new UNet2DConditionModel(config);
        var cost = UNetCost.Forward(model, 8, 5);
        // conv_in: every output element is a dot product of in_channels·3·3 terms
        var convIn = cost.Layers.Single(l => l.Name == "conv_in");
        Assert.Equal(config.BlockOutChannels[0] * 8 * 8, convIn.OutputElements);
        Assert.Equal(2.0 * convIn.OutputElements * config.InChannels * 9, convIn.Flops);
        // self-attention at the first level: probabilities [heads, 64, 64], two products of 2·n·m·d each
        var attn = cost.Layers.First(l => l.Kind == "attention" && l.Name.EndsWith(".attn1"));
        var modules = model.named_modules().Select(m => m.module).OfType<Attention>().ToList();
        Assert.Contains(modules, m => m.Heads * 64.0 * 64 == attn.OutputElements && 4.0 * attn.OutputElements * m.HeadDim == attn.Flops);
        // cross-attention: 64 queries × 5 context tokens
        var cross = cost.Layers.First(l => l.Kind == "attention" && l.Name.EndsWith(".attn2"));
        Assert.Contains(modules, m => m.Heads * 64.0 * 5 == cross.OutputElements);
        Assert.True(cost.Without("down_blocks.0.attentions.").Flops < cost.Flops);
        Assert.Equal(cost.Layers.Max(l => l.OutputElements), cost.LargestOutputElements);
    }

    [Fact]
    public void Extrapolation_rejects_growth_that_is_not_a_monomial_of_degree_0_to_2()
    {
        var a = new CostProfile([new LayerCost("x", "conv", 1, 1)]);
        var b = new CostProfile([new LayerCost("x", "conv", 3, 3)]);   // ×3 for ×2 area: A^1.58
        Assert.Throws<InvalidOperationException>(() => ComputeCost.Extrapolate(a, 1, b, 2, 8));
        var c = new CostProfile([new LayerCost("y", "conv", 2, 2)]);
        Assert.Throws<ArgumentException>(() => ComputeCost.Extrapolate(a, 1, c, 2, 8));
        var quadratic = ComputeCost.Extrapolate(a, 1, new CostProfile([new LayerCost("x", "attention", 4, 4)]), 2, 8);
        Assert.Equal(64, quadratic.Flops);
    }

    [Fact]
    public void A_training_step_is_measured_and_its_forward_count_scales_with_the_batch()
    {
        TorchRuntime.Setup();
        var config = Tiny();
        var step = UNetCost.TrainingStep(config, "latent", config.InChannels, 8, batch: 2, contextTokens: 5, reps: 1);
        Assert.True(step.MedianSeconds > 0);
        Assert.Equal((long)config.InChannels * 64, step.InputValues);
        manual_seed(0);
        var single = UNetCost.Forward(new UNet2DConditionModel(config), 8, 5);
        Assert.Equal(2 * single.Flops, step.Forward.Flops, 6);
        Assert.Equal(2 * single.ActivationElements, step.Forward.ActivationElements, 6);
        if (ProcessMemory.Supported) Assert.True(step.PeakBytes > 0);
        Assert.Throws<ArgumentException>(() => UNetCost.TrainingStep(config, "bad", 4, 7, 1, 5));
    }

    [SkippableFact]
    public void Peak_memory_of_a_400_MB_allocation_is_measured()
    {
        TorchRuntime.Setup();
        Skip.IfNot(ProcessMemory.Supported, "process memory is not readable on this platform");
        var peak = ProcessMemory.PeakIncrease(() =>
        {
            using var t = ones(100, 1000, 1000);   // 4e8 bytes, touched
        });
        Assert.NotNull(peak);
        Assert.InRange(peak!.Value, 380_000_000L, 800_000_000L);
    }

    [Fact]
    public void Stable_diffusion_15_config_is_the_manifest_config()
    {
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "fixtures", "sd15-manifest", "unet_manifest.json")))!;
        var fromManifest = UNetConfig.FromJson(manifest["config"]!.AsObject());
        Assert.Equal(fromManifest.ToJson().ToJsonString(), UNetConfig.StableDiffusion15.ToJson().ToJsonString());
    }
}
