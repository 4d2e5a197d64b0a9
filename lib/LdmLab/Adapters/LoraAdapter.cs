using LdmLab.Interop;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Adapters;

/// <summary>
/// A LoRA adapter: one <see cref="LoraLayer"/> per target layer, keyed "<c>component.module path</c>" as diffusers
/// names them (<c>unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q</c>,
/// <c>text_encoder.text_model.encoder.layers.0.self_attn.q_proj</c>). Attach it (unmerged, a scale per call site,
/// several adapters at once) or fuse it into the base weights and unfuse it back; read and write it in diffusers',
/// PEFT's and kohya-ss/A1111's files (<see cref="LoraFiles"/>). Its parameters are the factors only, so an
/// optimizer over <c>adapter.parameters()</c> trains nothing else.
/// </summary>
public sealed class LoraAdapter : nn.Module
{
    readonly Dictionary<string, LoraLayer> _layers = new(StringComparer.Ordinal);
    readonly Dictionary<nn.Module, double> _fused = new(ReferenceEqualityComparer.Instance);

    /// <summary>The default targets: attention projections (the U-Net's to_q/to_k/to_v/to_out.0, CLIP's
    /// q_proj/k_proj/v_proj/out_proj).</summary>
    public static bool AttentionProjections(string path, nn.Module module) =>
        module is Linear && (path.EndsWith(".to_q") || path.EndsWith(".to_k") || path.EndsWith(".to_v") ||
                             path.EndsWith(".to_out.0") || path.EndsWith(".q_proj") || path.EndsWith(".k_proj") ||
                             path.EndsWith(".v_proj") || path.EndsWith(".out_proj"));

    public LoraAdapter(IEnumerable<KeyValuePair<string, LoraLayer>> layers) : base(nameof(LoraAdapter))
    {
        foreach (var (key, layer) in layers)
        {
            if (!_layers.TryAdd(key, layer))
                throw new AdapterFormatException("adapter", key, "two layers for the same target");
            register_module(key.Replace('.', '_'), layer);
        }
    }

    /// <summary>Target key → layer.</summary>
    public IReadOnlyDictionary<string, LoraLayer> Layers => _layers;

    /// <summary>
    /// A new adapter for training: rank r and α on every module of <paramref name="model"/> that
    /// <paramref name="select"/> picks (default <see cref="AttentionProjections"/>), A ~ N(0, 1/r²) as diffusers
    /// initialises it and B = 0, so the adapted model starts equal to the base; only A and B require gradients.
    /// </summary>
    public static LoraAdapter Create(nn.Module model, string component, int rank, double? alpha = null,
        Func<string, nn.Module, bool>? select = null, long seed = 0)
    {
        if (rank < 1) throw new ArgumentOutOfRangeException(nameof(rank), rank, "rank must be ≥ 1");
        select ??= AttentionProjections;
        using var generator = new Generator((ulong)seed);
        var layers = new List<KeyValuePair<string, LoraLayer>>();
        foreach (var (path, module) in model.named_modules())
        {
            if (!select(path, module)) continue;
            var w = module switch
            {
                Linear l => l.weight!,
                Conv2d c => c.weight!,
                _ => throw new AdapterFormatException("adapter", $"{component}.{path}",
                    $"{module.GetType().Name} is not a Linear or Conv2d layer"),
            };
            long[] downShape = w.dim() == 4 ? [rank, w.shape[1], w.shape[2], w.shape[3]] : [rank, w.shape[1]];
            long[] upShape = w.dim() == 4 ? [w.shape[0], rank, 1, 1] : [w.shape[0], rank];
            var down = randn(downShape, generator: generator) / rank;
            layers.Add(new($"{component}.{path}", new LoraLayer(down, zeros(upShape), alpha, trainable: true)));
        }
        if (layers.Count == 0)
            throw new AdapterFormatException("adapter", component, "no module of the model matches the selection");
        return new LoraAdapter(layers);
    }

    /// <summary>
    /// Attaches the adapter's <paramref name="component"/> layers to <paramref name="model"/> unmerged: each target's
    /// output becomes y + <paramref name="scale"/>·(α/r)·B(A x), computed in float32 and cast back. Several adapters
    /// may be attached at once; disposing the handle detaches this one.
    /// </summary>
    public IDisposable Attach(nn.Module model, string component = "unet", double scale = 1.0)
    {
        var removers = new List<Action>();
        foreach (var (path, target, layer) in Targets(model, component))
        {
            if (target is not nn.Module<Tensor, Tensor> hookable)
                throw new AdapterFormatException("adapter", $"{component}.{path}", "the target cannot take a hook");
            layer.to(TargetWeight(target).device);
            var handle = hookable.register_forward_hook((m, x, y) => y + (scale * layer.Branch(m, x)).to(y.dtype));
            removers.Add(handle.remove);
        }
        return new Detach(removers);
    }

    sealed class Detach(List<Action> removers) : IDisposable
    {
        public void Dispose()
        {
            foreach (var remove in removers) remove();
            removers.Clear();
        }
    }

    /// <summary>Merges the update into the weights: W ← W + s·(α/r)·(B @ A). Refused when already fused into
    /// this model.</summary>
    public void Fuse(nn.Module model, string component = "unet", double scale = 1.0)
    {
        if (_fused.ContainsKey(model))
            throw new InvalidOperationException("this adapter is already fused into the model: Unfuse it first");
        Apply(model, component, scale);
        _fused[model] = scale;
    }

    /// <summary>Subtracts what <see cref="Fuse"/> added (float32 rounding: the weights come back within ~1e-7 of
    /// their magnitude, not bit for bit).</summary>
    public void Unfuse(nn.Module model, string component = "unet")
    {
        if (!_fused.Remove(model, out var scale))
            throw new InvalidOperationException("this adapter is not fused into the model");
        Apply(model, component, -scale);
    }

    void Apply(nn.Module model, string component, double scale)
    {
        using var _ = no_grad();
        foreach (var (_, target, layer) in Targets(model, component))
        {
            var w = TargetWeight(target);
            w.add_((scale * layer.Delta(w.shape)).to(w.dtype, w.device));
        }
    }

    static Tensor TargetWeight(nn.Module target) => target switch
    {
        Linear l => l.weight!,
        Conv2d c => c.weight!,
        _ => throw new AdapterFormatException("adapter", target.GetName(), "not a Linear or Conv2d layer"),
    };

    /// <summary>The adapter's layers for <paramref name="component"/> with their targets in the model; a key that
    /// names no module is an error (files are matched when read: <see cref="LoraFiles.Read"/>).</summary>
    IEnumerable<(string path, nn.Module target, LoraLayer layer)> Targets(nn.Module model, string component)
    {
        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
        string prefix = component + ".";
        foreach (var (key, layer) in _layers.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal)))
        {
            var path = key[prefix.Length..];
            if (!modules.TryGetValue(path, out var target))
                throw new AdapterFormatException("adapter", key, $"the model has no module '{path}'");
            layer.Validate("adapter", key, target);
            yield return (path, target, layer);
        }
    }
}
