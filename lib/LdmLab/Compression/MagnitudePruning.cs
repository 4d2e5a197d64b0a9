using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Compression;

/// <summary>Pruning (chapter 10.5.3): unstructured magnitude pruning with masks here, structured L1 pruning of the
/// ResNet blocks' channels in StructuredPruning.cs.</summary>
public static partial class Pruning
{
    /// <summary>The chapter's default target for unstructured pruning: Linear layers (attention projections,
    /// feed-forward, time embedding).</summary>
    public static bool LinearLayers(string path, nn.Module module) => module is Linear;

    /// <summary>
    /// Unstructured L1 (magnitude) pruning, as torch.nn.utils.prune's <c>l1_unstructured</c> (per layer) and
    /// <c>global_unstructured</c> (<paramref name="global"/>): the k = round(amount · n) weights of smallest |W| get
    /// mask 0 — per layer n is the layer's weight count, globally the count over all selected layers, so one
    /// threshold is shared and layers lose different fractions. Ties are broken by topk, so exactly k are zero.
    /// The masks stay applied through training: see <see cref="PruningMasks"/>.
    /// </summary>
    /// <param name="amount">Fraction of weights to prune, 0…1 (the chapter uses 0.3; 0.1…0.5 is the usual range).
    /// </param>
    /// <param name="select">Which layers (Linear or Conv2d) to prune; default <see cref="LinearLayers"/>.</param>
    public static PruningMasks Magnitude(nn.Module model, double amount, bool global = false,
        Func<string, nn.Module, bool>? select = null)
    {
        if (!(amount >= 0 && amount <= 1))
            throw new ArgumentOutOfRangeException(nameof(amount), amount, "the fraction to prune must be in [0, 1]");
        select ??= LinearLayers;
        var layers = new List<(string path, nn.Module module)>();
        foreach (var (path, module) in model.named_modules())
        {
            if (!select(path, module)) continue;
            if (module is not (Linear or Conv2d))
                throw new ArgumentException($"{path}: a {module.GetType().Name}; magnitude pruning takes Linear and " +
                                            "Conv2d layers", nameof(select));
            layers.Add((path, module));
        }
        if (layers.Count == 0)
            throw new ArgumentException("no layer of the model matches the selection", nameof(select));

        var masks = new List<Tensor>();
        using (var scope = NewDisposeScope())
        using (no_grad())
        {
            var scores = layers.Select(l => PruningMasks.Weight(l.module).detach().abs().flatten())    // |W|
                .ToList();
            if (global)
            {
                var all = cat(scores);                                                    // [Σ n]
                var flat = ones_like(all).index_fill_(0, Smallest(all, amount), 0);       // one threshold for all
                masks.AddRange(flat.split(scores.Select(s => s.numel()).ToArray()).Select(m => m.clone()));
            }
            else
                masks.AddRange(scores.Select(s => ones_like(s).index_fill_(0, Smallest(s, amount), 0)));
            for (int i = 0; i < masks.Count; i++)
                masks[i] = masks[i].reshape(PruningMasks.Weight(layers[i].module).shape).DetachFromDisposeScope();
        }
        return new PruningMasks(layers.Select((l, i) => (l.path, l.module, masks[i])).ToList());
    }

    /// <summary>Indices of the k = round(amount · n) smallest scores (Python's round: halves to even, as prune's
    /// <c>_compute_nparams_toprune</c>).</summary>
    static Tensor Smallest(Tensor scores, double amount)
    {
        int k = checked((int)Math.Round(amount * scores.numel(), MidpointRounding.ToEven));
        return scores.topk(k, largest: false).indexes;
    }
}

/// <summary>
/// Masks M ∈ {0, 1} on Linear/Conv2d weights and the rule that keeps them applied: each layer gets a forward
/// pre-hook that sets W ← W ⊙ M in place before the layer runs. That is the moment torch.nn.utils.prune also
/// applies its mask (it recomputes weight = weight_orig · mask in a forward pre-hook), so an optimizer step that
/// moved a pruned weight never reaches a forward: the model the loss sees is always exactly as sparse as asked.
/// Unlike prune's re-parametrisation the gradient of a pruned weight is not zeroed (the optimizer may move it; the
/// next forward zeroes it again). The hook first checks whether any pruned weight is non-zero and writes only then,
/// so a layer run twice before one backward (guidance, weight sharing, checkpoint recomputation) is not modified
/// under its saved activations; the check costs one pass over the weight (and a host sync) per layer and forward.
/// <see cref="Remove"/> bakes the zeros in and drops the hooks (prune.remove).
/// </summary>
public sealed class PruningMasks : IDisposable
{
    readonly List<(string path, nn.Module module, Tensor mask, Action removeHook)> _layers = new();

    internal PruningMasks(IReadOnlyList<(string path, nn.Module module, Tensor mask)> layers)
    {
        foreach (var (path, module, mask) in layers)
        {
            var hookable = (nn.Module<Tensor, Tensor>)module;                          // Linear or Conv2d
            var handle = hookable.register_forward_pre_hook(_ => ApplyTo(module, mask));
            _layers.Add((path, module, mask, () => handle.remove()));
        }
    }

    /// <summary>Layer path → mask (the weight's shape, 1 = kept).</summary>
    public IReadOnlyDictionary<string, Tensor> Masks => _layers.ToDictionary(l => l.path, l => l.mask);

    /// <summary>Weights pruned (mask 0) and weights under the masks in all.</summary>
    public long Pruned => _layers.Sum(l => l.mask.numel() - l.mask.count_nonzero().item<long>());
    public long Total => _layers.Sum(l => l.mask.numel());

    /// <summary>Pruned / Total.</summary>
    public double Sparsity => (double)Pruned / Total;

    /// <summary>W ← W ⊙ M on every layer now (e.g. before saving a checkpoint after an optimizer step).</summary>
    public void Apply()
    {
        foreach (var (_, module, mask, _) in _layers) ApplyTo(module, mask);
    }

    /// <summary>Applies the masks one last time and removes the hooks: the zeros stay, nothing re-applies them.
    /// </summary>
    public void Remove()
    {
        Apply();
        foreach (var l in _layers) l.removeHook();
        foreach (var l in _layers) l.mask.Dispose();
        _layers.Clear();
    }

    public void Dispose() => Remove();

    static void ApplyTo(nn.Module module, Tensor mask)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var w = Weight(module);                       // read each time: Module.to replaces the Parameter
        var m = mask.to(w.dtype, w.device);
        if (w.mul(1 - m).count_nonzero().item<long>() > 0) w.mul_(m);   // any pruned weight non-zero?
    }

    internal static Parameter Weight(nn.Module module) => module switch
    {
        Linear l => l.weight,
        Conv2d c => c.weight,
        _ => throw new ArgumentException($"{module.GetName()}: not a Linear or Conv2d layer", nameof(module)),
    };
}
