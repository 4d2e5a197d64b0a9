using LdmLab.Compression;
using LdmLab.Runtime;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Pruning (section 10.5.3): unstructured magnitude masks with exact counts that stay applied through
/// training, and structured L1 pruning of the ResNet blocks' hidden channels.</summary>
public class CompressionPruningTests(ITestOutputHelper output)
{
    static Parameter Weight(nn.Module m) => m is Linear l ? l.weight : ((Conv2d)m).weight;

    static long Zeros(Tensor t) => t.numel() - t.count_nonzero().item<long>();

    [Theory]
    [InlineData(0.1)]
    [InlineData(0.3)]
    [InlineData(0.5)]
    public void Per_layer_magnitude_pruning_zeroes_exactly_the_smallest_round_amount_n(double amount)
    {
        TorchRuntime.Setup();
        var unet = CompressionQuantizationTests.TinyUNet();
        var layers = unet.named_modules().Where(m => m.module is Linear).ToList();
        Assert.All(layers, l => Assert.Equal(0, Zeros(Weight(l.module))));            // no zeros to begin with
        var before = layers.ToDictionary(l => l.name, l => Weight(l.module).detach().clone());
        using var masks = Pruning.Magnitude(unet, amount);
        masks.Apply();
        Assert.Equal(layers.Select(l => l.name), masks.Masks.Keys);
        foreach (var (name, module) in layers)
        {
            var w = Weight(module);
            long k = (long)Math.Round(amount * w.numel(), MidpointRounding.ToEven);
            Assert.Equal(k, Zeros(w));
            Assert.Equal(k, Zeros(masks.Masks[name]));
            var old = before[name].abs();
            var kept = masks.Masks[name] > 0;
            Assert.True(old.masked_select(kept.logical_not()).max().item<float>() <= old.masked_select(kept).min()
                .item<float>(), $"{name}: a pruned weight was larger than a kept one");
            Assert.True(w.masked_select(kept).equal(before[name].masked_select(kept)).all().item<bool>(),
                $"{name}: kept weights moved");
        }
        output.WriteLine($"amount {amount}: {masks.Pruned} of {masks.Total} pruned ({masks.Sparsity:P2})");
    }

    [Fact]
    public void Global_magnitude_pruning_shares_one_threshold_across_layers()
    {
        TorchRuntime.Setup();
        var unet = CompressionQuantizationTests.TinyUNet();
        var before = unet.named_modules().Where(m => m.module is Linear or Conv2d)
            .ToDictionary(m => m.name, m => Weight(m.module).detach().abs().flatten());
        using var masks = Pruning.Magnitude(unet, 0.3, global: true, select: (_, m) => m is Linear or Conv2d);
        masks.Apply();
        long total = before.Values.Sum(t => t.numel());
        Assert.Equal((long)Math.Round(0.3 * total, MidpointRounding.ToEven), masks.Pruned);
        Assert.Equal(masks.Pruned, unet.named_modules().Where(m => before.ContainsKey(m.name))
            .Sum(m => Zeros(Weight(m.module))));
        var pruned = cat(before.Select(kv => kv.Value.masked_select(masks.Masks[kv.Key].flatten() == 0)).ToList());
        var kept = cat(before.Select(kv => kv.Value.masked_select(masks.Masks[kv.Key].flatten() > 0)).ToList());
        Assert.True(pruned.max().item<float>() <= kept.min().item<float>());
        var fractions = masks.Masks.Values.Select(m => (double)Zeros(m) / m.numel()).ToList();
        output.WriteLine($"per-layer fractions {fractions.Min():P1} … {fractions.Max():P1}");
        Assert.True(fractions.Max() - fractions.Min() > 0.05, "one global threshold prunes layers unevenly");
    }

