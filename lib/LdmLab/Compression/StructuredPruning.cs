using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Compression;

/// <summary>One ResNet block's hidden width before and after <see cref="Pruning.Structured"/>.</summary>
public sealed record PrunedBlock(string Path, long ChannelsBefore, long ChannelsAfter, long GroupsBefore,
    long GroupsAfter);

/// <summary>What <see cref="Pruning.Structured"/> did: the blocks and the parameter count of the whole model.</summary>
public sealed record StructuredPruningReport(IReadOnlyList<PrunedBlock> Blocks, long ParametersBefore,
    long ParametersAfter)
{
    public override string ToString() =>
        $"{Blocks.Count} ResNet blocks pruned; parameters {ParametersBefore:N0} → {ParametersAfter:N0} " +
        $"({100.0 * (ParametersBefore - ParametersAfter) / ParametersBefore:F1} % fewer)";
}

public static partial class Pruning
{
    /// <summary>
    /// Structured L1 pruning of every <see cref="ResnetBlock2D"/> of <paramref name="model"/>: in each block the
    /// hidden channels between conv1 and conv2 are removed for real (smaller layers, fewer parameters and FLOPs),
    /// ranked by the L1 norm of conv1's filters. The blocks' outputs keep their shape. See
    /// <see cref="PruneResnet"/> for one block.
    /// </summary>
    /// <param name="amount">Fraction of each block's hidden channels to remove, 0…1 (rounded to whole GroupNorm
    /// groups; the chapter uses 0.3).</param>
    public static StructuredPruningReport Structured(nn.Module model, double amount)
    {
        long before = model.parameters().Sum(p => p.numel());
        var blocks = model.named_modules().Where(m => m.module is ResnetBlock2D).ToList();
        if (blocks.Count == 0) throw new ArgumentException("the model has no ResnetBlock2D", nameof(model));
        var pruned = blocks.Select(b => PruneResnet(model, b.name, amount)).ToList();
        return new StructuredPruningReport(pruned, before, model.parameters().Sum(p => p.numel()));
    }

