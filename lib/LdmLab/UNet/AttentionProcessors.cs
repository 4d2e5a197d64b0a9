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

    /// <summary>
    /// diffusers' <c>enable_attention_slicing</c>: every attention layer of <paramref name="model"/> computes
    /// softmax(QKᵀ/√d)V for <paramref name="sliceSize"/> of its batch·heads rows at a time
    /// (<see cref="Attention.SliceSize"/>); null ("auto", diffusers' default) takes half of each layer's heads, 1
    /// ("max") the least memory. Memory and time are measured in docs/benchmarks.md: LibTorch's fused kernel, the
    /// default, never forms the whole matrix either.
    /// </summary>
    public static void EnableAttentionSlicing(this nn.Module model, int? sliceSize = null)
    {
        foreach (var layer in model.AttentionLayers()) layer.SliceSize = sliceSize ?? Math.Max(1, layer.Heads / 2);
    }

    /// <summary>diffusers' <c>disable_attention_slicing</c>: back to the unsliced processors.</summary>
    public static void DisableAttentionSlicing(this nn.Module model)
    {
        foreach (var layer in model.AttentionLayers()) layer.SliceSize = null;
    }

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