    [Fact]
    public void Masks_stay_applied_through_training_steps()
    {
        TorchRuntime.Setup();
        var unet = CompressionQuantizationTests.TinyUNet();
        var r = CompressionQuantizationTests.Inputs();
        using var masks = Pruning.Magnitude(unet, 0.3);
        var seen = new List<long>();                                   // zeros each pruned layer had when it ran
        var layers = masks.Masks.Keys.Select(p => (nn.Module<Tensor, Tensor>)ModuleSurgery.Find(unet, p)).ToList();
        foreach (var layer in layers) layer.register_forward_hook(m => seen.Add(Zeros(Weight(m))));
        long expected = masks.Pruned;
        unet.train();
        var opt = new LdmLab.Training.AdamW(unet.named_parameters().Select(kv => (kv.name, kv.parameter)), 1e-2);
        long movedAfterStep = expected;
        for (int step = 0; step < 3; step++)
        {
            using var scope = NewDisposeScope();
            seen.Clear();
            opt.ZeroGrad();
            var y = unet.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"]);
            y.pow(2).mean().backward();
            Assert.Equal(expected, seen.Sum());                          // the forward saw exactly the masks
            opt.Step();
            movedAfterStep = layers.Sum(l => Zeros(Weight(l)));         // zeros left after the step
        }
        output.WriteLine($"{expected} pruned; zeros right after the last AdamW step: {movedAfterStep}");
        Assert.True(movedAfterStep < expected, "AdamW should move pruned weights (the hook must matter)");
        masks.Remove();                                                  // bake in, drop the hooks
        Assert.Equal(expected, layers.Sum(l => Zeros(Weight(l))));
    }

    [Fact]
    public void Bad_pruning_arguments_name_the_argument()
    {
        TorchRuntime.Setup();
        var unet = CompressionQuantizationTests.TinyUNet();
        Assert.Equal("amount", Assert.Throws<ArgumentOutOfRangeException>(() => Pruning.Magnitude(unet, 1.5))
            .ParamName);
        Assert.Equal("amount", Assert.Throws<ArgumentOutOfRangeException>(() => Pruning.Structured(unet, -0.1))
            .ParamName);
        var e = Assert.Throws<ArgumentException>(() =>
            Pruning.Magnitude(unet, 0.3, select: (p, _) => p == "mid_block"));
        Assert.Equal("select", e.ParamName);
        Assert.Contains("mid_block", e.Message);
        Int8Weights.Quantize(unet);
        var q = Assert.Throws<ModuleReplacementException>(() => Pruning.Structured(unet, 0.3));
        Assert.EndsWith(".conv1", q.Path);
    }

    [Fact]
    public void Structured_pruning_removes_whole_groups_and_keeps_the_outputs_shape()
    {
        TorchRuntime.Setup();
        var unet = CompressionQuantizationTests.TinyUNet();
        var r = CompressionQuantizationTests.Inputs();
        var shape = r["sample"].shape;
        var blocks = unet.named_modules().Where(m => m.module is ResnetBlock2D).Select(m => m.name).ToList();
        var outputs = new Dictionary<string, long[]>();
        foreach (var name in blocks)
            ((ResnetBlock2D)ModuleSurgery.Find(unet, name)).register_forward_hook((_, _, _, y) =>
            {
                outputs[name] = y.shape;
                return y;
            });
        using (no_grad()) unet.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"]);
        var shapesBefore = outputs.ToDictionary(kv => kv.Key, kv => kv.Value);

        var report = Pruning.Structured(unet, 0.3);
        output.WriteLine(report.ToString());
        Assert.Equal(blocks, report.Blocks.Select(b => b.Path));
        foreach (var b in report.Blocks)
        {
            // 32 channels in 8 groups of 4: round(0.3·32/4) = 2 groups go; 64 in 8 of 8: round(2.4) = 2 go
            long size = b.ChannelsBefore / b.GroupsBefore;
            Assert.Equal(b.ChannelsBefore == 32 ? (24L, 6L) : (48L, 6L), (b.ChannelsAfter, b.GroupsAfter));
            Assert.Equal(b.ChannelsAfter, ((Conv2d)ModuleSurgery.Find(unet, b.Path + ".conv1")).weight.shape[0]);
            Assert.Equal(b.ChannelsAfter, ((Conv2d)ModuleSurgery.Find(unet, b.Path + ".conv2")).weight.shape[1]);
            var temb = (Linear)ModuleSurgery.Find(unet, b.Path + ".time_emb_proj");
            Assert.Equal(b.ChannelsAfter, temb.weight.shape[0]);
            var norm2 = (GroupNorm)ModuleSurgery.Find(unet, b.Path + ".norm2");
            Assert.Equal((b.GroupsAfter, b.ChannelsAfter), (norm2.num_groups, norm2.weight.shape[0]));
            Assert.Equal(size, b.ChannelsAfter / b.GroupsAfter);
        }
        Assert.Equal(unet.parameters().Sum(p => p.numel()), report.ParametersAfter);
        Assert.True(report.ParametersAfter < report.ParametersBefore);

        Tensor y;
        using (no_grad()) y = unet.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"]);
        Assert.Equal(shape, y.shape);
        Assert.All(shapesBefore, kv => Assert.Equal(kv.Value, outputs[kv.Key]));
    }