    /// <summary>
    /// Removes a fraction of the hidden channels of the <see cref="ResnetBlock2D"/> at <paramref name="path"/>
    /// ("" when <paramref name="model"/> is the block)
    /// (norm1 → SiLU → conv1 → + time_emb_proj(temb) → norm2 → SiLU → conv2, + shortcut):
    /// <list type="number">
    /// <item>score each output channel c of conv1 by its filter's L1 norm, s_c = Σ |W1[c, :, :, :]|
    /// (torch.nn.utils.prune.ln_structured with n = 1, dim = 0);</item>
    /// <item>remove the lowest-scoring ones, kept in their original order, from conv1's outputs (weight rows, bias),
    /// time_emb_proj's outputs (with scale_shift both the scale and the shift row), norm2's γ and β, and conv2's
    /// inputs (weight columns; conv2's outputs and the shortcut are untouched, so the block's output shape is
    /// unchanged).</item>
    /// </list>
    /// GroupNorm: norm2 keeps its group size (channels per group) and loses groups — the count removed is
    /// round(amount · C / size) whole groups, at least one group is kept. Re-grouping this way, not keeping the
    /// group count, means that when the removed channels were whole groups (e.g. channels that training drove to
    /// zero group by group), every surviving group normalises over exactly the channels it did before, and the block
    /// computes the same function (tested). Channels picked from several groups re-form the groups in order, which
    /// changes their statistics: pruning changes the function; fine-tuning is expected to recover.
    /// </summary>
    public static PrunedBlock PruneResnet(nn.Module model, string path, double amount)
    {
        if (!(amount >= 0 && amount <= 1))
            throw new ArgumentOutOfRangeException(nameof(amount), amount, "the fraction to prune must be in [0, 1]");
        var block = ModuleSurgery.Find(model, path);
        if (block is not ResnetBlock2D)
            throw new ModuleReplacementException(path, $"a {block.GetType().Name}, not a ResnetBlock2D");
        var children = block.named_children().ToDictionary(c => c.name, c => c.module);
        var conv1 = Child<Conv2d>(children, path, "conv1");
        var norm2 = Child<GroupNorm>(children, path, "norm2");
        var conv2 = Child<Conv2d>(children, path, "conv2");
        Linear? temb = children.ContainsKey("time_emb_proj") ? Child<Linear>(children, path, "time_emb_proj") : null;

        long channels = conv1.weight.shape[0], groups = norm2.num_groups, size = channels / groups;
        long removeGroups = Math.Min((long)Math.Round(amount * channels / size, MidpointRounding.ToEven), groups - 1);
        long keepCount = channels - removeGroups * size;

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var scores = conv1.weight.abs().sum(1, 2, 3);                                     // [C]  s_c = Σ|W1[c]|
        var keep = scores.topk((int)keepCount).indexes.sort().Values;                    // [C']  original order

        // conv1: [C, in, k, k] → [C', in, k, k]
        var newConv1 = Like(conv1, conv1.weight.shape[1], keepCount);
        newConv1.weight.copy_(conv1.weight.index_select(0, keep));
        newConv1.bias?.copy_(conv1.bias!.index_select(0, keep));
        // time_emb_proj: [C, d] (scale_shift: [2C, d], scale rows then shift rows) → [C', d] / [2C', d]
        Linear? newTemb = null;
        if (temb is not null)
        {
            bool scaleShift = temb.weight.shape[0] == 2 * channels;
            var rows = scaleShift ? cat([keep, keep + channels]) : keep;
            newTemb = nn.Linear(temb.weight.shape[1], rows.shape[0], hasBias: temb.bias is not null);
            newTemb.weight.copy_(temb.weight.index_select(0, rows));
            newTemb.bias?.copy_(temb.bias!.index_select(0, rows));
        }
        // norm2: C channels in G groups of `size` → C' channels in C'/size groups of `size`
        var newNorm2 = Nn.Layers.GroupNorm(keepCount / size, keepCount, norm2.eps);
        newNorm2.weight.copy_(norm2.weight.index_select(0, keep));
        newNorm2.bias!.copy_(norm2.bias!.index_select(0, keep));
        // conv2: [out, C, k, k] → [out, C', k, k]
        var newConv2 = Like(conv2, keepCount, conv2.weight.shape[0]);
        newConv2.weight.copy_(conv2.weight.index_select(1, keep));
        newConv2.bias?.copy_(conv2.bias!);

        var device = conv1.weight.device;
        foreach (var (name, module) in new (string, nn.Module?)[]
                     { ("conv1", newConv1), ("time_emb_proj", newTemb), ("norm2", newNorm2), ("conv2", newConv2) })
            if (module is not null)
                ModuleSurgery.Replace(model, path.Length == 0 ? name : $"{path}.{name}", module.to(device)).Dispose();
        return new PrunedBlock(path, channels, keepCount, groups, keepCount / size);
    }

    static T Child<T>(Dictionary<string, nn.Module> children, string path, string name) where T : nn.Module =>
        children.TryGetValue(name, out var m) && m is T typed ? typed
            : throw new ModuleReplacementException($"{path}.{name}",
                $"expected a float {typeof(T).Name} (prune before quantizing), found " +
                $"{(m is null ? "nothing" : m.GetType().Name)}");

    /// <summary>A Conv2d with <paramref name="like"/>'s kernel, stride, padding and dilation and new channel counts.
    /// </summary>
    static Conv2d Like(Conv2d like, long inChannels, long outChannels) =>
        nn.Conv2d(inChannels, outChannels, (like.kernel_size[0], like.kernel_size[1]),
            stride: (like.stride[0], like.stride[1]), padding: (like.padding![0], like.padding![1]),
            dilation: (like.dilation[0], like.dilation[1]), bias: like.bias is not null);
}
