using System.Runtime.InteropServices;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Metrics;

/// <summary>What one layer cost in one forward pass: multiply–adds counted as 2 FLOPs, and the elements it produced.</summary>
public sealed record LayerCost(string Name, string Kind, double Flops, double OutputElements);

/// <summary>
/// The cost of one forward pass, layer by layer, counted by hooks on the layers that run (Conv2d, Linear, GroupNorm,
/// LayerNorm) and by the attention observer (the [b·h, n, m] probability matrices and the two batched products
/// Q·Kᵀ and P·V, 2·n·m·d FLOPs each per head).
/// <para>Activation memory = the elements of every counted layer output and attention matrix: the tensors autograd
/// keeps for the backward pass. Functional intermediates (SiLU, residual sums, the GEGLU product) are not counted,
/// so this is a lower bound; <see cref="Runtime.ProcessMemory"/> measures the real peak where the OS reports it.</para>
/// </summary>
public sealed record CostProfile(IReadOnlyList<LayerCost> Layers)
{
    public double Flops => Layers.Sum(l => l.Flops);
    public double ActivationElements => Layers.Sum(l => l.OutputElements);
    public double ActivationBytes(int bytesPerElement = 4) => ActivationElements * bytesPerElement;

    /// <summary>The largest single tensor produced: a lower bound on the peak memory even of inference.</summary>
    public double LargestOutputElements => Layers.Count == 0 ? 0 : Layers.Max(l => l.OutputElements);

    /// <summary>The same pass without the layers whose name starts with one of <paramref name="prefixes"/>.</summary>
    public CostProfile Without(params string[] prefixes) => new(Layers.Where(l => !prefixes.Any(p => l.Name.StartsWith(p, StringComparison.Ordinal))).ToList());

    /// <summary>FLOPs and output elements per layer kind (conv, linear, norm, attention).</summary>
    public IReadOnlyDictionary<string, (double flops, double elements)> ByKind() =>
        Layers.GroupBy(l => l.Kind).ToDictionary(g => g.Key, g => (g.Sum(l => l.Flops), g.Sum(l => l.OutputElements)));
}

public static class ComputeCost
{
    /// <summary>Runs <paramref name="forward"/> once with counting hooks on <paramref name="model"/>'s layers.</summary>
    public static CostProfile Count(nn.Module model, Action forward)
    {
        var layers = new List<LayerCost>();
        var removers = new List<Action>();
        var headDims = new Dictionary<string, int>();
        foreach (var (name, module) in model.named_modules())
        {
            if (module is Attention a) { headDims[a.LayerName] = a.HeadDim; continue; }
            Func<Tensor, Tensor, double>? flops = module switch
            {
                // every output element is a dot product of length C_in/groups · k_h · k_w
                Conv2d c => (_, y) => 2.0 * y.numel() * (c.in_channels / c.groups) * c.kernel_size[0] * c.kernel_size[1],
                Linear l => (_, y) => 2.0 * y.numel() * l.in_features,
                GroupNorm or LayerNorm => (x, _) => 0.0,
                _ => null,
            };
            if (flops is null || module is not nn.Module<Tensor, Tensor> hookable) continue;
            string kind = module switch { Conv2d => "conv", Linear => "linear", _ => "norm" };
            var remover = hookable.register_forward_hook((_, x, y) =>
            {
                layers.Add(new LayerCost(name, kind, flops(x, y), y.numel()));
                return y;
            });
            removers.Add(remover.remove);
        }
        var observing = model.ObserveAttention((layer, probs) =>
        {
            double d = headDims.TryGetValue(layer, out var hd) ? hd : 0;
            layers.Add(new LayerCost(layer, "attention", 2 * 2.0 * probs.numel() * d, probs.numel()));
        });
        try { forward(); }
        finally
        {
            observing.Dispose();
            foreach (var remove in removers) remove();
        }
        return new CostProfile(layers);
    }

    /// <summary>
    /// Every layer's cost is a monomial in the input area A = H·W: A⁰ (time embedding, cross-attention keys), A¹
    /// (convolutions, norms, tokens) or A² (self-attention matrices). Two counts at areas A₁ ≠ A₂ fix each layer's
    /// exponent, which gives the exact cost at any area whose downsampled sizes stay whole; an exponent that is not
    /// 0, 1 or 2 is an error.
    /// </summary>
    public static CostProfile Extrapolate(CostProfile atArea1, double area1, CostProfile atArea2, double area2, double targetArea)
    {
        if (atArea1.Layers.Count != atArea2.Layers.Count)
            throw new ArgumentException($"the two counts saw different layers ({atArea1.Layers.Count} vs {atArea2.Layers.Count})");
        var r = area2 / area1;
        double Scale(double v1, double v2, string what)
        {
            if (v1 == 0 && v2 == 0) return 0;
            double p = Math.Log(v2 / v1) / Math.Log(r);
            double rounded = Math.Round(p);
            if (Math.Abs(p - rounded) > 1e-6 || rounded is < 0 or > 2) throw new InvalidOperationException($"{what} grows as A^{p:G4}, not A^0, A^1 or A^2");
            return v2 * Math.Pow(targetArea / area2, rounded);
        }
        return new CostProfile(atArea1.Layers.Zip(atArea2.Layers, (a, b) =>
        {
            if (a.Name != b.Name) throw new ArgumentException($"layer order differs: {a.Name} vs {b.Name}");
            return b with { Flops = Scale(a.Flops, b.Flops, b.Name), OutputElements = Scale(a.OutputElements, b.OutputElements, b.Name) };
        }).ToList());
    }
}
