using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.UNet;

/// <summary>
/// Per-layer attention observers, set on one model's layers (diffusers' <c>attn_processors</c> /
/// <c>set_attn_processor</c> idea): nothing process-wide, so two models — or two threads with their own models —
/// never see each other's maps. Observing a layer switches it from the fused kernel to the explicit
/// softmax(QKᵀ/√d)V path, which computes the same function.
/// </summary>
public static class AttentionProcessors
{
    /// <summary>Every attention layer of <paramref name="model"/> (any module holding a U-Net), in forward
    /// order.</summary>
    public static IReadOnlyList<Attention> AttentionLayers(this nn.Module model) =>
        model.modules().OfType<Attention>().ToList();

    /// <summary>
    /// Adds <paramref name="observer"/> to the layers that <paramref name="which"/> selects (default: all) until the
    /// returned handle is disposed; observers already there keep running (after this one) and are restored then.
    /// </summary>
    public static IDisposable ObserveAttention(this nn.Module model, AttentionObserver observer,
        Func<Attention, bool>? which = null)
    {
        var previous = new List<(Attention layer, AttentionObserver? observer)>();
        foreach (var layer in model.AttentionLayers().Where(which ?? (_ => true)))
        {
            var before = layer.Observer;
            previous.Add((layer, before));
            layer.Observer = before is null ? observer : (name, p) => { observer(name, p); before(name, p); };
        }
        return new Restore(previous);
    }

    /// <summary>Only the cross-attention layers (attn2 of each transformer block: queries from pixels, keys from
    /// tokens).</summary>
    public static IDisposable ObserveCrossAttention(this nn.Module model, AttentionObserver observer) =>
        model.ObserveAttention(observer, layer => layer.IsCrossAttention);

    sealed class Restore(List<(Attention layer, AttentionObserver? observer)> previous) : IDisposable
    {
        bool _done;

        public void Dispose()
        {
            if (_done) return;
            _done = true;
            foreach (var (layer, observer) in previous) layer.Observer = observer;
        }
    }
}