    /// <summary>
    /// Channels that are dead — conv1 filter, conv1 bias and time_emb_proj rows zero, so the channel is 0
    /// everywhere, and conv2 reads nothing from it — whole GroupNorm groups of them: removing them leaves every
    /// other group's statistics and conv2's sum as they were, so the block computes the same function.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Pruning_dead_channel_groups_leaves_the_block_output_unchanged(bool scaleShift)
    {
        TorchRuntime.Setup();
        manual_seed(7);
        var block = new ResnetBlock2D(16, 32, tembChannels: 64, groups: 8, eps: 1e-5, scaleShift: scaleShift);
        var parts = block.named_children().ToDictionary(c => c.name, c => c.module);
        var (conv1, temb, norm2, conv2) = ((Conv2d)parts["conv1"], (Linear)parts["time_emb_proj"],
            (GroupNorm)parts["norm2"], (Conv2d)parts["conv2"]);
        var dead = tensor(new long[] { 4, 5, 6, 7, 20, 21, 22, 23 });                  // groups 1 and 5 (size 4)
        var alive = ones(32).index_fill_(0, dead, 0);                                    // [32] 1 = alive
        var rows = scaleShift ? cat([alive, alive]) : alive;                             // scale rows, shift rows
        using (no_grad())
        {
            norm2.weight.copy_(rand(32) + 0.5);                                          // γ, β not the defaults
            norm2.bias!.copy_(randn(32));
            conv1.weight.mul_(alive.reshape(32, 1, 1, 1));
            conv1.bias!.mul_(alive);
            temb.weight.mul_(rows.reshape(-1, 1));
            temb.bias!.mul_(rows);
            conv2.weight.mul_(alive.reshape(1, 32, 1, 1));                               // conv2 reads nothing
        }
        var conv1Before = conv1.weight.detach().clone();                                 // conv1 goes when pruned
        var x = randn(2, 16, 8, 8);                                                      // [B, C_in, H, W]
        var t = randn(2, 64);                                                            // [B, d_temb]
        Tensor before, after;
        using (no_grad()) before = block.call(x, t);                                     // [2, 32, 8, 8]

        var pruned = Pruning.PruneResnet(block, "", 0.25);                               // 8 of 32 = 2 groups
        Assert.Equal((32L, 24L, 8L, 6L), (pruned.ChannelsBefore, pruned.ChannelsAfter, pruned.GroupsBefore,
            pruned.GroupsAfter));
        var newConv1 = (Conv2d)block.named_children().Single(c => c.name == "conv1").module;
        var keep = alive.nonzero().flatten();                                            // [24] in order
        Assert.True(newConv1.weight.equal(conv1Before.index_select(0, keep)).all().item<bool>(),
            "the L1 ranking kept the wrong rows");
        using (no_grad()) after = block.call(x, t);
        double diff = (after - before).abs().max().item<float>();
        output.WriteLine($"scale_shift {scaleShift}: max |Δ| = {diff:E2}");
        Assert.Equal(before.shape, after.shape);
        Assert.True(diff <= 1e-5, $"max |Δ| = {diff}");
    }
}
