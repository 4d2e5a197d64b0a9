using LdmLab.Adapters;
using LdmLab.Compression;
using LdmLab.Nn;
using LdmLab.Runtime;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Gradient checkpointing (section 10.5.4) on TorchSharp's custom autograd: the same loss and gradients as
/// plain backprop, with every block run twice.</summary>
public class CheckpointingTests(ITestOutputHelper output)
{
    /// <summary>Loss and gradients (name → clone) of one ε-MSE step of <paramref name="unet"/> on the fixture's
    /// inputs; <paramref name="calls"/> counts ResnetBlock2D forwards.</summary>
    static (float loss, Dictionary<string, Tensor> grads) Step(UNet2DConditionModel unet,
        IEnumerable<(string name, Parameter p)> parameters, Dictionary<string, Tensor> r)
    {
        using var scope = NewDisposeScope();
        unet.zero_grad();
        var y = unet.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"]);   // [2, 4, 8, 8]
        var loss = (y - r["sample"].flip(0)).pow(2).mean();
        loss.backward();
        var grads = parameters.Where(p => p.p.grad is not null)
            .ToDictionary(p => p.name, p => p.p.grad!.clone().DetachFromDisposeScope());
        return (loss.item<float>(), grads);
    }

    static int CountResnetCalls(UNet2DConditionModel unet, List<int> counter)
    {
        var blocks = unet.modules().OfType<ResnetBlock2D>().ToList();
        foreach (var b in blocks) b.register_forward_hook(_ => counter[0]++);
        return blocks.Count;
    }

    [Fact]
    public void A_checkpointed_unet_gives_the_plain_loss_and_every_gradient()
    {
        TorchRuntime.Setup();
        var r = CompressionQuantizationTests.Inputs();
        var unet = CompressionQuantizationTests.TinyUNet();
        unet.train();
        var counter = new List<int> { 0 };
        int blocks = CountResnetCalls(unet, counter);
        var parameters = unet.named_parameters().Select(p => (p.name, p.parameter)).ToList();

        var (plainLoss, plain) = Step(unet, parameters, r);
        Assert.Equal(blocks, counter[0]);
        counter[0] = 0;
        unet.EnableGradientCheckpointing();
        var (loss, grads) = Step(unet, parameters, r);
        Assert.Equal(2 * blocks, counter[0]);                          // each block recomputed once in backward

        Assert.Equal(parameters.Count, plain.Count);                    // every parameter has a gradient
        Assert.Equal(plain.Keys.Order(), grads.Keys.Order());
        double worst = 0;
        string worstName = "";
        foreach (var (name, g) in plain)
        {
            double d = (grads[name] - g).abs().max().item<float>();
            if (d > worst) (worst, worstName) = (d, name);
        }
        double largest = plain.Values.Max(g => g.abs().max().item<float>());
        output.WriteLine($"loss {plainLoss} vs {loss}; max |Δgrad| = {worst:E2} ({worstName}), max |grad| = " +
                         $"{largest:E2}");
        Assert.True(Math.Abs(plainLoss - loss) <= 1e-5, $"loss {plainLoss} vs {loss}");
        Assert.True(worst <= 1e-5, $"{worstName}: max |Δgrad| = {worst}");
        Assert.True(largest > 1e-3, "the gradients should not be trivially zero");
    }

    [Fact]
    public void Checkpointing_is_off_in_eval_mode_and_without_gradients()
    {
        TorchRuntime.Setup();
        var r = CompressionQuantizationTests.Inputs();
        var unet = CompressionQuantizationTests.TinyUNet();
        unet.EnableGradientCheckpointing();
        var counter = new List<int> { 0 };
        int blocks = CountResnetCalls(unet, counter);
        unet.train();
        using (no_grad()) unet.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"]);
        unet.eval();
        Step(unet, [], r);
        Assert.Equal(2 * blocks, counter[0]);                          // no recomputation in either
        unet.train();
        Assert.Throws<ArgumentException>(() =>
            unet.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"], adaptDownBlocks: (_, h) => h));
    }

    /// <summary>A frozen U-Net with an attached LoRA adapter (the usual reason to checkpoint): no input of a block
    /// requires grad, the factors live outside the blocks, and they still get the plain gradients.</summary>
    [Fact]
    public void Lora_factors_on_a_frozen_unet_get_the_plain_gradients()
    {
        TorchRuntime.Setup();
        var r = CompressionQuantizationTests.Inputs();
        var unet = CompressionQuantizationTests.TinyUNet();
        foreach (var p in unet.parameters()) p.requires_grad = false;
        var adapter = LoraAdapter.Create(unet, "unet", rank: 4, seed: 3);
        using (no_grad())
            foreach (var layer in adapter.Layers.Values) layer.Up.normal_(0, 0.1);     // B ≠ 0: A gets gradients too
        using var attached = adapter.Attach(unet);
        unet.train();
        var factors = adapter.named_parameters().Select(p => (p.name, p.parameter)).ToList();

        var (_, plain) = Step(unet, factors, r);
        adapter.zero_grad();                                                              // grads to none
        unet.EnableGradientCheckpointing();
        var (_, grads) = Step(unet, factors, r);

        Assert.Equal(factors.Count, plain.Count);
        Assert.Equal(plain.Keys.Order(), grads.Keys.Order());
        double worst = plain.Max(kv => (grads[kv.Key] - kv.Value).abs().max().item<float>());
        output.WriteLine($"{factors.Count} LoRA factors, max |Δgrad| = {worst:E2}");
        Assert.True(worst <= 1e-5, $"max |Δgrad| = {worst}");
        Assert.All(plain.Values, g => Assert.True(g.abs().max().item<float>() > 0));
    }

    [Fact]
    public void A_segment_returns_input_gradients_and_refuses_dropout()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var net = nn.Sequential(nn.Linear(6, 8), nn.SiLU(), nn.Linear(8, 3));
        var x = randn(5, 6).requires_grad_(true);
        net.call(x).pow(2).sum().backward();
        var plainW = net.parameters().Select(p => p.grad!.clone()).ToList();
        net.zero_grad();

        var x2 = x.detach().clone().requires_grad_(true);
        var y = GradientCheckpoint.Run(net, v => [net.call(v[0]!)], x2)[0];             // [5, 3]
        y.pow(2).sum().backward();
        Assert.True(x2.grad!.allclose(x.grad!, rtol: 0, atol: 1e-6));
        Assert.All(net.parameters().Zip(plainW), p => Assert.True(p.First.grad!.allclose(p.Second, rtol: 0,
            atol: 1e-6)));

        var dropped = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.1));
        dropped.train();
        var e = Assert.Throws<NotSupportedException>(() =>
            GradientCheckpoint.Run(dropped, v => [dropped.call(v[0]!)], x));
        Assert.Contains("dropout", e.Message);
    }

    [Fact]
    public void The_measurement_runs_both_ways_and_restores_the_model()
    {
        TorchRuntime.Setup();
        var unet = CompressionQuantizationTests.TinyUNet();                             // eval, checkpointing off
        var m = CheckpointingCost.Measure(unet, batch: 1, size: 8, contextTokens: 7, reps: 1);
        output.WriteLine(m.ToString());
        Assert.True(m.PlainSeconds > 0 && m.CheckpointedSeconds > 0);
        Assert.False(unet.training);
        Assert.False(unet.GradientCheckpointing);
        Assert.All(unet.parameters(), p => Assert.Null(p.grad));
    }
}
