using LdmLab.Nn;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class LayersTests
{
    [Fact]
    public void GroupNorm_starts_as_identity_affine_and_normalises()
    {
        TorchRuntime.Setup();
        var gn = Layers.GroupNorm(4, 16);
        Assert.True(gn.weight!.eq(1).all().item<bool>());
        Assert.True(gn.bias!.eq(0).all().item<bool>());
        var y = gn.forward(randn(2, 16, 5, 5) * 3 + 7).reshape(2, 4, -1);
        Assert.True(y.mean([2]).abs().max().item<float>() < 1e-4);
        Assert.True((y.std([2], unbiased: false) - 1).abs().max().item<float>() < 1e-3);
    }

    [Fact]
    public void GroupNorm_rejects_uneven_groups()
    {
        var e = Assert.Throws<ArgumentException>(() => Layers.GroupNorm(3, 16));
        Assert.Contains("16 channels", e.Message);
    }

    [Fact]
    public void LayerNorm_starts_as_identity_affine()
    {
        var ln = Layers.LayerNorm(8);
        Assert.True(ln.weight!.eq(1).all().item<bool>());
        Assert.True(ln.bias!.eq(0).all().item<bool>());
    }
}

public class ProgressTests
{
    [Fact]
    public void Reports_first_last_and_throttled_steps_even_when_resuming_mid_run()
    {
        var seen = new List<int>();
        var p = new LdmLab.Viz.Progress("x", 100, i => seen.Add(i.Step), TimeSpan.FromHours(1));
        foreach (var step in Enumerable.Range(41, 60)) p.Report(step);   // a resumed run starts at 41
        Assert.Equal([41, 100], seen);
        Assert.Equal(100, p.Last!.Step);
        Assert.Contains("x 100/100", p.Last.ToString());
    }
}
