using LdmLab.Interop;
using LdmLab.Nn;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Issue 26, part 6: channels-last storage (MemoryFormat) changes the order in memory and nothing else.
/// </summary>
public class MemoryFormatTests
{
    [Fact]
    public void Channels_last_tensor_has_pytorchs_strides_and_the_same_values()
    {
        var x = randn(2, 3, 4, 5);                                                              // [N, C, H, W]
        Assert.False(MemoryFormat.IsChannelsLast(x));
        var y = MemoryFormat.ToChannelsLast(x);
        Assert.True(MemoryFormat.IsChannelsLast(y));
        Assert.Equal(new long[] { 2, 3, 4, 5 }, y.shape);
        Assert.Equal(new long[] { 60, 1, 15, 3 }, y.stride());                                   // (HWC, 1, WC, C)
        Assert.True(y.allclose(x, rtol: 0, atol: 0));
        Assert.Same(y, MemoryFormat.ToChannelsLast(y));                                          // already: itself
        var tokens = randn(2, 7, 3);
        Assert.Same(tokens, MemoryFormat.ToChannelsLast(tokens));                                // not 4-D: itself
    }

    [Fact]
    public void Channels_last_unet_computes_the_same_in_nhwc_and_saves_the_same_weights()
    {
        var unet = PipelineTests.Tiny().Unet;
        manual_seed(3);
        var z = randn(2, 4, 8, 8); var context = randn(2, 77, 32);
        using var _ = no_grad();
        var reference = unet.Forward(z, tensor(500L), context);
        var before = unet.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());

        unet.ToChannelsLast();
        var convs = unet.modules().OfType<Conv2d>().ToList();
        Assert.NotEmpty(convs);
        Assert.All(convs, c => Assert.True(MemoryFormat.UsesChannelsLast(c)));
        var record = new Dictionary<string, Tensor>();
        var y = unet.Forward(z, tensor(500L), context, record: record);
        Assert.True(MemoryFormat.IsChannelsLast(record["down_blocks.0"]), "activations did not follow the weights");
        Assert.True(y.is_contiguous(), "the U-Net must hand out NCHW order");
        Assert.True(y.allclose(reference, rtol: 1e-4, atol: 1e-5),
            $"max |Δ| {(y - reference).abs().max().item<float>()}");

        var file = Path.Combine(Directory.CreateTempSubdirectory("ldmlab-cl-").FullName, "unet.safetensors");
        SafeTensors.Save(file, unet.state_dict());
        var saved = SafeTensors.Load(file);
        Assert.Equal(before.Keys.Order(), saved.Keys.Order());
        foreach (var (key, value) in before) Assert.True(saved[key].allclose(value, rtol: 0, atol: 0), key);

        unet.ToChannelsLast(false);
        Assert.All(unet.modules().OfType<Conv2d>(), c => Assert.True(c.weight!.is_contiguous()));
        Assert.True(unet.Forward(z, tensor(500L), context).allclose(reference, rtol: 1e-4, atol: 1e-5));
        Directory.Delete(Path.GetDirectoryName(file)!, recursive: true);
    }
}
